//! When the watcher reads next: the job state from what the output has said
//! (phases), the output from how it has flowed (pace). Pure logic on
//! tokio's clock, tested through the watcher in `job/mod.rs`.

use std::time::Duration;

use tokio::time::Instant;

use super::WatchSettings;

/// The first reads after submission, and after the output began, come after
/// 0.3, 0.6, 1.2, ... s: a job usually starts within a second or two, and a
/// short one ends soon after its prologue.
pub(super) const FIRST_READ_AFTER: Duration = Duration::from_millis(300);

/// For this long after the output began, it is read every
/// [`FIRST_READ_AFTER`]: a short job (unpacking the workspace, a quick
/// test) ends within seconds of its prologue, and its end is seen at once.
/// (2 s: about 4 reads more than backing off would cost, every job.)
pub(super) const SHORT_JOB: Duration = Duration::from_secs(2);

/// Before the job is seen running, its state is read at least this often:
/// the queue state and reason of a pending job are worth showing.
pub(super) const PENDING_STATE_EVERY: Duration = Duration::from_secs(10);

/// What the output has said about the job so far; it decides when the job
/// state is worth reading. Phases only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Phase {
    /// Submitted: not seen running, no output yet.
    Submitted,
    /// Seen running, or its output began.
    Running,
    /// The batch script said that the commands ended.
    CommandsEnded,
    /// The batch script printed its last line.
    ScriptEnded,
}

/// What the watcher knows about the job's state between reads, and when to
/// read it next.
#[derive(Debug)]
pub(super) struct StateTracker {
    /// The scheduler has shown the job at least once.
    pub(super) seen: bool,
    /// The state and reason last announced.
    pub(super) shown: Option<(String, Option<String>)>,
    pub(super) warned_unknown: bool,
    pub(super) failing_since: Option<Instant>,
    pub(super) phase: Phase,
    /// When the phase began.
    pub(super) phase_started: Instant,
    /// State reads done in this phase.
    pub(super) phase_reads: u32,
    /// When the last state read came back.
    pub(super) last_read: Option<Instant>,
}

impl StateTracker {
    pub(super) fn new(started: Instant) -> Self {
        Self {
            seen: false,
            shown: None,
            warned_unknown: false,
            failing_since: None,
            phase: Phase::Submitted,
            phase_started: started,
            phase_reads: 0,
            last_read: None,
        }
    }

    /// Moves to `phase` if it is further on; says whether it did.
    pub(super) fn enter(&mut self, phase: Phase, now: Instant) -> bool {
        if phase <= self.phase {
            return false;
        }
        self.phase = phase;
        self.phase_started = now;
        self.phase_reads = 0;
        true
    }

    /// A state read started in phase `started_in` came back. One started
    /// before the phase began does not count as the phase's first.
    pub(super) fn read_done(&mut self, now: Instant, started_in: Phase) {
        if started_in == self.phase {
            self.phase_reads += 1;
        }
        self.last_read = Some(now);
    }

    /// When to read the state next.
    pub(super) fn next_read(&self, settings: &WatchSettings) -> Instant {
        let n = self.phase_reads;
        let doubling = |first: Duration, k: u32| first * (1u32 << k.min(6));
        let after_last = |delay: Duration| {
            let from = match self.last_read {
                Some(last) if n > 0 => last,
                _ => self.phase_started,
            };
            from + delay.min(settings.state_interval)
        };
        match self.phase {
            // 0.3, 0.6, 1.2, ... s: the scheduler may not know the job yet,
            // it may start any moment, or it waits in the queue.
            Phase::Submitted => after_last(doubling(FIRST_READ_AFTER, n).min(PENDING_STATE_EVERY)),
            // The output shows the job running: only the safety net.
            Phase::Running => after_last(settings.state_interval),
            // The job should end any moment: at once, then 1, 2, 4, ... s,
            // so a state that lingers (a slow epilog, a state this tool does
            // not know) does not cost a request a second. Once the script
            // printed its last line, only the shell's exit is left: at once,
            // then 0.1, 0.2, 0.4, ... s.
            Phase::CommandsEnded | Phase::ScriptEnded if n == 0 => self.phase_started,
            Phase::CommandsEnded => after_last(doubling(Duration::from_secs(1), n - 1)),
            Phase::ScriptEnded => after_last(doubling(Duration::from_millis(100), n - 1)),
        }
    }
}

/// When to read the output next, from how it flowed so far.
#[derive(Debug)]
pub(super) struct OutputPace {
    /// Until the next read.
    pub(super) interval: Duration,
    /// Reads that gave bytes since the output began (or restarted).
    pub(super) reads_with_data: u32,
    /// When a read last gave bytes (at first: when watching began).
    pub(super) last_data: Instant,
    /// When the first read gave bytes (since the output began or restarted).
    pub(super) output_began: Option<Instant>,
    /// Reads in a row that gave nothing.
    pub(super) quiet_reads: u32,
}

impl OutputPace {
    pub(super) fn new(started: Instant) -> Self {
        Self {
            interval: FIRST_READ_AFTER,
            reads_with_data: 0,
            last_data: started,
            output_began: None,
            quiet_reads: 0,
        }
    }

    /// The job was just seen running: read soon, as after submission.
    pub(super) fn restart(&mut self) {
        self.interval = FIRST_READ_AFTER;
        self.reads_with_data = 0;
        self.output_began = None;
        self.quiet_reads = 0;
    }

    /// After a read that gave `got` bytes (`more`: it stopped at its size
    /// limit): how long until the next one.
    pub(super) fn after_read(
        &mut self,
        got: u64,
        more: bool,
        now: Instant,
        settings: &WatchSettings,
    ) -> Duration {
        if got > 0 {
            self.last_data = now;
            self.reads_with_data += 1;
            self.output_began.get_or_insert(now);
        }
        let short_job = self
            .output_began
            .is_some_and(|began| now.duration_since(began) < SHORT_JOB);
        let was_quiet = self.quiet_reads > 0;
        self.quiet_reads = if got > 0 { 0 } else { self.quiet_reads + 1 };
        self.interval = if more {
            Duration::ZERO
        } else if short_job {
            FIRST_READ_AFTER.min(settings.log_interval)
        } else if got > 0 && was_quiet && self.reads_with_data > 1 {
            // Output came back after quiet reads: sparse lines (one every
            // few seconds) cost about one read each at the interval reached;
            // output that keeps flowing is read every `log_interval` from
            // the next read on.
            self.interval.max(settings.log_interval)
        } else if got > 0 {
            // The first reads after the output began come sooner: a short
            // job ends soon after its prologue.
            let ramp = FIRST_READ_AFTER * (1u32 << (self.reads_with_data - 1).min(6));
            ramp.min(settings.log_interval)
        } else {
            let cap = if now.duration_since(self.last_data) >= settings.silent_after {
                settings.silent_interval.max(settings.log_max_interval)
            } else {
                settings.log_max_interval
            };
            (self.interval * 2)
                .max(FIRST_READ_AFTER.min(settings.log_interval))
                .min(cap)
        };
        self.interval
    }
}
