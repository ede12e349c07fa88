//! A stateful test double of a FirecREST v2 server (2.5.6 on Slurm 22.05),
//! shaped after the real exchanges in `/work/shared/firecrest-v2/recorded/`.
//! Integration tests run the real `firecrest-ci` binary against it.
//!
//! What is real: the file system (a temp dir holding `scratch/` and `home/`),
//! the jobs (each script runs as `bash <script>` — not a login shell — in its
//! own process group, with a clean environment plus `SLURM_JOB_ID` & co. and
//! the request's `env`, output appended to its `#SBATCH --output` file),
//! tails, uploads, transfers.
//! What is faked: Slurm's bookkeeping (states, times), S3 (in memory), the
//! identity provider (opaque tokens `tok-<n>`).
//!
//! # Starting it
//!
//! ```ignore
//! let fake = FakeFirecrest::start();                 // or start_with(Settings { .. })
//! fake.url();          // "http://127.1.x.y:<port>" (a loopback address of its own) -> FIRECREST_URL
//! fake.token_url();    // "http://127.1.x.y:<port2>/token" (own address and port, so it can be down alone)
//! fake.client_id(); fake.client_secret();            // "firecrest-ci" / "fake-secret"
//! fake.system();       // "daint"
//! fake.scratch();      // <tmp>/scratch: the defaultWorkDir file system (paths in the API are these real paths)
//! fake.user_scratch(); // <tmp>/scratch/ciuser, created at start
//! fake.settings(|s| s.pending_for = Duration::from_secs(2));   // change any Settings field at any time
//! FakeFirecrest::start_with(Settings::latency());             // the real server's timings (see `real`)
//! FakeFirecrest::start_with(Settings::latency().scaled(10));  // the same, ten times faster
//! ```
//!
//! Everything runs on std threads, so the fake keeps serving while a test
//! blocks (for example on `std::process::Command::output`). Dropping the
//! fake kills every job process group and deletes the temp dir.
//!
//! # Jobs
//!
//! `POST /compute/{system}/jobs` answers 201 `{"jobId":"<n>"}`. The job is
//! invisible (404 "Job not found.") for `Settings::job_404_for`, PENDING
//! (`Settings::pending_reason`) for `Settings::pending_for`, then RUNNING
//! while bash runs. Final states: COMPLETED 0:0, FAILED n:0, FAILED 0:sig
//! (killed by a signal), TIMEOUT 0:0 (`#SBATCH --time`; SIGTERM, then SIGKILL
//! after `Settings::kill_wait`), `CANCELLED by 1001` (DELETE). `#SBATCH
//! --dependency=afterok:<id>` waits; a failed dependency stays PENDING with
//! reason DependencyNeverSatisfied. `fake.force_end("name", ForcedEnd::new(
//! "OUT_OF_MEMORY", 0, 125))` makes the job of that name end in that state
//! once its script ends (or after `.after(d)`, killing it then).
//!
//! # Faults (all bounded by a window or a count)
//!
//! ```ignore
//! fake.random_5xx(0.3, Window::now_for(secs(10)), seed);       // 502/503/504 before FirecREST
//! fake.rate_limit(5, 2, Window::now_for(secs(10)));           // every 5th request: 429, Retry-After: 2
//! fake.token_down(TokenDown::Refused, Window::now_for(secs(5)));  // or TokenDown::Status503
//! fake.outage(Outage::Api, Window::starting_in(secs(1), secs(20))); // connection refused, same port after
//! fake.delay(Some(Route::JobGet), secs(40), Stage::Before, None, Some(2)); // next 2 job GETs slow
//! fake.fail_next(Some(Route::JobSubmit), 1, 502, Stage::After); // job submitted, reply lost
//! fake.malform_next(Some(Route::JobGet), 1, Malform::DropField("status".into()));
//! fake.reset_next(Some(Route::OpsUpload), 1);                  // connection dropped mid-body
//! fake.hide_job("name", None);                                 // 404 forever (Some(d): for d)
//! fake.fail_part_puts(2);                                      // each S3 part: first 2 PUTs -> 500
//! fake.fail_transfers("boto3 said no");                        // S3 upload transfer jobs fail
//! fake.corrupt_upload(3);                                      // the 3rd ops/upload from now: one byte flipped
//! fake.expire_tokens_in(secs(20));                             // live tokens now "expire too soon"
//! fake.clear_faults();
//! ```
//!
//! # Observing
//!
//! `fake.log()` (every request: method, path, query, route, status — 0 when
//! the connection was dropped —, auth check, injected fault, time),
//! `fake.count(Route::JobGet)`, `fake.jobs()` / `fake.job(id)` /
//! `fake.job_by_name(name)` (state, exit code, signal, live processes),
//! `fake.wait_final(id, timeout).await`, `fake.any_job_process_running()`,
//! `fake.scratch_files()` (relative paths, dirs end in `/`; transfer jobs
//! leave `ciuser/.f7t_file_handling_job*.log` files, like the real server).

mod auth;
mod faults;
mod fsops;
mod http;
mod jobs;
mod transfer;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

pub use faults::{Malform, Outage, Stage, TokenDown, Window};
pub use http::PortKind;
use http::{Reply, Request, Response};

