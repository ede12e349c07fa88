//! The pipeline, in the order the README tells it: pack the workspace, place
//! it on the cluster, render and submit the batch script, watch the job while
//! streaming its output, map the final state to an exit code, bring the
//! artifacts back, clean up. Cancellation by CI and the run's own deadline
//! cancel the job on the way out: no job outlives the tool.
//!
//! `run` is the pipeline; each step lives in its own file: `place.rs`
//! (packing and placing the workspace), `ahead.rs` (submitting the job
//! while the last parts go up), `attempt.rs` (script, submission,
//! watching, retries of a job the cluster lost), `stop.rs` (cancel on a
//! signal or the timeout), `finish.rs` (artifacts, hand-back, the one
//! cleanup decision) and `report.rs` (what CI reads at the end).

mod ahead;
mod attempt;
mod finish;
mod place;
mod report;
mod stop;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::backend::{self, Backend, JobId, StagedSoon, StagedWorkspace};
use crate::ci::Ci;
use crate::config::{BackendKind, Config, Connection, Credentials};
use crate::job::StopSignal;
use crate::outcome::{self, codes};
use crate::placement;
use crate::script;
use crate::workspace::PackReport;

use attempt::{script_spec, Attempt, Staged};
use finish::End;
use place::{describe_pack, pack_workspace, Packing};
use stop::{signal_code, stopped};

/// File names inside the per-run directory.
const ARCHIVE_NAME: &str = "workspace.tar.gz";
const ENV_FILE_NAME: &str = ".firecrest-ci-env";
const OUTPUT_NAME: &str = "job.out";
const ERROR_NAME: &str = "job.err";
const ARTIFACTS_NAME: &str = "artifacts.tar.gz";
/// Holds the archive's SHA-256 once every part is up, for a job submitted
/// while the last ones went up.
const READY_NAME: &str = "workspace.ready";

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
    // Step 1, the configuration, was read in main. Connect (no request yet).
    let backend = connect(&config.connection(), &ci)?;
    tracing::info!(
        "firecrest-ci {}: {}",
        env!("CARGO_PKG_VERSION"),
        backend.describe()
    );

    // Step 2: pack, in the background from here on: while the first requests
    // (token, systems, the user's name) reach the cluster, so that a wrong
    // URL or secret shows before a large workspace is packed, and while the
    // archive's first parts go up.
    let scratch = tempfile::Builder::new()
        .prefix("firecrest-ci-")
        .tempdir()
        .context("failed to create a temporary directory for the workspace archive")?;
    let packing = place::start_packing(&config, &scratch.path().join(ARCHIVE_NAME));
    // On a failed first contact the packing is abandoned: the archive goes
    // with `scratch`, the packing thread is not waited for.
    let base = place::base_dir(&config, backend.as_ref()).await?;
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

    // Steps 3 to 5: from here on the run directory exists: every way out goes
    // through `finish`, which decides its cleanup once.
    let remote = Remote {
        backend: backend.as_ref(),
        run_dir: format!("{}/{}", base.trim_end_matches('/'), run_name),
        ci: ci.clone(),
    };
    let on_cluster = async {
        // The job is submitted while the last parts go up when the upload
        // says it may (step 4 before step 3 ends).
        let (soon, staged_soon) = tokio::sync::oneshot::channel();
        let packed = packing.packed.clone();
        let staging = staged_workspace(&config, &ci, &remote, packing, &stop, soon);
        let placed = ahead::place_and_submit(
            &config,
            &ci,
            &remote,
            staging,
            staged_soon,
            &packed,
            artifacts_part_size,
        )
        .await?;
        let Some(placed) = placed else {
            return Ok(End::Unsubmitted {
                code: signal_code(&stop),
            });
        };
        drop(scratch);
        let staged = Staged {
            workspace: &placed.staged,
            pack: &placed.pack,
            artifacts_part_size,
        };
        attempt::submit_and_watch(
            &config,
            &ci,
            &remote,
            &staged,
            placed.first,
            &log,
            &mut stop,
        )
        .await
    };
    let end = on_cluster.await;
    // Steps 6 and 7: outcome, artifacts, hand-back, cleanup, report.
    finish::finish(&config, &ci, &remote, end).await
}

/// Step 3: creates the run directory and uploads the workspace while it is
/// packed; `None` when CI stopped the run meanwhile.
async fn staged_workspace(
    config: &Config,
    ci: &Ci,
    remote: &Remote<'_>,
    packing: Packing,
    stop: &StopSignal,
    soon: StagedSoon,
) -> Result<Option<(StagedWorkspace, PackReport)>> {
    let archive = packing.archive.clone();
    let placed = place::place_workspace(config, ci, remote, archive, stop, soon).await;
    let staged = match placed {
        Ok(Some(staged)) => staged,
        Ok(None) => return Ok(None),
        // A packing error explains a failed upload.
        Err(err) => {
            return Err(match packing.report().await {
                Err(pack_err) => pack_err,
                Ok(_) => err,
            })
        }
    };
    Ok(Some((staged, packing.report().await?)))
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
    let first = Attempt::first(config);
    let spec = script_spec(config, &run_dir, &staged, &pack, None, first, None);
    let script = script::render(&spec).context("failed to render the batch script")?;

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
