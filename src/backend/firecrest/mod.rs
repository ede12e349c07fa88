//! The FirecREST v2 backend: the pipeline's calls mapped onto the REST API,
//! with the server's traps handled here (size limits of the synchronous
//! calls, text replies with replaced bytes, 1-based `tail` offsets, the
//! missing dependency field of the submit call).
//!
//! `upload.rs` sends the workspace (direct parts, S3), `output.rs` reads
//! the job's output byte-exact, `transfers.rs` runs and cleans up after
//! FirecREST's transfer jobs (S3 staging, downloads, large removals),
//! `check.rs` describes the access for `firecrest-ci check`, and `plan.rs`
//! lists the calls a run makes, for the dry run.

use std::path::Path;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use tokio::sync::{Mutex, OnceCell};

use super::{
    Backend, CheckRow, GrowingArchive, JobId, JobSpec, JobStatus, OutputChunk, StagedSoon,
    StagedWorkspace, SubmitRejected,
};
use crate::config::{FirecrestSettings, PollSettings};
use crate::firecrest::models::JobDescription;
use crate::firecrest::retry::{Rejection, RetryPolicy};
use crate::firecrest::{ApiError, Client, ClientSettings, TokenObserver, UploadSource};
use crate::transfer::{self, TransferThreshold};

mod check;
mod output;
mod plan;
mod transfers;
mod upload;

use output::{ReadState, Snapshot};
pub use plan::plan;
use transfers::{Transfer, TransferKind};

/// A progress line at most this often during long uploads.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The server's limit when `/status/systems` does not say (FirecREST's default).
const DEFAULT_MAX_OPS_FILE_SIZE: u64 = 5 * 1024 * 1024;

/// What `/status/systems` says about the system, read once.
#[derive(Debug, Clone)]
struct SystemFacts {
    max_ops_file_size: u64,
    default_work_dir: Option<String>,
    s3: bool,
}

/// Cluster access through a FirecREST v2 deployment.
pub struct FirecrestBackend {
    client: Client,
    transfer_threshold: TransferThreshold,
    /// How the server's S3 way spends time (the real server's; tests set a
    /// quicker one).
    s3_timing: transfer::S3Timing,
    facts: OnceCell<SystemFacts>,
    snapshots: Mutex<std::collections::HashMap<String, Snapshot>>,
    reads: Mutex<std::collections::HashMap<String, ReadState>>,
    /// The transfer jobs this run started, whose logs it removes at cleanup.
    transfers: Mutex<Vec<Transfer>>,
}

impl FirecrestBackend {
    /// A backend for the configured deployment; sends nothing yet.
    pub fn new(
        settings: &FirecrestSettings,
        poll: &PollSettings,
        transfer_threshold: TransferThreshold,
        token_observer: TokenObserver,
    ) -> Result<Self> {
        let client = Client::new(ClientSettings {
            base_url: settings.url.clone(),
            system: settings.system.clone(),
            auth: settings.credentials.clone(),
            request_timeout: poll.request_timeout,
            retry: RetryPolicy::default(),
        })?;
        client.set_token_observer(token_observer);
        Ok(Self::from_client(client, transfer_threshold))
    }

    /// A backend over an existing client (tests build their own).
    pub fn from_client(client: Client, transfer_threshold: TransferThreshold) -> Self {
        Self {
            client,
            transfer_threshold,
            s3_timing: transfer::S3Timing::REAL,
            facts: OnceCell::new(),
            snapshots: Mutex::new(Default::default()),
            reads: Mutex::new(Default::default()),
            transfers: Mutex::new(Vec::new()),
        }
    }

    async fn facts(&self) -> Result<&SystemFacts> {
        self.facts
            .get_or_try_init(|| async {
                let systems = self
                    .client
                    .systems()
                    .await
                    .context("failed to list the systems")?;
                let wanted = self.client.system();
                let Some(system) = systems.iter().find(|s| s.name.eq_ignore_ascii_case(wanted))
                else {
                    let known: Vec<&str> = systems.iter().map(|s| s.name.as_str()).collect();
                    return Err(crate::outcome::CodedError {
                        code: crate::outcome::codes::CONFIG,
                        message: format!(
                            "FirecREST has no system {wanted:?} (FIRECREST_SYSTEM); it knows: {}",
                            known.join(", ")
                        ),
                    }
                    .into());
                };
                let s3 = system
                    .data_operation
                    .as_ref()
                    .and_then(|d| d.data_transfer.as_ref())
                    .and_then(|t| t.service_type.as_deref())
                    .is_some_and(|t| t.eq_ignore_ascii_case("s3"));
                Ok(SystemFacts {
                    max_ops_file_size: system
                        .max_ops_file_size()
                        .unwrap_or(DEFAULT_MAX_OPS_FILE_SIZE),
                    default_work_dir: system.default_work_dir().map(|fs| fs.path.clone()),
                    s3,
                })
            })
            .await
    }
}