/// Knobs of the fake cluster; change them at any time with
/// [`FakeFirecrest::settings`].
#[derive(Clone, Debug)]
pub struct Settings {
    /// The one system reported by `/status/systems`.
    pub system: String,
    /// `dataOperation.max_ops_file_size`: the ops output and upload limit.
    pub max_ops_file_size: u64,
    /// Whether `/status/systems` offers an S3 data transfer.
    pub s3: bool,
    /// S3 `multipart.max_part_size`: decides how many part URLs an upload gets.
    pub max_part_size: u64,
    /// `expires_in` of issued tokens, in seconds.
    pub token_ttl: u64,
    /// FirecREST refuses tokens with less than this many seconds left.
    pub min_token_ttl: u64,
    /// Jobs answer 404 for this long after submit.
    pub job_404_for: Duration,
    /// Jobs stay PENDING for this long after submit.
    pub pending_for: Duration,
    /// `stateReason` while PENDING ("Priority" or "Resources").
    pub pending_reason: String,
    /// Transfer jobs wait at least this long before they act (their start).
    pub transfer_delay: Duration,
    /// An S3 upload's transfer job that finds its object incomplete looks
    /// again after this long (the server's `job_s3_downloader.sh`: HEAD the
    /// object, `sleep 60` between checks). Zero: it looks on every
    /// scheduler pass.
    pub transfer_recheck: Duration,
    /// Added to every call that is an SSH command on the real server
    /// (`ops/*`, and `compute/*`: sbatch, sacct, scancel), before it acts.
    pub ssh_latency: Duration,
    /// Bytes per second of the link for `ops/upload` bodies, shared by all
    /// uploads in flight (None: as fast as the loopback).
    pub upload_rate: Option<u64>,
    /// The same for S3 part PUTs.
    pub s3_rate: Option<u64>,
    /// Time limit of jobs without `#SBATCH --time`.
    pub default_time_limit: Duration,
    /// Slurm's KillWait: SIGTERM to SIGKILL on timeout or cancel.
    pub kill_wait: Duration,
    /// FirecREST's SSH command timeout (`commandExecution`, 5 s): how long
    /// a read whose reply is far over the buffer takes to fail (408 for
    /// `tail`/`head`/`download`, 500 for `view`), as recorded in
    /// `ops_large_output.json`. Tests may lower it to stay fast; whole runs
    /// keep the real value at least once.
    pub command_timeout: Duration,
    pub client_id: String,
    pub client_secret: String,
    /// The cluster's partitions (`/status/{system}/partitions`); a submit
    /// naming another answers the recorded 500 from sbatch.
    pub partitions: Vec<String>,
    /// The user's Slurm accounts (`userinfo`'s `accounts`, the first the
    /// default); empty: userinfo lists none. A submit naming another
    /// answers the recorded 500 from sbatch.
    pub accounts: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            system: "daint".into(),
            max_ops_file_size: 5_242_880,
            s3: true,
            max_part_size: 10_485_760,
            token_ttl: 300,
            min_token_ttl: 30,
            job_404_for: Duration::ZERO,
            pending_for: Duration::ZERO,
            pending_reason: "Priority".into(),
            transfer_delay: Duration::from_millis(200),
            transfer_recheck: Duration::ZERO,
            ssh_latency: Duration::ZERO,
            upload_rate: None,
            s3_rate: None,
            default_time_limit: Duration::from_secs(3600),
            kill_wait: Duration::from_secs(2),
            command_timeout: Duration::from_secs(5),
            client_id: "firecrest-ci".into(),
            client_secret: "fake-secret".into(),
            partitions: vec!["debug".into()],
            accounts: vec!["ci".into()],
        }
    }
}

/// The real server's timings, measured on FirecREST v2 2.5.6 with real Slurm
/// on loopback (issue 12's table, issue 16, CLIENT-NOTES.md). Each line says
/// where its number comes from; [`Settings::latency`] uses them as they are,
/// tests may scale them down with [`Settings::scaled`].
pub mod real {
    use std::time::Duration;

    /// Every synchronous call is an SSH command: about 60 ms each (issue 12,
    /// "How to measure"; mkdir + chmod took 0.25 s in its 89 MB run).
    pub const SSH_LATENCY: Duration = Duration::from_millis(60);
    /// A job starts about 1 s after submit on an idle cluster (issue 12:
    /// "Slurm start: 1.0 s").
    pub const JOB_START: Duration = Duration::from_secs(1);
    /// Direct `ops/upload` parts move about 35 MB/s with 4 in flight
    /// (issue 12 "How to measure", issue 16).
    pub const UPLOAD_RATE: u64 = 35_000_000;
    /// S3 part PUTs: issue 16's run put a 61 MB archive through S3 in about
    /// 1 s (2.7 s to "submitted", less 1.1 s pack and 0.6 s of first
    /// contact and mkdir): about 60 MB/s.
    pub const S3_RATE: u64 = 60_000_000;
    /// The transfer job is a Slurm job too: it starts like one (JOB_START).
    pub const TRANSFER_START: Duration = JOB_START;
    /// ... and re-checks an incomplete S3 object every 60 s (issue 16, the
    /// server's `job_s3_downloader.sh`: `for i in seq 1440; ... sleep 60`).
    pub const TRANSFER_RECHECK: Duration = Duration::from_secs(60);
    /// A command over 5 s is cut: 408 (CLIENT-NOTES "General",
    /// `ops_large_output.json`).
    pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
    // The job-side extract (1-2 s for 89 MB in issue 12) is the real batch
    // script running `tar` here: nothing to fake.
}

impl Settings {
    /// Behaves like the real server in time (see [`real`]): for benchmarks,
    /// and for tests that scale it down.
    pub fn latency() -> Self {
        Settings {
            ssh_latency: real::SSH_LATENCY,
            pending_for: real::JOB_START,
            upload_rate: Some(real::UPLOAD_RATE),
            s3_rate: Some(real::S3_RATE),
            transfer_delay: real::TRANSFER_START,
            transfer_recheck: real::TRANSFER_RECHECK,
            command_timeout: real::COMMAND_TIMEOUT,
            ..Settings::default()
        }
    }

