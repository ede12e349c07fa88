//! Final Slurm state -> the tool's exit code. CI turns red or green on this
//! number alone, so the mapping lives in one table-tested place and the
//! README's exit-code table is checked against it.
//!
//! Slurm's `exitCode` cannot be trusted on its own: a job killed by a signal,
//! a TIMEOUT and an OUT_OF_MEMORY all report exit code 0. The state decides
//! first; the exit code and the signal only refine FAILED and COMPLETED.

use crate::backend::JobStatus;

/// Every exit code the tool can end with. The README's "Exit codes" table
/// documents each one; a unit test keeps the two in sync.
pub mod codes {
    /// The job completed and its commands exited 0.
    pub const SUCCESS: i32 = 0;
    /// A failure with no better code (e.g. Slurm reported FAILED with 0:0).
    pub const FAILURE: i32 = 1;
    /// Invalid command line.
    pub const USAGE: i32 = 64;
    /// Job side: the run directory or the uploaded workspace archive could
    /// not be used (missing, corrupt, extraction failed); the batch script
    /// exits with it.
    pub const WORKSPACE_INVALID: i32 = 65;
    /// FirecREST stayed unavailable after retries.
    pub const UNAVAILABLE: i32 = 69;
    /// A bug or an unexpected answer in the tool itself.
    pub const INTERNAL: i32 = 70;
    /// The job succeeded, but what it produced did not all reach CI: its
    /// whole log could not be shown or its artifacts not brought back. The
    /// run directory is kept so that nothing is lost.
    pub const INCOMPLETE: i32 = 74;
    /// The node failed, did not boot, or the job was preempted: retrying may help.
    pub const TEMPFAIL: i32 = 75;
    /// Authentication failed or access was refused.
    pub const NOPERM: i32 = 77;
    /// Invalid configuration (inputs).
    pub const CONFIG: i32 = 78;
    /// Someone (an administrator, the user) cancelled the job on the cluster.
    pub const CANCELLED_ON_CLUSTER: i32 = 120;
    /// The tool's own `timeout` input expired; it cancelled the job.
    pub const RUN_TIMEOUT: i32 = 121;
    /// The job hit its Slurm time limit (TIMEOUT) or deadline (DEADLINE).
    pub const TIMEOUT: i32 = 124;
    /// CI sent SIGHUP; the tool cancelled the job.
    pub const CI_SIGHUP: i32 = 129;
    /// CI sent SIGINT; the tool cancelled the job.
    pub const CI_SIGINT: i32 = 130;
    /// The job went over its memory limit (128 + SIGKILL, as a shell reports it).
    pub const OUT_OF_MEMORY: i32 = 137;
    /// CI sent SIGTERM; the tool cancelled the job.
    pub const CI_SIGTERM: i32 = 143;
}

/// Slurm's job states, parsed from the raw state string by its first word
/// (`CANCELLED by 1001` and `CANCELLED+` are both [`SlurmState::Cancelled`]).
/// Backends parse the scheduler's string once, into
/// [`JobStatus::state`](crate::backend::JobStatus); `Display` gives Slurm's
/// spelling back for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlurmState {
    BootFail,
    /// `by`: the uid Slurm names in `CANCELLED by <uid>`, when it does.
    Cancelled {
        by: Option<String>,
    },
    Completed,
    Configuring,
    Completing,
    Deadline,
    Failed,
    NodeFail,
    OutOfMemory,
    Pending,
    Preempted,
    Running,
    ResvDelHold,
    RequeueFed,
    RequeueHold,
    Requeued,
    Resizing,
    Revoked,
    Signaling,
    SpecialExit,
    StageOut,
    Stopped,
    Suspended,
    Timeout,
    /// A state this tool does not know; watching goes on (the caller warns once).
    Unknown(String),
}

