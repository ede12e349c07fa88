//! FirecREST's transfer jobs: staging files in S3 (uploads, downloads,
//! output snapshots), waiting for them, downloads too large for one call,
//! and removing the logs they leave outside the run directory.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{is_not_found, FirecrestBackend, SystemFacts, PROGRESS_EVERY};
use crate::backend::{JobId, JobStatus};
use crate::firecrest::models::TransferJob;
use crate::outcome::SlurmState;
use crate::progress::Progress;
use crate::transfer;

/// The longest pause between two looks at a transfer job the run waits for.
const TRANSFER_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// How long to wait for an S3 transfer job before giving up.
const TRANSFER_WAIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// One transfer job of this run and the files FirecREST makes for it
/// outside the run directory (`<defaultWorkDir>/<user>`).
#[derive(Debug, Clone)]
pub(super) struct Transfer {
    job: String,
    output_log: String,
    error_log: String,
    kind: TransferKind,
    /// This run cancelled it (no longer needed): its end is no failure to
    /// report.
    cancelled: bool,
    /// Its final state, once a read showed it: no need to ask again.
    ended: Option<SlurmState>,
}

/// What a transfer job of this run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TransferKind {
    /// Moves the workspace from S3 into place; its script also leaves an
    /// empty `tmp/` beside the logs.
    Upload,
    /// Copies a file into S3 for the tool to read.
    Download,
    /// Removes a tree too large for a synchronous `rm`: cleanup's own work.
    Removal,
}

/// The file names FirecREST gives transfer-job logs: only such files are
/// ever removed, whatever a reply says.
const TRANSFER_LOG_PREFIX: &str = ".f7t_file_handling_job_";

/// True for a path whose file name is a FirecREST transfer-job log.
fn is_transfer_log(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|name| name.starts_with(TRANSFER_LOG_PREFIX) && name.ends_with(".log"))
}

impl FirecrestBackend {
    /// Copies a remote file whole when the server returns it at once, else
    /// from the parts the job cut it into, or through S3.
    pub(super) async fn download_file(&self, remote: &str, local: &Path) -> Result<bool> {
        let size = match self.client.stat(remote).await {
            Ok(stat) => stat.size,
            Err(err) if is_not_found(&err) => return Ok(false),
            Err(err) => return Err(err),
        };
        let facts = self.facts().await?.clone();
        let mut file = tokio::fs::File::create(local)
            .await
            .with_context(|| format!("failed to create {}", local.display()))?;
        if size == 0 {
            // Nothing to fetch (the job's step-output files, at the end of
            // most runs): one round trip fewer.
            return Ok(true);
        }
        if size <= transfer::direct_download_limit(facts.max_ops_file_size) {
            self.client.download_to(remote, &mut file).await?;
            return Ok(true);
        }
        if !facts.s3 {
            return self
                .download_parts(remote, size, &facts, &mut file)
                .await
                .map(|()| true);
        }
        let url = self.stage_in_s3(remote).await?;
        self.client.s3_get_object(&url, 0, &mut file).await?;
        Ok(true)
    }

    /// Reads a file too large for one download from the parts the job cut
    /// it into, in order, checking that they add up to the whole.
    async fn download_parts(
        &self,
        remote: &str,
        size: u64,
        facts: &SystemFacts,
        file: &mut tokio::fs::File,
    ) -> Result<()> {
        let part_size = transfer::direct_download_limit(facts.max_ops_file_size);
        let count = size.div_ceil(part_size.max(1));
        let mut progress = Progress::new("download", Some(size), PROGRESS_EVERY);
        let mut total = 0;
        for index in 0..count as usize {
            let part = transfer::part_name(remote, index);
            let got = self
                .client
                .download_to(&part, file)
                .await
                .with_context(|| {
                    format!(
                        "{remote} is larger than the server returns at once and its part {part} \
                     could not be read (the server has no S3 transfer)"
                    )
                })?;
            total += got;
            progress.advance(got);
        }
        progress.finish();
        if total != size {
            bail!("the parts of {remote} add up to {total} bytes, not {size}");
        }
        Ok(())
    }

    /// Copies a remote file into S3 with a transfer job and waits for it;
    /// returns the presigned URL to read it from.
    pub(super) async fn stage_in_s3(&self, path: &str) -> Result<String> {
        let reply = self.client.transfer_download(path).await?;
        self.note_transfer(&reply.transfer_job, TransferKind::Download)
            .await;
        let url = reply
            .transfer_directives
            .download_url
            .clone()
            .context("the server's S3 download directives have no downloadUrl")?;
        self.wait_transfer(
            &reply.transfer_job.job_id,
            &reply.transfer_job.logs.error_log,
        )
        .await?;
        Ok(url)
    }

