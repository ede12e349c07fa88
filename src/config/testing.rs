//! Helpers shared by the configuration's unit tests: a workspace, an
//! environment, and the problems a configuration has.

pub(crate) use std::collections::BTreeMap;
pub(crate) use std::path::PathBuf;

pub(crate) use super::{CliFlags, Config, ConfigErrors, ConfigProblem};

/// A workspace directory; kept alive as long as the test runs.
pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    pub(crate) ws: PathBuf,
}

pub(crate) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().canonicalize().unwrap();
    Fixture { _dir: dir, ws }
}

pub(crate) fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The smallest valid configuration (local backend) plus `extra`.
pub(crate) fn env_with(fx: &Fixture, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut env = map(&[
        ("FIRECREST_WORKSPACE", fx.ws.to_str().unwrap()),
        ("FIRECREST_RUN", "make test"),
        ("FIRECREST_BACKEND", "local"),
    ]);
    env.extend(map(extra));
    env
}

pub(crate) fn load(fx: &Fixture, extra: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    Config::from_env(&env_with(fx, extra), &fx.ws, &CliFlags::default())
}

pub(crate) fn ok(fx: &Fixture, extra: &[(&str, &str)]) -> Config {
    match load(fx, extra) {
        Ok(config) => config,
        Err(errors) => panic!("unexpected problems for {extra:?}:\n{errors}"),
    }
}

/// The problems of a configuration that must fail.
pub(crate) fn problems(fx: &Fixture, extra: &[(&str, &str)]) -> Vec<ConfigProblem> {
    match load(fx, extra) {
        Ok(config) => panic!("expected a problem for {extra:?}, got {config:?}"),
        Err(errors) => errors.problems,
    }
}

/// The single problem a configuration has, which must name `var`.
pub(crate) fn problem(fx: &Fixture, var: &str, value: &str) -> String {
    let found = problems(fx, &[(var, value)]);
    assert_eq!(found.len(), 1, "one problem for {var}={value:?}: {found:?}");
    assert!(
        found[0].variables.contains(&var),
        "{var} named in {:?}",
        found[0]
    );
    found[0].message.clone()
}

pub(crate) const FIRECREST_OK: &[(&str, &str)] = &[
    ("FIRECREST_BACKEND", "firecrest"),
    ("FIRECREST_URL", "https://api.example.org/firecrest/v2/"),
    ("FIRECREST_SYSTEM", "daint"),
    ("FIRECREST_CLIENT_ID", "ci-client"),
    ("FIRECREST_CLIENT_SECRET", "s3cr3t-client-value"),
    ("FIRECREST_TOKEN_URL", "https://auth.example.org/token"),
];
