//! How the pipeline reaches a cluster. The pipeline in `run.rs` only speaks
//! this trait, so the same job runs through FirecREST, local Slurm commands or
//! plain `bash` on this machine.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use async_trait::async_trait;

pub mod firecrest;
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
}

/// One look at a job, as the scheduler reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobStatus {
    /// Slurm's raw state string, e.g. `RUNNING` or `CANCELLED by 1001`.
    pub state: String,
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
}

/// The archive the job's prologue reassembles and extracts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StagedWorkspace {
    /// File names inside the run directory, in order; `cat` them to get the archive.
    pub parts: Vec<String>,
    /// A transfer job the batch job must wait for, if the upload went through S3.
    pub transfer_job: Option<JobId>,
}

/// Cluster access: every call the pipeline makes on the remote side.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Short description for logs and the plan, e.g. `FirecREST daint at https://...`.
    fn describe(&self) -> String;

    /// The base directory for run directories when the user gave none.
    async fn default_base_dir(&self) -> Result<String>;

    /// Creates `path` (and parents) readable by the owner only (mode 0700).
    async fn create_private_dir(&self, path: &str) -> Result<()>;

    /// Places a small file (the forwarded environment) in a private directory.
    async fn put_file(&self, dir: &str, name: &str, contents: Vec<u8>) -> Result<()>;

    /// Uploads the packed workspace into `dir`, choosing the way by size.
    async fn upload_workspace(&self, archive: &Path, dir: &str) -> Result<StagedWorkspace>;

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

    /// Removes a directory tree; a missing directory counts as removed.
    async fn remove_dir(&self, path: &str) -> Result<()>;
}

/// Variables forwarded to the job: name to value, values secret.
pub type ForwardedEnv = BTreeMap<String, crate::secret::Secret>;
