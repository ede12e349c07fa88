//! How the pipeline reaches a cluster. The pipeline in `run.rs` only speaks
//! this trait, so the same job runs through FirecREST, local Slurm commands or
//! plain `bash` on this machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use async_trait::async_trait;

pub mod firecrest;
pub mod fs;
pub mod local;
pub mod slurm;

/// A Slurm (or local) job id, as the scheduler prints it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobId(pub String);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What to submit. Time, nodes, tasks and GPUs live in the script's
/// `#SBATCH` lines; placement goes through the submit call's own fields.
/// The output files and the time limit are also fields, for a backend that
/// runs the script itself (`local`) instead of reading them back from it.
#[derive(Debug, Clone, Default)]
pub struct JobSpec {
    /// Unique per run, so a lost submit reply can be resolved by looking the job up.
    pub name: String,
    /// The whole batch script, starting with `#!/bin/bash -l`.
    pub script: String,
    /// Absolute remote directory the job starts in (the per-run directory).
    pub working_dir: String,
    pub account: Option<String>,
    pub partition: Option<String>,
    pub reservation: Option<String>,
    /// A transfer job that must finish first (`--dependency=afterok:<id>`).
    pub dependency: Option<JobId>,
    /// The job's output file (stdout, and stderr unless `error` is set), as
    /// the script's `--output` names it but literal (no `%` patterns);
    /// relative paths are under `working_dir`. `None`: Slurm's default
    /// `slurm-<id>.out`.
    pub output: Option<String>,
    /// Stderr's own file, like `output`; `None` merges it into `output`.
    pub error: Option<String>,
    /// The script's `--time`; `None`: no limit (the partition's default on
    /// a cluster).
    pub time_limit: Option<std::time::Duration>,
}

/// The run a dry run describes: each backend lists the calls it would make
/// ([`plan`]).
pub struct PlanRequest<'a> {
    /// Backend, settings, cleanup, poll intervals, ...
    pub config: &'a crate::config::Config,
    /// The run directory the run would create.
    pub run_dir: &'a str,
    /// The workspace archive's name in the run directory.
    pub archive: &'a str,
    /// The forwarded environment's file name in the run directory.
    pub env_file: &'a str,
    /// The job output's file name in the run directory.
    pub output: &'a str,
    /// The artifacts archive's name in the run directory.
    pub artifacts: &'a str,
}

impl PlanRequest<'_> {
    /// A removal step with the `cleanup` setting that decides whether it runs.
    pub fn removal(&self, step: &str) -> String {
        format!("{step} ({:?})", self.config.cleanup)
    }
}

/// Every call the run would make, step by step, for the dry run. Asked of
/// the backend kind, not of a connected backend: the dry run connects to
/// nothing and plans even without a FirecREST URL.
pub fn plan(request: &PlanRequest) -> Vec<String> {
    match request.config.backend {
        crate::config::BackendKind::Firecrest => firecrest::plan(request),
        crate::config::BackendKind::Slurm => slurm::plan(request),
        crate::config::BackendKind::Local => local::plan(request),
    }
}

/// One look at a job, as the scheduler reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobStatus {
    /// Slurm's state, parsed once where the backend reads it (`Display`
    /// gives Slurm's spelling back, e.g. `CANCELLED by 1001`).
    pub state: crate::outcome::SlurmState,
    /// Why the job waits (`Priority`, `Resources`), when Slurm says.
    pub reason: Option<String>,
    /// The `rc` half of Slurm's `rc:signal`; `None` while pending.
    pub exit_code: Option<i64>,
    /// The `signal` half of Slurm's `rc:signal`; `None` while pending.
    pub signal: Option<i64>,
    /// Seconds the job has run.
    pub elapsed: Option<u64>,
    /// Unix times, when known.
    pub submit_time: Option<i64>,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    /// Node list, e.g. `nid[001-004]`.
    pub nodes: Option<String>,
}

/// Bytes read from a job's output file starting at a byte offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputChunk {
    /// What to show. Raw bytes where the backend can read them; FirecREST
    /// returns text, where invalid bytes are already U+FFFD.
    pub data: Vec<u8>,
    /// How many bytes of the remote file `data` stands for: the next read
    /// starts at `offset + advance`. Differs from `data.len()` only when the
    /// server replaced invalid bytes.
    pub advance: u64,
    /// The read stopped at its size or time limit, not at the end of the
    /// file: more is there now, and the watcher reads again at once.
    pub more: bool,
}

