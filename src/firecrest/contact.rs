//! First contact: whether each host (the identity provider's token endpoint,
//! FirecREST) has answered yet, and what a failure before that means.
//!
//! The long retry budget of [`super::retry`] carries a run through an outage
//! once it has reached the server; before the first answer from a host, a
//! failure is far more often a mistake in `FIRECREST_URL` or
//! `FIRECREST_TOKEN_URL`, and three minutes of retries would only hide it.
//! So until a host answered, its requests use [`FIRST_CONTACT`] (long enough
//! to ride out a server restart), a name the DNS does not know fails at once,
//! and a reply that is not FirecREST (or not a token endpoint) fails at once;
//! each failure names the variable, the host and what a valid value looks
//! like, as a [`ContactError`] whose kind decides the exit code.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use url::Url;

use super::retry::{GaveUp, RetryPolicy};
use crate::outcome::codes;

/// Retries before a host has answered once: about 12 s in all, enough for a
/// server or a proxy that restarts, short enough that a wrong address is
/// named within seconds. The time budget is what ends it (the client's
/// usual 12 retries of at most 2 s each add up to ~11 s on average), and a
/// restarted server is seen within 2 s of coming back.
pub const FIRST_CONTACT: RetryPolicy = RetryPolicy {
    base_delay: Duration::from_millis(500),
    max_delay: Duration::from_secs(2),
    max_retries: 20,
    budget: Duration::from_secs(12),
};

/// Bound on one attempt before the host has answered: a host that swallows
/// packets costs at most this per attempt, not the full request timeout
/// (so even an attempt started at the end of the budget ends by ~18 s).
pub const FIRST_CONTACT_TIMEOUT: Duration = Duration::from_secs(6);

/// The two hosts a run talks to (S3's presigned URLs come from FirecREST and
/// are not an input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// FirecREST itself (`FIRECREST_URL`).
    Api,
    /// The identity provider's token endpoint (`FIRECREST_TOKEN_URL`).
    Token,
}

impl Host {
    /// The input that names this host.
    pub fn variable(self) -> &'static str {
        match self {
            Host::Api => "FIRECREST_URL",
            Host::Token => "FIRECREST_TOKEN_URL",
        }
    }

    /// What a valid value looks like, for messages.
    fn example(self) -> &'static str {
        match self {
            Host::Api => "https://api.cscs.ch/hpc/firecrest/v2",
            Host::Token => {
                "https://auth.cscs.ch/auth/realms/firecrest-clients/protocol/openid-connect/token"
            }
        }
    }
}

/// Per host: has it answered yet. Shared by the API calls and the token
/// source; the one place that knows.
#[derive(Debug, Default)]
pub struct Contact {
    api: AtomicBool,
    token: AtomicBool,
}

impl Contact {
    fn flag(&self, host: Host) -> &AtomicBool {
        match host {
            Host::Api => &self.api,
            Host::Token => &self.token,
        }
    }

    /// True once `host` gave an answer from the service it should be.
    pub fn answered(&self, host: Host) -> bool {
        self.flag(host).load(Ordering::Relaxed)
    }

    /// Notes the first answer; from now on `host` gets the long budget.
    pub fn mark_answered(&self, host: Host) {
        if !self.flag(host).swap(true, Ordering::Relaxed) {
            tracing::debug!(variable = host.variable(), "first answer from the host");
        }
    }

    /// The retry policy for a request to `host`: `usual` once it answered.
    pub fn policy(&self, host: Host, usual: RetryPolicy) -> RetryPolicy {
        if self.answered(host) {
            return usual;
        }
        RetryPolicy {
            max_retries: usual.max_retries.min(FIRST_CONTACT.max_retries),
            budget: usual.budget.min(FIRST_CONTACT.budget),
            base_delay: usual.base_delay.min(FIRST_CONTACT.base_delay),
            max_delay: usual.max_delay.min(FIRST_CONTACT.max_delay),
        }
    }

