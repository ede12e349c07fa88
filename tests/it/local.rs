//! Whole runs of the real binary through the `local` backend (bash on this
//! machine; no cluster, never skipped): the exit-code rows a job can reach,
//! cancellation by CI with the process tree gone, the README's example job,
//! the dry run of this repository, and bad inputs, each of which must end in
//! exit 78 naming its variable before anything runs. The rows it shares with
//! the `slurm` backend come from the table in `backend_rows`.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use firecrest_ci::config::INPUTS;
use firecrest_ci::outcome::codes;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::backend_rows::{backend_rows, job_lines, Row, Way};
use crate::harness::{
    assert_stopped_within_grace, binary, job_processes, readme_code, readme_exit_code, unique_name,
    wait, wait_until, Outcome, Setup,
};

/// Generous bound for a short run: the machine may be loaded (tests share
/// it with other builds), and a deadline only costs time on failure.
const LIMIT: Duration = Duration::from_secs(120);

/// A local run with a unique job name and its own base for run directories.
fn setup(tag: &str, run: &str) -> (Setup, String) {
    let name = unique_name(tag);
    let mut setup = Setup::local(run);
    setup.set("FIRECREST_JOB_NAME", name.clone());
    setup.with_remote_dir();
    (setup, name)
}

/// No process of the job (by its SLURM_JOB_NAME or `marker` on its command
/// line) and no run directory left.
fn assert_nothing_left(setup: &Setup, name: &str, marker: &str) {
    assert!(
        wait_until(Duration::from_secs(60), || job_processes(name, marker)
            .is_empty()),
        "processes of job {name} are still running: {:?}",
        job_processes(name, marker)
    );
    assert_eq!(setup.left_behind(), Vec::<PathBuf>::new());
}

// ------------------------------------------------------------ exit codes ---

/// The local backend's way through the rows it shares with `slurm`.
pub(crate) struct Local;

impl Way for Local {
    const LIMIT: Duration = LIMIT;

    fn skipped(_test: &str) -> bool {
        false
    }

    fn setup(tag: &str, run: &str) -> (Setup, String) {
        setup(tag, run)
    }

    fn assert_state(out: &Outcome, _name: &str, row: &Row) {
        if let Some(state) = row.state {
            let shown = format!("{state}: exit code {}", row.code);
            assert!(out.stdout.contains(&shown), "{}", out.both());
        }
    }

    fn assert_nothing_left(setup: &Setup, name: &str) {
        assert_nothing_left(setup, name, name);
    }
}

backend_rows!(Local);

#[test]
fn killed_by_a_signal_gives_128_plus_the_signal() {
    // The commands' subshell outlives the killed batch shell; the run must
    // not wait for its `sleep 300`.
    let (setup, name) = setup(
        "kill9",
        "echo before-kill\nkill -9 $$\nsleep 300\necho never",
    );
    let child = setup.spawn();
    assert!(
        wait_until(LIMIT, || setup.job_output_contains("before-kill")),
        "the job never started"
    );
    let killed = Instant::now();
    let out = wait(child, LIMIT, killed);
    assert_eq!(readme_code("killed by signal S"), "128+S");
    assert_eq!(out.code, 128 + 9, "{}", out.both());
    assert!(out.stdout.contains("before-kill"), "{}", out.both());
    assert!(!out.stdout.contains("never"), "{}", out.both());
    assert!(
        out.elapsed < Duration::from_secs(60),
        "{:?} after the kill",
        out.elapsed
    );
    assert_nothing_left(&setup, &name, &name);
}

#[test]
fn time_limit_gives_124() {
    // Long enough for the job's shell to start on a loaded machine: the
    // local backend counts the limit from the submission.
    let (mut setup, name) = setup("timeout", "echo fcit-started\nsleep 600\necho never");
    setup.set("FIRECREST_TIME_LIMIT", "30s");
    let started = Instant::now();
    let mut child = setup.spawn();
    assert!(
        wait_until(LIMIT, || setup.job_output_contains("fcit-started")),
        "the job never started"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before the test saw the job start"
    );
    let out = wait(child, LIMIT + Duration::from_secs(30), started);
    assert_eq!(readme_exit_code("job time limit"), codes::TIMEOUT);
    assert_eq!(out.code, codes::TIMEOUT, "{}", out.both());
    assert!(out.elapsed >= Duration::from_secs(30), "{:?}", out.elapsed);
    assert_eq!(job_lines(&out.stdout).first(), Some(&"fcit-started"));
    assert!(!out.stdout.contains("never"), "{}", out.both());
    assert_nothing_left(&setup, &name, &name);
}

