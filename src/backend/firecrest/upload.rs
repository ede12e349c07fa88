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
use crate::backend::{GrowingArchive, JobId, Packed, StagedWorkspace};
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
            _ => self.upload_streaming(&mut archive, dir, &facts).await,
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
            let names: Vec<String> = (0..count)
                .map(|i| transfer::part_name("workspace.tar.gz", i))
                .collect();
            let result = for_each_part(ranges, size, |index, range| {
                let name = names[index].clone();
                async move {
                    let bytes = read_range(archive, range.start, range.end - range.start).await?;
                    self.client
                        .upload(dir, &name, &UploadSource::Bytes(bytes))
                        .await
                        .with_context(|| {
                            format!(
                                "failed to upload workspace part {}/{count} to {dir}",
                                index + 1
                            )
                        })
                }
            })
            .await;
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

    /// Uploads `size` bytes of `archive` from `offset` on through S3 as
    /// `dir/name`; returns the transfer job that moves them into place.
    async fn upload_staged(
        &self,
        archive: &Path,
        dir: &str,
        (offset, size): (u64, u64),
        name: &str,
    ) -> Result<JobId> {
        let target = format!("{dir}/{name}");
        let reply = self
            .client
            .transfer_upload(&target, size)
            .await
            .context("failed to start the S3-staged upload")?;
        self.note_transfer(&reply.transfer_job, true).await;
        let directives = reply.transfer_directives;
        let job = JobId(reply.transfer_job.job_id.clone());
        let part_size = directives
            .max_part_size
            .filter(|&s| s > 0)
            .context("the server's S3 upload directives have no maxPartSize")?;
        let urls = directives.parts_upload_urls.clone();
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
        let urls = &urls;
        let mut etags: Vec<(u32, String)> =
            for_each_part(ranges, size, |index, range| async move {
                let bytes = read_range(archive, range.start, range.end - range.start).await?;
                let etag = self
                    .client
                    .s3_put_part(&urls[index], bytes)
                    .await
                    .with_context(|| format!("failed to upload S3 part {}/{count}", index + 1))?;
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
            .context("failed to complete the S3 upload")?;
        tracing::info!(
            "waiting for FirecREST's transfer job {job} to pick up the upload \
             (it re-checks every 60 s); the batch job starts once it has"
        );
        Ok(job)
    }

    /// Uploads the archive in direct parts as it is packed, at most
    /// [`transfer::PARALLEL_UPLOADS`] in flight (each read from the file
    /// into memory), and hands the rest to S3 when [`transfer::rest_way`]
    /// says so. Returns the file names in order and the transfer job.
    async fn upload_streaming(
        &self,
        archive: &mut GrowingArchive,
        dir: &str,
        facts: &SystemFacts,
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
        loop {
            let packed = archive.now();
            let (written, total) = match packed {
                Packed::Writing(n) => (n, None),
                Packed::Done(n) => (n, Some(n)),
                Packed::Failed => bail!("packing the workspace failed"),
            };
            let committed = names.len() as u64 * part_size;
            let remaining = total.unwrap_or(written).saturating_sub(committed);
            if total.is_some() && remaining == 0 {
                while let Some(done) = in_flight.next().await {
                    let len: u64 = done?;
                    progress.advance(len);
                }
                progress.finish();
                return Ok(StagedWorkspace {
                    parts: names,
                    transfer_job: None,
                });
            }
            let way = transfer::rest_way(
                self.transfer_threshold,
                facts.s3,
                total,
                remaining,
                meter.rate(),
            );
            if way == RestWay::S3 {
                while let Some(done) = in_flight.next().await {
                    progress.advance(done?);
                }
                progress.finish();
                if let Some(rate) = meter.rate() {
                    tracing::info!(
                        "direct parts move {}/s: the remaining {} go through S3 (expected \
                         faster even with the transfer job's 60 s re-check)",
                        crate::progress::format_bytes(rate as u64),
                        crate::progress::format_bytes(remaining)
                    );
                }
                let name = if names.is_empty() {
                    "workspace.tar.gz".to_string()
                } else {
                    transfer::part_name("workspace.tar.gz", names.len())
                };
                let job = self
                    .upload_staged(path, dir, (committed, remaining), &name)
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
/// progress line every few seconds for long uploads.
async fn for_each_part<T, F, Fut>(ranges: Vec<Range<u64>>, total: u64, work: F) -> Result<Vec<T>>
where
    F: Fn(usize, Range<u64>) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let progress = std::sync::Mutex::new(Progress::new("upload", Some(total), PROGRESS_EVERY));
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
