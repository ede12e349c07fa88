//! The Slurm side of the inputs: time limits, nodes, GPUs, placement names,
//! extra `sbatch` options and the one table of options the tool reserves,
//! read by the input parser (which names the input to use instead) and by
//! the script renderer (the last line of defence), so the two cannot
//! disagree. [`SlurmTime`] is the one parser of Slurm's time format.

use std::fmt;
use std::time::Duration;

use super::inputs::{self, Inputs};
use super::values::{is_name, parse_positive, shown, Problems};

/// Slurm placement and resources; `None` leaves the choice to Slurm.
/// Every value is validated to be safe on an `#SBATCH` line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub account: Option<String>,
    pub partition: Option<String>,
    pub reservation: Option<String>,
    pub constraint: Option<String>,
    /// Above zero; displays as `HH:MM:SS` or `D-HH:MM:SS`, e.g. `01:30:00`.
    pub time_limit: Option<SlurmTime>,
    /// `N` or `MIN-MAX`.
    pub nodes: Option<Nodes>,
    pub ntasks: Option<u32>,
    /// `N` or `TYPE:N`.
    pub gpus: Option<Gpus>,
    /// One option each, `--name=value`, `--flag`, `-Xvalue` or `-X value`;
    /// comments and blank lines dropped.
    pub sbatch_options: Vec<String>,
}

// ---------------------------------------------------------------- resources

pub(super) fn resources(raw: &Inputs, p: &mut Problems) -> Resources {
    let slurm_name = |kind: &'static str, example: &'static str, extra: &'static str| {
        move |value: &str| {
            if is_name(value, extra) {
                Ok(value.to_string())
            } else {
                let more = if extra.is_empty() {
                    String::new()
                } else {
                    format!(
                        " and {}",
                        extra
                            .chars()
                            .map(|c| format!("'{c}'"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    )
                };
                Err(format!(
                    "must be a Slurm {kind}: letters, digits, '.', '_', '-'{more}, no spaces, e.g. {example}"
                ))
            }
        }
    };
    Resources {
        account: p.input(raw, &inputs::ACCOUNT, slurm_name("account", "g123", "")),
        partition: p.input(
            raw,
            &inputs::PARTITION,
            slurm_name("partition (or a comma-separated list)", "normal", ","),
        ),
        reservation: p.input(
            raw,
            &inputs::RESERVATION,
            slurm_name("reservation", "maint", ","),
        ),
        constraint: p.input(
            raw,
            &inputs::CONSTRAINT,
            slurm_name(
                "constraint expression",
                "gpu or mc&(a100|h100)",
                ",&|*:[]()!",
            ),
        ),
        time_limit: p.input(raw, &inputs::TIME_LIMIT, SlurmTime::parse_input),
        nodes: p.input(raw, &inputs::NODES, Nodes::parse),
        ntasks: p.input(raw, &inputs::NTASKS, |v| {
            parse_positive(v)
                .ok_or_else(|| "must be a positive whole number of tasks, e.g. 4".to_string())
        }),
        gpus: p.input(raw, &inputs::GPUS, Gpus::parse),
        sbatch_options: sbatch_options(p, raw.get(&inputs::SBATCH_OPTIONS)),
    }
}

/// A job's time limit, parsed once: from an input, or from Slurm's own
/// `--time` text. Displays in Slurm's format, `[D-]HH:MM:SS` or `UNLIMITED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlurmTime {
    /// A limit of this many seconds, above zero.
    Seconds(u64),
    /// No limit (`UNLIMITED`, `INFINITE` or `0` in Slurm's text); no input
    /// asks for it.
    Unlimited,
}

