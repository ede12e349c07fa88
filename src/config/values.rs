//! Scalar values: the typed parsers (duration, size, bool, URL, words,
//! paths, globs) and the collector that turns their failures into problems.

use std::fmt;
use std::path::{Component, Path};
use std::time::Duration;

use super::inputs::{input_order, InputSpec, Inputs};
use super::{ArtifactsWhen, BackendKind, Cleanup, TransferThreshold};

/// One thing wrong with the inputs; the caller prints every one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The variables the value was read from, so the user knows what to fix.
    pub variables: Vec<&'static str>,
    /// What is wrong and what a valid value looks like.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.variables.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.variables.join(", "), self.message)
        }
    }
}

/// Every configuration problem at once; `main` exits 78 (EX_CONFIG) on it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", one_line_each(.problems))]
pub struct ConfigErrors {
    /// In the order of [`INPUTS`](super::INPUTS) (lines of one input in their order); never empty.
    pub problems: Vec<ConfigProblem>,
}

fn one_line_each(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Collects problems so that all of them are reported in one go.
#[derive(Default)]
pub(super) struct Problems(Vec<ConfigProblem>);

impl Problems {
    /// Every problem, in the order of the input table; `Ok` when there are none.
    pub(super) fn into_result(self) -> Result<(), ConfigErrors> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut problems = self.0;
        problems.sort_by_key(|problem| problem.variables.first().map(|var| input_order(var)));
        Err(ConfigErrors { problems })
    }

    /// Checks and parses the input `spec` (see [`Problems::parse`]).
    pub(super) fn input<T>(
        &mut self,
        raw: &Inputs,
        spec: &InputSpec,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        self.parse(spec.env, raw.get(spec), parse)
    }

    pub(super) fn add(&mut self, variables: &[&'static str], message: impl Into<String>) {
        self.0.push(ConfigProblem {
            variables: variables.to_vec(),
            message: message.into(),
        });
    }

    /// Checks a one-line value and parses it; a failure becomes a problem
    /// that shows the value (never use this for secrets).
    pub(super) fn parse<T>(
        &mut self,
        var: &'static str,
        raw: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let value = self.one_line(var, raw)?;
        match parse(value) {
            Ok(parsed) => Some(parsed),
            Err(expected) => {
                self.add(&[var], format!("{expected}; got {}", shown(value)));
                None
            }
        }
    }

    /// Trims a one-line value; control characters (a newline could add lines
    /// to the batch script) are a problem.
    pub(super) fn one_line<'a>(
        &mut self,
        var: &'static str,
        raw: Option<&'a str>,
    ) -> Option<&'a str> {
        let value = raw?.trim();
        if value.chars().any(char::is_control) {
            self.add(
                &[var],
                "must be a single line without control characters (a newline here could add lines to the batch script)",
            );
            return None;
        }
        Some(value)
    }
}

/// A value as it may appear in a message: quoted, escaped, shortened.
pub(super) fn shown(value: &str) -> String {
    const MAX: usize = 60;
    if value.chars().count() > MAX {
        let short: String = value.chars().take(MAX).collect();
        format!("{:?}...", short)
    } else {
        format!("{value:?}")
    }
}
pub(super) fn parse_http_url(value: &str) -> Result<String, String> {
    const EXPECTED: &str =
        "must be an http:// or https:// URL, e.g. https://api.example.org/firecrest/v2";
    let url = url::Url::parse(value).map_err(|err| format!("{EXPECTED} ({err})"))?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err(EXPECTED.to_string());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{EXPECTED}, without a user name or password in it"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{EXPECTED}, without ?query or #fragment"));
    }
    Ok(value.to_string())
}

pub(super) fn parse_system(value: &str) -> Result<String, String> {
    if is_name(value, "") {
        Ok(value.to_string())
    } else {
        Err("must be a cluster name of letters, digits, '.', '_' and '-', e.g. daint".to_string())
    }
}

/// True when `value` is non-empty and only ASCII letters, digits, `._-` and
/// the `extra` characters.
pub(super) fn is_name(value: &str, extra: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c) || extra.contains(c))
}

