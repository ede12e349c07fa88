//! First contact (issue 17): whole runs of the real binary whose
//! `FIRECREST_URL` or `FIRECREST_TOKEN_URL` is wrong, or whose server is not
//! up yet. A name that does not exist and a reply that is not FirecREST (or
//! not a token endpoint) are exit 78 at once; nothing listening is a short
//! round of retries and exit 69; each message names the variable and the
//! host, and each failing case ends within 20 s. A server that starts
//! listening 5 s late is ridden out.
//!
//! Names under `.invalid` never leave the machine: hickory, the resolver
//! the tool uses, answers them itself with NXDOMAIN (RFC 6761).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use firecrest_ci::outcome::codes;

use crate::fake::{FakeFirecrest, Outage, Window};
use crate::harness::{Outcome, Setup};

const LIMIT: Duration = Duration::from_secs(90);

/// The requirement: a mistake is named within this.
const NAMED_WITHIN: Duration = Duration::from_secs(20);

const PAGE: &str = "<!DOCTYPE html><html><head><title>Welcome</title></head>\
                    <body><h1>It works!</h1></body></html>";

/// A run against `fake` with `variable` set to `value`.
fn run_with(fake: &FakeFirecrest, variable: &str, value: &str) -> Outcome {
    let mut setup = Setup::firecrest(fake, "first-contact", "echo reached the job");
    setup.set(variable, value);
    let out = setup.run(LIMIT);
    eprintln!(
        "{variable}={value}: exit {} after {:.1?}",
        out.code, out.elapsed
    );
    out
}

/// The run failed with `code` within 20 s, sent no job, and said each of
/// `named`.
fn assert_named(fake: &FakeFirecrest, out: &Outcome, code: i32, named: &[&str]) {
    assert_eq!(out.code, code, "{}", out.both());
    assert!(
        out.elapsed < NAMED_WITHIN,
        "took {:?}\n{}",
        out.elapsed,
        out.both()
    );
    for text in named {
        assert!(out.stderr.contains(text), "{text:?}\n{}", out.both());
    }
    assert!(fake.jobs().is_empty(), "no job may be sent");
}

/// The loopback address of this module's own sockets, apart from the
/// addresses of the doubles (127.1.x.y, one per listener) and of other
/// tests' servers on 127.0.0.1: a port one of them lets go is never taken
/// here, and a port let go here is never reached by them.
const ASIDE: &str = "127.0.0.2";

/// A loopback port that nothing listens on (bound, then let go).
fn closed_port() -> u16 {
    let listener = TcpListener::bind((ASIDE, 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

/// A web server that is not FirecREST: every request gets `status` and an
/// HTML page. Lives as long as the test binary.
fn web_server(status: u16) -> String {
    let listener = TcpListener::bind((ASIDE, 0)).expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                // The head, then the body it announces, so the client has
                // sent everything before the answer.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let reason = if status == 200 { "OK" } else { "Not Found" };
                let reply = format!(
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
                    PAGE.len()
                );
                let _ = stream.write_all(reply.as_bytes());
            });
        }
    });
    format!("http://{addr}")
}

/// `variable` names a host under `.invalid`: exit 78 at once, naming the
/// variable, the host and a valid example.
fn unknown_host(variable: &str, path: &str) {
    let fake = FakeFirecrest::start();
    let out = run_with(
        &fake,
        variable,
        &format!("http://nonexistent.invalid{path}"),
    );
    assert_named(
        &fake,
        &out,
        codes::CONFIG,
        &[
            &format!("{variable} names the host nonexistent.invalid, which does not exist"),
            "expected a URL like https://",
        ],
    );
    assert!(out.elapsed < Duration::from_secs(5), "{:?}", out.elapsed);
}

/// `variable` names a loopback port nobody listens on: a short round of
/// retries, then exit 69 naming the variable and the host.
fn nothing_listening(variable: &str, path: &str) {
    let fake = FakeFirecrest::start();
    let port = closed_port();
    let url = format!("http://{ASIDE}:{port}{path}");
    let out = run_with(&fake, variable, &url);
    assert_named(
        &fake,
        &out,
        codes::UNAVAILABLE,
        &[
            &format!("could not reach {ASIDE}:{port} ({variable}={url})"),
            "Connection refused",
        ],
    );
}

#[test]
fn an_unknown_firecrest_host_is_exit_78_at_once() {
    unknown_host("FIRECREST_URL", "");
}

#[test]
fn nothing_listening_at_the_firecrest_url_is_exit_69_after_a_short_retry() {
    nothing_listening("FIRECREST_URL", "");
}

#[test]
fn a_server_that_starts_listening_5_s_late_is_ridden_out() {
    let fake = FakeFirecrest::start();
    fake.outage(Outage::Api, Window::now_for(Duration::from_secs(5)));
    let out = run_with(&fake, "FIRECREST_RUN", "echo reached the job");
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(out.stdout.contains("reached the job"), "{}", out.both());
    assert!(out.elapsed >= Duration::from_secs(5), "{:?}", out.elapsed);
}

#[test]
fn a_web_server_that_is_not_firecrest_is_exit_78() {
    for status in [200, 404] {
        let fake = FakeFirecrest::start();
        let url = web_server(status);
        let out = run_with(&fake, "FIRECREST_URL", &url);
        assert_named(
            &fake,
            &out,
            codes::CONFIG,
            &[
                "FIRECREST_URL does not point at a FirecREST v2 API",
                &format!("{url} answered HTTP {status}: <!DOCTYPE html>"),
                "FirecREST v2 URLs usually end in /v2",
            ],
        );
        assert!(out.elapsed < Duration::from_secs(5), "{:?}", out.elapsed);
    }
}

#[test]
fn a_wrong_path_prefix_is_exit_78_with_a_hint() {
    let fake = FakeFirecrest::start();
    let url = format!("{}/api", fake.url());
    let out = run_with(&fake, "FIRECREST_URL", &url);
    assert_named(
        &fake,
        &out,
        codes::CONFIG,
        &[
            "FIRECREST_URL does not point at a FirecREST v2 API",
            &format!("{url} answered HTTP 404"),
            "usually end in /v2",
        ],
    );
    let url = format!("{}/status", fake.url());
    let out = run_with(&fake, "FIRECREST_URL", &url);
    assert_named(
        &fake,
        &out,
        codes::CONFIG,
        &[
            "FIRECREST_URL does not point at a FirecREST v2 API",
            &format!(
                "the URL ends in /status: give the API root, without the endpoint, e.g. {}",
                fake.url()
            ),
        ],
    );
}

#[test]
fn an_unknown_token_host_is_exit_78_at_once() {
    unknown_host("FIRECREST_TOKEN_URL", "/token");
}

#[test]
fn nothing_listening_at_the_token_url_is_exit_69_after_a_short_retry() {
    nothing_listening("FIRECREST_TOKEN_URL", "/token");
}

#[test]
fn a_token_url_that_answers_a_web_page_is_exit_78() {
    for status in [200, 404] {
        let fake = FakeFirecrest::start();
        let url = format!("{}/token", web_server(status));
        let out = run_with(&fake, "FIRECREST_TOKEN_URL", &url);
        assert_named(
            &fake,
            &out,
            codes::CONFIG,
            &[
                "FIRECREST_TOKEN_URL does not point at an OAuth2 token endpoint",
                &format!("{url} answered HTTP {status}"),
            ],
        );
        assert!(out.elapsed < Duration::from_secs(5), "{:?}", out.elapsed);
    }
}
