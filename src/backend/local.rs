//! The `local` backend: runs the rendered batch script with `bash -l` on this
//! machine, so a user can try a job before pushing and the README's first
//! command needs no cluster. It keeps Slurm's contract where the pipeline
//! relies on it: the output and error files, the time limit (TIMEOUT),
//! cancellation of the whole process tree (CANCELLED), and Slurm's state
//! names and `rc:signal` exit codes. Output files and the time limit come
//! from the [`JobSpec`]'s fields (the script's `#SBATCH` lines say the same
//! for Slurm); files go through [`LocalFiles`], shared with the `slurm`
//! backend.

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{watch, OnceCell};

pub use super::fs::LocalFiles;
use super::{Backend, JobId, JobSpec, JobStatus, OutputChunk, StagedWorkspace};
use crate::outcome::SlurmState;

/// How long a job may take to end after SIGTERM (cancel or time limit)
/// before SIGKILL; Slurm's `KillWait` plays this part on a cluster. Longer
/// than the batch script's own grace for the commands, so that its epilogue
/// still runs.
const KILL_GRACE: Duration = Duration::from_secs(crate::script::COMMANDS_GRACE_SECS as u64 + 5);

/// Variables a job inherits from this process. Like `sbatch --export=NONE`,
/// nothing else gets through (CI secrets stay out of the job); the login
/// shell sets up the rest, and forwarded variables come through the env file.
const PASSED_ENV: &[&str] = &[
    "HOME", "USER", "LOGNAME", "PATH", "SHELL", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
    "TERM",
];

/// Job ids are unique across backends in one process, so two tests (or two
/// backends) never hand out the same id for different jobs.
static NEXT_JOB_ID: AtomicU64 = AtomicU64::new(1);

/// Runs batch scripts on this machine; see the module docs.
#[derive(Default)]
pub struct LocalBackend {
    files: LocalFiles,
    jobs: Mutex<HashMap<String, Arc<LocalJob>>>,
    base_dir: OnceCell<String>,
}

impl LocalBackend {
    /// A backend with no jobs yet.
    pub fn new() -> Self {
        Self::default()
    }
}

/// One submitted job: its control channel and what it looks like now.
struct LocalJob {
    /// Set to the state the backend wants (CANCELLED); the job's task reacts.
    kill: watch::Sender<Option<SlurmState>>,
    /// Becomes true when the job's process is reaped and its tree is gone.
    done: watch::Receiver<bool>,
    state: Mutex<LocalState>,
}

#[derive(Debug, Clone)]
struct LocalState {
    state: SlurmState,
    exit_code: Option<i64>,
    signal: Option<i64>,
    submit_time: i64,
    start: std::time::Instant,
    start_time: i64,
    end_time: Option<i64>,
    elapsed: Option<u64>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Opens (appending) a job output file relative to the working directory.
fn open_output(working_dir: &Path, name: &str) -> Result<std::fs::File> {
    let path = working_dir.join(name);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(&path)
        .with_context(|| format!("failed to open job output file {}", path.display()))
}

/// The wrapper that starts the job. It leads a session of its own (which,
/// like Slurm's process tracking, holds every process of the job whatever
/// process groups the script makes) and `exec`s `bash -l <script>`; before
/// that it leaves a watcher in the session that reads a pipe only this
/// process writes to. When that pipe closes (the job ended, or this process
/// died, even by SIGKILL) the watcher kills the whole session, so no part of
/// the job outlives its run; Slurm does the same at the end of a job.
const WRAPPER: &str = r#"exec 3<&0
( trap '' TERM INT HUP; read -r _ <&3; pkill -KILL -s "$$" 2>/dev/null; kill -KILL 0 ) &
exec bash -l "$1" </dev/null 3<&-"#;

impl LocalBackend {
    fn job(&self, id: &JobId) -> Option<Arc<LocalJob>> {
        self.jobs
            .lock()
            .ok()
            .and_then(|jobs| jobs.get(&id.0).cloned())
    }

