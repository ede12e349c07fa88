//! Whole runs of the real binary against the FirecREST double: every row of
//! the exit table, exact streaming, artifacts, cleanup, the 404 grace,
//! cancellation by a real signal, request counts of a busy and a quiet job.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

use crate::fake::{FakeFirecrest, ForcedEnd, Route};
use crate::harness::{job_printed, lines_with, random_file, wait, wait_until, Outcome, Setup};

const LIMIT: Duration = Duration::from_secs(120);

fn run(fake: &FakeFirecrest, name: &str, commands: &str) -> Outcome {
    Setup::firecrest(fake, name, commands).run(LIMIT)
}

/// Files left under the user's scratch directory, other than the tool's base.
fn leftovers(fake: &FakeFirecrest) -> Vec<String> {
    fake.scratch_files()
        .into_iter()
        .filter(|f| f.contains("firecrest-ci/") && !f.ends_with("firecrest-ci/"))
        .collect()
}

#[test]
fn a_completed_job_exits_zero_streams_its_output_and_cleans_up() {
    let fake = FakeFirecrest::start();
    let setup = Setup::firecrest(&fake, "ok-job", "echo hello from the job\ncat hello.txt");
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(
        out.stdout.contains("hello from the job\n"),
        "{}",
        out.both()
    );
    assert!(
        out.stdout.contains("hello from the workspace\n"),
        "{}",
        out.both()
    );
    assert!(out.stdout.contains("COMPLETED"), "{}", out.both());
    let job = fake.job_by_name("ok-job").expect("job submitted");
    assert_eq!(job.state, "COMPLETED");
    assert!(
        leftovers(&fake).is_empty(),
        "left behind: {:?}",
        leftovers(&fake)
    );
    let log = std::fs::read_to_string(setup.path().join("firecrest-ci.log")).expect("log file");
    assert!(log.contains("hello from the job\n"));
    // The secret never reaches the log.
    assert!(
        !out.stdout.contains(&fake.client_secret()) && !out.stderr.contains(&fake.client_secret())
    );
}

#[test]
fn a_failing_job_gives_its_exit_code() {
    let fake = FakeFirecrest::start();
    let out = run(&fake, "exit-3", "echo failing\nexit 3");
    assert_eq!(out.code, 3, "{}", out.both());
    assert_eq!(fake.job_by_name("exit-3").unwrap().state, "FAILED");
}

#[test]
fn a_job_killed_by_a_signal_gives_128_plus_the_signal() {
    let fake = FakeFirecrest::start();
    let out = run(&fake, "sigkill", "echo about to die\nkill -9 $$");
    assert_eq!(out.code, 137, "{}", out.both());
}

#[test]
fn a_failed_command_stops_the_block_like_a_ci_run_step() {
    let fake = FakeFirecrest::start();
    let out = run(&fake, "set-e", "echo first\nfalse\necho never");
    assert_eq!(out.code, 1, "{}", out.both());
    assert!(!out.stdout.contains("never"), "{}", out.both());
}

/// Final states a test cannot provoke on the double for real.
fn forced(state: &str, exit: i32, signal: i32, expected: i32) {
    let fake = FakeFirecrest::start();
    let name = format!("forced-{}", state.to_ascii_lowercase().replace('_', "-"));
    fake.force_end(&name, ForcedEnd::new(state, exit, signal));
    let out = run(&fake, &name, "echo running");
    assert_eq!(
        out.code,
        expected,
        "{state} {exit}:{signal}\n{}",
        out.both()
    );
    assert!(
        out.stderr.contains(state) || out.stdout.contains(state),
        "{}",
        out.both()
    );
}

#[test]
fn timeout_gives_124() {
    forced("TIMEOUT", 0, 0, 124);
}

#[test]
fn deadline_gives_124() {
    forced("DEADLINE", 0, 0, 124);
}

#[test]
fn out_of_memory_gives_137_not_a_signal_of_125() {
    forced("OUT_OF_MEMORY", 0, 125, 137);
}

