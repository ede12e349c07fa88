//! Walking the workspace: which paths go into the archive (`.gitignore` and
//! `.ignore` rules, the include/exclude globs, `.git/` only when asked for).

use std::fs::{self, Metadata};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use ignore::WalkBuilder;

use super::PackOptions;

/// `path` as an absolute path, resolving symlinked parents so it compares
/// equal to the paths the walk produces under the canonical root.
pub(super) fn absolute_in(root: &Path, path: &Path) -> PathBuf {
    let joined = root.join(path);
    if let Ok(canonical) = fs::canonicalize(&joined) {
        return canonical;
    }
    match (joined.parent(), joined.file_name()) {
        (Some(parent), Some(name)) => fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or(joined),
        _ => joined,
    }
}

/// Which paths the walk keeps; shared with the walker's filter callback.
pub(super) struct Filters {
    pub(super) root: PathBuf,
    pub(super) include: Option<GlobSet>,
    pub(super) exclude: Option<GlobSet>,
    /// Absolute paths never packed.
    pub(super) always: Vec<PathBuf>,
}

impl Filters {
    /// False for paths pruned with everything below them.
    fn keep(&self, abs: &Path, in_git_walk: bool) -> bool {
        let Ok(rel) = abs.strip_prefix(&self.root) else {
            return true;
        };
        if rel.as_os_str().is_empty() {
            return true;
        }
        // Only the root's .git is ever packed, and only by its own walk.
        if !in_git_walk && rel.components().any(|c| c.as_os_str() == ".git") {
            return false;
        }
        if self.always.iter().any(|p| p == abs) {
            return false;
        }
        !self.exclude.as_ref().is_some_and(|set| set.is_match(rel))
    }

    fn included(&self, rel: &Path) -> bool {
        self.include.as_ref().is_none_or(|set| set.is_match(rel))
    }
}

/// Globs relative to the workspace root: `*` stays inside one path
/// component, `**` crosses them; `./`, a leading `/` and a trailing `/` are
/// ignored; blank lines are skipped.
pub(super) fn build_globset(patterns: &[String]) -> Result<Option<GlobSet>> {
    let mut builder = GlobSetBuilder::new();
    let mut any = false;
    for raw in patterns {
        let pattern = normalize_pattern(raw);
        if pattern.is_empty() {
            continue;
        }
        let glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .with_context(|| format!("invalid glob {raw:?}"))?;
        builder.add(glob);
        any = true;
    }
    if !any {
        return Ok(None);
    }
    Ok(Some(builder.build().context("failed to compile globs")?))
}

fn normalize_pattern(raw: &str) -> &str {
    let mut p = raw.trim();
    while let Some(rest) = p.strip_prefix("./") {
        p = rest;
    }
    p = p.trim_start_matches('/');
    p.trim_end_matches('/')
}

/// One path the walk decided to pack.
#[derive(Clone)]
pub(super) struct Item {
    /// Relative to the root; never empty.
    pub(super) rel: PathBuf,
    pub(super) abs: PathBuf,
    /// From lstat: symlinks are not followed.
    pub(super) meta: Metadata,
    /// Inside the root's `.git/`, whose config files are sanitized.
    pub(super) in_git: bool,
}

