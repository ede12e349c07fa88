//! What counts as a transient failure, and how long to wait before trying
//! again. One function ([`is_transient`]) walks an error chain and decides;
//! one small type ([`Backoff`]) keeps the attempt count and the time budget.
//!
//! The status alone does not decide: FirecREST answers 500 both for a
//! failing `sacct` (worth a retry) and for sbatch refusing an input such as
//! the partition (the same answer every time). [`sbatch_rejection`] reads
//! the server's message for the second kind, here and nowhere else.
//!
//! [`Retry::run`] is the one retry loop: every request (FirecREST calls, the
//! token grant, presigned S3 requests, a submit whose reply was lost, a
//! broken S3 download) goes through it. The caller says what one attempt
//! does and, through [`Failure`], what it knows about a failure; the loop
//! decides the rest, waits, logs each retry at debug level, and names the
//! request and the attempts when it gives up ([`GaveUp`]).
//!
//! Hand-rolled rather than `backon`: `backon`'s jitter is additive (not full
//! jitter), its total-delay bound counts only the sleeps (not the time spent
//! waiting on requests that then time out), and a `Retry-After` set through
//! its `adjust` hook bypasses that bound. The whole policy fits in a page here.

use std::future::Future;
use std::io;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;

use rand::Rng;

use super::ApiError;

/// How hard to retry: capped exponential backoff with full jitter, bounded in
/// count and in total time, so an outage longer than the budget still ends
/// the run with an error instead of hanging it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Upper bound of the first delay (the delay is uniform in `0..=bound`).
    pub base_delay: Duration,
    /// The bound stops doubling here.
    pub max_delay: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Time from the first attempt after which no retry starts.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    /// Survives a server gone for ~20 s (the expected sum of the first eight
    /// delays is ~35 s) and a 30 % rate of 5xx for minutes (eleven failures in
    /// a row happen with probability 0.3^11 ≈ 2e-6), and still gives up
    /// within three minutes.
    fn default() -> Self {
        Self {
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
            max_retries: 12,
            budget: Duration::from_secs(180),
        }
    }
}

impl RetryPolicy {
    /// Reads of a job's output file: the watcher reads again on its own
    /// schedule, and a read that failed for its size must be made smaller,
    /// not repeated, so one quick retry covers a dropped connection and no
    /// more (an outage costs the watcher a few seconds per read, not minutes).
    pub const OUTPUT_READ: RetryPolicy = RetryPolicy {
        base_delay: Duration::from_millis(250),
        max_delay: Duration::from_secs(1),
        max_retries: 1,
        budget: Duration::from_secs(10),
    };
}

/// HTTP statuses worth a retry; everything else is the server's verdict.
pub fn is_transient_status(status: u16) -> bool {
    matches!(
        status,
        // FirecREST: the remote command hit its 5 s timeout; also a proxy's request timeout.
        408
        // FirecREST: the SSH connection to the cluster failed.
        | 424
        // A gateway rate limit; it says when to come back (Retry-After).
        | 429
        // FirecREST answers 500 for anything unexpected, including a failing
        // sacct/squeue; field reports say these pass.
        | 500
        // Gateway/proxy could not reach FirecREST (restart, rolling update).
        | 502
        // FirecREST's health gate or an overloaded gateway.
        | 503
        // Gateway timed out waiting for FirecREST.
        | 504
    )
}

/// What sbatch refused, when a submit failed because of an input: the same
/// request fails the same way every time, so it is reported, not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// "invalid partition specified", "Invalid partition name specified".
    Partition,
    /// "Invalid account or account/partition combination specified".
    Account,
    /// "Invalid qos specification".
    Qos,
    /// "Requested node configuration is not available" (too many nodes,
    /// unknown constraint or GPU type).
    NodeConfiguration,
    /// "Requested time limit is invalid" or an unparsable `--time`.
    TimeLimit,
    /// "Job dependency problem": the job waited for is gone or failed.
    Dependency,
}

/// Sbatch's words, lower-cased, for each kind of refused input. Matched on
/// the message FirecREST relays (`... std_err:sbatch: error: ...`) or on
/// sbatch's own stderr.
const SBATCH_REJECTIONS: &[(&str, Rejection)] = &[
    ("invalid partition", Rejection::Partition),
    ("invalid account", Rejection::Account),
    ("invalid qos", Rejection::Qos),
    (
        "requested node configuration is not available",
        Rejection::NodeConfiguration,
    ),
    (
        "invalid feature specification",
        Rejection::NodeConfiguration,
    ),
    ("invalid generic resource", Rejection::NodeConfiguration),
    ("requested time limit is invalid", Rejection::TimeLimit),
    ("invalid --time specification", Rejection::TimeLimit),
    ("job dependency problem", Rejection::Dependency),
];

