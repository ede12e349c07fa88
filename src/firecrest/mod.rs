//! The FirecREST v2 API client. This file holds the client, the status
//! calls and the request plumbing every call goes through: a fresh token, a
//! timeout, one refresh-and-retry on 401, retries of transient failures for
//! idempotent calls (through the one loop in [`retry`]), and errors that
//! name the failed request (method and path, never a token or a presigned
//! signature). The calls live with their endpoints: [`files`] (filesystem
//! ops), [`transfer`] (S3-staged transfers and presigned S3), [`jobs`]
//! (Slurm jobs); each module also says the paths it sends to, for messages
//! and the dry-run plan.
//!
//! Built for the behaviour of a real 2.5.6 server (see
//! `tests/fixtures/recorded/`): 1-based `tail`, 500 on cancelling a finished
//! job, 404 right after a submit, snake_case keys inside `dataOperation`.

pub mod auth;
pub mod contact;
mod error;
pub mod files;
pub mod jobs;
pub mod models;
pub mod retry;
pub mod transfer;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use reqwest::Method;
use serde::de::DeserializeOwned;
use url::Url;

use auth::TokenSource;
pub use auth::{AuthError, TokenObserver};
use contact::{Contact, ContactError, Host};
use error::api_error;
pub use error::ApiError;
pub use files::{ops_path, Op, UploadSource};
pub use jobs::{jobs_path, metadata_path};
use models::*;
pub use retry::RetryPolicy;
use retry::{Attempt, Failure, Retry};
pub use transfer::{transfer_path, TransferOp};

use crate::config::Credentials;
use crate::secret::Secret;

/// A path as the client shows it: `/a/b/c` from the segments it sends.
fn path_of(segments: &[&str]) -> String {
    format!("/{}", segments.join("/"))
}

const SYSTEMS: [&str; 2] = ["status", "systems"];

fn status_segments<'a>(system: &'a str, what: &'a str) -> Vec<&'a str> {
    vec!["status", system, what]
}

/// `/status/systems`: every system, its file systems and transfer limits.
pub fn systems_path() -> String {
    path_of(&SYSTEMS)
}

/// `/status/{system}/userinfo`: who the token belongs to on the cluster.
pub fn userinfo_path(system: &str) -> String {
    path_of(&status_segments(system, "userinfo"))
}

/// `/status/{system}/partitions`: the system's Slurm partitions.
pub fn partitions_path(system: &str) -> String {
    path_of(&status_segments(system, "partitions"))
}

/// Everything needed to talk to one system of one FirecREST deployment.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// API root, e.g. `https://api.cscs.ch/hpc/firecrest/v2`.
    pub base_url: String,
    /// Cluster name as FirecREST knows it, e.g. `daint`.
    pub system: String,
    /// Where access tokens come from: the configuration's own type.
    pub auth: Credentials,
    /// Bound on each single request (connection, upload and reply).
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

/// A random id in UUID v4 form, for `X-Request-ID` and `X-Correlation-ID`.
pub(crate) fn new_request_id() -> String {
    use rand::Rng;
    let mut bytes: [u8; 16] = rand::thread_rng().gen();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Whether a failed request may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Sending twice has the effect of sending once.
    Idempotent,
    /// Creates something: resend only when it surely never arrived.
    OnlyIfUnsent,
}

enum Payload<'a> {
    Empty,
    Json(serde_json::Value),
    Upload {
        file_name: &'a str,
        source: &'a UploadSource,
    },
}

/// One FirecREST call: what to send and how to treat failures.
struct Call<'a> {
    method: Method,
    segments: Vec<&'a str>,
    query: Vec<(&'static str, String)>,
    payload: Payload<'a>,
    resend: Resend,
    /// Errors that are an answer, not a failure: not retried.
    is_final: fn(&ApiError) -> bool,
    /// This call's own retry policy, instead of the client's.
    policy: Option<RetryPolicy>,
}

impl<'a> Call<'a> {
    fn new(method: Method, segments: Vec<&'a str>) -> Self {
        Self {
            method,
            segments,
            query: Vec::new(),
            payload: Payload::Empty,
            resend: Resend::Idempotent,
            is_final: |_| false,
            policy: None,
        }
    }

