//! The pipeline, in the order the README tells it: pack the workspace, place
//! it on the cluster, render and submit the batch script, watch the job while
//! streaming its output, map the final state to an exit code, bring the
//! artifacts back, clean up. Cancellation by CI and the run's own deadline
//! cancel the job on the way out: no job outlives the tool.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::backend::{
    self, Backend, GrowingArchive, JobId, JobSpec, JobStatus, Packed, StagedWorkspace,
};
use crate::ci::Ci;
use crate::config::{BackendKind, Config, Connection, Credentials};
use crate::handback;
use crate::job::{Missing, OutputFile, OutputSink, StopSignal, WatchEnd, WatchSettings, Watcher};
use crate::outcome::{self, codes, Outcome};
use crate::placement;
use crate::progress::{format_bytes, format_duration};
use crate::script::{self, ScriptSpec};
use crate::workspace::{self, PackOptions, PackReport};

/// File names inside the per-run directory.
const ARCHIVE_NAME: &str = "workspace.tar.gz";
const ENV_FILE_NAME: &str = ".firecrest-ci-env";
const OUTPUT_NAME: &str = "job.out";
const ERROR_NAME: &str = "job.err";
const ARTIFACTS_NAME: &str = "artifacts.tar.gz";

/// All that follows a signal from CI fits in this: GitHub sends SIGTERM
/// 7.5 s after SIGINT and kills 2.5 s later.
const STOP_BUDGET: Duration = Duration::from_millis(7000);
/// Of it, the cancel request may take this long.
const STOP_CANCEL_BUDGET: Duration = Duration::from_secs(3);
/// What is kept back from waiting for the epilogue, for fetching the
/// artifacts and removing the run directory.
const STOP_AFTER_DRAIN: Duration = Duration::from_millis(2500);
/// Removing the run directory after a stop may take this long.
const STOP_CLEANUP_BUDGET: Duration = Duration::from_millis(1500);
/// After the run's own timeout, waiting for the job's epilogue may take this
/// long (no CI grace period is running then).
const DEADLINE_DRAIN_BUDGET: Duration = Duration::from_secs(30);

