//! Sending the workspace archive: one upload when it fits, direct parts
//! while it is being packed, the rest through S3 when [`transfer::rest_way`]
//! expects that to be faster.

use std::future::Future;
use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{is_too_large, FirecrestBackend, SystemFacts, PROGRESS_EVERY};
use crate::backend::{GrowingArchive, JobId, Packed, StagedSoon, StagedWorkspace};
use crate::firecrest::UploadSource;
use crate::progress::Progress;
use crate::transfer::{self, RestWay};

impl FirecrestBackend {
    /// One upload when the whole archive fits, else parts while it is
    /// packed (and S3 for the rest when that is faster); smaller parts when
    /// the server refuses one as too large.
    pub(super) async fn upload_archive(
        &self,
        mut archive: GrowingArchive,
        dir: &str,
        soon: Option<StagedSoon>,
    ) -> Result<StagedWorkspace> {
        let facts = self.facts().await?.clone();
        let direct = facts
            .max_ops_file_size
            .saturating_sub(transfer::PART_MARGIN)
            .max(1);
        // One upload when the whole archive fits: known once packing ended
        // or once more than that is packed.
        let first = archive.written(direct + 1).await?;
        let whole = |parts: Vec<String>| StagedWorkspace {
            parts,
            transfer_job: None,
        };
        let result = match first {
            Packed::Done(size) if size <= direct => {
                let source = UploadSource::File(archive.path.clone());
                match self.client.upload(dir, "workspace.tar.gz", &source).await {
                    Ok(()) => return Ok(whole(vec!["workspace.tar.gz".to_string()])),
                    Err(err) => Err(err),
                }
            }
            _ => self.upload_streaming(&mut archive, dir, &facts, soon).await,
        };
        match result {
            Err(err) if is_too_large(&err) => {
                // The server's real limit is lower than it said: smaller
                // parts, once the archive is whole.
                let size = archive.finished().await?;
                let part_size = (transfer::part_size_for(facts.max_ops_file_size).min(size) / 2)
                    .max(transfer::MIN_PART_SIZE);
                tracing::warn!(
                    "the server refused the archive as too large; uploading it in parts of {}",
                    crate::progress::format_bytes(part_size)
                );
                let parts = self
                    .upload_parts(&archive.path, dir, size, part_size)
                    .await?;
                Ok(whole(parts))
            }
            other => other,
        }
    }

