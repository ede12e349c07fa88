//! The FirecREST v2 API client: typed calls for status, filesystem ops,
//! S3-staged transfers and Slurm jobs, plus the presigned S3 requests those
//! transfers need. It owns the request loop every call goes through: a fresh
//! token, a timeout, one refresh-and-retry on 401, retries of transient
//! failures for idempotent calls, and errors that name the failed request
//! (method and path, never a token or a presigned signature).
//!
//! Built for the behaviour of a real 2.5.6 server (see
//! `tests/fixtures/recorded/`): 1-based `tail`, 500 on cancelling a finished
//! job, 404 right after a submit, snake_case keys inside `dataOperation`.

pub mod auth;
pub mod contact;
pub mod models;
pub mod retry;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE, ETAG, RANGE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use url::Url;

use auth::TokenSource;
pub use auth::{AuthError, TokenObserver};
use contact::{Contact, ContactError, Host};
use models::*;
pub use retry::RetryPolicy;
use retry::{Attempt, Failure, Retry};

use crate::config::Credentials;
use crate::secret::Secret;

/// How often the job list is searched for a job whose submit reply was lost
/// before submitting it again.
const LOST_SUBMIT_LOOKUPS: usize = 3;

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

/// A failed request, as the server explained it. Callers downcast to branch
/// on the kind (not found, auth, too large, ...).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{method} {path} failed with HTTP {status}: {message}{}", request_note(request_id.as_deref()))]
pub struct ApiError {
    pub status: u16,
    pub method: String,
    /// API path (or S3 object path) without query, so nothing secret.
    pub path: String,
    /// The server's `message`, or the start of its reply body.
    pub message: String,
    /// FirecREST's `errorType` (`error`, `validation`), or S3's `<Code>`.
    pub error_type: Option<String>,
    /// The server's `Retry-After`, on 429 and 503.
    pub retry_after: Option<Duration>,
    /// The `X-Request-ID` the request carried, for the centre's support.
    pub request_id: Option<String>,
}

