//! What reaching the cluster needs: the backend, the FirecREST URL, system
//! and credentials, placement, poll settings. `cancel` and `check` read only this.

use std::collections::BTreeMap;

use super::inputs::{self, Inputs, TOKEN_URL_ALIAS};
use super::slurm::{self, Resources};
use super::values::{
    parse_backend, parse_http_url, parse_remote_dir, parse_system, parse_transfer_threshold,
    ConfigErrors, Problems,
};
use super::{BackendKind, PollSettings, TransferThreshold};
use crate::secret::Secret;

/// How the tool proves who it is to FirecREST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// OAuth2 client-credentials grant; tokens are fetched and refreshed.
    ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: Secret,
    },
    /// A token obtained elsewhere; it cannot be refreshed.
    AccessToken(Secret),
}

/// Everything the FirecREST backend needs to reach the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirecrestSettings {
    /// `http(s)://...` without a trailing slash, so paths can be appended.
    pub url: String,
    /// The cluster name as FirecREST knows it.
    pub system: String,
    pub credentials: Credentials,
}

/// What reaching the cluster needs: the first configuration phase, all that
/// `cancel` and `check` read. `Debug` is safe to log.
#[derive(Debug, Clone)]
pub struct Connection {
    pub backend: BackendKind,
    /// `Some` for the firecrest backend (see [`Config::firecrest`](super::Config::firecrest)).
    pub firecrest: Option<FirecrestSettings>,
    /// Placement and resources, which `check` holds against the cluster.
    pub resources: Resources,
    /// Absolute, without a trailing slash; `None` lets the backend pick scratch.
    pub remote_dir: Option<String>,
    pub poll: PollSettings,
    /// When the S3 transfer carries the workspace (see [`TransferThreshold`]).
    pub transfer_threshold: TransferThreshold,
}

impl Connection {
    /// Reads and validates only what reaching the cluster needs, the same
    /// way [`Config::from_env`](super::Config::from_env) does: `cancel` and `check` need no command,
    /// no workspace and no job inputs. No I/O.
    pub fn from_env(env: &BTreeMap<String, String>) -> Result<Connection, ConfigErrors> {
        let mut p = Problems::default();
        let connection = connection(&Inputs::new(env), false, &mut p);
        p.into_result()?;
        Ok(connection)
    }
}

/// The first phase of the configuration, shared by [`Connection::from_env`]
/// and [`Config::from_env`]: the backend, how to reach it, and the inputs
/// the cluster judges (placement and base directory).
pub(super) fn connection(raw: &Inputs, dry_run: bool, p: &mut Problems) -> Connection {
    // `None` only when the value is invalid: unset means firecrest, never a
    // silent fallback to another backend.
    let backend = match raw.get(&inputs::BACKEND) {
        None => Some(BackendKind::Firecrest),
        Some(value) => p.parse(inputs::BACKEND.env, Some(value), parse_backend),
    };
    // An invalid backend was reported; checking firecrest inputs for it
    // would only add noise.
    let firecrest = match backend {
        Some(BackendKind::Firecrest) => firecrest_settings(raw, dry_run, p),
        Some(BackendKind::Slurm | BackendKind::Local) | None => None,
    };
    Connection {
        backend: backend.unwrap_or(BackendKind::Firecrest),
        firecrest,
        resources: slurm::resources(raw, p),
        remote_dir: p.input(raw, &inputs::REMOTE_DIR, parse_remote_dir),
        poll: super::poll_settings(raw, p),
        transfer_threshold: p
            .input(raw, &inputs::TRANSFER_THRESHOLD, parse_transfer_threshold)
            .unwrap_or_default(),
    }
}

// ---------------------------------------------------------------- firecrest

fn firecrest_settings(raw: &Inputs, dry_run: bool, p: &mut Problems) -> Option<FirecrestSettings> {
    let url = p
        .input(raw, &inputs::URL, parse_http_url)
        .map(|url| url.trim_end_matches('/').to_string());
    let system = p.input(raw, &inputs::SYSTEM, parse_system);
    if !dry_run {
        if raw.get(&inputs::URL).is_none() {
            p.add(
                &["FIRECREST_URL"],
                "is not set; the firecrest backend needs the FirecREST v2 API base URL, e.g. https://api.cscs.ch/hpc/firecrest/v2 (or choose FIRECREST_BACKEND=slurm or local, or FIRECREST_DRY_RUN=true)",
            );
        }
        if raw.get(&inputs::SYSTEM).is_none() {
            p.add(
                &["FIRECREST_SYSTEM"],
                "is not set; the firecrest backend needs the cluster name as FirecREST knows it, e.g. daint",
            );
        }
    }
    let credentials = credentials(raw, dry_run, p);
    Some(FirecrestSettings {
        url: url?,
        system: system?,
        credentials: credentials?,
    })
}

