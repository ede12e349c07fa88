//! The job talks back to CI: what it appends to `FIRECREST_CI_OUTPUT` and
//! `FIRECREST_CI_SUMMARY` arrives as step outputs (GitHub) or dotenv keys
//! (GitLab) and below the tool's own step summary, on every backend. A job
//! cannot forge the tool's own outputs nor break out of a record.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::fake::{FakeFirecrest, Route};
use crate::harness::{github_output_records, Setup};
use crate::slurm;

const LIMIT: Duration = Duration::from_secs(150);

/// A benchmark publishing its figure, a multi-line value, a summary, and
/// hostile lines: the tool's own names, a value that tries to end its block
/// early, and a name that is no name.
const COMMANDS: &str = r#"echo "gflops=812.5" >> "$FIRECREST_CI_OUTPUT"
printf 'notes<<END\nfirst line\nstate=FORGED\nEND\n' >> "$FIRECREST_CI_OUTPUT"
echo "state=FORGED" >> "$FIRECREST_CI_OUTPUT"
echo "exit-code=0" >> "$FIRECREST_CI_OUTPUT"
echo "bad name=1" >> "$FIRECREST_CI_OUTPUT"
printf '### Benchmark\n\n| gflops |\n|---|\n| 812.5 |\n' >> "$FIRECREST_CI_SUMMARY"
echo done
exit 3"#;

fn values<'a>(records: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    records
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Runs `setup` in GitHub mode; checks what arrived.
fn assert_github(setup: &mut Setup) {
    let dir = tempfile::tempdir().unwrap();
    let (output, summary) = (dir.path().join("output"), dir.path().join("summary"));
    setup.set("GITHUB_ACTIONS", "true");
    setup.set("GITHUB_OUTPUT", output.display().to_string());
    setup.set("GITHUB_STEP_SUMMARY", summary.display().to_string());
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 3, "{}", out.both());
    let records = github_output_records(&std::fs::read_to_string(&output).unwrap());
    assert_eq!(values(&records, "gflops"), ["812.5"], "{records:?}");
    assert_eq!(
        values(&records, "notes"),
        ["first line\nstate=FORGED"],
        "{records:?}"
    );
    // The tool's own outputs, once each, with the run's values.
    assert_eq!(values(&records, "state"), ["FAILED"], "{records:?}");
    assert_eq!(values(&records, "exit-code"), ["3"], "{records:?}");
    assert!(values(&records, "bad name").is_empty());
    // One warning names what was refused.
    let warnings: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("FIRECREST_CI_OUTPUT"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", out.both());
    assert!(warnings[0].contains("sets itself"), "{}", warnings[0]);
    // The job's summary comes below the tool's own.
    let summary = std::fs::read_to_string(&summary).unwrap();
    let own = summary
        .find("### firecrest-ci: job")
        .expect("the tool's summary");
    let job = summary.find("### Benchmark").expect("the job's summary");
    assert!(own < job, "{summary}");
    assert!(summary.contains("| 812.5 |"), "{summary}");
}

#[test]
fn job_outputs_and_summary_reach_github_through_the_double() {
    let fake = FakeFirecrest::start();
    assert_github(&mut Setup::firecrest(&fake, "handback-gh", COMMANDS));
}

#[test]
fn a_job_that_hands_nothing_back_costs_no_download() {
    let fake = FakeFirecrest::start();
    let mut setup = Setup::firecrest(&fake, "handback-none", "echo done");
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("output");
    setup.set("GITHUB_ACTIONS", "true");
    setup.set("GITHUB_OUTPUT", output.display().to_string());
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 0, "{}", out.both());
    let records = github_output_records(&std::fs::read_to_string(&output).unwrap());
    assert_eq!(values(&records, "state"), ["COMPLETED"], "{records:?}");
    // Both files are there, empty: a `stat` each, no download.
    let handback: Vec<_> = fake
        .log()
        .into_iter()
        .filter(|e| {
            e.query.contains("firecrest-ci-output") || e.query.contains("firecrest-ci-summary")
        })
        .map(|e| e.route)
        .collect();
    assert_eq!(handback, [Route::OpsStat, Route::OpsStat], "{}", out.both());
}

#[test]
fn job_outputs_and_summary_reach_github_through_the_local_backend() {
    assert_github(&mut Setup::local(COMMANDS));
}

#[test]
fn job_outputs_and_summary_reach_github_through_slurm() {
    if slurm::skipped("job_outputs_and_summary_reach_github_through_slurm") {
        return;
    }
    let (mut setup, name) = slurm::setup("handback", COMMANDS);
    assert_github(&mut setup);
    slurm::assert_nothing_left(&setup, &name);
}

/// GitLab: the job's outputs become `FIRECREST_OUTPUT_*` keys of the dotenv
/// report, apart from the tool's `FIRECREST_JOB_*`; a multi-line value
/// cannot be a dotenv value and is refused with a warning.
#[test]
fn job_outputs_reach_the_gitlab_dotenv_report() {
    let fake = FakeFirecrest::start();
    let mut setup = Setup::firecrest(&fake, "handback-gl", COMMANDS);
    let project = tempfile::tempdir().unwrap();
    setup.set("GITLAB_CI", "true");
    setup.set("CI_PROJECT_DIR", project.path().display().to_string());
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 3, "{}", out.both());
    let text = std::fs::read_to_string(project.path().join("firecrest-ci.env")).unwrap();
    let dotenv: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(
        dotenv.get("FIRECREST_OUTPUT_GFLOPS"),
        Some(&"812.5"),
        "{text}"
    );
    assert_eq!(dotenv.get("FIRECREST_JOB_STATE"), Some(&"FAILED"), "{text}");
    assert!(!text.contains("FORGED"), "{text}");
    assert!(
        out.both().contains("GitLab dotenv values must be one line"),
        "{}",
        out.both()
    );
}
