//! Step outputs: GitHub's `$GITHUB_OUTPUT` records and GitLab's dotenv
//! file, for the tool's own outputs and those the job handed back.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::github::github_output_record;
use super::gitlab::{dotenv_line, dotenv_record, job_output_key};
use super::{Ci, Platform};

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

/// Opens `path` for appending; also returns its length and whether the last
/// byte is not a newline (an append must then start a new line).
pub(super) fn open_append(path: &Path) -> Result<(File, u64, bool)> {
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

impl Ci {
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
}

#[cfg(test)]
mod tests {
    use crate::ci::tests::*;
    use crate::ci::{CiPaths, Platform};
    use std::collections::BTreeMap;

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
}
