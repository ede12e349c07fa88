//! Self-tests of the FirecREST double, driven with reqwest directly: before
//! other tests trust it, it must answer like the recorded server (expected
//! values below are copied from `firecrest-v2/recorded/*.json`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fake::{
    AuthCheck, FakeFirecrest, ForcedEnd, JobKind, Malform, Outage, PortKind, Route, Settings,
    Stage, TokenDown, Window,
};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// A minimal FirecREST client for poking at the fake.
struct Api {
    http: reqwest::Client,
    base: String,
    sys: String,
    token: String,
}

async fn body_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, v)
}

async fn fetch_token(http: &reqwest::Client, fake: &FakeFirecrest, secret: &str) -> (u16, Value) {
    let r = http
        .post(fake.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &fake.client_id()),
            ("client_secret", secret),
        ])
        .send()
        .await
        .unwrap();
    body_of(r).await
}

impl Api {
    async fn new(fake: &FakeFirecrest) -> Api {
        let http = reqwest::Client::builder()
            .timeout(secs(10.0))
            .build()
            .unwrap();
        let (status, tok) = fetch_token(&http, fake, &fake.client_secret()).await;
        assert_eq!(status, 200, "{tok}");
        Api {
            http,
            base: fake.url(),
            sys: fake.system(),
            token: tok["access_token"].as_str().unwrap().to_string(),
        }
    }

    fn url(&self, p: &str) -> String {
        format!("{}{}", self.base, p.replace("{sys}", &self.sys))
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> (u16, Value) {
        body_of(rb.bearer_auth(&self.token).send().await.unwrap()).await
    }

    async fn get(&self, p: &str, q: &[(&str, &str)]) -> (u16, Value) {
        self.send(self.http.get(self.url(p)).query(q)).await
    }

    async fn post(&self, p: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(self.url(p)).json(&body)).await
    }

    async fn delete(&self, p: &str) -> (u16, Value) {
        self.send(self.http.delete(self.url(p))).await
    }

