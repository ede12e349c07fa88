//! Inputs from the environment -> a validated [`Config`]. No network I/O:
//! every problem is found and reported at once, before anything is sent, and
//! each message names the variable it comes from and what a valid value is.
//!
//! Two phases: `envy` reads every `FIRECREST_*` variable into [`RawInputs`]
//! (all `Option<String>`, empty = unset), then [`Config::from_env`] turns the
//! raw strings into typed values. The environment arrives as a map, so tests
//! never touch the process environment. The [`INPUTS`] table is the single
//! source of truth for the README, `action.yml` and the GitLab templates.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;

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
        "10s",
        "how often the job state is read while it runs",
    ),
    input(
        "log-interval",
        "FIRECREST_LOG_INTERVAL",
        "",
        "1s",
        "how often new output is read while output flows (it backs off when quiet)",
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
        "256MiB",
        "archives larger than this go through the S3 transfer instead of direct uploads",
    ),
    input(
        "compression-level",
        "FIRECREST_COMPRESSION_LEVEL",
        "",
        "6",
        "gzip level for the workspace archive, 1 (fast) to 9 (small)",
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
    /// In input order; never empty.
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
    /// Between two job-state reads.
    pub state_interval: Duration,
    /// Between two log reads while output flows.
    pub log_interval: Duration,
    /// The longest gap between log reads when the job is quiet.
    pub log_max_interval: Duration,
    /// How long a submitted job may stay unknown to the scheduler.
    pub submit_grace: Duration,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
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
    /// Archives larger than this many bytes go through the S3 transfer.
    pub transfer_threshold: u64,
    /// gzip level, 1..=9.
    pub compression_level: u32,
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

        let backend = p
            .parse("FIRECREST_BACKEND", raw.backend.as_deref(), parse_backend)
            .unwrap_or(BackendKind::Firecrest);
        let dry_run_input = p
            .parse("FIRECREST_DRY_RUN", raw.dry_run.as_deref(), parse_bool)
            .unwrap_or(false);
        let dry_run = flags.dry_run || dry_run_input;
        let firecrest = match backend {
            BackendKind::Firecrest => firecrest_settings(&raw, env, dry_run, &mut p),
            BackendKind::Slurm | BackendKind::Local => None,
        };

        let identity = RunIdentity::from_env(env);
        let workspace = resolve_workspace(&raw, env, cwd, &mut p);
        let resources = resources(&raw, &mut p);
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
        let remote_dir = p.parse(
            "FIRECREST_REMOTE_DIR",
            raw.remote_dir.as_deref(),
            parse_remote_dir,
        );
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
        let poll = poll_settings(&raw, &mut p);
        let log_file = log_file(&raw, workspace.as_deref(), &mut p);
        let separate_stderr = p
            .parse(
                "FIRECREST_SEPARATE_STDERR",
                raw.separate_stderr.as_deref(),
                parse_bool,
            )
            .unwrap_or(false);
        let transfer_threshold = p
            .parse(
                "FIRECREST_TRANSFER_THRESHOLD",
                raw.transfer_threshold.as_deref(),
                parse_size,
            )
            .unwrap_or(DEFAULT_TRANSFER_THRESHOLD);
        let compression_level = p
            .parse(
                "FIRECREST_COMPRESSION_LEVEL",
                raw.compression_level.as_deref(),
                parse_compression_level,
            )
            .unwrap_or(DEFAULT_COMPRESSION_LEVEL);

        if !p.0.is_empty() {
            return Err(ConfigErrors { problems: p.0 });
        }
        // Without problems the workspace and log file were resolved; the
        // fallbacks only keep this free of unwrap().
        let workspace = workspace.unwrap_or_else(|| cwd.to_path_buf());
        let log_file = log_file.unwrap_or_else(|| workspace.join(DEFAULT_LOG_FILE));
        Ok(Config {
            backend,
            firecrest,
            resources,
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
        })
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
    let credentials = credentials(raw, env, dry_run, p);

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

/// An `#SBATCH` option the tool sets itself, or that has an input of its own.
struct Reserved {
    long: &'static str,
    short: Option<char>,
    reason: &'static str,
}

const RESERVED_OPTIONS: &[Reserved] = &[
    Reserved { long: "output", short: Some('o'), reason: "firecrest-ci sets the output file to stream the job's output; the local copy goes to log-file (FIRECREST_LOG_FILE)" },
    Reserved { long: "error", short: Some('e'), reason: "firecrest-ci sets the error file; use separate-stderr (FIRECREST_SEPARATE_STDERR)" },
    Reserved { long: "job-name", short: Some('J'), reason: "use job-name (FIRECREST_JOB_NAME)" },
    Reserved { long: "chdir", short: Some('D'), reason: "the job runs in its per-run directory; use remote-dir (FIRECREST_REMOTE_DIR) for its base" },
    Reserved { long: "wrap", short: None, reason: "firecrest-ci writes the batch script; use run (FIRECREST_RUN) or script (FIRECREST_SCRIPT)" },
    Reserved { long: "export", short: None, reason: "firecrest-ci sets the job's environment; use env-vars (FIRECREST_ENV_VARS)" },
    Reserved { long: "export-file", short: None, reason: "firecrest-ci sets the job's environment; use env-vars (FIRECREST_ENV_VARS)" },
    Reserved { long: "dependency", short: Some('d'), reason: "firecrest-ci sets dependencies itself (staged uploads) and a foreign one could keep the job pending forever; order CI jobs instead" },
    Reserved { long: "array", short: Some('a'), reason: "firecrest-ci watches one job, not a job array" },
    Reserved { long: "wait", short: Some('W'), reason: "firecrest-ci waits for the job itself" },
    Reserved { long: "hold", short: Some('H'), reason: "a held job never starts and the run would wait forever" },
    Reserved { long: "parsable", short: None, reason: "firecrest-ci reads sbatch's reply itself" },
    Reserved { long: "test-only", short: None, reason: "the job would never run; use dry-run (FIRECREST_DRY_RUN)" },
    Reserved { long: "open-mode", short: None, reason: "firecrest-ci reads the output file by byte offset and needs it fresh" },
    Reserved { long: "account", short: Some('A'), reason: "use account (FIRECREST_ACCOUNT)" },
    Reserved { long: "partition", short: Some('p'), reason: "use partition (FIRECREST_PARTITION)" },
    Reserved { long: "reservation", short: None, reason: "use reservation (FIRECREST_RESERVATION)" },
    Reserved { long: "constraint", short: Some('C'), reason: "use constraint (FIRECREST_CONSTRAINT)" },
    Reserved { long: "time", short: Some('t'), reason: "use time-limit (FIRECREST_TIME_LIMIT)" },
    Reserved { long: "nodes", short: Some('N'), reason: "use nodes (FIRECREST_NODES)" },
    Reserved { long: "ntasks", short: Some('n'), reason: "use ntasks (FIRECREST_NTASKS)" },
    Reserved { long: "gpus", short: Some('G'), reason: "use gpus (FIRECREST_GPUS)" },
];

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
        if let Some(reserved) = RESERVED_OPTIONS.iter().find(|r| r.long.starts_with(name)) {
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
    if let Some(reserved) = RESERVED_OPTIONS.iter().find(|r| r.short == Some(letter)) {
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
            .unwrap_or(Duration::from_secs(10)),
        log_interval,
        log_max_interval: log_interval.max(Duration::from_secs(10)),
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

const DEFAULT_TRANSFER_THRESHOLD: u64 = 256 * 1024 * 1024;

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

const DEFAULT_COMPRESSION_LEVEL: u32 = 6;

fn parse_compression_level(value: &str) -> Result<u32, String> {
    parse_positive(value)
        .filter(|level| (1..=9).contains(level))
        .ok_or_else(|| "must be a gzip level from 1 (fast) to 9 (small)".to_string())
}