pub(super) fn parse_positive(value: &str) -> Option<u32> {
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u32>().ok().filter(|n| *n > 0)
}

pub(super) fn parse_job_name(value: &str) -> Result<String, String> {
    if value.len() <= 128 && is_name(value, "") {
        Ok(value.to_string())
    } else {
        Err("must be 1 to 128 letters, digits, '.', '_' or '-', e.g. nightly-tests".to_string())
    }
}

/// A relative path without `..`, `/`-joined, `./` dropped.
pub(super) fn relative_path(value: &str) -> Result<String, String> {
    const EXPECTED: &str =
        "must be a path relative to the workspace, without '..', e.g. ci/test.sh";
    let mut parts = Vec::new();
    for component in Path::new(value).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str().ok_or(EXPECTED)?),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(EXPECTED.to_string())
            }
        }
    }
    if parts.is_empty() {
        return Err(EXPECTED.to_string());
    }
    Ok(parts.join("/"))
}

/// Lines of globs; `#` lines and blank lines dropped. `relative` also refuses
/// absolute paths (artifacts come from inside the job's workspace).
pub(super) fn globs(
    p: &mut Problems,
    var: &'static str,
    raw: Option<&str>,
    relative: bool,
) -> Vec<String> {
    let Some(text) = raw else {
        return Vec::new();
    };
    let mut globs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_glob(line, relative) {
            Ok(glob) => globs.push(glob),
            Err(why) => p.add(&[var], format!("{} {why}", shown(line))),
        }
    }
    globs
}

fn parse_glob(line: &str, relative: bool) -> Result<String, String> {
    if line.chars().any(char::is_control) {
        return Err("contains control characters; write one glob per line".to_string());
    }
    if relative && line.starts_with('/') {
        return Err(
            "is absolute; write a path relative to the workspace, e.g. build/*.log".to_string(),
        );
    }
    if line.split('/').any(|part| part == "..") {
        return Err(
            "contains '..'; write a path inside the workspace, e.g. build/*.log".to_string(),
        );
    }
    let glob = if relative {
        line.trim_start_matches("./")
    } else {
        line
    };
    globset::Glob::new(glob)
        .map_err(|err| format!("is not a valid glob ({}); e.g. build/**/*.xml", err.kind()))?;
    Ok(glob.to_string())
}

pub(super) fn parse_remote_dir(value: &str) -> Result<String, String> {
    const EXPECTED: &str = "must be an absolute path on the cluster, e.g. /scratch/project/ci";
    if !value.starts_with('/') {
        return Err(EXPECTED.to_string());
    }
    if value.contains(['\'', '"', '&', '<', '>']) {
        return Err(format!(
            "{EXPECTED}, without the characters ' \" & < > (FirecREST's job templates mangle them)"
        ));
    }
    if value.split('/').any(|part| part == "..") {
        return Err(format!("{EXPECTED}, without '..'"));
    }
    let trimmed = value.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/" } else { trimmed }.to_string())
}
pub(super) fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err("must be true or false (yes/no and 1/0 work too)".to_string()),
    }
}

/// One of a fixed set of words, case-insensitive, `_` read as `-`.
fn parse_word<T: Copy>(value: &str, words: &[(&str, T)]) -> Result<T, String> {
    let wanted = value.to_ascii_lowercase().replace('_', "-");
    words
        .iter()
        .find(|(word, _)| *word == wanted)
        .map(|(_, parsed)| *parsed)
        .ok_or_else(|| {
            let names: Vec<&str> = words.iter().map(|(word, _)| *word).collect();
            format!("must be one of {}", names.join(", "))
        })
}

pub(super) fn parse_backend(value: &str) -> Result<BackendKind, String> {
    parse_word(
        value,
        &[
            ("firecrest", BackendKind::Firecrest),
            ("slurm", BackendKind::Slurm),
            ("local", BackendKind::Local),
        ],
    )
}