impl SlurmTime {
    /// The `time-limit` input: Slurm's `--time` formats, or a humantime
    /// duration (`90m`, `2h`), above zero.
    pub fn parse_input(value: &str) -> Result<SlurmTime, String> {
        const EXPECTED: &str = "must be a time limit above zero in a Slurm format (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, e.g. 30 or 1:30:00 or 1-12:00:00) or a duration like 90m or 2h";
        let seconds = if value
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b':' || b == b'-')
        {
            slurm_time_seconds(value)
        } else {
            humantime::parse_duration(value)
                .ok()
                .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
        };
        match seconds {
            Some(seconds) if seconds > 0 => Ok(SlurmTime::Seconds(seconds)),
            _ => Err(EXPECTED.to_string()),
        }
    }

    /// Slurm's own `--time` text (`MM`, `MM:SS`, `HH:MM:SS`, `D-HH`,
    /// `D-HH:MM`, `D-HH:MM:SS`, `UNLIMITED`, `INFINITE`; `0` is no limit),
    /// as a batch script or the scheduler writes it. `None` when it is none
    /// of these.
    pub fn parse_slurm(value: &str) -> Option<SlurmTime> {
        let value = value.trim();
        if value.eq_ignore_ascii_case("unlimited") || value.eq_ignore_ascii_case("infinite") {
            return Some(SlurmTime::Unlimited);
        }
        match slurm_time_seconds(value)? {
            0 => Some(SlurmTime::Unlimited),
            seconds => Some(SlurmTime::Seconds(seconds)),
        }
    }

    /// The limit as a duration, for the backends that enforce or report it;
    /// `None` when there is no limit.
    pub fn as_duration(&self) -> Option<Duration> {
        match self {
            SlurmTime::Seconds(seconds) => Some(Duration::from_secs(*seconds)),
            SlurmTime::Unlimited => None,
        }
    }
}

impl fmt::Display for SlurmTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = match self {
            SlurmTime::Seconds(seconds) => *seconds,
            SlurmTime::Unlimited => return f.write_str("UNLIMITED"),
        };
        let (days, rest) = (seconds / 86_400, seconds % 86_400);
        if days > 0 {
            write!(f, "{days}-")?;
        }
        write!(
            f,
            "{:02}:{:02}:{:02}",
            rest / 3_600,
            rest % 3_600 / 60,
            rest % 60
        )
    }
}

/// Seconds in one of Slurm's `--time` formats, with each field below its
/// unit's range (but the first); `None` when it is none of them.
fn slurm_time_seconds(value: &str) -> Option<u64> {
    fn number(text: &str) -> Option<u64> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    }
    let (days, clock) = match value.split_once('-') {
        Some((days, clock)) => (Some(number(days)?), clock),
        None => (None, value),
    };
    let parts = clock.split(':').map(number).collect::<Option<Vec<u64>>>()?;
    let below = |n: u64, limit: u64| (n < limit).then_some(n);
    let (d, h, m, s) = match (days, parts.as_slice()) {
        (None, [m]) => (0, 0, *m, 0),
        (None, [m, s]) => (0, 0, *m, below(*s, 60)?),
        (None, [h, m, s]) => (0, *h, below(*m, 60)?, below(*s, 60)?),
        (Some(d), [h]) => (d, below(*h, 24)?, 0, 0),
        (Some(d), [h, m]) => (d, below(*h, 24)?, below(*m, 60)?, 0),
        (Some(d), [h, m, s]) => (d, below(*h, 24)?, below(*m, 60)?, below(*s, 60)?),
        _ => return None,
    };
    d.checked_mul(86_400)?
        .checked_add(h.checked_mul(3_600)?)?
        .checked_add(m.checked_mul(60)?)?
        .checked_add(s)
}

/// `--nodes`: a count, or a range MIN-MAX, each above zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nodes {
    min: u32,
    /// At least `min`; `None` for a plain count.
    max: Option<u32>,
}

impl Nodes {
    /// The `nodes` input (and the script's value): `N` or `MIN-MAX`.
    pub fn parse(value: &str) -> Result<Nodes, String> {
        const EXPECTED: &str =
            "must be a positive number of nodes N or a range MIN-MAX, e.g. 2 or 1-4";
        match value.split_once('-') {
            None => parse_positive(value).map(|min| Nodes { min, max: None }),
            Some((min, max)) => match (parse_positive(min), parse_positive(max)) {
                (Some(min), Some(max)) if min <= max => Some(Nodes {
                    min,
                    max: Some(max),
                }),
                _ => None,
            },
        }
        .ok_or_else(|| EXPECTED.to_string())
    }
}

