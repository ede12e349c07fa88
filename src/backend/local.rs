//! The `local` backend: runs the rendered batch script with `bash -l` on this
//! machine, so a user can try a job before pushing and the README's first
//! command needs no cluster. It keeps Slurm's contract where the pipeline
//! relies on it: the `#SBATCH --output=`/`--error=` files, the `--time=`
//! limit (TIMEOUT), cancellation of the whole process tree (CANCELLED), and
//! Slurm's state names and `rc:signal` exit codes.
//!
//! It also owns [`LocalFiles`], the file operations on a file system this
//! process sees directly, which the `slurm` backend shares (a login node
//! shares the cluster's file system).

use std::collections::HashMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{watch, OnceCell};

use super::{Backend, JobId, JobSpec, JobStatus, OutputChunk, StagedWorkspace};

/// Most bytes one `read_output` call returns, so a huge log is streamed in
/// pieces instead of loaded whole.
const MAX_READ: u64 = 4 * 1024 * 1024;

/// The one archive part a local upload produces.
const WORKSPACE_PART: &str = "workspace.tar.gz";

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

/// File operations on paths this process can open directly. Used by the
/// `local` and `slurm` backends, whose "remote" paths are local paths.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalFiles;

impl LocalFiles {
    /// Creates `path` and its parents; the leaf gets mode 0700.
    pub async fn create_private_dir(&self, path: &str) -> Result<()> {
        tokio::fs::create_dir_all(path)
            .await
            .with_context(|| format!("failed to create directory {path}"))?;
        tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .await
            .with_context(|| format!("failed to make directory {path} private"))
    }

    /// The permission bits of `path`; `None` when it does not exist.
    pub async fn mode(&self, path: &str) -> Result<Option<u32>> {
        match tokio::fs::metadata(path).await {
            Ok(meta) => Ok(Some(meta.permissions().mode() & 0o7777)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(anyhow::Error::new(err).context(format!("failed to stat {path}"))),
        }
    }

    /// Writes `dir/name` with mode 0600, replacing an older file.
    pub async fn put_file(&self, dir: &str, name: &str, contents: Vec<u8>) -> Result<()> {
        check_file_name(name)?;
        let path = Path::new(dir).join(name);
        let shown = path.display().to_string();
        tokio::task::spawn_blocking(move || -> Result<()> {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("failed to create file {}", path.display()))?;
            // An existing file keeps its mode on open; make sure it is private.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("failed to make file {} private", path.display()))?;
            file.write_all(&contents)
                .and_then(|()| file.sync_all())
                .with_context(|| format!("failed to write file {}", path.display()))
        })
        .await
        .with_context(|| format!("failed to write file {shown}"))?
    }

    /// Copies the archive into `dir` as the single part `workspace.tar.gz`.
    pub async fn upload_workspace(&self, archive: &Path, dir: &str) -> Result<StagedWorkspace> {
        let target = Path::new(dir).join(WORKSPACE_PART);
        tokio::fs::copy(archive, &target).await.with_context(|| {
            format!(
                "failed to copy workspace archive {} to {}",
                archive.display(),
                target.display()
            )
        })?;
        tokio::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))
            .await
            .with_context(|| format!("failed to make {} private", target.display()))?;
        Ok(StagedWorkspace {
            parts: vec![WORKSPACE_PART.to_string()],
            transfer_job: None,
        })
    }

    /// Reads raw bytes from `offset` on (at most [`MAX_READ`]). A file that
    /// does not exist yet (the job has not started) reads as empty.
    pub async fn read_output(&self, path: &str, offset: u64) -> Result<OutputChunk> {
        let mut file = match tokio::fs::File::open(path).await {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(OutputChunk::default())
            }
            Err(err) => return Err(err).with_context(|| format!("failed to open output {path}")),
        };
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .with_context(|| format!("failed to seek output {path} to byte {offset}"))?;
        let mut data = Vec::new();
        file.take(MAX_READ)
            .read_to_end(&mut data)
            .await
            .with_context(|| format!("failed to read output {path} from byte {offset}"))?;
        let advance = data.len() as u64;
        Ok(OutputChunk {
            data,
            advance,
            more: advance == MAX_READ,
        })
    }

    /// Copies `remote` to `local`, creating `local`'s parent directories.
    pub async fn download(&self, remote: &str, local: &Path) -> Result<bool> {
        match tokio::fs::metadata(remote).await {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => bail!("failed to download {remote}: not a regular file"),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(err).with_context(|| format!("failed to look at {remote}")),
        }
        if let Some(parent) = local.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .with_context(|| format!("failed to create directory {}", parent.display()))?;
        }
        match tokio::fs::copy(remote, local).await {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(err) => {
                Err(err).with_context(|| format!("failed to copy {remote} to {}", local.display()))
            }
        }
    }

    /// Removes a directory tree; refuses relative paths and `/`.
    pub async fn remove_dir(&self, path: &str) -> Result<()> {
        let p = Path::new(path);
        if !p.is_absolute() || p.parent().is_none() {
            bail!("refusing to remove directory {path:?}: not an absolute path below /");
        }
        match tokio::fs::remove_dir_all(p).await {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err).with_context(|| format!("failed to remove directory {path}")),
        }
    }
}

