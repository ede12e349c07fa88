//! `firecrest-ci check`: the first step a user runs, locally or in CI, to see
//! that everything a run needs is in place, without a command, a workspace
//! or a job. It reaches the cluster the way a run does, prints one table,
//! and exits with the code the run would get (77 credentials, 78 inputs,
//! 69 server down), so a pipeline can stop at the step that names the fix.

use std::sync::Arc;

use anyhow::Result;

use crate::backend::{Backend, CheckRow};
use crate::ci::Ci;
use crate::config::Connection;
use crate::outcome::{self, codes};
use crate::placement;

/// Name of the probe directory made (0700) and removed in the base directory.
const PROBE_PREFIX: &str = ".firecrest-ci-check-";

/// Runs every check the backend allows; prints the table; returns the exit
/// code of the first problem, or 0.
pub async fn check(connection: &Connection, ci: &Arc<Ci>) -> Result<i32> {
    let backend = crate::run::connect(connection, ci)?;
    let mut rows = vec![CheckRow::ok("inputs", backend.describe())];
    // Without access nothing else can be checked: stop at the first failure.
    let reached = match backend.describe_access().await {
        Ok(access) => {
            rows.extend(access);
            true
        }
        Err(err) => {
            rows.push(failure("access", &err));
            false
        }
    };
    if reached {
        rows.extend(placement_rows(backend.as_ref(), connection).await);
        rows.push(base_dir_row(backend.as_ref(), connection).await);
    }
    ci.print_line(&table(&rows));
    Ok(rows
        .iter()
        .find_map(|r| r.problem)
        .unwrap_or(codes::SUCCESS))
}

/// A row for a failed step, with the code the run would end with.
fn failure(label: &str, err: &anyhow::Error) -> CheckRow {
    CheckRow::problem(label, format!("{err:#}"), outcome::exit_code_for_error(err))
}

/// The partitions and accounts the cluster offers, and whether the ones the
/// user set are among them.
async fn placement_rows(backend: &dyn Backend, connection: &Connection) -> Vec<CheckRow> {
    let mut rows = Vec::new();
    for (label, listed) in [
        ("partitions", backend.partitions().await),
        ("accounts", backend.accounts().await),
    ] {
        rows.push(match listed {
            Ok(Some(names)) if !names.is_empty() => CheckRow::ok(label, names.join(", ")),
            Ok(_) => CheckRow::ok(label, "not listed by the cluster"),
            Err(err) => failure(label, &err),
        });
    }
    if let Err(err) = placement::precheck(backend, &connection.resources).await {
        rows.push(failure("placement", &err));
    }
    rows
}

/// The base directory exists or can be made, and a run directory in it is
/// private: a probe directory is made with mode 0700, looked at, and removed.
async fn base_dir_row(backend: &dyn Backend, connection: &Connection) -> CheckRow {
    let label = "base directory";
    let base = match &connection.remote_dir {
        Some(dir) => dir.clone(),
        None => match backend.default_base_dir().await {
            Ok(dir) => dir,
            Err(err) => return failure(label, &err),
        },
    };
    let probe = format!(
        "{}/{PROBE_PREFIX}{:06x}",
        base.trim_end_matches('/'),
        rand::random::<u32>() & 0xff_ffff
    );
    let made = backend.create_private_dir(&probe).await;
    let mode = match &made {
        Ok(()) => backend.mode(&probe).await,
        Err(_) => Ok(None),
    };
    let removed = match &made {
        Ok(()) => backend.remove_dir(&probe).await,
        Err(_) => Ok(()),
    };
    let configured = connection.remote_dir.is_some();
    match (made, mode, removed) {
        (Err(err), _, _) => {
            let code = if configured && !crate::firecrest::retry::is_transient(&err) {
                codes::CONFIG
            } else {
                outcome::exit_code_for_error(&err)
            };
            let fix = if configured {
                "; set FIRECREST_REMOTE_DIR to a directory the user can write"
            } else {
                "; set FIRECREST_REMOTE_DIR"
            };
            CheckRow::problem(
                label,
                format!("{base}: cannot create a run directory: {err:#}{fix}"),
                code,
            )
        }
        (Ok(()), Ok(Some(mode)), _) if mode & 0o077 != 0 => CheckRow::problem(
            label,
            format!(
                "{base}: run directories end up with mode {mode:o}, readable by others \
                 (the cluster ignored chmod 700)"
            ),
            codes::NOPERM,
        ),
        (Ok(()), _, Err(err)) => failure(label, &err.context(format!("failed to remove {probe}"))),
        (Ok(()), mode, Ok(())) => {
            let privacy = match mode {
                Ok(Some(mode)) => format!("run directories private (mode {mode:o})"),
                _ => "run directories made with mode 700".to_string(),
            };
            CheckRow::ok(label, format!("{base}: writable; {privacy}"))
        }
    }
}

/// The table: a status column, the label, the value; then the verdict.
fn table(rows: &[CheckRow]) -> String {
    let width = rows.iter().map(|r| r.label.len()).max().unwrap_or(0);
    let mut out = String::from("firecrest-ci check\n");
    for row in rows {
        let status = if row.problem.is_some() { "FAIL" } else { "ok" };
        out.push_str(&format!(
            "  {status:<4}  {:<width$}  {}\n",
            row.label, row.value
        ));
    }
    match rows.iter().find_map(|r| r.problem) {
        None => out.push_str("all checks passed"),
        Some(code) => {
            let failed = rows.iter().filter(|r| r.problem.is_some()).count();
            out.push_str(&format!(
                "{failed} check(s) failed: a run would exit {code}; fix the FAIL rows above"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_and_gives_the_verdict() {
        let rows = vec![
            CheckRow::ok("token", "obtained"),
            CheckRow::problem("base directory", "/x: cannot create", codes::CONFIG),
        ];
        let text = table(&rows);
        assert_eq!(
            text,
            "firecrest-ci check\n\
             \x20 ok    token           obtained\n\
             \x20 FAIL  base directory  /x: cannot create\n\
             1 check(s) failed: a run would exit 78; fix the FAIL rows above"
        );
        assert!(table(&rows[..1]).ends_with("all checks passed"));
    }
}