#[test]
fn node_fail_boot_fail_and_preemption_give_75() {
    forced("NODE_FAIL", 0, 0, 75);
    forced("BOOT_FAIL", 0, 0, 75);
    forced("PREEMPTED", 0, 0, 75);
}

#[test]
fn failed_with_exit_zero_is_never_success() {
    forced("FAILED", 0, 0, 1);
}

#[test]
fn a_job_cancelled_on_the_cluster_gives_120() {
    let fake = FakeFirecrest::start();
    let setup = Setup::firecrest(&fake, "to-cancel", "echo fcit-waiting\nsleep 300");
    let started = Instant::now();
    let child = setup.spawn();
    assert!(
        wait_until(LIMIT, || job_printed(&fake, "fcit-waiting")),
        "job never ran"
    );
    let id = fake.job_by_name("to-cancel").unwrap().id;
    // Cancel from outside, as a user with scancel would: the tool's own
    // `cancel` command talks to the same server.
    let mut cancel = std::process::Command::new(crate::harness::binary());
    cancel
        .env_clear()
        .envs(&setup.env)
        .arg("cancel")
        .arg(id.to_string());
    let status = cancel.output().expect("run cancel");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let out = wait(child, LIMIT, started);
    assert_eq!(out.code, 120, "{}", out.both());
    assert!(fake.job(id).unwrap().state.starts_with("CANCELLED"));
}

#[test]
fn streaming_shows_every_byte_once_even_when_characters_are_split() {
    let fake = FakeFirecrest::start();
    // A character cut between two writes, a long pause in between so a read
    // lands in the middle, invalid bytes, then more text.
    let commands = r#"printf 'line 1: gr\xc3\xbc\xc3'
sleep 2.5
printf '\x9fe \xe6\x97'
sleep 2.5
printf '\xa5\xe6\x9c\xac\n'
printf 'line 2: bad \xff byte then \xe2\x9c\x93\n'
printf 'line 3: done\n'"#;
    let setup = Setup::firecrest(&fake, "split-chars", commands);
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 0, "{}", out.both());
    let expected = "line 1: grüße 日本\nline 2: bad \u{fffd} byte then ✓\nline 3: done\n";
    assert!(out.stdout.contains(expected), "{}", out.both());
    assert_eq!(out.stdout.matches("line 1:").count(), 1);
    assert_eq!(out.stdout.matches("line 3:").count(), 1);
}

#[test]
fn a_burst_above_the_size_limit_is_read_in_pieces() {
    let fake = FakeFirecrest::start();
    fake.settings(|s| {
        s.max_ops_file_size = 256 * 1024;
        s.max_part_size = 256 * 1024;
    });
    let out = run(&fake, "burst", "seq 1 120000\nsleep 3\necho tail-end");
    assert_eq!(out.code, 0, "{}", out.both());
    let numbers: Vec<u64> = out.stdout.lines().filter_map(|l| l.parse().ok()).collect();
    assert_eq!(
        numbers.len(),
        120000,
        "each number exactly once\n{}",
        out.stderr
    );
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "in order");
    assert_eq!(out.stdout.matches("tail-end").count(), 1);
}

#[test]
fn output_written_after_the_final_state_is_still_shown() {
    let fake = FakeFirecrest::start();
    // The job ends with a burst: the state read can see it final before
    // the output reads caught up; the tool reads on to the batch script's
    // last line instead of stopping at the state. (A process that escapes
    // the job and writes after that line is not waited for: on a cluster,
    // Slurm's process tracking kills it with the job.)
    let commands = "echo main part\nsleep 1.2\nseq 1 20000 | sed 's/^/late line /'";
    let out = run(&fake, "late-output", commands);
    assert_eq!(out.code, 0, "{}", out.both());
    for n in [1, 19999, 20000] {
        assert_eq!(
            out.stdout.matches(&format!("late line {n}\n")).count(),
            1,
            "{}",
            out.both()
        );
    }
    assert!(out
        .stdout
        .contains("firecrest-ci: end of the batch script (exit status 0)"));
}