impl fmt::Display for Nodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.max {
            Some(max) => write!(f, "{}-{max}", self.min),
            None => write!(f, "{}", self.min),
        }
    }
}

/// `--gpus`: a count above zero, of one GPU type or of any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpus {
    /// Letters, digits, `.`, `_` and `-`, e.g. `a100`.
    kind: Option<String>,
    count: u32,
}

impl Gpus {
    /// The `gpus` input (and the script's value): `N` or `TYPE:N`.
    pub fn parse(value: &str) -> Result<Gpus, String> {
        const EXPECTED: &str = "must be a positive number of GPUs N or TYPE:N, e.g. 4 or a100:4";
        let parsed = match value.split_once(':') {
            None => parse_positive(value).map(|count| Gpus { kind: None, count }),
            Some((kind, count)) if is_name(kind, "") => parse_positive(count).map(|count| Gpus {
                kind: Some(kind.to_string()),
                count,
            }),
            Some(_) => None,
        };
        parsed.ok_or_else(|| EXPECTED.to_string())
    }
}

impl fmt::Display for Gpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Some(kind) => write!(f, "{kind}:{}", self.count),
            None => write!(f, "{}", self.count),
        }
    }
}

/// sbatch short options that take a value (`-c 4`, `-c4`), per `man sbatch`;
/// `I` and `k` take an optional attached one.
const SHORT_WITH_VALUE: &str = "AaBbCcDdeFGiIJkLMmNnopqStwx";

fn sbatch_options(p: &mut Problems, raw: Option<&str>) -> Vec<String> {
    const VAR: &str = "FIRECREST_SBATCH_OPTIONS";
    let Some(text) = raw else {
        return Vec::new();
    };
    let mut options = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (line.starts_with('#') && !line.starts_with("#SBATCH")) {
            continue;
        }
        match parse_sbatch_option(line) {
            Ok(option) => options.push(option),
            Err(why) => p.add(&[VAR], format!("line {} {}: {why}", index + 1, shown(line))),
        }
    }
    options
}

fn parse_sbatch_option(line: &str) -> Result<String, String> {
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err("contains control characters; write one option per line".to_string());
    }
    if let Some(rest) = line.strip_prefix("#SBATCH") {
        return Err(format!(
            "write the option without #SBATCH, e.g. {}",
            rest.trim()
        ));
    }
    if !line.starts_with('-') {
        return Err("must be one sbatch option starting with '-', e.g. --mem=8G".to_string());
    }
    if line.contains(['"', '\'', '\\', '`']) {
        return Err(
            "quotes and backslashes are not accepted (values cannot contain spaces)".to_string(),
        );
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let one_per_line =
        || "must be one option per line, without spaces in its value, e.g. --mem=8G".to_string();
    if let Some(long) = words[0].strip_prefix("--") {
        let (name, value) = match (long.split_once('='), words.as_slice()) {
            (Some((name, value)), [_]) => (name, Some(value)),
            (None, [_]) => (long, None),
            (None, [_, value]) if !value.starts_with('-') => (long, Some(*value)),
            _ => return Err(one_per_line()),
        };
        let valid_name = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_name {
            return Err("is not an sbatch option; long options look like --mem=8G".to_string());
        }
        // sbatch accepts unambiguous prefixes (--out = --output), so refuse those too.
        if let Some(reserved) = reserved_long(name) {
            return Err(format!(
                "--{} is not accepted here: {}",
                reserved.long, reserved.reason
            ));
        }
        return match value {
            Some("") => Err("has an empty value; write --name=value".to_string()),
            Some(value) => Ok(format!("--{name}={value}")),
            None => Ok(format!("--{name}")),
        };
    }
    let mut chars = words[0][1..].chars();
    let Some(letter) = chars.next().filter(char::is_ascii_alphabetic) else {
        return Err("is not an sbatch option; short options look like -c 4".to_string());
    };
    if let Some(reserved) = reserved_short(letter) {
        return Err(format!(
            "-{letter} (--{}) is not accepted here: {}",
            reserved.long, reserved.reason
        ));
    }
    let attached = chars.as_str();
    let takes_value = SHORT_WITH_VALUE.contains(letter);
    match words.as_slice() {
        [_] if attached.is_empty() => Ok(format!("-{letter}")),
        [_] if takes_value => Ok(format!("-{letter}{attached}")),
        [_, value] if attached.is_empty() && takes_value && !value.starts_with('-') => {
            Ok(format!("-{letter} {value}"))
        }
        [_] => Err(format!(
            "-{letter} takes no value and short options cannot be combined; write one option per line"
        )),
        _ => Err(one_per_line()),
    }
}