    async fn submit(&self, name: &str, workdir: &str, script: &str, env: Value) -> String {
        let (s, v) = self
            .post(
                "/compute/{sys}/jobs",
                json!({"job": {"name": name, "workingDirectory": workdir, "script": script, "env": env}}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["jobId"].as_str().unwrap().to_string()
    }

    /// Polls a job until `done` says so; returns the job object.
    async fn wait_job(&self, id: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + timeout;
        loop {
            let (s, v) = self.get(&format!("/compute/{{sys}}/jobs/{id}"), &[]).await;
            if s == 200 && done(&v["jobs"][0]) {
                return v["jobs"][0].clone();
            }
            assert!(
                Instant::now() < until,
                "job {id} did not get there: {s} {v}"
            );
            tokio::time::sleep(secs(0.1)).await;
        }
    }
}

fn state(j: &Value) -> &str {
    j["status"]["state"].as_str().unwrap_or("")
}

const FINAL: fn(&Value) -> bool = |j| !matches!(state(j), "PENDING" | "RUNNING" | "");

#[tokio::test]
async fn token_flow_and_expiry_match_the_recorded_messages() {
    let fake = FakeFirecrest::start_with(Settings {
        token_ttl: 120,
        ..Settings::default()
    });
    let http = reqwest::Client::new();
    let (s, v) = fetch_token(&http, &fake, "wrong-secret").await;
    assert_eq!(
        (s, v),
        (
            401,
            json!({"error": "invalid_client", "error_description": "client authentication failed"})
        )
    );
    let basic = http
        .post(fake.token_url())
        .basic_auth(fake.client_id(), Some(fake.client_secret()))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let (s, v) = body_of(basic).await;
    assert_eq!(s, 200);
    assert_eq!(v["expires_in"], 120);
    assert_eq!(v["token_type"], "Bearer");

    let api = Api::new(&fake).await;
    assert_ne!(api.token, v["access_token"].as_str().unwrap());
    let userinfo = api.url("/status/{sys}/userinfo");
    let (s, v) = body_of(http.get(&userinfo).send().await.unwrap()).await;
    assert_eq!((s, v["message"].as_str()), (401, Some("Not authenticated")));
    assert_eq!(v["user"], Value::Null);
    let (s, v) = body_of(
        http.get(&userinfo)
            .bearer_auth("forged")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, v["message"].as_str()),
        (401, Some("Access token is invalid."))
    );
    let (s, v) = api.get("/status/{sys}/userinfo", &[]).await;
    assert_eq!(s, 200);
    assert_eq!(v["user"], json!({"id": "1001", "name": "ciuser"}));
    let (s, v) = api.get("/status/nosuchsystem/userinfo", &[]).await;
    assert_eq!(
        (s, v["message"].as_str(), v["user"].as_str()),
        (404, Some("System not found"), Some("ciuser"))
    );

    fake.expire_tokens_in(secs(20.0));
    let (s, v) = api.get("/status/{sys}/userinfo", &[]).await;
    assert_eq!(
        (s, v["message"].as_str()),
        (
            401,
            Some("Access token expires too soon (less than 30s remaining).")
        )
    );
    fake.expire_tokens_in(Duration::ZERO);
    let (s, v) = api.get("/status/{sys}/userinfo", &[]).await;
    assert_eq!(
        (s, v["message"].as_str()),
        (401, Some("Access token expired"))
    );
    // A fresh token works again.
    let api = Api::new(&fake).await;
    assert_eq!(api.get("/status/{sys}/userinfo", &[]).await.0, 200);

    let auth: Vec<AuthCheck> = fake
        .log()
        .iter()
        .filter(|e| e.route == Route::UserInfo)
        .map(|e| e.auth)
        .collect();
    assert_eq!(
        auth,
        [
            AuthCheck::Missing,
            AuthCheck::Invalid,
            AuthCheck::Valid,
            AuthCheck::Valid,
            AuthCheck::ExpiresSoon,
            AuthCheck::Expired,
            AuthCheck::Valid
        ]
    );
    let token_calls = fake
        .log()
        .into_iter()
        .filter(|e| e.port == PortKind::Token)
        .count();
    assert_eq!(token_calls, fake.count(Route::Token));
    assert_eq!(token_calls, 4);
}

#[tokio::test]
async fn status_reports_the_temp_dir_file_systems() {
    let fake = FakeFirecrest::start();
    let api = Api::new(&fake).await;
    fake.settings(|s| s.max_ops_file_size = 4096);
    let (s, v) = api.get("/status/systems", &[]).await;
    assert_eq!(s, 200);
    let sys = &v["systems"][0];
    assert_eq!(sys["name"], "daint");
    let scratch = fake.scratch().display().to_string();
    assert_eq!(
        sys["fileSystems"][0],
        json!({"path": scratch, "dataType": "scratch", "defaultWorkDir": true})
    );
    assert_eq!(
        sys["fileSystems"][1]["path"],
        fake.home().display().to_string()
    );
    assert_eq!(sys["dataOperation"]["max_ops_file_size"], 4096);
    assert_eq!(
        sys["dataOperation"]["data_transfer"]["multipart"]["max_part_size"],
        10485760
    );
    let (s, _) = body_of(reqwest::get(api.url("/status/liveness/")).await.unwrap()).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn job_runs_the_real_script_and_fails_with_exit_3() {
    let fake = FakeFirecrest::start_with(Settings {
        pending_for: secs(0.5),
        ..Settings::default()
    });
    let api = Api::new(&fake).await;
    let wd = fake.user_scratch().join("jobs");
    std::fs::create_dir(&wd).unwrap();
    let wd = wd.display().to_string();
    let script = "#!/bin/bash -l\n#SBATCH --time=00:05:00\n#SBATCH --output=failing-%j.out\necho \"job $SLURM_JOB_ID in $PWD A=$A B=$B\"\necho \"something went wrong\" >&2\nexit 3\n";
    let id = api
        .submit("slow-fail", &wd, script, json!({"A": "1", "B": "x,y"}))
        .await;
    let (s, v) = api.get(&format!("/compute/{{sys}}/jobs/{id}"), &[]).await;
    assert_eq!(s, 200);
    assert_eq!(
        v["jobs"][0]["status"],
        json!({"state": "PENDING", "stateReason": "Priority", "exitCode": null, "interruptSignal": null})
    );
    assert_eq!(v["jobs"][0]["tasks"], json!([]));
    let j = api.wait_job(&id, secs(10.0), FINAL).await;
    assert_eq!(
        j["status"],
        json!({"state": "FAILED", "stateReason": "None", "exitCode": 3, "interruptSignal": 0})
    );
    assert_eq!(j["tasks"][0]["id"], format!("{id}.batch"));
    assert_eq!(j["tasks"][0]["status"]["state"], "FAILED");
    assert_eq!(j["time"]["limit"], 300);
    assert_eq!(j["name"], "slow-fail");
    assert!(j["time"]["end"].as_u64() >= j["time"]["start"].as_u64());

    let out = format!("{wd}/failing-{id}.out");
    let (s, m) = api
        .get(&format!("/compute/{{sys}}/jobs/{id}/metadata"), &[])
        .await;
    assert_eq!(s, 200);
    assert_eq!(m["jobs"][0]["standardOutput"], out);
    assert_eq!(m["jobs"][0]["standardError"], out);
    assert_eq!(m["jobs"][0]["script"], script);
    // The comma in B's value splits it, as sbatch --export does.
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        format!("job {id} in {wd} A=1 B=x\nsomething went wrong\n")
    );
    let (s, v) = api.delete(&format!("/compute/{{sys}}/jobs/{id}")).await;
    assert_eq!(s, 500);
    assert_eq!(
        v["message"],
        format!("Unexpected Slurm command response. exit_status:0 std_err:scancel: Terminating job {id}\nscancel: error: Kill job error on job id {id}: Job/step already completing or completed\n")
    );
    let view = fake.job(id.parse().unwrap()).unwrap();
    assert_eq!(
        (view.state.as_str(), view.exit_code, view.signal),
        ("FAILED", Some(3), Some(0))
    );
    assert_eq!(
        (
            view.kind,
            view.stdout.as_str(),
            view.working_directory.as_str()
        ),
        (JobKind::User, out.as_str(), wd.as_str())
    );
    let (s, v) = api.get("/compute/{sys}/jobs/99999999", &[]).await;
    assert_eq!((s, v["message"].as_str()), (404, Some("Job not found.")));
    let (s, v) = api.get("/compute/{sys}/jobs/12-34", &[]).await;
    assert_eq!((s, v["errorType"].as_str()), (400, Some("validation")));
}

#[tokio::test]
async fn tail_and_view_match_the_recorded_nonascii_file() {
    let fake = FakeFirecrest::start();
    let api = Api::new(&fake).await;
    let path = fake.user_scratch().join("utf8.txt");
    let line = |n: u32| format!("{n:02} grüße ✓ 日本語 — ascii tail\n");
    let text: String = (1..=5).map(line).collect();
    std::fs::write(&path, &text).unwrap();
    let p = path.display().to_string();
    let q = |extra: &[(&'static str, &'static str)]| {
        let mut v = vec![("path", p.clone())];
        v.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        v
    };
    let get = |route: &'static str, extra: &'static [(&'static str, &'static str)]| {
        let query = q(extra);
        let api = &api;
        async move {
            let pairs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
            api.get(route, &pairs).await
        }
    };
    let (_, v) = get("/filesystem/{sys}/ops/stat", &[]).await;
    assert_eq!(v["output"]["size"], 200);
    assert_eq!(
        get(
            "/filesystem/{sys}/ops/view",
            &[("offset", "14"), ("size", "8")]
        )
        .await
        .1["output"],
        "本語"
    );
    assert_eq!(
        get(
            "/filesystem/{sys}/ops/view",
            &[("offset", "16"), ("size", "16")]
        )
        .await
        .1["output"],
        "\u{FFFD}\u{FFFD}本語 — ascii tai"
    );
    assert_eq!(
        get("/filesystem/{sys}/ops/view", &[]).await.1["output"],
        text.as_str()
    );
    assert_eq!(
        get("/filesystem/{sys}/ops/tail", &[("bytes", "20")])
            .await
            .1["output"],
        json!({"content": "\u{FFFD}語 — ascii tail\n", "contentType": "bytes", "startPosition": -20, "endPosition": -1})
    );
    let (_, v) = get(
        "/filesystem/{sys}/ops/tail",
        &[("bytes", "12"), ("skipHeading", "true")],
    )
    .await;
    assert_eq!(v["output"]["content"], &text[11..]);
    assert_eq!(
        (
            v["output"]["startPosition"].as_i64(),
            v["output"]["endPosition"].as_i64()
        ),
        (Some(12), Some(-1))
    );
    assert_eq!(
        get("/filesystem/{sys}/ops/tail", &[("lines", "2")]).await.1["output"],
        json!({"content": format!("{}{}", line(4), line(5)), "contentType": "lines", "startPosition": -2, "endPosition": -1})
    );
    assert_eq!(
        get("/filesystem/{sys}/ops/head", &[("lines", "1")]).await.1["output"],
        json!({"content": line(1), "contentType": "lines", "startPosition": 0, "endPosition": 1})
    );
    let (s, v) = get(
        "/filesystem/{sys}/ops/tail",
        &[("bytes", "1"), ("lines", "1")],
    )
    .await;
    assert_eq!(
        (s, v["message"].as_str()),
        (
            400,
            Some("Only one of `bytes` or `lines` can be specified.")
        )
    );
    let (s, v) = get("/filesystem/{sys}/ops/view", &[("size", "5242881")]).await;
    assert_eq!(
        (s, v["message"].as_str()),
        (400, Some("`size` value must be less than 5242880 bytes"))
    );
    let (s, v) = api
        .get("/filesystem/{sys}/ops/ls", &[("path", "/project/ci")])
        .await;
    assert_eq!(
        (s, v["message"].as_str()),
        (400, Some("The provided path (/project/ci) does not match any of the defined filesystem paths for the requested system (daint)."))
    );
    let (s, v) = api
        .get("/filesystem/{sys}/ops/ls", &[("path", "scratch")])
        .await;
    assert_eq!(
        (s, v["message"].as_str()),
        (
            400,
            Some("The provided path (scratch) is not an absolute path.")
        )
    );
}

#[tokio::test]
async fn tail_by_offsets_follows_a_growing_multibyte_stdout() {
    let fake = FakeFirecrest::start();
    let api = Api::new(&fake).await;
    let wd = fake.user_scratch().display().to_string();
    let script = "#!/bin/bash -l\nfor i in 1 2 3 4 5 6; do\n  printf 'line %s: grüße ✓ 日本語\\n' $i\n  sleep 0.3\ndone\n";
    let id = api.submit("follow", &wd, script, json!({})).await;
    let out = format!("{wd}/slurm-{id}.out");
    let mut offset = 0u64;
    let mut collected = String::new();
    let mut rounds = 0;
    loop {
        let done = FINAL(&api.wait_job(&id, secs(10.0), |_| true).await);
        let (s, st) = api
            .get("/filesystem/{sys}/ops/stat", &[("path", &out)])
            .await;
        if s == 200 {
            let size = st["output"]["size"].as_u64().unwrap();
            if size > offset {
                let from = (offset + 1).to_string();
                let (s, v) = api
                    .get(
                        "/filesystem/{sys}/ops/tail",
                        &[("path", &out), ("bytes", &from), ("skipHeading", "true")],
                    )
                    .await;
                assert_eq!(s, 200, "{v}");
                let content = v["output"]["content"].as_str().unwrap();
                assert_eq!(v["output"]["startPosition"].as_u64(), Some(offset + 1));
                offset += content.len() as u64;
                collected.push_str(content);
                rounds += 1;
            }
        }
        if done {
            break;
        }
        tokio::time::sleep(secs(0.25)).await;
    }
    assert!(rounds >= 2, "output should arrive in several pieces");
    assert_eq!(collected, std::fs::read_to_string(&out).unwrap());
    assert_eq!(collected.lines().count(), 6);
    // Starting inside a character gives U+FFFD, like the real server.
    let (_, v) = api
        .get(
            "/filesystem/{sys}/ops/tail",
            &[("path", &out), ("bytes", "18"), ("skipHeading", "true")],
        )
        .await;
    assert!(v["output"]["content"]
        .as_str()
        .unwrap()
        .starts_with("\u{FFFD}\u{FFFD} 日本語"));
}

#[tokio::test]
async fn big_outputs_and_uploads_answer_413() {
    let fake = FakeFirecrest::start_with(Settings {
        max_ops_file_size: 1000,
        ..Settings::default()
    });
    let api = Api::new(&fake).await;
    let dir = fake.user_scratch().display().to_string();
    let big = format!("{dir}/big.txt");
    std::fs::write(&big, "x".repeat(1001)).unwrap();
    let too_big = Some("Command output exceeded buffer limit.");
    let (s, v) = api
        .get(
            "/filesystem/{sys}/ops/tail",
            &[("path", &big), ("bytes", "1"), ("skipHeading", "true")],
        )
        .await;
    assert_eq!((s, v["message"].as_str()), (413, too_big));
    let (s, _) = api
        .get(
            "/filesystem/{sys}/ops/tail",
            &[("path", &big), ("bytes", "2"), ("skipHeading", "true")],
        )
        .await;
    assert_eq!(s, 200);
    // Download: the limit applies to base64 output.
    let mid = format!("{dir}/mid.bin");
    std::fs::write(&mid, vec![7u8; 800]).unwrap();
    let (s, v) = api
        .get("/filesystem/{sys}/ops/download", &[("path", &mid)])
        .await;
    assert_eq!((s, v["message"].as_str()), (413, too_big));
    std::fs::write(&mid, vec![7u8; 700]).unwrap();
    let r = api
        .http
        .get(api.url("/filesystem/{sys}/ops/download"))
        .query(&[("path", &mid)])
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), vec![7u8; 700]);

    let upload = |n: usize| {
        let part = reqwest::multipart::Part::bytes(vec![b'a'; n]).file_name("up.bin");
        api.http
            .post(api.url("/filesystem/{sys}/ops/upload"))
            .query(&[("path", &dir)])
            .bearer_auth(&api.token)
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
    };
    let (s, v) = body_of(upload(1001).await.unwrap()).await;
    assert_eq!(
        (s, v["message"].as_str()),
        (413, Some("File to upload is too large."))
    );
    let (s, _) = body_of(upload(1000).await.unwrap()).await;
    assert_eq!(s, 204);
    assert_eq!(std::fs::read(format!("{dir}/up.bin")).unwrap().len(), 1000);
    let (s, v) = api
        .get(
            "/filesystem/{sys}/ops/ls",
            &[("path", &format!("{dir}/up.bin"))],
        )
        .await;
    assert_eq!(
        (
            s,
            v["output"][0]["permissions"].as_str(),
            v["output"][0]["size"].as_str()
        ),
        (200, Some("rw-r--r--"), Some("1000"))
    );

    // mkdir / chmod / checksum / rm round trip.
    let sub = format!("{dir}/a/b");
    let (s, v) = api
        .post(
            "/filesystem/{sys}/ops/mkdir",
            json!({"path": sub, "parent": true}),
        )
        .await;
    assert_eq!((s, v["output"]["type"].as_str()), (201, Some("d")));
    let (s, v) = api
        .post("/filesystem/{sys}/ops/mkdir", json!({"path": sub}))
        .await;
    assert_eq!(s, 400);
    assert!(v["message"].as_str().unwrap().ends_with("File exists"));
    let (s, v) = api
        .send(
            api.http
                .put(api.url("/filesystem/{sys}/ops/chmod"))
                .json(&json!({"path": sub, "mode": "700"})),
        )
        .await;
    assert_eq!(
        (s, v["output"]["permissions"].as_str()),
        (200, Some("rwx------"))
    );
    let (s, v) = api
        .get("/filesystem/{sys}/ops/checksum", &[("path", &big)])
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["output"]["checksum"].as_str().unwrap().len(), 64);
    let rm = api.url(&format!("/filesystem/{{sys}}/ops/rm?path={dir}/a"));
    assert_eq!(api.send(api.http.delete(&rm)).await.0, 204);
    let (s, v) = api.send(api.http.delete(&rm)).await;
    assert_eq!(s, 404);
    assert_eq!(v["message"], format!("Remote process failed with exit status:1 and error message:rm: cannot remove '{dir}/a': No such file or directory"));
    assert!(!fake
        .scratch_files()
        .iter()
        .any(|f| f.starts_with("ciuser/a")));
    assert!(fake.scratch_files().contains(&"ciuser/up.bin".to_string()));
}