/// Runs the whole pipeline; returns the exit code the outcome table gives.
pub async fn run(mut config: Config, ci: Arc<Ci>, mut stop: StopSignal) -> Result<i32> {
    let suffix = random_suffix();
    let run_name = format!("{}-{suffix}", config.identity.slug);
    if config.job_name_derived {
        // Unique per run, so a lost submit reply can be resolved by the name.
        config.job_name = format!("{}-{suffix}", config.job_name);
    }
    if config.dry_run {
        return dry_run(&config, &ci, &run_name).await;
    }
    let backend = connect(&config.connection(), &ci)?;
    tracing::info!(
        "firecrest-ci {}: {}",
        env!("CARGO_PKG_VERSION"),
        backend.describe()
    );

    let scratch = tempfile::Builder::new()
        .prefix("firecrest-ci-")
        .tempdir()
        .context("failed to create a temporary directory for the workspace archive")?;
    let archive = scratch.path().join(ARCHIVE_NAME);
    // Packing runs in the background from here on: while the first
    // requests (token, systems, the user's name) reach the cluster, so that
    // a wrong URL or secret shows before a large workspace is packed, and
    // while the archive's first parts go up.
    let packing = start_packing(&config, &archive);
    let base = match &config.remote_dir {
        Some(dir) => backend.first_contact().await.map(|()| dir.clone()),
        None => backend
            .default_base_dir()
            .await
            .context("failed to find a base directory on the cluster"),
    };
    // On a failed first contact the packing is abandoned: the archive goes
    // with `scratch`, the packing thread is not waited for.
    let base = base?;
    if stopped(&stop).is_some() {
        return Ok(signal_code(&stop));
    }
    // A partition or account the cluster does not have fails here, before
    // anything exists on the cluster.
    placement::precheck(backend.as_ref(), &config.resources).await?;
    // Opened before anything exists on the cluster: a log file that cannot
    // be written must not leave a job running unwatched.
    let log = std::fs::File::create(&config.log_file).with_context(|| {
        format!(
            "failed to create the log file {}",
            config.log_file.display()
        )
    })?;

    let artifacts_part_size = if config.artifacts.is_empty() {
        None
    } else {
        backend.artifacts_part_size().await?
    };
    let run_dir = format!("{}/{}", base.trim_end_matches('/'), run_name);
    let remote = Remote {
        backend: backend.as_ref(),
        run_dir: run_dir.clone(),
        ci: ci.clone(),
    };

    // From here on the run directory exists: every way out cleans it up.
    let placed = place_workspace(&config, &ci, &remote, packing.archive.clone(), &stop).await;
    let staged = match placed {
        Ok(Some(staged)) => staged,
        Ok(None) => {
            remote.cleanup_within(STOP_CLEANUP_BUDGET).await;
            return Ok(signal_code(&stop));
        }
        Err(err) => {
            if config.cleanup.should_remove(false) {
                remote.cleanup().await;
            }
            // A packing error explains a failed upload.
            return Err(match packing.report().await {
                Err(pack_err) => pack_err,
                Ok(_) => err,
            });
        }
    };
    let pack = match packing.report().await {
        Ok(pack) => pack,
        Err(err) => {
            remote.cleanup().await;
            return Err(err);
        }
    };
    drop(scratch);

    // A job the cluster lost (a node failed, the job was preempted) is
    // submitted again, up to `retries` times, from the archive already on
    // the cluster: a fresh workspace and output of its own each time.
    let attempts = 1 + config.retries;
    let mut lost: Vec<String> = Vec::new();
    for attempt in 1..=attempts {
        let this = Attempt {
            number: attempt,
            of: attempts,
        };
        if attempt > 1 && !config.env_vars.is_empty() {
            // The first attempt's job deleted its copy as soon as it read it.
            let contents = script::render_env_file(&config.env_vars).into_bytes();
            if let Err(err) = remote
                .backend
                .put_file(&remote.run_dir, ENV_FILE_NAME, contents)
                .await
            {
                if config.cleanup.should_remove(false) {
                    remote.cleanup().await;
                }
                return Err(
                    err.context("failed to place the forwarded environment variables again")
                );
            }
        }
        let spec = script_spec(&config, &run_dir, &staged, &pack, artifacts_part_size, this);
        let script = match script::render(&spec) {
            Ok(script) => script,
            Err(err) => {
                remote.cleanup().await;
                return Err(err.context("failed to render the batch script"));
            }
        };
        let job_spec = JobSpec {
            name: this.name(&config.job_name),
            script,
            working_dir: run_dir.clone(),
            account: config.resources.account.clone(),
            partition: config.resources.partition.clone(),
            reservation: config.resources.reservation.clone(),
            dependency: staged.transfer_job.clone().filter(|_| attempt == 1),
            output: Some(spec.output_file.clone()),
            error: spec.error_file.clone(),
            time_limit: config.resources.time_limit.and_then(|t| t.as_duration()),
        };
        let job = match backend.submit(&job_spec).await {
            Ok(job) => job,
            Err(err) => {
                if let Some(transfer) = &staged.transfer_job {
                    let _ = backend.cancel(transfer).await;
                }
                let rejected = err
                    .chain()
                    .find_map(|c| c.downcast_ref::<backend::SubmitRejected>())
                    .cloned();
                let err = match rejected {
                    Some(rejected) => {
                        placement::explain(backend.as_ref(), &rejected, &config.resources).await
                    }
                    None => err.context("failed to submit the batch job"),
                };
                if config.cleanup.should_remove(false) {
                    remote.cleanup().await;
                }
                return Err(err);
            }
        };
        let submitted_at = SystemTime::now();
        tracing::info!("submitted job {job} ({}){}", job_spec.name, this.label());
        write_early_outputs(&config, &ci, &job, &run_dir);

        let log = log
            .try_clone()
            .context("failed to reopen the log file for this attempt")?;
        let submitted = Submitted {
            job,
            at: submitted_at,
            attempt: this,
            lost: &lost,
        };
        let ended = watch_job(&config, &ci, &remote, &submitted, &staged, log, &mut stop).await;
        let job = &submitted.job;
        if let Ok(Ended::Finished { status, .. }) = &ended {
            let state = &status.state;
            if attempt < attempts && state.cluster_lost_the_job() {
                tracing::warn!(
                    "job {job} ended {}: the cluster lost it, not its commands; \
                     submitting it again (attempt {} of {attempts})",
                    status.state,
                    attempt + 1
                );
                let record = format!("job {job} {}", status.state);
                lost.push(record);
                continue;
            }
        }
        return finish(&config, &ci, &remote, &submitted, ended).await;
    }
    unreachable!("the last attempt returns")
}

