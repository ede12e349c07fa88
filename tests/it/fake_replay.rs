//! Replays recorded exchanges against the double and compares each answer
//! with the recorded one: status, and the shape of the body (its keys, the
//! byte length of contents the recording summarizes as "<N characters, N
//! bytes ...>", positions, error messages, job states; see [`same_shape`]).
//! Recorded paths and job ids are mapped onto the double's. The recordings
//! are the specification: where the double answers otherwise, the double is
//! wrong.

use std::time::Instant;

use serde_json::Value;

use crate::fake::{FakeFirecrest, Settings};

/// The recorded exchanges of `file` (in `tests/fixtures/recorded/`).
fn recorded(file: &str) -> Vec<Value> {
    let path = format!(
        "{}/tests/fixtures/recorded/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The byte count of a summarized body (`"<4194304 characters, 4194304 bytes as UTF-8, ..."`).
fn summarized_bytes(text: &str) -> Option<usize> {
    let rest = text.strip_prefix('<')?;
    let (_, after) = rest.split_once(" characters, ")?;
    after.split_once(" bytes")?.0.parse().ok()
}

/// How a replay maps the recording onto the double: string substitutions
/// (recorded paths and job ids to the double's), applied to the request and
/// to recorded messages before they are compared.
#[derive(Default)]
pub struct Mapping {
    subs: Vec<(String, String)>,
    /// Also compare `content` strings and a bare string `output` exactly
    /// (recordings of reads whose bytes the test reproduced).
    pub contents: bool,
    /// Compare job states, exit codes and signals: set by [`replay`] for
    /// the GET of one job (a recorded job list holds the recorder's other
    /// jobs).
    states: bool,
}

impl Mapping {
    /// Recorded paths under `/scratch/ciuser/f7t-rec` live under the
    /// double's `<scratch>/ciuser/f7t-rec`.
    pub fn for_fake(fake: &FakeFirecrest) -> Self {
        let root = fake.user_scratch().join("f7t-rec");
        std::fs::create_dir_all(&root).unwrap();
        let mut m = Mapping::default();
        m.sub("/scratch/ciuser/f7t-rec", &root.display().to_string());
        m
    }

    pub fn sub(&mut self, from: &str, to: &str) {
        self.subs.push((from.to_string(), to.to_string()));
    }

    pub fn apply(&self, text: &str) -> String {
        self.subs
            .iter()
            .fold(text.to_string(), |t, (from, to)| t.replace(from, to))
    }

    fn apply_json(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.apply(s)),
            Value::Array(a) => Value::Array(a.iter().map(|v| self.apply_json(v)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| (k.clone(), self.apply_json(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// A recorded job id answered by the double as `got`.
    fn job(&mut self, recorded: &str, got: &str) {
        for (a, b) in [
            (format!("/jobs/{recorded}"), format!("/jobs/{got}")),
            (format!("-{recorded}.out"), format!("-{got}.out")),
            (format!("job {recorded}\n"), format!("job {got}\n")),
            (format!("job id {recorded}:"), format!("job id {got}:")),
        ] {
            self.sub(&a, &b);
        }
    }
}

/// Compares an answer with the recorded one: same keys (recursively, for
/// objects and the first element of arrays), strings of the recorded byte
/// length where the recording summarizes them, same numbers for positions,
/// same `message`s once mapped (for pydantic's validation messages, whose
/// middle echoes the input in Python's notation: the first and last lines),
/// same job state (first word), exit code and signal.
fn same_shape(recorded: &Value, got: &Value, at: &str, map: &Mapping) -> Result<(), String> {
    match (recorded, got) {
        (Value::Object(want), Value::Object(have)) => {
            let mut a: Vec<&String> = want.keys().collect();
            let mut b: Vec<&String> = have.keys().collect();
            a.sort();
            b.sort();
            if a != b {
                return Err(format!("{at}: keys {a:?} recorded, {b:?} answered"));
            }
            for (key, value) in want {
                same_shape(value, &have[key], &format!("{at}.{key}"), map)?;
            }
            if map.states && at.ends_with(".status") && want.contains_key("state") {
                let first = |v: &Value| {
                    v.as_str()
                        .and_then(|s| s.split(' ').next())
                        .map(str::to_string)
                };
                for key in ["exitCode", "interruptSignal"] {
                    if want[key] != have[key] {
                        return Err(format!(
                            "{at}.{key}: {} recorded, {} answered",
                            want[key], have[key]
                        ));
                    }
                }
                if first(&want["state"]) != first(&have["state"]) {
                    return Err(format!(
                        "{at}.state: {} recorded, {} answered",
                        want["state"], have["state"]
                    ));
                }
            }
            Ok(())
        }
        (Value::Array(want), Value::Array(have)) => match (want.first(), have.first()) {
            (Some(w), Some(h)) => same_shape(w, h, &format!("{at}[0]"), map),
            (Some(_), None) | (None, Some(_)) => Err(format!(
                "{at}: {} elements recorded, {} answered",
                want.len(),
                have.len()
            )),
            (None, None) => Ok(()),
        },
        (Value::String(want), Value::String(have)) => match summarized_bytes(want) {
            Some(bytes) if bytes != have.len() => Err(format!(
                "{at}: {bytes} bytes recorded, {} answered",
                have.len()
            )),
            Some(_) => Ok(()),
            None if at.ends_with("message") => {
                let want = map.apply(want);
                let ends = |s: &str| {
                    (
                        s.lines().next().map(str::to_string),
                        s.lines().last().map(str::to_string),
                    )
                };
                let validation = want.starts_with("1 validation error:");
                let same = if validation {
                    ends(&want) == ends(have)
                } else {
                    &want == have
                };
                if same {
                    Ok(())
                } else {
                    Err(format!("{at}: {want:?} recorded, {have:?} answered"))
                }
            }
            None if map.contents
                && (at.ends_with(".content") || at == "body.output")
                && want != have =>
            {
                Err(format!("{at}: {want:?} recorded, {have:?} answered"))
            }
            None => Ok(()),
        },
        (Value::Number(want), Value::Number(have)) if at.ends_with("Position") && want != have => {
            Err(format!("{at}: {want} recorded, {have} answered"))
        }
        (want, have) if std::mem::discriminant(want) != std::mem::discriminant(have) => Err(
            format!("{at}: {want} recorded, {have} answered (another JSON type)"),
        ),
        _ => Ok(()),
    }
}

/// A recorded request body that the recording gives as a summary: a
/// multipart upload (`multipart/form-data; field 'file', filename 'big.bin',
/// 5242881 bytes`) or raw bytes known by their hash.
fn summarized_request_body(
    request: reqwest::RequestBuilder,
    summary: &str,
) -> reqwest::RequestBuilder {
    if let Some(rest) = summary.strip_prefix("multipart/form-data; field '") {
        let (field, rest) = rest.split_once("', filename '").unwrap();
        let (filename, rest) = rest.split_once("', ").unwrap();
        let bytes: usize = rest.trim_end_matches(" bytes").parse().unwrap();
        let part =
            reqwest::multipart::Part::bytes(vec![b'x'; bytes]).file_name(filename.to_string());
        return request.multipart(reqwest::multipart::Form::new().part(field.to_string(), part));
    }
    // The bodies the recordings hash, by what their error messages echo.
    use sha2::{Digest, Sha256};
    let known: &[&[u8]] = &[b"not json"];
    let body = known
        .iter()
        .find(|b| summary.contains(&hex::encode(Sha256::digest(b))))
        .unwrap_or_else(|| panic!("unknown recorded body {summary}"));
    request.body(body.to_vec())
}

/// The recorded request's path.
fn path_of(exchange: &Value) -> &str {
    exchange["request"]["path"].as_str().unwrap_or("")
}

/// The first word of the job state a recorded job GET answered, if any.
fn recorded_job_state(body: &Value) -> Option<String> {
    body["jobs"][0]["status"]["state"]
        .as_str()
        .map(|s| s.split(' ').next().unwrap_or(s).to_string())
}

/// The double's job id in a mapped `/compute/<system>/jobs/<id>` path.
fn job_id_in(path: &str) -> Option<u64> {
    let rest = path.split("/jobs/").nth(1)?;
    rest.split('/').next()?.parse().ok()
}

/// Sends each recorded exchange that passes `wanted` to the double,
/// with the recording mapped by `map` (which learns the double's job ids
/// from its submit answers), and compares the answers (see
/// [`same_shape`]). Before a job GET whose recorded answer shows a state,
/// waits (up to 60 s) for the double's job to reach it. `before` runs
/// before each exchange (to grow a file as the recording saw it grow).
/// Returns each exchange's note and answer time.
pub async fn replay(
    fake: &FakeFirecrest,
    file: &str,
    wanted: impl Fn(&Value) -> bool,
    map: &mut Mapping,
    mut before: impl FnMut(&Value, &Mapping),
) -> Vec<(String, std::time::Duration)> {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    let token = {
        let r = http
            .post(fake.token_url())
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &fake.client_id()),
                ("client_secret", &fake.client_secret()),
            ])
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_string()
    };
    let mut seen = Vec::new();
    for exchange in recorded(file) {
        let note = exchange["note"].as_str().unwrap_or("").to_string();
        if !wanted(&exchange) {
            continue;
        }
        before(&exchange, map);
        let request = &exchange["request"];
        let response = &exchange["response"];
        let path = map.apply(request["path"].as_str().unwrap());
        let query: Vec<(String, String)> = request["query"]
            .as_object()
            .map(|q| {
                q.iter()
                    .map(|(k, v)| (k.clone(), map.apply(v.as_str().unwrap_or_default())))
                    .collect()
            })
            .unwrap_or_default();
        let method =
            reqwest::Method::from_bytes(request["method"].as_str().unwrap().as_bytes()).unwrap();
        if method == reqwest::Method::GET {
            if let (Some(id), Some(state)) =
                (job_id_in(&path), recorded_job_state(&response["body"]))
            {
                let reached =
                    crate::harness::wait_until(std::time::Duration::from_secs(60), || {
                        fake.job(id)
                            .is_some_and(|j| j.state.split(' ').next() == Some(state.as_str()))
                    });
                assert!(
                    reached,
                    "{note}: job {id} never reached {state}: {:?}",
                    fake.job(id)
                );
            }
        }
        map.states = job_id_in(&path).is_some();
        let mut builder = http
            .request(method, format!("{}{path}", fake.url()))
            .query(&query)
            .bearer_auth(&token);
        match &request["body"] {
            Value::Null => {}
            Value::String(summary) => builder = summarized_request_body(builder, summary),
            body => builder = builder.json(&map.apply_json(body)),
        }
        let started = Instant::now();
        let reply = builder.send().await.unwrap();
        let status = reply.status().as_u16();
        let text = reply.text().await.unwrap();
        let took = started.elapsed();
        assert_eq!(
            u64::from(status),
            response["status"].as_u64().unwrap(),
            "{note}: status; answered {text:.300}"
        );
        let got: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let want = &response["body"];
        if want.is_object() {
            if let Err(diff) = same_shape(want, &got, "body", map) {
                panic!("{file}: {note}: {diff}");
            }
        }
        if let (Some(rec), Some(have)) = (want["jobId"].as_str(), got["jobId"].as_str()) {
            map.job(rec, have);
        }
        seen.push((note, took));
    }
    seen
}

/// The job of `ops_large_output.json`, as its recorded script prints it.
pub fn large_output() -> Vec<u8> {
    let mut data = Vec::new();
    let x = "x".repeat(95);
    for i in 1..=120_000 {
        data.extend_from_slice(format!("B{i} {x}\n").as_bytes());
    }
    let y = "y".repeat(65);
    for i in 1..=3000 {
        data.extend_from_slice(format!("C{i} grüße ✓ 日本語 {y}\n").as_bytes());
    }
    data
}

#[tokio::test]
async fn large_output_reads_answer_like_the_recorded_server() {
    let script = recorded("ops_large_output.json")[0]["request"]["body"]["job"]["script"]
        .as_str()
        .unwrap()
        .to_string();
    // The generator above is the recorded script's.
    assert!(script.contains(&format!("seq -f 'B%g {}' 1 120000", "x".repeat(95))));
    assert!(script.contains(&format!(
        "seq -f 'C%g grüße ✓ 日本語 {}' 1 3000",
        "y".repeat(65)
    )));
    let fake = FakeFirecrest::start_with(Settings::default());
    let mut map = Mapping::for_fake(&fake);
    let dir = fake.user_scratch().join("f7t-rec/jobs");
    std::fs::create_dir_all(&dir).unwrap();
    let data = large_output();
    assert_eq!(data.len(), 12_649_788, "the recorded file's size");
    std::fs::write(dir.join("big-72.out"), &data).unwrap();
    let seen = replay(
        &fake,
        "ops_large_output.json",
        |e| path_of(e).starts_with("/filesystem/"),
        &mut map,
        |_, _| {},
    )
    .await;
    assert_eq!(seen.len(), 8, "{seen:?}");
    // The server's 5 s command timeout, where the recording shows it.
    for (note, took) in seen {
        let slow = note.contains("after 5.0s");
        assert_eq!(
            took >= std::time::Duration::from_secs(5),
            slow,
            "{note}: answered after {took:?}"
        );
    }
}

/// Replays every exchange of `file` on a fresh double, after `setup` has
/// prepared the recorded files under the mapped `f7t-rec` directory (its
/// `jobs/` exists), with `before` run before each exchange.
async fn replay_whole(
    file: &str,
    setup: impl FnOnce(&std::path::Path, &mut Mapping),
    before: impl FnMut(&Value, &Mapping),
) {
    let fake = FakeFirecrest::start();
    let mut map = Mapping::for_fake(&fake);
    let root = fake.user_scratch().join("f7t-rec");
    std::fs::create_dir_all(root.join("jobs")).unwrap();
    setup(&root, &mut map);
    let seen = replay(&fake, file, |_| true, &mut map, before).await;
    assert_eq!(seen.len(), recorded(file).len(), "{file}: {seen:?}");
}

fn no_hook(_: &Value, _: &Mapping) {}

/// Prepares the files a recording's requests expect.
type Prepare = fn(&std::path::Path, &mut Mapping);

/// Writes `text` to `<root>/<relative>`, making its directory.
fn put(root: &std::path::Path, relative: &str, text: &str) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn file_operations_and_errors_answer_like_the_recorded_server() {
    let cases: [(&str, Prepare); 6] = [
        ("fs_stat.json", |root, _| {
            put(root, "fs/hello.txt", "hello from the recorder\n")
        }),
        ("fs_mkdir.json", |_, _| {}),
        ("fs_rm.json", |root, _| put(root, "fs/sub/deeper/f", "x")),
        ("ops_upload_too_large.json", |root, _| {
            std::fs::create_dir_all(root.join("ops")).unwrap()
        }),
        ("unknown_system.json", |_, _| {}),
        ("validation_errors.json", |_, _| {}),
    ];
    for (file, setup) in cases {
        replay_whole(file, setup, no_hook).await;
    }
}

#[tokio::test]
async fn ops_view_and_tail_of_non_ascii_answer_like_the_recorded_server() {
    replay_whole(
        "ops_view_tail_nonascii.json",
        |root, map| {
            // The recorded file: 5 lines, 200 bytes.
            let text: String = (1..=5)
                .map(|i| format!("{i:02} grüße ✓ 日本語 — ascii tail\n"))
                .collect();
            assert_eq!(text.len(), 200, "the recorded file's size");
            put(root, "view/utf8.txt", &text);
            map.contents = true;
        },
        no_hook,
    )
    .await;
}

#[tokio::test]
async fn ops_tail_of_a_growing_stdout_answers_like_the_recorded_server() {
    let file = "ops_tail_growing_stdout.json";
    // The whole file, as the recording's last read shows it.
    let whole = recorded(file).last().unwrap()["response"]["body"]["output"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    // Before each stat, the file has the size the recording's stat saw.
    let grow = |exchange: &Value, map: &Mapping| {
        if let Some(size) = exchange["response"]["body"]["output"]["size"].as_u64() {
            let path = map.apply("/scratch/ciuser/f7t-rec/jobs/failing-33.out");
            std::fs::write(path, &whole.as_bytes()[..size as usize]).unwrap();
        }
    };
    replay_whole(file, |_, map| map.contents = true, grow).await;
}

// Recorded jobs: the recorded script is submitted, followed as the
// recording did (each job GET waits for the recorded state), read, cancelled.

#[tokio::test]
async fn a_completed_job_answers_like_the_recorded_server() {
    replay_whole("job_completed.json", |_, _| {}, no_hook).await;
}

#[tokio::test]
async fn a_job_failing_with_exit_3_answers_like_the_recorded_server() {
    replay_whole("job_failed_exit3.json", |_, _| {}, no_hook).await;
}

#[tokio::test]
async fn a_cancelled_job_answers_like_the_recorded_server() {
    replay_whole("job_cancelled.json", |_, _| {}, no_hook).await;
}

#[tokio::test]
async fn submit_errors_answer_like_the_recorded_server() {
    let fake = FakeFirecrest::start();
    let mut map = Mapping::for_fake(&fake);
    std::fs::create_dir_all(fake.user_scratch().join("f7t-rec/jobs")).unwrap();
    let seen = replay(&fake, "submit_errors.json", |_| true, &mut map, no_hook).await;
    assert_eq!(seen.len(), 4, "{seen:?}");
}
