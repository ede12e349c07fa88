//! Inputs from the environment -> a validated [`Config`]. No network I/O:
//! every problem is found and reported at once, before anything is sent, and
//! each message names the variable it comes from and what a valid value is.
//!
//! The files: `inputs.rs` (the table), `values.rs` (scalar parsers and the
//! problem list), `slurm.rs` (Slurm values and reserved options),
//! `connection.rs` (backend, FirecREST, credentials), `identity.rs` (run
//! identity), `resolve.rs` (the file-system phase).
//!
//! Two phases, as ripgrep's low and high arguments: `parse` reads every
//! input through its entry in the [`INPUTS`] table into typed values without
//! any I/O, then `resolve` holds the result against the file system (the
//! workspace, the script, the log file's directory, in `resolve.rs`). Both add to one list of
//! problems, so every problem is still reported at once. The environment
//! arrives as a map, so tests never touch the process environment. The
//! [`INPUTS`] table is the single source of truth for the README,
//! `action.yml` and the GitLab templates.

mod connection;
mod identity;
mod inputs;
mod resolve;
pub mod slurm;
mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::secret::Secret;
pub use crate::transfer::TransferThreshold;

pub use connection::{Connection, Credentials, FirecrestSettings};
pub use identity::RunIdentity;
pub use inputs::{inputs_markdown_table, unknown_input_warnings, InputSpec, INPUTS};
pub use slurm::{Gpus, Nodes, Resources, SlurmTime};
pub use values::{ConfigErrors, ConfigProblem};

use inputs::Inputs;
use values::{
    globs, parse_artifacts_when, parse_bool, parse_cleanup, parse_compression_level,
    parse_duration, parse_job_name, parse_log_level, parse_retries, relative_path, shown, Problems,
    DEFAULT_COMPRESSION_LEVEL,
};

/// Flags from the command line, which win over the environment.
#[derive(Debug, Clone, Default)]
pub struct CliFlags {
    /// `--dry-run`: plan only, as `FIRECREST_DRY_RUN=true`.
    pub dry_run: bool,
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

/// What the job runs in the workspace; the batch script renders the same
/// type (`script::Command`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserCommand {
    /// Commands from `run`, executed like a CI `run:` block
    /// (`set -eo pipefail`).
    Inline(String),
    /// A script from `script`: a normal relative path inside the workspace
    /// (`/`-separated, no `..`) that exists on this machine; run as a program
    /// when it starts with `#!`, else with `bash`.
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

/// How often to look at the job, and how long to wait for the API: what the
/// inputs set, and the watcher's fixed rhythm (defaults need no tuning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollSettings {
    /// Between two job-state reads while the output shows the job running:
    /// the safety net for a job that ends without a word.
    pub state_interval: Duration,
    /// Between two log reads while output flows.
    pub log_interval: Duration,
    /// The longest gap between log reads when the job is quiet (for under
    /// `silent_after`: the watcher allows longer gaps after that) ...
    pub log_max_interval: Duration,
    /// ... and this (or `log_max_interval` if longer) once the output was
    /// quiet for `silent_after`.
    pub silent_interval: Duration,
    pub silent_after: Duration,
    /// How long a submitted job may stay unknown to the scheduler.
    pub submit_grace: Duration,
    /// How long the state may fail to be read before the run gives up.
    pub error_budget: Duration,
    /// After the job ended: keep reading until the output was quiet this long ...
    pub drain_quiet: Duration,
    /// ... but never longer than this.
    pub drain_max: Duration,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
}

