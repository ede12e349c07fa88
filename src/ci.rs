//! Everything this tool says to the CI platform it runs under: GitHub Actions,
//! GitLab CI, or a plain terminal. Collapsible groups, secret masks,
//! annotations, step outputs and the step summary all have platform-specific
//! syntax, so they live here and nowhere else.
//!
//! The delicate part is the job's own output. On GitHub every line of stdout or
//! stderr that starts with `::` runs as a workflow command, so a job that
//! prints `::add-mask::`, `::error::` or `::stop-commands::` could fake results
//! or hide text. Job output is therefore printed inside a
//! `::stop-commands::<token>` section with an unpredictable token. The tool
//! must still issue its own commands while the job streams (a mask for a
//! refreshed token, an annotation), so [`Ci`] remembers whether commands are
//! stopped: before its own command it resumes with `::<token>::` on a line of
//! its own, and before the next job bytes it stops again with a fresh token.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rand::Rng;

/// GitHub refuses a step summary larger than this (1 MiB per step).
const SUMMARY_LIMIT: u64 = 1024 * 1024;

/// Appended where a summary had to be cut, so readers know text is missing.
const TRUNCATION_NOTE: &str = "\n> **Note**\n> firecrest-ci cut this summary short: \
GitHub accepts at most 1 MiB of summary per step.\n";

/// Bytes kept free when truncating, for a newline and a closing code fence.
const FENCE_RESERVE: usize = 32;

/// Random bytes in a stop-commands token or heredoc delimiter (hex: twice as
/// many characters); 128 bits cannot be guessed by the job.
const TOKEN_BYTES: usize = 16;

/// The CI system this process runs under; it decides the syntax of everything
/// printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// GitHub Actions (`GITHUB_ACTIONS=true`).
    GitHub,
    /// GitLab CI (`GITLAB_CI=true`).
    GitLab,
    /// Anything else: a terminal, another CI, a test.
    Plain,
}

/// Files the platform reads after the step; `None` means the feature is
/// unavailable and the matching calls only log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CiPaths {
    /// `$GITHUB_OUTPUT`: step outputs on GitHub.
    pub github_output: Option<PathBuf>,
    /// `$GITHUB_STEP_SUMMARY`: the Markdown step summary on GitHub.
    pub github_step_summary: Option<PathBuf>,
    /// The file the GitLab job declares as `artifacts: reports: dotenv`, so
    /// outputs reach later jobs as variables.
    pub gitlab_dotenv: Option<PathBuf>,
}

/// The one writer for CI output: shared by the log streamer and the rest of
/// the tool, so it serializes stdout and tracks the stop-commands state.
pub struct Ci {
    platform: Platform,
    paths: CiPaths,
    out: Mutex<Out>,
    /// Serializes appends to the output and summary files.
    files: Mutex<FileState>,
}

/// Stdout and what GitHub's command parser currently thinks of it.
struct Out {
    writer: Box<dyn Write + Send>,
    /// False while the last byte written was not a newline: a command written
    /// now would land mid-line and not be recognized.
    at_line_start: bool,
    /// Set while GitHub's command processing is stopped for untrusted bytes.
    stopped: Option<Stopped>,
}

struct Stopped {
    token: String,
    /// The last untrusted bytes of this section, to spot the token even when
    /// it arrives split across two chunks.
    tail: Vec<u8>,
}

#[derive(Default)]
struct FileState {
    /// Once the summary hit the limit, later appends are dropped.
    summary_truncated: bool,
}

#[derive(Clone, Copy)]
enum Level {
    Error,
    Warning,
    Notice,
}

impl Ci {
    /// The platform as the environment says, printing to the real stdout
    /// (GitHub reads workflow commands there; the job's output goes there too).
    pub fn detect(env: &BTreeMap<String, String>, gitlab_dotenv: Option<PathBuf>) -> Ci {
        let is_true = |key: &str| env.get(key).is_some_and(|v| v == "true");
        let path = |key: &str| env.get(key).filter(|v| !v.is_empty()).map(PathBuf::from);
        let (platform, paths) = if is_true("GITHUB_ACTIONS") {
            let paths = CiPaths {
                github_output: path("GITHUB_OUTPUT"),
                github_step_summary: path("GITHUB_STEP_SUMMARY"),
                gitlab_dotenv: None,
            };
            (Platform::GitHub, paths)
        } else if is_true("GITLAB_CI") {
            let paths = CiPaths {
                gitlab_dotenv,
                ..CiPaths::default()
            };
            (Platform::GitLab, paths)
        } else {
            (Platform::Plain, CiPaths::default())
        };
        Ci::with_writer(platform, paths, Box::new(std::io::stdout()))
    }

    /// A `Ci` printing to any writer, so tests can read back what was printed.
    pub fn with_writer(platform: Platform, paths: CiPaths, out: Box<dyn Write + Send>) -> Ci {
        Ci {
            platform,
            paths,
            out: Mutex::new(Out {
                writer: out,
                at_line_start: true,
                stopped: None,
            }),
            files: Mutex::new(FileState::default()),
        }
    }

    /// Which platform's syntax this instance speaks.
    pub fn platform(&self) -> Platform {
        self.platform
    }

    /// The output files in use, for reporting where outputs went.
    pub fn paths(&self) -> &CiPaths {
        &self.paths
    }

    /// Opens a collapsible section so long phases (upload, job log) fold away.
    /// `id` names the GitLab section and must be passed again to
    /// [`Ci::group_end`].
    pub fn group_start(&self, id: &str, title: &str) {
        match self.platform {
            Platform::GitHub => self.command(&format!("::group::{}", escape_data(title))),
            Platform::GitLab => self.tool_line(&gitlab_section_start(unix_now(), id, title)),
            Platform::Plain => self.tool_line(&format!("==> {}", one_line(title))),
        }
    }

    /// Closes the section opened by [`Ci::group_start`] with the same `id`.
    pub fn group_end(&self, id: &str) {
        match self.platform {
            Platform::GitHub => self.command("::endgroup::"),
            Platform::GitLab => self.tool_line(&gitlab_section_end(unix_now(), id)),
            Platform::Plain => {}
        }
    }