impl SlurmState {
    /// Parses Slurm's raw state string; never fails, unknown words are kept.
    pub fn parse(raw: &str) -> Self {
        let word = first_word(raw);
        let rest = raw.find(word).map_or("", |at| &raw[at + word.len()..]);
        match word.to_ascii_uppercase().as_str() {
            "BOOT_FAIL" => Self::BootFail,
            "CANCELLED" => Self::Cancelled {
                by: rest
                    .trim()
                    .strip_prefix("by ")
                    .map(|uid| uid.trim().to_string())
                    .filter(|uid| !uid.is_empty()),
            },
            "COMPLETED" => Self::Completed,
            "CONFIGURING" => Self::Configuring,
            "COMPLETING" => Self::Completing,
            "DEADLINE" => Self::Deadline,
            "FAILED" => Self::Failed,
            "NODE_FAIL" => Self::NodeFail,
            "OUT_OF_MEMORY" => Self::OutOfMemory,
            "PENDING" => Self::Pending,
            "PREEMPTED" => Self::Preempted,
            "RUNNING" => Self::Running,
            "RESV_DEL_HOLD" => Self::ResvDelHold,
            "REQUEUE_FED" => Self::RequeueFed,
            "REQUEUE_HOLD" => Self::RequeueHold,
            "REQUEUED" => Self::Requeued,
            "RESIZING" => Self::Resizing,
            "REVOKED" => Self::Revoked,
            "SIGNALING" => Self::Signaling,
            "SPECIAL_EXIT" => Self::SpecialExit,
            "STAGE_OUT" => Self::StageOut,
            "STOPPED" => Self::Stopped,
            "SUSPENDED" => Self::Suspended,
            "TIMEOUT" => Self::Timeout,
            _ => Self::Unknown(word.to_string()),
        }
    }

    /// Slurm's word for the state, e.g. `CANCELLED` (without `by <uid>`).
    pub fn name(&self) -> &str {
        match self {
            Self::BootFail => "BOOT_FAIL",
            Self::Cancelled { .. } => "CANCELLED",
            Self::Completed => "COMPLETED",
            Self::Configuring => "CONFIGURING",
            Self::Completing => "COMPLETING",
            Self::Deadline => "DEADLINE",
            Self::Failed => "FAILED",
            Self::NodeFail => "NODE_FAIL",
            Self::OutOfMemory => "OUT_OF_MEMORY",
            Self::Pending => "PENDING",
            Self::Preempted => "PREEMPTED",
            Self::Running => "RUNNING",
            Self::ResvDelHold => "RESV_DEL_HOLD",
            Self::RequeueFed => "REQUEUE_FED",
            Self::RequeueHold => "REQUEUE_HOLD",
            Self::Requeued => "REQUEUED",
            Self::Resizing => "RESIZING",
            Self::Revoked => "REVOKED",
            Self::Signaling => "SIGNALING",
            Self::SpecialExit => "SPECIAL_EXIT",
            Self::StageOut => "STAGE_OUT",
            Self::Stopped => "STOPPED",
            Self::Suspended => "SUSPENDED",
            Self::Timeout => "TIMEOUT",
            Self::Unknown(word) => word,
        }
    }

    /// The cluster lost the job (a node failed or did not boot, the job was
    /// preempted or its reservation revoked): not its commands' doing, so
    /// submitting it again may well succeed.
    pub fn cluster_lost_the_job(&self) -> bool {
        matches!(
            self,
            Self::NodeFail | Self::BootFail | Self::Preempted | Self::Revoked
        )
    }

    /// True when the job will not run again by itself: stop watching and
    /// report; the one answer for the watcher and every backend. Held,
    /// requeued, suspended and stopped jobs may still run, so the watcher
    /// keeps going (bounded by the `timeout` input). COMPLETING is not final:
    /// the job's processes are still being killed and may still write
    /// output, and FirecREST reports the exit code only after it. An unknown
    /// state is not final either: the job may still change. REVOKED (a
    /// federation moved the job to another cluster) and SPECIAL_EXIT (held
    /// after a special exit code) are final for this tool: it cannot follow
    /// the job any further.
    pub fn is_final(&self) -> bool {
        match self {
            Self::BootFail
            | Self::Cancelled { .. }
            | Self::Completed
            | Self::Deadline
            | Self::Failed
            | Self::NodeFail
            | Self::OutOfMemory
            | Self::Preempted
            | Self::Revoked
            | Self::SpecialExit
            | Self::Timeout => true,
            Self::Configuring
            | Self::Completing
            | Self::Pending
            | Self::Running
            | Self::ResvDelHold
            | Self::RequeueFed
            | Self::RequeueHold
            | Self::Requeued
            | Self::Resizing
            | Self::Signaling
            | Self::StageOut
            | Self::Stopped
            | Self::Suspended
            | Self::Unknown(_) => false,
        }
    }
}