    /// A read of a job's output file: it fails fast so the watcher can
    /// shrink the next read. A 408 or a 500 on a read is the server saying
    /// the reply was too big for its buffer or too slow for its 5 s command
    /// timeout (see the recorded `ops_large_output.json`); asking again for
    /// the same bytes gets the same answer, 5 s later each time.
    fn output_read(mut self) -> Self {
        self.is_final = |e| e.is_timeout() || e.is_too_large() || e.status == 500;
        self.policy = Some(RetryPolicy::OUTPUT_READ);
        self
    }

    fn query(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.query.push((key, value.into()));
        self
    }

    fn json(mut self, body: serde_json::Value) -> Self {
        self.payload = Payload::Json(body);
        self
    }

    fn resend(mut self, resend: Resend) -> Self {
        self.resend = resend;
        self
    }

    fn path(&self) -> String {
        path_of(&self.segments)
    }
}

/// A successful reply, fully read (so a broken body is retried too).
struct Reply {
    body: Vec<u8>,
}

/// The FirecREST client; cheap to clone (shared connection pool and token).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: Url,
    system: String,
    tokens: TokenSource,
    request_timeout: Duration,
    retry: RetryPolicy,
    /// Which hosts answered already; shared with `tokens`.
    contact: Arc<Contact>,
    /// Sent as `X-Correlation-ID` with every request of this run, so a
    /// centre can find all of them in its logs.
    correlation_id: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.base_url.as_str())
            .field("system", &self.inner.system)
            .finish_non_exhaustive()
    }
}

/// The HTTP client every request uses: rustls, hickory DNS (no glibc NSS).
fn http_client(request_timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("firecrest-ci/", env!("CARGO_PKG_VERSION")))
        .use_rustls_tls()
        .hickory_dns(true)
        .connect_timeout(request_timeout.min(Duration::from_secs(30)))
        // Detects a stalled transfer even where no total timeout applies.
        .read_timeout(request_timeout)
        .build()
        .context("failed to set up the HTTP client")
}