// ---------------------------------------------------------------- reserved options

/// An `#SBATCH` option the tool sets itself, or that has an input of its own.
pub struct Reserved {
    /// The long name, without `--`.
    pub long: &'static str,
    pub short: Option<char>,
    /// What to use instead, as users read it.
    pub reason: &'static str,
}

/// Every reserved option, once: input parsing and the script renderer both
/// refuse these.
pub const RESERVED_OPTIONS: &[Reserved] = &[
    Reserved { long: "output", short: Some('o'), reason: "firecrest-ci sets the output file to stream the job's output; the local copy goes to log-file (FIRECREST_LOG_FILE)" },
    Reserved { long: "error", short: Some('e'), reason: "firecrest-ci sets the error file; use separate-stderr (FIRECREST_SEPARATE_STDERR)" },
    Reserved { long: "job-name", short: Some('J'), reason: "use job-name (FIRECREST_JOB_NAME)" },
    Reserved { long: "chdir", short: Some('D'), reason: "the job runs in its per-run directory; use remote-dir (FIRECREST_REMOTE_DIR) for its base" },
    Reserved { long: "wrap", short: None, reason: "firecrest-ci writes the batch script; use run (FIRECREST_RUN) or script (FIRECREST_SCRIPT)" },
    Reserved { long: "export", short: None, reason: "firecrest-ci sets the job's environment; use env-vars (FIRECREST_ENV_VARS)" },
    Reserved { long: "export-file", short: None, reason: "firecrest-ci sets the job's environment; use env-vars (FIRECREST_ENV_VARS)" },
    Reserved { long: "dependency", short: Some('d'), reason: "firecrest-ci sets dependencies itself (staged uploads) and a foreign one could keep the job pending forever; order CI jobs instead" },
    Reserved { long: "array", short: Some('a'), reason: "firecrest-ci watches one job, not a job array" },
    Reserved { long: "wait", short: Some('W'), reason: "firecrest-ci waits for the job itself" },
    Reserved { long: "hold", short: Some('H'), reason: "a held job never starts and the run would wait forever" },
    Reserved { long: "parsable", short: None, reason: "firecrest-ci reads sbatch's reply itself" },
    Reserved { long: "test-only", short: None, reason: "the job would never run; use dry-run (FIRECREST_DRY_RUN)" },
    Reserved { long: "open-mode", short: None, reason: "firecrest-ci reads the output file by byte offset and needs it fresh" },
    Reserved { long: "account", short: Some('A'), reason: "use account (FIRECREST_ACCOUNT)" },
    Reserved { long: "partition", short: Some('p'), reason: "use partition (FIRECREST_PARTITION)" },
    Reserved { long: "reservation", short: None, reason: "use reservation (FIRECREST_RESERVATION)" },
    Reserved { long: "constraint", short: Some('C'), reason: "use constraint (FIRECREST_CONSTRAINT)" },
    Reserved { long: "time", short: Some('t'), reason: "use time-limit (FIRECREST_TIME_LIMIT)" },
    Reserved { long: "nodes", short: Some('N'), reason: "use nodes (FIRECREST_NODES)" },
    Reserved { long: "ntasks", short: Some('n'), reason: "use ntasks (FIRECREST_NTASKS)" },
    Reserved { long: "gpus", short: Some('G'), reason: "use gpus (FIRECREST_GPUS)" },
];