impl Default for PollSettings {
    fn default() -> Self {
        Self {
            // A job killed with its node prints nothing more: this is how
            // long such a job may go unnoticed. Markers in the output say
            // everything else, so this costs little (one read a minute; 45 s
            // made a 10-minute silent job cost 10.1 requests a minute, over
            // issue 12's 10; the issue asks for 30-60 s).
            state_interval: Duration::from_secs(60),
            log_interval: Duration::from_secs(1),
            // A burst after a quiet stretch is shown within this (plus one
            // read): issue 12's line-delay target is a 95th percentile of
            // 3 s on a job with bursts after quiet minutes.
            log_max_interval: Duration::from_millis(2500),
            // Quiet for longer than the quiet stretches of an ordinary job
            // (a minute of compiling, a test that sleeps): a job silent for
            // minutes then costs 4 output reads a minute (issue 12: at most
            // 10 requests a minute in all for a job silent for 10 minutes).
            silent_interval: Duration::from_secs(15),
            silent_after: Duration::from_secs(75),
            submit_grace: Duration::from_secs(120),
            error_budget: Duration::from_secs(600),
            drain_quiet: Duration::from_secs(2),
            drain_max: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
        }
    }
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

impl Config {
    /// Reads and validates every input. `env` is the process environment (or
    /// a test's map), `cwd` the directory relative paths start from. Performs
    /// no network I/O; looks at the file system only (in the second phase)
    /// to check the workspace, the script and the log file's directory.
    pub fn from_env(
        env: &BTreeMap<String, String>,
        cwd: &Path,
        flags: &CliFlags,
    ) -> Result<Config, ConfigErrors> {
        let mut p = Problems::default();
        let parsed = parse(env, flags, &mut p);
        let config = resolve(parsed, cwd, &mut p);
        p.into_result()?;
        Ok(config)
    }

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

/// The first phase's result: every input as a typed value, nothing yet
/// looked up on disk.
struct Parsed<'a> {
    connection: Connection,
    dry_run: bool,
    identity: RunIdentity,
    /// `None` when the given workspace was refused (a problem was added).
    workspace: Option<resolve::WorkspaceInput<'a>>,
    job_name: String,
    job_name_derived: bool,
    /// A script's path is not yet checked against the workspace.
    command: Option<UserCommand>,
    include: Vec<String>,
    exclude: Vec<String>,
    gitignore: bool,
    include_git: bool,
    env_vars: BTreeMap<String, Secret>,
    artifacts: Vec<String>,
    artifacts_when: ArtifactsWhen,
    cleanup: Cleanup,
    timeout: Option<Duration>,
    log_level: String,
    /// As given; checked once the workspace is known.
    log_file: Option<&'a str>,
    separate_stderr: bool,
    compression_level: u32,
    retries: u32,
}

/// Phase one: every input through its table entry, into types. No I/O.
fn parse<'a>(env: &'a BTreeMap<String, String>, flags: &CliFlags, p: &mut Problems) -> Parsed<'a> {
    let raw = Inputs::new(env);
    let dry_run_input = p.input(&raw, &inputs::DRY_RUN, parse_bool).unwrap_or(false);
    let dry_run = flags.dry_run || dry_run_input;
    let connection = connection::connection(&raw, dry_run, p);
    let identity = RunIdentity::from_env(&raw);
    let job_name = p
        .input(&raw, &inputs::JOB_NAME, parse_job_name)
        .unwrap_or_else(|| identity::default_job_name(&identity));
    Parsed {
        connection,
        dry_run,
        workspace: resolve::workspace_input(&raw, p),
        job_name_derived: raw.get(&inputs::JOB_NAME).is_none(),
        job_name,
        identity,
        command: user_command(&raw, p),
        include: globs(p, inputs::INCLUDE.env, raw.get(&inputs::INCLUDE), false),
        exclude: globs(p, inputs::EXCLUDE.env, raw.get(&inputs::EXCLUDE), false),
        gitignore: p
            .input(&raw, &inputs::GITIGNORE, parse_bool)
            .unwrap_or(true),
        include_git: p
            .input(&raw, &inputs::INCLUDE_GIT, parse_bool)
            .unwrap_or(false),
        env_vars: forwarded_vars(p, &raw),
        artifacts: globs(p, inputs::ARTIFACTS.env, raw.get(&inputs::ARTIFACTS), true),
        artifacts_when: p
            .input(&raw, &inputs::ARTIFACTS_WHEN, parse_artifacts_when)
            .unwrap_or(ArtifactsWhen::Always),
        cleanup: p
            .input(&raw, &inputs::CLEANUP, parse_cleanup)
            .unwrap_or(Cleanup::Always),
        timeout: p.input(&raw, &inputs::TIMEOUT, parse_duration),
        log_level: p
            .input(&raw, &inputs::LOG_LEVEL, parse_log_level)
            .unwrap_or_else(|| default_log_level(&raw).to_string()),
        log_file: raw.get(&inputs::LOG_FILE),
        separate_stderr: p
            .input(&raw, &inputs::SEPARATE_STDERR, parse_bool)
            .unwrap_or(false),
        compression_level: p
            .input(&raw, &inputs::COMPRESSION_LEVEL, parse_compression_level)
            .unwrap_or(DEFAULT_COMPRESSION_LEVEL),
        retries: p.input(&raw, &inputs::RETRIES, parse_retries).unwrap_or(0),
    }
}

/// Phase two: the parsed inputs held against the file system; its problems
/// join the first phase's. The result is only used when there are none.
fn resolve(parsed: Parsed<'_>, cwd: &Path, p: &mut Problems) -> Config {
    let workspace = parsed
        .workspace
        .and_then(|input| resolve::workspace(input, cwd, p));
    let command = match (parsed.command, workspace.as_deref()) {
        (Some(UserCommand::ScriptFile(path)), Some(workspace)) => {
            resolve::script(workspace, path, p)
        }
        // The script cannot be checked without a workspace, which was reported.
        (Some(UserCommand::ScriptFile(_)), None) => None,
        (command, _) => command,
    };
    let log_file = workspace
        .as_deref()
        .and_then(|workspace| resolve::log_file(parsed.log_file, workspace, p));
    // With problems the result is dropped; these fallbacks only keep this
    // free of unwrap().
    let workspace = workspace.unwrap_or_else(|| cwd.to_path_buf());
    let log_file = log_file.unwrap_or_else(|| workspace.join(resolve::DEFAULT_LOG_FILE));
    let Connection {
        backend,
        firecrest,
        resources,
        remote_dir,
        poll,
        transfer_threshold,
    } = parsed.connection;
    Config {
        backend,
        firecrest,
        resources,
        job_name: parsed.job_name,
        job_name_derived: parsed.job_name_derived,
        command: command.unwrap_or_else(|| UserCommand::Inline(String::new())),
        workspace,
        include: parsed.include,
        exclude: parsed.exclude,
        gitignore: parsed.gitignore,
        include_git: parsed.include_git,
        env_vars: parsed.env_vars,
        artifacts: parsed.artifacts,
        artifacts_when: parsed.artifacts_when,
        remote_dir,
        cleanup: parsed.cleanup,
        timeout: parsed.timeout,
        dry_run: parsed.dry_run,
        log_level: parsed.log_level,
        poll,
        identity: parsed.identity,
        log_file,
        separate_stderr: parsed.separate_stderr,
        transfer_threshold,
        compression_level: parsed.compression_level,
        retries: parsed.retries,
    }
}