    pub(super) async fn note_transfer(&self, job: &TransferJob, kind: TransferKind) {
        self.transfers.lock().await.push(Transfer {
            job: job.job_id.clone(),
            output_log: job.logs.output_log.clone(),
            error_log: job.logs.error_log.clone(),
            kind,
            cancelled: false,
            ended: None,
        });
    }

    /// A read showed that transfer job `job` ended in `state`.
    async fn note_ended(&self, job: &str, state: SlurmState) {
        if let Some(transfer) = self
            .transfers
            .lock()
            .await
            .iter_mut()
            .find(|t| t.job == job)
        {
            transfer.ended = Some(state);
        }
    }

    /// Cancels this run's upload and download transfer jobs that have not
    /// ended: once the run is over nothing needs them, and an upload's job
    /// would look for its object until its time limit, holding a node (a CI
    /// cancel during the upload, a batch job that never ran). Removal jobs
    /// are cleanup's own work and go on.
    pub(super) async fn cancel_unneeded_transfers(&self) {
        let pending: Vec<String> = self
            .transfers
            .lock()
            .await
            .iter()
            .filter(|t| t.kind != TransferKind::Removal && !t.cancelled && t.ended.is_none())
            .map(|t| t.job.clone())
            .collect();
        for job in pending {
            match self.client.job(&job).await {
                Ok(Some(found)) => {
                    let state = JobStatus::from(&found).state;
                    if state.is_final() {
                        self.note_ended(&job, state).await;
                    } else {
                        self.cancel_transfer(&JobId(job), "the run no longer needs it")
                            .await;
                    }
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!("could not read the state of transfer job {job}: {err:#}")
                }
            }
        }
    }

    /// Cancels a transfer job (`why`: for the log); says so when it cannot.
    pub(super) async fn cancel_transfer(&self, job: &JobId, why: &str) {
        if let Some(transfer) = self
            .transfers
            .lock()
            .await
            .iter_mut()
            .find(|t| t.job == job.0)
        {
            transfer.cancelled = true;
        }
        match self.client.cancel_job(&job.0).await {
            Ok(()) => tracing::info!("cancelled FirecREST's transfer job {job}: {why}"),
            Err(err) => tracing::warn!(
                "could not cancel FirecREST's transfer job {job} ({why}); it runs until \
                 its time limit: {err:#}"
            ),
        }
    }

    /// Whether a transfer job has ended: `None` while it runs, else what
    /// its error log says if it failed (`Some(None)` when it completed).
    async fn transfer_ended(&self, transfer: &Transfer) -> Result<Option<Option<String>>> {
        let state = match &transfer.ended {
            Some(state) => state.clone(),
            None => match self.client.job(&transfer.job).await? {
                Some(found) => JobStatus::from(&found).state,
                None => return Ok(None),
            },
        };
        if !state.is_final() {
            return Ok(None);
        }
        if state == SlurmState::Completed
            || transfer.cancelled
            || !is_transfer_log(&transfer.error_log)
        {
            return Ok(Some(None));
        }
        let log = self
            .client
            .tail(&transfer.error_log, 0)
            .await
            .map(|t| t.content)
            .unwrap_or_default();
        Ok(Some(Some(format!(
            "firecrest-ci: transfer job {} ended {}; its error log {}:\n{}",
            transfer.job,
            state,
            transfer.error_log,
            log.trim_end()
        ))))
    }

    /// Removes a transfer job's two log files (nothing else: see
    /// [`is_transfer_log`]).
    async fn remove_transfer_logs(&self, transfer: &Transfer) -> Result<()> {
        for path in [&transfer.output_log, &transfer.error_log] {
            if !is_transfer_log(path) {
                continue;
            }
            match self.client.rm(path).await {
                Ok(()) => {}
                Err(err) if is_not_found(&err) => {}
                Err(err) => return Err(err.context(format!("failed to remove {path}"))),
            }
        }
        Ok(())
    }

