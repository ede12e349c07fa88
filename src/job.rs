//! Watching a submitted job: poll its state, stream its output files into the
//! CI log by byte offset, stop when it ends, when CI cancels, or when the
//! run's own deadline passes.
//!
//! The log must show every byte of the job's output exactly once and in
//! order. Offsets therefore advance by what the backend says a chunk stands
//! for ([`OutputChunk::advance`]), never by what was printed, and
//! [`Utf8Stream`] holds back a character split across two reads until its
//! last byte arrives.
//!
//! Polling adapts: output is read every `log_interval` while it flows and
//! backs off (doubling, up to `log_max_interval`) while it does not; the job
//! state is read every `state_interval`, sooner right after submission and as
//! soon as the batch script reports that the user's commands ended (then
//! after 1, 2, 4, ... seconds, up to `state_interval` again).
//!
//! The batch script's last line ([`script::SCRIPT_END_MARKER`]) says that the
//! output file is complete: once it was shown and the job is final, the
//! watcher stops without waiting for the output to stay quiet. A job killed
//! before that line drains until its files stay quiet.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backend::{Backend, JobId, JobStatus};
use crate::outcome::SlurmState;
use crate::script::{COMMANDS_ENDED_MARKER, SCRIPT_END_MARKER};

/// How often to look for the script's last line while a stopped run waits
/// for the epilogue.
const STOP_READ_EVERY: Duration = Duration::from_millis(250);

/// Output reads failing this long get a warning in the CI log.
const READ_FAILURES_WORTH_A_WARNING: Duration = Duration::from_secs(30);

/// Set once by the signal handler: the number of the first signal received.
pub type StopSignal = watch::Receiver<Option<i32>>;

/// Where the job's output goes: the CI log (as untrusted text) and a file.
pub trait OutputSink: Send + Sync {
    /// Shows a piece of the job's output; `bytes` never splits a character.
    fn job_output(&self, bytes: &[u8]);
}

/// How often to look; defaults need no tuning.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// Job state reads while the job runs.
    pub state_interval: Duration,
    /// Output reads while output flows.
    pub log_interval: Duration,
    /// Output reads back off to this while the job is quiet.
    pub log_max_interval: Duration,
    /// How long the scheduler may not know a job it just accepted.
    pub submit_grace: Duration,
    /// How long the state may fail to be read before the run gives up.
    pub error_budget: Duration,
    /// After the job ended: keep reading until the output was quiet this long.
    pub drain_quiet: Duration,
    /// ... but never longer than this.
    pub drain_max: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            state_interval: Duration::from_secs(10),
            log_interval: Duration::from_secs(1),
            log_max_interval: Duration::from_secs(10),
            submit_grace: Duration::from_secs(120),
            error_budget: Duration::from_secs(600),
            drain_quiet: Duration::from_secs(2),
            drain_max: Duration::from_secs(30),
        }
    }
}

/// One output file of the job and how far it has been shown.
#[derive(Debug)]
pub struct OutputFile {
    /// Absolute remote path.
    pub path: String,
    /// Bytes of the remote file already shown.
    pub offset: u64,
    decoder: Utf8Stream,
    failing_since: Option<Instant>,
    warned: bool,
    /// The last read gave bytes: there may be more.
    last_read_gave: bool,
    /// What could not be shown, decided when the job's output was drained.
    pub missing: Option<Missing>,
}

/// Bytes of an output file that could not be shown: from `start` to `end`
/// (the file's size when it could still be read; `None` when not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub start: u64,
    pub end: Option<u64>,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.end {
            Some(end) => write!(f, "bytes {}-{end}", self.start),
            None => write!(f, "bytes {} to the end", self.start),
        }
    }
}

impl OutputFile {
    /// Starts following `path` from its beginning.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            offset: 0,
            decoder: Utf8Stream::default(),
            failing_since: None,
            warned: false,
            last_read_gave: false,
            missing: None,
        }
    }
}

/// Why watching stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEnd {
    /// The job reached a final state.
    Finished(JobStatus),
    /// CI sent this signal; the job may still run.
    Stopped(i32),
    /// The run's own deadline passed; the job may still run.
    DeadlineReached,
}