    /// Hides a secret from the rest of the GitHub log (client secret, every
    /// token obtained). GitLab has no runtime masking, so there the tool must
    /// simply never print secrets.
    pub fn mask(&self, value: &str) {
        if self.platform != Platform::GitHub || value.trim().is_empty() {
            return;
        }
        let mut lines = vec![format!("::add-mask::{}", escape_data(value))];
        // GitHub masks line by line, so a multi-line value is masked per line too.
        if value.contains(['\n', '\r']) {
            lines.extend(
                value
                    .split(['\n', '\r'])
                    .filter(|part| !part.trim().is_empty())
                    .map(|part| format!("::add-mask::{}", escape_data(part))),
            );
        }
        let mut out = self.lock_out();
        out.resume();
        for line in &lines {
            out.line(line);
        }
        out.flush();
    }

    /// Convenience for [`Ci::mask`] on a [`crate::secret::Secret`].
    pub fn mask_secret(&self, secret: &crate::secret::Secret) {
        self.mask(secret.expose());
    }

    /// An error annotation: on GitHub it shows on the run's summary page.
    pub fn error(&self, title: &str, message: &str) {
        self.annotate(Level::Error, title, message);
    }

    /// A warning annotation (see [`Ci::error`]).
    pub fn warning(&self, title: &str, message: &str) {
        self.annotate(Level::Warning, title, message);
    }

    /// A notice annotation (see [`Ci::error`]).
    pub fn notice(&self, title: &str, message: &str) {
        self.annotate(Level::Notice, title, message);
    }

    /// Publishes a step output (`job-id`, `state`, ...) for later steps or
    /// jobs. On GitLab the dotenv key is `FIRECREST_JOB_` plus the name (without
    /// a `job-` prefix) upper-cased with `-` as `_`; dotenv values must be one line without surrounding
    /// whitespace, anything else is refused rather than silently changed.
    pub fn set_output(&self, name: &str, value: &str) -> Result<()> {
        validate_output_name(name)?;
        match self.platform {
            Platform::GitHub => {
                let Some(path) = &self.paths.github_output else {
                    tracing::warn!(name, "GITHUB_OUTPUT is not set; step output dropped");
                    return Ok(());
                };
                let record = github_output_record(name, value);
                let _files = self.lock_files();
                append_record(path, record.as_bytes())
                    .with_context(|| format!("failed to write step output {name}"))
            }
            Platform::GitLab => {
                let Some(path) = &self.paths.gitlab_dotenv else {
                    tracing::debug!(name, "no dotenv file configured; step output not written");
                    return Ok(());
                };
                let record = dotenv_record(name, value)?;
                let _files = self.lock_files();
                append_record(path, record.as_bytes())
                    .with_context(|| format!("failed to write step output {name}"))
            }
            Platform::Plain => {
                tracing::debug!(name, value, "step output");
                Ok(())
            }
        }
    }

    /// Publishes an output the job itself set (see `handback`). On GitHub it
    /// is a step output of that name; on GitLab the dotenv key is
    /// `FIRECREST_OUTPUT_` plus the name upper-cased, apart from the tool's
    /// own `FIRECREST_JOB_*` keys. The caller has refused the tool's own names.
    pub fn set_job_output(&self, name: &str, value: &str) -> Result<()> {
        validate_output_name(name)?;
        let (path, record) = match self.platform {
            Platform::GitHub => (
                self.paths.github_output.as_ref(),
                github_output_record(name, value),
            ),
            Platform::GitLab => (
                self.paths.gitlab_dotenv.as_ref(),
                dotenv_line(&job_output_key(name), name, value)?,
            ),
            Platform::Plain => (None, String::new()),
        };
        let Some(path) = path else {
            tracing::debug!(
                name,
                "no output file on this platform; job output not written"
            );
            return Ok(());
        };
        let _files = self.lock_files();
        append_record(path, record.as_bytes())
            .with_context(|| format!("failed to write the job's output {name}"))
    }

    /// Appends Markdown to the GitHub step summary; past GitHub's 1 MiB limit
    /// it is cut at a line boundary with a note, and later appends are dropped.
    pub fn append_summary(&self, markdown: &str) -> Result<()> {
        if self.platform != Platform::GitHub || markdown.is_empty() {
            return Ok(());
        }
        let Some(path) = &self.paths.github_step_summary else {
            tracing::debug!("GITHUB_STEP_SUMMARY is not set; summary not written");
            return Ok(());
        };
        let mut files = self.lock_files();
        if files.summary_truncated {
            tracing::debug!("step summary already full; further summary dropped");
            return Ok(());
        }
        let (mut file, len, needs_newline) = open_append(path)?;
        let mut text = String::new();
        if needs_newline {
            text.push('\n');
        }
        let room = usize::try_from(SUMMARY_LIMIT.saturating_sub(len + text.len() as u64))
            .unwrap_or(usize::MAX);
        match fit_summary(markdown, room) {
            Fit::Whole(all) => text.push_str(all),
            Fit::Truncated(cut) => {
                files.summary_truncated = true;
                tracing::warn!("step summary exceeds GitHub's 1 MiB limit; truncated");
                text.push_str(&cut);
            }
            Fit::Nothing => {
                files.summary_truncated = true;
                tracing::warn!("step summary is full (1 MiB); further summary dropped");
                return Ok(());
            }
        }
        file.write_all(text.as_bytes())
            .with_context(|| format!("failed to append step summary to {}", path.display()))
    }

    /// Prints the job's output. On GitHub it is wrapped in stop-commands so no
    /// line of it runs as a workflow command; bytes are written unchanged (they
    /// need not be UTF-8).
    pub fn print_untrusted(&self, bytes: &[u8]) {
        let mut out = self.lock_out();
        out.untrusted(bytes, self.platform == Platform::GitHub);
        out.flush();
    }

    /// Prints one of the tool's own lines (progress, the final report). Text
    /// that would read as a GitHub command (it may quote job data) is printed
    /// inside stop-commands, so it shows literally.
    pub fn print_line(&self, line: &str) {
        let mut out = self.lock_out();
        if self.platform == Platform::GitHub && looks_like_command(line) {
            out.start_line();
            out.untrusted(format!("{line}\n").as_bytes(), true);
        } else {
            out.line(line);
        }
        out.flush();
    }

    /// Resumes command processing if stopped; call before exiting so later
    /// output of the step is parsed normally again. Also run on drop.
    pub fn finish(&self) {
        let mut out = self.lock_out();
        out.resume();
        out.flush();
    }

