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

use std::ffi::OsStr;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use gzp::deflate::Gzip;
use gzp::par::compress::{ParCompress, ParCompressBuilder};
use gzp::{Compression, ZWriter};
use ignore::WalkBuilder;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use crate::progress::Progress;

/// Gzip level used when the user sets none. Measured (docs/packing.md):
/// level 3 is within 1 % of level 6's size for about 70 % of its CPU time;
/// level 1 is faster still but a quarter larger.
pub const DEFAULT_LEVEL: u32 = 3;

/// Shortest gap between two progress lines while packing.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// More compression threads than this only add buffered blocks, not speed
/// that a network upload could use.
const MAX_THREADS: usize = 8;

/// `.git/config` larger than this is not a config a checkout wrote.
const MAX_GIT_CONFIG: u64 = 1 << 20;

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

/// `path` as an absolute path, resolving symlinked parents so it compares
/// equal to the paths the walk produces under the canonical root.
fn absolute_in(root: &Path, path: &Path) -> PathBuf {
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

#[derive(Default)]
struct Counts {
    files: u64,
    dirs: u64,
    symlinks: u64,
    skipped: Vec<String>,
    bytes_in: u64,
}

/// Which paths the walk keeps; shared with the walker's filter callback.
struct Filters {
    root: PathBuf,
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    /// Absolute paths never packed.
    always: Vec<PathBuf>,
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
fn build_globset(patterns: &[String]) -> Result<Option<GlobSet>> {
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
struct Item {
    /// Relative to the root; never empty.
    rel: PathBuf,
    abs: PathBuf,
    /// From lstat: symlinks are not followed.
    meta: Metadata,
    /// Inside the root's `.git/`, whose config files are sanitized.
    in_git: bool,
}

/// Calls `visit` for every path to pack, in a stable order: the workspace
/// depth-first with names sorted bytewise, then `.git/` when asked for.
fn walk(
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

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

/// Keeps gzp's block boundaries (and so the output bytes) independent of
/// when anyone calls `flush`: a flush would cut a short block.
struct NoFlush<W>(W);

impl<W: Write> Write for NoFlush<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

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

/// Git config files inside `.git/`: the repository's, submodules' (under
/// `.git/modules/`) and worktrees'.
fn is_git_config(rel: &Path) -> bool {
    matches!(
        rel.file_name().and_then(OsStr::to_str),
        Some("config" | "config.worktree")
    )
}

/// The git config without credentials: every `extraheader` setting (where
/// actions/checkout leaves `AUTHORIZATION: basic <token>`), any line that
/// mentions an authorization header, and `user:password@` in URLs.
fn sanitize_git_config(raw: &[u8]) -> Vec<u8> {
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

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
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
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::os::unix::fs::symlink;
    use std::process::Command;
    use std::time::SystemTime;

    fn mtime_secs(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    /// What one archive entry says, keyed by its raw name.
    #[derive(Debug, Clone, PartialEq)]
    struct Seen {
        kind: EntryType,
        mode: u32,
        mtime: u64,
        uid: u64,
        gid: u64,
        user: Vec<u8>,
        link: Option<Vec<u8>>,
        data: Vec<u8>,
    }

    fn list(archive: &Path) -> BTreeMap<Vec<u8>, Seen> {
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

    fn names(archive: &Path) -> BTreeSet<String> {
        list(archive)
            .keys()
            .map(|k| String::from_utf8_lossy(k).trim_end_matches('/').to_owned())
            .collect()
    }

    fn write(path: &Path, data: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }

    const TOKEN_LINE: &str = "\textraheader = AUTHORIZATION: basic eC1hY2Nlc3MtdG9rZW46c2VjcmV0\n";

    /// A workspace with ignore files, dotfiles, symlinks, modes, an empty
    /// directory, a fifo, odd names and a `.git/` holding a CI token.
    fn fixture() -> (tempfile::TempDir, PathBuf) {
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

    fn opts(root: &Path) -> PackOptions {
        let mut o = PackOptions::new(root);
        o.always_exclude = vec![PathBuf::from("firecrest-ci.log")];
        o
    }

    fn pack_to(o: &PackOptions, dir: &Path, name: &str) -> (PathBuf, PackReport) {
        let out = dir.join(name);
        let report = pack(o, &out).unwrap();
        (out, report)
    }

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

    /// The issue's case: one archive with every kind of unsafe entry beside
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

    #[test]
    fn pattern_normalization() {
        assert_eq!(normalize_pattern(" ./src/ "), "src");
        assert_eq!(normalize_pattern("/build/**"), "build/**");
        assert_eq!(normalize_pattern("  "), "");
        assert!(build_globset(&["".into(), " ".into()]).unwrap().is_none());
    }
}