/// The input sbatch refused, read from a submit's error message; `None` for
/// anything else (including sbatch failures that pass, such as a busy
/// controller's "Socket timed out").
pub fn sbatch_rejection(message: &str) -> Option<Rejection> {
    let message = message.to_ascii_lowercase();
    if !message.contains("sbatch") {
        return None;
    }
    SBATCH_REJECTIONS
        .iter()
        .find(|(words, _)| message.contains(words))
        .map(|&(_, rejection)| rejection)
}

/// True when the server's answer may change on a retry: its status says so
/// and its message is not a refusal that will be repeated.
pub fn is_transient_api(api: &ApiError) -> bool {
    is_transient_status(api.status) && sbatch_rejection(&api.message).is_none()
}

/// True when retrying the failed request may succeed: walks the whole chain.
pub fn is_transient(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        if let Some(api) = cause.downcast_ref::<ApiError>() {
            return is_transient_api(api);
        }
        if let Some(http) = cause.downcast_ref::<reqwest::Error>() {
            return is_transient_reqwest(http);
        }
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return is_transient_io(io.kind());
        }
        false
    })
}

/// True when the request cannot have reached the server, so even a
/// non-idempotent request (a job submit) may simply be sent again.
pub fn is_unsent(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        if let Some(api) = cause.downcast_ref::<ApiError>() {
            // A gateway's rate limit and FirecREST's health gate reject the
            // request before it reaches the scheduler.
            return matches!(api.status, 429 | 503);
        }
        if let Some(http) = cause.downcast_ref::<reqwest::Error>() {
            // No connection was made, so nothing was sent.
            return http.is_connect();
        }
        false
    })
}

fn is_transient_reqwest(err: &reqwest::Error) -> bool {
    // The request or the reply took longer than the timeout: a slow or stuck
    // server, or a lost packet.
    err.is_timeout()
        // The connection could not be made (refused while the server
        // restarts, DNS hiccup, TLS handshake cut off).
        || err.is_connect()
        // The connection broke while sending or before the reply (reset by a
        // proxy, closed idle keep-alive connection, HTTP/2 GOAWAY).
        || err.is_request()
        // The connection broke while reading the reply body.
        || err.is_body()
}

fn is_transient_io(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        // The peer or a middlebox dropped the connection.
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
            // The server is restarting.
            | io::ErrorKind::ConnectionRefused
            // The network is slow or a packet was lost.
            | io::ErrorKind::TimedOut
            // The reply stopped short, e.g. a proxy closed mid-body.
            | io::ErrorKind::UnexpectedEof
            // A signal interrupted a system call; nothing went wrong remotely.
            | io::ErrorKind::Interrupted
    )
}

/// The server's `Retry-After` (seconds or an HTTP date), as a delay from now.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Attempt count and elapsed time of one retried operation.
#[derive(Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    retries: u32,
    started: Instant,
}

impl Backoff {
    /// Starts the clock; call before the first attempt.
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            policy,
            retries: 0,
            started: Instant::now(),
        }
    }

    /// The delay before the next attempt, or `None` when the count or the
    /// time budget is used up. A server's `Retry-After` replaces the jittered
    /// delay (it knows better), but not the budget.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        if self.retries >= self.policy.max_retries {
            return None;
        }
        let delay = match retry_after {
            Some(delay) => delay,
            None => {
                let bound = self
                    .policy
                    .base_delay
                    .saturating_mul(2u32.saturating_pow(self.retries.min(31)))
                    .min(self.policy.max_delay);
                rand::thread_rng().gen_range(Duration::ZERO..=bound)
            }
        };
        if self.started.elapsed() + delay > self.policy.budget {
            return None;
        }
        self.retries += 1;
        Some(delay)
    }

    /// Attempts made so far, counting the first one (after `next_delay` said
    /// yes, the attempt about to be made).
    pub fn attempts(&self) -> u32 {
        self.retries + 1
    }

    /// Time since the first attempt.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// A failed attempt, with what the caller knows about it.
#[derive(Debug)]
pub enum Failure {
    /// The loop decides with [`is_transient`].
    Judge(anyhow::Error),
    /// Worth another attempt after the usual wait, whatever
    /// [`is_transient`] says (a submit whose reply could not be read).
    Retry(anyhow::Error),
    /// An answer, not a failure: returned as it is.
    Fatal(anyhow::Error),
    /// Try again at once, without counting an attempt (the token was
    /// replaced after a 401).
    Again,
}

impl From<anyhow::Error> for Failure {
    /// `?` in an attempt: the loop decides.
    fn from(err: anyhow::Error) -> Self {
        Failure::Judge(err)
    }
}