#[test]
fn a_job_the_scheduler_shows_late_is_waited_for() {
    let fake = FakeFirecrest::start();
    fake.settings(|s| s.job_404_for = Duration::from_secs(6));
    let out = run(&fake, "late-job", "echo finally");
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(out.stdout.contains("finally"));
}

#[test]
fn a_job_that_never_appears_fails_clearly_without_hanging() {
    let fake = FakeFirecrest::start();
    fake.hide_job("ghost", None);
    let mut setup = Setup::firecrest(&fake, "ghost", "echo hi");
    setup.set("FIRECREST_SUBMIT_GRACE", "5s");
    let out = setup.run(Duration::from_secs(60));
    assert_ne!(out.code, 0, "{}", out.both());
    assert!(out.stderr.contains("has not shown it"), "{}", out.both());
    assert!(
        out.elapsed < Duration::from_secs(45),
        "took {:?}",
        out.elapsed
    );
}

fn signal_cancels(signal: Signal, expected: i32) {
    let fake = FakeFirecrest::start();
    let name = format!("ci-{}", signal.as_str().to_ascii_lowercase());
    let setup = Setup::firecrest(&fake, &name, "echo fcit-started\nsleep 300");
    let started = Instant::now();
    let child = setup.spawn();
    let pid = Pid::from_raw(child.id() as i32);
    // The job's own line: its commands run, not only its state says so.
    assert!(
        wait_until(LIMIT, || job_printed(&fake, "fcit-started")),
        "job never ran"
    );
    let signalled = Instant::now();
    kill(pid, signal).expect("signal");
    let out = wait(child, LIMIT, started);
    let took = signalled.elapsed();
    assert_eq!(out.code, expected, "{}", out.both());
    assert!(
        took < Duration::from_millis(7500),
        "took {took:?} after the signal"
    );
    let job = fake.job_by_name(&name).unwrap();
    assert!(job.state.starts_with("CANCELLED"), "state {}", job.state);
    assert!(wait_until(Duration::from_secs(60), || !fake.any_job_process_running()));
    assert!(
        leftovers(&fake).is_empty(),
        "left behind: {:?}",
        leftovers(&fake)
    );
}

#[test]
fn sigterm_from_ci_cancels_the_job_within_the_grace_period() {
    signal_cancels(Signal::SIGTERM, 143);
}

#[test]
fn sigint_from_ci_cancels_the_job_within_the_grace_period() {
    signal_cancels(Signal::SIGINT, 130);
}

#[test]
fn the_run_timeout_cancels_the_job() {
    let fake = FakeFirecrest::start();
    let mut setup = Setup::firecrest(&fake, "too-long", "echo started\nsleep 120");
    setup.set("FIRECREST_TIMEOUT", "8s");
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 121, "{}", out.both());
    assert!(fake
        .job_by_name("too-long")
        .unwrap()
        .state
        .starts_with("CANCELLED"));
}

#[test]
fn artifacts_come_back_even_when_the_commands_exit_early() {
    let fake = FakeFirecrest::start();
    let mut setup = Setup::firecrest(
        &fake,
        "artifacts",
        "mkdir -p out/deep\necho result > out/r.txt\necho deep > out/deep/d.txt\nexit 5\necho never",
    );
    setup.set("FIRECREST_ARTIFACTS", "out/");
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 5, "{}", out.both());
    let got = std::fs::read_to_string(setup.path().join("out/r.txt")).expect("artifact");
    assert_eq!(got, "result\n");
    assert!(setup.path().join("out/deep/d.txt").exists());
    assert!(
        leftovers(&fake).is_empty(),
        "left behind: {:?}",
        leftovers(&fake)
    );
}

