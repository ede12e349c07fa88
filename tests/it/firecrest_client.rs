//! The FirecREST client against a wiremock double that answers with the
//! exchanges recorded from a real FirecREST 2.5.6 (tests/fixtures/recorded/).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firecrest_ci::backend::JobStatus;
use firecrest_ci::config::Credentials;
use firecrest_ci::firecrest::models::*;
use firecrest_ci::firecrest::{
    ApiError, AuthError, Client, ClientSettings, RetryPolicy, UploadSource,
};
use firecrest_ci::secret::Secret;
use serde_json::{json, Value};
use wiremock::matchers::{
    body_json, body_partial_json, body_string, body_string_contains, header, method, path,
    query_param,
};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const TOKEN_PATH: &str = "/realms/f7t/protocol/openid-connect/token";
const CLIENT_ID: &str = "firecrest-ci";
const CLIENT_SECRET: &str = "s3cret-value";
/// base64("firecrest-ci:s3cret-value")
const BASIC: &str = "Basic ZmlyZWNyZXN0LWNpOnMzY3JldC12YWx1ZQ==";

// ---- fixtures ---------------------------------------------------------

fn fixture(name: &str) -> Vec<Value> {
    let file = format!(
        "{}/tests/fixtures/recorded/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn exchange(name: &str, index: usize) -> Value {
    fixture(name).swap_remove(index)
}

/// The recorded response, replayed as it was.
fn recorded_response(ex: &Value) -> ResponseTemplate {
    let response = &ex["response"];
    let status = response["status"].as_u64().unwrap() as u16;
    let mut template = ResponseTemplate::new(status);
    if let Some(headers) = response["headers"].as_object() {
        for (name, value) in headers {
            if name != "content-type" {
                template = template.insert_header(name.as_str(), value.as_str().unwrap());
            }
        }
    }
    let content_type = response["headers"]["content-type"]
        .as_str()
        .unwrap_or("application/json");
    match &response["body"] {
        Value::Null => template,
        Value::String(text) => template.set_body_raw(text.clone().into_bytes(), content_type),
        body => template.set_body_raw(serde_json::to_vec(body).unwrap(), content_type),
    }
}

/// A mock that accepts exactly the recorded FirecREST request (method, path,
/// query, the recorded JSON body as a subset) with the test's bearer token.
fn recorded_mock(ex: &Value) -> wiremock::MockBuilder {
    let request = &ex["request"];
    let mut mock = Mock::given(method(request["method"].as_str().unwrap()))
        .and(path(request["path"].as_str().unwrap()))
        .and(header("authorization", "Bearer static-token"));
    if let Some(query) = request["query"].as_object() {
        for (key, value) in query {
            mock = mock.and(query_param(key.as_str(), value.as_str().unwrap()));
        }
    }
    if request["body"].is_object() {
        mock = mock.and(body_partial_json(request["body"].clone()));
    }
    mock
}

/// Mounts the recorded exchange and expects it to be used exactly once.
async fn replay(server: &MockServer, ex: &Value) {
    recorded_mock(ex)
        .respond_with(recorded_response(ex))
        .expect(1)
        .mount(server)
        .await;
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(50),
        max_retries: 6,
        budget: Duration::from_secs(10),
    }
}

fn settings(server: &MockServer, auth: Credentials) -> ClientSettings {
    ClientSettings {
        base_url: server.uri(),
        system: "daint".into(),
        auth,
        request_timeout: Duration::from_secs(5),
        retry: fast_retry(),
    }
}

fn static_client(server: &MockServer) -> Client {
    Client::new(settings(
        server,
        Credentials::AccessToken(Secret::new("static-token")),
    ))
    .unwrap()
}

fn credentials(server: &MockServer) -> Credentials {
    Credentials::ClientCredentials {
        token_url: format!("{}{TOKEN_PATH}", server.uri()),
        client_id: CLIENT_ID.into(),
        client_secret: Secret::new(CLIENT_SECRET),
    }
}

/// The recorded token reply with a concrete token and lifetime.
fn token_reply(token: &str, expires_in: u64) -> ResponseTemplate {
    let mut body = exchange("token", 0)["response"]["body"].clone();
    body["access_token"] = json!(token);
    body["expires_in"] = json!(expires_in);
    ResponseTemplate::new(200).set_body_json(body)
}

/// Answers the n-th request with the n-th template (the last one repeats).
#[derive(Clone)]
struct Sequence {
    calls: Arc<AtomicUsize>,
    replies: Vec<ResponseTemplate>,
}

impl Sequence {
    fn new(replies: Vec<ResponseTemplate>) -> Self {
        Self {
            calls: Arc::new(AtomicUsize::new(0)),
            replies,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Respond for Sequence {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        self.replies[n.min(self.replies.len() - 1)].clone()
    }
}

/// The token endpoint on `server`, answering with `replies` in turn.
async fn token_endpoint(server: &MockServer, replies: Vec<ResponseTemplate>) -> Sequence {
    let tokens = Sequence::new(replies);
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(tokens.clone())
        .mount(server)
        .await;
    tokens
}

fn userinfo_reply() -> ResponseTemplate {
    recorded_response(&exchange("userinfo", 0))
}

fn systems_reply() -> ResponseTemplate {
    recorded_response(&exchange("systems", 1))
}

fn status_reply(status: u16, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "errorType": "error", "message": message, "causedBy": null, "data": null, "user": null
    }))
}

// ---- every recorded reply parses ---------------------------------------

