//! Whole runs whose output piles up beyond what one FirecREST read returns:
//! a 12 MB burst (the recorded `ops_large_output.json` job), a backlog built
//! while the API is down, multi-byte characters and invalid bytes across
//! read pieces, a 40 MB backlog (through an S3 snapshot, and in `view`
//! windows when the server has no S3), and a log that cannot be shown
//! (exit 74, run directory kept).
//! The double answers reads over its buffer the way the real server does
//! (408 or 500 after the command timeout), so a run that asked for too much
//! at once would be slow and incomplete here.

use std::time::Duration;

use crate::fake::{FakeFirecrest, Outage, Route, Window};
use crate::fake_replay::large_output;
use crate::harness::{readme_exit_code, wait_until, Outcome, Setup};

const LIMIT: Duration = Duration::from_secs(240);

/// The recorded job's commands.
pub fn burst_commands() -> String {
    format!(
        "seq -f 'B%g {}' 1 120000\nseq -f 'C%g grüße ✓ 日本語 {}' 1 3000",
        "x".repeat(95),
        "y".repeat(65)
    )
}

/// The job's own output in `text`: between the prologue's line and the
/// epilogue's.
fn job_body(text: &[u8]) -> &[u8] {
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let start = find(text, b"firecrest-ci: workspace ready", 0).expect("prologue line");
    let start = find(text, b"\n", start).expect("end of the prologue line") + 1;
    let end = find(text, b"firecrest-ci: commands exited", start).expect("epilogue line");
    &text[start..end]
}

/// Asserts the local log and the CI log show exactly `expected` as the
/// job's output.
pub fn assert_shown_exactly(setup: &Setup, out: &Outcome, expected: &[u8]) {
    let log = std::fs::read(setup.path().join("firecrest-ci.log")).expect("the local log file");
    let body = job_body(&log);
    if body != expected {
        let at = body
            .iter()
            .zip(expected)
            .position(|(a, b)| a != b)
            .unwrap_or(body.len().min(expected.len()));
        panic!(
            "the log differs at byte {at} (shown {} bytes, expected {}): {:?}\n{}",
            body.len(),
            expected.len(),
            String::from_utf8_lossy(&body[at.saturating_sub(40)..(at + 40).min(body.len())]),
            out.stderr
        );
    }
    assert!(
        job_body(out.stdout.as_bytes()) == expected,
        "the CI log differs from the job's output"
    );
}

/// Reads that got the server's too-big answers.
fn too_big_reads(fake: &FakeFirecrest) -> Vec<String> {
    fake.log()
        .iter()
        .filter(|e| e.route.is_text_read() || e.route == Route::OpsDownload)
        .filter(|e| matches!(e.status, 408 | 413 | 500))
        .map(|e| format!("{:?} {} -> {}", e.route, e.query, e.status))
        .collect()
}

#[test]
fn a_12_mb_burst_is_shown_whole_and_in_order() {
    // The server's real 5 s command timeout.
    let fake = FakeFirecrest::start();
    let setup = Setup::firecrest(&fake, "burst-12mb", &burst_commands());
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_shown_exactly(&setup, &out, &large_output());
    assert_eq!(too_big_reads(&fake), Vec::<String>::new());
}

#[test]
fn a_backlog_built_during_an_api_outage_is_shown_whole() {
    let fake = FakeFirecrest::start();
    fake.settings(|s| s.command_timeout = Duration::from_secs(1));
    let commands = format!(
        "echo started\nsleep 3\nseq -f 'B%g {}' 1 80000\necho done",
        "x".repeat(95)
    );
    let setup = Setup::firecrest(&fake, "outage-backlog", &commands);
    let child = setup.spawn();
    assert!(wait_until(Duration::from_secs(60), || fake
        .job_by_name("outage-backlog")
        .is_some_and(|j| j.state == "RUNNING")));
    // The job prints its 8 MB and ends while nobody can read.
    fake.outage(Outage::Api, Window::now_for(Duration::from_secs(15)));
    let out = crate::harness::wait(child, LIMIT, std::time::Instant::now());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut expected = b"started\n".to_vec();
    for i in 1..=80000 {
        expected.extend_from_slice(format!("B{i} {}\n", "x".repeat(95)).as_bytes());
    }
    expected.extend_from_slice(b"done\n");
    assert_shown_exactly(&setup, &out, &expected);
}

