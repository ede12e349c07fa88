//! Steps 4 and 5 of the pipeline: render the batch script, submit it and
//! watch the job while streaming its output. A job the cluster lost (a node
//! failed, the job was preempted) is submitted again, up to `retries` times,
//! from the archive already on the cluster: a fresh workspace and output of
//! its own each time.

use std::time::SystemTime;

use anyhow::{Context, Result};

use super::finish::{End, Ended};
use super::report::write_early_outputs;
use super::stop::{on_deadline, on_lost_sight, on_signal};
use super::{Remote, ARTIFACTS_NAME, ENV_FILE_NAME, ERROR_NAME, OUTPUT_NAME, START};
use crate::backend::{self, JobId, JobSpec, StagedWorkspace};
use crate::ci::Ci;
use crate::config::Config;
use crate::job::{OutputFile, OutputSink, StopSignal, WatchEnd, WatchSettings, Watcher};
use crate::outcome;
use crate::placement;
use crate::script::{self, ScriptSpec, UploadWait};
use crate::workspace::PackReport;

/// What every attempt is made from: the workspace on the cluster.
pub(super) struct Staged<'a> {
    pub(super) workspace: &'a StagedWorkspace,
    pub(super) pack: &'a PackReport,
    pub(super) artifacts_part_size: Option<u64>,
}

/// Submits and watches the job, again while the cluster loses it and
/// retries are left; the last attempt's end is the run's, beginning with
/// `first`.
pub(super) async fn submit_and_watch(
    config: &Config,
    ci: &Ci,
    remote: &Remote<'_>,
    staged: &Staged<'_>,
    first: FirstAttempt,
    log: &std::fs::File,
    stop: &mut StopSignal,
) -> Result<End> {
    let (mut attempt, mut ahead) = (first.attempt, first.submitted);
    let mut lost: Vec<String> = Vec::new();
    loop {
        // Before the job exists: a failure here leaves no job running.
        let log = match log.try_clone() {
            Ok(log) => log,
            Err(err) => {
                if let Some((job, _)) = ahead.take() {
                    super::ahead::abandon(remote, &job, "the log file could not be reopened").await;
                }
                return Err(err).context("failed to reopen the log file for this attempt");
            }
        };
        let (job, at) = match ahead.take() {
            Some(submitted) => submitted,
            None => submit(config, ci, remote, staged, attempt, None).await?,
        };
        let submitted = Submitted {
            job,
            at,
            attempt,
            lost: lost.clone(),
        };
        let ended = watch_job(config, ci, remote, &submitted, staged.workspace, log, stop).await?;
        if let Ended::Finished { status, .. } = &ended {
            let state = &status.state;
            if attempt.number < attempt.of && state.cluster_lost_the_job() {
                tracing::warn!(
                    "job {} ended {}: the cluster lost it, not its commands; \
                     submitting it again (attempt {} of {})",
                    submitted.job,
                    status.state,
                    attempt.number + 1,
                    attempt.of
                );
                lost.push(format!("job {} {}", submitted.job, status.state));
                attempt.number += 1;
                continue;
            }
        }
        return Ok(End::Job { submitted, ended });
    }
}

/// Renders the batch script for this attempt and submits it; the job id is
/// printed and written to the step outputs at once. `upload_wait`: the
/// last parts are still going up.
pub(super) async fn submit(
    config: &Config,
    ci: &Ci,
    remote: &Remote<'_>,
    staged: &Staged<'_>,
    attempt: Attempt,
    upload_wait: Option<UploadWait>,
) -> Result<(JobId, SystemTime)> {
    let run_dir = &remote.run_dir;
    if attempt.number > 1 && !config.env_vars.is_empty() {
        // The first attempt's job deleted its copy as soon as it read it.
        let contents = script::render_env_file(&config.env_vars).into_bytes();
        remote
            .backend
            .put_file(run_dir, ENV_FILE_NAME, contents)
            .await
            .context("failed to place the forwarded environment variables again")?;
    }
    let spec = script_spec(
        config,
        run_dir,
        staged.workspace,
        staged.pack,
        staged.artifacts_part_size,
        attempt,
        upload_wait.clone(),
    );
    let script = script::render(&spec).context("failed to render the batch script")?;
    let job_spec = JobSpec {
        name: attempt.name(&config.job_name),
        script,
        working_dir: run_dir.clone(),
        account: config.resources.account.clone(),
        partition: config.resources.partition.clone(),
        reservation: config.resources.reservation.clone(),
        dependency: staged
            .workspace
            .transfer_job
            .clone()
            .filter(|_| attempt.number == 1),
        output: Some(spec.output_file.clone()),
        error: spec.error_file.clone(),
        time_limit: config.resources.time_limit.and_then(|t| t.as_duration()),
    };
    let backend = remote.backend;
    let job = match backend.submit(&job_spec).await {
        Ok(job) => job,
        Err(err) => {
            if let Some(transfer) = &staged.workspace.transfer_job {
                let _ = backend.cancel(transfer).await;
            }
            let rejected = err
                .chain()
                .find_map(|c| c.downcast_ref::<backend::SubmitRejected>())
                .cloned();
            return Err(match rejected {
                Some(rejected) => placement::explain(backend, &rejected, &config.resources).await,
                None => err.context("failed to submit the batch job"),
            });
        }
    };
    let at = SystemTime::now();
    let when = match upload_wait {
        Some(_) => ", while the last parts of the workspace go up",
        None => "",
    };
    tracing::info!(
        "submitted job {job} ({}){}{when}",
        job_spec.name,
        attempt.label()
    );
    write_early_outputs(config, ci, &job, run_dir);
    Ok((job, at))
}

