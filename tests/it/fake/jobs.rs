//! The fake Slurm: `/compute/{system}/jobs` and a scheduler thread that runs
//! each submitted script for real with bash in a session of its own, and
//! reports states shaped like the recorded sacct output (PENDING, RUNNING,
//! COMPLETED 0:0, FAILED n:0, FAILED 0:sig, TIMEOUT, `CANCELLED by 1001`).
//!
//! Signals follow `recorded/job_cancel_traps.json`: at the time limit and on
//! cancel, SIGTERM goes to the batch shell alone (its foreground command is
//! not signalled, so a shell that traps TERM while a command runs in the
//! foreground runs its trap only when that command ends); KillWait later,
//! SIGKILL goes to every process of the job. The session stands for Slurm's
//! process tracking: it holds the job's processes whatever process groups
//! the script makes, and ends with the batch shell.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use super::http::{Request, Response};
use super::{epoch_now, error_body_user, validation_error, ForcedEnd, JobKind, State};

/// Fixed facts about the fake cluster that jobs need.
pub struct Cluster {
    pub spool: PathBuf,
    pub home: PathBuf,
    pub user: String,
    pub uid: u32,
}

pub(crate) enum JState {
    Pending,
    Running,
    Final(Final),
}

#[derive(Clone)]
pub(crate) struct Final {
    pub state: String,
    pub exit: i32,
    pub signal: i32,
    /// The batch step: (state, exit, signal); None when the job never ran.
    pub task: Option<(String, i32, i32)>,
}

impl Final {
    fn same(state: &str, exit: i32, signal: i32) -> Self {
        Final {
            state: state.into(),
            exit,
            signal,
            task: Some((state.into(), exit, signal)),
        }
    }
}

enum Ending {
    Timeout,
    Forced,
}

pub(crate) struct Proc {
    child: Option<Child>,
    kill_at: Option<Instant>,
}

/// What a transfer job does when it runs.
pub(crate) enum TransferWork {
    /// Move the completed S3 object `key` to `target`.
    Ingress { key: String, target: PathBuf },
    /// Copy `source` into the S3 object `key`.
    Outgress { key: String, source: PathBuf },
    /// `rm -r` of a path.
    Remove { path: PathBuf },
}

pub(crate) struct Job {
    pub id: u64,
    pub name: String,
    pub kind: JobKind,
    pub script: String,
    pub workdir: String,
    pub stdout: String,
    pub stderr: String,
    env: Vec<(String, String)>,
    account: String,
    partition: String,
    limit: Option<u64>,
    deps: Vec<(bool, u64)>,
    eligible_at: Instant,
    pub visible_at: Option<Instant>,
    pub state: JState,
    pending_reason: String,
    start: Option<u64>,
    end: Option<u64>,
    started_at: Option<Instant>,
    proc: Option<Proc>,
    pub pgid: Option<i32>,
    ending: Option<Ending>,
    forced: Option<ForcedEnd>,
    pub transfer: Option<TransferWork>,
    /// A transfer job that found nothing to do looks again at this time.
    next_check: Option<Instant>,
}

impl Job {
    pub fn is_final(&self) -> bool {
        matches!(self.state, JState::Final(_))
    }

    pub fn final_state(&self) -> Option<&Final> {
        match &self.state {
            JState::Final(f) => Some(f),
            _ => None,
        }
    }

    pub fn state_name(&self) -> String {
        match &self.state {
            JState::Pending => "PENDING".into(),
            JState::Running => "RUNNING".into(),
            JState::Final(f) => f.state.clone(),
        }
    }

    pub fn visible(&self, now: Instant) -> bool {
        self.visible_at.is_some_and(|t| t <= now)
    }

