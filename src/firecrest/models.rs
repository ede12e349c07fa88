//! Serde types for the FirecREST v2 requests and replies this tool uses,
//! shaped after the recorded exchanges of a real 2.5.6 server (they win over
//! the published OpenAPI). Replies are read leniently: unknown fields are
//! ignored and missing ones default, so a server upgrade that adds or drops a
//! field does not break a run.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::backend::JobStatus;
use crate::secret::Secret;

/// The `{"output": ...}` envelope of the synchronous filesystem calls.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Output<T: Default> {
    pub output: T,
}

/// `GET /status/systems`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SystemsResponse {
    pub systems: Vec<System>,
}

/// One cluster as FirecREST is configured for it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct System {
    pub name: String,
    pub scheduler: Option<Scheduler>,
    pub services_health: Vec<ServiceHealth>,
    pub file_systems: Vec<FileSystem>,
    pub data_operation: Option<DataOperation>,
}

impl System {
    /// The file system FirecREST marks for work directories (scratch).
    pub fn default_work_dir(&self) -> Option<&FileSystem> {
        self.file_systems.iter().find(|fs| fs.default_work_dir)
    }

    /// The largest body the synchronous `ops` calls accept, when configured.
    pub fn max_ops_file_size(&self) -> Option<u64> {
        self.data_operation.as_ref()?.max_ops_file_size
    }
}

/// Which scheduler, for the plan and for error messages.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Scheduler {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: Option<String>,
}

/// The server's own health probe of one service (scheduler, ssh, s3, ...).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServiceHealth {
    pub service_type: String,
    pub healthy: Option<bool>,
    pub message: Option<String>,
    pub path: Option<String>,
}

/// A mounted file system and what it is for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FileSystem {
    pub path: String,
    pub data_type: String,
    pub default_work_dir: bool,
}

/// Transfer limits. The server sends these keys in snake_case (unlike the
/// rest of its JSON); camelCase is accepted too in case that gets fixed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DataOperation {
    #[serde(alias = "maxOpsFileSize")]
    pub max_ops_file_size: Option<u64>,
    #[serde(alias = "dataTransfer")]
    pub data_transfer: Option<DataTransfer>,
}

/// How large files move (`s3`, `streamer`, ...). Its own keys are camelCase
/// in 2.5.6, its `multipart` block snake_case: both spellings are accepted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DataTransfer {
    #[serde(rename = "serviceType", alias = "service_type")]
    pub service_type: Option<String>,
    pub name: Option<String>,
    pub multipart: Option<Multipart>,
}

/// S3 multipart settings of the server.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Multipart {
    #[serde(alias = "maxPartSize")]
    pub max_part_size: Option<u64>,
    #[serde(alias = "useSplit")]
    pub use_split: Option<bool>,
}

/// `GET /status/{system}/partitions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PartitionsResponse {
    pub partitions: Vec<Partition>,
}

/// One Slurm partition; only the name matters to a client choosing one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Partition {
    pub name: String,
}

/// `GET /status/{system}/userinfo`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct UserInfo {
    pub user: IdName,
    pub group: IdName,
    pub groups: Vec<IdName>,
    /// Slurm accounts (not in the published spec, sent by 2.5.6).
    pub accounts: Vec<Account>,
}

/// A uid/gid and its name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct IdName {
    pub id: String,
    pub name: String,
}

/// A Slurm account the user may charge.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Account {
    pub name: String,
    pub default: bool,
}

/// One `ls` entry (also the reply of mkdir and chmod). Sizes are strings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FileEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub link_target: Option<String>,
    pub user: String,
    pub group: String,
    pub permissions: String,
    pub last_modified: String,
    pub size: String,
}

/// `stat` of a path; integers, like `os.stat`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct FileStat {
    pub mode: u32,
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
}

impl FileStat {
    /// True for a directory (`S_IFDIR`).
    pub fn is_dir(&self) -> bool {
        self.mode & 0o170000 == 0o040000
    }
}

/// A `tail`/`head` window. Content is text: invalid UTF-8 arrives as U+FFFD.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FileTail {
    pub content: String,
    pub content_type: String,
    pub start_position: i64,
    pub end_position: i64,
}

/// `checksum` of a file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Checksum {
    pub algorithm: String,
    pub checksum: String,
}

/// `POST /filesystem/{system}/transfer/{upload,download}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TransferResponse {
    pub transfer_job: TransferJob,
    pub transfer_directives: TransferDirectives,
}

