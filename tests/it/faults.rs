//! Fault injection (issue 7): whole runs of the real binary through a job
//! while the FirecREST double misbehaves on cue. Each case checks what a user
//! relies on: the exit code is the job's, every line of the job's output
//! appears exactly once and in order, the Slurm job ended (finished or
//! cancelled), no job process is left running, and the run directory under
//! `<scratch>/ciuser/firecrest-ci/` is gone (the default cleanup policy,
//! `always`).
//!
//! Each case prints one `figures:` line to stderr (requests per minute,
//! faults injected, retries the tool logged); see them with
//! `cargo test --test it faults -- --nocapture --test-threads=16` (and the
//! tool's own log with `FAULTS_SHOW_STDERR=1`).
//! The long cases (2.5 and 3 minutes) only wait, so run the module with
//! many test threads: with `--test-threads=16` it takes about 3 minutes on
//! 2 cores; with the default (one thread per core) about twice that.

use std::time::{Duration, Instant};

use crate::fake::{
    FakeFirecrest, ForcedEnd, LogEntry, Malform, Outage, PortKind, Route, Stage, TokenDown, Window,
};
use crate::harness::{lines_with, random_file, wait_sampling_peak_rss, wait_until, Outcome, Setup};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The prefix of the job's numbered lines.
const TAG: &str = "seq-line";

/// A job that prints `seq-line 1` .. `seq-line <lines>`, sleeping `pause`
/// seconds after each, then exits `code`.
fn numbered_job(lines: u32, pause: &str, code: i32) -> String {
    format!("for i in $(seq 1 {lines}); do echo \"{TAG} $i\"; sleep {pause}; done\nexit {code}")
}

/// A run against `fake` with debug logs (to count the tool's retries).
fn setup(fake: &FakeFirecrest, name: &str, commands: &str) -> Setup {
    let mut setup = Setup::firecrest(fake, name, commands);
    setup.set("FIRECREST_LOG_LEVEL", "debug");
    setup
}

/// The default poll schedule instead of the tests' fast one.
fn default_polling(setup: &mut Setup) {
    setup.env.remove("FIRECREST_POLL_INTERVAL");
    setup.env.remove("FIRECREST_LOG_INTERVAL");
}

/// Files left under the tool's base directory on the cluster.
fn leftovers(fake: &FakeFirecrest) -> Vec<String> {
    fake.scratch_files()
        .into_iter()
        .filter(|f| f.contains("firecrest-ci/") && !f.ends_with("firecrest-ci/"))
        .collect()
}

/// Never a panic, whatever the server did.
fn assert_no_panic(out: &Outcome) {
    assert_ne!(out.code, 101, "{}", out.both());
    assert!(!out.stderr.contains("panicked"), "{}", out.both());
    assert!(!out.stdout.contains("panicked"), "{}", out.both());
}

/// `seq-line 1` .. `seq-line <lines>`, each exactly once, in order, whole.
fn assert_numbered_lines(out: &Outcome, lines: u32) {
    let seen: Vec<&str> = lines_with(&out.stdout, TAG);
    let expected: Vec<String> = (1..=lines).map(|i| format!("{TAG} {i}")).collect();
    assert_eq!(
        seen,
        expected,
        "every line exactly once and in order\n{}",
        out.both()
    );
}

/// The checks every case shares; `state` is the final Slurm state expected.
fn assert_whole_run(
    fake: &FakeFirecrest,
    name: &str,
    out: &Outcome,
    code: i32,
    lines: u32,
    state: &str,
) {
    assert_no_panic(out);
    assert_eq!(out.code, code, "exit code\n{}", out.both());
    assert_numbered_lines(out, lines);
    let jobs: Vec<_> = fake.jobs().into_iter().filter(|j| j.name == name).collect();
    assert_eq!(jobs.len(), 1, "submitted exactly once: {jobs:?}");
    assert!(jobs[0].is_final, "job not ended: {:?}", jobs[0]);
    assert!(
        jobs[0].state.starts_with(state),
        "state {:?}",
        jobs[0].state
    );
    assert!(
        wait_until(secs(10), || !fake.any_job_process_running()),
        "a job process is still running"
    );
    assert!(
        leftovers(fake).is_empty(),
        "left behind: {:?}",
        leftovers(fake)
    );
    // The secret shows only where GitHub reads it to mask it.
    let secret = fake.client_secret();
    assert!(!out.stderr.contains(&secret), "{}", out.both());
    assert!(
        out.stdout
            .lines()
            .filter(|l| l.contains(&secret))
            .all(|l| l == format!("::add-mask::{secret}")),
        "{}",
        out.both()
    );
}