/// The README's table and the compiled codes agree on what these tests check.
#[test]
fn readme_exit_codes_are_the_compiled_ones() {
    for (meaning, code) in [
        ("success", codes::SUCCESS),
        ("configuration error", codes::CONFIG),
        ("job time limit", codes::TIMEOUT),
        ("cancelled on the cluster", codes::CANCELLED_ON_CLUSTER),
        ("cancelled by CI (SIGINT)", codes::CI_SIGINT),
        ("cancelled by CI (SIGTERM)", codes::CI_SIGTERM),
        ("permission denied", codes::NOPERM),
    ] {
        assert_eq!(readme_exit_code(meaning), code, "{meaning}");
    }
}

// ---------------------------------------------------------- cancellation ---

/// Sends `signal` to the tool while the job runs; returns the outcome,
/// timed from the signal.
fn stop_with(signal: Signal, tag: &str) -> (Outcome, Setup, String, String) {
    let marker = unique_name("marker");
    let run = format!("echo fcit-running\n( exec -a {marker} sleep 300 ) &\nwait\necho never");
    let (setup, name) = setup(tag, &run);
    let child = setup.spawn();
    assert!(
        wait_until(LIMIT, || setup.job_output_contains("fcit-running")),
        "the job never started"
    );
    assert!(
        wait_until(LIMIT, || !job_processes(&name, &marker).is_empty()),
        "no process of the job found"
    );
    let signalled = Instant::now();
    kill(Pid::from_raw(child.id() as i32), signal).unwrap();
    let out = wait(child, Duration::from_secs(20), signalled);
    (out, setup, name, marker)
}

#[test]
fn sigterm_to_the_tool_cancels_the_job_and_gives_143() {
    let (out, setup, name, marker) = stop_with(Signal::SIGTERM, "sigterm");
    assert_eq!(
        readme_exit_code("cancelled by CI (SIGTERM)"),
        codes::CI_SIGTERM
    );
    assert_stopped_within_grace(&out, codes::CI_SIGTERM);
    assert!(!out.stdout.contains("never"), "{}", out.both());
    assert!(
        out.stdout.contains("firecrest-ci: stopped by SIGTERM"),
        "{}",
        out.both()
    );
    assert_eq!(job_processes(&name, &marker), Vec::<i32>::new());
    assert_nothing_left(&setup, &name, &marker);
}

#[test]
fn sigint_to_the_tool_cancels_the_job_and_gives_130() {
    let (out, setup, name, marker) = stop_with(Signal::SIGINT, "sigint");
    assert_eq!(
        readme_exit_code("cancelled by CI (SIGINT)"),
        codes::CI_SIGINT
    );
    assert_stopped_within_grace(&out, codes::CI_SIGINT);
    assert_eq!(job_processes(&name, &marker), Vec::<i32>::new());
    assert_nothing_left(&setup, &name, &marker);
}

// ------------------------------------------------- the README's commands ---

/// Copies a directory tree (regular files and directories only).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn the_hello_example_runs_and_brings_its_greeting_back() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (mut setup, name) = setup("hello", "unused");
    let examples = setup.path().join("examples");
    copy_tree(&repo.join("examples/hello"), &examples.join("hello"));
    setup.env.remove("FIRECREST_RUN");
    setup
        .set("FIRECREST_WORKSPACE", "examples/hello")
        .set("FIRECREST_SCRIPT", "job.sh")
        .set("FIRECREST_ARTIFACTS", "out/")
        .set("FIRECREST_ENV_VARS", "GREETING")
        .set("GREETING", "hi from the test");
    let out = setup.run(LIMIT);
    assert_eq!(out.code, codes::SUCCESS, "{}", out.both());
    for line in [
        "Grüße, こんにちは, 👋",
        "a line on stderr",
        "wrote out/greeting.txt",
    ] {
        assert_eq!(
            out.stdout.matches(line).count(),
            1,
            "{line}\n{}",
            out.both()
        );
    }
    let greeting =
        std::fs::read_to_string(examples.join("hello/out/greeting.txt")).expect("the artifact");
    assert!(
        greeting.starts_with("greeting: hi from the test\n"),
        "{greeting}"
    );
    assert!(examples.join("hello/firecrest-ci.log").is_file());
    assert_nothing_left(&setup, &name, &name);
}

