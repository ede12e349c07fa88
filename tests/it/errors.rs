//! Mistakes only the cluster can see, the commands around a run, and what a
//! run leaves in the user's directories, in whole runs of the real binary
//! against the FirecREST double (which answers sbatch's recorded 500s from
//! `submit_errors.json`): a wrong partition or account is exit 78 within
//! seconds naming the variable and the valid values; `check` prints its
//! table and exits with the code a run would get; `cancel` needs only the
//! connection; a run through S3 leaves no transfer-job logs behind.

use std::time::{Duration, Instant};

use firecrest_ci::outcome::codes;

use crate::fake::{FakeFirecrest, Outage, Route, Stage, Window};
use crate::harness::{random_file, wait, wait_until, Outcome, Setup};

const LIMIT: Duration = Duration::from_secs(120);

/// What the run left under the user's scratch directory: its own base
/// (run directories) and FirecREST's transfer-job files.
fn leftovers(fake: &FakeFirecrest) -> Vec<String> {
    fake.scratch_files()
        .into_iter()
        .filter(|f| {
            (f.contains("firecrest-ci/") && !f.ends_with("firecrest-ci/"))
                || f.contains(".f7t_file_handling_job_")
                || f.ends_with("ciuser/tmp/")
        })
        .collect()
}

/// Exit 78 within 5 s, naming `variable` and `valid`; nothing on the cluster.
fn assert_refused_at_once(fake: &FakeFirecrest, out: &Outcome, variable: &str, valid: &str) {
    assert_eq!(out.code, codes::CONFIG, "{}", out.both());
    assert!(
        out.elapsed < Duration::from_secs(5),
        "took {:?}",
        out.elapsed
    );
    // Reported once, not once per retry.
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains(variable))
        .collect();
    assert_eq!(errors.len(), 1, "{}", out.both());
    assert!(errors[0].contains(valid), "{}", errors[0]);
    assert!(fake.jobs().is_empty(), "jobs: {:?}", fake.jobs());
    assert!(leftovers(fake).is_empty(), "left: {:?}", leftovers(fake));
}

#[test]
fn a_wrong_partition_is_exit_78_at_once_with_the_valid_partitions() {
    let fake = FakeFirecrest::start();
    let mut setup = Setup::firecrest(&fake, "bad-partition", "echo never");
    setup.set("FIRECREST_PARTITION", "nopart");
    let out = setup.run(LIMIT);
    assert_refused_at_once(
        &fake,
        &out,
        "FIRECREST_PARTITION",
        "valid partitions: debug",
    );
    assert!(out.stderr.contains("\"nopart\""), "{}", out.both());
    assert_eq!(fake.count(Route::OpsUpload), 0, "checked before uploading");
}

#[test]
fn a_wrong_account_is_exit_78_at_once_with_the_valid_accounts() {
    let fake = FakeFirecrest::start();
    let mut setup = Setup::firecrest(&fake, "bad-account", "echo never");
    setup.set("FIRECREST_ACCOUNT", "noacct");
    let out = setup.run(LIMIT);
    assert_refused_at_once(&fake, &out, "FIRECREST_ACCOUNT", "valid accounts: ci");
    assert_eq!(fake.count(Route::OpsUpload), 0, "checked before uploading");
}

/// When the listing before the upload fails, sbatch's recorded 500 is the
/// verdict: reported once (no resubmits), the same way, the run directory
/// removed.
#[test]
fn sbatch_refusing_the_partition_is_exit_78_without_retries() {
    let fake = FakeFirecrest::start();
    fake.fail_next(Some(Route::Partitions), 1, 404, Stage::Before);
    let mut setup = Setup::firecrest(&fake, "refused-partition", "echo never");
    setup.set("FIRECREST_PARTITION", "nopart");
    let out = setup.run(LIMIT);
    assert_refused_at_once(
        &fake,
        &out,
        "FIRECREST_PARTITION",
        "valid partitions: debug",
    );
    assert!(
        out.stderr.contains("invalid partition specified: nopart"),
        "sbatch's words\n{}",
        out.both()
    );
    assert_eq!(fake.count(Route::JobSubmit), 1, "one submit, no retries");
}

