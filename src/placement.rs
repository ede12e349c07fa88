//! The Slurm placement inputs (`FIRECREST_PARTITION`, `FIRECREST_ACCOUNT`,
//! and the resource inputs sbatch may refuse) against what the cluster
//! offers. A wrong partition or account is a mistake only the cluster can
//! see; this module turns it into exit 78 with the variable to fix and the
//! valid values, once before anything is uploaded ([`precheck`]) and again
//! if sbatch refuses the job anyway ([`explain`]). Both say it the same way.

use std::time::Duration;

use anyhow::Result;

use crate::backend::{Backend, SubmitRejected};
use crate::config::Resources;
use crate::firecrest::retry::Rejection;
use crate::outcome::{codes, CodedError};

/// Listing the valid values after sbatch refused the job may take this
/// long: the refusal is reported within a couple of seconds either way.
const EXPLAIN_BUDGET: Duration = Duration::from_millis(1500);

/// Checking before the upload may take this long; a slow or failing listing
/// is no reason to stop a run (sbatch will still judge the input).
const PRECHECK_BUDGET: Duration = Duration::from_secs(10);

/// One placement input a user can get wrong and the cluster can list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    Partition,
    Account,
}

impl Listed {
    fn variable(self) -> &'static str {
        match self {
            Listed::Partition => "FIRECREST_PARTITION",
            Listed::Account => "FIRECREST_ACCOUNT",
        }
    }

    /// The values the user gave (sbatch takes a comma-separated partition list).
    fn given(self, resources: &Resources) -> Vec<&str> {
        let value = match self {
            Listed::Partition => resources.partition.as_deref(),
            Listed::Account => resources.account.as_deref(),
        };
        value
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn list(self, backend: &dyn Backend) -> Result<Option<Vec<String>>> {
        match self {
            Listed::Partition => backend.partitions().await,
            Listed::Account => backend.accounts().await,
        }
    }

    /// True when `value` is one of `valid` (accounts may carry a
    /// " (default)" note; Slurm stores account names in lower case).
    fn contains(self, valid: &[String], value: &str) -> bool {
        valid.iter().any(|v| match self {
            Listed::Partition => v == value,
            Listed::Account => v
                .split(' ')
                .next()
                .is_some_and(|name| name.eq_ignore_ascii_case(value)),
        })
    }
}

/// Checks the partition and the account the user set, one request each,
/// before anything exists on the cluster. Only a listing that says the
/// value is not there fails the run; a listing that cannot be had is logged.
pub async fn precheck(backend: &dyn Backend, resources: &Resources) -> Result<()> {
    for listed in [Listed::Partition, Listed::Account] {
        let given = listed.given(resources);
        if given.is_empty() {
            continue;
        }
        let valid = match tokio::time::timeout(PRECHECK_BUDGET, listed.list(backend)).await {
            Ok(Ok(Some(valid))) if !valid.is_empty() => valid,
            Ok(Ok(_)) => continue,
            Ok(Err(err)) => {
                tracing::warn!("could not check {}: {err:#}", listed.variable());
                continue;
            }
            Err(_) => {
                tracing::warn!("could not check {} in time", listed.variable());
                continue;
            }
        };
        if let Some(wrong) = given.iter().find(|v| !listed.contains(&valid, v)) {
            return Err(not_valid(listed, wrong, Some(&valid), None).into());
        }
    }
    Ok(())
}

/// The error to report when sbatch refused the job: names the input and,
/// for a partition or an account, lists the valid values the server gives.
pub async fn explain(
    backend: &dyn Backend,
    rejected: &SubmitRejected,
    resources: &Resources,
) -> anyhow::Error {
    let listed = match rejected.rejection {
        Rejection::Partition => Listed::Partition,
        Rejection::Account => Listed::Account,
        other => {
            let variables = match other {
                Rejection::Qos => "FIRECREST_SBATCH_OPTIONS (--qos)",
                Rejection::NodeConfiguration => {
                    "FIRECREST_NODES, FIRECREST_GPUS, FIRECREST_CONSTRAINT or FIRECREST_SBATCH_OPTIONS"
                }
                Rejection::TimeLimit => "FIRECREST_TIME_LIMIT or FIRECREST_SBATCH_OPTIONS",
                _ => "the job's inputs",
            };
            return CodedError {
                code: codes::CONFIG,
                message: format!(
                    "{variables}: the scheduler refused the job: {}",
                    rejected.detail
                ),
            }
            .into();
        }
    };
    let valid = match tokio::time::timeout(EXPLAIN_BUDGET, listed.list(backend)).await {
        Ok(Ok(valid)) => valid.filter(|v| !v.is_empty()),
        _ => None,
    };
    let given = listed.given(resources);
    let wrong = valid
        .as_ref()
        .and_then(|valid| given.iter().find(|v| !listed.contains(valid, v)))
        .or(given.first())
        .copied()
        .unwrap_or("(the cluster's default)");
    not_valid(listed, wrong, valid.as_deref(), Some(&rejected.detail)).into()
}

/// "FIRECREST_PARTITION: the cluster has no partition "x"; valid partitions: a, b".
fn not_valid(
    listed: Listed,
    wrong: &str,
    valid: Option<&[String]>,
    sbatch: Option<&str>,
) -> CodedError {
    let what = match listed {
        Listed::Partition => format!("the cluster has no partition {wrong:?}"),
        Listed::Account => format!("{wrong:?} is not a valid account for the user"),
    };
    let because = sbatch.map_or_else(String::new, |words| format!(" (sbatch: {words})"));
    let offer = match (listed, valid) {
        (Listed::Partition, Some(valid)) => format!("; valid partitions: {}", valid.join(", ")),
        (Listed::Account, Some(valid)) => format!("; valid accounts: {}", valid.join(", ")),
        (Listed::Partition, None) => "; ask the cluster's documentation for its partitions".into(),
        (Listed::Account, None) => {
            "; the server does not list the user's accounts (ask the cluster's support)".into()
        }
    };
    CodedError {
        code: codes::CONFIG,
        message: format!("{}: {what}{because}{offer}", listed.variable()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_variable_and_the_valid_values() {
        let valid = vec!["debug".to_string(), "normal".to_string()];
        let err = not_valid(Listed::Partition, "nopart", Some(&valid), None);
        assert_eq!(err.code, codes::CONFIG);
        assert_eq!(
            err.message,
            "FIRECREST_PARTITION: the cluster has no partition \"nopart\"; valid partitions: debug, normal"
        );
        let err = not_valid(Listed::Account, "noacct", None, Some("Invalid account"));
        assert!(err.message.starts_with("FIRECREST_ACCOUNT: \"noacct\" is not a valid account for the user (sbatch: Invalid account); the server does not list"), "{}", err.message);
    }

    #[test]
    fn accounts_match_by_name_whatever_the_note_or_case() {
        let valid = vec!["ci (default)".to_string(), "proj".to_string()];
        assert!(Listed::Account.contains(&valid, "ci"));
        assert!(Listed::Account.contains(&valid, "PROJ"));
        assert!(!Listed::Account.contains(&valid, "noacct"));
        assert!(!Listed::Partition.contains(&["debug".to_string()], "Debug"));
    }

    #[test]
    fn a_partition_list_is_checked_one_by_one() {
        let resources = Resources {
            partition: Some("debug, normal".into()),
            ..Resources::default()
        };
        assert_eq!(Listed::Partition.given(&resources), ["debug", "normal"]);
        assert!(Listed::Account.given(&resources).is_empty());
    }
}
