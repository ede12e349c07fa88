//! The batch script, rendered from a [`ScriptSpec`], and the file of
//! forwarded variables it sources. Everything the user typed passes through
//! here on its way into a shell or into `sbatch`, so this module owns the
//! quoting: no input can add a line to the script or a command to run, even
//! when the configuration layer let it through.
//!
//! A rendered script is `#!/bin/bash -l`, the `#SBATCH` lines, one
//! single-quoted shell variable per value, and then the fixed body in
//! `batch.sh` beside this file: a prologue that enters the run directory,
//! loads and deletes the forwarded variables and reassembles, verifies and
//! extracts the workspace archive (exit [`codes::WORKSPACE_INVALID`] when that
//! fails); the user's commands, run in the background in a process group of
//! their own so that the signal Slurm sends at the time limit or on `scancel`
//! is handled at once and passed on to them; and an epilogue (an `EXIT` trap)
//! that packs the artifacts whatever the outcome. The job's exit status is
//! the commands' status. The body is one readable shell file, checked by
//! `shellcheck` in CI.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{bail, ensure, Context, Result};

use crate::config::slurm::{self, Gpus, Nodes, SlurmTime};
use crate::outcome::codes;
use crate::secret::Secret;

/// The extracted workspace inside the run directory; the commands run there.
pub const WORKSPACE_DIR: &str = "workspace";

/// The archive reassembled from several parts, inside the run directory.
const REASSEMBLED_ARCHIVE: &str = "firecrest-ci-workspace.tar.gz";
/// Written once extraction succeeded, so a requeued job reuses the workspace.
const EXTRACTED_MARKER: &str = ".firecrest-ci-extracted";
/// Inline commands are written here and sourced, so that their text can
/// never break the script's structure.
const COMMANDS_FILE: &str = "firecrest-ci-commands.sh";
/// The fixed part of every batch script.
const BODY: &str = include_str!("batch.sh");

/// After the time limit's or a cancel's signal, the commands get this long
/// to exit before the script SIGKILLs them, so that the epilogue still runs
/// well within Slurm's KillWait (30 s by default) and within the 7.5 s that
/// GitHub leaves the tool after cancelling.
pub const COMMANDS_GRACE_SECS: u32 = 5;

/// The script prints this line once the user's commands ended, with their
/// status, so the watcher reads the job state at once.
pub const COMMANDS_ENDED_MARKER: &[u8] = b"firecrest-ci: commands exited with status";
/// The script's very last line: the epilogue is done and the output file is
/// complete.
pub const SCRIPT_END_MARKER: &[u8] = b"firecrest-ci: end of the batch script";
/// Prefix of the script's own shell variables and functions; forwarded
/// variables may not use it.
const INTERNAL_PREFIX: &str = "_fci_";

/// What the job runs in the workspace: the configuration's type, so the
/// input and the script cannot disagree.
pub use crate::config::UserCommand as Command;

/// Everything the batch script needs. Account, partition and reservation
/// are absent on purpose: they go through the submit request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptSpec {
    pub job_name: String,
    /// Absolute remote run directory (mode 0700); the prologue enters it.
    pub run_dir: String,
    /// Absolute path of the job's output file (stdout, and stderr unless
    /// `error_file` is set).
    pub output_file: String,
    /// Absolute path for stderr; `None` merges stderr into `output_file`.
    pub error_file: Option<String>,
    /// Rendered in Slurm's format (`01:30:00`, `1-12:00:00`); `None`: the partition's default.
    pub time_limit: Option<SlurmTime>,
    /// `N` or `MIN-MAX`; `None`: Slurm's default.
    pub nodes: Option<Nodes>,
    pub ntasks: Option<u32>,
    /// `N` or `TYPE:N`.
    pub gpus: Option<Gpus>,
    pub constraint: Option<String>,
    /// More `sbatch` options, one per entry, e.g. `--mem=8G`.
    pub extra_options: Vec<String>,
    /// File names in `run_dir`, in order; `cat` them to get the archive.
    pub archive_parts: Vec<String>,
    /// Lower-case hex SHA-256 of the whole archive, computed before upload.
    pub archive_sha256: String,
    /// File name in `run_dir` written by [`render_env_file`]; `None` when
    /// no variable is forwarded.
    pub env_file: Option<String>,
    pub command: Command,
    /// Globs relative to the workspace; empty: no artifacts.
    pub artifacts: Vec<String>,
    /// Absolute path of the artifacts archive the epilogue writes.
    pub artifacts_archive: String,
    /// When set, an artifacts archive larger than this is also split into
    /// `<archive>.part-00000`, ... of this size, for a server that can only
    /// hand back small files.
    pub artifacts_part_size: Option<u64>,
    /// 1 for the first submission; a retry after the cluster lost the job
    /// gets a fresh workspace (and files) of its own in the same run
    /// directory, from the archive the first one kept.
    pub attempt: u32,
    /// Keep the workspace archive after extracting it, for a later attempt.
    pub keep_archive: bool,
    /// Set when the job is submitted while the last parts still go up.
    pub upload_wait: Option<UploadWait>,
}

/// The job was submitted while the last parts of the workspace went up, so
/// that Slurm's start-up overlaps them: its prologue waits for `file` in the
/// run directory, which the tool writes (holding the archive's SHA-256) once
/// every part is up, and never reads a part still in transit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadWait {
    pub file: String,
    /// After this long from the job's start without the file, the job fails
    /// (exit [`codes::WORKSPACE_INVALID`]) instead of holding its node.
    pub within: std::time::Duration,
}

/// How long a job submitted ahead waits for its last parts: the tool
/// cancels it at once when the upload fails, so this bounds only a tool
/// killed without a chance to (`SIGKILL`), and leaves room for an upload's
/// retries on a struggling server.
pub const UPLOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// The name of a run-directory file or directory for `attempt`: the first
/// attempt's names as they are, a later one's with `-N` before the first
/// dot (`job.out` -> `job-2.out`, `workspace` -> `workspace-2`).
pub fn attempt_name(name: &str, attempt: u32) -> String {
    if attempt <= 1 {
        return name.to_string();
    }
    // A leading dot (a hidden file) is not an extension.
    let start = usize::from(name.starts_with('.'));
    match name[start..].find('.') {
        Some(at) => format!("{}-{attempt}{}", &name[..start + at], &name[start + at..]),
        None => format!("{name}-{attempt}"),
    }
}