#[test]
fn every_recorded_reply_parses() {
    let dir = format!("{}/tests/fixtures/recorded", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 28, "all recorded files are copied");
    let (mut modelled, mut errors) = (0, 0);
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let exchanges: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for (i, ex) in exchanges.iter().enumerate() {
            let at = format!("{name}[{i}] {}", ex["note"]);
            if ex.get("request").is_none() {
                // A note between exchanges (what happened meanwhile).
                continue;
            }
            let request = &ex["request"];
            let status = ex["response"]["status"].as_u64().unwrap();
            let body = ex["response"]["body"].clone();
            let verb = request["method"].as_str().unwrap();
            match ex["service"].as_str() {
                Some("token") => {
                    if status == 200 {
                        let t: TokenResponse = serde_json::from_value(body).expect(&at);
                        assert!(
                            !t.access_token.is_empty() && t.expires_in == Some(300),
                            "{at}"
                        );
                    } else {
                        let e: TokenErrorBody = serde_json::from_value(body).expect(&at);
                        assert_eq!(e.error, "invalid_client", "{at}");
                    }
                    modelled += 1;
                    continue;
                }
                Some("s3") => {
                    // No JSON: an ETag per PUT part, XML or bytes otherwise.
                    if verb == "PUT" {
                        assert!(ex["response"]["headers"]["etag"].is_string(), "{at}");
                    }
                    continue;
                }
                _ => {}
            }
            if status >= 400 {
                let e: ErrorBody = serde_json::from_value(body).expect(&at);
                assert!(e.message.as_deref().is_some_and(|m| !m.is_empty()), "{at}");
                assert!(e.error_type.is_some(), "{at}");
                errors += 1;
                continue;
            }
            if body.is_null() {
                assert!(status == 204, "{at}: empty body only on 204");
                continue;
            }
            let p = request["path"].as_str().unwrap();
            let segments: Vec<&str> = p.trim_matches('/').split('/').collect();
            match (verb, segments.as_slice()) {
                ("GET", ["status", "liveness"] | ["status", _, "partitions" | "nodes"]) => continue,
                ("GET", ["status", "systems"]) => {
                    let r: SystemsResponse = serde_json::from_value(body).expect(&at);
                    let s = &r.systems[0];
                    assert_eq!(s.max_ops_file_size(), Some(5242880), "{at}");
                    assert_eq!(s.default_work_dir().unwrap().path, "/scratch", "{at}");
                    let transfer = s.data_operation.as_ref().unwrap().data_transfer.as_ref();
                    assert_eq!(
                        transfer.unwrap().service_type.as_deref(),
                        Some("s3"),
                        "{at}"
                    );
                }
                ("GET", ["status", _, "userinfo"]) => {
                    let u: UserInfo = serde_json::from_value(body).expect(&at);
                    assert_eq!(u.user.name, "ciuser", "{at}");
                }
                ("GET", ["filesystem", _, "ops", "ls"]) => {
                    let o: Output<Vec<FileEntry>> = serde_json::from_value(body).expect(&at);
                    assert!(!o.output.is_empty(), "{at}");
                }
                ("POST", ["filesystem", _, "ops", "mkdir"]) => {
                    let o: Output<FileEntry> = serde_json::from_value(body).expect(&at);
                    assert_eq!(o.output.kind, "d", "{at}");
                }
                ("GET", ["filesystem", _, "ops", "stat"]) => {
                    let o: Output<FileStat> = serde_json::from_value(body).expect(&at);
                    assert!(o.output.size > 0 && o.output.mode > 0, "{at}");
                }
                ("GET", ["filesystem", _, "ops", "view" | "file"]) => {
                    let _: Output<String> = serde_json::from_value(body).expect(&at);
                }
                ("GET", ["filesystem", _, "ops", "tail" | "head"]) => {
                    let o: Output<FileTail> = serde_json::from_value(body).expect(&at);
                    assert!(!o.output.content.is_empty(), "{at}");
                }
                ("GET", ["filesystem", _, "ops", "checksum"]) => {
                    let o: Output<Checksum> = serde_json::from_value(body).expect(&at);
                    assert_eq!(o.output.checksum.len(), 64, "{at}");
                }
                ("GET", ["filesystem", _, "ops", "download"]) => {
                    assert!(body.is_string(), "{at}: raw bytes");
                    continue;
                }
                ("POST", ["filesystem", _, "transfer", "upload" | "download"]) => {
                    let t: TransferResponse = serde_json::from_value(body).expect(&at);
                    assert!(!t.transfer_job.job_id.is_empty(), "{at}");
                    assert!(!t.transfer_job.logs.error_log.is_empty(), "{at}");
                    let d = &t.transfer_directives;
                    assert!(
                        d.download_url.is_some() || d.parts_upload_urls.len() == 2,
                        "{at}"
                    );
                }
                ("POST", ["compute", _, "jobs"]) => {
                    let s: SubmitResponse = serde_json::from_value(body).expect(&at);
                    assert!(s.job_id.parse::<u64>().is_ok(), "{at}");
                }
                ("GET", ["compute", _, "jobs"] | ["compute", _, "jobs", _]) => {
                    let r: JobsResponse = serde_json::from_value(body).expect(&at);
                    assert!(!r.jobs.is_empty(), "{at}");
                    for job in &r.jobs {
                        let status = JobStatus::from(job);
                        assert!(!status.state.to_string().is_empty(), "{at}");
                        let raw = job.status.state_reason.as_deref();
                        let expected = raw.filter(|r| *r != "None").map(str::to_owned);
                        assert_eq!(status.reason, expected, "{at}: \"None\" is no reason");
                        // exitCode/interruptSignal are null while pending (and
                        // right after start, from squeue); set once the job ended.
                        let state = status.state.to_string();
                        let first = state.split_whitespace().next().unwrap();
                        if first == "PENDING" {
                            assert_eq!((status.exit_code, status.signal), (None, None), "{at}");
                        }
                        if !matches!(first, "PENDING" | "RUNNING") {
                            assert!(
                                status.exit_code.is_some() && status.signal.is_some(),
                                "{at}"
                            );
                        }
                    }
                }
                ("GET", ["compute", _, "jobs", _, "metadata"]) => {
                    let r: JobMetadataResponse = serde_json::from_value(body).expect(&at);
                    let out = r.jobs[0].standard_output.as_deref().unwrap();
                    assert!(out.starts_with('/'), "{at}");
                }
                _ => panic!("{at}: no model decision for {verb} {p}"),
            }
            modelled += 1;
        }
    }
    assert!(modelled >= 60, "parsed {modelled} replies");
    assert!(errors >= 30, "parsed {errors} error bodies");
}