/// The reserved option a long name means; sbatch accepts any unambiguous
/// prefix (`--out` is `--output`), so every prefix counts.
pub fn reserved_long(name: &str) -> Option<&'static Reserved> {
    if name.is_empty() {
        return None;
    }
    RESERVED_OPTIONS.iter().find(|r| r.long.starts_with(name))
}

/// The reserved option a short letter means.
pub fn reserved_short(letter: char) -> Option<&'static Reserved> {
    RESERVED_OPTIONS.iter().find(|r| r.short == Some(letter))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn time_limits_in_slurm_and_humantime_formats() {
        let fx = fixture();
        for (value, expected) in [
            ("30", "00:30:00"),
            ("90", "01:30:00"),
            ("5:30", "00:05:30"),
            ("1:30:00", "01:30:00"),
            ("1-12", "1-12:00:00"),
            ("2-03:04", "2-03:04:00"),
            ("1-00:00:01", "1-00:00:01"),
            ("90m", "01:30:00"),
            ("2h", "02:00:00"),
            ("1h 30m", "01:30:00"),
            ("36h", "1-12:00:00"),
            ("90s", "00:01:30"),
            ("2 hours", "02:00:00"),
            ("1.5h", "01:30:00"),
        ] {
            let c = ok(&fx, &[("FIRECREST_TIME_LIMIT", value)]);
            assert_eq!(
                c.resources.time_limit.map(|t| t.to_string()).as_deref(),
                Some(expected),
                "{value}"
            );
        }
        for bad in [
            "0",
            "00:00",
            "1:60",
            "1:00:60",
            "1-24",
            "1-1:60",
            "1:2:3:4",
            "1-",
            "-1",
            "::",
            "2 parsecs",
            "a",
        ] {
            let message = problem(&fx, "FIRECREST_TIME_LIMIT", bad);
            assert!(message.contains("D-HH:MM:SS"), "{bad}: {message}");
        }
    }

    #[test]
    fn nodes_ntasks_and_gpus() {
        let fx = fixture();
        assert_eq!(
            ok(&fx, &[("FIRECREST_NODES", "4")])
                .resources
                .nodes
                .map(|n| n.to_string())
                .as_deref(),
            Some("4")
        );
        assert_eq!(
            ok(&fx, &[("FIRECREST_NODES", "2-8")])
                .resources
                .nodes
                .map(|n| n.to_string())
                .as_deref(),
            Some("2-8")
        );
        for bad in ["0", "-1", "4-2", "a", "1-", "1-2-3", "+3", "1.5"] {
            assert!(
                problem(&fx, "FIRECREST_NODES", bad).contains("MIN-MAX"),
                "{bad}"
            );
        }
        assert_eq!(
            ok(&fx, &[("FIRECREST_NTASKS", "16")]).resources.ntasks,
            Some(16)
        );
        for bad in ["0", "-2", "1e3", "four", "99999999999"] {
            assert!(
                problem(&fx, "FIRECREST_NTASKS", bad).contains("positive whole number"),
                "{bad}"
            );
        }
        assert_eq!(
            ok(&fx, &[("FIRECREST_GPUS", "4")])
                .resources
                .gpus
                .map(|g| g.to_string())
                .as_deref(),
            Some("4")
        );
        assert_eq!(
            ok(&fx, &[("FIRECREST_GPUS", "nvidia_a100:2")])
                .resources
                .gpus
                .map(|g| g.to_string())
                .as_deref(),
            Some("nvidia_a100:2")
        );
        for bad in ["0", "a100", "a100:0", ":2", "a 100:2", "a100:2:3"] {
            assert!(
                problem(&fx, "FIRECREST_GPUS", bad).contains("TYPE:N"),
                "{bad}"
            );
        }
    }

    #[test]
    fn slurm_placement_names() {
        let fx = fixture();
        let c = ok(
            &fx,
            &[
                ("FIRECREST_ACCOUNT", "proj_01"),
                ("FIRECREST_PARTITION", "normal"),
                ("FIRECREST_RESERVATION", "res.1"),
                ("FIRECREST_CONSTRAINT", "mc|gpu"),
            ],
        );
        assert_eq!(c.resources.account.as_deref(), Some("proj_01"));
        assert_eq!(c.resources.constraint.as_deref(), Some("mc|gpu"));
        for (var, bad) in [
            ("FIRECREST_ACCOUNT", "my account"),
            ("FIRECREST_ACCOUNT", "a,b"),
            ("FIRECREST_ACCOUNT", "acc;rm"),
            ("FIRECREST_PARTITION", "normal debug"),
            ("FIRECREST_PARTITION", "$(id)"),
            ("FIRECREST_RESERVATION", "r\tx"),
            ("FIRECREST_CONSTRAINT", "gpu && mc"),
            ("FIRECREST_CONSTRAINT", "gpu;x"),
        ] {
            let message = problem(&fx, var, bad);
            assert!(
                message.contains("Slurm") || message.contains("single line"),
                "{var}={bad}: {message}"
            );
        }
    }

    // ------------------------------------------------ sbatch options

    #[test]
    fn sbatch_options_are_normalized() {
        let fx = fixture();
        let c = ok(
            &fx,
            &[(
                "FIRECREST_SBATCH_OPTIONS",
                "--mem=8G\r\n  --cpus-per-task 4\n\n# why: big build\n-c 4\n-c4\n--exclusive\n-Q\n--ntasks-per-node=2\n--gpus-per-node=1\n--time-min=10\n--wait-all-nodes=1\n-I60\n",
            )],
        );
        assert_eq!(
            c.resources.sbatch_options,
            [
                "--mem=8G",
                "--cpus-per-task=4",
                "-c 4",
                "-c4",
                "--exclusive",
                "-Q",
                "--ntasks-per-node=2",
                "--gpus-per-node=1",
                "--time-min=10",
                "--wait-all-nodes=1",
                "-I60",
            ]
        );
    }

    #[test]
    fn sbatch_options_the_tool_sets_are_refused_with_the_input_to_use() {
        let fx = fixture();
        for (line, hint) in [
            ("--output=x.log", "FIRECREST_LOG_FILE"),
            ("-o x.log", "FIRECREST_LOG_FILE"),
            ("--out=x", "FIRECREST_LOG_FILE"),
            ("--error=x", "FIRECREST_SEPARATE_STDERR"),
            ("-e x", "FIRECREST_SEPARATE_STDERR"),
            ("--job-name=x", "FIRECREST_JOB_NAME"),
            ("-Jx", "FIRECREST_JOB_NAME"),
            ("--chdir=/tmp", "FIRECREST_REMOTE_DIR"),
            ("-D /tmp", "FIRECREST_REMOTE_DIR"),
            ("--wrap=ls", "FIRECREST_RUN"),
            ("--export=ALL", "FIRECREST_ENV_VARS"),
            ("--export-file=f", "FIRECREST_ENV_VARS"),
            ("--dependency=afterok:1", "order CI jobs"),
            ("-d afterok:1", "order CI jobs"),
            ("--array=1-3", "one job"),
            ("--wait", "waits"),
            ("-W", "waits"),
            ("--hold", "never starts"),
            ("--parsable", "reply"),
            ("--test-only", "FIRECREST_DRY_RUN"),
            ("--open-mode=append", "byte offset"),
            ("--account=x", "FIRECREST_ACCOUNT"),
            ("-A x", "FIRECREST_ACCOUNT"),
            ("--partition=x", "FIRECREST_PARTITION"),
            ("-p x", "FIRECREST_PARTITION"),
            ("--reservation=x", "FIRECREST_RESERVATION"),
            ("--constraint=gpu", "FIRECREST_CONSTRAINT"),
            ("-C gpu", "FIRECREST_CONSTRAINT"),
            ("--time=10", "FIRECREST_TIME_LIMIT"),
            ("-t 10", "FIRECREST_TIME_LIMIT"),
            ("--nodes=2", "FIRECREST_NODES"),
            ("-N2", "FIRECREST_NODES"),
            ("--ntasks=2", "FIRECREST_NTASKS"),
            ("-n 2", "FIRECREST_NTASKS"),
            ("--gpus=2", "FIRECREST_GPUS"),
            ("-G 2", "FIRECREST_GPUS"),
        ] {
            let message = problem(&fx, "FIRECREST_SBATCH_OPTIONS", line);
            assert!(
                message.contains("is not accepted here"),
                "{line}: {message}"
            );
            assert!(message.contains(hint), "{line}: {message}");
        }
    }

    #[test]
    fn malformed_sbatch_options_are_refused() {
        let fx = fixture();
        for (line, why) in [
            ("mem=8G", "starting with '-'"),
            ("#SBATCH --mem=8G", "without #SBATCH, e.g. --mem=8G"),
            ("--mem=8G --output=/etc/x", "one option per line"),
            ("--comment=a b", "one option per line"),
            ("--mem 8G extra", "one option per line"),
            ("--comment=\"a\"", "quotes"),
            ("--comment=`id`", "quotes"),
            ("--mem=", "empty value"),
            ("--", "not an sbatch option"),
            ("--Mem=8G", "not an sbatch option"),
            ("-", "not an sbatch option"),
            ("-1", "not an sbatch option"),
            ("-QJfoo", "cannot be combined"),
            ("-vofile", "cannot be combined"),
            ("--mem=8G\u{7}", "control characters"),
        ] {
            let message = problem(&fx, "FIRECREST_SBATCH_OPTIONS", line);
            assert!(message.contains(why), "{line}: {message}");
            assert!(message.starts_with("line 1 "), "{message}");
        }
        // Every bad line is reported, each with its line number.
        let found = problems(
            &fx,
            &[("FIRECREST_SBATCH_OPTIONS", "--mem=8G\n--output=x\nbad\n")],
        );
        let lines: Vec<&str> = found.iter().map(|p| &p.message[..6]).collect();
        assert_eq!(lines, ["line 2", "line 3"]);
    }

    #[test]
    fn long_names_prefixes_and_letters_find_their_option() {
        assert_eq!(reserved_long("output").map(|r| r.long), Some("output"));
        assert_eq!(reserved_long("out").map(|r| r.long), Some("output"));
        assert_eq!(
            reserved_long("export-file").map(|r| r.long),
            Some("export-file")
        );
        assert_eq!(reserved_short('t').map(|r| r.long), Some("time"));
        assert!(reserved_long("mem").is_none());
        assert!(reserved_long("").is_none());
        assert!(reserved_short('c').is_none());
    }

    #[test]
    fn slurm_time_reads_slurm_text_and_gives_a_duration() {
        let secs = |text: &str| SlurmTime::parse_slurm(text).map(|t| t.as_duration());
        assert_eq!(secs("30"), Some(Some(Duration::from_secs(1800))));
        assert_eq!(secs("1:30"), Some(Some(Duration::from_secs(90))));
        assert_eq!(secs("1-00:00:01"), Some(Some(Duration::from_secs(86_401))));
        for unlimited in ["UNLIMITED", "infinite", "0"] {
            assert_eq!(secs(unlimited), Some(None), "{unlimited}");
        }
        assert_eq!(SlurmTime::Unlimited.to_string(), "UNLIMITED");
        for text in ["00:30:00", "1-12:00:00"] {
            let time = SlurmTime::parse_slurm(text).unwrap();
            assert_eq!(time.to_string(), text);
            assert_eq!(SlurmTime::parse_input(text), Ok(time));
        }
        assert!(SlurmTime::parse_input("UNLIMITED").is_err());
    }
}