pub(super) fn parse_cleanup(value: &str) -> Result<Cleanup, String> {
    parse_word(
        value,
        &[
            ("always", Cleanup::Always),
            ("on-success", Cleanup::OnSuccess),
            ("never", Cleanup::Never),
        ],
    )
}

pub(super) fn parse_artifacts_when(value: &str) -> Result<ArtifactsWhen, String> {
    parse_word(
        value,
        &[
            ("on-success", ArtifactsWhen::OnSuccess),
            ("on-failure", ArtifactsWhen::OnFailure),
            ("always", ArtifactsWhen::Always),
        ],
    )
}

pub(super) fn parse_log_level(value: &str) -> Result<String, String> {
    parse_word(
        value,
        &[
            ("error", "error"),
            ("warn", "warn"),
            ("info", "info"),
            ("debug", "debug"),
            ("trace", "trace"),
        ],
    )
    .map(str::to_string)
}

/// Plain seconds (`30`) or humantime (`90s`, `5m`, `2h 30m`), above zero.
pub(super) fn parse_duration(value: &str) -> Result<Duration, String> {
    let duration = if value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse::<u64>().ok().map(Duration::from_secs)
    } else {
        humantime::parse_duration(value).ok()
    };
    duration.filter(|d| !d.is_zero()).ok_or_else(|| {
        "must be a duration above zero, e.g. 30s, 5m, 2h or a number of seconds".to_string()
    })
}

/// `auto`, `always-s3`, `never`, or a size (see [`parse_size`]).
pub(super) fn parse_transfer_threshold(value: &str) -> Result<TransferThreshold, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(TransferThreshold::Auto),
        "always-s3" => Ok(TransferThreshold::AlwaysS3),
        "never" => Ok(TransferThreshold::Never),
        _ => parse_size(value)
            .map(TransferThreshold::Above)
            .map_err(|err| format!("must be auto, always-s3, never, or a size: {err}")),
    }
}

/// Bytes with an optional unit: B, KB/MB/GB/TB (powers of 1000) or
/// KiB/MiB/GiB/TiB (powers of 1024), case-insensitive.
pub(super) fn parse_size(value: &str) -> Result<u64, String> {
    const EXPECTED: &str = "must be a size in bytes with an optional unit B, KB, MB, GB, TB, KiB, MiB, GiB or TiB, e.g. 256MiB";
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().map_err(|_| EXPECTED.to_string())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(EXPECTED.to_string()),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| EXPECTED.to_string())
}

pub(super) const DEFAULT_COMPRESSION_LEVEL: u32 = crate::workspace::DEFAULT_LEVEL;

pub(super) fn parse_retries(value: &str) -> Result<u32, String> {
    value
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| *n <= 10)
        .ok_or_else(|| "must be a number of resubmissions from 0 to 10".to_string())
}

