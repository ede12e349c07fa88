//! The container images that `.ci/image` builds, run the way each platform
//! runs them, against the FirecREST double on loopback (`--network host`):
//!
//! - the default image as GitHub runs a Docker action: the environment that
//!   `action.yml`'s `runs.env` makes of the step's inputs, the workspace at
//!   `/github/workspace`, the file commands under `/github/file_commands`, the
//!   binary as PID 1; then `docker kill --signal INT` and `docker stop`;
//! - the shell image as GitLab's Docker executor runs the template's job:
//!   `sh -c` with its `script:`, then its `after_script:` in a new container;
//! - both as the README's "Other CI systems" `docker run`, with the double
//!   and with the local backend, as another user (`--user`).
//!
//! They need a Docker engine and the images, so they are ignored by a plain
//! `cargo test`; `.ci/run` runs them through `.ci/image`, which builds the
//! images and keeps the engine up:
//! `.ci/image cargo test --test it -- --ignored images::`. Run that way
//! without an engine or images, each test prints SKIPPED and passes, except
//! in CI (`CI=true`), where it fails.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_yaml::Value;

use crate::fake::FakeFirecrest;
use crate::harness::{job_printed, wait, wait_until, Outcome};

/// Bound for one whole containerised run on a shared, loaded machine.
const LIMIT: Duration = Duration::from_secs(120);
/// GitHub's grace between the cancel's SIGINT and its SIGTERM.
const GITHUB_GRACE: Duration = Duration::from_millis(7500);
/// Not root, not the test's user: files it writes are plainly its own.
const OTHER_USER: u32 = 12345;

fn image() -> String {
    std::env::var("FIRECREST_CI_IMAGE").unwrap_or_else(|_| "firecrest-ci:dev".into())
}

fn shell_image() -> String {
    std::env::var("FIRECREST_CI_SHELL_IMAGE").unwrap_or_else(|_| "firecrest-ci:dev-shell".into())
}

/// True when the engine answers and both images are there. Otherwise the
/// test is skipped with a message, or fails in CI, where `.ci/run` builds
/// the images before it runs these tests.
fn images_ready(test: &str) -> bool {
    let images = [image(), shell_image()];
    let problem = match Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}"])
        .args(&images)
        .output()
    {
        Err(e) => format!("no docker command ({e})"),
        Ok(out) if !out.status.success() => format!(
            "no Docker engine or no images {images:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Ok(_) => return true,
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {problem}; in CI, .ci/run builds the images with .ci/image first");
    }
    // Past libtest's capture (eprintln! is captured), so that it shows.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: images::{test}: {problem} (build them with .ci/image)"
    );
    false
}

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

