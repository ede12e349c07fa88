//! Running the real binary the way CI does: a cleared environment plus
//! exactly the variables a test sets (xh's approach), against the fake.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::fake::FakeFirecrest;

/// The binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_firecrest-ci"))
}

/// What one run of the tool did.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    /// Both streams, for assertion messages.
    pub fn both(&self) -> String {
        format!("--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr)
    }
}

/// A workspace directory with a few files, and the environment for a run.
pub struct Setup {
    pub workspace: tempfile::TempDir,
    pub env: BTreeMap<String, String>,
    /// The base for run directories (FIRECREST_REMOTE_DIR), when the test
    /// set one to check what a run leaves behind.
    pub remote: Option<tempfile::TempDir>,
}

impl Setup {
    /// A run against `fake` with fast polling and the given job name.
    pub fn firecrest(fake: &FakeFirecrest, job_name: &str, run: &str) -> Self {
        Self::with_inputs(
            run,
            [
                ("FIRECREST_URL", fake.url()),
                ("FIRECREST_TOKEN_URL", fake.token_url()),
                ("FIRECREST_CLIENT_ID", fake.client_id()),
                ("FIRECREST_CLIENT_SECRET", fake.client_secret()),
                ("FIRECREST_SYSTEM", fake.system()),
                ("FIRECREST_JOB_NAME", job_name.to_string()),
                ("FIRECREST_LOG_INTERVAL", "1s".to_string()),
            ],
        )
    }

    /// A run on this machine, no cluster.
    pub fn local(run: &str) -> Self {
        Self::with_inputs(run, [("FIRECREST_BACKEND", "local".to_string())])
    }

    /// A fresh workspace holding `hello.txt`, and the inputs every run has
    /// (`run`, 1 s polling, the workspace, PATH) plus the backend's `inputs`.
    fn with_inputs<const N: usize>(run: &str, inputs: [(&str, String); N]) -> Self {
        let workspace = tempfile::tempdir().expect("workspace");
        std::fs::write(
            workspace.path().join("hello.txt"),
            "hello from the workspace\n",
        )
        .unwrap();
        let mut env = BTreeMap::new();
        for (k, v) in [
            ("FIRECREST_RUN", run.to_string()),
            ("FIRECREST_POLL_INTERVAL", "1s".to_string()),
            (
                "FIRECREST_WORKSPACE",
                workspace.path().display().to_string(),
            ),
            ("PATH", std::env::var("PATH").unwrap_or_default()),
        ]
        .into_iter()
        .chain(inputs)
        {
            env.insert(k.to_string(), v);
        }
        Setup {
            workspace,
            env,
            remote: None,
        }
    }

    /// A run through the Slurm commands on this machine (a login node), with
    /// a fresh base for run directories so the test can check the cleanup.
    pub fn slurm(run: &str) -> Self {
        let mut setup = Self::local(run);
        setup.set("FIRECREST_BACKEND", "slurm");
        setup.with_remote_dir();
        setup
    }

    /// Points FIRECREST_REMOTE_DIR at a fresh directory this setup owns.
    pub fn with_remote_dir(&mut self) -> &mut Self {
        let remote = tempfile::Builder::new()
            .prefix("firecrest-ci-it-remote-")
            .tempdir()
            .expect("remote base");
        // Slurm may run the job as another user than the test; let it in.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(remote.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        self.set("FIRECREST_REMOTE_DIR", remote.path().display().to_string());
        self.remote = Some(remote);
        self
    }

    /// The base for run directories; panics unless the test set one.
    pub fn remote_dir(&self) -> &Path {
        self.remote.as_ref().expect("no remote dir set").path()
    }

    /// What runs left in the base for run directories (nothing, after a
    /// run that cleaned up).
    pub fn left_behind(&self) -> Vec<PathBuf> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(self.remote_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        entries
    }