/// A server that lists no accounts: the account is said to be invalid, and
/// no list is invented.
#[test]
fn an_account_the_server_cannot_list_is_named_without_a_list() {
    let fake = FakeFirecrest::start();
    fake.settings(|s| s.accounts.clear());
    let mut setup = Setup::firecrest(&fake, "unlisted-account", "echo never");
    setup.set("FIRECREST_ACCOUNT", "noacct");
    let out = setup.run(LIMIT);
    assert_refused_at_once(&fake, &out, "FIRECREST_ACCOUNT", "not a valid account");
    assert!(!out.stderr.contains("valid accounts:"), "{}", out.both());
}

/// A remote-dir the cluster refuses (outside its file systems, here) is an
/// input to change: exit 78 naming FIRECREST_REMOTE_DIR, before anything
/// was uploaded, no job.
#[test]
fn a_remote_dir_the_cluster_refuses_is_exit_78_before_any_upload() {
    let fake = FakeFirecrest::start();
    let mut setup = Setup::firecrest(&fake, "bad-base", "echo never");
    setup.set("FIRECREST_REMOTE_DIR", "/nowhere/ci");
    let started = Instant::now();
    let out = setup.run(Duration::from_secs(60));
    assert_eq!(out.code, codes::CONFIG, "{}", out.both());
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        out.stderr
            .contains("FIRECREST_REMOTE_DIR=/nowhere/ci cannot hold the run directory"),
        "{}",
        out.both()
    );
    assert_eq!(fake.count(Route::OpsUpload), 0);
    assert_eq!(fake.count(Route::JobSubmit), 0);
}

/// `check` with the connection inputs only (no run, no workspace).
fn check(fake: &FakeFirecrest, change: impl FnOnce(&mut Setup)) -> Outcome {
    let mut setup = Setup::firecrest(fake, "unused", "unused");
    setup.env.remove("FIRECREST_RUN");
    setup.env.remove("FIRECREST_WORKSPACE");
    setup.env.remove("FIRECREST_JOB_NAME");
    change(&mut setup);
    setup.run_with_args(&["check"], LIMIT)
}

#[test]
fn check_prints_the_table_and_exits_zero_when_all_is_well() {
    let fake = FakeFirecrest::start();
    let out = check(&fake, |s| {
        s.set("FIRECREST_PARTITION", "debug");
    });
    assert_eq!(out.code, 0, "{}", out.both());
    for row in [
        "firecrest-ci check",
        "token",
        "expires in",
        "system daint (FIRECREST_SYSTEM)",
        "healthy",
        "ciuser",
        "partitions",
        "debug",
        "ci (default)",
        "base directory",
        "writable; run directories private (mode 700)",
        "all checks passed",
    ] {
        assert!(out.stdout.contains(row), "{row:?}\n{}", out.both());
    }
    assert!(!out.stdout.contains("FAIL"), "{}", out.both());
    assert!(fake.jobs().is_empty(), "check sends no job");
    assert!(
        !fake
            .scratch_files()
            .iter()
            .any(|f| f.contains(".firecrest-ci-check-")),
        "probe removed: {:?}",
        fake.scratch_files()
    );
}

/// `check` with `variable` set to `value` fails with `code`, its table
/// showing a FAIL row and each of `named`.
fn check_fails(variable: &str, value: &str, code: i32, named: &[&str]) {
    let fake = FakeFirecrest::start();
    let out = check(&fake, |s| {
        s.set(variable, value);
    });
    assert_eq!(out.code, code, "{variable}={value}\n{}", out.both());
    for text in ["FAIL"].iter().chain(named) {
        assert!(out.stdout.contains(text), "{text:?}\n{}", out.both());
    }
}