/// A submitted job and what the report says about how it came to be.
struct Submitted<'a> {
    job: JobId,
    at: SystemTime,
    attempt: Attempt,
    /// The earlier attempts the cluster lost, e.g. "job 12 NODE_FAIL".
    lost: &'a [String],
}

/// One submission of the job: the first, or a retry after the cluster lost
/// an earlier one.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    number: u32,
    of: u32,
}

impl Attempt {
    /// The name of a run-directory file for this attempt.
    fn file(&self, name: &str) -> String {
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

/// The per-run directory and the backend that reaches it.
struct Remote<'a> {
    backend: &'a dyn Backend,
    run_dir: String,
    /// Where cleanup shows what it must say before removing it.
    ci: Arc<Ci>,
}

impl Remote<'_> {
    fn path(&self, name: &str) -> String {
        format!("{}/{}", self.run_dir, name)
    }

    /// Removes the run directory and what the backend's helper jobs left
    /// beside it (their failed error logs shown in the CI log first).
    async fn cleanup(&self) {
        match self.backend.remove_dir(&self.run_dir).await {
            Ok(()) => tracing::info!("removed {}", self.run_dir),
            Err(err) => tracing::warn!("could not remove {}: {err:#}", self.run_dir),
        }
        let ci = self.ci.clone();
        self.backend
            .remove_helper_leftovers(&move |text: &str| ci.print_line(text))
            .await;
    }

    async fn cleanup_within(&self, limit: Duration) {
        if tokio::time::timeout(limit, self.cleanup()).await.is_err() {
            tracing::warn!("no time left to remove {}", self.run_dir);
        }
    }
}