impl Client {
    /// Checks the settings and prepares the connection pool; no request yet.
    pub fn new(settings: ClientSettings) -> Result<Self> {
        let base_url = Url::parse(settings.base_url.trim_end_matches('/'))
            .with_context(|| format!("invalid FirecREST URL {:?}", settings.base_url))?;
        anyhow::ensure!(
            matches!(base_url.scheme(), "http" | "https") && !base_url.cannot_be_a_base(),
            "invalid FirecREST URL {:?}: expected http(s)://host/path",
            settings.base_url
        );
        if let Credentials::ClientCredentials { token_url, .. } = &settings.auth {
            Url::parse(token_url).with_context(|| format!("invalid token URL {token_url:?}"))?;
        }
        let http = http_client(settings.request_timeout)?;
        let contact = Arc::new(Contact::default());
        let tokens = TokenSource::new(
            settings.auth,
            http.clone(),
            settings.request_timeout,
            settings.retry,
            contact.clone(),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base_url,
                system: settings.system,
                tokens,
                request_timeout: settings.request_timeout,
                retry: settings.retry,
                contact,
                correlation_id: new_request_id(),
            }),
        })
    }

    /// The `X-Correlation-ID` every request of this run carries.
    pub fn correlation_id(&self) -> &str {
        &self.inner.correlation_id
    }

    /// Every token obtained from now on is passed to `observer` (to mask it).
    pub fn set_token_observer(&self, observer: TokenObserver) {
        self.inner.tokens.set_observer(observer);
    }

    /// The system this client addresses.
    pub fn system(&self) -> &str {
        &self.inner.system
    }

    /// The API root, for messages.
    pub fn base_url(&self) -> &str {
        self.inner.base_url.as_str()
    }

    // ---- status --------------------------------------------------------

    /// All systems of the deployment, with file systems and transfer limits.
    pub async fn systems(&self) -> Result<Vec<System>> {
        let call = Call::new(Method::GET, SYSTEMS.to_vec());
        Ok(self.json::<SystemsResponse>(call).await?.systems)
    }

    /// Who the token belongs to on the cluster.
    pub async fn userinfo(&self) -> Result<UserInfo> {
        let call = Call::new(Method::GET, status_segments(self.system(), "userinfo"));
        self.json(call).await
    }

    /// The system's Slurm partitions.
    pub async fn partitions(&self) -> Result<Vec<Partition>> {
        let call = Call::new(Method::GET, status_segments(self.system(), "partitions"));
        Ok(self.json::<PartitionsResponse>(call).await?.partitions)
    }

    /// Gets a token now (or reuses the cached one) and says how long it
    /// stays valid; `None` for a static token, whose expiry is unknown.
    pub async fn token_lifetime(&self) -> Result<Option<Duration>> {
        self.inner.tokens.token().await?;
        Ok(self.inner.tokens.remaining().await)
    }

    // ---- the request loop -------------------------------------------------

    async fn json<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T> {
        let label = format!("{} {}", call.method, call.path());
        let reply = self.send(call).await?;
        serde_json::from_slice(&reply.body)
            .with_context(|| format!("{label}: the reply is not the JSON expected"))
    }

    /// Sends `call` until it succeeds, fails for good, or the retry policy
    /// is used up.
    async fn send(&self, call: Call<'_>) -> Result<Reply> {
        let path = call.path();
        let mut url = self.inner.base_url.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("the FirecREST URL cannot take a path"))?
            .pop_if_empty()
            .extend(&call.segments);
        if !call.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&call.query);
        }
        let contact = &self.inner.contact;
        let policy = contact.policy(Host::Api, call.policy.unwrap_or(self.inner.retry));
        let label = format!("{} {path}", call.method);
        let mut request = ApiRequest {
            client: self,
            call: &call,
            url: &url,
            path: &path,
            token: None,
            refreshed: false,
        };
        let result = Retry::new(policy, label).run(&mut request).await;
        let url = self.base_url().trim_end_matches('/');
        result.map_err(|err| contact.unreachable(Host::Api, url, err))
    }

    async fn attempt(
        &self,
        call: &Call<'_>,
        url: &Url,
        path: &str,
        token: &Secret,
    ) -> Result<Reply> {
        let request_id = new_request_id();
        let mut req = self
            .inner
            .http
            .request(call.method.clone(), url.clone())
            .bearer_auth(token.expose())
            .header(ACCEPT, "application/json")
            .header("X-Request-ID", &request_id)
            .header("X-Correlation-ID", &self.inner.correlation_id)
            .timeout(
                self.inner
                    .contact
                    .timeout(Host::Api, self.inner.request_timeout),
            );
        req = match &call.payload {
            Payload::Empty => req,
            Payload::Json(body) => req.json(body),
            Payload::Upload { file_name, source } => {
                req.multipart(files::multipart_form(file_name, source).await?)
            }
        };
        let label = || format!("{} {path} (request id {request_id})", call.method);
        let started = std::time::Instant::now();
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(err) => {
                tracing::debug!(method = %call.method, path, request_id, ms = started.elapsed().as_millis() as u64,
                    "request failed before a reply");
                return Err(anyhow::Error::new(err.without_url()))
                    .with_context(|| format!("{}: request failed", label()));
            }
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| anyhow::Error::new(e.without_url()))
            .with_context(|| format!("{}: reading the reply failed", label()))?
            .to_vec();
        tracing::debug!(method = %call.method, path, status = status.as_u16(), request_id,
            ms = started.elapsed().as_millis() as u64, "request");
        if !self.inner.contact.answered(Host::Api) {
            self.first_reply(status.as_u16(), &headers, &body)?;
        }
        if status.is_success() {
            return Ok(Reply { body });
        }
        let mut err = api_error(&call.method, path, status.as_u16(), &headers, &body);
        err.request_id = Some(request_id);
        Err(err.into())
    }
}

/// One FirecREST call, as the retry loop sees it.
struct ApiRequest<'a> {
    client: &'a Client,
    call: &'a Call<'a>,
    url: &'a Url,
    path: &'a str,
    /// The token for the next attempt when it was just replaced after a 401.
    token: Option<Secret>,
    refreshed: bool,
}