/// A listener nothing should connect to: the URLs and proxies of a dry run
/// point here, so any request the run made would show up.
struct Tripwire(std::net::TcpListener);

impl Tripwire {
    fn new() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Tripwire(listener)
    }

    fn url(&self) -> String {
        format!("http://{}", self.0.local_addr().unwrap())
    }

    fn touched(&self) -> bool {
        self.0.accept().is_ok()
    }
}

/// The repository itself, planned with the default (firecrest) backend.
fn dry_run_of_the_repository(args: &[&str], extra: &[(&str, &str)]) -> (Outcome, Tripwire) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let log = repo.join("firecrest-ci.log");
    let log_existed = log.exists();
    let trip = Tripwire::new();
    let mut command = Command::new(binary());
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HTTP_PROXY", trip.url())
        .env("HTTPS_PROXY", trip.url())
        .env("ALL_PROXY", trip.url())
        .envs(extra.iter().copied())
        .args(args)
        .current_dir(repo)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = wait(command.spawn().unwrap(), LIMIT, Instant::now());
    assert_eq!(
        log.exists(),
        log_existed,
        "the dry run wrote {}",
        log.display()
    );
    (out, trip)
}

fn assert_plan_and_script(out: &Outcome, command: &str) {
    assert_eq!(out.code, codes::SUCCESS, "{}", out.both());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines.contains(&"plan:"), "{}", out.both());
    assert!(
        lines.iter().any(|l| l.starts_with("  1. ")),
        "{}",
        out.both()
    );
    assert!(
        lines.iter().any(|l| l.contains("POST /compute/")),
        "{}",
        out.both()
    );
    let shebang = lines
        .iter()
        .position(|l| *l == "#!/bin/bash -l")
        .unwrap_or_else(|| panic!("no batch script\n{}", out.both()));
    assert!(
        lines[shebang + 1].starts_with("#SBATCH --job-name="),
        "{}",
        out.both()
    );
    assert!(out.stdout.contains(command), "{}", out.both());
}

#[test]
fn dry_run_flag_plans_the_repository_without_network() {
    let trip = Tripwire::new();
    let (url, token) = (trip.url(), format!("{}/token", trip.url()));
    let (out, proxy) = dry_run_of_the_repository(
        &["--dry-run"],
        &[
            ("FIRECREST_RUN", "cargo test --locked"),
            ("FIRECREST_URL", &url),
            ("FIRECREST_TOKEN_URL", &token),
            ("FIRECREST_CLIENT_ID", "ci"),
            ("FIRECREST_CLIENT_SECRET", "not-a-real-secret"),
            ("FIRECREST_SYSTEM", "daint"),
        ],
    );
    assert_plan_and_script(&out, "cargo test --locked");
    assert!(
        out.stdout.contains("POST /compute/daint/jobs"),
        "{}",
        out.both()
    );
    assert!(!out.both().contains("not-a-real-secret"), "{}", out.both());
    assert!(!trip.touched() && !proxy.touched(), "the dry run connected");
}

#[test]
fn dry_run_input_plans_the_repository_without_network() {
    let (out, proxy) = dry_run_of_the_repository(
        &[],
        &[
            ("FIRECREST_DRY_RUN", "true"),
            ("FIRECREST_RUN", "make check"),
        ],
    );
    assert_plan_and_script(&out, "make check");
    assert!(!proxy.touched(), "the dry run connected");
}

/// The README's first command, exactly as written there.
#[test]
fn readme_dry_run_command_works_as_written() {
    let readme = include_str!("../../README.md");
    assert!(readme.contains("FIRECREST_RUN='cargo test' cargo run -- --dry-run\n"));
    let (out, proxy) =
        dry_run_of_the_repository(&["--dry-run"], &[("FIRECREST_RUN", "cargo test")]);
    assert_plan_and_script(&out, "cargo test");
    assert!(!proxy.touched(), "the dry run connected");
}

// ------------------------------------------------------------ bad inputs ---