/// The attempt the watch begins with, and its job if it was submitted
/// while the last parts of the workspace went up.
pub(super) struct FirstAttempt {
    pub(super) attempt: Attempt,
    pub(super) submitted: Option<(JobId, SystemTime)>,
}

/// A submitted job and what the report says about how it came to be.
pub(super) struct Submitted {
    pub(super) job: JobId,
    pub(super) at: SystemTime,
    pub(super) attempt: Attempt,
    /// The earlier attempts the cluster lost, e.g. "job 12 NODE_FAIL".
    pub(super) lost: Vec<String>,
}

/// One submission of the job: the first, or a retry after the cluster lost
/// an earlier one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Attempt {
    pub(super) number: u32,
    pub(super) of: u32,
}

impl Attempt {
    /// The first submission, of as many as `retries` allows.
    pub(super) fn first(config: &Config) -> Attempt {
        Attempt {
            number: 1,
            of: 1 + config.retries,
        }
    }

    /// The name of a run-directory file for this attempt.
    pub(super) fn file(&self, name: &str) -> String {
        script::attempt_name(name, self.number)
    }

    /// The job name: unique per attempt, so a lost submit reply can still
    /// be resolved by the name.
    fn name(&self, job_name: &str) -> String {
        if self.number == 1 {
            job_name.to_string()
        } else {
            format!("{job_name}-{}", self.number)
        }
    }

    /// " (attempt 2 of 3)" when retries are allowed, else nothing.
    fn label(&self) -> String {
        if self.of > 1 {
            format!(" (attempt {} of {})", self.number, self.of)
        } else {
            String::new()
        }
    }
}

/// The batch script's values for one attempt.
pub(super) fn script_spec(
    config: &Config,
    run_dir: &str,
    staged: &StagedWorkspace,
    pack: &PackReport,
    artifacts_part_size: Option<u64>,
    attempt: Attempt,
    upload_wait: Option<UploadWait>,
) -> ScriptSpec {
    let resources = &config.resources;
    ScriptSpec {
        job_name: config.job_name.clone(),
        run_dir: run_dir.to_string(),
        output_file: format!("{run_dir}/{}", attempt.file(OUTPUT_NAME)),
        error_file: config
            .separate_stderr
            .then(|| format!("{run_dir}/{}", attempt.file(ERROR_NAME))),
        time_limit: resources.time_limit,
        nodes: resources.nodes.clone(),
        ntasks: resources.ntasks,
        gpus: resources.gpus.clone(),
        constraint: resources.constraint.clone(),
        extra_options: resources.sbatch_options.clone(),
        archive_parts: staged.parts.clone(),
        archive_sha256: pack.sha256.clone(),
        env_file: (!config.env_vars.is_empty()).then(|| ENV_FILE_NAME.to_string()),
        command: config.command.clone(),
        artifacts: config.artifacts.clone(),
        artifacts_archive: format!("{run_dir}/{}", attempt.file(ARTIFACTS_NAME)),
        artifacts_part_size,
        attempt: attempt.number,
        keep_archive: attempt.number < attempt.of,
        upload_wait,
    }
}

/// Where the job's output goes: CI, as untrusted bytes.
struct CiSink<'a>(&'a Ci);

impl OutputSink for CiSink<'_> {
    fn job_output(&self, bytes: &[u8]) {
        self.0.print_untrusted(bytes);
    }
}

/// Watches the job to its end, streaming its output to CI and the log file;
/// cancels it when CI stops the run, the timeout expires or the job cannot
/// be followed any more.
async fn watch_job(
    config: &Config,
    ci: &Ci,
    remote: &Remote<'_>,
    submitted: &Submitted,
    staged: &StagedWorkspace,
    mut log: std::fs::File,
    stop: &mut StopSignal,
) -> Result<Ended> {
    let (job, attempt) = (&submitted.job, submitted.attempt);
    let mut files = vec![OutputFile::new(remote.path(&attempt.file(OUTPUT_NAME)))];
    if config.separate_stderr {
        files.push(OutputFile::new(remote.path(&attempt.file(ERROR_NAME))));
    }
    let settings: WatchSettings = config.poll.clone();
    let deadline = config
        .timeout
        .map(|t| tokio::time::Instant::now() + t.saturating_sub(START.elapsed()));
    let sink = CiSink(ci);
    let mut watcher = Watcher::new(remote.backend, &sink, Some(&mut log), settings, files);
    ci.group_start(
        "job-output",
        &format!("Output of job {job}{}", attempt.label()),
    );
    let end = watcher.watch(job, stop, deadline).await;
    let ended = match end {
        Ok(WatchEnd::Finished(status)) => Ok(Ended::Finished {
            outcome: outcome::outcome_for(&status),
            status: Box::new(status),
            script_ended: watcher.script_ended(),
            missing: watcher
                .files
                .iter()
                .filter_map(|f| Some((f.path.clone(), f.missing.clone()?)))
                .collect(),
        }),
        Ok(WatchEnd::Stopped(signal)) => {
            Ok(on_signal(&mut watcher, remote.backend, job, staged, signal).await)
        }
        Ok(WatchEnd::DeadlineReached) => {
            Ok(on_deadline(&mut watcher, remote.backend, job, staged).await)
        }
        Err(err) => {
            on_lost_sight(remote.backend, job, staged).await;
            Err(err)
        }
    };
    ci.finish();
    ci.group_end("job-output");
    tracing::debug!(stats = ?watcher.stats, "watching done");
    ended
}
