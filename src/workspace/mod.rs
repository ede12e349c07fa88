//! The workspace as an archive, and artifacts back from one.
//!
//! [`pack`] walks the CI workspace (`.gitignore`/`.ignore`-aware, dotfiles
//! included, include/exclude globs), and streams a deterministic tar.gz to a
//! file: sorted entries, modes and mtimes kept, owner 0:0 without names,
//! symlinks kept as symlinks, empty directories kept, special files skipped.
//! Contents are streamed, never held whole, and gzip runs on every core
//! (gzp, one single-member gzip stream). The sha256 is computed while writing
//! so the job can check what it received. `.git/` is left out unless asked
//! for, and then its config files lose the CI token that checkouts leave in
//! them.
//!
//! [`unpack_artifacts`] is the way back: it extracts an archive the job made,
//! skipping (and reporting) every entry that would write or point outside
//! the destination, so one bad link does not cost the job its artifacts.
//!
//! Both are blocking; async callers wrap them in `spawn_blocking`.
//!
//! `walk.rs` chooses the paths, `pack.rs` writes the archive, `git.rs` takes
//! the credentials out of `.git/` config files, `unpack.rs` brings the
//! artifacts back; the options and reports live here.

mod git;
mod pack;
mod unpack;
mod walk;

pub use pack::{pack, pack_watched};
pub use unpack::unpack_artifacts;

use std::path::PathBuf;
use std::time::Duration;

/// Gzip level used when the user sets none. Measured (docs/packing.md):
/// level 3 is within 1 % of level 6's size for about 70 % of its CPU time;
/// level 1 is faster still but a quarter larger.
pub const DEFAULT_LEVEL: u32 = 3;

/// Shortest gap between two progress lines while packing.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// More compression threads than this only add buffered blocks, not speed
/// that a network upload could use.
const MAX_THREADS: usize = 8;

/// What to pack and how; built by the pipeline from the validated config.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// The workspace directory; must exist.
    pub root: PathBuf,
    /// If not empty, only paths matching one of these globs are packed.
    pub include: Vec<String>,
    /// Paths matching one of these globs are left out (with their contents).
    pub exclude: Vec<String>,
    /// Honour `.gitignore`, `.ignore` and `.git/info/exclude`.
    pub gitignore: bool,
    /// Pack the root's `.git/` too, with credentials removed from its config.
    pub include_git: bool,
    /// Paths never packed, whatever the globs say (e.g. the tool's own log
    /// file); absolute, or relative to `root`.
    pub always_exclude: Vec<PathBuf>,
    /// Gzip level, 0 (store) to 9 (smallest).
    pub level: u32,
}

impl PackOptions {
    /// The defaults the README documents: gitignore on, no `.git/`,
    /// [`DEFAULT_LEVEL`].
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            include: Vec::new(),
            exclude: Vec::new(),
            gitignore: true,
            include_git: false,
            always_exclude: Vec::new(),
            level: DEFAULT_LEVEL,
        }
    }
}

/// What went into the archive, for the CI log and the job-side checksum check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Special files (fifos, sockets, devices) left out, relative to the root.
    pub skipped: Vec<String>,
    /// Bytes of file contents read.
    pub bytes_in: u64,
    /// Size of the archive file.
    pub bytes_out: u64,
    /// Lower-case hex sha256 of the archive file.
    pub sha256: String,
    pub elapsed: Duration,
}

/// What [`unpack_artifacts`] wrote, for the CI log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// Entries left out because unpacking them would be unsafe, in archive
    /// order. One bad entry (a cluster's `latest -> /scratch/...`) must not
    /// cost the job every other artifact, so these are reported, not fatal.
    pub skipped: Vec<SkippedEntry>,
    /// Bytes of file contents written.
    pub bytes: u64,
}

/// Most skipped entries [`UnpackReport::skipped_warning`] names; a hostile
/// archive can hold millions, and the CI log needs only the first few.
const SKIPPED_NAMED: usize = 10;

impl UnpackReport {
    /// One line for the CI log naming the skipped entries (the first
    /// [`SKIPPED_NAMED`], then a count), or `None` when nothing was skipped.
    pub fn skipped_warning(&self) -> Option<String> {
        let count = self.skipped.len();
        if count == 0 {
            return None;
        }
        let entries = if count == 1 { "entry" } else { "entries" };
        let mut named: Vec<String> = self
            .skipped
            .iter()
            .take(SKIPPED_NAMED)
            .map(ToString::to_string)
            .collect();
        if count > SKIPPED_NAMED {
            named.push(format!("and {} more", count - SKIPPED_NAMED));
        }
        Some(format!(
            "skipped {count} unsafe artifact {entries} (the rest was unpacked): {}",
            named.join(", ")
        ))
    }
}

/// One archive entry [`unpack_artifacts`] left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedEntry {
    /// The entry's name (lossy UTF-8): without `./` and repeated slashes
    /// when it is a relative path, else as the archive spells it.
    pub path: String,
    /// The target of a symlink or hard link entry, as the archive spells it.
    pub link: Option<String>,
    /// Why it was left out, e.g. "absolute link target".
    pub why: String,
}