/// An invalid value for every input that can have one.
const BAD_VALUES: &[(&str, &str)] = &[
    ("FIRECREST_URL", "not a url"),
    ("FIRECREST_TOKEN_URL", "ftp://auth.example.org/token"),
    ("FIRECREST_CLIENT_ID", "two words"),
    ("FIRECREST_CLIENT_SECRET", "fcit-s3cr3t with-a-space"),
    ("FIRECREST_ACCESS_TOKEN", "fcit-t0ken with-a-space"),
    ("FIRECREST_SYSTEM", "da/int"),
    ("FIRECREST_ACCOUNT", "g1 23"),
    ("FIRECREST_PARTITION", "normal;rm"),
    ("FIRECREST_RESERVATION", "maint now"),
    ("FIRECREST_CONSTRAINT", "gpu;reboot"),
    ("FIRECREST_TIME_LIMIT", "soon"),
    ("FIRECREST_NODES", "0"),
    ("FIRECREST_NTASKS", "-4"),
    ("FIRECREST_GPUS", "many"),
    ("FIRECREST_SBATCH_OPTIONS", "--time=5"),
    ("FIRECREST_JOB_NAME", "two words"),
    ("FIRECREST_SCRIPT", "../outside.sh"),
    ("FIRECREST_WORKSPACE", "/nonexistent/fcit-workspace"),
    ("FIRECREST_INCLUDE", "src/[a"),
    ("FIRECREST_EXCLUDE", "build/[b"),
    ("FIRECREST_GITIGNORE", "maybe"),
    ("FIRECREST_INCLUDE_GIT", "perhaps"),
    ("FIRECREST_ENV_VARS", "1BAD"),
    ("FIRECREST_ARTIFACTS", "/etc/passwd"),
    ("FIRECREST_ARTIFACTS_WHEN", "sometimes"),
    ("FIRECREST_REMOTE_DIR", "relative/dir"),
    ("FIRECREST_CLEANUP", "sometimes"),
    ("FIRECREST_TIMEOUT", "forever"),
    ("FIRECREST_BACKEND", "cloud"),
    ("FIRECREST_DRY_RUN", "maybe"),
    ("FIRECREST_LOG_LEVEL", "loud"),
    ("FIRECREST_LOG_FILE", "no/such/dir/x.log"),
    ("FIRECREST_SEPARATE_STDERR", "maybe"),
    ("FIRECREST_POLL_INTERVAL", "often"),
    ("FIRECREST_LOG_INTERVAL", "0s"),
    ("FIRECREST_SUBMIT_GRACE", "-5"),
    ("FIRECREST_REQUEST_TIMEOUT", "0"),
    ("FIRECREST_TRANSFER_THRESHOLD", "lots"),
    ("FIRECREST_COMPRESSION_LEVEL", "10"),
    ("FIRECREST_RETRIES", "11"),
];

/// Inputs no single value makes invalid: any text is a command.
const NEVER_INVALID: &[&str] = &["FIRECREST_RUN"];

/// Inputs only the firecrest backend reads; the local backend ignores them.
const FIRECREST_ONLY: &[&str] = &[
    "FIRECREST_URL",
    "FIRECREST_TOKEN_URL",
    "FIRECREST_CLIENT_ID",
    "FIRECREST_CLIENT_SECRET",
    "FIRECREST_ACCESS_TOKEN",
    "FIRECREST_SYSTEM",
];

/// The lines that list configuration problems (after "invalid configuration:").
fn problem_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .skip_while(|l| !l.contains("invalid configuration:"))
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// Runs with `setup`'s environment plus `var=value` and checks: exit 78, every
/// problem names `var`, secrets are not echoed, nothing ran or was left.
fn assert_rejected(setup: &Setup, args: &[&str], var: &str, value: &str, how: &str) {
    let mut case = Setup {
        workspace: tempfile::tempdir().unwrap(),
        env: setup.env.clone(),
        remote: None,
    };
    case.set(var, value);
    if var == "FIRECREST_SCRIPT" {
        case.env.remove("FIRECREST_RUN");
    }
    let out = case.run_with_args(args, Duration::from_secs(30));
    let context = format!("{var}={value:?} ({how})\n{}", out.both());
    assert_eq!(out.code, codes::CONFIG, "{context}");
    let problems = problem_lines(&out.stderr);
    assert!(!problems.is_empty(), "no problem listed: {context}");
    for line in &problems {
        let (vars, _) = line.split_once(": ").unwrap_or((line, ""));
        assert!(vars.split(", ").any(|v| v == var), "{line:?}: {context}");
    }
    if INPUTS.iter().any(|i| i.env == var && i.secret) {
        assert!(
            !out.both().contains(value),
            "the secret was shown: {context}"
        );
    } else {
        assert!(out.stderr.contains(var), "{context}");
    }
    assert!(!out.stdout.contains("Output of job"), "{context}");
}