/// The archive the job's prologue reassembles and extracts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StagedWorkspace {
    /// File names inside the run directory, in order; `cat` them to get the archive.
    pub parts: Vec<String>,
    /// A transfer job the batch job must wait for, if the upload went through S3.
    pub transfer_job: Option<JobId>,
}

/// Where an upload says what it will have staged before it ends: once the
/// rest is expected up within [`crate::transfer::SUBMIT_LEAD`], so that the
/// job is submitted meanwhile and starts as the last parts land. An upload
/// that never sends is staged before the job is submitted.
pub type StagedSoon = tokio::sync::oneshot::Sender<StagedWorkspace>;

/// How far the workspace archive has been packed into its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packed {
    /// This many bytes are in the file, final; more are coming.
    Writing(u64),
    /// Packing ended: the file holds the whole archive, this many bytes.
    Done(u64),
    /// Packing failed (the packer reports why): the file is no archive.
    Failed,
}

/// The workspace archive while it is being packed: the bytes below what
/// the packer reported are in the file and never change, so they can go
/// up before packing ends.
#[derive(Debug, Clone)]
pub struct GrowingArchive {
    pub path: PathBuf,
    feed: tokio::sync::watch::Receiver<Packed>,
}

impl GrowingArchive {
    /// An archive the packer reports on through `feed`.
    pub fn new(path: PathBuf, feed: tokio::sync::watch::Receiver<Packed>) -> Self {
        Self { path, feed }
    }

    /// An archive that is already whole.
    pub fn complete(path: PathBuf, size: u64) -> Self {
        let (_, feed) = tokio::sync::watch::channel(Packed::Done(size));
        Self { path, feed }
    }

    /// What the packer said last.
    pub fn now(&self) -> Packed {
        *self.feed.borrow()
    }

    /// Waits until at least `bytes` are in the file or packing ended.
    pub async fn written(&mut self, bytes: u64) -> Result<Packed> {
        let seen = self
            .feed
            .wait_for(|p| !matches!(p, Packed::Writing(n) if *n < bytes))
            .await
            .map(|p| *p);
        match seen {
            Ok(Packed::Failed) | Err(_) => bail!("packing the workspace failed"),
            Ok(packed) => Ok(packed),
        }
    }

    /// Waits for the packer to say more; `Packed::Failed` is an error.
    pub async fn changed(&mut self) -> Result<Packed> {
        if matches!(self.now(), Packed::Writing(_)) {
            let _ = self.feed.changed().await;
        }
        match self.now() {
            Packed::Failed => bail!("packing the workspace failed"),
            packed => Ok(packed),
        }
    }

    /// Waits until packing ended; the archive's size.
    pub async fn finished(&mut self) -> Result<u64> {
        match self.written(u64::MAX).await? {
            Packed::Done(size) => Ok(size),
            _ => bail!("packing the workspace failed"),
        }
    }
}

/// The scheduler refused the job because of one of its inputs (a partition,
/// an account, ...): the same submit fails the same way every time. The run
/// names the input and the valid values ([`crate::placement`]); exit 78.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the scheduler refused the job: {detail}")]
pub struct SubmitRejected {
    pub rejection: crate::firecrest::retry::Rejection,
    /// Sbatch's own words, for the message.
    pub detail: String,
}

impl SubmitRejected {
    /// A rejection read from a submit's error message (FirecREST's relayed
    /// stderr or sbatch's own), or `None` when the message is no refusal.
    pub fn from_message(message: &str) -> Option<Self> {
        let rejection = crate::firecrest::retry::sbatch_rejection(message)?;
        let detail = message
            .lines()
            .flat_map(|line| line.split("std_err:"))
            .map(str::trim)
            .filter(|line| line.starts_with("sbatch:"))
            .collect::<Vec<_>>()
            .join("; ");
        Some(Self {
            rejection,
            detail: if detail.is_empty() {
                message.trim().to_string()
            } else {
                detail
            },
        })
    }
}

/// One line of `firecrest-ci check`'s table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRow {
    pub label: String,
    /// What was found, or what to fix.
    pub value: String,
    /// The exit code a run would get because of this, when it is a problem.
    pub problem: Option<i32>,
}

impl CheckRow {
    pub fn ok(label: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            value: value.into(),
            problem: None,
        }
    }

    pub fn problem(label: impl Into<String>, value: impl Into<String>, code: i32) -> Self {
        Self {
            label: label.into(),
            value: value.into(),
            problem: Some(code),
        }
    }
}