    async fn upload_parts(
        &self,
        archive: &Path,
        dir: &str,
        size: u64,
        mut part_size: u64,
    ) -> Result<Vec<String>> {
        loop {
            let ranges = transfer::part_ranges(size, part_size);
            let count = ranges.len();
            tracing::info!(
                "uploading {} in {count} parts of up to {}",
                crate::progress::format_bytes(size),
                crate::progress::format_bytes(part_size)
            );
            let names = transfer::part_names("workspace.tar.gz", size, part_size);
            let result = self.upload_ranges(archive, dir, ranges, &names).await;
            match result {
                Ok(_) => return Ok(names),
                Err(err) if is_too_large(&err) && part_size / 2 >= transfer::MIN_PART_SIZE => {
                    // The server's real limit is lower than it said: halve and start over.
                    part_size /= 2;
                    tracing::warn!(
                        "the server refused a part as too large; retrying with parts of {}",
                        crate::progress::format_bytes(part_size)
                    );
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Uploads each byte range of `archive` as the direct part of the same
    /// index in `names`, a few at a time.
    async fn upload_ranges(
        &self,
        archive: &Path,
        dir: &str,
        ranges: Vec<Range<u64>>,
        names: &[String],
    ) -> Result<()> {
        let count = ranges.len();
        let total = ranges.iter().map(|r| r.end - r.start).sum();
        for_each_part("upload", ranges, total, |index, range| async move {
            let bytes = read_range(archive, range.start, range.end - range.start).await?;
            self.client
                .upload(dir, &names[index], &UploadSource::Bytes(bytes))
                .await
                .with_context(|| {
                    format!(
                        "failed to upload workspace part {} ({}/{count}) to {dir}",
                        names[index],
                        index + 1
                    )
                })
        })
        .await?;
        Ok(())
    }

    /// Uploads `size` bytes of `archive` from `offset` on through S3 as
    /// `dir/name`, while `beside` (direct parts of the bytes before them)
    /// runs; returns the transfer job that moves them into place. If either
    /// fails, the transfer job is cancelled: it would otherwise look for
    /// the object until its time limit, holding a node.
    async fn upload_staged(
        &self,
        archive: &Path,
        dir: &str,
        (offset, size): (u64, u64),
        name: &str,
        beside: impl Future<Output = Result<()>>,
    ) -> Result<JobId> {
        let target = format!("{dir}/{name}");
        let reply = self
            .client
            .transfer_upload(&target, size)
            .await
            .context("failed to start the S3-staged upload")?;
        self.note_transfer(&reply.transfer_job, super::TransferKind::Upload)
            .await;
        let job = JobId(reply.transfer_job.job_id.clone());
        let directives = reply.transfer_directives;
        let staged = async {
            let part_size = directives
                .max_part_size
                .filter(|&s| s > 0)
                .context("the server's S3 upload directives have no maxPartSize")?;
            let urls = &directives.parts_upload_urls;
            let ranges: Vec<Range<u64>> = transfer::part_ranges(size, part_size)
                .into_iter()
                .map(|r| r.start + offset..r.end + offset)
                .collect();
            if urls.len() != ranges.len() {
                bail!(
                    "the server gave {} S3 part URLs for {} parts of {part_size} bytes",
                    urls.len(),
                    ranges.len()
                );
            }
            tracing::info!(
                "uploading {} through S3 in {} parts (transfer job {job})",
                crate::progress::format_bytes(size),
                urls.len()
            );
            let count = urls.len();
            let mut etags: Vec<(u32, String)> =
                for_each_part("S3 upload", ranges, size, |index, range| async move {
                    let bytes = read_range(archive, range.start, range.end - range.start).await?;
                    let etag = self
                        .client
                        .s3_put_part(&urls[index], bytes)
                        .await
                        .with_context(|| {
                            format!("failed to upload S3 part {}/{count}", index + 1)
                        })?;
                    anyhow::Ok((index as u32 + 1, etag))
                })
                .await?;
            etags.sort();
            let complete = directives
                .complete_upload_url
                .as_deref()
                .context("the server's S3 upload directives have no completeUploadUrl")?;
            self.client
                .s3_complete_upload(complete, &etags)
                .await
                .context("failed to complete the S3 upload")
        };
        if let Err(err) = tokio::try_join!(beside, staged) {
            self.cancel_transfer(&job, "the upload failed").await;
            return Err(err);
        }
        tracing::info!(
            "waiting for FirecREST's transfer job {job} to pick up the upload \
             (it re-checks every 60 s); the batch job starts once it has"
        );
        Ok(job)
    }

    /// Uploads the archive in direct parts as it is packed, at most
    /// [`transfer::PARALLEL_UPLOADS`] in flight (each read from the file
    /// into memory), and hands the rest to S3 when [`transfer::rest_way`]
    /// says so. Returns the file names in order and the transfer job; says
    /// them on `soon` once packing ended, a part is up at this size and
    /// the rest is expected up within [`transfer::SUBMIT_LEAD`].
    async fn upload_streaming(
        &self,
        archive: &mut GrowingArchive,
        dir: &str,
        facts: &SystemFacts,
        mut soon: Option<StagedSoon>,
    ) -> Result<StagedWorkspace> {
        let part_size = transfer::part_size_for(facts.max_ops_file_size);
        let path = archive.path.clone();
        let path = &path;
        tracing::info!(
            "uploading the workspace in parts of up to {} while it is packed",
            crate::progress::format_bytes(part_size)
        );
        let mut progress = Progress::new("upload", None, PROGRESS_EVERY);
        let mut in_flight = stream::FuturesUnordered::new();
        let mut names: Vec<String> = Vec::new();
        let mut meter = RateMeter::default();
        let mut said_soon = false;
        loop {
            let packed = archive.now();
            let (written, total) = match packed {
                Packed::Writing(n) => (n, None),
                Packed::Done(n) => (n, Some(n)),
                Packed::Failed => bail!("packing the workspace failed"),
            };
            let committed = names.len() as u64 * part_size;
            let remaining = total.unwrap_or(written).saturating_sub(committed);
            if total.is_some() && remaining == 0 && in_flight.is_empty() {
                progress.finish();
                return Ok(StagedWorkspace {
                    parts: names,
                    transfer_job: None,
                });
            }
            if let (Some(size), Some(_)) = (total, &soon) {
                // The meter counts the bytes of the parts that are up.
                let left = size - meter.bytes;
                if meter.parts > 0 && transfer::submit_ahead(left, meter.rate()) {
                    tracing::debug!(
                        "{} of the archive left to upload: the job can be submitted",
                        crate::progress::format_bytes(left)
                    );
                    let parts = transfer::part_names("workspace.tar.gz", size, part_size);
                    if let Some(soon) = soon.take() {
                        let _ = soon.send(StagedWorkspace {
                            parts,
                            transfer_job: None,
                        });
                    }
                    said_soon = true;
                }
            }
            // Once the job may be submitted with these parts, the rest stays
            // in parts; once every part started, they are waited for.
            let way = match (said_soon, total.is_some() && remaining == 0) {
                (_, true) => RestWay::Wait,
                (true, false) => RestWay::Parts,
                (false, false) => transfer::rest_way(
                    self.transfer_threshold,
                    facts.s3.then_some(&self.s3_timing),
                    total,
                    remaining,
                    meter.rate(),
                ),
            };
            if way == RestWay::S3 {
                while let Some(done) = in_flight.next().await {
                    progress.advance(done?);
                }
                progress.finish();
                // Direct parts beside S3 only where the rate was measured
                // (the overrides choose S3 for the whole archive).
                let mut beside = 0;
                if let Some(rate) = meter.rate() {
                    beside = transfer::direct_share_beside_s3(
                        remaining,
                        rate,
                        part_size,
                        &self.s3_timing,
                    );
                    let beside_note = if beside > 0 {
                        format!(
                            "; {} of them in direct parts at the same time, so that S3's \
                             share is ready for an earlier look of the transfer job",
                            crate::progress::format_bytes(beside)
                        )
                    } else {
                        String::new()
                    };
                    tracing::info!(
                        "direct parts move {}/s: the remaining {} go through S3 (expected \
                         faster even with the transfer job's 60 s re-check){beside_note}",
                        crate::progress::format_bytes(rate as u64),
                        crate::progress::format_bytes(remaining)
                    );
                }
                let middle: Vec<Range<u64>> = transfer::part_ranges(beside, part_size)
                    .into_iter()
                    .map(|r| r.start + committed..r.end + committed)
                    .collect();
                let first = names.len();
                names.extend(
                    (0..middle.len()).map(|i| transfer::part_name("workspace.tar.gz", first + i)),
                );
                let name = if names.is_empty() {
                    "workspace.tar.gz".to_string()
                } else {
                    transfer::part_name("workspace.tar.gz", names.len())
                };
                let s3_from = committed + beside;
                let middle = self.upload_ranges(path, dir, middle, &names[first..]);
                let job = self
                    .upload_staged(path, dir, (s3_from, remaining - beside), &name, middle)
                    .await?;
                names.push(name);
                return Ok(StagedWorkspace {
                    parts: names,
                    transfer_job: Some(job),
                });
            }
            let ready = written >= committed + part_size || total.is_some();
            if way == RestWay::Parts && ready && in_flight.len() < transfer::PARALLEL_UPLOADS {
                let index = names.len();
                let end = (committed + part_size).min(total.unwrap_or(u64::MAX));
                let name = transfer::part_name("workspace.tar.gz", index);
                tracing::debug!(
                    "part {}: upload of archive bytes {committed}..{end} started ({})",
                    index + 1,
                    match total {
                        Some(_) => "packing done".to_string(),
                        None => format!("{written} bytes packed so far"),
                    }
                );
                names.push(name.clone());
                meter.started();
                in_flight.push(async move {
                    let bytes = read_range(path, committed, end - committed).await?;
                    self.client
                        .upload(dir, &name, &UploadSource::Bytes(bytes))
                        .await
                        .with_context(|| {
                            format!("failed to upload workspace part {} to {dir}", index + 1)
                        })?;
                    anyhow::Ok(end - committed)
                });
                continue;
            }
            tokio::select! {
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    let len = done?;
                    meter.finished(len, in_flight.is_empty());
                    progress.advance(len);
                }
                changed = archive.changed(), if total.is_none() => { changed?; }
            }
        }
    }
}

/// The direct-part rate: bytes of finished parts over the time any part
/// was in flight (waits for the packer do not count), reported once
/// [`transfer::RATE_AFTER_PARTS`] parts are up.
#[derive(Debug, Default)]
struct RateMeter {
    parts: usize,
    bytes: u64,
    busy: std::time::Duration,
    busy_since: Option<std::time::Instant>,
}

impl RateMeter {
    fn started(&mut self) {
        self.busy_since.get_or_insert_with(std::time::Instant::now);
    }

    /// A part of `len` bytes is up; `idle`: none is in flight any more.
    fn finished(&mut self, len: u64, idle: bool) {
        self.parts += 1;
        self.bytes += len;
        if idle {
            if let Some(since) = self.busy_since.take() {
                self.busy += since.elapsed();
            }
        }
    }

    fn rate(&self) -> Option<f64> {
        if self.parts < transfer::RATE_AFTER_PARTS {
            return None;
        }
        let busy = self.busy
            + self
                .busy_since
                .map_or_else(Default::default, |s| s.elapsed());
        Some(self.bytes as f64 / busy.as_secs_f64().max(1e-3))
    }
}

/// Runs `work` on each byte range of an upload, a few at a time, with a
/// progress line (named `what`: direct parts and S3 may go up at once)
/// every few seconds for long uploads.
async fn for_each_part<T, F, Fut>(
    what: &str,
    ranges: Vec<Range<u64>>,
    total: u64,
    work: F,
) -> Result<Vec<T>>
where
    F: Fn(usize, Range<u64>) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let progress = std::sync::Mutex::new(Progress::new(what, Some(total), PROGRESS_EVERY));
    let progress = &progress;
    let results = stream::iter(ranges.into_iter().enumerate())
        .map(|(index, range)| {
            let len = range.end - range.start;
            let job = work(index, range);
            async move {
                let value = job.await?;
                if let Ok(mut progress) = progress.lock() {
                    progress.advance(len);
                }
                anyhow::Ok(value)
            }
        })
        .buffer_unordered(transfer::PARALLEL_UPLOADS)
        .try_collect()
        .await?;
    if let Ok(mut progress) = progress.lock() {
        progress.finish();
    }
    Ok(results)
}

async fn read_range(path: &Path, start: u64, len: u64) -> Result<Vec<u8>> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("failed to open {}", path.display()))?;
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .with_context(|| format!("failed to seek in {}", path.display()))?;
    let mut buffer = Vec::with_capacity(len as usize);
    file.take(len)
        .read_to_end(&mut buffer)
        .await
        .with_context(|| format!("failed to read {}", path.display()))?;
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{backend, recorded};
    use super::*;
    use crate::backend::Backend;
    use wiremock::matchers::{method, path};
    use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

