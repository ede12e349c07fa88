//! [`ApiError`]: a request the server answered with an error, read from
//! FirecREST's JSON body (or the start of any other body).

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::Method;

use super::models::ErrorBody;
use super::{retry, retry_after_header, short_text};

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

#[cfg(test)]
impl ApiError {
    /// A FirecREST error reply as the client builds it, for tests.
    pub(crate) fn test_reply(status: u16, method: &str, path: &str, message: &str) -> Self {
        ApiError {
            status,
            method: method.into(),
            path: path.into(),
            message: message.into(),
            error_type: Some("error".into()),
            retry_after: None,
            request_id: None,
        }
    }
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

/// An `ApiError` from a FirecREST error reply.
pub(super) fn api_error(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
