//! Steps 6 and 7 of the pipeline: the outcome, the artifacts and what the
//! job handed back; then the run directory's fate, decided once from how the
//! run ended; then the report.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::attempt::{Attempt, Submitted};
use super::report::{report_missing, Report, Timing};
use super::stop::STOP_CLEANUP_BUDGET;
use super::{Remote, ARTIFACTS_NAME};
use crate::backend::JobStatus;
use crate::ci::Ci;
use crate::config::{Cleanup, Config};
use crate::handback;
use crate::job::Missing;
use crate::outcome::{self, codes, Outcome};
use crate::progress::format_bytes;
use crate::workspace;

/// How the run ended once its directory existed on the cluster.
pub(super) enum End {
    /// CI stopped the run before a job was submitted; the exit code for it.
    Unsubmitted { code: i32 },
    /// A job ran; how watching it ended.
    Job { submitted: Submitted, ended: Ended },
}

/// How watching ended, with what the rest of the pipeline needs.
/// `script_ended`: the batch script's last line was shown, so its epilogue
/// (packing the artifacts) ran to the end.
pub(super) enum Ended {
    Finished {
        outcome: Outcome,
        status: Box<JobStatus>,
        script_ended: bool,
        /// The output that could not be shown, per file.
        missing: Vec<(String, Missing)>,
    },
    Stopped {
        signal: i32,
        script_ended: bool,
        /// When the time CI leaves after its signal runs out.
        until: Instant,
    },
    Deadline {
        script_ended: bool,
    },
}

/// Every way out once the run directory exists comes through here: brings
/// back what the run wants, removes or keeps the run directory, reports.
pub(super) async fn finish(
    config: &Config,
    ci: &Ci,
    remote: &Remote<'_>,
    end: Result<End>,
) -> Result<i32> {
    let settled = settle(config, ci, remote, end).await;
    // Within the time left after CI's signal, shared with the cleanup.
    let stopping = Instant::now();
    let limit = settled.within.unwrap_or(HELPERS_STOP_LIMIT);
    if tokio::time::timeout(limit, remote.backend.stop_helpers())
        .await
        .is_err()
    {
        tracing::warn!("no time left to stop the helper jobs of this run");
    }
    let within = settled.within.map(|w| w.saturating_sub(stopping.elapsed()));
    let fate = Fate::of(config.cleanup, settled.success, settled.keep);
    fate.apply(remote, within).await;
    let correlation = remote.backend.correlation_id();
    settled.report.print(config, ci, correlation.as_deref())
}

/// How long stopping the backend's helper jobs may take when CI gave no
/// limit: a few requests, or a server that does not answer.
const HELPERS_STOP_LIMIT: Duration = Duration::from_secs(60);

/// What the run came to, with what decides the run directory's fate.
struct Settled {
    /// Whether the run succeeded, for `cleanup: on-success`.
    success: bool,
    /// The run directory holds what CI did not get: kept whatever `cleanup`
    /// says.
    keep: bool,
    /// How long removing the run directory may take (after CI's signal).
    within: Option<Duration>,
    report: Report,
}

impl Settled {
    /// A run that failed or was stopped, with nothing to keep for.
    fn failed(within: Option<Duration>, report: Report) -> Settled {
        Settled {
            success: false,
            keep: false,
            within,
            report,
        }
    }
}

