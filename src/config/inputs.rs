//! The one table of inputs ([`INPUTS`]): every variable is read through its
//! entry, and the README, `action.yml` and the GitLab templates are checked
//! against it. Also the warnings for `FIRECREST_*` names that are no input.

use std::collections::BTreeMap;

/// One input of the tool, as every platform names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputSpec {
    /// The GitHub action input and GitLab component input name (kebab-case).
    pub name: &'static str,
    /// The environment variable the tool reads.
    pub env: &'static str,
    /// The literal default the action and templates pass; empty when the tool derives it.
    pub default: &'static str,
    /// What the README says the default is, in words when the tool derives it.
    pub default_doc: &'static str,
    /// One line for the README, `action.yml` and the GitLab spec.
    pub description: &'static str,
    /// Secrets must come from masked CI variables, never from plain inputs.
    pub secret: bool,
}

const fn input(
    name: &'static str,
    env: &'static str,
    default: &'static str,
    default_doc: &'static str,
    description: &'static str,
) -> InputSpec {
    InputSpec {
        name,
        env,
        default,
        default_doc,
        description,
        secret: false,
    }
}

const fn secret(name: &'static str, env: &'static str, description: &'static str) -> InputSpec {
    InputSpec {
        name,
        env,
        default: "",
        default_doc: "",
        description,
        secret: true,
    }
}
/// `FIRECREST_URL`.
pub const URL: InputSpec = input(
        "firecrest-url",
        "FIRECREST_URL",
        "",
        "",
        "FirecREST v2 API base URL, e.g. https://api.cscs.ch/hpc/firecrest/v2 (required by the firecrest backend)",
    );