    /// Every wait divided by `factor` and every rate multiplied by it, so
    /// a test keeps the real proportions in less time.
    pub fn scaled(mut self, factor: u32) -> Self {
        let f = factor.max(1);
        self.ssh_latency /= f;
        self.pending_for /= f;
        self.transfer_delay /= f;
        self.transfer_recheck /= f;
        self.upload_rate = self.upload_rate.map(|r| r * u64::from(f));
        self.s3_rate = self.s3_rate.map(|r| r * u64::from(f));
        self
    }
}

/// The routes the fake knows, for fault targeting and counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    Token,
    Liveness,
    Systems,
    UserInfo,
    Partitions,
    Nodes,
    OpsLs,
    OpsStat,
    OpsFile,
    OpsChecksum,
    OpsHead,
    OpsTail,
    OpsView,
    OpsDownload,
    OpsUpload,
    OpsMkdir,
    OpsChmod,
    OpsRm,
    OpsExtract,
    OpsCompress,
    TransferUpload,
    TransferDownload,
    TransferRm,
    JobList,
    JobSubmit,
    JobGet,
    JobMetadata,
    JobCancel,
    S3PartPut,
    S3Complete,
    S3Get,
    Unknown,
}

impl Route {
    /// A read of a file's content as text (`tail` or `view`): what the tool
    /// reads a job's output with.
    pub fn is_text_read(self) -> bool {
        matches!(self, Route::OpsTail | Route::OpsView)
    }

    /// FirecREST proper (behind the gateway), as opposed to S3 and the IdP.
    pub fn is_firecrest(self) -> bool {
        !matches!(
            self,
            Route::Token | Route::S3PartPut | Route::S3Complete | Route::S3Get
        )
    }

    /// A call the real server runs as an SSH command on the cluster.
    fn is_ssh_command(self) -> bool {
        let name = format!("{self:?}");
        name.starts_with("Ops") || name.starts_with("Job")
    }

    /// The route, the system segment and the job id segment of a request.
    fn classify(
        port: PortKind,
        method: &str,
        path: &str,
    ) -> (Route, Option<String>, Option<String>) {
        if port == PortKind::Token {
            return (Route::Token, None, None);
        }
        if path.starts_with("/s3/") {
            let r = match method {
                "PUT" => Route::S3PartPut,
                "POST" => Route::S3Complete,
                "GET" => Route::S3Get,
                _ => Route::Unknown,
            };
            return (r, None, None);
        }
        let lower = path.to_ascii_lowercase();
        let segs: Vec<&str> = lower.trim_matches('/').split('/').collect();
        let own = |s: &str| Some(s.to_string());
        match (method, segs.as_slice()) {
            ("GET", ["status", "liveness"]) => (Route::Liveness, None, None),
            ("GET", ["status", "systems"]) => (Route::Systems, None, None),
            ("GET", ["status", sys, what]) => {
                let r = match *what {
                    "userinfo" => Route::UserInfo,
                    "partitions" => Route::Partitions,
                    "nodes" => Route::Nodes,
                    _ => Route::Unknown,
                };
                (r, own(sys), None)
            }
            (m, ["filesystem", sys, "ops", op]) => {
                let r = match (m, *op) {
                    ("GET", "ls") => Route::OpsLs,
                    ("GET", "stat") => Route::OpsStat,
                    ("GET", "file") => Route::OpsFile,
                    ("GET", "checksum") => Route::OpsChecksum,
                    ("GET", "head") => Route::OpsHead,
                    ("GET", "tail") => Route::OpsTail,
                    ("GET", "view") => Route::OpsView,
                    ("GET", "download") => Route::OpsDownload,
                    ("POST", "upload") => Route::OpsUpload,
                    ("POST", "mkdir") => Route::OpsMkdir,
                    ("PUT", "chmod") => Route::OpsChmod,
                    ("DELETE", "rm") => Route::OpsRm,
                    ("POST", "extract") => Route::OpsExtract,
                    ("POST", "compress") => Route::OpsCompress,
                    _ => Route::Unknown,
                };
                (r, own(sys), None)
            }
            (m, ["filesystem", sys, "transfer", op]) => {
                let r = match (m, *op) {
                    ("POST", "upload") => Route::TransferUpload,
                    ("POST", "download") => Route::TransferDownload,
                    ("DELETE", "rm") => Route::TransferRm,
                    _ => Route::Unknown,
                };
                (r, own(sys), None)
            }
            ("GET", ["compute", sys, "jobs"]) => (Route::JobList, own(sys), None),
            ("POST", ["compute", sys, "jobs"]) => (Route::JobSubmit, own(sys), None),
            ("GET", ["compute", sys, "jobs", id]) => (Route::JobGet, own(sys), own(id)),
            ("DELETE", ["compute", sys, "jobs", id]) => (Route::JobCancel, own(sys), own(id)),
            ("GET", ["compute", sys, "jobs", id, "metadata"]) => {
                (Route::JobMetadata, own(sys), own(id))
            }
            _ => (Route::Unknown, None, None),
        }
    }
}

/// What the bearer check said about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthCheck {
    /// The route needs no token (token endpoint, liveness, S3, gateway answers).
    NotRequired,
    Valid,
    Missing,
    Invalid,
    Expired,
    ExpiresSoon,
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct LogEntry {
    /// Since the fake started.
    pub at: Duration,
    pub port: PortKind,
    pub method: String,
    pub path: String,
    pub query: String,
    pub route: Route,
    /// 0 when the connection was dropped without an answer.
    pub status: u16,
    pub auth: AuthCheck,
    /// Label of the injected fault that shaped this answer, if any.
    pub injected: Option<String>,
    /// The request's `X-Request-ID` and `X-Correlation-ID` headers.
    pub request_id: Option<String>,
    /// For an answered `tail` or `view`: how many bytes of the file it
    /// gave that no read of that file had given before (0: nothing new; a
    /// `view` that asks again for characters already shown, to check where
    /// its answer starts, does not count them).
    pub output_len: usize,
    pub correlation_id: Option<String>,
}

