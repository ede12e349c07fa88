//! Access tokens for FirecREST: the OAuth2 client-credentials grant (form
//! fields first, HTTP Basic if the provider wants that), or a static token
//! given by the user. Tokens are cached and refreshed well before the server
//! would reject them (it refuses tokens with under 30 s left), so a job of any
//! length runs on 5-minute tokens. One refresh at a time: callers that find
//! the token stale wait on the same lock instead of all asking the provider.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::Mutex;

use super::contact::{self, Contact, ContactError, Host};
use super::models::{TokenErrorBody, TokenResponse};
use super::retry::{self, Attempt, Failure, Retry, RetryPolicy};
use super::ApiError;
use crate::config::Credentials;
use crate::secret::Secret;

/// Called with every token obtained, so the caller can mask it in CI logs.
pub type TokenObserver = Arc<dyn Fn(&str) + Send + Sync>;

/// Lifetime assumed when the provider does not say (CSCS hands out 300 s).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// Credentials a user must fix: found anywhere in an error's chain (as the
/// error or as a context), they make the exit code 77.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "the identity provider at {token_url} rejected the client credentials \
         (HTTP {status}: {detail}); check FIRECREST_CLIENT_ID and FIRECREST_CLIENT_SECRET"
    )]
    ClientRejected {
        token_url: String,
        status: u16,
        detail: String,
    },
    #[error(
        "FirecREST rejected the access token given in FIRECREST_ACCESS_TOKEN ({message}); \
         a static token cannot be refreshed: give a fresh one, or set \
         FIRECREST_CLIENT_ID and FIRECREST_CLIENT_SECRET instead"
    )]
    StaticTokenRejected { message: String },
    /// Attached as context to FirecREST's 401 for a token just obtained.
    #[error("FirecREST rejected a freshly obtained access token")]
    FreshTokenRejected,
    /// Attached as context to FirecREST's 400 for a valid token it cannot
    /// use (no `preferred_username` claim): the identity provider's client
    /// is set up wrong, which no retry or refresh fixes.
    #[error("FirecREST cannot use the access token")]
    TokenUnusable,
}

impl AuthError {
    /// The credentials problem a FirecREST error reply reports, if any (a
    /// 401 is handled by the request loop, which refreshes the token once).
    /// The server gives no code for it, so its message is read, here only.
    pub fn from_reply(api: &ApiError) -> Option<AuthError> {
        let about_token = api.message.to_ascii_lowercase().contains("token");
        (api.status == 400 && about_token).then_some(AuthError::TokenUnusable)
    }
}

/// How the client id and secret travel to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientAuthStyle {
    /// `client_id` and `client_secret` as form fields.
    Form,
    /// `Authorization: Basic` (RFC 6749 section 2.3.1).
    Basic,
}

struct CachedToken {
    token: Secret,
    obtained: Instant,
    lifetime: Duration,
}

impl CachedToken {
    fn is_fresh(&self) -> bool {
        self.obtained.elapsed() + refresh_margin(self.lifetime) < self.lifetime
    }
}

/// How long before expiry to refresh: max(60 s, 20 % of the lifetime), but
/// never more than half of it, so very short tokens are still reused.
pub(crate) fn refresh_margin(lifetime: Duration) -> Duration {
    Duration::from_secs(60).max(lifetime / 5).min(lifetime / 2)
}

#[derive(Default)]
struct State {
    cached: Option<CachedToken>,
    /// The style that worked last time, so a refresh goes straight to it.
    style: Option<ClientAuthStyle>,
    static_observed: bool,
}

/// Hands out valid tokens for one [`Credentials`].
pub(crate) struct TokenSource {
    source: Credentials,
    http: reqwest::Client,
    timeout: Duration,
    retry: RetryPolicy,
    /// Whether the token endpoint answered yet (shared with the client).
    contact: Arc<Contact>,
    state: Mutex<State>,
    observer: RwLock<Option<TokenObserver>>,
}

impl TokenSource {
    pub(crate) fn new(
        source: Credentials,
        http: reqwest::Client,
        timeout: Duration,
        retry: RetryPolicy,
        contact: Arc<Contact>,
    ) -> Self {
        Self {
            source,
            http,
            timeout,
            retry,
            contact,
            state: Mutex::new(State::default()),
            observer: RwLock::new(None),
        }
    }

    pub(crate) fn set_observer(&self, observer: TokenObserver) {
        if let Ok(mut slot) = self.observer.write() {
            *slot = Some(observer);
        }
    }

    fn observe(&self, token: &Secret) {
        let observer = self.observer.read().ok().and_then(|slot| slot.clone());
        if let Some(observer) = observer {
            observer(token.expose());
        }
    }

    /// False for a static token: a 401 is then final.
    pub(crate) fn can_refresh(&self) -> bool {
        matches!(self.source, Credentials::ClientCredentials { .. })
    }

