//! Steps 3 and 4 overlapped: the batch job is submitted while the last
//! parts of the workspace go up, once the upload expects them up within a
//! job's start-up ([`crate::transfer::submit_ahead`]), so that Slurm starts
//! the job as they land instead of after. Its prologue waits for a ready
//! file, written here once every part is up, so the job never reads a part
//! still in transit. An upload that fails, or a CI stop, after the submit
//! cancels the job: it never runs without its whole workspace.

use std::future::Future;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use tokio::sync::oneshot;

use super::attempt::{self, Attempt, FirstAttempt, Staged};
use super::stop::STOP_CANCEL_BUDGET;
use super::{Remote, READY_NAME};
use crate::backend::{JobId, StagedWorkspace};
use crate::ci::Ci;
use crate::config::Config;
use crate::script::{UploadWait, UPLOAD_WAIT};
use crate::workspace::PackReport;

/// The workspace on the cluster, and the attempt the watch begins with
/// (already submitted if it went while the last parts went up).
pub(super) struct Placed {
    pub(super) staged: StagedWorkspace,
    pub(super) pack: PackReport,
    pub(super) first: FirstAttempt,
}

/// What the job's prologue finds in the ready file until the workspace is
/// up: written with the submit, so that the job opens a file that exists
/// (a network file system may cache a missing name for a minute) and reads
/// it again until it holds the archive's SHA-256.
const NOT_READY: &[u8] = b"waiting for the last parts\n";

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
    let first = Attempt::first(config);
    let unsubmitted = |placed: Option<(StagedWorkspace, PackReport)>, first: Attempt| {
        placed.map(|(staged, pack)| Placed {
            staged,
            pack,
            first: FirstAttempt {
                attempt: first,
                submitted: None,
            },
        })
    };
    tokio::pin!(staging);
    let layout = tokio::select! {
        biased;
        placed = &mut staging => return Ok(unsubmitted(placed?, first)),
        layout = soon => layout.ok(),
    };
    // The upload says so only once packing ended, so its report is there.
    let (Some(layout), Some(pack)) = (layout, packed.get().cloned()) else {
        return Ok(unsubmitted(staging.await?, first));
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
    let submit = async {
        let not_ready = remote
            .backend
            .put_file(&remote.run_dir, READY_NAME, NOT_READY.to_vec());
        let submit = attempt::submit(config, ci, remote, &early, first, Some(wait));
        let (not_ready, submitted) = tokio::join!(not_ready, submit);
        if let Err(err) = not_ready {
            // Only a hint for network file systems: the job still waits.
            tracing::debug!("could not write the placeholder ready file: {err:#}");
        }
        submitted
    };
    let (submitted, placed) = tokio::join!(submit, &mut staging);
    let (job, at, placed) = match (submitted, placed) {
        (submitted, Ok(None)) => {
            // CI stopped the run: within the time its signal leaves.
            if let Ok((job, _)) = submitted {
                let why = "CI stopped the run before the workspace was up";
                let cancelled = abandon(remote, &job, why);
                if tokio::time::timeout(STOP_CANCEL_BUDGET, cancelled)
                    .await
                    .is_err()
                {
                    tracing::error!(
                        "no time left to cancel job {job}; cancel it with `firecrest-ci cancel {job}`"
                    );
                }
            }
            return Ok(None);
        }
        // A refused submit explains the run's end better than the upload.
        (Err(err), _) => return Err(err),
        (Ok((job, _)), Err(err)) => {
            abandon(remote, &job, "the workspace upload failed").await;
            return Err(err);
        }
        (Ok((job, at)), Ok(Some(placed))) => (job, at, placed),
    };
    if placed.0 != layout {
        // The server refused a part as too large and the archive went up
        // in smaller parts: the job would look for the wrong ones. The next
        // submission gets files of its own (and the forwarded variables
        // again), as after a job the cluster lost.
        let why = "the server refused a part as too large and the workspace went up \
                   in smaller parts; submitting it again";
        cancel(remote, &job, why).await;
        let again = Attempt {
            number: first.number + 1,
            of: first.of + 1,
        };
        return Ok(unsubmitted(Some(placed), again));
    }
    let ready = format!("{}\n", pack.sha256).into_bytes();
    if let Err(err) = remote
        .backend
        .put_file(&remote.run_dir, READY_NAME, ready)
        .await
    {
        abandon(remote, &job, "its workspace could not be marked ready").await;
        return Err(err).context("failed to tell the job that its workspace is up");
    }
    tracing::info!("workspace up: job {job} extracts it");
    Ok(Some(Placed {
        staged: placed.0,
        pack: placed.1,
        first: FirstAttempt {
            attempt: first,
            submitted: Some((job, at)),
        },
    }))
}

/// Cancels a job the run submitted but will not watch, saying why; a
/// failure to cancel is said too, with the job id to cancel by hand.
/// Says whether the job was cancelled.
async fn cancel(remote: &Remote<'_>, job: &JobId, why: &str) -> bool {
    match remote.backend.cancel(job).await {
        Ok(()) => {
            tracing::warn!("cancelled job {job}: {why}");
            true
        }
        Err(err) => {
            tracing::error!(
                "could not cancel job {job} ({why}): {err:#}; cancel it with `firecrest-ci cancel {job}`"
            );
            false
        }
    }
}

/// Cancels a job the run submitted and then gave up on: its `job-id` step
/// output already names it, so its `state` output says what became of it
/// (nothing, when the cancel failed and the job may still run).
pub(super) async fn abandon(remote: &Remote<'_>, job: &JobId, why: &str) {
    if cancel(remote, job, why).await {
        super::report::set_state_output(&remote.ci, "CANCELLED");
    }
}