/// What a run cost and what it went through, printed for the report.
struct Figures {
    requests: usize,
    per_minute: f64,
    injected: usize,
    retries: usize,
    unauthorized: usize,
}

fn figures(case: &str, fake: &FakeFirecrest, out: &Outcome) -> Figures {
    let log: Vec<LogEntry> = fake.log();
    let api: Vec<&LogEntry> = log.iter().filter(|e| e.port == PortKind::Api).collect();
    let minutes = out.elapsed.as_secs_f64() / 60.0;
    let f = Figures {
        requests: api.len(),
        per_minute: api.len() as f64 / minutes,
        injected: log.iter().filter(|e| e.injected.is_some()).count(),
        retries: out.stderr.matches("retrying").count(),
        unauthorized: log.iter().filter(|e| e.status == 401).count(),
    };
    let count = |r: Route| log.iter().filter(|e| e.route == r).count();
    eprintln!(
        "figures: {case}: {:.0}s, {} API requests = {:.1}/min (job GETs {}, output reads {}, tokens {}), \
         {} faults injected, {} retries logged by the tool, {} answered 401",
        out.elapsed.as_secs_f64(),
        f.requests,
        f.per_minute,
        count(Route::JobGet),
        log.iter().filter(|e| e.route.is_text_read()).count(),
        count(Route::Token),
        f.injected,
        f.retries,
        f.unauthorized,
    );
    if std::env::var_os("FAULTS_SHOW_STDERR").is_some() {
        eprintln!("--- {case}: stderr of the tool\n{}", out.stderr);
    }
    f
}

#[test]
fn thirty_percent_of_requests_answer_502_503_504_for_two_minutes_of_a_job() {
    // A job of ~2.5 minutes, a line a second, polled on the default schedule
    // (state every 10 s, output every 1-10 s): the realistic request mix.
    let fake = FakeFirecrest::start();
    let name = "flaky-gateway";
    let mut setup = setup(&fake, name, &numbered_job(150, "1", 3));
    default_polling(&mut setup);
    fake.random_5xx(0.3, Window::now_for(secs(120)), 7);
    let out = setup.run(secs(240));
    let f = figures("30% 502/503/504 for two minutes", &fake, &out);
    assert_whole_run(&fake, name, &out, 3, 150, "FAILED");
    assert!(f.injected >= 10, "too few faults to mean anything");
    assert!(f.retries >= f.injected / 2, "retries {}", f.retries);
}

#[test]
fn every_tenth_request_answers_429_with_retry_after_3() {
    let fake = FakeFirecrest::start();
    let name = "rate-limited";
    let setup = setup(&fake, name, &numbered_job(40, "1", 0));
    fake.rate_limit(10, 3, Window::now_for(secs(600)));
    let started = Instant::now();
    let out = setup.run(secs(150));
    let f = figures("429 Retry-After: 3 on every tenth request", &fake, &out);
    assert_whole_run(&fake, name, &out, 0, 40, "COMPLETED");
    let limited = fake.log().iter().filter(|e| e.status == 429).count();
    assert!(limited >= 3, "only {limited} 429s");
    // Retry-After is honoured: no request comes back sooner than 3 s after
    // a 429 (it goes to the same route; other routes may run meanwhile).
    let log = fake.log();
    for (i, e) in log.iter().enumerate().filter(|(_, e)| e.status == 429) {
        if let Some(next) = log[i + 1..]
            .iter()
            .find(|n| n.route == e.route && n.query == e.query && n.method == e.method)
        {
            assert!(
                next.at - e.at >= Duration::from_millis(2900),
                "{} {} came back after {:?}",
                e.method,
                e.path,
                next.at - e.at
            );
        }
    }
    assert!(
        f.retries >= limited,
        "retries {} < 429s {limited}",
        f.retries
    );
    assert!(started.elapsed() < secs(150));
}