#[test]
fn recorded_final_states_convert_for_the_outcome_table() {
    let last = |name: &str| {
        let body = fixture(name).into_iter().rev().find(|ex| {
            ex["request"]["method"] == "GET"
                && !ex["request"]["path"]
                    .as_str()
                    .unwrap()
                    .ends_with("/metadata")
                && ex["response"]["body"]["jobs"].is_array()
        });
        let jobs: JobsResponse =
            serde_json::from_value(body.unwrap()["response"]["body"].clone()).unwrap();
        JobStatus::from(&jobs.jobs[0])
    };
    let s = last("job_out_of_memory");
    assert_eq!(
        (s.state.to_string().as_str(), s.exit_code, s.signal),
        ("OUT_OF_MEMORY", Some(0), Some(125))
    );
    let s = last("job_signal_killed");
    assert_eq!(
        (s.state.to_string().as_str(), s.exit_code, s.signal),
        ("FAILED", Some(0), Some(9))
    );
    let s = last("job_timeout");
    assert_eq!(
        (s.state.to_string().as_str(), s.exit_code, s.signal),
        ("TIMEOUT", Some(0), Some(0))
    );
    let s = last("job_cancelled");
    assert_eq!(s.state.to_string(), "CANCELLED by 1001");
    let s = last("job_failed_exit3");
    assert_eq!(
        (s.state.to_string().as_str(), s.exit_code),
        ("FAILED", Some(3))
    );
    assert_eq!(s.elapsed, Some(16));
    assert_eq!(s.nodes.as_deref(), Some("vm"));
}

// ---- replays: requests shaped like the recorded ones --------------------

#[tokio::test]
async fn status_calls_replay() {
    let server = MockServer::start().await;
    replay(&server, &exchange("systems", 1)).await;
    replay(&server, &exchange("userinfo", 0)).await;
    let client = static_client(&server);
    let systems = client.systems().await.unwrap();
    let daint = systems.iter().find(|s| s.name == "daint").unwrap();
    assert_eq!(daint.max_ops_file_size(), Some(5242880));
    let multipart = daint
        .data_operation
        .as_ref()
        .unwrap()
        .data_transfer
        .as_ref()
        .unwrap();
    assert_eq!(
        multipart.multipart.as_ref().unwrap().max_part_size,
        Some(10485760)
    );
    assert_eq!(client.userinfo().await.unwrap().user.id, "1001");
    server.verify().await;
}

#[tokio::test]
async fn filesystem_calls_replay() {
    let server = MockServer::start().await;
    for (file, i) in [
        ("fs_mkdir", 0),
        ("fs_stat", 0),
        ("fs_stat", 1),
        ("fs_stat", 2),
        ("fs_checksum", 0),
        ("fs_rm", 0),
        ("ops_download", 0),
        ("ops_tail_growing_stdout", 4),
        ("ops_upload_too_large", 0),
    ] {
        replay(&server, &exchange(file, i)).await;
    }
    Mock::given(method("PUT"))
        .and(path("/filesystem/daint/ops/chmod"))
        .and(body_json(
            json!({"path": "/scratch/ciuser/run", "sourcePath": "/scratch/ciuser/run", "mode": "700"}),
        ))
        .respond_with(recorded_response(&exchange("fs_mkdir", 0)))
        .expect(1)
        .mount(&server)
        .await;
    let client = static_client(&server);
    let dir = "/scratch/ciuser/f7t-rec/fs";

    client.mkdir(dir, true).await.unwrap();
    client.chmod("/scratch/ciuser/run", "700").await.unwrap();
    let file = client.stat(&format!("{dir}/hello.txt")).await.unwrap();
    assert_eq!((file.size, file.is_dir()), (24, false));
    assert!(client.stat(dir).await.unwrap().is_dir());
    let missing = client.stat(&format!("{dir}/missing")).await.unwrap_err();
    let api = ApiError::find(&missing).unwrap();
    assert!(api.is_not_found());
    assert!(
        api.message.contains("No such file or directory"),
        "{}",
        api.message
    );
    assert_eq!(api.path, "/filesystem/daint/ops/stat");
    let sum = client.checksum(&format!("{dir}/hello.txt")).await.unwrap();
    assert_eq!(sum.algorithm, "SHA256");
    client.rm(&format!("{dir}/sub")).await.unwrap();

    let bytes = client
        .download("/scratch/ciuser/f7t-rec/ops/small.txt")
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        "small file ✓ ünïcode\nline 2\n"
    );

    // 0-based offset 108 is sent as 1-based bytes=109.
    let tail = client
        .tail("/scratch/ciuser/f7t-rec/jobs/failing-33.out", 108)
        .await
        .unwrap();
    assert_eq!(tail.start_position, 109);
    assert!(
        tail.content.starts_with("line 3: grüße"),
        "{}",
        tail.content
    );

    // 413 is final: not retried (the mock expects one call).
    let big = UploadSource::Bytes(vec![0; 16]);
    let err = client
        .upload("/scratch/ciuser/f7t-rec/ops", "big.bin", &big)
        .await
        .unwrap_err();
    assert!(ApiError::find(&err).unwrap().is_too_large());
    server.verify().await;
}