/// Cluster access: every call the pipeline makes on the remote side.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Short description for logs and the plan, e.g. `FirecREST daint at https://...`.
    fn describe(&self) -> String;

    /// The id every request of this run carries (FirecREST's
    /// `X-Correlation-ID`), for the centre's support; `None` for backends
    /// without requests.
    fn correlation_id(&self) -> Option<String> {
        None
    }

    /// The base directory for run directories when the user gave none.
    async fn default_base_dir(&self) -> Result<String>;

    /// Reaches the cluster once, so that a wrong address or credentials
    /// show while the workspace is still being packed; a backend with no
    /// server to reach has nothing to do.
    async fn first_contact(&self) -> Result<()> {
        Ok(())
    }

    /// Creates `path` (and parents) readable by the owner only (mode 0700).
    async fn create_private_dir(&self, path: &str) -> Result<()>;

    /// Places a small file (the forwarded environment) in a private directory.
    async fn put_file(&self, dir: &str, name: &str, contents: Vec<u8>) -> Result<()>;

    /// Uploads the packed workspace into `dir`, choosing the way by size.
    async fn upload_workspace(&self, archive: &Path, dir: &str) -> Result<StagedWorkspace>;

    /// Uploads the workspace archive while it is being packed. Backends that
    /// copy files whole wait for the end of packing (and never say `soon`).
    async fn upload_growing(
        &self,
        mut archive: GrowingArchive,
        dir: &str,
        _soon: StagedSoon,
    ) -> Result<StagedWorkspace> {
        archive.finished().await?;
        self.upload_workspace(&archive.path, dir).await
    }

    /// Submits the batch job; returns as soon as the scheduler accepted it.
    async fn submit(&self, job: &JobSpec) -> Result<JobId>;

    /// The job's status; `None` while the scheduler does not know it (yet).
    async fn job_status(&self, id: &JobId) -> Result<Option<JobStatus>>;

    /// Reads the file at `path` from byte `offset` on; empty when nothing new.
    /// `last` says the file will not grow any more (the job ended and its
    /// output was drained): bytes held back because they might be the start
    /// of a character still being written are given out now.
    async fn read_output(&self, path: &str, offset: u64, last: bool) -> Result<OutputChunk>;

    /// The size of the output file at `path`, to name what could not be
    /// shown; `None` when it does not exist or the backend cannot tell.
    async fn output_size(&self, path: &str) -> Result<Option<u64>> {
        let _ = path;
        Ok(None)
    }

    /// The partitions jobs can be submitted to; `None` when the backend
    /// cannot tell (no scheduler, or the server does not say).
    async fn partitions(&self) -> Result<Option<Vec<String>>> {
        Ok(None)
    }

    /// The accounts the user may charge; `None` when the backend cannot tell.
    async fn accounts(&self) -> Result<Option<Vec<String>>> {
        Ok(None)
    }

    /// The permission bits of `path` (e.g. `0o700`); `None` when it does
    /// not exist or the backend cannot tell.
    async fn mode(&self, path: &str) -> Result<Option<u32>> {
        let _ = path;
        Ok(None)
    }

    /// What the backend can say about the access itself, as table rows
    /// (label, value) for `check`: the token, the systems' health, the user.
    /// Fails with the code a run would get (77 credentials, 78 input, 69
    /// server down).
    async fn describe_access(&self) -> Result<Vec<CheckRow>> {
        Ok(Vec::new())
    }

    /// Cancels the job; a job that already ended counts as cancelled.
    async fn cancel(&self, id: &JobId) -> Result<()>;

    /// The size of parts the job should also cut its artifacts archive
    /// into, when this backend can only bring back small files whole.
    async fn artifacts_part_size(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// Copies a remote file to `local`; `Ok(false)` when it does not exist.
    /// A file larger than the backend can bring back whole is read from the
    /// parts the job cut it into (see [`Backend::artifacts_part_size`]).
    async fn download(&self, remote: &str, local: &Path) -> Result<bool>;

    /// Stops the backend's own helper jobs that the run no longer needs
    /// (FirecREST's transfer jobs that have not ended), whatever happens to
    /// the run directory: a run leaves no job behind.
    async fn stop_helpers(&self) {}

    /// Removes what the backend's own helper jobs left outside the run
    /// directory once they ended (FirecREST's transfer-job logs), and
    /// nothing else. A failed helper job's error log goes to `report` first.
    async fn remove_helper_leftovers(&self, report: &(dyn for<'s> Fn(&'s str) + Send + Sync)) {
        let _ = report;
    }

    /// Removes a directory tree; a missing directory counts as removed.
    async fn remove_dir(&self, path: &str) -> Result<()>;
}

/// Variables forwarded to the job: name to value, values secret.
pub type ForwardedEnv = BTreeMap<String, crate::secret::Secret>;