#[test]
fn forwarded_variables_arrive_with_their_exact_values() {
    let fake = FakeFirecrest::start();
    let value = "a,b \"quoted\" 'single' $HOME `x`\nsecond line\\";
    let mut setup = Setup::firecrest(&fake, "env", "printf '<%s>\\n' \"$MY_VALUE\"");
    setup.set("FIRECREST_ENV_VARS", "MY_VALUE");
    setup.set("MY_VALUE", value);
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(
        out.stdout.contains(&format!("<{value}>\n")),
        "{}",
        out.both()
    );
    // Only the job prints it: never the tool's own log.
    assert!(!out.stderr.contains("second line"), "{}", out.both());
    assert_eq!(fake.job_by_name("env").unwrap().state, "COMPLETED");
}

#[test]
fn a_workspace_over_the_limit_goes_up_in_parts() {
    let fake = FakeFirecrest::start();
    fake.settings(|s| s.max_ops_file_size = 256 * 1024);
    let setup = Setup::firecrest(&fake, "parts", "sha256sum big.bin");
    let sha = random_file(&setup.path().join("big.bin"), 900 * 1024);
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(out.stdout.contains(&sha), "{}", out.both());
    assert!(
        fake.count(Route::OpsUpload) >= 4,
        "uploads: {}",
        fake.count(Route::OpsUpload)
    );
}

#[test]
fn a_workspace_over_the_threshold_goes_through_s3() {
    let fake = FakeFirecrest::start();
    fake.settings(|s| {
        s.max_ops_file_size = 256 * 1024;
        s.max_part_size = 300 * 1024;
    });
    fake.fail_part_puts(2);
    let mut setup = Setup::firecrest(&fake, "staged", "sha256sum big.bin");
    setup.set("FIRECREST_TRANSFER_THRESHOLD", "512KiB");
    let sha = random_file(&setup.path().join("big.bin"), 1024 * 1024);
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(out.stdout.contains(&sha), "{}", out.both());
    assert!(fake.count(Route::TransferUpload) == 1);
    assert!(fake.count(Route::S3Complete) == 1);
}

/// The double's requests, as (seconds since it started, route).
fn requests(fake: &FakeFirecrest) -> Vec<(f64, Route)> {
    fake.log()
        .iter()
        .map(|e| (e.at.as_secs_f64(), e.route))
        .collect()
}

/// When the output reads that found output came, in seconds.
fn output_read_times(fake: &FakeFirecrest) -> Vec<f64> {
    fake.log()
        .iter()
        .filter(|e| e.route.is_text_read() && e.output_len > 0)
        .map(|e| e.at.as_secs_f64())
        .collect()
}

/// Requests of `route` (all routes: `None`) in `from..to` seconds.
fn count_in(requests: &[(f64, Route)], route: Option<Route>, from: f64, to: f64) -> usize {
    requests
        .iter()
        .filter(|(at, r)| (from..to).contains(at) && route.is_none_or(|route| *r == route))
        .count()
}

#[test]
fn a_long_job_costs_few_requests() {
    let fake = FakeFirecrest::start();
    // 40 s of a line every 100 ms.
    let commands = "for i in $(seq 1 400); do echo \"tick $i\"; sleep 0.1; done";
    let mut setup = Setup::firecrest(&fake, "ticker", commands);
    // The default schedule, not the tests' fast one.
    setup.env.remove("FIRECREST_POLL_INTERVAL");
    setup.env.remove("FIRECREST_LOG_INTERVAL");
    // 400 `sleep` processes: on a loaded machine far more than 40 s.
    let out = setup.run(Duration::from_secs(300));
    assert_eq!(out.code, 0, "{}", out.both());
    let ticks = lines_with(&out.stdout, "tick ");
    assert_eq!(ticks.len(), 400, "every line once");
    let log = requests(&fake);
    let reads = output_read_times(&fake);
    // While the output flows (from the first read that found output to the
    // last), the state is read by the safety net only: every 60 s.
    let (first, last) = (reads[0], reads[reads.len() - 1]);
    let flowing = count_in(&log, Some(Route::JobGet), first + 1.0, last - 1.0);
    let allowed = ((last - first) / 60.0).floor() as usize + 1;
    assert!(
        flowing <= allowed,
        "{flowing} state reads in {:.0} s of output",
        last - first
    );
    // While it flows: one read a second (one `view` each) and the safety
    // net; over the whole run, a few state reads a minute.
    let per_minute = count_in(&log, None, first, last) as f64 / (last - first) * 60.0;
    let minutes = out.elapsed.as_secs_f64() / 60.0;
    let state_per_minute = fake.count(Route::JobGet) as f64 / minutes;
    eprintln!(
        "requests: {per_minute:.0}/min while the output flowed, {state_per_minute:.1} state reads/min in {:?}",
        out.elapsed
    );
    assert!(per_minute <= 75.0, "{per_minute:.0} requests per minute");
    assert!(
        state_per_minute <= 12.0,
        "{state_per_minute:.1} state reads per minute"
    );
}

