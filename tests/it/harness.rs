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
}

impl Setup {
    /// A run against `fake` with fast polling and the given job name.
    pub fn firecrest(fake: &FakeFirecrest, job_name: &str, run: &str) -> Self {
        let workspace = tempfile::tempdir().expect("workspace");
        std::fs::write(
            workspace.path().join("hello.txt"),
            "hello from the workspace\n",
        )
        .unwrap();
        let mut env = BTreeMap::new();
        for (k, v) in [
            ("FIRECREST_URL", fake.url()),
            ("FIRECREST_TOKEN_URL", fake.token_url()),
            ("FIRECREST_CLIENT_ID", fake.client_id()),
            ("FIRECREST_CLIENT_SECRET", fake.client_secret()),
            ("FIRECREST_SYSTEM", fake.system()),
            ("FIRECREST_JOB_NAME", job_name.to_string()),
            ("FIRECREST_RUN", run.to_string()),
            ("FIRECREST_POLL_INTERVAL", "1s".to_string()),
            ("FIRECREST_LOG_INTERVAL", "1s".to_string()),
            (
                "FIRECREST_WORKSPACE",
                workspace.path().display().to_string(),
            ),
            ("PATH", std::env::var("PATH").unwrap_or_default()),
        ] {
            env.insert(k.to_string(), v);
        }
        Setup { workspace, env }
    }

    /// A run on this machine, no cluster.
    pub fn local(run: &str) -> Self {
        let workspace = tempfile::tempdir().expect("workspace");
        std::fs::write(
            workspace.path().join("hello.txt"),
            "hello from the workspace\n",
        )
        .unwrap();
        let mut env = BTreeMap::new();
        for (k, v) in [
            ("FIRECREST_BACKEND", "local".to_string()),
            ("FIRECREST_RUN", run.to_string()),
            ("FIRECREST_POLL_INTERVAL", "1s".to_string()),
            (
                "FIRECREST_WORKSPACE",
                workspace.path().display().to_string(),
            ),
            ("PATH", std::env::var("PATH").unwrap_or_default()),
        ] {
            env.insert(k.to_string(), v);
        }
        Setup { workspace, env }
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.env.insert(key.to_string(), value.into());
        self
    }

    pub fn path(&self) -> &Path {
        self.workspace.path()
    }

    fn command(&self) -> Command {
        let mut command = Command::new(binary());
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

    /// Starts the tool; the test decides when it ends.
    pub fn spawn(&self) -> Child {
        self.command().spawn().expect("spawn firecrest-ci")
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
            panic!("firecrest-ci did not finish within {limit:?}");
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