    /// Removes `dir`/tmp when it exists and is empty (hidden entries count).
    async fn remove_empty_tmp(&self, dir: &str) -> Result<()> {
        let tmp = format!("{dir}/tmp");
        match self.client.ls(&tmp).await {
            Ok(entries) if entries.is_empty() => self.client.rm(&tmp).await,
            Ok(_) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Waits for a transfer job; its error log explains a failure. Polled
    /// at most [`TRANSFER_POLL`] apart, so its end is noticed within about a
    /// second (the job itself may sleep 60 s between its own checks).
    pub(super) async fn wait_transfer(&self, job: &str, logs_error: &str) -> Result<()> {
        let started = std::time::Instant::now();
        let mut delay = std::time::Duration::from_millis(250);
        loop {
            if let Some(found) = self.client.job(job).await? {
                let status = JobStatus::from(&found);
                if status.state.is_final() {
                    self.note_ended(job, status.state.clone()).await;
                    if status.state == SlurmState::Completed {
                        return Ok(());
                    }
                    let log = match logs_error {
                        "" => String::new(),
                        path => self
                            .client
                            .tail(path, 0)
                            .await
                            .map(|t| t.content)
                            .unwrap_or_default(),
                    };
                    bail!("transfer job {job} ended {}: {}", status.state, log.trim());
                }
            }
            if started.elapsed() > TRANSFER_WAIT {
                bail!(
                    "transfer job {job} did not finish in {} minutes",
                    TRANSFER_WAIT.as_secs() / 60
                );
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(TRANSFER_POLL);
        }
    }

    /// Removes the logs of this run's transfer jobs that ended (and the
    /// empty `tmp/` an S3 upload leaves); a failed one's log goes to `report`.
    pub(super) async fn remove_transfer_leftovers(
        &self,
        report: &(dyn for<'s> Fn(&'s str) + Send + Sync),
    ) {
        let transfers = std::mem::take(&mut *self.transfers.lock().await);
        let mut kept = Vec::new();
        let mut upload_dirs: Vec<String> = Vec::new();
        for transfer in transfers {
            let removed = match self.transfer_ended(&transfer).await {
                Ok(Some(failed)) => {
                    if let Some(log) = failed {
                        report(&log);
                    }
                    self.remove_transfer_logs(&transfer).await.map(|()| true)
                }
                Ok(None) => Ok(false),
                Err(err) => Err(err),
            };
            match removed {
                Ok(true) => {
                    if transfer.kind == TransferKind::Upload {
                        if let Some((dir, _)) = transfer.output_log.rsplit_once('/') {
                            if !upload_dirs.iter().any(|d| d == dir) {
                                upload_dirs.push(dir.to_string());
                            }
                        }
                    }
                }
                Ok(false) => {
                    tracing::info!(
                        "transfer job {} has not ended; its logs {} stay",
                        transfer.job,
                        transfer.output_log
                    );
                    kept.push(transfer);
                }
                Err(err) => {
                    tracing::warn!(
                        "could not remove the logs of transfer job {}: {err:#}",
                        transfer.job
                    );
                    kept.push(transfer);
                }
            }
        }
        for dir in upload_dirs {
            if let Err(err) = self.remove_empty_tmp(&dir).await {
                tracing::warn!("could not remove the empty {dir}/tmp: {err:#}");
            }
        }
        self.transfers.lock().await.extend(kept);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::backend;
    use super::*;
    use crate::backend::Backend;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    #[test]
    fn only_transfer_logs_are_removed() {
        assert!(is_transfer_log(
            "/scratch/ciuser/.f7t_file_handling_job_269507ad-950b-49ea-9459-8ea9dbc8ddd0.log"
        ));
        assert!(is_transfer_log(
            "/scratch/ciuser/.f7t_file_handling_job_error_269507ad.log"
        ));
        assert!(!is_transfer_log("/scratch/ciuser"));
        assert!(!is_transfer_log("/scratch/ciuser/notes.log"));
        assert!(!is_transfer_log(""));
    }

    #[tokio::test]
    async fn a_removal_that_times_out_becomes_a_transfer_job() {
        let server = MockServer::start().await;
        let backend = backend(&server).await;
        Mock::given(method("DELETE"))
            .and(path("/filesystem/daint/ops/rm"))
            .respond_with(ResponseTemplate::new(408).set_body_json(serde_json::json!({
                "errorType": "error", "message": "Command execution timeout", "causedBy": null, "data": null, "user": "ciuser"
            })))
            .mount(&server)
            .await;
        Mock::given(method("DELETE"))
            .and(path("/filesystem/daint/transfer/rm"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "transferJob": {"jobId": "77", "system": "daint", "workingDirectory": "/scratch/ciuser",
                                "logs": {"outputLog": "/scratch/ciuser/o.log", "errorLog": "/scratch/ciuser/e.log"}}
            })))
            .expect(1)
            .mount(&server)
            .await;
        backend.remove_dir("/scratch/ciuser/run").await.unwrap();
    }
}