#[test]
fn a_quiet_job_costs_few_requests() {
    let fake = FakeFirecrest::start();
    // Silent for longer than the default `silent_after` (75 s), so that the
    // reads settle at their slowest.
    let mut setup = Setup::firecrest(&fake, "quiet", "echo start; sleep 120; echo done");
    setup.env.remove("FIRECREST_POLL_INTERVAL");
    setup.env.remove("FIRECREST_LOG_INTERVAL");
    let out = setup.run(Duration::from_secs(240));
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(out.stdout.contains("done"), "{}", out.stdout);
    let log = requests(&fake);
    // The silence: the longest gap between two reads that gave output.
    let reads = output_read_times(&fake);
    let (from, to) = reads
        .windows(2)
        .map(|w| (w[0], w[1]))
        .max_by(|a, b| (a.1 - a.0).total_cmp(&(b.1 - b.0)))
        .expect("two reads that found output");
    assert!(to - from >= 115.0, "no silence between reads: {reads:?}");
    // Backed off after 75 s of quiet: an output read every 15 s and the
    // safety net's state read every 60 s, at most 10 requests a minute.
    let settled = from + 80.0;
    let requests = count_in(&log, None, settled, to);
    let per_minute = requests as f64 / (to - settled) * 60.0;
    eprintln!(
        "{requests} requests in the last {:.0} s of a {:.0} s silence",
        to - settled,
        to - from
    );
    assert!(per_minute <= 10.0, "{per_minute:.1} requests per minute");
    // The whole silence: the safety net only (every 60 s).
    let states = count_in(&log, Some(Route::JobGet), from, to);
    assert!(states <= 2, "{states} state reads in the silence");
}

#[test]
fn artifacts_too_large_for_one_download_come_back_in_parts_without_s3() {
    let fake = FakeFirecrest::start();
    fake.settings(|s| {
        s.max_ops_file_size = 256 * 1024;
        s.s3 = false;
    });
    // 600 kB of incompressible data: about four parts of the ~188 kB a
    // download may return.
    let mut setup = Setup::firecrest(
        &fake,
        "artifact-parts",
        "mkdir -p out\nhead -c 600000 /dev/urandom > out/blob.bin\nsha256sum out/blob.bin",
    );
    setup.set("FIRECREST_ARTIFACTS", "out/");
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 0, "{}", out.both());
    let blob = std::fs::read(setup.path().join("out/blob.bin")).expect("artifact came back");
    let sha = hex::encode(Sha256::digest(&blob));
    assert!(
        out.stdout.contains(&sha),
        "same bytes as on the cluster\n{}",
        out.both()
    );
    assert!(
        fake.count(Route::OpsDownload) >= 4,
        "downloads: {}",
        fake.count(Route::OpsDownload)
    );
    assert_eq!(fake.count(Route::TransferDownload), 0);
    assert!(
        leftovers(&fake).is_empty(),
        "left behind: {:?}",
        leftovers(&fake)
    );
}
