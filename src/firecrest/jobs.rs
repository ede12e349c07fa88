//! Slurm jobs (`/compute/{system}/jobs...`): submit exactly once, read,
//! list, cancel.

use anyhow::{Context, Result};
use reqwest::Method;
use std::time::Duration;

use super::models::*;
use super::retry::{self, Attempt, Failure, Retry, RetryPolicy};
use super::{path_of, ApiError, Call, Client, Resend};

fn jobs_segments<'a>(system: &'a str, job_id: Option<&'a str>) -> Vec<&'a str> {
    let mut segments = vec!["compute", system, "jobs"];
    segments.extend(job_id);
    segments
}

fn metadata_segments<'a>(system: &'a str, job_id: &'a str) -> Vec<&'a str> {
    let mut segments = jobs_segments(system, Some(job_id));
    segments.push("metadata");
    segments
}

/// `/compute/{system}/jobs` (submit, list) or `/compute/{system}/jobs/{id}`
/// (read, cancel), for messages and the dry-run plan.
pub fn jobs_path(system: &str, job_id: Option<&str>) -> String {
    path_of(&jobs_segments(system, job_id))
}

/// `/compute/{system}/jobs/{id}/metadata`: a job's stdout/stderr paths.
pub fn metadata_path(system: &str, job_id: &str) -> String {
    path_of(&metadata_segments(system, job_id))
}

/// How often the job list is searched for a job whose submit reply was lost
/// before submitting it again.
const LOST_SUBMIT_LOOKUPS: usize = 3;