fn api_error(err: &anyhow::Error) -> Option<&ApiError> {
    ApiError::find(err)
}

fn is_not_found(err: &anyhow::Error) -> bool {
    api_error(err).is_some_and(ApiError::is_not_found)
}

fn is_too_large(err: &anyhow::Error) -> bool {
    api_error(err).is_some_and(ApiError::is_too_large)
}

/// A submit error that is sbatch refusing an input becomes a
/// [`SubmitRejected`] (the run names the input); anything else stays as it is.
fn as_rejection(err: anyhow::Error) -> anyhow::Error {
    match api_error(&err).and_then(|api| SubmitRejected::from_message(&api.message)) {
        Some(rejected) => rejected.into(),
        None => err,
    }
}

/// FirecREST's submit call has no dependency field: it goes in the script.
fn with_dependency(script: &str, dependency: Option<&JobId>) -> String {
    let Some(job) = dependency else {
        return script.to_string();
    };
    match script.split_once('\n') {
        Some((shebang, rest)) => format!("{shebang}\n#SBATCH --dependency=afterok:{job}\n{rest}"),
        None => format!("{script}\n#SBATCH --dependency=afterok:{job}\n"),
    }
}

#[async_trait]
impl Backend for FirecrestBackend {
    fn correlation_id(&self) -> Option<String> {
        Some(self.client.correlation_id().to_string())
    }

    fn describe(&self) -> String {
        format!(
            "FirecREST system {} at {}",
            self.client.system(),
            self.client.base_url()
        )
    }

    async fn default_base_dir(&self) -> Result<String> {
        // Independent requests, sent together (they share the first token).
        let (facts, user) = tokio::try_join!(self.facts(), async {
            self.client
                .userinfo()
                .await
                .context("failed to read the user's name")
        })?;
        let root = facts.default_work_dir.clone().with_context(|| {
            format!(
                "system {} has no default work directory; set remote-dir (FIRECREST_REMOTE_DIR)",
                self.client.system()
            )
        })?;
        if user.user.name.is_empty() {
            bail!("the server did not say the user's name; set remote-dir (FIRECREST_REMOTE_DIR)");
        }
        Ok(format!(
            "{}/{}/firecrest-ci",
            root.trim_end_matches('/'),
            user.user.name
        ))
    }

    async fn first_contact(&self) -> Result<()> {
        // A token, then the systems: both hosts answered, and the system
        // named by FIRECREST_SYSTEM exists.
        self.facts().await.map(drop)
    }

    async fn create_private_dir(&self, path: &str) -> Result<()> {
        self.client.mkdir(path, true).await?;
        self.client.chmod(path, "700").await
    }

    async fn put_file(&self, dir: &str, name: &str, contents: Vec<u8>) -> Result<()> {
        self.client
            .upload(dir, name, &UploadSource::Bytes(contents))
            .await
    }

    async fn upload_workspace(&self, archive: &Path, dir: &str) -> Result<StagedWorkspace> {
        let size = tokio::fs::metadata(archive)
            .await
            .with_context(|| format!("failed to read {}", archive.display()))?
            .len();
        let archive = GrowingArchive::complete(archive.to_path_buf(), size);
        self.upload_archive(archive, dir, None).await
    }

    async fn upload_growing(
        &self,
        archive: GrowingArchive,
        dir: &str,
        soon: StagedSoon,
    ) -> Result<StagedWorkspace> {
        self.upload_archive(archive, dir, Some(soon)).await
    }

    async fn submit(&self, job: &JobSpec) -> Result<JobId> {
        let description = JobDescription {
            name: job.name.clone(),
            script: with_dependency(&job.script, job.dependency.as_ref()),
            working_directory: job.working_dir.clone(),
            account: job.account.clone(),
            partition: job.partition.clone(),
            reservation: job.reservation.clone(),
            constraints: None,
            standard_output: None,
            standard_error: None,
            // Never empty: the server builds `--export='ALL,<env>'` from it.
            // Forwarded variables travel in the private env file instead
            // (values with commas would break here).
            env: [(
                "FIRECREST_CI".to_string(),
                crate::secret::Secret::new("true"),
            )]
            .into(),
        };
        let Some(transfer) = &job.dependency else {
            return self
                .client
                .submit_job(&description)
                .await
                .map(JobId)
                .map_err(as_rejection);
        };
        match self
            .client
            .submit_job(&description)
            .await
            .map_err(as_rejection)
        {
            Ok(id) => Ok(JobId(id)),
            // Slurm refuses a dependency on a job it has already forgotten
            // (finished more than MinJobAge ago): if the transfer completed,
            // the job needs no dependency any more.
            Err(err)
                if err
                    .downcast_ref::<SubmitRejected>()
                    .is_some_and(|r| r.rejection == Rejection::Dependency) =>
            {
                self.wait_transfer(&transfer.0, "").await.context(
                    "the workspace transfer job did not complete, so the batch job cannot start",
                )?;
                let description = JobDescription {
                    script: job.script.clone(),
                    ..description
                };
                self.client
                    .submit_job(&description)
                    .await
                    .map(JobId)
                    .map_err(as_rejection)
            }
            Err(err) => Err(err),
        }
    }