/// Counts of what watching cost, for the request-rate figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchStats {
    pub state_reads: u64,
    pub output_reads: u64,
    pub output_bytes: u64,
}

/// Follows one job until it ends; owns the polling schedule.
pub struct Watcher<'a> {
    backend: &'a dyn Backend,
    sink: &'a dyn OutputSink,
    log: Option<&'a mut (dyn Write + Send)>,
    settings: WatchSettings,
    /// The job's output files, in the order they are read.
    pub files: Vec<OutputFile>,
    /// What watching cost so far.
    pub stats: WatchStats,
    end_hint: bool,
    marker_tail: Vec<u8>,
    /// The last line shown so far (of the first file), to spot the
    /// script's end marker.
    last_line: Vec<u8>,
    /// The script's end marker is the last thing the output file holds.
    script_ended: bool,
}

impl<'a> Watcher<'a> {
    /// A watcher that shows output on `sink` and copies it into `log`.
    pub fn new(
        backend: &'a dyn Backend,
        sink: &'a dyn OutputSink,
        log: Option<&'a mut (dyn Write + Send)>,
        settings: WatchSettings,
        files: Vec<OutputFile>,
    ) -> Self {
        Self {
            backend,
            sink,
            log,
            settings,
            files,
            stats: WatchStats::default(),
            end_hint: false,
            marker_tail: Vec::new(),
            last_line: Vec::new(),
            script_ended: false,
        }
    }

    /// The batch script printed its last line: its epilogue (artifacts)
    /// is done and the output file is complete.
    pub fn script_ended(&self) -> bool {
        self.script_ended
    }