    /// A token with enough life left for the next request.
    pub(crate) async fn token(&self) -> Result<Secret> {
        let mut state = self.state.lock().await;
        match &self.source {
            Credentials::AccessToken(token) => {
                if !state.static_observed {
                    state.static_observed = true;
                    self.observe(token);
                }
                Ok(token.clone())
            }
            Credentials::ClientCredentials { .. } => {
                if let Some(cached) = state.cached.as_ref().filter(|c| c.is_fresh()) {
                    return Ok(cached.token.clone());
                }
                self.refresh(&mut state).await
            }
        }
    }

    /// The cached token's remaining life; `None` without one (a static token).
    pub(crate) async fn remaining(&self) -> Option<Duration> {
        let state = self.state.lock().await;
        let cached = state.cached.as_ref()?;
        Some(cached.lifetime.saturating_sub(cached.obtained.elapsed()))
    }

    /// After FirecREST answered 401 to `rejected`: a new token, unless another
    /// caller already replaced it meanwhile.
    pub(crate) async fn refresh_after_rejection(&self, rejected: &Secret) -> Result<Secret> {
        let mut state = self.state.lock().await;
        if let Some(cached) = &state.cached {
            if cached.token != *rejected && cached.is_fresh() {
                return Ok(cached.token.clone());
            }
        }
        self.refresh(&mut state).await
    }

    async fn refresh(&self, state: &mut State) -> Result<Secret> {
        let Credentials::ClientCredentials {
            token_url,
            client_id,
            client_secret,
        } = &self.source
        else {
            anyhow::bail!("a static access token cannot be refreshed");
        };
        let obtained = Instant::now();
        let reply = self
            .fetch(state, token_url, client_id, client_secret)
            .await
            .with_context(|| format!("failed to get an access token from {token_url}"))?;
        let token = Secret::new(reply.access_token);
        self.observe(&token);
        let lifetime = reply
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_LIFETIME);
        tracing::debug!(lifetime_s = lifetime.as_secs(), "obtained an access token");
        state.cached = Some(CachedToken {
            token: token.clone(),
            obtained,
            lifetime,
        });
        Ok(token)
    }

    /// One grant, retried on transient failures within the retry budget.
    async fn fetch(
        &self,
        state: &mut State,
        token_url: &str,
        client_id: &str,
        client_secret: &Secret,
    ) -> Result<TokenResponse> {
        let shown_url = super::url_without_query(token_url);
        let policy = self.contact.policy(Host::Token, self.retry);
        let mut grant = GrantAttempt {
            source: self,
            state,
            token_url,
            client_id,
            client_secret,
        };
        Retry::new(policy, format!("POST {shown_url}"))
            .note("retrying the token request")
            .run(&mut grant)
            .await
            .map_err(|err| self.contact.unreachable(Host::Token, &shown_url, err))
    }

    /// Tries the remembered style, or form first and then Basic.
    async fn grant(
        &self,
        state: &mut State,
        token_url: &str,
        client_id: &str,
        client_secret: &Secret,
    ) -> Result<TokenResponse> {
        let first = state.style.unwrap_or(ClientAuthStyle::Form);
        let rejection = match self
            .post(first, token_url, client_id, client_secret)
            .await?
        {
            Grant::Token(reply) => {
                state.style = Some(first);
                return Ok(reply);
            }
            Grant::Rejected { status, detail } => (status, detail),
        };
        if state.style.is_none() && first == ClientAuthStyle::Form {
            tracing::debug!("token endpoint rejected form client auth, trying HTTP Basic");
            let basic = ClientAuthStyle::Basic;
            if let Grant::Token(reply) = self
                .post(basic, token_url, client_id, client_secret)
                .await?
            {
                state.style = Some(basic);
                return Ok(reply);
            }
        }
        Err(AuthError::ClientRejected {
            token_url: token_url.to_owned(),
            status: rejection.0,
            detail: rejection.1,
        }
        .into())
    }

    async fn post(
        &self,
        style: ClientAuthStyle,
        token_url: &str,
        client_id: &str,
        client_secret: &Secret,
    ) -> Result<Grant> {
        let request_id = super::new_request_id();
        let request = self
            .http
            .post(token_url)
            .timeout(self.contact.timeout(Host::Token, self.timeout))
            .header(reqwest::header::ACCEPT, "application/json")
            .header("X-Request-ID", &request_id);
        let request = match style {
            ClientAuthStyle::Form => request.form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", client_secret.expose()),
            ]),
            ClientAuthStyle::Basic => request
                .basic_auth(client_id, Some(client_secret.expose()))
                .form(&[("grant_type", "client_credentials")]),
        };
        let shown_url = super::url_without_query(token_url);
        let response = request
            .send()
            .await
            .map_err(|e| anyhow::Error::new(e.without_url()))
            .with_context(|| {
                format!("POST {shown_url} (request id {request_id}): request failed")
            })?;
        let status = response.status().as_u16();
        tracing::debug!(path = %shown_url, status, request_id, "token request");
        let retry_after = super::retry_after_header(response.headers());
        let html_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| contact::looks_like_html(Some(t), b""));
        let body = response
            .bytes()
            .await
            .map_err(|e| anyhow::Error::new(e.without_url()))
            .with_context(|| format!("POST {shown_url}: reading the reply failed"))?;
        if !self.contact.answered(Host::Token) {
            self.first_reply(&shown_url, status, html_type, &body)?;
        }
        if (200..300).contains(&status) {
            let reply: TokenResponse = serde_json::from_slice(&body).with_context(|| {
                format!("POST {shown_url}: the reply is not an OAuth2 token response")
            })?;
            anyhow::ensure!(
                !reply.access_token.is_empty(),
                "POST {shown_url}: the reply has no access_token"
            );
            return Ok(Grant::Token(reply));
        }
        let parsed: Option<TokenErrorBody> = serde_json::from_slice(&body).ok();
        if matches!(status, 400 | 401) {
            let detail = match parsed {
                Some(e) if !e.error.is_empty() => match e.error_description {
                    Some(d) if !d.is_empty() => format!("{}: {d}", e.error),
                    _ => e.error,
                },
                _ => super::short_text(&body),
            };
            return Ok(Grant::Rejected { status, detail });
        }
        let message = match parsed {
            Some(e) if !e.error.is_empty() => e.error,
            _ => super::short_text(&body),
        };
        Err(ApiError {
            status,
            method: "POST".into(),
            path: shown_url,
            message,
            error_type: None,
            retry_after,
            request_id: None,
        }
        .into())
    }
}

