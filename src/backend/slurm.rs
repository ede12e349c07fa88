//! The `slurm` backend: the local Slurm commands (`sbatch`, `scontrol`,
//! `sacct`, `scancel`) for CI runners on a cluster's login node and sites
//! without FirecREST. Files go through [`LocalFiles`], since a login node
//! shares the cluster's file system. Whether a state is final is
//! [`SlurmState::is_final`]'s answer, the watcher's.
//!
//! Commands run without a shell, each argument its own argv entry, under a
//! timeout. Jobs are submitted with `--export=NONE`: the job must not inherit
//! the CI runner's environment (it holds CI secrets, and a different PATH
//! would make runs irreproducible); the script's `#!/bin/bash -l` sets up the
//! login environment (modules), and forwarded variables come through the env
//! file the pipeline writes. Note that with `--export=NONE` Slurm also sets
//! `SLURM_EXPORT_ENV=NONE` in the job, which `srun` steps inherit; a script
//! that wants its steps to see its environment unsets it.
//!
//! Status comes from `scontrol show job` while slurmctld still knows the job
//! (`MinJobAge` after its end), then from `sacct` (accounting), then from
//! `sacct --completion` (the job completion log, for clusters without an
//! accounting database). Times are read as Unix seconds via
//! `SLURM_TIME_FORMAT=%s`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::fs::LocalFiles;
use super::{Backend, JobId, JobSpec, JobStatus, OutputChunk, StagedWorkspace};
use crate::outcome::SlurmState;

/// How long one Slurm command may take; a busy slurmctld can be slow, a
/// hung one must not hang CI.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// How long `cancel` waits for the job's processes to stop. It fits the
/// pipeline's cancel budget (GitHub kills 7.5 s after cancelling); a job
/// that ignores SIGTERM longer is killed by Slurm after its `KillWait`.
const CANCEL_WAIT: Duration = Duration::from_secs(3);

/// The `sacct` columns read, in order.
const SACCT_FIELDS: &str = "JobIDRaw,State,ExitCode,ElapsedRaw,Submit,Start,End,NodeList,Reason";

/// Submits and watches jobs with the Slurm commands on this machine.
#[derive(Debug, Clone, Default)]
pub struct SlurmBackend {
    bin_dir: Option<PathBuf>,
    files: LocalFiles,
}