#[test]
fn every_invalid_input_exits_78_naming_its_variable() {
    for input in INPUTS {
        let listed = BAD_VALUES.iter().any(|(var, _)| *var == input.env);
        assert!(
            listed || NEVER_INVALID.contains(&input.env),
            "{} has no bad value in this test's table",
            input.env
        );
    }
    let marker = unique_name("bad");
    let (setup, _) = setup("bad", &format!("echo {marker}"));
    let mut dry = Setup {
        workspace: tempfile::tempdir().unwrap(),
        env: setup.env.clone(),
        remote: None,
    };
    dry.env.remove("FIRECREST_BACKEND");
    for (var, value) in BAD_VALUES {
        assert_rejected(
            &dry,
            &["--dry-run"],
            var,
            value,
            "dry run, firecrest backend",
        );
        if !FIRECREST_ONLY.contains(var) {
            assert_rejected(&setup, &[], var, value, "local backend");
        }
    }
    assert_eq!(setup.left_behind(), Vec::<PathBuf>::new());
}

#[test]
fn several_invalid_inputs_are_all_reported_in_one_run() {
    let (mut setup, name) = setup("several", "echo should-not-run");
    let bad = [
        ("FIRECREST_TIME_LIMIT", "soon"),
        ("FIRECREST_NODES", "0"),
        ("FIRECREST_JOB_NAME", "two words"),
        ("FIRECREST_CLEANUP", "sometimes"),
        ("FIRECREST_LOG_LEVEL", "loud"),
        ("FIRECREST_COMPRESSION_LEVEL", "10"),
    ];
    for (var, value) in bad {
        setup.set(var, value);
    }
    let out = setup.run(LIMIT);
    assert_eq!(out.code, codes::CONFIG, "{}", out.both());
    let problems = problem_lines(&out.stderr);
    let named: Vec<&str> = problems
        .iter()
        .map(|l| l.split_once(": ").map_or(*l, |(v, _)| v))
        .collect();
    // In the README's (INPUTS') order, each once.
    let expected: Vec<&str> = INPUTS
        .iter()
        .map(|i| i.env)
        .filter(|env| bad.iter().any(|(var, _)| var == env))
        .collect();
    assert_eq!(named, expected, "{}", out.both());
    assert!(!out.stdout.contains("should-not-run"));
    assert_nothing_left(&setup, &name, &name);
}

#[test]
fn a_workspace_that_does_not_exist_is_a_configuration_error() {
    let (mut setup, name) = setup("nows", "echo should-not-run");
    let missing = setup.path().join("not-there");
    setup.set("FIRECREST_WORKSPACE", missing.display().to_string());
    let out = setup.run(LIMIT);
    assert_eq!(out.code, codes::CONFIG, "{}", out.both());
    assert!(
        out.stderr.contains("FIRECREST_WORKSPACE") && out.stderr.contains("does not exist"),
        "{}",
        out.both()
    );
    assert_nothing_left(&setup, &name, &name);
}

#[test]
fn a_missing_url_with_the_default_backend_is_an_error_not_a_local_run() {
    let flag_dir = tempfile::tempdir().unwrap();
    let flag = flag_dir.path().join("ran");
    let (mut setup, name) = setup("nourl", &format!("touch {}", flag.display()));
    setup.env.remove("FIRECREST_BACKEND");
    let out = setup.run(LIMIT);
    assert_eq!(out.code, codes::CONFIG, "{}", out.both());
    let problems = problem_lines(&out.stderr);
    assert!(
        problems.iter().any(|l| l.starts_with("FIRECREST_URL: ")),
        "{}",
        out.both()
    );
    assert!(!flag.exists(), "the job ran somewhere");
    assert!(!setup.path().join("firecrest-ci.log").exists());
    assert_nothing_left(&setup, &name, &name);
}

#[test]
fn an_empty_workspace_runs_fine() {
    let (setup, name) = setup(
        "empty",
        "echo \"files: $(ls -A | grep -vc firecrest-ci || true)\"",
    );
    std::fs::remove_file(setup.path().join("hello.txt")).unwrap();
    let out = setup.run(LIMIT);
    assert_eq!(out.code, codes::SUCCESS, "{}", out.both());
    assert!(
        out.stdout.contains("workspace ready (0 files)"),
        "{}",
        out.both()
    );
    assert_eq!(job_lines(&out.stdout), ["files: 0"], "{}", out.both());
    assert_nothing_left(&setup, &name, &name);
}