#[test]
fn tokens_that_live_20_s_across_a_3_minute_job_and_a_token_endpoint_down_for_15_s() {
    let fake = FakeFirecrest::start();
    // The real server refuses tokens with under 30 s left; with 20 s tokens
    // that would leave nothing, so the double refuses under 5 s.
    fake.settings(|s| {
        s.token_ttl = 20;
        s.min_token_ttl = 5;
    });
    let name = "short-tokens";
    let setup = setup(&fake, name, &numbered_job(180, "1", 0));
    fake.token_down(TokenDown::Refused, Window::starting_in(secs(90), secs(15)));
    // A 3-minute job; the bound only costs time when the run hangs.
    let out = setup.run(secs(480));
    let f = figures(
        "20 s tokens over 3 minutes, token endpoint down 15 s",
        &fake,
        &out,
    );
    assert_whole_run(&fake, name, &out, 0, 180, "COMPLETED");
    let tokens = fake
        .log()
        .iter()
        .filter(|e| e.route == Route::Token && e.status == 200)
        .count();
    assert!(tokens >= 10, "only {tokens} tokens over 3 minutes");
    // Refreshed before the server would refuse them, even across the gap.
    assert_eq!(f.unauthorized, 0, "requests with a stale token");
}

#[test]
fn the_server_goes_away_connection_refused_for_20_s_then_returns() {
    let fake = FakeFirecrest::start();
    let name = "outage";
    let setup = setup(&fake, name, &numbered_job(50, "1", 3));
    fake.outage(Outage::All, Window::starting_in(secs(15), secs(20)));
    let out = setup.run(secs(180));
    let f = figures("connection refused for 20 s", &fake, &out);
    assert_whole_run(&fake, name, &out, 3, 50, "FAILED");
    assert!(f.retries >= 3, "retries {}", f.retries);
}

#[test]
fn a_connection_reset_while_an_upload_part_is_in_flight() {
    let fake = FakeFirecrest::start();
    fake.settings(|s| s.max_ops_file_size = 256 * 1024);
    let name = "reset-part";
    let commands = format!("sha256sum big.bin\n{}", numbered_job(10, "0.2", 0));
    let setup = setup(&fake, name, &commands);
    let sha = random_file(&setup.path().join("big.bin"), 900 * 1024);
    fake.reset_next(Some(Route::OpsUpload), 1);
    let out = setup.run(secs(120));
    figures("connection reset during an upload part", &fake, &out);
    assert_whole_run(&fake, name, &out, 0, 10, "COMPLETED");
    assert_eq!(out.stdout.matches(&sha).count(), 1, "{}", out.both());
    let dropped = fake
        .log()
        .iter()
        .filter(|e| e.route == Route::OpsUpload && e.status == 0)
        .count();
    assert_eq!(dropped, 1, "the reset happened");
    assert!(fake.count(Route::OpsUpload) >= 5, "4 parts and a retry");
}

#[test]
fn a_part_put_that_answers_500_twice() {
    let fake = FakeFirecrest::start();
    fake.settings(|s| {
        s.max_ops_file_size = 256 * 1024;
        s.max_part_size = 300 * 1024;
    });
    let name = "s3-part-500";
    let commands = format!("sha256sum big.bin\n{}", numbered_job(10, "0.2", 0));
    let mut setup = setup(&fake, name, &commands);
    setup.set("FIRECREST_TRANSFER_THRESHOLD", "512KiB");
    let sha = random_file(&setup.path().join("big.bin"), 1024 * 1024);
    fake.fail_part_puts(2);
    // And a connection dropped while one part's body is on its way.
    fake.reset_next(Some(Route::S3PartPut), 1);
    let out = setup.run(secs(120));
    figures("S3 part PUT answers 500 twice", &fake, &out);
    assert_whole_run(&fake, name, &out, 0, 10, "COMPLETED");
    assert_eq!(out.stdout.matches(&sha).count(), 1, "{}", out.both());
    let log = fake.log();
    let puts = log.iter().filter(|e| e.route == Route::S3PartPut);
    let failed = puts.clone().filter(|e| e.status == 500).count();
    let parts = puts.filter(|e| e.status == 200).count();
    assert!(parts >= 4, "{parts} parts stored");
    assert_eq!(failed, 2 * parts, "each part failed twice first");
    assert_eq!(fake.count(Route::S3Complete), 1);
}

