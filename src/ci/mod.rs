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
//!
//! `github.rs` holds GitHub's command syntax and the stop-commands guard,
//! `gitlab.rs` GitLab's section markers and dotenv records, `outputs.rs` the
//! step outputs, `summary.rs` the step summary and its 1 MiB limit.

mod github;
mod gitlab;
mod outputs;
mod summary;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use github::{
    escape_data, escape_property, looks_like_command, random_hex, random_token_avoiding, token_in,
};
use gitlab::{gitlab_section_end, gitlab_section_start, unix_now};

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
    pub(crate) struct Buf(pub(crate) Arc<Mutex<Vec<u8>>>);

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
        pub(crate) fn bytes(&self) -> Vec<u8> {
            self.0.lock().unwrap().clone()
        }
        pub(crate) fn text(&self) -> String {
            String::from_utf8(self.bytes()).unwrap()
        }
    }

    pub(crate) fn new_ci(platform: Platform, paths: CiPaths) -> (Ci, Buf) {
        let buf = Buf::default();
        (Ci::with_writer(platform, paths, Box::new(buf.clone())), buf)
    }

    // ---- a small model of the GitHub runner's command processor ----

    #[derive(Debug, Clone, PartialEq)]
    pub(crate) struct Cmd {
        pub(crate) name: String,
        pub(crate) props: BTreeMap<String, String>,
        pub(crate) data: String,
    }

    #[derive(Debug, Default)]
    pub(crate) struct Sim {
        /// Commands the runner executed (stop/resume excluded).
        pub(crate) commands: Vec<Cmd>,
        /// Lines shown as plain text.
        pub(crate) text: Vec<String>,
        /// Tokens of each stop-commands, in order.
        pub(crate) stops: Vec<String>,
        pub(crate) resumes: usize,
        pub(crate) stopped_at_end: bool,
    }

    pub(crate) const REGISTERED: &[&str] = &[
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

    pub(crate) fn unescape(text: &str, property: bool) -> String {
        let mut text = text.replace("%0D", "\r").replace("%0A", "\n");
        if property {
            text = text.replace("%3A", ":").replace("%2C", ",");
        }
        text.replace("%25", "%")
    }

    /// `::name k=v,k=v::data` after trimming leading space, as the runner parses it.
    pub(crate) fn parse_v2(line: &str, registered: &[String]) -> Option<Cmd> {
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
    pub(crate) fn parse_legacy(line: &str, registered: &[String]) -> Option<Cmd> {
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
    pub(crate) fn split_lines(bytes: &[u8], dotnet: bool) -> Vec<Vec<u8>> {
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

    pub(crate) fn simulate(output: &[u8], dotnet: bool) -> Sim {
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

    pub(crate) fn cmd(name: &str, props: &[(&str, &str)], data: &str) -> Cmd {
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