    /// True when the output file of a run in the remote base contains
    /// `needle`: the job got that far.
    pub fn job_output_contains(&self, needle: &str) -> bool {
        self.left_behind().iter().any(|dir| {
            std::fs::read(dir.join("job.out"))
                .map(|out| String::from_utf8_lossy(&out).contains(needle))
                .unwrap_or(false)
        })
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.env.insert(key.to_string(), value.into());
        self
    }

    pub fn path(&self) -> &Path {
        self.workspace.path()
    }

    fn command(&self) -> Command {
        self.command_of(&binary())
    }

    fn command_of(&self, binary: &Path) -> Command {
        let mut command = Command::new(binary);
        command
            .env_clear()
            .envs(&self.env)
            .current_dir(self.workspace.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs the tool to its end, bounded by `limit`.
    pub fn run(&self, limit: Duration) -> Outcome {
        let child = self.command().spawn().expect("spawn firecrest-ci");
        wait(child, limit, Instant::now())
    }

    /// Runs the tool with command-line arguments, bounded by `limit`.
    pub fn run_with_args(&self, args: &[&str], limit: Duration) -> Outcome {
        let child = self
            .command()
            .args(args)
            .spawn()
            .expect("spawn firecrest-ci");
        wait(child, limit, Instant::now())
    }

    /// Starts the tool; the test decides when it ends.
    pub fn spawn(&self) -> Child {
        self.command().spawn().expect("spawn firecrest-ci")
    }

    /// Starts another build of the tool (a benchmark's previous release).
    pub fn spawn_binary(&self, binary: &Path) -> Child {
        self.command_of(binary)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()))
    }
}

