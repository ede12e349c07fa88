//! Unpacking the artifacts the job packed, safely: every entry that would
//! write or point outside the destination is skipped and reported, the rest
//! delivered.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};
use tar::EntryType;

use super::{SkippedEntry, UnpackReport};

/// Extracts the artifact archive at `archive` (tar.gz) into `dest`.
///
/// Skips, and lists in the report with the reason, every entry that would be
/// unsafe to unpack, and unpacks the rest: absolute and `..` names, symlinks
/// whose target is absolute or leaves `dest`, hard links to anything but a
/// regular file inside `dest`, devices, fifos and unknown kinds, and entries
/// whose existing parents include a symlink (made by the archive or already
/// in `dest`), so that no entry is ever written through a link. An entry
/// whose own path is a symlink replaces the link, never what it points to.
/// Only a corrupt archive (gzip or tar) or a failed write fails the whole
/// unpack. Existing files are replaced; modes are kept without
/// setuid/setgid/sticky bits; mtimes are kept.
pub fn unpack_artifacts(archive: &Path, dest: &Path) -> Result<UnpackReport> {
    let file = File::open(archive)
        .with_context(|| format!("failed to open artifact archive {}", archive.display()))?;
    fs::create_dir_all(dest)
        .with_context(|| format!("failed to create artifact directory {}", dest.display()))?;
    let gz = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(256 * 1024, file));
    let mut tar = tar::Archive::new(gz);
    let mut report = UnpackReport::default();
    // Directory modes and mtimes are set last: writing into a directory
    // changes its mtime, and a read-only mode would block the writes.
    let mut dirs: Vec<(PathBuf, u32, u64)> = Vec::new();
    let entries = tar
        .entries()
        .with_context(|| format!("failed to read artifact archive {}", archive.display()))?;
    for entry in entries {
        let mut entry = entry
            .with_context(|| format!("failed to read artifact archive {}", archive.display()))?;
        let raw_name = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        let link = match kind {
            EntryType::Symlink | EntryType::Link => entry.link_name_bytes().map(|l| l.into_owned()),
            _ => None,
        };
        let placed = place(&mut entry, dest, &raw_name, link.as_deref()).with_context(|| {
            format!(
                "failed to unpack artifact entry {:?}",
                String::from_utf8_lossy(&raw_name)
            )
        })?;
        match placed {
            Placed::File(bytes) => {
                report.files += 1;
                report.bytes += bytes;
            }
            Placed::Dir(dir, mode, mtime) => {
                report.dirs += 1;
                dirs.push((dir, mode, mtime));
            }
            Placed::Symlink => report.symlinks += 1,
            Placed::Hardlink => report.hardlinks += 1,
            Placed::Nothing => {}
            Placed::Skipped(why) => {
                // `./out/etc` reads as `out/etc`; an unsafe name as it is.
                let path = match safe_relative(&raw_name) {
                    Ok(rel) => rel.to_string_lossy().into_owned(),
                    Err(_) => String::from_utf8_lossy(&raw_name).into_owned(),
                };
                let skipped = SkippedEntry {
                    path,
                    link: link.map(|l| String::from_utf8_lossy(&l).into_owned()),
                    why,
                };
                // The caller names all of them in one warning.
                tracing::debug!("skipping artifact entry {skipped}");
                report.skipped.push(skipped);
            }
        }
    }
    for (dir, mode, mtime) in dirs.iter().rev() {
        // O_NOFOLLOW: what is at this path now is set, never a link's target.
        let set = OpenOptions::new()
            .read(true)
            .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_DIRECTORY).bits())
            .open(dir)
            .and_then(|d| {
                d.set_modified(UNIX_EPOCH + Duration::from_secs(*mtime))?;
                d.set_permissions(fs::Permissions::from_mode(*mode))
            });
        set.with_context(|| format!("failed to set mode and mtime of {}", dir.display()))?;
    }
    Ok(report)
}

/// What [`place`] made of one archive entry.
enum Placed {
    /// A regular file with this many bytes.
    File(u64),
    /// A directory, with the mode and mtime to set once everything is in.
    Dir(PathBuf, u32, u64),
    Symlink,
    Hardlink,
    /// Nothing to do: a pax header, or `./` (the destination itself).
    Nothing,
    /// Left out for this reason; nothing was written.
    Skipped(String),
}