/// A file name must stay inside its directory.
fn check_file_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        bail!("invalid file name {name:?}: must be a plain name without '/'");
    }
    Ok(())
}

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
    kill: watch::Sender<Option<&'static str>>,
    /// Becomes true when the job's process is reaped and its tree is gone.
    done: watch::Receiver<bool>,
    state: Mutex<LocalState>,
}

#[derive(Debug, Clone)]
struct LocalState {
    state: String,
    exit_code: Option<i64>,
    signal: Option<i64>,
    submit_time: i64,
    start: std::time::Instant,
    start_time: i64,
    end_time: Option<i64>,
    elapsed: Option<u64>,
}

/// What the script's `#SBATCH` lines say that the local run honours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Directives {
    pub output: Option<String>,
    pub error: Option<String>,
    pub time: Option<String>,
    pub job_name: Option<String>,
}

/// Reads the `#SBATCH` lines the way sbatch does: from the top of the script
/// up to the first line that is neither blank nor a comment.
pub(crate) fn parse_directives(script: &str) -> Result<Directives> {
    let mut found = Directives::default();
    for (index, line) in script.lines().enumerate() {
        let trimmed = line.trim();
        if index == 0 && trimmed.starts_with("#!") {
            continue;
        }
        if trimmed.is_empty() {
            continue;
        }
        if !trimmed.starts_with('#') {
            break;
        }
        let Some(rest) = trimmed.strip_prefix("#SBATCH") else {
            continue;
        };
        if !rest.starts_with(char::is_whitespace) {
            continue;
        }
        let words = shlex::split(rest)
            .ok_or_else(|| anyhow!("failed to parse script line {}: {trimmed}", index + 1))?;
        let mut words = words.into_iter().take_while(|w| !w.starts_with('#'));
        while let Some(word) = words.next() {
            let (key, inline) = match word.split_once('=') {
                Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
                _ => (word.clone(), None),
            };
            let slot = match key.as_str() {
                "--output" | "-o" => &mut found.output,
                "--error" | "-e" => &mut found.error,
                "--time" | "-t" => &mut found.time,
                "--job-name" | "-J" => &mut found.job_name,
                _ => continue,
            };
            let value = match inline {
                Some(v) => Some(v),
                None => words.next(),
            };
            let value = value.ok_or_else(|| {
                anyhow!("script line {}: {key} needs a value: {trimmed}", index + 1)
            })?;
            *slot = Some(value);
        }
    }
    Ok(found)
}