#[test]
fn a_response_slower_than_the_request_timeout() {
    let fake = FakeFirecrest::start();
    let name = "slow-replies";
    let mut setup = setup(&fake, name, &numbered_job(20, "1", 5));
    setup.set("FIRECREST_REQUEST_TIMEOUT", "3s");
    // The server does the work and answers 10 s late.
    fake.delay(Some(Route::JobGet), secs(10), Stage::After, None, Some(3));
    fake.delay(Some(Route::OpsView), secs(10), Stage::After, None, Some(3));
    let out = setup.run(secs(150));
    let f = figures("replies 10 s late, request timeout 3 s", &fake, &out);
    assert_whole_run(&fake, name, &out, 5, 20, "FAILED");
    // The double logs a late reply once it is sent, after the tool gave up on it.
    let delayed = || {
        fake.log()
            .iter()
            .filter(|e| e.injected.as_deref() == Some("delay"))
            .count()
    };
    assert!(
        wait_until(secs(60), || delayed() == 6),
        "{} delayed",
        delayed()
    );
    // Each late job GET is retried by the client; a late output read is
    // retried once (RetryPolicy::OUTPUT_READ), then read again on the
    // watcher's own schedule, which logs no "retrying".
    assert!(f.retries >= 4, "retries {}", f.retries);
}

#[test]
fn get_job_answering_404_for_15_s_after_submit() {
    let fake = FakeFirecrest::start();
    let name = "late-in-queue";
    fake.hide_job(name, Some(secs(15)));
    let setup = setup(&fake, name, &numbered_job(20, "1", 0));
    let out = setup.run(secs(150));
    figures("GET job 404 for 15 s", &fake, &out);
    assert_whole_run(&fake, name, &out, 0, 20, "COMPLETED");
    let not_found = fake
        .log()
        .iter()
        .filter(|e| e.route == Route::JobGet && e.status == 404)
        .count();
    assert!(not_found >= 2, "only {not_found} 404s");
}

#[test]
fn then_a_job_that_never_appears_fails_clearly_without_hanging() {
    let fake = FakeFirecrest::start();
    let name = "never-appears";
    fake.hide_job(name, None);
    let mut setup = setup(&fake, name, &numbered_job(300, "1", 0));
    setup.set("FIRECREST_SUBMIT_GRACE", "10s");
    let out = setup.run(secs(90));
    figures("a job that never appears", &fake, &out);
    assert_no_panic(&out);
    assert_ne!(out.code, 0, "{}", out.both());
    let job = fake.job_by_name(name).expect("job submitted");
    assert!(
        out.stderr.contains(&format!("job {}", job.id)),
        "names the job\n{}",
        out.both()
    );
    assert!(
        out.stderr.contains("FIRECREST_SUBMIT_GRACE"),
        "{}",
        out.both()
    );
    assert!(out.elapsed < secs(45), "took {:?}", out.elapsed);
    // The job exists even though the scheduler did not show it: cancelled.
    assert!(job.state.starts_with("CANCELLED"), "state {}", job.state);
    assert!(wait_until(secs(60), || !fake.any_job_process_running()));
    assert!(
        leftovers(&fake).is_empty(),
        "left behind: {:?}",
        leftovers(&fake)
    );
}

#[test]
fn malformed_json_and_a_missing_field_get_a_safe_default_never_a_panic() {
    let fake = FakeFirecrest::start();
    let name = "malformed";
    let setup = setup(&fake, name, &numbered_job(15, "1", 4));
    fake.malform_next(Some(Route::JobGet), 2, Malform::InvalidJson);
    fake.malform_next(Some(Route::OpsView), 3, Malform::InvalidJson);
    fake.malform_next(Some(Route::JobGet), 2, Malform::DropField("status".into()));
    let out = setup.run(secs(120));
    figures("malformed JSON, missing status field", &fake, &out);
    assert_whole_run(&fake, name, &out, 4, 15, "FAILED");
    let spoiled = fake
        .log()
        .iter()
        .filter(|e| e.injected.as_deref() == Some("malformed"))
        .count();
    assert_eq!(spoiled, 7);
    for what in ["not the JSON expected", "the reply has no job state"] {
        assert!(
            out.stderr.contains(what),
            "says what went wrong: {what}\n{}",
            out.both()
        );
    }
    assert!(!out.stderr.contains("unknown job state"), "{}", out.both());
}