/// In [`place`]: the value of a passed check, or a return with the entry
/// skipped for the check's reason.
macro_rules! or_skip {
    ($check:expr) => {
        match $check {
            Ok(value) => value,
            Err(why) => return Ok(Placed::Skipped(why.to_string())),
        }
    };
}

/// Unpacks one entry (`raw_name` and, for links, `link` as the archive
/// spells them) into `dest`, or says why it is skipped. Every check runs
/// before anything is written for the entry; an error is an I/O failure,
/// never an unsafe entry.
fn place<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    dest: &Path,
    raw_name: &[u8],
    link: Option<&[u8]>,
) -> Result<Placed> {
    let kind = entry.header().entry_type();
    if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
        return Ok(Placed::Nothing);
    }
    let rel = or_skip!(safe_relative(raw_name));
    if rel.as_os_str().is_empty() {
        return Ok(match kind {
            EntryType::Directory => Placed::Nothing,
            _ => Placed::Skipped("names the destination itself".to_owned()),
        });
    }
    let target = dest.join(&rel);
    let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
    let mtime = entry.header().mtime().unwrap_or(0);
    match kind {
        EntryType::Directory => {
            or_skip!(check_parents(dest, &rel));
            match fs::symlink_metadata(&target) {
                Ok(meta) if meta.is_dir() => {}
                // A file or a symlink of that name: replaced by the
                // directory (removing a symlink never touches its target).
                Ok(_) => remove_existing(&target)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => or_skip!(Err(inspect_failed(dest, &target, &e))),
            }
            fs::create_dir_all(&target)
                .with_context(|| format!("failed to create directory {}", target.display()))?;
            Ok(Placed::Dir(target, mode, mtime))
        }
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            or_skip!(check_parents(dest, &rel));
            or_skip!(check_replaceable(dest, &target));
            make_room(&target)?;
            // create_new + O_NOFOLLOW: even if something appeared at the path
            // since make_room, this never opens or follows it.
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                .open(&target)
                .with_context(|| format!("failed to create {}", target.display()))?;
            let n = io::copy(entry, &mut out)
                .with_context(|| format!("failed to write {}", target.display()))?;
            out.set_permissions(fs::Permissions::from_mode(mode))
                .with_context(|| format!("failed to set the mode of {}", target.display()))?;
            out.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
                .with_context(|| format!("failed to set the mtime of {}", target.display()))?;
            Ok(Placed::File(n))
        }
        EntryType::Symlink => {
            let link = or_skip!(link.ok_or("symlink without a target"));
            or_skip!(check_symlink_target(&rel, link));
            or_skip!(check_parents(dest, &rel));
            or_skip!(check_replaceable(dest, &target));
            make_room(&target)?;
            std::os::unix::fs::symlink(OsStr::from_bytes(link), &target)
                .with_context(|| format!("failed to create symlink {}", target.display()))?;
            let t = nix::sys::time::TimeSpec::new(mtime as i64, 0);
            // Best effort: not every file system keeps symlink times.
            let _ = nix::sys::stat::utimensat(
                None,
                &target,
                &t,
                &t,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            );
            Ok(Placed::Symlink)
        }
        EntryType::Link => {
            let link = or_skip!(link.ok_or("hard link without a target"));
            let src_rel = or_skip!(safe_relative(link).map_err(|why| match why {
                PathProblem::Absolute => "absolute link target",
                PathProblem::ParentDir => "link target contains `..`",
            }));
            if src_rel.as_os_str().is_empty() {
                return Ok(Placed::Skipped(
                    "hard link to the destination itself".to_owned(),
                ));
            }
            if src_rel == rel {
                return Ok(Placed::Skipped("hard link to itself".to_owned()));
            }
            or_skip!(check_parents(dest, &src_rel).map_err(|why| format!("link target {why}")));
            let src = dest.join(&src_rel);
            match fs::symlink_metadata(&src) {
                Ok(meta) if meta.is_file() => {}
                Ok(meta) if meta.is_dir() => or_skip!(Err("hard link to a directory")),
                // A hard link to a symlink is a second symlink whose relative
                // target would resolve from a different place.
                Ok(_) => or_skip!(Err("hard link to a symlink or special file")),
                Err(_) => or_skip!(Err("hard link to a file not in the destination")),
            }
            or_skip!(check_parents(dest, &rel));
            or_skip!(check_replaceable(dest, &target));
            make_room(&target)?;
            fs::hard_link(&src, &target)
                .with_context(|| format!("failed to create hard link {}", target.display()))?;
            Ok(Placed::Hardlink)
        }
        EntryType::Char => Ok(Placed::Skipped("character device".to_owned())),
        EntryType::Block => Ok(Placed::Skipped("block device".to_owned())),
        EntryType::Fifo => Ok(Placed::Skipped("fifo".to_owned())),
        other => Ok(Placed::Skipped(format!("unsupported entry type {other:?}"))),
    }
}