    /// A job shaped like the server's `GET /compute/{system}/jobs/{id}`.
    /// `single` reproduces the recorded quirk that a finished transfer job
    /// reads back as `allocation` right after it ends.
    pub fn to_json(&self, single: bool) -> Value {
        let now = epoch_now();
        let elapsed = match (self.start, self.end) {
            (Some(s), Some(e)) => e.saturating_sub(s),
            (Some(s), None) => now.saturating_sub(s),
            _ => 0,
        };
        let (status, tasks, nodes, suspended) = match &self.state {
            JState::Pending => (
                json!({"state": "PENDING", "stateReason": self.pending_reason,
                       "exitCode": null, "interruptSignal": null}),
                json!([]),
                "",
                Value::Null,
            ),
            JState::Running => (
                json!({"state": "RUNNING", "stateReason": "None", "exitCode": 0, "interruptSignal": 0}),
                json!([self.task_json("RUNNING", 0, 0, elapsed)]),
                "vm",
                json!(0),
            ),
            JState::Final(f) => (
                json!({"state": f.state, "stateReason": "None", "exitCode": f.exit,
                       "interruptSignal": f.signal}),
                match &f.task {
                    Some((s, e, sig)) => json!([self.task_json(s, *e, *sig, elapsed)]),
                    None => json!([]),
                },
                if f.task.is_some() { "vm" } else { "" },
                json!(0),
            ),
        };
        let allocation = single && self.kind != JobKind::User && self.is_final();
        json!({
            "jobId": self.id.to_string(),
            "name": if allocation { "allocation" } else { self.name.as_str() },
            "status": status,
            "tasks": tasks,
            "time": {"elapsed": elapsed, "start": self.start, "end": self.end,
                     "suspended": suspended,
                     "limit": if allocation { None } else { self.limit }},
            "account": self.account,
            "allocationNodes": 1,
            "cluster": "ci",
            "group": if allocation { "root" } else { "ciuser" },
            "nodes": nodes,
            "partition": if allocation { "" } else { self.partition.as_str() },
            "killRequestUser": null,
            "user": "ciuser",
            "workingDirectory": if allocation { "" } else { self.workdir.as_str() },
            "priority": if allocation { 0 } else { 4_294_901_764u64.saturating_sub(self.id) },
        })
    }

    fn task_json(&self, state: &str, exit: i32, signal: i32, elapsed: u64) -> Value {
        json!({"id": format!("{}.batch", self.id), "name": "batch",
               "status": {"state": state, "stateReason": null, "exitCode": exit, "interruptSignal": signal},
               "time": {"elapsed": elapsed, "start": self.start, "end": self.end, "suspended": 0, "limit": null}})
    }

    pub fn metadata_json(&self) -> Value {
        json!({"jobs": [{"jobId": self.id.to_string(), "script": self.script,
                         "standardInput": "/dev/null", "standardOutput": self.stdout,
                         "standardError": self.stderr}]})
    }

    fn finish(&mut self, f: Final) {
        self.end = Some(epoch_now());
        self.state = JState::Final(f);
    }

    /// Signals every process of the job (its session).
    fn signal_group(&self, sig: Signal) {
        if let Some(sid) = self.pgid {
            for pid in session_members(sid) {
                let _ = kill(Pid::from_raw(pid), sig);
            }
        }
    }

    /// SIGTERM to the batch shell now, SIGKILL to the whole job after KillWait.
    fn terminate(&mut self, kill_wait: Duration) {
        if let Some(pid) = self.pgid {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if let Some(p) = &mut self.proc {
            p.kill_at = Some(Instant::now() + kill_wait);
        }
    }

    pub fn kill_now(&mut self) {
        self.signal_group(Signal::SIGKILL);
        if let Some(child) = self.proc.as_mut().and_then(|p| p.child.as_mut()) {
            let _ = child.wait();
        }
        self.proc = None;
    }
}

#[derive(Default)]
struct Directives {
    output: Option<String>,
    error: Option<String>,
    time: Option<String>,
    dependency: Option<String>,
    job_name: Option<String>,
}

/// `#SBATCH` lines before the first command, like sbatch reads them.
fn directives(script: &str) -> Directives {
    let mut d = Directives::default();
    for line in script.lines().skip_while(|l| l.starts_with("#!")) {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let Some(rest) = t.strip_prefix("#SBATCH") else {
            if t.starts_with('#') {
                continue;
            }
            break;
        };
        let words = shlex::split(rest).unwrap_or_default();
        let mut it = words.into_iter();
        while let Some(w) = it.next() {
            let (key, inline) = match w.split_once('=') {
                Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
                _ if w.starts_with('-') && !w.starts_with("--") && w.len() > 2 => {
                    (w[..2].to_string(), Some(w[2..].to_string()))
                }
                _ => (w.clone(), None),
            };
            let slot = match key.as_str() {
                "--output" | "-o" => &mut d.output,
                "--error" | "-e" => &mut d.error,
                "--time" | "-t" => &mut d.time,
                "--dependency" | "-d" => &mut d.dependency,
                "--job-name" | "-J" => &mut d.job_name,
                _ => continue,
            };
            *slot = inline.or_else(|| it.next());
        }
    }
    d
}

/// Slurm time formats to seconds; None means no limit.
fn parse_time(s: &str) -> Option<Option<u64>> {
    let s = s.trim();
    if ["unlimited", "infinite", "-1"].contains(&s.to_ascii_lowercase().as_str()) {
        return Some(None);
    }
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().ok()?, r),
        None => (0, s),
    };
    let parts: Vec<u64> = rest
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let secs = match (s.contains('-'), parts.as_slice()) {
        (false, [m]) => m * 60,
        (false, [m, sec]) => m * 60 + sec,
        (_, [h, m, sec]) => h * 3600 + m * 60 + sec,
        (true, [h]) => h * 3600,
        (true, [h, m]) => h * 3600 + m * 60,
        _ => return None,
    };
    Some(Some(days * 86400 + secs))
}