fn yaml(path: &str) -> Value {
    serde_yaml::from_str(&repo_file(path)).unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

/// A container name no other test or run uses; the container is removed
/// when the guard drops, whatever the test did.
struct Container(String);

impl Container {
    fn new(tag: &str) -> Self {
        Container(crate::harness::unique_name(tag))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run docker")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `docker run` with these arguments, attached (its exit code is the
/// container's), stdout and stderr collected.
fn docker_run(args: &[String]) -> Child {
    Command::new("docker")
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn docker run")
}

fn env_args(env: &BTreeMap<String, String>) -> Vec<String> {
    env.iter()
        .flat_map(|(k, v)| ["-e".to_string(), format!("{k}={v}")])
        .collect()
}

/// A fresh directory, owned by `uid`, with a file the job reads.
fn workspace(uid: u32) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("fcit-image-ws-")
        .tempdir()
        .unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello from the workspace\n").unwrap();
    chown_tree(dir.path(), uid);
    dir
}

fn chown_tree(path: &Path, uid: u32) {
    let status = Command::new("chown")
        .args(["-R", &format!("{uid}:{uid}"), &path.display().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn owner(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .uid()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn job_state(fake: &FakeFirecrest, name: &str) -> String {
    fake.job_by_name(name)
        .unwrap_or_else(|| panic!("the double has no job {name}"))
        .state
}

/// The double's connection settings, as a step or job would give them.
fn connection(fake: &FakeFirecrest) -> [(&'static str, String); 5] {
    [
        ("firecrest-url", fake.url()),
        ("token-url", fake.token_url()),
        ("client-id", fake.client_id()),
        ("client-secret", fake.client_secret()),
        ("system", fake.system()),
    ]
}

/// The same settings as the `FIRECREST_*` variables.
fn connection_env(fake: &FakeFirecrest) -> BTreeMap<String, String> {
    connection(fake)
        .into_iter()
        .map(|(name, value)| (input_variable(name), value))
        .collect()
}

/// The variable `action.yml`'s `runs.env` maps input `name` to.
fn input_variable(name: &str) -> String {
    let action = yaml("action.yml");
    let wanted = format!("${{{{ inputs.{name} }}}}");
    action["runs"]["env"]
        .as_mapping()
        .expect("runs.env")
        .iter()
        .find(|(_, v)| v.as_str() == Some(&wanted))
        .and_then(|(k, _)| k.as_str())
        .unwrap_or_else(|| panic!("runs.env passes no variable for input {name}"))
        .to_string()
}

// --- GitHub Actions ----------------------------------------------------------

/// A step of a workflow that runs the action: the inputs the step gives,
/// the runner's directories, and the container's name.
struct GithubStep {
    workspace: tempfile::TempDir,
    file_commands: tempfile::TempDir,
    home: tempfile::TempDir,
    env: BTreeMap<String, String>,
    container: Container,
}

impl GithubStep {
    fn new(tag: &str, with: &[(&str, String)]) -> Self {
        let workspace = workspace(0);
        let file_commands = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let uuid = "8f0d7e8a-3c7e-4a59-9d1e-0c9c8b6f2a11";
        let mut env = github_action_env(with);
        for (k, v) in [
            ("GITHUB_ACTIONS", "true".to_string()),
            ("CI", "true".to_string()),
            ("HOME", "/github/home".to_string()),
            ("GITHUB_WORKSPACE", "/github/workspace".to_string()),
            ("GITHUB_REPOSITORY", "org/repo".to_string()),
            ("GITHUB_RUN_ID", "4242".to_string()),
            ("GITHUB_RUN_ATTEMPT", "1".to_string()),
            ("GITHUB_JOB", "cluster".to_string()),
            (
                "GITHUB_SHA",
                "0123456789abcdef0123456789abcdef01234567".to_string(),
            ),
            ("GITHUB_REF", "refs/heads/main".to_string()),
            ("RUNNER_TEMP", "/github/runner_temp".to_string()),
            (
                "GITHUB_OUTPUT",
                format!("/github/file_commands/set_output_{uuid}"),
            ),
            (
                "GITHUB_STEP_SUMMARY",
                format!("/github/file_commands/step_summary_{uuid}"),
            ),
            (
                "GITHUB_ENV",
                format!("/github/file_commands/set_env_{uuid}"),
            ),
            (
                "GITHUB_PATH",
                format!("/github/file_commands/add_path_{uuid}"),
            ),
        ] {
            env.insert(k.to_string(), v);
        }
        // The runner creates the file-command files before the step starts.
        for var in [
            "GITHUB_OUTPUT",
            "GITHUB_STEP_SUMMARY",
            "GITHUB_ENV",
            "GITHUB_PATH",
        ] {
            let name = Path::new(&env[var]).file_name().unwrap().to_owned();
            std::fs::write(file_commands.path().join(name), "").unwrap();
        }
        GithubStep {
            workspace,
            file_commands,
            home,
            env,
            container: Container::new(tag),
        }
    }

    /// A file command file, as the step left it.
    fn file_command(&self, var: &str) -> String {
        let name = Path::new(&self.env[var]).file_name().unwrap();
        read(&self.file_commands.path().join(name))
    }

    /// Starts the container with the runner's command line (less the
    /// docker socket and workflow mounts, which the tool does not use), on
    /// the host network so that it reaches the double on loopback.
    fn start(&self) -> (Child, Instant) {
        let name = &self.container.0;
        let mut args: Vec<String> = [
            "--name",
            name,
            "--label",
            name,
            "--workdir",
            "/github/workspace",
            "--rm",
            "--network",
            "host",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(env_args(&self.env));
        for (host, inside) in [
            (self.home.path(), "/github/home"),
            (self.file_commands.path(), "/github/file_commands"),
            (self.workspace.path(), "/github/workspace"),
        ] {
            args.push("-v".into());
            args.push(format!("{}:{inside}", host.display()));
        }
        args.push(image());
        (docker_run(&args), Instant::now())
    }
}

/// The environment the runner gives a Docker action's container for the
/// inputs `with`: each `runs.env` entry of `action.yml` evaluated (an input
/// the step does not give is its `default:`, or empty when it has none, as
/// the runner does) and the `INPUT_<NAME>` variables (upper-cased, hyphens
/// kept).
fn github_action_env(with: &[(&str, String)]) -> BTreeMap<String, String> {
    let action = yaml("action.yml");
    let inputs = action["inputs"].as_mapping().expect("inputs");
    let given: BTreeMap<&str, &str> = with.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for name in given.keys() {
        assert!(inputs.contains_key(*name), "action.yml has no input {name}");
    }
    let value = |name: &str| -> String {
        match given.get(name) {
            Some(v) => v.to_string(),
            None => inputs[name]["default"].as_str().unwrap_or("").to_string(),
        }
    };
    let mut env = BTreeMap::new();
    for (name, _) in inputs {
        let name = name.as_str().unwrap();
        env.insert(format!("INPUT_{}", name.to_uppercase()), value(name));
    }
    for (var, expression) in action["runs"]["env"].as_mapping().expect("runs.env") {
        let expression = expression.as_str().unwrap();
        let input = expression
            .strip_prefix("${{ inputs.")
            .and_then(|s| s.strip_suffix(" }}"))
            .unwrap_or_else(|| panic!("runs.env: {expression:?} is not an input"));
        env.insert(var.as_str().unwrap().to_string(), value(input));
    }
    env
}

#[test]
#[ignore = "needs the images and a Docker engine (see the module docs)"]
fn github_runs_the_action_image_with_its_inputs_outputs_and_summary() {
    if !images_ready("github_runs_the_action_image") {
        return;
    }
    let fake = FakeFirecrest::start();
    let name = crate::harness::unique_name("gh-image");
    let mut with = connection(&fake).to_vec();
    with.extend([
        ("job-name", name.clone()),
        (
            "run",
            "echo fcit-image-hello\ncat hello.txt\necho made > out.txt".to_string(),
        ),
        ("artifacts", "out.txt".to_string()),
        ("poll-interval", "1s".to_string()),
        ("log-interval", "1s".to_string()),
    ]);
    let step = GithubStep::new("gh", &with);
    let (child, started) = step.start();
    let out = wait(child, LIMIT, started);
    assert_eq!(out.code, 0, "{}", out.both());

    // The log: the job's own lines, in a collapsible group, no secret.
    assert!(out.stdout.contains("fcit-image-hello"), "{}", out.both());
    assert!(
        out.stdout.contains("hello from the workspace"),
        "{}",
        out.both()
    );
    assert!(out.both().contains("::group::"), "{}", out.both());
    // The secret appears only where the tool asks the runner to mask it.
    let secret = fake.client_secret();
    let mask = format!("::add-mask::{secret}");
    assert!(
        !out.both().lines().any(|l| l.contains(&secret) && l != mask),
        "secret in the log: {}",
        out.both()
    );

    // The outputs and the summary, through the file commands.
    let outputs = step.file_command("GITHUB_OUTPUT");
    let job = fake.job_by_name(&name).expect("the job reached the double");
    for line in [
        format!("job-id={}", job.id),
        "state=COMPLETED".to_string(),
        "exit-code=0".to_string(),
        "log-file=firecrest-ci.log".to_string(),
    ] {
        assert!(
            outputs.lines().any(|l| l == line),
            "no {line:?} in GITHUB_OUTPUT:\n{outputs}"
        );
    }
    assert!(outputs.contains("remote-dir="), "{outputs}");
    let summary = step.file_command("GITHUB_STEP_SUMMARY");
    assert!(summary.contains("COMPLETED"), "summary:\n{summary}");
    assert_eq!(job.state, "COMPLETED");

    // The artifact and the log file in the runner's workspace, written by
    // the container's root as every Docker action's files are.
    let ws = step.workspace.path();
    assert_eq!(read(&ws.join("out.txt")), "made\n");
    assert!(read(&ws.join("firecrest-ci.log")).contains("fcit-image-hello"));
    assert_eq!(owner(&ws.join("out.txt")), 0);
}

/// A cancelled workflow: the runner signals the container's first process,
/// which must be the tool itself, and it cancels the Slurm job in GitHub's
/// grace.
fn github_cancel(tag: &str, how: &str, expected: i32) {
    let fake = FakeFirecrest::start();
    let name = crate::harness::unique_name(tag);
    let mut with = connection(&fake).to_vec();
    with.extend([
        ("job-name", name.clone()),
        ("run", "echo fcit-started\nsleep 300".to_string()),
        ("poll-interval", "1s".to_string()),
        ("log-interval", "1s".to_string()),
    ]);
    let step = GithubStep::new(tag, &with);
    let (child, started) = step.start();
    assert!(
        wait_until(LIMIT, || job_printed(&fake, "fcit-started")),
        "the job never ran"
    );
    // PID 1 of the container is the binary, not a shell or an init.
    let pid = docker_ok(&["inspect", "--format", "{{.State.Pid}}", &step.container.0]);
    let exe = std::fs::read_link(format!("/proc/{}/exe", pid.trim())).unwrap();
    assert!(
        exe.ends_with("firecrest-ci"),
        "PID 1 of the container is {}",
        exe.display()
    );

    let signalled = Instant::now();
    match how {
        "INT" => {
            docker_ok(&["kill", "--signal", "INT", &step.container.0]);
        }
        // `docker stop` sends SIGTERM, then SIGKILL after -t seconds.
        "TERM" => {
            docker_ok(&["stop", "-t", "10", &step.container.0]);
        }
        _ => unreachable!(),
    }
    let out = wait(child, LIMIT, started);
    let took = signalled.elapsed();
    assert_eq!(out.code, expected, "{}", out.both());
    assert!(took < GITHUB_GRACE, "took {took:?} after SIG{how}");
    assert!(
        job_state(&fake, &name).starts_with("CANCELLED"),
        "state {}",
        job_state(&fake, &name)
    );
    let outputs = step.file_command("GITHUB_OUTPUT");
    assert!(outputs.contains("state=CANCELLED"), "{outputs}");
}

#[test]
#[ignore = "needs the images and a Docker engine (see the module docs)"]
fn github_cancel_sigint_reaches_the_tool_as_pid_1_and_cancels_the_job() {
    if images_ready("github_cancel_sigint") {
        github_cancel("gh-int", "INT", 130);
    }
}

#[test]
#[ignore = "needs the images and a Docker engine (see the module docs)"]
fn github_cancel_docker_stop_sigterm_cancels_the_job() {
    if images_ready("github_cancel_sigterm") {
        github_cancel("gh-term", "TERM", 143);
    }
}

// --- GitLab CI ---------------------------------------------------------------

const PROJECT_DIR: &str = "/builds/group/project";

/// The template's hidden job, whose script the component shares
/// (tests/it/distribution.rs checks that).
fn gitlab_job() -> Value {
    yaml("gitlab-template/firecrest-ci.gitlab-ci.yml")[".firecrest-ci"].clone()
}

/// A `script:` or `after_script:` as the one shell script the runner makes
/// of it: each entry in order, stopping at the first that fails.
fn gitlab_script(key: &str) -> String {
    let lines: Vec<String> = gitlab_job()[key]
        .as_sequence()
        .unwrap_or_else(|| panic!("the template's {key} is not a list"))
        .iter()
        .map(|l| l.as_str().expect("a script line").to_string())
        .collect();
    format!("set -e\n{}\n", lines.join("\n"))
}

/// A GitLab job of the template: its project directory and variables.
struct GitlabJob {
    workspace: tempfile::TempDir,
    env: BTreeMap<String, String>,
}

impl GitlabJob {
    fn new(fake: &FakeFirecrest, name: &str, run: &str) -> Self {
        let mut env = connection_env(fake);
        for (k, v) in [
            ("CI", "true"),
            ("GITLAB_CI", "true"),
            ("CI_PROJECT_DIR", PROJECT_DIR),
            ("CI_PROJECT_PATH", "group/project"),
            ("CI_PIPELINE_ID", "777"),
            ("CI_JOB_ID", "4242"),
            ("CI_COMMIT_SHA", "0123456789abcdef0123456789abcdef01234567"),
            ("FIRECREST_JOB_NAME", name),
            ("FIRECREST_RUN", run),
            ("FIRECREST_POLL_INTERVAL", "1s"),
            ("FIRECREST_LOG_INTERVAL", "1s"),
        ] {
            env.insert(k.to_string(), v.to_string());
        }
        GitlabJob {
            workspace: workspace(0),
            env,
        }
    }

    /// `docker run` of the shell image as the Docker executor runs a job's
    /// script: entrypoint cleared (the template's `entrypoint: [""]`), the
    /// project directory mounted and current, the job's variables set.
    fn run(&self, container: &Container, key: &str) -> Child {
        let mut args: Vec<String> = [
            "--name",
            &container.0,
            "--network",
            "host",
            "--entrypoint",
            "",
            "-w",
            PROJECT_DIR,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("-v".into());
        args.push(format!("{}:{PROJECT_DIR}", self.workspace.path().display()));
        args.extend(env_args(&self.env));
        args.extend([shell_image(), "sh".into(), "-c".into(), gitlab_script(key)]);
        docker_run(&args)
    }

    fn run_to_end(&self, tag: &str, key: &str) -> Outcome {
        let container = Container::new(tag);
        let started = Instant::now();
        wait(self.run(&container, key), LIMIT, started)
    }

    /// The dotenv report the job leaves for later jobs.
    fn dotenv(&self) -> BTreeMap<String, String> {
        let path = self.workspace.path().join("firecrest-ci.env");
        if !path.exists() {
            return BTreeMap::new();
        }
        read(&path)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

#[test]
#[ignore = "needs the images and a Docker engine (see the module docs)"]
fn gitlab_runs_the_template_script_in_the_shell_image_and_reports_dotenv() {
    if !images_ready("gitlab_runs_the_template_script") {
        return;
    }
    let fake = FakeFirecrest::start();
    let name = crate::harness::unique_name("gl-image");
    let job = GitlabJob::new(&fake, &name, "echo fcit-gitlab-hello\ncat hello.txt");
    let out = job.run_to_end("gl", "script");
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(out.stdout.contains("fcit-gitlab-hello"), "{}", out.both());
    assert!(out.both().contains("section_start:"), "{}", out.both());

    let id = fake
        .job_by_name(&name)
        .expect("the job reached the double")
        .id;
    let dotenv = job.dotenv();
    assert_eq!(
        dotenv.get("FIRECREST_JOB_ID"),
        Some(&id.to_string()),
        "{dotenv:?}"
    );
    assert_eq!(
        dotenv.get("FIRECREST_JOB_STATE").map(String::as_str),
        Some("COMPLETED"),
        "{dotenv:?}"
    );
    assert_eq!(
        dotenv.get("FIRECREST_JOB_EXIT_CODE").map(String::as_str),
        Some("0"),
        "{dotenv:?}"
    );
    assert!(read(&job.workspace.path().join("firecrest-ci.log")).contains("fcit-gitlab-hello"));

    // A job that ended leaves nothing for after_script to cancel.
    let after = job.run_to_end("gl-after", "after_script");
    assert_eq!(after.code, 0, "{}", after.both());
    assert!(!after.both().contains("cancelling"), "{}", after.both());
}

/// A job of the template whose commands run until they are stopped,
/// started in the shell image; returns once the job runs on the double's
/// cluster and the tool recorded its id in the dotenv report.
fn start_long_gitlab_job(
    tag: &str,
) -> (FakeFirecrest, String, GitlabJob, Container, Child, Instant) {
    let fake = FakeFirecrest::start();
    let name = crate::harness::unique_name(tag);
    let job = GitlabJob::new(&fake, &name, "echo fcit-started\nsleep 300");
    let container = Container::new(tag);
    let started = Instant::now();
    let child = job.run(&container, "script");
    assert!(
        wait_until(LIMIT, || job_printed(&fake, "fcit-started")
            && job.dotenv().contains_key("FIRECREST_JOB_ID")),
        "the job never ran"
    );
    (fake, name, job, container, child, started)
}

#[test]
#[ignore = "needs the images and a Docker engine (see the module docs)"]
fn gitlab_cancel_sigterm_to_the_job_shell_reaches_the_tool() {
    if !images_ready("gitlab_cancel_sigterm") {
        return;
    }
    let (fake, name, _job, container, child, started) = start_long_gitlab_job("gl-term");
    // The Docker executor signals the container's shell, which hands the
    // signal to the tool (the template's trap).
    let signalled = Instant::now();
    docker_ok(&["kill", "--signal", "TERM", &container.0]);
    let out = wait(child, LIMIT, started);
    assert_eq!(out.code, 143, "{}", out.both());
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "took {:?}, past the executor's SIGKILL",
        signalled.elapsed()
    );
    assert!(job_state(&fake, &name).starts_with("CANCELLED"));
}

#[test]
#[ignore = "needs the images and a Docker engine (see the module docs)"]
fn gitlab_after_script_cancels_the_job_of_a_killed_tool() {
    if !images_ready("gitlab_after_script_cancels") {
        return;
    }
    let (fake, name, job, container, child, started) = start_long_gitlab_job("gl-kill");
    // SIGKILL for every process of the container but its shell: the tool
    // dies without a word and the Slurm job is left running.
    docker_ok(&["exec", &container.0, "kill", "-KILL", "-1"]);
    let out = wait(child, LIMIT, started);
    assert_eq!(out.code, 137, "{}", out.both());
    let id = fake.job_by_name(&name).unwrap().id;
    assert_eq!(job.dotenv().get("FIRECREST_JOB_ID"), Some(&id.to_string()));
    assert!(!job.dotenv().contains_key("FIRECREST_JOB_STATE"));
    assert!(!job_state(&fake, &name).starts_with("CANCELLED"));

    // after_script runs in a new container with the job's variables, as
    // GitLab runs it; FIRECREST_RUN among them, which `firecrest-ci cancel`
    // in this branch still requires, though it does not use it.
    let after = job.run_to_end("gl-kill-after", "after_script");
    assert_eq!(after.code, 0, "{}", after.both());
    assert!(
        after
            .stdout
            .contains(&format!("Slurm job {id} has no final state; cancelling it")),
        "{}",
        after.both()
    );
    assert!(
        job_state(&fake, &name).starts_with("CANCELLED"),
        "state {} after after_script:\n{}",
        job_state(&fake, &name),
        after.both()
    );
}

// --- Other CI systems: the README's docker run -------------------------------

/// The README's `docker run`: the workspace at /workspace and current, the
/// `FIRECREST_*` variables, as the calling user (`--user`).
fn readme_docker_run(
    image: &str,
    workspace: &Path,
    env: &BTreeMap<String, String>,
    user: u32,
) -> Outcome {
    let container = Container::new("other");
    let mut args: Vec<String> = [
        "--rm",
        "--name",
        &container.0,
        "--network",
        "host",
        "--user",
        &format!("{user}:{user}"),
        "-v",
        &format!("{}:/workspace", workspace.display()),
        "-w",
        "/workspace",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(env_args(env));
    args.push(image.to_string());
    let started = Instant::now();
    wait(docker_run(&args), LIMIT, started)
}

#[test]
#[ignore = "needs the images and a Docker engine (see the module docs)"]
fn docker_run_as_the_readme_shows_with_the_double_as_another_user() {
    if !images_ready("docker_run_with_the_double") {
        return;
    }
    let fake = FakeFirecrest::start();
    let name = crate::harness::unique_name("other");
    let ws = workspace(OTHER_USER);
    let mut env = connection_env(&fake);
    for (k, v) in [
        ("FIRECREST_JOB_NAME", name.as_str()),
        ("FIRECREST_RUN", "echo fcit-other\necho art > result.txt"),
        ("FIRECREST_ARTIFACTS", "result.txt"),
        ("FIRECREST_POLL_INTERVAL", "1s"),
        ("FIRECREST_LOG_INTERVAL", "1s"),
    ] {
        env.insert(k.to_string(), v.to_string());
    }
    let out = readme_docker_run(&image(), ws.path(), &env, OTHER_USER);
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(out.stdout.contains("fcit-other"), "{}", out.both());
    assert_eq!(job_state(&fake, &name), "COMPLETED");
    for file in ["result.txt", "firecrest-ci.log"] {
        let path = ws.path().join(file);
        assert_eq!(owner(&path), OTHER_USER, "{file} is not the caller's");
    }
    assert_eq!(read(&ws.path().join("result.txt")), "art\n");
    assert!(read(&ws.path().join("firecrest-ci.log")).contains("fcit-other"));
}

#[test]
#[ignore = "needs the images and a Docker engine (see the module docs)"]
fn docker_run_with_the_local_backend_in_the_shell_image() {
    if !images_ready("docker_run_with_the_local_backend") {
        return;
    }
    let ws = workspace(OTHER_USER);
    let env: BTreeMap<String, String> = [
        ("FIRECREST_BACKEND", "local"),
        (
            "FIRECREST_RUN",
            "echo fcit-local\ncat hello.txt\necho art > result.txt\nexit 3",
        ),
        ("FIRECREST_ARTIFACTS", "result.txt"),
        ("FIRECREST_POLL_INTERVAL", "1s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let out = readme_docker_run(&shell_image(), ws.path(), &env, OTHER_USER);
    // The job's exit code, its output, and the artifacts even so.
    assert_eq!(out.code, 3, "{}", out.both());
    assert!(out.stdout.contains("fcit-local"), "{}", out.both());
    assert!(
        out.stdout.contains("hello from the workspace"),
        "{}",
        out.both()
    );
    assert_eq!(read(&ws.path().join("result.txt")), "art\n");
    for file in ["result.txt", "firecrest-ci.log"] {
        assert_eq!(owner(&ws.path().join(file)), OTHER_USER, "{file}");
    }

    // The default image has no shell: the local backend says so.
    let ws = workspace(OTHER_USER);
    let out = readme_docker_run(&image(), ws.path(), &env, OTHER_USER);
    assert_ne!(out.code, 0, "{}", out.both());
    assert!(out.stderr.contains("bash"), "{}", out.both());
}

// --- the images themselves -----------------------------------------------------

fn inspect(image: &str, format: &str) -> String {
    docker_ok(&["image", "inspect", "--format", format, image])
        .trim()
        .to_string()
}

/// A file of the image, copied out of a created (never started) container.
fn file_in(image: &str, path: &str) -> Option<Vec<u8>> {
    let container = Container::new("files");
    docker_ok(&["create", "--name", &container.0, image]);
    let dir = tempfile::tempdir().unwrap();
    let dest: PathBuf = dir.path().join("file");
    let out = docker(&[
        "cp",
        "-L",
        &format!("{}:{path}", container.0),
        &dest.display().to_string(),
    ]);
    out.status.success().then(|| std::fs::read(&dest).unwrap())
}

#[test]
#[ignore = "needs the images and a Docker engine (see the module docs)"]
fn images_carry_labels_the_ca_bundle_and_the_binary_as_entrypoint() {
    if !images_ready("images_carry_labels") {
        return;
    }
    let host_bundle = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap();
    for image in [image(), shell_image()] {
        let label = |key: &str| {
            inspect(
                &image,
                &format!("{{{{index .Config.Labels \"org.opencontainers.image.{key}\"}}}}"),
            )
        };
        assert_eq!(label("version"), env!("CARGO_PKG_VERSION"), "{image}");
        assert_eq!(label("licenses"), "BSD-3-Clause", "{image}");
        assert_eq!(
            label("source"),
            "https://github.com/firecrest-ci/firecrest-ci",
            "{image}"
        );
        assert!(label("title").starts_with("firecrest-ci"), "{image}");
        assert!(!label("description").is_empty(), "{image}");
        assert!(
            inspect(&image, "{{json .Config.Env}}")
                .contains("SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"),
            "{image}"
        );
        assert_eq!(
            file_in(&image, "/etc/ssl/certs/ca-certificates.crt").as_deref(),
            Some(host_bundle.as_slice()),
            "{image}: CA bundle"
        );
    }
    // The default image: the binary is the entrypoint, and there is no shell.
    assert_eq!(
        inspect(&image(), "{{json .Config.Entrypoint}}"),
        r#"["/usr/local/bin/firecrest-ci"]"#
    );
    assert!(
        file_in(&image(), "/bin/sh").is_none(),
        "the default image has a shell"
    );
    // The shell image: no entrypoint, the binary by default, and the tools
    // the template's script and after_script use.
    assert_eq!(
        inspect(&shell_image(), "{{json .Config.Entrypoint}}"),
        "null"
    );
    assert_eq!(
        inspect(&shell_image(), "{{json .Config.Cmd}}"),
        r#"["/usr/local/bin/firecrest-ci"]"#
    );
    let out = docker_ok(&[
        "run",
        "--rm",
        &shell_image(),
        "sh",
        "-c",
        "for t in sh setsid rm sed tail kill bash firecrest-ci; do command -v $t; done; \
         firecrest-ci --version",
    ]);
    assert!(
        out.contains(&format!("firecrest-ci {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert_eq!(out.lines().count(), 9, "a tool is missing:\n{out}");
}