impl LogEntry {
    /// A number in the request's query (`size` of a `view`, say).
    pub fn query_number(&self, key: &str) -> Option<u64> {
        self.query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    }
}

/// What kind of Slurm job an id belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    User,
    TransferUpload,
    TransferDownload,
    TransferRemove,
}

/// A final state to impose on a job by name, for states a test cannot
/// provoke for real (OUT_OF_MEMORY 0:125, NODE_FAIL, PREEMPTED, ...).
#[derive(Clone, Debug)]
pub struct ForcedEnd {
    pub state: String,
    pub exit_code: i32,
    pub signal: i32,
    /// Kill the job this long after it started instead of letting it finish.
    pub after: Option<Duration>,
}

impl ForcedEnd {
    pub fn new(state: &str, exit_code: i32, signal: i32) -> Self {
        ForcedEnd {
            state: state.into(),
            exit_code,
            signal,
            after: None,
        }
    }

    pub fn after(mut self, d: Duration) -> Self {
        self.after = Some(d);
        self
    }
}

/// A job as a test sees it.
#[derive(Clone, Debug)]
pub struct JobView {
    pub id: u64,
    pub name: String,
    pub kind: JobKind,
    /// Slurm's raw state string, e.g. `CANCELLED by 1001`.
    pub state: String,
    /// None until the job is final.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub is_final: bool,
    /// A process of the job's group is still alive.
    pub process_alive: bool,
    /// Absolute stdout path (for transfer jobs: the output log).
    pub stdout: String,
    pub working_directory: String,
}

pub(crate) struct State {
    pub settings: Settings,
    pub faults: faults::Faults,
    pub tokens: HashMap<String, Instant>,
    pub token_seq: u64,
    pub jobs: BTreeMap<u64, jobs::Job>,
    pub next_job_id: u64,
    pub uploads: HashMap<String, transfer::S3Upload>,
    pub objects: HashMap<String, Vec<u8>>,
    pub log: Vec<LogEntry>,
    pub forced_ends: HashMap<String, ForcedEnd>,
    pub uid: u32,
    /// When the upload link and the S3 link are free again (see
    /// [`Settings::upload_rate`]).
    pub upload_link_free: Instant,
    pub s3_link_free: Instant,
    /// Per file, the farthest byte a `tail` or `view` answer reached: what
    /// a read gave beyond it is new output (see [`LogEntry::output_len`]).
    pub read_ends: HashMap<String, u64>,
}

pub(crate) fn epoch_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// FirecREST's error body.
pub(crate) fn error_body(message: &str, user: Option<&str>) -> Value {
    json!({"errorType": "error", "message": message, "causedBy": null, "data": null, "user": user})
}

pub(crate) fn error_body_user(message: &str) -> Value {
    error_body(message, Some("ciuser"))
}

/// FirecREST's 400 for request validation (pydantic) errors.
pub(crate) fn validation_error(route: &str, kind: &str, fields: Value) -> Response {
    let message = format!(
        "1 validation error:\n  {{'type': '{kind}', 'loc': ('body',), 'msg': 'invalid request'}}\n\n  file \"/app/firecrest/router.py\", line 1, in handler\n    {route}"
    );
    Response::json(
        400,
        &json!({"errorType": "validation", "message": message, "causedBy": null,
                "data": {"fields": fields}, "user": "ciuser"}),
    )
}

