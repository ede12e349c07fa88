//! Entry point: start logging and the runtime, install the signal handlers,
//! load the configuration, run the pipeline, print the error once and exit
//! with the code the outcome table gives.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use firecrest_ci::check;
use firecrest_ci::ci::{Ci, Platform};
use firecrest_ci::config::{CliFlags, Config, Connection};
use firecrest_ci::outcome::{self, codes};
use firecrest_ci::run;
use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

const USAGE: &str = "\
usage: firecrest-ci [--dry-run]
       firecrest-ci check
       firecrest-ci cancel <job-id>
       firecrest-ci --help | --version

Runs a CI job on an HPC cluster. Every input comes from FIRECREST_* environment
variables; see the README for the table of inputs and exit codes.
`check` tests the connection, credentials and inputs without sending a job;
`cancel` cancels a job. Both need only the connection inputs.";

/// How long after the first signal the tool gives up on an orderly stop.
const STOP_WATCHDOG: Duration = Duration::from_millis(9500);

enum Command {
    Run(CliFlags),
    Check,
    Cancel(String),
}

fn main() -> ExitCode {
    run::mark_start();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_args(&args) {
        Ok(Some(command)) => command,
        Ok(None) => return ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("firecrest-ci: {message}\n\n{USAGE}");
            return exit(codes::USAGE);
        }
    };
    let env: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    init_logging(&env);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("firecrest-ci: failed to start the async runtime: {err}");
            return exit(codes::INTERNAL);
        }
    };
    let code = runtime.block_on(async_main(command, env));
    runtime.shutdown_timeout(Duration::from_secs(1));
    exit(code)
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn parse_args(args: &[String]) -> Result<Option<Command>, String> {
    let mut flags = CliFlags { dry_run: false };
    match args.first().map(String::as_str) {
        Some("cancel") => {
            return match &args[1..] {
                [job] => Ok(Some(Command::Cancel(job.clone()))),
                _ => Err("cancel takes exactly one job id".to_string()),
            }
        }
        Some("check") => {
            return match &args[1..] {
                [] => Ok(Some(Command::Check)),
                _ => Err("check takes no arguments".to_string()),
            }
        }
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            return Ok(None);
        }
        Some("--version" | "-V") => {
            println!("firecrest-ci {}", env!("CARGO_PKG_VERSION"));
            return Ok(None);
        }
        _ => {}
    }
    for arg in args {
        match arg.as_str() {
            "--dry-run" => flags.dry_run = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(Command::Run(flags)))
}

/// Logs go to stderr without timestamps (the CI adds them); debug when the
/// CI runs in debug mode, unless FIRECREST_LOG_LEVEL says otherwise.
fn init_logging(env: &BTreeMap<String, String>) {
    let level = firecrest_ci::config::early_log_level(env);
    // Our own crate at the chosen level; dependencies stay at warn so that
    // debug logs never print HTTP internals (headers carry tokens).
    let filter = tracing_subscriber::EnvFilter::new(format!("warn,firecrest_ci={level}"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .init();
}

async fn async_main(command: Command, env: BTreeMap<String, String>) -> i32 {
    let stop = match install_signal_handlers() {
        Ok(stop) => stop,
        Err(err) => {
            eprintln!("firecrest-ci: failed to install signal handlers: {err}");
            return codes::INTERNAL;
        }
    };
    let cwd = match std::env::current_dir() {
        Ok(cwd) => cwd,
        Err(err) => {
            eprintln!("firecrest-ci: cannot read the current directory: {err}");
            return codes::CONFIG;
        }
    };
    // A run reads every input; the other commands only the connection.
    let (result, ci) = match command {
        Command::Run(flags) => {
            let config = match Config::from_env(&env, &cwd, &flags) {
                Ok(config) => config,
                Err(errors) => return config_failed(&ci_for(&env, &cwd), &errors),
            };
            let ci = ci_for(&env, &config.workspace);
            (run::run(config, ci.clone(), stop).await, ci)
        }
        Command::Check | Command::Cancel(_) => {
            let connection = match Connection::from_env(&env) {
                Ok(connection) => connection,
                Err(errors) => return config_failed(&ci_for(&env, &cwd), &errors),
            };
            let ci = ci_for(&env, &cwd);
            let result = match command {
                Command::Cancel(job) => run::cancel_job(&connection, &ci, &job).await,
                _ => check::check(&connection, &ci).await,
            };
            (result, ci)
        }
    };
    let (code, err) = match result {
        Ok(code) => (code, None),
        Err(err) => (outcome::exit_code_for_error(&err), Some(err)),
    };
    set_exit_code_output(&ci, code);
    ci.finish();
    if let Some(err) = err {
        print_error(&ci, &err);
    }
    code
}

/// The run's error, once, with its whole chain: on GitHub as an error
/// annotation (the log shows it too, and the run's summary page lists it),
/// elsewhere as a log line.
fn print_error(ci: &Ci, err: &anyhow::Error) {
    if ci.platform() == Platform::GitHub {
        ci.error("firecrest-ci failed", &format!("{err:#}"));
    } else {
        tracing::error!("{err:#}");
    }
}

fn config_failed(ci: &Ci, errors: &firecrest_ci::config::ConfigErrors) -> i32 {
    tracing::error!("invalid configuration:\n{errors}");
    set_exit_code_output(ci, codes::CONFIG);
    codes::CONFIG
}

/// Written here, on every end: a run that ended in an error, or that CI
/// stopped before its job was submitted, printed no final report, and a
/// later step (`if: failure()`, an `after_script`) still reads its code.
fn set_exit_code_output(ci: &Ci, code: i32) {
    if let Err(err) = ci.set_output("exit-code", &code.to_string()) {
        tracing::warn!("could not write the step output exit-code: {err:#}");
    }
}

/// The CI platform's channels. GitLab's `artifacts: reports: dotenv:` paths
/// are relative to the project directory (else the workspace).
fn ci_for(env: &BTreeMap<String, String>, workspace: &std::path::Path) -> Arc<Ci> {
    let dotenv = (env.get("GITLAB_CI").is_some_and(|v| v == "true")).then(|| {
        env.get("CI_PROJECT_DIR")
            .filter(|dir| !dir.is_empty())
            .map_or_else(|| workspace.to_path_buf(), std::path::PathBuf::from)
            .join("firecrest-ci.env")
    });
    Arc::new(Ci::detect(env, dotenv))
}

/// The first SIGINT, SIGTERM or SIGHUP asks for an orderly stop (cancel the
/// job, drain, clean up); a second one, or the watchdog, exits at once.
fn install_signal_handlers() -> std::io::Result<watch::Receiver<Option<i32>>> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let first = tokio::select! {
            _ = interrupt.recv() => Signal::SIGINT,
            _ = terminate.recv() => Signal::SIGTERM,
            _ = hangup.recv() => Signal::SIGHUP,
        };
        tracing::warn!(
            "received {}: cancelling the job (a second signal exits at once)",
            first.as_str()
        );
        let _ = tx.send(Some(first as i32));
        let code = outcome::ci_signal_code(first as i32);
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
            _ = hangup.recv() => {}
            _ = tokio::time::sleep(STOP_WATCHDOG) => {
                tracing::error!("stopping took too long; exiting now");
            }
        }
        std::process::exit(code);
    });
    Ok(rx)
}