fn request_note(id: Option<&str>) -> String {
    id.map_or_else(String::new, |id| format!(" (request id {id})"))
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

impl ApiError {
    /// 404: no such system, file, or job (yet).
    pub fn is_not_found(&self) -> bool {
        self.status == 404
    }

    /// 401 or 403: credentials or permissions.
    pub fn is_auth(&self) -> bool {
        matches!(self.status, 401 | 403)
    }

    /// 400: the request itself is wrong (bad path, validation).
    pub fn is_bad_request(&self) -> bool {
        self.status == 400
    }

    /// 413: over `max_ops_file_size`; use the S3 transfer instead.
    pub fn is_too_large(&self) -> bool {
        self.status == 413
    }

    /// 408: the remote command hit FirecREST's 5 s limit.
    pub fn is_timeout(&self) -> bool {
        self.status == 408
    }

    /// 5xx.
    pub fn is_server_error(&self) -> bool {
        (500..600).contains(&self.status)
    }

    /// True when a retry might succeed.
    pub fn is_transient(&self) -> bool {
        retry::is_transient_api(self)
    }

    /// The first `ApiError` in an error chain, for callers holding `anyhow`.
    pub fn find(err: &anyhow::Error) -> Option<&ApiError> {
        err.chain().find_map(|c| c.downcast_ref::<ApiError>())
    }
}

/// A submit answered with success but no readable job id: the job was
/// probably created, so it is looked up by name rather than given up on
/// (which would leave it running) or blindly submitted again.
#[derive(Debug, thiserror::Error)]
#[error("the job was accepted but its id could not be read")]
struct UnreadableSubmitReply(#[source] Option<serde_json::Error>);

/// Body of a small upload: bytes in memory or a file read for each attempt.
#[derive(Debug, Clone)]
pub enum UploadSource {
    Bytes(Vec<u8>),
    File(PathBuf),
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
        format!("/{}", self.segments.join("/"))
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
        let call = Call::new(Method::GET, vec!["status", "systems"]);
        Ok(self.json::<SystemsResponse>(call).await?.systems)
    }

    /// Who the token belongs to on the cluster.
    pub async fn userinfo(&self) -> Result<UserInfo> {
        let call = Call::new(Method::GET, vec!["status", self.system(), "userinfo"]);
        self.json(call).await
    }

    /// The system's Slurm partitions.
    pub async fn partitions(&self) -> Result<Vec<Partition>> {
        let call = Call::new(Method::GET, vec!["status", self.system(), "partitions"]);
        Ok(self.json::<PartitionsResponse>(call).await?.partitions)
    }

    /// Gets a token now (or reuses the cached one) and says how long it
    /// stays valid; `None` for a static token, whose expiry is unknown.
    pub async fn token_lifetime(&self) -> Result<Option<Duration>> {
        self.inner.tokens.token().await?;
        Ok(self.inner.tokens.remaining().await)
    }

    // ---- filesystem ops ------------------------------------------------

    /// `mkdir [-p]`. Only `parents = true` is retried (a repeat would fail
    /// with "File exists" otherwise).
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<()> {
        let call = self
            .ops(Method::POST, "mkdir")
            .json(serde_json::json!({"path": path, "parent": parents}))
            .resend(if parents {
                Resend::Idempotent
            } else {
                Resend::OnlyIfUnsent
            });
        self.send(call).await.map(drop)
    }

    /// `chmod`; `mode` in octal, e.g. `"700"`.
    pub async fn chmod(&self, path: &str, mode: &str) -> Result<()> {
        // 2.5.6 reads `path` (mkdir was recorded with both spellings); the
        // published spec names `sourcePath`. Unknown fields are ignored, so
        // both are sent with the same value.
        let call = self
            .ops(Method::PUT, "chmod")
            .json(serde_json::json!({"path": path, "sourcePath": path, "mode": mode}));
        self.send(call).await.map(drop)
    }

    /// `rm -r`. Large trees can hit the 5 s limit (408): see [`Self::transfer_rm`].
    pub async fn rm(&self, path: &str) -> Result<()> {
        let call = self.ops(Method::DELETE, "rm").query("path", path);
        self.send(call).await.map(drop)
    }

    /// `stat`; size and mode as integers.
    pub async fn stat(&self, path: &str) -> Result<FileStat> {
        let call = self.ops(Method::GET, "stat").query("path", path);
        Ok(self.json::<Output<FileStat>>(call).await?.output)
    }

    /// `ls -a` of a directory (or one file): hidden entries too, so an
    /// empty listing means an empty directory.
    pub async fn ls(&self, path: &str) -> Result<Vec<FileEntry>> {
        let call = self
            .ops(Method::GET, "ls")
            .query("path", path)
            .query("showHidden", "true");
        Ok(self.json::<Output<Vec<FileEntry>>>(call).await?.output)
    }

    /// Places `source` at `<dir>/<file_name>` (up to `max_ops_file_size`,
    /// else 413). Retried: the same bytes to the same path.
    pub async fn upload(&self, dir: &str, file_name: &str, source: &UploadSource) -> Result<()> {
        let mut call = self.ops(Method::POST, "upload").query("path", dir);
        call.payload = Payload::Upload { file_name, source };
        self.send(call).await.map(drop)
    }

    /// The whole file (about 0.75 x `max_ops_file_size` at most, else 413).
    pub async fn download(&self, path: &str) -> Result<Vec<u8>> {
        let call = self.ops(Method::GET, "download").query("path", path);
        Ok(self.send(call).await?.body)
    }

    /// [`Self::download`] into `writer`, once the whole file arrived (so a
    /// retried download never writes half a file twice). Returns the size.
    pub async fn download_to<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        writer: &mut W,
    ) -> Result<u64> {
        let body = self.download(path).await?;
        writer
            .write_all(&body)
            .await
            .with_context(|| format!("failed to write the download of {path}"))?;
        writer.flush().await.context("failed to flush a download")?;
        Ok(body.len() as u64)
    }

    /// The file from the 0-based byte `offset` on (`tail -c +offset+1`).
    pub async fn tail(&self, path: &str, offset: u64) -> Result<FileTail> {
        let call = self
            .ops(Method::GET, "tail")
            .query("path", path)
            .query("bytes", (offset + 1).to_string())
            .query("skipHeading", "true");
        Ok(self.json::<Output<FileTail>>(call).await?.output)
    }

    /// [`Self::stat`] for the output reads: fails fast (see `Call::output_read`).
    pub async fn output_stat(&self, path: &str) -> Result<FileStat> {
        let call = self
            .ops(Method::GET, "stat")
            .query("path", path)
            .output_read();
        Ok(self.json::<Output<FileStat>>(call).await?.output)
    }

    /// [`Self::tail`] for the output reads: fails fast (see `Call::output_read`).
    /// Unbounded: the reply is everything from `offset` to the end.
    pub async fn output_tail(&self, path: &str, offset: u64) -> Result<FileTail> {
        let call = self
            .ops(Method::GET, "tail")
            .query("path", path)
            .query("bytes", (offset + 1).to_string())
            .query("skipHeading", "true")
            .output_read();
        Ok(self.json::<Output<FileTail>>(call).await?.output)
    }

    /// `view`: the server reads `2 * size` bytes from the `size`-aligned block
    /// holding `offset` (`dd bs=size skip=offset/size count=2`), decodes them
    /// lossily and returns `size` characters from character `offset % size`.
    /// Only an `offset` that is a multiple of `size` starts at that byte.
    /// Bounded (`2 * size` must stay under the server's buffer); fails fast.
    pub async fn output_view(&self, path: &str, offset: u64, size: u64) -> Result<String> {
        let call = self
            .ops(Method::GET, "view")
            .query("path", path)
            .query("offset", offset.to_string())
            .query("size", size.to_string())
            .output_read();
        Ok(self.json::<Output<String>>(call).await?.output)
    }

    /// SHA-256 of a remote file.
    pub async fn checksum(&self, path: &str) -> Result<Checksum> {
        let call = self.ops(Method::GET, "checksum").query("path", path);
        Ok(self.json::<Output<Checksum>>(call).await?.output)
    }

    // ---- transfers (each one a Slurm job) --------------------------------

    /// Starts an S3-staged upload to the file `path` of `size` bytes: presigned
    /// part URLs and the transfer job that copies the object into place.
    /// Not resent on an ambiguous failure: each call queues a job.
    pub async fn transfer_upload(&self, path: &str, size: u64) -> Result<TransferResponse> {
        let call = self
            .transfer(Method::POST, "upload")
            .json(serde_json::json!({
                "path": path,
                "transferDirectives": {"transferMethod": "s3", "fileSize": size},
            }))
            .resend(Resend::OnlyIfUnsent);
        self.json(call).await
    }

    /// Starts an S3-staged download of `path`; the URL works once the
    /// transfer job is COMPLETED.
    pub async fn transfer_download(&self, path: &str) -> Result<TransferResponse> {
        let call = self
            .transfer(Method::POST, "download")
            .json(serde_json::json!({
                "path": path,
                "transferDirectives": {"transferMethod": "s3"},
            }))
            .resend(Resend::OnlyIfUnsent);
        self.json(call).await
    }

    /// `rm -r` as a job, for trees too large for the 5 s limit.
    pub async fn transfer_rm(&self, path: &str) -> Result<TransferJob> {
        let call = self.transfer(Method::DELETE, "rm").query("path", path);
        Ok(self.json::<TransferJobResponse>(call).await?.transfer_job)
    }

    // ---- compute ---------------------------------------------------------

    /// Submits `job` exactly once. When the reply is lost in a way that the
    /// job may exist (timeout, reset, 5xx), the job list is searched for the
    /// job's unique name before submitting again.
    pub async fn submit_job(&self, job: &JobDescription) -> Result<String> {
        anyhow::ensure!(
            !job.name.trim().is_empty(),
            "a job needs a unique name to be submitted safely"
        );
        // Resubmits at most a few times: a deterministic sbatch failure also
        // answers 500, and should not take the whole retry budget.
        let policy = RetryPolicy {
            max_retries: self.inner.retry.max_retries.min(4),
            ..self.inner.retry
        };
        let path = self.compute_path(None);
        let mut submit = SubmitAttempt {
            client: self,
            job,
            resubmit: false,
        };
        Retry::new(policy, format!("POST {path}"))
            .note("job submit failed; checking whether the job exists")
            .run(&mut submit)
            .await
    }

    /// One submit request; resent only when it surely never arrived.
    async fn post_job(&self, job: &JobDescription) -> Result<String> {
        let body = serde_json::to_value(JobSubmitRequest { job })
            .context("failed to encode the job submission")?;
        let call = Call::new(Method::POST, vec!["compute", self.system(), "jobs"])
            .json(body)
            .resend(Resend::OnlyIfUnsent);
        let label = format!("{} {}", call.method, call.path());
        let reply = self.send(call).await?;
        match serde_json::from_slice::<SubmitResponse>(&reply.body) {
            Ok(reply) if !reply.job_id.is_empty() => Ok(reply.job_id),
            Ok(_) => Err(anyhow::Error::new(UnreadableSubmitReply(None))
                .context(format!("{label}: the reply carries no job id"))),
            Err(err) => Err(anyhow::Error::new(UnreadableSubmitReply(Some(err)))
                .context(format!("{label}: the reply is not the JSON expected"))),
        }
    }

    /// The newest of the user's jobs named `name`, if any.
    pub async fn find_job_by_name(&self, name: &str) -> Result<Option<String>> {
        let jobs = self
            .list_jobs()
            .await
            .context("failed to look for a job whose submit reply was lost")?;
        Ok(jobs
            .into_iter()
            .filter(|j| j.name == name)
            .max_by_key(|j| j.job_id.parse::<u64>().unwrap_or(0))
            .map(|j| j.job_id))
    }

    /// The user's jobs on this system (running and recent).
    pub async fn list_jobs(&self) -> Result<Vec<Job>> {
        let call = Call::new(Method::GET, vec!["compute", self.system(), "jobs"]);
        Ok(self.json::<JobsResponse>(call).await?.jobs)
    }

    /// One job; `None` while the scheduler does not know it (404). A reply
    /// without a state is an error, not an unknown state to wait on.
    pub async fn job(&self, job_id: &str) -> Result<Option<Job>> {
        let call = Call::new(Method::GET, vec!["compute", self.system(), "jobs", job_id]);
        let label = format!("{} {}", call.method, call.path());
        match self.json::<JobsResponse>(call).await {
            Ok(reply) => {
                let mut jobs = reply.jobs;
                let index = jobs.iter().position(|j| j.job_id == job_id).unwrap_or(0);
                let job = (!jobs.is_empty()).then(|| jobs.swap_remove(index));
                if job
                    .as_ref()
                    .is_some_and(|j| j.status.state.trim().is_empty())
                {
                    anyhow::bail!("{label}: the reply has no job state");
                }
                Ok(job)
            }
            Err(err) if ApiError::find(&err).is_some_and(ApiError::is_not_found) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Absolute stdout/stderr paths of a job.
    pub async fn job_metadata(&self, job_id: &str) -> Result<JobMetadata> {
        let call = Call::new(
            Method::GET,
            vec!["compute", self.system(), "jobs", job_id, "metadata"],
        );
        let reply: JobMetadataResponse = self.json(call).await?;
        reply
            .jobs
            .into_iter()
            .next()
            .with_context(|| format!("no metadata for job {job_id}"))
    }

    /// `scancel`. A job that already ended (500 "already completing or
    /// completed") or is unknown (404) counts as cancelled.
    pub async fn cancel_job(&self, job_id: &str) -> Result<()> {
        let mut call = Call::new(
            Method::DELETE,
            vec!["compute", self.system(), "jobs", job_id],
        );
        call.is_final = |e| e.is_not_found() || is_already_completed(e);
        match self.send(call).await {
            Ok(_) => Ok(()),
            Err(err)
                if ApiError::find(&err)
                    .is_some_and(|e| e.is_not_found() || is_already_completed(e)) =>
            {
                tracing::debug!(job_id, "job already ended; nothing to cancel");
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    // ---- presigned S3 (no FirecREST token) -------------------------------

    /// PUTs one part of a multipart upload; returns its `ETag`.
    pub async fn s3_put_part(&self, url: &str, part: Vec<u8>) -> Result<String> {
        let reply = self
            .s3(Method::PUT, url, None, |req| req.body(part.clone()))
            .await?;
        let etag = reply
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        etag.with_context(|| {
            format!(
                "PUT {}: S3 sent no ETag for the part",
                url_without_query(url)
            )
        })
    }

    /// Completes a multipart upload from `(part number, ETag)` pairs.
    pub async fn s3_complete_upload(&self, url: &str, parts: &[(u32, String)]) -> Result<()> {
        let body = complete_multipart_xml(parts);
        let reply = self
            .s3(Method::POST, url, None, |req| {
                req.header(CONTENT_TYPE, "application/xml")
                    .body(body.clone())
            })
            .await?;
        // S3 can answer 200 and still report an error in the body.
        let text = reply
            .text()
            .await
            .map_err(|e| anyhow::Error::new(e.without_url()))
            .with_context(|| {
                format!("POST {}: reading the reply failed", url_without_query(url))
            })?;
        if text.contains("<Error>") {
            return Err(s3_error(&Method::POST, url, 200, text.as_bytes(), None).into());
        }
        Ok(())
    }

    /// GETs an object from byte `start` on into `writer`; a broken transfer
    /// resumes where it stopped. Returns the bytes written.
    pub async fn s3_get_object<W: AsyncWrite + Unpin + Send>(
        &self,
        url: &str,
        start: u64,
        writer: &mut W,
    ) -> Result<u64> {
        let mut download = S3Download {
            client: self,
            url,
            shown: url_without_query(url),
            start,
            written: 0,
            writer,
        };
        Retry::new(self.inner.retry, format!("GET {}", download.shown))
            .note("resuming an S3 download")
            .run(&mut download)
            .await
    }

    /// A presigned S3 request, retried on transient failures; returns the
    /// successful response with its body unread.
    async fn s3(
        &self,
        method: Method,
        url: &str,
        range: Option<String>,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder + Send + Sync,
    ) -> Result<reqwest::Response> {
        let shown = url_without_query(url);
        let parsed =
            Url::parse(url).with_context(|| format!("invalid presigned URL for {shown}"))?;
        let mut request = S3Request {
            client: self,
            method: &method,
            url,
            parsed,
            shown: &shown,
            range,
            build,
        };
        Retry::new(self.inner.retry, format!("{method} {shown}"))
            .run(&mut request)
            .await
    }

    // ---- the request loop -------------------------------------------------

    fn ops<'a>(&'a self, method: Method, op: &'a str) -> Call<'a> {
        Call::new(method, vec!["filesystem", self.system(), "ops", op])
    }

    fn transfer<'a>(&'a self, method: Method, op: &'a str) -> Call<'a> {
        Call::new(method, vec!["filesystem", self.system(), "transfer", op])
    }

    fn compute_path(&self, job_id: Option<&str>) -> String {
        match job_id {
            Some(id) => format!("/compute/{}/jobs/{id}", self.system()),
            None => format!("/compute/{}/jobs", self.system()),
        }
    }

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
                req.multipart(multipart_form(file_name, source).await?)
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

/// A job submit, as the retry loop sees it: an ambiguous failure is looked
/// up in the job list before the job is sent again.
struct SubmitAttempt<'a> {
    client: &'a Client,
    job: &'a JobDescription,
    /// Set after the first attempt: the job may exist already.
    resubmit: bool,
}

impl Attempt for SubmitAttempt<'_> {
    type Output = String;

    async fn attempt(&mut self) -> Result<String, Failure> {
        let client = self.client;
        if self.resubmit {
            // The wait also gave the scheduler time to list the job; a new
            // job can take a few seconds to show up, so look again before
            // concluding it does not exist.
            let spacing = client.inner.retry.max_delay.min(Duration::from_secs(3));
            for lookup in 0..LOST_SUBMIT_LOOKUPS {
                if lookup > 0 {
                    tokio::time::sleep(spacing).await;
                }
                let found = client
                    .find_job_by_name(&self.job.name)
                    .await
                    .map_err(Failure::Fatal)?;
                if let Some(found) = found {
                    tracing::debug!(job_id = %found, "the job was created despite the failed reply");
                    return Ok(found);
                }
            }
        }
        self.resubmit = true;
        let err = match client.post_job(self.job).await {
            Ok(id) => return Ok(id),
            Err(err) => err,
        };
        // Unsent failures were already retried by `send` until its budget
        // ran out; only an ambiguous failure is looked into here: a lost
        // reply, or a success reply that cannot be read (the job exists, but
        // its id is unknown).
        if err.chain().any(|c| c.is::<UnreadableSubmitReply>()) {
            return Err(Failure::Retry(err));
        }
        if retry::is_unsent(&err) {
            return Err(Failure::Fatal(err));
        }
        Err(Failure::Judge(err))
    }
}

/// One presigned S3 request; the successful response has its body unread.
struct S3Request<'a, F> {
    client: &'a Client,
    method: &'a Method,
    url: &'a str,
    parsed: Url,
    shown: &'a str,
    range: Option<String>,
    build: F,
}

impl<F> Attempt for S3Request<'_, F>
where
    F: Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder + Send + Sync,
{
    type Output = reqwest::Response;

    async fn attempt(&mut self) -> Result<reqwest::Response, Failure> {
        let (method, shown) = (self.method, self.shown);
        let mut req = self
            .client
            .inner
            .http
            .request(method.clone(), self.parsed.clone());
        if let Some(range) = &self.range {
            req = req.header(RANGE, range);
        }
        // The body of a GET is streamed by the caller: no total timeout (the
        // client's read timeout catches a stall).
        if *method != Method::GET {
            req = req.timeout(self.client.inner.request_timeout);
        }
        match (self.build)(req).send().await {
            Ok(resp) if resp.status().is_success() => Ok(resp),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = retry_after_header(resp.headers());
                let body = resp.bytes().await.unwrap_or_default();
                let err = s3_error(method, self.url, status, &body, retry_after);
                Err(Failure::Judge(err.into()))
            }
            Err(e) => Err(Failure::Judge(
                anyhow::Error::new(e.without_url())
                    .context(format!("{method} {shown}: request failed")),
            )),
        }
    }
}

/// A presigned S3 GET into a writer; a broken stream resumes where it stopped.
struct S3Download<'a, W> {
    client: &'a Client,
    url: &'a str,
    shown: String,
    start: u64,
    written: u64,
    writer: &'a mut W,
}

impl<W: AsyncWrite + Unpin + Send> Attempt for S3Download<'_, W> {
    type Output = u64;

    async fn attempt(&mut self) -> Result<u64, Failure> {
        let shown = &self.shown;
        let from = self.start + self.written;
        let range = (from > 0).then(|| format!("bytes={from}-"));
        // `s3` already retried the request itself.
        let reply = self
            .client
            .s3(Method::GET, self.url, range, |req| req)
            .await
            .map_err(Failure::Fatal)?;
        if from > 0 && reply.status() != StatusCode::PARTIAL_CONTENT {
            return Err(Failure::Fatal(anyhow::anyhow!(
                "GET {shown}: S3 ignored the Range request"
            )));
        }
        let mut stream = reply.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(err) => {
                    // Only a broken stream resumes here.
                    let broken = err.is_body() || err.is_timeout();
                    let err = anyhow::Error::new(err.without_url())
                        .context(format!("GET {shown}: reading the object failed"));
                    return Err(if broken {
                        Failure::Judge(err)
                    } else {
                        Failure::Fatal(err)
                    });
                }
            };
            self.writer
                .write_all(&chunk)
                .await
                .context("failed to write a downloaded object")
                .map_err(Failure::Fatal)?;
            self.written += chunk.len() as u64;
        }
        self.writer
            .flush()
            .await
            .context("failed to flush a downloaded object")
            .map_err(Failure::Fatal)?;
        Ok(self.written)
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

