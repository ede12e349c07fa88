//! Inputs from the environment -> a validated [`Config`]. No network I/O:
//! every problem is found and reported at once, before anything is sent, and
//! each message names the variable it comes from and what a valid value is.
//!
//! Two phases: `envy` reads every `FIRECREST_*` variable into `RawInputs`
//! (all `Option<String>`, empty = unset), then [`Config::from_env`] turns the
//! raw strings into typed values. The environment arrives as a map, so tests
//! never touch the process environment. The [`INPUTS`] table is the single
//! source of truth for the README, `action.yml` and the GitLab templates.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::sbatch;
use crate::secret::Secret;
pub use crate::transfer::TransferThreshold;

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

/// Every input, in the order the README lists them.
pub const INPUTS: &[InputSpec] = &[
    input(
        "firecrest-url",
        "FIRECREST_URL",
        "",
        "",
        "FirecREST v2 API base URL, e.g. https://api.cscs.ch/hpc/firecrest/v2 (required by the firecrest backend)",
    ),
    input(
        "token-url",
        "FIRECREST_TOKEN_URL",
        "",
        "",
        "OAuth2 token endpoint of the identity provider (alias: AUTH_TOKEN_URL)",
    ),
    input(
        "client-id",
        "FIRECREST_CLIENT_ID",
        "",
        "",
        "OAuth2 client id (with client-secret and token-url)",
    ),
    secret(
        "client-secret",
        "FIRECREST_CLIENT_SECRET",
        "OAuth2 client secret (from a masked CI secret)",
    ),
    secret(
        "access-token",
        "FIRECREST_ACCESS_TOKEN",
        "a ready access token, instead of client credentials",
    ),
    input(
        "system",
        "FIRECREST_SYSTEM",
        "",
        "",
        "cluster name as FirecREST knows it, e.g. daint (required by the firecrest backend)",
    ),
    input(
        "account",
        "FIRECREST_ACCOUNT",
        "",
        "the user's default",
        "Slurm account (project) to charge",
    ),
    input(
        "partition",
        "FIRECREST_PARTITION",
        "",
        "the cluster's default",
        "Slurm partition",
    ),
    input(
        "reservation",
        "FIRECREST_RESERVATION",
        "",
        "",
        "Slurm reservation",
    ),
    input(
        "constraint",
        "FIRECREST_CONSTRAINT",
        "",
        "",
        "Slurm node constraint, e.g. gpu",
    ),
    input(
        "time-limit",
        "FIRECREST_TIME_LIMIT",
        "",
        "the partition's default",
        "job time limit: Slurm format (30, 1:30:00, 1-12:00:00) or 90m, 2h",
    ),
    input(
        "nodes",
        "FIRECREST_NODES",
        "",
        "1",
        "number of nodes (N or MIN-MAX)",
    ),
    input("ntasks", "FIRECREST_NTASKS", "", "", "number of tasks"),
    input(
        "gpus",
        "FIRECREST_GPUS",
        "",
        "",
        "GPUs for the job (N or TYPE:N)",
    ),
    input(
        "sbatch-options",
        "FIRECREST_SBATCH_OPTIONS",
        "",
        "",
        "more #SBATCH options, one per line, e.g. --mem=8G",
    ),
    input(
        "job-name",
        "FIRECREST_JOB_NAME",
        "",
        "derived from the CI run",
        "Slurm job name",
    ),
    input(
        "run",
        "FIRECREST_RUN",
        "",
        "",
        "commands to run in the job, like a CI run: block (bash -e)",
    ),
    input(
        "script",
        "FIRECREST_SCRIPT",
        "",
        "",
        "or: a script file in the workspace to run in the job",
    ),
    input(
        "workspace",
        "FIRECREST_WORKSPACE",
        "",
        "GITHUB_WORKSPACE, CI_PROJECT_DIR or the current directory",
        "local directory to pack and send (relative to the current directory)",
    ),
    input(
        "include",
        "FIRECREST_INCLUDE",
        "",
        "everything",
        "globs to pack, one per line",
    ),
    input(
        "exclude",
        "FIRECREST_EXCLUDE",
        "",
        "",
        "globs to leave out, one per line",
    ),
    input(
        "gitignore",
        "FIRECREST_GITIGNORE",
        "true",
        "true",
        "honour .gitignore and .ignore files",
    ),
    input(
        "include-git",
        "FIRECREST_INCLUDE_GIT",
        "false",
        "false",
        "pack .git/ too (credentials stripped)",
    ),
    input(
        "env-vars",
        "FIRECREST_ENV_VARS",
        "",
        "",
        "names of environment variables to forward to the job, separated by newlines, commas or spaces",
    ),
    input(
        "artifacts",
        "FIRECREST_ARTIFACTS",
        "",
        "",
        "paths or globs (relative to the job's workspace) to bring back, one per line",
    ),
    input(
        "artifacts-when",
        "FIRECREST_ARTIFACTS_WHEN",
        "always",
        "always",
        "when to bring artifacts back: on-success, on-failure, always",
    ),
    input(
        "remote-dir",
        "FIRECREST_REMOTE_DIR",
        "",
        "<scratch>/<user>/firecrest-ci",
        "absolute base directory on the cluster for per-run directories",
    ),
    input(
        "cleanup",
        "FIRECREST_CLEANUP",
        "always",
        "always",
        "remove the run directory: always, on-success, never",
    ),
    input(
        "timeout",
        "FIRECREST_TIMEOUT",
        "",
        "none",
        "limit for the whole run, queue included, e.g. 2h; the job is cancelled when it expires",
    ),
    input(
        "retries",
        "FIRECREST_RETRIES",
        "",
        "0",
        "resubmit the job up to this many times when the cluster lost it (NODE_FAIL, BOOT_FAIL, PREEMPTED, REVOKED); never after its commands failed, a time limit or a cancel",
    ),
    input(
        "backend",
        "FIRECREST_BACKEND",
        "firecrest",
        "firecrest",
        "cluster access: firecrest, slurm (local Slurm commands) or local (this machine)",
    ),
    input(
        "dry-run",
        "FIRECREST_DRY_RUN",
        "false",
        "false",
        "validate, pack and render the script, print the plan; contact no cluster",
    ),
    input(
        "log-level",
        "FIRECREST_LOG_LEVEL",
        "",
        "info (debug when the CI runs in debug mode)",
        "error, warn, info, debug or trace",
    ),
    input(
        "log-file",
        "FIRECREST_LOG_FILE",
        "",
        "firecrest-ci.log in the workspace",
        "local file that receives the job's whole output (relative to the workspace)",
    ),
    input(
        "separate-stderr",
        "FIRECREST_SEPARATE_STDERR",
        "false",
        "false",
        "write the job's stderr to a file of its own instead of merging it with stdout",
    ),
    input(
        "poll-interval",
        "FIRECREST_POLL_INTERVAL",
        "",
        "30s",
        "how often the job state is read while the job runs and its output says nothing of its end (a safety net)",
    ),
    input(
        "log-interval",
        "FIRECREST_LOG_INTERVAL",
        "",
        "1s",
        "how often new output is read while output flows (it backs off to 4s when quiet, to 10s after 30s of quiet)",
    ),
    input(
        "submit-grace",
        "FIRECREST_SUBMIT_GRACE",
        "",
        "120s",
        "how long a job may stay invisible after submission before the run fails",
    ),
    input(
        "request-timeout",
        "FIRECREST_REQUEST_TIMEOUT",
        "",
        "30s",
        "timeout of one HTTP request",
    ),
    input(
        "transfer-threshold",
        "FIRECREST_TRANSFER_THRESHOLD",
        "",
        "auto",
        "when the S3 transfer carries the workspace instead of direct parts: auto (when the parts, at the rate measured on the first ones, would take clearly longer than S3 plus the transfer job's 60 s re-check), always-s3, never, or a size such as 2GiB",
    ),
    input(
        "compression-level",
        "FIRECREST_COMPRESSION_LEVEL",
        "",
        "3",
        "gzip level for the workspace archive, 1 (fast) to 9 (small); 3 is within 0.5% of 6's size at 70% of its time",
    ),
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

/// Flags from the command line, which win over the environment.
#[derive(Debug, Clone, Default)]
pub struct CliFlags {
    /// `--dry-run`: plan only, as `FIRECREST_DRY_RUN=true`.
    pub dry_run: bool,
}

/// One thing wrong with the inputs; the caller prints every one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The variables the value was read from, so the user knows what to fix.
    pub variables: Vec<&'static str>,
    /// What is wrong and what a valid value looks like.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.variables.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.variables.join(", "), self.message)
        }
    }
}

/// Every configuration problem at once; `main` exits 78 (EX_CONFIG) on it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", one_line_each(.problems))]
pub struct ConfigErrors {
    /// In the order of [`INPUTS`] (lines of one input in their order); never empty.
    pub problems: Vec<ConfigProblem>,
}

fn one_line_each(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// How the job reaches a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// The FirecREST v2 REST API (the default).
    Firecrest,
    /// Local `sbatch`/`squeue`/`sacct`/`scancel`, for runners on a login node.
    Slurm,
    /// `bash` on this machine, for trying a job without a cluster.
    Local,
}

/// How the tool proves who it is to FirecREST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// OAuth2 client-credentials grant; tokens are fetched and refreshed.
    ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: Secret,
    },
    /// A token obtained elsewhere; it cannot be refreshed.
    AccessToken(Secret),
}

/// Everything the FirecREST backend needs to reach the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirecrestSettings {
    /// `http(s)://...` without a trailing slash, so paths can be appended.
    pub url: String,
    /// The cluster name as FirecREST knows it.
    pub system: String,
    pub credentials: Credentials,
}

/// What the job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserCommand {
    /// Commands from `run`, executed like a CI `run:` block (`bash -e`).
    Inline(String),
    /// A script from `script`: a normal relative path inside the workspace
    /// (`/`-separated, no `..`) that exists on this machine.
    ScriptFile(String),
}

/// When artifacts are brought back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactsWhen {
    OnSuccess,
    OnFailure,
    Always,
}

impl ArtifactsWhen {
    /// Whether to fetch artifacts after a job that succeeded or failed.
    pub fn matches(&self, success: bool) -> bool {
        match self {
            Self::OnSuccess => success,
            Self::OnFailure => !success,
            Self::Always => true,
        }
    }
}

/// When the per-run directory on the cluster is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    Always,
    /// Keep a failed run's directory for inspection.
    OnSuccess,
    Never,
}

impl Cleanup {
    /// Whether to remove the run directory after a job that succeeded or failed.
    pub fn should_remove(&self, success: bool) -> bool {
        match self {
            Self::Always => true,
            Self::OnSuccess => success,
            Self::Never => false,
        }
    }
}

/// Slurm placement and resources; `None` leaves the choice to Slurm.
/// Every value is validated to be safe on an `#SBATCH` line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub account: Option<String>,
    pub partition: Option<String>,
    pub reservation: Option<String>,
    pub constraint: Option<String>,
    /// Slurm format, `HH:MM:SS` or `D-HH:MM:SS`, e.g. `01:30:00`.
    pub time_limit: Option<String>,
    /// `N` or `MIN-MAX`.
    pub nodes: Option<String>,
    pub ntasks: Option<u32>,
    /// `N` or `TYPE:N`.
    pub gpus: Option<String>,
    /// One option each, `--name=value`, `--flag`, `-Xvalue` or `-X value`;
    /// comments and blank lines dropped.
    pub sbatch_options: Vec<String>,
}

/// Who this run is, from the CI platform: names the job and its directories
/// so that a lost submit reply can be resolved and runs never collide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunIdentity {
    /// `[A-Za-z0-9._-]`, at most 80 characters, e.g. `org-repo-123-1-build`.
    pub slug: String,
    /// For people, e.g. `org/repo run 123 attempt 1 job build`.
    pub description: String,
    /// `github`, `gitlab` or `local`.
    pub platform: &'static str,
}

/// How often to look at the job, and how long to wait for the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollSettings {
    /// Between two job-state reads while the output shows the job running:
    /// the safety net for a job that ends without a word.
    pub state_interval: Duration,
    /// Between two log reads while output flows.
    pub log_interval: Duration,
    /// The longest gap between log reads when the job is quiet (for under
    /// 30 s: the watcher allows longer gaps after that).
    pub log_max_interval: Duration,
    /// How long a submitted job may stay unknown to the scheduler.
    pub submit_grace: Duration,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
}

/// What reaching the cluster needs: the first configuration phase, all that
/// `cancel` and `check` read. `Debug` is safe to log.
#[derive(Debug, Clone)]
pub struct Connection {
    pub backend: BackendKind,
    /// `Some` for the firecrest backend (see [`Config::firecrest`]).
    pub firecrest: Option<FirecrestSettings>,
    /// Placement and resources, which `check` holds against the cluster.
    pub resources: Resources,
    /// Absolute, without a trailing slash; `None` lets the backend pick scratch.
    pub remote_dir: Option<String>,
    pub poll: PollSettings,
    /// When the S3 transfer carries the workspace (see [`TransferThreshold`]).
    pub transfer_threshold: TransferThreshold,
}

/// The validated configuration of one run. `Debug` is safe to log: every
/// secret sits in a [`Secret`].
#[derive(Debug, Clone)]
pub struct Config {
    pub backend: BackendKind,
    /// `Some` for the firecrest backend; `None` for the other backends and for
    /// a dry run that lacks the URL, the system or credentials.
    pub firecrest: Option<FirecrestSettings>,
    pub resources: Resources,
    /// `[A-Za-z0-9._-]{1,128}`; `fci-<identity slug>` unless given.
    pub job_name: String,
    /// True when the job name was derived, not given: the run may then make
    /// it unique per run (a lost submit reply is resolved by the name).
    pub job_name_derived: bool,
    pub command: UserCommand,
    /// Absolute (canonical) path of an existing directory.
    pub workspace: PathBuf,
    /// Globs to pack; empty means everything.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub gitignore: bool,
    pub include_git: bool,
    /// Forwarded variables; every name was set (non-empty) here.
    pub env_vars: BTreeMap<String, Secret>,
    /// Relative globs, no `..`, leading `./` dropped.
    pub artifacts: Vec<String>,
    pub artifacts_when: ArtifactsWhen,
    /// Absolute, without a trailing slash; `None` lets the backend pick scratch.
    pub remote_dir: Option<String>,
    pub cleanup: Cleanup,
    /// Limit for the whole run, queue included; `None` waits as long as CI lets it.
    pub timeout: Option<Duration>,
    pub dry_run: bool,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub log_level: String,
    pub poll: PollSettings,
    pub identity: RunIdentity,
    /// Absolute path of the local copy of the job's output.
    pub log_file: PathBuf,
    pub separate_stderr: bool,
    /// When the S3 transfer carries the workspace (see [`TransferThreshold`]).
    pub transfer_threshold: TransferThreshold,
    /// gzip level, 1..=9.
    pub compression_level: u32,
    /// Resubmissions allowed after the cluster lost the job (0 to 10).
    pub retries: u32,
}

