//! Replays recorded exchanges against the double and compares each answer
//! with the recorded one: status, and the shape of the body (its keys, the
//! byte length of contents the recording summarizes as "<N characters, N
//! bytes ...>", positions). The recordings are the specification: where the
//! double answers otherwise, the double is wrong.

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

/// Compares an answer with the recorded one: same keys (recursively, for
/// objects), strings of the recorded byte length where the recording
/// summarizes them, same numbers for positions and `message`s.
fn same_shape(recorded: &Value, got: &Value, at: &str) -> Result<(), String> {
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
                same_shape(value, &have[key], &format!("{at}.{key}"))?;
            }
            Ok(())
        }
        (Value::String(want), Value::String(have)) => match summarized_bytes(want) {
            Some(bytes) if bytes != have.len() => Err(format!(
                "{at}: {bytes} bytes recorded, {} answered",
                have.len()
            )),
            Some(_) => Ok(()),
            None if at.ends_with("message") && want != have => {
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

/// Sends each recorded request whose path passes `wanted` to the double,
/// with the recorded paths rewritten by `path_map`, and compares the answers
/// (see [`same_shape`]). Returns each exchange's note and answer time.
pub async fn replay(
    fake: &FakeFirecrest,
    file: &str,
    wanted: impl Fn(&str) -> bool,
    path_map: impl Fn(&str) -> String,
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
        let request = &exchange["request"];
        let path = request["path"].as_str().unwrap();
        if !wanted(path) {
            continue;
        }
        let note = exchange["note"].as_str().unwrap_or("").to_string();
        let query: Vec<(String, String)> = request["query"]
            .as_object()
            .map(|q| {
                q.iter()
                    .map(|(k, v)| {
                        let v = v.as_str().unwrap_or_default();
                        (
                            k.clone(),
                            if k == "path" {
                                path_map(v)
                            } else {
                                v.to_string()
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let method =
            reqwest::Method::from_bytes(request["method"].as_str().unwrap().as_bytes()).unwrap();
        let started = Instant::now();
        let reply = http
            .request(method, format!("{}{path}", fake.url()))
            .query(&query)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let status = reply.status().as_u16();
        let text = reply.text().await.unwrap();
        let took = started.elapsed();
        let response = &exchange["response"];
        assert_eq!(
            u64::from(status),
            response["status"].as_u64().unwrap(),
            "{note}: status; answered {text:.300}"
        );
        let got: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let want = &response["body"];
        if want.is_object() {
            if let Err(diff) = same_shape(want, &got, "body") {
                panic!("{note}: {diff}");
            }
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
    let dir = fake.user_scratch().join("f7t-rec/jobs");
    std::fs::create_dir_all(&dir).unwrap();
    let data = large_output();
    assert_eq!(data.len(), 12_649_788, "the recorded file's size");
    std::fs::write(dir.join("big-72.out"), &data).unwrap();
    let local = dir.join("big-72.out").display().to_string();
    let seen = replay(
        &fake,
        "ops_large_output.json",
        |p| p.starts_with("/filesystem/"),
        |p| p.replace("/scratch/ciuser/f7t-rec/jobs/big-72.out", &local),
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
