//! Writing the archive: deterministic tar entries streamed through parallel
//! gzip, with the sha256 computed while writing.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use gzp::deflate::Gzip;
use gzp::par::compress::{ParCompress, ParCompressBuilder};
use gzp::{Compression, ZWriter};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use crate::progress::Progress;

use super::git::{is_git_config, sanitize_git_config};
use super::walk::{absolute_in, build_globset, walk, Filters, Item};
use super::{PackOptions, PackReport, MAX_THREADS, PROGRESS_EVERY};

/// `.git/config` larger than this is not a config a checkout wrote.
const MAX_GIT_CONFIG: u64 = 1 << 20;

/// Packs the workspace described by `opts` into a tar.gz at `out`.
///
/// Fails as a whole (and removes `out`) if any file that should be packed
/// cannot be read: a partial workspace must never reach the cluster.
pub fn pack(opts: &PackOptions, out: &Path) -> Result<PackReport> {
    pack_watched(opts, out, |_| {})
}

/// [`pack`], calling `written` with the number of archive bytes in the file
/// each time more reach it: the bytes below that count are final, so an
/// uploader can send them while later ones are still being compressed.
pub fn pack_watched(
    opts: &PackOptions,
    out: &Path,
    written: impl Fn(u64) + Send + Sync + 'static,
) -> Result<PackReport> {
    let started = Instant::now();
    if opts.level > 9 {
        bail!("invalid compression level {}: use 0 to 9", opts.level);
    }
    let root = fs::canonicalize(&opts.root)
        .with_context(|| format!("failed to open workspace {}", opts.root.display()))?;
    if !root.is_dir() {
        bail!("workspace {} is not a directory", root.display());
    }
    let mut always = Vec::new();
    for path in opts
        .always_exclude
        .iter()
        .map(PathBuf::as_path)
        .chain([out])
    {
        always.push(absolute_in(&root, path));
    }
    let filters = Arc::new(Filters {
        root: root.clone(),
        include: build_globset(&opts.include).context("failed to parse include globs")?,
        exclude: build_globset(&opts.exclude).context("failed to parse exclude globs")?,
        always,
    });

    // Cheap pre-walk (metadata only) so progress can show percent and time left.
    let mut total = 0u64;
    walk(opts, &filters, false, &mut |item| {
        if item.meta.is_file() {
            total += item.meta.len();
        }
        Ok(())
    })?;

    let file =
        File::create(out).with_context(|| format!("failed to create archive {}", out.display()))?;
    let sink = BufWriter::with_capacity(256 * 1024, HashingWriter::new(file, Box::new(written)));
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, MAX_THREADS);
    let gz: ParCompress<'static, Gzip, _> = ParCompressBuilder::new()
        .num_threads(threads)
        .context("failed to set up gzip threads")?
        .compression_level(Compression::new(opts.level))
        .from_writer(sink);
    let mut builder = tar::Builder::new(NoFlush(gz));
    let mut progress = Progress::new("packing workspace", Some(total), PROGRESS_EVERY);
    let mut counts = Counts::default();

    let walked = walk(opts, &filters, true, &mut |item| {
        append_item(&mut builder, &item, &mut counts, &mut progress)
    });
    // Always close the pipeline: gzp's threads must be joined, and its Drop
    // would panic on a write error.
    let closed = builder
        .into_inner()
        .context("failed to finish the tar stream")
        .and_then(|NoFlush(mut gz)| gz.finish().context("failed to finish gzip compression"));
    let result = walked.and(closed).and_then(|sink| {
        sink.into_inner()
            .map_err(|err| err.into_error())
            .context("failed to write the archive")?
            .finish()
    });
    let (bytes_out, sha256) = match result {
        Ok(done) => done,
        Err(err) => {
            // Best effort: a half-written archive must not be uploaded by mistake.
            let _ = fs::remove_file(out);
            return Err(err.context(format!("failed to pack workspace {}", root.display())));
        }
    };
    progress.finish();
    Ok(PackReport {
        files: counts.files,
        dirs: counts.dirs,
        symlinks: counts.symlinks,
        skipped: counts.skipped,
        bytes_in: counts.bytes_in,
        bytes_out,
        sha256,
        elapsed: started.elapsed(),
    })
}