/// Every `FIRECREST_*` input as text, exactly as `envy` reads it (field =
/// variable name without the prefix, lower-cased). No `Debug`: it holds secrets.
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default)]
struct RawInputs {
    url: Option<String>,
    token_url: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    access_token: Option<String>,
    system: Option<String>,
    account: Option<String>,
    partition: Option<String>,
    reservation: Option<String>,
    constraint: Option<String>,
    time_limit: Option<String>,
    nodes: Option<String>,
    ntasks: Option<String>,
    gpus: Option<String>,
    sbatch_options: Option<String>,
    job_name: Option<String>,
    run: Option<String>,
    script: Option<String>,
    workspace: Option<String>,
    include: Option<String>,
    exclude: Option<String>,
    gitignore: Option<String>,
    include_git: Option<String>,
    env_vars: Option<String>,
    artifacts: Option<String>,
    artifacts_when: Option<String>,
    remote_dir: Option<String>,
    cleanup: Option<String>,
    timeout: Option<String>,
    retries: Option<String>,
    backend: Option<String>,
    dry_run: Option<String>,
    log_level: Option<String>,
    log_file: Option<String>,
    separate_stderr: Option<String>,
    poll_interval: Option<String>,
    log_interval: Option<String>,
    submit_grace: Option<String>,
    request_timeout: Option<String>,
    transfer_threshold: Option<String>,
    compression_level: Option<String>,
}

const PREFIX: &str = "FIRECREST_";
/// The Python client's name for the token URL; `FIRECREST_TOKEN_URL` wins.
const TOKEN_URL_ALIAS: &str = "AUTH_TOKEN_URL";

impl RawInputs {
    /// Reads the prefixed variables; blank values count as unset because
    /// GitHub passes every unset action input as an empty string.
    fn from_env(env: &BTreeMap<String, String>, problems: &mut Problems) -> Self {
        let vars = env
            .iter()
            .filter(|(name, value)| name.starts_with(PREFIX) && !value.trim().is_empty())
            .map(|(name, value)| (name.clone(), value.clone()));
        match envy::prefixed(PREFIX).from_iter::<_, RawInputs>(vars) {
            Ok(raw) => raw,
            Err(err) => {
                problems.add(&[], format!("cannot read the {PREFIX}* variables: {err}"));
                RawInputs::default()
            }
        }
    }
}

/// Collects problems so that all of them are reported in one go.
#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    /// Every problem, in the order of the input table; `Ok` when there are none.
    fn into_result(self) -> Result<(), ConfigErrors> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut problems = self.0;
        problems.sort_by_key(|problem| problem.variables.first().map(|var| input_order(var)));
        Err(ConfigErrors { problems })
    }

    fn add(&mut self, variables: &[&'static str], message: impl Into<String>) {
        self.0.push(ConfigProblem {
            variables: variables.to_vec(),
            message: message.into(),
        });
    }

    /// Checks a one-line value and parses it; a failure becomes a problem
    /// that shows the value (never use this for secrets).
    fn parse<T>(
        &mut self,
        var: &'static str,
        raw: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let value = self.one_line(var, raw)?;
        match parse(value) {
            Ok(parsed) => Some(parsed),
            Err(expected) => {
                self.add(&[var], format!("{expected}; got {}", shown(value)));
                None
            }
        }
    }

    /// Trims a one-line value; control characters (a newline could add lines
    /// to the batch script) are a problem.
    fn one_line<'a>(&mut self, var: &'static str, raw: Option<&'a str>) -> Option<&'a str> {
        let value = raw?.trim();
        if value.chars().any(char::is_control) {
            self.add(
                &[var],
                "must be a single line without control characters (a newline here could add lines to the batch script)",
            );
            return None;
        }
        Some(value)
    }
}

/// Where a variable's input stands in [`INPUTS`], so problems are listed in
/// README order; aliases and platform variables stand with their input.
fn input_order(var: &str) -> usize {
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

/// A value as it may appear in a message: quoted, escaped, shortened.
fn shown(value: &str) -> String {
    const MAX: usize = 60;
    if value.chars().count() > MAX {
        let short: String = value.chars().take(MAX).collect();
        format!("{:?}...", short)
    } else {
        format!("{value:?}")
    }
}

/// A platform variable, blank counted as unset.
fn platform_var<'a>(env: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

impl Config {
    /// Reads and validates every input. `env` is the process environment (or
    /// a test's map), `cwd` the directory relative paths start from. Performs
    /// no network I/O; looks at the file system only to check the workspace,
    /// the script and the log file's directory.
    pub fn from_env(
        env: &BTreeMap<String, String>,
        cwd: &Path,
        flags: &CliFlags,
    ) -> Result<Config, ConfigErrors> {
        let mut p = Problems::default();
        let raw = RawInputs::from_env(env, &mut p);

        let dry_run_input = p
            .parse("FIRECREST_DRY_RUN", raw.dry_run.as_deref(), parse_bool)
            .unwrap_or(false);
        let dry_run = flags.dry_run || dry_run_input;
        let Connection {
            backend,
            firecrest,
            resources,
            remote_dir,
            poll,
            transfer_threshold,
        } = connection(&raw, env, dry_run, &mut p);

        let identity = RunIdentity::from_env(env);
        let workspace = resolve_workspace(&raw, env, cwd, &mut p);
        let job_name = p
            .parse(
                "FIRECREST_JOB_NAME",
                raw.job_name.as_deref(),
                parse_job_name,
            )
            .unwrap_or_else(|| default_job_name(&identity));
        let command = user_command(&raw, workspace.as_deref(), &mut p);

        let include = globs(&mut p, "FIRECREST_INCLUDE", raw.include.as_deref(), false);
        let exclude = globs(&mut p, "FIRECREST_EXCLUDE", raw.exclude.as_deref(), false);
        let gitignore = p
            .parse("FIRECREST_GITIGNORE", raw.gitignore.as_deref(), parse_bool)
            .unwrap_or(true);
        let include_git = p
            .parse(
                "FIRECREST_INCLUDE_GIT",
                raw.include_git.as_deref(),
                parse_bool,
            )
            .unwrap_or(false);
        let env_vars = forwarded_vars(&mut p, raw.env_vars.as_deref(), env);
        let artifacts = globs(
            &mut p,
            "FIRECREST_ARTIFACTS",
            raw.artifacts.as_deref(),
            true,
        );
        let artifacts_when = p
            .parse(
                "FIRECREST_ARTIFACTS_WHEN",
                raw.artifacts_when.as_deref(),
                parse_artifacts_when,
            )
            .unwrap_or(ArtifactsWhen::Always);
        let cleanup = p
            .parse("FIRECREST_CLEANUP", raw.cleanup.as_deref(), parse_cleanup)
            .unwrap_or(Cleanup::Always);
        let timeout = p.parse("FIRECREST_TIMEOUT", raw.timeout.as_deref(), parse_duration);
        let log_level = p
            .parse(
                "FIRECREST_LOG_LEVEL",
                raw.log_level.as_deref(),
                parse_log_level,
            )
            .unwrap_or_else(|| default_log_level(env).to_string());
        let log_file = log_file(&raw, workspace.as_deref(), &mut p);
        let separate_stderr = p
            .parse(
                "FIRECREST_SEPARATE_STDERR",
                raw.separate_stderr.as_deref(),
                parse_bool,
            )
            .unwrap_or(false);
        let compression_level = p
            .parse(
                "FIRECREST_COMPRESSION_LEVEL",
                raw.compression_level.as_deref(),
                parse_compression_level,
            )
            .unwrap_or(DEFAULT_COMPRESSION_LEVEL);
        let retries = p
            .parse("FIRECREST_RETRIES", raw.retries.as_deref(), parse_retries)
            .unwrap_or(0);

        p.into_result()?;
        // Without problems the workspace and log file were resolved; the
        // fallbacks only keep this free of unwrap().
        let workspace = workspace.unwrap_or_else(|| cwd.to_path_buf());
        let log_file = log_file.unwrap_or_else(|| workspace.join(DEFAULT_LOG_FILE));
        Ok(Config {
            backend,
            firecrest,
            resources,
            job_name_derived: raw.job_name.is_none(),
            job_name,
            command: command.unwrap_or_else(|| UserCommand::Inline(String::new())),
            workspace,
            include,
            exclude,
            gitignore,
            include_git,
            env_vars,
            artifacts,
            artifacts_when,
            remote_dir,
            cleanup,
            timeout,
            dry_run,
            log_level,
            poll,
            identity,
            log_file,
            separate_stderr,
            transfer_threshold,
            compression_level,
            retries,
        })
    }
}

impl Config {
    /// The connection part of this configuration, for the backend.
    pub fn connection(&self) -> Connection {
        Connection {
            backend: self.backend,
            firecrest: self.firecrest.clone(),
            resources: self.resources.clone(),
            remote_dir: self.remote_dir.clone(),
            poll: self.poll.clone(),
            transfer_threshold: self.transfer_threshold,
        }
    }
}

impl Connection {
    /// Reads and validates only what reaching the cluster needs, the same
    /// way [`Config::from_env`] does: `cancel` and `check` need no command,
    /// no workspace and no job inputs. No I/O.
    pub fn from_env(env: &BTreeMap<String, String>) -> Result<Connection, ConfigErrors> {
        let mut p = Problems::default();
        let raw = RawInputs::from_env(env, &mut p);
        let connection = connection(&raw, env, false, &mut p);
        p.into_result()?;
        Ok(connection)
    }
}

/// The first phase of the configuration, shared by [`Connection::from_env`]
/// and [`Config::from_env`]: the backend, how to reach it, and the inputs
/// the cluster judges (placement and base directory).
fn connection(
    raw: &RawInputs,
    env: &BTreeMap<String, String>,
    dry_run: bool,
    p: &mut Problems,
) -> Connection {
    // `None` only when the value is invalid: unset means firecrest, never a
    // silent fallback to another backend.
    let backend = match raw.backend.as_deref() {
        None => Some(BackendKind::Firecrest),
        Some(value) => p.parse("FIRECREST_BACKEND", Some(value), parse_backend),
    };
    // An invalid backend was reported; checking firecrest inputs for it
    // would only add noise.
    let firecrest = match backend {
        Some(BackendKind::Firecrest) => firecrest_settings(raw, env, dry_run, p),
        Some(BackendKind::Slurm | BackendKind::Local) | None => None,
    };
    Connection {
        backend: backend.unwrap_or(BackendKind::Firecrest),
        firecrest,
        resources: resources(raw, p),
        remote_dir: p.parse(
            "FIRECREST_REMOTE_DIR",
            raw.remote_dir.as_deref(),
            parse_remote_dir,
        ),
        poll: poll_settings(raw, p),
        transfer_threshold: p
            .parse(
                "FIRECREST_TRANSFER_THRESHOLD",
                raw.transfer_threshold.as_deref(),
                parse_transfer_threshold,
            )
            .unwrap_or_default(),
    }
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
                .map(|spec| (edit_distance(name, spec.env), spec.env))
                .min()?;
            (distance <= 3).then(|| {
                format!("{name} is not an input of firecrest-ci and is ignored; did you mean {closest}?")
            })
        })
        .collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

// ---------------------------------------------------------------- firecrest

fn firecrest_settings(
    raw: &RawInputs,
    env: &BTreeMap<String, String>,
    dry_run: bool,
    p: &mut Problems,
) -> Option<FirecrestSettings> {
    let url = p
        .parse("FIRECREST_URL", raw.url.as_deref(), parse_http_url)
        .map(|url| url.trim_end_matches('/').to_string());
    let system = p.parse("FIRECREST_SYSTEM", raw.system.as_deref(), parse_system);
    if !dry_run {
        if raw.url.is_none() {
            p.add(
                &["FIRECREST_URL"],
                "is not set; the firecrest backend needs the FirecREST v2 API base URL, e.g. https://api.cscs.ch/hpc/firecrest/v2 (or choose FIRECREST_BACKEND=slurm or local, or FIRECREST_DRY_RUN=true)",
            );
        }
        if raw.system.is_none() {
            p.add(
                &["FIRECREST_SYSTEM"],
                "is not set; the firecrest backend needs the cluster name as FirecREST knows it, e.g. daint",
            );
        }
    }
    let credentials = credentials(raw, env, dry_run, p);
    Some(FirecrestSettings {
        url: url?,
        system: system?,
        credentials: credentials?,
    })
}