struct Core {
    scratch: PathBuf,
    home: PathBuf,
    user_scratch: PathBuf,
    cluster: jobs::Cluster,
    started: Instant,
    shutdown: AtomicBool,
    state: Mutex<State>,
    api_base: std::sync::OnceLock<String>,
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self, e: LogEntry) {
        self.lock().log.push(e);
    }

    /// How long the real server would take before acting on this request
    /// (latency mode, see [`Settings::latency`]): the SSH command's round
    /// trip, and the body's time on a link shared by the uploads in flight.
    fn latency(&self, route: Route, body: u64) -> Duration {
        let mut st = self.lock();
        let now = Instant::now();
        let s = &st.settings;
        let ssh = if route.is_ssh_command() {
            s.ssh_latency
        } else {
            Duration::ZERO
        };
        let (rate, free) = match route {
            Route::OpsUpload => (s.upload_rate, st.upload_link_free),
            Route::S3PartPut => (s.s3_rate, st.s3_link_free),
            _ => (None, now),
        };
        let Some(rate) = rate.filter(|&r| r > 0) else {
            return ssh;
        };
        let done = free.max(now) + Duration::from_secs_f64(body as f64 / rate as f64);
        match route {
            Route::OpsUpload => st.upload_link_free = done,
            _ => st.s3_link_free = done,
        }
        (done - now).max(ssh)
    }

    fn fs_ctx(&self, settings: &Settings) -> fsops::FsCtx {
        fsops::FsCtx {
            roots: vec![self.scratch.clone(), self.home.clone()],
            system: settings.system.clone(),
            limit: settings.max_ops_file_size,
            command_timeout: settings.command_timeout,
            user: self.cluster.user.clone(),
            uid: self.cluster.uid,
        }
    }

    fn systems_json(&self, s: &Settings) -> Value {
        let now = format!("{}Z", fsops::iso_time(epoch_now() as i64));
        let scratch = self.scratch.display().to_string();
        let home = self.home.display().to_string();
        let health = |t: &str, path: Option<&str>| {
            let mut v = json!({"serviceType": t, "lastChecked": now, "latency": 0.4, "healthy": true, "message": null});
            if let Some(p) = path {
                v["path"] = json!(p);
            }
            v
        };
        json!({"systems": [{
            "name": s.system,
            "ssh": {"host": "127.0.0.1", "port": 2222, "proxyHost": null, "proxyPort": null, "maxClients": 100,
                    "timeout": {"connection": 5, "login": 5, "commandExecution": s.command_timeout.as_secs(), "idleTimeout": 60, "keepAlive": 5}},
            "scheduler": {"type": "slurm", "connectionMode": "ssh", "version": "22.05.8", "apiUrl": null,
                          "apiVersion": null, "timeout": 10},
            "servicesHealth": [health("scheduler", None), health("ssh", None),
                               health("filesystem", Some(&scratch)), health("filesystem", Some(&home)),
                               health("s3", None)],
            "probing": {"services": {"scheduler": {"timeout": 10}, "ssh": {"timeout": 5},
                                     "filesystem": {"timeout": 5}, "s3": {"timeout": 10}}, "intervalCheck": 60},
            "lastHealthCheck": now,
            "fileSystems": [{"path": scratch, "dataType": "scratch", "defaultWorkDir": true},
                            {"path": home, "dataType": "users", "defaultWorkDir": false}],
            "dataOperation": {
                "datatransfer_jobs_directives": ["#SBATCH --nodes=1", "#SBATCH --time=0-00:15:00"],
                "max_ops_file_size": s.max_ops_file_size,
                "data_transfer": if !s.s3 { Value::Null } else { json!({"serviceType": "s3", "name": "s3-fake", "privateUrl": "**********",
                                  "publicUrl": self.api_base.get().cloned().unwrap_or_default(),
                                  "accessKeyId": "**********", "secretAccessKey": "**********",
                                  "region": "us-east-1", "ttl": 86400, "tenant": null,
                                  "multipart": {"use_split": false, "max_part_size": s.max_part_size,
                                                "parallel_runs": 3, "tmp_folder": "tmp"},
                                  "bucketLifecycleConfiguration": {"days": 10}}) }}
        }]})
    }

    fn api(
        &self,
        route: Route,
        system: Option<String>,
        job: Option<String>,
        req: &Request,
    ) -> (Response, AuthCheck) {
        let not_required = AuthCheck::NotRequired;
        match route {
            Route::Unknown | Route::Token => {
                return (
                    Response::json(404, &json!({"detail": "Not Found"})),
                    not_required,
                )
            }
            Route::S3PartPut | Route::S3Complete | Route::S3Get => {
                return (transfer::s3(&mut self.lock(), req), not_required)
            }
            Route::Liveness => {
                let s = self.lock().settings.system.clone();
                let at = format!("{}Z", fsops::iso_time(epoch_now() as i64));
                return (
                    Response::json(200, &json!({"healthcheckRuns": {s: at}, "lastUpdate": 2})),
                    not_required,
                );
            }
            _ => {}
        }
        let mut st = self.lock();
        let (check, refused) = auth::check_bearer(&st, req);
        if let Some(r) = refused {
            return (r, check);
        }
        let settings = st.settings.clone();
        if system
            .as_deref()
            .is_some_and(|s| s != settings.system.to_ascii_lowercase())
        {
            return (
                Response::json(404, &error_body_user("System not found")),
                check,
            );
        }
        let user_dir = self.user_scratch.display().to_string();
        let base = self.api_base.get().cloned().unwrap_or_default();
        let fs = self.fs_ctx(&settings);
        let cx = transfer::TransferCtx {
            fs: &fs,
            base_url: &base,
            user_dir: &user_dir,
            max_part_size: settings.max_part_size.max(1),
        };
        let r = match route {
            Route::Systems => Response::json(200, &self.systems_json(&settings)),
            Route::UserInfo => {
                let accounts: Vec<Value> = settings
                    .accounts
                    .iter()
                    .enumerate()
                    .map(|(i, name)| json!({"name": name, "default": i == 0}))
                    .collect();
                let mut body = json!({"user": {"id": "1001", "name": "ciuser"}, "group": {"id": "1001", "name": "ciuser"},
                        "groups": [{"id": "1001", "name": "ciuser"}]});
                if !accounts.is_empty() {
                    body["accounts"] = Value::Array(accounts);
                }
                Response::json(200, &body)
            }
            Route::Partitions => {
                let partitions: Vec<Value> = settings
                    .partitions
                    .iter()
                    .map(
                        |name| json!({"name": name, "cpus": 8, "totalNodes": 1, "partition": "UP"}),
                    )
                    .collect();
                Response::json(200, &json!({"partitions": partitions}))
            }
            Route::Nodes => Response::json(
                200,
                &json!({"nodes": [{"sockets": 8, "cores": 8, "threads": 8, "cpus": 8, "cpuLoad": 0.5,
                                   "freeMemory": 22818, "features": "(null)", "name": "vm", "address": "vm",
                                   "hostname": "vm", "state": ["MIXED"], "partitions": ["debug"], "weight": 1,
                                   "allocMemory": 8192, "allocCpus": 6, "idleCpus": 2}]}),
            ),
            Route::TransferUpload => transfer::upload(&mut st, &cx, req),
            Route::TransferDownload => transfer::download(&mut st, &cx, req),
            Route::TransferRm => transfer::remove(&mut st, &cx, req),
            Route::JobSubmit => jobs::submit(&mut st, &self.cluster, req),
            Route::JobList => {
                let now = Instant::now();
                let list: Vec<Value> = st
                    .jobs
                    .values()
                    .filter(|j| j.visible(now))
                    .map(|j| j.to_json(false))
                    .collect();
                Response::json(200, &json!({ "jobs": list }))
            }
            Route::JobGet | Route::JobMetadata | Route::JobCancel => {
                let raw = job.unwrap_or_default();
                if raw.is_empty() || !raw.chars().all(|c| c.is_ascii_alphanumeric()) {
                    let verb = if route == Route::JobCancel {
                        "delete"
                    } else {
                        "get"
                    };
                    return (
                        validation_error(
                            &format!("{verb} /compute/{{system_name}}/jobs/{{job_id}}"),
                            "string_pattern_mismatch",
                            json!([{"location": "path", "name": "job_id",
                                    "message": "String should match pattern '^[a-zA-Z0-9]+$'"}]),
                        ),
                        check,
                    );
                }
                let id = raw.parse::<u64>().unwrap_or(u64::MAX);
                let now = Instant::now();
                let found = st.jobs.get(&id).filter(|j| j.visible(now));
                match (route, found) {
                    (Route::JobCancel, _) => jobs::cancel(&mut st, id),
                    (_, None) => Response::json(404, &error_body_user("Job not found.")),
                    (Route::JobGet, Some(j)) => {
                        Response::json(200, &json!({"jobs": [j.to_json(true)]}))
                    }
                    (_, Some(j)) => Response::json(200, &j.metadata_json()),
                }
            }
            _ => {
                let denied = req
                    .query("path")
                    .and_then(|p| st.faults.read_denied(route, p, Instant::now()));
                // File operations run without the lock: they touch only the disk.
                drop(st);
                match denied {
                    Some(403) => Response::json(
                        403,
                        &error_body_user(
                            "Remote process failed with exit status:1 and error message:Permission denied",
                        ),
                    ),
                    Some(status) => Response::json(status, &error_body(&format!("injected {status}"), None)),
                    None => fs.handle(route, req),
                }
            }
        };
        (r, check)
    }
}