/// Brings back the artifacts and what the job handed back, as the run's end
/// asks for, and says how the run came out.
async fn settle(config: &Config, ci: &Ci, remote: &Remote<'_>, end: Result<End>) -> Settled {
    let (submitted, ended) = match end {
        Err(err) => return Settled::failed(None, Report::Error(err)),
        Ok(End::Unsubmitted { code }) => {
            return Settled::failed(Some(STOP_CLEANUP_BUDGET), Report::Code(code))
        }
        Ok(End::Job { submitted, ended }) => (submitted, ended),
    };
    let Submitted {
        job,
        at: submitted_at,
        attempt,
        lost,
    } = submitted;
    let wants_artifacts =
        |success: bool| !config.artifacts.is_empty() && config.artifacts_when.matches(success);
    let archive = attempt.file(ARTIFACTS_NAME);
    match ended {
        Ended::Stopped {
            signal,
            script_ended,
            until,
        } => {
            if wants_artifacts(false) {
                let left = until
                    .saturating_duration_since(Instant::now())
                    .saturating_sub(STOP_CLEANUP_BUDGET);
                let fetched = tokio::time::timeout(
                    left,
                    fetch_artifacts(config, ci, remote, &archive, script_ended),
                )
                .await;
                if fetched.is_err() {
                    ci.warning(
                        "artifacts",
                        "no time was left to bring the artifacts back before CI's grace period ends",
                    );
                }
            }
            let report = Report::Stopped {
                job,
                code: outcome::ci_signal_code(signal),
                message: "CI cancelled the run; the job was cancelled".to_string(),
            };
            Settled::failed(Some(STOP_CLEANUP_BUDGET), report)
        }
        Ended::Deadline { script_ended } => {
            if wants_artifacts(false) {
                fetch_artifacts(config, ci, remote, &archive, script_ended).await;
            }
            let message = format!(
                "the run's timeout of {} expired; the job was cancelled",
                humantime::format_duration(config.timeout.unwrap_or_default())
            );
            let report = Report::Stopped {
                job,
                code: codes::RUN_TIMEOUT,
                message,
            };
            Settled::failed(None, report)
        }
        Ended::Finished {
            mut outcome,
            status,
            script_ended,
            missing,
        } => {
            // Keep the run directory when it holds what CI did not get.
            let mut keep = false;
            if wants_artifacts(outcome.success) {
                let fetched = fetch_artifacts(config, ci, remote, &archive, script_ended).await;
                if outcome.success && fetched != Artifacts::Delivered {
                    // Green would claim results that are not there.
                    outcome = outcome.incomplete(
                        "but its artifacts could not be brought back (the run directory was kept)",
                    );
                    keep = true;
                }
            }
            if !missing.is_empty() {
                // The run directory holds the only whole copy of the log.
                report_missing(ci, remote, &missing);
                outcome = outcome.incomplete(
                    "but part of its output could not be shown (the run directory was kept)",
                );
                keep = true;
            }
            let handed_back = fetch_handback(remote, attempt).await;
            if !lost.is_empty() {
                outcome.reason = format!(
                    "{}; attempt {} of {}, after the cluster lost {}",
                    outcome.reason,
                    attempt.number,
                    attempt.of,
                    lost.join(", ")
                );
            }
            Settled {
                success: outcome.success,
                keep,
                within: None,
                report: Report::Outcome {
                    job,
                    timing: Timing::of(&status, submitted_at),
                    outcome,
                    handed_back,
                },
            }
        }
    }
}

/// What becomes of the run directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Remove,
    /// It holds what CI did not get (output it could not show, artifacts it
    /// could not bring back).
    KeepWhatCiLacks,
    /// `cleanup` says to keep it.
    KeepAsSet(Cleanup),
}

impl Fate {
    /// The one cleanup decision: `keep` wins over `cleanup`, which decides
    /// by the run's success.
    fn of(cleanup: Cleanup, success: bool, keep: bool) -> Fate {
        if keep {
            Fate::KeepWhatCiLacks
        } else if cleanup.should_remove(success) {
            Fate::Remove
        } else {
            Fate::KeepAsSet(cleanup)
        }
    }

    /// Removes the run directory (within `within`, when given) or says it
    /// was kept.
    async fn apply(self, remote: &Remote<'_>, within: Option<Duration>) {
        match (self, within) {
            (Fate::Remove, Some(limit)) => remote.cleanup_within(limit).await,
            (Fate::Remove, None) => remote.cleanup().await,
            (Fate::KeepWhatCiLacks, _) => {
                tracing::warn!("kept {} so that nothing is lost", remote.run_dir)
            }
            (Fate::KeepAsSet(cleanup), _) => {
                tracing::info!("kept {} (cleanup: {cleanup:?})", remote.run_dir)
            }
        }
    }
}

/// The job's output and summary files, as read back (empty when the job
/// wrote nothing; `None` when they could not be read).
pub(super) struct HandedBack {
    pub(super) outputs: Option<String>,
    pub(super) summary: Option<String>,
}