/// Collects a child's output and exit code; kills it past `limit`.
pub fn wait(mut child: Child, limit: Duration, started: Instant) -> Outcome {
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            // What it said until then shows where it hung.
            let stdout = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
            let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
            let tail = |text: &str| {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            };
            panic!(
                "firecrest-ci did not finish within {limit:?}\n--- stdout (last lines)\n{}\n--- stderr (last lines)\n{}",
                tail(&stdout),
                tail(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Outcome {
        code,
        stdout,
        stderr,
        elapsed,
    }
}

/// True once a job's output file on the double's cluster contains `text`.
pub fn job_printed(fake: &FakeFirecrest, text: &str) -> bool {
    fake.scratch_files()
        .iter()
        .filter(|f| f.ends_with("job.out"))
        .any(|f| {
            std::fs::read(fake.scratch().join(f))
                .is_ok_and(|out| String::from_utf8_lossy(&out).contains(text))
        })
}

/// Waits until `check` holds, polling; false on timeout.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The lines of `text` that start with `prefix`, in order.
pub fn lines_with<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// The "Code" cell of the README's exit-code table row whose "Meaning" is
/// `meaning`, e.g. `"0"` for "success" or `"128+S"` for "killed by signal S".
pub fn readme_code(meaning: &str) -> String {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## Exit codes\n")
        .nth(1)
        .expect("README has an \"## Exit codes\" section");
    let section = section.split("\n## ").next().unwrap();
    let rows: Vec<Vec<String>> = section
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|--") && !l.starts_with("| Code"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    let found: Vec<&Vec<String>> = rows.iter().filter(|r| r[1] == meaning).collect();
    assert_eq!(
        found.len(),
        1,
        "the README exit-code table has no single row meaning {meaning:?}: {rows:?}"
    );
    found[0][0].clone()
}

/// The README's exit code for `meaning`, for rows with a fixed number.
pub fn readme_exit_code(meaning: &str) -> i32 {
    let cell = readme_code(meaning);
    cell.parse()
        .unwrap_or_else(|_| panic!("README row {meaning:?} has no fixed code: {cell:?}"))
}

/// A job name no other test (or earlier run) uses, for `squeue -n`.
pub fn unique_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "fcit-{tag}-{}-{}-{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Live (not zombie) processes whose environment holds
/// `SLURM_JOB_NAME=<job_name>` (every process of a job, local or Slurm, on
/// this machine) or whose command line contains `marker`.
pub fn job_processes(job_name: &str, marker: &str) -> Vec<i32> {
    assert!(!job_name.is_empty() && !marker.is_empty());
    let env_entry = format!("SLURM_JOB_NAME={job_name}");
    let mut found = Vec::new();
    let me = std::process::id() as i32;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let dir = entry.path();
        let zombie = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if zombie {
            continue;
        }
        let parts = |file: &str| std::fs::read(dir.join(file)).unwrap_or_default();
        let environ = parts("environ");
        let cmdline = parts("cmdline");
        let in_job = environ
            .split(|b| *b == 0)
            .any(|part| part == env_entry.as_bytes());
        let marked = cmdline
            .windows(marker.len())
            .any(|w| w == marker.as_bytes());
        if in_job || marked {
            found.push(pid);
        }
    }
    found
}

/// [`wait`], also sampling the child's peak resident memory (`VmHWM`, KiB)
/// from `/proc` until it exits; 0 when it could not be read.
pub fn wait_sampling_peak_rss(child: Child, limit: Duration, started: Instant) -> (Outcome, u64) {
    let status_file = format!("/proc/{}/status", child.id());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0u64;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                // Once the process is a zombie, VmHWM disappears: keep the last value.
                if let Ok(text) = std::fs::read_to_string(&status_file) {
                    let hwm = text
                        .lines()
                        .find_map(|l| l.strip_prefix("VmHWM:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
                    if let Some(hwm) = hwm {
                        peak = peak.max(hwm);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let out = wait(child, limit, started);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let peak = sampler.join().unwrap_or(0);
    (out, peak)
}

/// Writes `size` random (incompressible) bytes to `path`; returns their SHA-256.
pub fn random_file(path: &Path, size: usize) -> String {
    use rand::RngCore;
    use sha2::{Digest, Sha256};
    let mut data = vec![0u8; size];
    rand::thread_rng().fill_bytes(&mut data);
    std::fs::write(path, &data).unwrap();
    hex::encode(Sha256::digest(&data))
}

/// Runs `setup` in GitHub mode with a `GITHUB_OUTPUT` file, whose
/// values [`github_output_values`] reads back once the run ended.
pub fn with_github_outputs(setup: &mut Setup) -> tempfile::NamedTempFile {
    let outputs = tempfile::NamedTempFile::new().expect("a GITHUB_OUTPUT file");
    setup.set("GITHUB_ACTIONS", "true");
    setup.set("GITHUB_OUTPUT", outputs.path().display().to_string());
    outputs
}

/// The values written for the step output `name`, in order.
pub fn github_output_values(outputs: &tempfile::NamedTempFile, name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(outputs.path()).unwrap_or_default();
    github_output_records(&text)
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, value)| value)
        .collect()
}

/// `GITHUB_OUTPUT` records (`name=value`, `name<<DELIMITER` blocks) as the
/// runner reads them, in order.
pub fn github_output_records(text: &str) -> Vec<(String, String)> {
    let mut records = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some((name, delimiter)) = line.split_once("<<") {
            let value: Vec<&str> = lines.by_ref().take_while(|l| *l != delimiter).collect();
            records.push((name.to_string(), value.join("\n")));
        } else if let Some((name, value)) = line.split_once('=') {
            records.push((name.to_string(), value.to_string()));
        }
    }
    records
}

/// GitHub's grace between a cancel's SIGINT and its SIGTERM: a run that CI
/// stops must be over by then.
pub const CI_GRACE: Duration = Duration::from_millis(7500);

/// The run, timed from the signal CI sent, exited with `code` within
/// [`CI_GRACE`].
pub fn assert_stopped_within_grace(out: &Outcome, code: i32) {
    assert_eq!(out.code, code, "{}", out.both());
    assert!(
        out.elapsed < CI_GRACE,
        "took {:?} after the signal\n{}",
        out.elapsed,
        out.both()
    );
}
