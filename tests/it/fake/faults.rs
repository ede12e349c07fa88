//! Fault injection: what a test can make the fake do wrong, and the decision
//! taken for each request. Every fault is bounded (a time window or a count)
//! so a test cannot leave the fake broken forever by accident.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::http::{PortKind, Response};
use super::Route;

/// A span of time relative to when it was created.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    /// From now on, for `len`.
    pub fn now_for(len: Duration) -> Self {
        Window::starting_in(Duration::ZERO, len)
    }

    /// From `delay` from now, for `len`.
    pub fn starting_in(delay: Duration, len: Duration) -> Self {
        let start = Instant::now() + delay;
        Window {
            start,
            end: start + len,
        }
    }

    pub fn contains(&self, t: Instant) -> bool {
        self.start <= t && t < self.end
    }
}

/// Whether a fault hits before the request is acted on (nothing happens on
/// the server) or after (the action happened and only the reply is lost or
/// late: the case that makes clients submit twice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Before,
    After,
}

/// How a reply body is spoiled.
#[derive(Clone, Debug)]
pub enum Malform {
    /// The body is cut in half: invalid JSON with a JSON content type.
    InvalidJson,
    /// Every object key with this name is removed from the JSON body.
    DropField(String),
}

/// How the token endpoint is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenDown {
    /// Answers 503.
    Status503,
    /// Refuses connections.
    Refused,
}

/// Which listeners an outage closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outage {
    /// FirecREST API and S3 (the token endpoint stays up).
    Api,
    /// Both ports.
    All,
}

pub(crate) struct RouteCount {
    pub route: Option<Route>,
    pub remaining: u32,
}

impl RouteCount {
    /// Consumes one use when `route` matches.
    fn take(&mut self, route: Route) -> bool {
        if self.remaining > 0 && self.route.is_none_or(|r| r == route) {
            self.remaining -= 1;
            true
        } else {
            false
        }
    }
}

pub(crate) struct FailNext {
    pub on: RouteCount,
    pub status: u16,
    pub stage: Stage,
    /// Only requests with a body of at least this many bytes (a proxy's
    /// own body limit); 0: any. Known only after the request was read, so
    /// anything but 0 applies with [`Stage::After`] only.
    pub min_body: usize,
}

pub(crate) struct Delay {
    pub route: Option<Route>,
    pub delay: Duration,
    pub stage: Stage,
    pub window: Option<Window>,
    pub remaining: Option<u32>,
}

pub(crate) struct MalformNext {
    pub on: RouteCount,
    pub how: Malform,
}

pub(crate) struct Faults {
    pub random_5xx: Option<(f64, Window)>,
    pub rng: StdRng,
    pub rate_limit: Option<(u32, u64, Window)>,
    pub firecrest_seen: u64,
    pub token_down: Option<(TokenDown, Window)>,
    pub outages: Vec<(Outage, Window)>,
    pub delays: Vec<Delay>,
    pub fail_next: Vec<FailNext>,
    pub malform_next: Vec<MalformNext>,
    pub reset_next: Vec<RouteCount>,
    /// Job name -> 404 for this long after submit (None: forever).
    pub hidden_jobs: HashMap<String, Option<Duration>>,
    /// Each S3 part's first K PUT attempts answer 500.
    pub part_put_failures: u32,
    /// S3 uploads' transfer jobs fail with this in their error log.
    pub transfer_failure: Option<String>,
    /// The `ops/upload` that stores a flipped byte, counted down.
    pub corrupt_upload: Option<u32>,
    pub part_attempts: HashMap<(String, u32), u32>,
    /// Reads (tail, view, head, download) of paths containing the text
    /// answer this status inside the window; `stat` still answers.
    pub read_denials: Vec<(String, u16, Window)>,
}

impl Faults {
    /// Whether this `ops/upload` is the one to corrupt.
    pub fn take_corrupt_upload(&mut self) -> bool {
        match self.corrupt_upload {
            Some(1) => {
                self.corrupt_upload = None;
                true
            }
            Some(n) => {
                self.corrupt_upload = Some(n - 1);
                false
            }
            None => false,
        }
    }

    pub fn new() -> Self {
        Faults {
            random_5xx: None,
            rng: StdRng::seed_from_u64(0),
            rate_limit: None,
            firecrest_seen: 0,
            token_down: None,
            outages: Vec::new(),
            delays: Vec::new(),
            fail_next: Vec::new(),
            malform_next: Vec::new(),
            reset_next: Vec::new(),
            hidden_jobs: HashMap::new(),
            part_put_failures: 0,
            transfer_failure: None,
            corrupt_upload: None,
            part_attempts: HashMap::new(),
            read_denials: Vec::new(),
        }
    }

    /// The status a read of `path` answers now, if a denial applies.
    pub fn read_denied(&self, route: Route, path: &str, now: Instant) -> Option<u16> {
        let read = matches!(
            route,
            Route::OpsTail | Route::OpsView | Route::OpsHead | Route::OpsDownload
        );
        self.read_denials
            .iter()
            .find(|(needle, _, w)| read && w.contains(now) && path.contains(needle.as_str()))
            .map(|(_, status, _)| *status)
    }