/// A header with owner 0:0, no user or group names, and the file's mode and mtime.
fn header_for(kind: EntryType, meta: &Metadata, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    let mode = if kind == EntryType::Symlink {
        0o777
    } else {
        meta.mode() & 0o7777
    };
    h.set_mode(mode);
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h
}

#[derive(Default)]
struct Counts {
    files: u64,
    dirs: u64,
    symlinks: u64,
    skipped: Vec<String>,
    bytes_in: u64,
}

fn append_item<W: Write>(
    builder: &mut tar::Builder<W>,
    item: &Item,
    counts: &mut Counts,
    progress: &mut Progress,
) -> Result<()> {
    let ft = item.meta.file_type();
    let name = item.rel.display();
    if ft.is_dir() {
        let mut h = header_for(EntryType::Directory, &item.meta, 0);
        builder
            .append_data(&mut h, &item.rel, io::empty())
            .with_context(|| format!("failed to add directory {name} to the archive"))?;
        counts.dirs += 1;
    } else if ft.is_symlink() {
        let target = fs::read_link(&item.abs)
            .with_context(|| format!("failed to read symlink {}", item.abs.display()))?;
        let mut h = header_for(EntryType::Symlink, &item.meta, 0);
        builder
            .append_link(&mut h, &item.rel, &target)
            .with_context(|| format!("failed to add symlink {name} to the archive"))?;
        counts.symlinks += 1;
    } else if ft.is_file() && item.in_git && is_git_config(&item.rel) {
        let mut raw = Vec::new();
        open_regular(&item.abs)?
            .take(MAX_GIT_CONFIG + 1)
            .read_to_end(&mut raw)
            .with_context(|| format!("failed to read {}", item.abs.display()))?;
        if raw.len() as u64 > MAX_GIT_CONFIG {
            bail!("{} is too large for a git config", item.abs.display());
        }
        let clean = sanitize_git_config(&raw);
        let mut h = header_for(EntryType::Regular, &item.meta, clean.len() as u64);
        builder
            .append_data(&mut h, &item.rel, clean.as_slice())
            .with_context(|| format!("failed to add {name} to the archive"))?;
        counts.files += 1;
        counts.bytes_in += raw.len() as u64;
        progress.advance(raw.len() as u64);
    } else if ft.is_file() {
        let file = open_regular(&item.abs)?;
        // Size and mode from the open file, not the earlier lstat.
        let meta = file
            .metadata()
            .with_context(|| format!("failed to read metadata of {}", item.abs.display()))?;
        let size = meta.len();
        let mut h = header_for(EntryType::Regular, &meta, size);
        let mut reader = Counted {
            inner: file.take(size),
            read: 0,
            progress,
        };
        builder
            .append_data(&mut h, &item.rel, &mut reader)
            .with_context(|| format!("failed to pack {}", item.abs.display()))?;
        if reader.read != size {
            // The tar stream already promised `size` bytes: it is broken now.
            bail!(
                "{} shrank while it was being packed ({} of {size} bytes)",
                item.abs.display(),
                reader.read
            );
        }
        let mut file = reader.inner.into_inner();
        if file.read(&mut [0u8; 1]).unwrap_or(0) > 0 {
            tracing::warn!(
                "{} grew while it was being packed; its first {size} bytes were packed",
                item.abs.display()
            );
        }
        counts.files += 1;
        counts.bytes_in += size;
    } else {
        let kind = if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_block_device() || ft.is_char_device() {
            "device"
        } else {
            "special file"
        };
        tracing::warn!(
            "skipping {kind} {:?}: only files, directories and symlinks are packed",
            item.rel
        );
        counts.skipped.push(item.rel.to_string_lossy().into_owned());
    }
    Ok(())
}