/// Before anything exists on the cluster, a reply that cannot be read ends
/// the run with an error naming the request, and leaves nothing behind.
#[test]
fn malformed_json_before_the_job_is_a_clear_error() {
    let fake = FakeFirecrest::start();
    let name = "malformed-systems";
    let setup = setup(&fake, name, &numbered_job(3, "0", 0));
    fake.malform_next(Some(Route::Systems), 1, Malform::InvalidJson);
    let out = setup.run(secs(60));
    figures("malformed /status/systems", &fake, &out);
    assert_no_panic(&out);
    assert_ne!(out.code, 0, "{}", out.both());
    assert!(
        out.stderr
            .contains("GET /status/systems: the reply is not the JSON expected"),
        "{}",
        out.both()
    );
    assert!(fake.job_by_name(name).is_none(), "nothing submitted");
    assert!(leftovers(&fake).is_empty(), "{:?}", leftovers(&fake));
}

/// The job exists once the submit answered 201, whatever the body says: the
/// tool must find it (by its unique name), not give up and leave it running.
#[test]
fn malformed_json_or_a_missing_job_id_in_the_submit_reply_finds_the_job() {
    for (name, how) in [
        ("submit-invalid-json", Malform::InvalidJson),
        ("submit-no-job-id", Malform::DropField("jobId".into())),
    ] {
        let fake = FakeFirecrest::start();
        let setup = setup(&fake, name, &numbered_job(8, "0.5", 2));
        fake.malform_next(Some(Route::JobSubmit), 1, how);
        let out = setup.run(secs(120));
        figures(name, &fake, &out);
        assert_whole_run(&fake, name, &out, 2, 8, "FAILED");
        assert!(fake.count(Route::JobList) >= 1, "looked the job up");
    }
}

/// An unknown state is not final: the tool keeps watching (it may be a state
/// a newer Slurm added, after which the job goes on), warns once, and the
/// run's `timeout` input bounds the wait: it cancels (a no-op for a job that
/// already ended) and exits with its own code, 121.
#[test]
fn an_unknown_job_state_string_is_watched_until_the_run_timeout() {
    let fake = FakeFirecrest::start();
    let name = "weird-state";
    fake.force_end(name, ForcedEnd::new("WEIRD_STATE", 0, 0));
    let mut setup = setup(&fake, name, &numbered_job(5, "1", 0));
    default_polling(&mut setup);
    setup.set("FIRECREST_TIMEOUT", "30s");
    let out = setup.run(secs(90));
    figures("unknown job state", &fake, &out);
    // Watching a lingering state costs a read every state interval, not
    // one a second: 1, 2, 4, 8 s after the end marker, then every 10 s.
    let reads = fake.count(Route::JobGet);
    assert!(reads <= 12, "{reads} job reads in {:?}", out.elapsed);
    assert_whole_run(&fake, name, &out, 121, 5, "WEIRD_STATE");
    assert_eq!(
        out.stderr.matches("unknown job state").count(),
        1,
        "warned once\n{}",
        out.both()
    );
    assert!(out.elapsed < secs(60), "took {:?}", out.elapsed);
}

/// GitHub's runner, reduced to what decides whether a line runs as a
/// command: for each line (split like .NET `ReadLine`: LF, CR or CRLF),
/// whether commands were stopped when the runner read it.
fn runner_view(stdout: &str) -> Vec<(String, bool)> {
    let mut stopped: Option<String> = None;
    let mut view = Vec::new();
    for line in stdout.split(['\n', '\r']) {
        let trimmed = line.trim_start();
        let name = trimmed
            .strip_prefix("::")
            .and_then(|rest| rest.find("::").map(|end| &rest[..end]))
            .map(|info| info.split(' ').next().unwrap_or(""));
        view.push((line.to_string(), stopped.is_some()));
        match (&stopped, name) {
            (Some(token), Some(name)) if name.eq_ignore_ascii_case(token) => stopped = None,
            (None, Some(name)) if name.eq_ignore_ascii_case("stop-commands") => {
                let token = trimmed.splitn(3, "::").nth(2).unwrap_or("").to_string();
                stopped = Some(token);
            }
            _ => {}
        }
    }
    view
}