    fn annotate(&self, level: Level, title: &str, message: &str) {
        match self.platform {
            Platform::GitHub => {
                let command = match level {
                    Level::Error => "error",
                    Level::Warning => "warning",
                    Level::Notice => "notice",
                };
                let props = if title.is_empty() {
                    String::new()
                } else {
                    format!(" title={}", escape_property(title))
                };
                self.command(&format!("::{command}{props}::{}", escape_data(message)));
            }
            Platform::GitLab => self.tool_line(&marked_lines(level, title, message, true)),
            Platform::Plain => self.tool_line(&marked_lines(level, title, message, false)),
        }
    }

    /// Writes a workflow command of the tool's own, resuming commands first.
    fn command(&self, line: &str) {
        let mut out = self.lock_out();
        out.resume();
        out.line(line);
        out.flush();
    }

    /// Writes a line that is not a command (GitLab and plain markers).
    fn tool_line(&self, text: &str) {
        let mut out = self.lock_out();
        out.line(text);
        out.flush();
    }

    // A panic elsewhere while holding a lock leaves consistent state here
    // (every write completes or is ignored), so a poisoned lock is still usable.
    fn lock_out(&self) -> MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_files(&self) -> MutexGuard<'_, FileState> {
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Ci {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Out {
    fn raw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        // The CI log is the only place to report a failed write to the CI log;
        // a closed stdout must not abort the job being watched, so it is ignored.
        let _ = self.writer.write_all(bytes);
        self.at_line_start = bytes.ends_with(b"\n");
    }

    /// Ends a partial line so the next write starts a line of its own.
    fn start_line(&mut self) {
        if !self.at_line_start {
            self.raw(b"\n");
        }
    }

    /// Writes `text` as whole line(s), starting a new line if needed.
    fn line(&mut self, text: &str) {
        let mut buf = Vec::with_capacity(text.len() + 2);
        if !self.at_line_start {
            buf.push(b'\n');
        }
        buf.extend_from_slice(text.as_bytes());
        buf.push(b'\n');
        self.raw(&buf);
    }

    fn resume(&mut self) {
        if let Some(stopped) = self.stopped.take() {
            self.line(&format!("::{}::", stopped.token));
        }
    }

    fn untrusted(&mut self, bytes: &[u8], github: bool) {
        if bytes.is_empty() {
            return;
        }
        if github {
            // Practically impossible, but if the job's bytes contain the token
            // they could resume commands: switch to a token they do not contain.
            let leaked = self
                .stopped
                .as_ref()
                .is_some_and(|s| token_in(&s.tail, bytes, &s.token));
            if leaked {
                self.resume();
            }
            if self.stopped.is_none() {
                let token = random_token_avoiding(bytes, random_hex);
                self.line(&format!("::stop-commands::{token}"));
                self.stopped = Some(Stopped {
                    token,
                    tail: Vec::new(),
                });
            }
            if let Some(stopped) = self.stopped.as_mut() {
                let keep = stopped.token.len().saturating_sub(1);
                stopped
                    .tail
                    .extend_from_slice(&bytes[bytes.len().saturating_sub(keep)..]);
                let excess = stopped.tail.len().saturating_sub(keep);
                stopped.tail.drain(..excess);
            }
        }
        self.raw(bytes);
    }

    fn flush(&mut self) {
        // See `raw`: nothing sensible to do when stdout is gone.
        let _ = self.writer.flush();
    }
}

/// Escapes command data (messages, titles of groups) for GitHub.
fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a command property value (`title=...`) for GitHub.
fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

/// Whether a line of `text` would be parsed as a GitHub command (current
/// `::name::` or legacy `##[name]` syntax; the runner trims leading space).
fn looks_like_command(text: &str) -> bool {
    text.split(['\n', '\r']).any(|line| {
        let line = line.trim_start();
        line.starts_with("::") || line.starts_with("##[")
    })
}

/// Whether `token` occurs (ASCII case-insensitively, as the runner compares
/// it) in `bytes`, or across the boundary between `tail` and `bytes`.
fn token_in(tail: &[u8], bytes: &[u8], token: &str) -> bool {
    let token = token.as_bytes();
    if contains_ignore_case(bytes, token) {
        return true;
    }
    let head = &bytes[..bytes.len().min(token.len().saturating_sub(1))];
    let mut joined = tail.to_vec();
    joined.extend_from_slice(head);
    contains_ignore_case(&joined, token)
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    let Some(&first) = needle.first() else {
        return true;
    };
    haystack
        .windows(needle.len())
        .any(|window| window[0].eq_ignore_ascii_case(&first) && window.eq_ignore_ascii_case(needle))
}

fn random_hex() -> String {
    hex::encode(rand::thread_rng().gen::<[u8; TOKEN_BYTES]>())
}

/// A fresh token from `generate` that does not occur in `avoid`.
fn random_token_avoiding(avoid: &[u8], mut generate: impl FnMut() -> String) -> String {
    loop {
        let token = generate();
        if !contains_ignore_case(avoid, token.as_bytes()) {
            return token;
        }
    }
}

/// Output names end up in `name=value` / `name<<DELIM` records and in dotenv
/// keys, so only a safe alphabet is accepted.
fn validate_output_name(name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("invalid step output name {name:?}: use letters, digits, '-' and '_'");
    }
    Ok(())
}

/// One `$GITHUB_OUTPUT` record: `name=value`, or a heredoc with a random
/// delimiter that does not occur in the value when the value spans lines.
fn github_output_record(name: &str, value: &str) -> String {
    if !value.contains(['\n', '\r']) {
        return format!("{name}={value}\n");
    }
    let delimiter = random_token_avoiding(value.as_bytes(), || {
        format!("ghadelimiter_{}", random_hex())
    });
    format!("{name}<<{delimiter}\n{value}\n{delimiter}\n")
}