    /// `err` as returned by the retry loop, with [`ContactError::Unreachable`]
    /// added when the loop gave up before `host` ever answered (another
    /// request may have reached it meanwhile, so this is asked at the end).
    pub fn unreachable(&self, host: Host, url: &str, err: anyhow::Error) -> anyhow::Error {
        let Some(gave_up) = err.downcast_ref::<GaveUp>() else {
            return err;
        };
        if self.answered(host) {
            return err;
        }
        let waited_s = gave_up.elapsed.as_secs_f64().round() as u64;
        let certificate = is_certificate_error(&err);
        err.context(ContactError::Unreachable {
            host_kind: host,
            host: host_of(url),
            url: url.to_owned(),
            waited_s,
            certificate,
        })
    }

    /// The timeout of one attempt to `host`: `usual` once it answered.
    pub fn timeout(&self, host: Host, usual: Duration) -> Duration {
        if self.answered(host) {
            usual
        } else {
            usual.min(FIRST_CONTACT_TIMEOUT)
        }
    }
}

/// A host that was never reached, or that is not what its variable says.
/// `main` takes the exit code from [`ContactError::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum ContactError {
    #[error(
        "{} names the host {host}, which does not exist (the DNS has no record of it); \
         expected a URL like {}",
        .host_kind.variable(), .host_kind.example()
    )]
    UnknownHost { host_kind: Host, host: String },
    #[error(
        "could not reach {host} ({}={url}) within {waited_s} s{}",
        .host_kind.variable(), tls_hint(.certificate, .host)
    )]
    Unreachable {
        host_kind: Host,
        host: String,
        url: String,
        waited_s: u64,
        /// The TLS certificate could not be verified.
        certificate: bool,
    },
    #[error("{} does not point at a FirecREST v2 API: {url} answered {what}{hint}", Host::Api.variable())]
    NotFirecrest {
        url: String,
        what: String,
        hint: String,
    },
    #[error(
        "{} does not point at an OAuth2 token endpoint: {url} answered {what}; \
         expected a URL like {}",
        Host::Token.variable(), Host::Token.example()
    )]
    NotTokenEndpoint { url: String, what: String },
}

fn tls_hint(certificate: &bool, host: &str) -> String {
    if *certificate {
        format!(
            "; the TLS certificate of {host} could not be verified: if the server uses a \
             private CA, set SSL_CERT_FILE to a PEM file holding that CA's certificate"
        )
    } else {
        String::new()
    }
}

impl ContactError {
    /// 78 for an address that is wrong, 69 for a host that did not answer.
    pub fn exit_code(&self) -> i32 {
        match self {
            ContactError::Unreachable { .. } => codes::UNAVAILABLE,
            ContactError::UnknownHost { .. }
            | ContactError::NotFirecrest { .. }
            | ContactError::NotTokenEndpoint { .. } => codes::CONFIG,
        }
    }
}

/// The host part of a URL, for messages.
pub fn host_of(url: &str) -> String {
    Url::parse(url)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_owned();
            Some(match u.port() {
                Some(port) => format!("{host}:{port}"),
                None => host,
            })
        })
        .unwrap_or_else(|| url.to_owned())
}

/// True when the DNS said the name does not exist (NXDOMAIN or no
/// records): asking again gets the same answer. Read from hickory's error
/// type, which reqwest's resolver puts in the chain.
pub fn is_unknown_host(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<hickory_resolver::ResolveError>()
            .is_some_and(|e| e.is_no_records_found() || e.is_nx_domain())
    })
}

/// True when the TLS handshake failed on the server's certificate. rustls
/// reports it inside an `io::Error`, whose `source()` skips the inner error,
/// so the inner one is looked at directly.
pub fn is_certificate_error(err: &anyhow::Error) -> bool {
    fn rustls_certificate(e: &(dyn std::error::Error + 'static)) -> bool {
        matches!(
            e.downcast_ref::<rustls::Error>(),
            Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
        )
    }
    err.chain().any(|cause| {
        rustls_certificate(cause)
            || cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| rustls_certificate(inner))
    })
}

/// True for a reply body that is a web page rather than an API's JSON.
pub fn looks_like_html(content_type: Option<&str>, body: &[u8]) -> bool {
    content_type.is_some_and(|t| t.to_ascii_lowercase().contains("text/html"))
        || body.trim_ascii_start().starts_with(b"<")
}

/// True when `body` is FirecREST's error body (`errorType`, `message`).
pub fn is_firecrest_error_body(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.as_object().map(|o| o.contains_key("errorType")))
        .unwrap_or(false)
}