pub(super) fn parse_compression_level(value: &str) -> Result<u32, String> {
    parse_positive(value)
        .filter(|level| (1..=9).contains(level))
        .ok_or_else(|| "must be a gzip level from 1 (fast) to 9 (small)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    // ------------------------------------------------ scalars

    #[test]
    fn booleans() {
        let fx = fixture();
        for (value, expected) in [
            ("true", true),
            ("TRUE", true),
            ("Yes", true),
            ("1", true),
            ("false", false),
            ("No", false),
            ("0", false),
            (" FALSE ", false),
        ] {
            assert_eq!(
                ok(&fx, &[("FIRECREST_INCLUDE_GIT", value)]).include_git,
                expected
            );
            assert_eq!(
                ok(&fx, &[("FIRECREST_GITIGNORE", value)]).gitignore,
                expected
            );
            assert_eq!(
                ok(&fx, &[("FIRECREST_SEPARATE_STDERR", value)]).separate_stderr,
                expected
            );
            assert_eq!(ok(&fx, &[("FIRECREST_DRY_RUN", value)]).dry_run, expected);
        }
        for bad in ["y", "on", "2", "truthy"] {
            for var in [
                "FIRECREST_GITIGNORE",
                "FIRECREST_INCLUDE_GIT",
                "FIRECREST_SEPARATE_STDERR",
                "FIRECREST_DRY_RUN",
            ] {
                let message = problem(&fx, var, bad);
                assert!(message.contains("true or false"), "{message}");
                assert!(
                    message.contains(&format!("{bad:?}")),
                    "shows the value: {message}"
                );
            }
        }
    }

    #[test]
    fn durations() {
        let fx = fixture();
        let vars = [
            "FIRECREST_TIMEOUT",
            "FIRECREST_POLL_INTERVAL",
            "FIRECREST_LOG_INTERVAL",
            "FIRECREST_SUBMIT_GRACE",
            "FIRECREST_REQUEST_TIMEOUT",
        ];
        for (value, expected) in [
            ("45", 45_000),
            ("45s", 45_000),
            ("2m", 120_000),
            ("1h 30m", 5_400_000),
            ("250ms", 250),
        ] {
            let c = ok(&fx, &vars.map(|var| (var, value)));
            let expected = Duration::from_millis(expected);
            assert_eq!(c.timeout, Some(expected));
            assert_eq!(c.poll.state_interval, expected);
            assert_eq!(c.poll.log_interval, expected);
            assert_eq!(c.poll.submit_grace, expected);
            assert_eq!(c.poll.request_timeout, expected);
        }
        for var in vars {
            for bad in ["0", "0s", "-5", "soon", "5 parsecs", "1.5"] {
                assert!(
                    problem(&fx, var, bad).contains("duration above zero"),
                    "{var}={bad}"
                );
            }
        }
    }

    #[test]
    fn a_long_log_interval_raises_the_backoff_ceiling() {
        let fx = fixture();
        let c = ok(&fx, &[("FIRECREST_LOG_INTERVAL", "30s")]);
        assert_eq!(c.poll.log_max_interval, Duration::from_secs(30));
    }

    #[test]
    fn transfer_threshold_sizes() {
        let fx = fixture();
        for (value, expected) in [
            ("0", 0),
            ("1024", 1024),
            ("10B", 10),
            ("5KB", 5_000),
            ("5kb", 5_000),
            ("2MB", 2_000_000),
            ("3GB", 3_000_000_000),
            ("1TB", 1_000_000_000_000),
            ("5KiB", 5 * 1024),
            ("256MiB", 256 << 20),
            ("2 GiB", 2 << 30),
            ("1TiB", 1 << 40),
        ] {
            assert_eq!(
                ok(&fx, &[("FIRECREST_TRANSFER_THRESHOLD", value)]).transfer_threshold,
                TransferThreshold::Above(expected),
                "{value}"
            );
        }
        for (value, expected) in [
            ("auto", TransferThreshold::Auto),
            ("Always-S3", TransferThreshold::AlwaysS3),
            ("never", TransferThreshold::Never),
        ] {
            assert_eq!(
                ok(&fx, &[("FIRECREST_TRANSFER_THRESHOLD", value)]).transfer_threshold,
                expected,
                "{value}"
            );
        }
        for bad in [
            "lots",
            "5 XB",
            "-1",
            "1.5GB",
            "MiB",
            "99999999999TiB",
            "5K",
            "s3",
        ] {
            let message = problem(&fx, "FIRECREST_TRANSFER_THRESHOLD", bad);
            assert!(
                message.contains("256MiB") && message.contains("always-s3"),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn compression_levels() {
        let fx = fixture();
        for level in 1..=9u32 {
            let c = ok(&fx, &[("FIRECREST_COMPRESSION_LEVEL", &level.to_string())]);
            assert_eq!(c.compression_level, level);
        }
        for bad in ["0", "10", "fast", "-1"] {
            assert!(problem(&fx, "FIRECREST_COMPRESSION_LEVEL", bad).contains("1 (fast) to 9"));
        }
    }

    #[test]
    fn words_for_backend_cleanup_artifacts_when_and_log_level() {
        let fx = fixture();
        assert_eq!(
            ok(&fx, &[("FIRECREST_BACKEND", "Slurm")]).backend,
            BackendKind::Slurm
        );
        assert_eq!(
            ok(&fx, &[("FIRECREST_BACKEND", "local")]).backend,
            BackendKind::Local
        );
        assert_eq!(
            ok(&fx, &[("FIRECREST_CLEANUP", "never")]).cleanup,
            Cleanup::Never
        );
        assert_eq!(
            ok(&fx, &[("FIRECREST_CLEANUP", "ON_SUCCESS")]).cleanup,
            Cleanup::OnSuccess
        );
        assert_eq!(
            ok(&fx, &[("FIRECREST_ARTIFACTS_WHEN", "on-success")]).artifacts_when,
            ArtifactsWhen::OnSuccess
        );
        for level in ["error", "warn", "info", "debug", "trace"] {
            let c = ok(&fx, &[("FIRECREST_LOG_LEVEL", &level.to_uppercase())]);
            assert_eq!(c.log_level, level);
        }
        for (var, bad, listed) in [
            ("FIRECREST_BACKEND", "ssh", "firecrest, slurm, local"),
            (
                "FIRECREST_CLEANUP",
                "sometimes",
                "always, on-success, never",
            ),
            (
                "FIRECREST_ARTIFACTS_WHEN",
                "never",
                "on-success, on-failure, always",
            ),
            (
                "FIRECREST_LOG_LEVEL",
                "verbose",
                "error, warn, info, debug, trace",
            ),
        ] {
            assert!(problem(&fx, var, bad).contains(listed), "{var}");
        }
    }

    // ------------------------------------------------ globs and paths

    #[test]
    fn artifacts_must_stay_inside_the_workspace() {
        let fx = fixture();
        let c = ok(
            &fx,
            &[(
                "FIRECREST_ARTIFACTS",
                "./out/*.xml\n\n# junit\nbuild/**/report-?.html",
            )],
        );
        assert_eq!(c.artifacts, ["out/*.xml", "build/**/report-?.html"]);
        for (bad, why) in [
            ("/etc/passwd", "is absolute"),
            ("../secrets", "contains '..'"),
            ("out/../../x", "contains '..'"),
            ("out/[a.xml", "not a valid glob"),
        ] {
            assert!(
                problem(&fx, "FIRECREST_ARTIFACTS", bad).contains(why),
                "{bad}"
            );
        }
    }

    #[test]
    fn include_and_exclude_globs_are_checked() {
        let fx = fixture();
        for var in ["FIRECREST_INCLUDE", "FIRECREST_EXCLUDE"] {
            assert!(
                problem(&fx, var, "src/{a,b").contains("not a valid glob"),
                "{var}"
            );
            assert!(problem(&fx, var, "../up").contains("'..'"), "{var}");
            let lines = ok(&fx, &[(var, "/target\n# comment\n*.o\n")]);
            let globs = if var == "FIRECREST_INCLUDE" {
                lines.include
            } else {
                lines.exclude
            };
            assert_eq!(globs, ["/target", "*.o"]);
        }
    }

    #[test]
    fn remote_dir_is_absolute_and_template_safe() {
        let fx = fixture();
        let dir = |v| ok(&fx, &[("FIRECREST_REMOTE_DIR", v)]).remote_dir;
        assert_eq!(dir("/scratch/u/ci").as_deref(), Some("/scratch/u/ci"));
        assert_eq!(dir("/scratch/u/ci///").as_deref(), Some("/scratch/u/ci"));
        assert_eq!(dir("/").as_deref(), Some("/"));
        for (bad, why) in [
            ("scratch/ci", "absolute path"),
            ("~/ci", "absolute path"),
            ("/scratch/it's", "' \" & < >"),
            ("/scratch/\"x\"", "' \" & < >"),
            ("/scratch/a&b", "' \" & < >"),
            ("/scratch/<x>", "' \" & < >"),
            ("/scratch/../etc", "without '..'"),
        ] {
            assert!(
                problem(&fx, "FIRECREST_REMOTE_DIR", bad).contains(why),
                "{bad}"
            );
        }
    }
}