#[tokio::test]
async fn mkdir_without_parents_reports_the_server_message() {
    let server = MockServer::start().await;
    replay(&server, &exchange("fs_mkdir", 1)).await;
    let client = static_client(&server);
    let err = client
        .mkdir("/scratch/ciuser/f7t-rec/fs", false)
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("POST /filesystem/daint/ops/mkdir failed with HTTP 400"),
        "{text}"
    );
    assert!(text.contains("File exists"), "{text}");
    assert!(!text.contains("static-token"), "{text}");
    server.verify().await;
}

/// Accepts the multipart upload only with field `file` named after the target.
struct MultipartFile(&'static str, &'static [u8]);

impl wiremock::Match for MultipartFile {
    fn matches(&self, request: &Request) -> bool {
        let body = &request.body;
        let disposition = format!("name=\"file\"; filename=\"{}\"", self.0);
        let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        has(disposition.as_bytes()) && has(self.1)
    }
}

#[tokio::test]
async fn upload_sends_a_multipart_file_named_after_the_target() {
    let server = MockServer::start().await;
    let recorded = exchange("ops_upload", 0);
    let content: &'static [u8] = b"small file for upload, 32 bytes";
    recorded_mock(&recorded)
        .and(header_contains_multipart())
        .and(MultipartFile("small.txt", content))
        .respond_with(recorded_response(&recorded))
        .expect(2)
        .mount(&server)
        .await;
    let client = static_client(&server);
    let dir = "/scratch/ciuser/f7t-rec/ops";
    client
        .upload(dir, "small.txt", &UploadSource::Bytes(content.to_vec()))
        .await
        .unwrap();
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), content).unwrap();
    client
        .upload(dir, "small.txt", &UploadSource::File(tmp.path().to_owned()))
        .await
        .unwrap();
    server.verify().await;
}

fn header_contains_multipart() -> impl wiremock::Match {
    struct IsMultipart;
    impl wiremock::Match for IsMultipart {
        fn matches(&self, request: &Request) -> bool {
            request
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("multipart/form-data; boundary="))
        }
    }
    IsMultipart
}

#[tokio::test]
async fn compute_calls_replay() {
    let server = MockServer::start().await;
    for (file, i) in [
        ("job_completed", 0),
        ("job_completed", 1),
        ("job_completed", 4),
        ("job_completed", 6),
        ("validation_errors", 4),
        ("job_cancelled", 2),
        ("job_failed_exit3", 7),
    ] {
        replay(&server, &exchange(file, i)).await;
    }
    let client = static_client(&server);
    let submitted = &exchange("job_completed", 0)["request"]["body"]["job"];
    let job = JobDescription {
        name: "hello".into(),
        script: submitted["script"].as_str().unwrap().into(),
        working_directory: "/scratch/ciuser/f7t-rec/jobs".into(),
        env: [("F7T_TEST".to_string(), Secret::new("1"))].into(),
        ..Default::default()
    };
    assert_eq!(client.submit_job(&job).await.unwrap(), "30");
    let running = client.job("30").await.unwrap().unwrap();
    assert_eq!(running.status.state, "RUNNING");
    let meta = client.job_metadata("30").await.unwrap();
    assert_eq!(
        meta.standard_output.as_deref(),
        Some("/scratch/ciuser/f7t-rec/jobs/slurm-30.out")
    );
    assert_eq!(client.list_jobs().await.unwrap().len(), 31);
    assert!(client.job("99999999").await.unwrap().is_none());
    client.cancel_job("31").await.unwrap();
    // Already finished: 500 "already completing or completed", once, no retry.
    client.cancel_job("33").await.unwrap();
    server.verify().await;
}

#[tokio::test]
async fn unknown_system_is_a_not_found_naming_the_request() {
    let server = MockServer::start().await;
    let ex = exchange("unknown_system", 0);
    Mock::given(method("GET"))
        .and(path(ex["request"]["path"].as_str().unwrap()))
        .respond_with(recorded_response(&ex))
        .expect(1)
        .mount(&server)
        .await;
    let mut s = settings(&server, Credentials::AccessToken(Secret::new("t")));
    s.system = "nosuchsystem".into();
    let err = Client::new(s).unwrap().userinfo().await.unwrap_err();
    // The server's words, then the request's id for the centre's support.
    let text = err.to_string();
    assert!(
        text.starts_with(
            "GET /status/nosuchsystem/userinfo failed with HTTP 404: System not found (request id "
        ),
        "{text}"
    );
    server.verify().await;
}