impl Default for SlurmState {
    /// The state of an empty string: unknown, not final.
    fn default() -> Self {
        Self::Unknown(String::new())
    }
}

impl std::fmt::Display for SlurmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())?;
        match self {
            Self::Cancelled { by: Some(uid) } => write!(f, " by {uid}"),
            _ => Ok(()),
        }
    }
}

/// How the run ended, as CI and the step summary report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What the tool exits with.
    pub exit_code: i32,
    /// The first word of Slurm's state, e.g. `CANCELLED`.
    pub state: String,
    /// True only for exit code 0.
    pub success: bool,
    /// One human sentence: why CI is red or green.
    pub reason: String,
}

impl Outcome {
    fn new(exit_code: i32, state: &str, reason: String) -> Self {
        Self {
            exit_code,
            state: state.to_string(),
            success: exit_code == codes::SUCCESS,
            reason,
        }
    }

    /// This outcome, except that what the job produced did not all reach CI:
    /// a successful job becomes [`codes::INCOMPLETE`] (never green), a failed
    /// one keeps its own code. `why` is added to the reason.
    pub fn incomplete(self, why: &str) -> Self {
        let code = if self.success {
            codes::INCOMPLETE
        } else {
            self.exit_code
        };
        Self::new(code, &self.state, format!("{}, {why}", self.reason))
    }

    /// The tool's own `timeout` input expired and it cancelled the job;
    /// `state` is the last state seen.
    pub fn run_timeout(state: &str, timeout: std::time::Duration) -> Self {
        let word = first_word(state);
        Self::new(
            codes::RUN_TIMEOUT,
            word,
            format!(
                "the run exceeded its timeout of {} and the job was cancelled",
                humantime::format_duration(timeout)
            ),
        )
    }

    /// CI stopped the tool with `signal` and the tool cancelled the job;
    /// `state` is the last state seen.
    pub fn cancelled_by_ci(state: &str, signal: i32) -> Self {
        let word = first_word(state);
        Self::new(
            ci_signal_code(signal),
            word,
            format!(
                "CI stopped the run with {} and the job was cancelled",
                signal_name(signal)
            ),
        )
    }
}