#[tokio::test]
async fn cancel_of_running_pending_and_finished_jobs() {
    let fake = FakeFirecrest::start();
    let api = Api::new(&fake).await;
    let wd = fake.user_scratch().display().to_string();
    // Ignores SIGTERM, so only SIGKILL after KillWait ends it.
    let id = api
        .submit(
            "to-cancel",
            &wd,
            "#!/bin/bash -l\ntrap '' TERM\necho waiting\nsleep 300 & wait\n",
            json!({}),
        )
        .await;
    api.wait_job(&id, secs(60.0), |j| state(j) == "RUNNING")
        .await;
    assert!(fake.any_job_process_running());
    let (s, _) = api.delete(&format!("/compute/{{sys}}/jobs/{id}")).await;
    assert_eq!(s, 204);
    let j = api.wait_job(&id, secs(2.0), FINAL).await;
    assert_eq!(
        j["status"],
        json!({"state": "CANCELLED by 1001", "stateReason": "None", "exitCode": 0, "interruptSignal": 0})
    );
    let until = Instant::now() + secs(60.0);
    while fake.any_job_process_running() {
        assert!(Instant::now() < until, "job processes survived the cancel");
        tokio::time::sleep(secs(0.1)).await;
    }
    let (s, v) = api.delete(&format!("/compute/{{sys}}/jobs/{id}")).await;
    assert_eq!(s, 500);
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("Job/step already completing or completed"));

    // A job still waiting on a dependency is cancelled without ever running.
    let blocker = api
        .submit("blocker", &wd, "#!/bin/bash\nsleep 30\n", json!({}))
        .await;
    let waiting = api
        .submit(
            "waiting",
            &wd,
            &format!("#!/bin/bash\n#SBATCH --dependency=afterok:{blocker}\necho never\n"),
            json!({}),
        )
        .await;
    let j = api
        .wait_job(&waiting, secs(5.0), |j| {
            j["status"]["stateReason"] == "Dependency"
        })
        .await;
    assert_eq!(state(&j), "PENDING");
    assert_eq!(
        api.delete(&format!("/compute/{{sys}}/jobs/{waiting}"))
            .await
            .0,
        204
    );
    assert_eq!(
        api.delete(&format!("/compute/{{sys}}/jobs/{blocker}"))
            .await
            .0,
        204
    );
    let j = api.wait_job(&waiting, secs(2.0), FINAL).await;
    assert_eq!(
        (state(&j), j["tasks"].clone()),
        ("CANCELLED by 1001", json!([]))
    );
    assert!(!std::path::Path::new(&format!("{wd}/slurm-{waiting}.out")).exists());
}