/// Renders the batch script, or says which value it refuses.
pub fn render(spec: &ScriptSpec) -> Result<String> {
    let mut s = String::from("#!/bin/bash -l\n");
    sbatch_lines(spec, &mut s)?;

    let run_dir = abs_path("run directory", &spec.run_dir)?;
    abs_path("artifacts archive path", &spec.artifacts_archive)?;
    ensure!(
        !spec.archive_parts.is_empty(),
        "the workspace archive has no parts"
    );
    for part in &spec.archive_parts {
        file_name("workspace archive part", part)?;
        ensure!(
            spec.archive_parts.len() == 1 || part != REASSEMBLED_ARCHIVE,
            "workspace archive part {part:?} has the name of the reassembled archive"
        );
    }
    let sha = spec.archive_sha256.to_ascii_lowercase();
    ensure!(
        sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
        "the workspace archive checksum {:?} is not a hex SHA-256",
        spec.archive_sha256
    );
    if let Some(env) = &spec.env_file {
        file_name("forwarded-variables file", env)?;
        ensure!(
            !spec.archive_parts.contains(env),
            "the forwarded-variables file {env:?} has the name of an archive part"
        );
    }
    let artifacts = spec
        .artifacts
        .iter()
        .map(|a| rel_path("artifact pattern", a).map(|_| sh_quote(a)))
        .collect::<Result<Vec<_>>>()?;
    let archive = if spec.archive_parts.len() == 1 {
        spec.archive_parts[0].as_str()
    } else {
        REASSEMBLED_ARCHIVE
    };

    // Values, each single-quoted: nothing in them is ever expanded.
    s.push_str("\n# firecrest-ci: the values for the script below.\n");
    let mut value = |name: &str, text: &str| {
        let _ = writeln!(s, "{INTERNAL_PREFIX}{name}={text}");
    };
    value("run_dir", &sh_quote(run_dir));
    value("archive", &sh_quote(archive));
    value("parts", &sh_array(&spec.archive_parts));
    value("sha256", &sh_quote(&sha));
    value(
        "env_file",
        &sh_quote(spec.env_file.as_deref().unwrap_or_default()),
    );
    value("artifacts", &format!("({})", artifacts.join(" ")));
    value("artifacts_archive", &sh_quote(&spec.artifacts_archive));
    value(
        "artifacts_part_size",
        &spec
            .artifacts_part_size
            .map_or(String::new(), |n| n.to_string()),
    );
    let named = |name: &str| attempt_name(name, spec.attempt);
    value("workspace", &sh_quote(&named(WORKSPACE_DIR)));
    value("marker", &sh_quote(&named(EXTRACTED_MARKER)));
    value("keep_archive", if spec.keep_archive { "1" } else { "0" });
    match &spec.upload_wait {
        Some(wait) => {
            file_name("upload-ready file", &wait.file)?;
            ensure!(
                !spec.archive_parts.contains(&wait.file),
                "the upload-ready file {:?} has the name of an archive part",
                wait.file
            );
            value("ready_file", &sh_quote(&wait.file));
            value("ready_within", &wait.within.as_secs().max(1).to_string());
        }
        None => {
            value("ready_file", "''");
            value("ready_within", "0");
        }
    }
    value("invalid", &codes::WORKSPACE_INVALID.to_string());
    value("kill_after", &COMMANDS_GRACE_SECS.to_string());
    value(
        "output_file",
        &sh_quote(&format!(
            "{run_dir}/{}",
            named(crate::handback::OUTPUT_FILE)
        )),
    );
    value(
        "summary_file",
        &sh_quote(&format!(
            "{run_dir}/{}",
            named(crate::handback::SUMMARY_FILE)
        )),
    );
    match &spec.command {
        Command::Inline(commands) => {
            ensure!(
                !commands.contains('\0'),
                "the commands contain a NUL character"
            );
            let mut body = commands.clone();
            if !body.ends_with('\n') {
                body.push('\n');
            }
            let delimiter = heredoc_delimiter(&body);
            value("mode", "inline");
            value(
                "commands",
                &sh_quote(&format!("{run_dir}/{}", named(COMMANDS_FILE))),
            );
            value("script", "''");
            let _ = write!(
                s,
                "_fci_write_commands() {{\ncat <<'{delimiter}'\n{body}{delimiter}\n}}\n"
            );
        }
        Command::ScriptFile(path) => {
            rel_path("script file", path)?;
            value("mode", "script");
            value("commands", "''");
            value("script", &sh_quote(path));
        }
    }
    s.push('\n');
    s.push_str(BODY);
    Ok(s)
}

/// The forwarded variables as `export NAME='value'` lines, exact for any
/// value (commas, quotes, newlines, `$`, backslashes). Upload it into the
/// 0700 run directory: the script sources and deletes it before anything
/// else runs, so values never appear in the script text or the job log.
/// Names that are not shell identifiers, or that use the script's internal
/// prefix, are left out with a warning (the configuration refuses them first).
pub fn render_env_file(env: &BTreeMap<String, Secret>) -> String {
    let mut out = String::from("# firecrest-ci: forwarded variables; the job deletes this file\n");
    for (name, value) in env {
        if !is_identifier(name) || name.starts_with(INTERNAL_PREFIX) {
            tracing::warn!("not forwarding {name:?}: not a usable variable name");
            continue;
        }
        let _ = writeln!(out, "export {name}={}", sh_quote(value.expose()));
    }
    out
}

/// Splits one extra `sbatch` option line into words (shell-like quoting, as
/// `sbatch` reads `#SBATCH` lines) and refuses options the tool sets itself
/// or that would stop it from following the job.
pub fn validate_sbatch_option(line: &str) -> Result<Vec<String>> {
    no_control("sbatch option", line)?;
    let words = shlex::split(line)
        .with_context(|| format!("failed to parse sbatch option {line:?}: unbalanced quotes"))?;
    let first = words
        .first()
        .with_context(|| format!("sbatch option {line:?} is empty"))?;
    ensure!(
        first.starts_with('-'),
        "sbatch option {line:?} does not start with '-'"
    );
    for word in &words {
        if let Some(why) = reserved_option(word) {
            bail!("sbatch option {line:?} is not allowed: {why}");
        }
        no_separator("sbatch option", word)?;
    }
    Ok(words)
}

/// Why `word` may not be passed to sbatch: the one table of reserved
/// options (`crate::config::slurm`), which input parsing reads too.
fn reserved_option(word: &str) -> Option<&'static str> {
    let reserved = match word.strip_prefix("--") {
        Some(long) => slurm::reserved_long(long.split('=').next().unwrap_or("")),
        None => slurm::reserved_short(word.strip_prefix('-')?.chars().next()?),
    };
    reserved.map(|r| r.reason)
}