async fn multipart_form(
    file_name: &str,
    source: &UploadSource,
) -> Result<reqwest::multipart::Form> {
    let part = match source {
        UploadSource::Bytes(bytes) => reqwest::multipart::Part::bytes(bytes.clone()),
        UploadSource::File(path) => {
            let file = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("failed to open {} for upload", path.display()))?;
            let len = file
                .metadata()
                .await
                .with_context(|| format!("failed to read the size of {}", path.display()))?
                .len();
            let stream = tokio_util::io::ReaderStream::new(file);
            reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), len)
        }
    };
    let part = part
        .file_name(file_name.to_owned())
        .mime_str("application/octet-stream")
        .context("failed to build the upload form")?;
    Ok(reqwest::multipart::Form::new().part("file", part))
}

fn is_already_completed(err: &ApiError) -> bool {
    err.status == 500 && err.message.contains("already completing or completed")
}

/// An `ApiError` from a FirecREST error reply.
fn api_error(
    method: &Method,
    path: &str,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let (message, error_type) = match parsed {
        Some(ErrorBody {
            message: Some(message),
            error_type,
            ..
        }) => (message, error_type),
        Some(ErrorBody {
            detail: Some(detail),
            ..
        }) => (
            detail
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| detail.to_string()),
            None,
        ),
        _ => (short_text(body), None),
    };
    ApiError {
        status,
        method: method.to_string(),
        path: path.to_owned(),
        message: message.trim_end().to_owned(),
        error_type,
        retry_after: retry_after_header(headers),
        request_id: None,
    }
}