/// Either a ready token or client id + secret + token URL. A dry run needs
/// none, but what is given must still be valid.
fn credentials(raw: &Inputs, dry_run: bool, p: &mut Problems) -> Option<Credentials> {
    let (token_url_var, token_url_raw) = match raw.get(&inputs::TOKEN_URL) {
        Some(url) => ("FIRECREST_TOKEN_URL", Some(url)),
        None => (TOKEN_URL_ALIAS, raw.platform(TOKEN_URL_ALIAS)),
    };
    let token_url = p.parse(token_url_var, token_url_raw, parse_http_url);
    let client_id = p.input(raw, &inputs::CLIENT_ID, |id| {
        if id.chars().any(char::is_whitespace) {
            Err("must be an OAuth2 client id without spaces".to_string())
        } else {
            Ok(id.to_string())
        }
    });
    let client_secret = secret_value(
        p,
        "FIRECREST_CLIENT_SECRET",
        raw.get(&inputs::CLIENT_SECRET),
    );
    let access_token = secret_value(p, "FIRECREST_ACCESS_TOKEN", raw.get(&inputs::ACCESS_TOKEN));

    if raw.get(&inputs::ACCESS_TOKEN).is_some() {
        if raw.get(&inputs::CLIENT_SECRET).is_some() {
            p.add(
                &["FIRECREST_ACCESS_TOKEN", "FIRECREST_CLIENT_SECRET"],
                "are both set; give either a ready access token or client credentials (FIRECREST_CLIENT_ID, FIRECREST_CLIENT_SECRET, FIRECREST_TOKEN_URL), not both",
            );
            return None;
        }
        return access_token.map(Credentials::AccessToken);
    }

    let given = [
        raw.get(&inputs::CLIENT_ID).is_some(),
        raw.get(&inputs::CLIENT_SECRET).is_some(),
        token_url_raw.is_some(),
    ];
    if given.iter().all(|g| !g) {
        if !dry_run {
            p.add(
                &[
                    "FIRECREST_CLIENT_ID",
                    "FIRECREST_CLIENT_SECRET",
                    "FIRECREST_TOKEN_URL",
                    "FIRECREST_ACCESS_TOKEN",
                ],
                "no credentials; set FIRECREST_CLIENT_ID, FIRECREST_CLIENT_SECRET and FIRECREST_TOKEN_URL (OAuth2 client credentials, the secret from a masked CI secret), or FIRECREST_ACCESS_TOKEN",
            );
        }
        return None;
    }
    if !dry_run {
        if raw.get(&inputs::CLIENT_ID).is_none() {
            p.add(
                &["FIRECREST_CLIENT_ID"],
                "is not set; client credentials need the OAuth2 client id",
            );
        }
        if raw.get(&inputs::CLIENT_SECRET).is_none() {
            p.add(
                &["FIRECREST_CLIENT_SECRET"],
                "is not set; client credentials need the OAuth2 client secret (from a masked CI secret)",
            );
        }
        if token_url_raw.is_none() {
            p.add(
                &["FIRECREST_TOKEN_URL", TOKEN_URL_ALIAS],
                "is not set; client credentials need the identity provider's token endpoint, e.g. https://auth.example.org/realms/r/protocol/openid-connect/token",
            );
        }
    }
    Some(Credentials::ClientCredentials {
        token_url: token_url?,
        client_id: client_id?,
        client_secret: client_secret?,
    })
}