/// The context the loop adds when it stops retrying: what was tried, how
/// often and for how long. Typed, so a caller that knows the host never
/// answered can say so ([`super::contact::Contact::unreachable`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("giving up on {label} after {attempts} attempts in {elapsed:.1?}")]
pub struct GaveUp {
    /// Method and path (or URL without query) of the request.
    pub label: String,
    /// Attempts made, the first one included.
    pub attempts: u32,
    /// Time from the first attempt to giving up.
    pub elapsed: Duration,
}

/// What one attempt of a retried operation does. An operation is a small
/// type holding what its attempts share (a token, the bytes written so far),
/// so the loop in [`Retry::run`] stays the only loop.
pub trait Attempt: Send {
    /// What a successful attempt gives.
    type Output;
    /// Tries once; says on failure what the caller knows about it.
    fn attempt(&mut self) -> impl Future<Output = Result<Self::Output, Failure>> + Send;
}

/// One retried operation: its policy and how it is named in logs and errors.
#[derive(Debug, Clone)]
pub struct Retry {
    policy: RetryPolicy,
    label: String,
    note: &'static str,
}

impl Retry {
    /// `label` names the request (`GET /status/systems`), never a secret.
    pub fn new(policy: RetryPolicy, label: impl Into<String>) -> Self {
        Self {
            policy,
            label: label.into(),
            note: "retrying request",
        }
    }

    /// What the debug line of each retry says (default "retrying request").
    pub fn note(mut self, note: &'static str) -> Self {
        self.note = note;
        self
    }