/// An `ApiError` from an S3 XML error reply (`<Code>`, `<Message>`).
fn s3_error(
    method: &Method,
    url: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> ApiError {
    let text = String::from_utf8_lossy(body);
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(text[start..end].to_owned())
    };
    ApiError {
        status,
        method: method.to_string(),
        path: url_without_query(url),
        message: tag("Message").unwrap_or_else(|| short_text(body)),
        error_type: tag("Code"),
        retry_after,
        request_id: None,
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

/// The `CompleteMultipartUpload` document, parts in ascending order.
fn complete_multipart_xml(parts: &[(u32, String)]) -> String {
    let mut sorted: Vec<&(u32, String)> = parts.iter().collect();
    sorted.sort_by_key(|(number, _)| *number);
    let mut xml = String::from(
        r#"<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">"#,
    );
    for (number, etag) in sorted {
        let etag = etag
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        xml.push_str(&format!(
            "<Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag></Part>"
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    xml
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

    #[test]
    fn complete_xml_sorts_parts_like_the_recording() {
        let parts = [
            (2, "\"e57bff36df22310f1c48ec0998eb3d7a\"".to_string()),
            (1, "\"72dfb84b33bc48fe1fbac9ff188a97dc\"".to_string()),
        ];
        // Byte for byte what the recorded client sent.
        assert_eq!(
            complete_multipart_xml(&parts),
            "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Part><PartNumber>1</PartNumber><ETag>\"72dfb84b33bc48fe1fbac9ff188a97dc\"</ETag></Part>\
             <Part><PartNumber>2</PartNumber><ETag>\"e57bff36df22310f1c48ec0998eb3d7a\"</ETag></Part>\
             </CompleteMultipartUpload>"
        );
    }

    #[test]
    fn api_error_reads_firecrest_detail_and_plain_bodies() {
        let headers = HeaderMap::new();
        let e = api_error(
            &Method::GET,
            "/status/x/userinfo",
            404,
            &headers,
            br#"{"errorType":"error","message":"System not found","causedBy":null,"data":null,"user":"u"}"#,
        );
        assert_eq!(e.message, "System not found");
        assert_eq!(e.error_type.as_deref(), Some("error"));
        assert!(e.is_not_found());
        assert_eq!(
            e.to_string(),
            "GET /status/x/userinfo failed with HTTP 404: System not found"
        );
        let e = api_error(
            &Method::GET,
            "/x",
            404,
            &headers,
            br#"{"detail":"Not Found"}"#,
        );
        assert_eq!(e.message, "Not Found");
        let e = api_error(
            &Method::GET,
            "/x",
            502,
            &headers,
            b"<html>\n Bad   gateway</html>",
        );
        assert_eq!(e.message, "<html> Bad gateway</html>");
        let e = api_error(&Method::GET, "/x", 502, &headers, b"");
        assert_eq!(e.message, "(empty reply)");
    }

    #[test]
    fn s3_errors_read_code_and_message() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>EntityTooSmall</Code><Message>Your proposed upload is smaller</Message></Error>";
        let e = s3_error(
            &Method::POST,
            "http://s3/b/k?X-Amz-Signature=s",
            400,
            body,
            None,
        );
        assert_eq!(e.error_type.as_deref(), Some("EntityTooSmall"));
        assert_eq!(e.message, "Your proposed upload is smaller");
        assert_eq!(e.path, "http://s3/b/k");
    }

    #[test]
    fn already_completed_is_recognised_only_on_500() {
        let mut e = ApiError {
            status: 500,
            method: "DELETE".into(),
            path: "/compute/daint/jobs/33".into(),
            message: "Unexpected Slurm command response. exit_status:0 std_err:scancel: Terminating job 33\nscancel: error: Kill job error on job id 33: Job/step already completing or completed\n".into(),
            error_type: Some("error".into()),
            retry_after: None,
            request_id: None,
        };
        assert!(is_already_completed(&e));
        e.status = 400;
        assert!(!is_already_completed(&e));
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
