//! Steps 2 and 3 of the pipeline: pack the workspace in the background and
//! place it on the cluster (the run directory, the archive as it grows, the
//! forwarded variables).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};

use super::stop::{stopped, wait_for_stop};
use super::{Remote, ENV_FILE_NAME};
use crate::backend::{Backend, GrowingArchive, Packed, StagedSoon, StagedWorkspace};
use crate::ci::Ci;
use crate::config::Config;
use crate::job::StopSignal;
use crate::outcome::{self, codes};
use crate::progress::format_bytes;
use crate::script;
use crate::workspace::{self, PackOptions, PackReport};

/// The first requests (token, systems, the user's name): the base directory
/// the run directory goes under, from `remote-dir` or the cluster's default.
pub(super) async fn base_dir(config: &Config, backend: &dyn Backend) -> Result<String> {
    match &config.remote_dir {
        Some(dir) => backend.first_contact().await.map(|()| dir.clone()),
        None => backend
            .default_base_dir()
            .await
            .context("failed to find a base directory on the cluster"),
    }
}

/// Packs the workspace in one go (the dry run: nothing to upload meanwhile).
pub(super) async fn pack_workspace(config: &Config, ci: &Ci, archive: &Path) -> Result<PackReport> {
    ci.group_start("pack", "Packing the workspace");
    let options = pack_options(config);
    let out = archive.to_path_buf();
    let report = tokio::task::spawn_blocking(move || workspace::pack(&options, &out))
        .await
        .context("the packing task failed")?;
    ci.group_end("pack");
    // workspace::pack names the workspace and the file in its errors.
    let report = report?;
    tracing::info!("{}", describe_pack(&report));
    Ok(report)
}

/// The workspace being packed in the background.
pub(super) struct Packing {
    /// The archive as it grows, for the uploader.
    pub(super) archive: GrowingArchive,
    /// What packing made, set before the uploader hears that it ended: for
    /// a job submitted while the last parts go up.
    pub(super) packed: Arc<OnceLock<PackReport>>,
    task: tokio::task::JoinHandle<Result<PackReport>>,
}

impl Packing {
    /// What packing made, once it ended.
    pub(super) async fn report(self) -> Result<PackReport> {
        self.task.await.context("the packing task failed")?
    }
}

/// Starts packing into `archive`; the uploader follows the bytes written.
pub(super) fn start_packing(config: &Config, archive: &Path) -> Packing {
    let options = pack_options(config);
    let out = archive.to_path_buf();
    let (tx, rx) = tokio::sync::watch::channel(Packed::Writing(0));
    let tx = Arc::new(tx);
    let written = tx.clone();
    let packed = Arc::new(OnceLock::new());
    let done = packed.clone();
    let task = tokio::task::spawn_blocking(move || {
        let report = workspace::pack_watched(&options, &out, move |n| {
            written.send_replace(Packed::Writing(n));
        });
        match &report {
            Ok(report) => {
                // Logged here, when it happens, to be read in order with
                // the upload's lines.
                tracing::info!("{}", describe_pack(report));
                let _ = done.set(report.clone());
                tx.send_replace(Packed::Done(report.bytes_out));
            }
            Err(_) => {
                tx.send_replace(Packed::Failed);
            }
        }
        report
    });
    Packing {
        archive: GrowingArchive::new(archive.to_path_buf(), rx),
        packed,
        task,
    }
}

fn pack_options(config: &Config) -> PackOptions {
    PackOptions {
        root: config.workspace.clone(),
        include: config.include.clone(),
        exclude: config.exclude.clone(),
        gitignore: config.gitignore,
        include_git: config.include_git,
        always_exclude: vec![config.log_file.clone()],
        level: config.compression_level,
    }
}

/// The packing line of the log and the dry run's plan.
pub(super) fn describe_pack(report: &PackReport) -> String {
    format!(
        "packed {} files ({}) into {} in {:.1}s",
        report.files,
        format_bytes(report.bytes_in),
        format_bytes(report.bytes_out),
        report.elapsed.as_secs_f64()
    )
}

/// Creates the run directory and uploads the workspace (while it is packed)
/// and the forwarded environment; `Ok(None)` when CI stopped the run
/// meanwhile. The upload says on `soon` when the job may be submitted
/// before it ends.
pub(super) async fn place_workspace(
    config: &Config,
    ci: &Ci,
    remote: &Remote<'_>,
    archive: GrowingArchive,
    stop: &StopSignal,
    soon: StagedSoon,
) -> Result<Option<StagedWorkspace>> {
    if let Err(err) = remote.backend.create_private_dir(&remote.run_dir).await {
        let refused = crate::firecrest::ApiError::find(&err)
            .is_some_and(|api| matches!(api.status, 400 | 403 | 404));
        return Err(match &config.remote_dir {
            // The user chose the base and the cluster refused it for good:
            // an input to change, said before anything was uploaded.
            Some(base) if refused => anyhow::Error::new(outcome::CodedError {
                code: codes::CONFIG,
                message: format!(
                    "FIRECREST_REMOTE_DIR={base} cannot hold the run directory: {err:#}; \
                     use a directory you can write on the cluster (e.g. under your scratch), \
                     or leave it unset for the default"
                ),
            }),
            _ => err.context(format!(
                "failed to create the run directory {}",
                remote.run_dir
            )),
        });
    }
    tracing::info!("run directory {}", remote.run_dir);
    if !config.env_vars.is_empty() {
        let contents = script::render_env_file(&config.env_vars).into_bytes();
        remote
            .backend
            .put_file(&remote.run_dir, ENV_FILE_NAME, contents)
            .await
            .context("failed to place the forwarded environment variables")?;
    }
    if stopped(stop).is_some() {
        return Ok(None);
    }
    ci.group_start("upload", "Packing and uploading the workspace");
    let mut stop_rx = stop.clone();
    let upload = remote
        .backend
        .upload_growing(archive, &remote.run_dir, soon);
    let result = tokio::select! {
        result = upload => Some(result),
        _ = wait_for_stop(&mut stop_rx) => None,
    };
    ci.group_end("upload");
    match result {
        None => Ok(None),
        Some(result) => result.context("failed to upload the workspace").map(Some),
    }
}