impl SlurmBackend {
    /// Uses the Slurm commands found on `PATH`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses the Slurm commands in `dir` (a site with several Slurm installs,
    /// or a test with stand-in commands).
    pub fn with_bin_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            bin_dir: Some(dir.into()),
            files: LocalFiles,
        }
    }

    fn program(&self, name: &str) -> OsString {
        match &self.bin_dir {
            Some(dir) => dir.join(name).into_os_string(),
            None => OsString::from(name),
        }
    }

    /// Runs one Slurm command; returns its exit status, stdout and stderr.
    async fn run(&self, name: &str, args: &[String], stdin: Option<&[u8]>) -> Result<Output> {
        let mut cmd = Command::new(self.program(name));
        cmd.args(args)
            .env("SLURM_TIME_FORMAT", "%s")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let shown = format!("{name} {}", args.join(" "));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("failed to run {shown}"))?;
        let pipe = child.stdin.take();
        let feed = async {
            if let (Some(bytes), Some(mut pipe)) = (stdin, pipe) {
                pipe.write_all(bytes).await?;
                pipe.shutdown().await?;
            }
            Ok::<(), std::io::Error>(())
        };
        let work = async {
            feed.await
                .with_context(|| format!("failed to send the script to {name}"))?;
            child
                .wait_with_output()
                .await
                .with_context(|| format!("failed to run {shown}"))
        };
        let out = tokio::time::timeout(COMMAND_TIMEOUT, work)
            .await
            .map_err(|_| anyhow!("{shown} did not finish within {COMMAND_TIMEOUT:?}"))??;
        Ok(Output {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    async fn status_from_scontrol(&self, id: &JobId) -> Result<Option<JobStatus>> {
        let out = self
            .run(
                "scontrol",
                &["show".into(), "job".into(), "-o".into(), id.0.clone()],
                None,
            )
            .await?;
        if !out.success {
            if out.stderr.contains("Invalid job id") {
                return Ok(None);
            }
            bail!("scontrol show job {id} failed: {}", out.describe());
        }
        Ok(parse_scontrol(&out.stdout, &id.0))
    }

    /// Waits (at most [`CANCEL_WAIT`]) until a cancelled job has stopped:
    /// `scancel` only signals it, and until the job's processes are gone
    /// they may still write output (the epilogue's last lines) and files
    /// into the run directory the pipeline is about to drain and remove.
    async fn wait_until_gone(&self, id: &JobId) {
        let started = tokio::time::Instant::now();
        loop {
            let running = match self.status_from_scontrol(id).await {
                // COMPLETING is not final: its processes are being killed.
                Ok(Some(status)) => !status.state.is_final(),
                Ok(None) => false,
                Err(err) => {
                    tracing::debug!("could not check that job {id} stopped: {err:#}");
                    false
                }
            };
            if !running {
                return;
            }
            if started.elapsed() >= CANCEL_WAIT {
                tracing::debug!(
                    "job {id} still stopping after {CANCEL_WAIT:?}; Slurm ends it on its own"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn status_from_sacct(&self, id: &JobId, completion: bool) -> Result<Option<JobStatus>> {
        let mut args: Vec<String> = Vec::new();
        if completion {
            args.push("--completion".into());
        }
        args.extend(
            ["-n", "-P", "-X", "-j", &id.0, "-o", SACCT_FIELDS]
                .iter()
                .map(|s| s.to_string()),
        );
        let out = self.run("sacct", &args, None).await?;
        if !out.success {
            // No accounting (or no completion log) on this cluster: no answer here.
            tracing::debug!("sacct for job {id} gave no answer: {}", out.describe());
            return Ok(None);
        }
        Ok(parse_sacct(&out.stdout, &id.0))
    }
}

/// What one command returned.
struct Output {
    success: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Output {
    fn describe(&self) -> String {
        let code = self.code.map_or_else(
            || "killed by a signal".to_string(),
            |c| format!("exit code {c}"),
        );
        if self.stderr.is_empty() {
            code
        } else {
            format!("{code}: {}", self.stderr)
        }
    }
}

/// `sinfo --format=%R` lines, each partition once, in order.
fn parse_partitions(stdout: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

/// Reads sbatch's `--parsable` answer: `<id>` or `<id>;<cluster>`.
fn parse_sbatch(stdout: &str) -> Result<JobId> {
    let line = stdout.lines().map(str::trim).find(|l| !l.is_empty());
    let id = line
        .and_then(|l| l.split(';').next())
        .map(str::trim)
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| anyhow!("sbatch printed no job id: {:?}", stdout.trim()))?;
    Ok(JobId(id.to_string()))
}

/// Splits Slurm's `rc:signal`.
fn parse_exit_code(value: &str) -> (Option<i64>, Option<i64>) {
    match value.split_once(':') {
        Some((rc, sig)) => (rc.trim().parse().ok(), sig.trim().parse().ok()),
        None => (value.trim().parse().ok(), None),
    }
}

/// A Unix time printed under `SLURM_TIME_FORMAT=%s`; `Unknown`, `None`, 0 are absent.
fn parse_time(value: &str) -> Option<i64> {
    value.trim().parse::<i64>().ok().filter(|t| *t > 0)
}

/// `None`, `(null)` and empty mean "not set" in Slurm's output.
fn present(value: &str) -> Option<String> {
    let v = value.trim();
    (!v.is_empty() && v != "None" && v != "(null)" && v != "Unknown").then(|| v.to_string())
}

/// Splits one `scontrol -o` line into `Key=value` pairs. Values may contain
/// spaces (a working directory), so a word without `=` joins the value before it.
fn scontrol_fields(line: &str) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for word in line.split(' ').filter(|w| !w.is_empty()) {
        match word.split_once('=') {
            Some((key, value)) if is_scontrol_key(key) => {
                fields.push((key.to_string(), value.to_string()));
            }
            _ => {
                if let Some((_, value)) = fields.last_mut() {
                    value.push(' ');
                    value.push_str(word);
                }
            }
        }
    }
    fields
}

/// Keys look like `JobState`, `Socks/Node`, `ReqB:S:C:T`.
fn is_scontrol_key(key: &str) -> bool {
    key.starts_with(|c: char| c.is_ascii_uppercase())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | ':' | '_'))
}

/// The status in `scontrol show job -o` output, from the line of job `id`.
fn parse_scontrol(stdout: &str, id: &str) -> Option<JobStatus> {
    for line in stdout.lines() {
        let fields = scontrol_fields(line);
        let get = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        if get("JobId") != Some(id) {
            continue;
        }
        let state = SlurmState::parse(get("JobState")?);
        // The exit code and end time are known once the state is final.
        let finished = state.is_final();
        let started = state != SlurmState::Pending;
        let (exit_code, signal) = if finished {
            parse_exit_code(get("ExitCode").unwrap_or(""))
        } else {
            (None, None)
        };
        return Some(JobStatus {
            reason: get("Reason").and_then(present),
            exit_code,
            signal,
            elapsed: get("RunTime").and_then(run_time_seconds),
            submit_time: get("SubmitTime").and_then(parse_time),
            start_time: started
                .then(|| get("StartTime").and_then(parse_time))
                .flatten(),
            end_time: finished
                .then(|| get("EndTime").and_then(parse_time))
                .flatten(),
            nodes: get("NodeList").and_then(present),
            state,
        });
    }
    None
}

/// The status in `sacct -n -P -X -o <SACCT_FIELDS>` output for job `id`; the
/// last line wins (a requeued job is listed once per run).
fn parse_sacct(stdout: &str, id: &str) -> Option<JobStatus> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.split('|').next() == Some(id))?;
    let cols: Vec<&str> = line.split('|').collect();
    let col = |i: usize| cols.get(i).copied().unwrap_or("");
    let state = SlurmState::parse(&present(col(1))?);
    let finished = state.is_final();
    let (exit_code, signal) = if finished {
        parse_exit_code(col(2))
    } else {
        (None, None)
    };
    Some(JobStatus {
        exit_code,
        signal,
        elapsed: col(3).trim().parse().ok(),
        submit_time: parse_time(col(4)),
        start_time: parse_time(col(5)),
        end_time: finished.then(|| parse_time(col(6))).flatten(),
        nodes: present(col(7)).filter(|n| n != "None assigned"),
        reason: present(col(8)),
        state,
    })
}

/// `$SCRATCH/firecrest-ci`, else `$HOME/firecrest-ci`, else under `/tmp`.
/// HOME comes from the environment only: a user lookup would need NSS.
fn base_dir_from(scratch: Option<String>, home: Option<String>) -> String {
    let root = [scratch, home]
        .into_iter()
        .flatten()
        .map(|v| v.trim_end_matches('/').to_string())
        .find(|v| !v.is_empty())
        .unwrap_or_else(|| "/tmp".to_string());
    format!("{root}/firecrest-ci")
}

/// The run's steps with the Slurm commands, for the dry run.
pub fn plan(request: &super::PlanRequest) -> Vec<String> {
    let run_dir = request.run_dir;
    vec![
        format!("mkdir -m 700 {run_dir}; copy {}", request.archive),
        "sbatch --parsable".to_string(),
        "scontrol show job / sacct every poll; read the output file".to_string(),
        request.removal(&format!("rm -r {run_dir}")),
        "on cancel: scancel <id>".to_string(),
    ]
}

#[async_trait]
impl Backend for SlurmBackend {
    fn describe(&self) -> String {
        match &self.bin_dir {
            Some(dir) => format!("Slurm commands in {}", dir.display()),
            None => "Slurm commands on this machine".to_string(),
        }
    }

    async fn default_base_dir(&self) -> Result<String> {
        Ok(base_dir_from(
            std::env::var("SCRATCH").ok(),
            std::env::var("HOME").ok(),
        ))
    }

    async fn create_private_dir(&self, path: &str) -> Result<()> {
        self.files.create_private_dir(path).await
    }

    async fn mode(&self, path: &str) -> Result<Option<u32>> {
        self.files.mode(path).await
    }

    async fn partitions(&self) -> Result<Option<Vec<String>>> {
        let args = ["--noheader".to_string(), "--format=%R".to_string()];
        let out = self
            .run("sinfo", &args, None)
            .await
            .context("failed to list the partitions")?;
        if !out.success {
            bail!("sinfo failed: {}", out.describe());
        }
        Ok(Some(parse_partitions(&out.stdout)))
    }

    async fn put_file(&self, dir: &str, name: &str, contents: Vec<u8>) -> Result<()> {
        self.files.put_file(dir, name, contents).await
    }

    async fn upload_workspace(&self, archive: &Path, dir: &str) -> Result<StagedWorkspace> {
        self.files.upload_workspace(archive, dir).await
    }

    async fn submit(&self, job: &JobSpec) -> Result<JobId> {
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name={}", job.name),
            format!("--chdir={}", job.working_dir),
            "--export=NONE".to_string(),
        ];
        if let Some(account) = &job.account {
            args.push(format!("--account={account}"));
        }
        if let Some(partition) = &job.partition {
            args.push(format!("--partition={partition}"));
        }
        if let Some(reservation) = &job.reservation {
            args.push(format!("--reservation={reservation}"));
        }
        if let Some(dependency) = &job.dependency {
            args.push(format!("--dependency=afterok:{dependency}"));
        }
        let out = self
            .run("sbatch", &args, Some(job.script.as_bytes()))
            .await
            .with_context(|| format!("failed to submit job {}", job.name))?;
        if !out.success {
            if let Some(rejected) = super::SubmitRejected::from_message(&out.stderr) {
                return Err(rejected.into());
            }
            bail!("sbatch rejected job {}: {}", job.name, out.describe());
        }
        parse_sbatch(&out.stdout).with_context(|| format!("failed to submit job {}", job.name))
    }

    async fn job_status(&self, id: &JobId) -> Result<Option<JobStatus>> {
        if let Some(status) = self
            .status_from_scontrol(id)
            .await
            .with_context(|| format!("failed to read the status of job {id}"))?
        {
            return Ok(Some(status));
        }
        if let Some(status) = self.status_from_sacct(id, false).await? {
            return Ok(Some(status));
        }
        self.status_from_sacct(id, true).await
    }

    async fn read_output(&self, path: &str, offset: u64, _last: bool) -> Result<OutputChunk> {
        self.files.read_output(path, offset).await
    }

    async fn cancel(&self, id: &JobId) -> Result<()> {
        let out = self
            .run("scancel", std::slice::from_ref(&id.0), None)
            .await
            .with_context(|| format!("failed to cancel job {id}"))?;
        if out.stderr.contains("already completed") || out.stderr.contains("Invalid job id") {
            return Ok(());
        }
        if !out.success {
            bail!("scancel {id} failed: {}", out.describe());
        }
        self.wait_until_gone(id).await;
        Ok(())
    }

    async fn download(&self, remote: &str, local: &Path) -> Result<bool> {
        self.files.download(remote, local).await
    }

    async fn remove_dir(&self, path: &str) -> Result<()> {
        self.files.remove_dir(path).await
    }
}

