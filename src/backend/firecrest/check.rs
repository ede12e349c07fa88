//! What `firecrest-ci check` shows about the access: the token, the
//! systems' health, the user.

use anyhow::{Context, Result};

use super::FirecrestBackend;
use crate::backend::CheckRow;

impl FirecrestBackend {
    /// `check`'s rows: the token, each system's health, the user.
    pub(super) async fn access_rows(&self) -> Result<Vec<CheckRow>> {
        let lifetime = self.client.token_lifetime().await?;
        let token = match lifetime {
            Some(left) => format!(
                "obtained; expires in {} (refreshed before that)",
                crate::progress::format_duration(left)
            ),
            None => "given (FIRECREST_ACCESS_TOKEN); its expiry is not known".to_string(),
        };
        let systems = self
            .client
            .systems()
            .await
            .context("failed to list the systems")?;
        let mut rows = vec![CheckRow::ok("token", token)];
        for system in &systems {
            let unhealthy: Vec<String> = system
                .services_health
                .iter()
                .filter(|h| h.healthy == Some(false))
                .map(|h| match &h.message {
                    Some(m) => format!("{} ({m})", h.service_type),
                    None => h.service_type.clone(),
                })
                .collect();
            let chosen = system.name.eq_ignore_ascii_case(self.client.system());
            let label = if chosen {
                format!("system {} (FIRECREST_SYSTEM)", system.name)
            } else {
                format!("system {}", system.name)
            };
            if !unhealthy.is_empty() {
                let value = format!("unhealthy: {}", unhealthy.join(", "));
                rows.push(match chosen {
                    // FirecREST's health gate answers 503 to a run.
                    true => CheckRow::problem(label, value, crate::outcome::codes::UNAVAILABLE),
                    false => CheckRow::ok(label, value),
                });
                continue;
            }
            let health = if system.services_health.is_empty() {
                "health not reported".to_string()
            } else {
                let services: Vec<&str> = system
                    .services_health
                    .iter()
                    .map(|h| h.service_type.as_str())
                    .collect();
                format!("healthy ({})", services.join(", "))
            };
            rows.push(CheckRow::ok(label, health));
        }
        // A system the server does not know fails here with exit 78.
        self.facts().await?;
        let user = self
            .client
            .userinfo()
            .await
            .context("failed to read the user's name")?;
        rows.push(CheckRow::ok("user", user.user.name));
        Ok(rows)
    }
}
