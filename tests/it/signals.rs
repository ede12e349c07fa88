//! What a cancel and a time limit do to the batch script, after
//! `recorded/job_cancel_traps.json`: Slurm signals the batch shell alone, so
//! a script that waits for its commands in the foreground never runs its
//! trap, and its job holds the node until KillWait's SIGKILL. The tool's
//! script waits in the background: its epilogue packs the artifacts at once,
//! at the time limit, after `scancel`, and after CI cancels, and the job
//! leaves Slurm right after. Checked against the double (first, that it
//! answers like the recording) and against a real Slurm with Slurm's
//! default KillWait of 30 s.

use std::time::{Duration, Instant};

use firecrest_ci::outcome::codes;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::fake::FakeFirecrest;
use crate::harness::{assert_stopped_within_grace, wait, wait_until, Setup};
use crate::slurm;

/// A job that writes an artifact, says it runs, and waits to be stopped.
const PARTIAL_JOB: &str =
    "mkdir -p out\necho partial > out/partial.txt\necho fcit-running\nsleep 600";

/// Slurm's default KillWait: the double waits as long before SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(30);
/// Generous bound for a whole run on a shared, loaded machine.
const LIMIT: Duration = Duration::from_secs(150);

fn recorded_cancel_traps() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/recorded/job_cancel_traps.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("recording")).expect("json")
}

/// The recorded submit requests (foreground trap, then background+wait).
fn recorded_scripts() -> Vec<String> {
    recorded_cancel_traps()
        .iter()
        .filter(|e| e["request"]["method"] == "POST")
        .map(|e| {
            e["request"]["body"]["job"]["script"]
                .as_str()
                .expect("a script")
                .to_string()
        })
        .collect()
}

/// The recorded output after each cancel, in the same order.
fn recorded_outputs() -> Vec<String> {
    recorded_cancel_traps()
        .iter()
        .filter(|e| {
            e["note"]
                .as_str()
                .is_some_and(|n| n.ends_with("the job's output after the cancel"))
        })
        .map(|e| {
            e["response"]["body"]["output"]["content"]
                .as_str()
                .expect("content")
                .to_string()
        })
        .collect()
}

/// The shape of a job's output: each line with its numbers and dates
/// blanked, so a run of the double compares with the recording.
fn shape(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| {
            let mut out = String::new();
            let mut in_number = false;
            for c in line.chars() {
                if c.is_ascii_digit() {
                    if !in_number {
                        out.push('N');
                    }
                    in_number = true;
                } else if in_number && matches!(c, '.' | ':' | '-' | 'T') {
                    // Part of a timestamp: stay in the number.
                } else {
                    in_number = false;
                    out.push(c);
                }
            }
            out
        })
        .collect()
}

