//! The streaming benchmark behind `BENCHMARKS.md`, run by `bench/run`
//! (ignored in normal test runs: it takes minutes). Jobs on the FirecREST
//! double print timestamped lines in bursts, slowly, or not at all; the
//! tool's stdout is read as it arrives, so each line's delay from the
//! output file to the CI log is measured, along with the request rate by
//! kind and the time from the job's end to the tool's exit. Prints one
//! `key value` line per figure.

use std::io::{BufRead, BufReader};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::fake::{FakeFirecrest, Route};
use crate::harness::Setup;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Requests by kind: job state reads, output reads (`stat`, `tail`,
/// `view`), and the rest (token, upload, submit, cleanup).
fn by_kind(fake: &FakeFirecrest) -> (usize, usize, usize) {
    let log = fake.log();
    let state = log.iter().filter(|e| e.route == Route::JobGet).count();
    let output = log
        .iter()
        .filter(|e| matches!(e.route, Route::OpsStat | Route::OpsTail | Route::OpsView))
        .count();
    (state, output, log.len() - state - output)
}

/// One whole run with the default polling of a job whose lines read
/// `stamp <unix time> <tag>` and whose last line is `end <unix time>`.
/// Prints, as `bench_<key>_...` lines: the job's length, the lines, the
/// requests per minute by kind, the line delays and the job's end to exit.
fn stream_run(key: &str, commands: &str) {
    let fake = FakeFirecrest::start();
    let mut setup = Setup::firecrest(&fake, &format!("bench-{key}"), commands);
    setup.env.remove("FIRECREST_POLL_INTERVAL");
    setup.env.remove("FIRECREST_LOG_INTERVAL");
    // The trade-off a user can choose: fewer reads, later lines.
    if let Ok(interval) = std::env::var("FCI_BENCH_LOG_INTERVAL") {
        setup.set("FIRECREST_LOG_INTERVAL", interval);
    }
    let started = Instant::now();
    let mut child = setup.spawn();
    let stdout = child.stdout.take().expect("stdout");
    let mut delays = Vec::new();
    let mut end_stamp = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let arrived = now();
        if let Some(rest) = line.strip_prefix("stamp ") {
            if let Some(stamp) = rest.split(' ').next().and_then(|s| s.parse::<f64>().ok()) {
                delays.push(arrived - stamp);
            }
        } else if let Some(rest) = line.strip_prefix("end ") {
            end_stamp = rest.trim().parse::<f64>().ok();
        }
    }
    let status = child.wait().expect("wait");
    let exited = now();
    assert!(status.success(), "the benchmark job failed: {status}");
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    delays.sort_by(|a, b| a.total_cmp(b));
    let (state, output, other) = by_kind(&fake);
    let per_minute = |n: usize| n as f64 / minutes;
    println!("bench_{key}_minutes {minutes:.2}");
    println!("bench_{key}_lines {}", delays.len());
    println!(
        "bench_{key}_requests_per_minute {:.1}",
        per_minute(state + output + other)
    );
    println!(
        "bench_{key}_by_kind_per_minute state={:.1},output={:.1},other={:.1}",
        per_minute(state),
        per_minute(output),
        per_minute(other)
    );
    println!("bench_{key}_token_requests {}", fake.count(Route::Token));
    if !delays.is_empty() {
        println!("bench_{key}_delay_median_s {:.2}", percentile(&delays, 0.5));
        println!("bench_{key}_delay_p95_s {:.2}", percentile(&delays, 0.95));
        println!(
            "bench_{key}_delay_max_s {:.2}",
            delays.last().copied().unwrap_or(f64::NAN)
        );
    }
    let end_to_exit = end_stamp.map(|end| exited - end).unwrap_or(f64::NAN);
    println!("bench_{key}_end_to_exit_s {end_to_exit:.2}");
}

