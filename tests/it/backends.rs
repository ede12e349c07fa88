//! The `local` and `slurm` backends through the `Backend` trait, with small
//! hand-written batch scripts: exit codes, signals, time limits,
//! cancellation (and that no process or queued job is left), and output read
//! by byte offsets.
//!
//! The Slurm tests need a running Slurm (`.ci/slurm-up` starts one); without
//! it they print `SKIPPED: <reason>` to stderr and return.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use firecrest_ci::backend::local::LocalBackend;
use firecrest_ci::backend::slurm::SlurmBackend;
use firecrest_ci::backend::{Backend, JobId, JobSpec, JobStatus};
use firecrest_ci::config::SlurmTime;

/// Text with 2-, 3- and 4-byte characters, so chunk edges can split them.
const MULTIBYTE: &str = "héllo wörld ✓ 日本語 🚀";

fn spec(dir: &Path, name: &str, directives: &str, body: &str) -> JobSpec {
    JobSpec {
        name: name.to_string(),
        script: format!("#!/bin/bash -l\n#SBATCH --output=out.log\n{directives}\nset -u\n{body}\n"),
        working_dir: dir.to_str().unwrap().to_string(),
        // The same file as the script's line, for the local backend.
        output: Some("out.log".to_string()),
        ..JobSpec::default()
    }
}

/// A job with the time limit `time` (Slurm's format), in the script's
/// `#SBATCH --time` line and in the spec's field, as the pipeline does.
fn timed(dir: &Path, name: &str, time: &str, body: &str) -> JobSpec {
    JobSpec {
        time_limit: SlurmTime::parse_slurm(time).unwrap().as_duration(),
        ..spec(dir, name, &format!("#SBATCH --time={time}"), body)
    }
}

/// Bound for a short local job to end: the machine may be loaded (tests
/// share it with other builds), and a deadline only costs time on failure.
const LOCAL_LIMIT: Duration = Duration::from_secs(120);

/// Bound for a job's own output or files to appear.
const APPEAR_LIMIT: Duration = Duration::from_secs(60);

