//! The OAuth2 token endpoint (Keycloak-shaped client-credentials grant) and
//! the bearer-token check FirecREST applies to every route but liveness,
//! with the recorded 401 messages.

use std::time::{Duration, Instant};

use serde_json::json;

use super::http::{Request, Response};
use super::{error_body, AuthCheck, State};

fn token_json(status: u16, v: serde_json::Value) -> Response {
    Response::new(
        status,
        "application/json; charset=utf-8",
        serde_json::to_vec(&v).unwrap(),
    )
}

/// `POST .../token`: form client credentials or HTTP Basic.
pub fn token_endpoint(st: &mut State, req: &Request) -> Response {
    if req.method != "POST" || !req.path.ends_with("/token") {
        return Response::new(404, "text/plain", b"Not Found".to_vec());
    }
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&req.body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let field = |n: &str| form.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut id = field("client_id");
    let mut secret = field("client_secret");
    if let Some(basic) = req
        .header("authorization")
        .and_then(|h| h.strip_prefix("Basic "))
    {
        if let Some((i, s)) = base64_decode(basic.trim())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| {
                t.split_once(':')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
        {
            id = Some(i);
            secret = Some(s);
        }
    }
    if field("grant_type").as_deref() != Some("client_credentials") {
        return token_json(
            400,
            json!({"error": "unsupported_grant_type", "error_description": "Unsupported grant_type"}),
        );
    }
    if id.as_deref() != Some(st.settings.client_id.as_str())
        || secret.as_deref() != Some(st.settings.client_secret.as_str())
    {
        return token_json(
            401,
            json!({"error": "invalid_client", "error_description": "client authentication failed"}),
        );
    }
    st.token_seq += 1;
    let token = format!("tok-{}", st.token_seq);
    let ttl = st.settings.token_ttl;
    st.tokens
        .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
    token_json(
        200,
        json!({"access_token": token, "expires_in": ttl, "refresh_expires_in": 0,
               "token_type": "Bearer", "not-before-policy": 0}),
    )
}

/// Checks the bearer token; the error reply when it is not acceptable.
pub fn check_bearer(st: &State, req: &Request) -> (AuthCheck, Option<Response>) {
    let fail =
        |check: AuthCheck, msg: &str| (check, Some(Response::json(401, &error_body(msg, None))));
    let Some(token) = req
        .header("authorization")
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
    else {
        return fail(AuthCheck::Missing, "Not authenticated");
    };
    let Some(expiry) = st.tokens.get(token) else {
        return fail(AuthCheck::Invalid, "Access token is invalid.");
    };
    let now = Instant::now();
    if *expiry <= now {
        return fail(AuthCheck::Expired, "Access token expired");
    }
    if *expiry - now < Duration::from_secs(st.settings.min_token_ttl) {
        return fail(
            AuthCheck::ExpiresSoon,
            "Access token expires too soon (less than 30s remaining).",
        );
    }
    (AuthCheck::Valid, None)
}

/// Standard base64 (padding optional); None on bad input.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}