/// `FIRECREST_TOKEN_URL`.
pub const TOKEN_URL: InputSpec = input(
    "token-url",
    "FIRECREST_TOKEN_URL",
    "",
    "",
    "OAuth2 token endpoint of the identity provider (alias: AUTH_TOKEN_URL)",
);
/// `FIRECREST_CLIENT_ID`.
pub const CLIENT_ID: InputSpec = input(
    "client-id",
    "FIRECREST_CLIENT_ID",
    "",
    "",
    "OAuth2 client id (with client-secret and token-url)",
);
/// `FIRECREST_CLIENT_SECRET`.
pub const CLIENT_SECRET: InputSpec = secret(
    "client-secret",
    "FIRECREST_CLIENT_SECRET",
    "OAuth2 client secret (from a masked CI secret)",
);
/// `FIRECREST_ACCESS_TOKEN`.
pub const ACCESS_TOKEN: InputSpec = secret(
    "access-token",
    "FIRECREST_ACCESS_TOKEN",
    "a ready access token, instead of client credentials",
);
/// `FIRECREST_SYSTEM`.
pub const SYSTEM: InputSpec = input(
    "system",
    "FIRECREST_SYSTEM",
    "",
    "",
    "cluster name as FirecREST knows it, e.g. daint (required by the firecrest backend)",
);
/// `FIRECREST_ACCOUNT`.
pub const ACCOUNT: InputSpec = input(
    "account",
    "FIRECREST_ACCOUNT",
    "",
    "the user's default",
    "Slurm account (project) to charge",
);
/// `FIRECREST_PARTITION`.
pub const PARTITION: InputSpec = input(
    "partition",
    "FIRECREST_PARTITION",
    "",
    "the cluster's default",
    "Slurm partition",
);
/// `FIRECREST_RESERVATION`.
pub const RESERVATION: InputSpec = input(
    "reservation",
    "FIRECREST_RESERVATION",
    "",
    "",
    "Slurm reservation",
);
/// `FIRECREST_CONSTRAINT`.
pub const CONSTRAINT: InputSpec = input(
    "constraint",
    "FIRECREST_CONSTRAINT",
    "",
    "",
    "Slurm node constraint, e.g. gpu",
);
/// `FIRECREST_TIME_LIMIT`.
pub const TIME_LIMIT: InputSpec = input(
    "time-limit",
    "FIRECREST_TIME_LIMIT",
    "",
    "the partition's default",
    "job time limit: Slurm format (30, 1:30:00, 1-12:00:00) or 90m, 2h",
);
/// `FIRECREST_NODES`.
pub const NODES: InputSpec = input(
    "nodes",
    "FIRECREST_NODES",
    "",
    "1",
    "number of nodes (N or MIN-MAX)",
);
/// `FIRECREST_NTASKS`.
pub const NTASKS: InputSpec = input("ntasks", "FIRECREST_NTASKS", "", "", "number of tasks");
/// `FIRECREST_GPUS`.
pub const GPUS: InputSpec = input(
    "gpus",
    "FIRECREST_GPUS",
    "",
    "",
    "GPUs for the job (N or TYPE:N)",
);
/// `FIRECREST_SBATCH_OPTIONS`.
pub const SBATCH_OPTIONS: InputSpec = input(
    "sbatch-options",
    "FIRECREST_SBATCH_OPTIONS",
    "",
    "",
    "more #SBATCH options, one per line, e.g. --mem=8G",
);
/// `FIRECREST_JOB_NAME`.
pub const JOB_NAME: InputSpec = input(
    "job-name",
    "FIRECREST_JOB_NAME",
    "",
    "derived from the CI run",
    "Slurm job name",
);
/// `FIRECREST_RUN`.
pub const RUN: InputSpec = input(
    "run",
    "FIRECREST_RUN",
    "",
    "",
    "commands to run in the job, like a CI run: block (bash -e)",
);
/// `FIRECREST_SCRIPT`.
pub const SCRIPT: InputSpec = input(
    "script",
    "FIRECREST_SCRIPT",
    "",
    "",
    "or: a script file in the workspace to run in the job",
);
/// `FIRECREST_WORKSPACE`.
pub const WORKSPACE: InputSpec = input(
    "workspace",
    "FIRECREST_WORKSPACE",
    "",
    "GITHUB_WORKSPACE, CI_PROJECT_DIR or the current directory",
    "local directory to pack and send (relative to the current directory)",
);
/// `FIRECREST_INCLUDE`.
pub const INCLUDE: InputSpec = input(
    "include",
    "FIRECREST_INCLUDE",
    "",
    "everything",
    "globs to pack, one per line",
);
/// `FIRECREST_EXCLUDE`.
pub const EXCLUDE: InputSpec = input(
    "exclude",
    "FIRECREST_EXCLUDE",
    "",
    "",
    "globs to leave out, one per line",
);
/// `FIRECREST_GITIGNORE`.
pub const GITIGNORE: InputSpec = input(
    "gitignore",
    "FIRECREST_GITIGNORE",
    "true",
    "true",
    "honour .gitignore and .ignore files",
);
/// `FIRECREST_INCLUDE_GIT`.
pub const INCLUDE_GIT: InputSpec = input(
    "include-git",
    "FIRECREST_INCLUDE_GIT",
    "false",
    "false",
    "pack .git/ too (credentials stripped)",
);
/// `FIRECREST_ENV_VARS`.
pub const ENV_VARS: InputSpec = input(
    "env-vars",
    "FIRECREST_ENV_VARS",
    "",
    "",
    "names of environment variables to forward to the job, separated by newlines, commas or spaces",
);
/// `FIRECREST_ARTIFACTS`.
pub const ARTIFACTS: InputSpec = input(
    "artifacts",
    "FIRECREST_ARTIFACTS",
    "",
    "",
    "paths or globs (relative to the job's workspace) to bring back, one per line",
);
/// `FIRECREST_ARTIFACTS_WHEN`.
pub const ARTIFACTS_WHEN: InputSpec = input(
    "artifacts-when",
    "FIRECREST_ARTIFACTS_WHEN",
    "always",
    "always",
    "when to bring artifacts back: on-success, on-failure, always",
);
/// `FIRECREST_REMOTE_DIR`.
pub const REMOTE_DIR: InputSpec = input(
    "remote-dir",
    "FIRECREST_REMOTE_DIR",
    "",
    "<scratch>/<user>/firecrest-ci",
    "absolute base directory on the cluster for per-run directories",
);
/// `FIRECREST_CLEANUP`.
pub const CLEANUP: InputSpec = input(
    "cleanup",
    "FIRECREST_CLEANUP",
    "always",
    "always",
    "remove the run directory: always, on-success, never",
);
/// `FIRECREST_TIMEOUT`.
pub const TIMEOUT: InputSpec = input(
    "timeout",
    "FIRECREST_TIMEOUT",
    "",
    "none",
    "limit for the whole run, queue included, e.g. 2h; the job is cancelled when it expires",
);
/// `FIRECREST_RETRIES`.
pub const RETRIES: InputSpec = input(
        "retries",
        "FIRECREST_RETRIES",
        "",
        "0",
        "resubmit the job up to this many times when the cluster lost it (NODE_FAIL, BOOT_FAIL, PREEMPTED, REVOKED); never after its commands failed, a time limit or a cancel",
    );