#[test]
fn check_gives_77_for_a_bad_secret() {
    check_fails(
        "FIRECREST_CLIENT_SECRET",
        "wrong",
        codes::NOPERM,
        &["FIRECREST_CLIENT_SECRET"],
    );
}

#[test]
fn check_gives_78_for_a_bad_system_naming_the_known_ones() {
    check_fails(
        "FIRECREST_SYSTEM",
        "nosuch",
        codes::CONFIG,
        &["FIRECREST_SYSTEM", "daint"],
    );
}

#[test]
fn check_gives_78_for_a_wrong_partition_naming_the_valid_ones() {
    check_fails(
        "FIRECREST_PARTITION",
        "nopart",
        codes::CONFIG,
        &["FIRECREST_PARTITION", "valid partitions: debug"],
    );
}

#[test]
fn check_gives_69_for_a_server_that_is_down() {
    let fake = FakeFirecrest::start();
    fake.outage(Outage::Api, Window::now_for(Duration::from_secs(600)));
    let out = check(&fake, |_| {});
    assert_eq!(out.code, codes::UNAVAILABLE, "{}", out.both());
    assert!(out.stdout.contains("FAIL"), "{}", out.both());
    // Never answered yet: a short round of retries, not the long budget.
    assert!(out.stdout.contains("FIRECREST_URL"), "{}", out.both());
    assert!(
        out.elapsed < Duration::from_secs(20),
        "took {:?}",
        out.elapsed
    );
}

#[test]
fn check_works_on_the_local_backend() {
    let mut setup = Setup::local("unused");
    setup.env.remove("FIRECREST_RUN");
    setup.with_remote_dir();
    let out = setup.run_with_args(&["check"], LIMIT);
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(
        out.stdout.contains("run directories private (mode 700)"),
        "{}",
        out.both()
    );
    assert!(setup.left_behind().is_empty(), "{:?}", setup.left_behind());
}

/// The connection inputs and nothing else, from a directory that is no workspace.
fn cancel(fake: &FakeFirecrest, job: &str) -> Outcome {
    let mut setup = Setup::firecrest(fake, "unused", "unused");
    setup.env.retain(|k, _| {
        [
            "FIRECREST_URL",
            "FIRECREST_TOKEN_URL",
            "FIRECREST_CLIENT_ID",
            "FIRECREST_CLIENT_SECRET",
            "FIRECREST_SYSTEM",
            "PATH",
        ]
        .contains(&k.as_str())
    });
    setup.run_with_args(&["cancel", job], LIMIT)
}

#[test]
fn cancel_needs_only_the_connection() {
    let fake = FakeFirecrest::start();
    let setup = Setup::firecrest(&fake, "to-cancel", "echo fcit-waiting\nsleep 300");
    let started = Instant::now();
    let child = setup.spawn();
    assert!(
        wait_until(LIMIT, || fake
            .job_by_name("to-cancel")
            .is_some_and(|j| j.state == "RUNNING")),
        "job never ran"
    );
    let id = fake.job_by_name("to-cancel").unwrap().id;
    let out = cancel(&fake, &id.to_string());
    assert_eq!(out.code, 0, "{}", out.both());
    let run = wait(child, LIMIT, started);
    assert_eq!(run.code, codes::CANCELLED_ON_CLUSTER, "{}", run.both());
    // Already ended: still 0.
    let again = cancel(&fake, &id.to_string());
    assert_eq!(again.code, 0, "{}", again.both());
    assert!(again.stderr.contains("already ended"), "{}", again.both());
}

#[test]
fn cancel_with_a_bad_secret_gives_77() {
    let fake = FakeFirecrest::start();
    let mut setup = Setup::firecrest(&fake, "unused", "unused");
    setup.env.remove("FIRECREST_RUN");
    setup.set("FIRECREST_CLIENT_SECRET", "wrong");
    let out = setup.run_with_args(&["cancel", "1"], LIMIT);
    assert_eq!(out.code, codes::NOPERM, "{}", out.both());
}

