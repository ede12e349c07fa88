//! The workspace upload as whole runs: the way follows the measured rate
//! (a slow link sends the rest through S3, a fast one keeps to direct
//! parts), a failed S3 transfer job shows its error log, and packing
//! overlaps the upload while the job still gets the exact workspace (a
//! corrupted part fails the job with 65), and the job is submitted while
//! the last parts go up (and cancelled when they fail). Orders and counts,
//! no timings.

use std::path::Path;
use std::time::Duration;

use crate::fake::{FakeFirecrest, JobKind, Route, Settings, Stage};
use crate::harness::{random_file, Outcome, Setup};

const LIMIT: Duration = Duration::from_secs(180);

/// Sums every file of the workspace (but the tool's log) in name order.
const MANIFEST: &str = "find . -type f ! -name firecrest-ci.log -print0 | LC_ALL=C sort -z \
                        | xargs -0 sha256sum | sha256sum";

/// The manifest of a local directory, as the job computes it.
fn manifest(dir: &Path) -> String {
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(MANIFEST)
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A double with small parts (60 KiB) and a quick transfer job (it starts
/// after 0.2 s and re-checks every second), its upload link at `rate`.
fn fake_with_link(rate: Option<u64>) -> FakeFirecrest {
    FakeFirecrest::start_with(Settings {
        max_ops_file_size: 64 * 1024,
        upload_rate: rate,
        transfer_delay: Duration::from_millis(200),
        transfer_recheck: Duration::from_secs(1),
        ..Settings::default()
    })
}

/// A run with 16 MB of incompressible data under the default choice, with
/// the tool's debug lines (one per part started).
fn run_16mb(fake: &FakeFirecrest, name: &str) -> (Outcome, String) {
    let mut setup = Setup::firecrest(fake, name, "sha256sum big.bin");
    setup.set("FIRECREST_LOG_LEVEL", "debug");
    let sha = random_file(&setup.path().join("big.bin"), 16_000_000);
    let out = setup.run(LIMIT);
    (out, sha)
}

#[test]
fn a_slow_link_sends_the_rest_through_s3() {
    // 150 kB/s: the 16 MB would take 100 s in parts, S3 about 61 s.
    let fake = fake_with_link(Some(150_000));
    let (out, sha) = run_16mb(&fake, "slow-link");
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(out.stdout.contains(&sha), "{}", out.both());
    assert_eq!(fake.count(Route::TransferUpload), 1, "{}", out.both());
    // Parts go up while the archive is packed (as many as packing takes
    // time for: more on a busy machine); once it is packed, new parts start
    // only until the first wave has measured the rate, then S3 takes the rest.
    let parts = fake.count(Route::OpsUpload);
    let after_packing = out
        .stderr
        .lines()
        .filter(|l| l.contains("upload of archive bytes") && l.contains("(packing done)"))
        .count();
    let wave = 2 * firecrest_ci::transfer::PARALLEL_UPLOADS;
    assert!(
        parts >= firecrest_ci::transfer::RATE_AFTER_PARTS && after_packing < wave,
        "the rate is measured on the first parts, then S3: {parts} direct parts, \
         {after_packing} of them started once packed\n{}",
        out.stderr
    );
    assert!(parts < 16_000_000 / (60 * 1024), "S3 took the rest");
    assert!(out.stderr.contains("go through S3"), "{}", out.stderr);
    assert!(
        out.stderr.contains("waiting for FirecREST's transfer job")
            && out.stderr.contains("re-checks every 60 s"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_fast_link_keeps_to_direct_parts() {
    let fake = fake_with_link(None);
    let (out, sha) = run_16mb(&fake, "fast-link");
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(out.stdout.contains(&sha), "{}", out.both());
    assert_eq!(fake.count(Route::TransferUpload), 0, "{}", out.both());
    assert!(fake.count(Route::OpsUpload) > 200, "16 MB in 60 KiB parts");
}

#[test]
fn a_failed_transfer_job_shows_its_error_log() {
    let fake = fake_with_link(None);
    let error = "An error occurred (AccessDenied) when calling the GetObject operation";
    fake.fail_transfers(error);
    let mut setup = Setup::firecrest(&fake, "s3-fails", "echo should-not-run");
    setup.set("FIRECREST_TRANSFER_THRESHOLD", "always-s3");
    random_file(&setup.path().join("big.bin"), 1_000_000);
    let out = setup.run(LIMIT);
    assert_ne!(out.code, 0, "{}", out.both());
    assert_eq!(fake.count(Route::TransferUpload), 1, "{}", out.both());
    assert!(out.both().contains(error), "{}", out.both());
    assert!(!out.stdout.contains("should-not-run"), "{}", out.both());
}

#[test]
fn a_failed_s3_upload_cancels_its_transfer_job() {
    // The transfer job would look for the object until its time limit,
    // holding a node, and its logs would stay.
    let fake = fake_with_link(None);
    fake.fail_next(Some(Route::S3Complete), 100, 403, Stage::Before);
    let mut setup = Setup::firecrest(&fake, "s3-upload-fails", "echo should-not-run");
    setup.set("FIRECREST_TRANSFER_THRESHOLD", "always-s3");
    random_file(&setup.path().join("big.bin"), 1_000_000);
    let out = setup.run(LIMIT);
    assert_ne!(out.code, 0, "{}", out.both());
    assert!(!out.stdout.contains("should-not-run"), "{}", out.both());
    assert!(
        out.stderr.contains("failed to complete the S3 upload"),
        "{}",
        out.stderr
    );
    let transfers: Vec<_> = fake
        .jobs()
        .into_iter()
        .filter(|j| j.kind == JobKind::TransferUpload)
        .collect();
    assert_eq!(transfers.len(), 1, "{}", out.both());
    assert!(
        transfers[0].is_final && transfers[0].state.starts_with("CANCELLED"),
        "the transfer job is {}\n{}",
        transfers[0].state,
        out.stderr
    );
    assert!(
        out.stderr.contains("cancelled FirecREST's transfer job"),
        "{}",
        out.stderr
    );
    assert_eq!(fake.count(Route::JobSubmit), 0, "no batch job");
}

#[test]
fn a_ci_cancel_during_an_s3_upload_leaves_no_transfer_job_behind() {
    // S3 at 100 kB/s: the 2 MB take about 20 s, so the cancel comes while
    // the transfer job waits for its object.
    let fake = FakeFirecrest::start_with(Settings {
        max_ops_file_size: 64 * 1024,
        s3_rate: Some(100_000),
        transfer_recheck: Duration::from_secs(1),
        ..Settings::default()
    });
    let mut setup = Setup::firecrest(&fake, "s3-cancelled", "echo should-not-run");
    setup
        .set("FIRECREST_TRANSFER_THRESHOLD", "always-s3")
        .set("FIRECREST_CLEANUP", "always");
    let outputs = crate::harness::with_github_outputs(&mut setup);
    random_file(&setup.path().join("big.bin"), 2_000_000);
    let child = setup.spawn();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    assert!(
        crate::harness::wait_until(LIMIT, || fake.count(Route::TransferUpload) > 0),
        "no S3 upload began"
    );
    // The part is on its way (the request log notes it once answered).
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
    let out = crate::harness::wait(child, LIMIT, std::time::Instant::now());
    assert_eq!(out.code, 143, "{}", out.both());
    // Stopped before a job existed: the code for later steps, no state.
    let values = |name| crate::harness::github_output_values(&outputs, name);
    assert_eq!(values("exit-code"), ["143"], "{}", out.both());
    assert!(values("state").is_empty(), "{}", out.both());
    assert_eq!(fake.count(Route::JobSubmit), 0, "{}", out.both());
    let transfer = fake
        .jobs()
        .into_iter()
        .find(|j| j.kind == JobKind::TransferUpload)
        .expect("a transfer job");
    assert!(
        transfer.is_final && transfer.state.starts_with("CANCELLED"),
        "the transfer job is {}\n{}",
        transfer.state,
        out.stderr
    );
    // Its logs go with the cleanup, as no failure to report.
    assert!(
        !fake
            .scratch_files()
            .iter()
            .any(|f| f.contains(".f7t_file_handling_job_")),
        "{:?}\n{}",
        fake.scratch_files(),
        out.stderr
    );
    assert!(!out.stdout.contains("transfer job"), "{}", out.stdout);
}

/// A workspace of 3,000 small text files and 8 MB of random data (and the
/// harness's hello.txt).
fn mixed_workspace(setup: &Setup) {
    let dir = setup.path().join("src");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..3000 {
        let text = format!(
            "file {i}\n{}\n",
            "some text that compresses ".repeat(i % 40)
        );
        std::fs::write(dir.join(format!("f{i:04}.txt")), text).unwrap();
    }
    random_file(&setup.path().join("blob.bin"), 8_000_000);
}

#[test]
fn parts_go_up_while_packing_and_the_job_gets_the_exact_workspace() {
    let fake = FakeFirecrest::start_with(Settings {
        max_ops_file_size: 256 * 1024,
        ..Settings::default()
    });
    let mut setup = Setup::firecrest(&fake, "overlap", MANIFEST);
    setup.set("FIRECREST_LOG_LEVEL", "debug");
    mixed_workspace(&setup);
    let expected = manifest(setup.path());
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(out.stdout.contains(&expected), "{}", out.both());
    // The order of the tool's own lines: a part started while the archive
    // was still being packed, before packing was reported done.
    let log = &out.stderr;
    let first_part = log
        .find("upload of archive bytes 0..")
        .expect("a part upload line");
    let packed = log.find("packed 3002 files").expect("the pack line");
    assert!(first_part < packed, "{log}");
    assert!(
        log[first_part..]
            .lines()
            .next()
            .unwrap()
            .contains("packed so far"),
        "{log}"
    );
    assert!(fake.count(Route::OpsUpload) > 10);
}

#[test]
fn a_corrupted_part_fails_the_job_with_65() {
    let fake = FakeFirecrest::start_with(Settings {
        max_ops_file_size: 256 * 1024,
        ..Settings::default()
    });
    // The third part on its way.
    fake.corrupt_upload(3);
    let setup = Setup::firecrest(&fake, "corrupt", "echo should-not-run");
    random_file(&setup.path().join("big.bin"), 2_000_000);
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 65, "{}", out.both());
    assert!(
        out.both().contains("the workspace archive is corrupt"),
        "{}",
        out.both()
    );
    assert!(!out.stdout.contains("should-not-run"), "{}", out.both());
}

/// A double whose direct link moves 500 kB/s with parts of 256 KiB: 3 MB
/// take about 6 s to go up, long after packing ended.
fn fake_with_slow_parts() -> FakeFirecrest {
    FakeFirecrest::start_with(Settings {
        max_ops_file_size: 256 * 1024,
        upload_rate: Some(500_000),
        s3: false,
        ..Settings::default()
    })
}

/// How many uploads the double answered after the job's submit.
fn uploads_after_the_submit(fake: &FakeFirecrest) -> usize {
    let log = fake.log();
    let submit = log
        .iter()
        .position(|e| e.route == Route::JobSubmit)
        .expect("a submit");
    log[submit..]
        .iter()
        .filter(|e| e.route == Route::OpsUpload)
        .count()
}

#[test]
fn the_job_is_submitted_while_the_last_parts_go_up_and_waits_for_them() {
    let fake = fake_with_slow_parts();
    let mut setup = Setup::firecrest(&fake, "ahead", "sha256sum big.bin");
    setup.set("FIRECREST_LOG_LEVEL", "debug");
    let sha = random_file(&setup.path().join("big.bin"), 3_000_000);
    let child = setup.spawn();
    assert!(
        crate::harness::wait_until(LIMIT, || fake.count(Route::JobSubmit) > 0),
        "no job was submitted"
    );
    // The parts still on their way are answered 2 s late (once written),
    // so the job surely starts before its workspace is whole.
    fake.delay(
        Some(Route::OpsUpload),
        Duration::from_secs(2),
        Stage::After,
        None,
        None,
    );
    let out = crate::harness::wait(child, LIMIT, std::time::Instant::now());
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(out.stdout.contains(&sha), "{}", out.both());
    assert!(
        out.stderr
            .contains("while the last parts of the workspace go up"),
        "{}",
        out.stderr
    );
    // The job started before its workspace was whole, and waited.
    assert!(
        out.stdout
            .contains("waiting for the last parts of the workspace upload"),
        "{}",
        out.both()
    );
    // Parts were still answered after the submit, then the ready file.
    let uploads_after = uploads_after_the_submit(&fake);
    assert!(
        uploads_after >= 2,
        "{uploads_after} uploads after the submit"
    );
    assert_eq!(fake.count(Route::JobSubmit), 1);
}

#[test]
fn a_small_fast_upload_is_whole_before_the_job_is_submitted() {
    // One upload: no part is up before the rest, so nothing is said ahead.
    let fake = FakeFirecrest::start();
    let setup = Setup::firecrest(&fake, "not-ahead", "cat hello.txt");
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(!out.stderr.contains("go up"), "{}", out.stderr);
    assert!(
        !out.stdout.contains("waiting for the last parts"),
        "{}",
        out.both()
    );
    assert_eq!(uploads_after_the_submit(&fake), 0);
}

#[test]
fn an_upload_that_fails_after_the_job_was_submitted_cancels_the_job() {
    let fake = fake_with_slow_parts();
    let mut setup = Setup::firecrest(&fake, "ahead-failed", "echo should-not-run");
    setup.set("FIRECREST_CLEANUP", "always");
    let outputs = crate::harness::with_github_outputs(&mut setup);
    random_file(&setup.path().join("big.bin"), 3_000_000);
    let child = setup.spawn();
    assert!(
        crate::harness::wait_until(LIMIT, || fake.count(Route::JobSubmit) > 0),
        "no job was submitted"
    );
    // Every upload from here on is refused: a part still on its way, or
    // the ready file.
    fake.fail_next(Some(Route::OpsUpload), 1000, 403, Stage::Before);
    let out = crate::harness::wait(child, LIMIT, std::time::Instant::now());
    assert_ne!(out.code, 0, "{}", out.both());
    assert!(out.stderr.contains("cancelled job"), "{}", out.stderr);
    let job = fake
        .jobs()
        .into_iter()
        .find(|j| j.kind == JobKind::User)
        .expect("the job");
    assert!(
        crate::harness::wait_until(Duration::from_secs(10), || fake
            .job(job.id)
            .is_some_and(|j| j.is_final && j.state.starts_with("CANCELLED"))),
        "the job is {:?}\n{}",
        fake.job(job.id).map(|j| j.state),
        out.stderr
    );
    assert!(!out.stdout.contains("should-not-run"), "{}", out.both());
    assert!(
        crate::harness::wait_until(Duration::from_secs(10), || !fake.any_job_process_running()),
        "the job's processes outlived its cancel"
    );
    // The step outputs name the job, what became of it, and the run's code.
    let values = |name| crate::harness::github_output_values(&outputs, name);
    assert_eq!(values("job-id"), [job.id.to_string()], "{}", out.both());
    assert_eq!(values("state"), ["CANCELLED"], "{}", out.both());
    assert_eq!(
        values("exit-code"),
        [out.code.to_string()],
        "{}",
        out.both()
    );
}

#[test]
fn a_ci_cancel_while_the_last_parts_go_up_cancels_the_job_submitted_ahead() {
    let fake = fake_with_slow_parts();
    let mut setup = Setup::firecrest(&fake, "ahead-cancelled", "echo should-not-run");
    setup.set("FIRECREST_CLEANUP", "always");
    let outputs = crate::harness::with_github_outputs(&mut setup);
    random_file(&setup.path().join("big.bin"), 3_000_000);
    let child = setup.spawn();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    assert!(
        crate::harness::wait_until(LIMIT, || fake.count(Route::JobSubmit) > 0),
        "no job was submitted"
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
    let out = crate::harness::wait(child, LIMIT, std::time::Instant::now());
    assert_eq!(out.code, 143, "{}", out.both());
    // Cancelled before its workspace was up (or, on a machine so busy that
    // the last parts were up before the signal, by the watch).
    assert!(
        out.stderr
            .contains("CI stopped the run before the workspace was up")
            || out
                .stderr
                .contains("cancelling job 100: CI stopped the run"),
        "{}",
        out.stderr
    );
    let job = fake.job_by_name("ahead-cancelled").expect("the job");
    assert!(
        job.is_final && job.state.starts_with("CANCELLED"),
        "the job is {}\n{}",
        job.state,
        out.stderr
    );
    assert!(!out.stdout.contains("should-not-run"), "{}", out.both());
    let values = |name| crate::harness::github_output_values(&outputs, name);
    assert_eq!(values("state"), ["CANCELLED"], "{}", out.both());
    assert_eq!(values("exit-code"), ["143"], "{}", out.both());
    // The ready file was never written, and the run directory is gone.
    assert!(
        !fake
            .scratch_files()
            .iter()
            .any(|f| f.contains("workspace.ready") || f.contains("big.bin")),
        "{:?}",
        fake.scratch_files()
    );
}

#[test]
fn a_part_refused_after_the_job_was_submitted_ahead_resubmits_it_with_files_of_its_own() {
    // Parts of 136 KiB taking at least 0.6 s each: when the job is
    // submitted, with a second of parts left, some are on their way.
    let fake = FakeFirecrest::start_with(Settings {
        max_ops_file_size: 140 * 1024,
        s3: false,
        ..Settings::default()
    });
    fake.delay(
        Some(Route::OpsUpload),
        Duration::from_millis(600),
        Stage::Before,
        None,
        None,
    );
    let mut setup = Setup::firecrest(
        &fake,
        "ahead-refused",
        "sha256sum big.bin; printf '<%s>\\n' \"$MY_VALUE\"",
    );
    setup
        .set("FIRECREST_ENV_VARS", "MY_VALUE")
        .set("MY_VALUE", "forwarded");
    let sha = random_file(&setup.path().join("big.bin"), 6_000_000);
    let child = setup.spawn();
    assert!(
        crate::harness::wait_until(LIMIT, || fake.count(Route::JobSubmit) > 0),
        "no job was submitted"
    );
    // The next part answered is refused as too large (one is still on its
    // way; the small ready files are not refused): the archive goes up
    // again in smaller parts.
    fake.fail_next_of_size(Some(Route::OpsUpload), 1, 100 * 1024, 413, Stage::After);
    let out = crate::harness::wait(child, LIMIT, std::time::Instant::now());
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(out.stdout.contains(&sha), "{}", out.both());
    assert!(out.stdout.contains("<forwarded>"), "{}", out.both());
    assert!(
        out.stderr.contains("refused a part as too large"),
        "{}",
        out.stderr
    );
    let jobs: Vec<_> = fake
        .jobs()
        .into_iter()
        .filter(|j| j.kind == JobKind::User)
        .collect();
    assert_eq!(jobs.len(), 2, "{}", out.stderr);
    assert!(jobs[0].state.starts_with("CANCELLED"), "{}", jobs[0].state);
    assert_eq!(jobs[1].state, "COMPLETED");
    // The second has an output file of its own.
    assert!(jobs[1].stdout.ends_with("job-2.out"), "{}", jobs[1].stdout);
}