/// Reads back the files the job may have appended step outputs and summary
/// Markdown to (`FIRECREST_CI_OUTPUT`, `FIRECREST_CI_SUMMARY`).
async fn fetch_handback(remote: &Remote<'_>, attempt: Attempt) -> HandedBack {
    let read = |name: String| async move {
        let result = async {
            let scratch = tempfile::Builder::new()
                .prefix("firecrest-ci-handback-")
                .tempdir()
                .context("failed to create a temporary directory")?;
            let local = scratch.path().join(&name);
            if !remote.backend.download(&remote.path(&name), &local).await? {
                return anyhow::Ok(String::new());
            }
            let size = std::fs::metadata(&local)
                .with_context(|| format!("failed to read {}", local.display()))?
                .len();
            if size > handback::MAX_BYTES {
                anyhow::bail!(
                    "the job wrote {} to {name}, more than the {} firecrest-ci reads back",
                    format_bytes(size),
                    format_bytes(handback::MAX_BYTES)
                );
            }
            let bytes = std::fs::read(&local)
                .with_context(|| format!("failed to read {}", local.display()))?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
        .await;
        match result {
            Ok(text) => Some(text),
            Err(err) => {
                tracing::warn!("could not read back the job's {name}: {err:#}");
                None
            }
        }
    };
    // Both at once: each is a round trip or two, at the end of every run.
    let (outputs, summary) = tokio::join!(
        read(attempt.file(handback::OUTPUT_FILE)),
        read(attempt.file(handback::SUMMARY_FILE))
    );
    HandedBack { outputs, summary }
}

/// What came of bringing the artifacts back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Artifacts {
    /// Unpacked into the workspace (possibly nothing: no pattern matched,
    /// which the job's output and a warning say).
    Delivered,
    /// The job left no artifacts archive: its epilogue did not get to pack.
    NotPacked,
    /// The archive could not be downloaded or unpacked.
    Failed,
}

/// Brings the artifacts back; every way it can fail is said in the CI log.
/// `script_ended`: the job's epilogue ran to the end, so a missing archive
/// is the epilogue's failure rather than a kill.
async fn fetch_artifacts(
    config: &Config,
    ci: &Ci,
    remote: &Remote<'_>,
    archive: &str,
    script_ended: bool,
) -> Artifacts {
    ci.group_start("artifacts", "Fetching artifacts");
    let result = async {
        let scratch = tempfile::Builder::new()
            .prefix("firecrest-ci-artifacts-")
            .tempdir()
            .context("failed to create a temporary directory for the artifacts")?;
        let local = scratch.path().join(ARTIFACTS_NAME);
        let found = remote
            .backend
            .download(&remote.path(archive), &local)
            .await
            .context("failed to download the artifacts")?;
        if !found {
            return anyhow::Ok(None);
        }
        let dest = config.workspace.clone();
        let report =
            tokio::task::spawn_blocking(move || workspace::unpack_artifacts(&local, &dest))
                .await
                .context("the unpacking task failed")?
                .context("failed to unpack the artifacts")?;
        Ok(Some(report))
    }
    .await;
    ci.group_end("artifacts");
    match result {
        Ok(Some(report)) => {
            if report.files + report.symlinks + report.dirs == 0 && report.skipped.is_empty() {
                ci.warning(
                    "artifacts",
                    "no artifacts: none of the artifact paths matched (the job's output names each pattern)",
                );
            } else {
                tracing::info!(
                    "artifacts: {} files ({}) unpacked into {}",
                    report.files,
                    format_bytes(report.bytes),
                    config.workspace.display()
                );
            }
            // Unsafe entries were left out, the rest delivered: one warning names them.
            if let Some(warning) = report.skipped_warning() {
                ci.warning("artifacts", &warning);
            }
            Artifacts::Delivered
        }
        Ok(None) => {
            let why = if script_ended {
                "no artifacts: the job's epilogue could not pack them (its warning is in the job's output)"
            } else {
                "no artifacts: the job was killed before its epilogue could pack them"
            };
            ci.warning("artifacts", why);
            Artifacts::NotPacked
        }
        Err(err) => {
            ci.warning("artifacts", &format!("{err:#}"));
            Artifacts::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_directory_is_kept_for_what_ci_lacks_else_as_cleanup_says() {
        for cleanup in [Cleanup::Always, Cleanup::OnSuccess, Cleanup::Never] {
            for success in [true, false] {
                assert_eq!(Fate::of(cleanup, success, true), Fate::KeepWhatCiLacks);
            }
        }
        assert_eq!(Fate::of(Cleanup::Always, false, false), Fate::Remove);
        assert_eq!(Fate::of(Cleanup::OnSuccess, true, false), Fate::Remove);
        assert_eq!(
            Fate::of(Cleanup::OnSuccess, false, false),
            Fate::KeepAsSet(Cleanup::OnSuccess)
        );
        assert_eq!(
            Fate::of(Cleanup::Never, true, false),
            Fate::KeepAsSet(Cleanup::Never)
        );
    }
}
