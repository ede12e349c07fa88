//! `.git/` config files as packed: without the credentials a checkout
//! leaves in them (`extraheader`, `user:token@` in remote URLs).

use std::ffi::OsStr;
use std::path::Path;

/// Git config files inside `.git/`: the repository's, submodules' (under
/// `.git/modules/`) and worktrees'.
pub(super) fn is_git_config(rel: &Path) -> bool {
    matches!(
        rel.file_name().and_then(OsStr::to_str),
        Some("config" | "config.worktree")
    )
}

/// The git config without credentials: every `extraheader` setting (where
/// actions/checkout leaves `AUTHORIZATION: basic <token>`), any line that
/// mentions an authorization header, and `user:password@` in URLs.
pub(super) fn sanitize_git_config(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut dropping_continuation = false;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        let continues = body.ends_with(b"\\");
        if dropping_continuation {
            dropping_continuation = continues;
            continue;
        }
        if is_credential_line(body) {
            dropping_continuation = continues;
            continue;
        }
        out.extend_from_slice(&strip_url_credentials(line));
    }
    out
}

fn is_credential_line(line: &[u8]) -> bool {
    let lower = line.to_ascii_lowercase();
    if contains(&lower, b"authorization") {
        return true;
    }
    // `[section] key = value` is valid git config: look past a header.
    let mut rest: &[u8] = &lower;
    if rest.trim_ascii_start().starts_with(b"[") {
        rest = match rest.iter().position(|&b| b == b']') {
            Some(end) => &rest[end + 1..],
            None => return false,
        };
    }
    let key = rest
        .split(|&b| b == b'=')
        .next()
        .unwrap_or(b"")
        .trim_ascii();
    key == b"extraheader"
}

pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Removes the user-info part of every `scheme://user-info@host` in `line`:
/// always for http(s) (a bare token is a user name there), for other
/// schemes only when it holds a password (`ssh://git@host` stays).
fn strip_url_credentials(line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        if line[i..].starts_with(b"://") {
            let scheme_start = line[..i]
                .iter()
                .rposition(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))
                .map_or(0, |p| p + 1);
            let scheme = line[scheme_start..i].to_ascii_lowercase();
            let auth_start = i + 3;
            let auth_len = line[auth_start..]
                .iter()
                .position(|b| {
                    matches!(b, b'/' | b'"' | b']' | b'\\' | b'?' | b'#') || b.is_ascii_whitespace()
                })
                .unwrap_or(line.len() - auth_start);
            let authority = &line[auth_start..auth_start + auth_len];
            out.extend_from_slice(b"://");
            match authority.iter().rposition(|&b| b == b'@') {
                Some(at) if scheme.starts_with(b"http") || authority[..at].contains(&b':') => {
                    out.extend_from_slice(&authority[at + 1..]);
                }
                _ => out.extend_from_slice(authority),
            }
            i = auth_start + auth_len;
        } else {
            out.push(line[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs::{self};

    use crate::workspace::tests::*;

    #[test]
    fn include_git_packs_git_without_credentials() {
        let (tmp, root) = fixture();
        let mut o = opts(&root);
        o.include_git = true;
        let (out, _) = pack_to(&o, tmp.path(), "a.tar.gz");
        let entries = list(&out);
        for name in [
            ".git",
            ".git/HEAD",
            ".git/objects/ab/cdef",
            ".git/config",
            ".git/modules/sub/config",
        ] {
            assert!(entries.contains_key(name.as_bytes()), "{name} missing");
        }
        let config = String::from_utf8(entries[&b".git/config"[..]].data.clone()).unwrap();
        assert_eq!(
            config,
            "[core]\n\tbare = false\n[remote \"origin\"]\n\turl = https://gitlab.example.com/g/p.git\n[http \"https://github.com/\"]\n"
        );
        let all: Vec<u8> = entries.values().flat_map(|s| s.data.clone()).collect();
        assert!(!contains(&all, b"eC1hY2Nlc3MtdG9rZW46c2VjcmV0"));
        assert!(!contains(&all, b"glcbt-secret"));
        // The workspace itself is untouched.
        assert!(fs::read_to_string(root.join(".git/config"))
            .unwrap()
            .contains("extraheader"));
    }

    #[test]
    fn git_config_sanitizer() {
        let raw = b"[http \"https://u:p@h/\"]\n\textraHeader = x \\\n  continued\n\tsslVerify = true\n[http] extraheader = y\n\
            [remote \"a\"]\n\turl = ssh://git@host/r.git\n\turl = https://TOKEN@github.com/o/r\n\
            \tpushurl = ftp://me:pw@ftp.example/x\n# Authorization: bearer z\n";
        let clean = String::from_utf8(sanitize_git_config(raw)).unwrap();
        assert_eq!(
            clean,
            "[http \"https://h/\"]\n\tsslVerify = true\n[remote \"a\"]\n\turl = ssh://git@host/r.git\n\turl = https://github.com/o/r\n\tpushurl = ftp://ftp.example/x\n"
        );
    }
}