fn sbatch_lines(spec: &ScriptSpec, s: &mut String) -> Result<()> {
    let mut line = |option: &str, value: &str| {
        let _ = writeln!(s, "#SBATCH --{option}={}", sbatch_word(value));
    };
    ensure!(!spec.job_name.trim().is_empty(), "the job name is empty");
    no_control("job name", &spec.job_name)?;
    no_separator("job name", &spec.job_name)?;
    line("job-name", &spec.job_name);

    // `%` starts a Slurm file-name pattern (`%j`); `%%` is a literal `%`.
    let output = abs_path("output file", &spec.output_file)?;
    no_separator("output file", output)?;
    line("output", &output.replace('%', "%%"));
    if let Some(error) = &spec.error_file {
        abs_path("error file", error)?;
        no_separator("error file", error)?;
        line("error", &error.replace('%', "%%"));
    }
    // A requeued job appends instead of truncating, so the log keeps
    // growing and the client's read offset stays valid.
    line("open-mode", "append");
    if let Some(time) = &spec.time_limit {
        line("time", &time.to_string());
    }
    if let Some(nodes) = &spec.nodes {
        line("nodes", &nodes.to_string());
    }
    if let Some(ntasks) = spec.ntasks {
        ensure!(ntasks > 0, "ntasks must be at least 1");
        line("ntasks", &ntasks.to_string());
    }
    if let Some(gpus) = &spec.gpus {
        line("gpus", &gpus.to_string());
    }
    if let Some(constraint) = &spec.constraint {
        ensure!(!constraint.trim().is_empty(), "the constraint is empty");
        no_control("constraint", constraint)?;
        no_separator("constraint", constraint)?;
        line("constraint", constraint);
    }
    for option in &spec.extra_options {
        let words = validate_sbatch_option(option)?;
        let words: Vec<String> = words.iter().map(|w| sbatch_option_word(w)).collect();
        let _ = writeln!(s, "#SBATCH {}", words.join(" "));
    }
    Ok(())
}

/// One word of a `#SBATCH` line. `sbatch` splits on blanks, honours quotes
/// and backslashes, and treats an unquoted `#` as a comment: quote when any
/// of them appears. Double quotes, because old `sbatch` knows no others.
fn sbatch_word(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | '#'));
    if plain {
        value.to_string()
    } else {
        format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// Like [`sbatch_word`], but keeps `--name=` outside the quotes for readability.
fn sbatch_option_word(word: &str) -> String {
    match word.split_once('=') {
        Some((name, value)) if name.starts_with('-') && sbatch_word(name) == name => {
            format!("{name}={}", sbatch_word(value))
        }
        _ => sbatch_word(word),
    }
}

/// Quotes for bash: single quotes, with `'` written as `'\''`. Exact for
/// every string without NUL; nothing inside is expanded.
fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// A bash array of quoted words.
fn sh_array(words: &[String]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| sh_quote(w)).collect();
    format!("({})", quoted.join(" "))
}

/// A here-document delimiter that is no line of `body`.
fn heredoc_delimiter(body: &str) -> String {
    let base = "FIRECREST_CI_END_OF_COMMANDS";
    let mut delimiter = base.to_string();
    let mut n = 0;
    while body.lines().any(|l| l == delimiter) {
        n += 1;
        delimiter = format!("{base}_{n}");
    }
    delimiter
}

fn no_control(what: &str, value: &str) -> Result<()> {
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        bail!("{what} {value:?} contains the control character {c:?}");
    }
    Ok(())
}

/// `sbatch` blanks out the words `hetjob` and `packjob` anywhere in a
/// `#SBATCH` line (they separate heterogeneous job components).
fn no_separator(what: &str, value: &str) -> Result<()> {
    let lower = value.to_ascii_lowercase();
    ensure!(
        !lower.contains("hetjob") && !lower.contains("packjob"),
        "{what} {value:?} contains \"hetjob\" or \"packjob\", which sbatch reads as a job separator"
    );
    Ok(())
}

fn abs_path<'a>(what: &str, path: &'a str) -> Result<&'a str> {
    no_control(what, path)?;
    ensure!(path.starts_with('/'), "{what} {path:?} is not absolute");
    ensure!(!path.contains('\\'), "{what} {path:?} contains a backslash");
    Ok(path)
}

/// A path inside the workspace: relative, without `..`.
fn rel_path<'a>(what: &str, path: &'a str) -> Result<&'a str> {
    ensure!(!path.trim().is_empty(), "{what} is empty");
    no_control(what, path)?;
    ensure!(
        !path.starts_with('/'),
        "{what} {path:?} must be relative to the workspace"
    );
    ensure!(
        !path.split('/').any(|c| c == ".."),
        "{what} {path:?} must not leave the workspace (..)"
    );
    Ok(path)
}