/// Calls `visit` for every path to pack, in a stable order: the workspace
/// depth-first with names sorted bytewise, then `.git/` when asked for.
pub(super) fn walk(
    opts: &PackOptions,
    filters: &Arc<Filters>,
    warn: bool,
    visit: &mut dyn FnMut(Item) -> Result<()>,
) -> Result<()> {
    let root = &filters.root;
    let mut wb = WalkBuilder::new(root);
    // standard_filters(false) clears every default (hidden files, parents,
    // global gitignore); then only the workspace's own ignore files come back.
    // The global gitignore would look up the home directory: never.
    wb.standard_filters(false)
        .hidden(false)
        .parents(false)
        .git_global(false)
        .git_ignore(opts.gitignore)
        .git_exclude(opts.gitignore)
        .ignore(opts.gitignore)
        .require_git(false)
        .follow_links(false)
        .sort_by_file_name(|a, b| a.cmp(b));
    let f = Arc::clone(filters);
    wb.filter_entry(move |e| f.keep(e.path(), false));

    // Directories on the current path. With include globs a directory is
    // packed only once something in it is (`emitted`), and everything below
    // a directory that matches a glob is included (`matched`).
    struct Open {
        item: Item,
        matched: bool,
        emitted: bool,
    }
    let mut stack: Vec<Open> = Vec::new();
    for result in wb.build() {
        let Some(entry) = walk_entry(result, warn)? else {
            continue;
        };
        if entry.depth() == 0 {
            continue;
        }
        let item = item_for(root, entry.path(), false)?;
        stack.truncate(entry.depth() - 1);
        let included = stack.last().is_some_and(|dir| dir.matched) || filters.included(&item.rel);
        if included {
            for dir in stack.iter_mut().filter(|dir| !dir.emitted) {
                visit(dir.item.clone())?;
                dir.emitted = true;
            }
        }
        if item.meta.is_dir() {
            if included {
                visit(item.clone())?;
            }
            stack.push(Open {
                item,
                matched: included,
                emitted: included,
            });
        } else if included {
            visit(item)?;
        }
    }

    let git = root.join(".git");
    if opts.include_git && fs::symlink_metadata(&git).is_ok() && filters.keep(&git, true) {
        let mut wb = WalkBuilder::new(&git);
        wb.standard_filters(false)
            .follow_links(false)
            .sort_by_file_name(|a, b| a.cmp(b));
        let f = Arc::clone(filters);
        wb.filter_entry(move |e| f.keep(e.path(), true));
        for result in wb.build() {
            if let Some(entry) = walk_entry(result, warn)? {
                visit(item_for(root, entry.path(), true)?)?;
            }
        }
    }
    Ok(())
}

/// Unreadable directories fail the pack; a malformed ignore file only warns
/// (git itself skips bad lines), and only when `warn` (once per pack, not
/// again in the pre-walk).
fn walk_entry(
    result: std::result::Result<ignore::DirEntry, ignore::Error>,
    warn: bool,
) -> Result<Option<ignore::DirEntry>> {
    match result {
        Ok(entry) => {
            if let (Some(err), true) = (entry.error(), warn) {
                tracing::warn!("ignoring a problem with an ignore file: {err}");
            }
            Ok(Some(entry))
        }
        Err(err) if err.io_error().is_some() => {
            Err(anyhow::Error::new(err).context("failed to read the workspace"))
        }
        Err(err) => {
            if warn {
                tracing::warn!("ignoring a problem with an ignore file: {err}");
            }
            Ok(None)
        }
    }
}