impl Attempt for ApiRequest<'_> {
    type Output = Reply;

    async fn attempt(&mut self) -> Result<Reply, Failure> {
        let (client, call, path) = (self.client, self.call, self.path);
        let tokens = &client.inner.tokens;
        let contact = &client.inner.contact;
        // A fresh token each time: the last wait may have outlived it.
        let token = match self.token.take() {
            Some(token) => token,
            None => tokens.token().await.map_err(Failure::Fatal)?,
        };
        let err = match client.attempt(call, self.url, path, &token).await {
            Ok(reply) => return Ok(reply),
            Err(err) => err,
        };
        let api = ApiError::find(&err);
        if api.is_some_and(|e| e.status == 401) {
            let message = api.map(|e| e.message.clone()).unwrap_or_default();
            if !tokens.can_refresh() {
                return Err(Failure::Fatal(
                    anyhow::Error::new(AuthError::StaticTokenRejected { message })
                        .context(format!("{} {path}", call.method)),
                ));
            }
            if self.refreshed {
                return Err(Failure::Fatal(err.context(AuthError::FreshTokenRejected)));
            }
            self.refreshed = true;
            tracing::debug!(method = %call.method, path = %path, %message,
                "FirecREST rejected the token; refreshing it once");
            let fresh = tokens
                .refresh_after_rejection(&token)
                .await
                .map_err(Failure::Fatal)?;
            self.token = Some(fresh);
            return Err(Failure::Again);
        }
        if let Some(refused) = api.and_then(AuthError::from_reply) {
            return Err(Failure::Fatal(err.context(refused)));
        }
        if !contact.answered(Host::Api) && contact::is_unknown_host(&err) {
            return Err(Failure::Fatal(err.context(ContactError::UnknownHost {
                host_kind: Host::Api,
                host: contact::host_of(client.base_url()),
            })));
        }
        if api.is_some_and(call.is_final)
            || (call.resend == Resend::OnlyIfUnsent && !retry::is_unsent(&err))
        {
            return Err(Failure::Fatal(err));
        }
        Err(Failure::Judge(err))
    }
}

impl Client {
    /// Judges the first reply from FirecREST's host: a web page, or a 404
    /// without FirecREST's error body on a path every FirecREST v2 has, means
    /// the URL points elsewhere (78); a transient status says nothing yet;
    /// anything else is FirecREST answering.
    fn first_reply(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> Result<()> {
        let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let html = contact::looks_like_html(content_type, body);
        let transient = retry::is_transient_status(status);
        let foreign =
            (html && !transient) || (status == 404 && !contact::is_firecrest_error_body(body));
        if foreign {
            let url = self.base_url().trim_end_matches('/').to_owned();
            return Err(ContactError::NotFirecrest {
                hint: contact::url_hint(&url),
                what: contact::describe_reply(status, body),
                url,
            }
            .into());
        }
        if !transient {
            self.inner.contact.mark_answered(Host::Api);
        }
        Ok(())
    }
}

/// The first few hundred characters of a non-JSON reply, on one line.
pub(crate) fn short_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return "(empty reply)".to_owned();
    }
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

pub(crate) fn retry_after_header(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(retry::parse_retry_after)
}

/// Scheme, host and path only: presigned URLs carry signatures in the query.
pub(crate) fn url_without_query(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            parsed.set_query(None);
            parsed.set_fragment(None);
            let _ = parsed.set_password(None);
            let _ = parsed.set_username("");
            parsed.to_string()
        }
        Err(_) => url.split(['?', '#']).next().unwrap_or_default().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presigned_urls_lose_their_signature_in_messages() {
        let url = "http://127.0.0.1:5005/ciuser/k/big.bin?uploadId=x&X-Amz-Signature=abc";
        assert_eq!(
            url_without_query(url),
            "http://127.0.0.1:5005/ciuser/k/big.bin"
        );
        assert_eq!(url_without_query("not a url?sig=1"), "not a url");
    }

    /// What the dry-run plan shows is what the client sends to.
    #[test]
    fn endpoint_paths_are_the_api_paths() {
        assert_eq!(systems_path(), "/status/systems");
        assert_eq!(userinfo_path("daint"), "/status/daint/userinfo");
        assert_eq!(partitions_path("daint"), "/status/daint/partitions");
        assert_eq!(ops_path("daint", Op::Mkdir), "/filesystem/daint/ops/mkdir");
        assert_eq!(
            transfer_path("daint", TransferOp::Upload),
            "/filesystem/daint/transfer/upload"
        );
        assert_eq!(jobs_path("daint", None), "/compute/daint/jobs");
        assert_eq!(jobs_path("daint", Some("<id>")), "/compute/daint/jobs/<id>");
        assert_eq!(
            metadata_path("daint", "7"),
            "/compute/daint/jobs/7/metadata"
        );
    }

    #[test]
    fn request_ids_are_uuid_v4_shaped_and_differ() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        let parts: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12], "{a}");
        assert_eq!(&a[14..15], "4", "{a}");
        assert!("89ab".contains(&a[19..20]), "{a}");
    }
}
