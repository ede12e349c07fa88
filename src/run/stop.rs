//! Cancel on the way out: when CI stops the run (a signal) or the run's own
//! timeout expires, the job is cancelled and its output drained within the
//! time left, so that no job outlives the tool.

use std::time::{Duration, Instant};

use crate::backend::{Backend, JobId, StagedWorkspace};
use crate::job::{StopSignal, Watcher};
use crate::outcome::{self, codes};

use super::finish::Ended;

/// All that follows a signal from CI fits in this: GitHub sends SIGTERM
/// 7.5 s after SIGINT and kills 2.5 s later.
const STOP_BUDGET: Duration = Duration::from_millis(7000);
/// Of it, the cancel request may take this long.
pub(super) const STOP_CANCEL_BUDGET: Duration = Duration::from_secs(3);
/// What is kept back from waiting for the epilogue, for fetching the
/// artifacts and removing the run directory.
const STOP_AFTER_DRAIN: Duration = Duration::from_millis(2500);
/// Removing the run directory after a stop may take this long.
pub(super) const STOP_CLEANUP_BUDGET: Duration = Duration::from_millis(1500);
/// After the run's own timeout, waiting for the job's epilogue may take this
/// long (no CI grace period is running then).
const DEADLINE_DRAIN_BUDGET: Duration = Duration::from_secs(30);

/// CI stopped the run with `signal` while the job was watched: cancel it,
/// then show its output up to the script's last line (the epilogue packs the
/// artifacts), leaving time to fetch them.
pub(super) async fn on_signal(
    watcher: &mut Watcher<'_>,
    backend: &dyn Backend,
    job: &JobId,
    staged: &StagedWorkspace,
    signal: i32,
) -> Ended {
    let until = Instant::now() + STOP_BUDGET;
    tracing::warn!("cancelling job {job}: CI stopped the run");
    cancel_all(backend, job, staged, STOP_CANCEL_BUDGET).await;
    let left = until.saturating_duration_since(Instant::now());
    let script_ended = watcher
        .drain_within(left.saturating_sub(STOP_AFTER_DRAIN))
        .await;
    Ended::Stopped {
        signal,
        script_ended,
        until,
    }
}

/// The run's own timeout expired: cancel the job and wait longer for its
/// epilogue (no CI grace period is running).
pub(super) async fn on_deadline(
    watcher: &mut Watcher<'_>,
    backend: &dyn Backend,
    job: &JobId,
    staged: &StagedWorkspace,
) -> Ended {
    tracing::warn!("cancelling job {job}: the run's timeout expired");
    cancel_all(backend, job, staged, STOP_CANCEL_BUDGET * 2).await;
    let script_ended = watcher.drain_within(DEADLINE_DRAIN_BUDGET).await;
    Ended::Deadline { script_ended }
}

/// The run cannot follow the job any more: cancel it rather than leave it
/// running unwatched.
pub(super) async fn on_lost_sight(backend: &dyn Backend, job: &JobId, staged: &StagedWorkspace) {
    tracing::warn!("cancelling job {job}: the run cannot follow it any more");
    cancel_all(backend, job, staged, STOP_CANCEL_BUDGET * 2).await;
}

/// Cancels the job and the transfer job it waits for, within `limit`.
async fn cancel_all(backend: &dyn Backend, job: &JobId, staged: &StagedWorkspace, limit: Duration) {
    let work = async {
        match backend.cancel(job).await {
            Ok(()) => tracing::info!("job {job} cancelled"),
            Err(err) => tracing::error!("could not cancel job {job}: {err:#}"),
        }
        if let Some(transfer) = &staged.transfer_job {
            if let Err(err) = backend.cancel(transfer).await {
                tracing::warn!("could not cancel transfer job {transfer}: {err:#}");
            }
        }
    };
    if tokio::time::timeout(limit, work).await.is_err() {
        tracing::error!(
            "cancelling job {job} did not finish in {}s",
            limit.as_secs()
        );
    }
}

/// The signal CI sent, if it sent one.
pub(super) fn stopped(stop: &StopSignal) -> Option<i32> {
    *stop.borrow()
}

/// The exit code for a run CI stopped.
pub(super) fn signal_code(stop: &StopSignal) -> i32 {
    stopped(stop).map_or(codes::INTERNAL, outcome::ci_signal_code)
}

/// Returns once CI stopped the run; never when the signal handler is gone
/// (no stop can come any more).
pub(super) async fn wait_for_stop(stop: &mut StopSignal) {
    if stop.wait_for(Option::is_some).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_for_stop_ends_on_a_signal_and_not_when_the_sender_goes() {
        let (tx, mut rx) = tokio::sync::watch::channel(None);
        tx.send_replace(Some(15));
        wait_for_stop(&mut rx).await;
        assert_eq!(stopped(&rx), Some(15));

        let (tx, mut rx) = tokio::sync::watch::channel(None::<i32>);
        drop(tx);
        let waited = tokio::time::timeout(Duration::from_millis(50), wait_for_stop(&mut rx)).await;
        assert!(waited.is_err(), "a dropped sender is not a stop");
    }
}
