//! The FirecREST v2 backend: the pipeline's calls mapped onto the REST API,
//! with the server's traps handled here (size limits of the synchronous
//! calls, text replies with replaced bytes, 1-based `tail` offsets, the
//! missing dependency field of the submit call).

use std::future::Future;
use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{Mutex, OnceCell};

use super::{
    Backend, CheckRow, GrowingArchive, JobId, JobSpec, JobStatus, OutputChunk, Packed,
    StagedWorkspace, SubmitRejected,
};
use crate::config::{FirecrestSettings, PollSettings};
use crate::firecrest::models::{JobDescription, TransferJob};
use crate::firecrest::retry::{Rejection, RetryPolicy};
use crate::firecrest::{ApiError, Client, ClientSettings, TokenObserver, UploadSource};
use crate::progress::Progress;
use crate::transfer::{self, RestWay, TailReading, TransferThreshold};

/// A progress line at most this often during long uploads.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The server's limit when `/status/systems` does not say (FirecREST's default).
const DEFAULT_MAX_OPS_FILE_SIZE: u64 = 5 * 1024 * 1024;

/// The longest pause between two looks at a transfer job the run waits for.
const TRANSFER_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// How long to wait for an S3 transfer job before giving up.
const TRANSFER_WAIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// What `/status/systems` says about the system, read once.
#[derive(Debug, Clone)]
struct SystemFacts {
    max_ops_file_size: u64,
    default_work_dir: Option<String>,
    s3: bool,
}

/// An S3 snapshot of an output file, for reading a backlog larger than a
/// synchronous call may return.
#[derive(Debug, Clone)]
struct Snapshot {
    url: String,
    size: u64,
}

/// Cluster access through a FirecREST v2 deployment.
pub struct FirecrestBackend {
    client: Client,
    transfer_threshold: TransferThreshold,
    facts: OnceCell<SystemFacts>,
    snapshots: Mutex<std::collections::HashMap<String, Snapshot>>,
    reads: Mutex<std::collections::HashMap<String, ReadState>>,
    /// The transfer jobs this run started, whose logs it removes at cleanup.
    transfers: Mutex<Vec<Transfer>>,
}

/// One transfer job of this run and the files FirecREST makes for it
/// outside the run directory (`<defaultWorkDir>/<user>`).
#[derive(Debug, Clone)]
struct Transfer {
    job: String,
    output_log: String,
    error_log: String,
    /// An S3 upload, whose script also leaves an empty `tmp/` beside the logs.
    upload: bool,
}

/// The file names FirecREST gives transfer-job logs: only such files are
/// ever removed, whatever a reply says.
const TRANSFER_LOG_PREFIX: &str = ".f7t_file_handling_job_";

/// Above this much unread output, and with S3, the backlog is read from an
/// S3 snapshot (one transfer job, then ranged GETs) instead of in pieces.
const S3_BACKLOG: u64 = 32 * 1024 * 1024;

/// One `read_output` call reads at most this much (the watcher shows it,
/// then calls again at once: [`OutputChunk::more`]) ...
const READ_BUDGET: u64 = 16 * 1024 * 1024;

/// ... and stops starting new pieces after this long.
const READ_TIME_BUDGET: std::time::Duration = std::time::Duration::from_secs(3);

/// How one output file is being read.
#[derive(Debug)]
struct ReadState {
    /// The size of the next read: halved after a read the server found too
    /// big or too slow (408, 413, 500), down to [`transfer::MIN_OUTPUT_PIECE`].
    piece: u64,
    /// The output just before the offset, to place `view` windows.
    known: transfer::KnownOutput,
}

/// How a piece's bytes relate to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PieceKind {
    /// The data are the file's bytes.
    Exact,
    /// One replaced unit of `advance` bytes, shown as U+FFFD.
    Unit,
    /// Bytes whose decoding is not known piece by piece.
    Opaque,
}

impl ReadState {
    fn new(piece: u64) -> Self {
        Self {
            piece,
            known: transfer::KnownOutput::default(),
        }
    }

    /// Notes what a read gave.
    fn advanced(&mut self, offset: u64, chunk: &OutputChunk, kind: PieceKind) {
        match kind {
            PieceKind::Exact => self.known.push_bytes(offset, &chunk.data),
            PieceKind::Unit => self.known.push_unit(offset, chunk.advance),
            PieceKind::Opaque => self.known.forget(offset + chunk.advance),
        }
    }

    fn shrink(&mut self) {
        self.piece = (self.piece / 2).max(transfer::MIN_OUTPUT_PIECE);
    }
}

/// A read the server found too big for its buffer or too slow for its
/// command timeout: 408, 413, or 500 (what `view` answers then).
fn is_read_too_big(err: &anyhow::Error) -> bool {
    api_error(err).is_some_and(|e| e.is_timeout() || e.is_too_large() || e.status == 500)
}

impl FirecrestBackend {
    /// A backend for the configured deployment; sends nothing yet.
    pub fn new(
        settings: &FirecrestSettings,
        poll: &PollSettings,
        transfer_threshold: TransferThreshold,
        token_observer: TokenObserver,
    ) -> Result<Self> {
        let client = Client::new(ClientSettings {
            base_url: settings.url.clone(),
            system: settings.system.clone(),
            auth: settings.credentials.clone(),
            request_timeout: poll.request_timeout,
            retry: RetryPolicy::default(),
        })?;
        client.set_token_observer(token_observer);
        Ok(Self::from_client(client, transfer_threshold))
    }

