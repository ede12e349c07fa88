//! Whole runs of the real binary through the `slurm` backend against a real
//! Slurm (`.ci/slurm-up` starts a one-node cluster): each row of the README's
//! exit-code table a batch job can reach, exact streaming of multi-byte
//! output, cancellation from the cluster's side and by CI, and that no job,
//! job process or run directory is left afterwards. The rows it shares with
//! the `local` backend come from the table in `backend_rows`.
//!
//! Without a usable Slurm every test prints `SKIPPED: <test>: ...` to stderr
//! (past libtest's capture, so it shows) and returns.

use std::process::Command;
use std::time::{Duration, Instant};

use firecrest_ci::outcome::codes;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::backend_rows::{backend_rows, job_lines, Row, Way};
use crate::harness::{
    assert_stopped_within_grace, job_processes, readme_code, readme_exit_code, unique_name, wait,
    wait_until, Outcome, Setup,
};

/// Generous bound for a short job: the node is shared with other tests and
/// other users of this Slurm, and a deadline only costs time on failure.
const LIMIT: Duration = Duration::from_secs(300);

/// Why Slurm cannot be used here, or `None` when `sinfo` shows a usable
/// node. Asked once per test run (here and in `backends`): a dead
/// slurmctld makes `sinfo` wait for its timeout.
pub(crate) fn slurm_unavailable() -> Option<String> {
    static ANSWER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ANSWER
        .get_or_init(|| {
            let out = Command::new("timeout")
                .args(["10", "sinfo", "-h", "-o", "%T"])
                .output();
            match out {
                Err(err) => Some(format!("cannot run sinfo: {err}")),
                Ok(out) if !out.status.success() => Some(format!(
                    "sinfo failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Ok(out) => {
                    let states = String::from_utf8_lossy(&out.stdout).to_string();
                    let usable = states
                        .lines()
                        .any(|s| matches!(s.trim(), "idle" | "mixed" | "allocated"));
                    (!usable).then(|| format!("no idle node (sinfo: {:?})", states.trim()))
                }
            }
        })
        .clone()
}

/// True (after printing why) when the test cannot run here.
pub(crate) fn skipped(test: &str) -> bool {
    match slurm_unavailable() {
        Some(reason) => {
            // Straight to stderr: libtest captures eprintln! of passing tests.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: slurm::{test}: no Slurm ({reason}); start it with .ci/slurm-up"
            );
            true
        }
        None => false,
    }
}

/// A run through Slurm with a unique job name; returns the setup and the name.
pub(crate) fn setup(tag: &str, run: &str) -> (Setup, String) {
    let name = unique_name(tag);
    let mut setup = Setup::slurm(run);
    setup.set("FIRECREST_JOB_NAME", name.clone());
    (setup, name)
}

/// `squeue` lines for jobs named `name` (pending, running or completing).
pub(crate) fn queued(name: &str) -> Vec<String> {
    let out = Command::new("squeue")
        .args(["-h", "-n", name, "-o", "%i %T"])
        .output()
        .expect("run squeue");
    assert!(
        out.status.success(),
        "squeue failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Slurm's state of the job named `name`, as `scontrol` still knows it.
pub(crate) fn final_state(name: &str) -> String {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o"])
        .output()
        .expect("run scontrol");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&format!(" JobName={name} ")))
        .unwrap_or_else(|| panic!("scontrol does not know job {name}"));
    line.split(' ')
        .find_map(|w| w.strip_prefix("JobState="))
        .unwrap_or_default()
        .to_string()
}

/// No job of that name in `squeue`, no process of it on this machine, and
/// nothing left in the base for run directories.
pub(crate) fn assert_nothing_left(setup: &Setup, name: &str) {
    assert!(
        wait_until(LIMIT, || queued(name).is_empty()),
        "job {name} is still in squeue: {:?}",
        queued(name)
    );
    assert!(
        wait_until(Duration::from_secs(60), || job_processes(name, name)
            .is_empty()),
        "processes of job {name} are still running: {:?}",
        job_processes(name, name)
    );
    assert_eq!(setup.left_behind(), Vec::<std::path::PathBuf>::new());
}

/// The tool's one-line final report.
pub(crate) fn report(outcome: &Outcome) -> &str {
    outcome
        .stdout
        .lines()
        .find(|l| l.starts_with("firecrest-ci: job ") && l.contains(": exit code "))
        .unwrap_or_else(|| panic!("no final report line\n{}", outcome.both()))
}

/// Cancels the jobs named `name` from the cluster's side, as a user would.
pub(crate) fn scancel(name: &str) {
    let cancel = Command::new("scancel")
        .args(["-n", name])
        .output()
        .expect("run scancel");
    assert!(cancel.status.success(), "{cancel:?}");
}

