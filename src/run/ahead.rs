//! Steps 3 and 4 overlapped: the batch job is submitted while the last
//! parts of the workspace go up, once the upload expects them up within a
//! job's start-up ([`crate::transfer::submit_ahead`]), so that Slurm starts
//! the job as they land instead of after. Its prologue waits for a ready
//! file, written here once every part is up, so the job never reads a part
//! still in transit. An upload that fails, or a CI stop, after the submit
//! cancels the job: it never runs without its whole workspace.

use std::future::Future;
use std::sync::OnceLock;
use std::time::SystemTime;

use anyhow::{Context, Result};
use tokio::sync::oneshot;

use super::attempt::{self, Attempt, Staged};
use super::{Remote, READY_NAME};
use crate::backend::{JobId, StagedWorkspace};
use crate::ci::Ci;
use crate::config::Config;
use crate::script::{UploadWait, UPLOAD_WAIT};
use crate::workspace::PackReport;

/// The workspace on the cluster, and the first attempt's job if it was
/// submitted while the last parts went up.
pub(super) struct Placed {
    pub(super) staged: StagedWorkspace,
    pub(super) pack: PackReport,
    pub(super) ahead: Option<(JobId, SystemTime)>,
}

/// Waits for `staging` (the upload, then packing's report; `None` when CI
/// stopped the run) and submits the job meanwhile once the upload says on
/// `soon` what it will have staged.
pub(super) async fn place_and_submit(
    config: &Config,
    ci: &Ci,
    remote: &Remote<'_>,
    staging: impl Future<Output = Result<Option<(StagedWorkspace, PackReport)>>>,
    soon: oneshot::Receiver<StagedWorkspace>,
    packed: &OnceLock<PackReport>,
    artifacts_part_size: Option<u64>,
) -> Result<Option<Placed>> {
    let unsubmitted = |placed: Option<(StagedWorkspace, PackReport)>| {
        placed.map(|(staged, pack)| Placed {
            staged,
            pack,
            ahead: None,
        })
    };
    tokio::pin!(staging);
    let layout = tokio::select! {
        biased;
        placed = &mut staging => return Ok(unsubmitted(placed?)),
        layout = soon => layout.ok(),
    };
    // The upload says so only once packing ended, so its report is there.
    let (Some(layout), Some(pack)) = (layout, packed.get().cloned()) else {
        return Ok(unsubmitted(staging.await?));
    };
    let early = Staged {
        workspace: &layout,
        pack: &pack,
        artifacts_part_size,
    };
    let wait = UploadWait {
        file: READY_NAME.to_string(),
        within: UPLOAD_WAIT,
    };
    let first = Attempt::first(config);
    let submit = attempt::submit(config, ci, remote, &early, first, Some(wait));
    let (submitted, placed) = tokio::join!(submit, &mut staging);
    // A refused submit explains the run's end better than the upload.
    let (job, at) = submitted?;
    let placed = match placed {
        Ok(Some(placed)) => placed,
        Ok(None) => {
            cancel(
                remote,
                &job,
                "CI stopped the run before the workspace was up",
            )
            .await;
            return Ok(None);
        }
        Err(err) => {
            cancel(remote, &job, "the workspace upload failed").await;
            return Err(err);
        }
    };
    if placed.0 != layout {
        // The server refused a part as too large and the archive went up
        // in smaller parts: the job would look for the wrong ones.
        cancel(remote, &job, "the workspace went up in other parts").await;
        return Ok(unsubmitted(Some(placed)));
    }
    let ready = format!("{}\n", pack.sha256).into_bytes();
    if let Err(err) = remote
        .backend
        .put_file(&remote.run_dir, READY_NAME, ready)
        .await
    {
        cancel(remote, &job, "its workspace could not be marked ready").await;
        return Err(err).context("failed to tell the job that its workspace is up");
    }
    tracing::debug!("the workspace is up: job {job} may extract it");
    Ok(Some(Placed {
        staged: placed.0,
        pack: placed.1,
        ahead: Some((job, at)),
    }))
}

/// Cancels the job submitted ahead, saying why; a failure to cancel is
/// said too, with the job id to cancel by hand.
async fn cancel(remote: &Remote<'_>, job: &JobId, why: &str) {
    match remote.backend.cancel(job).await {
        Ok(()) => tracing::warn!("cancelled job {job}: {why}"),
        Err(err) => tracing::error!(
            "could not cancel job {job} ({why}): {err:#}; cancel it with `firecrest-ci cancel {job}`"
        ),
    }
}