/// A plain file name in the run directory.
fn file_name<'a>(what: &str, name: &'a str) -> Result<&'a str> {
    no_control(what, name)?;
    ensure!(
        !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\']),
        "{what} {name:?} is not a plain file name"
    );
    ensure!(
        ![EXTRACTED_MARKER, COMMANDS_FILE, WORKSPACE_DIR].contains(&name),
        "{what} {name:?} has a name the job script uses itself"
    );
    Ok(name)
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::path::{Path, PathBuf};
    use std::process::{Command as Process, Output, Stdio};
    use std::time::{Duration, Instant};

    fn spec(run_dir: &str) -> ScriptSpec {
        ScriptSpec {
            job_name: "ci-42".into(),
            run_dir: run_dir.into(),
            output_file: format!("{run_dir}/job.out"),
            error_file: None,
            time_limit: SlurmTime::parse_slurm("00:30:00"),
            nodes: Nodes::parse("1").ok(),
            ntasks: Some(4),
            gpus: Gpus::parse("a100:1").ok(),
            constraint: Some("gpu&(a100|h100)".into()),
            extra_options: vec!["--mem=8G".into()],
            archive_parts: vec!["ws.tar.gz".into()],
            archive_sha256: "0".repeat(64),
            env_file: None,
            command: Command::Inline("echo hi".into()),
            artifacts: vec![],
            artifacts_archive: format!("{run_dir}/artifacts.tar.gz"),
            artifacts_part_size: None,
            attempt: 1,
            keep_archive: false,
            upload_wait: None,
        }
    }

    fn sbatch_lines_of(script: &str) -> Vec<&str> {
        script
            .lines()
            .filter(|l| l.starts_with("#SBATCH"))
            .collect()
    }

    #[test]
    fn renders_sbatch_header() {
        let script = render(&spec("/scratch/u/run-1")).unwrap();
        assert!(script.starts_with("#!/bin/bash -l\n#SBATCH "));
        assert_eq!(
            sbatch_lines_of(&script),
            [
                "#SBATCH --job-name=ci-42",
                "#SBATCH --output=/scratch/u/run-1/job.out",
                "#SBATCH --open-mode=append",
                "#SBATCH --time=00:30:00",
                "#SBATCH --nodes=1",
                "#SBATCH --ntasks=4",
                "#SBATCH --gpus=a100:1",
                "#SBATCH --constraint=gpu&(a100|h100)",
                "#SBATCH --mem=8G",
            ]
        );
        // sbatch stops reading options at the first command: all of them come first.
        let header: Vec<&str> = script.lines().take(10).collect();
        assert!(header[1..].iter().all(|l| l.starts_with("#SBATCH")));
        assert!(!script.contains("--account") && !script.contains("--partition"));
        assert!(script.contains("_fci_run_dir='/scratch/u/run-1'\n"));
    }

    #[test]
    fn renders_separate_stderr_and_quotes_values() {
        let mut s = spec("/scratch/u/my run%1");
        s.job_name = "my \"job\" #1".into();
        s.error_file = Some("/scratch/u/my run%1/job.err".into());
        s.time_limit = None;
        s.nodes = Nodes::parse("2-4").ok();
        s.gpus = Gpus::parse("2").ok();
        s.extra_options = vec![
            "--comment=\"hello world\"".into(),
            "--exclusive --mail-type=END,FAIL".into(),
        ];
        let script = render(&s).unwrap();
        assert_eq!(
            sbatch_lines_of(&script),
            [
                r#"#SBATCH --job-name="my \"job\" #1""#,
                r#"#SBATCH --output="/scratch/u/my run%%1/job.out""#,
                r#"#SBATCH --error="/scratch/u/my run%%1/job.err""#,
                "#SBATCH --open-mode=append",
                "#SBATCH --nodes=2-4",
                "#SBATCH --ntasks=4",
                "#SBATCH --gpus=2",
                "#SBATCH --constraint=gpu&(a100|h100)",
                r#"#SBATCH --comment="hello world""#,
                "#SBATCH --exclusive --mail-type=END,FAIL",
            ]
        );
        assert!(script.contains("_fci_run_dir='/scratch/u/my run%1'\n"));
    }

    #[test]
    fn refuses_injection_into_sbatch_lines() {
        type Change = Box<dyn Fn(&mut ScriptSpec)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "job name",
                Box::new(|s| s.job_name = "x\necho pwned".into()),
            ),
            (
                "job name",
                Box::new(|s| s.job_name = "x\recho pwned".into()),
            ),
            ("job name", Box::new(|s| s.job_name = "my-hetjob".into())),
            (
                "constraint",
                Box::new(|s| s.constraint = Some("gpu\n#SBATCH --x".into())),
            ),
            (
                "sbatch option",
                Box::new(|s| s.extra_options = vec!["--mem=1G\necho pwned".into()]),
            ),
            (
                "sbatch option",
                Box::new(|s| s.extra_options = vec!["echo pwned".into()]),
            ),
            (
                "sbatch option",
                Box::new(|s| s.extra_options = vec!["--comment=\"open".into()]),
            ),
            (
                "sbatch option",
                Box::new(|s| s.extra_options = vec!["--mem=1G --output=/tmp/x".into()]),
            ),
            (
                "sbatch option",
                Box::new(|s| s.extra_options = vec!["--out=/tmp/x".into()]),
            ),
            (
                "sbatch option",
                Box::new(|s| s.extra_options = vec!["-pdebug".into()]),
            ),
            (
                "sbatch option",
                Box::new(|s| s.extra_options = vec!["--account=x".into()]),
            ),
            (
                "output file",
                Box::new(|s| s.output_file = "job.out".into()),
            ),
            (
                "output file",
                Box::new(|s| s.output_file = "/a/b\n.out".into()),
            ),
            (
                "error file",
                Box::new(|s| s.error_file = Some("/a\\b".into())),
            ),
            ("run directory", Box::new(|s| s.run_dir = "/a/\nb".into())),
            ("run directory", Box::new(|s| s.run_dir = "relative".into())),
            (
                "artifact pattern",
                Box::new(|s| s.artifacts = vec!["../secret".into()]),
            ),
            (
                "artifact pattern",
                Box::new(|s| s.artifacts = vec!["/etc/passwd".into()]),
            ),
            (
                "artifact pattern",
                Box::new(|s| s.artifacts = vec!["a\nb".into()]),
            ),
            (
                "script file",
                Box::new(|s| s.command = Command::ScriptFile("../x.sh".into())),
            ),
            (
                "workspace archive part",
                Box::new(|s| s.archive_parts = vec!["../x".into()]),
            ),
            (
                "checksum",
                Box::new(|s| s.archive_sha256 = "abc; rm -rf /".into()),
            ),
            (
                "forwarded-variables file",
                Box::new(|s| s.env_file = Some("a/b".into())),
            ),
            (
                "commands",
                Box::new(|s| s.command = Command::Inline("a\0b".into())),
            ),
        ];
        for (what, change) in cases {
            let mut s = spec("/scratch/u/run");
            change(&mut s);
            let err = render(&s).expect_err(&format!("{s:?} was accepted"));
            assert!(format!("{err:#}").contains(what), "{what}: {err:#}");
        }
    }

    #[test]
    fn sbatch_option_words() {
        assert_eq!(
            validate_sbatch_option("--comment='a b' -c2").unwrap(),
            ["--comment=a b", "-c2"]
        );
        assert!(validate_sbatch_option("--wait-all-nodes=1").is_ok());
        assert!(validate_sbatch_option("--hint=nomultithread").is_ok());
        for bad in [
            "--wait",
            "-W",
            "--array=1-3",
            "--parsable",
            "--chdir=/",
            "--dep=afterok:1",
        ] {
            assert!(validate_sbatch_option(bad).is_err(), "{bad}");
        }
        for ok in [
            "30",
            "1:30",
            "1:30:00",
            "2-12",
            "2-12:00",
            "1-12:00:00",
            "UNLIMITED",
        ] {
            assert!(SlurmTime::parse_slurm(ok).is_some(), "{ok}");
        }
        // A time limit reaches the script only as a SlurmTime, so text that
        // could add to the #SBATCH line (the old render cases) cannot be one.
        for bad in [
            "",
            "1h",
            "-1",
            "1-",
            "1:2:3:4",
            "1-2:3:4:5",
            "1 2",
            "10\nrm -rf ~",
            "10 --wrap=x",
        ] {
            assert!(SlurmTime::parse_slurm(bad).is_none(), "{bad}");
        }
        // Likewise nodes and GPUs reach it only as Nodes and Gpus.
        for bad in ["1 #x", "0"] {
            assert!(Nodes::parse(bad).is_err(), "{bad}");
        }
        assert!(Gpus::parse("a100:1 --x").is_err());
    }

    #[test]
    fn hostile_text_stays_inert_in_the_script() {
        let mut s = spec("/scratch/u/run");
        s.artifacts = vec![
            "$(touch pwned)".into(),
            "`touch pwned`".into(),
            "it's/*".into(),
        ];
        let script = render(&s).unwrap();
        assert!(script.contains(r#"_fci_artifacts=('$(touch pwned)' '`touch pwned`' 'it'\''s/*')"#));

        // Commands containing the here-document delimiter cannot end it early.
        let commands = "echo a\nFIRECREST_CI_END_OF_COMMANDS\necho b\n";
        s.command = Command::Inline(commands.into());
        let script = render(&s).unwrap();
        assert!(script.contains("<<'FIRECREST_CI_END_OF_COMMANDS_1'"));
        assert!(script.contains(&format!("{commands}FIRECREST_CI_END_OF_COMMANDS_1\n")));
    }

    #[test]
    fn env_file_quotes_exactly_and_skips_bad_names() {
        let mut env = BTreeMap::new();
        env.insert("A".to_string(), Secret::new("it's"));
        env.insert("BAD NAME".to_string(), Secret::new("x"));
        env.insert("X;rm -rf ~".to_string(), Secret::new("x"));
        env.insert("_fci_status".to_string(), Secret::new("x"));
        let text = render_env_file(&env);
        assert_eq!(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>(),
            [r#"export A='it'\''s'"#]
        );
    }

    // ---- running the rendered script with the system bash ----

    /// A run directory with a packed workspace, as the upload leaves it.
    struct Run {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
        spec: ScriptSpec,
    }

    fn run_dir_with(files: &[(&str, &str, u32)], parts: usize) -> Run {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run dir");
        std::fs::create_dir(&dir).unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        for (name, text, mode) in files {
            let path = src.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        let status = Process::new("tar")
            .arg("-czf")
            .arg(tmp.path().join("ws.tar.gz"))
            .arg("-C")
            .arg(&src)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        let archive = std::fs::read(tmp.path().join("ws.tar.gz")).unwrap();
        use sha2::Digest;
        let sha = hex::encode(sha2::Sha256::digest(&archive));
        let chunk = archive.len().div_ceil(parts);
        let names: Vec<String> = archive
            .chunks(chunk)
            .enumerate()
            .map(|(i, bytes)| {
                let name = format!("ws.tar.gz.part{i:03}");
                std::fs::write(dir.join(&name), bytes).unwrap();
                name
            })
            .collect();
        assert_eq!(names.len(), parts);
        let d = dir.to_str().unwrap().to_string();
        let mut spec = spec(&d);
        spec.archive_parts = names;
        spec.archive_sha256 = sha;
        Run {
            _tmp: tmp,
            dir,
            spec,
        }
    }

    fn workspace() -> Run {
        run_dir_with(
            &[
                ("hello.txt", "hello\n", 0o644),
                ("out/a.log", "a\n", 0o644),
                ("out/sub/b.log", "b\n", 0o644),
                (
                    "tools/with-shebang",
                    "#!/bin/sh\necho \"sh says $1${1:-hi}\"\nexit 4\n",
                    0o644,
                ),
                (
                    "tools/no-shebang.sh",
                    "echo \"bash $BASH_VERSION\"\n[[ 1 == 1 ]] && exit 6\n",
                    0o644,
                ),
            ],
            1,
        )
    }

    impl Run {
        fn script(&self) -> PathBuf {
            let path = self.dir.parent().unwrap().join("job.sh");
            std::fs::write(&path, render(&self.spec).unwrap()).unwrap();
            path
        }

        fn command(&self) -> Process {
            let mut cmd = Process::new("bash");
            cmd.arg("-l")
                .arg(self.script())
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", self.dir.parent().unwrap())
                .current_dir(self.dir.parent().unwrap());
            cmd
        }

        fn run(&self) -> Output {
            self.command().output().unwrap()
        }

        fn artifact_names(&self) -> Vec<String> {
            let out = Process::new("tar")
                .arg("-tzf")
                .arg(&self.spec.artifacts_archive)
                .output()
                .unwrap();
            assert!(out.status.success(), "no artifacts archive");
            let mut names: Vec<String> = String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(|l| l.trim_end_matches('/').to_string())
                .collect();
            names.sort();
            names
        }
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn runs_echo_hi() {
        let run = workspace();
        let out = run.run();
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
        assert!(stdout.lines().any(|l| l == "hi"), "{stdout}");
        assert!(
            stdout.contains("firecrest-ci: workspace ready (5 files)"),
            "{stdout}"
        );
        assert!(stdout.contains("firecrest-ci: commands exited with status 0"));
        // The archive is gone, the workspace is in place, no artifacts asked for.
        assert!(!run.dir.join("ws.tar.gz.part000").exists());
        assert!(run.dir.join("workspace/out/sub/b.log").is_file());
        assert!(!Path::new(&run.spec.artifacts_archive).exists());
    }

    #[test]
    fn exit_in_commands_is_the_status_and_artifacts_are_still_packed() {
        let mut run = workspace();
        run.spec.command = Command::Inline("echo before\nexit 5\necho after".into());
        run.spec.artifacts = vec!["out/**".into(), "hello.txt".into(), "missing/*.xml".into()];
        let out = run.run();
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(5), "{stdout}{stderr}");
        assert!(stdout.contains("before") && !stdout.contains("after"));
        assert_eq!(
            stdout.matches("commands exited with status 5").count(),
            1,
            "{stdout}"
        );
        assert!(stderr.contains("warning: artifact pattern 'missing/*.xml' matched nothing"));
        // `out/**` matched `out` and everything in it: each path once.
        assert_eq!(
            run.artifact_names(),
            [
                "./hello.txt",
                "./out",
                "./out/a.log",
                "./out/sub",
                "./out/sub/b.log"
            ]
        );
    }

    #[test]
    fn whole_workspace_pattern_packs_each_path_once() {
        let mut run = workspace();
        run.spec.artifacts = vec![".".into(), "out/*.log".into(), "**".into()];
        let out = run.run();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let names = run.artifact_names();
        assert!(names.contains(&"./out/sub/b.log".to_string()), "{names:?}");
        let mut unique = names.clone();
        unique.dedup();
        assert_eq!(names, unique, "a path was packed twice");
        assert!(text(&out.stdout).contains("artifacts packed (1 path)"));
    }

    #[test]
    fn failing_command_stops_the_block() {
        let mut run = workspace();
        run.spec.command = Command::Inline(
            "echo one\nls /no/such/dir | cat\necho two\n(exit 3)\necho three".into(),
        );
        let out = run.run();
        let stdout = text(&out.stdout);
        // pipefail: the failing `ls` in a pipeline stops the block with its code.
        assert_eq!(out.status.code(), Some(2), "{stdout}");
        assert!(
            stdout.contains("one") && !stdout.contains("two"),
            "{stdout}"
        );

        run.spec.command = Command::Inline("echo one\n(exit 3)\necho two".into());
        let out = run.run();
        assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
        assert!(!text(&out.stdout).contains("two"));
    }

    #[test]
    fn corrupt_archive_exits_65() {
        let run = run_dir_with(&[("a.txt", "a\n", 0o644)], 3);
        // Flip one byte in the middle part.
        let part = run.dir.join(&run.spec.archive_parts[1]);
        let mut bytes = std::fs::read(&part).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&part, bytes).unwrap();
        let out = run.run();
        assert_eq!(out.status.code(), Some(codes::WORKSPACE_INVALID));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("firecrest-ci: error: the workspace archive is corrupt"),
            "{stderr}"
        );
        assert!(!text(&out.stdout).contains("hi\n"));
        // Nothing that looks like an extracted workspace is left.
        assert!(!run.dir.join(EXTRACTED_MARKER).exists());
        assert!(!run.dir.join(WORKSPACE_DIR).exists());

        // A missing part says so.
        let run = run_dir_with(&[("a.txt", "a\n", 0o644)], 2);
        std::fs::remove_file(run.dir.join(&run.spec.archive_parts[1])).unwrap();
        let out = run.run();
        assert_eq!(out.status.code(), Some(codes::WORKSPACE_INVALID));
        assert!(text(&out.stderr).contains("part ws.tar.gz.part001 is missing"));

        // An archive with the right checksum that tar cannot read.
        let run = run_dir_with(&[("a.txt", "a\n", 0o644)], 1);
        let mut spec = run.spec.clone();
        std::fs::write(run.dir.join("junk"), b"not a tarball").unwrap();
        use sha2::Digest;
        spec.archive_parts = vec!["junk".into()];
        spec.archive_sha256 = hex::encode(sha2::Sha256::digest(b"not a tarball"));
        let run = Run { spec, ..run };
        let out = run.run();
        assert_eq!(out.status.code(), Some(codes::WORKSPACE_INVALID));
        assert!(text(&out.stderr).contains("cannot extract the workspace archive"));
    }

    #[test]
    fn multi_part_archive_is_reassembled() {
        let mut run = run_dir_with(&[("data/x.txt", "x marks\n", 0o644)], 4);
        run.spec.command = Command::Inline("cat data/x.txt".into());
        let out = run.run();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("x marks"));
        for part in &run.spec.archive_parts {
            assert!(!run.dir.join(part).exists(), "{part} left behind");
        }
        assert!(!run.dir.join(REASSEMBLED_ARCHIVE).exists());
    }

    #[test]
    fn forwarded_values_arrive_exactly_and_the_file_is_deleted() {
        let mut run = workspace();
        let values = [
            ("COMMAS", "a,b,,c"),
            ("QUOTES", r#"it's "quoted" ''"#),
            ("NEWLINES", "line1\nline2\n\n"),
            ("DOLLAR", "$HOME $(touch pwned) `touch pwned` ${X:-y}"),
            ("BACKSLASH", r"back\slash\\ \n \"),
            ("EMPTY", ""),
            ("UNICODE", "grüße ✓"),
        ];
        let env: BTreeMap<String, Secret> = values
            .iter()
            .map(|(k, v)| (k.to_string(), Secret::new(*v)))
            .collect();
        let env_text = render_env_file(&env);
        let env_path = run.dir.join("env.sh");
        std::fs::write(&env_path, &env_text).unwrap();
        run.spec.env_file = Some("env.sh".into());
        let dump = run.dir.parent().unwrap().join("dump");
        let names: Vec<&str> = values.iter().map(|(k, _)| *k).collect();
        run.spec.command = Command::Inline(format!(
            "for v in {}; do printf '%s\\0' \"${{!v}}\"; done > '{}'",
            names.join(" "),
            dump.display()
        ));
        let script = render(&run.spec).unwrap();
        for (_, v) in &values[..5] {
            assert!(!script.contains(v), "the script contains a value");
        }
        let out = run.run();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let mut got = Vec::new();
        std::fs::File::open(&dump)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        let got: Vec<String> = got
            .split(|b| *b == 0)
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
            .collect();
        let want: Vec<String> = values
            .iter()
            .map(|(_, v)| v.to_string())
            .chain([String::new()])
            .collect();
        assert_eq!(got, want);
        assert!(!env_path.exists(), "the env file is still there");
        assert!(!run.dir.join("workspace/pwned").exists());
        assert!(!run.dir.join("pwned").exists());
        assert!(text(&out.stdout).contains("firecrest-ci: forwarded variables set"));
    }

    #[test]
    fn missing_env_file_fails_clearly() {
        let mut run = workspace();
        run.spec.env_file = Some("env.sh".into());
        let out = run.run();
        assert_eq!(out.status.code(), Some(codes::WORKSPACE_INVALID));
        assert!(text(&out.stderr).contains("forwarded-variables file env.sh is missing"));
    }

    #[test]
    fn script_files_with_and_without_shebang() {
        let mut run = workspace();
        run.spec.command = Command::ScriptFile("tools/with-shebang".into());
        let out = run.run();
        assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("sh says hi"));

        let mut run = workspace();
        run.spec.command = Command::ScriptFile("tools/no-shebang.sh".into());
        let out = run.run();
        assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("bash 5") || text(&out.stdout).contains("bash 4"));

        let mut run = workspace();
        run.spec.command = Command::ScriptFile("tools/none.sh".into());
        let out = run.run();
        assert_eq!(out.status.code(), Some(127));
        assert!(text(&out.stderr).contains("script file tools/none.sh is not in the workspace"));
    }

    #[test]
    fn hostile_artifact_patterns_are_inert() {
        let mut run = workspace();
        run.spec.artifacts = vec![
            "$(touch pwned)".into(),
            "`touch pwned`".into(),
            "hello.txt; touch pwned".into(),
            "out/*.log".into(),
        ];
        let out = run.run();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(!run.dir.join("workspace/pwned").exists());
        assert!(!run.dir.join("pwned").exists());
        assert_eq!(run.artifact_names(), ["./out/a.log"]);
        assert_eq!(text(&out.stderr).matches("matched nothing").count(), 3);
    }

    /// Starts the script in a process group of its own, as Slurm and the
    /// local backend do, and waits until the commands wrote `started`.
    fn start_until_running(run: &Run) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let child = run
            .command()
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = run.dir.join("workspace/started");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !started.exists() {
            assert!(Instant::now() < deadline, "the commands never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    fn signal_shell(child: &std::process::Child, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// What the recorded server's Slurm does at the time limit and on
    /// scancel: SIGTERM to the batch shell alone, not to the commands.
    #[test]
    fn sigterm_to_the_batch_shell_alone_stops_the_commands_and_runs_the_epilogue() {
        let mut run = workspace();
        run.spec.artifacts = vec!["hello.txt".into(), "late.txt".into()];
        run.spec.command = Command::Inline(
            "echo late > late.txt\necho started > started\nsleep 300\necho unreachable".into(),
        );
        let child = start_until_running(&run);
        let t0 = Instant::now();
        signal_shell(&child, nix::sys::signal::Signal::SIGTERM);
        let out = child.wait_with_output().unwrap();
        // The trap runs at once: nothing waits for the 300 s sleep, nor
        // for the grace period (the commands die of the forwarded SIGTERM).
        let took = t0.elapsed();
        let stdout = text(&out.stdout);
        assert!(
            took < Duration::from_secs(u64::from(COMMANDS_GRACE_SECS)),
            "took {took:?}: {stdout}"
        );
        assert_eq!(
            out.status.code(),
            Some(143),
            "{stdout}{}",
            text(&out.stderr)
        );
        assert!(!stdout.contains("unreachable"));
        assert!(
            stdout.contains("firecrest-ci: stopped by SIGTERM"),
            "{stdout}"
        );
        assert!(
            stdout.contains("firecrest-ci: commands exited with status 143"),
            "{stdout}"
        );
        assert!(
            stdout.contains("firecrest-ci: artifacts packed (2 paths)"),
            "{stdout}"
        );
        assert_eq!(run.artifact_names(), ["./hello.txt", "./late.txt"]);
        // The last line says the output is complete.
        assert_eq!(
            stdout.lines().last(),
            Some("firecrest-ci: end of the batch script (exit status 143)"),
            "{stdout}"
        );
        // No process of the commands outlives the script.
        assert!(
            !any_process_in_group(child_group(&out, &run)),
            "the commands' processes are still running"
        );
    }

    /// The process group the commands ran in, from the file they wrote.
    fn child_group(_out: &Output, run: &Run) -> i32 {
        std::fs::read_to_string(run.dir.join("workspace/pgid"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    fn any_process_in_group(pgid: i32) -> bool {
        pgid > 0 && nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_ok()
    }

    #[test]
    fn sigterm_to_the_whole_group_also_runs_the_epilogue_once() {
        let mut run = workspace();
        run.spec.artifacts = vec!["late.txt".into()];
        run.spec.command =
            Command::Inline("echo late > late.txt\necho started > started\nsleep 300".into());
        let child = start_until_running(&run);
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(143), "{stdout}");
        assert_eq!(stdout.matches("artifacts packed (1 path)").count(), 1);
        assert_eq!(run.artifact_names(), ["./late.txt"]);
    }

    #[test]
    fn commands_that_ignore_sigterm_are_killed_after_the_grace_and_the_epilogue_runs() {
        let mut run = workspace();
        run.spec.artifacts = vec!["late.txt".into()];
        run.spec.command = Command::Inline(
            "trap '' TERM\nps -o pgid= $$ > pgid\necho late > late.txt\necho started > started\nsleep 300"
                .into(),
        );
        let child = start_until_running(&run);
        let t0 = Instant::now();
        signal_shell(&child, nix::sys::signal::Signal::SIGTERM);
        let out = child.wait_with_output().unwrap();
        let took = t0.elapsed();
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        let grace = Duration::from_secs(u64::from(COMMANDS_GRACE_SECS));
        assert!(took >= grace - Duration::from_secs(1), "took {took:?}");
        assert!(took < grace + Duration::from_secs(30), "took {took:?}");
        assert!(
            stderr.contains("the commands did not stop within 5s of SIGTERM: killing them"),
            "{stderr}"
        );
        assert_eq!(out.status.code(), Some(137), "{stdout}{stderr}");
        assert_eq!(run.artifact_names(), ["./late.txt"]);
        assert!(stdout.ends_with("firecrest-ci: end of the batch script (exit status 137)\n"));
        assert!(!any_process_in_group(child_group(&out, &run)));
    }

    #[test]
    fn usr1_passes_through_to_the_commands_without_ending_them() {
        let mut run = workspace();
        run.spec.command = Command::Inline(
            "trap 'echo got USR1; touch usr1' USR1\necho started > started\n\
             for _ in $(seq 600); do [ -e usr1 ] && break; sleep 0.1; done\necho after\nexit 7"
                .into(),
        );
        let child = start_until_running(&run);
        signal_shell(&child, nix::sys::signal::Signal::SIGUSR1);
        let out = child.wait_with_output().unwrap();
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(7), "{stdout}{}", text(&out.stderr));
        assert!(
            stdout.contains("got USR1") && stdout.contains("after"),
            "{stdout}"
        );
        assert!(!stdout.contains("stopped by"), "{stdout}");
    }

    #[test]
    fn every_exit_ends_with_the_end_marker() {
        let mut run = workspace();
        run.spec.command = Command::Inline("exit 4".into());
        let out = run.run();
        assert_eq!(out.status.code(), Some(4));
        assert!(text(&out.stdout)
            .ends_with("firecrest-ci: commands exited with status 4\nfirecrest-ci: end of the batch script (exit status 4)\n"));
        // Also when the prologue fails.
        let mut run = workspace();
        run.spec.env_file = Some("missing.sh".into());
        let out = run.run();
        assert_eq!(out.status.code(), Some(codes::WORKSPACE_INVALID));
        assert!(
            text(&out.stdout).ends_with("firecrest-ci: end of the batch script (exit status 65)\n"),
            "{}",
            text(&out.stdout)
        );
        assert!(!text(&out.stdout).contains("commands exited"));
    }

    /// The rendered script, inline and script-file forms, through shellcheck
    /// (CI installs it; elsewhere the test says it skipped).
    #[test]
    fn rendered_scripts_pass_shellcheck() {
        let available = Process::new("shellcheck")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !available {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "CI needs shellcheck (Debian's shellcheck package)"
            );
            eprintln!("SKIPPED: shellcheck is not installed");
            return;
        }
        let mut inline = spec("/scratch/u/run-1");
        inline.artifacts = vec!["out/**".into()];
        inline.env_file = Some(".env".into());
        let mut file = inline.clone();
        file.command = Command::ScriptFile("ci/run tests.sh".into());
        for spec in [inline, file] {
            let tmp = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(tmp.path(), render(&spec).unwrap()).unwrap();
            let out = Process::new("shellcheck")
                // SC2317: the epilogue and signal handlers are called from traps.
                .args(["--severity=style", "--shell=bash", "--exclude=SC2317"])
                .arg(tmp.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
    }

    #[test]
    fn requeued_job_reuses_the_workspace() {
        let mut run = workspace();
        run.spec.command = Command::Inline("echo run >> runs.txt; cat runs.txt | wc -l".into());
        assert_eq!(run.run().status.code(), Some(0));
        let out = run.run();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(stdout.contains("reusing the workspace"), "{stdout}");
        assert!(stdout.lines().any(|l| l.trim() == "2"), "{stdout}");
    }

    #[test]
    fn unreachable_run_dir_exits_65() {
        let mut run = workspace();
        run.spec.run_dir = format!("{}/gone", run.dir.display());
        let out = run.run();
        assert_eq!(out.status.code(), Some(codes::WORKSPACE_INVALID));
        assert!(text(&out.stderr).contains("cannot enter the run directory"));
    }

    #[test]
    fn the_commands_can_write_step_outputs_and_a_summary() {
        let mut run = workspace();
        run.spec.command = Command::Inline(
            "echo gflops=812 >> \"$FIRECREST_CI_OUTPUT\"\necho '### Figures' >> \"$FIRECREST_CI_SUMMARY\"".into(),
        );
        let out = run.run();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let read = |name: &str| std::fs::read_to_string(run.dir.join(name)).unwrap();
        assert_eq!(read(crate::handback::OUTPUT_FILE), "gflops=812\n");
        assert_eq!(read(crate::handback::SUMMARY_FILE), "### Figures\n");
    }

    /// The renderer refuses every option the inputs refuse: one table. (The
    /// renderer's own shorter list once let `--export`, `--time`, `--nodes`
    /// and others through.)
    #[test]
    fn every_reserved_option_is_refused_long_short_and_abbreviated() {
        for reserved in crate::config::slurm::RESERVED_OPTIONS {
            let long = format!("--{}=x", reserved.long);
            assert!(validate_sbatch_option(&long).is_err(), "{long}");
            let prefix = format!("--{}=x", &reserved.long[..reserved.long.len().min(4)]);
            assert!(validate_sbatch_option(&prefix).is_err(), "{prefix}");
            if let Some(letter) = reserved.short {
                let short = format!("-{letter}1");
                assert!(validate_sbatch_option(&short).is_err(), "{short}");
            }
        }
        assert!(validate_sbatch_option("--mem=8G").is_ok());
    }

    #[test]
    fn attempt_names_keep_the_first_and_suffix_the_rest() {
        assert_eq!(attempt_name("job.out", 1), "job.out");
        assert_eq!(attempt_name("job.out", 2), "job-2.out");
        assert_eq!(attempt_name("artifacts.tar.gz", 3), "artifacts-3.tar.gz");
        assert_eq!(attempt_name("workspace", 2), "workspace-2");
        assert_eq!(
            attempt_name(".firecrest-ci-extracted", 2),
            ".firecrest-ci-extracted-2"
        );
    }

    /// A retry runs in a fresh workspace of its own, from the archive the
    /// first attempt kept: whatever the first attempt changed is not there.
    #[test]
    fn a_later_attempt_extracts_a_fresh_workspace_from_the_kept_archive() {
        let mut run = workspace();
        run.spec.keep_archive = true;
        run.spec.command = Command::Inline("echo changed > hello.txt".into());
        let out = run.run();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(
            run.dir.join(&run.spec.archive_parts[0]).exists(),
            "archive kept"
        );
        run.spec.attempt = 2;
        run.spec.keep_archive = false;
        run.spec.command = Command::Inline("cat hello.txt; pwd".into());
        let out = run.run();
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
        assert!(stdout.lines().any(|l| l == "hello"), "{stdout}");
        assert!(stdout.contains("/workspace-2\n"), "{stdout}");
        assert!(
            !run.dir.join(&run.spec.archive_parts[0]).exists(),
            "archive removed by the last attempt"
        );
    }

    /// A job submitted while its last parts went up waits for the ready
    /// file and extracts only once it holds the archive's checksum: a file
    /// that exists but is not yet whole (here: empty) is not enough.
    #[test]
    fn a_job_submitted_ahead_waits_for_its_last_parts() {
        let mut run = workspace();
        run.spec.command = Command::Inline("cat hello.txt".into());
        run.spec.upload_wait = Some(UploadWait {
            file: "workspace.ready".into(),
            within: std::time::Duration::from_secs(60),
        });
        let part = run.dir.join(&run.spec.archive_parts[0]);
        let held = run.dir.parent().unwrap().join("held");
        std::fs::rename(&part, &held).unwrap();
        std::fs::write(run.dir.join("workspace.ready"), "").unwrap();
        let child = run
            .command()
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(800));
        std::fs::rename(&held, &part).unwrap();
        let ready = format!("{}\n", run.spec.archive_sha256);
        std::fs::write(run.dir.join("workspace.ready"), ready).unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
        let waiting = stdout
            .find("waiting for the last parts of the workspace upload")
            .expect("the wait is said");
        let hello = stdout.find("\nhello\n").expect("the workspace's file");
        assert!(waiting < hello, "{stdout}");
    }

    #[test]
    fn a_job_whose_last_parts_never_come_fails_as_an_invalid_workspace() {
        let mut run = workspace();
        run.spec.command = Command::Inline("echo should-not-run".into());
        run.spec.upload_wait = Some(UploadWait {
            file: "workspace.ready".into(),
            within: std::time::Duration::from_secs(1),
        });
        // A login profile may unset bash's own variables; the wait still
        // lasts its second.
        let profile = run.dir.parent().unwrap().join(".bash_profile");
        std::fs::write(profile, "unset SECONDS\n").unwrap();
        let started = std::time::Instant::now();
        let out = run.run();
        assert!(started.elapsed() >= std::time::Duration::from_secs(1));
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(
            out.status.code(),
            Some(codes::WORKSPACE_INVALID),
            "{stdout}{stderr}"
        );
        assert!(
            stderr.contains("the workspace upload did not finish within 1s"),
            "{stderr}"
        );
        assert!(!stdout.contains("should-not-run"), "{stdout}");
    }
}