#[test]
fn file_names_with_a_newline_or_invalid_utf8_arrive_intact() {
    // Each line the job prints: the name's bytes and the content's, in hex.
    let listing = "for f in *; do\n  printf '%s' \"$f\" | od -An -tx1 | tr -d ' \\n'\n  printf ' '\n  od -An -tx1 < \"$f\" | tr -d ' \\n'\n  echo\ndone";
    let (setup, name) = setup("names", listing);
    std::fs::remove_file(setup.path().join("hello.txt")).unwrap();
    let names: [&[u8]; 3] = [b"new\nline.txt", b"caf\xe9.txt", b"plain.txt"];
    for (n, file) in names.iter().enumerate() {
        let path = setup.path().join(std::ffi::OsStr::from_bytes(file));
        std::fs::write(path, format!("content {n}\n")).unwrap();
    }
    let out = setup.run(LIMIT);
    assert_eq!(out.code, codes::SUCCESS, "{}", out.both());
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut expected: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(n, file)| format!("{} {}", hex(file), hex(format!("content {n}\n").as_bytes())))
        .collect();
    expected.sort();
    let mut got: Vec<&str> = job_lines(&out.stdout)
        .into_iter()
        .filter(|l| !l.starts_with(&hex(b"firecrest-ci")))
        .collect();
    got.sort();
    assert_eq!(got, expected, "{}", out.both());
    assert!(out.stderr.contains("packed 3 files"), "{}", out.both());
    assert_nothing_left(&setup, &name, &name);
}

/// A workspace with one file the tool's user cannot read. As root (where
/// mode 000 does not stop reading) the tool runs as `nobody` instead.
struct Unreadable {
    setup: Setup,
    name: String,
    run_as: Option<u32>,
}

fn unreadable_workspace() -> Option<Unreadable> {
    use std::os::unix::fs::PermissionsExt;
    let (setup, name) = setup("unreadable", "echo should-not-run");
    let locked = setup.path().join("locked.txt");
    std::fs::write(&locked, "secret\n").unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let run_as = nix::unistd::geteuid().is_root().then_some(65534u32);
    if let Some(uid) = run_as {
        for dir in [setup.path(), setup.remote_dir()] {
            for entry in walk(dir) {
                nix::unistd::chown(
                    &entry,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(uid)),
                )
                .unwrap();
            }
        }
    }
    let mut probe = Command::new("cat");
    probe
        .arg(&locked)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(uid) = run_as {
        probe.uid(uid).gid(uid);
    }
    if probe.status().map(|s| s.success()).unwrap_or(true) {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "NOTE: local::unreadable_file: cannot make a file unreadable here; skipping its assertions"
        );
        return None;
    }
    Some(Unreadable {
        setup,
        name,
        run_as,
    })
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_path_buf()];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all.extend(walk(&path));
        } else {
            all.push(path);
        }
    }
    all
}

fn run_unreadable(case: &Unreadable) -> Outcome {
    let mut command = Command::new(binary());
    command
        .env_clear()
        .envs(&case.setup.env)
        .current_dir(case.setup.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(uid) = case.run_as {
        command.uid(uid).gid(uid);
    }
    wait(command.spawn().unwrap(), LIMIT, Instant::now())
}

#[test]
fn an_unreadable_file_fails_the_run_before_anything_is_sent() {
    let Some(case) = unreadable_workspace() else {
        return;
    };
    let out = run_unreadable(&case);
    assert_ne!(out.code, codes::SUCCESS, "{}", out.both());
    assert!(
        out.stderr.contains("locked.txt") && out.stderr.contains("ermission denied"),
        "{}",
        out.both()
    );
    assert!(!out.stderr.contains("submitted job"), "{}", out.both());
    assert!(!out.stdout.contains("should-not-run"), "{}", out.both());
    assert_nothing_left(&case.setup, &case.name, &case.name);
}

/// A file the user cannot read is access refused to a path: the README's 77.
#[test]
fn an_unreadable_file_exits_with_permission_denied() {
    let Some(case) = unreadable_workspace() else {
        return;
    };
    let out = run_unreadable(&case);
    assert_eq!(readme_exit_code("permission denied"), codes::NOPERM);
    assert_eq!(out.code, codes::NOPERM, "{}", out.both());
}