/// Either a ready token or client id + secret + token URL. A dry run needs
/// none, but what is given must still be valid.
fn credentials(
    raw: &RawInputs,
    env: &BTreeMap<String, String>,
    dry_run: bool,
    p: &mut Problems,
) -> Option<Credentials> {
    let (token_url_var, token_url_raw) = match raw.token_url.as_deref() {
        Some(url) => ("FIRECREST_TOKEN_URL", Some(url)),
        None => (TOKEN_URL_ALIAS, platform_var(env, TOKEN_URL_ALIAS)),
    };
    let token_url = p.parse(token_url_var, token_url_raw, parse_http_url);
    let client_id = p.parse("FIRECREST_CLIENT_ID", raw.client_id.as_deref(), |id| {
        if id.chars().any(char::is_whitespace) {
            Err("must be an OAuth2 client id without spaces".to_string())
        } else {
            Ok(id.to_string())
        }
    });
    let client_secret = secret_value(p, "FIRECREST_CLIENT_SECRET", raw.client_secret.as_deref());
    let access_token = secret_value(p, "FIRECREST_ACCESS_TOKEN", raw.access_token.as_deref());

    if raw.access_token.is_some() {
        if raw.client_secret.is_some() {
            p.add(
                &["FIRECREST_ACCESS_TOKEN", "FIRECREST_CLIENT_SECRET"],
                "are both set; give either a ready access token or client credentials (FIRECREST_CLIENT_ID, FIRECREST_CLIENT_SECRET, FIRECREST_TOKEN_URL), not both",
            );
            return None;
        }
        return access_token.map(Credentials::AccessToken);
    }

    let given = [
        raw.client_id.is_some(),
        raw.client_secret.is_some(),
        token_url_raw.is_some(),
    ];
    if given.iter().all(|g| !g) {
        if !dry_run {
            p.add(
                &[
                    "FIRECREST_CLIENT_ID",
                    "FIRECREST_CLIENT_SECRET",
                    "FIRECREST_TOKEN_URL",
                    "FIRECREST_ACCESS_TOKEN",
                ],
                "no credentials; set FIRECREST_CLIENT_ID, FIRECREST_CLIENT_SECRET and FIRECREST_TOKEN_URL (OAuth2 client credentials, the secret from a masked CI secret), or FIRECREST_ACCESS_TOKEN",
            );
        }
        return None;
    }
    if !dry_run {
        if raw.client_id.is_none() {
            p.add(
                &["FIRECREST_CLIENT_ID"],
                "is not set; client credentials need the OAuth2 client id",
            );
        }
        if raw.client_secret.is_none() {
            p.add(
                &["FIRECREST_CLIENT_SECRET"],
                "is not set; client credentials need the OAuth2 client secret (from a masked CI secret)",
            );
        }
        if token_url_raw.is_none() {
            p.add(
                &["FIRECREST_TOKEN_URL", TOKEN_URL_ALIAS],
                "is not set; client credentials need the identity provider's token endpoint, e.g. https://auth.example.org/realms/r/protocol/openid-connect/token",
            );
        }
    }
    Some(Credentials::ClientCredentials {
        token_url: token_url?,
        client_id: client_id?,
        client_secret: client_secret?,
    })
}

/// A secret: checked like any one-line value, but never shown in a message.
fn secret_value(p: &mut Problems, var: &'static str, raw: Option<&str>) -> Option<Secret> {
    let value = raw?.trim();
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        p.add(
            &[var],
            "must be one word without spaces or control characters (check the CI secret for a stray newline)",
        );
        return None;
    }
    Some(Secret::new(value))
}

fn parse_http_url(value: &str) -> Result<String, String> {
    const EXPECTED: &str =
        "must be an http:// or https:// URL, e.g. https://api.example.org/firecrest/v2";
    let url = url::Url::parse(value).map_err(|err| format!("{EXPECTED} ({err})"))?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err(EXPECTED.to_string());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{EXPECTED}, without a user name or password in it"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{EXPECTED}, without ?query or #fragment"));
    }
    Ok(value.to_string())
}

fn parse_system(value: &str) -> Result<String, String> {
    if is_name(value, "") {
        Ok(value.to_string())
    } else {
        Err("must be a cluster name of letters, digits, '.', '_' and '-', e.g. daint".to_string())
    }
}

/// True when `value` is non-empty and only ASCII letters, digits, `._-` and
/// the `extra` characters.
fn is_name(value: &str, extra: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c) || extra.contains(c))
}

// ---------------------------------------------------------------- resources

fn resources(raw: &RawInputs, p: &mut Problems) -> Resources {
    let slurm_name = |kind: &'static str, example: &'static str, extra: &'static str| {
        move |value: &str| {
            if is_name(value, extra) {
                Ok(value.to_string())
            } else {
                let more = if extra.is_empty() {
                    String::new()
                } else {
                    format!(
                        " and {}",
                        extra
                            .chars()
                            .map(|c| format!("'{c}'"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    )
                };
                Err(format!(
                    "must be a Slurm {kind}: letters, digits, '.', '_', '-'{more}, no spaces, e.g. {example}"
                ))
            }
        }
    };
    Resources {
        account: p.parse(
            "FIRECREST_ACCOUNT",
            raw.account.as_deref(),
            slurm_name("account", "g123", ""),
        ),
        partition: p.parse(
            "FIRECREST_PARTITION",
            raw.partition.as_deref(),
            slurm_name("partition (or a comma-separated list)", "normal", ","),
        ),
        reservation: p.parse(
            "FIRECREST_RESERVATION",
            raw.reservation.as_deref(),
            slurm_name("reservation", "maint", ","),
        ),
        constraint: p.parse(
            "FIRECREST_CONSTRAINT",
            raw.constraint.as_deref(),
            slurm_name(
                "constraint expression",
                "gpu or mc&(a100|h100)",
                ",&|*:[]()!",
            ),
        ),
        time_limit: p.parse(
            "FIRECREST_TIME_LIMIT",
            raw.time_limit.as_deref(),
            parse_time_limit,
        ),
        nodes: p.parse("FIRECREST_NODES", raw.nodes.as_deref(), parse_nodes),
        ntasks: p.parse("FIRECREST_NTASKS", raw.ntasks.as_deref(), |v| {
            parse_positive(v)
                .ok_or_else(|| "must be a positive whole number of tasks, e.g. 4".to_string())
        }),
        gpus: p.parse("FIRECREST_GPUS", raw.gpus.as_deref(), parse_gpus),
        sbatch_options: sbatch_options(p, raw.sbatch_options.as_deref()),
    }
}

fn parse_positive(value: &str) -> Option<u32> {
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u32>().ok().filter(|n| *n > 0)
}

/// Slurm's `--time` formats, or a humantime duration (`90m`, `2h`), in the
/// Slurm format `[D-]HH:MM:SS`.
fn parse_time_limit(value: &str) -> Result<String, String> {
    const EXPECTED: &str = "must be a time limit above zero in a Slurm format (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, e.g. 30 or 1:30:00 or 1-12:00:00) or a duration like 90m or 2h";
    let seconds = if value
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b':' || b == b'-')
    {
        slurm_time_seconds(value)
    } else {
        humantime::parse_duration(value)
            .ok()
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
    };
    match seconds {
        Some(seconds) if seconds > 0 => Ok(slurm_time(seconds)),
        _ => Err(EXPECTED.to_string()),
    }
}

fn slurm_time_seconds(value: &str) -> Option<u64> {
    fn number(text: &str) -> Option<u64> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    }
    let (days, clock) = match value.split_once('-') {
        Some((days, clock)) => (Some(number(days)?), clock),
        None => (None, value),
    };
    let parts = clock.split(':').map(number).collect::<Option<Vec<u64>>>()?;
    let below = |n: u64, limit: u64| (n < limit).then_some(n);
    let (d, h, m, s) = match (days, parts.as_slice()) {
        (None, [m]) => (0, 0, *m, 0),
        (None, [m, s]) => (0, 0, *m, below(*s, 60)?),
        (None, [h, m, s]) => (0, *h, below(*m, 60)?, below(*s, 60)?),
        (Some(d), [h]) => (d, below(*h, 24)?, 0, 0),
        (Some(d), [h, m]) => (d, below(*h, 24)?, below(*m, 60)?, 0),
        (Some(d), [h, m, s]) => (d, below(*h, 24)?, below(*m, 60)?, below(*s, 60)?),
        _ => return None,
    };
    d.checked_mul(86_400)?
        .checked_add(h.checked_mul(3_600)?)?
        .checked_add(m.checked_mul(60)?)?
        .checked_add(s)
}

fn slurm_time(seconds: u64) -> String {
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let clock = format!(
        "{:02}:{:02}:{:02}",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    );
    if days > 0 {
        format!("{days}-{clock}")
    } else {
        clock
    }
}

fn parse_nodes(value: &str) -> Result<String, String> {
    const EXPECTED: &str = "must be a positive number of nodes N or a range MIN-MAX, e.g. 2 or 1-4";
    match value.split_once('-') {
        None => parse_positive(value).map(|n| n.to_string()),
        Some((min, max)) => match (parse_positive(min), parse_positive(max)) {
            (Some(min), Some(max)) if min <= max => Some(format!("{min}-{max}")),
            _ => None,
        },
    }
    .ok_or_else(|| EXPECTED.to_string())
}

fn parse_gpus(value: &str) -> Result<String, String> {
    const EXPECTED: &str = "must be a positive number of GPUs N or TYPE:N, e.g. 4 or a100:4";
    let parsed = match value.split_once(':') {
        None => parse_positive(value).map(|n| n.to_string()),
        Some((kind, count)) if is_name(kind, "") => {
            parse_positive(count).map(|n| format!("{kind}:{n}"))
        }
        Some(_) => None,
    };
    parsed.ok_or_else(|| EXPECTED.to_string())
}

/// sbatch short options that take a value (`-c 4`, `-c4`), per `man sbatch`;
/// `I` and `k` take an optional attached one.
const SHORT_WITH_VALUE: &str = "AaBbCcDdeFGiIJkLMmNnopqStwx";

fn sbatch_options(p: &mut Problems, raw: Option<&str>) -> Vec<String> {
    const VAR: &str = "FIRECREST_SBATCH_OPTIONS";
    let Some(text) = raw else {
        return Vec::new();
    };
    let mut options = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (line.starts_with('#') && !line.starts_with("#SBATCH")) {
            continue;
        }
        match parse_sbatch_option(line) {
            Ok(option) => options.push(option),
            Err(why) => p.add(&[VAR], format!("line {} {}: {why}", index + 1, shown(line))),
        }
    }
    options
}

fn parse_sbatch_option(line: &str) -> Result<String, String> {
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err("contains control characters; write one option per line".to_string());
    }
    if let Some(rest) = line.strip_prefix("#SBATCH") {
        return Err(format!(
            "write the option without #SBATCH, e.g. {}",
            rest.trim()
        ));
    }
    if !line.starts_with('-') {
        return Err("must be one sbatch option starting with '-', e.g. --mem=8G".to_string());
    }
    if line.contains(['"', '\'', '\\', '`']) {
        return Err(
            "quotes and backslashes are not accepted (values cannot contain spaces)".to_string(),
        );
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let one_per_line =
        || "must be one option per line, without spaces in its value, e.g. --mem=8G".to_string();
    if let Some(long) = words[0].strip_prefix("--") {
        let (name, value) = match (long.split_once('='), words.as_slice()) {
            (Some((name, value)), [_]) => (name, Some(value)),
            (None, [_]) => (long, None),
            (None, [_, value]) if !value.starts_with('-') => (long, Some(*value)),
            _ => return Err(one_per_line()),
        };
        let valid_name = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_name {
            return Err("is not an sbatch option; long options look like --mem=8G".to_string());
        }
        // sbatch accepts unambiguous prefixes (--out = --output), so refuse those too.
        if let Some(reserved) = sbatch::reserved_long(name) {
            return Err(format!(
                "--{} is not accepted here: {}",
                reserved.long, reserved.reason
            ));
        }
        return match value {
            Some("") => Err("has an empty value; write --name=value".to_string()),
            Some(value) => Ok(format!("--{name}={value}")),
            None => Ok(format!("--{name}")),
        };
    }
    let mut chars = words[0][1..].chars();
    let Some(letter) = chars.next().filter(char::is_ascii_alphabetic) else {
        return Err("is not an sbatch option; short options look like -c 4".to_string());
    };
    if let Some(reserved) = sbatch::reserved_short(letter) {
        return Err(format!(
            "-{letter} (--{}) is not accepted here: {}",
            reserved.long, reserved.reason
        ));
    }
    let attached = chars.as_str();
    let takes_value = SHORT_WITH_VALUE.contains(letter);
    match words.as_slice() {
        [_] if attached.is_empty() => Ok(format!("-{letter}")),
        [_] if takes_value => Ok(format!("-{letter}{attached}")),
        [_, value] if attached.is_empty() && takes_value && !value.starts_with('-') => {
            Ok(format!("-{letter} {value}"))
        }
        [_] => Err(format!(
            "-{letter} takes no value and short options cannot be combined; write one option per line"
        )),
        _ => Err(one_per_line()),
    }
}

// ---------------------------------------------------------------- the job

fn parse_job_name(value: &str) -> Result<String, String> {
    if value.len() <= 128 && is_name(value, "") {
        Ok(value.to_string())
    } else {
        Err("must be 1 to 128 letters, digits, '.', '_' or '-', e.g. nightly-tests".to_string())
    }
}

fn default_job_name(identity: &RunIdentity) -> String {
    let mut name = format!("fci-{}", identity.slug);
    name.truncate(128);
    name
}

fn user_command(
    raw: &RawInputs,
    workspace: Option<&Path>,
    p: &mut Problems,
) -> Option<UserCommand> {
    const BOTH: [&str; 2] = ["FIRECREST_RUN", "FIRECREST_SCRIPT"];
    match (raw.run.as_deref(), raw.script.as_deref()) {
        (Some(_), Some(_)) => {
            p.add(
                &BOTH,
                "are both set; give either commands to run (run) or a script file in the workspace (script), not both",
            );
            None
        }
        (None, None) => {
            p.add(
                &BOTH,
                "neither is set; give commands to run in the job (run, e.g. \"make test\") or a script file in the workspace (script, e.g. ci/test.sh)",
            );
            None
        }
        (Some(run), None) => Some(UserCommand::Inline(run.to_string())),
        (None, Some(script)) => {
            let path = p.parse("FIRECREST_SCRIPT", Some(script), relative_path)?;
            let workspace = workspace?;
            match script_inside(workspace, &path) {
                Ok(()) => Some(UserCommand::ScriptFile(path)),
                Err(why) => {
                    p.add(&["FIRECREST_SCRIPT"], format!("{why}: {}", shown(&path)));
                    None
                }
            }
        }
    }
}

/// A relative path without `..`, `/`-joined, `./` dropped.
fn relative_path(value: &str) -> Result<String, String> {
    const EXPECTED: &str =
        "must be a path relative to the workspace, without '..', e.g. ci/test.sh";
    let mut parts = Vec::new();
    for component in Path::new(value).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str().ok_or(EXPECTED)?),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(EXPECTED.to_string())
            }
        }
    }
    if parts.is_empty() {
        return Err(EXPECTED.to_string());
    }
    Ok(parts.join("/"))
}

fn script_inside(workspace: &Path, path: &str) -> Result<(), &'static str> {
    let full = workspace.join(path);
    let real = full
        .canonicalize()
        .map_err(|_| "is not a file in the workspace")?;
    if !real.starts_with(workspace) {
        return Err("leads outside the workspace (through a symbolic link)");
    }
    if !real.is_file() {
        return Err("is not a regular file in the workspace");
    }
    Ok(())
}