/// Why a name is not a safe relative path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathProblem {
    Absolute,
    ParentDir,
}

impl std::fmt::Display for PathProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathProblem::Absolute => "absolute path",
            PathProblem::ParentDir => "path contains `..`",
        })
    }
}

/// The entry name as a relative path: `.` components dropped, absolute
/// paths and `..` refused (even `a/../b`: a `..` after a name could climb
/// out through a symlink).
fn safe_relative(raw: &[u8]) -> std::result::Result<PathBuf, PathProblem> {
    let mut rel = PathBuf::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(PathProblem::ParentDir),
            Component::RootDir | Component::Prefix(_) => return Err(PathProblem::Absolute),
        }
    }
    Ok(rel)
}

/// A symlink may point only inside the destination: relative, with `..`
/// only as leading components and no more of them than the link is deep.
/// (`..` after a name could climb out through another symlink.)
fn check_symlink_target(rel: &Path, target: &[u8]) -> std::result::Result<(), &'static str> {
    if target.is_empty() {
        return Err("empty link target");
    }
    let depth = rel.components().count() - 1;
    let mut ups = 0;
    let mut seen_name = false;
    for c in Path::new(OsStr::from_bytes(target)).components() {
        match c {
            Component::RootDir | Component::Prefix(_) => return Err("absolute link target"),
            Component::ParentDir if seen_name => return Err("link target has `..` after a name"),
            Component::ParentDir => {
                ups += 1;
                if ups > depth {
                    return Err("link target leaves the destination");
                }
            }
            Component::CurDir => {}
            Component::Normal(_) => seen_name = true,
        }
    }
    Ok(())
}

/// Refuses a path whose existing parents include a symlink or a
/// non-directory: writing there would land wherever the symlink points
/// (an earlier entry of the archive, or something already in `dest`).
/// Checked with `symlink_metadata`, component by component, never followed.
fn check_parents(dest: &Path, rel: &Path) -> std::result::Result<(), String> {
    let mut path = dest.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for part in parent.components() {
        path.push(part);
        match fs::symlink_metadata(&path) {
            // The rest does not exist yet either: it will be created fresh.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(inspect_failed(dest, &path, &e)),
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!(
                    "goes through the symlink {}",
                    shown_in(dest, &path)
                ));
            }
            Ok(meta) if !meta.is_dir() => {
                return Err(format!("{} is not a directory", shown_in(dest, &path)));
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Refuses to put a file or link where a directory is: replacing a whole
/// tree is never what a stale artifact needs.
fn check_replaceable(dest: &Path, target: &Path) -> std::result::Result<(), String> {
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => Err("a directory of that name is in the way".to_owned()),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(inspect_failed(dest, target, &e)),
    }
}

/// Creates the parents of `target` (checked by [`check_parents`]) and
/// removes the file or symlink at `target`: artifacts replace stale copies,
/// and a symlink is replaced, never written through.
fn make_room(target: &Path) -> Result<()> {
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("failed to create directory {}", parent.display()))?;
    }
    if fs::symlink_metadata(target).is_ok() {
        remove_existing(target)?;
    }
    Ok(())
}

fn remove_existing(target: &Path) -> Result<()> {
    fs::remove_file(target).with_context(|| format!("failed to replace {}", target.display()))
}

