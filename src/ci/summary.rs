//! The GitHub step summary: appended Markdown, cut safely at GitHub's
//! 1 MiB limit (at a line boundary, with an open code fence closed).

use std::io::Write;

use anyhow::{Context, Result};

use super::outputs::open_append;
use super::{Ci, Platform};

/// GitHub refuses a step summary larger than this (1 MiB per step).
const SUMMARY_LIMIT: u64 = 1024 * 1024;

/// Appended where a summary had to be cut, so readers know text is missing.
const TRUNCATION_NOTE: &str = "\n> **Note**\n> firecrest-ci cut this summary short: \
GitHub accepts at most 1 MiB of summary per step.\n";

/// Bytes kept free when truncating, for a newline and a closing code fence.
const FENCE_RESERVE: usize = 32;

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

impl Ci {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ci::tests::*;
    use crate::ci::{Ci, CiPaths, Platform};
    use std::path::Path;

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
}