fn item_for(root: &Path, abs: &Path, in_git: bool) -> Result<Item> {
    let meta = fs::symlink_metadata(abs)
        .with_context(|| format!("failed to read metadata of {}", abs.display()))?;
    let rel = abs.strip_prefix(root).unwrap_or(abs).to_path_buf();
    Ok(Item {
        rel,
        abs: abs.to_path_buf(),
        meta,
        in_git,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs::{self};

    use tar::EntryType;

    use std::collections::BTreeSet;

    use crate::workspace::tests::*;

    #[test]
    fn packs_what_git_would_and_nothing_ignored() {
        let (tmp, root) = fixture();
        let (out, report) = pack_to(&opts(&root), tmp.path(), "a.tar.gz");
        let names = names(&out);
        for present in [
            ".gitignore",
            ".ignore",
            "a.txt",
            "sub",
            "sub/.gitignore",
            "sub/keep.txt",
            "sub/deep/more.rs",
            ".hidden/dot.txt",
            "run.sh",
            "empty",
            "empty/nested",
            "link_in",
            "link_abs",
            "link_up",
            "two\nlines.txt",
            "caf\u{fffd}.txt",
        ] {
            assert!(
                names.contains(present),
                "{present:?} missing from {names:?}"
            );
        }
        for absent in [
            "x.o",
            "build",
            "build/out.bin",
            "secret.txt",
            "sub/local.txt",
            "pipe",
            "firecrest-ci.log",
            ".git",
            ".git/HEAD",
        ] {
            assert!(!names.contains(absent), "{absent:?} should not be packed");
        }
        // Nothing outside the workspace came in through link_up.
        assert!(!names.iter().any(|n| n.contains("o.txt")));
        assert_eq!(report.skipped, vec!["pipe".to_owned()]);
        assert_eq!(report.symlinks, 3);
        assert_eq!(
            report.files,
            names.len() as u64 - report.dirs - report.symlinks
        );
        let expected_in: u64 = list(&out)
            .values()
            .filter(|s| s.kind == EntryType::Regular)
            .map(|s| s.data.len() as u64)
            .sum();
        assert_eq!(report.bytes_in, expected_in);
    }

    #[test]
    fn a_bad_ignore_line_does_not_stop_the_rest() {
        let (tmp, root) = fixture();
        write(&root.join("sub/.gitignore"), "[unclosed\nlocal.txt\n");
        let (out, _) = pack_to(&opts(&root), tmp.path(), "a.tar.gz");
        let names = names(&out);
        assert!(names.contains("sub/keep.txt") && !names.contains("sub/local.txt"));
    }

    #[test]
    fn gitignore_off_packs_ignored_files() {
        let (tmp, root) = fixture();
        let mut o = opts(&root);
        o.gitignore = false;
        let (out, _) = pack_to(&o, tmp.path(), "a.tar.gz");
        let names = names(&out);
        for present in ["x.o", "build/out.bin", "secret.txt", "sub/local.txt"] {
            assert!(names.contains(present), "{present:?} missing");
        }
        assert!(!names.contains(".git/HEAD"));
    }

    #[test]
    fn ignore_files_work_outside_a_git_repository() {
        let (tmp, root) = fixture();
        fs::remove_dir_all(root.join(".git")).unwrap();
        let (out, _) = pack_to(&opts(&root), tmp.path(), "a.tar.gz");
        let names = names(&out);
        assert!(names.contains("a.txt") && names.contains("sub/keep.txt"));
        for absent in ["x.o", "build/out.bin", "secret.txt", "sub/local.txt"] {
            assert!(!names.contains(absent), "{absent:?} should not be packed");
        }
    }

    #[test]
    fn include_globs_pack_only_matches_and_their_parents() {
        let (tmp, root) = fixture();
        let mut o = opts(&root);
        o.include = vec!["**/*.rs".into(), "./run.sh".into(), "empty/".into()];
        let (out, report) = pack_to(&o, tmp.path(), "a.tar.gz");
        let expected: BTreeSet<String> = [
            "sub",
            "sub/deep",
            "sub/deep/more.rs",
            "run.sh",
            "empty",
            "empty/nested",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(names(&out), expected);
        assert_eq!((report.files, report.dirs), (2, 4));
    }

    #[test]
    fn exclude_globs_drop_matches_and_directory_contents() {
        let (tmp, root) = fixture();
        let mut o = opts(&root);
        o.exclude = vec!["sub".into(), "*.sh".into(), "**/dot.txt".into()];
        let (out, _) = pack_to(&o, tmp.path(), "a.tar.gz");
        let names = names(&out);
        assert!(!names.iter().any(|n| n.starts_with("sub")), "{names:?}");
        assert!(!names.contains("run.sh") && !names.contains(".hidden/dot.txt"));
        assert!(names.contains(".hidden") && names.contains("a.txt"));
        // `*` does not cross `/`: only top-level matches.
        let mut o = opts(&root);
        o.exclude = vec!["*.txt".into()];
        let (out, _) = pack_to(&o, tmp.path(), "b.tar.gz");
        let names = self::names(&out);
        assert!(!names.contains("a.txt") && names.contains("sub/keep.txt"));
        assert!(build_globset(&["a[".into()]).is_err());
    }

    #[test]
    fn pattern_normalization() {
        assert_eq!(normalize_pattern(" ./src/ "), "src");
        assert_eq!(normalize_pattern("/build/**"), "build/**");
        assert_eq!(normalize_pattern("  "), "");
        assert!(build_globset(&["".into(), " ".into()]).unwrap().is_none());
    }
}