    /// Requests whose body is larger than this many bytes.
    struct BodyOver(usize);

    impl Match for BodyOver {
        fn matches(&self, request: &Request) -> bool {
            request.body.len() > self.0
        }
    }

    /// Answers `transfer/upload` with one presigned URL per S3 part of the
    /// size asked for, on the same server.
    struct StagedUpload(String);

    impl wiremock::Respond for StagedUpload {
        fn respond(&self, request: &Request) -> ResponseTemplate {
            let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
            let size = body["transferDirectives"]["fileSize"].as_u64().unwrap();
            let parts = size.div_ceil(S3_PART);
            let urls: Vec<String> = (1..=parts)
                .map(|n| format!("{}/s3/obj?partNumber={n}", self.0))
                .collect();
            let mut reply = recorded("transfer_upload.json", 0);
            reply["transferDirectives"]["partsUploadUrls"] = serde_json::json!(urls);
            reply["transferDirectives"]["completeUploadUrl"] =
                serde_json::json!(format!("{}/s3/obj?uploadId=1", self.0));
            reply["transferDirectives"]["maxPartSize"] = serde_json::json!(S3_PART);
            ResponseTemplate::new(201).set_body_json(reply)
        }
    }

    const S3_PART: u64 = 1 << 20;

    #[tokio::test]
    async fn direct_parts_go_up_beside_s3_when_s3_alone_would_miss_a_look() {
        let server = MockServer::start().await;
        let mut backend = backend(&server).await;
        // Parts of 124 KiB, each taking 0.2 s (about 2.5 MB/s with four in
        // flight); S3 expected at 5 MB/s; the transfer job looks at 0.1 s and
        // then every 0.3 s. The 7.5 MB left after the first four parts
        // would take S3 alone until the 1.9 s look; beside about 2 MB of
        // parts, S3's share makes the 1.3 s one.
        backend.transfer_threshold = transfer::TransferThreshold::Auto;
        backend.s3_timing = transfer::S3Timing {
            first_look: std::time::Duration::from_millis(100),
            recheck: std::time::Duration::from_millis(300),
            rate: 5e6,
        };
        let mut systems = recorded("systems.json", 1);
        systems["systems"][0]["dataOperation"]["max_ops_file_size"] = serde_json::json!(128 * 1024);
        Mock::given(method("GET"))
            .and(path("/status/systems"))
            .respond_with(ResponseTemplate::new(200).set_body_json(systems))
            .with_priority(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/filesystem/daint/ops/upload"))
            .respond_with(
                ResponseTemplate::new(204).set_delay(std::time::Duration::from_millis(200)),
            )
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/filesystem/daint/transfer/upload"))
            .respond_with(StagedUpload(server.uri()))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("PUT"))
            .and(path("/s3/obj"))
            .respond_with(ResponseTemplate::new(200).insert_header("ETag", "\"e\""))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/s3/obj"))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&server)
            .await;
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("workspace.tar.gz");
        let bytes: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&archive, &bytes).unwrap();
        let staged = backend
            .upload_workspace(&archive, "/scratch/ciuser/run")
            .await
            .unwrap();

