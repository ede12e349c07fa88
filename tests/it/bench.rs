//! The streaming benchmark behind `BENCHMARKS.md`, run by `bench/run`
//! (ignored in normal test runs: it takes minutes). A job prints a
//! timestamped line every 100 ms on the FirecREST double; the tool's stdout
//! is read as it arrives, so each line's delay from the output file to the
//! CI log is measured, along with the request rate and the time from the
//! job's end to the tool's exit. Prints one `key value` line per figure.

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

#[test]
#[ignore = "a benchmark: run it with bench/run"]
fn bench_streaming() {
    let minutes: f64 = std::env::var("BENCH_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10.0);
    let lines = (minutes * 600.0).round() as u64;
    let fake = FakeFirecrest::start();
    // Default polling: what users get without tuning.
    let commands = format!(
        "for i in $(seq 1 {lines}); do echo \"stamp $(date +%s.%N) $i\"; sleep 0.1; done\necho \"end $(date +%s.%N)\""
    );
    let mut setup = Setup::firecrest(&fake, "bench-stream", &commands);
    setup.env.remove("FIRECREST_POLL_INTERVAL");
    setup.env.remove("FIRECREST_LOG_INTERVAL");

    let started = Instant::now();
    let mut child = setup.spawn();
    let stdout = child.stdout.take().expect("stdout");
    let mut delays = Vec::new();
    let mut seen = 0u64;
    let mut end_stamp = None;
    let mut first_stamp = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let arrived = now();
        if let Some(rest) = line.strip_prefix("stamp ") {
            if let Some(stamp) = rest.split(' ').next().and_then(|s| s.parse::<f64>().ok()) {
                first_stamp.get_or_insert(stamp);
                delays.push(arrived - stamp);
                seen += 1;
            }
        } else if let Some(rest) = line.strip_prefix("end ") {
            end_stamp = rest.trim().parse::<f64>().ok();
        }
    }
    let status = child.wait().expect("wait");
    let exited = now();
    assert!(status.success(), "the benchmark job failed: {status}");
    assert_eq!(seen, lines, "every line exactly once");

    delays.sort_by(|a, b| a.total_cmp(b));
    let job_minutes = match (first_stamp, end_stamp) {
        (Some(first), Some(end)) => (end - first) / 60.0,
        _ => minutes,
    };
    let job_reads = fake.count(Route::JobGet);
    let tails = fake.count(Route::OpsTail) + fake.count(Route::OpsStat);
    let tokens = fake.count(Route::Token);
    let all = fake.log().len();
    let end_to_exit = end_stamp.map(|end| exited - end).unwrap_or(f64::NAN);
    println!("bench_minutes {job_minutes:.2}");
    println!("bench_lines {seen}");
    println!("bench_requests_total {all}");
    println!("bench_requests_per_minute {:.1}", all as f64 / job_minutes);
    println!(
        "bench_job_reads_per_minute {:.1}",
        job_reads as f64 / job_minutes
    );
    println!(
        "bench_output_reads_per_minute {:.1}",
        tails as f64 / job_minutes
    );
    println!("bench_token_requests {tokens}");
    println!("bench_delay_median_s {:.2}", percentile(&delays, 0.5));
    println!("bench_delay_p95_s {:.2}", percentile(&delays, 0.95));
    println!(
        "bench_delay_max_s {:.2}",
        delays.last().copied().unwrap_or(f64::NAN)
    );
    println!("bench_end_to_exit_s {end_to_exit:.2}");
    println!("bench_wall_s {:.1}", started.elapsed().as_secs_f64());
}