/// A run whose workspace and artifacts both go through S3 (a 1 MiB
/// workspace over a 512 KiB threshold; 600 kB of artifacts over the
/// ~188 kB a direct download may return), with `cleanup` as given.
fn s3_run(fake: &FakeFirecrest, name: &str, cleanup: &str) -> Outcome {
    fake.settings(|s| {
        s.max_ops_file_size = 256 * 1024;
        s.max_part_size = 300 * 1024;
    });
    let mut setup = Setup::firecrest(
        fake,
        name,
        "mkdir -p out\nhead -c 600000 /dev/urandom > out/blob.bin",
    );
    setup
        .set("FIRECREST_TRANSFER_THRESHOLD", "512KiB")
        .set("FIRECREST_ARTIFACTS", "out/")
        .set("FIRECREST_CLEANUP", cleanup);
    random_file(&setup.path().join("big.bin"), 1024 * 1024);
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(setup.path().join("out/blob.bin").exists(), "{}", out.both());
    assert_eq!(fake.count(Route::TransferUpload), 1, "{}", out.both());
    assert_eq!(fake.count(Route::TransferDownload), 1, "{}", out.both());
    out
}

#[test]
fn a_run_through_s3_leaves_no_transfer_logs_behind() {
    let fake = FakeFirecrest::start();
    let out = s3_run(&fake, "s3-clean", "always");
    assert!(
        leftovers(&fake).is_empty(),
        "left: {:?}\n{}",
        leftovers(&fake),
        out.both()
    );
}

/// The double leaves what the real server leaves (the logs of both transfer
/// jobs, an empty `tmp/`); with `cleanup: never` they stay.
#[test]
fn transfer_logs_stay_when_cleanup_is_never() {
    let fake = FakeFirecrest::start();
    s3_run(&fake, "s3-keep", "never");
    let files = fake.scratch_files();
    let logs = files
        .iter()
        .filter(|f| f.starts_with("ciuser/.f7t_file_handling_job_"))
        .count();
    assert_eq!(logs, 4, "two logs per transfer job: {files:?}");
    assert!(files.iter().any(|f| f == "ciuser/tmp/"), "{files:?}");
}

/// The `exit-code` step output of a run in GitHub mode that set it.
fn exit_code_outputs(setup: &mut Setup) -> (Outcome, Vec<String>) {
    let outputs = crate::harness::with_github_outputs(setup);
    let out = setup.run(LIMIT);
    (
        out,
        crate::harness::github_output_values(&outputs, "exit-code"),
    )
}

/// A run that ends in an error writes no final report, yet a later step
/// (`if: failure()`) reads its code from the `exit-code` output: for a bad
/// variable (before any request) and for a partition the cluster lacks.
#[test]
fn a_run_that_ends_in_an_error_still_writes_its_exit_code_output() {
    let fake = FakeFirecrest::start();
    let mut bad_variable = Setup::firecrest(&fake, "bad-variable-output", "echo never");
    bad_variable.set("FIRECREST_POLL_INTERVAL", "soon");
    let (out, written) = exit_code_outputs(&mut bad_variable);
    assert_eq!(out.code, codes::CONFIG, "{}", out.both());
    assert_eq!(written, [codes::CONFIG.to_string()], "{}", out.both());

    let mut bad_partition = Setup::firecrest(&fake, "bad-partition-output", "echo never");
    bad_partition.set("FIRECREST_PARTITION", "nopart");
    let (out, written) = exit_code_outputs(&mut bad_partition);
    assert_eq!(out.code, codes::CONFIG, "{}", out.both());
    assert_eq!(written, [codes::CONFIG.to_string()], "{}", out.both());
    assert!(fake.jobs().is_empty(), "jobs: {:?}", fake.jobs());
}