fn expand(pattern: &str, id: u64, name: &str, user: &str) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('j') | Some('A') => out.push_str(&id.to_string()),
            Some('x') => out.push_str(name),
            Some('u') => out.push_str(user),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

fn absolute(workdir: &str, p: &str) -> String {
    if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{}/{}", workdir.trim_end_matches('/'), p)
    }
}

fn slurm_error(msg: &str) -> Response {
    Response::json(
        500,
        &error_body_user(&format!(
            "Unexpected Slurm command response. exit_status:1 std_err:{msg}\n"
        )),
    )
}

const SUBMIT_ROUTE: &str = "post /compute/{system_name}/jobs";

/// `POST /compute/{system}/jobs`.
pub fn submit(st: &mut State, cluster: &Cluster, req: &Request) -> Response {
    let Some(body) = serde_json::from_slice::<Value>(&req.body)
        .ok()
        .filter(Value::is_object)
    else {
        return validation_error(
            SUBMIT_ROUTE,
            "model_attributes_type",
            json!([{"location": "body", "name": null,
                    "message": "Input should be a valid dictionary or object to extract fields from"}]),
        );
    };
    let job = body.get("job").filter(|j| j.is_object());
    let Some(job) = job.filter(|j| {
        j.get("workingDirectory")
            .or(j.get("working_directory"))
            .is_some()
    }) else {
        return validation_error(
            SUBMIT_ROUTE,
            "missing",
            json!([{"location": "body", "name": "job", "message": "Field required"}]),
        );
    };
    let text = |k: &str, alt: &str| {
        job.get(k)
            .or_else(|| job.get(alt))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let workdir = text("workingDirectory", "working_directory").unwrap_or_default();
    let script = match text("scriptPath", "script_path") {
        Some(p) => match fs::read_to_string(&p) {
            Ok(s) => s,
            Err(_) => return slurm_error(&format!("sbatch: error: Unable to open file {p}")),
        },
        None => match text("script", "script") {
            Some(s) => s,
            None => {
                return validation_error(
                    SUBMIT_ROUTE,
                    "missing",
                    json!([{"location": "body", "name": "script", "message": "Field required"}]),
                )
            }
        },
    };
    let d = directives(&script);
    // sbatch's answers, as recorded in submit_errors.json.
    if let Some(partition) = text("partition", "partition") {
        if let Some(bad) = partition
            .split(',')
            .find(|p| !st.settings.partitions.iter().any(|known| known == p))
        {
            return slurm_error(&format!(
                "sbatch: error: invalid partition specified: {bad}\n\
                 sbatch: error: Batch job submission failed: Invalid partition name specified"
            ));
        }
    }
    if let Some(account) = text("account", "account") {
        if !st.settings.accounts.iter().any(|known| known == &account) {
            return slurm_error(
                "sbatch: error: Batch job submission failed: \
                 Invalid account or account/partition combination specified",
            );
        }
    }
    let limit = match d.time.as_deref().map(parse_time) {
        Some(Some(l)) => l,
        Some(None) => return slurm_error("sbatch: error: Invalid --time specification"),
        None => Some(st.settings.default_time_limit.as_secs()),
    };
    let mut deps = Vec::new();
    if let Some(dep) = &d.dependency {
        for clause in dep.split([',', '?']) {
            let Some((kind, ids)) = clause.split_once(':') else {
                continue;
            };
            for id in ids.split(':') {
                let id: u64 =
                    match id.split('+').next().and_then(|i| i.parse().ok()) {
                        Some(i) if st.jobs.contains_key(&i) => i,
                        _ => return slurm_error(
                            "sbatch: error: Batch job submission failed: Job dependency problem",
                        ),
                    };
                deps.push((kind == "afterok", id));
            }
        }
    }
    let id = st.next_job_id;
    st.next_job_id += 1;
    let name = text("name", "name")
        .or(d.job_name)
        .unwrap_or_else(|| "sbatch".into());
    let stdout = text("standardOutput", "standard_output")
        .or(d.output)
        .unwrap_or_else(|| "slurm-%j.out".into());
    let stdout = absolute(&workdir, &expand(&stdout, id, &name, &cluster.user));
    let stderr = match text("standardError", "standard_error").or(d.error) {
        Some(e) => absolute(&workdir, &expand(&e, id, &name, &cluster.user)),
        None => stdout.clone(),
    };
    // FirecREST passes env through `sbatch --export=ALL,K=V,...`: a comma in a
    // value starts a new (bogus) entry.
    let mut env = Vec::new();
    if let Some(map) = job.get("env").and_then(Value::as_object) {
        let joined: Vec<String> = map
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.as_str().map(str::to_string).unwrap_or(v.to_string())
                )
            })
            .collect();
        for item in joined.join(",").split(',') {
            if let Some((k, v)) = item.split_once('=') {
                env.push((k.to_string(), v.to_string()));
            }
        }
    }
    let now = Instant::now();
    let visible_at = visibility(st, &name, now);
    let forced = st.forced_ends.get(&name).cloned();
    st.jobs.insert(
        id,
        Job {
            id,
            name,
            kind: JobKind::User,
            script,
            workdir,
            stdout,
            stderr,
            env,
            account: text("account", "account").unwrap_or_else(|| "ci".into()),
            partition: text("partition", "partition").unwrap_or_else(|| "debug".into()),
            limit,
            deps,
            eligible_at: now + st.settings.pending_for,
            visible_at,
            state: JState::Pending,
            pending_reason: st.settings.pending_reason.clone(),
            start: None,
            end: None,
            started_at: None,
            proc: None,
            pgid: None,
            ending: None,
            forced,
            transfer: None,
            next_check: None,
        },
    );
    Response::json(201, &json!({"jobId": id.to_string()}))
}