    /// A backend over an existing client (tests build their own).
    pub fn from_client(client: Client, transfer_threshold: TransferThreshold) -> Self {
        Self {
            client,
            transfer_threshold,
            facts: OnceCell::new(),
            snapshots: Mutex::new(Default::default()),
            reads: Mutex::new(Default::default()),
            transfers: Mutex::new(Vec::new()),
        }
    }

    async fn facts(&self) -> Result<&SystemFacts> {
        self.facts
            .get_or_try_init(|| async {
                let systems = self
                    .client
                    .systems()
                    .await
                    .context("failed to list the systems")?;
                let wanted = self.client.system();
                let Some(system) = systems.iter().find(|s| s.name.eq_ignore_ascii_case(wanted))
                else {
                    let known: Vec<&str> = systems.iter().map(|s| s.name.as_str()).collect();
                    return Err(crate::outcome::CodedError {
                        code: crate::outcome::codes::CONFIG,
                        message: format!(
                            "FirecREST has no system {wanted:?} (FIRECREST_SYSTEM); it knows: {}",
                            known.join(", ")
                        ),
                    }
                    .into());
                };
                let s3 = system
                    .data_operation
                    .as_ref()
                    .and_then(|d| d.data_transfer.as_ref())
                    .and_then(|t| t.service_type.as_deref())
                    .is_some_and(|t| t.eq_ignore_ascii_case("s3"));
                Ok(SystemFacts {
                    max_ops_file_size: system
                        .max_ops_file_size()
                        .unwrap_or(DEFAULT_MAX_OPS_FILE_SIZE),
                    default_work_dir: system.default_work_dir().map(|fs| fs.path.clone()),
                    s3,
                })
            })
            .await
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

    /// Reads a file too large for one download from the parts the job cut
    /// it into, in order, checking that they add up to the whole.
    async fn download_parts(
        &self,
        remote: &str,
        size: u64,
        facts: &SystemFacts,
        file: &mut tokio::fs::File,
    ) -> Result<()> {
        let part_size = transfer::direct_download_limit(facts.max_ops_file_size);
        let count = size.div_ceil(part_size.max(1));
        let mut progress = Progress::new("download", Some(size), PROGRESS_EVERY);
        let mut total = 0;
        for index in 0..count as usize {
            let part = transfer::part_name(remote, index);
            let got = self
                .client
                .download_to(&part, file)
                .await
                .with_context(|| {
                    format!(
                        "{remote} is larger than the server returns at once and its part {part} \
                     could not be read (the server has no S3 transfer)"
                    )
                })?;
            total += got;
            progress.advance(got);
        }
        progress.finish();
        if total != size {
            bail!("the parts of {remote} add up to {total} bytes, not {size}");
        }
        Ok(())
    }

    /// Copies a remote file into S3 with a transfer job and waits for it;
    /// returns the presigned URL to read it from.
    async fn stage_in_s3(&self, path: &str) -> Result<String> {
        let reply = self.client.transfer_download(path).await?;
        self.note_transfer(&reply.transfer_job, false).await;
        let url = reply
            .transfer_directives
            .download_url
            .clone()
            .context("the server's S3 download directives have no downloadUrl")?;
        self.wait_transfer(
            &reply.transfer_job.job_id,
            &reply.transfer_job.logs.error_log,
        )
        .await?;
        Ok(url)
    }

    async fn note_transfer(&self, job: &TransferJob, upload: bool) {
        self.transfers.lock().await.push(Transfer {
            job: job.job_id.clone(),
            output_log: job.logs.output_log.clone(),
            error_log: job.logs.error_log.clone(),
            upload,
        });
    }

    /// Whether a transfer job has ended: `None` while it runs, else what
    /// its error log says if it failed (`Some(None)` when it completed).
    async fn transfer_ended(&self, transfer: &Transfer) -> Result<Option<Option<String>>> {
        let Some(found) = self.client.job(&transfer.job).await? else {
            return Ok(None);
        };
        let status = JobStatus::from(&found);
        let state = crate::outcome::SlurmState::parse(&status.state);
        if !state.is_final() {
            return Ok(None);
        }
        if state == crate::outcome::SlurmState::Completed || !is_transfer_log(&transfer.error_log) {
            return Ok(Some(None));
        }
        let log = self
            .client
            .tail(&transfer.error_log, 0)
            .await
            .map(|t| t.content)
            .unwrap_or_default();
        Ok(Some(Some(format!(
            "firecrest-ci: transfer job {} ended {}; its error log {}:\n{}",
            transfer.job,
            status.state,
            transfer.error_log,
            log.trim_end()
        ))))
    }

    /// Removes a transfer job's two log files (nothing else: see
    /// [`is_transfer_log`]).
    async fn remove_transfer_logs(&self, transfer: &Transfer) -> Result<()> {
        for path in [&transfer.output_log, &transfer.error_log] {
            if !is_transfer_log(path) {
                continue;
            }
            match self.client.rm(path).await {
                Ok(()) => {}
                Err(err) if is_not_found(&err) => {}
                Err(err) => return Err(err.context(format!("failed to remove {path}"))),
            }
        }
        Ok(())
    }

    /// Removes `dir`/tmp when it exists and is empty (hidden entries count).
    async fn remove_empty_tmp(&self, dir: &str) -> Result<()> {
        let tmp = format!("{dir}/tmp");
        match self.client.ls(&tmp).await {
            Ok(entries) if entries.is_empty() => self.client.rm(&tmp).await,
            Ok(_) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Waits for a transfer job; its error log explains a failure. Polled
    /// at most [`TRANSFER_POLL`] apart, so its end is noticed within about a
    /// second (the job itself may sleep 60 s between its own checks).
    async fn wait_transfer(&self, job: &str, logs_error: &str) -> Result<()> {
        let started = std::time::Instant::now();
        let mut delay = std::time::Duration::from_millis(250);
        loop {
            if let Some(found) = self.client.job(job).await? {
                let status = JobStatus::from(&found);
                let state = crate::outcome::SlurmState::parse(&status.state);
                if state.is_final() {
                    if state == crate::outcome::SlurmState::Completed {
                        return Ok(());
                    }
                    let log = match logs_error {
                        "" => String::new(),
                        path => self
                            .client
                            .tail(path, 0)
                            .await
                            .map(|t| t.content)
                            .unwrap_or_default(),
                    };
                    bail!("transfer job {job} ended {}: {}", status.state, log.trim());
                }
            }
            if started.elapsed() > TRANSFER_WAIT {
                bail!(
                    "transfer job {job} did not finish in {} minutes",
                    TRANSFER_WAIT.as_secs() / 60
                );
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(TRANSFER_POLL);
        }
    }

    /// Finds how many bytes an ambiguous reply stood for: the file size
    /// before and after the read must agree. A replacement at the very end
    /// may be a character still being written: it is passed over only once
    /// the file is `last`.
    async fn read_settled(&self, path: &str, offset: u64, last_read: bool) -> Result<OutputChunk> {
        let mut last = String::new();
        for _ in 0..3 {
            let before = self.client.output_stat(path).await?.size;
            let text = self.client.output_tail(path, offset).await?.content;
            let after = self.client.output_stat(path).await?.size;
            if before == after {
                if before <= offset {
                    return Ok(OutputChunk::default());
                }
                if last_read || !text.ends_with(char::REPLACEMENT_CHARACTER) {
                    return Ok(OutputChunk {
                        data: text.into_bytes(),
                        advance: before - offset,
                        more: false,
                    });
                }
            }
            last = text;
        }
        // Still growing: show what is certain now, the rest on a later read.
        let prefix = transfer::exact_prefix(&last);
        Ok(OutputChunk {
            data: prefix.as_bytes().to_vec(),
            advance: prefix.len() as u64,
            more: false,
        })
    }

    /// A backlog of tens of MB: read it from an S3 snapshot of the file (one
    /// transfer job, then ranged GETs of raw bytes), faster than pieces.
    /// Returns an empty chunk while the snapshot is being made.
    async fn read_backlog(&self, path: &str, offset: u64, size: u64) -> Result<OutputChunk> {
        let facts = self.facts().await?.clone();
        let piece = transfer::direct_download_limit(facts.max_ops_file_size).max(64 * 1024);
        let mut snapshots = self.snapshots.lock().await;
        if let Some(snapshot) = snapshots.get(path).cloned() {
            if offset < snapshot.size {
                let len = piece.min(snapshot.size - offset);
                let mut buffer = Vec::with_capacity(len as usize);
                let mut limited = LimitedWriter {
                    inner: &mut buffer,
                    left: len,
                };
                let _ = self
                    .client
                    .s3_get_object(&snapshot.url, offset, &mut limited)
                    .await;
                if buffer.is_empty() {
                    bail!("could not read the output backlog of {path} from S3");
                }
                let advance = buffer.len() as u64;
                return Ok(OutputChunk {
                    data: buffer,
                    advance,
                    more: false,
                });
            }
            snapshots.remove(path);
        }
        tracing::info!(
            "{} of output piled up: reading it through an S3 snapshot",
            crate::progress::format_bytes(size.saturating_sub(offset))
        );
        let url = self.stage_in_s3(path).await?;
        snapshots.insert(path.to_string(), Snapshot { url, size });
        Ok(OutputChunk::default())
    }

    /// Reads what follows `offset`, at most about one piece, never asking
    /// for a reply larger than the piece: `tail` from the offset when all
    /// that is left fits, else a `view` window placed exactly on the file.
    async fn read_piece(
        &self,
        path: &str,
        offset: u64,
        size: u64,
        last: bool,
        state: &mut ReadState,
    ) -> Result<(OutputChunk, PieceKind)> {
        if size - offset <= state.piece {
            let reply = self.client.output_tail(path, offset).await?;
            return Ok(match transfer::read_tail(&reply.content) {
                TailReading::Empty => (OutputChunk::default(), PieceKind::Exact),
                TailReading::Exact(text) | TailReading::Prefix(text) => (
                    OutputChunk {
                        advance: text.len() as u64,
                        data: text.into_bytes(),
                        more: false,
                    },
                    PieceKind::Exact,
                ),
                TailReading::Pending if !last => (OutputChunk::default(), PieceKind::Exact),
                TailReading::Pending | TailReading::Ambiguous => (
                    self.read_settled(path, offset, last).await?,
                    PieceKind::Opaque,
                ),
            });
        }
        self.read_window(path, offset, state).await
    }

    /// One `view` window from `offset` (see [`transfer::read_window`]).
    async fn read_window(
        &self,
        path: &str,
        offset: u64,
        state: &mut ReadState,
    ) -> Result<(OutputChunk, PieceKind)> {
        let known_from = state.known.known_from(offset);
        let anchored = transfer::anchored_block(offset, known_from, state.piece);
        // Without enough known output, a full window whose start happens to
        // be plain text places itself; else the smaller anchored one.
        let mut tries = vec![(anchored, true)];
        if anchored < state.piece {
            tries.insert(0, (state.piece, false));
        }
        for (size, use_known) in tries {
            let block = offset / size * size;
            let text = self.client.output_view(path, block, size).await?;
            // anchored_block keeps the block start at or after known_from.
            let known = if use_known {
                state.known.decoded_from(block)
            } else {
                None
            };
            match transfer::read_window(&text, block, offset, known.as_deref()) {
                transfer::WindowReading::Exact(text) => {
                    return Ok((
                        OutputChunk {
                            advance: text.len() as u64,
                            data: text.into_bytes(),
                            more: false,
                        },
                        PieceKind::Exact,
                    ))
                }
                transfer::WindowReading::Empty => {
                    return Ok((OutputChunk::default(), PieceKind::Exact))
                }
                transfer::WindowReading::Replaced { mut after } => {
                    if after
                        .trim_end_matches(char::REPLACEMENT_CHARACTER)
                        .is_empty()
                    {
                        // The window ended at the unit: the server's own
                        // character slicing skips what precedes it.
                        let before =
                            text.len() - after.len() - char::REPLACEMENT_CHARACTER.len_utf8();
                        let chars = text[..before].chars().count() as u64;
                        let longer = self.client.output_view(path, block + chars, size).await?;
                        after = longer
                            .strip_prefix(char::REPLACEMENT_CHARACTER)
                            .unwrap_or_default()
                            .to_string();
                    }
                    let len = self
                        .replaced_unit(path, offset, &after, state.piece)
                        .await?;
                    return Ok((
                        OutputChunk {
                            data: char::REPLACEMENT_CHARACTER.to_string().into_bytes(),
                            advance: len,
                            more: false,
                        },
                        PieceKind::Unit,
                    ));
                }
                transfer::WindowReading::Unplaced => continue,
            }
        }
        bail!("the output of {path} at byte {offset} could not be placed in a window")
    }

    /// How many bytes the replaced unit at `offset` is, from the server's
    /// decoding of blocks that start 1, 2 and 3 bytes further on (see
    /// [`transfer::unit_length`]). Each probe reads a block of a power of two
    /// that divides its start, so it starts exactly there.
    async fn replaced_unit(&self, path: &str, offset: u64, after: &str, piece: u64) -> Result<u64> {
        let mut probes = Vec::new();
        for step in 1..=3u64 {
            let start = offset + step;
            let size = (1u64 << start.trailing_zeros().min(63)).min(piece);
            let decoded = self.client.output_view(path, start, size).await?;
            let probe = transfer::probe(&decoded, size, after);
            probes.push(probe);
            if probe == transfer::Probe::EndsHere {
                break;
            }
        }
        transfer::unit_length(&probes).with_context(|| {
            format!(
                "could not tell how many bytes the invalid UTF-8 at byte {offset} of {path} is \
                 (probes: {probes:?})"
            )
        })
    }

    /// Reads output from `offset` on in bounded pieces, several per call
    /// while a backlog lasts (see [`READ_BUDGET`]).
    async fn read_pieces(&self, path: &str, offset: u64, last: bool) -> Result<OutputChunk> {
        let facts = self.facts().await?.clone();
        let mut reads = self.reads.lock().await;
        let state = reads
            .entry(path.to_string())
            .or_insert_with(|| ReadState::new(transfer::output_piece_for(facts.max_ops_file_size)));
        let started = std::time::Instant::now();
        let mut chunk = OutputChunk::default();
        loop {
            let at = offset + chunk.advance;
            let size = match self.client.output_stat(path).await {
                Ok(stat) => stat.size,
                // Not there yet: the job has not started writing.
                Err(err) if is_not_found(&err) && chunk.advance == 0 => return Ok(chunk),
                Err(err) if chunk.advance > 0 => {
                    tracing::debug!("stopped reading {path} at byte {at}: {err:#}");
                    return Ok(chunk);
                }
                Err(err) => return Err(err),
            };
            if size <= at {
                return Ok(chunk);
            }
            let from_snapshot = self
                .snapshots
                .lock()
                .await
                .get(path)
                .is_some_and(|snapshot| at < snapshot.size);
            let backlog = from_snapshot || (facts.s3 && size - at > S3_BACKLOG);
            // A `tail` reads to the end of the file: no `stat` after it.
            let to_the_end = !backlog && size - at <= state.piece;
            let read = if backlog {
                self.read_backlog(path, at, size)
                    .await
                    .map(|c| (c, PieceKind::Opaque))
            } else {
                self.read_piece(path, at, size, last, state).await
            };
            let (piece, kind) = match read {
                Ok(read) => read,
                Err(err) if is_read_too_big(&err) && state.piece > transfer::MIN_OUTPUT_PIECE => {
                    state.shrink();
                    tracing::info!(
                        "the server could not return a read of {path}; reading {} at a time",
                        crate::progress::format_bytes(state.piece)
                    );
                    continue;
                }
                Err(err) if chunk.advance > 0 => {
                    tracing::debug!("stopped reading {path} at byte {at}: {err:#}");
                    return Ok(chunk);
                }
                Err(err) => return Err(err),
            };
            if piece.advance == 0 {
                return Ok(chunk);
            }
            state.advanced(at, &piece, kind);
            chunk.data.extend_from_slice(&piece.data);
            chunk.advance += piece.advance;
            if to_the_end {
                return Ok(chunk);
            }
            if chunk.advance >= READ_BUDGET || started.elapsed() >= READ_TIME_BUDGET {
                chunk.more = true;
                return Ok(chunk);
            }
        }
    }
}

/// Writes at most `left` bytes, then refuses, ending the transfer early.
struct LimitedWriter<'a> {
    inner: &'a mut Vec<u8>,
    left: u64,
}

impl tokio::io::AsyncWrite for LimitedWriter<'_> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.left == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::other("piece complete")));
        }
        let n = (buf.len() as u64).min(self.left) as usize;
        self.inner.extend_from_slice(&buf[..n]);
        self.left -= n as u64;
        std::task::Poll::Ready(Ok(n))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
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

fn api_error(err: &anyhow::Error) -> Option<&ApiError> {
    ApiError::find(err)
}

fn is_not_found(err: &anyhow::Error) -> bool {
    api_error(err).is_some_and(ApiError::is_not_found)
}

/// True for a path whose file name is a FirecREST transfer-job log.
fn is_transfer_log(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|name| name.starts_with(TRANSFER_LOG_PREFIX) && name.ends_with(".log"))
}

fn is_too_large(err: &anyhow::Error) -> bool {
    api_error(err).is_some_and(ApiError::is_too_large)
}

/// A submit error that is sbatch refusing an input becomes a
/// [`SubmitRejected`] (the run names the input); anything else stays as it is.
fn as_rejection(err: anyhow::Error) -> anyhow::Error {
    match api_error(&err).and_then(|api| SubmitRejected::from_message(&api.message)) {
        Some(rejected) => rejected.into(),
        None => err,
    }
}

/// FirecREST's submit call has no dependency field: it goes in the script.
fn with_dependency(script: &str, dependency: Option<&JobId>) -> String {
    let Some(job) = dependency else {
        return script.to_string();
    };
    match script.split_once('\n') {
        Some((shebang, rest)) => format!("{shebang}\n#SBATCH --dependency=afterok:{job}\n{rest}"),
        None => format!("{script}\n#SBATCH --dependency=afterok:{job}\n"),
    }
}

#[async_trait]
impl Backend for FirecrestBackend {
    fn correlation_id(&self) -> Option<String> {
        Some(self.client.correlation_id().to_string())
    }