/// Lines with characters of 2 to 4 bytes, invalid bytes, truncated
/// characters and a literal U+FFFD, so that every kind meets every piece
/// boundary somewhere.
fn mixed_output() -> Vec<u8> {
    let mut data = Vec::new();
    for i in 0..6000 {
        data.extend_from_slice(format!("L{i} grüße ✓ 日本語 🚀 ").as_bytes());
        match i % 9 {
            0 => data.extend_from_slice(b"bad \xff byte"),
            1 => data.extend_from_slice(b"cut \xe6\x97 char"),
            2 => data.extend_from_slice("literal \u{fffd} mark".as_bytes()),
            3 => data.extend_from_slice(b"stray \x80 cont"),
            _ => data.extend_from_slice(&b"z".repeat(i % 17)),
        }
        data.push(b'\n');
    }
    data
}

#[test]
fn multibyte_characters_and_invalid_bytes_across_pieces_are_shown_exactly() {
    let fake = FakeFirecrest::start();
    fake.settings(|s| {
        // Pieces of 16 KiB; the 250 KB output is one backlog.
        s.max_ops_file_size = 64 * 1024;
        s.max_part_size = 64 * 1024;
        s.command_timeout = Duration::from_secs(1);
    });
    let data = mixed_output();
    let setup = Setup::firecrest(&fake, "mixed-bytes", "cat mixed.bin");
    std::fs::write(setup.path().join("mixed.bin"), &data).unwrap();
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let expected = String::from_utf8_lossy(&data).into_owned().into_bytes();
    assert_shown_exactly(&setup, &out, &expected);
    assert_eq!(too_big_reads(&fake), Vec::<String>::new());
}

/// A run whose output reads are refused (403) from shortly after the job
/// started (once a read showed some of it) until after it ended.
fn unshowable(name: &str, commands: &str) -> (FakeFirecrest, Setup, Outcome) {
    let fake = FakeFirecrest::start();
    let mut setup = Setup::firecrest(&fake, name, commands);
    setup.set("FIRECREST_CLEANUP", "always");
    let child = setup.spawn();
    assert!(wait_until(Duration::from_secs(60), || fake
        .log()
        .iter()
        .any(|e| e.route.is_text_read()
            && e.status == 200
            && e.output_len > 0
            && e.query.contains("job.out"))));
    fake.deny_reads("job.out", 403, Window::now_for(Duration::from_secs(600)));
    let out = crate::harness::wait(child, LIMIT, std::time::Instant::now());
    (fake, setup, out)
}

/// The run directories the double still holds.
fn run_dirs(fake: &FakeFirecrest) -> Vec<String> {
    fake.scratch_files()
        .into_iter()
        .filter(|f| f.ends_with("/job.out"))
        .collect()
}

#[test]
fn a_log_that_cannot_be_shown_exits_74_and_keeps_the_run_directory() {
    let (fake, setup, out) = unshowable("unshowable", "echo first\nsleep 4\nseq 1 50000");
    assert_eq!(
        readme_exit_code("results incomplete"),
        firecrest_ci::outcome::codes::INCOMPLETE
    );
    assert_eq!(out.code, 74, "{}", out.both());
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("could not be shown"))
        .unwrap_or_else(|| panic!("no missing-range line\n{}", out.both()));
    // From where the log stopped to the end of the file, which was kept.
    let kept = run_dirs(&fake);
    assert_eq!(kept.len(), 1, "{:?}", fake.scratch_files());
    let file = std::fs::read(fake.scratch().join(&kept[0])).unwrap();
    // The local log holds exactly what was shown: the file's first bytes.
    let shown = std::fs::read(setup.path().join("firecrest-ci.log")).unwrap();
    assert!(
        !shown.is_empty() && file.starts_with(&shown),
        "{}",
        out.both()
    );
    let shown_up_to = shown.len();
    assert!(
        line.contains(&format!("bytes {shown_up_to}-{} of job.out", file.len())),
        "{line}"
    );
    // Kept despite cleanup=always: it holds the only whole copy.
    assert!(line.contains(
        kept[0]
            .trim_end_matches("/job.out")
            .rsplit('/')
            .next()
            .unwrap()
    ));
}