impl http::Handler for Core {
    fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    fn is_away(&self, port: PortKind) -> bool {
        self.lock().faults.is_away(port, Instant::now())
    }

    fn reset_before_body(&self, port: PortKind, method: &str, path: &str) -> bool {
        let (route, _, _) = Route::classify(port, method, path);
        self.lock().faults.take_reset(route)
    }

    fn dropped(&self, port: PortKind, method: &str, target: &str) {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let (route, _, _) = Route::classify(port, method, path);
        self.log(LogEntry {
            at: self.started.elapsed(),
            port,
            method: method.into(),
            path: path.into(),
            query: query.into(),
            route,
            status: 0,
            auth: AuthCheck::NotRequired,
            injected: Some("reset".into()),
            request_id: None,
            correlation_id: None,
            output_len: 0,
        });
    }

    fn handle(&self, port: PortKind, mut req: Request) -> Reply {
        let (route, system, job) = Route::classify(port, &req.method, &req.path);
        if route == Route::OpsUpload && self.lock().faults.take_corrupt_upload() {
            // In the middle of the body: the file's bytes, not the form's.
            let middle = req.body.len() / 2;
            if let Some(byte) = req.body.get_mut(middle) {
                *byte ^= 0xff;
            }
        }
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let mut entry = LogEntry {
            at: self.started.elapsed(),
            port,
            method: req.method.clone(),
            path: req.path.clone(),
            query: req.raw_query.clone(),
            route,
            status: 0,
            auth: AuthCheck::NotRequired,
            injected: None,
            request_id: header("x-request-id"),
            correlation_id: header("x-correlation-id"),
            output_len: 0,
        };
        let now = Instant::now();
        let (delay, pre) = {
            let mut st = self.lock();
            let delay = st.faults.delay(route, Stage::Before, now);
            (delay, st.faults.before(port, route, now))
        };
        if let Some(d) = delay {
            thread::sleep(d);
            entry.injected = Some("delay".into());
        }
        if self.shutting_down() || self.is_away(port) {
            self.log(entry);
            return Reply::Close;
        }
        if let Some((r, label)) = pre {
            entry.status = r.status;
            entry.injected = Some(label);
            self.log(entry);
            return Reply::Response(r);
        }
        if port == PortKind::Api {
            let wait = self.latency(route, req.body.len() as u64);
            if !wait.is_zero() {
                thread::sleep(wait);
            }
        }
        let (mut r, check) = match port {
            PortKind::Token => (
                auth::token_endpoint(&mut self.lock(), &req),
                AuthCheck::NotRequired,
            ),
            PortKind::Api => self.api(route, system, job, &req),
        };
        entry.auth = check;
        let (delay, fail, malform) = {
            let mut st = self.lock();
            (
                st.faults.delay(route, Stage::After, now),
                st.faults.take_fail(route, Stage::After, req.body.len()),
                st.faults.take_malform(route),
            )
        };
        if let Some(d) = delay {
            thread::sleep(d);
            entry.injected = Some("delay".into());
            if self.is_away(port) {
                self.log(entry);
                return Reply::Close;
            }
        }
        if let Some((fr, label)) = fail {
            r = fr;
            entry.injected = Some(label);
        } else if let Some(m) = malform {
            r = faults::spoil(r, &m);
            entry.injected = Some("malformed".into());
        }
        entry.status = r.status;
        let read_end = fsops::take_read_end(&mut r);
        if matches!(route, Route::OpsTail | Route::OpsView) && r.status == 200 {
            entry.output_len = match (read_end, req.query("path")) {
                (Some(end), Some(path)) => {
                    let mut st = self.lock();
                    let seen = st.read_ends.entry(path.to_string()).or_insert(0);
                    let new = end.saturating_sub(*seen);
                    *seen = (*seen).max(end);
                    new as usize
                }
                _ => output_len(&r.body),
            };
        }
        self.log(entry);
        Reply::Response(r)
    }
}

