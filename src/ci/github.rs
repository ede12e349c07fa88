//! GitHub's workflow-command syntax: escaping, what reads as a command, and
//! the unguessable stop-commands tokens that keep the job's output inert.

use rand::Rng;

/// Random bytes in a stop-commands token or heredoc delimiter (hex: twice as
/// many characters); 128 bits cannot be guessed by the job.
const TOKEN_BYTES: usize = 16;

/// Escapes command data (messages, titles of groups) for GitHub.
pub(super) fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a command property value (`title=...`) for GitHub.
pub(super) fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

/// Whether a line of `text` would be parsed as a GitHub command (current
/// `::name::` or legacy `##[name]` syntax; the runner trims leading space).
pub(super) fn looks_like_command(text: &str) -> bool {
    text.split(['\n', '\r']).any(|line| {
        let line = line.trim_start();
        line.starts_with("::") || line.starts_with("##[")
    })
}

/// Whether `token` occurs (ASCII case-insensitively, as the runner compares
/// it) in `bytes`, or across the boundary between `tail` and `bytes`.
pub(super) fn token_in(tail: &[u8], bytes: &[u8], token: &str) -> bool {
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

pub(super) fn random_hex() -> String {
    hex::encode(rand::thread_rng().gen::<[u8; TOKEN_BYTES]>())
}

/// A fresh token from `generate` that does not occur in `avoid`.
pub(super) fn random_token_avoiding(avoid: &[u8], mut generate: impl FnMut() -> String) -> String {
    loop {
        let token = generate();
        if !contains_ignore_case(avoid, token.as_bytes()) {
            return token;
        }
    }
}

/// One `$GITHUB_OUTPUT` record: `name=value`, or a heredoc with a random
/// delimiter that does not occur in the value when the value spans lines.
pub(super) fn github_output_record(name: &str, value: &str) -> String {
    if !value.contains(['\n', '\r']) {
        return format!("{name}={value}\n");
    }
    let delimiter = random_token_avoiding(value.as_bytes(), || {
        format!("ghadelimiter_{}", random_hex())
    });
    format!("{name}<<{delimiter}\n{value}\n{delimiter}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ci::tests::*;
    use crate::ci::{CiPaths, Platform};

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
}