/// The dotenv key GitLab jobs see for a step output: `job-id` ->
/// `FIRECREST_JOB_ID`, `remote-dir` -> `FIRECREST_JOB_REMOTE_DIR`. The
/// `FIRECREST_JOB_` prefix keeps them apart from the inputs: a later job
/// that also runs firecrest-ci must not read `FIRECREST_REMOTE_DIR` back.
fn dotenv_key(name: &str) -> String {
    let name = name.strip_prefix("job-").unwrap_or(name);
    format!(
        "FIRECREST_JOB_{}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

/// The dotenv key of an output the job set: `gflops` ->
/// `FIRECREST_OUTPUT_GFLOPS`.
fn job_output_key(name: &str) -> String {
    format!(
        "FIRECREST_OUTPUT_{}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

/// One dotenv line. GitLab reads `KEY=VALUE` per line and strips surrounding
/// whitespace, so values it would change are refused.
fn dotenv_record(name: &str, value: &str) -> Result<String> {
    dotenv_line(&dotenv_key(name), name, value)
}

fn dotenv_line(key: &str, name: &str, value: &str) -> Result<String> {
    if value.contains(['\n', '\r']) {
        bail!("cannot write step output {name} to the dotenv file: GitLab dotenv values must be one line");
    }
    let stripped =
        value.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0' || c == '\x0b');
    if stripped != value {
        bail!("cannot write step output {name} to the dotenv file: GitLab strips leading and trailing whitespace from dotenv values");
    }
    Ok(format!("{key}={value}\n"))
}

/// Opens `path` for appending; also returns its length and whether the last
/// byte is not a newline (an append must then start a new line).
fn open_append(path: &Path) -> Result<(File, u64, bool)> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("failed to open {} for appending", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("failed to read the size of {}", path.display()))?
        .len();
    let mut needs_newline = false;
    if len > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))
            .and_then(|_| file.read_exact(&mut last))
            .with_context(|| format!("failed to read the end of {}", path.display()))?;
        needs_newline = last[0] != b'\n';
    }
    Ok((file, len, needs_newline))
}

/// Appends one record in a single write (steps share the file).
fn append_record(path: &Path, record: &[u8]) -> Result<()> {
    let (mut file, _, needs_newline) = open_append(path)?;
    let mut buf = Vec::with_capacity(record.len() + 1);
    if needs_newline {
        buf.push(b'\n');
    }
    buf.extend_from_slice(record);
    file.write_all(&buf)
        .with_context(|| format!("failed to append to {}", path.display()))
}

enum Fit<'a> {
    Whole(&'a str),
    Truncated(String),
    Nothing,
}

/// What of `markdown` fits in `room` bytes: all of it, or a prefix cut at a
/// line (else character) boundary, with an open code fence closed and a note.
fn fit_summary(markdown: &str, room: usize) -> Fit<'_> {
    if markdown.len() <= room {
        return Fit::Whole(markdown);
    }
    let reserve = TRUNCATION_NOTE.len() + FENCE_RESERVE;
    if room < reserve {
        return Fit::Nothing;
    }
    let mut cut = floor_char_boundary(markdown, room - reserve);
    if let Some(newline) = markdown[..cut].rfind('\n') {
        cut = newline + 1;
    }
    let kept = &markdown[..cut];
    let mut text = String::with_capacity(room);
    text.push_str(kept);
    if !kept.is_empty() && !kept.ends_with('\n') {
        text.push('\n');
    }
    if let Some(fence) = open_fence(kept) {
        // A fence longer than the reserve is left open rather than overflow.
        if fence.len() + 2 <= FENCE_RESERVE {
            text.push_str(&fence);
            text.push('\n');
        }
    }
    text.push_str(TRUNCATION_NOTE);
    Fit::Truncated(text)
}