        let requests = server.received_requests().await.unwrap();
        let is = |r: &Request, m: &str, p: &str| r.method.as_str() == m && r.url.path() == p;
        let staged_at = requests
            .iter()
            .position(|r| is(r, "POST", "/filesystem/daint/transfer/upload"))
            .expect("S3 was used");
        let body: serde_json::Value = serde_json::from_slice(&requests[staged_at].body).unwrap();
        let s3_size = body["transferDirectives"]["fileSize"].as_u64().unwrap();
        let direct: Vec<&Request> = requests
            .iter()
            .filter(|r| is(r, "POST", "/filesystem/daint/ops/upload"))
            .collect();
        let beside = requests[staged_at..]
            .iter()
            .filter(|r| is(r, "POST", "/filesystem/daint/ops/upload"))
            .count();
        // Whole direct parts, then S3 for the rest: every byte once.
        let part = transfer::part_size_for(128 * 1024);
        assert_eq!(direct.len() as u64 * part + s3_size, bytes.len() as u64);
        assert!(
            beside > 0 && direct.len() > transfer::RATE_AFTER_PARTS,
            "{} direct parts, {beside} of them beside S3",
            direct.len()
        );
        let s3_from = bytes.len() - s3_size as usize;
        let mut puts: Vec<(u64, Vec<u8>)> = requests
            .iter()
            .filter(|r| is(r, "PUT", "/s3/obj"))
            .map(|r| {
                let n = r
                    .url
                    .query_pairs()
                    .find(|(k, _)| k == "partNumber")
                    .unwrap()
                    .1;
                (n.parse().unwrap(), r.body.clone())
            })
            .collect();
        puts.sort();
        let s3_bytes: Vec<u8> = puts.into_iter().flat_map(|(_, body)| body).collect();
        assert!(
            s3_bytes == bytes[s3_from..],
            "S3 carries exactly the archive's tail"
        );
        // The job reassembles the direct parts in order, then the S3 object.
        let names: Vec<String> = (0..=direct.len())
            .map(|i| transfer::part_name("workspace.tar.gz", i))
            .collect();
        assert_eq!(staged.parts, names);
        assert!(staged.transfer_job.is_some());
    }

    #[tokio::test]
    async fn an_upload_refused_as_too_large_falls_back_to_smaller_parts() {
        let server = MockServer::start().await;
        let backend = backend(&server).await;
        // The server says 5 MiB, but a proxy in front refuses more than 2 MB.
        Mock::given(method("POST"))
            .and(path("/filesystem/daint/ops/upload"))
            .and(BodyOver(2_000_000))
            .respond_with(
                ResponseTemplate::new(413).set_body_json(recorded("ops_upload_too_large.json", 0)),
            )
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/filesystem/daint/ops/upload"))
            .respond_with(ResponseTemplate::new(204))
            .expect(2)
            .mount(&server)
            .await;
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("workspace.tar.gz");
        std::fs::write(&archive, vec![7u8; 3 * 1024 * 1024]).unwrap();
        let staged = backend
            .upload_workspace(&archive, "/scratch/ciuser/run")
            .await
            .unwrap();
        assert_eq!(
            staged.parts,
            vec![
                transfer::part_name("workspace.tar.gz", 0),
                transfer::part_name("workspace.tar.gz", 1)
            ]
        );
        assert!(staged.transfer_job.is_none());
    }
}