/// `FIRECREST_BACKEND`.
pub const BACKEND: InputSpec = input(
    "backend",
    "FIRECREST_BACKEND",
    "firecrest",
    "firecrest",
    "cluster access: firecrest, slurm (local Slurm commands) or local (this machine)",
);
/// `FIRECREST_DRY_RUN`.
pub const DRY_RUN: InputSpec = input(
    "dry-run",
    "FIRECREST_DRY_RUN",
    "false",
    "false",
    "validate, pack and render the script, print the plan; contact no cluster",
);
/// `FIRECREST_LOG_LEVEL`.
pub const LOG_LEVEL: InputSpec = input(
    "log-level",
    "FIRECREST_LOG_LEVEL",
    "",
    "info (debug when the CI runs in debug mode)",
    "error, warn, info, debug or trace",
);
/// `FIRECREST_LOG_FILE`.
pub const LOG_FILE: InputSpec = input(
    "log-file",
    "FIRECREST_LOG_FILE",
    "",
    "firecrest-ci.log in the workspace",
    "local file that receives the job's whole output (relative to the workspace)",
);
/// `FIRECREST_SEPARATE_STDERR`.
pub const SEPARATE_STDERR: InputSpec = input(
    "separate-stderr",
    "FIRECREST_SEPARATE_STDERR",
    "false",
    "false",
    "write the job's stderr to a file of its own instead of merging it with stdout",
);
/// `FIRECREST_POLL_INTERVAL`.
pub const POLL_INTERVAL: InputSpec = input(
        "poll-interval",
        "FIRECREST_POLL_INTERVAL",
        "",
        "60s",
        "how often the job state is read while the job runs and its output says nothing of its end (a safety net)",
    );
/// `FIRECREST_LOG_INTERVAL`.
pub const LOG_INTERVAL: InputSpec = input(
        "log-interval",
        "FIRECREST_LOG_INTERVAL",
        "",
        "1s",
        "how often new output is read while output flows (it backs off to 2.5s when quiet, to 15s after 75s of quiet)",
    );
/// `FIRECREST_SUBMIT_GRACE`.
pub const SUBMIT_GRACE: InputSpec = input(
    "submit-grace",
    "FIRECREST_SUBMIT_GRACE",
    "",
    "120s",
    "how long a job may stay invisible after submission before the run fails",
);
/// `FIRECREST_REQUEST_TIMEOUT`.
pub const REQUEST_TIMEOUT: InputSpec = input(
    "request-timeout",
    "FIRECREST_REQUEST_TIMEOUT",
    "",
    "30s",
    "timeout of one HTTP request",
);
/// `FIRECREST_TRANSFER_THRESHOLD`.
pub const TRANSFER_THRESHOLD: InputSpec = input(
        "transfer-threshold",
        "FIRECREST_TRANSFER_THRESHOLD",
        "",
        "auto",
        "when the S3 transfer carries the workspace instead of direct parts: auto (when the parts, at the rate measured on the first ones, would take clearly longer than S3 plus the transfer job's 60 s re-check), always-s3, never, or a size such as 2GiB",
    );