#[tokio::test]
async fn transfer_and_s3_calls_replay() {
    let server = MockServer::start().await;
    let s3_host = "http://127.0.0.1:5005";
    let local = |url: &str| url.replace(s3_host, &server.uri());
    let up = fixture("transfer_upload");
    let down = fixture("transfer_download");
    // FirecREST hands out presigned URLs to our S3 double.
    for ex in [&up[0], &down[0]] {
        let body = serde_json::to_string(&ex["response"]["body"]).unwrap();
        recorded_mock(ex)
            .respond_with(
                ResponseTemplate::new(201)
                    .set_body_raw(local(&body).into_bytes(), "application/json"),
            )
            .expect(1)
            .mount(&server)
            .await;
    }
    let client = static_client(&server);
    let target = "/scratch/ciuser/f7t-rec/transfer/big.bin";
    let transfer = client.transfer_upload(target, 12_000_000).await.unwrap();
    assert_eq!(transfer.transfer_job.job_id, "34");
    let directives = transfer.transfer_directives;
    assert_eq!(directives.max_part_size, Some(10485760));

    // S3 parts: no Authorization header, ETag kept.
    let mut parts = Vec::new();
    for (number, ex) in [(1u32, &up[1]), (2, &up[2])] {
        let url = directives.parts_upload_urls[number as usize - 1].clone();
        let parsed = url::Url::parse(&url).unwrap();
        Mock::given(method("PUT"))
            .and(path(parsed.path()))
            .and(query_param("partNumber", number.to_string()))
            .and(body_string(format!("part {number}")))
            .and(NoAuthorization)
            .respond_with(recorded_response(ex))
            .expect(1)
            .mount(&server)
            .await;
        let etag = client
            .s3_put_part(&url, format!("part {number}").into_bytes())
            .await
            .unwrap();
        parts.push((number, etag));
    }
    assert_eq!(parts[0].1, "\"72dfb84b33bc48fe1fbac9ff188a97dc\"");
    parts.reverse(); // sorted by the client
    let complete = &up[3];
    Mock::given(method("POST"))
        .and(path(
            url::Url::parse(&local(complete["request"]["url"].as_str().unwrap()))
                .unwrap()
                .path(),
        ))
        .and(header("content-type", "application/xml"))
        .and(body_string(complete["request"]["body"].as_str().unwrap()))
        .and(NoAuthorization)
        .respond_with(recorded_response(complete))
        .expect(1)
        .mount(&server)
        .await;
    client
        .s3_complete_upload(directives.complete_upload_url.as_deref().unwrap(), &parts)
        .await
        .unwrap();

    let download = client.transfer_download(target).await.unwrap();
    let url = download.transfer_directives.download_url.unwrap();
    let object_path = url::Url::parse(&url).unwrap().path().to_owned();
    Mock::given(method("GET"))
        .and(path(object_path.as_str()))
        .and(header("range", "bytes=4-"))
        .respond_with(ResponseTemplate::new(206).set_body_bytes(b"456789".to_vec()))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(object_path.as_str()))
        .and(NoAuthorization)
        .respond_with(ResponseTemplate::new(200).set_body_bytes(b"0123456789".to_vec()))
        .mount(&server)
        .await;
    let mut whole = Vec::new();
    assert_eq!(client.s3_get_object(&url, 0, &mut whole).await.unwrap(), 10);
    assert_eq!(whole, b"0123456789");
    let mut rest = Vec::new();
    assert_eq!(client.s3_get_object(&url, 4, &mut rest).await.unwrap(), 6);
    assert_eq!(rest, b"456789");
    server.verify().await;
}

struct NoAuthorization;

impl wiremock::Match for NoAuthorization {
    fn matches(&self, request: &Request) -> bool {
        !request.headers.contains_key("authorization")
    }
}

#[tokio::test]
async fn s3_errors_are_retried_and_never_show_the_signature() {
    let server = MockServer::start().await;
    let flaky = Sequence::new(vec![
        ResponseTemplate::new(503).set_body_string("<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"),
        ResponseTemplate::new(200).insert_header("etag", "\"abc\""),
    ]);
    Mock::given(method("PUT"))
        .and(path("/bucket/key"))
        .respond_with(flaky.clone())
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/bucket/denied"))
        .respond_with(ResponseTemplate::new(403).set_body_string(
            "<Error><Code>SignatureDoesNotMatch</Code><Message>bad signature</Message></Error>",
        ))
        .expect(1)
        .mount(&server)
        .await;
    let client = static_client(&server);
    let url = format!(
        "{}/bucket/key?partNumber=1&X-Amz-Signature=topsecret",
        server.uri()
    );
    assert_eq!(
        client.s3_put_part(&url, b"x".to_vec()).await.unwrap(),
        "\"abc\""
    );
    assert_eq!(flaky.calls(), 2);
    let url = format!("{}/bucket/denied?X-Amz-Signature=topsecret", server.uri());
    let err = client.s3_put_part(&url, b"x".to_vec()).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("HTTP 403: bad signature"), "{text}");
    assert!(!text.contains("topsecret"), "{text}");
    server.verify().await;
}

// ---- tokens ---------------------------------------------------------------

fn observed() -> (
    Arc<Mutex<Vec<String>>>,
    firecrest_ci::firecrest::TokenObserver,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    (
        seen,
        Arc::new(move |t: &str| sink.lock().unwrap().push(t.to_owned())),
    )
}