/// How watching ended, with what the rest of the pipeline needs.
/// `script_ended`: the batch script's last line was shown, so its epilogue
/// (packing the artifacts) ran to the end.
enum Ended {
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

async fn pack_workspace(config: &Config, ci: &Ci, archive: &Path) -> Result<PackReport> {
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
struct Packing {
    archive: GrowingArchive,
    task: tokio::task::JoinHandle<Result<PackReport>>,
}

impl Packing {
    /// What packing made, once it ended.
    async fn report(self) -> Result<PackReport> {
        self.task.await.context("the packing task failed")?
    }
}

/// Starts packing into `archive`; the uploader follows the bytes written.
fn start_packing(config: &Config, archive: &Path) -> Packing {
    let options = pack_options(config);
    let out = archive.to_path_buf();
    let (tx, rx) = tokio::sync::watch::channel(Packed::Writing(0));
    let tx = Arc::new(tx);
    let written = tx.clone();
    let task = tokio::task::spawn_blocking(move || {
        let report = workspace::pack_watched(&options, &out, move |n| {
            written.send_replace(Packed::Writing(n));
        });
        match &report {
            Ok(report) => {
                // Logged here, when it happens, to be read in order with
                // the upload's lines.
                tracing::info!("{}", describe_pack(report));
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

fn describe_pack(report: &PackReport) -> String {
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
/// meanwhile.
async fn place_workspace(
    config: &Config,
    ci: &Ci,
    remote: &Remote<'_>,
    archive: GrowingArchive,
    stop: &StopSignal,
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
    let upload = remote.backend.upload_growing(archive, &remote.run_dir);
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

fn script_spec(
    config: &Config,
    run_dir: &str,
    staged: &StagedWorkspace,
    pack: &PackReport,
    artifacts_part_size: Option<u64>,
    attempt: Attempt,
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
    }
}

/// Outputs a later `if: cancelled()` step or an `after_script` can act on.
fn write_early_outputs(config: &Config, ci: &Ci, job: &JobId, run_dir: &str) {
    for (name, value) in [
        ("job-id", job.0.clone()),
        ("remote-dir", run_dir.to_string()),
        ("log-file", log_file_output(config)),
    ] {
        if let Err(err) = ci.set_output(name, &value) {
            tracing::warn!("could not write the step output {name}: {err:#}");
        }
    }
}

/// The log file as later steps can open it: relative to the workspace when
/// inside it (the action's container sees the workspace at another path
/// than the runner's later steps).
fn log_file_output(config: &Config) -> String {
    config
        .log_file
        .strip_prefix(&config.workspace)
        .unwrap_or(&config.log_file)
        .display()
        .to_string()
}

struct CiSink<'a>(&'a Ci);

impl OutputSink for CiSink<'_> {
    fn job_output(&self, bytes: &[u8]) {
        self.0.print_untrusted(bytes);
    }
}

async fn watch_job(
    config: &Config,
    ci: &Ci,
    remote: &Remote<'_>,
    submitted: &Submitted<'_>,
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
            let until = Instant::now() + STOP_BUDGET;
            tracing::warn!("cancelling job {job}: CI stopped the run");
            cancel_all(remote.backend, job, staged, STOP_CANCEL_BUDGET).await;
            // The job's epilogue packs the artifacts: show its output up to
            // the script's last line, leaving time to fetch them.
            let left = until.saturating_duration_since(Instant::now());
            let script_ended = watcher
                .drain_within(left.saturating_sub(STOP_AFTER_DRAIN))
                .await;
            Ok(Ended::Stopped {
                signal,
                script_ended,
                until,
            })
        }
        Ok(WatchEnd::DeadlineReached) => {
            tracing::warn!("cancelling job {job}: the run's timeout expired");
            cancel_all(remote.backend, job, staged, STOP_CANCEL_BUDGET * 2).await;
            let script_ended = watcher.drain_within(DEADLINE_DRAIN_BUDGET).await;
            Ok(Ended::Deadline { script_ended })
        }
        Err(err) => {
            tracing::warn!("cancelling job {job}: the run cannot follow it any more");
            cancel_all(remote.backend, job, staged, STOP_CANCEL_BUDGET * 2).await;
            Err(err)
        }
    };
    ci.finish();
    ci.group_end("job-output");
    tracing::debug!(stats = ?watcher.stats, "watching done");
    ended
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

async fn finish(
    config: &Config,
    ci: &Ci,
    remote: &Remote<'_>,
    submitted: &Submitted<'_>,
    ended: Result<Ended>,
) -> Result<i32> {
    let (job, attempt, lost) = (&submitted.job, submitted.attempt, submitted.lost);
    let submitted_at = submitted.at;
    let ended = match ended {
        Ok(ended) => ended,
        Err(err) => {
            if config.cleanup.should_remove(false) {
                remote.cleanup().await;
            }
            return Err(err);
        }
    };
    let correlation = remote.backend.correlation_id();
    let wants_artifacts =
        |success: bool| !config.artifacts.is_empty() && config.artifacts_when.matches(success);
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
                    fetch_artifacts(
                        config,
                        ci,
                        remote,
                        &attempt.file(ARTIFACTS_NAME),
                        script_ended,
                    ),
                )
                .await;
                if fetched.is_err() {
                    ci.warning(
                        "artifacts",
                        "no time was left to bring the artifacts back before CI's grace period ends",
                    );
                }
            }
            if config.cleanup.should_remove(false) {
                remote.cleanup_within(STOP_CLEANUP_BUDGET).await;
            }
            let code = outcome::ci_signal_code(signal);
            report_stopped(
                config,
                ci,
                job,
                code,
                "CI cancelled the run; the job was cancelled",
                correlation.as_deref(),
            );
            Ok(code)
        }
        Ended::Deadline { script_ended } => {
            if wants_artifacts(false) {
                fetch_artifacts(
                    config,
                    ci,
                    remote,
                    &attempt.file(ARTIFACTS_NAME),
                    script_ended,
                )
                .await;
            }
            if config.cleanup.should_remove(false) {
                remote.cleanup().await;
            }
            let message = format!(
                "the run's timeout of {} expired; the job was cancelled",
                humantime::format_duration(config.timeout.unwrap_or_default())
            );
            report_stopped(
                config,
                ci,
                job,
                codes::RUN_TIMEOUT,
                &message,
                correlation.as_deref(),
            );
            Ok(codes::RUN_TIMEOUT)
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
                let fetched = fetch_artifacts(
                    config,
                    ci,
                    remote,
                    &attempt.file(ARTIFACTS_NAME),
                    script_ended,
                )
                .await;
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
            if !keep && config.cleanup.should_remove(outcome.success) {
                remote.cleanup().await;
            } else if keep {
                tracing::warn!("kept {} so that nothing is lost", remote.run_dir);
            } else {
                tracing::info!("kept {} (cleanup: {:?})", remote.run_dir, config.cleanup);
            }
            report_outcome(
                config,
                ci,
                job,
                &outcome,
                &Timing::of(&status, submitted_at),
                correlation.as_deref(),
            );
            // Below the tool's own report, as the job's additions.
            pass_on_handback(ci, handed_back);
            Ok(outcome.exit_code)
        }
    }
}

/// The job's output and summary files, as read back (empty when the job
/// wrote nothing; `None` when they could not be read).
struct HandedBack {
    outputs: Option<String>,
    summary: Option<String>,
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
    HandedBack {
        outputs: read(attempt.file(handback::OUTPUT_FILE)).await,
        summary: read(attempt.file(handback::SUMMARY_FILE)).await,
    }
}

/// Passes the job's own step outputs and summary on to CI.
fn pass_on_handback(ci: &Ci, handed_back: HandedBack) {
    if let Some(text) = handed_back.outputs {
        let (outputs, refused) = handback::parse_outputs(&text);
        for output in &outputs {
            if let Err(err) = ci.set_job_output(&output.name, &output.value) {
                ci.warning("job outputs", &format!("{err:#}"));
            }
        }
        if !refused.is_empty() {
            ci.warning(
                "job outputs",
                &format!(
                    "ignored what the job wrote to FIRECREST_CI_OUTPUT on {}",
                    refused.join("; ")
                ),
            );
        }
        if !outputs.is_empty() {
            tracing::info!("the job set {} step outputs", outputs.len());
        }
    }
    if let Some(markdown) = handed_back.summary.filter(|m| !m.trim().is_empty()) {
        if let Err(err) = ci.append_summary(&markdown) {
            tracing::warn!("could not append the job's summary: {err:#}");
        }
    }
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

/// When and where the job ran, for the final report.
struct Timing {
    elapsed: Option<Duration>,
    queued: Option<Duration>,
    nodes: String,
}

impl Timing {
    fn of(status: &JobStatus, submitted_at: SystemTime) -> Self {
        let submitted = submitted_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let elapsed = status.elapsed.map(Duration::from_secs).or_else(|| {
            let (start, end) = (status.start_time?, status.end_time?);
            (end >= start).then(|| Duration::from_secs((end - start) as u64))
        });
        let queued = status
            .start_time
            .filter(|&start| start >= submitted && submitted > 0)
            .map(|start| Duration::from_secs((start - submitted) as u64));
        Timing {
            elapsed,
            queued,
            nodes: status.nodes.clone().unwrap_or_else(|| "-".to_string()),
        }
    }

    fn show(duration: Option<Duration>) -> String {
        duration.map_or_else(|| "-".to_string(), format_duration)
    }
}

fn report_outcome(
    config: &Config,
    ci: &Ci,
    job: &JobId,
    outcome: &Outcome,
    timing: &Timing,
    correlation: Option<&str>,
) {
    let (elapsed, queued) = (Timing::show(timing.elapsed), Timing::show(timing.queued));
    ci.print_line(&format!(
        "firecrest-ci: job {job} {}: exit code {} ({}); ran {elapsed} on {} after {queued} in the queue",
        outcome.state, outcome.exit_code, outcome.reason, timing.nodes
    ));
    print_correlation(ci, correlation);
    set_final_outputs(ci, &outcome.state, outcome.exit_code);
    let row = [
        outcome.state.as_str(),
        &outcome.exit_code.to_string(),
        &outcome.reason,
        &elapsed,
        &queued,
        &timing.nodes,
    ];
    write_summary(config, ci, job, row, correlation);
    if !outcome.success {
        ci.error(&format!("job {job} {}", outcome.state), &outcome.reason);
    }
}

/// Says loudly which output the CI log lacks and where the whole log is.
fn report_missing(ci: &Ci, remote: &Remote<'_>, missing: &[(String, Missing)]) {
    for (path, range) in missing {
        let name = path.rsplit('/').next().unwrap_or(path);
        let line = format!(
            "firecrest-ci: {range} of {name} could not be shown; the whole file is {path} \
             (the run directory {} was kept)",
            remote.run_dir
        );
        ci.print_line(&line);
        ci.error("job output incomplete", &line);
    }
}

fn report_stopped(
    config: &Config,
    ci: &Ci,
    job: &JobId,
    code: i32,
    message: &str,
    correlation: Option<&str>,
) {
    ci.print_line(&format!(
        "firecrest-ci: job {job}: {message} (exit code {code})"
    ));
    print_correlation(ci, correlation);
    set_final_outputs(ci, "CANCELLED", code);
    // The summary says what the final line and the outputs say.
    write_summary(
        config,
        ci,
        job,
        ["CANCELLED", &code.to_string(), message, "-", "-", "-"],
        correlation,
    );
    ci.error(&format!("job {job} cancelled"), message);
}

/// The step summary's table: one row of state, exit code, reason, elapsed,
/// queue time and nodes, then the job name.
fn write_summary(config: &Config, ci: &Ci, job: &JobId, row: [&str; 6], correlation: Option<&str>) {
    let cell = |text: &str| text.replace('|', "\\|");
    let cells: Vec<String> = row
        .iter()
        .chain([&config.job_name.as_str()])
        .map(|c| cell(c))
        .collect();
    let summary = format!(
        "### firecrest-ci: job {job}\n\n\
         | state | exit code | reason | elapsed | queue time | nodes | job name |\n\
         |---|---|---|---|---|---|---|\n\
         | {} |\n{}",
        cells.join(" | "),
        correlation.map_or_else(String::new, |id| format!(
            "\nFirecREST correlation id `{id}` (every request of this run carries it).\n"
        ))
    );
    if let Err(err) = ci.append_summary(&summary) {
        tracing::warn!("could not write the step summary: {err:#}");
    }
}

/// The run's correlation id, right below the final report: what a centre's
/// support asks for.
fn print_correlation(ci: &Ci, correlation: Option<&str>) {
    if let Some(id) = correlation {
        ci.print_line(&format!(
            "firecrest-ci: FirecREST correlation id {id} (X-Correlation-ID of every request of this run)"
        ));
    }
}

fn set_final_outputs(ci: &Ci, state: &str, code: i32) {
    for (name, value) in [
        ("state", state.to_string()),
        ("exit-code", code.to_string()),
    ] {
        if let Err(err) = ci.set_output(name, &value) {
            tracing::warn!("could not write the step output {name}: {err:#}");
        }
    }
}

/// `firecrest-ci cancel <job-id>`: for a GitLab `after_script` or a GitHub
/// `if: cancelled()` step, when the run itself was killed before it could
/// cancel. A job that already ended is left alone.
/// Needs only the connection: no command, no workspace.
pub async fn cancel_job(connection: &Connection, ci: &Arc<Ci>, job: &str) -> Result<i32> {
    if job.is_empty() || !job.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(outcome::CodedError {
            code: codes::USAGE,
            message: format!("{job:?} is not a job id: it should be a number such as 12345"),
        }
        .into());
    }
    let backend = connect(connection, ci)?;
    let id = JobId(job.to_string());
    match backend
        .job_status(&id)
        .await
        .context("failed to read the job state")?
    {
        None => tracing::info!("job {id} is not known to the scheduler; nothing to cancel"),
        Some(status) if status.state.is_final() => {
            tracing::info!(
                "job {id} already ended ({}); nothing to cancel",
                status.state
            )
        }
        Some(_) => {
            backend
                .cancel(&id)
                .await
                .with_context(|| format!("failed to cancel job {id}"))?;
            tracing::info!("job {id} cancelled");
        }
    }
    Ok(codes::SUCCESS)
}

/// Builds the backend the configuration asks for and masks the client
/// secret in CI logs. No network traffic yet.
pub fn connect(config: &Connection, ci: &Arc<Ci>) -> Result<Box<dyn Backend>> {
    if let Some(Credentials::ClientCredentials { client_secret, .. }) =
        config.firecrest.as_ref().map(|f| &f.credentials)
    {
        ci.mask(client_secret.expose());
    }
    Ok(match config.backend {
        BackendKind::Firecrest => {
            let settings = config
                .firecrest
                .as_ref()
                .context("the firecrest backend needs FIRECREST_URL")?;
            let masker = ci.clone();
            Box::new(backend::firecrest::FirecrestBackend::new(
                settings,
                &config.poll,
                config.transfer_threshold,
                Arc::new(move |token: &str| masker.mask(token)),
            )?)
        }
        BackendKind::Slurm => Box::new(backend::slurm::SlurmBackend::new()),
        BackendKind::Local => Box::new(backend::local::LocalBackend::new()),
    })
}

async fn dry_run(config: &Config, ci: &Ci, run_name: &str) -> Result<i32> {
    tracing::info!("dry run: nothing is sent to a cluster");
    let scratch = tempfile::Builder::new()
        .prefix("firecrest-ci-")
        .tempdir()
        .context("failed to create a temporary directory for the workspace archive")?;
    let archive = scratch.path().join(ARCHIVE_NAME);
    let pack = pack_workspace(config, ci, &archive).await?;
    let base = config
        .remote_dir
        .clone()
        .unwrap_or_else(|| match config.backend {
            // Known only once connected: the system's default work
            // directory and the user's name.
            BackendKind::Firecrest => "/SCRATCH/USER/firecrest-ci".to_string(),
            _ => "/TMP/firecrest-ci".to_string(),
        });
    let run_dir = format!("{}/{}", base.trim_end_matches('/'), run_name);
    let staged = StagedWorkspace {
        parts: vec![ARCHIVE_NAME.to_string()],
        transfer_job: None,
    };
    let first = Attempt {
        number: 1,
        of: 1 + config.retries,
    };
    let script = script::render(&script_spec(config, &run_dir, &staged, &pack, None, first))
        .context("failed to render the batch script")?;

    let mut plan = String::new();
    plan.push_str(&format!("workspace: {}\n", config.workspace.display()));
    plan.push_str(&format!(
        "  {}\n  sha256 {}\n",
        describe_pack(&pack),
        pack.sha256
    ));
    plan.push_str(&format!("run directory: {run_dir}\n"));
    plan.push_str(&format!("job name: {}\n", config.job_name));
    plan.push_str("plan:\n");
    let request = backend::PlanRequest {
        config,
        run_dir: &run_dir,
        archive: ARCHIVE_NAME,
        env_file: ENV_FILE_NAME,
        output: OUTPUT_NAME,
        artifacts: ARTIFACTS_NAME,
    };
    for (n, step) in backend::plan(&request).iter().enumerate() {
        plan.push_str(&format!("  {}. {step}\n", n + 1));
    }
    ci.print_line(&plan);
    ci.group_start("script", "Batch script");
    ci.print_line(&script);
    ci.group_end("script");
    Ok(codes::SUCCESS)
}

/// When the process started, for the run's overall timeout.
static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

/// Notes the process start time; call first thing in `main`.
pub fn mark_start() {
    std::sync::LazyLock::force(&START);
}

fn stopped(stop: &StopSignal) -> Option<i32> {
    *stop.borrow()
}

fn signal_code(stop: &StopSignal) -> i32 {
    stopped(stop).map_or(codes::INTERNAL, outcome::ci_signal_code)
}

async fn wait_for_stop(stop: &mut StopSignal) {
    loop {
        if stop.borrow().is_some() {
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn random_suffix() -> String {
    use rand::Rng;
    format!("{:06x}", rand::thread_rng().gen::<u32>() & 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_suffixes_differ() {
        assert_ne!(random_suffix(), random_suffix());
    }
}
