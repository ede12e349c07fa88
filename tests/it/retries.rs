//! A job the cluster lost is submitted again (`retries`): a new job, with a
//! fresh workspace from the archive already uploaded, each attempt's log in
//! a group of its own, the report saying how many attempts ran. A job whose
//! own commands failed is never retried.

use std::time::Duration;

use firecrest_ci::outcome::codes;

use crate::fake::{FakeFirecrest, ForcedEnd, Route};
use crate::harness::Setup;

const LIMIT: Duration = Duration::from_secs(150);

#[test]
fn a_job_lost_to_a_node_failure_is_submitted_again_and_passes() {
    let fake = FakeFirecrest::start();
    fake.force_end("flaky-node", ForcedEnd::new("NODE_FAIL", 0, 0));
    let mut setup = Setup::firecrest(
        &fake,
        "flaky-node",
        "echo ran in $(basename \"$PWD\")\necho changed > hello.txt",
    );
    setup.set("FIRECREST_RETRIES", "2");
    setup.set("GITHUB_ACTIONS", "true");
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 0, "{}", out.both());
    assert_eq!(fake.count(Route::JobSubmit), 2, "{}", out.both());
    assert_eq!(fake.count(Route::OpsUpload), 1, "the archive went up once");
    let first = fake.job_by_name("flaky-node").unwrap().id;
    let second = fake.job_by_name("flaky-node-2").unwrap().id;
    // Each attempt's log in its own group, the second in a fresh workspace.
    for (job, n) in [(first, 1), (second, 2)] {
        let group = format!("::group::Output of job {job} (attempt {n} of 3)");
        assert!(out.stdout.contains(&group), "{group}\n{}", out.both());
    }
    assert!(out.stdout.contains("ran in workspace\n"), "{}", out.both());
    assert!(
        out.stdout.contains("ran in workspace-2\n"),
        "{}",
        out.both()
    );
    let report = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("firecrest-ci: job {second} COMPLETED")))
        .unwrap_or_else(|| panic!("no report\n{}", out.both()));
    let lost = format!("attempt 2 of 3, after the cluster lost job {first} NODE_FAIL");
    assert!(report.contains(&lost), "{report}");
    assert!(out.stderr.contains("submitting it again (attempt 2 of 3)"));
}

#[test]
fn a_job_whose_commands_fail_is_not_retried() {
    let fake = FakeFirecrest::start();
    let mut setup = Setup::firecrest(&fake, "own-failure", "exit 75");
    setup.set("FIRECREST_RETRIES", "2");
    let out = setup.run(LIMIT);
    // Its own exit 75 passes through: it is the commands', not the cluster's.
    assert_eq!(out.code, 75, "{}", out.both());
    assert_eq!(fake.count(Route::JobSubmit), 1, "{}", out.both());
}

#[test]
fn without_retries_a_lost_job_is_a_temporary_failure() {
    let fake = FakeFirecrest::start();
    fake.force_end("lost-once", ForcedEnd::new("NODE_FAIL", 0, 0));
    let setup = Setup::firecrest(&fake, "lost-once", "echo hi");
    let out = setup.run(LIMIT);
    assert_eq!(out.code, codes::TEMPFAIL, "{}", out.both());
    assert_eq!(fake.count(Route::JobSubmit), 1);
}

#[test]
fn the_last_attempt_lost_too_is_a_temporary_failure_after_all_attempts() {
    let fake = FakeFirecrest::start();
    fake.force_end("always-lost", ForcedEnd::new("PREEMPTED", 0, 0));
    fake.force_end("always-lost-2", ForcedEnd::new("NODE_FAIL", 0, 0));
    let mut setup = Setup::firecrest(&fake, "always-lost", "echo hi");
    setup.set("FIRECREST_RETRIES", "1");
    let out = setup.run(LIMIT);
    assert_eq!(out.code, codes::TEMPFAIL, "{}", out.both());
    assert_eq!(fake.count(Route::JobSubmit), 2);
    let first = fake.job_by_name("always-lost").unwrap().id;
    let lost = format!("attempt 2 of 2, after the cluster lost job {first} PREEMPTED");
    assert!(out.stdout.contains(&lost), "{}", out.both());
}