    fn describe(&self) -> String {
        format!(
            "FirecREST system {} at {}",
            self.client.system(),
            self.client.base_url()
        )
    }

    async fn default_base_dir(&self) -> Result<String> {
        // Independent requests, sent together (they share the first token).
        let (facts, user) = tokio::try_join!(self.facts(), async {
            self.client
                .userinfo()
                .await
                .context("failed to read the user's name")
        })?;
        let root = facts.default_work_dir.clone().with_context(|| {
            format!(
                "system {} has no default work directory; set remote-dir (FIRECREST_REMOTE_DIR)",
                self.client.system()
            )
        })?;
        if user.user.name.is_empty() {
            bail!("the server did not say the user's name; set remote-dir (FIRECREST_REMOTE_DIR)");
        }
        Ok(format!(
            "{}/{}/firecrest-ci",
            root.trim_end_matches('/'),
            user.user.name
        ))
    }

    async fn first_contact(&self) -> Result<()> {
        // A token, then the systems: both hosts answered, and the system
        // named by FIRECREST_SYSTEM exists.
        self.facts().await.map(drop)
    }

    async fn create_private_dir(&self, path: &str) -> Result<()> {
        self.client.mkdir(path, true).await?;
        self.client.chmod(path, "700").await
    }

    async fn put_file(&self, dir: &str, name: &str, contents: Vec<u8>) -> Result<()> {
        self.client
            .upload(dir, name, &UploadSource::Bytes(contents))
            .await
    }

