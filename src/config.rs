//! Inputs from the environment -> a validated [`Config`]. No network I/O:
//! every problem is found and reported at once, before anything is sent.
//! (Parsing and validation to be written; the input table is the single
//! source of truth for the README, `action.yml` and the GitLab templates.)

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
        "FirecREST v2 API base URL, e.g. https://api.cscs.ch/hpc/firecrest/v2",
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
        "OAuth2 client id",
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
        "cluster name as FirecREST knows it, e.g. daint",
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
        "local directory to pack and send",
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
        "names of environment variables to forward to the job, one per line",
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
        "base directory on the cluster for per-run directories",
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
        "local file that receives the job's whole output",
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
