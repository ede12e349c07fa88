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
//! Polling adapts to what the output says, so that a running job costs few
//! requests and its lines still show within about a second:
//! - output is read every `log_interval` while it flows, at once again after
//!   a read that stopped at its size limit, and backs off while it is quiet
//!   (doubling, up to `log_max_interval`; up to `silent_interval` once it
//!   was quiet for `silent_after`); output that comes back after quiet reads
//!   keeps the interval reached for one more read, so sparse lines cost
//!   about one read each;
//! - the job state is read on a short schedule (0.3, 0.6, 1.2, ... s, at
//!   most every [`schedule::PENDING_STATE_EVERY`]) until the job is seen running or its
//!   output begins, which also shows the queue state and reason of a pending
//!   job; then never on a timer while output shows the job running, only
//!   when the batch script reports that the commands ended (at once, then
//!   after 1, 2, 4, ... s) or that it ended (0.1, 0.2, 0.4, ... s), and as a
//!   safety net every `state_interval`: a job killed with its node prints
//!   nothing more.
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

mod schedule;
mod utf8;

use schedule::{OutputPace, Phase, StateTracker};
pub use utf8::Utf8Stream;

/// How often to look for the script's last line while a stopped run waits
/// for the epilogue.
const STOP_READ_EVERY: Duration = Duration::from_millis(250);

/// Once the commands ended, output is read this often until the script's
/// last line: the epilogue is all that is left, and the run waits for it.
const EPILOGUE_READ_EVERY: Duration = Duration::from_millis(250);

/// Output reads failing this long get a warning in the CI log.
const READ_FAILURES_WORTH_A_WARNING: Duration = Duration::from_secs(30);

/// Set once by the signal handler: the number of the first signal received.
pub type StopSignal = watch::Receiver<Option<i32>>;

/// Where the job's output goes: the CI log (as untrusted text) and a file.
pub trait OutputSink: Send + Sync {
    /// Shows a piece of the job's output; `bytes` never splits a character.
    fn job_output(&self, bytes: &[u8]);
}