#[tokio::test]
async fn one_token_serves_many_concurrent_calls() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .and(body_string_contains("grant_type=client_credentials"))
        .and(body_string_contains("client_id=firecrest-ci"))
        .and(body_string_contains("client_secret=s3cret-value"))
        .respond_with(token_reply("tok-1", 300))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/status/daint/userinfo"))
        .and(header("authorization", "Bearer tok-1"))
        .respond_with(userinfo_reply())
        .expect(10)
        .mount(&server)
        .await;
    let client = Client::new(settings(&server, credentials(&server))).unwrap();
    let (seen, observer) = observed();
    client.set_token_observer(observer);
    let calls = (0..10).map(|_| {
        let client = client.clone();
        async move { client.userinfo().await }
    });
    for result in futures::future::join_all(calls).await {
        result.unwrap();
    }
    assert_eq!(*seen.lock().unwrap(), vec!["tok-1".to_string()]);
    server.verify().await;
}

#[tokio::test]
async fn token_is_refreshed_before_it_expires() {
    let server = MockServer::start().await;
    let tokens = token_endpoint(
        &server,
        vec![token_reply("tok-1", 2), token_reply("tok-2", 300)],
    )
    .await;
    for token in ["tok-1", "tok-2"] {
        Mock::given(method("GET"))
            .and(path("/status/daint/userinfo"))
            .and(header("authorization", format!("Bearer {token}").as_str()))
            .respond_with(userinfo_reply())
            .expect(1)
            .mount(&server)
            .await;
    }
    let client = Client::new(settings(&server, credentials(&server))).unwrap();
    client.userinfo().await.unwrap();
    // A 2 s token is refreshed once half of it is used, before any 401.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client.userinfo().await.unwrap();
    assert_eq!(tokens.calls(), 2);
    server.verify().await;
}

#[tokio::test]
async fn a_401_refreshes_the_token_once_and_retries_once() {
    let server = MockServer::start().await;
    let tokens = token_endpoint(
        &server,
        vec![token_reply("tok-1", 300), token_reply("tok-2", 300)],
    )
    .await;
    // The recorded "Access token expired" for the first token only.
    Mock::given(method("GET"))
        .and(path("/status/daint/userinfo"))
        .and(header("authorization", "Bearer tok-1"))
        .respond_with(recorded_response(&exchange("auth_errors", 3)))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/status/daint/userinfo"))
        .and(header("authorization", "Bearer tok-2"))
        .respond_with(userinfo_reply())
        .expect(1)
        .mount(&server)
        .await;
    let client = Client::new(settings(&server, credentials(&server))).unwrap();
    let (seen, observer) = observed();
    client.set_token_observer(observer);
    assert_eq!(client.userinfo().await.unwrap().user.name, "ciuser");
    assert_eq!(tokens.calls(), 2);
    assert_eq!(*seen.lock().unwrap(), vec!["tok-1", "tok-2"]);
    server.verify().await;
}

#[tokio::test]
async fn a_401_that_persists_fails_after_one_refresh() {
    let server = MockServer::start().await;
    let tokens = token_endpoint(
        &server,
        vec![token_reply("tok-1", 300), token_reply("tok-2", 300)],
    )
    .await;
    Mock::given(method("GET"))
        .and(path("/status/daint/userinfo"))
        .respond_with(recorded_response(&exchange("auth_errors", 1)))
        .expect(2)
        .mount(&server)
        .await;
    let client = Client::new(settings(&server, credentials(&server))).unwrap();
    let err = client.userinfo().await.unwrap_err();
    let api = ApiError::find(&err).unwrap();
    assert!(api.is_auth());
    assert!(
        format!("{err:#}").contains("Access token is invalid."),
        "{err:#}"
    );
    assert_eq!(tokens.calls(), 2);
    server.verify().await;
}

#[tokio::test]
async fn http_basic_is_the_fallback_and_is_remembered() {
    let server = MockServer::start().await;
    let rejected = exchange("token", 2);
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .and(body_string_contains("client_secret="))
        .respond_with(recorded_response(&rejected))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .and(header("authorization", BASIC))
        .and(body_string("grant_type=client_credentials"))
        .respond_with(token_reply("tok-basic", 2))
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/status/daint/userinfo"))
        .and(header("authorization", "Bearer tok-basic"))
        .respond_with(userinfo_reply())
        .expect(2)
        .mount(&server)
        .await;
    let client = Client::new(settings(&server, credentials(&server))).unwrap();
    client.userinfo().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The refresh goes straight to Basic: the form mock expects one call.
    client.userinfo().await.unwrap();
    server.verify().await;
}

#[tokio::test]
async fn a_wrong_secret_names_the_variables_but_not_the_secret() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(recorded_response(&exchange("token", 2)))
        .expect(2) // form, then Basic; never retried
        .mount(&server)
        .await;
    let client = Client::new(settings(&server, credentials(&server))).unwrap();
    let err = client.userinfo().await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("FIRECREST_CLIENT_ID"), "{text}");
    assert!(text.contains("FIRECREST_CLIENT_SECRET"), "{text}");
    assert!(
        text.contains(&format!("{}{TOKEN_PATH}", server.uri())),
        "{text}"
    );
    assert!(text.contains("invalid_client"), "{text}");
    assert!(!text.contains(CLIENT_SECRET), "{text}");
    assert!(matches!(
        err.downcast_ref::<AuthError>(),
        Some(AuthError::ClientRejected { status: 401, .. })
    ));
    server.verify().await;
}