/// `FIRECREST_COMPRESSION_LEVEL`.
pub const COMPRESSION_LEVEL: InputSpec = input(
        "compression-level",
        "FIRECREST_COMPRESSION_LEVEL",
        "",
        "3",
        "gzip level for the workspace archive, 1 (fast) to 9 (small); 3 is within 0.5% of 6's size at 70% of its time",
    );

/// Every input, in the order the README lists them.
pub const INPUTS: &[InputSpec] = &[
    URL,
    TOKEN_URL,
    CLIENT_ID,
    CLIENT_SECRET,
    ACCESS_TOKEN,
    SYSTEM,
    ACCOUNT,
    PARTITION,
    RESERVATION,
    CONSTRAINT,
    TIME_LIMIT,
    NODES,
    NTASKS,
    GPUS,
    SBATCH_OPTIONS,
    JOB_NAME,
    RUN,
    SCRIPT,
    WORKSPACE,
    INCLUDE,
    EXCLUDE,
    GITIGNORE,
    INCLUDE_GIT,
    ENV_VARS,
    ARTIFACTS,
    ARTIFACTS_WHEN,
    REMOTE_DIR,
    CLEANUP,
    TIMEOUT,
    RETRIES,
    BACKEND,
    DRY_RUN,
    LOG_LEVEL,
    LOG_FILE,
    SEPARATE_STDERR,
    POLL_INTERVAL,
    LOG_INTERVAL,
    SUBMIT_GRACE,
    REQUEST_TIMEOUT,
    TRANSFER_THRESHOLD,
    COMPRESSION_LEVEL,
];

/// The `README.md` input table, generated from [`INPUTS`] so the two cannot drift.
pub fn inputs_markdown_table() -> String {
    let mut table =
        String::from("| GitHub input | environment | default | meaning |\n|---|---|---|---|\n");
    for spec in INPUTS {
        let default = if spec.default_doc.is_empty() {
            spec.default
        } else {
            spec.default_doc
        };
        let meaning = if spec.secret {
            format!("{} (secret)", spec.description)
        } else {
            spec.description.to_string()
        };
        table.push_str(&format!(
            "| `{}` | `{}` | {} | {} |\n",
            spec.name,
            spec.env,
            markdown_cell(default),
            markdown_cell(&meaning)
        ));
    }
    table
}

fn markdown_cell(text: &str) -> String {
    text.replace('|', "\\|")
}

pub(super) const PREFIX: &str = "FIRECREST_";

/// The Python client's name for the token URL; `FIRECREST_TOKEN_URL` wins.
pub(super) const TOKEN_URL_ALIAS: &str = "AUTH_TOKEN_URL";

/// The environment seen through the input table: each input is read by its
/// [`InputSpec`], so no second list of names can drift from [`INPUTS`].
#[derive(Clone, Copy)]
pub(super) struct Inputs<'a> {
    env: &'a BTreeMap<String, String>,
}

impl<'a> Inputs<'a> {
    pub(super) fn new(env: &'a BTreeMap<String, String>) -> Self {
        Self { env }
    }

    /// The input's value as given; blank counts as unset because GitHub
    /// passes every unset action input as an empty string.
    pub(super) fn get(&self, spec: &InputSpec) -> Option<&'a str> {
        debug_assert!(
            INPUTS.iter().any(|entry| entry.env == spec.env),
            "{} is in the input table",
            spec.env
        );
        self.env
            .get(spec.env)
            .map(String::as_str)
            .filter(|value| !value.trim().is_empty())
    }

    /// A variable that is no input of ours (a platform's, an alias),
    /// trimmed, blank counted as unset.
    pub(super) fn platform(&self, name: &str) -> Option<&'a str> {
        platform_var(self.env, name)
    }

    /// The whole environment, for forwarded variables.
    pub(super) fn env(&self) -> &'a BTreeMap<String, String> {
        self.env
    }
}