fn floor_char_boundary(text: &str, index: usize) -> usize {
    let mut index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// The fence (run of backticks or tildes) of a code block left open at the
/// end of `markdown`, if any.
fn open_fence(markdown: &str) -> Option<String> {
    let mut open: Option<(char, usize)> = None;
    for line in markdown.lines() {
        let line = line.trim_start_matches(' ');
        let Some(marker) = line.chars().next().filter(|c| *c == '`' || *c == '~') else {
            continue;
        };
        let run = line.chars().take_while(|c| *c == marker).count();
        if run < 3 {
            continue;
        }
        match open {
            None => open = Some((marker, run)),
            Some((open_marker, open_run))
                if marker == open_marker
                    && run >= open_run
                    && line[run * marker.len_utf8()..].trim().is_empty() =>
            {
                open = None;
            }
            Some(_) => {}
        }
    }
    open.map(|(marker, run)| marker.to_string().repeat(run))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// GitLab section names allow `[A-Za-z0-9_.-]` only.
fn section_name(id: &str) -> String {
    let name: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "section".to_owned()
    } else {
        name
    }
}

fn gitlab_section_start(timestamp: u64, id: &str, header: &str) -> String {
    format!(
        "\x1b[0Ksection_start:{timestamp}:{}[collapsed=true]\r\x1b[0K{}",
        section_name(id),
        one_line(header)
    )
}

fn gitlab_section_end(timestamp: u64, id: &str) -> String {
    format!(
        "\x1b[0Ksection_end:{timestamp}:{}\r\x1b[0K",
        section_name(id)
    )
}

/// Control characters (newlines, escapes) replaced by spaces, for text that
/// must stay on one line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// An annotation for logs without annotation support: `ERROR: title: message`,
/// continuation lines indented, in colour on GitLab.
fn marked_lines(level: Level, title: &str, message: &str, colour: bool) -> String {
    let (label, ansi) = match level {
        Level::Error => ("ERROR", "\x1b[31;1m"),
        Level::Warning => ("WARNING", "\x1b[33;1m"),
        Level::Notice => ("NOTICE", "\x1b[36;1m"),
    };
    let title = one_line(title);
    let mut lines = message
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l));
    let first = lines.next().unwrap_or_default();
    let mut all = vec![if title.is_empty() {
        format!("{label}: {first}")
    } else {
        format!("{label}: {title}: {first}")
    }];
    all.extend(lines.map(|l| format!("  {l}")));
    if colour {
        all.iter()
            .map(|l| format!("{ansi}{l}\x1b[0m"))
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        all.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer tests can read back after handing a clone to `Ci`.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn bytes(&self) -> Vec<u8> {
            self.0.lock().unwrap().clone()
        }
        fn text(&self) -> String {
            String::from_utf8(self.bytes()).unwrap()
        }
    }

    fn new_ci(platform: Platform, paths: CiPaths) -> (Ci, Buf) {
        let buf = Buf::default();
        (Ci::with_writer(platform, paths, Box::new(buf.clone())), buf)
    }

    // ---- a small model of the GitHub runner's command processor ----

    #[derive(Debug, Clone, PartialEq)]
    struct Cmd {
        name: String,
        props: BTreeMap<String, String>,
        data: String,
    }

    #[derive(Debug, Default)]
    struct Sim {
        /// Commands the runner executed (stop/resume excluded).
        commands: Vec<Cmd>,
        /// Lines shown as plain text.
        text: Vec<String>,
        /// Tokens of each stop-commands, in order.
        stops: Vec<String>,
        resumes: usize,
        stopped_at_end: bool,
    }

    const REGISTERED: &[&str] = &[
        "add-mask",
        "add-matcher",
        "add-path",
        "debug",
        "echo",
        "endgroup",
        "error",
        "group",
        "notice",
        "remove-matcher",
        "save-state",
        "set-env",
        "set-output",
        "warning",
        "stop-commands",
    ];

    fn unescape(text: &str, property: bool) -> String {
        let mut text = text.replace("%0D", "\r").replace("%0A", "\n");
        if property {
            text = text.replace("%3A", ":").replace("%2C", ",");
        }
        text.replace("%25", "%")
    }

    /// `::name k=v,k=v::data` after trimming leading space, as the runner parses it.
    fn parse_v2(line: &str, registered: &[String]) -> Option<Cmd> {
        let rest = line.trim_start().strip_prefix("::")?;
        let end = rest.find("::")?;
        let (info, data) = (&rest[..end], &rest[end + 2..]);
        let (name, props) = info.split_once(' ').unwrap_or((info, ""));
        if !registered.iter().any(|r| r.eq_ignore_ascii_case(name)) {
            return None;
        }
        let props = props
            .split(',')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_owned(), unescape(v, true)))
            .collect();
        Some(Cmd {
            name: name.to_owned(),
            props,
            data: unescape(data, false),
        })
    }

    /// Legacy `##[name k=v;]data`.
    fn parse_legacy(line: &str, registered: &[String]) -> Option<Cmd> {
        let rest = line.trim_start().strip_prefix("##[")?;
        let end = rest.find(']')?;
        let (info, data) = (&rest[..end], &rest[end + 1..]);
        let (name, props) = info.split_once(' ').unwrap_or((info, ""));
        if !registered.iter().any(|r| r.eq_ignore_ascii_case(name)) {
            return None;
        }
        let props = props
            .split(';')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_owned(), unescape(v, true)))
            .collect();
        Some(Cmd {
            name: name.to_owned(),
            props,
            data: unescape(data, false),
        })
    }

    /// Splits like .NET `ReadLine` (CR, LF or CRLF) or on LF only.
    fn split_lines(bytes: &[u8], dotnet: bool) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        let mut current = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\n' => lines.push(std::mem::take(&mut current)),
                b'\r' if dotnet => {
                    lines.push(std::mem::take(&mut current));
                    if bytes.get(i + 1) == Some(&b'\n') {
                        i += 1;
                    }
                }
                b => current.push(b),
            }
            i += 1;
        }
        if !current.is_empty() {
            lines.push(current);
        }
        lines
    }

    fn simulate(output: &[u8], dotnet: bool) -> Sim {
        let mut sim = Sim::default();
        let mut stop_token: Option<String> = None;
        for raw in split_lines(output, dotnet) {
            let line = String::from_utf8_lossy(&raw).into_owned();
            let mut registered: Vec<String> = REGISTERED.iter().map(|s| s.to_string()).collect();
            registered.extend(stop_token.clone());
            let Some(cmd) =
                parse_v2(&line, &registered).or_else(|| parse_legacy(&line, &registered))
            else {
                sim.text.push(line);
                continue;
            };
            match &stop_token {
                Some(token) if cmd.name.eq_ignore_ascii_case(token) => {
                    stop_token = None;
                    sim.resumes += 1;
                }
                Some(_) => sim.text.push(line),
                None if cmd.name.eq_ignore_ascii_case("stop-commands") => {
                    stop_token = Some(cmd.data.clone());
                    sim.stops.push(cmd.data);
                }
                None => sim.commands.push(cmd),
            }
        }
        sim.stopped_at_end = stop_token.is_some();
        sim
    }

    fn cmd(name: &str, props: &[(&str, &str)], data: &str) -> Cmd {
        Cmd {
            name: name.to_owned(),
            props: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            data: data.to_owned(),
        }
    }

    #[test]
    fn ci_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Ci>();
    }

    #[test]
    fn untrusted_lines_never_run_but_own_commands_do() {
        let (ci, buf) = new_ci(Platform::GitHub, CiPaths::default());
        ci.print_untrusted(b"compiling\n::error::x\n");
        ci.mask("s3cret-token");
        ci.print_untrusted(b"::add-mask::y\n  ::error title=t::indented\npartial line ");
        ci.mask("refreshed-token");
        ci.print_untrusted(
            b"::error::after partial\n##[add-mask]z\n\xff\xfe not utf-8\n::set-output name=a::b",
        );
        ci.error("Job failed", "exit code 1");
        ci.print_untrusted(b"\n::warning::late\r::notice::after cr\n");
        ci.finish();
        let out = buf.bytes();

        for dotnet in [true, false] {
            let sim = simulate(&out, dotnet);
            assert_eq!(
                sim.commands,
                vec![
                    cmd("add-mask", &[], "s3cret-token"),
                    cmd("add-mask", &[], "refreshed-token"),
                    cmd("error", &[("title", "Job failed")], "exit code 1"),
                ],
                "dotnet line splitting: {dotnet}"
            );
            assert_eq!(sim.stops.len(), 4);
            assert_eq!(sim.resumes, 4);
            assert!(!sim.stopped_at_end);
            let distinct: std::collections::BTreeSet<_> = sim.stops.iter().collect();
            assert_eq!(distinct.len(), sim.stops.len(), "tokens are reused");
            for shown in [
                "::error::x",
                "::add-mask::y",
                "  ::error title=t::indented",
                "##[add-mask]z",
                "::set-output name=a::b",
            ] {
                assert!(sim.text.iter().any(|t| t == shown), "{shown:?} not shown");
            }
        }
        // the job's bytes reach the log unchanged
        for chunk in [
            &b"\xff\xfe not utf-8\n"[..],
            b"partial line ",
            b"::warning::late\r::notice::after cr\n",
        ] {
            assert!(out.windows(chunk.len()).any(|w| w == chunk));
        }
    }

    /// The token of the first stop-commands line in `output`.
    fn first_token(output: &str) -> String {
        let start = output.find("::stop-commands::").unwrap() + "::stop-commands::".len();
        output[start..].lines().next().unwrap().to_owned()
    }

    #[test]
    fn a_job_that_learns_the_token_still_cannot_resume_commands() {
        let (ci, buf) = new_ci(Platform::GitHub, CiPaths::default());
        ci.print_untrusted(b"hello\n");
        let token = first_token(&buf.text());
        // token split across two chunks, in upper case (the runner ignores case)
        let upper = token.to_uppercase();
        ci.print_untrusted(format!("::{}", &upper[..10]).as_bytes());
        ci.print_untrusted(format!("{}::\n::error::pwned\n", &upper[10..]).as_bytes());
        // the whole token in one chunk
        let now = {
            let text = buf.text();
            let last = text.rfind("::stop-commands::").unwrap() + "::stop-commands::".len();
            text[last..].lines().next().unwrap().to_owned()
        };
        assert_ne!(now, token);
        ci.print_untrusted(format!("::{now}::\n::add-mask::pwned\n").as_bytes());
        ci.finish();

        let sim = simulate(&buf.bytes(), true);
        assert!(sim.commands.is_empty(), "{:?}", sim.commands);
        assert!(sim.text.iter().any(|t| t == "::error::pwned"));
        assert!(sim.text.iter().any(|t| t == "::add-mask::pwned"));
        assert!(!sim.stopped_at_end);
    }

    #[test]
    fn tokens_avoid_the_bytes_they_guard() {
        let mut candidates = vec!["cafe".to_owned(), "beef".to_owned()].into_iter();
        let token = random_token_avoiding(b"xx CAFE xx", || candidates.next().unwrap());
        assert_eq!(token, "beef");
        let token = random_hex();
        assert_eq!(token.len(), 2 * TOKEN_BYTES);
        assert_ne!(token, random_hex());
    }

    #[test]
    fn own_lines_that_look_like_commands_print_literally() {
        let (ci, buf) = new_ci(Platform::GitHub, CiPaths::default());
        ci.print_line("job 42 finished: COMPLETED");
        ci.print_line("reason: ::add-mask::evil");
        ci.mask("real");
        ci.finish();
        let sim = simulate(&buf.bytes(), true);
        assert_eq!(sim.commands, vec![cmd("add-mask", &[], "real")]);
        assert!(sim.text.iter().any(|t| t == "job 42 finished: COMPLETED"));
        assert!(sim.text.iter().any(|t| t == "reason: ::add-mask::evil"));
        // the plain line was not wrapped needlessly
        assert_eq!(
            buf.text().lines().next(),
            Some("job 42 finished: COMPLETED")
        );
    }

    #[test]
    fn annotation_text_is_escaped_and_parses_back_exactly() {
        assert_eq!(escape_data("50% done\r\nnext"), "50%25 done%0D%0Anext");
        assert_eq!(escape_data("a:b,c"), "a:b,c");
        assert_eq!(escape_property("a:b,c%\n"), "a%3Ab%2Cc%25%0A");

        let (ci, buf) = new_ci(Platform::GitHub, CiPaths::default());
        let title = "Slurm: FAILED, node=nid001 100%";
        let message = "line one: a, b\nline two %0A literal\r\n";
        ci.error(title, message);
        ci.warning("", "no title");
        ci.notice("n", "done");
        assert_eq!(
            buf.text(),
            "::error title=Slurm%3A FAILED%2C node=nid001 100%25::line one: a, b%0Aline two %250A literal%0D%0A\n\
             ::warning::no title\n::notice title=n::done\n"
        );
        let sim = simulate(&buf.bytes(), true);
        assert_eq!(
            sim.commands,
            vec![
                cmd("error", &[("title", title)], message),
                cmd("warning", &[], "no title"),
                cmd("notice", &[("title", "n")], "done"),
            ]
        );
    }

    #[test]
    fn gitlab_and_plain_annotations_are_marked_lines() {
        let (ci, buf) = new_ci(Platform::GitLab, CiPaths::default());
        ci.error("Job failed", "exit 2\nsee log");
        ci.warning("", "slow");
        assert_eq!(
            buf.text(),
            "\x1b[31;1mERROR: Job failed: exit 2\x1b[0m\n\x1b[31;1m  see log\x1b[0m\n\
             \x1b[33;1mWARNING: slow\x1b[0m\n"
        );
        let (ci, buf) = new_ci(Platform::Plain, CiPaths::default());
        ci.notice("Done", "ok");
        assert_eq!(buf.text(), "NOTICE: Done: ok\n");
    }

    #[test]
    fn gitlab_sections_have_the_exact_marker_format() {
        assert_eq!(
            gitlab_section_start(1700000000, "upload", "Uploading workspace"),
            "\x1b[0Ksection_start:1700000000:upload[collapsed=true]\r\x1b[0KUploading workspace"
        );
        assert_eq!(
            gitlab_section_end(1700000000, "upload"),
            "\x1b[0Ksection_end:1700000000:upload\r\x1b[0K"
        );
        assert_eq!(section_name("job log: 42/a b"), "job_log__42_a_b");
        assert_eq!(section_name("ok.name-1_2"), "ok.name-1_2");
        assert_eq!(section_name(""), "section");
        assert_eq!(one_line("a\nb\x1b[31m"), "a b [31m");

        let (ci, buf) = new_ci(Platform::GitLab, CiPaths::default());
        let before = unix_now();
        ci.group_start("job log", "Job output\n(streaming)");
        ci.print_untrusted(b"partial");
        ci.group_end("job log");
        let after = unix_now();
        let text = buf.text();
        let lines: Vec<&str> = text.split('\n').collect();
        let start = lines[0]
            .strip_prefix("\x1b[0Ksection_start:")
            .unwrap()
            .split_once(':')
            .unwrap();
        let ts: u64 = start.0.parse().unwrap();
        assert!(before <= ts && ts <= after);
        assert_eq!(
            start.1,
            "job_log[collapsed=true]\r\x1b[0KJob output (streaming)"
        );
        assert_eq!(lines[1], "partial");
        let end = lines[2]
            .strip_prefix("\x1b[0Ksection_end:")
            .unwrap()
            .split_once(':')
            .unwrap();
        assert!((before..=after).contains(&end.0.parse::<u64>().unwrap()));
        assert_eq!(end.1, "job_log\r\x1b[0K");
        assert_eq!(lines.len(), 4); // trailing newline
    }

    #[test]
    fn github_and_plain_groups() {
        let (ci, buf) = new_ci(Platform::GitHub, CiPaths::default());
        ci.print_untrusted(b"noise");
        ci.group_start("x", "Job 7: 100%\n");
        ci.group_end("x");
        ci.finish();
        let sim = simulate(&buf.bytes(), true);
        assert_eq!(
            sim.commands,
            vec![cmd("group", &[], "Job 7: 100%\n"), cmd("endgroup", &[], "")]
        );

        let (ci, buf) = new_ci(Platform::Plain, CiPaths::default());
        ci.group_start("x", "Upload");
        ci.group_end("x");
        assert_eq!(buf.text(), "==> Upload\n");
    }

    #[test]
    fn masks_only_on_github_and_per_line_for_multiline_values() {
        let (ci, buf) = new_ci(Platform::GitHub, CiPaths::default());
        ci.mask("");
        ci.mask("  ");
        ci.mask("a%b");
        ci.mask("line1\nline2");
        ci.mask_secret(&crate::secret::Secret::new("s"));
        let sim = simulate(&buf.bytes(), true);
        assert_eq!(
            sim.commands,
            vec![
                cmd("add-mask", &[], "a%b"),
                cmd("add-mask", &[], "line1\nline2"),
                cmd("add-mask", &[], "line1"),
                cmd("add-mask", &[], "line2"),
                cmd("add-mask", &[], "s"),
            ]
        );
        for platform in [Platform::GitLab, Platform::Plain] {
            let (ci, buf) = new_ci(platform, CiPaths::default());
            ci.mask("secret");
            ci.finish();
            assert!(buf.bytes().is_empty());
        }
    }

    /// GitHub's `$GITHUB_OUTPUT` format as the runner reads it (LF lines).
    fn parse_github_file(text: &str) -> BTreeMap<String, String> {
        fn read_line<'a>(text: &'a str, index: &mut usize) -> Option<(&'a str, bool)> {
            if *index >= text.len() {
                return None;
            }
            let start = *index;
            match text[start..].find('\n') {
                Some(lf) => {
                    *index = start + lf + 1;
                    Some((&text[start..start + lf], true))
                }
                None => {
                    *index = text.len();
                    Some((&text[start..], false))
                }
            }
        }
        let mut map = BTreeMap::new();
        let mut index = 0;
        while let Some((line, _)) = read_line(text, &mut index) {
            if line.is_empty() {
                continue;
            }
            let equals = line.find('=');
            let heredoc = line.find("<<");
            match (equals, heredoc) {
                (Some(e), h) if h.is_none_or(|h| e < h) => {
                    assert!(e > 0, "empty name in {line:?}");
                    map.insert(line[..e].to_owned(), line[e + 1..].to_owned());
                }
                (_, Some(h)) => {
                    let (name, delimiter) = (&line[..h], &line[h + 2..]);
                    assert!(!name.is_empty() && !delimiter.is_empty());
                    let start = index;
                    let mut end = index;
                    loop {
                        let (next, newline) =
                            read_line(text, &mut index).expect("matching delimiter not found");
                        if next == delimiter {
                            break;
                        }
                        assert!(newline, "EOF marker missing new line");
                        end = index - 1;
                    }
                    map.insert(name.to_owned(), text[start..end.max(start)].to_owned());
                }
                _ => panic!("invalid format {line:?}"),
            }
        }
        map
    }

    #[test]
    fn github_outputs_parse_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("github_output");
        // another step wrote before us, without a final newline
        std::fs::write(&path, "earlier=1").unwrap();
        let paths = CiPaths {
            github_output: Some(path.clone()),
            ..CiPaths::default()
        };
        let values: Vec<(&str, &str)> = vec![
            ("job-id", "123456"),
            ("empty", ""),
            ("equals", "a=b=c"),
            ("heredoc-like", "a<<EOF"),
            ("starts-heredoc", "<<EOF"),
            ("eof", "EOF"),
            ("multi", "first line\nEOF\nthird <<EOF\n"),
            ("only-newline", "\n"),
            ("crlf", "a\r\nb"),
            ("cr", "a\rb"),
            ("delimiter-like", "ghadelimiter_\nghadelimiter_0123"),
            ("unicode", "café ✓\nzwei"),
        ];
        // two `Ci`s: two steps appending to one file
        let (first, _) = new_ci(Platform::GitHub, paths.clone());
        let (second, _) = new_ci(Platform::GitHub, paths);
        for (i, (name, value)) in values.iter().enumerate() {
            let ci = if i % 2 == 0 { &first } else { &second };
            ci.set_output(name, value).unwrap();
        }
        let parsed = parse_github_file(&std::fs::read_to_string(&path).unwrap());
        let mut expected: BTreeMap<String, String> = values
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        expected.insert("earlier".into(), "1".into());
        assert_eq!(parsed, expected);
    }

    #[test]
    fn output_names_that_would_corrupt_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let (ci, _) = new_ci(
            Platform::GitHub,
            CiPaths {
                github_output: Some(path.clone()),
                ..CiPaths::default()
            },
        );
        for name in ["", "a=b", "a<<b", "a b", "a\nb"] {
            assert!(ci.set_output(name, "v").is_err(), "{name:?} accepted");
        }
        assert!(!path.exists());
    }

    #[test]
    fn write_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("github_output");
        let (ci, _) = new_ci(
            Platform::GitHub,
            CiPaths {
                github_output: Some(path.clone()),
                github_step_summary: Some(path.clone()),
                ..CiPaths::default()
            },
        );
        let err = format!("{:#}", ci.set_output("job-id", "1").unwrap_err());
        assert!(
            err.contains("job-id") && err.contains(&path.display().to_string()),
            "{err}"
        );
        let err = format!("{:#}", ci.append_summary("# hi").unwrap_err());
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    /// GitLab's dotenv reader: `^(.*?)=(.*)$` per line, both sides stripped,
    /// keys of letters, digits and `_`.
    fn parse_dotenv(text: &str) -> BTreeMap<String, String> {
        text.split_inclusive('\n')
            .map(|line| {
                let line = line.strip_suffix('\n').unwrap_or(line);
                assert!(!line.contains('\n'));
                let (key, value) = line.split_once('=').expect("Invalid Format");
                let key = key.trim();
                assert!(
                    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                    "bad key {key:?}"
                );
                (key.to_owned(), value.trim().to_owned())
            })
            .collect()
    }

    #[test]
    fn gitlab_dotenv_parses_back_and_refuses_what_gitlab_would_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firecrest.env");
        let paths = CiPaths {
            gitlab_dotenv: Some(path.clone()),
            ..CiPaths::default()
        };
        let (ci, _) = new_ci(Platform::GitLab, paths.clone());
        ci.set_output("job-id", "123456").unwrap();
        ci.set_output("state", "COMPLETED").unwrap();
        let (later, _) = new_ci(Platform::GitLab, paths);
        later.set_output("exit-code", "0").unwrap();
        later.set_output("reason", "a=b c").unwrap();
        later.set_output("empty", "").unwrap();
        for bad in ["two\nlines", "cr\r", " padded", "padded\t"] {
            let err = later.set_output("bad", bad).unwrap_err();
            assert!(format!("{err:#}").contains("bad"), "{err:#}");
        }
        let parsed = parse_dotenv(&std::fs::read_to_string(&path).unwrap());
        let expected: BTreeMap<String, String> = [
            ("FIRECREST_JOB_ID", "123456"),
            ("FIRECREST_JOB_STATE", "COMPLETED"),
            ("FIRECREST_JOB_EXIT_CODE", "0"),
            ("FIRECREST_JOB_REASON", "a=b c"),
            ("FIRECREST_JOB_EMPTY", ""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(parsed, expected);
    }

    #[test]
    fn plain_outputs_and_summary_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        let paths = CiPaths {
            github_output: Some(file.clone()),
            github_step_summary: Some(file.clone()),
            gitlab_dotenv: None,
        };
        let (ci, buf) = new_ci(Platform::Plain, paths.clone());
        ci.set_output("job-id", "1").unwrap();
        ci.append_summary("# x").unwrap();
        let (gitlab, _) = new_ci(Platform::GitLab, paths);
        gitlab.set_output("job-id", "1").unwrap();
        gitlab.append_summary("# x").unwrap();
        assert!(!file.exists());
        assert!(buf.bytes().is_empty());
    }

    fn summary_ci(path: &Path) -> Ci {
        new_ci(
            Platform::GitHub,
            CiPaths {
                github_step_summary: Some(path.to_owned()),
                ..CiPaths::default()
            },
        )
        .0
    }

    #[test]
    fn summary_appends_under_the_limit_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.md");
        let ci = summary_ci(&path);
        ci.append_summary("# Job 42\n").unwrap();
        ci.append_summary("| state | COMPLETED |").unwrap();
        ci.append_summary("done\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "# Job 42\n| state | COMPLETED |\ndone\n"
        );
    }

    #[test]
    fn summary_is_truncated_safely_at_one_mebibyte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.md");
        std::fs::write(&path, "# Earlier step text\n").unwrap();
        let ci = summary_ci(&path);
        // multi-byte characters everywhere, and a code block open at the cut
        let mut markdown = String::from("## Job output\n\n```text\n");
        while markdown.len() < 1_200_000 {
            markdown.push_str("é✓ line of job output ünïcödé\n");
        }
        markdown.push_str("```\n");
        ci.append_summary(&markdown).unwrap();
        ci.append_summary("## more\n").unwrap();

        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() as u64 <= SUMMARY_LIMIT, "{} bytes", bytes.len());
        assert!(
            bytes.len() as u64 > SUMMARY_LIMIT - 1024,
            "cut far too early"
        );
        let text = String::from_utf8(bytes).unwrap();
        let body = text.strip_prefix("# Earlier step text\n").unwrap();
        let body = body.strip_suffix(TRUNCATION_NOTE).unwrap();
        let kept = body.strip_suffix("```\n").unwrap();
        assert!(markdown.starts_with(kept));
        assert!(kept.ends_with('\n'));
        assert!(open_fence(body).is_none());
        assert!(!text.contains("## more"));
    }

    #[test]
    fn a_full_summary_gets_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.md");
        let nearly_full = "x".repeat(SUMMARY_LIMIT as usize - 10) + "\n";
        std::fs::write(&path, &nearly_full).unwrap();
        let ci = summary_ci(&path);
        ci.append_summary("a line that does not fit\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), nearly_full);
    }

    #[test]
    fn fences_are_tracked_like_commonmark() {
        assert_eq!(open_fence("```rust\ncode\n"), Some("```".into()));
        assert_eq!(open_fence("```\ncode\n```\n"), None);
        assert_eq!(open_fence("````\n```\n"), Some("````".into()));
        assert_eq!(open_fence("~~~\n```\n"), Some("~~~".into()));
        assert_eq!(open_fence("text ``` inline\n"), None);
    }

    #[test]
    fn detect_reads_the_platform_and_paths_from_the_environment() {
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let github = Ci::detect(
            &env(&[
                ("GITHUB_ACTIONS", "true"),
                ("GITHUB_OUTPUT", "/tmp/out"),
                ("GITHUB_STEP_SUMMARY", ""),
            ]),
            Some(PathBuf::from("ignored.env")),
        );
        assert_eq!(github.platform(), Platform::GitHub);
        assert_eq!(
            github.paths(),
            &CiPaths {
                github_output: Some(PathBuf::from("/tmp/out")),
                github_step_summary: None,
                gitlab_dotenv: None,
            }
        );
        let gitlab = Ci::detect(
            &env(&[("GITLAB_CI", "true"), ("GITHUB_OUTPUT", "/tmp/out")]),
            Some(PathBuf::from("firecrest.env")),
        );
        assert_eq!(gitlab.platform(), Platform::GitLab);
        assert_eq!(
            gitlab.paths().gitlab_dotenv,
            Some(PathBuf::from("firecrest.env"))
        );
        assert_eq!(gitlab.paths().github_output, None);
        let plain = Ci::detect(&env(&[("GITHUB_ACTIONS", "false"), ("CI", "true")]), None);
        assert_eq!(plain.platform(), Platform::Plain);
    }
}
