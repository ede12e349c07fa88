//! What the run tells CI about its end: the final report line, the step
//! outputs and summary, the error annotation, and what the job handed back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;

use super::finish::HandedBack;
use super::Remote;
use crate::backend::{JobId, JobStatus};
use crate::ci::Ci;
use crate::config::Config;
use crate::handback;
use crate::job::Missing;
use crate::outcome::Outcome;
use crate::progress::format_duration;

/// What is left to say once the run directory's fate is settled.
pub(super) enum Report {
    /// The run failed: main prints the error.
    Error(anyhow::Error),
    /// CI stopped the run before a job was submitted: only the exit code.
    Code(i32),
    /// The job was cancelled (CI's signal or the run's timeout).
    Stopped {
        job: JobId,
        code: i32,
        message: String,
    },
    /// The job ended by itself.
    Outcome {
        job: JobId,
        outcome: Outcome,
        timing: Timing,
        handed_back: HandedBack,
    },
}

impl Report {
    /// Says it and gives the run's exit code.
    pub(super) fn print(self, config: &Config, ci: &Ci, correlation: Option<&str>) -> Result<i32> {
        match self {
            Report::Error(err) => Err(err),
            Report::Code(code) => Ok(code),
            Report::Stopped { job, code, message } => {
                report_stopped(config, ci, &job, code, &message, correlation);
                Ok(code)
            }
            Report::Outcome {
                job,
                outcome,
                timing,
                handed_back,
            } => {
                report_outcome(config, ci, &job, &outcome, &timing, correlation);
                // Below the tool's own report, as the job's additions.
                pass_on_handback(ci, handed_back);
                Ok(outcome.exit_code)
            }
        }
    }
}

/// When and where the job ran, for the final report.
pub(super) struct Timing {
    elapsed: Option<Duration>,
    queued: Option<Duration>,
    nodes: String,
}

impl Timing {
    pub(super) fn of(status: &JobStatus, submitted_at: SystemTime) -> Self {
        let submitted = submitted_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let elapsed = status.elapsed.map(Duration::from_secs).or_else(|| {
            let (start, end) = (status.start_time?, status.end_time?);
            (end >= start).then(|| Duration::from_secs((end - start) as u64))
        });
        let queued = status
            .start_time
            .filter(|&start| start >= submitted && submitted > 0)
            .map(|start| Duration::from_secs((start - submitted) as u64));
        Timing {
            elapsed,
            queued,
            nodes: status.nodes.clone().unwrap_or_else(|| "-".to_string()),
        }
    }

    fn show(duration: Option<Duration>) -> String {
        duration.map_or_else(|| "-".to_string(), format_duration)
    }
}

fn report_outcome(
    config: &Config,
    ci: &Ci,
    job: &JobId,
    outcome: &Outcome,
    timing: &Timing,
    correlation: Option<&str>,
) {
    let (elapsed, queued) = (Timing::show(timing.elapsed), Timing::show(timing.queued));
    ci.print_line(&format!(
        "firecrest-ci: job {job} {}: exit code {} ({}); ran {elapsed} on {} after {queued} in the queue",
        outcome.state, outcome.exit_code, outcome.reason, timing.nodes
    ));
    print_correlation(ci, correlation);
    set_state_output(ci, &outcome.state);
    let row = [
        outcome.state.as_str(),
        &outcome.exit_code.to_string(),
        &outcome.reason,
        &elapsed,
        &queued,
        &timing.nodes,
    ];
    write_summary(config, ci, job, row, correlation);
    if !outcome.success {
        ci.error(&format!("job {job} {}", outcome.state), &outcome.reason);
    }
}

/// Says loudly which output the CI log lacks and where the whole log is.
pub(super) fn report_missing(ci: &Ci, remote: &Remote<'_>, missing: &[(String, Missing)]) {
    for (path, range) in missing {
        let name = path.rsplit('/').next().unwrap_or(path);
        let line = format!(
            "firecrest-ci: {range} of {name} could not be shown; the whole file is {path} \
             (the run directory {} was kept)",
            remote.run_dir
        );
        ci.print_line(&line);
        ci.error("job output incomplete", &line);
    }
}