/// The Slurm job that moves data between S3 and the cluster.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TransferJob {
    #[serde(deserialize_with = "string_or_number")]
    pub job_id: String,
    pub system: String,
    pub working_directory: String,
    pub logs: TransferLogs,
}

/// Where the transfer job writes; its error log explains a failed transfer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TransferLogs {
    pub output_log: String,
    pub error_log: String,
}

/// Presigned S3 URLs. Upload: parts, completion and part size; download:
/// `download_url`. The URLs carry credentials: never log them whole.
#[derive(Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TransferDirectives {
    pub transfer_method: String,
    pub parts_upload_urls: Vec<String>,
    pub complete_upload_url: Option<String>,
    pub max_part_size: Option<u64>,
    pub download_url: Option<String>,
}

impl std::fmt::Debug for TransferDirectives {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferDirectives")
            .field("transfer_method", &self.transfer_method)
            .field("parts", &self.parts_upload_urls.len())
            .field("max_part_size", &self.max_part_size)
            .finish_non_exhaustive()
    }
}

/// `DELETE /filesystem/{system}/transfer/rm`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TransferJobResponse {
    pub transfer_job: TransferJob,
}

/// The body of `POST /compute/{system}/jobs`: the batch script and where it
/// runs. Time, nodes and tasks are `#SBATCH` lines in the script.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobDescription {
    /// Unique per run: a lost submit reply is resolved by looking it up.
    pub name: String,
    pub script: String,
    pub working_directory: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub constraints: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standard_output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standard_error: Option<String>,
    /// Values go through `sbatch --export`; kept secret so Debug hides them.
    #[serde(serialize_with = "expose_env")]
    pub env: BTreeMap<String, Secret>,
}

/// The `{"job": ...}` envelope the server expects.
#[derive(Debug, Serialize)]
pub struct JobSubmitRequest<'a> {
    pub job: &'a JobDescription,
}

fn expose_env<S: Serializer>(env: &BTreeMap<String, Secret>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(env.iter().map(|(k, v)| (k, v.expose())))
}

/// Reply to a submit: the new job's id (a string).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SubmitResponse {
    #[serde(deserialize_with = "string_or_number")]
    pub job_id: String,
}

/// `GET /compute/{system}/jobs[/{id}]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct JobsResponse {
    #[serde(deserialize_with = "null_as_default")]
    pub jobs: Vec<Job>,
}

/// A job as sacct/squeue report it through FirecREST.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Job {
    #[serde(deserialize_with = "string_or_number")]
    pub job_id: String,
    pub name: String,
    pub status: JobState,
    pub time: JobTime,
    pub nodes: Option<String>,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub user: Option<String>,
    pub working_directory: Option<String>,
}

/// Slurm's state; `exit_code`/`interrupt_signal` are `null` while pending.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct JobState {
    /// Raw, e.g. `CANCELLED by 1001`: match on the first word.
    pub state: String,
    /// Often the string `"None"` rather than null.
    pub state_reason: Option<String>,
    pub exit_code: Option<i64>,
    pub interrupt_signal: Option<i64>,
}

/// Seconds; start/end are Unix times, null until known.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct JobTime {
    pub elapsed: Option<u64>,
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub limit: Option<u64>,
}

impl From<&Job> for JobStatus {
    fn from(job: &Job) -> Self {
        let reason = job
            .status
            .state_reason
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty() && *r != "None")
            .map(str::to_owned);
        let nodes = job
            .nodes
            .as_deref()
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        JobStatus {
            state: crate::outcome::SlurmState::parse(&job.status.state),
            reason,
            exit_code: job.status.exit_code,
            signal: job.status.interrupt_signal,
            elapsed: job.time.elapsed,
            submit_time: None,
            start_time: job.time.start,
            end_time: job.time.end,
            nodes,
        }
    }
}

/// `GET /compute/{system}/jobs/{id}/metadata`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct JobMetadataResponse {
    #[serde(deserialize_with = "null_as_default")]
    pub jobs: Vec<JobMetadata>,
}

/// Absolute, `%j`-expanded output paths of a job (and its script).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct JobMetadata {
    #[serde(deserialize_with = "string_or_number")]
    pub job_id: String,
    pub script: Option<String>,
    pub standard_input: Option<String>,
    pub standard_output: Option<String>,
    pub standard_error: Option<String>,
}

/// FirecREST's error body. Some proxies and FastAPI itself answer
/// `{"detail": ...}` instead, so that is read too.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ErrorBody {
    pub error_type: Option<String>,
    pub message: Option<String>,
    pub detail: Option<serde_json::Value>,
    pub data: Option<serde_json::Value>,
    pub user: Option<String>,
}