#[tokio::test]
async fn timeouts_signals_dependencies_and_forced_states() {
    let fake = FakeFirecrest::start_with(Settings {
        kill_wait: secs(1.0),
        ..Settings::default()
    });
    let api = Api::new(&fake).await;
    let wd = fake.user_scratch().display().to_string();
    fake.force_end("oom", ForcedEnd::new("OUT_OF_MEMORY", 0, 125));
    fake.force_end(
        "preempt",
        ForcedEnd::new("PREEMPTED", 0, 0).after(secs(0.5)),
    );
    let timeout = api
        .submit(
            "timeout",
            &wd,
            "#!/bin/bash -l\n#SBATCH --time=0:01\ntrap '' TERM\nsleep 60 & wait\n",
            json!({}),
        )
        .await;
    let killed = api
        .submit("sigkill", &wd, "#!/bin/bash -l\nkill -9 $$\n", json!({}))
        .await;
    let oom = api
        .submit("oom", &wd, "#!/bin/bash -l\necho allocating\n", json!({}))
        .await;
    let preempt = api
        .submit("preempt", &wd, "#!/bin/bash -l\nsleep 60\n", json!({}))
        .await;
    let bad = api
        .submit("bad", &wd, "#!/bin/bash\nexit 1\n", json!({}))
        .await;
    let after_bad = api
        .submit(
            "after-bad",
            &wd,
            &format!("#!/bin/bash\n#SBATCH --dependency=afterok:{bad}\ntrue\n"),
            json!({}),
        )
        .await;
    let after_oom = api
        .submit(
            "after-ok",
            &wd,
            &format!("#!/bin/bash\n#SBATCH -d afterany:{oom}\ntrue\n"),
            json!({}),
        )
        .await;

    let j = api.wait_job(&killed, secs(5.0), FINAL).await;
    assert_eq!(
        (
            state(&j),
            &j["status"]["exitCode"],
            &j["status"]["interruptSignal"]
        ),
        ("FAILED", &json!(0), &json!(9))
    );
    assert_eq!(j["tasks"][0]["status"]["state"], "CANCELLED");
    let j = api.wait_job(&oom, secs(5.0), FINAL).await;
    assert_eq!(
        (state(&j), &j["status"]["interruptSignal"]),
        ("OUT_OF_MEMORY", &json!(125))
    );
    let j = api.wait_job(&preempt, secs(5.0), FINAL).await;
    assert_eq!(state(&j), "PREEMPTED");
    let j = api.wait_job(&timeout, secs(8.0), FINAL).await;
    assert_eq!(
        j["status"],
        json!({"state": "TIMEOUT", "stateReason": "None", "exitCode": 0, "interruptSignal": 0})
    );
    assert_eq!(j["time"]["limit"], 1);
    let j = api.wait_job(&after_oom, secs(5.0), FINAL).await;
    assert_eq!(state(&j), "COMPLETED");
    let j = api
        .wait_job(&after_bad, secs(5.0), |j| {
            j["status"]["stateReason"] == "DependencyNeverSatisfied"
        })
        .await;
    assert_eq!(state(&j), "PENDING");
    let (s, v) = api.get("/compute/{sys}/jobs", &[]).await;
    assert_eq!(s, 200);
    let names: Vec<&str> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "timeout",
            "sigkill",
            "oom",
            "preempt",
            "bad",
            "after-bad",
            "after-ok"
        ]
    );
    assert!(!fake.any_job_process_running());
}