    fn spawn(&self, job: &JobSpec, id: &str) -> Result<(Child, tempfile::TempPath)> {
        let name = &job.name;
        let wd = PathBuf::from(&job.working_dir);
        if !wd.is_dir() {
            bail!("working directory {} does not exist", wd.display());
        }
        // Slurm's default when the job names no output file.
        let out_name = job
            .output
            .clone()
            .unwrap_or_else(|| format!("slurm-{id}.out"));
        let stdout = open_output(&wd, &out_name)?;
        let stderr = match job.error.as_deref() {
            Some(err_name) => {
                if err_name == out_name {
                    stdout
                        .try_clone()
                        .context("failed to share the job output file")?
                } else {
                    open_output(&wd, err_name)?
                }
            }
            None => stdout
                .try_clone()
                .context("failed to share the job output file")?,
        };

        let mut script_file = tempfile::Builder::new()
            .prefix("firecrest-ci-job-")
            .suffix(".sh")
            .tempfile()
            .context("failed to create a temporary file for the batch script")?;
        {
            use std::io::Write;
            script_file
                .write_all(job.script.as_bytes())
                .and_then(|()| script_file.flush())
                .context("failed to write the batch script")?;
        }
        let script_path = script_file.into_temp_path();

        let mut cmd = Command::new("bash");
        cmd.arg("--noprofile")
            .arg("--norc")
            .arg("-c")
            .arg(WRAPPER)
            .arg("firecrest-ci-job")
            .arg(&script_path)
            .current_dir(&wd)
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr)
            .env_clear()
            .kill_on_drop(true);
        for key in PASSED_ENV {
            if let Some(value) = std::env::var_os(key) {
                cmd.env(key, value);
            }
        }
        cmd.env("SLURM_JOB_ID", id)
            .env("SLURM_JOBID", id)
            .env("SLURM_JOB_NAME", name)
            .env("SLURM_SUBMIT_DIR", &wd)
            .env("SLURM_JOB_NODELIST", "localhost")
            .env("SLURM_CPUS_ON_NODE", "1");
        // SAFETY: setsid and prctl are async-signal-safe and touch only this process.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .context("failed to start bash for the local job")?;
        Ok((child, script_path))
    }
}

/// Waits for the job, enforcing the time limit and cancellation, and keeps
/// its state up to date.
async fn supervise(
    job: Arc<LocalJob>,
    mut child: Child,
    stdin: Option<ChildStdin>,
    script: tempfile::TempPath,
    limit: Option<Duration>,
    mut kill: watch::Receiver<Option<SlurmState>>,
    done: watch::Sender<bool>,
) {
    // The wrapper leads the job's session: its pid is the session id.
    let pgid = child.id().map(|pid| Pid::from_raw(pid as i32));
    let deadline = limit.map(|l| tokio::time::Instant::now() + l);
    let timed_out = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    let requested = async {
        loop {
            if let Some(state) = kill.borrow_and_update().clone() {
                return state;
            }
            if kill.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    };
    let mut forced: Option<SlurmState> = None;
    let status = tokio::select! {
        status = child.wait() => status,
        () = timed_out => { forced = Some(SlurmState::Timeout); terminate(&mut child, pgid).await }
        state = requested => { forced = Some(state); terminate(&mut child, pgid).await }
    };
    // Closing the pipe makes the watcher kill what is left of the session.
    drop(stdin);
    if let Some(pgid) = pgid {
        reap_session(
            pgid,
            if forced.is_some() {
                KILL_GRACE
            } else {
                Duration::from_secs(2)
            },
        )
        .await;
    }
    drop(script);

    let (state, exit_code, signal) = match status {
        Ok(status) => describe_exit(status, forced),
        Err(_) => (forced.unwrap_or(SlurmState::Failed), None, None),
    };
    if let Ok(mut s) = job.state.lock() {
        s.state = state;
        s.exit_code = exit_code.or(Some(0));
        s.signal = signal.or(Some(0));
        s.end_time = Some(unix_now());
        s.elapsed = Some(s.start.elapsed().as_secs());
    }
    let _ = done.send(true);
}

/// SIGTERM to the batch shell alone, as Slurm sends it (the script passes
/// it on to the commands), SIGKILL to the whole job after the grace period;
/// returns the batch shell's status.
async fn terminate(child: &mut Child, sid: Option<Pid>) -> std::io::Result<ExitStatus> {
    if let Some(pid) = sid {
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
    }
    match tokio::time::timeout(KILL_GRACE, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            if let Some(sid) = sid {
                kill_session(sid, Signal::SIGKILL);
            }
            child.wait().await
        }
    }
}

