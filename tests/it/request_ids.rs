//! Every request traceable: each FirecREST request carries its own
//! `X-Request-ID` and the run's `X-Correlation-ID`; an error about a request
//! names its id; the final report and the step summary name the run's
//! correlation id; at debug level each request is one line with its id,
//! and no token or secret appears.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::fake::{FakeFirecrest, Route, Stage};
use crate::harness::Setup;

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn every_request_carries_its_own_id_and_the_runs_correlation_id() {
    let fake = FakeFirecrest::start();
    let mut setup = Setup::firecrest(&fake, "traced", "echo traced");
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary");
    setup.set("GITHUB_ACTIONS", "true");
    setup.set("GITHUB_STEP_SUMMARY", summary.display().to_string());
    setup.set("FIRECREST_LOG_LEVEL", "debug");
    let out = setup.run(LIMIT);
    assert_eq!(out.code, 0, "{}", out.both());
    let api: Vec<_> = fake
        .log()
        .into_iter()
        .filter(|e| e.route != Route::Token)
        .collect();
    assert!(api.len() >= 5, "{api:?}");
    let ids: BTreeSet<&str> = api.iter().filter_map(|e| e.request_id.as_deref()).collect();
    assert_eq!(ids.len(), api.len(), "each request its own id");
    let correlations: BTreeSet<&str> = api
        .iter()
        .filter_map(|e| e.correlation_id.as_deref())
        .collect();
    assert_eq!(correlations.len(), 1, "{correlations:?}");
    let correlation = *correlations.iter().next().unwrap();
    // The final report and the summary name it.
    assert!(
        out.stdout
            .contains(&format!("FirecREST correlation id {correlation}")),
        "{}",
        out.both()
    );
    let summary = std::fs::read_to_string(&summary).unwrap();
    assert!(summary.contains(correlation), "{summary}");
    // One debug line per request, with its id; no token, no secret.
    for id in &ids {
        assert_eq!(
            out.stderr.matches(&format!("request_id=\"{id}\"")).count(),
            1,
            "{id}\n{}",
            out.stderr
        );
    }
    // GitHub's own mask commands carry the secret and the tokens to the
    // runner, which hides them; nothing else may.
    let shown: String = out
        .both()
        .lines()
        .filter(|l| !l.starts_with("::add-mask::"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!shown.contains(&fake.client_secret()), "{shown}");
    assert!(!shown.contains("tok-"), "a token in the log: {shown}");
}

#[test]
fn an_error_about_a_request_names_its_request_id() {
    let fake = FakeFirecrest::start();
    let setup = Setup::firecrest(&fake, "traced-error", "echo never");
    // mkdir answers 403 (permanent): the run fails on it.
    fake.fail_next(Some(Route::OpsMkdir), 1, 403, Stage::Before);
    let out = setup.run(LIMIT);
    assert_ne!(out.code, 0, "{}", out.both());
    let failed: Vec<_> = fake
        .log()
        .into_iter()
        .filter(|e| e.route == Route::OpsMkdir && e.status == 403)
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let id = failed[0].request_id.clone().expect("an X-Request-ID");
    assert!(
        out.stderr.contains(&format!("(request id {id})")),
        "{}",
        out.both()
    );
}