    /// Runs `op` until it succeeds, fails for good, or the policy is used
    /// up (then the error carries [`GaveUp`] as context). The wait before a
    /// retry is the server's `Retry-After` when it sent one.
    pub async fn run<A: Attempt>(self, op: &mut A) -> Result<A::Output> {
        let mut backoff = Backoff::new(self.policy);
        loop {
            let err = match op.attempt().await {
                Ok(value) => return Ok(value),
                Err(Failure::Again) => continue,
                Err(Failure::Fatal(err)) => return Err(err),
                Err(Failure::Retry(err)) => err,
                Err(Failure::Judge(err)) if is_transient(&err) => err,
                Err(Failure::Judge(err)) => return Err(err),
            };
            let api = err.chain().find_map(|c| c.downcast_ref::<ApiError>());
            let status = api.map(|e| e.status);
            let Some(delay) = backoff.next_delay(api.and_then(|e| e.retry_after)) else {
                return Err(err.context(GaveUp {
                    label: self.label,
                    attempts: backoff.attempts(),
                    elapsed: backoff.elapsed(),
                }));
            };
            tracing::debug!(
                request = %self.label,
                status = ?status,
                attempt = backoff.attempts(),
                delay_ms = delay.as_millis() as u64,
                error = %format!("{err:#}"),
                "{}",
                self.note
            );
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(status: u16) -> anyhow::Error {
        ApiError::test_reply(status, "GET", "/status/systems", "x").into()
    }

    #[test]
    fn every_status_code_is_classified() {
        let transient: Vec<u16> = (100..=599)
            .filter(|&status| is_transient(&api_error(status)))
            .collect();
        assert_eq!(transient, vec![408, 424, 429, 500, 502, 503, 504]);
        let unsent: Vec<u16> = (100..=599)
            .filter(|&status| is_unsent(&api_error(status)))
            .collect();
        assert_eq!(unsent, vec![429, 503]);
    }

    fn recorded_api_error(status: u16, message: &str) -> anyhow::Error {
        ApiError::test_reply(status, "POST", "/compute/daint/jobs", message).into()
    }

    /// The replies of `recorded/submit_errors.json` and
    /// `ops_large_output.json`, plus the statuses a gateway answers: what
    /// is retried and what is reported at once, with the input refused.
    #[test]
    fn recorded_replies_are_classified_by_status_and_message() {
        let slurm = |text: &str| {
            format!("Unexpected Slurm command response. exit_status:1 std_err:{text}\n")
        };
        let table: Vec<(u16, String, bool, Option<Rejection>)> = vec![
            (
                500,
                slurm(
                    "sbatch: error: invalid partition specified: nopart\n\
                     sbatch: error: Batch job submission failed: Invalid partition name specified",
                ),
                false,
                Some(Rejection::Partition),
            ),
            (
                500,
                slurm("sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified"),
                false,
                Some(Rejection::Account),
            ),
            (
                500,
                slurm("sbatch: error: Batch job submission failed: Invalid qos specification"),
                false,
                Some(Rejection::Qos),
            ),
            (
                500,
                slurm("sbatch: error: Batch job submission failed: Requested node configuration is not available"),
                false,
                Some(Rejection::NodeConfiguration),
            ),
            (
                500,
                slurm("sbatch: error: Invalid --time specification"),
                false,
                Some(Rejection::TimeLimit),
            ),
            (
                500,
                slurm("sbatch: error: Batch job submission failed: Job dependency problem"),
                false,
                Some(Rejection::Dependency),
            ),
            // A busy controller: the next attempt may pass.
            (
                500,
                slurm("sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"),
                true,
                None,
            ),
            (500, "Channel not open for sending".into(), true, None),
            (424, "Connection to the cluster failed".into(), true, None),
            (502, "Bad Gateway".into(), true, None),
            (503, "unhealthy".into(), true, None),
            (504, "Gateway Timeout".into(), true, None),
            (400, "Invalid path".into(), false, None),
        ];
        for (status, message, transient, rejection) in table {
            let err = recorded_api_error(status, &message);
            assert_eq!(is_transient(&err), transient, "{status} {message}");
            assert_eq!(sbatch_rejection(&message), rejection, "{message}");
        }
    }

    #[test]
    fn classifier_walks_the_context_chain() {
        let err = api_error(502).context("failed to list jobs");
        assert!(is_transient(&err));
        let err = anyhow::Error::new(io::Error::from(io::ErrorKind::ConnectionReset))
            .context("reading the reply");
        assert!(is_transient(&err));
        let err = anyhow::Error::new(io::Error::from(io::ErrorKind::PermissionDenied))
            .context("reading the file");
        assert!(!is_transient(&err));
        assert!(!is_transient(&anyhow::anyhow!("plain failure")));
    }

    #[tokio::test]
    async fn refused_connection_is_transient_and_unsent() {
        // Bind then drop a listener to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = reqwest::get(format!("http://127.0.0.1:{port}/"))
            .await
            .unwrap_err();
        let err = anyhow::Error::new(err).context("GET /");
        assert!(is_transient(&err));
        assert!(is_unsent(&err));
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        let later = SystemTime::now() + Duration::from_secs(30);
        let parsed = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(parsed > Duration::from_secs(27) && parsed <= Duration::from_secs(30));
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn delays_stay_under_the_doubling_cap() {
        let policy = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            max_retries: 6,
            budget: Duration::from_secs(3600),
        };
        let mut backoff = Backoff::new(policy);
        let bounds = [100, 200, 400, 400, 400, 400];
        for bound in bounds {
            let delay = backoff.next_delay(None).unwrap();
            assert!(
                delay <= Duration::from_millis(bound),
                "{delay:?} > {bound} ms"
            );
        }
        assert_eq!(backoff.attempts(), 7);
        assert_eq!(backoff.next_delay(None), None, "count bound");
    }

    #[test]
    fn budget_bounds_the_total_time() {
        let policy = RetryPolicy {
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
            max_retries: 100,
            budget: Duration::from_secs(5),
        };
        let mut backoff = Backoff::new(policy);
        assert_eq!(
            backoff.next_delay(Some(Duration::from_secs(2))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(backoff.next_delay(Some(Duration::from_secs(6))), None);
    }
    /// Fails with the next of `script`, then succeeds; counts its calls.
    struct Scripted {
        script: Vec<Failure>,
        calls: u32,
    }

    impl Attempt for Scripted {
        type Output = u32;

        async fn attempt(&mut self) -> Result<u32, Failure> {
            self.calls += 1;
            match self.script.pop() {
                Some(failure) => Err(failure),
                None => Ok(self.calls),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_follows_the_callers_verdict() {
        let policy = RetryPolicy {
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(10),
            max_retries: 2,
            budget: Duration::from_secs(60),
        };
        let retry = || Retry::new(policy, "GET /x");
        // A transient failure and a token refresh, then success; the
        // refresh does not count against the two retries.
        let mut op = Scripted {
            script: vec![
                Failure::Again,
                Failure::Judge(api_error(503)),
                Failure::Again,
            ],
            calls: 0,
        };
        assert_eq!(retry().run(&mut op).await.unwrap(), 4);
        // Not transient, or declared final: returned at once.
        for failure in [
            Failure::Judge(api_error(404)),
            Failure::Fatal(api_error(503)),
        ] {
            let mut op = Scripted {
                script: vec![failure],
                calls: 0,
            };
            let err = retry().run(&mut op).await.unwrap_err();
            assert!(err.downcast_ref::<GaveUp>().is_none(), "{err:#}");
            assert_eq!(op.calls, 1);
        }
        // Retried whatever the classifier says, until the count runs out.
        let mut op = Scripted {
            script: (0..3)
                .map(|_| Failure::Retry(anyhow::anyhow!("odd reply")))
                .collect(),
            calls: 0,
        };
        let err = retry().run(&mut op).await.unwrap_err();
        let gave_up = err.downcast_ref::<GaveUp>().unwrap();
        assert_eq!((gave_up.label.as_str(), gave_up.attempts), ("GET /x", 3));
        assert!(format!("{err:#}").starts_with("giving up on GET /x after 3 attempts in "));
    }
}