#[test]
fn hostile_job_output_workflow_commands_ansi_escapes_and_nul_bytes() {
    let fake = FakeFirecrest::start();
    let name = "hostile";
    let commands = r#"echo '::error::HOSTILE fake error annotation'
echo '::add-mask::HOSTILE'
echo '::set-output name=state::HOSTILE'
echo '::stop-commands::HOSTILE-token'
echo '::HOSTILE-token::'
echo '::warning::HOSTILE after a fake resume'
echo '   ::notice::HOSTILE indented'
echo '##[error]HOSTILE legacy syntax'
printf 'progress\r::error::HOSTILE after a carriage return\n'
printf '\033[31mred\033[0m \033[1mbold\033[0m\n'
printf 'nul\0byte\0\n'
sleep 2
echo '::endgroup::HOSTILE'
echo '::group::HOSTILE'
"#;
    let mut setup = setup(
        &fake,
        name,
        &format!("{commands}{}", numbered_job(5, "0.3", 0)),
    );
    let outputs = tempfile::NamedTempFile::new().unwrap();
    let summary = tempfile::NamedTempFile::new().unwrap();
    setup.set("GITHUB_ACTIONS", "true");
    setup.set("GITHUB_OUTPUT", outputs.path().display().to_string());
    setup.set("GITHUB_STEP_SUMMARY", summary.path().display().to_string());
    let out = setup.run(secs(120));
    figures("hostile output", &fake, &out);
    assert_whole_run(&fake, name, &out, 0, 5, "COMPLETED");

    let view = runner_view(&out.stdout);
    let hostile: Vec<&(String, bool)> =
        view.iter().filter(|(l, _)| l.contains("HOSTILE")).collect();
    // Every marked line once (the carriage return splits one in two).
    assert_eq!(hostile.len(), 11, "each once: {hostile:#?}");
    for (line, stopped) in &hostile {
        assert!(stopped, "runs as a command: {line:?}\n{}", out.stdout);
    }
    // The tool's own commands still work, and it resumes at the end.
    assert!(
        view.iter()
            .any(|(l, stopped)| l.starts_with("::add-mask::") && !stopped),
        "{}",
        out.stdout
    );
    assert!(!view.last().unwrap().1, "commands stopped at the end");
    assert!(out
        .stdout
        .contains("\u{1b}[31mred\u{1b}[0m \u{1b}[1mbold\u{1b}[0m\n"));
    assert_eq!(out.stdout.matches("nul\0byte\0\n").count(), 1);
    let written = std::fs::read_to_string(outputs.path()).unwrap();
    assert!(written.contains("exit-code=0"), "{written}");
    assert!(!written.contains("HOSTILE"), "{written}");
}

#[test]
fn hostile_job_output_a_10_mb_line() {
    const LEN: usize = 10_000_000;
    let fake = FakeFirecrest::start();
    let name = "ten-mb-line";
    // Written at once after a pause, so more than max_ops_file_size (5 MiB)
    // piles up between two reads and is read in bounded pieces (a backlog
    // under 32 MiB is not worth an S3 transfer job).
    let commands = format!(
        "head -c {LEN} /dev/zero | tr '\\0' y > ../line.tmp\necho >> ../line.tmp\n{}\nsleep 2\nprintf 'big:'; cat ../line.tmp\n{}",
        numbered_job(2, "0.5", 0).replace("exit 0", ""),
        "echo after-the-big-line"
    );
    let setup = setup(&fake, name, &commands);
    let started = Instant::now();
    let (out, peak_kib) = wait_sampling_peak_rss(setup.spawn(), secs(180), started);
    let f = figures("a 10 MB line", &fake, &out);
    eprintln!(
        "figures: a 10 MB line: peak RSS of the tool {} MiB",
        peak_kib / 1024
    );
    assert_whole_run(&fake, name, &out, 0, 2, "COMPLETED");
    let big: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("big:"))
        .collect();
    assert_eq!(big.len(), 1, "once");
    assert_eq!(big[0].len(), 4 + LEN, "whole");
    assert!(big[0][4..].bytes().all(|b| b == b'y'));
    assert_eq!(out.stdout.matches("yyyyyyyyyy\n").count(), 1);
    assert_eq!(out.stdout.matches("after-the-big-line").count(), 1);
    let windows = fake
        .log()
        .iter()
        .filter(|e| e.route == Route::OpsView && e.query_number("size") > Some(64 * 1024))
        .count();
    assert!(windows >= 1, "read in windows larger than a poll's");
    assert_eq!(fake.count(Route::TransferDownload), 0, "no S3 snapshot");
    assert!(
        !fake
            .log()
            .iter()
            .any(|e| e.route.is_text_read() && matches!(e.status, 408 | 413 | 500)),
        "a read was over the buffer"
    );
    // A few copies of the line at most, not one per read.
    assert!(
        peak_kib > 0 && peak_kib < 200 * 1024,
        "peak RSS {peak_kib} KiB"
    );
    let _ = f;
}