fn report_stopped(
    config: &Config,
    ci: &Ci,
    job: &JobId,
    code: i32,
    message: &str,
    correlation: Option<&str>,
) {
    ci.print_line(&format!(
        "firecrest-ci: job {job}: {message} (exit code {code})"
    ));
    print_correlation(ci, correlation);
    set_state_output(ci, "CANCELLED");
    // The summary says what the final line and the outputs say.
    write_summary(
        config,
        ci,
        job,
        ["CANCELLED", &code.to_string(), message, "-", "-", "-"],
        correlation,
    );
    ci.error(&format!("job {job} cancelled"), message);
}

/// The step summary's table: one row of state, exit code, reason, elapsed,
/// queue time and nodes, then the job name.
fn write_summary(config: &Config, ci: &Ci, job: &JobId, row: [&str; 6], correlation: Option<&str>) {
    let cell = |text: &str| text.replace('|', "\\|");
    let cells: Vec<String> = row
        .iter()
        .chain([&config.job_name.as_str()])
        .map(|c| cell(c))
        .collect();
    let summary = format!(
        "### firecrest-ci: job {job}\n\n\
         | state | exit code | reason | elapsed | queue time | nodes | job name |\n\
         |---|---|---|---|---|---|---|\n\
         | {} |\n{}",
        cells.join(" | "),
        correlation.map_or_else(String::new, |id| format!(
            "\nFirecREST correlation id `{id}` (every request of this run carries it).\n"
        ))
    );
    if let Err(err) = ci.append_summary(&summary) {
        tracing::warn!("could not write the step summary: {err:#}");
    }
}

/// The run's correlation id, right below the final report: what a centre's
/// support asks for.
fn print_correlation(ci: &Ci, correlation: Option<&str>) {
    if let Some(id) = correlation {
        ci.print_line(&format!(
            "firecrest-ci: FirecREST correlation id {id} (X-Correlation-ID of every request of this run)"
        ));
    }
}

/// The job's final state for later steps; the run's exit code is written
/// by `main` on every end, this one's included.
pub(super) fn set_state_output(ci: &Ci, state: &str) {
    if let Err(err) = ci.set_output("state", state) {
        tracing::warn!("could not write the step output state: {err:#}");
    }
}

/// Outputs a later `if: cancelled()` step or an `after_script` can act on.
pub(super) fn write_early_outputs(config: &Config, ci: &Ci, job: &JobId, run_dir: &str) {
    for (name, value) in [
        ("job-id", job.0.clone()),
        ("remote-dir", run_dir.to_string()),
        ("log-file", log_file_output(config)),
    ] {
        if let Err(err) = ci.set_output(name, &value) {
            tracing::warn!("could not write the step output {name}: {err:#}");
        }
    }
}

/// The log file as later steps can open it: relative to the workspace when
/// inside it (the action's container sees the workspace at another path
/// than the runner's later steps).
fn log_file_output(config: &Config) -> String {
    config
        .log_file
        .strip_prefix(&config.workspace)
        .unwrap_or(&config.log_file)
        .display()
        .to_string()
}

/// Passes the job's own step outputs and summary on to CI.
fn pass_on_handback(ci: &Ci, handed_back: HandedBack) {
    if let Some(text) = handed_back.outputs {
        let (outputs, refused) = handback::parse_outputs(&text);
        for output in &outputs {
            if let Err(err) = ci.set_job_output(&output.name, &output.value) {
                ci.warning("job outputs", &format!("{err:#}"));
            }
        }
        if !refused.is_empty() {
            ci.warning(
                "job outputs",
                &format!(
                    "ignored what the job wrote to FIRECREST_CI_OUTPUT on {}",
                    refused.join("; ")
                ),
            );
        }
        if !outputs.is_empty() {
            tracing::info!("the job set {} step outputs", outputs.len());
        }
    }
    if let Some(markdown) = handed_back.summary.filter(|m| !m.trim().is_empty()) {
        if let Err(err) = ci.append_summary(&markdown) {
            tracing::warn!("could not append the job's summary: {err:#}");
        }
    }
}