/// Seconds in `scontrol`'s `RunTime` (Slurm's time format, read by the one
/// Slurm time parser).
fn run_time_seconds(text: &str) -> Option<u64> {
    crate::config::SlurmTime::parse_slurm(text).map(|t| t.as_duration().map_or(0, |d| d.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real `scontrol show job -o` lines from Slurm 22.05 (SLURM_TIME_FORMAT=%s),
    // shortened to the fields that matter plus neighbours that must not confuse.
    const DONE: &str = "JobId=2 JobName=wrap UserId=root(0) GroupId=root(0) Priority=4294901758 \
        JobState=FAILED Reason=NonZeroExitCode Dependency=(null) ExitCode=3:0 RunTime=00:01:05 \
        TimeLimit=UNLIMITED SubmitTime=1795915565 StartTime=1795915567 EndTime=1795915632 \
        NodeList=vm BatchHost=vm ReqB:S:C:T=0:0:*:* Socks/Node=* WorkDir=/tmp/my dir \
        StdOut=/tmp/my dir/slurm-2.out Power=";
    const PENDING: &str = "JobId=9 JobName=x JobState=PENDING Reason=Priority ExitCode=0:0 \
        RunTime=00:00:00 SubmitTime=1795915565 StartTime=1795919999 EndTime=1795923599 \
        NodeList=(null)";

    #[test]
    fn scontrol_finished_job() {
        let s = parse_scontrol(DONE, "2").unwrap();
        assert_eq!(s.state, SlurmState::Failed);
        assert_eq!(s.reason.as_deref(), Some("NonZeroExitCode"));
        assert_eq!((s.exit_code, s.signal), (Some(3), Some(0)));
        assert_eq!(s.elapsed, Some(65));
        assert_eq!(s.submit_time, Some(1795915565));
        assert_eq!(s.start_time, Some(1795915567));
        assert_eq!(s.end_time, Some(1795915632));
        assert_eq!(s.nodes.as_deref(), Some("vm"));
    }

    #[test]
    fn scontrol_values_with_spaces_stay_whole() {
        let fields = scontrol_fields(DONE);
        let workdir = fields.iter().find(|(k, _)| k == "WorkDir").unwrap();
        assert_eq!(workdir.1, "/tmp/my dir");
        assert!(fields.iter().any(|(k, v)| k == "Socks/Node" && v == "*"));
    }

    #[test]
    fn scontrol_pending_job_has_no_exit_or_projected_times() {
        let s = parse_scontrol(PENDING, "9").unwrap();
        assert_eq!(s.state, SlurmState::Pending);
        assert_eq!(s.reason.as_deref(), Some("Priority"));
        assert_eq!((s.exit_code, s.signal), (None, None));
        assert_eq!((s.start_time, s.end_time), (None, None));
        assert_eq!(s.nodes, None);
    }

    #[test]
    fn scontrol_other_job_is_not_taken() {
        assert_eq!(parse_scontrol(DONE, "20"), None);
        assert_eq!(parse_scontrol("", "2"), None);
    }

    #[test]
    fn sacct_last_line_of_the_job_wins() {
        let out = "5|REQUEUED|0:0|3|1795915565|1795915567|1795915570|vm|None\n\
                   5|CANCELLED by 1001|0:15|86|1795915565|1795915580|1795915666|nid[001-004]|None\n\
                   55|COMPLETED|0:0|1|1|1|1|vm|None\n";
        let s = parse_sacct(out, "5").unwrap();
        assert_eq!(s.state.to_string(), "CANCELLED by 1001");
        assert_eq!((s.exit_code, s.signal), (Some(0), Some(15)));
        assert_eq!(s.elapsed, Some(86));
        assert_eq!(s.start_time, Some(1795915580));
        assert_eq!(s.end_time, Some(1795915666));
        assert_eq!(s.nodes.as_deref(), Some("nid[001-004]"));
        assert_eq!(s.reason, None);
        assert_eq!(parse_sacct(out, "6"), None);
    }

    #[test]
    fn sacct_running_job_has_no_exit_code() {
        let s = parse_sacct("7|RUNNING|0:0|12|10|11|Unknown|vm|None\n", "7").unwrap();
        assert_eq!((s.exit_code, s.signal, s.end_time), (None, None, None));
        assert_eq!(s.start_time, Some(11));
    }

    #[test]
    fn partitions_are_listed_once_each() {
        assert_eq!(
            parse_partitions("debug\nnormal\ndebug\n\n"),
            ["debug", "normal"]
        );
    }

    #[test]
    fn sbatch_refusing_an_input_is_a_rejection() {
        let err = "sbatch: error: invalid partition specified: nopart\n\
                   sbatch: error: Batch job submission failed: Invalid partition name specified";
        let rejected = super::super::SubmitRejected::from_message(err).unwrap();
        assert_eq!(
            rejected.rejection,
            crate::firecrest::retry::Rejection::Partition
        );
        assert!(rejected.detail.contains("nopart"), "{}", rejected.detail);
    }

    #[test]
    fn sbatch_answers() {
        assert_eq!(parse_sbatch("123\n").unwrap(), JobId("123".into()));
        assert_eq!(parse_sbatch("456;daint\n").unwrap(), JobId("456".into()));
        assert!(parse_sbatch("").is_err());
        assert!(parse_sbatch("Submitted batch job 1\n").is_err());
    }

    #[test]
    fn durations_and_exit_codes() {
        assert_eq!(run_time_seconds("00:01:26"), Some(86));
        assert_eq!(run_time_seconds("1-00:00:01"), Some(86401));
        assert_eq!(run_time_seconds("05:07"), Some(307));
        assert_eq!(run_time_seconds("INVALID"), None);
        assert_eq!(parse_exit_code("0:9"), (Some(0), Some(9)));
        assert_eq!(parse_exit_code("3:0"), (Some(3), Some(0)));
        let is_finished = |state: &str| SlurmState::parse(state).is_final();
        assert!(is_finished("CANCELLED by 0"));
        assert!(!is_finished("COMPLETING"));
        assert!(!is_finished("RUNNING"));
        assert!(!is_finished(""));
    }

    #[test]
    fn a_cancelled_job_runs_until_it_stopped_completing() {
        // What `wait_until_gone` waits out.
        let is_still_running = |state: &str| !SlurmState::parse(state).is_final();
        for running in [
            "PENDING",
            "RUNNING",
            "COMPLETING",
            "CONFIGURING",
            "SUSPENDED",
            "",
        ] {
            assert!(is_still_running(running), "{running}");
        }
        for gone in [
            "CANCELLED",
            "CANCELLED by 0",
            "COMPLETED",
            "FAILED",
            "TIMEOUT",
        ] {
            assert!(!is_still_running(gone), "{gone}");
        }
    }

    #[test]
    fn base_dir_prefers_scratch_then_home_then_tmp() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            base_dir_from(some("/scratch/u"), some("/home/u")),
            "/scratch/u/firecrest-ci"
        );
        assert_eq!(
            base_dir_from(some(""), some("/home/u/")),
            "/home/u/firecrest-ci"
        );
        assert_eq!(base_dir_from(None, None), "/tmp/firecrest-ci");
    }

    /// The backend's "finished" (an exit code is reported) is the watcher's
    /// "final", state by state, unknown states included (they once
    /// disagreed: an unknown state or COMPLETING counted as finished here
    /// and not there).
    #[test]
    fn finished_here_is_final_for_the_watcher() {
        for state in [
            "PENDING",
            "RUNNING",
            "SUSPENDED",
            "COMPLETING",
            "CONFIGURING",
            "REQUEUED",
            "REQUEUE_HOLD",
            "REQUEUE_FED",
            "RESIZING",
            "SIGNALING",
            "STAGE_OUT",
            "STOPPED",
            "RESV_DEL_HOLD",
            "COMPLETED",
            "FAILED",
            "TIMEOUT",
            "CANCELLED by 1001",
            "NODE_FAIL",
            "PREEMPTED",
            "BOOT_FAIL",
            "DEADLINE",
            "OUT_OF_MEMORY",
            "SPECIAL_EXIT",
            "REVOKED",
            "SOMETHING_NEW",
            "",
        ] {
            let final_state = SlurmState::parse(state).is_final();
            // The exit code is reported exactly when the state is final.
            let line = format!("JobId=7 JobName=x JobState={state} ExitCode=3:0 RunTime=00:00:01");
            let status = parse_scontrol(&line, "7");
            if !state.is_empty() {
                let status = status.expect("a status");
                assert_eq!(status.state.is_final(), final_state, "{state}");
                assert_eq!(status.exit_code.is_some(), final_state, "{state}");
            }
            let sacct = format!("7|{state}|3:0|1|10|11|12|vm|None\n");
            if let Some(status) = parse_sacct(&sacct, "7") {
                assert_eq!(status.exit_code.is_some(), final_state, "{state}");
                assert_eq!(status.end_time.is_some(), final_state, "{state}");
            }
        }
    }
}