/// Polls until the job reaches a final state.
async fn wait_end(backend: &dyn Backend, id: &JobId, limit: Duration) -> JobStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = backend.job_status(id).await.unwrap() {
            if status.state.is_final() {
                return status;
            }
        }
        assert!(
            start.elapsed() < limit,
            "job {id} did not end within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Polls until `path` exists (the job got far enough).
async fn wait_file(path: &Path, limit: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < limit,
            "{} did not appear within {limit:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn output(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("out.log")).unwrap_or_default()
}

/// Polls until the job's output contains `text` (the job got that far).
async fn wait_output(dir: &Path, text: &str, limit: Duration) {
    let start = Instant::now();
    while !output(dir).contains(text) {
        assert!(
            start.elapsed() < limit,
            "the job did not print {text:?} within {limit:?}; output so far: {:?}",
            output(dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pids_in(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// True while a process with this pid exists (and is not a zombie).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            !after_name.trim_start().starts_with('Z')
        }
        Err(_) => false,
    }
}

async fn assert_gone(pids: &[i32]) {
    let start = Instant::now();
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "processes still running: {:?}",
            pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads the whole output with `read_output` from `offset` on, until `done`
/// says the writer finished and nothing new came; returns the chunks, each
/// also passed to `seen` as it arrives.
async fn stream_until(
    backend: &dyn Backend,
    path: &str,
    mut done: impl FnMut() -> bool,
    mut seen: impl FnMut(&[u8]),
) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut offset = 0u64;
    let start = Instant::now();
    loop {
        let finished = done();
        let chunk = backend.read_output(path, offset, false).await.unwrap();
        assert_eq!(chunk.advance, chunk.data.len() as u64);
        offset += chunk.advance;
        let empty = chunk.data.is_empty();
        if !empty {
            seen(&chunk.data);
            chunks.push(chunk.data);
        }
        if finished && empty {
            return chunks;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "output never ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The script writes MULTIBYTE one byte at a time with pauses, so reads
/// land inside characters; the bytes must reassemble exactly. After the
/// first byte of the 4-byte character it waits for the file `go`, which the
/// reader creates once a read ended inside a character: at least one split
/// read happens however the reads and writes are scheduled.
const SLOW_WRITER: &str = r#"text='héllo wörld ✓ 日本語 🚀'
LC_ALL=C
for ((i = 0; i < ${#text}; i++)); do
  printf '%s' "${text:i:1}"
  if [ "${text:i:1}" = $'\xf0' ]; then
    for ((w = 0; w < 1200; w++)); do [ -e go ] && break; sleep 0.1; done
  fi
  sleep 0.02
done
printf '\n'
echo "$text"
"#;

async fn check_streamed_output(backend: &dyn Backend, dir: &Path, id: &JobId) {
    let path = dir.join("out.log");
    let path_s = path.to_str().unwrap().to_string();
    let status = std::sync::Arc::new(std::sync::Mutex::new(None::<JobStatus>));
    let watcher = {
        let status = status.clone();
        let id = id.clone();
        // Poll the state on the side; the read loop stops once it is final.
        async move {
            loop {
                let s = backend.job_status(&id).await.unwrap();
                if let Some(s) = s.filter(|s| s.state.is_final()) {
                    *status.lock().unwrap() = Some(s);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let go = dir.join("go");
    let reader = stream_until(
        backend,
        &path_s,
        || status.lock().unwrap().is_some(),
        |chunk| {
            if std::str::from_utf8(chunk).is_err() && !go.exists() {
                std::fs::write(&go, "").unwrap();
            }
        },
    );
    let ((), chunks) = tokio::join!(watcher, reader);
    let final_status = status.lock().unwrap().clone().unwrap();
    assert_eq!(final_status.state.to_string(), "COMPLETED");

    let joined: Vec<u8> = chunks.concat();
    let expected = format!("{MULTIBYTE}\n{MULTIBYTE}\n");
    assert_eq!(String::from_utf8(joined).unwrap(), expected);
    assert!(
        chunks.iter().any(|c| std::str::from_utf8(c).is_err()),
        "no read split a character ({} chunks); the test did not test splitting",
        chunks.len()
    );

    // Every offset, including those inside a character, reads the exact tail.
    let bytes = std::fs::read(&path).unwrap();
    for offset in 0..=bytes.len() {
        let chunk = backend
            .read_output(&path_s, offset as u64, false)
            .await
            .unwrap();
        assert_eq!(chunk.data, &bytes[offset..], "offset {offset}");
        assert_eq!(chunk.advance, (bytes.len() - offset) as u64);
    }
}

// ---------------------------------------------------------------- local ---

#[tokio::test]
async fn local_exit_zero_completes_without_the_callers_environment() {
    assert!(
        std::env::var_os("CARGO_MANIFEST_DIR").is_some(),
        "cargo sets CARGO_MANIFEST_DIR for tests"
    );
    let dir = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new();
    let job = timed(
        dir.path(),
        "ok",
        "2",
        "echo \"id=$SLURM_JOB_ID pwd=$PWD\"\necho \"leak=${CARGO_MANIFEST_DIR-unset}\"\necho to-stderr >&2\necho artifact > result.txt",
    );
    let id = backend.submit(&job).await.unwrap();
    let status = wait_end(&backend, &id, LOCAL_LIMIT).await;
    assert_eq!(status.state.to_string(), "COMPLETED");
    assert_eq!((status.exit_code, status.signal), (Some(0), Some(0)));
    assert!(status.end_time.unwrap() >= status.start_time.unwrap());
    let out = output(dir.path());
    let real_dir = dir.path().canonicalize().unwrap();
    assert!(
        out.contains(&format!("id={id} pwd={}", real_dir.display())),
        "{out}"
    );
    assert!(out.contains("leak=unset"), "{out}");
    assert!(out.contains("to-stderr"), "{out}");
    let copy = dir.path().join("copy/result.txt");
    let remote = dir.path().join("result.txt");
    assert!(backend
        .download(remote.to_str().unwrap(), &copy)
        .await
        .unwrap());
    assert_eq!(std::fs::read_to_string(copy).unwrap(), "artifact\n");
}

#[tokio::test]
async fn local_exit_three_fails_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new();
    let id = backend
        .submit(&spec(
            dir.path(),
            "rc3",
            "",
            "echo before\nexit 3\necho after",
        ))
        .await
        .unwrap();
    let status = wait_end(&backend, &id, LOCAL_LIMIT).await;
    assert_eq!(status.state.to_string(), "FAILED");
    assert_eq!((status.exit_code, status.signal), (Some(3), Some(0)));
    assert_eq!(output(dir.path()), "before\n");
}

#[tokio::test]
async fn local_job_killed_by_a_signal_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new();
    let id = backend
        .submit(&spec(dir.path(), "sig", "", "echo dying\nkill -9 $$"))
        .await
        .unwrap();
    let status = wait_end(&backend, &id, LOCAL_LIMIT).await;
    assert_eq!(status.state.to_string(), "FAILED");
    assert_eq!((status.exit_code, status.signal), (Some(0), Some(9)));
}

#[tokio::test]
async fn local_time_limit_times_out_and_kills_the_tree() {
    // Long enough for `bash -l` to start on a loaded machine: the limit
    // counts from the submission (Slurm's, from the job's start).
    const LIMIT_SECS: u64 = 20;
    let dir = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new();
    let started = Instant::now();
    let id = backend
        .submit(&timed(
            dir.path(),
            "slow",
            &format!("0:{LIMIT_SECS}"),
            "sleep 300 &\necho $! > pids\necho start\nwait\necho never",
        ))
        .await
        .unwrap();
    wait_output(dir.path(), "start\n", APPEAR_LIMIT).await;
    let running = backend.job_status(&id).await.unwrap().unwrap();
    assert_eq!(
        running.state.to_string(),
        "RUNNING",
        "the job ended before the test saw it start"
    );
    let status = wait_end(&backend, &id, LOCAL_LIMIT).await;
    assert_eq!(status.state.to_string(), "TIMEOUT");
    assert!(started.elapsed() >= Duration::from_secs(LIMIT_SECS));
    // Ended by the limit (SIGTERM, SIGKILL 5 s later), not by `sleep 300`.
    assert!(
        started.elapsed() < Duration::from_secs(LIMIT_SECS + 60),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(output(dir.path()), "start\n");
    assert_gone(&pids_in(&dir.path().join("pids"))).await;
}

#[tokio::test]
async fn local_cancel_stops_the_whole_tree_even_what_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new();
    let body = "sleep 300 &\necho $! >> pids.tmp\n\
        bash -c \"trap '' TERM; sleep 300 & echo \\$! >> pids.tmp; wait\" &\necho $! >> pids.tmp\n\
        sleep 0.5\necho $$ >> pids.tmp\nmv pids.tmp pids\nwait";
    let id = backend
        .submit(&spec(dir.path(), "cancel", "", body))
        .await
        .unwrap();
    let pids_file = dir.path().join("pids");
    wait_file(&pids_file, APPEAR_LIMIT).await;
    let pids = pids_in(&pids_file);
    assert_eq!(pids.len(), 4, "{pids:?}");
    assert!(pids.iter().all(|p| alive(*p)));
    let running = backend.job_status(&id).await.unwrap().unwrap();
    assert_eq!(running.state.to_string(), "RUNNING");
    assert_eq!(running.exit_code, None);

    backend.cancel(&id).await.unwrap();
    let status = backend.job_status(&id).await.unwrap().unwrap();
    assert_eq!(status.state.to_string(), "CANCELLED");
    assert_gone(&pids).await;
    // A second cancel of an ended job is fine, and so is an unknown job.
    backend.cancel(&id).await.unwrap();
    backend.cancel(&JobId("999999999".into())).await.unwrap();
    assert_eq!(
        backend
            .job_status(&JobId("999999999".into()))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn local_leftover_background_processes_end_with_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new();
    let id = backend
        .submit(&spec(
            dir.path(),
            "bg",
            "",
            "sleep 300 &\necho $! > pids\nexit 0",
        ))
        .await
        .unwrap();
    let status = wait_end(&backend, &id, LOCAL_LIMIT).await;
    assert_eq!(status.state.to_string(), "COMPLETED");
    assert_gone(&pids_in(&dir.path().join("pids"))).await;
}

#[tokio::test]
async fn local_output_streams_exactly_by_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new();
    let id = backend
        .submit(&spec(dir.path(), "utf8", "", SLOW_WRITER))
        .await
        .unwrap();
    check_streamed_output(&backend, dir.path(), &id).await;
}

#[tokio::test]
async fn local_runs_the_shipped_example() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello");
    let dir = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new();
    let body = format!(
        "cp -r {}/. .\nGREETING=hi bash job.sh",
        shlex::try_quote(example.to_str().unwrap()).unwrap()
    );
    let id = backend
        .submit(&timed(dir.path(), "hello", "1", &body))
        .await
        .unwrap();
    let status = wait_end(&backend, &id, LOCAL_LIMIT).await;
    let out = output(dir.path());
    assert_eq!(status.state.to_string(), "COMPLETED", "{out}");
    assert!(out.contains("Grüße, こんにちは, 👋"), "{out}");
    assert!(out.contains("a line on stderr"), "{out}");
    let artifact = std::fs::read_to_string(dir.path().join("out/greeting.txt")).unwrap();
    assert!(artifact.starts_with("greeting: hi\n"), "{artifact}");
}

/// Runs only when `local_job_dies_with_the_tool` starts this test binary
/// again: submits a long job, prints its pid file path, and waits to be killed.
#[tokio::test]
#[ignore = "helper process for local_job_dies_with_the_tool"]
async fn helper_submit_and_wait_to_be_killed() {
    let Some(dir) = std::env::var_os("FIRECREST_TEST_HELPER_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let backend = LocalBackend::new();
    backend
        .submit(&spec(
            &dir,
            "orphan",
            "",
            "sleep 300 &\necho $! >> pids.tmp\necho $$ >> pids.tmp\nmv pids.tmp pids\nwait",
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test]
async fn local_job_dies_with_the_tool() {
    let dir = tempfile::tempdir().unwrap();
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "backends::helper_submit_and_wait_to_be_killed",
            "--ignored",
            "--nocapture",
        ])
        .env("FIRECREST_TEST_HELPER_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pids_file = dir.path().join("pids");
    wait_file(&pids_file, APPEAR_LIMIT).await;
    let pids = pids_in(&pids_file);
    assert!(pids.iter().all(|p| alive(*p)));
    helper.kill().unwrap(); // SIGKILL: no cleanup code runs in the helper
    helper.wait().unwrap();
    assert_gone(&pids).await;
}

// ---------------------------------------------------------------- slurm ---

/// The backend, or `None` after printing why the test is skipped.
fn slurm(test: &str) -> Option<SlurmBackend> {
    match crate::slurm::slurm_unavailable() {
        Some(reason) => {
            // Straight to stderr: libtest captures eprintln! of passing tests.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {test}: {reason} (start Slurm with .ci/slurm-up)"
            );
            None
        }
        None => Some(SlurmBackend::new()),
    }
}

/// Slurm jobs run as root's login shell here; a world-readable directory
/// keeps the test independent of who slurmd runs the job as.
fn slurm_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("firecrest-ci-slurm-test-")
        .tempdir()
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Waits until `squeue` no longer lists the job (COMPLETING ends too).
async fn assert_not_queued(id: &JobId) {
    let start = Instant::now();
    loop {
        let out = std::process::Command::new("squeue")
            .args(["-h", "-o", "%i"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let listed = String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == id.0);
        if !listed {
            return;
        }
        assert!(start.elapsed() < SLURM_LIMIT, "job {id} is still in squeue");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Bound for a short Slurm job to end (or to start): the node is shared
/// with other tests and other users of this Slurm.
const SLURM_LIMIT: Duration = Duration::from_secs(300);

#[tokio::test]
async fn slurm_exit_zero_completes_without_the_callers_environment() {
    let Some(backend) = slurm("slurm_exit_zero") else {
        return;
    };
    let dir = slurm_dir();
    let mut job = spec(
        dir.path(),
        "firecrest-ci-test-ok",
        "",
        "echo \"id=$SLURM_JOB_ID pwd=$PWD\"\necho \"leak=${CARGO_MANIFEST_DIR-unset}\"\necho to-stderr >&2",
    );
    job.partition = Some("debug".into());
    let id = backend.submit(&job).await.unwrap();
    let status = wait_end(&backend, &id, SLURM_LIMIT).await;
    assert_eq!(status.state.to_string(), "COMPLETED");
    assert_eq!((status.exit_code, status.signal), (Some(0), Some(0)));
    assert!(status.nodes.is_some());
    assert!(status.end_time.unwrap() >= status.start_time.unwrap());
    let out = output(dir.path());
    assert!(
        out.contains(&format!("id={id} pwd={}", dir.path().display())),
        "{out}"
    );
    assert!(out.contains("leak=unset"), "{out}");
    assert!(out.contains("to-stderr"), "{out}");
    assert_not_queued(&id).await;
}

#[tokio::test]
async fn slurm_exit_three_fails_with_its_code() {
    let Some(backend) = slurm("slurm_exit_three") else {
        return;
    };
    let dir = slurm_dir();
    let id = backend
        .submit(&spec(dir.path(), "firecrest-ci-test-rc3", "", "exit 3"))
        .await
        .unwrap();
    let status = wait_end(&backend, &id, SLURM_LIMIT).await;
    assert_eq!(status.state.to_string(), "FAILED");
    assert_eq!((status.exit_code, status.signal), (Some(3), Some(0)));
    assert_not_queued(&id).await;
}

#[tokio::test]
async fn slurm_job_killed_by_a_signal_reports_it() {
    let Some(backend) = slurm("slurm_killed_by_signal") else {
        return;
    };
    let dir = slurm_dir();
    let id = backend
        .submit(&spec(dir.path(), "firecrest-ci-test-sig", "", "kill -9 $$"))
        .await
        .unwrap();
    let status = wait_end(&backend, &id, SLURM_LIMIT).await;
    assert_eq!(status.state.to_string(), "FAILED");
    assert_eq!(status.signal, Some(9));
    assert_not_queued(&id).await;
}

#[tokio::test]
async fn slurm_time_limit_times_out() {
    let Some(backend) = slurm("slurm_time_limit") else {
        return;
    };
    let dir = slurm_dir();
    let started = Instant::now();
    let id = backend
        .submit(&timed(
            dir.path(),
            "firecrest-ci-test-timeout",
            "1",
            "echo start\nsleep 600\necho never",
        ))
        .await
        .unwrap();
    wait_output(dir.path(), "start\n", SLURM_LIMIT).await;
    let status = wait_end(&backend, &id, SLURM_LIMIT + Duration::from_secs(120)).await;
    assert_eq!(status.state.to_string(), "TIMEOUT");
    assert!(started.elapsed() >= Duration::from_secs(55));
    assert!(output(dir.path()).starts_with("start\n"));
    assert!(!output(dir.path()).contains("never"));
    assert_not_queued(&id).await;
}

#[tokio::test]
async fn slurm_cancel_ends_the_job() {
    let Some(backend) = slurm("slurm_cancel") else {
        return;
    };
    let dir = slurm_dir();
    let id = backend
        .submit(&spec(
            dir.path(),
            "firecrest-ci-test-cancel",
            "",
            "sleep 300 &\necho $! > pids.tmp\nmv pids.tmp pids\nwait",
        ))
        .await
        .unwrap();
    let pids_file = dir.path().join("pids");
    wait_file(&pids_file, SLURM_LIMIT).await;
    let running = backend.job_status(&id).await.unwrap().unwrap();
    assert_eq!(running.state.to_string(), "RUNNING");
    assert_eq!(running.exit_code, None);
    backend.cancel(&id).await.unwrap();
    let status = wait_end(&backend, &id, SLURM_LIMIT).await;
    assert!(
        status.state.to_string().starts_with("CANCELLED"),
        "{status:?}"
    );
    assert_not_queued(&id).await;
    assert_gone(&pids_in(&pids_file)).await;
    // Cancelling an ended job is fine.
    backend.cancel(&id).await.unwrap();
}

/// The tool's own batch script for a job submitted while its last parts go
/// up, its ready file never written: real Slurm's cancel during that wait
/// reaches the waiting shell, whose trap ends the script (its last line,
/// exit 143) rather than Slurm's SIGKILL after KillWait.
#[tokio::test]
async fn slurm_cancel_while_a_job_waits_for_its_last_parts_runs_the_scripts_end() {
    use firecrest_ci::config::UserCommand;
    use firecrest_ci::script::{render, ScriptSpec, UploadWait};
    let Some(backend) = slurm("slurm_cancel_while_waiting") else {
        return;
    };
    let dir = slurm_dir();
    let run_dir = dir.path().to_str().unwrap().to_string();
    let script = render(&ScriptSpec {
        job_name: "firecrest-ci-test-ahead".into(),
        run_dir: run_dir.clone(),
        output_file: format!("{run_dir}/out.log"),
        error_file: None,
        time_limit: None,
        nodes: None,
        ntasks: None,
        gpus: None,
        constraint: None,
        extra_options: vec![],
        archive_parts: vec!["ws.tar.gz".into()],
        archive_sha256: "0".repeat(64),
        env_file: None,
        command: UserCommand::Inline("echo should-not-run".into()),
        artifacts: vec![],
        artifacts_archive: format!("{run_dir}/artifacts.tar.gz"),
        artifacts_part_size: None,
        attempt: 1,
        keep_archive: false,
        upload_wait: Some(UploadWait {
            file: "workspace.ready".into(),
            within: Duration::from_secs(600),
        }),
    })
    .unwrap();
    let id = backend
        .submit(&JobSpec {
            name: "firecrest-ci-test-ahead".into(),
            script,
            working_dir: run_dir,
            output: Some("out.log".into()),
            ..JobSpec::default()
        })
        .await
        .unwrap();
    wait_output(dir.path(), "waiting for the last parts", SLURM_LIMIT).await;
    backend.cancel(&id).await.unwrap();
    let status = wait_end(&backend, &id, SLURM_LIMIT).await;
    assert!(
        status.state.to_string().starts_with("CANCELLED"),
        "{status:?}"
    );
    wait_output(
        dir.path(),
        "firecrest-ci: end of the batch script (exit status 143)",
        APPEAR_LIMIT,
    )
    .await;
    assert!(!output(dir.path()).contains("should-not-run"));
    assert_not_queued(&id).await;
}

#[tokio::test]
async fn slurm_output_streams_exactly_by_offsets() {
    let Some(backend) = slurm("slurm_output_offsets") else {
        return;
    };
    let dir = slurm_dir();
    let id = backend
        .submit(&spec(dir.path(), "firecrest-ci-test-utf8", "", SLOW_WRITER))
        .await
        .unwrap();
    check_streamed_output(&backend, dir.path(), &id).await;
    assert_not_queued(&id).await;
}

#[tokio::test]
async fn slurm_dependency_waits_for_the_first_job() {
    let Some(backend) = slurm("slurm_dependency") else {
        return;
    };
    let dir = slurm_dir();
    // The first job runs until the test has seen the second one wait.
    let first = backend
        .submit(&spec(
            dir.path(),
            "firecrest-ci-test-dep1",
            "",
            "for ((w = 0; w < 1200; w++)); do [ -e release ] && break; sleep 0.1; done",
        ))
        .await
        .unwrap();
    let mut second = spec(dir.path(), "firecrest-ci-test-dep2", "", "echo second");
    second.dependency = Some(first.clone());
    let second = backend.submit(&second).await.unwrap();
    let waiting = backend.job_status(&second).await.unwrap().unwrap();
    assert_eq!(waiting.state.to_string(), "PENDING");
    assert_eq!(waiting.reason.as_deref(), Some("Dependency"));
    std::fs::write(dir.path().join("release"), "").unwrap();
    let a = wait_end(&backend, &first, SLURM_LIMIT).await;
    let b = wait_end(&backend, &second, SLURM_LIMIT).await;
    assert_eq!(
        (a.state.to_string().as_str(), b.state.to_string().as_str()),
        ("COMPLETED", "COMPLETED")
    );
    assert!(b.start_time.unwrap() >= a.end_time.unwrap());
    assert_not_queued(&first).await;
    assert_not_queued(&second).await;
}

#[tokio::test]
async fn slurm_unknown_job_has_no_status() {
    let Some(backend) = slurm("slurm_unknown_job") else {
        return;
    };
    let id = JobId("987654321".into());
    assert_eq!(backend.job_status(&id).await.unwrap(), None);
    backend.cancel(&id).await.unwrap();
}
