//! GitLab's syntax: collapsible section markers and dotenv records (what
//! `artifacts: reports: dotenv:` passes to later jobs as variables).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};

use super::one_line;

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
pub(super) fn job_output_key(name: &str) -> String {
    format!(
        "FIRECREST_OUTPUT_{}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

/// One dotenv line. GitLab reads `KEY=VALUE` per line and strips surrounding
/// whitespace, so values it would change are refused.
pub(super) fn dotenv_record(name: &str, value: &str) -> Result<String> {
    dotenv_line(&dotenv_key(name), name, value)
}

pub(super) fn dotenv_line(key: &str, name: &str, value: &str) -> Result<String> {
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

pub(super) fn unix_now() -> u64 {
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

pub(super) fn gitlab_section_start(timestamp: u64, id: &str, header: &str) -> String {
    format!(
        "\x1b[0Ksection_start:{timestamp}:{}[collapsed=true]\r\x1b[0K{}",
        section_name(id),
        one_line(header)
    )
}

pub(super) fn gitlab_section_end(timestamp: u64, id: &str) -> String {
    format!(
        "\x1b[0Ksection_end:{timestamp}:{}\r\x1b[0K",
        section_name(id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ci::tests::*;
    use crate::ci::{CiPaths, Platform};
    use std::collections::BTreeMap;

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
}