#[tokio::test]
async fn transfer_upload_and_download_through_the_s3_routes() {
    let fake = FakeFirecrest::start_with(Settings {
        max_part_size: 1000,
        ..Settings::default()
    });
    fake.fail_part_puts(1);
    let api = Api::new(&fake).await;
    let target = fake.user_scratch().join("big.bin").display().to_string();
    let data: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
    let (s, v) = api
        .post(
            "/filesystem/{sys}/transfer/upload",
            json!({"path": target, "transferDirectives": {"transferMethod": "s3", "fileSize": data.len()}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let job = v["transferJob"]["jobId"].as_str().unwrap().to_string();
    assert_eq!(
        v["transferJob"]["workingDirectory"],
        fake.user_scratch().display().to_string()
    );
    assert_eq!(v["transferDirectives"]["maxPartSize"], 1000);
    let urls: Vec<String> = v["transferDirectives"]["partsUploadUrls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect();
    assert_eq!(urls.len(), 3);
    let j = api.wait_job(&job, secs(2.0), |_| true).await;
    assert_eq!(
        (state(&j), j["name"].as_str()),
        ("PENDING", Some("IngressFileTransfer"))
    );
    let mut xml =
        String::from("<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    for (i, (url, chunk)) in urls.iter().zip(data.chunks(1000)).enumerate() {
        let first = api.http.put(url).body(chunk.to_vec()).send().await.unwrap();
        assert_eq!(first.status().as_u16(), 500);
        // A streamed body goes out chunked; the fake must read it whole.
        let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
            chunk.chunks(300).map(|c| Ok(c.to_vec())).collect();
        let body = reqwest::Body::wrap_stream(futures::stream::iter(pieces));
        let r = api.http.put(url).body(body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let etag = r.headers()["etag"].to_str().unwrap().to_string();
        xml.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{etag}</ETag></Part>",
            i + 1
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    let complete = v["transferDirectives"]["completeUploadUrl"]
        .as_str()
        .unwrap();
    let r = api
        .http
        .post(complete)
        .header("content-type", "application/xml")
        .body(xml)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("<CompleteMultipartUploadResult"));
    let j = api.wait_job(&job, secs(5.0), FINAL).await;
    assert_eq!(
        (state(&j), j["name"].as_str()),
        ("COMPLETED", Some("allocation"))
    );
    assert_eq!(std::fs::read(&target).unwrap(), data);
    assert_eq!(fake.count(Route::S3PartPut), 6);

    let (s, v) = api
        .post(
            "/filesystem/{sys}/transfer/download",
            json!({"path": target, "transferDirectives": {"transferMethod": "s3"}}),
        )
        .await;
    assert_eq!(s, 201);
    let url = v["transferDirectives"]["downloadUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let job = v["transferJob"]["jobId"].as_str().unwrap().to_string();
    api.wait_job(&job, secs(5.0), |j| state(j) == "COMPLETED")
        .await;
    let r = api
        .http
        .get(&url)
        .header("range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.bytes().await.unwrap().to_vec(), data[1000..].to_vec());
    let whole = api
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(whole.to_vec(), data);
    let (s, v) = api
        .post("/filesystem/{sys}/transfer/upload", json!({"path": target, "transferDirectives": {"transferMethod": "streamer", "fileSize": 1}}))
        .await;
    assert_eq!(
        (s, v["message"].as_str()),
        (400, Some("Requested transfer method is not available."))
    );

    // Transfer rm is a job too.
    let (s, v) = api
        .delete(&format!("/filesystem/{{sys}}/transfer/rm?path={target}"))
        .await;
    assert_eq!(s, 200);
    let job = v["transferJob"]["jobId"].as_str().unwrap();
    api.wait_job(job, secs(5.0), |j| state(j) == "COMPLETED")
        .await;
    assert!(!std::path::Path::new(&target).exists());
    let kinds: Vec<JobKind> = fake.jobs().iter().map(|j| j.kind).collect();
    assert_eq!(
        kinds,
        [
            JobKind::TransferUpload,
            JobKind::TransferDownload,
            JobKind::TransferRemove
        ]
    );
}

#[tokio::test]
async fn outage_refuses_connections_then_serves_on_the_same_port() {
    // Windows of seconds, and polling for their end: on a loaded machine a
    // check may run a second late, and must still land inside the window.
    let fake = FakeFirecrest::start();
    let api = Api::new(&fake).await;
    assert_eq!(api.get("/status/{sys}/userinfo", &[]).await.0, 200);
    let outage = secs(8.0);
    let began = Instant::now();
    fake.outage(Outage::Api, Window::now_for(outage));
    wait_refused(&fake.url()).await;
    let err = api
        .http
        .get(api.url("/status/{sys}/userinfo"))
        .bearer_auth(&api.token)
        .send()
        .await;
    // The pooled keep-alive connection was closed too, so this is a fresh
    // connect that is refused.
    let err = match err {
        Err(e) => e,
        Ok(_) => {
            let again = api.http.get(api.url("/status/{sys}/userinfo")).send().await;
            again.expect_err("server should be away")
        }
    };
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    let direct = std::net::TcpStream::connect(fake.url().trim_start_matches("http://"));
    assert_eq!(
        direct.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    // The token endpoint is on its own port and stays up.
    let (s, _) = fetch_token(&api.http, &fake, &fake.client_secret()).await;
    assert_eq!(s, 200);
    assert!(
        began.elapsed() < outage,
        "the checks above ran after the outage"
    );
    // Served again on the same port once the window is over.
    tokio::time::sleep(outage.saturating_sub(began.elapsed())).await;
    let until = Instant::now() + secs(30.0);
    while api
        .http
        .get(api.url("/status/{sys}/userinfo"))
        .bearer_auth(&api.token)
        .send()
        .await
        .map_or(true, |r| r.status() != 200)
    {
        assert!(Instant::now() < until, "the API never came back");
        tokio::time::sleep(secs(0.1)).await;
    }

    fake.token_down(TokenDown::Refused, Window::now_for(secs(8.0)));
    wait_refused(&fake.token_url()).await;
    // A fresh client: a pooled connection from before the fault may live on.
    assert!(reqwest::Client::new()
        .post(fake.token_url())
        .send()
        .await
        .unwrap_err()
        .is_connect());
    fake.token_down(TokenDown::Status503, Window::now_for(secs(8.0)));
    // Its listener comes back to answer 503.
    wait_accepting(&fake.token_url()).await;
    let (s, _) = fetch_token(&api.http, &fake, &fake.client_secret()).await;
    assert_eq!(s, 503);
    fake.outage(Outage::All, Window::now_for(secs(8.0)));
    wait_refused(&fake.token_url()).await;
    assert!(reqwest::Client::new()
        .post(fake.token_url())
        .send()
        .await
        .is_err());
}

/// Waits (a few seconds at most) until `url`'s port refuses connections:
/// the double closes a listener within a moment of a fault's start.
async fn wait_refused(url: &str) {
    wait_port(url, false).await;
}

/// Waits (a few seconds at most) until `url`'s port accepts connections.
async fn wait_accepting(url: &str) {
    wait_port(url, true).await;
}

async fn wait_port(url: &str, accepting: bool) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let addr = rest.split('/').next().unwrap_or(rest).to_string();
    let until = Instant::now() + secs(5.0);
    while std::net::TcpStream::connect(&addr).is_ok() != accepting {
        assert!(
            Instant::now() < until,
            "{addr} did not start {} connections",
            if accepting { "accepting" } else { "refusing" }
        );
        tokio::time::sleep(secs(0.02)).await;
    }
}

#[tokio::test]
async fn gateway_faults_lost_replies_and_malformed_bodies() {
    let fake = FakeFirecrest::start();
    let api = Api::new(&fake).await;
    let wd = fake.user_scratch().display().to_string();

    fake.rate_limit(3, 7, Window::now_for(secs(30.0)));
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = api
            .http
            .get(api.url("/status/{sys}/userinfo"))
            .bearer_auth(&api.token)
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 429 {
            assert_eq!(r.headers()["retry-after"], "7");
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 200, 200, 429]);
    fake.clear_faults();

    fake.random_5xx(0.5, Window::now_for(secs(30.0)), 42);
    let mut hit = 0;
    for _ in 0..40 {
        let s = api.get("/status/{sys}/userinfo", &[]).await.0;
        assert!([200, 502, 503, 504].contains(&s));
        hit += usize::from(s != 200);
    }
    assert!((8..=32).contains(&hit), "{hit} of 40 failed");
    fake.clear_faults();

    // A lost submit reply: the job exists and can be found by name.
    fake.fail_next(Some(Route::JobSubmit), 1, 502, Stage::After);
    let (s, _) = api
        .post("/compute/{sys}/jobs", json!({"job": {"name": "unique-42", "workingDirectory": wd, "script": "#!/bin/bash\ntrue\n"}}))
        .await;
    assert_eq!(s, 502);
    let (_, list) = api.get("/compute/{sys}/jobs", &[]).await;
    assert_eq!(list["jobs"][0]["name"], "unique-42");
    assert_eq!(
        fake.job_by_name("unique-42").map(|j| j.kind),
        Some(JobKind::User)
    );
    // Refused before acting: no job.
    fake.fail_next(Some(Route::JobSubmit), 1, 503, Stage::Before);
    let (s, _) = api
        .post("/compute/{sys}/jobs", json!({"job": {"name": "never", "workingDirectory": wd, "script": "#!/bin/bash\ntrue\n"}}))
        .await;
    assert_eq!(s, 503);
    assert!(fake.job_by_name("never").is_none());

    fake.malform_next(Some(Route::JobList), 1, Malform::DropField("status".into()));
    fake.malform_next(Some(Route::JobList), 1, Malform::InvalidJson);
    let (_, v) = api.get("/compute/{sys}/jobs", &[]).await;
    assert!(v["jobs"][0].get("status").is_none() && v["jobs"][0].get("name").is_some());
    let (s, v) = api.get("/compute/{sys}/jobs", &[]).await;
    assert!(s == 200 && v.is_string(), "{v}");
    assert!(api.get("/compute/{sys}/jobs", &[]).await.1["jobs"][0]["status"].is_object());

    // A job that never appears, and one that appears late.
    fake.hide_job("ghost", None);
    fake.hide_job("late", Some(secs(1.0)));
    let ghost = api
        .submit("ghost", &wd, "#!/bin/bash\ntrue\n", json!({}))
        .await;
    let late = api
        .submit("late", &wd, "#!/bin/bash\ntrue\n", json!({}))
        .await;
    assert_eq!(
        api.get(&format!("/compute/{{sys}}/jobs/{late}"), &[])
            .await
            .0,
        404
    );
    tokio::time::sleep(secs(1.2)).await;
    assert_eq!(
        api.get(&format!("/compute/{{sys}}/jobs/{late}"), &[])
            .await
            .0,
        200
    );
    assert_eq!(
        api.get(&format!("/compute/{{sys}}/jobs/{ghost}"), &[])
            .await
            .0,
        404
    );
    let ghost_view = fake
        .wait_final(ghost.parse().unwrap(), secs(5.0))
        .await
        .unwrap();
    assert_eq!(ghost_view.state, "COMPLETED");
    assert!(!ghost_view.process_alive);

    // A slow answer beats a short client timeout once, then all is well.
    // Seconds apart, so that a loaded machine cannot blur them.
    fake.delay(
        Some(Route::UserInfo),
        secs(6.0),
        Stage::Before,
        None,
        Some(1),
    );
    let quick = reqwest::Client::builder()
        .timeout(secs(2.0))
        .build()
        .unwrap();
    let slow = quick
        .get(api.url("/status/{sys}/userinfo"))
        .bearer_auth(&api.token)
        .send()
        .await;
    assert!(slow.unwrap_err().is_timeout());
    let window = secs(3.0);
    let began = Instant::now();
    fake.delay(
        None,
        secs(6.0),
        Stage::After,
        Some(Window::now_for(window)),
        None,
    );
    let slow = quick
        .get(api.url("/status/{sys}/userinfo"))
        .bearer_auth(&api.token)
        .send()
        .await;
    assert!(slow.unwrap_err().is_timeout());
    tokio::time::sleep(window.saturating_sub(began.elapsed())).await;
    let ok = api.get("/status/{sys}/userinfo", &[]).await;
    assert_eq!(ok.0, 200, "{ok:?}");

    // The connection drops in the middle of an upload.
    fake.reset_next(Some(Route::OpsUpload), 1);
    let send = || {
        let part = reqwest::multipart::Part::bytes(vec![b'z'; 300_000]).file_name("w.tar.gz");
        api.http
            .post(api.url("/filesystem/{sys}/ops/upload"))
            .query(&[("path", &wd)])
            .bearer_auth(&api.token)
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
    };
    assert!(send().await.is_err());
    assert_eq!(send().await.unwrap().status().as_u16(), 204);

    let log = fake.log();
    let dropped = log.iter().find(|e| e.status == 0).unwrap();
    assert_eq!(
        (dropped.route, dropped.method.as_str()),
        (Route::OpsUpload, "POST")
    );
    assert!(dropped.path.ends_with("/ops/upload") && dropped.query.starts_with("path="));
    assert_eq!(dropped.injected.as_deref(), Some("reset"));
    let lost = log.iter().find(|e| e.route == Route::JobSubmit).unwrap();
    assert_eq!(
        (lost.status, lost.injected.as_deref()),
        (502, Some("fail-502-After"))
    );
    assert!(lost.at < dropped.at);
}

#[tokio::test]
async fn dropping_the_fake_kills_running_jobs() {
    let fake = FakeFirecrest::start();
    let api = Api::new(&fake).await;
    let wd = fake.user_scratch().display().to_string();
    let id = api
        .submit(
            "forever",
            &wd,
            "#!/bin/bash\necho $$ > pid\nsleep 300 &\necho $! >> pid\nwait\n",
            json!({}),
        )
        .await;
    api.wait_job(&id, secs(60.0), |j| state(j) == "RUNNING")
        .await;
    let pid_file = format!("{wd}/pid");
    let until = Instant::now() + secs(60.0);
    let pids = loop {
        let text = std::fs::read_to_string(&pid_file).unwrap_or_default();
        if text.lines().count() == 2 {
            break text;
        }
        assert!(Instant::now() < until, "job did not write its pids");
        tokio::time::sleep(secs(0.05)).await;
    };
    assert!(fake.job(id.parse().unwrap()).unwrap().process_alive);
    drop(fake);
    // SIGKILL is sent on drop; the processes end as soon as they are scheduled.
    let until = Instant::now() + secs(30.0);
    for pid in pids.lines() {
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let alive = stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'));
            if !alive {
                break;
            }
            assert!(
                Instant::now() < until,
                "process {pid} survived the fake: {stat}"
            );
            tokio::time::sleep(secs(0.05)).await;
        }
    }
}

/// Latency mode: SSH-command calls take their round trip, uploads share
/// one link, and a transfer job that looked too early waits for its
/// re-check (lower bounds only: a loaded machine is only ever slower).
#[tokio::test]
async fn latency_mode_models_round_trips_the_link_and_the_transfer_recheck() {
    let real = Settings::latency();
    assert_eq!(real.ssh_latency, Duration::from_millis(60));
    assert_eq!(real.upload_rate, Some(35_000_000));
    assert_eq!(real.transfer_recheck, Duration::from_secs(60));
    let scaled = Settings::latency().scaled(10);
    assert_eq!(scaled.transfer_recheck, Duration::from_secs(6));
    assert_eq!(scaled.upload_rate, Some(350_000_000));
    let fake = FakeFirecrest::start_with(Settings {
        upload_rate: Some(10_000_000),
        transfer_delay: secs(0.1),
        transfer_recheck: secs(1.5),
        max_part_size: 1000,
        ..Settings::latency()
    });
    let api = Api::new(&fake).await;
    let dir = fake.user_scratch().display().to_string();

    let at = Instant::now();
    let (s, _) = api.get("/filesystem/{sys}/ops/ls", &[("path", &dir)]).await;
    assert_eq!(s, 200);
    assert!(at.elapsed() >= secs(0.06), "{:?}", at.elapsed());

    let upload = |name: &'static str| {
        let part = reqwest::multipart::Part::bytes(vec![b'a'; 1_000_000]).file_name(name);
        api.http
            .post(api.url("/filesystem/{sys}/ops/upload"))
            .query(&[("path", &dir)])
            .bearer_auth(&api.token)
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
    };
    let at = Instant::now();
    let (a, b) = futures::join!(upload("a.bin"), upload("b.bin"));
    assert_eq!(
        (a.unwrap().status().as_u16(), b.unwrap().status().as_u16()),
        (204, 204)
    );
    // 2 MB on a 10 MB/s link shared by both.
    assert!(at.elapsed() >= secs(0.2), "{:?}", at.elapsed());

    // The transfer job looks at 0.1 s, finds nothing, looks again at 1.6 s.
    let target = format!("{dir}/late.bin");
    let (s, v) = api
        .post(
            "/filesystem/{sys}/transfer/upload",
            json!({"path": target, "transferDirectives": {"transferMethod": "s3", "fileSize": 10}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let posted = Instant::now();
    let job = v["transferJob"]["jobId"].as_str().unwrap().to_string();
    tokio::time::sleep(secs(0.4)).await;
    put_and_complete(&api, &v, vec![1u8; 10]).await;
    let j = api.wait_job(&job, secs(5.0), FINAL).await;
    assert_eq!(state(&j), "COMPLETED");
    assert!(posted.elapsed() >= secs(1.5), "{:?}", posted.elapsed());

    // A failing transfer job leaves its error in its error log.
    fake.fail_transfers("An error occurred (403) when calling the HeadObject operation: Forbidden");
    let (_, v) = api
        .post(
            "/filesystem/{sys}/transfer/upload",
            json!({"path": target, "transferDirectives": {"transferMethod": "s3", "fileSize": 10}}),
        )
        .await;
    let job = v["transferJob"]["jobId"].as_str().unwrap().to_string();
    put_and_complete(&api, &v, vec![1u8; 10]).await;
    let j = api.wait_job(&job, secs(5.0), FINAL).await;
    assert_eq!(state(&j), "FAILED");
    let log =
        std::fs::read_to_string(v["transferJob"]["logs"]["errorLog"].as_str().unwrap()).unwrap();
    assert!(log.contains("HeadObject operation: Forbidden"), "{log}");
}

/// Puts `data` as the one part of the S3 upload `reply` directs, and
/// completes it.
async fn put_and_complete(api: &Api, reply: &Value, data: Vec<u8>) {
    let directives = &reply["transferDirectives"];
    let url = directives["partsUploadUrls"][0].as_str().unwrap();
    let r = api.http.put(url).body(data).send().await.unwrap();
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let xml = format!("<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag></Part></CompleteMultipartUpload>");
    let complete = directives["completeUploadUrl"].as_str().unwrap();
    let r = api.http.post(complete).body(xml).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
