//! Throttled progress lines for long byte-moving steps (packing, uploads,
//! downloads). A CI log is read by people scrolling: one line every few
//! seconds with percent, rate and time left says "still moving" without
//! flooding it, and a short step prints nothing at all.

use std::time::{Duration, Instant};

/// Reports how far a long step has come, at most once per `every`.
///
/// Feed it with [`Progress::advance`] as bytes move; it emits `tracing::info!`
/// lines itself. Nothing is printed before the first `every` has passed, so
/// quick steps stay silent.
#[derive(Debug)]
pub struct Progress {
    what: String,
    total: Option<u64>,
    every: Duration,
    start: Instant,
    last: Instant,
    done: u64,
    printed: bool,
    finished: bool,
}

impl Progress {
    /// Starts the clock. `total` is the expected byte count when known (it
    /// gives percent and time left); `every` is the shortest gap between lines.
    pub fn new(what: &str, total: Option<u64>, every: Duration) -> Self {
        Self::starting_at(what, total, every, Instant::now())
    }

    fn starting_at(what: &str, total: Option<u64>, every: Duration, now: Instant) -> Self {
        Self {
            what: what.to_owned(),
            total,
            every,
            start: now,
            last: now,
            done: 0,
            printed: false,
            finished: false,
        }
    }

    /// Counts `bytes` more as done; prints a line if `every` has passed since
    /// the last one.
    pub fn advance(&mut self, bytes: u64) {
        if let Some(line) = self.tick(bytes, Instant::now()) {
            tracing::info!("{line}");
        }
    }

    /// Bytes counted so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Prints a closing line, but only if progress lines were printed before:
    /// a long step then visibly ends at 100 %, a short one stays silent.
    pub fn finish(&mut self) {
        if let Some(line) = self.finish_at(Instant::now()) {
            tracing::info!("{line}");
        }
    }

    fn tick(&mut self, bytes: u64, now: Instant) -> Option<String> {
        self.done = self.done.saturating_add(bytes);
        if self.finished || now.saturating_duration_since(self.last) < self.every {
            return None;
        }
        self.last = now;
        self.printed = true;
        Some(self.line(now))
    }

    fn finish_at(&mut self, now: Instant) -> Option<String> {
        if self.finished {
            return None;
        }
        self.finished = true;
        if !self.printed {
            return None;
        }
        let elapsed = now.saturating_duration_since(self.start);
        Some(format!(
            "{}: done, {} in {} ({})",
            self.what,
            format_bytes(self.done),
            format_duration(elapsed),
            format_rate(self.done, elapsed)
        ))
    }

    fn line(&self, now: Instant) -> String {
        let elapsed = now.saturating_duration_since(self.start);
        let rate = format_rate(self.done, elapsed);
        match self.total {
            Some(total) => {
                let done = self.done.min(total);
                let percent = if total == 0 {
                    100.0
                } else {
                    done as f64 * 100.0 / total as f64
                };
                let left = match bytes_per_sec(self.done, elapsed) {
                    Some(rate) if rate > 0.0 => {
                        format_duration(Duration::from_secs_f64((total - done) as f64 / rate))
                    }
                    _ => "unknown".to_owned(),
                };
                format!(
                    "{}: {percent:.0}% ({} of {}), {rate}, about {left} left",
                    self.what,
                    format_bytes(done),
                    format_bytes(total)
                )
            }
            None => format!("{}: {}, {rate}", self.what, format_bytes(self.done)),
        }
    }
}

fn bytes_per_sec(bytes: u64, elapsed: Duration) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    (secs > 0.0).then(|| bytes as f64 / secs)
}

fn format_rate(bytes: u64, elapsed: Duration) -> String {
    match bytes_per_sec(bytes, elapsed) {
        Some(rate) => format!("{}/s", format_bytes(rate as u64)),
        None => "-/s".to_owned(),
    }
}

/// Binary units with one decimal, e.g. `12.3 MiB`; shared by the step summaries.
pub fn format_bytes(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

/// Whole seconds, minutes and hours, e.g. `42s`, `3m05s`, `1h02m`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64().round() as u64;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn silent_until_the_interval_passes_then_throttled() {
        let t0 = Instant::now();
        let mut p = Progress::starting_at("packing", Some(100 * MIB), Duration::from_secs(5), t0);
        // Many small advances within the first interval print nothing.
        for i in 1..1000 {
            assert_eq!(p.tick(10, t0 + Duration::from_millis(i)), None);
        }
        let line = p.tick(10 * MIB, t0 + Duration::from_secs(5)).unwrap();
        assert!(line.starts_with("packing: 10% ("), "{line}");
        // The next line only after another full interval.
        assert_eq!(p.tick(MIB, t0 + Duration::from_secs(9)), None);
        assert!(p.tick(MIB, t0 + Duration::from_secs(10)).is_some());
    }

    #[test]
    fn line_has_percent_rate_and_time_left() {
        let t0 = Instant::now();
        let mut p = Progress::starting_at("upload", Some(100 * MIB), Duration::from_secs(2), t0);
        let line = p.tick(25 * MIB, t0 + Duration::from_secs(5)).unwrap();
        // 25 MiB in 5 s is 5 MiB/s; 75 MiB left is 15 s.
        assert_eq!(
            line,
            "upload: 25% (25.0 MiB of 100.0 MiB), 5.0 MiB/s, about 15s left"
        );
    }

    #[test]
    fn without_total_shows_bytes_and_rate() {
        let t0 = Instant::now();
        let mut p = Progress::starting_at("download", None, Duration::from_secs(1), t0);
        let line = p.tick(3 * MIB, t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(line, "download: 3.0 MiB, 1.5 MiB/s");
    }

    #[test]
    fn overshoot_and_zero_total_do_not_break_the_line() {
        let t0 = Instant::now();
        let mut p = Progress::starting_at("x", Some(0), Duration::from_secs(1), t0);
        let line = p.tick(5, t0 + Duration::from_secs(1)).unwrap();
        assert!(line.starts_with("x: 100% (0 B of 0 B)"), "{line}");
        let mut p = Progress::starting_at("y", Some(MIB), Duration::from_secs(1), t0);
        let line = p.tick(2 * MIB, t0 + Duration::from_secs(1)).unwrap();
        assert!(
            line.contains("100%") && line.contains("about 0s left"),
            "{line}"
        );
    }

    #[test]
    fn finish_speaks_only_after_progress_lines() {
        let t0 = Instant::now();
        let mut quiet = Progress::starting_at("q", Some(10), Duration::from_secs(5), t0);
        quiet.tick(10, t0 + Duration::from_secs(1));
        assert_eq!(quiet.finish_at(t0 + Duration::from_secs(1)), None);

        let mut long = Progress::starting_at("l", Some(20 * MIB), Duration::from_secs(5), t0);
        long.tick(10 * MIB, t0 + Duration::from_secs(5)).unwrap();
        long.tick(10 * MIB, t0 + Duration::from_secs(6));
        assert_eq!(
            long.finish_at(t0 + Duration::from_secs(10)).unwrap(),
            "l: done, 20.0 MiB in 10s (2.0 MiB/s)"
        );
        // Only once, and no progress lines after the end.
        assert_eq!(long.finish_at(t0 + Duration::from_secs(11)), None);
        assert_eq!(long.tick(1, t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn units() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(3 * 1024 * MIB), "3.0 GiB");
        assert_eq!(format_duration(Duration::from_millis(400)), "0s");
        assert_eq!(format_duration(Duration::from_secs(65)), "1m05s");
        assert_eq!(format_duration(Duration::from_secs(3720)), "1h02m");
    }
}