/// A hint for a FirecREST URL that looks like a known mistake, starting
/// with "; " (or empty): the `/v2` that CSCS's URLs end in left out, or an
/// endpoint such as `/status` added.
pub fn url_hint(base_url: &str) -> String {
    let Ok(url) = Url::parse(base_url) else {
        return String::new();
    };
    let path = url.path().trim_end_matches('/').to_ascii_lowercase();
    let last = path.rsplit('/').next().unwrap_or_default();
    let trimmed = base_url.trim_end_matches('/');
    if matches!(last, "status" | "systems" | "compute" | "filesystem") {
        let cut = trimmed
            .rsplit_once('/')
            .map(|(head, _)| head)
            .unwrap_or(trimmed);
        let cut = cut.strip_suffix("/status").unwrap_or(cut);
        return format!(
            "; the URL ends in /{last}: give the API root, without the endpoint, e.g. {cut}"
        );
    }
    if last != "v2" {
        return format!(
            "; FirecREST v2 URLs usually end in /v2 (e.g. {}); is it missing from {trimmed}?",
            Host::Api.example()
        );
    }
    String::new()
}

/// How a reply that is not the expected service is described: its status
/// and the start of its body.
pub fn describe_reply(status: u16, body: &[u8]) -> String {
    format!("HTTP {status}: {}", super::short_text(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_the_known_url_mistakes() {
        assert!(url_hint("https://api.cscs.ch/hpc/firecrest").contains("end in /v2"));
        assert!(url_hint("http://127.0.0.1:8000").contains("end in /v2"));
        let hint = url_hint("https://api.cscs.ch/hpc/firecrest/v2/status");
        assert!(hint.contains("ends in /status"), "{hint}");
        assert!(
            hint.contains("e.g. https://api.cscs.ch/hpc/firecrest/v2"),
            "{hint}"
        );
        let hint = url_hint("https://api.cscs.ch/hpc/firecrest/v2/status/systems/");
        assert!(
            hint.contains("e.g. https://api.cscs.ch/hpc/firecrest/v2"),
            "{hint}"
        );
        assert_eq!(url_hint("https://api.cscs.ch/hpc/firecrest/v2/"), "");
    }

    #[test]
    fn the_first_contact_policy_is_short_until_the_host_answered() {
        let contact = Contact::default();
        let usual = RetryPolicy::default();
        assert_eq!(
            contact.policy(Host::Api, usual).budget,
            FIRST_CONTACT.budget
        );
        assert_eq!(
            contact.timeout(Host::Api, Duration::from_secs(45)),
            FIRST_CONTACT_TIMEOUT
        );
        contact.mark_answered(Host::Token);
        assert_eq!(contact.policy(Host::Token, usual), usual);
        assert_eq!(
            contact.policy(Host::Api, usual).budget,
            FIRST_CONTACT.budget
        );
        contact.mark_answered(Host::Api);
        assert_eq!(contact.policy(Host::Api, usual), usual);
        // An output read's own, shorter policy stays as short.
        assert_eq!(
            Contact::default()
                .policy(Host::Api, RetryPolicy::OUTPUT_READ)
                .max_retries,
            1
        );
    }

    #[test]
    fn bodies_are_told_apart() {
        assert!(looks_like_html(Some("text/html; charset=utf-8"), b"x"));
        assert!(looks_like_html(None, b"\n  <!DOCTYPE html><html>"));
        assert!(!looks_like_html(
            Some("application/json"),
            br#"{"systems":[]}"#
        ));
        assert!(is_firecrest_error_body(
            br#"{"errorType":"error","message":"System not found"}"#
        ));
        assert!(!is_firecrest_error_body(br#"{"detail":"Not Found"}"#));
        assert!(!is_firecrest_error_body(b"<html>"));
    }

    #[tokio::test]
    async fn an_invalid_name_is_an_unknown_host() {
        // hickory answers names under .invalid itself (RFC 6761): no network.
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .hickory_dns(true)
            .build()
            .unwrap();
        let err = http
            .get("http://nonexistent.invalid/status/systems")
            .send()
            .await
            .expect_err("no such host");
        let err = anyhow::Error::new(err).context("GET /status/systems: request failed");
        assert!(is_unknown_host(&err), "{err:#}");
        assert!(!is_certificate_error(&err));
    }
}