/// The length of the text in a `tail` (`output.content`) or `view`
/// (`output`) answer.
fn output_len(body: &[u8]) -> usize {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return 0;
    };
    let output = &value["output"];
    output["content"]
        .as_str()
        .or_else(|| output.as_str())
        .map_or(0, str::len)
}

/// The running double. See the module documentation.
pub struct FakeFirecrest {
    core: Arc<Core>,
    api_addr: SocketAddr,
    token_addr: SocketAddr,
    threads: Vec<thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl FakeFirecrest {
    /// Starts with default [`Settings`].
    pub fn start() -> Self {
        FakeFirecrest::start_with(Settings::default())
    }

    pub fn start_with(settings: Settings) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let scratch = root.join("scratch");
        let home = root.join("home");
        let spool = root.join("spool");
        for d in [scratch.join("ciuser"), home.join("ciuser"), spool.clone()] {
            std::fs::create_dir_all(d).unwrap();
        }
        let core = Arc::new(Core {
            user_scratch: scratch.join("ciuser"),
            cluster: jobs::Cluster {
                spool,
                home: home.join("ciuser"),
                user: "ciuser".into(),
                uid: 1001,
            },
            scratch,
            home,
            started: Instant::now(),
            shutdown: AtomicBool::new(false),
            state: Mutex::new(State {
                settings,
                faults: faults::Faults::new(),
                tokens: HashMap::new(),
                token_seq: 0,
                jobs: BTreeMap::new(),
                next_job_id: 100,
                uploads: HashMap::new(),
                objects: HashMap::new(),
                log: Vec::new(),
                forced_ends: HashMap::new(),
                uid: 1001,
                upload_link_free: Instant::now(),
                s3_link_free: Instant::now(),
                read_ends: HashMap::new(),
            }),
            api_base: std::sync::OnceLock::new(),
        });
        let (api_addr, t1) = http::serve(core.clone(), PortKind::Api);
        let (token_addr, t2) = http::serve(core.clone(), PortKind::Token);
        let _ = core.api_base.set(format!("http://{api_addr}"));
        let sched = core.clone();
        let t3 = thread::Builder::new()
            .name("fake-slurmctld".into())
            .spawn(move || {
                while !sched.shutdown.load(Ordering::SeqCst) {
                    {
                        let mut st = sched.lock();
                        jobs::tick(&mut st, &sched.cluster);
                    }
                    thread::sleep(Duration::from_millis(25));
                }
            })
            .unwrap();
        FakeFirecrest {
            core,
            api_addr,
            token_addr,
            threads: vec![t1, t2, t3],
            _dir: dir,
        }
    }