/// Reply of the OAuth2 token endpoint.
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct TokenResponse {
    pub access_token: String,
    /// Seconds; absent on some providers.
    pub expires_in: Option<u64>,
    pub token_type: Option<String>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"(redacted)")
            .field("expires_in", &self.expires_in)
            .field("token_type", &self.token_type)
            .finish()
    }
}

/// The token endpoint's error (RFC 6749 section 5.2).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TokenErrorBody {
    pub error: String,
    pub error_description: Option<String>,
}

/// Job ids are strings in 2.5.6; accept a number in case a server sends one.
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        S(String),
        N(i64),
        Null(()),
    }
    Ok(match Id::deserialize(d)? {
        Id::S(s) => s,
        Id::N(n) => n.to_string(),
        Id::Null(()) => String::new(),
    })
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pending_job_has_no_exit_code_and_none_reason_is_dropped() {
        let job: Job = serde_json::from_value(json!({
            "jobId": "34", "name": "IngressFileTransfer",
            "status": {"state": "PENDING", "stateReason": "None",
                       "exitCode": null, "interruptSignal": null},
            "time": {"elapsed": 0, "start": null, "end": null, "limit": 900},
            "nodes": "", "someNewField": [1, 2]
        }))
        .unwrap();
        let status = JobStatus::from(&job);
        assert_eq!(status.state, crate::outcome::SlurmState::Pending);
        assert_eq!(status.reason, None);
        assert_eq!(status.exit_code, None);
        assert_eq!(status.signal, None);
        assert_eq!(status.nodes, None);
        assert_eq!(status.start_time, None);
    }

    #[test]
    fn missing_fields_default_instead_of_failing() {
        let job: Job = serde_json::from_value(json!({"jobId": 7})).unwrap();
        assert_eq!(job.job_id, "7");
        assert_eq!(job.status.state, "");
        let status = JobStatus::from(&job);
        assert_eq!(status.exit_code, None);
        let jobs: JobsResponse = serde_json::from_value(json!({"jobs": null})).unwrap();
        assert!(jobs.jobs.is_empty());
    }

    #[test]
    fn real_reason_and_signal_are_kept() {
        let job: Job = serde_json::from_value(json!({
            "jobId": "32", "name": "oom",
            "status": {"state": "OUT_OF_MEMORY", "stateReason": "Priority",
                       "exitCode": 0, "interruptSignal": 125},
            "time": {"elapsed": 3, "start": 10, "end": 13}, "nodes": "vm"
        }))
        .unwrap();
        let status = JobStatus::from(&job);
        assert_eq!(status.reason.as_deref(), Some("Priority"));
        assert_eq!((status.exit_code, status.signal), (Some(0), Some(125)));
        assert_eq!((status.start_time, status.end_time), (Some(10), Some(13)));
        assert_eq!(status.nodes.as_deref(), Some("vm"));
    }

    #[test]
    fn submit_body_exposes_env_but_debug_does_not() {
        let job = JobDescription {
            name: "ci-1".into(),
            script: "#!/bin/bash -l\n".into(),
            working_directory: "/scratch/u/run".into(),
            account: Some("ci".into()),
            env: [("TOKEN".to_string(), Secret::new("hunter2"))].into(),
            ..Default::default()
        };
        let body = serde_json::to_value(JobSubmitRequest { job: &job }).unwrap();
        assert_eq!(
            body,
            json!({"job": {"name": "ci-1", "script": "#!/bin/bash -l\n",
                   "workingDirectory": "/scratch/u/run", "account": "ci",
                   "env": {"TOKEN": "hunter2"}}})
        );
        assert!(!format!("{job:?}").contains("hunter2"));
    }

    #[test]
    fn data_operation_reads_snake_and_camel_case() {
        let op: DataOperation = serde_json::from_value(json!({
            "max_ops_file_size": 5, "data_transfer": {"service_type": "s3",
            "multipart": {"max_part_size": 10}}
        }))
        .unwrap();
        assert_eq!(op.max_ops_file_size, Some(5));
        let transfer = op.data_transfer.unwrap();
        assert_eq!(transfer.service_type.as_deref(), Some("s3"));
        assert_eq!(transfer.multipart.unwrap().max_part_size, Some(10));
        let op: DataOperation = serde_json::from_value(
            json!({"maxOpsFileSize": 7, "dataTransfer": {"serviceType": "s3"}}),
        )
        .unwrap();
        assert_eq!(op.max_ops_file_size, Some(7));
    }
}