fn visibility(st: &State, name: &str, now: Instant) -> Option<Instant> {
    match st.faults.hidden_jobs.get(name) {
        Some(None) => None,
        Some(Some(d)) => Some(now + *d),
        None => Some(now + st.settings.job_404_for),
    }
}

/// Queues a transfer job (PENDING until the scheduler runs its work).
pub fn submit_transfer(
    st: &mut State,
    kind: JobKind,
    name: &str,
    workdir: &str,
    logs: (String, String),
    work: TransferWork,
) -> u64 {
    let id = st.next_job_id;
    st.next_job_id += 1;
    let now = Instant::now();
    let visible_at = visibility(st, name, now);
    st.jobs.insert(
        id,
        Job {
            id,
            name: name.into(),
            kind,
            script: format!(
                "#!/bin/bash -l\n#SBATCH --nodes=1\n#SBATCH --time=0-00:15:00\n# {name}\n"
            ),
            workdir: workdir.into(),
            stdout: logs.0,
            stderr: logs.1,
            env: Vec::new(),
            account: "ci".into(),
            partition: "debug".into(),
            limit: Some(900),
            deps: Vec::new(),
            eligible_at: now + st.settings.transfer_delay,
            visible_at,
            state: JState::Pending,
            pending_reason: "None".into(),
            start: None,
            end: None,
            started_at: None,
            proc: None,
            pgid: None,
            ending: None,
            forced: None,
            transfer: Some(work),
            next_check: None,
        },
    );
    id
}

/// `DELETE /compute/{system}/jobs/{id}`.
pub fn cancel(st: &mut State, id: u64) -> Response {
    let kill_wait = st.settings.kill_wait;
    let uid = st.uid;
    let Some(job) = st.jobs.get_mut(&id) else {
        return Response::json(
            500,
            &error_body_user(&format!(
                "Unexpected Slurm command response. exit_status:0 std_err:scancel: error: Kill job error on job id {id}: Invalid job id specified\n"
            )),
        );
    };
    let cancelled = format!("CANCELLED by {uid}");
    match job.state {
        JState::Final(_) => Response::json(
            500,
            &error_body_user(&format!(
                "Unexpected Slurm command response. exit_status:0 std_err:scancel: Terminating job {id}\nscancel: error: Kill job error on job id {id}: Job/step already completing or completed\n"
            )),
        ),
        JState::Pending => {
            let now = epoch_now();
            job.start = Some(now);
            job.finish(Final {
                state: cancelled,
                exit: 0,
                signal: 0,
                task: None,
            });
            Response::json(204, &Value::Null)
        }
        JState::Running => {
            // slurmstepd's line in the job's stderr, as recorded.
            let stamp = Command::new("date")
                .arg("+%Y-%m-%dT%H:%M:%S")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            if let Ok(mut err) = OpenOptions::new().append(true).open(&job.stderr) {
                use std::io::Write;
                let _ = writeln!(
                    err,
                    "slurmstepd-vm: error: *** JOB {id} ON vm CANCELLED AT {stamp} ***"
                );
            }
            job.terminate(kill_wait);
            job.finish(Final {
                state: cancelled,
                exit: 0,
                signal: 0,
                task: Some(("CANCELLED".into(), 0, 0)),
            });
            Response::json(204, &Value::Null)
        }
    }
}