/// Maps a job's final status to the tool's exit code. State rules come
/// before the exit code and the signal, and only COMPLETED can give 0.
pub fn outcome_for(status: &JobStatus) -> Outcome {
    let state = &status.state;
    let word = state.name();
    let exit = status.exit_code.unwrap_or(0);
    let signal = status.signal.unwrap_or(0);
    let real_signal = (1..=64).contains(&signal);
    let o = |code: i32, reason: String| Outcome::new(code, word, reason);

    match state {
        SlurmState::Timeout => o(
            codes::TIMEOUT,
            "the job reached its Slurm time limit and was stopped".into(),
        ),
        SlurmState::Deadline => o(
            codes::TIMEOUT,
            "the job reached its Slurm deadline and was stopped".into(),
        ),
        SlurmState::OutOfMemory => o(
            codes::OUT_OF_MEMORY,
            "the job ran out of memory and Slurm killed it at its memory limit".into(),
        ),
        SlurmState::Cancelled { by } => {
            let who = by
                .as_ref()
                .map(|uid| format!(" by uid {uid}"))
                .unwrap_or_default();
            o(
                codes::CANCELLED_ON_CLUSTER,
                format!("the job was cancelled on the cluster{who}"),
            )
        }
        SlurmState::NodeFail => o(
            codes::TEMPFAIL,
            "a node of the job failed; retrying may help".into(),
        ),
        SlurmState::BootFail => o(
            codes::TEMPFAIL,
            "the job's nodes failed to boot; retrying may help".into(),
        ),
        SlurmState::Preempted => o(
            codes::TEMPFAIL,
            "the job was preempted by another job; retrying may help".into(),
        ),
        SlurmState::Revoked => o(
            codes::TEMPFAIL,
            "the job was revoked (the federation moved it to another cluster); retrying may help"
                .into(),
        ),
        SlurmState::Completed | SlurmState::Failed | SlurmState::SpecialExit => {
            let completed = *state == SlurmState::Completed;
            if exit > 0 {
                let code = exit.clamp(1, 255) as i32;
                if code == codes::WORKSPACE_INVALID {
                    o(
                        code,
                        "the job could not prepare its workspace (exit code 65): the uploaded \
                         archive was incomplete or could not be extracted, see the job log"
                            .into(),
                    )
                } else {
                    o(code, format!("the job's commands exited with code {exit}"))
                }
            } else if real_signal {
                o(
                    128 + signal as i32,
                    format!(
                        "the job was killed by signal {}",
                        signal_name(signal as i32)
                    ),
                )
            } else if exit < 0 {
                o(
                    codes::FAILURE,
                    format!("the job ended {word} with an invalid exit code {exit}"),
                )
            } else if completed {
                o(codes::SUCCESS, "the job completed with exit code 0".into())
            } else if signal != 0 {
                o(
                    codes::FAILURE,
                    format!(
                        "the job ended {word} with exit code 0 and signal {signal}, \
                         which is not a real signal"
                    ),
                )
            } else {
                o(
                    codes::FAILURE,
                    format!("the job ended {word} although Slurm reports exit code 0"),
                )
            }
        }
        SlurmState::Configuring
        | SlurmState::Completing
        | SlurmState::Pending
        | SlurmState::Running
        | SlurmState::ResvDelHold
        | SlurmState::RequeueFed
        | SlurmState::RequeueHold
        | SlurmState::Requeued
        | SlurmState::Resizing
        | SlurmState::Signaling
        | SlurmState::StageOut
        | SlurmState::Stopped
        | SlurmState::Suspended
        | SlurmState::Unknown(_) => o(
            codes::INTERNAL,
            format!("the job's state {word:?} is not final, so its result is unknown"),
        ),
    }
}

/// The exit code after CI stopped the run with `signal`: 128 + the signal,
/// as a shell reports it (SIGHUP 129, SIGINT 130, SIGTERM 143).
pub fn ci_signal_code(signal: i32) -> i32 {
    match signal {
        s if s == nix::sys::signal::Signal::SIGHUP as i32 => codes::CI_SIGHUP,
        s if s == nix::sys::signal::Signal::SIGINT as i32 => codes::CI_SIGINT,
        s if s == nix::sys::signal::Signal::SIGTERM as i32 => codes::CI_SIGTERM,
        s if (1..=64).contains(&s) => 128 + s,
        _ => codes::FAILURE,
    }
}

fn first_word(state: &str) -> &str {
    state
        .split(|c: char| c.is_whitespace() || c == '+')
        .find(|w| !w.is_empty())
        .unwrap_or("")
}

/// `9 (SIGKILL)` where the number is a Linux signal, else just the number.
fn signal_name(signal: i32) -> String {
    match nix::sys::signal::Signal::try_from(signal) {
        Ok(sig) => format!("{signal} ({})", sig.as_str()),
        Err(_) => signal.to_string(),
    }
}

/// An error that already knows its exit code, for failures whose kind the
/// error chain would not show (a system name the server does not know is a
/// configuration problem, not an internal one).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CodedError {
    pub code: i32,
    pub message: String,
}