fn forwarded_vars(
    p: &mut Problems,
    raw: Option<&str>,
    env: &BTreeMap<String, String>,
) -> BTreeMap<String, Secret> {
    const VAR: &str = "FIRECREST_ENV_VARS";
    let mut vars = BTreeMap::new();
    let Some(text) = raw else {
        return vars;
    };
    for name in text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|n| !n.is_empty())
    {
        let identifier = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier {
            p.add(
                &[VAR],
                format!(
                    "{} is not a variable name; names are letters, digits and '_', not starting with a digit, separated by newlines, commas or spaces",
                    shown(name)
                ),
            );
            continue;
        }
        if INPUTS.iter().any(|spec| spec.secret && spec.env == name) {
            p.add(
                &[VAR],
                format!("{name} may not be forwarded: it is the tool's own secret and would reach the cluster and the job's log"),
            );
            continue;
        }
        match env.get(name).filter(|value| !value.is_empty()) {
            Some(value) => {
                vars.insert(name.to_string(), Secret::new(value.clone()));
            }
            None => p.add(
                &[VAR],
                format!("{name} is to be forwarded but is not set here; set it in the CI job's environment or drop it from the list"),
            ),
        }
    }
    vars
}

/// Lines of globs; `#` lines and blank lines dropped. `relative` also refuses
/// absolute paths (artifacts come from inside the job's workspace).
fn globs(p: &mut Problems, var: &'static str, raw: Option<&str>, relative: bool) -> Vec<String> {
    let Some(text) = raw else {
        return Vec::new();
    };
    let mut globs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_glob(line, relative) {
            Ok(glob) => globs.push(glob),
            Err(why) => p.add(&[var], format!("{} {why}", shown(line))),
        }
    }
    globs
}

fn parse_glob(line: &str, relative: bool) -> Result<String, String> {
    if line.chars().any(char::is_control) {
        return Err("contains control characters; write one glob per line".to_string());
    }
    if relative && line.starts_with('/') {
        return Err(
            "is absolute; write a path relative to the workspace, e.g. build/*.log".to_string(),
        );
    }
    if line.split('/').any(|part| part == "..") {
        return Err(
            "contains '..'; write a path inside the workspace, e.g. build/*.log".to_string(),
        );
    }
    let glob = if relative {
        line.trim_start_matches("./")
    } else {
        line
    };
    globset::Glob::new(glob)
        .map_err(|err| format!("is not a valid glob ({}); e.g. build/**/*.xml", err.kind()))?;
    Ok(glob.to_string())
}

fn parse_remote_dir(value: &str) -> Result<String, String> {
    const EXPECTED: &str = "must be an absolute path on the cluster, e.g. /scratch/project/ci";
    if !value.starts_with('/') {
        return Err(EXPECTED.to_string());
    }
    if value.contains(['\'', '"', '&', '<', '>']) {
        return Err(format!(
            "{EXPECTED}, without the characters ' \" & < > (FirecREST's job templates mangle them)"
        ));
    }
    if value.split('/').any(|part| part == "..") {
        return Err(format!("{EXPECTED}, without '..'"));
    }
    let trimmed = value.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/" } else { trimmed }.to_string())
}

// ---------------------------------------------------------------- the run

fn resolve_workspace(
    raw: &RawInputs,
    env: &BTreeMap<String, String>,
    cwd: &Path,
    p: &mut Problems,
) -> Option<PathBuf> {
    let (var, value): (&'static str, Option<&str>) = if raw.workspace.is_some() {
        ("FIRECREST_WORKSPACE", raw.workspace.as_deref())
    } else if let Some(dir) = platform_var(env, "GITHUB_WORKSPACE") {
        ("GITHUB_WORKSPACE", Some(dir))
    } else if let Some(dir) = platform_var(env, "CI_PROJECT_DIR") {
        ("CI_PROJECT_DIR", Some(dir))
    } else {
        return match cwd.canonicalize() {
            Ok(dir) if dir.is_dir() => Some(dir),
            _ => {
                p.add(
                    &["FIRECREST_WORKSPACE"],
                    format!(
                        "is not set and the current directory {} is not usable; set it to the directory to pack",
                        shown(&cwd.to_string_lossy())
                    ),
                );
                None
            }
        };
    };
    let value = p.one_line(var, value)?;
    let path = cwd.join(value);
    match path.canonicalize() {
        Ok(dir) if dir.is_dir() => Some(dir),
        Ok(_) => {
            p.add(
                &[var],
                format!(
                    "must be a directory to pack; {} is not a directory",
                    shown(value)
                ),
            );
            None
        }
        Err(_) => {
            p.add(
                &[var],
                format!(
                    "must be an existing directory to pack; {} does not exist",
                    shown(value)
                ),
            );
            None
        }
    }
}

const DEFAULT_LOG_FILE: &str = "firecrest-ci.log";

fn log_file(raw: &RawInputs, workspace: Option<&Path>, p: &mut Problems) -> Option<PathBuf> {
    const VAR: &str = "FIRECREST_LOG_FILE";
    let workspace = workspace?;
    let file = match raw.log_file.as_deref() {
        None => return Some(workspace.join(DEFAULT_LOG_FILE)),
        Some(value) => workspace.join(p.one_line(VAR, Some(value))?),
    };
    let parent_is_dir = file.parent().is_some_and(Path::is_dir);
    if !parent_is_dir || file.is_dir() {
        p.add(
            &[VAR],
            format!(
                "must be a file in an existing directory (relative paths start at the workspace); {} is not",
                shown(&file.to_string_lossy())
            ),
        );
        return None;
    }
    Some(file)
}

fn poll_settings(raw: &RawInputs, p: &mut Problems) -> PollSettings {
    let log_interval = p
        .parse(
            "FIRECREST_LOG_INTERVAL",
            raw.log_interval.as_deref(),
            parse_duration,
        )
        .unwrap_or(Duration::from_secs(1));
    PollSettings {
        state_interval: p
            .parse(
                "FIRECREST_POLL_INTERVAL",
                raw.poll_interval.as_deref(),
                parse_duration,
            )
            .unwrap_or(Duration::from_secs(30)),
        log_interval,
        log_max_interval: log_interval.max(Duration::from_secs(4)),
        submit_grace: p
            .parse(
                "FIRECREST_SUBMIT_GRACE",
                raw.submit_grace.as_deref(),
                parse_duration,
            )
            .unwrap_or(Duration::from_secs(120)),
        request_timeout: p
            .parse(
                "FIRECREST_REQUEST_TIMEOUT",
                raw.request_timeout.as_deref(),
                parse_duration,
            )
            .unwrap_or(Duration::from_secs(30)),
    }
}

impl RunIdentity {
    /// From GitHub's or GitLab's run variables; `local` elsewhere.
    fn from_env(env: &BTreeMap<String, String>) -> RunIdentity {
        let var = |name| platform_var(env, name);
        if let (Some(repo), Some(run)) = (var("GITHUB_REPOSITORY"), var("GITHUB_RUN_ID")) {
            let attempt = var("GITHUB_RUN_ATTEMPT").unwrap_or("1");
            let job = var("GITHUB_JOB").unwrap_or("");
            let mut description = format!("{repo} run {run} attempt {attempt}");
            if !job.is_empty() {
                description.push_str(&format!(" job {job}"));
            }
            return RunIdentity {
                slug: slug(repo, &[run, attempt], job),
                description: printable(&description),
                platform: "github",
            };
        }
        if let (Some(project), Some(pipeline), Some(job)) = (
            var("CI_PROJECT_PATH"),
            var("CI_PIPELINE_ID"),
            var("CI_JOB_ID"),
        ) {
            return RunIdentity {
                slug: slug(project, &[pipeline, job], ""),
                description: printable(&format!("{project} pipeline {pipeline} job {job}")),
                platform: "gitlab",
            };
        }
        RunIdentity {
            slug: "local".to_string(),
            description: "local run".to_string(),
            platform: "local",
        }
    }
}

const SLUG_MAX: usize = 80;

/// `name-id-id-tail` in `[A-Za-z0-9._-]`, at most 80 characters; the ids are
/// kept whole (they make it unique) and the longer of name and tail shrinks.
fn slug(name: &str, ids: &[&str], tail: &str) -> String {
    let ids: Vec<String> = ids
        .iter()
        .map(|id| slug_part(id))
        .filter(|id| !id.is_empty())
        .collect();
    let (mut name, mut tail) = (slug_part(name), slug_part(tail));
    let fixed: usize = ids.iter().map(|id| id.len() + 1).sum();
    let budget = SLUG_MAX.saturating_sub(fixed + 1);
    while name.len() + tail.len() > budget {
        if name.len() >= tail.len() {
            name.pop();
        } else {
            tail.pop();
        }
    }
    let parts = std::iter::once(name)
        .chain(ids)
        .chain(std::iter::once(tail))
        .map(|part| part.trim_matches(['-', '.']).to_string())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>();
    let mut slug = parts.join("-");
    slug.truncate(SLUG_MAX);
    if slug.is_empty() {
        "local".to_string()
    } else {
        slug
    }
}

/// ASCII letters, digits, `.` and `_` kept; every other run of characters
/// becomes one `-`.
fn slug_part(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches(['-', '.']).to_string()
}

fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The log level to start logging with, before the configuration is
/// validated (its errors are logged): `FIRECREST_LOG_LEVEL` when valid, else
/// the CI's debug mode. [`Config::log_level`] says the same once validated.
pub fn early_log_level(env: &BTreeMap<String, String>) -> String {
    platform_var(env, "FIRECREST_LOG_LEVEL")
        .and_then(|v| parse_log_level(v).ok())
        .unwrap_or_else(|| default_log_level(env).to_string())
}

fn default_log_level(env: &BTreeMap<String, String>) -> &'static str {
    let github_debug = platform_var(env, "RUNNER_DEBUG") == Some("1");
    let gitlab_debug =
        platform_var(env, "CI_DEBUG_TRACE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if github_debug || gitlab_debug {
        "debug"
    } else {
        "info"
    }
}

// ---------------------------------------------------------------- scalars

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err("must be true or false (yes/no and 1/0 work too)".to_string()),
    }
}

/// One of a fixed set of words, case-insensitive, `_` read as `-`.
fn parse_word<T: Copy>(value: &str, words: &[(&str, T)]) -> Result<T, String> {
    let wanted = value.to_ascii_lowercase().replace('_', "-");
    words
        .iter()
        .find(|(word, _)| *word == wanted)
        .map(|(_, parsed)| *parsed)
        .ok_or_else(|| {
            let names: Vec<&str> = words.iter().map(|(word, _)| *word).collect();
            format!("must be one of {}", names.join(", "))
        })
}

fn parse_backend(value: &str) -> Result<BackendKind, String> {
    parse_word(
        value,
        &[
            ("firecrest", BackendKind::Firecrest),
            ("slurm", BackendKind::Slurm),
            ("local", BackendKind::Local),
        ],
    )
}

fn parse_cleanup(value: &str) -> Result<Cleanup, String> {
    parse_word(
        value,
        &[
            ("always", Cleanup::Always),
            ("on-success", Cleanup::OnSuccess),
            ("never", Cleanup::Never),
        ],
    )
}

fn parse_artifacts_when(value: &str) -> Result<ArtifactsWhen, String> {
    parse_word(
        value,
        &[
            ("on-success", ArtifactsWhen::OnSuccess),
            ("on-failure", ArtifactsWhen::OnFailure),
            ("always", ArtifactsWhen::Always),
        ],
    )
}

fn parse_log_level(value: &str) -> Result<String, String> {
    parse_word(
        value,
        &[
            ("error", "error"),
            ("warn", "warn"),
            ("info", "info"),
            ("debug", "debug"),
            ("trace", "trace"),
        ],
    )
    .map(str::to_string)
}

/// Plain seconds (`30`) or humantime (`90s`, `5m`, `2h 30m`), above zero.
fn parse_duration(value: &str) -> Result<Duration, String> {
    let duration = if value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse::<u64>().ok().map(Duration::from_secs)
    } else {
        humantime::parse_duration(value).ok()
    };
    duration.filter(|d| !d.is_zero()).ok_or_else(|| {
        "must be a duration above zero, e.g. 30s, 5m, 2h or a number of seconds".to_string()
    })
}

/// `auto`, `always-s3`, `never`, or a size (see [`parse_size`]).
fn parse_transfer_threshold(value: &str) -> Result<TransferThreshold, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(TransferThreshold::Auto),
        "always-s3" => Ok(TransferThreshold::AlwaysS3),
        "never" => Ok(TransferThreshold::Never),
        _ => parse_size(value)
            .map(TransferThreshold::Above)
            .map_err(|err| format!("must be auto, always-s3, never, or a size: {err}")),
    }
}

/// Bytes with an optional unit: B, KB/MB/GB/TB (powers of 1000) or
/// KiB/MiB/GiB/TiB (powers of 1024), case-insensitive.
fn parse_size(value: &str) -> Result<u64, String> {
    const EXPECTED: &str = "must be a size in bytes with an optional unit B, KB, MB, GB, TB, KiB, MiB, GiB or TiB, e.g. 256MiB";
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().map_err(|_| EXPECTED.to_string())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(EXPECTED.to_string()),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| EXPECTED.to_string())
}

const DEFAULT_COMPRESSION_LEVEL: u32 = crate::workspace::DEFAULT_LEVEL;

fn parse_retries(value: &str) -> Result<u32, String> {
    value
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| *n <= 10)
        .ok_or_else(|| "must be a number of resubmissions from 0 to 10".to_string())
}