/// A submit answered with success but no readable job id: the job was
/// probably created, so it is looked up by name rather than given up on
/// (which would leave it running) or blindly submitted again.
#[derive(Debug, thiserror::Error)]
#[error("the job was accepted but its id could not be read")]
struct UnreadableSubmitReply(#[source] Option<serde_json::Error>);

impl Client {
    /// Submits `job` exactly once. When the reply is lost in a way that the
    /// job may exist (timeout, reset, 5xx), the job list is searched for the
    /// job's unique name before submitting again.
    pub async fn submit_job(&self, job: &JobDescription) -> Result<String> {
        anyhow::ensure!(
            !job.name.trim().is_empty(),
            "a job needs a unique name to be submitted safely"
        );
        // Resubmits at most a few times: a deterministic sbatch failure also
        // answers 500, and should not take the whole retry budget.
        let policy = RetryPolicy {
            max_retries: self.inner.retry.max_retries.min(4),
            ..self.inner.retry
        };
        let path = jobs_path(self.system(), None);
        let mut submit = SubmitAttempt {
            client: self,
            job,
            resubmit: false,
        };
        Retry::new(policy, format!("POST {path}"))
            .note("job submit failed; checking whether the job exists")
            .run(&mut submit)
            .await
    }

    /// One submit request; resent only when it surely never arrived.
    async fn post_job(&self, job: &JobDescription) -> Result<String> {
        let body = serde_json::to_value(JobSubmitRequest { job })
            .context("failed to encode the job submission")?;
        let call = Call::new(Method::POST, jobs_segments(self.system(), None))
            .json(body)
            .resend(Resend::OnlyIfUnsent);
        let label = format!("{} {}", call.method, call.path());
        let reply = self.send(call).await?;
        match serde_json::from_slice::<SubmitResponse>(&reply.body) {
            Ok(reply) if !reply.job_id.is_empty() => Ok(reply.job_id),
            Ok(_) => Err(anyhow::Error::new(UnreadableSubmitReply(None))
                .context(format!("{label}: the reply carries no job id"))),
            Err(err) => Err(anyhow::Error::new(UnreadableSubmitReply(Some(err)))
                .context(format!("{label}: the reply is not the JSON expected"))),
        }
    }

    /// The newest of the user's jobs named `name`, if any.
    pub async fn find_job_by_name(&self, name: &str) -> Result<Option<String>> {
        let jobs = self
            .list_jobs()
            .await
            .context("failed to look for a job whose submit reply was lost")?;
        Ok(jobs
            .into_iter()
            .filter(|j| j.name == name)
            .max_by_key(|j| j.job_id.parse::<u64>().unwrap_or(0))
            .map(|j| j.job_id))
    }

    /// The user's jobs on this system (running and recent).
    pub async fn list_jobs(&self) -> Result<Vec<Job>> {
        let call = Call::new(Method::GET, jobs_segments(self.system(), None));
        Ok(self.json::<JobsResponse>(call).await?.jobs)
    }

    /// One job; `None` while the scheduler does not know it (404). A reply
    /// without a state is an error, not an unknown state to wait on.
    pub async fn job(&self, job_id: &str) -> Result<Option<Job>> {
        let call = Call::new(Method::GET, jobs_segments(self.system(), Some(job_id)));
        let label = format!("{} {}", call.method, call.path());
        match self.json::<JobsResponse>(call).await {
            Ok(reply) => {
                let mut jobs = reply.jobs;
                let index = jobs.iter().position(|j| j.job_id == job_id).unwrap_or(0);
                let job = (!jobs.is_empty()).then(|| jobs.swap_remove(index));
                if job
                    .as_ref()
                    .is_some_and(|j| j.status.state.trim().is_empty())
                {
                    anyhow::bail!("{label}: the reply has no job state");
                }
                Ok(job)
            }
            Err(err) if ApiError::find(&err).is_some_and(ApiError::is_not_found) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Absolute stdout/stderr paths of a job.
    pub async fn job_metadata(&self, job_id: &str) -> Result<JobMetadata> {
        let call = Call::new(Method::GET, metadata_segments(self.system(), job_id));
        let reply: JobMetadataResponse = self.json(call).await?;
        reply
            .jobs
            .into_iter()
            .next()
            .with_context(|| format!("no metadata for job {job_id}"))
    }

    /// `scancel`. A job that already ended (500 "already completing or
    /// completed") or is unknown (404) counts as cancelled.
    pub async fn cancel_job(&self, job_id: &str) -> Result<()> {
        let mut call = Call::new(Method::DELETE, jobs_segments(self.system(), Some(job_id)));
        call.is_final = |e| e.is_not_found() || is_already_completed(e);
        match self.send(call).await {
            Ok(_) => Ok(()),
            Err(err)
                if ApiError::find(&err)
                    .is_some_and(|e| e.is_not_found() || is_already_completed(e)) =>
            {
                tracing::debug!(job_id, "job already ended; nothing to cancel");
                Ok(())
            }
            Err(err) => Err(err),
        }
    }
}

/// A job submit, as the retry loop sees it: an ambiguous failure is looked
/// up in the job list before the job is sent again.
struct SubmitAttempt<'a> {
    client: &'a Client,
    job: &'a JobDescription,
    /// Set after the first attempt: the job may exist already.
    resubmit: bool,
}

impl Attempt for SubmitAttempt<'_> {
    type Output = String;

    async fn attempt(&mut self) -> Result<String, Failure> {
        let client = self.client;
        if self.resubmit {
            // The wait also gave the scheduler time to list the job; a new
            // job can take a few seconds to show up, so look again before
            // concluding it does not exist.
            let spacing = client.inner.retry.max_delay.min(Duration::from_secs(3));
            for lookup in 0..LOST_SUBMIT_LOOKUPS {
                if lookup > 0 {
                    tokio::time::sleep(spacing).await;
                }
                let found = client
                    .find_job_by_name(&self.job.name)
                    .await
                    .map_err(Failure::Fatal)?;
                if let Some(found) = found {
                    tracing::debug!(job_id = %found, "the job was created despite the failed reply");
                    return Ok(found);
                }
            }
        }
        self.resubmit = true;
        let err = match client.post_job(self.job).await {
            Ok(id) => return Ok(id),
            Err(err) => err,
        };
        // Unsent failures were already retried by `send` until its budget
        // ran out; only an ambiguous failure is looked into here: a lost
        // reply, or a success reply that cannot be read (the job exists, but
        // its id is unknown).
        if err.chain().any(|c| c.is::<UnreadableSubmitReply>()) {
            return Err(Failure::Retry(err));
        }
        if retry::is_unsent(&err) {
            return Err(Failure::Fatal(err));
        }
        Err(Failure::Judge(err))
    }
}

fn is_already_completed(err: &ApiError) -> bool {
    err.status == 500 && err.message.contains("already completing or completed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn already_completed_is_recognised_only_on_500() {
        let mut e = ApiError::test_reply(
            500,
            "DELETE",
            "/compute/daint/jobs/33",
            "Unexpected Slurm command response. exit_status:0 std_err:scancel: Terminating job 33\nscancel: error: Kill job error on job id 33: Job/step already completing or completed\n",
        );
        assert!(is_already_completed(&e));
        e.status = 400;
        assert!(!is_already_completed(&e));
    }
}