/// `path` relative to `dest`, for skip reasons.
fn shown_in(dest: &Path, path: &Path) -> String {
    path.strip_prefix(dest)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// A skip reason for a path whose metadata could not be read.
fn inspect_failed(dest: &Path, path: &Path, err: &io::Error) -> String {
    format!("cannot inspect {}: {err}", shown_in(dest, path))
}

#[cfg(test)]
mod tests {

    use std::fs::{self, File};

    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};

    use tar::{EntryType, Header};

    use std::os::unix::fs::symlink;

    use crate::workspace::tests::*;
    use crate::workspace::{unpack_artifacts, SkippedEntry, UnpackReport};

    #[test]
    fn unpack_roundtrip_overwrites_and_keeps_modes_and_mtimes() {
        let (tmp, root) = fixture();
        // Links pointing outside are packed, but unpacking skips them.
        let (out, _) = pack_to(&opts(&root), tmp.path(), "a.tar.gz");
        let dest = tmp.path().join("dest");
        // A stale, read-only copy is replaced.
        write(&dest.join("a.txt"), "stale");
        fs::set_permissions(dest.join("a.txt"), fs::Permissions::from_mode(0o444)).unwrap();
        let report = unpack_artifacts(&out, &dest).unwrap();
        assert_eq!(fs::read_to_string(dest.join("a.txt")).unwrap(), "alpha\n");
        let meta = fs::metadata(dest.join("a.txt")).unwrap();
        assert_eq!(mtime_secs(meta.modified().unwrap()), 1_000_000_000);
        assert_eq!(
            fs::metadata(dest.join("run.sh")).unwrap().mode() & 0o7777,
            0o755
        );
        assert_eq!(
            fs::read_link(dest.join("link_in")).unwrap(),
            Path::new("a.txt")
        );
        assert!(dest.join("empty/nested").is_dir());
        assert_eq!(
            fs::read_to_string(dest.join("two\nlines.txt")).unwrap(),
            "newline"
        );
        assert_eq!((report.symlinks, report.hardlinks), (1, 0));
        assert_eq!(
            skips(&report),
            [
                ("link_abs", "absolute link target"),
                ("link_up", "link target leaves the destination")
            ]
        );
        assert!(fs::symlink_metadata(dest.join("link_abs")).is_err());
        assert!(report.files >= 8 && report.dirs >= 5, "{report:?}");
    }

    /// Name, kind, link target, contents, mode.
    type RawEntry<'a> = (&'a [u8], EntryType, Option<&'a [u8]>, &'a [u8], u32);

    /// Builds a tar.gz from raw headers, bypassing the tar crate's own
    /// path checks the way a hostile job could.
    fn hostile(dir: &Path, entries: &[RawEntry]) -> PathBuf {
        let path = dir.join("hostile.tar.gz");
        let gz = flate2::write::GzEncoder::new(
            File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        let mut b = tar::Builder::new(gz);
        for (name, kind, link, data, mode) in entries {
            let mut h = Header::new_gnu();
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name);
            if let Some(link) = link {
                gnu.linkname[..link.len()].copy_from_slice(link);
            }
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_size(data.len() as u64);
            h.set_mtime(1_234_567_890);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
        path
    }

    /// A destination beside an `outside` directory holding one file, with
    /// a symlink `preexisting -> outside` already in the destination.
    struct Sandbox {
        tmp: tempfile::TempDir,
        outside: PathBuf,
        dest: PathBuf,
    }

    impl Sandbox {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let outside = tmp.path().join("outside");
            let dest = tmp.path().join("dest");
            write(&outside.join("victim.txt"), "original\n");
            fs::create_dir(&dest).unwrap();
            symlink(&outside, dest.join("preexisting")).unwrap();
            Sandbox { tmp, outside, dest }
        }

        fn unpack(&self, entries: &[RawEntry]) -> UnpackReport {
            let archive = hostile(self.tmp.path(), entries);
            unpack_artifacts(&archive, &self.dest).unwrap()
        }

        /// Nothing was written outside the destination: `outside` holds its
        /// one file unchanged, and nothing appeared beside `dest`.
        fn assert_nothing_outside(&self) {
            let names = |dir: &Path| -> Vec<_> {
                let mut names: Vec<_> = fs::read_dir(dir)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                names.sort();
                names
            };
            assert_eq!(names(&self.outside), ["victim.txt"], "wrote outside");
            assert_eq!(
                fs::read_to_string(self.outside.join("victim.txt")).unwrap(),
                "original\n"
            );
            assert_eq!(
                names(self.tmp.path()),
                ["dest", "hostile.tar.gz", "outside"],
                "wrote beside dest"
            );
        }
    }

    /// The (path, why) pairs of the skipped entries.
    fn skips(report: &UnpackReport) -> Vec<(&str, &str)> {
        report
            .skipped
            .iter()
            .map(|s| (s.path.as_str(), s.why.as_str()))
            .collect()
    }

    /// Unpacking `entries` succeeds, skips exactly `offender` for `why`
    /// (a part of the reason), and writes nothing outside.
    fn assert_skipped(entries: &[RawEntry], offender: &str, why: &str) {
        let sandbox = Sandbox::new();
        let report = sandbox.unpack(entries);
        let skipped = skips(&report);
        assert!(
            skipped.len() == 1 && skipped[0].0 == offender && skipped[0].1.contains(why),
            "{offender}: {why}: {skipped:?}"
        );
        sandbox.assert_nothing_outside();
        assert_eq!(
            fs::read_link(sandbox.dest.join("preexisting")).unwrap(),
            sandbox.outside
        );
    }

    #[test]
    fn hostile_entries_are_skipped_alone() {
        use EntryType::*;
        assert_skipped(
            &[(b"../evil", Regular, None, b"x", 0o644)],
            "../evil",
            "path contains `..`",
        );
        assert_skipped(
            &[(b"ok/../../evil", Regular, None, b"x", 0o644)],
            "ok/../../evil",
            "path contains `..`",
        );
        assert_skipped(
            &[(b"/tmp/evil-abs", Regular, None, b"x", 0o644)],
            "/tmp/evil-abs",
            "absolute path",
        );
        assert!(!Path::new("/tmp/evil-abs").exists());
        assert_skipped(
            &[(b"up", Symlink, Some(b".."), b"", 0o777)],
            "up",
            "link target leaves the destination",
        );
        assert_skipped(
            &[(b"d/up", Symlink, Some(b"../../outside"), b"", 0o777)],
            "d/up",
            "link target leaves the destination",
        );
        assert_skipped(
            &[
                (b"d/x", Symlink, Some(b".."), b"", 0o777),
                (b"y", Symlink, Some(b"d/x/.."), b"", 0o777),
            ],
            "y",
            "`..` after a name",
        );
        assert_skipped(
            &[(b"e", Symlink, Some(b""), b"", 0o777)],
            "e",
            "symlink without a target",
        );
        // Writes through a symlink the archive made, pointing inside dest.
        assert_skipped(
            &[
                (b"real", Directory, None, b"", 0o755),
                (b"via", Symlink, Some(b"real"), b"", 0o777),
                (b"via/f", Regular, None, b"x", 0o644),
            ],
            "via/f",
            "goes through the symlink via",
        );
        // Writes through a symlink already in dest.
        assert_skipped(
            &[(b"preexisting/f", Regular, None, b"x", 0o644)],
            "preexisting/f",
            "goes through the symlink preexisting",
        );
        assert_skipped(
            &[(b"preexisting/d", Directory, None, b"", 0o755)],
            "preexisting/d",
            "goes through the symlink preexisting",
        );
        assert_skipped(
            &[(b"preexisting/s", Symlink, Some(b"x"), b"", 0o777)],
            "preexisting/s",
            "goes through the symlink preexisting",
        );
        assert_skipped(
            &[(b"h", Link, Some(b"../../etc/passwd"), b"", 0o644)],
            "h",
            "link target contains `..`",
        );
        assert_skipped(
            &[(b"h", Link, Some(b"/etc/passwd"), b"", 0o644)],
            "h",
            "absolute link target",
        );
        assert_skipped(
            &[(b"h", Link, Some(b"preexisting/victim.txt"), b"", 0o644)],
            "h",
            "link target goes through the symlink preexisting",
        );
        // A hard link to an in-tree symlink would be a copy of the link at
        // another depth, where `../..` leaves the destination.
        assert_skipped(
            &[
                (b"a/b/l", Symlink, Some(b"../../x"), b"", 0o777),
                (b"h", Link, Some(b"a/b/l"), b"", 0o644),
            ],
            "h",
            "hard link to a symlink",
        );
        assert_skipped(
            &[
                (b"f", Regular, None, b"x", 0o644),
                (b"f", Link, Some(b"f"), b"", 0o644),
            ],
            "f",
            "hard link to itself",
        );
        assert_skipped(
            &[
                (b"dir", Directory, None, b"", 0o755),
                (b"dir", Regular, None, b"x", 0o644),
            ],
            "dir",
            "a directory of that name is in the way",
        );
    }

    /// The case: one archive with every kind of unsafe entry beside
    /// safe ones. The safe ones arrive, each unsafe one is reported once
    /// with its reason, and nothing is written outside.
    #[test]
    fn unsafe_entries_are_skipped_and_the_rest_unpacked() {
        use EntryType::*;
        let sandbox = Sandbox::new();
        let outside = sandbox.outside.display().to_string();
        let abs_name = format!("{outside}/abs.txt");
        let archive: Vec<RawEntry> = vec![
            (b"out/", Directory, None, b"", 0o755),
            (b"out/ok.txt", Regular, None, b"all good\n", 0o644),
            (b"out/etc", Symlink, Some(b"/etc"), b"", 0o777),
            (b"out/up", Symlink, Some(b"../.."), b"", 0o777),
            (abs_name.as_bytes(), Regular, None, b"x", 0o644),
            (b"../outside/dotdot.txt", Regular, None, b"x", 0o644),
            (b"out/fifo", Fifo, None, b"", 0o644),
            (b"out/tty", Char, None, b"", 0o666),
            (b"out/passwd", Link, Some(b"/etc/passwd"), b"", 0o644),
            // In-tree links stay links.
            (b"out/run-42/log.txt", Regular, None, b"run 42\n", 0o644),
            (b"out/latest", Symlink, Some(b"run-42"), b"", 0o777),
            (b"out/same", Link, Some(b"out/ok.txt"), b"", 0o644),
            // Races: a skipped link, then a file through its name.
            (b"esc", Symlink, Some(outside.as_bytes()), b"", 0o777),
            (b"esc/evil", Regular, None, b"inside after all\n", 0o644),
            // A kept link, then a file through it.
            (b"out/latest/evil", Regular, None, b"x", 0o644),
            // A skipped link, a directory of its name, a file inside.
            (b"dd", Symlink, Some(b".."), b"", 0o777),
            (b"dd", Directory, None, b"", 0o755),
            (b"dd/f", Regular, None, b"in dd\n", 0o644),
            // A kept link, a directory of its name (replaces the link), a
            // file inside (lands in the new directory, not the link's target).
            (b"out/cur", Symlink, Some(b"run-42"), b"", 0o777),
            (b"out/cur", Directory, None, b"", 0o755),
            (b"out/cur/f", Regular, None, b"in cur\n", 0o644),
            // A file whose path is a symlink (from the archive, or already in
            // dest and pointing outside) replaces the link, not its target.
            (b"out/link2", Symlink, Some(b"ok.txt"), b"", 0o777),
            (b"out/link2", Regular, None, b"replaced\n", 0o644),
            (b"preexisting", Regular, None, b"replaced too\n", 0o644),
        ];
        let report = sandbox.unpack(&archive);
        let dest = &sandbox.dest;
        let read = |rel: &str| fs::read_to_string(dest.join(rel)).unwrap();
        assert_eq!(read("out/ok.txt"), "all good\n");
        assert_eq!(read("out/same"), "all good\n");
        assert_eq!(read("out/run-42/log.txt"), "run 42\n");
        assert_eq!(
            fs::read_link(dest.join("out/latest")).unwrap(),
            Path::new("run-42")
        );
        assert_eq!(read("esc/evil"), "inside after all\n");
        assert_eq!(read("dd/f"), "in dd\n");
        assert_eq!(read("out/cur/f"), "in cur\n");
        assert!(!dest.join("out/cur").is_symlink());
        assert!(!dest.join("out/run-42/f").exists());
        assert!(!dest.join("out/run-42/evil").exists());
        assert_eq!(read("out/link2"), "replaced\n");
        assert!(!dest.join("out/link2").is_symlink());
        assert_eq!(read("preexisting"), "replaced too\n");
        assert!(!dest.join("preexisting").is_symlink());
        for gone in ["out/etc", "out/up", "out/fifo", "out/tty", "out/passwd"] {
            assert!(fs::symlink_metadata(dest.join(gone)).is_err(), "{gone}");
        }
        assert!(!dest.join("esc").is_symlink() && !dest.join("dd").is_symlink());
        assert_eq!(
            skips(&report),
            [
                ("out/etc", "absolute link target"),
                ("out/up", "link target leaves the destination"),
                (abs_name.as_str(), "absolute path"),
                ("../outside/dotdot.txt", "path contains `..`"),
                ("out/fifo", "fifo"),
                ("out/tty", "character device"),
                ("out/passwd", "absolute link target"),
                ("esc", "absolute link target"),
                ("out/latest/evil", "goes through the symlink out/latest"),
                ("dd", "link target leaves the destination"),
            ]
        );
        assert_eq!(report.skipped[0].link.as_deref(), Some("/etc"));
        assert_eq!(report.skipped[2].link, None);
        assert_eq!(
            (report.files, report.symlinks, report.hardlinks),
            (7, 3, 1),
            "{report:?}"
        );
        sandbox.assert_nothing_outside();
    }

    #[test]
    fn corrupt_archives_still_fail() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        let garbage = tmp.path().join("garbage.tar.gz");
        fs::write(&garbage, b"this is not gzip at all").unwrap();
        let err = unpack_artifacts(&garbage, &dest).unwrap_err();
        assert!(
            format!("{err:#}").contains("failed to read artifact archive"),
            "{err:#}"
        );
        // A valid archive cut short inside a file's contents.
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let whole = hostile(
            tmp.path(),
            &[(b"big.bin", EntryType::Regular, None, &data, 0o644)],
        );
        let bytes = fs::read(&whole).unwrap();
        let cut = tmp.path().join("cut.tar.gz");
        fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = unpack_artifacts(&cut, &dest).unwrap_err();
        assert!(format!("{err:#}").contains("big.bin"), "{err:#}");
    }

    #[test]
    fn the_skipped_warning_names_ten_and_counts_the_rest() {
        let mut report = UnpackReport::default();
        assert_eq!(report.skipped_warning(), None);
        report.skipped.push(SkippedEntry {
            path: "out/etc".into(),
            link: Some("/etc".into()),
            why: "absolute link target".into(),
        });
        assert_eq!(
            report.skipped_warning().unwrap(),
            "skipped 1 unsafe artifact entry (the rest was unpacked): \
             out/etc -> /etc (absolute link target)"
        );
        for n in 0..11 {
            report.skipped.push(SkippedEntry {
                path: format!("dev{n}\n::error::x"),
                link: None,
                why: "fifo".into(),
            });
        }
        let warning = report.skipped_warning().unwrap();
        assert!(
            warning
                .starts_with("skipped 12 unsafe artifact entries (the rest was unpacked): out/etc"),
            "{warning}"
        );
        assert!(
            warning.ends_with("dev8\\n::error::x (fifo), and 2 more"),
            "{warning}"
        );
        assert!(!warning.contains('\n'), "{warning}");
    }

    #[test]
    fn unpack_skips_devices_and_strips_setuid() {
        use EntryType::*;
        let tmp = tempfile::tempdir().unwrap();
        let archive = hostile(
            tmp.path(),
            &[
                (b"./bin/tool", Regular, None, b"#!/bin/sh\n", 0o6755),
                (b"dev", Char, None, b"", 0o666),
                (b"fifo", Fifo, None, b"", 0o644),
                (b"bin/ok", Symlink, Some(b"../bin/tool"), b"", 0o777),
                (b"bin/hard", Link, Some(b"bin/tool"), b"", 0o644),
            ],
        );
        let dest = tmp.path().join("dest");
        let report = unpack_artifacts(&archive, &dest).unwrap();
        assert_eq!(
            skips(&report),
            [("dev", "character device"), ("fifo", "fifo")]
        );
        assert_eq!((report.files, report.symlinks, report.hardlinks), (1, 1, 1));
        assert!(!dest.join("dev").exists() && !dest.join("fifo").exists());
        let meta = fs::metadata(dest.join("bin/tool")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o755);
        assert_eq!(mtime_secs(meta.modified().unwrap()), 1_234_567_890);
        assert_eq!(fs::read(dest.join("bin/ok")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(fs::read(dest.join("bin/hard")).unwrap(), b"#!/bin/sh\n");
    }
}
