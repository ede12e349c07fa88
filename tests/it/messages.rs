//! Every output message tells the truth, in order (issue 10 §4): for a
//! COMPLETED, a FAILED (exit 3), a TIMEOUT and a CI-cancelled run in GitHub
//! mode, the final report line, the step summary and the step outputs
//! (`state`, `exit-code`) agree with each other and with the exit code, and
//! no "waiting in the queue" line follows the job's first output line.

use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::fake::{FakeFirecrest, ForcedEnd};
use crate::harness::{github_output_records, wait_until, Setup};

const LIMIT: Duration = Duration::from_secs(120);

/// What one GitHub-mode run said, everywhere it says it.
struct Said {
    code: i32,
    /// stdout and stderr as one stream, in the order they were written.
    log: String,
    /// `name=value` records of `GITHUB_OUTPUT`, in order.
    outputs: Vec<(String, String)>,
    summary: String,
}

/// Runs the job `name` with `commands` in GitHub mode; the job is held in
/// the queue for a while so that a queue message is printed. With
/// `cancel_after`, SIGTERM (CI's cancel) once the job printed that line.
fn run_github(
    fake: &FakeFirecrest,
    name: &str,
    commands: &str,
    cancel_after: Option<&str>,
) -> Said {
    fake.settings(|s| s.pending_for = Duration::from_secs(2));
    let mut setup = Setup::firecrest(fake, name, commands);
    let dir = tempfile::tempdir().unwrap();
    let (outputs, summary, both) = (
        dir.path().join("output"),
        dir.path().join("summary"),
        dir.path().join("both"),
    );
    setup.set("GITHUB_ACTIONS", "true");
    setup.set("GITHUB_OUTPUT", outputs.display().to_string());
    setup.set("GITHUB_STEP_SUMMARY", summary.display().to_string());
    // One file for both streams: one open file, so writes keep their order.
    let file = std::fs::File::create(&both).unwrap();
    let mut child = std::process::Command::new(crate::harness::binary())
        .env_clear()
        .envs(&setup.env)
        .current_dir(setup.path())
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("spawn firecrest-ci");
    if let Some(line) = cancel_after {
        let printed = || std::fs::read_to_string(&both).is_ok_and(|t| t.contains(line));
        assert!(wait_until(LIMIT, printed), "the job never printed {line}");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    }
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < LIMIT, "firecrest-ci did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    Said {
        code: status.code().unwrap_or(-1),
        log: read(&both),
        outputs: github_output_records(&read(&outputs)),
        summary: read(&summary),
    }
}

/// Asserts that the run's every statement of its end agrees: the exit
/// code, the final report line, the outputs and the step summary all say
/// `state` and `code`; the queue message, if any, comes before the job's
/// first line `first_line`.
fn assert_truthful(said: &Said, state: &str, code: i32, first_line: &str) {
    let all = format!(
        "--- log\n{}\n--- outputs\n{:?}\n--- summary\n{}",
        said.log, said.outputs, said.summary
    );
    assert_eq!(said.code, code, "{all}");
    // The outputs: each once, with the run's values.
    for (name, want) in [
        ("state", state.to_string()),
        ("exit-code", code.to_string()),
    ] {
        let values: Vec<&String> = said
            .outputs
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(values, vec![&want], "output {name}\n{all}");
    }
    // The final report line: the last line of the tool's own report.
    let report = said
        .log
        .lines()
        .rfind(|l| l.starts_with("firecrest-ci: job "))
        .unwrap_or_else(|| panic!("no final report line\n{all}"));
    assert!(
        report.contains(&format!("(exit code {code})"))
            || report.contains(&format!(": exit code {code} ")),
        "report line {report:?}\n{all}"
    );
    assert!(
        report.contains(state) || state == "CANCELLED",
        "{report:?}\n{all}"
    );
    if state == "CANCELLED" {
        assert!(report.contains("cancelled"), "{report:?}\n{all}");
    }
    // The step summary: one row, with the same state and code.
    let rows: Vec<Vec<&str>> = said
        .summary
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| state "))
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), 1, "summary rows\n{all}");
    assert_eq!(
        (rows[0][0], rows[0][1]),
        (state, code.to_string().as_str()),
        "{all}"
    );
    // No queue message once the job's output began.
    let first = said
        .log
        .find(first_line)
        .unwrap_or_else(|| panic!("the job's first line is missing\n{all}"));
    assert!(
        !said.log[first..].contains("waiting in the queue"),
        "a queue message after the job's output\n{all}"
    );
    assert!(
        said.log[..first].contains("waiting in the queue"),
        "the run was queued: it says so first\n{all}"
    );
}

#[test]
fn a_completed_run_says_completed_and_0_everywhere() {
    let fake = FakeFirecrest::start();
    let said = run_github(&fake, "says-ok", "echo first line\necho second", None);
    assert_truthful(&said, "COMPLETED", 0, "first line\n");
}

#[test]
fn a_failed_run_says_failed_and_3_everywhere() {
    let fake = FakeFirecrest::start();
    let said = run_github(&fake, "says-3", "echo first line\nexit 3", None);
    assert_truthful(&said, "FAILED", 3, "first line\n");
}

#[test]
fn a_timed_out_run_says_timeout_and_124_everywhere() {
    let fake = FakeFirecrest::start();
    // Slurm's time limit, 3 s after the start.
    fake.force_end(
        "says-timeout",
        ForcedEnd::new("TIMEOUT", 0, 0).after(Duration::from_secs(3)),
    );
    let said = run_github(&fake, "says-timeout", "echo first line\nsleep 300", None);
    assert_truthful(&said, "TIMEOUT", 124, "first line\n");
}

#[test]
fn a_run_cancelled_by_ci_says_cancelled_and_143_everywhere() {
    let fake = FakeFirecrest::start();
    let said = run_github(
        &fake,
        "says-cancelled",
        "echo first line\nsleep 300",
        Some("first line\n"),
    );
    assert_truthful(&said, "CANCELLED", 143, "first line\n");
}