/// Parses a Slurm time limit (`minutes`, `minutes:seconds`,
/// `hours:minutes:seconds`, `days-hours`, `days-hours:minutes`,
/// `days-hours:minutes:seconds`); `None` means no limit (`0`, `INFINITE`,
/// `UNLIMITED`).
pub(crate) fn parse_time_limit(value: &str) -> Result<Option<Duration>> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("infinite") || v.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    let bad = || anyhow!("invalid Slurm time limit {value:?}");
    let num = |s: &str| -> Result<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<u64>().map_err(|_| bad())
    };
    let (days, rest) = match v.split_once('-') {
        Some((d, rest)) => (Some(num(d)?), rest),
        None => (None, v),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let secs = match (days, parts.as_slice()) {
        (None, [m]) => num(m)? * 60,
        (None, [m, s]) => num(m)? * 60 + num(s)?,
        (None, [h, m, s]) => num(h)? * 3600 + num(m)? * 60 + num(s)?,
        (Some(d), [h]) => d * 86400 + num(h)? * 3600,
        (Some(d), [h, m]) => d * 86400 + num(h)? * 3600 + num(m)? * 60,
        (Some(d), [h, m, s]) => d * 86400 + num(h)? * 3600 + num(m)? * 60 + num(s)?,
        _ => return Err(bad()),
    };
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

/// Fills in the file name patterns sbatch knows that make sense here:
/// `%j`/`%A` (job id), `%x` (job name), `%u` (user), `%N`/`%n` (node),
/// `%%`. Unknown patterns stay as they are.
pub(crate) fn expand_file_pattern(pattern: &str, job_id: &str, job_name: &str) -> String {
    let user = std::env::var("USER").unwrap_or_default();
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.peek().copied() {
            Some('j') | Some('A') => out.push_str(job_id),
            Some('x') => out.push_str(job_name),
            Some('u') => out.push_str(&user),
            Some('N') | Some('n') => out.push_str("localhost"),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => {
                out.push('%');
                continue;
            }
        }
        chars.next();
    }
    out
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
        let directives = parse_directives(&job.script)?;
        let name = directives
            .job_name
            .clone()
            .unwrap_or_else(|| job.name.clone());
        let wd = PathBuf::from(&job.working_dir);
        if !wd.is_dir() {
            bail!("working directory {} does not exist", wd.display());
        }
        let out_name = expand_file_pattern(
            directives.output.as_deref().unwrap_or("slurm-%j.out"),
            id,
            &name,
        );
        let stdout = open_output(&wd, &out_name)?;
        let stderr = match directives.error.as_deref() {
            Some(pattern) => {
                let err_name = expand_file_pattern(pattern, id, &name);
                if err_name == out_name {
                    stdout
                        .try_clone()
                        .context("failed to share the job output file")?
                } else {
                    open_output(&wd, &err_name)?
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
            .env("SLURM_JOB_NAME", &name)
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
    mut kill: watch::Receiver<Option<&'static str>>,
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
            if let Some(state) = *kill.borrow_and_update() {
                return state;
            }
            if kill.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    };
    let mut forced: Option<&'static str> = None;
    let status = tokio::select! {
        status = child.wait() => status,
        () = timed_out => { forced = Some("TIMEOUT"); terminate(&mut child, pgid).await }
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
        Err(_) => (forced.unwrap_or("FAILED").to_string(), None, None),
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
fn describe_exit(status: ExitStatus, forced: Option<&str>) -> (String, Option<i64>, Option<i64>) {
    let (code, signal) = match (status.code(), status.signal()) {
        (Some(code), _) => (i64::from(code), 0),
        (None, Some(sig)) => (0, i64::from(sig)),
        (None, None) => (0, 0),
    };
    let state = match forced {
        Some(state) => state,
        None if code == 0 && signal == 0 => "COMPLETED",
        None => "FAILED",
    };
    (state.to_string(), Some(code), Some(signal))
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
        let limit = match parse_directives(&job.script)?.time {
            Some(time) => parse_time_limit(&time)?,
            None => None,
        };
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
                state: "RUNNING".to_string(),
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
                    *state = Some("CANCELLED");
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
    fn time_limits_parse_in_every_slurm_format() {
        let secs = |s: &str| parse_time_limit(s).unwrap().map(|d| d.as_secs());
        assert_eq!(secs("1"), Some(60));
        assert_eq!(secs("90"), Some(5400));
        assert_eq!(secs("2:30"), Some(150));
        assert_eq!(secs("01:02:03"), Some(3723));
        assert_eq!(secs("1-2"), Some(86400 + 7200));
        assert_eq!(secs("1-02:03"), Some(86400 + 7200 + 180));
        assert_eq!(secs("1-02:03:04"), Some(86400 + 7200 + 180 + 4));
        assert_eq!(secs("0"), None);
        assert_eq!(secs("INFINITE"), None);
        assert_eq!(secs("unlimited"), None);
        for bad in ["", "abc", "1:2:3:4", "-1", "1-", "1-2:3:4:5", "1.5"] {
            assert!(parse_time_limit(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn directives_stop_at_the_first_command() {
        let script = "#!/bin/bash -l\n\
            #SBATCH --job-name=ci-42\n\
            # a comment\n\
            \n\
            #SBATCH -o out-%j.log --time 5\n\
            #SBATCH --error=err.log # trailing comment\n\
            #SBATCHX --time=9\n\
            echo hi\n\
            #SBATCH --time=99\n";
        let d = parse_directives(script).unwrap();
        assert_eq!(d.job_name.as_deref(), Some("ci-42"));
        assert_eq!(d.output.as_deref(), Some("out-%j.log"));
        assert_eq!(d.error.as_deref(), Some("err.log"));
        assert_eq!(d.time.as_deref(), Some("5"));
    }

    #[test]
    fn directive_without_value_is_an_error() {
        assert!(parse_directives("#!/bin/bash\n#SBATCH --output\n").is_err());
    }

    #[test]
    fn file_patterns_expand_like_sbatch() {
        assert_eq!(expand_file_pattern("slurm-%j.out", "7", "n"), "slurm-7.out");
        assert_eq!(expand_file_pattern("%x-%A.%%j", "7", "job"), "job-7.%j");
        assert_eq!(expand_file_pattern("a%qb%", "7", "n"), "a%qb%");
    }

    #[test]
    fn exit_statuses_map_to_slurm_states() {
        let exited = |code: i32| ExitStatus::from_raw(code << 8);
        let killed = |sig: i32| ExitStatus::from_raw(sig);
        assert_eq!(
            describe_exit(exited(0), None),
            ("COMPLETED".into(), Some(0), Some(0))
        );
        assert_eq!(
            describe_exit(exited(3), None),
            ("FAILED".into(), Some(3), Some(0))
        );
        assert_eq!(
            describe_exit(killed(9), None),
            ("FAILED".into(), Some(0), Some(9))
        );
        assert_eq!(
            describe_exit(killed(15), Some("TIMEOUT")),
            ("TIMEOUT".into(), Some(0), Some(15))
        );
        assert_eq!(
            describe_exit(exited(0), Some("CANCELLED")),
            ("CANCELLED".into(), Some(0), Some(0))
        );
    }

    #[test]
    fn file_names_must_stay_in_their_directory() {
        for bad in ["", ".", "..", "a/b", "/etc/passwd"] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        check_file_name("env.sh").unwrap();
    }

    #[tokio::test]
    async fn local_files_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/run");
        let dir_s = dir.to_str().unwrap();
        let files = LocalFiles;
        files.create_private_dir(dir_s).await.unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        files
            .put_file(dir_s, "env", b"old-and-longer".to_vec())
            .await
            .unwrap();
        files.put_file(dir_s, "env", b"new".to_vec()).await.unwrap();
        let env = dir.join("env");
        assert_eq!(std::fs::read(&env).unwrap(), b"new");
        assert_eq!(
            std::fs::metadata(&env).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let archive = tmp.path().join("ws.tar.gz");
        std::fs::write(&archive, b"archive-bytes").unwrap();
        let staged = files.upload_workspace(&archive, dir_s).await.unwrap();
        assert_eq!(staged.parts, vec!["workspace.tar.gz".to_string()]);
        assert_eq!(staged.transfer_job, None);
        assert_eq!(
            std::fs::read(dir.join("workspace.tar.gz")).unwrap(),
            b"archive-bytes"
        );

        let local = tmp.path().join("back/x/copy");
        assert!(files.download(env.to_str().unwrap(), &local).await.unwrap());
        assert_eq!(std::fs::read(&local).unwrap(), b"new");
        let missing = dir.join("missing");
        assert!(!files
            .download(missing.to_str().unwrap(), &local)
            .await
            .unwrap());

        let chunk = files
            .read_output(missing.to_str().unwrap(), 0)
            .await
            .unwrap();
        assert_eq!(chunk, OutputChunk::default());

        files.remove_dir(dir_s).await.unwrap();
        assert!(!dir.exists());
        files.remove_dir(dir_s).await.unwrap();
        assert!(files.remove_dir("relative/path").await.is_err());
        assert!(files.remove_dir("/").await.is_err());
    }
}
