//! The calls a FirecREST run makes, for the dry run: the endpoints as the
//! client in [`crate::firecrest`] sends them.

use crate::backend::PlanRequest;
use crate::config::{Credentials, TransferThreshold};
use crate::progress::format_bytes;

/// Every request of the run, in order; needs no connection (nor a URL).
pub fn plan(request: &PlanRequest) -> Vec<String> {
    let config = request.config;
    let run_dir = request.run_dir;
    let (archive, env_file, output, artifacts) = (
        request.archive,
        request.env_file,
        request.output,
        request.artifacts,
    );
    let (system, auth) = match &config.firecrest {
        Some(settings) => (
            settings.system.clone(),
            match &settings.credentials {
                Credentials::ClientCredentials { token_url, .. } => {
                    format!("POST {token_url} (client credentials grant; refreshed before expiry)")
                }
                Credentials::AccessToken(_) => "use the given access token".to_string(),
            },
        ),
        None => (
            "<system>".to_string(),
            "POST <token url> (client credentials grant)".to_string(),
        ),
    };
    let mut steps = vec![
        auth,
        "GET /status/systems (upload size limit, default work directory)".to_string(),
    ];
    if config.remote_dir.is_none() {
        steps.push(format!(
            "GET /status/{system}/userinfo (user name for the base directory)"
        ));
    }
    steps.push(format!(
        "POST /filesystem/{system}/ops/mkdir {run_dir}, PUT ops/chmod 700"
    ));
    if !config.env_vars.is_empty() {
        steps.push(format!(
            "POST /filesystem/{system}/ops/upload {env_file} ({} forwarded variables)",
            config.env_vars.len()
        ));
    }
    let s3 = match config.transfer_threshold {
        TransferThreshold::Auto => "when the parts, at the rate measured on the first ones, \
            would take clearly longer than S3 and the transfer job's 60 s re-check"
            .to_string(),
        TransferThreshold::AlwaysS3 => "always".to_string(),
        TransferThreshold::Never => "never".to_string(),
        TransferThreshold::Above(size) => format!("above {}", format_bytes(size)),
    };
    steps.push(format!(
        "POST /filesystem/{system}/ops/upload {archive} (in parts above the server's limit, \
         started while packing; the rest through POST /filesystem/{system}/transfer/upload \
         and S3: {s3})"
    ));
    steps.push(format!(
        "POST /compute/{system}/jobs (job {}; while the last parts go up when they are \
         expected up within a second, then POST ops/upload workspace.ready, which the job \
         waits for)",
        config.job_name
    ));
    steps.push(format!(
        "GET /compute/{system}/jobs/<id> every {}s; GET /filesystem/{system}/ops/tail of {run_dir}/{output} from the last byte shown",
        config.poll.state_interval.as_secs()
    ));
    if !config.artifacts.is_empty() {
        steps.push(format!(
            "GET /filesystem/{system}/ops/download {run_dir}/{artifacts} ({:?})",
            config.artifacts_when
        ));
    }
    steps.push(request.removal(&format!("DELETE /filesystem/{system}/ops/rm {run_dir}")));
    steps.push(format!("on cancel: DELETE /compute/{system}/jobs/<id>"));
    steps
}