fn parse_compression_level(value: &str) -> Result<u32, String> {
    parse_positive(value)
        .filter(|level| (1..=9).contains(level))
        .ok_or_else(|| "must be a gzip level from 1 (fast) to 9 (small)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A workspace directory; kept alive as long as the test runs.
    struct Fixture {
        _dir: tempfile::TempDir,
        ws: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().canonicalize().unwrap();
        Fixture { _dir: dir, ws }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The smallest valid configuration (local backend) plus `extra`.
    fn env_with(fx: &Fixture, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut env = map(&[
            ("FIRECREST_WORKSPACE", fx.ws.to_str().unwrap()),
            ("FIRECREST_RUN", "make test"),
            ("FIRECREST_BACKEND", "local"),
        ]);
        env.extend(map(extra));
        env
    }

    fn load(fx: &Fixture, extra: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        Config::from_env(&env_with(fx, extra), &fx.ws, &CliFlags::default())
    }

    fn ok(fx: &Fixture, extra: &[(&str, &str)]) -> Config {
        match load(fx, extra) {
            Ok(config) => config,
            Err(errors) => panic!("unexpected problems for {extra:?}:\n{errors}"),
        }
    }

    /// The problems of a configuration that must fail.
    fn problems(fx: &Fixture, extra: &[(&str, &str)]) -> Vec<ConfigProblem> {
        match load(fx, extra) {
            Ok(config) => panic!("expected a problem for {extra:?}, got {config:?}"),
            Err(errors) => errors.problems,
        }
    }

    /// The single problem a configuration has, which must name `var`.
    fn problem(fx: &Fixture, var: &str, value: &str) -> String {
        let found = problems(fx, &[(var, value)]);
        assert_eq!(found.len(), 1, "one problem for {var}={value:?}: {found:?}");
        assert!(
            found[0].variables.contains(&var),
            "{var} named in {:?}",
            found[0]
        );
        found[0].message.clone()
    }

    const FIRECREST_OK: &[(&str, &str)] = &[
        ("FIRECREST_BACKEND", "firecrest"),
        ("FIRECREST_URL", "https://api.example.org/firecrest/v2/"),
        ("FIRECREST_SYSTEM", "daint"),
        ("FIRECREST_CLIENT_ID", "ci-client"),
        ("FIRECREST_CLIENT_SECRET", "s3cr3t-client-value"),
        ("FIRECREST_TOKEN_URL", "https://auth.example.org/token"),
    ];

    // ------------------------------------------------ the table and envy

    #[test]
    fn raw_inputs_has_one_field_per_input() {
        let fields = serde_json::to_value(RawInputs::default()).unwrap();
        let fields: Vec<String> = fields.as_object().unwrap().keys().cloned().collect();
        let mut expected: Vec<String> = INPUTS
            .iter()
            .map(|spec| spec.env.strip_prefix(PREFIX).unwrap().to_lowercase())
            .collect();
        expected.sort();
        let mut fields = fields;
        fields.sort();
        assert_eq!(fields, expected);
    }

    #[test]
    fn envy_reads_every_input_from_its_variable() {
        for spec in INPUTS {
            let mut p = Problems::default();
            let raw = RawInputs::from_env(&map(&[(spec.env, "some value")]), &mut p);
            assert!(p.0.is_empty());
            let fields = serde_json::to_value(&raw).unwrap();
            let set: Vec<&String> = fields
                .as_object()
                .unwrap()
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, _)| k)
                .collect();
            assert_eq!(set.len(), 1, "{} fills exactly one field", spec.env);
            assert_eq!(fields[set[0]], "some value");
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
    fn action_defaults_mean_the_same_as_unset() {
        let fx = fixture();
        let mut base = env_with(&fx, FIRECREST_OK);
        base.remove("FIRECREST_BACKEND");
        let config = |env: &BTreeMap<String, String>| {
            format!(
                "{:?}",
                Config::from_env(env, &fx.ws, &CliFlags::default()).unwrap()
            )
        };
        let unset = config(&base);
        for spec in INPUTS.iter().filter(|s| !s.default.is_empty()) {
            let mut env = base.clone();
            env.insert(spec.env.into(), spec.default.into());
            assert_eq!(
                config(&env),
                unset,
                "{}={} is the default",
                spec.env,
                spec.default
            );
        }
    }

    #[test]
    fn documented_defaults_are_the_code_defaults() {
        let fx = fixture();
        let unset = format!("{:?}", ok(&fx, &[]));
        for env in [
            "FIRECREST_POLL_INTERVAL",
            "FIRECREST_LOG_INTERVAL",
            "FIRECREST_SUBMIT_GRACE",
            "FIRECREST_REQUEST_TIMEOUT",
            "FIRECREST_TRANSFER_THRESHOLD",
            "FIRECREST_COMPRESSION_LEVEL",
        ] {
            let spec = INPUTS.iter().find(|s| s.env == env).unwrap();
            let set = format!("{:?}", ok(&fx, &[(env, spec.default_doc)]));
            assert_eq!(set, unset, "{env}={} is the default", spec.default_doc);
        }
    }

    // ------------------------------------------------ every input

    #[test]
    fn every_input_is_parsed() {
        let fx = fixture();
        std::fs::create_dir(fx.ws.join("logs")).unwrap();
        let env = map(&[
            ("FIRECREST_URL", "https://api.example.org/firecrest/v2/"),
            ("FIRECREST_TOKEN_URL", "https://auth.example.org/token"),
            ("FIRECREST_CLIENT_ID", "ci-client"),
            ("FIRECREST_CLIENT_SECRET", "client-secret-value"),
            ("FIRECREST_SYSTEM", "daint"),
            ("FIRECREST_ACCOUNT", "g123"),
            ("FIRECREST_PARTITION", "normal,debug"),
            ("FIRECREST_RESERVATION", "maint"),
            ("FIRECREST_CONSTRAINT", "gpu&(a100|h100)"),
            ("FIRECREST_TIME_LIMIT", "90m"),
            ("FIRECREST_NODES", "1-4"),
            ("FIRECREST_NTASKS", "8"),
            ("FIRECREST_GPUS", "a100:4"),
            (
                "FIRECREST_SBATCH_OPTIONS",
                "--mem=8G\n# a comment\n\n--exclusive\n",
            ),
            ("FIRECREST_JOB_NAME", "nightly.tests_1"),
            ("FIRECREST_RUN", "make\nmake test\n"),
            ("FIRECREST_WORKSPACE", fx.ws.to_str().unwrap()),
            ("FIRECREST_INCLUDE", "src/**\nCargo.*"),
            ("FIRECREST_EXCLUDE", "target/\n*.tmp"),
            ("FIRECREST_GITIGNORE", "no"),
            ("FIRECREST_INCLUDE_GIT", "yes"),
            ("FIRECREST_ENV_VARS", "BUILD_MODE, CC"),
            ("BUILD_MODE", "release"),
            ("CC", "gcc"),
            ("FIRECREST_ARTIFACTS", "./build/*.xml\nreport.html"),
            ("FIRECREST_ARTIFACTS_WHEN", "on-failure"),
            ("FIRECREST_REMOTE_DIR", "/scratch/g123/ci/"),
            ("FIRECREST_CLEANUP", "on-success"),
            ("FIRECREST_TIMEOUT", "2h"),
            ("FIRECREST_RETRIES", "2"),
            ("FIRECREST_BACKEND", "firecrest"),
            ("FIRECREST_DRY_RUN", "true"),
            ("FIRECREST_LOG_LEVEL", "TRACE"),
            ("FIRECREST_LOG_FILE", "logs/job.log"),
            ("FIRECREST_SEPARATE_STDERR", "1"),
            ("FIRECREST_POLL_INTERVAL", "20"),
            ("FIRECREST_LOG_INTERVAL", "500ms"),
            ("FIRECREST_SUBMIT_GRACE", "5m"),
            ("FIRECREST_REQUEST_TIMEOUT", "45s"),
            ("FIRECREST_TRANSFER_THRESHOLD", "100MB"),
            ("FIRECREST_COMPRESSION_LEVEL", "9"),
        ]);
        for spec in INPUTS {
            if spec.env != "FIRECREST_ACCESS_TOKEN" && spec.env != "FIRECREST_SCRIPT" {
                assert!(env.contains_key(spec.env), "the test sets {}", spec.env);
            }
        }
        let c = Config::from_env(&env, Path::new("/"), &CliFlags::default()).unwrap();
        assert_eq!(c.backend, BackendKind::Firecrest);
        assert_eq!(
            c.firecrest,
            Some(FirecrestSettings {
                url: "https://api.example.org/firecrest/v2".into(),
                system: "daint".into(),
                credentials: Credentials::ClientCredentials {
                    token_url: "https://auth.example.org/token".into(),
                    client_id: "ci-client".into(),
                    client_secret: Secret::new("client-secret-value"),
                },
            })
        );
        assert_eq!(
            c.resources,
            Resources {
                account: Some("g123".into()),
                partition: Some("normal,debug".into()),
                reservation: Some("maint".into()),
                constraint: Some("gpu&(a100|h100)".into()),
                time_limit: Some("01:30:00".into()),
                nodes: Some("1-4".into()),
                ntasks: Some(8),
                gpus: Some("a100:4".into()),
                sbatch_options: vec!["--mem=8G".into(), "--exclusive".into()],
            }
        );
        assert_eq!(c.job_name, "nightly.tests_1");
        assert_eq!(c.command, UserCommand::Inline("make\nmake test\n".into()));
        assert_eq!(c.workspace, fx.ws);
        assert_eq!(c.include, ["src/**", "Cargo.*"]);
        assert_eq!(c.exclude, ["target/", "*.tmp"]);
        assert!(!c.gitignore);
        assert!(c.include_git);
        assert_eq!(c.env_vars.keys().collect::<Vec<_>>(), ["BUILD_MODE", "CC"]);
        assert_eq!(c.env_vars["BUILD_MODE"].expose(), "release");
        assert_eq!(c.artifacts, ["build/*.xml", "report.html"]);
        assert_eq!(c.artifacts_when, ArtifactsWhen::OnFailure);
        assert_eq!(c.remote_dir.as_deref(), Some("/scratch/g123/ci"));
        assert_eq!(c.cleanup, Cleanup::OnSuccess);
        assert_eq!(c.timeout, Some(Duration::from_secs(7200)));
        assert!(c.dry_run);
        assert_eq!(c.log_level, "trace");
        assert_eq!(c.log_file, fx.ws.join("logs/job.log"));
        assert!(c.separate_stderr);
        assert_eq!(
            c.poll,
            PollSettings {
                state_interval: Duration::from_secs(20),
                log_interval: Duration::from_millis(500),
                log_max_interval: Duration::from_secs(4),
                submit_grace: Duration::from_secs(300),
                request_timeout: Duration::from_secs(45),
            }
        );
        assert_eq!(c.transfer_threshold, TransferThreshold::Above(100_000_000));
        assert_eq!(c.compression_level, 9);
        assert_eq!(c.retries, 2);
    }

    #[test]
    fn defaults_when_nothing_optional_is_set() {
        let fx = fixture();
        let c = ok(&fx, &[]);
        assert_eq!(c.backend, BackendKind::Local);
        assert_eq!(c.firecrest, None);
        assert_eq!(c.resources, Resources::default());
        assert_eq!(c.job_name, "fci-local");
        assert!(c.include.is_empty() && c.exclude.is_empty() && c.artifacts.is_empty());
        assert!(c.gitignore);
        assert!(!c.include_git);
        assert!(c.env_vars.is_empty());
        assert_eq!(c.artifacts_when, ArtifactsWhen::Always);
        assert_eq!(c.remote_dir, None);
        assert_eq!(c.cleanup, Cleanup::Always);
        assert_eq!(c.timeout, None);
        assert!(!c.dry_run);
        assert_eq!(c.log_level, "info");
        assert_eq!(c.log_file, fx.ws.join("firecrest-ci.log"));
        assert!(!c.separate_stderr);
        assert_eq!(c.poll.state_interval, Duration::from_secs(30));
        assert_eq!(c.poll.log_interval, Duration::from_secs(1));
        assert_eq!(c.poll.log_max_interval, Duration::from_secs(4));
        assert_eq!(c.poll.submit_grace, Duration::from_secs(120));
        assert_eq!(c.poll.request_timeout, Duration::from_secs(30));
        assert_eq!(c.transfer_threshold, TransferThreshold::Auto);
        assert_eq!(c.compression_level, 3);
    }

    #[test]
    fn empty_and_blank_values_count_as_unset() {
        let fx = fixture();
        let unset = format!("{:?}", ok(&fx, &[]));
        let mut env = map(&[]);
        for (i, spec) in INPUTS.iter().enumerate() {
            env.insert(
                spec.env.to_string(),
                if i % 2 == 0 { "" } else { "  \n" }.into(),
            );
        }
        env.insert(TOKEN_URL_ALIAS.into(), String::new());
        env.extend(env_with(&fx, &[]));
        let blank = Config::from_env(&env, &fx.ws, &CliFlags::default()).unwrap();
        assert_eq!(format!("{blank:?}"), unset);

        // An empty required input is "not set", not "malformed".
        let mut env = env_with(&fx, FIRECREST_OK);
        env.insert("FIRECREST_URL".into(), String::new());
        let errors = Config::from_env(&env, &fx.ws, &CliFlags::default()).unwrap_err();
        assert_eq!(errors.problems.len(), 1);
        assert_eq!(errors.problems[0].variables, ["FIRECREST_URL"]);
        assert!(errors.problems[0].message.starts_with("is not set"));
    }

    #[test]
    fn single_line_values_refuse_control_characters() {
        let fx = fixture();
        for var in [
            "FIRECREST_ACCOUNT",
            "FIRECREST_PARTITION",
            "FIRECREST_JOB_NAME",
            "FIRECREST_TIME_LIMIT",
            "FIRECREST_REMOTE_DIR",
            "FIRECREST_LOG_FILE",
            "FIRECREST_CLEANUP",
        ] {
            let message = problem(&fx, var, "a\nb");
            assert!(message.contains("single line"), "{var}: {message}");
            let message = problem(&fx, var, "a\u{1b}b");
            assert!(message.contains("control characters"), "{var}: {message}");
        }
    }

    // ------------------------------------------------ scalars

    #[test]
    fn booleans() {
        let fx = fixture();
        for (value, expected) in [
            ("true", true),
            ("TRUE", true),
            ("Yes", true),
            ("1", true),
            ("false", false),
            ("No", false),
            ("0", false),
            (" FALSE ", false),
        ] {
            assert_eq!(
                ok(&fx, &[("FIRECREST_INCLUDE_GIT", value)]).include_git,
                expected
            );
            assert_eq!(
                ok(&fx, &[("FIRECREST_GITIGNORE", value)]).gitignore,
                expected
            );
            assert_eq!(
                ok(&fx, &[("FIRECREST_SEPARATE_STDERR", value)]).separate_stderr,
                expected
            );
            assert_eq!(ok(&fx, &[("FIRECREST_DRY_RUN", value)]).dry_run, expected);
        }
        for bad in ["y", "on", "2", "truthy"] {
            for var in [
                "FIRECREST_GITIGNORE",
                "FIRECREST_INCLUDE_GIT",
                "FIRECREST_SEPARATE_STDERR",
                "FIRECREST_DRY_RUN",
            ] {
                let message = problem(&fx, var, bad);
                assert!(message.contains("true or false"), "{message}");
                assert!(
                    message.contains(&format!("{bad:?}")),
                    "shows the value: {message}"
                );
            }
        }
    }

    #[test]
    fn time_limits_in_slurm_and_humantime_formats() {
        let fx = fixture();
        for (value, expected) in [
            ("30", "00:30:00"),
            ("90", "01:30:00"),
            ("5:30", "00:05:30"),
            ("1:30:00", "01:30:00"),
            ("1-12", "1-12:00:00"),
            ("2-03:04", "2-03:04:00"),
            ("1-00:00:01", "1-00:00:01"),
            ("90m", "01:30:00"),
            ("2h", "02:00:00"),
            ("1h 30m", "01:30:00"),
            ("36h", "1-12:00:00"),
            ("90s", "00:01:30"),
            ("2 hours", "02:00:00"),
            ("1.5h", "01:30:00"),
        ] {
            let c = ok(&fx, &[("FIRECREST_TIME_LIMIT", value)]);
            assert_eq!(c.resources.time_limit.as_deref(), Some(expected), "{value}");
        }
        for bad in [
            "0",
            "00:00",
            "1:60",
            "1:00:60",
            "1-24",
            "1-1:60",
            "1:2:3:4",
            "1-",
            "-1",
            "::",
            "2 parsecs",
            "a",
        ] {
            let message = problem(&fx, "FIRECREST_TIME_LIMIT", bad);
            assert!(message.contains("D-HH:MM:SS"), "{bad}: {message}");
        }
    }

    #[test]
    fn nodes_ntasks_and_gpus() {
        let fx = fixture();
        assert_eq!(
            ok(&fx, &[("FIRECREST_NODES", "4")])
                .resources
                .nodes
                .as_deref(),
            Some("4")
        );
        assert_eq!(
            ok(&fx, &[("FIRECREST_NODES", "2-8")])
                .resources
                .nodes
                .as_deref(),
            Some("2-8")
        );
        for bad in ["0", "-1", "4-2", "a", "1-", "1-2-3", "+3", "1.5"] {
            assert!(
                problem(&fx, "FIRECREST_NODES", bad).contains("MIN-MAX"),
                "{bad}"
            );
        }
        assert_eq!(
            ok(&fx, &[("FIRECREST_NTASKS", "16")]).resources.ntasks,
            Some(16)
        );
        for bad in ["0", "-2", "1e3", "four", "99999999999"] {
            assert!(
                problem(&fx, "FIRECREST_NTASKS", bad).contains("positive whole number"),
                "{bad}"
            );
        }
        assert_eq!(
            ok(&fx, &[("FIRECREST_GPUS", "4")])
                .resources
                .gpus
                .as_deref(),
            Some("4")
        );
        assert_eq!(
            ok(&fx, &[("FIRECREST_GPUS", "nvidia_a100:2")])
                .resources
                .gpus
                .as_deref(),
            Some("nvidia_a100:2")
        );
        for bad in ["0", "a100", "a100:0", ":2", "a 100:2", "a100:2:3"] {
            assert!(
                problem(&fx, "FIRECREST_GPUS", bad).contains("TYPE:N"),
                "{bad}"
            );
        }
    }

    #[test]
    fn slurm_placement_names() {
        let fx = fixture();
        let c = ok(
            &fx,
            &[
                ("FIRECREST_ACCOUNT", "proj_01"),
                ("FIRECREST_PARTITION", "normal"),
                ("FIRECREST_RESERVATION", "res.1"),
                ("FIRECREST_CONSTRAINT", "mc|gpu"),
            ],
        );
        assert_eq!(c.resources.account.as_deref(), Some("proj_01"));
        assert_eq!(c.resources.constraint.as_deref(), Some("mc|gpu"));
        for (var, bad) in [
            ("FIRECREST_ACCOUNT", "my account"),
            ("FIRECREST_ACCOUNT", "a,b"),
            ("FIRECREST_ACCOUNT", "acc;rm"),
            ("FIRECREST_PARTITION", "normal debug"),
            ("FIRECREST_PARTITION", "$(id)"),
            ("FIRECREST_RESERVATION", "r\tx"),
            ("FIRECREST_CONSTRAINT", "gpu && mc"),
            ("FIRECREST_CONSTRAINT", "gpu;x"),
        ] {
            let message = problem(&fx, var, bad);
            assert!(
                message.contains("Slurm") || message.contains("single line"),
                "{var}={bad}: {message}"
            );
        }
    }

    #[test]
    fn durations() {
        let fx = fixture();
        let vars = [
            "FIRECREST_TIMEOUT",
            "FIRECREST_POLL_INTERVAL",
            "FIRECREST_LOG_INTERVAL",
            "FIRECREST_SUBMIT_GRACE",
            "FIRECREST_REQUEST_TIMEOUT",
        ];
        for (value, expected) in [
            ("45", 45_000),
            ("45s", 45_000),
            ("2m", 120_000),
            ("1h 30m", 5_400_000),
            ("250ms", 250),
        ] {
            let c = ok(&fx, &vars.map(|var| (var, value)));
            let expected = Duration::from_millis(expected);
            assert_eq!(c.timeout, Some(expected));
            assert_eq!(c.poll.state_interval, expected);
            assert_eq!(c.poll.log_interval, expected);
            assert_eq!(c.poll.submit_grace, expected);
            assert_eq!(c.poll.request_timeout, expected);
        }
        for var in vars {
            for bad in ["0", "0s", "-5", "soon", "5 parsecs", "1.5"] {
                assert!(
                    problem(&fx, var, bad).contains("duration above zero"),
                    "{var}={bad}"
                );
            }
        }
    }

    #[test]
    fn a_long_log_interval_raises_the_backoff_ceiling() {
        let fx = fixture();
        let c = ok(&fx, &[("FIRECREST_LOG_INTERVAL", "30s")]);
        assert_eq!(c.poll.log_max_interval, Duration::from_secs(30));
    }

    #[test]
    fn transfer_threshold_sizes() {
        let fx = fixture();
        for (value, expected) in [
            ("0", 0),
            ("1024", 1024),
            ("10B", 10),
            ("5KB", 5_000),
            ("5kb", 5_000),
            ("2MB", 2_000_000),
            ("3GB", 3_000_000_000),
            ("1TB", 1_000_000_000_000),
            ("5KiB", 5 * 1024),
            ("256MiB", 256 << 20),
            ("2 GiB", 2 << 30),
            ("1TiB", 1 << 40),
        ] {
            assert_eq!(
                ok(&fx, &[("FIRECREST_TRANSFER_THRESHOLD", value)]).transfer_threshold,
                TransferThreshold::Above(expected),
                "{value}"
            );
        }
        for (value, expected) in [
            ("auto", TransferThreshold::Auto),
            ("Always-S3", TransferThreshold::AlwaysS3),
            ("never", TransferThreshold::Never),
        ] {
            assert_eq!(
                ok(&fx, &[("FIRECREST_TRANSFER_THRESHOLD", value)]).transfer_threshold,
                expected,
                "{value}"
            );
        }
        for bad in [
            "lots",
            "5 XB",
            "-1",
            "1.5GB",
            "MiB",
            "99999999999TiB",
            "5K",
            "s3",
        ] {
            let message = problem(&fx, "FIRECREST_TRANSFER_THRESHOLD", bad);
            assert!(
                message.contains("256MiB") && message.contains("always-s3"),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn compression_levels() {
        let fx = fixture();
        for level in 1..=9u32 {
            let c = ok(&fx, &[("FIRECREST_COMPRESSION_LEVEL", &level.to_string())]);
            assert_eq!(c.compression_level, level);
        }
        for bad in ["0", "10", "fast", "-1"] {
            assert!(problem(&fx, "FIRECREST_COMPRESSION_LEVEL", bad).contains("1 (fast) to 9"));
        }
    }

    #[test]
    fn words_for_backend_cleanup_artifacts_when_and_log_level() {
        let fx = fixture();
        assert_eq!(
            ok(&fx, &[("FIRECREST_BACKEND", "Slurm")]).backend,
            BackendKind::Slurm
        );
        assert_eq!(
            ok(&fx, &[("FIRECREST_BACKEND", "local")]).backend,
            BackendKind::Local
        );
        assert_eq!(
            ok(&fx, &[("FIRECREST_CLEANUP", "never")]).cleanup,
            Cleanup::Never
        );
        assert_eq!(
            ok(&fx, &[("FIRECREST_CLEANUP", "ON_SUCCESS")]).cleanup,
            Cleanup::OnSuccess
        );
        assert_eq!(
            ok(&fx, &[("FIRECREST_ARTIFACTS_WHEN", "on-success")]).artifacts_when,
            ArtifactsWhen::OnSuccess
        );
        for level in ["error", "warn", "info", "debug", "trace"] {
            let c = ok(&fx, &[("FIRECREST_LOG_LEVEL", &level.to_uppercase())]);
            assert_eq!(c.log_level, level);
        }
        for (var, bad, listed) in [
            ("FIRECREST_BACKEND", "ssh", "firecrest, slurm, local"),
            (
                "FIRECREST_CLEANUP",
                "sometimes",
                "always, on-success, never",
            ),
            (
                "FIRECREST_ARTIFACTS_WHEN",
                "never",
                "on-success, on-failure, always",
            ),
            (
                "FIRECREST_LOG_LEVEL",
                "verbose",
                "error, warn, info, debug, trace",
            ),
        ] {
            assert!(problem(&fx, var, bad).contains(listed), "{var}");
        }
    }

    #[test]
    fn artifacts_when_and_cleanup_decide_by_success() {
        assert!(ArtifactsWhen::Always.matches(true) && ArtifactsWhen::Always.matches(false));
        assert!(ArtifactsWhen::OnSuccess.matches(true) && !ArtifactsWhen::OnSuccess.matches(false));
        assert!(!ArtifactsWhen::OnFailure.matches(true) && ArtifactsWhen::OnFailure.matches(false));
        assert!(Cleanup::Always.should_remove(true) && Cleanup::Always.should_remove(false));
        assert!(Cleanup::OnSuccess.should_remove(true) && !Cleanup::OnSuccess.should_remove(false));
        assert!(!Cleanup::Never.should_remove(true) && !Cleanup::Never.should_remove(false));
    }

    // ------------------------------------------------ sbatch options

    #[test]
    fn sbatch_options_are_normalized() {
        let fx = fixture();
        let c = ok(
            &fx,
            &[(
                "FIRECREST_SBATCH_OPTIONS",
                "--mem=8G\r\n  --cpus-per-task 4\n\n# why: big build\n-c 4\n-c4\n--exclusive\n-Q\n--ntasks-per-node=2\n--gpus-per-node=1\n--time-min=10\n--wait-all-nodes=1\n-I60\n",
            )],
        );
        assert_eq!(
            c.resources.sbatch_options,
            [
                "--mem=8G",
                "--cpus-per-task=4",
                "-c 4",
                "-c4",
                "--exclusive",
                "-Q",
                "--ntasks-per-node=2",
                "--gpus-per-node=1",
                "--time-min=10",
                "--wait-all-nodes=1",
                "-I60",
            ]
        );
    }

    #[test]
    fn sbatch_options_the_tool_sets_are_refused_with_the_input_to_use() {
        let fx = fixture();
        for (line, hint) in [
            ("--output=x.log", "FIRECREST_LOG_FILE"),
            ("-o x.log", "FIRECREST_LOG_FILE"),
            ("--out=x", "FIRECREST_LOG_FILE"),
            ("--error=x", "FIRECREST_SEPARATE_STDERR"),
            ("-e x", "FIRECREST_SEPARATE_STDERR"),
            ("--job-name=x", "FIRECREST_JOB_NAME"),
            ("-Jx", "FIRECREST_JOB_NAME"),
            ("--chdir=/tmp", "FIRECREST_REMOTE_DIR"),
            ("-D /tmp", "FIRECREST_REMOTE_DIR"),
            ("--wrap=ls", "FIRECREST_RUN"),
            ("--export=ALL", "FIRECREST_ENV_VARS"),
            ("--export-file=f", "FIRECREST_ENV_VARS"),
            ("--dependency=afterok:1", "order CI jobs"),
            ("-d afterok:1", "order CI jobs"),
            ("--array=1-3", "one job"),
            ("--wait", "waits"),
            ("-W", "waits"),
            ("--hold", "never starts"),
            ("--parsable", "reply"),
            ("--test-only", "FIRECREST_DRY_RUN"),
            ("--open-mode=append", "byte offset"),
            ("--account=x", "FIRECREST_ACCOUNT"),
            ("-A x", "FIRECREST_ACCOUNT"),
            ("--partition=x", "FIRECREST_PARTITION"),
            ("-p x", "FIRECREST_PARTITION"),
            ("--reservation=x", "FIRECREST_RESERVATION"),
            ("--constraint=gpu", "FIRECREST_CONSTRAINT"),
            ("-C gpu", "FIRECREST_CONSTRAINT"),
            ("--time=10", "FIRECREST_TIME_LIMIT"),
            ("-t 10", "FIRECREST_TIME_LIMIT"),
            ("--nodes=2", "FIRECREST_NODES"),
            ("-N2", "FIRECREST_NODES"),
            ("--ntasks=2", "FIRECREST_NTASKS"),
            ("-n 2", "FIRECREST_NTASKS"),
            ("--gpus=2", "FIRECREST_GPUS"),
            ("-G 2", "FIRECREST_GPUS"),
        ] {
            let message = problem(&fx, "FIRECREST_SBATCH_OPTIONS", line);
            assert!(
                message.contains("is not accepted here"),
                "{line}: {message}"
            );
            assert!(message.contains(hint), "{line}: {message}");
        }
    }

    #[test]
    fn malformed_sbatch_options_are_refused() {
        let fx = fixture();
        for (line, why) in [
            ("mem=8G", "starting with '-'"),
            ("#SBATCH --mem=8G", "without #SBATCH, e.g. --mem=8G"),
            ("--mem=8G --output=/etc/x", "one option per line"),
            ("--comment=a b", "one option per line"),
            ("--mem 8G extra", "one option per line"),
            ("--comment=\"a\"", "quotes"),
            ("--comment=`id`", "quotes"),
            ("--mem=", "empty value"),
            ("--", "not an sbatch option"),
            ("--Mem=8G", "not an sbatch option"),
            ("-", "not an sbatch option"),
            ("-1", "not an sbatch option"),
            ("-QJfoo", "cannot be combined"),
            ("-vofile", "cannot be combined"),
            ("--mem=8G\u{7}", "control characters"),
        ] {
            let message = problem(&fx, "FIRECREST_SBATCH_OPTIONS", line);
            assert!(message.contains(why), "{line}: {message}");
            assert!(message.starts_with("line 1 "), "{message}");
        }
        // Every bad line is reported, each with its line number.
        let found = problems(
            &fx,
            &[("FIRECREST_SBATCH_OPTIONS", "--mem=8G\n--output=x\nbad\n")],
        );
        let lines: Vec<&str> = found.iter().map(|p| &p.message[..6]).collect();
        assert_eq!(lines, ["line 2", "line 3"]);
    }

    // ------------------------------------------------ job name, command

    #[test]
    fn job_names() {
        let fx = fixture();
        let long = "a".repeat(128);
        assert_eq!(ok(&fx, &[("FIRECREST_JOB_NAME", &long)]).job_name, long);
        for bad in [&"a".repeat(129), "my job", "job;id", "jöb", "a/b"] {
            assert!(
                problem(&fx, "FIRECREST_JOB_NAME", bad).contains("1 to 128"),
                "{bad}"
            );
        }
    }

    #[test]
    fn run_and_script_exclude_each_other_and_one_is_required() {
        let fx = fixture();
        std::fs::write(fx.ws.join("test.sh"), "echo hi\n").unwrap();
        let both = problems(&fx, &[("FIRECREST_SCRIPT", "test.sh")]);
        assert_eq!(both.len(), 1);
        assert_eq!(both[0].variables, ["FIRECREST_RUN", "FIRECREST_SCRIPT"]);
        assert!(both[0].message.contains("not both"));

        let neither = problems(&fx, &[("FIRECREST_RUN", "")]);
        assert_eq!(neither.len(), 1);
        assert_eq!(neither[0].variables, ["FIRECREST_RUN", "FIRECREST_SCRIPT"]);
        assert!(neither[0].message.contains("neither is set"));
    }

    #[test]
    fn script_must_be_a_file_inside_the_workspace() {
        let fx = fixture();
        std::fs::create_dir_all(fx.ws.join("ci/dir")).unwrap();
        std::fs::write(fx.ws.join("ci/test.sh"), "make test\n").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("evil.sh"), "").unwrap();
        std::os::unix::fs::symlink(outside.path().join("evil.sh"), fx.ws.join("ci/link.sh"))
            .unwrap();

        let script = |value: &str| {
            let mut env = env_with(&fx, &[("FIRECREST_SCRIPT", value)]);
            env.remove("FIRECREST_RUN");
            Config::from_env(&env, &fx.ws, &CliFlags::default())
        };
        for value in ["ci/test.sh", "./ci/test.sh", "ci//test.sh"] {
            assert_eq!(
                script(value).unwrap().command,
                UserCommand::ScriptFile("ci/test.sh".into()),
                "{value}"
            );
        }
        for (value, why) in [
            ("/etc/passwd", "relative to the workspace"),
            ("../x.sh", "without '..'"),
            ("ci/../ci/test.sh", "without '..'"),
            ("ci/missing.sh", "is not a file"),
            ("ci/dir", "not a regular file"),
            ("ci/link.sh", "outside the workspace"),
        ] {
            let errors = script(value).unwrap_err().problems;
            assert_eq!(errors.len(), 1, "{value}: {errors:?}");
            assert_eq!(errors[0].variables, ["FIRECREST_SCRIPT"]);
            assert!(
                errors[0].message.contains(why),
                "{value}: {}",
                errors[0].message
            );
        }
    }

    // ------------------------------------------------ forwarded variables

    #[test]
    fn env_vars_are_forwarded_from_the_environment() {
        let fx = fixture();
        let c = ok(
            &fx,
            &[
                ("FIRECREST_ENV_VARS", "A_1\nB, _C  A_1"),
                ("A_1", "one"),
                ("B", "two, with comma"),
                ("_C", " "),
            ],
        );
        let values: Vec<(&str, &str)> = c
            .env_vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        assert_eq!(
            values,
            [("A_1", "one"), ("B", "two, with comma"), ("_C", " ")]
        );
    }

    #[test]
    fn env_vars_problems() {
        let fx = fixture();
        for (list, extra, why) in [
            ("1ABC", &[][..], "not a variable name"),
            ("A-B", &[], "not a variable name"),
            ("$HOME", &[], "not a variable name"),
            ("MISSING", &[], "MISSING is to be forwarded but is not set"),
            (
                "EMPTY",
                &[("EMPTY", "")],
                "EMPTY is to be forwarded but is not set",
            ),
            (
                "FIRECREST_CLIENT_SECRET",
                &[("FIRECREST_CLIENT_SECRET", "x")],
                "may not be forwarded",
            ),
            (
                "FIRECREST_ACCESS_TOKEN",
                &[("FIRECREST_ACCESS_TOKEN", "x")],
                "may not be forwarded",
            ),
        ] {
            let mut vars = vec![("FIRECREST_ENV_VARS", list)];
            vars.extend_from_slice(extra);
            let found = problems(&fx, &vars);
            assert_eq!(found.len(), 1, "{list}: {found:?}");
            assert_eq!(found[0].variables, ["FIRECREST_ENV_VARS"]);
            assert!(
                found[0].message.contains(why),
                "{list}: {}",
                found[0].message
            );
        }
    }

    // ------------------------------------------------ globs and paths

    #[test]
    fn artifacts_must_stay_inside_the_workspace() {
        let fx = fixture();
        let c = ok(
            &fx,
            &[(
                "FIRECREST_ARTIFACTS",
                "./out/*.xml\n\n# junit\nbuild/**/report-?.html",
            )],
        );
        assert_eq!(c.artifacts, ["out/*.xml", "build/**/report-?.html"]);
        for (bad, why) in [
            ("/etc/passwd", "is absolute"),
            ("../secrets", "contains '..'"),
            ("out/../../x", "contains '..'"),
            ("out/[a.xml", "not a valid glob"),
        ] {
            assert!(
                problem(&fx, "FIRECREST_ARTIFACTS", bad).contains(why),
                "{bad}"
            );
        }
    }

    #[test]
    fn include_and_exclude_globs_are_checked() {
        let fx = fixture();
        for var in ["FIRECREST_INCLUDE", "FIRECREST_EXCLUDE"] {
            assert!(
                problem(&fx, var, "src/{a,b").contains("not a valid glob"),
                "{var}"
            );
            assert!(problem(&fx, var, "../up").contains("'..'"), "{var}");
            let lines = ok(&fx, &[(var, "/target\n# comment\n*.o\n")]);
            let globs = if var == "FIRECREST_INCLUDE" {
                lines.include
            } else {
                lines.exclude
            };
            assert_eq!(globs, ["/target", "*.o"]);
        }
    }

    #[test]
    fn remote_dir_is_absolute_and_template_safe() {
        let fx = fixture();
        let dir = |v| ok(&fx, &[("FIRECREST_REMOTE_DIR", v)]).remote_dir;
        assert_eq!(dir("/scratch/u/ci").as_deref(), Some("/scratch/u/ci"));
        assert_eq!(dir("/scratch/u/ci///").as_deref(), Some("/scratch/u/ci"));
        assert_eq!(dir("/").as_deref(), Some("/"));
        for (bad, why) in [
            ("scratch/ci", "absolute path"),
            ("~/ci", "absolute path"),
            ("/scratch/it's", "' \" & < >"),
            ("/scratch/\"x\"", "' \" & < >"),
            ("/scratch/a&b", "' \" & < >"),
            ("/scratch/<x>", "' \" & < >"),
            ("/scratch/../etc", "without '..'"),
        ] {
            assert!(
                problem(&fx, "FIRECREST_REMOTE_DIR", bad).contains(why),
                "{bad}"
            );
        }
    }

    #[test]
    fn workspace_comes_from_the_platform_or_the_current_directory() {
        let fx = fixture();
        std::fs::create_dir(fx.ws.join("sub")).unwrap();
        std::fs::write(fx.ws.join("file"), "").unwrap();
        let sub = fx.ws.join("sub");
        let ws = |pairs: &[(&str, &str)]| {
            let mut env = map(pairs);
            env.insert("FIRECREST_RUN".into(), "true".into());
            env.insert("FIRECREST_BACKEND".into(), "local".into());
            Config::from_env(&env, &fx.ws, &CliFlags::default())
        };
        let sub_str = sub.to_str().unwrap();
        assert_eq!(ws(&[]).unwrap().workspace, fx.ws);
        assert_eq!(ws(&[("CI_PROJECT_DIR", sub_str)]).unwrap().workspace, sub);
        assert_eq!(
            ws(&[
                ("GITHUB_WORKSPACE", sub_str),
                ("CI_PROJECT_DIR", "/nonexistent")
            ])
            .unwrap()
            .workspace,
            sub
        );
        assert_eq!(
            ws(&[
                ("FIRECREST_WORKSPACE", "sub"),
                ("GITHUB_WORKSPACE", "/nonexistent")
            ])
            .unwrap()
            .workspace,
            sub,
            "FIRECREST_WORKSPACE wins and is relative to the current directory"
        );
        assert_eq!(
            ws(&[("FIRECREST_WORKSPACE", "sub/../sub/")])
                .unwrap()
                .workspace,
            sub
        );
        assert_eq!(ws(&[]).unwrap().log_file, fx.ws.join("firecrest-ci.log"));

        for (var, value, why) in [
            ("FIRECREST_WORKSPACE", "missing", "does not exist"),
            ("FIRECREST_WORKSPACE", "file", "not a directory"),
            ("GITHUB_WORKSPACE", "/nonexistent/ws", "does not exist"),
            ("CI_PROJECT_DIR", "/nonexistent/ws", "does not exist"),
        ] {
            let errors = ws(&[(var, value)]).unwrap_err().problems;
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].variables, [var]);
            assert!(errors[0].message.contains(why), "{}", errors[0].message);
        }
        let env = map(&[("FIRECREST_RUN", "true"), ("FIRECREST_BACKEND", "local")]);
        let errors = Config::from_env(&env, &fx.ws.join("gone"), &CliFlags::default()).unwrap_err();
        assert_eq!(errors.problems[0].variables, ["FIRECREST_WORKSPACE"]);
        assert!(errors.problems[0].message.contains("current directory"));
    }

    #[test]
    fn log_file_is_relative_to_the_workspace() {
        let fx = fixture();
        std::fs::create_dir(fx.ws.join("logs")).unwrap();
        let other = tempfile::tempdir().unwrap();
        let other_file = other.path().join("job.log");
        let file = |v: &str| ok(&fx, &[("FIRECREST_LOG_FILE", v)]).log_file;
        assert_eq!(file("out.log"), fx.ws.join("out.log"));
        assert_eq!(file("logs/out.log"), fx.ws.join("logs/out.log"));
        assert_eq!(file(other_file.to_str().unwrap()), other_file);
        for bad in ["missing/out.log", "logs", "/nonexistent/dir/job.log"] {
            assert!(
                problem(&fx, "FIRECREST_LOG_FILE", bad).contains("existing directory"),
                "{bad}"
            );
        }
    }

    // ------------------------------------------------ firecrest

    #[test]
    fn firecrest_with_client_credentials() {
        let fx = fixture();
        let c = ok(&fx, FIRECREST_OK);
        let settings = c.firecrest.unwrap();
        assert_eq!(settings.url, "https://api.example.org/firecrest/v2");
        assert_eq!(settings.system, "daint");
        let Credentials::ClientCredentials {
            token_url,
            client_id,
            client_secret,
        } = settings.credentials
        else {
            panic!("client credentials expected");
        };
        assert_eq!(token_url, "https://auth.example.org/token");
        assert_eq!(client_id, "ci-client");
        assert_eq!(client_secret.expose(), "s3cr3t-client-value");
    }

    #[test]
    fn firecrest_with_an_access_token() {
        let fx = fixture();
        let c = ok(
            &fx,
            &[
                ("FIRECREST_BACKEND", "firecrest"),
                ("FIRECREST_URL", "http://localhost:8000"),
                ("FIRECREST_SYSTEM", "cluster-1"),
                ("FIRECREST_ACCESS_TOKEN", " eyJ.token.sig\n"),
            ],
        );
        let settings = c.firecrest.unwrap();
        assert_eq!(settings.url, "http://localhost:8000");
        assert_eq!(
            settings.credentials,
            Credentials::AccessToken(Secret::new("eyJ.token.sig"))
        );
    }

    #[test]
    fn token_url_alias() {
        let fx = fixture();
        let token_url = |extra: &[(&str, &str)]| {
            let mut vars: Vec<(&str, &str)> = FIRECREST_OK
                .iter()
                .filter(|(k, _)| *k != "FIRECREST_TOKEN_URL")
                .copied()
                .collect();
            vars.extend_from_slice(extra);
            match ok(&fx, &vars).firecrest.unwrap().credentials {
                Credentials::ClientCredentials { token_url, .. } => token_url,
                Credentials::AccessToken(_) => panic!("client credentials expected"),
            }
        };
        assert_eq!(
            token_url(&[("AUTH_TOKEN_URL", "https://alias/token")]),
            "https://alias/token"
        );
        assert_eq!(
            token_url(&[
                ("AUTH_TOKEN_URL", "https://alias/token"),
                ("FIRECREST_TOKEN_URL", "https://main/token"),
            ]),
            "https://main/token"
        );
        assert_eq!(
            token_url(&[
                ("AUTH_TOKEN_URL", "not a url"),
                ("FIRECREST_TOKEN_URL", "https://main/t")
            ]),
            "https://main/t",
            "the alias is not even read when FIRECREST_TOKEN_URL is set"
        );
        assert_eq!(
            token_url(&[
                ("AUTH_TOKEN_URL", "https://alias/token"),
                ("FIRECREST_TOKEN_URL", "")
            ]),
            "https://alias/token",
            "an empty FIRECREST_TOKEN_URL is unset"
        );
        let mut vars = FIRECREST_OK.to_vec();
        vars.retain(|(k, _)| *k != "FIRECREST_TOKEN_URL");
        vars.push(("AUTH_TOKEN_URL", "ftp://alias"));
        let found = problems(&fx, &vars);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].variables, ["AUTH_TOKEN_URL"]);
    }

    #[test]
    fn firecrest_urls_are_validated() {
        let fx = fixture();
        for var in ["FIRECREST_URL", "FIRECREST_TOKEN_URL"] {
            for bad in [
                "api.example.org",
                "ftp://api.example.org",
                "https://user:pw@api.example.org",
                "https://api.example.org/v2?x=1",
                "https://api.example.org/v2#frag",
                "https://",
            ] {
                let mut vars = FIRECREST_OK.to_vec();
                vars.push((var, bad));
                let found = problems(&fx, &vars);
                assert_eq!(found.len(), 1, "{var}={bad}: {found:?}");
                assert_eq!(found[0].variables, [var]);
                assert!(
                    found[0].message.contains("http:// or https:// URL"),
                    "{}",
                    found[0]
                );
            }
        }
        let mut vars = FIRECREST_OK.to_vec();
        vars.push(("FIRECREST_SYSTEM", "da int"));
        let found = problems(&fx, &vars);
        assert_eq!(found[0].variables, ["FIRECREST_SYSTEM"]);
        assert!(found[0].message.contains("cluster name"));
    }

    #[test]
    fn firecrest_backend_requires_url_system_and_credentials() {
        let fx = fixture();
        let found = problems(&fx, &[("FIRECREST_BACKEND", "firecrest")]);
        let named: Vec<Vec<&str>> = found.iter().map(|p| p.variables.clone()).collect();
        assert_eq!(
            named,
            [
                vec!["FIRECREST_URL"],
                vec![
                    "FIRECREST_CLIENT_ID",
                    "FIRECREST_CLIENT_SECRET",
                    "FIRECREST_TOKEN_URL",
                    "FIRECREST_ACCESS_TOKEN"
                ],
                vec!["FIRECREST_SYSTEM"],
            ],
            "in the order of the input table"
        );
        assert!(
            found[0].message.contains("https://"),
            "says what a URL looks like"
        );
        assert!(
            found[0].message.contains("FIRECREST_BACKEND"),
            "offers the other backends"
        );

        // The default backend is firecrest: a missing URL is an error, never local.
        let mut env = env_with(&fx, &[]);
        env.remove("FIRECREST_BACKEND");
        let errors = Config::from_env(&env, &fx.ws, &CliFlags::default()).unwrap_err();
        assert!(errors
            .problems
            .iter()
            .any(|p| p.variables == ["FIRECREST_URL"]));
    }

    #[test]
    fn partial_client_credentials_name_what_is_missing() {
        let fx = fixture();
        for missing in [
            "FIRECREST_CLIENT_ID",
            "FIRECREST_CLIENT_SECRET",
            "FIRECREST_TOKEN_URL",
        ] {
            let vars: Vec<(&str, &str)> = FIRECREST_OK
                .iter()
                .filter(|(k, _)| *k != missing)
                .copied()
                .collect();
            let found = problems(&fx, &vars);
            assert_eq!(found.len(), 1, "{missing}: {found:?}");
            assert_eq!(found[0].variables[0], missing);
            assert!(found[0].message.starts_with("is not set"));
        }
    }

    #[test]
    fn access_token_and_client_secret_together_are_ambiguous() {
        let fx = fixture();
        let mut vars = FIRECREST_OK.to_vec();
        vars.push(("FIRECREST_ACCESS_TOKEN", "tok"));
        let found = problems(&fx, &vars);
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].variables,
            ["FIRECREST_ACCESS_TOKEN", "FIRECREST_CLIENT_SECRET"]
        );
    }

    #[test]
    fn secrets_with_inner_whitespace_are_refused_without_showing_them() {
        let fx = fixture();
        let mut vars = FIRECREST_OK.to_vec();
        vars.push(("FIRECREST_CLIENT_SECRET", "abc\ndef-secret"));
        let errors = load(&fx, &vars).unwrap_err();
        assert_eq!(errors.problems.len(), 1);
        assert_eq!(errors.problems[0].variables, ["FIRECREST_CLIENT_SECRET"]);
        assert!(!errors.to_string().contains("def-secret"));
    }

    #[test]
    fn dry_run_needs_no_url_or_credentials() {
        let fx = fixture();
        let env = env_with(&fx, &[("FIRECREST_BACKEND", "firecrest")]);
        let flags = CliFlags { dry_run: true };
        let c = Config::from_env(&env, &fx.ws, &flags).unwrap();
        assert!(c.dry_run);
        assert_eq!(c.backend, BackendKind::Firecrest);
        assert_eq!(c.firecrest, None);

        let c = ok(
            &fx,
            &[
                ("FIRECREST_BACKEND", "firecrest"),
                ("FIRECREST_DRY_RUN", "true"),
            ],
        );
        assert_eq!(c.firecrest, None);

        // What is given must still be valid, and complete settings are kept.
        let found = problems(
            &fx,
            &[
                ("FIRECREST_DRY_RUN", "yes"),
                ("FIRECREST_BACKEND", "firecrest"),
                ("FIRECREST_URL", "nope"),
            ],
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].variables, ["FIRECREST_URL"]);
        let mut vars = FIRECREST_OK.to_vec();
        vars.push(("FIRECREST_DRY_RUN", "true"));
        assert!(ok(&fx, &vars).firecrest.is_some());

        // --dry-run does not hide a malformed FIRECREST_DRY_RUN.
        let env = env_with(&fx, &[("FIRECREST_DRY_RUN", "maybe")]);
        assert!(Config::from_env(&env, &fx.ws, &flags).is_err());
    }

    // ------------------------------------------------ platform defaults

    #[test]
    fn early_log_level_agrees_with_the_validated_one() {
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(early_log_level(&env(&[])), "info");
        assert_eq!(early_log_level(&env(&[("RUNNER_DEBUG", "1")])), "debug");
        assert_eq!(
            early_log_level(&env(&[
                ("FIRECREST_LOG_LEVEL", "WARN"),
                ("RUNNER_DEBUG", "1")
            ])),
            "warn"
        );
        // An invalid value is reported by validation; logging starts at the default.
        assert_eq!(
            early_log_level(&env(&[("FIRECREST_LOG_LEVEL", "loud")])),
            "info"
        );
    }

    #[test]
    fn log_level_follows_the_ci_debug_mode() {
        let fx = fixture();
        assert_eq!(ok(&fx, &[("RUNNER_DEBUG", "1")]).log_level, "debug");
        assert_eq!(ok(&fx, &[("CI_DEBUG_TRACE", "true")]).log_level, "debug");
        assert_eq!(ok(&fx, &[("CI_DEBUG_TRACE", "TRUE")]).log_level, "debug");
        assert_eq!(ok(&fx, &[("RUNNER_DEBUG", "0")]).log_level, "info");
        assert_eq!(ok(&fx, &[("CI_DEBUG_TRACE", "false")]).log_level, "info");
        assert_eq!(
            ok(
                &fx,
                &[("RUNNER_DEBUG", "1"), ("FIRECREST_LOG_LEVEL", "warn")]
            )
            .log_level,
            "warn"
        );
    }

    #[test]
    fn run_identity_on_github() {
        let fx = fixture();
        let c = ok(
            &fx,
            &[
                ("GITHUB_REPOSITORY", "org/repo"),
                ("GITHUB_RUN_ID", "123"),
                ("GITHUB_RUN_ATTEMPT", "1"),
                ("GITHUB_JOB", "build"),
            ],
        );
        assert_eq!(
            c.identity,
            RunIdentity {
                slug: "org-repo-123-1-build".into(),
                description: "org/repo run 123 attempt 1 job build".into(),
                platform: "github",
            }
        );
        assert_eq!(c.job_name, "fci-org-repo-123-1-build");
        let c = ok(
            &fx,
            &[("GITHUB_JOB", "build"), ("FIRECREST_JOB_NAME", "mine")],
        );
        assert_eq!(c.job_name, "mine");
    }

    #[test]
    fn run_identity_on_gitlab_and_elsewhere() {
        let fx = fixture();
        let c = ok(
            &fx,
            &[
                ("CI_PROJECT_PATH", "group/sub/project"),
                ("CI_PIPELINE_ID", "456"),
                ("CI_JOB_ID", "789"),
            ],
        );
        assert_eq!(c.identity.slug, "group-sub-project-456-789");
        assert_eq!(
            c.identity.description,
            "group/sub/project pipeline 456 job 789"
        );
        assert_eq!(c.identity.platform, "gitlab");

        let c = ok(
            &fx,
            &[
                ("CI_PROJECT_PATH", "group/project"),
                ("CI_PIPELINE_ID", "456"),
            ],
        );
        assert_eq!(c.identity.slug, "local", "incomplete platform variables");
        assert_eq!(c.identity.platform, "local");
    }

    #[test]
    fn slugs_are_safe_and_short() {
        let fx = fixture();
        let repo = format!("Org.Name/{}", "very-long-repository-name".repeat(5));
        let job = format!("job with spaces/and\nnewline {}", "x".repeat(60));
        let c = ok(
            &fx,
            &[
                ("GITHUB_REPOSITORY", &repo),
                ("GITHUB_RUN_ID", "9876543210"),
                ("GITHUB_RUN_ATTEMPT", "2"),
                ("GITHUB_JOB", &job),
            ],
        );
        let made = &c.identity.slug;
        assert!(made.len() <= 80, "{made}");
        assert!(
            made.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch)),
            "{made}"
        );
        assert!(made.starts_with("Org.Name-very-long"), "{made}");
        assert!(
            made.contains("-9876543210-2-job-with-spaces"),
            "ids kept whole: {made}"
        );
        assert!(!made.contains("--"), "{made}");
        assert!(!c.identity.description.contains('\n'));
        assert!(parse_job_name(&c.job_name).is_ok(), "{}", c.job_name);

        assert_eq!(slug_part("--.a b//c.-"), "a-b-c");
        assert_eq!(slug("", &["1"], ""), "1");
        assert_eq!(slug("///", &[], "***"), "local");
    }

    // ------------------------------------------------ reporting

    #[test]
    fn all_problems_are_reported_at_once() {
        let fx = fixture();
        let env = map(&[
            ("FIRECREST_BACKEND", "firecrest"),
            ("FIRECREST_URL", "not-a-url"),
            ("FIRECREST_NODES", "zero"),
            ("FIRECREST_NTASKS", "-1"),
            ("FIRECREST_TIME_LIMIT", "forever"),
            ("FIRECREST_SBATCH_OPTIONS", "--output=x"),
            ("FIRECREST_JOB_NAME", "bad name"),
            ("FIRECREST_CLEANUP", "maybe"),
            ("FIRECREST_COMPRESSION_LEVEL", "11"),
            ("FIRECREST_WORKSPACE", fx.ws.to_str().unwrap()),
        ]);
        let errors = Config::from_env(&env, &fx.ws, &CliFlags::default()).unwrap_err();
        let named: Vec<&str> = errors
            .problems
            .iter()
            .flat_map(|p| p.variables.clone())
            .collect();
        for var in [
            "FIRECREST_URL",
            "FIRECREST_SYSTEM",
            "FIRECREST_ACCESS_TOKEN",
            "FIRECREST_NODES",
            "FIRECREST_NTASKS",
            "FIRECREST_TIME_LIMIT",
            "FIRECREST_SBATCH_OPTIONS",
            "FIRECREST_JOB_NAME",
            "FIRECREST_RUN",
            "FIRECREST_CLEANUP",
            "FIRECREST_COMPRESSION_LEVEL",
        ] {
            assert!(named.contains(&var), "{var} reported in:\n{errors}");
        }
        assert_eq!(errors.problems.len(), 11, "{errors}");
        let order: Vec<usize> = errors
            .problems
            .iter()
            .map(|p| input_order(p.variables[0]))
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] <= w[1]),
            "README order: {errors}"
        );
        let text = errors.to_string();
        assert_eq!(
            text.lines().count(),
            errors.problems.len(),
            "one line per problem"
        );
        assert!(text
            .lines()
            .any(|l| l.starts_with("FIRECREST_NODES: ") && l.ends_with("got \"zero\"")));
    }

    #[test]
    fn problems_name_only_real_variables() {
        let fx = fixture();
        let mut env = map(&[("FIRECREST_BACKEND", "firecrest")]);
        for spec in INPUTS.iter().filter(|s| s.env != "FIRECREST_BACKEND") {
            env.insert(spec.env.to_string(), "\u{7}bad value".into());
        }
        let errors = Config::from_env(&env, &fx.ws, &CliFlags::default()).unwrap_err();
        let named: Vec<&str> = errors
            .problems
            .iter()
            .flat_map(|p| p.variables.clone())
            .collect();
        for spec in INPUTS {
            // The log file is only checked once the workspace is valid.
            if !["FIRECREST_BACKEND", "FIRECREST_LOG_FILE"].contains(&spec.env) {
                assert!(
                    named.contains(&spec.env),
                    "{} reported in:\n{errors}",
                    spec.env
                );
            }
        }
        for problem in &errors.problems {
            assert!(!problem.variables.is_empty(), "{problem}");
            for var in &problem.variables {
                assert!(
                    INPUTS.iter().any(|s| s.env == *var)
                        || [TOKEN_URL_ALIAS, "GITHUB_WORKSPACE", "CI_PROJECT_DIR"].contains(var),
                    "{var} is an input or a platform variable"
                );
            }
        }
        assert!(
            !errors.to_string().contains('\u{7}'),
            "values are shown escaped"
        );
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let fx = fixture();
        let mut vars = FIRECREST_OK.to_vec();
        vars.extend([
            ("FIRECREST_ENV_VARS", "DEPLOY_KEY"),
            ("DEPLOY_KEY", "forwarded-value-42"),
        ]);
        let c = ok(&fx, &vars);
        let debug = format!("{c:?} {c:#?}");
        assert!(!debug.contains("s3cr3t-client-value"), "{debug}");
        assert!(!debug.contains("forwarded-value-42"), "{debug}");
        assert!(debug.contains("DEPLOY_KEY"), "names stay visible");
        assert!(debug.contains("(redacted)"));

        let c = ok(
            &fx,
            &[
                ("FIRECREST_BACKEND", "firecrest"),
                ("FIRECREST_URL", "https://api"),
                ("FIRECREST_SYSTEM", "s"),
                ("FIRECREST_ACCESS_TOKEN", "access-token-value-77"),
            ],
        );
        assert!(!format!("{c:?}").contains("access-token-value-77"));
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
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