    pub fn is_away(&self, port: PortKind, now: Instant) -> bool {
        let api_out = self
            .outages
            .iter()
            .any(|(o, w)| w.contains(now) && (port == PortKind::Api || *o == Outage::All));
        let token_refused = port == PortKind::Token
            && matches!(self.token_down, Some((TokenDown::Refused, w)) if w.contains(now));
        api_out || token_refused
    }

    pub fn take_reset(&mut self, route: Route) -> bool {
        self.reset_next.iter_mut().any(|r| r.take(route))
    }

    /// The delay for this request at `stage`, consuming counted delays.
    pub fn delay(&mut self, route: Route, stage: Stage, now: Instant) -> Option<Duration> {
        let mut total = None;
        for d in &mut self.delays {
            let route_ok = match d.route {
                Some(r) => r == route,
                None => route.is_firecrest(),
            };
            let live = d.window.is_none_or(|w| w.contains(now)) && d.remaining != Some(0);
            if d.stage == stage && route_ok && live {
                if let Some(n) = &mut d.remaining {
                    *n -= 1;
                }
                total = Some(total.unwrap_or(Duration::ZERO) + d.delay);
            }
        }
        total
    }

    /// A gateway-level answer that replaces the request (it never reaches
    /// FirecREST), with a label for the log.
    pub fn before(
        &mut self,
        port: PortKind,
        route: Route,
        now: Instant,
    ) -> Option<(Response, String)> {
        if port == PortKind::Token {
            if matches!(self.token_down, Some((TokenDown::Status503, w)) if w.contains(now)) {
                return Some((gateway(503), "token-503".into()));
            }
            return self.take_fail(route, Stage::Before, 0);
        }
        if !route.is_firecrest() {
            return self.take_fail(route, Stage::Before, 0);
        }
        self.firecrest_seen += 1;
        if let Some((every, retry_after, w)) = self.rate_limit {
            if w.contains(now) && every > 0 && self.firecrest_seen % u64::from(every) == 0 {
                let r = Response::new(
                    429,
                    "application/json",
                    br#"{"message":"API rate limit exceeded"}"#.to_vec(),
                )
                .with_header("retry-after", &retry_after.to_string());
                return Some((r, "429".into()));
            }
        }
        if let Some((fraction, w)) = self.random_5xx {
            if w.contains(now) && self.rng.gen_bool(fraction.clamp(0.0, 1.0)) {
                let status = [502, 503, 504][self.rng.gen_range(0..3)];
                return Some((gateway(status), format!("random-{status}")));
            }
        }
        self.take_fail(route, Stage::Before, 0)
    }

    /// The injected failure for a request of `route` at `stage` with a
    /// body of `body` bytes (0 before the body is read), if one applies.
    pub fn take_fail(
        &mut self,
        route: Route,
        stage: Stage,
        body: usize,
    ) -> Option<(Response, String)> {
        for f in &mut self.fail_next {
            if f.stage == stage && body >= f.min_body && f.on.take(route) {
                let label = format!("fail-{}-{:?}", f.status, stage);
                return Some((gateway(f.status), label));
            }
        }
        None
    }

    pub fn take_malform(&mut self, route: Route) -> Option<Malform> {
        self.malform_next
            .iter_mut()
            .find_map(|m| m.on.take(route).then(|| m.how.clone()))
    }

    /// Counts an attempt for an S3 part and says whether it must fail.
    pub fn part_put_fails(&mut self, upload_id: &str, part: u32) -> bool {
        let n = self
            .part_attempts
            .entry((upload_id.to_string(), part))
            .or_insert(0);
        *n += 1;
        *n <= self.part_put_failures
    }
}

/// What a reverse proxy answers when the application behind it is unwell.
pub fn gateway(status: u16) -> Response {
    let text = match status {
        502 => "502 Bad Gateway",
        503 => "503 Service Temporarily Unavailable",
        504 => "504 Gateway Time-out",
        500 => "500 Internal Server Error",
        s => return Response::new(s, "text/plain", format!("{s}").into_bytes()),
    };
    let body = format!(
        "<html>\r\n<head><title>{text}</title></head>\r\n<body>\r\n<center><h1>{text}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    );
    Response::new(status, "text/html", body.into_bytes())
}

/// Applies a malformation to a JSON reply.
pub fn spoil(mut r: Response, how: &Malform) -> Response {
    match how {
        Malform::InvalidJson => {
            let half = r.body.len() / 2;
            r.body.truncate(half.max(1));
            if r.body.is_empty() {
                r.body = b"{".to_vec();
            }
        }
        Malform::DropField(name) => {
            if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&r.body) {
                drop_key(&mut v, name);
                r.body = serde_json::to_vec(&v).unwrap();
            }
        }
    }
    r
}

fn drop_key(v: &mut serde_json::Value, name: &str) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove(name);
            m.values_mut().for_each(|c| drop_key(c, name));
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|c| drop_key(c, name)),
        _ => {}
    }
}