/// A CI-like job of about 3 minutes and 320 lines: lines every 0.25 s for
/// 15 s, a burst of 100, a quiet minute, 20 slow lines 3 s apart, 30 s of
/// quiet, a burst of 100, 40 lines 0.5 s apart; then a job silent for
/// `BENCH_QUIET_MINUTES` (default 10; 0: none). `FCI_BENCH_LOG_INTERVAL`
/// sets `log-interval` (default: the tool's).
#[test]
#[ignore = "a benchmark: run it with bench/run"]
fn bench_streaming() {
    let mixed = r#"s() { echo "stamp $(date +%s.%N) $1"; }
for i in $(seq 1 60); do s a$i; sleep 0.25; done
for i in $(seq 1 100); do s b$i; done
sleep 60
for i in $(seq 1 20); do s c$i; sleep 3; done
sleep 30
for i in $(seq 1 100); do s d$i; done
for i in $(seq 1 40); do s e$i; sleep 0.5; done
echo "end $(date +%s.%N)""#;
    stream_run("mixed", mixed);
    let quiet: f64 = std::env::var("BENCH_QUIET_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10.0);
    let seconds = (quiet * 60.0).round() as u64;
    if seconds == 0 {
        return;
    }
    stream_run(
        "quiet",
        &format!("sleep {seconds}\necho \"end $(date +%s.%N)\""),
    );
}

/// One whole run for the output benchmark: `commands` on a double with
/// its real 5 s command timeout. Asserts the job's output is shown whole
/// and in order (`expected`, compared with the local log file); prints the
/// time from the job's end (the batch script's last line appearing in
/// `job.out`) to that line shown in the CI log and to the tool's exit, and
/// the requests by kind, as `bench_<key>_...` lines.
fn bench_output_run(key: &str, commands: &str, expected: Option<&[u8]>) -> f64 {
    use std::io::{Read, Seek, SeekFrom};
    let fake = FakeFirecrest::start();
    let name = format!("bench-{key}");
    // Default polling: what users get without tuning.
    let mut setup = Setup::firecrest(&fake, &name, commands);
    setup.env.remove("FIRECREST_POLL_INTERVAL");
    setup.env.remove("FIRECREST_LOG_INTERVAL");
    let marker = b"firecrest-ci: end of the batch script";
    let mut child = setup.spawn();
    // The job's end: when its output file first holds the script's last line.
    let job_ended = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| loop {
            let path = fake.job_by_name(&name).map(|j| j.stdout);
            if let Some(Ok(mut file)) = path.map(std::fs::File::open) {
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                let mut tail = Vec::new();
                let _ = file.seek(SeekFrom::Start(len.saturating_sub(256)));
                let _ = file.read_to_end(&mut tail);
                if tail.windows(marker.len()).any(|w| w == marker) {
                    return Instant::now();
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut shown = Vec::new();
        let mut last_shown = None;
        let mut line = Vec::new();
        while stdout.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            if line.windows(marker.len()).any(|w| w == marker) {
                last_shown = Some(Instant::now());
            }
            shown.append(&mut line);
        }
        let mut stderr = String::new();
        let _ = child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr);
        let status = child.wait().expect("wait");
        let exited = Instant::now();
        let ended = watcher.join().expect("watcher");
        let out = crate::harness::Outcome {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&shown).into_owned(),
            stderr,
            elapsed: Default::default(),
        };
        assert_eq!(out.code, 0, "{}", out.stderr);
        if let Some(expected) = expected {
            crate::large_output::assert_shown_exactly(&setup, &out, expected);
        }
        let last_shown = last_shown.expect("the script's last line was shown");
        let since = |t: Instant| t.saturating_duration_since(ended).as_secs_f64();
        println!("bench_{key}_end_to_last_line_s {:.2}", since(last_shown));
        println!("bench_{key}_end_to_exit_s {:.2}", since(exited));
        since(exited)
    });
    if let Some(expected) = expected {
        println!("bench_{key}_bytes {}", expected.len());
    }
    let mut kinds = std::collections::BTreeMap::new();
    for entry in fake.log() {
        *kinds.entry(format!("{:?}", entry.route)).or_insert(0) += 1;
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k}={n}")).collect();
    println!("bench_{key}_requests {}", kinds.join(","));
    job_ended
}

#[test]
#[ignore = "a benchmark: run it with bench/run"]
fn bench_output() {
    let burst = crate::fake_replay::large_output();
    bench_output_run(
        "burst12",
        &crate::large_output::burst_commands(),
        Some(&burst),
    );
    // 1,000,000 lines of 104-110 bytes: about 106 MB.
    let x = "x".repeat(95);
    let mut big = Vec::with_capacity(110_000_000);
    for i in 1..=1_000_000 {
        big.extend_from_slice(format!("H{i} {x}\n").as_bytes());
    }
    let commands = format!("seq -f 'H%.0f {x}' 1 1000000");
    bench_output_run("out100", &commands, Some(&big));
    // A trivial job, five times: the median and the worst.
    let mut trivial: Vec<f64> = (0..5)
        .map(|_| bench_output_run("trivial", "echo hello", None))
        .collect();
    trivial.sort_by(|a, b| a.total_cmp(b));
    println!("bench_trivial_end_to_exit_median_s {:.2}", trivial[2]);
    println!("bench_trivial_end_to_exit_max_s {:.2}", trivial[4]);
}

