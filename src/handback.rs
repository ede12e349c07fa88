//! What the job hands back to CI: step outputs and step-summary Markdown.
//!
//! The batch script exports `FIRECREST_CI_OUTPUT` and `FIRECREST_CI_SUMMARY`,
//! two files in the run directory the job may append to (as a GitHub `run:`
//! step appends to `$GITHUB_OUTPUT` and `$GITHUB_STEP_SUMMARY`). After the job
//! the tool reads them back and passes them on. The output file is parsed
//! here, purely: `name=value` lines and GitHub's `name<<DELIMITER` blocks.
//! The job runs code CI does not control, so every name is checked, the
//! tool's own output names cannot be set, and sizes are bounded.

use anyhow::{bail, Result};

/// The job's output file, relative to the run directory.
pub const OUTPUT_FILE: &str = "firecrest-ci-output";
/// The job's summary file, relative to the run directory.
pub const SUMMARY_FILE: &str = "firecrest-ci-summary.md";

/// Most bytes read back from either file: GitHub keeps at most 1 MiB of a
/// step's summary, and outputs of that size are a mistake.
pub const MAX_BYTES: u64 = 1024 * 1024;

/// Output names the tool sets itself: the job cannot forge them.
pub const RESERVED: &[&str] = &["job-id", "state", "exit-code", "remote-dir", "log-file"];

/// One output the job set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutput {
    pub name: String,
    pub value: String,
}

/// The outputs in `text`, and one message per line or block refused.
/// Later values of a name win, as on GitHub.
pub fn parse_outputs(text: &str) -> (Vec<JobOutput>, Vec<String>) {
    let mut outputs: Vec<JobOutput> = Vec::new();
    let mut refused = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = if let Some((name, delimiter)) = heredoc_start(line) {
            let mut value: Vec<&str> = Vec::new();
            let mut closed = false;
            for (_, body) in lines.by_ref() {
                if body == delimiter {
                    closed = true;
                    break;
                }
                value.push(body);
            }
            if closed {
                check_name(name).map(|()| (name, value.join("\n")))
            } else {
                Err(anyhow::anyhow!(
                    "the block for {name:?} has no closing line {delimiter:?}"
                ))
            }
        } else if let Some((name, value)) = line.split_once('=') {
            check_name(name).map(|()| (name, value.to_string()))
        } else {
            Err(anyhow::anyhow!(
                "it is neither name=value nor name<<DELIMITER"
            ))
        };
        match parsed {
            Ok((name, value)) => {
                outputs.retain(|o| o.name != name);
                outputs.push(JobOutput {
                    name: name.to_string(),
                    value,
                });
            }
            Err(err) => refused.push(format!("line {number}: {err}")),
        }
    }
    (outputs, refused)
}

/// `name<<DELIMITER` with a delimiter of its own (not empty).
fn heredoc_start(line: &str) -> Option<(&str, &str)> {
    let (name, delimiter) = line.split_once("<<")?;
    (!delimiter.is_empty() && !name.contains('=')).then_some((name, delimiter))
}

/// Names a later step can use in `steps.<id>.outputs.<name>` and GitLab in
/// a dotenv key: letters, digits, `-` and `_`, starting with a letter or `_`.
fn check_name(name: &str) -> Result<()> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 100;
    if !valid {
        bail!(
            "{name:?} is not an output name (letters, digits, '-' and '_', starting with a letter)"
        );
    }
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        bail!("{name:?} is an output firecrest-ci sets itself");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(outputs: &[JobOutput]) -> Vec<(&str, &str)> {
        outputs
            .iter()
            .map(|o| (o.name.as_str(), o.value.as_str()))
            .collect()
    }

    #[test]
    fn reads_lines_and_blocks_and_the_last_value_wins() {
        let text = "gflops=812.5\nversion=1.2.3\nnotes<<EOF\nline one\nline=two\nEOF\n\nversion=1.2.4\nempty=\n";
        let (outputs, refused) = parse_outputs(text);
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(
            names(&outputs),
            [
                ("gflops", "812.5"),
                ("notes", "line one\nline=two"),
                ("version", "1.2.4"),
                ("empty", ""),
            ]
        );
    }

    #[test]
    fn refuses_hostile_names_and_the_tools_own_outputs() {
        let text = "state=COMPLETED\nexit-code=0\nEXIT-CODE=0\nbad name=x\n9lives=x\n=x\njust text\na/b=c\nok=1\n";
        let (outputs, refused) = parse_outputs(text);
        assert_eq!(names(&outputs), [("ok", "1")]);
        assert_eq!(refused.len(), 8, "{refused:?}");
        assert!(refused[0].contains("sets itself"), "{}", refused[0]);
    }

    #[test]
    fn an_unclosed_block_is_refused_whole() {
        let (outputs, refused) = parse_outputs("x<<END\nno end\nstate=forged\n");
        assert!(outputs.is_empty(), "{outputs:?}");
        assert_eq!(refused.len(), 1);
        assert!(refused[0].contains("no closing line"), "{}", refused[0]);
    }
}