async fn token(fake: &FakeFirecrest, http: &reqwest::Client) -> String {
    let reply: Value = http
        .post(fake.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &fake.client_id()),
            ("client_secret", &fake.client_secret()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reply["access_token"].as_str().unwrap().to_string()
}

/// Each recorded script, submitted to the double and cancelled once it
/// printed its first line, leaves the recorded output: no trap line in the
/// foreground case (and its processes stay until KillWait), the trap line
/// at once in the background case. The state is final right after the cancel.
#[tokio::test]
async fn the_double_answers_a_cancel_like_the_recorded_server() {
    let fake = FakeFirecrest::start();
    fake.settings(|s| s.kill_wait = KILL_WAIT);
    let http = reqwest::Client::new();
    let bearer = token(&fake, &http).await;
    let jobs = format!("{}/compute/{}/jobs", fake.url(), fake.system());
    let workdir = fake.user_scratch().display().to_string();
    let scripts = recorded_scripts();
    let outputs = recorded_outputs();
    assert_eq!((scripts.len(), outputs.len()), (2, 2));
    for (script, recorded) in scripts.iter().zip(&outputs) {
        let reply: Value = http
            .post(&jobs)
            .bearer_auth(&bearer)
            .json(&json!({"job": {"name": "trap", "workingDirectory": workdir,
                                  "script": script, "env": {"F7T_TEST": "1"}}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = reply["jobId"].as_str().unwrap().to_string();
        let pattern = script
            .lines()
            .find_map(|l| l.strip_prefix("#SBATCH --output="))
            .unwrap();
        let out_file = format!("{workdir}/{}", pattern.replace("%j", &id));
        let read = || std::fs::read_to_string(&out_file).unwrap_or_default();
        assert!(
            wait_until(Duration::from_secs(60), || read()
                .starts_with("started at ")),
            "the job never started: {:?}",
            read()
        );
        let status = http
            .delete(format!("{jobs}/{id}"))
            .bearer_auth(&bearer)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 204);
        let cancelled = Instant::now();
        let job: Value = http
            .get(format!("{jobs}/{id}"))
            .bearer_auth(&bearer)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(job["jobs"][0]["status"]["state"], "CANCELLED by 1001");
        let trapped = recorded.contains("TERM trap ran");
        if trapped {
            assert!(
                wait_until(Duration::from_secs(5), || read().contains("TERM trap ran")),
                "{:?}",
                read()
            );
        } else {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let job = fake.job(id.parse().unwrap()).unwrap();
            assert!(
                job.process_alive,
                "the foreground command should live on until KillWait"
            );
            assert!(cancelled.elapsed() < KILL_WAIT);
        }
        assert_eq!(shape(&read()), shape(recorded), "{:?}", read());
    }
}

/// A whole run through the double whose job hits its time limit keeps the
/// artifacts written before it, although the double (like Slurm) signals
/// the batch shell alone and waits 30 s before SIGKILL.
#[test]
fn artifacts_survive_the_time_limit_on_the_double() {
    let fake = FakeFirecrest::start();
    fake.settings(|s| s.kill_wait = KILL_WAIT);
    let mut setup = Setup::firecrest(
        &fake,
        "timeout-artifacts",
        "mkdir -p out\necho report > out/report.txt\necho started\nsleep 600\necho never",
    );
    setup.set("FIRECREST_TIME_LIMIT", "0:20");
    setup.set("FIRECREST_ARTIFACTS", "out/");
    let out = setup.run(LIMIT);
    assert_eq!(out.code, codes::TIMEOUT, "{}", out.both());
    assert_artifact(&setup, &out, "out/report.txt", "report\n");
    assert!(out.stdout.contains("firecrest-ci: stopped by SIGTERM"));
    assert!(!out.both().contains("matched nothing"), "{}", out.both());
    // The job ended on the forwarded signal, not on KillWait's SIGKILL.
    assert!(
        out.elapsed < Duration::from_secs(20) + KILL_WAIT,
        "{:?}",
        out.elapsed
    );
    assert!(wait_until(Duration::from_secs(5), || !fake.any_job_process_running()));
}

/// CI cancels (SIGINT, as GitHub does first): the job is cancelled, its
/// epilogue packs the artifacts, and the tool brings them back and exits
/// 130 within GitHub's 7.5 s.
#[test]
fn artifacts_come_back_after_ci_cancels_on_the_double() {
    let fake = FakeFirecrest::start();
    fake.settings(|s| s.kill_wait = KILL_WAIT);
    let mut setup = Setup::firecrest(&fake, "ci-cancel-artifacts", PARTIAL_JOB);
    setup.set("FIRECREST_ARTIFACTS", "out/");
    let child = setup.spawn();
    assert!(
        wait_until(LIMIT, || fake
            .job_by_name("ci-cancel-artifacts")
            .is_some_and(|j| std::fs::read_to_string(&j.stdout)
                .unwrap_or_default()
                .contains("fcit-running"))),
        "the job never started"
    );
    let signalled = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let out = wait(child, Duration::from_secs(30), signalled);
    assert_stopped_within_grace(&out, codes::CI_SIGINT);
    assert_artifact(&setup, &out, "out/partial.txt", "partial\n");
    assert!(out.stdout.contains("firecrest-ci: end of the batch script"));
    assert!(wait_until(Duration::from_secs(5), || !fake.any_job_process_running()));
}

/// Real Slurm, KillWait=30: the time limit's SIGTERM reaches the batch
/// shell, the epilogue packs what the job wrote, and the tool brings it back.
#[test]
fn artifacts_survive_the_time_limit_on_slurm() {
    if slurm::skipped("artifacts_survive_the_time_limit_on_slurm") {
        return;
    }
    let (mut setup, name) = slurm::setup(
        "limit-artifacts",
        "mkdir -p out\necho report > out/report.txt\necho started\nsleep 600\necho never",
    );
    setup.set("FIRECREST_TIME_LIMIT", "1");
    setup.set("FIRECREST_ARTIFACTS", "out/");
    let out = setup.run(Duration::from_secs(300));
    assert_eq!(out.code, codes::TIMEOUT, "{}", out.both());
    assert_artifact(&setup, &out, "out/report.txt", "report\n");
    assert!(out
        .stdout
        .contains("firecrest-ci: artifacts packed (1 path)"));
    assert_eq!(slurm::final_state(&name), "TIMEOUT");
    slurm::assert_nothing_left(&setup, &name);
}

/// Real Slurm: `scancel` from outside; exit 120 with the artifacts back.
#[test]
fn artifacts_come_back_after_scancel_on_slurm() {
    if slurm::skipped("artifacts_come_back_after_scancel_on_slurm") {
        return;
    }
    let (mut setup, name) = slurm::setup("scancel-artifacts", PARTIAL_JOB);
    setup.set("FIRECREST_ARTIFACTS", "out/");
    let (child, started) = slurm::spawn_until_started(&setup, "fcit-running");
    slurm::scancel(&name);
    let out = wait(child, LIMIT, started);
    assert_eq!(out.code, codes::CANCELLED_ON_CLUSTER, "{}", out.both());
    assert_artifact(&setup, &out, "out/partial.txt", "partial\n");
    slurm::assert_nothing_left(&setup, &name);
}

/// Real Slurm, CI cancels: exit 143 within GitHub's grace, the artifacts
/// back, and the job gone from Slurm (not even COMPLETING) within 2 s of
/// the tool's exit, far from KillWait's 30 s.
#[test]
fn ci_cancel_on_slurm_brings_artifacts_and_frees_the_node_at_once() {
    if slurm::skipped("ci_cancel_on_slurm_brings_artifacts_and_frees_the_node_at_once") {
        return;
    }
    let (mut setup, name) = slurm::setup("ci-cancel-free", PARTIAL_JOB);
    setup.set("FIRECREST_ARTIFACTS", "out/");
    let (child, _) = slurm::spawn_until_started(&setup, "fcit-running");
    let signalled = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let out = wait(child, Duration::from_secs(30), signalled);
    assert_stopped_within_grace(&out, codes::CI_SIGTERM);
    let exited = Instant::now();
    assert!(
        wait_until(Duration::from_secs(2), || slurm::queued(&name).is_empty()),
        "job {name} still in squeue 2 s after the tool exited: {:?}",
        slurm::queued(&name)
    );
    assert!(exited.elapsed() < Duration::from_secs(2));
    assert_artifact(&setup, &out, "out/partial.txt", "partial\n");
    slurm::assert_nothing_left(&setup, &name);
}

/// The artifact `path` came back into the workspace with `content`.
fn assert_artifact(setup: &Setup, out: &crate::harness::Outcome, path: &str, content: &str) {
    assert_eq!(
        std::fs::read_to_string(setup.path().join(path))
            .ok()
            .as_deref(),
        Some(content),
        "{}",
        out.both()
    );
}