/// One whole run of the workspace at `workspace` on a latency-mode double;
/// seconds, the way the upload took, and the tool's peak RSS in KiB.
fn bench_upload_run(workspace: &std::path::Path, threshold: &str) -> (f64, &'static str, u64) {
    bench_upload_run_of(workspace, threshold, &crate::harness::binary())
}

/// The same with `binary` (this build, or a previous one).
fn bench_upload_run_of(
    workspace: &std::path::Path,
    threshold: &str,
    binary: &std::path::Path,
) -> (f64, &'static str, u64) {
    let fake = FakeFirecrest::start_with(crate::fake::Settings::latency());
    let (out, rss) = bench_upload_on(&fake, workspace, threshold, binary);
    (out.elapsed.as_secs_f64(), upload_way(&fake), rss)
}

/// One whole run of `binary` uploading `workspace` to `fake`; its outcome
/// and peak RSS.
fn bench_upload_on(
    fake: &FakeFirecrest,
    workspace: &std::path::Path,
    threshold: &str,
    binary: &std::path::Path,
) -> (crate::harness::Outcome, u64) {
    let mut setup = Setup::firecrest(fake, "bench-upload", "echo bench-done");
    setup
        .set("FIRECREST_WORKSPACE", workspace.display().to_string())
        .set("FIRECREST_TRANSFER_THRESHOLD", threshold);
    let started = Instant::now();
    let child = setup.spawn_binary(binary);
    let (out, rss) =
        crate::harness::wait_sampling_peak_rss(child, std::time::Duration::from_secs(900), started);
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(out.stdout.contains("bench-done"), "{}", out.both());
    (out, rss)
}

fn upload_way(fake: &FakeFirecrest) -> &'static str {
    if fake.count(Route::TransferUpload) > 0 {
        "s3"
    } else {
        "parts"
    }
}

/// Issue 16's "spend the 60 s well": a workspace of `FCI_BENCH_BESIDE_GB`
/// (default 5) GB of random data on the latency-mode double with direct
/// parts at 15 MB/s (a slower server than the loopback one), where S3 alone
/// would miss the transfer job's 61 s look. End to end, with this build and,
/// when `FCI_BENCH_PREVIOUS` names one, a previous build of the tool (which
/// sent nothing beside S3); and when the batch job was submitted (that is,
/// when both ways were up).
#[test]
#[ignore = "a benchmark: run it with bench/run"]
fn bench_upload_beside_s3() {
    use crate::fake::Settings;
    use crate::harness::random_file;
    let gb: usize = std::env::var("FCI_BENCH_BESIDE_GB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    for i in 0..gb {
        random_file(&dir.path().join(format!("blob{i}.bin")), 1_000_000_000);
    }
    let mut builds = vec![("this", crate::harness::binary())];
    if let Ok(previous) = std::env::var("FCI_BENCH_PREVIOUS") {
        builds.push(("previous", previous.into()));
    }
    for (label, binary) in builds {
        let fake = FakeFirecrest::start_with(Settings {
            upload_rate: Some(15_000_000),
            ..Settings::latency()
        });
        let spawned_at = fake.since_start();
        let (out, _) = bench_upload_on(&fake, dir.path(), "auto", &binary);
        let log = fake.log();
        let at = |route: Route| {
            log.iter()
                .filter(|e| e.route == route)
                .map(|e| (e.at - spawned_at).as_secs_f64())
                .collect::<Vec<_>>()
        };
        let staged = at(Route::TransferUpload)
            .first()
            .copied()
            .unwrap_or(f64::NAN);
        let parts = at(Route::OpsUpload);
        let beside = parts.iter().filter(|&&t| t > staged).count();
        let submitted = at(Route::JobSubmit).first().copied().unwrap_or(f64::NAN);
        let s3_ready = at(Route::S3Complete).first().copied().unwrap_or(f64::NAN);
        let parts_up = parts.last().copied().unwrap_or(f64::NAN);
        // Columns: seconds end to end, way, GB, direct parts, of them beside
        // S3, then seconds from the start: S3 requested, last direct part
        // up, S3 object complete, batch job submitted.
        println!(
            "bench_beside_{label} {:.1} {} {gb} {} {beside} {staged:.1} {parts_up:.1} {s3_ready:.1} {submitted:.1}",
            out.elapsed.as_secs_f64(),
            upload_way(&fake),
            parts.len(),
        );
    }
}