    /// Watches `job` until it ends, CI stops the run, or `deadline` passes.
    pub async fn watch(
        &mut self,
        job: &JobId,
        stop: &mut StopSignal,
        deadline: Option<Instant>,
    ) -> Result<WatchEnd> {
        let started = Instant::now();
        let mut tracker = StateTracker::default();
        let mut log_interval = self.settings.log_interval;
        let mut next_state = started + Duration::from_secs(1);
        let mut next_log = started + self.settings.log_interval;
        // A state read runs beside the output reads: one stuck in retries
        // must not hold the output back.
        let backend = self.backend;
        let mut in_flight: Option<StateRead<'a>> = None;

        loop {
            if let Some(signal) = *stop.borrow() {
                return Ok(WatchEnd::Stopped(signal));
            }
            if in_flight.is_none() && Instant::now() >= next_state {
                tracker.checks += 1;
                self.stats.state_reads += 1;
                let id = job.clone();
                in_flight = Some(Box::pin(async move { backend.job_status(&id).await }));
            }
            let mut wake = next_log;
            if in_flight.is_none() {
                wake = wake.min(next_state);
            }
            if let Some(deadline) = deadline {
                wake = wake.min(deadline);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                result = async { in_flight.as_mut().expect("guarded by the branch condition").await },
                    if in_flight.is_some() =>
                {
                    in_flight = None;
                    if let Some(status) = self.on_state(job, &mut tracker, started, result)? {
                        self.drain().await?;
                        return Ok(WatchEnd::Finished(status));
                    }
                    next_state = Instant::now() + tracker.next_interval(&self.settings);
                }
                changed = stop.changed() => {
                    if changed.is_ok() {
                        if let Some(signal) = *stop.borrow() {
                            return Ok(WatchEnd::Stopped(signal));
                        }
                    }
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(WatchEnd::DeadlineReached);
            }

            if Instant::now() >= next_log {
                let got = self.read_all_once(false).await?;
                log_interval = if got > 0 {
                    self.settings.log_interval
                } else {
                    (log_interval * 2).min(self.settings.log_max_interval)
                };
                next_log = Instant::now() + log_interval;
                if self.end_hint && tracker.since_end.is_none() {
                    tracker.since_end = Some(0);
                    next_state = next_state.min(Instant::now());
                }
                if self.script_ended && !tracker.script_ended {
                    // Restart the short schedule at the script's last line.
                    tracker.script_ended = true;
                    tracker.since_end = Some(0);
                    next_state = next_state.min(Instant::now());
                }
            }
        }
    }

    /// Takes one state read into account; the final status when the job ended.
    fn on_state(
        &mut self,
        job: &JobId,
        tracker: &mut StateTracker,
        started: Instant,
        result: Result<Option<JobStatus>>,
    ) -> Result<Option<JobStatus>> {
        match result {
            Ok(None) => {
                tracker.failing_since = None;
                if !tracker.seen && started.elapsed() > self.settings.submit_grace {
                    bail!(
                        "job {job} was accepted but the scheduler has not shown it for {}s; \
                         check the cluster's queue, or raise submit-grace (FIRECREST_SUBMIT_GRACE)",
                        self.settings.submit_grace.as_secs()
                    );
                }
                if tracker.seen {
                    tracing::debug!(%job, "the scheduler does not show the job right now");
                }
                Ok(None)
            }
            Ok(Some(status)) => {
                tracker.failing_since = None;
                tracker.seen = true;
                let state = SlurmState::parse(&status.state);
                if let SlurmState::Unknown(raw) = &state {
                    if !tracker.warned_unknown {
                        tracing::warn!(%job, state = %raw, "unknown job state; still watching");
                        tracker.warned_unknown = true;
                    }
                }
                let key = (format!("{state:?}"), status.reason.clone());
                if tracker.shown.as_ref() != Some(&key) {
                    // A state read can lag behind the output: once the job's
                    // own output shows it running, "waiting in the queue"
                    // would contradict the log.
                    if self.stats.output_bytes == 0 || state.is_final() {
                        announce(job, &state, &status);
                    } else {
                        tracing::debug!(%job, state = %status.state, "state read after the output began");
                    }
                    tracker.shown = Some(key);
                }
                if state == SlurmState::Pending
                    && status.reason.as_deref() == Some("DependencyNeverSatisfied")
                {
                    bail!(
                        "job {job} waits for a transfer job that failed (DependencyNeverSatisfied): \
                         the workspace did not reach the cluster"
                    );
                }
                Ok(state.is_final().then_some(status))
            }
            Err(err) => {
                let since = *tracker.failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > self.settings.error_budget {
                    return Err(err).with_context(|| {
                        format!(
                            "could not read the state of job {job} for {}s",
                            self.settings.error_budget.as_secs()
                        )
                    });
                }
                tracing::warn!(%job, "could not read the job state, will retry: {err:#}");
                Ok(None)
            }
        }
    }

    /// Reads every output file once; returns the number of bytes shown.
    /// `last`: the job ended and its files stopped growing.
    pub async fn read_all_once(&mut self, last: bool) -> Result<u64> {
        let mut total = 0;
        for index in 0..self.files.len() {
            total += self.read_file(index, last).await?;
        }
        Ok(total)
    }

    async fn read_file(&mut self, index: usize, last: bool) -> Result<u64> {
        let (path, offset) = {
            let file = &self.files[index];
            (file.path.clone(), file.offset)
        };
        self.stats.output_reads += 1;
        let chunk = match self.backend.read_output(&path, offset, last).await {
            Ok(chunk) => chunk,
            Err(err) => {
                // A missed read only delays output: the next read starts at
                // the same offset. The job state decides when to stop. One
                // failure is noise in a CI log; failures that last are not.
                let file = &mut self.files[index];
                let since = *file.failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= READ_FAILURES_WORTH_A_WARNING && !file.warned {
                    file.warned = true;
                    tracing::warn!("could not read the job output {path} for a while, will keep trying: {err:#}");
                } else {
                    tracing::debug!("could not read the job output {path}, will retry: {err:#}");
                }
                return Ok(0);
            }
        };
        let file = &mut self.files[index];
        file.failing_since = None;
        file.warned = false;
        file.last_read_gave = chunk.advance > 0;
        if chunk.advance == 0 {
            return Ok(0);
        }
        self.stats.output_bytes += chunk.advance;
        let file = &mut self.files[index];
        file.offset += chunk.advance;
        let printable = file.decoder.push(&chunk.data);
        self.note_end_marker(&chunk.data);
        if index == 0 {
            self.note_last_line(&chunk.data);
        }
        self.emit(&printable)?;
        Ok(chunk.advance)
    }

    /// Follows the line structure of the first output file: the script
    /// ended when its last complete line is the end marker and nothing
    /// follows it.
    fn note_last_line(&mut self, data: &[u8]) {
        // Only a line's start is compared: keep memory flat on long lines.
        let keep = SCRIPT_END_MARKER.len();
        let push = |line: &mut Vec<u8>, bytes: &[u8]| {
            let room = keep.saturating_sub(line.len());
            line.extend_from_slice(&bytes[..bytes.len().min(room)]);
        };
        let Some(last_newline) = data.iter().rposition(|&b| b == b'\n') else {
            push(&mut self.last_line, data);
            self.script_ended = self.script_ended && data.is_empty();
            return;
        };
        let complete_line_start = data[..last_newline]
            .iter()
            .rposition(|&b| b == b'\n')
            .map(|at| at + 1);
        if let Some(start) = complete_line_start {
            self.last_line.clear();
            push(&mut self.last_line, &data[start..last_newline]);
        } else {
            push(&mut self.last_line, &data[..last_newline]);
        }
        let rest = &data[last_newline + 1..];
        self.script_ended = rest.is_empty() && self.last_line.starts_with(SCRIPT_END_MARKER);
        self.last_line.clear();
        push(&mut self.last_line, rest);
    }

    fn note_end_marker(&mut self, data: &[u8]) {
        if self.end_hint {
            return;
        }
        let mut window = std::mem::take(&mut self.marker_tail);
        window.extend_from_slice(data);
        if window
            .windows(COMMANDS_ENDED_MARKER.len())
            .any(|w| w == COMMANDS_ENDED_MARKER)
        {
            self.end_hint = true;
        }
        let keep = window.len().min(COMMANDS_ENDED_MARKER.len());
        self.marker_tail = window[window.len() - keep..].to_vec();
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.sink.job_output(bytes);
        if let Some(log) = self.log.as_mut() {
            log.write_all(bytes)
                .context("failed to write the job output to the local log file")?;
        }
        Ok(())
    }

    /// After the job ended: when the script's last line was shown, the files
    /// are complete; otherwise (a job killed before its epilogue ended) read
    /// until they stay quiet, as Slurm may still be flushing. Then show any
    /// held-back partial character.
    pub async fn drain(&mut self) -> Result<()> {
        let started = Instant::now();
        let mut quiet_since = Instant::now();
        loop {
            let got = self.read_all_once(false).await?;
            if got > 0 {
                quiet_since = Instant::now();
            }
            if self.script_ended
                || quiet_since.elapsed() >= self.settings.drain_quiet
                || started.elapsed() >= self.settings.drain_max
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Anything held back as a possible partial character is final now.
        for _ in 0..8 {
            if self.read_all_once(true).await? == 0 {
                break;
            }
        }
        self.note_missing().await;
        self.flush_partial()
    }

    /// After the drain: a file whose last read failed, or still gave bytes,
    /// may have output that was never shown. Its size says how much; a file
    /// that cannot even be measured is missing from the offset on.
    async fn note_missing(&mut self) {
        for file in &mut self.files {
            if file.failing_since.is_none() && !file.last_read_gave {
                continue;
            }
            let end = match self.backend.output_size(&file.path).await {
                Ok(size) => size,
                Err(err) => {
                    tracing::debug!("could not measure {}: {err:#}", file.path);
                    None
                }
            };
            let unread = end.map_or(file.failing_since.is_some(), |end| end > file.offset);
            if unread {
                file.missing = Some(Missing {
                    start: file.offset,
                    end,
                });
            }
        }
    }

    /// For a run that is being stopped: show what comes until the script's
    /// last line (the epilogue packed the artifacts), at most for `limit`.
    /// Says whether that line was seen.
    pub async fn drain_within(&mut self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        let _ = tokio::time::timeout_at(until, async {
            while !self.script_ended {
                let _ = self.read_all_once(false).await;
                if self.script_ended {
                    break;
                }
                tokio::time::sleep(STOP_READ_EVERY).await;
            }
            let _ = self.read_all_once(true).await;
        })
        .await;
        let _ = self.flush_partial();
        self.script_ended
    }

    fn flush_partial(&mut self) -> Result<()> {
        let mut rest = Vec::new();
        for file in &mut self.files {
            rest.extend(file.decoder.finish());
        }
        self.emit(&rest)?;
        if let Some(log) = self.log.as_mut() {
            log.flush().context("failed to flush the local log file")?;
        }
        Ok(())
    }
}

/// A job-state read in progress.
type StateRead<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<JobStatus>>> + Send + 'a>>;

/// What the watcher knows about the job's state between reads.
#[derive(Debug, Default)]
struct StateTracker {
    /// The scheduler has shown the job at least once.
    seen: bool,
    /// The state and reason last announced.
    shown: Option<(String, Option<String>)>,
    warned_unknown: bool,
    failing_since: Option<Instant>,
    /// State reads so far.
    checks: u32,
    /// State reads since the batch script said the commands ended.
    since_end: Option<u32>,
    /// The batch script printed its last line.
    script_ended: bool,
}

impl StateTracker {
    /// When to read the state again.
    fn next_interval(&mut self, settings: &WatchSettings) -> Duration {
        if !self.seen {
            // 1, 2, 4, ... seconds while the scheduler may not know it yet.
            Duration::from_secs(1u64 << self.checks.min(4)).min(settings.state_interval)
        } else if let Some(checks) = self.since_end.as_mut() {
            // The job should end any moment: 1, 2, 4, ... seconds, so a state
            // that lingers (a slow epilog, a state this tool does not know)
            // does not cost a request a second. Once the script printed its
            // last line, only the shell's exit is left: 0.1, 0.2, 0.4, ... s.
            *checks += 1;
            let first = if self.script_ended {
                Duration::from_millis(100)
            } else {
                Duration::from_secs(1)
            };
            (first * (1u32 << (*checks - 1).min(10))).min(settings.state_interval)
        } else {
            settings.state_interval
        }
    }
}

fn announce(job: &JobId, state: &SlurmState, status: &JobStatus) {
    let reason = status
        .reason
        .as_deref()
        .filter(|r| !r.is_empty() && *r != "None");
    match (state, reason) {
        (SlurmState::Pending, Some(reason)) => {
            tracing::info!("job {job} is waiting in the queue ({reason})")
        }
        (SlurmState::Pending, None) => tracing::info!("job {job} is waiting in the queue"),
        (SlurmState::Running, _) => match status.nodes.as_deref().filter(|n| !n.is_empty()) {
            Some(nodes) => tracing::info!("job {job} is running on {nodes}"),
            None => tracing::info!("job {job} is running"),
        },
        (_, Some(reason)) => tracing::info!("job {job} is {} ({reason})", status.state),
        (_, None) => tracing::info!("job {job} is {}", status.state),
    }
}

/// Decodes a byte stream for display: valid UTF-8 passes through untouched,
/// invalid bytes become U+FFFD, and a character cut at the end of a read
/// waits for its remaining bytes instead of being mangled.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes; returns what can be shown now.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::with_capacity(self.pending.len());
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    out.extend_from_slice(valid.as_bytes());
                    rest = &[];
                    break;
                }
                Err(err) => {
                    let (valid, after) = rest.split_at(err.valid_up_to());
                    out.extend_from_slice(valid);
                    match err.error_len() {
                        Some(bad) => {
                            out.extend_from_slice(
                                char::REPLACEMENT_CHARACTER.to_string().as_bytes(),
                            );
                            rest = &after[bad..];
                        }
                        None => {
                            // An incomplete character at the end: keep it.
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// Shows whatever is held back, lossily: the stream has ended.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&rest).into_owned().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_stream_reassembles_split_characters() {
        let text = "grüße ✓ 日本語\n".as_bytes();
        for cut in 0..=text.len() {
            let mut stream = Utf8Stream::default();
            let mut out = stream.push(&text[..cut]);
            out.extend(stream.push(&text[cut..]));
            out.extend(stream.finish());
            assert_eq!(out, text, "cut at {cut}");
        }
    }

    #[test]
    fn utf8_stream_replaces_invalid_bytes_without_shifting() {
        let mut stream = Utf8Stream::default();
        let mut out = stream.push(b"a\xffb");
        out.extend(stream.push(b"\xe6\x97"));
        out.extend(stream.push(b"\xa5c\xc0d"));
        out.extend(stream.finish());
        assert_eq!(String::from_utf8(out).unwrap(), "a\u{fffd}b日c\u{fffd}d");
    }

    #[test]
    fn utf8_stream_finish_shows_a_truncated_tail_lossily() {
        let mut stream = Utf8Stream::default();
        assert_eq!(stream.push(b"ok \xe6\x97"), b"ok ");
        assert_eq!(String::from_utf8(stream.finish()).unwrap(), "\u{fffd}");
        assert!(stream.finish().is_empty());
    }

    struct NoBackend;

    #[async_trait::async_trait]
    impl Backend for NoBackend {
        fn describe(&self) -> String {
            String::new()
        }
        async fn default_base_dir(&self) -> Result<String> {
            unreachable!()
        }
        async fn create_private_dir(&self, _: &str) -> Result<()> {
            unreachable!()
        }
        async fn put_file(&self, _: &str, _: &str, _: Vec<u8>) -> Result<()> {
            unreachable!()
        }
        async fn upload_workspace(
            &self,
            _: &std::path::Path,
            _: &str,
        ) -> Result<crate::backend::StagedWorkspace> {
            unreachable!()
        }
        async fn submit(&self, _: &crate::backend::JobSpec) -> Result<JobId> {
            unreachable!()
        }
        async fn job_status(&self, _: &JobId) -> Result<Option<JobStatus>> {
            unreachable!()
        }
        async fn read_output(
            &self,
            _: &str,
            _: u64,
            _: bool,
        ) -> Result<crate::backend::OutputChunk> {
            unreachable!()
        }
        async fn cancel(&self, _: &JobId) -> Result<()> {
            unreachable!()
        }
        async fn artifacts_part_size(&self) -> Result<Option<u64>> {
            unreachable!()
        }
        async fn download(&self, _: &str, _: &std::path::Path) -> Result<bool> {
            unreachable!()
        }
        async fn remove_dir(&self, _: &str) -> Result<()> {
            unreachable!()
        }
    }

    struct NoSink;
    impl OutputSink for NoSink {
        fn job_output(&self, _: &[u8]) {}
    }

    /// Feeds `pieces` as successive reads; whether the script ended.
    fn ended_after(pieces: &[&[u8]]) -> bool {
        let mut watcher = Watcher::new(&NoBackend, &NoSink, None, WatchSettings::default(), vec![]);
        for piece in pieces {
            watcher.note_last_line(piece);
        }
        watcher.script_ended()
    }

    #[test]
    fn the_script_ended_only_when_its_marker_is_the_last_line() {
        let end = b"firecrest-ci: end of the batch script (exit status 0)\n";
        assert!(ended_after(&[b"hello\n", end]));
        assert!(ended_after(&[&[b"hello\n".as_slice(), end].concat()]));
        // Cut anywhere between reads.
        let whole = [b"a\nb\n".as_slice(), end].concat();
        for cut in 0..=whole.len() {
            assert!(ended_after(&[&whole[..cut], &whole[cut..]]), "cut at {cut}");
        }
        // Not the last line, not a whole line, not at a line start.
        assert!(!ended_after(&[end, b"more\n"]));
        assert!(!ended_after(&[end, b"x"]));
        assert!(!ended_after(&[&end[..end.len() - 1]]));
        assert!(!ended_after(&[
            b"say firecrest-ci: end of the batch script\n"
        ]));
        assert!(!ended_after(&[b"hello\n"]));
        assert!(!ended_after(&[]));
    }

    /// After the script's last line the state is read soon, then less and
    /// less often, up to the state interval: a state that lingers (unknown
    /// to this tool, a slow epilog) must not cost a read every 1.6 s.
    #[test]
    fn state_reads_after_the_end_back_off_to_the_state_interval() {
        let settings = WatchSettings::default();
        for script_ended in [false, true] {
            let mut tracker = StateTracker {
                seen: true,
                since_end: Some(0),
                script_ended,
                ..StateTracker::default()
            };
            let intervals: Vec<Duration> =
                (0..12).map(|_| tracker.next_interval(&settings)).collect();
            let first = if script_ended { 100 } else { 1000 };
            assert_eq!(intervals[0], Duration::from_millis(first));
            assert!(intervals.windows(2).all(|w| w[0] <= w[1]), "{intervals:?}");
            assert_eq!(intervals[11], settings.state_interval, "{intervals:?}");
        }
    }
}