impl TokenSource {
    /// Judges the first reply from the token endpoint's host: a token
    /// reply, or the provider refusing the credentials (400, 401), is the
    /// endpoint answering; a 404, a web page, or a success without a token
    /// means the URL points elsewhere (78); a transient status says nothing yet.
    fn first_reply(&self, url: &str, status: u16, html_type: bool, body: &[u8]) -> Result<()> {
        let html = html_type || contact::looks_like_html(None, body);
        let transient = retry::is_transient_status(status);
        let foreign = match status {
            200..=299 => serde_json::from_slice::<TokenResponse>(body).is_err(),
            400 | 401 => false,
            404 => true,
            _ => html && !transient,
        };
        if foreign {
            return Err(ContactError::NotTokenEndpoint {
                url: url.to_owned(),
                what: contact::describe_reply(status, body),
            }
            .into());
        }
        if !transient {
            self.contact.mark_answered(Host::Token);
        }
        Ok(())
    }
}

/// The token request, as the retry loop sees it.
struct GrantAttempt<'a> {
    source: &'a TokenSource,
    state: &'a mut State,
    token_url: &'a str,
    client_id: &'a str,
    client_secret: &'a Secret,
}

impl Attempt for GrantAttempt<'_> {
    type Output = TokenResponse;

    async fn attempt(&mut self) -> Result<TokenResponse, Failure> {
        let source = self.source;
        let err = match source
            .grant(
                self.state,
                self.token_url,
                self.client_id,
                self.client_secret,
            )
            .await
        {
            Ok(reply) => return Ok(reply),
            Err(err) => err,
        };
        if !source.contact.answered(Host::Token) && contact::is_unknown_host(&err) {
            return Err(Failure::Fatal(err.context(ContactError::UnknownHost {
                host_kind: Host::Token,
                host: contact::host_of(self.token_url),
            })));
        }
        Err(Failure::Judge(err))
    }
}

enum Grant {
    Token(TokenResponse),
    Rejected { status: u16, detail: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_400_about_the_token_is_a_credentials_problem() {
        let reply = |status: u16, message: &str| {
            ApiError::test_reply(status, "GET", "/status/daint/userinfo", message)
        };
        // From the recorded auth_errors.json.
        let claim = "Authentication token 'preferred_username' claim is missing";
        assert!(matches!(
            AuthError::from_reply(&reply(400, claim)),
            Some(AuthError::TokenUnusable)
        ));
        assert!(AuthError::from_reply(&reply(400, "Invalid path")).is_none());
        assert!(AuthError::from_reply(&reply(500, claim)).is_none());
    }

    #[test]
    fn margin_is_a_minute_for_five_minute_tokens() {
        assert_eq!(
            refresh_margin(Duration::from_secs(300)),
            Duration::from_secs(60)
        );
        // 20 % once that is more than a minute.
        assert_eq!(
            refresh_margin(Duration::from_secs(3600)),
            Duration::from_secs(720)
        );
        // Short tokens are still used for half their life.
        assert_eq!(
            refresh_margin(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn cached_token_goes_stale_at_the_margin() {
        let fresh = CachedToken {
            token: Secret::new("t"),
            obtained: Instant::now(),
            lifetime: Duration::from_secs(300),
        };
        assert!(fresh.is_fresh());
        let old = CachedToken {
            token: Secret::new("t"),
            obtained: Instant::now() - Duration::from_secs(241),
            lifetime: Duration::from_secs(300),
        };
        assert!(!old.is_fresh());
    }
}