#[tokio::test]
async fn a_token_endpoint_outage_is_waited_out() {
    let server = MockServer::start().await;
    let tokens = token_endpoint(
        &server,
        vec![
            ResponseTemplate::new(503),
            ResponseTemplate::new(502),
            ResponseTemplate::new(500).set_body_string("restarting"),
            token_reply("tok-1", 300),
        ],
    )
    .await;
    Mock::given(method("GET"))
        .and(path("/status/daint/userinfo"))
        .and(header("authorization", "Bearer tok-1"))
        .respond_with(userinfo_reply())
        .expect(1)
        .mount(&server)
        .await;
    let client = Client::new(settings(&server, credentials(&server))).unwrap();
    client.userinfo().await.unwrap();
    assert_eq!(tokens.calls(), 4);
    server.verify().await;
}

#[tokio::test]
async fn a_rejected_static_token_is_explained() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/status/daint/userinfo"))
        .respond_with(recorded_response(&exchange("auth_errors", 3)))
        .expect(1)
        .mount(&server)
        .await;
    let client = static_client(&server);
    let err = client.userinfo().await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("FIRECREST_ACCESS_TOKEN"), "{text}");
    assert!(text.contains("Access token expired"), "{text}");
    assert!(!text.contains("static-token"), "{text}");
    assert!(matches!(
        err.downcast_ref::<AuthError>(),
        Some(AuthError::StaticTokenRejected { .. })
    ));
    server.verify().await;
}

/// The recorded 400 for a valid token without the `preferred_username`
/// claim: typed as a credentials problem (exit 77), sent once.
#[tokio::test]
async fn a_token_firecrest_cannot_use_is_a_credentials_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/status/daint/userinfo"))
        .respond_with(recorded_response(&exchange("auth_errors", 6)))
        .expect(1)
        .mount(&server)
        .await;
    let client = static_client(&server);
    let err = client.userinfo().await.unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("'preferred_username' claim is missing"),
        "{text}"
    );
    assert!(matches!(
        err.downcast_ref::<AuthError>(),
        Some(AuthError::TokenUnusable)
    ));
    assert_eq!(ApiError::find(&err).map(|e| e.status), Some(400));
    server.verify().await;
}

// ---- retries ----------------------------------------------------------------

#[tokio::test]
async fn a_burst_of_gateway_errors_is_retried() {
    let server = MockServer::start().await;
    let replies = Sequence::new(vec![
        ResponseTemplate::new(502).set_body_string("<html>Bad Gateway</html>"),
        ResponseTemplate::new(503),
        ResponseTemplate::new(504),
        status_reply(424, "SSH connection failed"),
        systems_reply(),
    ]);
    Mock::given(method("GET"))
        .and(path("/status/systems"))
        .respond_with(replies.clone())
        .mount(&server)
        .await;
    let systems = static_client(&server).systems().await.unwrap();
    assert_eq!(systems[0].name, "daint");
    assert_eq!(replies.calls(), 5);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let server = MockServer::start().await;
    let replies = Sequence::new(vec![
        status_reply(429, "rate limited").insert_header("retry-after", "2"),
        systems_reply(),
    ]);
    Mock::given(method("GET"))
        .and(path("/status/systems"))
        .respond_with(replies.clone())
        .mount(&server)
        .await;
    let started = Instant::now();
    static_client(&server).systems().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(replies.calls(), 2);
}

/// A request timeout a prompt reply meets on a loaded machine, and a delay
/// far beyond it for the reply that must be cut off.
const SHORT_TIMEOUT: Duration = Duration::from_secs(3);
const LATE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_reply_slower_than_the_timeout_is_retried() {
    let server = MockServer::start().await;
    let replies = Sequence::new(vec![systems_reply().set_delay(LATE), systems_reply()]);
    Mock::given(method("GET"))
        .and(path("/status/systems"))
        .respond_with(replies.clone())
        .mount(&server)
        .await;
    let mut s = settings(&server, Credentials::AccessToken(Secret::new("t")));
    s.request_timeout = SHORT_TIMEOUT;
    let started = Instant::now();
    Client::new(s).unwrap().systems().await.unwrap();
    assert_eq!(replies.calls(), 2);
    assert!(started.elapsed() < LATE, "the first try was cut off");
}

#[tokio::test]
async fn an_exhausted_budget_names_the_request() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/compute/daint/jobs/42"))
        .respond_with(status_reply(503, "service unhealthy"))
        .expect(4)
        .mount(&server)
        .await;
    let mut s = settings(&server, Credentials::AccessToken(Secret::new("t")));
    s.retry.max_retries = 3;
    let err = Client::new(s).unwrap().job("42").await.unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("giving up on GET /compute/daint/jobs/42 after 4 attempts"),
        "{text}"
    );
    assert!(text.contains("HTTP 503: service unhealthy"), "{text}");
    server.verify().await;
}

#[tokio::test]
async fn an_unreachable_server_gives_up_within_the_budget() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = ClientSettings {
        base_url: format!("http://127.0.0.1:{port}/api/v2"),
        system: "daint".into(),
        auth: Credentials::AccessToken(Secret::new("t")),
        request_timeout: Duration::from_secs(1),
        retry: RetryPolicy {
            budget: Duration::from_millis(300),
            ..fast_retry()
        },
    };
    let err = Client::new(s)
        .unwrap()
        .stat("/scratch/x")
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("GET /filesystem/daint/ops/stat"), "{text}");
    assert!(
        !text.contains("/scratch/x"),
        "query values stay out: {text}"
    );
}