/// How often to look; defaults need no tuning. One type with the
/// configuration's poll settings, so no field is copied across.
pub use crate::config::PollSettings as WatchSettings;

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
    /// The last read stopped at its size limit: there is more.
    more: bool,
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
            more: false,
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
        let mut tracker = StateTracker::new(started);
        let mut pace = OutputPace::new(started);
        let mut next_log = started + pace.interval;
        // A state read runs beside the output reads: one stuck in retries
        // must not hold the output back.
        let backend = self.backend;
        let mut in_flight: Option<StateRead<'a>> = None;
        let mut read_in = Phase::Submitted;

        loop {
            if let Some(signal) = *stop.borrow() {
                return Ok(WatchEnd::Stopped(signal));
            }
            let next_state = tracker.next_read(&self.settings);
            if in_flight.is_none() && Instant::now() >= next_state {
                self.stats.state_reads += 1;
                read_in = tracker.phase;
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
                    if let Some(status) =
                        self.state_came(job, &mut tracker, &mut pace, &mut next_log, started, read_in, result)?
                    {
                        self.drain().await?;
                        return Ok(WatchEnd::Finished(status));
                    }
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
                // The state read in flight is driven meanwhile: it may hold
                // the token lock (a refresh in progress) that this read
                // waits for, and a future that is not polled never lets go.
                let (got, state) = {
                    let read = self.read_all_once(false);
                    match in_flight.as_mut() {
                        None => (read.await, None),
                        Some(state_read) => {
                            tokio::pin!(read);
                            tokio::select! {
                                got = &mut read => (got, None),
                                result = state_read => (read.await, Some(result)),
                            }
                        }
                    }
                };
                if let Some(result) = state {
                    in_flight = None;
                    if let Some(status) = self.state_came(
                        job,
                        &mut tracker,
                        &mut pace,
                        &mut next_log,
                        started,
                        read_in,
                        result,
                    )? {
                        got?;
                        self.drain().await?;
                        return Ok(WatchEnd::Finished(status));
                    }
                }
                let got = got?;
                let more = self.files.iter().any(|f| f.more);
                let now = Instant::now();
                let mut interval = pace.after_read(got, more, now, &self.settings);
                if self.stats.output_bytes > 0 {
                    tracker.enter(Phase::Running, now);
                }
                if self.end_hint {
                    tracker.enter(Phase::CommandsEnded, now);
                    if !self.script_ended {
                        interval = interval.min(EPILOGUE_READ_EVERY);
                    }
                }
                if self.script_ended {
                    tracker.enter(Phase::ScriptEnded, now);
                }
                next_log = now + interval;
            }
        }
    }

    /// A state read came back: account for it; the final status when the
    /// job ended. A job seen running gets its prologue shown soon.
    #[allow(clippy::too_many_arguments)]
    fn state_came(
        &mut self,
        job: &JobId,
        tracker: &mut StateTracker,
        pace: &mut OutputPace,
        next_log: &mut Instant,
        started: Instant,
        read_in: Phase,
        result: Result<Option<JobStatus>>,
    ) -> Result<Option<JobStatus>> {
        tracker.read_done(Instant::now(), read_in);
        let running = matches!(&result, Ok(Some(s)) if s.state == SlurmState::Running);
        if let Some(status) = self.on_state(job, tracker, started, result)? {
            return Ok(Some(status));
        }
        if running && tracker.enter(Phase::Running, Instant::now()) {
            // Its prologue prints at once: show it soon.
            pace.restart();
            *next_log = (*next_log).min(Instant::now() + pace.interval);
        }
        Ok(None)
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
                let state = status.state.clone();
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
        file.more = chunk.more;
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
    /// are complete; otherwise (a job killed before its epilogue ended, or a
    /// backlog not yet read) read until they stay quiet, as Slurm may still
    /// be flushing. A backlog (a read that stopped at its budget) is read on
    /// to its end however long that takes; `drain_max` bounds only a file
    /// that keeps growing slowly after the job. Then show any held-back
    /// partial character.
    pub async fn drain(&mut self) -> Result<()> {
        let started = Instant::now();
        let mut quiet_since = Instant::now();
        while !self.script_ended {
            let got = self.read_all_once(false).await?;
            if got > 0 {
                quiet_since = Instant::now();
            }
            let backlog = self.files.iter().any(|file| file.more);
            if self.script_ended
                || quiet_since.elapsed() >= self.settings.drain_quiet
                || (started.elapsed() >= self.settings.drain_max && !backlog)
            {
                break;
            }
            if !backlog {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        if self.script_ended {
            // The first file ends with the script's last line: it is whole,
            // and nothing is held back. Only the others need a last look.
            if let Some(first) = self.files.first_mut() {
                first.last_read_gave = false;
            }
            for index in 1..self.files.len() {
                self.read_file(index, true).await?;
            }
        } else {
            // Anything held back as a possible partial character is final now.
            for _ in 0..8 {
                if self.read_all_once(true).await? == 0 {
                    break;
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A job that follows a script on tokio's clock (seconds from the
    /// backend's creation): its state over time, what its output file holds
    /// when. Records each state and output read, in order.
    struct Scripted {
        start: Instant,
        /// From this time on, the job is in this state (with this reason).
        states: Vec<(f64, &'static str, Option<&'static str>)>,
        /// At this time, these bytes are appended to the output file.
        writes: Vec<(f64, Vec<u8>)>,
        /// A read returns at most this many bytes (and says there is more).
        read_limit: usize,
        /// A read takes this many seconds.
        read_takes: f64,
        calls: std::sync::Mutex<Vec<(f64, Call)>>,
        /// Stands for the client's token lock, which every request takes.
        token: tokio::sync::Mutex<()>,
        /// A state read holds the token this long (a refresh in progress).
        state_holds_token: Option<f64>,
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Call {
        State,
        /// Whether the read gave bytes.
        Output(bool),
    }

    const STARTED: &[u8] = b"firecrest-ci: job 1 on nid001\n";
    const COMMANDS_ENDED: &[u8] = b"firecrest-ci: commands exited with status 0\n";
    const SCRIPT_ENDED: &[u8] = b"firecrest-ci: end of the batch script (exit status 0)\n";

    impl Scripted {
        fn new() -> Self {
            Self {
                start: Instant::now(),
                states: Vec::new(),
                writes: Vec::new(),
                read_limit: usize::MAX,
                read_takes: 0.0,
                calls: Default::default(),
                token: tokio::sync::Mutex::new(()),
                state_holds_token: None,
            }
        }

        fn state(mut self, from: f64, state: &'static str, reason: Option<&'static str>) -> Self {
            self.states.push((from, state, reason));
            self
        }

        fn write(mut self, at: f64, bytes: &[u8]) -> Self {
            self.writes.push((at, bytes.to_vec()));
            self
        }

        /// The commands end at `at`, the script right after, the job 0.2 s later.
        fn ends(self, at: f64) -> Self {
            self.write(at, COMMANDS_ENDED)
                .write(at, SCRIPT_ENDED)
                .state(at + 0.2, "COMPLETED", None)
        }

        /// A numbered line every `every` seconds from `from` until before `to`.
        fn lines(mut self, from: f64, to: f64, every: f64) -> Self {
            let mut at = from;
            while at < to {
                self.writes
                    .push((at, format!("line at {at:.1}\n").into_bytes()));
                at += every;
            }
            self
        }

        fn now(&self) -> f64 {
            self.start.elapsed().as_secs_f64()
        }

        fn file(&self) -> Vec<u8> {
            let now = self.now();
            let mut file = Vec::new();
            for (at, bytes) in &self.writes {
                if *at <= now + 1e-9 {
                    file.extend_from_slice(bytes);
                }
            }
            file
        }

        fn calls(&self) -> Vec<(f64, Call)> {
            self.calls.lock().unwrap().clone()
        }

        /// When state reads happened, in seconds.
        fn state_reads(&self) -> Vec<f64> {
            let calls = self.calls();
            calls
                .iter()
                .filter(|(_, c)| *c == Call::State)
                .map(|(t, _)| *t)
                .collect()
        }

        /// When output reads happened, in seconds.
        fn output_reads(&self) -> Vec<f64> {
            let calls = self.calls();
            calls
                .iter()
                .filter(|(_, c)| *c != Call::State)
                .map(|(t, _)| *t)
                .collect()
        }

        /// When the first output read that gave bytes happened.
        fn first_data(&self) -> f64 {
            let calls = self.calls();
            calls
                .iter()
                .find(|(_, c)| *c == Call::Output(true))
                .expect("output was read")
                .0
        }
    }

    #[async_trait::async_trait]
    impl Backend for Scripted {
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
            let _token = self.token.lock().await;
            if let Some(hold) = self.state_holds_token {
                tokio::time::sleep(Duration::from_secs_f64(hold)).await;
            }
            let now = self.now();
            self.calls.lock().unwrap().push((now, Call::State));
            let current = self
                .states
                .iter()
                .rev()
                .find(|(from, _, _)| *from <= now + 1e-9);
            Ok(current.map(|(_, state, reason)| JobStatus {
                state: SlurmState::parse(state),
                reason: reason.map(str::to_string),
                ..JobStatus::default()
            }))
        }
        async fn read_output(
            &self,
            _: &str,
            offset: u64,
            _: bool,
        ) -> Result<crate::backend::OutputChunk> {
            drop(self.token.lock().await);
            tokio::time::sleep(Duration::from_secs_f64(self.read_takes)).await;
            let file = self.file();
            let rest = &file[(offset as usize).min(file.len())..];
            let data = rest[..rest.len().min(self.read_limit)].to_vec();
            let now = self.now();
            self.calls
                .lock()
                .unwrap()
                .push((now, Call::Output(!data.is_empty())));
            Ok(crate::backend::OutputChunk {
                advance: data.len() as u64,
                more: data.len() < rest.len(),
                data,
            })
        }
        async fn output_size(&self, _: &str) -> Result<Option<u64>> {
            Ok(Some(self.file().len() as u64))
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

    #[derive(Default)]
    struct Shown(std::sync::Mutex<Vec<u8>>);
    impl OutputSink for Shown {
        fn job_output(&self, bytes: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(bytes);
        }
    }

    /// Watches the scripted job with the default settings until it ends;
    /// the end and what was shown.
    async fn watch(job: &Scripted) -> (WatchEnd, String) {
        let (end, text, _) = watch_noting_missing(job).await;
        (end, text)
    }

    /// [`watch`], with what the watcher found missing from `job.out`.
    async fn watch_noting_missing(job: &Scripted) -> (WatchEnd, String, Option<Missing>) {
        let shown = Shown::default();
        let files = vec![OutputFile::new("job.out")];
        let mut watcher = Watcher::new(job, &shown, None, WatchSettings::default(), files);
        let (_keep, mut stop) = watch::channel(None);
        let end = watcher
            .watch(&JobId("1".into()), &mut stop, None)
            .await
            .unwrap();
        let missing = watcher.files[0].missing.clone();
        let text = String::from_utf8(shown.0.into_inner().unwrap()).unwrap();
        (end, text, missing)
    }

    fn finished(end: &WatchEnd) -> String {
        match end {
            WatchEnd::Finished(status) => status.state.to_string(),
            other => panic!("the job did not finish: {other:?}"),
        }
    }

    /// The largest gap between successive times in `from..=to`.
    fn largest_gap(times: &[f64], from: f64, to: f64) -> f64 {
        let within: Vec<f64> = times
            .iter()
            .copied()
            .filter(|t| (from..=to).contains(t))
            .collect();
        within.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
    }

    fn near(a: f64, b: f64) -> bool {
        (a - b).abs() < 0.01
    }

    #[tokio::test(start_paused = true)]
    async fn no_state_read_between_the_start_and_the_end_markers_while_output_flows() {
        let job = Scripted::new()
            .state(0.0, "PENDING", None)
            .state(1.0, "RUNNING", None)
            .write(1.0, STARTED)
            .lines(1.5, 20.0, 0.5)
            .ends(20.0);
        let (end, shown) = watch(&job).await;
        assert_eq!(finished(&end), "COMPLETED");
        assert!(shown.ends_with("(exit status 0)\n"), "{shown}");
        let reads = job.state_reads();
        let between: Vec<f64> = reads
            .iter()
            .copied()
            .filter(|t| *t > job.first_data() && *t < 20.0)
            .collect();
        assert_eq!(
            between,
            Vec::<f64>::new(),
            "state reads while output flowed"
        );
        // After the markers: read at once, and the end noticed soon.
        let after: Vec<f64> = reads.iter().copied().filter(|t| *t >= 20.0).collect();
        assert!(
            !after.is_empty() && after.iter().all(|t| *t < 21.0),
            "{reads:?}"
        );
    }

    /// A state read that holds the token (its refresh waits for a token
    /// endpoint that is down) while an output read waits for the token: the
    /// watcher keeps driving the state read, so neither waits forever. (It
    /// once awaited the output read alone, and the two deadlocked.)
    #[tokio::test(start_paused = true)]
    async fn a_state_read_holding_the_token_does_not_deadlock_the_output_read() {
        let mut job = Scripted::new()
            .state(0.0, "RUNNING", None)
            .write(0.0, STARTED)
            .lines(0.5, 30.0, 0.5)
            .ends(30.0);
        job.state_holds_token = Some(3.0);
        let watched = tokio::time::timeout(Duration::from_secs(600), watch(&job)).await;
        let (end, shown) = watched.expect("the watcher deadlocked");
        assert_eq!(finished(&end), "COMPLETED");
        assert!(shown.contains("line at 29.5\n"), "{shown}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_job_is_read_on_the_short_schedule_and_its_reason_shown() {
        #[derive(Clone, Default)]
        struct Log(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Log {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let job = Scripted::new()
            .state(0.0, "PENDING", Some("Priority"))
            .state(38.0, "RUNNING", None)
            .write(38.5, STARTED)
            .ends(42.0);
        let (end, _) = watch(&job).await;
        assert_eq!(finished(&end), "COMPLETED");
        let reads: Vec<f64> = job
            .state_reads()
            .into_iter()
            .filter(|t| *t < 38.0)
            .collect();
        // 0.3, 0.6, 1.2, ... s apart, then every 10 s.
        assert!(near(reads[0], 0.3), "{reads:?}");
        let mut gap = 0.3;
        for pair in reads.windows(2) {
            gap = (gap * 2.0f64).min(10.0);
            assert!(near(pair[1] - pair[0], gap), "{reads:?}");
        }
        assert!(reads.len() >= 7, "{reads:?}");
        let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            log.matches("job 1 is waiting in the queue (Priority)")
                .count(),
            1,
            "{log}"
        );
        // Once a state read sees it running, its prologue is read within
        // a second.
        let states = job.state_reads();
        let running = *states.iter().find(|t| **t >= 38.0).unwrap();
        let output = job.output_reads();
        let seen = output.iter().find(|t| **t >= running).unwrap();
        assert!(*seen <= running + 1.0, "{states:?} {output:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_safety_net_notices_a_job_killed_without_a_word() {
        let net = WatchSettings::default().state_interval.as_secs_f64();
        let killed_at = 1.5 * net;
        let job = Scripted::new()
            .state(0.0, "RUNNING", None)
            .state(killed_at, "NODE_FAIL", None)
            .write(0.5, STARTED)
            .lines(1.0, 10.0, 0.5);
        let (end, shown) = watch(&job).await;
        assert_eq!(finished(&end), "NODE_FAIL");
        assert!(shown.contains("line at 9.5"), "{shown}");
        let reads = job.state_reads();
        let running: Vec<f64> = reads
            .iter()
            .copied()
            .filter(|t| *t > job.first_data())
            .collect();
        // Only the safety net: every `state_interval` from the last read before.
        let before = reads
            .iter()
            .copied()
            .filter(|t| *t <= job.first_data())
            .last()
            .unwrap();
        assert!(near(running[0], before + net), "{reads:?}");
        assert!(
            running.windows(2).all(|w| near(w[1] - w[0], net)),
            "{reads:?}"
        );
        let last = *running.last().unwrap();
        assert!(last > killed_at && last - killed_at <= net, "{reads:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_output_backs_off_to_the_cap_and_speeds_up_when_it_returns() {
        let settings = WatchSettings::default();
        let cap = settings.log_max_interval.as_secs_f64();
        let silent_cap = settings.silent_interval.as_secs_f64();
        let silent_after = settings.silent_after.as_secs_f64();
        let back_at = silent_after + 4.0 * silent_cap;
        let job = Scripted::new()
            .state(0.0, "RUNNING", None)
            .write(0.5, STARTED)
            .lines(back_at, back_at + 10.0, 0.5)
            .ends(back_at + 10.0);
        let (end, _) = watch(&job).await;
        assert_eq!(finished(&end), "COMPLETED");
        let reads = job.output_reads();
        // Quiet for less than `silent_after`: 1, 2, ... s up to the cap.
        assert!(
            near(largest_gap(&reads, 0.5, silent_after - 1.0), cap),
            "{reads:?}"
        );
        // Quiet for longer: up to the silent cap.
        assert!(
            near(
                largest_gap(&reads, silent_after + silent_cap, back_at),
                silent_cap
            ),
            "{reads:?}"
        );
        let back = reads.iter().copied().find(|t| *t >= back_at).unwrap();
        assert!(back - back_at <= silent_cap, "{reads:?}");
        // Flowing again: after one more read, every `log_interval`.
        let second = reads.iter().copied().find(|t| *t > back).unwrap();
        assert!(
            largest_gap(&reads, second, back_at + 10.0)
                <= settings.log_interval.as_secs_f64() + 1e-6,
            "{reads:?}"
        );
        // The state meanwhile: the safety net only.
        let states = job.state_reads();
        let running = states
            .iter()
            .filter(|t| **t > 1.0 && **t < back_at + 10.0)
            .count();
        let expected = ((back_at + 10.0 - 1.0) / settings.state_interval.as_secs_f64()) as usize;
        assert_eq!(running, expected, "{states:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_job_is_read_often_until_it_ends_then_the_reads_back_off() {
        // The prologue, then two quiet seconds (unpacking, a quick test).
        let job = Scripted::new()
            .state(0.0, "RUNNING", None)
            .write(0.5, STARTED)
            .ends(2.2);
        let (end, _) = watch(&job).await;
        assert_eq!(finished(&end), "COMPLETED");
        let reads = job.output_reads();
        let first = reads.iter().copied().find(|t| *t >= 0.5).unwrap();
        // Quiet, yet read every 0.3 s: the end is seen within 0.3 s.
        assert!(
            largest_gap(&reads, first, 2.2) <= schedule::FIRST_READ_AFTER.as_secs_f64() + 1e-6,
            "{reads:?}"
        );
        let seen_end = reads.iter().copied().find(|t| *t >= 2.2).unwrap();
        assert!(seen_end - 2.2 <= 0.3 + 1e-6, "{reads:?}");
        // A job that goes on quietly: after `SHORT_JOB` the reads back off.
        let long = Scripted::new()
            .state(0.0, "RUNNING", None)
            .write(0.5, STARTED)
            .lines(20.0, 21.0, 0.5)
            .ends(21.0);
        watch(&long).await;
        let reads = long.output_reads();
        let short_end = 0.5 + schedule::SHORT_JOB.as_secs_f64();
        let during = reads
            .iter()
            .filter(|t| (0.5..short_end).contains(*t))
            .count();
        let after = reads
            .iter()
            .filter(|t| (short_end..20.0).contains(*t))
            .count();
        assert!(
            during >= 6,
            "{during} reads in the first seconds: {reads:?}"
        );
        assert!(
            after <= 10,
            "{after} reads while quiet after them: {reads:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sparse_lines_cost_about_one_read_each_and_show_within_the_cap() {
        let settings = WatchSettings::default();
        let cap = settings.log_max_interval.as_secs_f64();
        let job = Scripted::new()
            .state(0.0, "RUNNING", None)
            .write(0.5, STARTED)
            .lines(5.0, 65.0, 3.0)
            .ends(65.0);
        let (end, shown) = watch(&job).await;
        assert_eq!(finished(&end), "COMPLETED");
        assert!(shown.contains("line at 62"), "{shown}");
        let reads = job.output_reads();
        let during = reads.iter().filter(|t| (10.0..60.0).contains(*t)).count();
        // 50 s of a line every 3 s: reading every second would be 50.
        assert!(during <= 30, "{during} reads: {reads:?}");
        assert!(largest_gap(&reads, 5.0, 65.0) <= cap + 1e-6, "{reads:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_read_after_the_last_line_was_shown_and_the_state_is_final() {
        let job = Scripted::new()
            .state(0.0, "RUNNING", None)
            .write(0.5, STARTED)
            .lines(1.0, 3.0, 0.5)
            .ends(3.0);
        let (end, shown) = watch(&job).await;
        assert_eq!(finished(&end), "COMPLETED");
        assert!(shown.ends_with("(exit status 0)\n"), "{shown}");
        let calls = job.calls();
        let last_state = calls.iter().rposition(|(_, c)| *c == Call::State).unwrap();
        assert_eq!(&calls[last_state + 1..], &[], "{calls:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_backlog_still_being_read_after_the_job_ended_is_read_whole() {
        // 20 kB printed at the end, read 100 bytes a second: minutes of
        // reading after the job ended, far past `drain_max`.
        let mut job = Scripted::new()
            .state(0.0, "RUNNING", None)
            .write(0.5, STARTED)
            .write(1.0, &[b'y'; 20_000])
            .write(1.0, b"\n")
            .ends(1.0);
        job.read_limit = 100;
        job.read_takes = 1.0;
        let drain_max = WatchSettings::default().drain_max.as_secs_f64();
        let (end, text, missing) = watch_noting_missing(&job).await;
        assert_eq!(finished(&end), "COMPLETED");
        // The watch drains at its end: here far past `drain_max`.
        assert!(job.now() > drain_max + 1.0, "{}", job.now());
        assert_eq!(missing, None);
        assert!(
            text.contains(&format!("{}\n", "y".repeat(20_000))),
            "{text}"
        );
        assert!(text.ends_with("(exit status 0)\n"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_cut_at_its_size_limit_is_followed_at_once() {
        let mut job = Scripted::new()
            .state(0.0, "RUNNING", None)
            .write(0.5, STARTED)
            .write(1.0, &[b'x'; 1000])
            .write(5.0, b"\n")
            .ends(5.0);
        job.read_limit = 100;
        let (end, shown) = watch(&job).await;
        assert_eq!(finished(&end), "COMPLETED");
        assert!(
            shown.contains(&format!("\n{}\n", "x".repeat(1000))),
            "{shown}"
        );
        let calls = job.calls();
        let at = calls
            .iter()
            .find(|(t, c)| *t >= 1.0 && *c == Call::Output(true))
            .unwrap()
            .0;
        let same = calls
            .iter()
            .filter(|(t, c)| *t == at && *c == Call::Output(true))
            .count();
        assert!(same >= 10, "{calls:?}");
    }

    /// Feeds `pieces` as successive reads; whether the script ended.
    fn ended_after(pieces: &[&[u8]]) -> bool {
        let job = Scripted::new();
        let shown = Shown::default();
        let mut watcher = Watcher::new(&job, &shown, None, WatchSettings::default(), vec![]);
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
}