/// Starts the tool and returns once the job printed `marker`.
pub(crate) fn spawn_until_started(setup: &Setup, marker: &str) -> (std::process::Child, Instant) {
    let started = Instant::now();
    let child = setup.spawn();
    let running = wait_until(LIMIT, || setup.job_output_contains(marker));
    assert!(running, "the job never printed {marker:?}");
    (child, started)
}

/// The slurm backend's way through the rows it shares with `local`.
pub(crate) struct Slurm;

impl Way for Slurm {
    const LIMIT: Duration = LIMIT;

    fn skipped(test: &str) -> bool {
        skipped(test)
    }

    fn setup(tag: &str, run: &str) -> (Setup, String) {
        setup(tag, run)
    }

    fn assert_state(out: &Outcome, name: &str, row: &Row) {
        if let Some(state) = row.state {
            assert!(report(out).contains(state), "{}", report(out));
        }
        if let Some(state) = row.scheduler_state {
            assert_eq!(final_state(name), state);
        }
    }

    fn assert_nothing_left(setup: &Setup, name: &str) {
        assert_nothing_left(setup, name);
    }
}

backend_rows!(Slurm);

#[test]
fn killed_by_a_signal_gives_128_plus_the_signal() {
    if skipped("killed_by_a_signal_gives_128_plus_the_signal") {
        return;
    }
    // `$$` is the batch shell; the commands run in a subshell of it
    // ($BASHPID), which goes too: with the test cluster's
    // proctrack/linuxproc, slurmstepd does not find an orphaned subshell,
    // which would live on after the job ended.
    let (setup, name) = setup(
        "kill9",
        "echo before-kill\nkill -9 $$ $BASHPID\nsleep 20\necho never",
    );
    let out = setup.run(LIMIT);
    assert_eq!(readme_code("killed by signal S"), "128+S");
    assert_eq!(out.code, 128 + 9, "{}", out.both());
    assert!(out.stdout.contains("before-kill"), "{}", out.both());
    assert!(!out.stdout.contains("never"), "{}", out.both());
    assert_nothing_left(&setup, &name);
}

#[test]
fn time_limit_gives_124() {
    if skipped("time_limit_gives_124") {
        return;
    }
    let (mut setup, name) = setup("timeout", "echo fcit-started\nsleep 600\necho never");
    setup.set("FIRECREST_TIME_LIMIT", "1");
    let (child, started) = spawn_until_started(&setup, "fcit-started");
    let out = wait(child, LIMIT + Duration::from_secs(120), started);
    assert_eq!(readme_exit_code("job time limit"), codes::TIMEOUT);
    assert_eq!(out.code, codes::TIMEOUT, "{}", out.both());
    assert!(out.elapsed >= Duration::from_secs(55), "{:?}", out.elapsed);
    assert_eq!(job_lines(&out.stdout).first(), Some(&"fcit-started"));
    assert!(!out.stdout.contains("never"), "{}", out.both());
    assert_eq!(final_state(&name), "TIMEOUT");
    assert_nothing_left(&setup, &name);
}

#[test]
fn scancel_on_the_cluster_gives_120() {
    if skipped("scancel_on_the_cluster_gives_120") {
        return;
    }
    let (setup, name) = setup("scancel", "echo fcit-running\nsleep 300\necho never");
    let (child, started) = spawn_until_started(&setup, "fcit-running");
    scancel(&name);
    let out = wait(child, LIMIT, started);
    assert_eq!(
        readme_exit_code("cancelled on the cluster"),
        codes::CANCELLED_ON_CLUSTER
    );
    assert_eq!(out.code, codes::CANCELLED_ON_CLUSTER, "{}", out.both());
    assert!(!out.stdout.contains("never"), "{}", out.both());
    assert!(final_state(&name).starts_with("CANCELLED"));
    assert_nothing_left(&setup, &name);
}

#[test]
fn sigterm_to_the_tool_cancels_the_job_and_gives_143() {
    if skipped("sigterm_to_the_tool_cancels_the_job_and_gives_143") {
        return;
    }
    let (setup, name) = setup("sigterm", "echo fcit-running\nsleep 300\necho never");
    let (child, _) = spawn_until_started(&setup, "fcit-running");
    assert_eq!(queued(&name).len(), 1, "the job should be running");
    let signalled = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let out = wait(child, Duration::from_secs(20), signalled);
    assert_eq!(
        readme_exit_code("cancelled by CI (SIGTERM)"),
        codes::CI_SIGTERM
    );
    assert_stopped_within_grace(&out, codes::CI_SIGTERM);
    // The tool waits (briefly) for the cancelled job to stop before it exits.
    assert!(
        wait_until(Duration::from_secs(3), || queued(&name).is_empty()),
        "job {name} still queued after the tool exited: {:?}",
        queued(&name)
    );
    assert!(final_state(&name).starts_with("CANCELLED"));
    // The job had stopped before the last read: its epilogue's line shows.
    assert!(
        out.stdout.contains("firecrest-ci: stopped by SIGTERM"),
        "{}",
        out.both()
    );
    assert_nothing_left(&setup, &name);
}