/// `out/etc -> /etc (absolute link target)`, with control characters
/// escaped: names come from the job, and a newline must not start a line of
/// its own in the CI log.
impl std::fmt::Display for SkippedEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |text: &str| -> String {
            text.chars()
                .map(|c| {
                    if c.is_control() {
                        c.escape_default().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect()
        };
        write!(f, "{}", shown(&self.path))?;
        if let Some(link) = &self.link {
            write!(f, " -> {}", shown(link))?;
        }
        write!(f, " ({})", self.why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::fs::{self, File};
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    use std::time::{Duration, UNIX_EPOCH};

    use tar::EntryType;

    use std::collections::{BTreeMap, BTreeSet};
    use std::os::unix::fs::symlink;

    use std::time::SystemTime;

    pub(crate) fn mtime_secs(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    /// What one archive entry says, keyed by its raw name.
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) struct Seen {
        pub(crate) kind: EntryType,
        pub(crate) mode: u32,
        pub(crate) mtime: u64,
        pub(crate) uid: u64,
        pub(crate) gid: u64,
        pub(crate) user: Vec<u8>,
        pub(crate) link: Option<Vec<u8>>,
        pub(crate) data: Vec<u8>,
    }

    pub(crate) fn list(archive: &Path) -> BTreeMap<Vec<u8>, Seen> {
        // GzDecoder (not Multi): the archive must be one gzip member.
        let gz = flate2::read::GzDecoder::new(File::open(archive).unwrap());
        let mut tar = tar::Archive::new(gz);
        let mut out = BTreeMap::new();
        for e in tar.entries().unwrap() {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            let h = e.header();
            let seen = Seen {
                kind: h.entry_type(),
                mode: h.mode().unwrap(),
                mtime: h.mtime().unwrap(),
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                user: h.username_bytes().unwrap_or_default().to_vec(),
                link: e.link_name_bytes().map(|l| l.into_owned()),
                data,
            };
            out.insert(e.path_bytes().into_owned(), seen);
        }
        out
    }

    pub(crate) fn names(archive: &Path) -> BTreeSet<String> {
        list(archive)
            .keys()
            .map(|k| String::from_utf8_lossy(k).trim_end_matches('/').to_owned())
            .collect()
    }

    pub(crate) fn write(path: &Path, data: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }

    pub(crate) const TOKEN_LINE: &str =
        "\textraheader = AUTHORIZATION: basic eC1hY2Nlc3MtdG9rZW46c2VjcmV0\n";

    /// A workspace with ignore files, dotfiles, symlinks, modes, an empty
    /// directory, a fifo, odd names and a `.git/` holding a CI token.
    pub(crate) fn fixture() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ws");
        write(&root.join(".gitignore"), "*.o\nbuild/\n");
        write(&root.join(".ignore"), "secret.txt\n");
        write(&root.join("a.txt"), "alpha\n");
        write(&root.join("x.o"), "object");
        write(&root.join("build/out.bin"), "built");
        write(&root.join("secret.txt"), "do not ship");
        write(&root.join("sub/.gitignore"), "local.txt\n");
        write(&root.join("sub/local.txt"), "local");
        write(&root.join("sub/keep.txt"), "keep");
        write(&root.join("sub/deep/more.rs"), "fn main() {}\n");
        write(&root.join(".hidden/dot.txt"), "dot");
        write(&root.join("run.sh"), "#!/bin/sh\necho hi\n");
        fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir_all(root.join("empty/nested")).unwrap();
        symlink("a.txt", root.join("link_in")).unwrap();
        symlink("/etc/passwd", root.join("link_abs")).unwrap();
        symlink("../outside", root.join("link_up")).unwrap();
        write(&tmp.path().join("outside/o.txt"), "outside the workspace");
        nix::unistd::mkfifo(
            &root.join("pipe"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        fs::write(root.join(OsStr::from_bytes(b"caf\xe9.txt")), "latin1").unwrap();
        fs::write(root.join("two\nlines.txt"), "newline").unwrap();
        write(&root.join("firecrest-ci.log"), "log");
        let old = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        File::options()
            .write(true)
            .open(root.join("a.txt"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        // A checkout's .git/, token and all.
        write(&root.join(".git/HEAD"), "ref: refs/heads/main\n");
        write(&root.join(".git/objects/ab/cdef"), "blob");
        write(
            &root.join(".git/config"),
            &format!(
                "[core]\n\tbare = false\n[remote \"origin\"]\n\turl = https://gitlab-ci-token:glcbt-secret@gitlab.example.com/g/p.git\n[http \"https://github.com/\"]\n{TOKEN_LINE}"
            ),
        );
        write(
            &root.join(".git/modules/sub/config"),
            &format!("[http]\n{TOKEN_LINE}"),
        );
        (tmp, root)
    }

    pub(crate) fn opts(root: &Path) -> PackOptions {
        let mut o = PackOptions::new(root);
        o.always_exclude = vec![PathBuf::from("firecrest-ci.log")];
        o
    }

    pub(crate) fn pack_to(o: &PackOptions, dir: &Path, name: &str) -> (PathBuf, PackReport) {
        let out = dir.join(name);
        let report = pack(o, &out).unwrap();
        (out, report)
    }
}