/// Waits until no process of the session is left, SIGKILLing them after `grace`.
async fn reap_session(sid: Pid, grace: Duration) {
    let start = tokio::time::Instant::now();
    let mut killed = false;
    while !session_members(sid).is_empty() {
        if !killed && start.elapsed() >= grace {
            kill_session(sid, Signal::SIGKILL);
            killed = true;
        }
        if start.elapsed() >= grace + Duration::from_secs(5) {
            tracing::warn!("session {sid} of a local job did not go away");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kill_session(sid: Pid, signal: Signal) {
    for pid in session_members(sid) {
        let _ = nix::sys::signal::kill(pid, signal);
    }
}

/// The live (not zombie) processes of session `sid`, from `/proc`.
fn session_members(sid: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // pid (comm) state ppid pgrp session ...; comm may hold spaces.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let live = !matches!(fields.first(), Some(&"Z" | &"X"));
            let session: i32 = fields.get(3)?.parse().ok()?;
            (live && session == sid.as_raw()).then(|| Pid::from_raw(pid))
        })
        .collect()
}

/// Slurm's state and `rc:signal` for a wait status.
fn describe_exit(
    status: ExitStatus,
    forced: Option<SlurmState>,
) -> (SlurmState, Option<i64>, Option<i64>) {
    let (code, signal) = match (status.code(), status.signal()) {
        (Some(code), _) => (i64::from(code), 0),
        (None, Some(sig)) => (0, i64::from(sig)),
        (None, None) => (0, 0),
    };
    let state = match forced {
        Some(state) => state,
        None if code == 0 && signal == 0 => SlurmState::Completed,
        None => SlurmState::Failed,
    };
    (state, Some(code), Some(signal))
}

/// The run's steps on this machine, for the dry run.
pub fn plan(request: &super::PlanRequest) -> Vec<String> {
    let run_dir = request.run_dir;
    vec![
        format!("mkdir -m 700 {run_dir}; copy {}", request.archive),
        "bash -l <batch script> in its own process group".to_string(),
        request.removal(&format!("rm -r {run_dir}")),
        "on cancel: SIGTERM, then SIGKILL, to the job's process group".to_string(),
    ]
}

#[async_trait]
impl Backend for LocalBackend {
    fn describe(&self) -> String {
        "local bash on this machine".to_string()
    }

    async fn default_base_dir(&self) -> Result<String> {
        self.base_dir
            .get_or_try_init(|| async {
                let root = std::env::temp_dir().join("firecrest-ci");
                tokio::fs::create_dir_all(&root)
                    .await
                    .with_context(|| format!("failed to create directory {}", root.display()))?;
                let dir = tempfile::Builder::new()
                    .prefix("local-")
                    .tempdir_in(&root)
                    .with_context(|| format!("failed to create a directory in {}", root.display()))?
                    .keep();
                dir.into_os_string()
                    .into_string()
                    .map_err(|p| anyhow!("temporary directory {p:?} is not valid UTF-8"))
            })
            .await
            .cloned()
    }

    async fn create_private_dir(&self, path: &str) -> Result<()> {
        self.files.create_private_dir(path).await
    }

    async fn mode(&self, path: &str) -> Result<Option<u32>> {
        self.files.mode(path).await
    }

    async fn put_file(&self, dir: &str, name: &str, contents: Vec<u8>) -> Result<()> {
        self.files.put_file(dir, name, contents).await
    }

    async fn upload_workspace(&self, archive: &Path, dir: &str) -> Result<StagedWorkspace> {
        self.files.upload_workspace(archive, dir).await
    }

    async fn submit(&self, job: &JobSpec) -> Result<JobId> {
        let limit = job.time_limit;
        let id = NEXT_JOB_ID.fetch_add(1, Ordering::Relaxed).to_string();
        let (mut child, script) = self.spawn(job, &id)?;
        let stdin = child.stdin.take();
        let now = unix_now();
        let (kill_tx, kill_rx) = watch::channel(None);
        let (done_tx, done_rx) = watch::channel(false);
        let record = Arc::new(LocalJob {
            kill: kill_tx,
            done: done_rx,
            state: Mutex::new(LocalState {
                state: SlurmState::Running,
                exit_code: None,
                signal: None,
                submit_time: now,
                start: std::time::Instant::now(),
                start_time: now,
                end_time: None,
                elapsed: None,
            }),
        });
        self.jobs
            .lock()
            .map_err(|_| anyhow!("local job table is poisoned"))?
            .insert(id.clone(), record.clone());
        tokio::spawn(supervise(
            record, child, stdin, script, limit, kill_rx, done_tx,
        ));
        Ok(JobId(id))
    }

    async fn job_status(&self, id: &JobId) -> Result<Option<JobStatus>> {
        let Some(job) = self.job(id) else {
            return Ok(None);
        };
        let s = job
            .state
            .lock()
            .map_err(|_| anyhow!("local job {id} state is poisoned"))?
            .clone();
        Ok(Some(JobStatus {
            state: s.state,
            reason: None,
            exit_code: s.exit_code,
            signal: s.signal,
            elapsed: Some(s.elapsed.unwrap_or_else(|| s.start.elapsed().as_secs())),
            submit_time: Some(s.submit_time),
            start_time: Some(s.start_time),
            end_time: s.end_time,
            nodes: Some("localhost".to_string()),
        }))
    }

    async fn read_output(&self, path: &str, offset: u64, _last: bool) -> Result<OutputChunk> {
        self.files.read_output(path, offset).await
    }

    async fn cancel(&self, id: &JobId) -> Result<()> {
        let Some(job) = self.job(id) else {
            return Ok(());
        };
        let mut done = job.done.clone();
        if !*done.borrow() {
            // Only the first request counts; a job that ends meanwhile keeps its state.
            job.kill.send_if_modified(|state| {
                if state.is_none() {
                    *state = Some(SlurmState::Cancelled { by: None });
                    true
                } else {
                    false
                }
            });
        }
        let stopped = tokio::time::timeout(KILL_GRACE * 3, done.wait_for(|finished| *finished))
            .await
            .is_ok();
        if !stopped {
            bail!("local job {id} did not stop within {:?}", KILL_GRACE * 3);
        }
        Ok(())
    }

    async fn download(&self, remote: &str, local: &Path) -> Result<bool> {
        self.files.download(remote, local).await
    }

    async fn remove_dir(&self, path: &str) -> Result<()> {
        self.files.remove_dir(path).await?;
        // The fresh base directory is ours: drop it once its last run is gone.
        if let (Some(base), Some(parent)) = (self.base_dir.get(), Path::new(path).parent()) {
            if parent == Path::new(base) {
                let _ = tokio::fs::remove_dir(parent).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_map_to_slurm_states() {
        let exited = |code: i32| ExitStatus::from_raw(code << 8);
        let killed = |sig: i32| ExitStatus::from_raw(sig);
        let cancelled = || SlurmState::Cancelled { by: None };
        assert_eq!(
            describe_exit(exited(0), None),
            (SlurmState::Completed, Some(0), Some(0))
        );
        assert_eq!(
            describe_exit(exited(3), None),
            (SlurmState::Failed, Some(3), Some(0))
        );
        assert_eq!(
            describe_exit(killed(9), None),
            (SlurmState::Failed, Some(0), Some(9))
        );
        assert_eq!(
            describe_exit(killed(15), Some(SlurmState::Timeout)),
            (SlurmState::Timeout, Some(0), Some(15))
        );
        assert_eq!(
            describe_exit(exited(0), Some(cancelled())),
            (cancelled(), Some(0), Some(0))
        );
    }
}