/// A secret: checked like any one-line value, but never shown in a message.
fn secret_value(p: &mut Problems, var: &'static str, raw: Option<&str>) -> Option<Secret> {
    let value = raw?.trim();
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        p.add(
            &[var],
            "must be one word without spaces or control characters (check the CI secret for a stray newline)",
        );
        return None;
    }
    Some(Secret::new(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    // ------------------------------------------------ firecrest

    #[test]
    fn firecrest_with_client_credentials() {
        let fx = fixture();
        let c = ok(&fx, FIRECREST_OK);
        let settings = c.firecrest.unwrap();
        assert_eq!(settings.url, "https://api.example.org/firecrest/v2");
        assert_eq!(settings.system, "daint");
        let Credentials::ClientCredentials {
            token_url,
            client_id,
            client_secret,
        } = settings.credentials
        else {
            panic!("client credentials expected");
        };
        assert_eq!(token_url, "https://auth.example.org/token");
        assert_eq!(client_id, "ci-client");
        assert_eq!(client_secret.expose(), "s3cr3t-client-value");
    }

    #[test]
    fn firecrest_with_an_access_token() {
        let fx = fixture();
        let c = ok(
            &fx,
            &[
                ("FIRECREST_BACKEND", "firecrest"),
                ("FIRECREST_URL", "http://localhost:8000"),
                ("FIRECREST_SYSTEM", "cluster-1"),
                ("FIRECREST_ACCESS_TOKEN", " eyJ.token.sig\n"),
            ],
        );
        let settings = c.firecrest.unwrap();
        assert_eq!(settings.url, "http://localhost:8000");
        assert_eq!(
            settings.credentials,
            Credentials::AccessToken(Secret::new("eyJ.token.sig"))
        );
    }

    #[test]
    fn token_url_alias() {
        let fx = fixture();
        let token_url = |extra: &[(&str, &str)]| {
            let mut vars: Vec<(&str, &str)> = FIRECREST_OK
                .iter()
                .filter(|(k, _)| *k != "FIRECREST_TOKEN_URL")
                .copied()
                .collect();
            vars.extend_from_slice(extra);
            match ok(&fx, &vars).firecrest.unwrap().credentials {
                Credentials::ClientCredentials { token_url, .. } => token_url,
                Credentials::AccessToken(_) => panic!("client credentials expected"),
            }
        };
        assert_eq!(
            token_url(&[("AUTH_TOKEN_URL", "https://alias/token")]),
            "https://alias/token"
        );
        assert_eq!(
            token_url(&[
                ("AUTH_TOKEN_URL", "https://alias/token"),
                ("FIRECREST_TOKEN_URL", "https://main/token"),
            ]),
            "https://main/token"
        );
        assert_eq!(
            token_url(&[
                ("AUTH_TOKEN_URL", "not a url"),
                ("FIRECREST_TOKEN_URL", "https://main/t")
            ]),
            "https://main/t",
            "the alias is not even read when FIRECREST_TOKEN_URL is set"
        );
        assert_eq!(
            token_url(&[
                ("AUTH_TOKEN_URL", "https://alias/token"),
                ("FIRECREST_TOKEN_URL", "")
            ]),
            "https://alias/token",
            "an empty FIRECREST_TOKEN_URL is unset"
        );
        let mut vars = FIRECREST_OK.to_vec();
        vars.retain(|(k, _)| *k != "FIRECREST_TOKEN_URL");
        vars.push(("AUTH_TOKEN_URL", "ftp://alias"));
        let found = problems(&fx, &vars);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].variables, ["AUTH_TOKEN_URL"]);
    }

    #[test]
    fn firecrest_urls_are_validated() {
        let fx = fixture();
        for var in ["FIRECREST_URL", "FIRECREST_TOKEN_URL"] {
            for bad in [
                "api.example.org",
                "ftp://api.example.org",
                "https://user:pw@api.example.org",
                "https://api.example.org/v2?x=1",
                "https://api.example.org/v2#frag",
                "https://",
            ] {
                let mut vars = FIRECREST_OK.to_vec();
                vars.push((var, bad));
                let found = problems(&fx, &vars);
                assert_eq!(found.len(), 1, "{var}={bad}: {found:?}");
                assert_eq!(found[0].variables, [var]);
                assert!(
                    found[0].message.contains("http:// or https:// URL"),
                    "{}",
                    found[0]
                );
            }
        }
        let mut vars = FIRECREST_OK.to_vec();
        vars.push(("FIRECREST_SYSTEM", "da int"));
        let found = problems(&fx, &vars);
        assert_eq!(found[0].variables, ["FIRECREST_SYSTEM"]);
        assert!(found[0].message.contains("cluster name"));
    }

    #[test]
    fn firecrest_backend_requires_url_system_and_credentials() {
        let fx = fixture();
        let found = problems(&fx, &[("FIRECREST_BACKEND", "firecrest")]);
        let named: Vec<Vec<&str>> = found.iter().map(|p| p.variables.clone()).collect();
        assert_eq!(
            named,
            [
                vec!["FIRECREST_URL"],
                vec![
                    "FIRECREST_CLIENT_ID",
                    "FIRECREST_CLIENT_SECRET",
                    "FIRECREST_TOKEN_URL",
                    "FIRECREST_ACCESS_TOKEN"
                ],
                vec!["FIRECREST_SYSTEM"],
            ],
            "in the order of the input table"
        );
        assert!(
            found[0].message.contains("https://"),
            "says what a URL looks like"
        );
        assert!(
            found[0].message.contains("FIRECREST_BACKEND"),
            "offers the other backends"
        );

        // The default backend is firecrest: a missing URL is an error, never local.
        let mut env = env_with(&fx, &[]);
        env.remove("FIRECREST_BACKEND");
        let errors = Config::from_env(&env, &fx.ws, &CliFlags::default()).unwrap_err();
        assert!(errors
            .problems
            .iter()
            .any(|p| p.variables == ["FIRECREST_URL"]));
    }

    #[test]
    fn partial_client_credentials_name_what_is_missing() {
        let fx = fixture();
        for missing in [
            "FIRECREST_CLIENT_ID",
            "FIRECREST_CLIENT_SECRET",
            "FIRECREST_TOKEN_URL",
        ] {
            let vars: Vec<(&str, &str)> = FIRECREST_OK
                .iter()
                .filter(|(k, _)| *k != missing)
                .copied()
                .collect();
            let found = problems(&fx, &vars);
            assert_eq!(found.len(), 1, "{missing}: {found:?}");
            assert_eq!(found[0].variables[0], missing);
            assert!(found[0].message.starts_with("is not set"));
        }
    }

    #[test]
    fn access_token_and_client_secret_together_are_ambiguous() {
        let fx = fixture();
        let mut vars = FIRECREST_OK.to_vec();
        vars.push(("FIRECREST_ACCESS_TOKEN", "tok"));
        let found = problems(&fx, &vars);
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].variables,
            ["FIRECREST_ACCESS_TOKEN", "FIRECREST_CLIENT_SECRET"]
        );
    }

    #[test]
    fn secrets_with_inner_whitespace_are_refused_without_showing_them() {
        let fx = fixture();
        let mut vars = FIRECREST_OK.to_vec();
        vars.push(("FIRECREST_CLIENT_SECRET", "abc\ndef-secret"));
        let errors = load(&fx, &vars).unwrap_err();
        assert_eq!(errors.problems.len(), 1);
        assert_eq!(errors.problems[0].variables, ["FIRECREST_CLIENT_SECRET"]);
        assert!(!errors.to_string().contains("def-secret"));
    }

    #[test]
    fn dry_run_needs_no_url_or_credentials() {
        let fx = fixture();
        let env = env_with(&fx, &[("FIRECREST_BACKEND", "firecrest")]);
        let flags = CliFlags { dry_run: true };
        let c = Config::from_env(&env, &fx.ws, &flags).unwrap();
        assert!(c.dry_run);
        assert_eq!(c.backend, BackendKind::Firecrest);
        assert_eq!(c.firecrest, None);

        let c = ok(
            &fx,
            &[
                ("FIRECREST_BACKEND", "firecrest"),
                ("FIRECREST_DRY_RUN", "true"),
            ],
        );
        assert_eq!(c.firecrest, None);

        // What is given must still be valid, and complete settings are kept.
        let found = problems(
            &fx,
            &[
                ("FIRECREST_DRY_RUN", "yes"),
                ("FIRECREST_BACKEND", "firecrest"),
                ("FIRECREST_URL", "nope"),
            ],
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].variables, ["FIRECREST_URL"]);
        let mut vars = FIRECREST_OK.to_vec();
        vars.push(("FIRECREST_DRY_RUN", "true"));
        assert!(ok(&fx, &vars).firecrest.is_some());

        // --dry-run does not hide a malformed FIRECREST_DRY_RUN.
        let env = env_with(&fx, &[("FIRECREST_DRY_RUN", "maybe")]);
        assert!(Config::from_env(&env, &fx.ws, &flags).is_err());
    }
}