#[test]
fn a_failed_job_whose_log_cannot_be_shown_keeps_its_own_code() {
    let (fake, _setup, out) =
        unshowable("unshowable-3", "echo first\nsleep 4\nseq 1 50000\nexit 3");
    assert_eq!(out.code, 3, "{}", out.both());
    assert!(out.stdout.contains("could not be shown"), "{}", out.both());
    assert_eq!(run_dirs(&fake).len(), 1, "{:?}", fake.scratch_files());
}

#[test]
fn slurm_a_12_mb_burst_is_shown_whole_and_in_order() {
    if crate::slurm::skipped("large_output::slurm_a_12_mb_burst_is_shown_whole_and_in_order") {
        return;
    }
    let (setup, _name) = crate::slurm::setup("burst", &burst_commands());
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 0, "{}", out.both());
    assert_shown_exactly(&setup, &out, &large_output());
}

/// A job that prints about 40 MB at once (a file it wrote first, then
/// `cat`): a backlog over the 32 MiB above which the tool reads through an
/// S3 snapshot when the server offers S3. Returns the commands and the
/// bytes they print.
fn backlog_40mb() -> (String, Vec<u8>) {
    let x = "x".repeat(95);
    let commands = format!("seq -f 'S%g {x}' 1 400000 > backlog.txt\ncat backlog.txt");
    let mut expected = Vec::with_capacity(41_000_000);
    for i in 1..=400_000 {
        expected.extend_from_slice(format!("S{i} {x}\n").as_bytes());
    }
    assert!(expected.len() > 32 << 20);
    (commands, expected)
}

#[test]
fn a_40_mb_backlog_is_read_through_an_s3_snapshot_whole_and_in_order() {
    let fake = FakeFirecrest::start();
    let (commands, expected) = backlog_40mb();
    let setup = Setup::firecrest(&fake, "backlog-s3", &commands);
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_shown_exactly(&setup, &out, &expected);
    // One snapshot of job.out, read with ranged GETs.
    let snapshots: Vec<String> = fake
        .log()
        .iter()
        .filter(|e| e.route == Route::TransferDownload)
        .map(|e| format!("{} {}", e.status, e.query))
        .collect();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert!(fake.count(Route::S3Get) >= 1);
    assert_eq!(too_big_reads(&fake), Vec::<String>::new());
}

#[test]
fn a_40_mb_backlog_without_s3_is_read_in_view_windows_whole_and_in_order() {
    let fake = FakeFirecrest::start();
    fake.settings(|s| s.s3 = false);
    let (commands, expected) = backlog_40mb();
    let setup = Setup::firecrest(&fake, "backlog-views", &commands);
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_shown_exactly(&setup, &out, &expected);
    assert_eq!(fake.count(Route::TransferDownload), 0);
    // Windows of at most 2 MiB, so at least 19 of them for 40 MB.
    let views: Vec<Option<u64>> = fake
        .log()
        .iter()
        .filter(|e| e.route == Route::OpsView)
        .map(|e| e.query_number("size"))
        .collect();
    assert!(views.len() >= expected.len() / (2 << 20), "{views:?}");
    assert!(
        views.iter().all(|s| s.is_some_and(|s| s <= 2 << 20)),
        "{views:?}"
    );
    assert_eq!(too_big_reads(&fake), Vec::<String>::new());
}