fn natural(status: ExitStatus) -> Final {
    match (status.code(), status.signal()) {
        (Some(0), _) => Final::same("COMPLETED", 0, 0),
        (Some(n), _) => Final::same("FAILED", n, 0),
        (None, Some(sig)) => Final {
            state: "FAILED".into(),
            exit: 0,
            signal: sig,
            task: Some(("CANCELLED".into(), 0, sig)),
        },
        (None, None) => Final::same("FAILED", 1, 0),
    }
}

/// One scheduler pass: start, watch, time out and reap jobs.
pub fn tick(st: &mut State, cluster: &Cluster) {
    let now = Instant::now();
    let finals: HashMap<u64, Option<bool>> = st
        .jobs
        .iter()
        .map(|(id, j)| (*id, j.final_state().map(|f| f.state == "COMPLETED")))
        .collect();
    let settings = &st.settings;
    for job in st.jobs.values_mut() {
        match job.state {
            JState::Pending => {
                if now < job.eligible_at {
                    continue;
                }
                let mut blocked = false;
                for (afterok, dep) in &job.deps {
                    match finals.get(dep).copied().flatten() {
                        None => {
                            blocked = true;
                            job.pending_reason = "Dependency".into();
                        }
                        Some(false) if *afterok => {
                            blocked = true;
                            job.pending_reason = "DependencyNeverSatisfied".into();
                        }
                        Some(_) => {}
                    }
                }
                if blocked {
                    continue;
                }
                if let Some(work) = &job.transfer {
                    if job.next_check.is_some_and(|at| now < at) {
                        continue;
                    }
                    let done = super::transfer::run_work(
                        work,
                        job.id,
                        (&job.stdout, &job.stderr),
                        &mut st.objects,
                        st.faults.transfer_failure.as_deref(),
                    );
                    match done {
                        Some(f) => {
                            job.start = Some(epoch_now());
                            job.finish(f);
                        }
                        None => job.next_check = Some(now + settings.transfer_recheck),
                    }
                    continue;
                }
                start(job, cluster);
            }
            JState::Running => {
                let exited = job
                    .proc
                    .as_mut()
                    .and_then(|p| p.child.as_mut())
                    .and_then(|c| c.try_wait().ok().flatten());
                if let Some(status) = exited {
                    // Slurm kills whatever the batch shell left behind.
                    job.signal_group(Signal::SIGKILL);
                    job.proc = None;
                    let f = match (&job.ending, &job.forced) {
                        (Some(Ending::Timeout), _) => Final {
                            state: "TIMEOUT".into(),
                            exit: 0,
                            signal: 0,
                            task: Some(("CANCELLED".into(), 0, 15)),
                        },
                        (_, Some(f)) => Final::same(&f.state, f.exit_code, f.signal),
                        (_, None) => natural(status),
                    };
                    job.finish(f);
                    continue;
                }
                let ran = job.started_at.map(|s| now - s).unwrap_or_default();
                if job.ending.is_none() {
                    if let Some(limit) = job.limit {
                        if ran >= Duration::from_secs(limit) {
                            job.ending = Some(Ending::Timeout);
                            job.terminate(settings.kill_wait);
                        }
                    }
                    if let Some(after) = job.forced.as_ref().and_then(|f| f.after) {
                        if ran >= after {
                            job.ending = Some(Ending::Forced);
                            job.signal_group(Signal::SIGKILL);
                        }
                    }
                }
                reap_or_kill(job, now);
            }
            JState::Final(_) => reap_or_kill(job, now),
        }
    }
}