/// `run` or `script`, exactly one; a script's path is checked against the
/// workspace in the second phase.
fn user_command(raw: &Inputs, p: &mut Problems) -> Option<UserCommand> {
    const BOTH: [&str; 2] = [inputs::RUN.env, inputs::SCRIPT.env];
    match (raw.get(&inputs::RUN), raw.get(&inputs::SCRIPT)) {
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
        (None, Some(_)) => p
            .input(raw, &inputs::SCRIPT, relative_path)
            .map(UserCommand::ScriptFile),
    }
}

/// The names in `env-vars`, each with its value from this environment.
fn forwarded_vars(p: &mut Problems, raw: &Inputs) -> BTreeMap<String, Secret> {
    const VAR: &str = inputs::ENV_VARS.env;
    let env = raw.env();
    let mut vars = BTreeMap::new();
    let Some(text) = raw.get(&inputs::ENV_VARS) else {
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

/// The inputs' poll settings over the watcher's fixed defaults.
fn poll_settings(raw: &Inputs, p: &mut Problems) -> PollSettings {
    let defaults = PollSettings::default();
    let log_interval = p
        .input(raw, &inputs::LOG_INTERVAL, parse_duration)
        .unwrap_or(defaults.log_interval);
    PollSettings {
        state_interval: p
            .input(raw, &inputs::POLL_INTERVAL, parse_duration)
            .unwrap_or(defaults.state_interval),
        log_interval,
        log_max_interval: log_interval.max(defaults.log_max_interval),
        submit_grace: p
            .input(raw, &inputs::SUBMIT_GRACE, parse_duration)
            .unwrap_or(defaults.submit_grace),
        request_timeout: p
            .input(raw, &inputs::REQUEST_TIMEOUT, parse_duration)
            .unwrap_or(defaults.request_timeout),
        ..defaults
    }
}

/// The log level to start logging with, before the configuration is
/// validated (its errors are logged): `FIRECREST_LOG_LEVEL` when valid, else
/// the CI's debug mode. [`Config::log_level`] says the same once validated.
pub fn early_log_level(env: &BTreeMap<String, String>) -> String {
    let raw = Inputs::new(env);
    raw.get(&inputs::LOG_LEVEL)
        .and_then(|v| parse_log_level(v.trim()).ok())
        .unwrap_or_else(|| default_log_level(&raw).to_string())
}

fn default_log_level(raw: &Inputs) -> &'static str {
    let github_debug = raw.platform("RUNNER_DEBUG") == Some("1");
    let gitlab_debug = raw
        .platform("CI_DEBUG_TRACE")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if github_debug || gitlab_debug {
        "debug"
    } else {
        "info"
    }
}

#[cfg(test)]
mod testing;

#[cfg(test)]
mod tests {
    use super::inputs::{input_order, TOKEN_URL_ALIAS};
    use super::*;
    use crate::config::testing::*;

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
                time_limit: SlurmTime::parse_slurm("01:30:00"),
                nodes: Nodes::parse("1-4").ok(),
                ntasks: Some(8),
                gpus: Gpus::parse("a100:4").ok(),
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
                log_max_interval: Duration::from_millis(2500),
                submit_grace: Duration::from_secs(300),
                request_timeout: Duration::from_secs(45),
                ..PollSettings::default()
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
        assert_eq!(c.poll.state_interval, Duration::from_secs(60));
        assert_eq!(c.poll.log_interval, Duration::from_secs(1));
        assert_eq!(c.poll.log_max_interval, Duration::from_millis(2500));
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

    #[test]
    fn artifacts_when_and_cleanup_decide_by_success() {
        assert!(ArtifactsWhen::Always.matches(true) && ArtifactsWhen::Always.matches(false));
        assert!(ArtifactsWhen::OnSuccess.matches(true) && !ArtifactsWhen::OnSuccess.matches(false));
        assert!(!ArtifactsWhen::OnFailure.matches(true) && ArtifactsWhen::OnFailure.matches(false));
        assert!(Cleanup::Always.should_remove(true) && Cleanup::Always.should_remove(false));
        assert!(Cleanup::OnSuccess.should_remove(true) && !Cleanup::OnSuccess.should_remove(false));
        assert!(!Cleanup::Never.should_remove(true) && !Cleanup::Never.should_remove(false));
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
}