/// A platform variable, trimmed, blank counted as unset.
fn platform_var<'a>(env: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// Where a variable's input stands in [`INPUTS`], so problems are listed in
/// README order; aliases and platform variables stand with their input.
pub(super) fn input_order(var: &str) -> usize {
    let input = match var {
        TOKEN_URL_ALIAS => "FIRECREST_TOKEN_URL",
        "GITHUB_WORKSPACE" | "CI_PROJECT_DIR" => "FIRECREST_WORKSPACE",
        other => other,
    };
    INPUTS
        .iter()
        .position(|spec| spec.env == input)
        .unwrap_or(INPUTS.len())
}
/// Names of `FIRECREST_*` variables that are no input but look like a typo of
/// one, each with a suggestion; `main` logs them as warnings.
pub fn unknown_input_warnings(env: &BTreeMap<String, String>) -> Vec<String> {
    env.keys()
        .filter(|name| name.starts_with(PREFIX))
        .filter(|name| !INPUTS.iter().any(|spec| spec.env == name.as_str()))
        .filter_map(|name| {
            let (distance, closest) = INPUTS
                .iter()
                .map(|spec| (strsim::levenshtein(name, spec.env), spec.env))
                .min()?;
            (distance <= 3).then(|| {
                format!("{name} is not an input of firecrest-ci and is ignored; did you mean {closest}?")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;
    use std::path::Path;

    // ------------------------------------------------ the table

    #[test]
    fn every_input_is_read_from_its_variable() {
        for spec in INPUTS {
            let env = map(&[(spec.env, "some value")]);
            let inputs = Inputs::new(&env);
            let set: Vec<&str> = INPUTS
                .iter()
                .filter(|other| inputs.get(other).is_some())
                .map(|other| other.env)
                .collect();
            assert_eq!(set, [spec.env], "{} fills exactly one input", spec.env);
            assert_eq!(inputs.get(spec), Some("some value"));
        }
    }

    #[test]
    fn input_table_is_consistent() {
        for spec in INPUTS {
            assert_eq!(
                spec.env,
                format!("{PREFIX}{}", spec.name.replace('-', "_").to_uppercase())
                    .replace("FIRECREST_FIRECREST_", "FIRECREST_"),
                "{} and {} name the same input",
                spec.name,
                spec.env
            );
            assert!(!spec.description.is_empty());
            assert!(!spec.secret || spec.default.is_empty());
        }
        let mut names: Vec<&str> = INPUTS.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), INPUTS.len(), "input names are unique");
    }

    #[test]
    fn readme_input_table_matches_the_code() {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
                .unwrap();
        let table = inputs_markdown_table();
        assert!(
            readme.contains(&table),
            "README.md must contain the table from inputs_markdown_table():\n{table}"
        );
        assert_eq!(table.lines().count(), INPUTS.len() + 2);
        for spec in INPUTS {
            assert!(table.contains(&format!("| `{}` | `{}` |", spec.name, spec.env)));
        }
    }

    #[test]
    fn typo_warnings_suggest_the_input() {
        let env = map(&[
            ("FIRECREST_NODE", "2"),
            ("FIRECREST_TIMELIMIT", "1h"),
            ("FIRECREST_NODES", "2"),
            ("FIRECREST_SOMETHING_ELSE_ENTIRELY", "x"),
            ("OTHER_NODES", "2"),
        ]);
        let warnings = unknown_input_warnings(&env);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with("FIRECREST_NODE ") && warnings[0].ends_with("FIRECREST_NODES?")
        );
        assert!(
            warnings[1].starts_with("FIRECREST_TIMELIMIT ")
                && warnings[1].ends_with("FIRECREST_TIME_LIMIT?")
        );
        assert_eq!(strsim::levenshtein("kitten", "sitting"), 3);
        assert_eq!(strsim::levenshtein("", "abc"), 3);
    }
}