#[tokio::test]
async fn non_idempotent_posts_are_not_resent_after_a_500() {
    let server = MockServer::start().await;
    let ex = exchange("validation_errors", 8);
    Mock::given(method("POST"))
        .and(path("/filesystem/daint/transfer/upload"))
        .respond_with(recorded_response(&ex))
        .expect(1)
        .mount(&server)
        .await;
    let err = static_client(&server)
        .transfer_upload("/scratch/ciuser/f7t-rec/v.bin", 10)
        .await
        .unwrap_err();
    assert_eq!(ApiError::find(&err).unwrap().status, 500);
    server.verify().await;
}

// ---- submit and cancel ------------------------------------------------------

fn ci_job(name: &str) -> JobDescription {
    JobDescription {
        name: name.into(),
        script: "#!/bin/bash -l\necho hi\n".into(),
        working_directory: "/scratch/ciuser/run".into(),
        ..Default::default()
    }
}

/// The recorded job list with one more job of ours in it.
fn job_list_with(name: &str, id: &str) -> ResponseTemplate {
    let mut body = exchange("job_completed", 6)["response"]["body"].clone();
    let mut ours = body["jobs"][0].clone();
    ours["jobId"] = json!(id);
    ours["name"] = json!(name);
    body["jobs"].as_array_mut().unwrap().push(ours);
    ResponseTemplate::new(200).set_body_json(body)
}

#[tokio::test]
async fn a_lost_submit_reply_is_resolved_by_name_not_by_resubmitting() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/compute/daint/jobs"))
        .and(body_partial_json(json!({"job": {"name": "ci-run-42"}})))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"jobId": "77"}))
                .set_delay(LATE),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/compute/daint/jobs"))
        .respond_with(job_list_with("ci-run-42", "77"))
        .expect(1)
        .mount(&server)
        .await;
    let mut s = settings(&server, Credentials::AccessToken(Secret::new("t")));
    s.request_timeout = SHORT_TIMEOUT;
    let id = Client::new(s)
        .unwrap()
        .submit_job(&ci_job("ci-run-42"))
        .await
        .unwrap();
    assert_eq!(id, "77");
    server.verify().await;
}

#[tokio::test]
async fn a_failed_submit_without_a_job_is_resubmitted() {
    let server = MockServer::start().await;
    let posts = Sequence::new(vec![
        ResponseTemplate::new(502),
        ResponseTemplate::new(201).set_body_json(json!({"jobId": "78"})),
    ]);
    Mock::given(method("POST"))
        .and(path("/compute/daint/jobs"))
        .respond_with(posts.clone())
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/compute/daint/jobs"))
        .respond_with(job_list_with("someone-else", "70"))
        .expect(3) // looked up a few times: a new job may show up late
        .mount(&server)
        .await;
    let id = static_client(&server)
        .submit_job(&ci_job("ci-run-43"))
        .await
        .unwrap();
    assert_eq!(id, "78");
    assert_eq!(posts.calls(), 2);
    server.verify().await;
}

#[tokio::test]
async fn a_rejected_submit_is_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/compute/daint/jobs"))
        .respond_with(recorded_response(&exchange("validation_errors", 0)))
        .expect(1)
        .mount(&server)
        .await;
    let err = static_client(&server)
        .submit_job(&ci_job("ci-run-44"))
        .await
        .unwrap_err();
    let api = ApiError::find(&err).unwrap();
    assert_eq!(
        (api.status, api.error_type.as_deref()),
        (400, Some("validation"))
    );
    assert!(api.message.contains("workingdirectory"), "{}", api.message);
    server.verify().await;
}

#[tokio::test]
async fn cancelling_a_finished_or_unknown_job_is_ok() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .and(path("/compute/daint/jobs/31"))
        .respond_with(recorded_response(&exchange("job_cancelled", 4)))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/compute/daint/jobs/99"))
        .respond_with(recorded_response(&exchange("validation_errors", 4)))
        .expect(1)
        .mount(&server)
        .await;
    // Any other 500 is a failure (after retries).
    Mock::given(method("DELETE"))
        .and(path("/compute/daint/jobs/5"))
        .respond_with(status_reply(
            500,
            "scancel: error: Access/permission denied",
        ))
        .mount(&server)
        .await;
    let client = static_client(&server);
    client.cancel_job("31").await.unwrap();
    client.cancel_job("99").await.unwrap();
    let err = client.cancel_job("5").await.unwrap_err();
    assert!(format!("{err:#}").contains("permission denied"), "{err:#}");
    server.verify().await;
}

#[tokio::test]
async fn a_job_that_shows_up_late_in_the_list_is_still_found() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/compute/daint/jobs"))
        .respond_with(status_reply(
            500,
            "Unexpected Slurm command response. exit_status:255 std_err:ssh: connection reset",
        ))
        .expect(1)
        .mount(&server)
        .await;
    let lists = Sequence::new(vec![
        job_list_with("someone-else", "70"),
        job_list_with("ci-run-45", "79"),
    ]);
    Mock::given(method("GET"))
        .and(path("/compute/daint/jobs"))
        .respond_with(lists.clone())
        .mount(&server)
        .await;
    let id = static_client(&server)
        .submit_job(&ci_job("ci-run-45"))
        .await
        .unwrap();
    assert_eq!(id, "79");
    assert_eq!(lists.calls(), 2);
    server.verify().await;
}