    async fn job_status(&self, id: &JobId) -> Result<Option<JobStatus>> {
        Ok(self.client.job(&id.0).await?.as_ref().map(JobStatus::from))
    }

    async fn read_output(&self, path: &str, offset: u64, last: bool) -> Result<OutputChunk> {
        self.read_pieces(path, offset, last).await
    }

    async fn output_size(&self, path: &str) -> Result<Option<u64>> {
        match self.client.output_stat(path).await {
            Ok(stat) => Ok(Some(stat.size)),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn cancel(&self, id: &JobId) -> Result<()> {
        self.client.cancel_job(&id.0).await
    }

    async fn partitions(&self) -> Result<Option<Vec<String>>> {
        let partitions = self
            .client
            .partitions()
            .await
            .context("failed to list the partitions")?;
        Ok(Some(partitions.into_iter().map(|p| p.name).collect()))
    }

    async fn accounts(&self) -> Result<Option<Vec<String>>> {
        let user = self
            .client
            .userinfo()
            .await
            .context("failed to read the user's accounts")?;
        // A server that lists no accounts does not say which are valid.
        Ok((!user.accounts.is_empty()).then(|| {
            user.accounts
                .into_iter()
                .map(|a| {
                    if a.default {
                        format!("{} (default)", a.name)
                    } else {
                        a.name
                    }
                })
                .collect()
        }))
    }

    async fn mode(&self, path: &str) -> Result<Option<u32>> {
        match self.client.stat(path).await {
            Ok(stat) => Ok(Some(stat.mode & 0o7777)),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn describe_access(&self) -> Result<Vec<CheckRow>> {
        self.access_rows().await
    }

    async fn artifacts_part_size(&self) -> Result<Option<u64>> {
        let facts = self.facts().await?;
        // With S3, large files come back through a transfer job instead.
        Ok((!facts.s3).then(|| transfer::direct_download_limit(facts.max_ops_file_size)))
    }

    async fn download(&self, remote: &str, local: &Path) -> Result<bool> {
        self.download_file(remote, local).await
    }

    async fn stop_helpers(&self) {
        self.cancel_unneeded_transfers().await
    }

    async fn remove_helper_leftovers(&self, report: &(dyn for<'s> Fn(&'s str) + Send + Sync)) {
        self.remove_transfer_leftovers(report).await
    }

    async fn remove_dir(&self, path: &str) -> Result<()> {
        match self.client.rm(path).await {
            Ok(()) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) if api_error(&err).is_some_and(ApiError::is_timeout) => {
                // A large tree outlasts the synchronous 5 s limit: a job removes it.
                let job = self
                    .client
                    .transfer_rm(path)
                    .await
                    .context("failed to start a removal job after rm timed out")?;
                self.note_transfer(&job, TransferKind::Removal).await;
                tracing::info!("{path} is large: removal job {} started", job.job_id);
                Ok(())
            }
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use std::time::Duration;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    #[test]
    fn dependency_goes_right_after_the_shebang() {
        let script = "#!/bin/bash -l\n#SBATCH --time=10\necho hi\n";
        assert_eq!(
            with_dependency(script, Some(&JobId("34".into()))),
            "#!/bin/bash -l\n#SBATCH --dependency=afterok:34\n#SBATCH --time=10\necho hi\n"
        );
        assert_eq!(with_dependency(script, None), script);
    }

    /// The body of the `index`-th exchange of a recorded file.
    pub(super) fn recorded(file: &str, index: usize) -> serde_json::Value {
        let path = format!(
            "{}/tests/fixtures/recorded/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let exchanges: serde_json::Value = serde_json::from_str(&text).unwrap();
        exchanges[index]["response"]["body"].clone()
    }

    /// A backend over a wiremock server that serves the recorded systems.
    pub(super) async fn backend(server: &MockServer) -> FirecrestBackend {
        Mock::given(method("GET"))
            .and(path("/status/systems"))
            .respond_with(ResponseTemplate::new(200).set_body_json(recorded("systems.json", 1)))
            .mount(server)
            .await;
        let client = Client::new(ClientSettings {
            base_url: server.uri(),
            system: "daint".into(),
            auth: crate::config::Credentials::AccessToken(Secret::new("token")),
            request_timeout: Duration::from_secs(5),
            retry: RetryPolicy {
                base_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(20),
                max_retries: 2,
                budget: Duration::from_secs(5),
            },
        })
        .unwrap();
        FirecrestBackend::from_client(client, TransferThreshold::Above(1 << 30))
    }
}