/// Issue 12's small job: a 1.2 MB workspace (600 kB of text files, 600 kB
/// random) running `true`, five times on the latency-mode double: from the
/// tool's start to the double's answer to the submission, and end to end.
#[test]
#[ignore = "a benchmark: run it with bench/run"]
fn bench_upload_small() {
    use crate::fake::Settings;
    use crate::harness::random_file;
    let dir = tempfile::tempdir().unwrap();
    for i in 0..100 {
        let line = format!("line {i} of a small source file\n");
        std::fs::write(dir.path().join(format!("f{i:03}.txt")), line.repeat(200)).unwrap();
    }
    random_file(&dir.path().join("blob.bin"), 600_000);
    let (mut submitted, mut total) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let fake = FakeFirecrest::start_with(Settings::latency());
        let mut setup = Setup::firecrest(&fake, "bench-small", "true");
        setup.set("FIRECREST_WORKSPACE", dir.path().display().to_string());
        let spawned_at = fake.since_start();
        let out = setup.run(std::time::Duration::from_secs(60));
        let elapsed = out.elapsed.as_secs_f64();
        assert_eq!(out.code, 0, "{}", out.both());
        let submit = fake
            .log()
            .into_iter()
            .find(|e| e.route == Route::JobSubmit)
            .expect("a submission");
        submitted.push((submit.at - spawned_at).as_secs_f64());
        total.push(elapsed);
    }
    submitted.sort_by(f64::total_cmp);
    total.sort_by(f64::total_cmp);
    println!(
        "bench_small_submitted_p50 {:.3}",
        percentile(&submitted, 0.5)
    );
    println!("bench_small_submitted_max {:.3}", submitted[4]);
    println!("bench_small_end_to_end_p50 {:.2}", percentile(&total, 0.5));
    println!("bench_small_end_to_end_max {:.2}", total[4]);
}

/// The upload benchmark: an 89 MB workspace (60 MB random, 3,000 text
/// files) five times under the default choice; 300 MB and 1 GB of random
/// data each way (parts, S3) and under the default choice; all end to end
/// on the double's latency mode (the real server's timings).
#[test]
#[ignore = "a benchmark: run it with bench/run"]
fn bench_upload() {
    use crate::harness::random_file;
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("src");
    std::fs::create_dir_all(&text).unwrap();
    for i in 0..3000 {
        let line = format!("line {i} of a text file that compresses like source code\n");
        std::fs::write(text.join(format!("f{i:04}.txt")), line.repeat(165)).unwrap();
    }
    random_file(&dir.path().join("blob.bin"), 60_000_000);
    // This build and, when `FCI_BENCH_PREVIOUS` names one, a previous
    // build, in alternation.
    let mut builds = vec![("", crate::harness::binary())];
    if let Ok(previous) = std::env::var("FCI_BENCH_PREVIOUS") {
        builds.push(("previous_", previous.into()));
    }
    let mut times = vec![Vec::new(); builds.len()];
    for _ in 0..5 {
        for ((label, binary), times) in builds.iter().zip(&mut times) {
            let (secs, way, _) = bench_upload_run_of(dir.path(), "auto", binary);
            println!("bench_upload_89mb_{label}run {secs:.2} {way}");
            times.push(secs);
        }
    }
    for ((label, _), times) in builds.iter().zip(&mut times) {
        times.sort_by(f64::total_cmp);
        println!("bench_upload_89mb_{label}p50 {:.2}", percentile(times, 0.5));
        println!("bench_upload_89mb_{label}max {:.2}", times[times.len() - 1]);
    }
    if std::env::var("FCI_BENCH_UPLOAD_89MB_ONLY").is_ok() {
        return;
    }
    std::fs::remove_dir_all(&text).unwrap();
    for (label, size) in [("300mb", 300_000_000), ("1gb", 1_000_000_000)] {
        random_file(&dir.path().join("blob.bin"), size);
        for (way, threshold) in [("parts", "never"), ("s3", "always-s3"), ("auto", "auto")] {
            let (secs, took, rss) = bench_upload_run(dir.path(), threshold);
            println!("bench_upload_{label}_{way} {secs:.2} {took} {}", rss / 1024);
        }
    }
}