/// For jobs being killed: SIGKILL once KillWait is over, reap when gone.
fn reap_or_kill(job: &mut Job, now: Instant) {
    let Some(p) = &mut job.proc else { return };
    if p.kill_at.is_some_and(|k| now >= k) {
        p.kill_at = None;
        job.signal_group(Signal::SIGKILL);
    }
    let is_final = job.is_final();
    let Some(p) = &mut job.proc else { return };
    if is_final {
        if let Some(c) = &mut p.child {
            if let Ok(Some(_)) = c.try_wait() {
                job.signal_group(Signal::SIGKILL);
                job.proc = None;
            }
        }
    }
}

fn start(job: &mut Job, cluster: &Cluster) {
    job.start = Some(epoch_now());
    job.started_at = Some(Instant::now());
    job.state = JState::Running;
    match spawn(job, cluster) {
        Ok(child) => {
            job.pgid = Some(child.id() as i32);
            job.proc = Some(Proc {
                child: Some(child),
                kill_at: None,
            });
        }
        Err(_) => job.finish(Final::same("FAILED", 1, 0)),
    }
}

fn spawn(job: &Job, cluster: &Cluster) -> std::io::Result<Child> {
    let script = cluster.spool.join(format!("job{:05}.sh", job.id));
    fs::write(&script, &job.script)?;
    let open = |p: &str| OpenOptions::new().create(true).append(true).open(p);
    let out = open(&job.stdout)?;
    let err = if job.stderr == job.stdout {
        out.try_clone()?
    } else {
        open(&job.stderr)?
    };
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .current_dir(Path::new(&job.workdir))
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", &cluster.home)
        .env("USER", &cluster.user)
        .env("LOGNAME", &cluster.user)
        .env("SHELL", "/bin/bash")
        .env("LANG", "C.UTF-8")
        .env("SLURM_JOB_ID", job.id.to_string())
        .env("SLURM_JOBID", job.id.to_string())
        .env("SLURM_JOB_NAME", &job.name)
        .env("SLURM_SUBMIT_DIR", &job.workdir)
        .env("SLURM_CLUSTER_NAME", "ci")
        .env("SLURM_JOB_ACCOUNT", &job.account)
        .env("SLURM_JOB_PARTITION", &job.partition)
        .env("SLURM_JOB_USER", &cluster.user)
        .env("SLURM_JOB_UID", cluster.uid.to_string())
        .env("SLURM_JOB_NODELIST", "vm")
        .env("SLURM_NNODES", "1")
        .env("SLURMD_NODENAME", "vm")
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: setsid is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
}

/// The live (non-zombie) processes of session `sid`, from /proc.
fn session_members(sid: i32) -> Vec<i32> {
    proc_stats()
        .filter(|(_, _, session)| *session == sid)
        .map(|(pid, _, _)| pid)
        .collect()
}

/// (pid, state, session) of every process, from /proc/<pid>/stat.
fn proc_stats() -> impl Iterator<Item = (i32, String, i32)> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid pgrp session ...; comm may contain spaces.
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let session = f.get(3)?.parse().ok()?;
            let state = f.first()?.to_string();
            (state != "Z" && state != "X").then_some((pid, state, session))
        })
}

/// Jobs (by the session id their batch shell leads) that still have a live
/// (non-zombie) process.
pub fn live_groups(sids: &[i32]) -> Vec<i32> {
    let mut live = Vec::new();
    for (_, _, session) in proc_stats() {
        if sids.contains(&session) && !live.contains(&session) {
            live.push(session);
        }
    }
    live
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sbatch_directives_until_the_first_command() {
        let d = directives("#!/bin/bash -l\n#SBATCH --time=00:01:00\n#SBATCH -o out-%j.txt\n# note\n#SBATCH --dependency afterok:7\necho hi\n#SBATCH --error=late\n");
        assert_eq!(d.time.as_deref(), Some("00:01:00"));
        assert_eq!(d.output.as_deref(), Some("out-%j.txt"));
        assert_eq!(d.dependency.as_deref(), Some("afterok:7"));
        assert_eq!(d.error, None);
        assert_eq!(expand("out-%j-%x.txt", 12, "n", "u"), "out-12-n.txt");
    }

    #[test]
    fn parses_slurm_time_formats() {
        assert_eq!(parse_time("5"), Some(Some(300)));
        assert_eq!(parse_time("00:01:00"), Some(Some(60)));
        assert_eq!(parse_time("2:30"), Some(Some(150)));
        assert_eq!(parse_time("1-02"), Some(Some(93600)));
        assert_eq!(parse_time("0-00:15:00"), Some(Some(900)));
        assert_eq!(parse_time("UNLIMITED"), Some(None));
        assert_eq!(parse_time("soon"), None);
    }
}