/// The exit code for a failure of the tool itself, read from the error
/// chain: configuration 78, credentials and permissions 77, a server that
/// stayed unavailable through the retries 69, anything else 70.
pub fn exit_code_for_error(err: &anyhow::Error) -> i32 {
    use crate::firecrest::{ApiError, AuthError};
    // A host never reached, or not the service its variable names: found
    // as the context it is attached as, wherever in the chain.
    if let Some(contact) = err.downcast_ref::<crate::firecrest::contact::ContactError>() {
        return contact.exit_code();
    }
    // Credentials FirecREST or the identity provider refused, attached as
    // context or as the error itself.
    if err.downcast_ref::<AuthError>().is_some() {
        return codes::NOPERM;
    }
    for cause in err.chain() {
        if let Some(coded) = cause.downcast_ref::<CodedError>() {
            return coded.code;
        }
        if cause
            .downcast_ref::<crate::config::ConfigErrors>()
            .is_some()
        {
            return codes::CONFIG;
        }
        // Sbatch refused an input (partition, account, ...): the same
        // submit fails every time, so it is the configuration, not the server.
        if cause
            .downcast_ref::<crate::backend::SubmitRejected>()
            .is_some()
        {
            return codes::CONFIG;
        }
        if cause.downcast_ref::<AuthError>().is_some() {
            return codes::NOPERM;
        }
        if let Some(api) = cause.downcast_ref::<ApiError>() {
            // A 400 for a token FirecREST cannot use comes with
            // `AuthError::TokenUnusable` (found above).
            if api.is_auth() {
                return codes::NOPERM;
            }
            if api.is_transient() || api.is_server_error() {
                return codes::UNAVAILABLE;
            }
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::PermissionDenied {
                return codes::NOPERM;
            }
        }
        if let Some(http) = cause.downcast_ref::<reqwest::Error>() {
            if http.is_connect() || http.is_timeout() {
                return codes::UNAVAILABLE;
            }
        }
    }
    codes::INTERNAL
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error the client returns for a FirecREST error reply.
    fn api_error(status: u16, message: &str) -> anyhow::Error {
        let api = crate::firecrest::ApiError::test_reply(
            status,
            "GET",
            "/status/daint/userinfo",
            message,
        );
        let refused = crate::firecrest::AuthError::from_reply(&api);
        let err = anyhow::Error::new(api);
        match refused {
            Some(refused) => err.context(refused),
            None => err,
        }
        .context("failed to read the user's name")
    }

    #[test]
    fn tool_failures_map_to_their_sysexits_codes() {
        // From the recorded auth_errors.json and unknown_system.json.
        assert_eq!(
            exit_code_for_error(&api_error(401, "Access token expired")),
            codes::NOPERM
        );
        assert_eq!(
            exit_code_for_error(&api_error(
                400,
                "Authentication token 'preferred_username' claim is missing"
            )),
            codes::NOPERM
        );
        assert_eq!(
            exit_code_for_error(&api_error(503, "unhealthy")),
            codes::UNAVAILABLE
        );
        assert_eq!(
            exit_code_for_error(&api_error(404, "System not found")),
            codes::INTERNAL
        );
        // From the recorded submit_errors.json: a 500, but the input is wrong.
        let rejected = crate::backend::SubmitRejected::from_message(
            "Unexpected Slurm command response. exit_status:1 std_err:sbatch: error: \
             invalid partition specified: nopart",
        )
        .unwrap();
        assert_eq!(
            exit_code_for_error(&anyhow::Error::new(rejected).context("failed to submit")),
            codes::CONFIG
        );
        let io = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert_eq!(exit_code_for_error(&io), codes::NOPERM);
        let coded = anyhow::Error::new(CodedError {
            code: codes::CONFIG,
            message: "no such system".into(),
        });
        assert_eq!(
            exit_code_for_error(&coded.context("while starting")),
            codes::CONFIG
        );
    }

    fn status(state: &str, exit: Option<i64>, signal: Option<i64>) -> JobStatus {
        JobStatus {
            state: SlurmState::parse(state),
            exit_code: exit,
            signal,
            ..JobStatus::default()
        }
    }

    /// One row: raw state, exitCode, interruptSignal -> code, state word.
    fn check(state: &str, exit: Option<i64>, signal: Option<i64>, want: i32) -> Outcome {
        let out = outcome_for(&status(state, exit, signal));
        assert_eq!(
            out.exit_code, want,
            "{state} {exit:?}:{signal:?} gave {out:?}"
        );
        assert_eq!(out.success, want == 0);
        assert!(!out.reason.is_empty());
        assert!(!out.reason.ends_with('.'), "{}", out.reason);
        out
    }

    #[test]
    fn exit_table() {
        use codes::*;
        // (state, exitCode, interruptSignal, expected code)
        let rows: &[(&str, Option<i64>, Option<i64>, i32)] = &[
            ("COMPLETED", Some(0), Some(0), SUCCESS),
            ("COMPLETED", None, None, SUCCESS),
            ("COMPLETED", Some(2), Some(0), 2),
            ("COMPLETED", Some(0), Some(15), 143),
            ("FAILED", Some(3), Some(0), 3),
            ("FAILED", Some(255), Some(0), 255),
            ("FAILED", Some(300), Some(0), 255),
            ("FAILED", Some(-1), Some(0), FAILURE),
            ("FAILED", Some(0), Some(0), FAILURE),
            ("FAILED", None, None, FAILURE),
            ("FAILED", Some(0), Some(9), 137),
            ("FAILED", Some(0), Some(11), 139),
            ("FAILED", Some(0), Some(64), 192),
            ("FAILED", Some(0), Some(65), FAILURE),
            ("FAILED", Some(0), Some(125), FAILURE),
            ("FAILED", Some(4), Some(9), 4),
            ("FAILED", Some(65), Some(0), WORKSPACE_INVALID),
            ("SPECIAL_EXIT", Some(7), Some(0), 7),
            ("SPECIAL_EXIT", Some(0), Some(0), FAILURE),
            ("TIMEOUT", Some(0), Some(0), TIMEOUT),
            ("TIMEOUT", Some(0), Some(15), TIMEOUT),
            ("DEADLINE", Some(0), Some(0), TIMEOUT),
            ("OUT_OF_MEMORY", Some(0), Some(125), OUT_OF_MEMORY),
            ("OUT_OF_MEMORY", Some(0), Some(0), OUT_OF_MEMORY),
            ("CANCELLED by 1001", Some(0), Some(0), CANCELLED_ON_CLUSTER),
            ("CANCELLED+", Some(0), Some(15), CANCELLED_ON_CLUSTER),
            ("CANCELLED", None, None, CANCELLED_ON_CLUSTER),
            ("NODE_FAIL", Some(0), Some(0), TEMPFAIL),
            ("BOOT_FAIL", Some(0), Some(0), TEMPFAIL),
            ("PREEMPTED", Some(0), Some(15), TEMPFAIL),
            ("REVOKED", Some(0), Some(0), TEMPFAIL),
            ("RUNNING", Some(0), Some(0), INTERNAL),
            ("WHATEVER", Some(0), Some(0), INTERNAL),
        ];
        for &(state, exit, signal, want) in rows {
            check(state, exit, signal, want);
        }
    }

    #[test]
    fn recorded_final_states() {
        // The final `status` of each job_*.json recording, read from the files
        // so that a new recording is checked too.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/recorded");
        let expected: &[(&str, &str, i32)] = &[
            ("job_completed.json", "COMPLETED", codes::SUCCESS),
            ("job_failed_exit3.json", "FAILED", 3),
            ("job_signal_killed.json", "FAILED", 137),
            ("job_timeout.json", "TIMEOUT", codes::TIMEOUT),
            (
                "job_out_of_memory.json",
                "OUT_OF_MEMORY",
                codes::OUT_OF_MEMORY,
            ),
            (
                "job_cancelled.json",
                "CANCELLED",
                codes::CANCELLED_ON_CLUSTER,
            ),
            (
                "job_cancel_traps.json",
                "CANCELLED",
                codes::CANCELLED_ON_CLUSTER,
            ),
        ];
        let entries = std::fs::read_dir(dir).expect("the recorded fixtures are in the repository");
        let mut seen = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if !name.starts_with("job_") || !name.ends_with(".json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let exchanges: serde_json::Value = serde_json::from_str(&text).unwrap();
            let last = exchanges
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| {
                    // Polls of this one job, not job lists or metadata.
                    let path = e["request"]["path"].as_str().unwrap_or("");
                    e["request"]["method"] == "GET"
                        && path
                            .rsplit_once("/jobs/")
                            .is_some_and(|(_, id)| !id.contains('/'))
                })
                .filter_map(|e| e["response"]["body"]["jobs"][0]["status"].as_object())
                .next_back()
                .unwrap_or_else(|| panic!("{name}: no job status"));
            let st = status(
                last["state"].as_str().unwrap(),
                last["exitCode"].as_i64(),
                last["interruptSignal"].as_i64(),
            );
            let (_, word, code) = expected
                .iter()
                .find(|(file, _, _)| *file == name)
                .unwrap_or_else(|| panic!("{name}: add its expected code to this test"));
            let out = outcome_for(&st);
            assert_eq!(out.exit_code, *code, "{name}: {st:?} -> {out:?}");
            assert_eq!(out.state, *word, "{name}");
            assert!(st.state.is_final(), "{name}");
            seen += 1;
        }
        assert_eq!(seen, expected.len());
    }

    #[test]
    fn recorded_rows_copied() {
        // The same final states as the recordings, for machines without them.
        check("FAILED", Some(3), Some(0), 3);
        check("FAILED", Some(0), Some(9), 137);
        check("TIMEOUT", Some(0), Some(0), 124);
        check("OUT_OF_MEMORY", Some(0), Some(125), 137);
        let c = check("CANCELLED by 1001", Some(0), Some(0), 120);
        assert_eq!(c.state, "CANCELLED");
        assert!(c.reason.contains("uid 1001"), "{}", c.reason);
        check("COMPLETED", Some(0), Some(0), 0);
    }

    #[test]
    fn reasons_say_why() {
        let r = |s, e, g| outcome_for(&status(s, e, g)).reason;
        assert!(r("FAILED", Some(3), Some(0)).contains("exited with code 3"));
        assert!(r("FAILED", Some(0), Some(9)).contains("SIGKILL"));
        assert!(r("FAILED", Some(65), Some(0)).contains("workspace"));
        assert!(r("OUT_OF_MEMORY", Some(0), Some(125)).contains("memory"));
        assert!(r("TIMEOUT", Some(0), Some(0)).contains("time limit"));
        assert!(r("FAILED", Some(0), Some(0)).contains("exit code 0"));
    }

    #[test]
    fn state_parsing() {
        let cases: &[(&str, SlurmState, bool)] = &[
            ("BOOT_FAIL", SlurmState::BootFail, true),
            ("CANCELLED", SlurmState::Cancelled { by: None }, true),
            (
                "CANCELLED by 1001",
                SlurmState::Cancelled {
                    by: Some("1001".into()),
                },
                true,
            ),
            ("CANCELLED+", SlurmState::Cancelled { by: None }, true),
            ("COMPLETED", SlurmState::Completed, true),
            ("CONFIGURING", SlurmState::Configuring, false),
            ("COMPLETING", SlurmState::Completing, false),
            ("DEADLINE", SlurmState::Deadline, true),
            ("FAILED", SlurmState::Failed, true),
            ("NODE_FAIL", SlurmState::NodeFail, true),
            ("OUT_OF_MEMORY", SlurmState::OutOfMemory, true),
            ("PENDING", SlurmState::Pending, false),
            ("PREEMPTED", SlurmState::Preempted, true),
            ("RUNNING", SlurmState::Running, false),
            ("RESV_DEL_HOLD", SlurmState::ResvDelHold, false),
            ("REQUEUE_FED", SlurmState::RequeueFed, false),
            ("REQUEUE_HOLD", SlurmState::RequeueHold, false),
            ("REQUEUED", SlurmState::Requeued, false),
            ("RESIZING", SlurmState::Resizing, false),
            ("REVOKED", SlurmState::Revoked, true),
            ("SIGNALING", SlurmState::Signaling, false),
            ("SPECIAL_EXIT", SlurmState::SpecialExit, true),
            ("STAGE_OUT", SlurmState::StageOut, false),
            ("STOPPED", SlurmState::Stopped, false),
            ("SUSPENDED", SlurmState::Suspended, false),
            ("TIMEOUT", SlurmState::Timeout, true),
            (" running ", SlurmState::Running, false),
            (
                "NEW_STATE x",
                SlurmState::Unknown("NEW_STATE".into()),
                false,
            ),
            ("", SlurmState::Unknown(String::new()), false),
        ];
        for (raw, want, fin) in cases {
            let got = SlurmState::parse(raw);
            assert_eq!(&got, want, "{raw:?}");
            assert_eq!(got.is_final(), *fin, "{raw:?}");
        }
    }

    #[test]
    fn ci_signals() {
        assert_eq!(ci_signal_code(1), codes::CI_SIGHUP);
        assert_eq!(ci_signal_code(2), codes::CI_SIGINT);
        assert_eq!(ci_signal_code(15), codes::CI_SIGTERM);
        assert_eq!(ci_signal_code(3), 131);
        let o = Outcome::cancelled_by_ci("RUNNING", 15);
        assert_eq!((o.exit_code, o.success), (143, false));
        assert!(o.reason.contains("SIGTERM"), "{}", o.reason);
        let t = Outcome::run_timeout("PENDING", std::time::Duration::from_secs(7200));
        assert_eq!(
            (t.exit_code, t.state.as_str()),
            (codes::RUN_TIMEOUT, "PENDING")
        );
        assert!(t.reason.contains("2h"), "{}", t.reason);
    }

    /// Every `pub const` in `codes` has a README row with its number, and
    /// every numbered README row is a constant: docs and code stay in sync.
    #[test]
    fn readme_documents_every_code() {
        let source = include_str!("outcome.rs");
        let module = source
            .split("pub mod codes {")
            .nth(1)
            .and_then(|rest| rest.split("\n}\n").next())
            .unwrap();
        let constants: Vec<(String, i32)> = module
            .lines()
            .filter_map(|line| {
                let rest = line.trim().strip_prefix("pub const ")?;
                let (name, value) = rest.split_once(": i32 = ")?;
                Some((name.to_string(), value.trim_end_matches(';').parse().ok()?))
            })
            .collect();
        assert_eq!(constants.len(), 17, "{constants:?}");

        let readme = include_str!("../README.md");
        let section = readme
            .split("\n## Exit codes\n")
            .nth(1)
            .expect("README has an \"## Exit codes\" section");
        let section = section.split("\n## ").next().unwrap();
        let numbered: Vec<i32> = section
            .lines()
            .filter_map(|l| l.strip_prefix('|'))
            .filter_map(|l| l.split('|').next())
            .filter_map(|cell| cell.trim().trim_matches('`').parse().ok())
            .collect();
        for (name, value) in &constants {
            assert!(
                numbered.contains(value),
                "codes::{name} = {value} has no row in the README exit-code table"
            );
        }
        for n in &numbered {
            assert!(
                constants.iter().any(|(_, v)| v == n),
                "README row {n} is not a constant in outcome::codes"
            );
        }
        // The compiled values are the ones parsed above.
        let compiled = [
            codes::SUCCESS,
            codes::FAILURE,
            codes::USAGE,
            codes::WORKSPACE_INVALID,
            codes::UNAVAILABLE,
            codes::INTERNAL,
            codes::INCOMPLETE,
            codes::TEMPFAIL,
            codes::NOPERM,
            codes::CONFIG,
            codes::CANCELLED_ON_CLUSTER,
            codes::RUN_TIMEOUT,
            codes::TIMEOUT,
            codes::CI_SIGHUP,
            codes::CI_SIGINT,
            codes::OUT_OF_MEMORY,
            codes::CI_SIGTERM,
        ];
        let parsed: Vec<i32> = constants.iter().map(|(_, v)| *v).collect();
        assert_eq!(parsed, compiled);
    }

    #[test]
    fn an_incomplete_success_is_never_green_and_a_failure_keeps_its_code() {
        let done = check("COMPLETED", Some(0), Some(0), 0).incomplete("artifacts missing");
        assert_eq!(done.exit_code, codes::INCOMPLETE);
        assert!(!done.success);
        assert!(
            done.reason.ends_with(", artifacts missing"),
            "{}",
            done.reason
        );
        let failed = check("FAILED", Some(3), Some(0), 3).incomplete("artifacts missing");
        assert_eq!(failed.exit_code, 3);
        assert_eq!(failed.state, "FAILED");
    }
}