/// Opens a file to pack without following a symlink swapped in since the
/// walk and without blocking on a fifo, and checks it is a regular file.
fn open_regular(path: &Path) -> Result<File> {
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("failed to read metadata of {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "{} changed into a non-regular file while packing",
            path.display()
        );
    }
    Ok(file)
}

/// Counts what the tar builder reads from a file and feeds the progress line.
struct Counted<'a, R> {
    inner: R,
    read: u64,
    progress: &'a mut Progress,
}

/// Keeps gzp's block boundaries (and so the output bytes) independent of
/// when anyone calls `flush`: a flush would cut a short block.
struct NoFlush<W>(W);

/// Hashes and counts the compressed bytes as they reach the file, and says
/// how many are there.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
    notify: Box<dyn Fn(u64) + Send + Sync>,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W, notify: Box<dyn Fn(u64) + Send + Sync>) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
            notify,
        }
    }

    fn finish(mut self) -> Result<(u64, String)> {
        self.inner.flush().context("failed to write the archive")?;
        Ok((self.written, hex::encode(self.hasher.finalize())))
    }
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

impl<W: Write> Write for NoFlush<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        (self.notify)(self.written);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::fs::{self};

    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    use sha2::{Digest, Sha256};
    use tar::EntryType;

    use std::process::Command;

    use crate::workspace::tests::*;
    use crate::workspace::{pack, unpack_artifacts, PackOptions, UnpackReport};

    #[test]
    fn headers_keep_symlinks_modes_mtimes_and_no_owner() {
        let (tmp, root) = fixture();
        let (out, _) = pack_to(&opts(&root), tmp.path(), "a.tar.gz");
        let entries = list(&out);
        let get = |name: &str| {
            entries
                .get(name.as_bytes())
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        assert_eq!(get("link_in").kind, EntryType::Symlink);
        assert_eq!(get("link_in").link.as_deref(), Some(&b"a.txt"[..]));
        assert_eq!(get("link_abs").kind, EntryType::Symlink);
        assert_eq!(get("link_abs").link.as_deref(), Some(&b"/etc/passwd"[..]));
        assert!(get("link_abs").data.is_empty());
        assert_eq!(get("link_up").link.as_deref(), Some(&b"../outside"[..]));
        assert_eq!(get("run.sh").mode, 0o755);
        let a_mode = fs::metadata(root.join("a.txt")).unwrap().mode() & 0o7777;
        assert_eq!(get("a.txt").mode, a_mode);
        assert_eq!(get("a.txt").mtime, 1_000_000_000);
        assert_eq!(get("a.txt").data, b"alpha\n");
        assert_eq!(get("empty").kind, EntryType::Directory);
        for seen in entries.values() {
            assert_eq!((seen.uid, seen.gid), (0, 0));
            assert!(seen.user.is_empty());
        }
    }

    #[test]
    fn two_packs_are_byte_identical_and_checksummed() {
        let (tmp, root) = fixture();
        // Big enough for several gzip blocks, so thread scheduling could show.
        let noise: String = (0..200_000u32)
            .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
            .collect();
        write(&root.join("big.txt"), &noise);
        let (a, ra) = pack_to(&opts(&root), tmp.path(), "a.tar.gz");
        let (b, rb) = pack_to(&opts(&root), tmp.path(), "b.tar.gz");
        let (a, b) = (fs::read(a).unwrap(), fs::read(b).unwrap());
        assert!(a == b, "packs differ");
        assert_eq!(ra.sha256, rb.sha256);
        assert_eq!(ra.sha256, hex::encode(Sha256::digest(&a)));
        assert_eq!(ra.bytes_out, a.len() as u64);
        // gzip header: no file name, mtime 0.
        assert_eq!(&a[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(a[3], 0, "no FNAME/FEXTRA flags");
        assert_eq!(&a[4..8], &[0, 0, 0, 0]);
    }

    #[test]
    fn system_tar_extracts_the_same_tree() {
        let (tmp, root) = fixture();
        let mut o = opts(&root);
        o.include_git = true;
        let (out, _) = pack_to(&o, tmp.path(), "a.tar.gz");
        let dest = tmp.path().join("extracted");
        fs::create_dir(&dest).unwrap();
        let status = Command::new("tar")
            .arg("-xzf")
            .arg(&out)
            .arg("-C")
            .arg(&dest)
            .status()
            .unwrap();
        assert!(status.success());
        for name in list(&out).keys() {
            let rel = Path::new(OsStr::from_bytes(name));
            let (src, got) = (root.join(rel), dest.join(rel));
            let (sm, gm) = (
                fs::symlink_metadata(&src).unwrap(),
                fs::symlink_metadata(&got).unwrap(),
            );
            assert_eq!(sm.file_type(), gm.file_type(), "{rel:?}");
            if sm.file_type().is_symlink() {
                assert_eq!(fs::read_link(&src).unwrap(), fs::read_link(&got).unwrap());
                continue;
            }
            assert_eq!(sm.mode() & 0o7777, gm.mode() & 0o7777, "{rel:?}");
            assert_eq!(sm.mtime(), gm.mtime(), "{rel:?}");
            if sm.is_file() && !rel.starts_with(".git") {
                assert_eq!(fs::read(&src).unwrap(), fs::read(&got).unwrap(), "{rel:?}");
            }
        }
        assert!(dest.join(OsStr::from_bytes(b"caf\xe9.txt")).is_file());
        assert_eq!(
            fs::read_to_string(dest.join("two\nlines.txt")).unwrap(),
            "newline"
        );
        assert!(!dest.join("pipe").exists());
    }

    #[test]
    fn empty_workspace_gives_an_archive_that_extracts() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ws");
        fs::create_dir(&root).unwrap();
        let (out, report) = pack_to(&PackOptions::new(&root), tmp.path(), "e.tar.gz");
        assert_eq!(
            (report.files, report.dirs, report.symlinks, report.bytes_in),
            (0, 0, 0, 0)
        );
        assert!(list(&out).is_empty());
        let dest = tmp.path().join("x");
        fs::create_dir(&dest).unwrap();
        assert!(Command::new("tar")
            .arg("-xzf")
            .arg(&out)
            .arg("-C")
            .arg(&dest)
            .status()
            .unwrap()
            .success());
        assert_eq!(
            unpack_artifacts(&out, &dest.join("y")).unwrap(),
            UnpackReport::default()
        );
    }

    #[test]
    fn bad_input_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let err = pack(
            &PackOptions::new(tmp.path().join("nope")),
            &tmp.path().join("o.tar.gz"),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("nope"), "{err:#}");
        let mut o = PackOptions::new(tmp.path());
        o.level = 10;
        assert!(pack(&o, &tmp.path().join("o.tar.gz")).is_err());
    }

    #[test]
    fn unreadable_file_fails_the_pack_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        // Opening is where packing reads a file: the error names it.
        let err = open_regular(&tmp.path().join("gone.txt")).unwrap_err();
        assert!(format!("{err:#}").contains("gone.txt"), "{err:#}");
        if nix::unistd::geteuid().is_root() {
            return; // root reads mode-000 files; the open check above still ran
        }
        let root = tmp.path().join("ws");
        write(&root.join("locked.txt"), "x");
        fs::set_permissions(root.join("locked.txt"), fs::Permissions::from_mode(0o000)).unwrap();
        let out = tmp.path().join("o.tar.gz");
        let err = pack(&PackOptions::new(&root), &out).unwrap_err();
        assert!(format!("{err:#}").contains("locked.txt"), "{err:#}");
        assert!(!out.exists(), "a partial archive was left behind");
    }

    #[test]
    fn the_archive_never_packs_itself() {
        let (_tmp, root) = fixture();
        let out = root.join("self.tar.gz");
        pack(&opts(&root), &out).unwrap();
        assert!(!names(&out).contains("self.tar.gz"));
    }
}
