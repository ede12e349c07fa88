//! Artifacts with unsafe entries, in whole runs of the real binary: a job
//! that leaves links out of its workspace beside real results still gets
//! the results back, the links are not recreated locally, and one warning
//! in the CI log names what was left out. Through the `local` backend and
//! through the FirecREST double.

use std::path::Path;
use std::time::Duration;

use firecrest_ci::outcome::codes;

use crate::fake::FakeFirecrest;
use crate::harness::{unique_name, Outcome, Setup};

const LIMIT: Duration = Duration::from_secs(120);

/// A result beside two links that point out of the workspace: one
/// absolute (a cluster's `latest -> /scratch/...`), one climbing with `..`.
const JOB: &str = "mkdir -p out\n\
                   echo 'the result' > out/ok.txt\n\
                   ln -s /etc out/etc\n\
                   ln -s ../../.. out/up";

/// The entries the warning must name, with their reasons.
const NAMED: [&str; 2] = [
    "out/etc -> /etc (absolute link target)",
    "out/up -> ../../.. (link target leaves the destination)",
];

/// The run succeeded, the result is back, the links are not, and exactly
/// one warning in the CI log names both skipped entries.
fn assert_result_back_links_named(workspace: &Path, out: &Outcome) {
    assert_eq!(out.code, codes::SUCCESS, "{}", out.both());
    assert_eq!(
        std::fs::read_to_string(workspace.join("out/ok.txt")).expect("out/ok.txt came back"),
        "the result\n",
        "{}",
        out.both()
    );
    for link in ["out/etc", "out/up"] {
        assert!(
            std::fs::symlink_metadata(workspace.join(link)).is_err(),
            "{link} was created locally\n{}",
            out.both()
        );
    }
    // The CI log is stdout (where annotations go); the tool's own log on
    // stderr must not repeat the warning.
    let mentions = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains("unsafe artifact"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        mentions(&out.stderr),
        Vec::<String>::new(),
        "{}",
        out.both()
    );
    let warnings = mentions(&out.stdout);
    assert_eq!(warnings.len(), 1, "{}", out.both());
    let warning = &warnings[0];
    assert!(
        warning.starts_with("WARNING: artifacts: skipped 2 unsafe artifact entries"),
        "{warning}"
    );
    for named in NAMED {
        assert!(warning.contains(named), "{named}: {warning}");
    }
}

#[test]
fn links_out_of_the_workspace_are_skipped_and_the_rest_comes_back_locally() {
    let mut setup = Setup::local(JOB);
    setup
        .set("FIRECREST_JOB_NAME", unique_name("art-unsafe"))
        .set("FIRECREST_ARTIFACTS", "out/");
    setup.with_remote_dir();
    let out = setup.run(LIMIT);
    assert_result_back_links_named(setup.path(), &out);
}

#[test]
fn links_out_of_the_workspace_are_skipped_and_the_rest_comes_back_through_firecrest() {
    let fake = FakeFirecrest::start();
    let mut setup = Setup::firecrest(&fake, "art-unsafe", JOB);
    setup.set("FIRECREST_ARTIFACTS", "out/");
    let out = setup.run(LIMIT);
    assert_result_back_links_named(setup.path(), &out);
}