    async fn upload_workspace(&self, archive: &Path, dir: &str) -> Result<StagedWorkspace> {
        let size = tokio::fs::metadata(archive)
            .await
            .with_context(|| format!("failed to read {}", archive.display()))?
            .len();
        self.upload_growing(GrowingArchive::complete(archive.to_path_buf(), size), dir)
            .await
    }

    async fn upload_growing(
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

    async fn submit(&self, job: &JobSpec) -> Result<JobId> {
        let description = JobDescription {
            name: job.name.clone(),
            script: with_dependency(&job.script, job.dependency.as_ref()),
            working_directory: job.working_dir.clone(),
            account: job.account.clone(),
            partition: job.partition.clone(),
            reservation: job.reservation.clone(),
            constraints: None,
            standard_output: None,
            standard_error: None,
            // Never empty: the server builds `--export='ALL,<env>'` from it.
            // Forwarded variables travel in the private env file instead
            // (values with commas would break here).
            env: [(
                "FIRECREST_CI".to_string(),
                crate::secret::Secret::new("true"),
            )]
            .into(),
        };
        let Some(transfer) = &job.dependency else {
            return self
                .client
                .submit_job(&description)
                .await
                .map(JobId)
                .map_err(as_rejection);
        };
        match self
            .client
            .submit_job(&description)
            .await
            .map_err(as_rejection)
        {
            Ok(id) => Ok(JobId(id)),
            // Slurm refuses a dependency on a job it has already forgotten
            // (finished more than MinJobAge ago): if the transfer completed,
            // the job needs no dependency any more.
            Err(err)
                if err
                    .downcast_ref::<SubmitRejected>()
                    .is_some_and(|r| r.rejection == Rejection::Dependency) =>
            {
                self.wait_transfer(&transfer.0, "").await.context(
                    "the workspace transfer job did not complete, so the batch job cannot start",
                )?;
                let description = JobDescription {
                    script: job.script.clone(),
                    ..description
                };
                self.client
                    .submit_job(&description)
                    .await
                    .map(JobId)
                    .map_err(as_rejection)
            }
            Err(err) => Err(err),
        }
    }

    async fn job_status(&self, id: &JobId) -> Result<Option<JobStatus>> {
        Ok(self.client.job(&id.0).await?.as_ref().map(JobStatus::from))
    }

    async fn read_output(&self, path: &str, offset: u64, last: bool) -> Result<OutputChunk> {
        self.read_pieces(path, offset, last).await
    }

    async fn output_size(&self, path: &str) -> Result<Option<u64>> {
        match self.client.output_stat(path).await {
            Ok(stat) => Ok(Some(stat.size)),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn cancel(&self, id: &JobId) -> Result<()> {
        self.client.cancel_job(&id.0).await
    }

    async fn partitions(&self) -> Result<Option<Vec<String>>> {
        let partitions = self
            .client
            .partitions()
            .await
            .context("failed to list the partitions")?;
        Ok(Some(partitions.into_iter().map(|p| p.name).collect()))
    }

    async fn accounts(&self) -> Result<Option<Vec<String>>> {
        let user = self
            .client
            .userinfo()
            .await
            .context("failed to read the user's accounts")?;
        // A server that lists no accounts does not say which are valid.
        Ok((!user.accounts.is_empty()).then(|| {
            user.accounts
                .into_iter()
                .map(|a| {
                    if a.default {
                        format!("{} (default)", a.name)
                    } else {
                        a.name
                    }
                })
                .collect()
        }))
    }

    async fn mode(&self, path: &str) -> Result<Option<u32>> {
        match self.client.stat(path).await {
            Ok(stat) => Ok(Some(stat.mode & 0o7777)),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn describe_access(&self) -> Result<Vec<CheckRow>> {
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

    async fn artifacts_part_size(&self) -> Result<Option<u64>> {
        let facts = self.facts().await?;
        // With S3, large files come back through a transfer job instead.
        Ok((!facts.s3).then(|| transfer::direct_download_limit(facts.max_ops_file_size)))
    }

    async fn download(&self, remote: &str, local: &Path) -> Result<bool> {
        let size = match self.client.stat(remote).await {
            Ok(stat) => stat.size,
            Err(err) if is_not_found(&err) => return Ok(false),
            Err(err) => return Err(err),
        };
        let facts = self.facts().await?.clone();
        let mut file = tokio::fs::File::create(local)
            .await
            .with_context(|| format!("failed to create {}", local.display()))?;
        if size <= transfer::direct_download_limit(facts.max_ops_file_size) {
            self.client.download_to(remote, &mut file).await?;
            return Ok(true);
        }
        if !facts.s3 {
            return self
                .download_parts(remote, size, &facts, &mut file)
                .await
                .map(|()| true);
        }
        let url = self.stage_in_s3(remote).await?;
        self.client.s3_get_object(&url, 0, &mut file).await?;
        Ok(true)
    }

    async fn remove_helper_leftovers(&self, report: &(dyn for<'s> Fn(&'s str) + Send + Sync)) {
        let transfers = std::mem::take(&mut *self.transfers.lock().await);
        let mut kept = Vec::new();
        let mut upload_dirs: Vec<String> = Vec::new();
        for transfer in transfers {
            let removed = match self.transfer_ended(&transfer).await {
                Ok(Some(failed)) => {
                    if let Some(log) = failed {
                        report(&log);
                    }
                    self.remove_transfer_logs(&transfer).await.map(|()| true)
                }
                Ok(None) => Ok(false),
                Err(err) => Err(err),
            };
            match removed {
                Ok(true) => {
                    if transfer.upload {
                        if let Some((dir, _)) = transfer.output_log.rsplit_once('/') {
                            if !upload_dirs.iter().any(|d| d == dir) {
                                upload_dirs.push(dir.to_string());
                            }
                        }
                    }
                }
                Ok(false) => {
                    tracing::info!(
                        "transfer job {} has not ended; its logs {} stay",
                        transfer.job,
                        transfer.output_log
                    );
                    kept.push(transfer);
                }
                Err(err) => {
                    tracing::warn!(
                        "could not remove the logs of transfer job {}: {err:#}",
                        transfer.job
                    );
                    kept.push(transfer);
                }
            }
        }
        for dir in upload_dirs {
            if let Err(err) = self.remove_empty_tmp(&dir).await {
                tracing::warn!("could not remove the empty {dir}/tmp: {err:#}");
            }
        }
        self.transfers.lock().await.extend(kept);
    }

    async fn remove_dir(&self, path: &str) -> Result<()> {
        match self.client.rm(path).await {
            Ok(()) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) if api_error(&err).is_some_and(ApiError::is_timeout) => {
                // A large tree outlasts the synchronous 5 s limit: a job removes it.
                let job = self
                    .client
                    .transfer_rm(path)
                    .await
                    .context("failed to start a removal job after rm timed out")?;
                self.note_transfer(&job, false).await;
                tracing::info!("{path} is large: removal job {} started", job.job_id);
                Ok(())
            }
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Credentials;
    use crate::secret::Secret;
    use std::time::Duration;
    use wiremock::matchers::{method, path};
    use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

    #[test]
    fn only_transfer_logs_are_removed() {
        assert!(is_transfer_log(
            "/scratch/ciuser/.f7t_file_handling_job_269507ad-950b-49ea-9459-8ea9dbc8ddd0.log"
        ));
        assert!(is_transfer_log(
            "/scratch/ciuser/.f7t_file_handling_job_error_269507ad.log"
        ));
        assert!(!is_transfer_log("/scratch/ciuser"));
        assert!(!is_transfer_log("/scratch/ciuser/notes.log"));
        assert!(!is_transfer_log(""));
    }

    #[test]
    fn dependency_goes_right_after_the_shebang() {
        let script = "#!/bin/bash -l\n#SBATCH --time=10\necho hi\n";
        assert_eq!(
            with_dependency(script, Some(&JobId("34".into()))),
            "#!/bin/bash -l\n#SBATCH --dependency=afterok:34\n#SBATCH --time=10\necho hi\n"
        );
        assert_eq!(with_dependency(script, None), script);
    }

    /// The body of the `index`-th exchange of a recorded file.
    fn recorded(file: &str, index: usize) -> serde_json::Value {
        let path = format!(
            "{}/tests/fixtures/recorded/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let exchanges: serde_json::Value = serde_json::from_str(&text).unwrap();
        exchanges[index]["response"]["body"].clone()
    }

    async fn backend(server: &MockServer) -> FirecrestBackend {
        Mock::given(method("GET"))
            .and(path("/status/systems"))
            .respond_with(ResponseTemplate::new(200).set_body_json(recorded("systems.json", 1)))
            .mount(server)
            .await;
        let client = Client::new(ClientSettings {
            base_url: server.uri(),
            system: "daint".into(),
            auth: Credentials::AccessToken(Secret::new("token")),
            request_timeout: Duration::from_secs(5),
            retry: RetryPolicy {
                base_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(20),
                max_retries: 2,
                budget: Duration::from_secs(5),
            },
        })
        .unwrap();
        FirecrestBackend::from_client(client, TransferThreshold::Above(1 << 30))
    }

    /// A file of `size` bytes whose `tail` the server shows as `content`.
    async fn serve_tail(server: &MockServer, content: &str, size: u64) {
        Mock::given(method("GET"))
            .and(path("/filesystem/daint/ops/tail"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "output": {"content": content, "contentType": "bytes", "startPosition": 1, "endPosition": -1}
            })))
            .mount(server)
            .await;
        let mut stat = recorded("fs_stat.json", 0);
        stat["output"]["size"] = serde_json::json!(size);
        Mock::given(method("GET"))
            .and(path("/filesystem/daint/ops/stat"))
            .respond_with(ResponseTemplate::new(200).set_body_json(stat))
            .mount(server)
            .await;
    }

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

    #[tokio::test]
    async fn a_removal_that_times_out_becomes_a_transfer_job() {
        let server = MockServer::start().await;
        let backend = backend(&server).await;
        Mock::given(method("DELETE"))
            .and(path("/filesystem/daint/ops/rm"))
            .respond_with(ResponseTemplate::new(408).set_body_json(serde_json::json!({
                "errorType": "error", "message": "Command execution timeout", "causedBy": null, "data": null, "user": "ciuser"
            })))
            .mount(&server)
            .await;
        Mock::given(method("DELETE"))
            .and(path("/filesystem/daint/transfer/rm"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "transferJob": {"jobId": "77", "system": "daint", "workingDirectory": "/scratch/ciuser",
                                "logs": {"outputLog": "/scratch/ciuser/o.log", "errorLog": "/scratch/ciuser/e.log"}}
            })))
            .expect(1)
            .mount(&server)
            .await;
        backend.remove_dir("/scratch/ciuser/run").await.unwrap();
    }

    #[tokio::test]
    async fn replaced_bytes_inside_a_read_are_counted_from_the_file_size() {
        let server = MockServer::start().await;
        let backend = backend(&server).await;
        // The file holds "a", one invalid byte, "b\n": 4 bytes, shown as 5.
        serve_tail(&server, "a\u{fffd}b\n", 4).await;
        let chunk = backend
            .read_output("/scratch/ciuser/run/job.out", 0, false)
            .await
            .unwrap();
        assert_eq!(chunk.advance, 4);
        assert_eq!(chunk.data, "a\u{fffd}b\n".as_bytes());
    }

    #[tokio::test]
    async fn a_possible_partial_character_at_the_end_waits_until_the_last_read() {
        let server = MockServer::start().await;
        let backend = backend(&server).await;
        serve_tail(&server, "\u{fffd}", 12).await;
        let path = "/scratch/ciuser/run/job.out";
        assert_eq!(
            backend.read_output(path, 10, false).await.unwrap(),
            OutputChunk::default()
        );
        let last = backend.read_output(path, 10, true).await.unwrap();
        assert_eq!(last.advance, 2);
        assert_eq!(last.data, "\u{fffd}".as_bytes());
    }
}

/// Reads of a file served like FirecREST serves it: byte-exact through the
/// `tail` and `view` pieces, and never a reply over the buffer.
#[cfg(test)]
mod piece_tests {
    use super::*;
    use crate::config::Credentials;
    use crate::secret::Secret;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

    /// The server's `stat`, `tail` and `view` over `data`, like the double
    /// and the recordings: lossy decoding, `view` sliced by characters from
    /// its `size`-aligned block; counts replies over `limit`.
    struct FileServer {
        data: Vec<u8>,
        limit: u64,
        oversized: Arc<AtomicU64>,
        requests: Arc<AtomicU64>,
    }

    impl Respond for FileServer {
        fn respond(&self, request: &Request) -> ResponseTemplate {
            self.requests.fetch_add(1, Ordering::SeqCst);
            let query: std::collections::HashMap<String, String> =
                request.url.query_pairs().into_owned().collect();
            let number = |key: &str| query.get(key).and_then(|v| v.parse::<u64>().ok());
            let len = self.data.len() as u64;
            let reply = |bytes: &[u8]| {
                if bytes.len() as u64 > self.limit {
                    self.oversized.fetch_add(1, Ordering::SeqCst);
                }
            };
            match request.url.path().rsplit('/').next() {
                Some("stat") => ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"output": {"size": len, "mode": 33188}})),
                Some("tail") => {
                    let from = number("bytes").unwrap_or(1).saturating_sub(1).min(len) as usize;
                    reply(&self.data[from..]);
                    ResponseTemplate::new(200).set_body_json(serde_json::json!({"output": {
                        "content": String::from_utf8_lossy(&self.data[from..]),
                        "contentType": "bytes", "startPosition": from + 1, "endPosition": -1}}))
                }
                Some("view") => {
                    let size = number("size").unwrap_or(self.limit).max(1);
                    let offset = number("offset").unwrap_or(0);
                    let from = (offset / size * size).min(len);
                    let to = (from + 2 * size).min(len);
                    let block = &self.data[from as usize..to as usize];
                    reply(block);
                    let text: String = String::from_utf8_lossy(block)
                        .chars()
                        .skip((offset % size) as usize)
                        .take(size as usize)
                        .collect();
                    ResponseTemplate::new(200).set_body_json(serde_json::json!({"output": text}))
                }
                _ => ResponseTemplate::new(404),
            }
        }
    }