    /// FirecREST base URL (also serves the S3 routes).
    pub fn url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// The OAuth2 token endpoint, on a port of its own.
    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.token_addr)
    }

    pub fn client_id(&self) -> String {
        self.core.lock().settings.client_id.clone()
    }

    pub fn client_secret(&self) -> String {
        self.core.lock().settings.client_secret.clone()
    }

    pub fn system(&self) -> String {
        self.core.lock().settings.system.clone()
    }

    /// The scratch file system root (`defaultWorkDir`).
    pub fn scratch(&self) -> &Path {
        &self.core.scratch
    }

    /// `<scratch>/ciuser`, where transfer jobs run and leave their logs.
    pub fn user_scratch(&self) -> &Path {
        &self.core.user_scratch
    }

    /// The `users` file system root (`<tmp>/home`).
    pub fn home(&self) -> &Path {
        &self.core.home
    }

    /// Changes settings; takes effect for the next request or job.
    pub fn settings(&self, f: impl FnOnce(&mut Settings)) {
        f(&mut self.core.lock().settings);
    }

    /// A `fraction` of FirecREST requests inside `window` answer 502, 503 or
    /// 504 from the gateway (seeded, so a run is reproducible).
    pub fn random_5xx(&self, fraction: f64, window: Window, seed: u64) {
        use rand::SeedableRng;
        let mut st = self.core.lock();
        st.faults.rng = rand::rngs::StdRng::seed_from_u64(seed);
        st.faults.random_5xx = Some((fraction, window));
    }

    /// Every `every`-th FirecREST request inside `window` answers 429 with
    /// `Retry-After: retry_after_secs`.
    pub fn rate_limit(&self, every: u32, retry_after_secs: u64, window: Window) {
        let mut st = self.core.lock();
        st.faults.firecrest_seen = 0;
        st.faults.rate_limit = Some((every, retry_after_secs, window));
    }

    pub fn token_down(&self, how: TokenDown, window: Window) {
        self.core.lock().faults.token_down = Some((how, window));
    }

    /// Connection refused inside `window`, then the same port again.
    pub fn outage(&self, what: Outage, window: Window) {
        self.core.lock().faults.outages.push((what, window));
    }

    /// Slows answers of `route` (None: every FirecREST route) by `delay`,
    /// inside `window` and/or for the next `count` requests.
    pub fn delay(
        &self,
        route: Option<Route>,
        delay: Duration,
        stage: Stage,
        window: Option<Window>,
        count: Option<u32>,
    ) {
        self.core.lock().faults.delays.push(faults::Delay {
            route,
            delay,
            stage,
            window,
            remaining: count,
        });
    }

    /// The next `count` requests of `route` (None: any) answer `status`
    /// (gateway body); with [`Stage::After`] the action happens first.
    pub fn fail_next(&self, route: Option<Route>, count: u32, status: u16, stage: Stage) {
        self.fail_next_of_size(route, count, 0, status, stage);
    }

    /// The same for requests with a body of at least `min_body` bytes
    /// only (with [`Stage::After`] when `min_body` > 0): a proxy in front of
    /// the server with a body limit of its own.
    pub fn fail_next_of_size(
        &self,
        route: Option<Route>,
        count: u32,
        min_body: usize,
        status: u16,
        stage: Stage,
    ) {
        self.core.lock().faults.fail_next.push(faults::FailNext {
            on: faults::RouteCount {
                route,
                remaining: count,
            },
            status,
            stage,
            min_body,
        });
    }

    /// The next `count` answers of `route` are spoiled.
    pub fn malform_next(&self, route: Option<Route>, count: u32, how: Malform) {
        self.core
            .lock()
            .faults
            .malform_next
            .push(faults::MalformNext {
                on: faults::RouteCount {
                    route,
                    remaining: count,
                },
                how,
            });
    }

    /// The next `count` requests of `route` lose their connection mid-body.
    pub fn reset_next(&self, route: Option<Route>, count: u32) {
        self.core.lock().faults.reset_next.push(faults::RouteCount {
            route,
            remaining: count,
        });
    }

    /// Jobs named `name` submitted from now on answer 404 for `for_` after
    /// submit (None: forever, they never appear).
    pub fn hide_job(&self, name: &str, for_: Option<Duration>) {
        self.core
            .lock()
            .faults
            .hidden_jobs
            .insert(name.into(), for_);
    }

    /// Reads (`tail`, `view`, `head`, `download`) of every path containing
    /// `needle` answer `status` inside `window` (403: FirecREST's
    /// permission error; else a generic error body); `stat` still answers.
    pub fn deny_reads(&self, needle: &str, status: u16, window: Window) {
        self.core
            .lock()
            .faults
            .read_denials
            .push((needle.into(), status, window));
    }

    /// The first `k` PUT attempts of every S3 part answer 500.
    pub fn fail_part_puts(&self, k: u32) {
        self.core.lock().faults.part_put_failures = k;
    }

    /// The `n`-th `ops/upload` from now on (1: the next) stores its file
    /// with one byte flipped, as a corrupting proxy would.
    pub fn corrupt_upload(&self, n: u32) {
        self.core.lock().faults.corrupt_upload = Some(n);
    }

    /// S3 uploads' transfer jobs end FAILED (exit 1) once their object is
    /// complete, with `error` in their error log.
    pub fn fail_transfers(&self, error: &str) {
        self.core.lock().faults.transfer_failure = Some(error.into());
    }

    /// Jobs named `name` submitted from now on end as `end` says.
    pub fn force_end(&self, name: &str, end: ForcedEnd) {
        self.core.lock().forced_ends.insert(name.into(), end);
    }

    /// Every issued token now expires `d` from now (0: already expired).
    pub fn expire_tokens_in(&self, d: Duration) {
        let at = Instant::now() + d;
        self.core.lock().tokens.values_mut().for_each(|t| *t = at);
    }

    /// Removes every fault (hidden jobs and forced ends included).
    pub fn clear_faults(&self) {
        let mut st = self.core.lock();
        st.faults = faults::Faults::new();
        st.forced_ends.clear();
    }

    pub fn log(&self) -> Vec<LogEntry> {
        self.core.lock().log.clone()
    }

    /// The clock of [`LogEntry::at`]: how long the double has been up.
    pub fn since_start(&self) -> Duration {
        self.core.started.elapsed()
    }

    /// Requests seen for `route`, whatever their answer.
    pub fn count(&self, route: Route) -> usize {
        self.core
            .lock()
            .log
            .iter()
            .filter(|e| e.route == route)
            .count()
    }

    pub fn jobs(&self) -> Vec<JobView> {
        let st = self.core.lock();
        let pgids: Vec<i32> = st.jobs.values().filter_map(|j| j.pgid).collect();
        let live = jobs::live_groups(&pgids);
        st.jobs
            .values()
            .map(|j| {
                let f = j.final_state();
                JobView {
                    id: j.id,
                    name: j.name.clone(),
                    kind: j.kind,
                    state: j.state_name(),
                    exit_code: f.map(|f| f.exit),
                    signal: f.map(|f| f.signal),
                    is_final: j.is_final(),
                    process_alive: j.pgid.is_some_and(|p| live.contains(&p)),
                    stdout: j.stdout.clone(),
                    working_directory: j.workdir.clone(),
                }
            })
            .collect()
    }

    pub fn job(&self, id: u64) -> Option<JobView> {
        self.jobs().into_iter().find(|j| j.id == id)
    }

    /// The latest job with this name.
    pub fn job_by_name(&self, name: &str) -> Option<JobView> {
        self.jobs().into_iter().rev().find(|j| j.name == name)
    }

    /// Waits until job `id` is final; None on timeout.
    pub async fn wait_final(&self, id: u64, timeout: Duration) -> Option<JobView> {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Some(j) = self.job(id).filter(|j| j.is_final) {
                return Some(j);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Whether any process of any job is still alive.
    pub fn any_job_process_running(&self) -> bool {
        self.jobs().iter().any(|j| j.process_alive)
    }

    /// Every path under scratch, relative, sorted; directories end in `/`.
    pub fn scratch_files(&self) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let p = e.path();
                let rel = p.strip_prefix(base).unwrap_or(&p).display().to_string();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(format!("{rel}/"));
                    walk(base, &p, out);
                } else {
                    out.push(rel);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.core.scratch, &self.core.scratch, &mut out);
        out.sort();
        out
    }
}

impl Drop for FakeFirecrest {
    fn drop(&mut self) {
        self.core.shutdown.store(true, Ordering::SeqCst);
        {
            let mut st = self.core.lock();
            st.jobs.values_mut().for_each(|j| j.kill_now());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