    /// Reads `data` through the backend from offset 0 until it is all read,
    /// with the server's limit at `limit`; returns what was shown, the
    /// number of oversized replies and of requests.
    async fn read_through(data: Vec<u8>, limit: u64) -> (Vec<u8>, u64, u64) {
        let server = MockServer::start().await;
        let mut systems: serde_json::Value = {
            let text = std::fs::read_to_string(format!(
                "{}/tests/fixtures/recorded/systems.json",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap();
            let exchanges: serde_json::Value = serde_json::from_str(&text).unwrap();
            exchanges[1]["response"]["body"].clone()
        };
        systems["systems"][0]["dataOperation"]["max_ops_file_size"] = serde_json::json!(limit);
        systems["systems"][0]["dataOperation"]["data_transfer"] = serde_json::Value::Null;
        Mock::given(method("GET"))
            .and(path("/status/systems"))
            .respond_with(ResponseTemplate::new(200).set_body_json(systems))
            .mount(&server)
            .await;
        let oversized = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        Mock::given(method("GET"))
            .respond_with(FileServer {
                data: data.clone(),
                limit,
                oversized: oversized.clone(),
                requests: requests.clone(),
            })
            .mount(&server)
            .await;
        let client = Client::new(ClientSettings {
            base_url: server.uri(),
            system: "daint".into(),
            auth: Credentials::AccessToken(Secret::new("token")),
            request_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
        })
        .unwrap();
        let backend = FirecrestBackend::from_client(client, TransferThreshold::Above(1 << 30));
        let mut shown = Vec::new();
        let mut offset = 0;
        let mut stuck = 0;
        while offset < data.len() as u64 {
            let chunk = backend
                .read_output("/f/job.out", offset, true)
                .await
                .unwrap();
            offset += chunk.advance;
            shown.extend(chunk.data);
            stuck = if chunk.advance == 0 { stuck + 1 } else { 0 };
            assert!(stuck < 3, "no progress at byte {offset}");
        }
        assert_eq!(offset, data.len() as u64, "read past the end");
        (
            shown,
            oversized.load(Ordering::SeqCst),
            requests.load(Ordering::SeqCst),
        )
    }

    /// Output that puts multi-byte characters, invalid bytes, truncated
    /// characters and literal U+FFFD at every alignment against a power of two.
    fn mixed_output(lines: usize) -> Vec<u8> {
        let mut data = Vec::new();
        for i in 0..lines {
            data.extend_from_slice(format!("L{i} grüße ✓ 日本語 🚀 ").as_bytes());
            match i % 7 {
                0 => data.extend_from_slice(b"bad \xff byte"),
                1 => data.extend_from_slice(b"cut \xe6\x97 char"),
                2 => data.extend_from_slice(b"two \xff\xfe bad"),
                3 => data.extend_from_slice("literal \u{fffd} mark".as_bytes()),
                4 => data.extend_from_slice(b"stray \x80\xbf cont"),
                5 => data.extend_from_slice(b"lead \xf0\x9f\x9a then \xe2"),
                _ => data.extend_from_slice(&b"x".repeat(i % 13)),
            }
            data.push(b'\n');
        }
        data
    }

    #[tokio::test]
    async fn a_backlog_over_the_limit_is_read_byte_exact_in_bounded_pieces() {
        let data = mixed_output(3000);
        assert!(data.len() > 100_000, "{}", data.len());
        // 16 KiB buffer: pieces of 4 KiB, so the backlog goes through views.
        let (shown, oversized, requests) = read_through(data.clone(), 16 * 1024).await;
        assert_eq!(oversized, 0, "a reply was over the buffer");
        let expected = String::from_utf8_lossy(&data).into_owned().into_bytes();
        if shown != expected {
            let at = shown
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!(
                "differs at byte {at}: shown {:?} expected {:?}",
                String::from_utf8_lossy(&shown[at.saturating_sub(20)..(at + 40).min(shown.len())]),
                String::from_utf8_lossy(
                    &expected[at.saturating_sub(20)..(at + 40).min(expected.len())]
                )
            );
        }
        eprintln!("{} bytes in {requests} requests", data.len());
    }

    #[tokio::test]
    async fn plain_text_backlogs_need_about_one_request_per_piece() {
        let data: Vec<u8> = (0..20000)
            .flat_map(|i| format!("B{i} xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n").into_bytes())
            .collect();
        let (shown, oversized, requests) = read_through(data.clone(), 64 * 1024).await;
        assert_eq!(oversized, 0);
        assert_eq!(shown, data);
        // Pieces of 16 KiB, a stat and a view each.
        let pieces = data.len() as u64 / (16 * 1024);
        assert!(
            requests < 3 * pieces + 10,
            "{requests} requests for {pieces} pieces"
        );
    }
}
