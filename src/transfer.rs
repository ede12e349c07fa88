//! Choosing how bytes cross to and from the cluster through FirecREST:
//! direct `ops/upload` within the server's size limit, parts just under the
//! limit (reassembled by the batch job) above it, started while the archive
//! is still being packed, and the S3-staged transfer for the rest of an
//! archive when the parts, at the rate measured on the first ones, would take
//! clearly longer than S3 plus the transfer job's 60 s re-check (see
//! [`rest_way`]); and how a job's output is read in pieces
//! the server's buffer can hold, byte-exact although its replies are
//! lossily decoded text. Pure decisions here, unit tested; the calls
//! themselves live in `backend/firecrest.rs`.

use std::ops::Range;
use std::time::Duration;

/// Bytes left free under `max_ops_file_size` for a part: the limit is checked
/// on the uploaded file, so a part just under it is accepted.
pub const PART_MARGIN: u64 = 4096;

/// How many direct uploads run at once: enough to hide the per-request SSH
/// round trip of the server, few enough not to trip its rate limits.
pub const PARALLEL_UPLOADS: usize = 4;

/// Below this, parts are not worth it even when a 413 asks for smaller ones.
pub const MIN_PART_SIZE: u64 = 64 * 1024;

/// `transfer-threshold`: when the S3-staged transfer is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransferThreshold {
    /// By expected time (see [`rest_way`]): the default.
    #[default]
    Auto,
    /// Every archive larger than one direct upload.
    AlwaysS3,
    /// Parts only, whatever the size.
    Never,
    /// Archives larger than this many bytes.
    Above(u64),
}

/// FirecREST's transfer job for an S3 upload first looks for the object
/// when it starts, about 1 s after the request on an idle cluster ...
pub const S3_FIRST_LOOK: Duration = Duration::from_secs(1);

/// ... and, finding it incomplete, sleeps this long before it looks again
/// (the server's `job_s3_downloader.sh`: `sleep 60` between HEAD requests;
/// issue 16).
pub const S3_RECHECK: Duration = Duration::from_secs(60);

/// How the S3 way spends time: when FirecREST's transfer job looks for
/// the object, and how fast S3 takes it. One value for the real server
/// ([`S3Timing::REAL`]); tests give a quicker one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct S3Timing {
    /// The transfer job's first look, from the upload request.
    pub first_look: Duration,
    /// Between its looks.
    pub recheck: Duration,
    /// Bytes per second S3 is expected to take (not measured before S3 is
    /// used).
    pub rate: f64,
}

impl S3Timing {
    /// FirecREST v2 2.5.6 and its S3, as measured in issue 16.
    pub const REAL: S3Timing = S3Timing {
        first_look: S3_FIRST_LOOK,
        recheck: S3_RECHECK,
        rate: S3_ASSUMED_RATE,
    };

    /// What the S3 way costs before its bytes count: the transfer job's
    /// first look comes before the parts are up, so the object is found at
    /// its second (61 s on the real server).
    pub fn pickup(&self) -> f64 {
        (self.first_look + self.recheck).as_secs_f64()
    }

    /// The `k`th look of the transfer job, in seconds from the request.
    fn look(&self, k: u32) -> f64 {
        self.first_look.as_secs_f64() + f64::from(k) * self.recheck.as_secs_f64()
    }
}

/// S3's rate is not known before S3 is used: assume what the real server's
/// S3 did in issue 16 (a 61 MB archive up in about 1 s: 2.7 s to
/// "submitted", less 1.1 s packing and 0.6 s of first contact and mkdir),
/// about 60 MB/s.
pub const S3_ASSUMED_RATE: f64 = 60e6;

/// "Clearly longer": S3 is used only when the parts are expected to take
/// this many times as long as S3 and its pickup.
pub const S3_MARGIN: f64 = 1.25;

/// The direct-part rate is measured once this many parts are up (the first
/// wave of parallel uploads: earlier, the parts in flight share the link and
/// the rate looks slower than it is).
pub const RATE_AFTER_PARTS: usize = PARALLEL_UPLOADS;

/// How the bytes of the archive not yet given to a part go up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestWay {
    /// More direct parts.
    Parts,
    /// One S3-staged object holding all the rest.
    S3,
    /// Start no new part: the choice needs the archive's final size.
    Wait,
}

/// Chooses the way for the rest of the archive. `total`: its final size
/// once packing ended;
/// `remaining`: bytes not yet given to a part; `rate`: bytes per second the
/// direct parts moved, once measured. `s3`: how the server's S3 way spends
/// time, if it has one. An S3 upload
/// needs the size of what it carries up front, so S3 is chosen only once
/// `total` is known. The overrides (`always-s3`, a size) choose for the whole
/// archive, so they start no part before packing ended.
pub fn rest_way(
    threshold: TransferThreshold,
    s3: Option<&S3Timing>,
    total: Option<u64>,
    remaining: u64,
    rate: Option<f64>,
) -> RestWay {
    let s3_when_known = if total.is_some() {
        RestWay::S3
    } else {
        RestWay::Wait
    };
    match threshold {
        _ if s3.is_none() || remaining == 0 => RestWay::Parts,
        TransferThreshold::Never => RestWay::Parts,
        // A size names the whole archive's way: it is known once packed.
        TransferThreshold::AlwaysS3 => s3_when_known,
        TransferThreshold::Above(_) if total.is_none() => RestWay::Wait,
        TransferThreshold::Above(limit) if total > Some(limit) => RestWay::S3,
        TransferThreshold::Above(_) => RestWay::Parts,
        TransferThreshold::Auto => match (total, rate, s3) {
            (Some(_), Some(rate), Some(s3)) if s3_saves_time(remaining, rate, s3) => RestWay::S3,
            _ => RestWay::Parts,
        },
    }
}

/// Whether `remaining` bytes at the measured direct `rate` would take
/// clearly longer than S3 at its assumed rate plus its pickup:
/// `remaining / rate > S3_MARGIN * (pickup + remaining / s3.rate)`.
/// With parts at 35 MB/s that is above about 10 GB; at 5 MB/s above about
/// 430 MB (on [`S3Timing::REAL`]).
pub fn s3_saves_time(remaining: u64, rate: f64, s3: &S3Timing) -> bool {
    let parts = remaining as f64 / rate.max(1.0);
    let staged = s3.pickup() + remaining as f64 / s3.rate.max(1.0);
    parts > S3_MARGIN * staged
}

/// Once S3 carries the rest of the archive, how many of its first bytes go
/// up in direct parts at the same time, so that the S3 object is ready for
/// an earlier look of the transfer job (issue 16: "spend the 60 s well").
///
/// The transfer job looks at `s3.first_look` after the request and then
/// every `s3.recheck`; S3 is expected at `s3.rate` with [`S3_MARGIN`], the
/// parts at their measured `part_rate`. For each look,
/// S3 takes as much as it can have up by then and the parts the rest; the
/// look with the earliest expected end wins (ties: the earlier look, less
/// for the parts). Whole parts of `part_size` only, rounded down: S3 takes
/// less than a part more than planned, well within its margin.
///
/// On this model it is never worse than S3 alone (the choice includes S3
/// alone): S3's share is smaller, so its object is complete no later; when
/// both ways share one link, the link carries the same bytes as before. It only pays once S3 alone would miss a look,
/// that is when the rest takes S3 longer than about 60 s (3.6 GB at
/// 60 MB/s): with parts at 15 MB/s, 4 GB are ready at the 61 s look
/// instead of the 121 s one. Below that it returns 0.
pub fn direct_share_beside_s3(
    remaining: u64,
    part_rate: f64,
    part_size: u64,
    s3: &S3Timing,
) -> u64 {
    let part_rate = part_rate.max(1.0);
    let part_size = part_size.max(1);
    let mut best: Option<(f64, u64)> = None;
    // The server's transfer job gives up after 1,440 looks (a day).
    for k in 0..1440 {
        let look = s3.look(k);
        let staged = ((look * s3.rate / S3_MARGIN) as u64).min(remaining);
        let direct = (remaining - staged) / part_size * part_size;
        let end = look.max(direct as f64 / part_rate);
        if best.is_none_or(|(best_end, _)| end < best_end) {
            best = Some((end, direct));
        }
        if staged == remaining {
            break;
        }
    }
    best.map_or(0, |(_, direct)| direct)
}

/// The way an archive of a given size goes up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadWay {
    /// One `ops/upload`.
    Direct,
    /// Several `ops/upload`s of `part_size` bytes (the last one shorter).
    Parts { part_size: u64, count: u64 },
    /// `transfer/upload`: presigned S3 parts, then a transfer job moves the file.
    Staged,
}

/// Picks the upload way for `size` bytes. `s3` says whether the server has
/// an S3 data transfer configured; without one, parts carry any size.
pub fn choose_upload(size: u64, max_ops_file_size: u64, threshold: u64, s3: bool) -> UploadWay {
    if size <= max_ops_file_size.saturating_sub(PART_MARGIN).max(1) {
        return UploadWay::Direct;
    }
    if s3 && size > threshold {
        return UploadWay::Staged;
    }
    let part_size = part_size_for(max_ops_file_size);
    UploadWay::Parts {
        part_size,
        count: size.div_ceil(part_size),
    }
}

/// The part size for a server limit: just under it.
pub fn part_size_for(max_ops_file_size: u64) -> u64 {
    max_ops_file_size
        .saturating_sub(PART_MARGIN)
        .max(MIN_PART_SIZE)
}

/// The byte ranges of `size` bytes cut into `part_size` pieces.
pub fn part_ranges(size: u64, part_size: u64) -> Vec<Range<u64>> {
    let part_size = part_size.max(1);
    (0..size.div_ceil(part_size))
        .map(|i| i * part_size..((i + 1) * part_size).min(size))
        .collect()
}

/// The name of part `index` of `file`: sorted order is upload order.
pub fn part_name(file: &str, index: usize) -> String {
    format!("{file}.part-{index:05}")
}

/// The names of the parts of [`part_ranges`], in order.
pub fn part_names(file: &str, size: u64, part_size: u64) -> Vec<String> {
    (0..part_ranges(size, part_size).len())
        .map(|i| part_name(file, i))
        .collect()
}

/// A job starts about this long after its submit on an idle cluster (issue
/// 12's measured runs: "Slurm start: 1.0 s"). Submitted once the last parts
/// are expected up within it, the job starts as they land instead of after.
pub const SUBMIT_LEAD: Duration = Duration::from_secs(1);

/// Whether to submit the batch job before the upload ends: once packing
/// ended (`left` is the bytes of the archive not yet up) and the direct parts'
/// measured `rate` puts the rest within [`SUBMIT_LEAD`]. Never without a
/// measured rate: a slow link would hold a node idle while it uploads.
pub fn submit_ahead(left: u64, rate: Option<f64>) -> bool {
    match rate {
        Some(rate) if rate > 0.0 => left as f64 / rate <= SUBMIT_LEAD.as_secs_f64(),
        _ => false,
    }
}

/// The largest file `ops/download` returns: the limit applies to its base64
/// form, so about three quarters of `max_ops_file_size`.
pub fn direct_download_limit(max_ops_file_size: u64) -> u64 {
    (max_ops_file_size / 4 * 3).saturating_sub(PART_MARGIN)
}

/// What a `tail` reply (text, lossily decoded by the server) stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailReading {
    /// Nothing new.
    Empty,
    /// `text` is exactly the bytes it came from: advance by its length.
    Exact(String),
    /// Only this leading part is known to be exact (a character may be cut
    /// at the end of the read); read again from its end.
    Prefix(String),
    /// Nothing but replaced bytes at the end of the file: the start of a
    /// character still being written, or invalid bytes; only the end of the
    /// job tells which.
    Pending,
    /// The server replaced bytes inside the reply: how many bytes it stands
    /// for must be found out from the file size.
    Ambiguous,
}

/// Classifies a `tail` reply. The server decodes bytes as UTF-8 and turns
/// invalid ones, and a character cut at the end of the read, into U+FFFD;
/// such a reply's length says nothing about the bytes it came from.
pub fn read_tail(text: &str) -> TailReading {
    if text.is_empty() {
        return TailReading::Empty;
    }
    let trimmed = text.trim_end_matches(char::REPLACEMENT_CHARACTER);
    if trimmed.contains(char::REPLACEMENT_CHARACTER) {
        return TailReading::Ambiguous;
    }
    if trimmed.len() == text.len() {
        TailReading::Exact(text.to_string())
    } else if trimmed.is_empty() {
        TailReading::Pending
    } else {
        TailReading::Prefix(trimmed.to_string())
    }
}

/// The exact leading part of an ambiguous reply: everything before the first
/// replacement character.
pub fn exact_prefix(text: &str) -> &str {
    match text.find(char::REPLACEMENT_CHARACTER) {
        Some(at) => &text[..at],
        None => text,
    }
}

/// The largest output piece read at once; the real server answered a
/// 4 MiB `view` (8 MiB read) with 500 and a 2 MiB one at once.
pub const MAX_OUTPUT_PIECE: u64 = 2 * 1024 * 1024;

/// Output pieces are not made smaller than this after a 408 or a 500.
pub const MIN_OUTPUT_PIECE: u64 = 64 * 1024;

/// The output piece for a server limit: a power of two (so the `view`
/// blocks of a smaller piece start on the blocks of a larger one) whose
/// double (what `view` reads) stays under the limit.
pub fn output_piece_for(max_ops_file_size: u64) -> u64 {
    let fits = (max_ops_file_size.saturating_sub(PART_MARGIN) / 2).max(1);
    let pow = 1u64 << (63 - fits.leading_zeros());
    pow.min(MAX_OUTPUT_PIECE)
}

/// The `view` block size for a read at `offset` when the bytes from
/// `known_from` to `offset` are known: the largest power of two up to
/// `piece` whose block holding `offset` starts at or after `known_from`, so
/// the known bytes tell where `offset` falls in the decoded block.
/// `size = 1` always qualifies (its block starts at `offset` itself).
pub fn anchored_block(offset: u64, known_from: u64, piece: u64) -> u64 {
    let mut size = piece.max(1);
    while size > 1 && offset / size * size < known_from {
        size /= 2;
    }
    size
}

/// What a `view` window, decoded by the server from the block start
/// `block`, says about the file from byte `offset` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowReading {
    /// These characters are exactly the bytes from `offset` on.
    Exact(String),
    /// The server replaced the bytes at `offset` (invalid UTF-8, or a
    /// U+FFFD in the file): how many is unknown. `after` is the server's
    /// decoding of what follows the replaced unit, as far as the window
    /// shows it.
    Replaced { after: String },
    /// Nothing at `offset` in this window (the file ends there).
    Empty,
    /// The window cannot be placed on the file: the decoded block does not
    /// start with the known bytes, or without known bytes its start is not
    /// plain text up to `offset`.
    Unplaced,
}

/// Places a `view` window on the file. `window` is the server's decoding
/// of the block starting at byte `block` (requested with `offset = block`,
/// so it is sliced from its first character); `known` is the server's
/// decoding of the file from `block` to `offset`, when known (see
/// [`KnownOutput::decoded_from`]). The decoder is in its initial state at
/// `offset` (what precedes it ends with a whole character or a whole
/// replaced unit), so the known decoding is a prefix of the window and what
/// follows it is the file from `offset` on. A replacement character
/// at the end of the window may be a character cut by the block end: it is
/// never counted.
pub fn read_window(window: &str, block: u64, offset: u64, known: Option<&str>) -> WindowReading {
    let skip = (offset - block) as usize;
    let rest = match known {
        Some(decoded) => match window.strip_prefix(decoded) {
            Some(rest) => rest,
            None => return WindowReading::Unplaced,
        },
        None => {
            let exact = exact_prefix(window);
            if exact.len() < skip || !exact.is_char_boundary(skip) {
                return WindowReading::Unplaced;
            }
            &window[skip..]
        }
    };
    if rest.is_empty() {
        return WindowReading::Empty;
    }
    let exact = exact_prefix(rest);
    if !exact.is_empty() {
        return WindowReading::Exact(exact.to_string());
    }
    WindowReading::Replaced {
        after: rest[char::REPLACEMENT_CHARACTER.len_utf8()..].to_string(),
    }
}

/// The usual output read, for a poll that finds little or no new output:
/// one bounded `view` request that the server answers with the file from
/// the read offset on, so no `stat` is needed to know the read is safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollWindow {
    /// The `size` to send: the server reads `2 * size` bytes from `block`.
    pub size: u64,
    /// Where the server's block starts (a multiple of `size`).
    pub block: u64,
    /// The `offset` to send: `block` plus the characters the server decodes
    /// between `block` and the read offset, less those of `echo`, so its
    /// character slice starts with `echo` and then exactly at the read
    /// offset.
    pub offset: u64,
    /// The last characters already shown, which the reply must start with:
    /// a reply that starts anywhere else (a server that places `offset`
    /// otherwise, a file rewritten under the reader) is not trusted.
    pub echo: String,
}

/// How many characters already shown a poll window asks for again, to
/// check where its reply starts.
pub const POLL_ECHO_CHARS: usize = 16;

/// Windows smaller than this are not worth a request: a read then costs
/// `stat` and `tail`.
pub const MIN_POLL_WINDOW: u64 = 4 * 1024;

/// The poll window for a read at `offset`, at most `max` (a power of two):
/// its block must start where the known output tells how the server
/// decodes up to `offset` (see [`anchored_block`]). `None` when only a
/// window under [`MIN_POLL_WINDOW`] qualifies.
pub fn poll_window(offset: u64, known: &KnownOutput, max: u64) -> Option<PollWindow> {
    let size = anchored_block(offset, known.known_from(offset), max);
    if size < MIN_POLL_WINDOW {
        return None;
    }
    let block = offset / size * size;
    let decoded = if block == offset {
        String::new()
    } else {
        known.decoded_from(block)?
    };
    let chars = decoded.chars().count();
    let echo: String = decoded
        .chars()
        .skip(chars.saturating_sub(POLL_ECHO_CHARS))
        .collect();
    Some(PollWindow {
        size,
        block,
        offset: block + (chars - echo.chars().count()) as u64,
        echo,
    })
}

/// What a poll window's reply says about the file from the read offset on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollReading {
    /// These are exactly the file's bytes from the read offset on (maybe
    /// none), and what follows them.
    Exact { text: String, after: AfterPoll },
    /// Replaced bytes at the read offset, with text after them: only `stat`
    /// and `tail` can tell how many bytes they stand for.
    Unsure,
}

/// What follows the exact text of a poll window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterPoll {
    /// The end of the file as it was read.
    End,
    /// Replaced bytes at the end of the file: a character still being
    /// written, or invalid bytes; only the end of the job tells which.
    Pending,
    /// Maybe more: read on, with `stat` first.
    More,
}

/// Reads a poll window's reply (the server's decoding of the file from the
/// read offset `offset`, after the window's echo, at most `window.size`
/// characters of the `2 * window.size` bytes read from `window.block`).
/// A reply that does not start with the echo is not trusted. Only the text
/// before the first replacement is certain. The reply reaches the end of
/// the file when it stops short of both the character count and the bytes
/// read (a trailing replacement stands for at most 3 bytes).
pub fn read_poll(reply: &str, window: &PollWindow, offset: u64) -> PollReading {
    let Some(reply_after_echo) = reply.strip_prefix(window.echo.as_str()) else {
        return PollReading::Unsure;
    };
    let all_chars = reply.chars().count() as u64;
    let reply = reply_after_echo;
    let exact = exact_prefix(reply);
    let trimmed = reply.trim_end_matches(char::REPLACEMENT_CHARACTER);
    if trimmed.len() > exact.len() {
        // A replacement with text after it.
        return if exact.is_empty() {
            PollReading::Unsure
        } else {
            PollReading::Exact {
                text: exact.to_string(),
                after: AfterPoll::More,
            }
        };
    }
    let replaced = reply[exact.len()..].chars().count() as u64;
    let covered = offset + exact.len() as u64 + 3 * replaced;
    let short = all_chars < window.size && covered < window.block + 2 * window.size;
    let after = match (short, replaced) {
        (false, _) => AfterPoll::More,
        (true, 0) => AfterPoll::End,
        (true, _) => AfterPoll::Pending,
    };
    PollReading::Exact {
        text: exact.to_string(),
        after,
    }
}

/// A stretch of output just before the read offset, as far as it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Known {
    /// These exact bytes, ending with a whole character.
    Bytes(Vec<u8>),
    /// A replaced unit of this many bytes (1 to 3): the server decodes it
    /// as one U+FFFD, and each of its bytes after the first, decoded on its
    /// own, as one U+FFFD too (they are continuation bytes).
    Unit(u64),
}

/// The output just before the read offset, kept to place `view` windows
/// whose block starts before the offset: everything from `start` to `end`
/// in stretches whose decoding is known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownOutput {
    parts: std::collections::VecDeque<Known>,
    start: u64,
    end: u64,
}

impl KnownOutput {
    /// Where the known output starts, when it ends at `offset` (else
    /// nothing is known: `offset` itself).
    pub fn known_from(&self, offset: u64) -> u64 {
        if self.end == offset {
            self.start
        } else {
            offset
        }
    }

    /// Exact bytes were read at `offset`.
    pub fn push_bytes(&mut self, offset: u64, bytes: &[u8]) {
        self.restart_unless_at(offset);
        self.parts.push_back(Known::Bytes(bytes.to_vec()));
        self.end += bytes.len() as u64;
        self.trim();
    }

    /// A replaced unit of `len` bytes was read at `offset`.
    pub fn push_unit(&mut self, offset: u64, len: u64) {
        self.restart_unless_at(offset);
        self.parts.push_back(Known::Unit(len));
        self.end += len;
        self.trim();
    }

    /// Bytes whose decoding is not known were read: forget what came before.
    pub fn forget(&mut self, end: u64) {
        self.parts.clear();
        self.start = end;
        self.end = end;
    }

    /// The server's decoding of the file from `from` to the end of what is
    /// known; `None` when `from` is before it.
    pub fn decoded_from(&self, from: u64) -> Option<String> {
        if from < self.start || from > self.end {
            return None;
        }
        let mut at = self.start;
        let mut out = String::new();
        for part in &self.parts {
            let len = match part {
                Known::Bytes(bytes) => bytes.len() as u64,
                Known::Unit(len) => *len,
            };
            if at + len > from {
                let skip = from.saturating_sub(at);
                match part {
                    Known::Bytes(bytes) => {
                        out.push_str(&String::from_utf8_lossy(&bytes[skip as usize..]))
                    }
                    Known::Unit(len) => {
                        let shown = if skip == 0 { 1 } else { len - skip };
                        out.extend(std::iter::repeat_n(
                            char::REPLACEMENT_CHARACTER,
                            shown as usize,
                        ));
                    }
                }
            }
            at += len;
        }
        Some(out)
    }

    fn restart_unless_at(&mut self, offset: u64) {
        if self.end != offset {
            self.forget(offset);
        }
    }

    /// Keeps about the last [`MAX_OUTPUT_PIECE`] bytes (all a window needs).
    fn trim(&mut self) {
        while self.end - self.start > 2 * MAX_OUTPUT_PIECE && self.parts.len() > 1 {
            let len = match self.parts.pop_front() {
                Some(Known::Bytes(bytes)) => bytes.len() as u64,
                Some(Known::Unit(len)) => len,
                None => 0,
            };
            self.start += len;
        }
    }
}

/// What a probe says: the server's decoding of the `2 * size` bytes from
/// `start` (a `view` with `offset = start`, `size` a power of two dividing
/// `start`), asked after a replaced unit whose exact successor is `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The replaced unit ends at `start`: the text from there is `after`.
    EndsHere,
    /// `start` is inside the unit (its bytes decode as replacements).
    Inside,
    /// Cannot tell: the block is too short to hold the first character of
    /// `after`, so it would show a replacement either way.
    Undecided,
    /// The probe contradicts the window: the file changed or the server
    /// decodes differently.
    Inconsistent,
}

/// Classifies a probe (see [`Probe`]). `after` is the server's decoding
/// of what follows the unit in the window (it may hold more replaced units).
/// Replacements at the end of either text may be characters cut by a block
/// end, so they are not compared.
pub fn probe(decoded: &str, size: u64, after: &str) -> Probe {
    let seen = decoded.trim_end_matches(char::REPLACEMENT_CHARACTER);
    let expected = after.trim_end_matches(char::REPLACEMENT_CHARACTER);
    let Some(first) = after.chars().next().filter(|_| !expected.is_empty()) else {
        return Probe::Undecided;
    };
    if seen.is_empty() {
        // Only replacements: inside the unit, unless the block is too short
        // to show the first character of `after` whole.
        return if first != char::REPLACEMENT_CHARACTER && first.len_utf8() as u64 <= 2 * size {
            Probe::Inside
        } else {
            Probe::Undecided
        };
    }
    if seen.starts_with(expected) || expected.starts_with(seen) {
        Probe::EndsHere
    } else {
        // More replacements before the same text: inside the unit.
        Probe::Inside
    }
}

/// The length of a replaced unit from the probes at 1, 2 and 3 bytes past
/// its start, in order (a replaced unit is 1 to 3 bytes: an invalid byte,
/// or the start of a character without its end; a literal U+FFFD is 3).
/// The first probe that ends the unit decides: a probe inside the unit
/// never shows `after`, and one after an undecided end lands inside the
/// multi-byte first character of `after` (that is what made it undecided),
/// so it cannot show `after` either. An undecided probe decides only when
/// every other probe says "inside" (then nothing else can end the unit).
pub fn unit_length(probes: &[Probe]) -> Option<u64> {
    let mut undecided = None;
    for (index, probe) in probes.iter().enumerate() {
        match probe {
            Probe::EndsHere => return Some(index as u64 + 1),
            Probe::Inconsistent => return None,
            Probe::Inside => {}
            Probe::Undecided if undecided.is_some() => return None,
            Probe::Undecided => undecided = Some(index as u64 + 1),
        }
    }
    undecided
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_is_submitted_ahead_only_when_the_rest_is_a_start_away() {
        // 35 MB/s (issue 12's link): 30 MB left is under a second ...
        assert!(submit_ahead(30_000_000, Some(35e6)));
        assert!(submit_ahead(0, Some(35e6)));
        // ... 40 MB is not; and never without a measured rate.
        assert!(!submit_ahead(40_000_000, Some(35e6)));
        assert!(!submit_ahead(1, None));
        assert!(!submit_ahead(1, Some(0.0)));
    }

    const LIMIT: u64 = 5 * 1024 * 1024;

    #[test]
    fn small_archives_go_direct() {
        assert_eq!(choose_upload(0, LIMIT, 1 << 30, true), UploadWay::Direct);
        assert_eq!(
            choose_upload(LIMIT - PART_MARGIN, LIMIT, 1 << 30, true),
            UploadWay::Direct
        );
    }

    #[test]
    fn archives_over_the_limit_go_in_parts_just_under_it() {
        let way = choose_upload(LIMIT * 3, LIMIT, 1 << 30, true);
        assert_eq!(
            way,
            UploadWay::Parts {
                part_size: LIMIT - PART_MARGIN,
                count: 4
            }
        );
    }

    #[test]
    fn archives_over_the_threshold_go_through_s3_when_the_server_has_it() {
        assert_eq!(
            choose_upload(2 << 30, LIMIT, 1 << 30, true),
            UploadWay::Staged
        );
        assert!(matches!(
            choose_upload(2 << 30, LIMIT, 1 << 30, false),
            UploadWay::Parts { .. }
        ));
    }

    /// When `remaining` bytes are up on the real server's timing, with
    /// `direct` of them in 5 MB parts at `part_rate` beside S3: the later of
    /// the parts' end and the look that finds S3's share (at its margin,
    /// less the part that rounding the parts down may add to it).
    fn planned_end(remaining: u64, direct: u64, part_rate: f64) -> f64 {
        let real = S3Timing::REAL;
        let s3_share = (remaining - direct).saturating_sub(5_000_000);
        let s3_done = s3_share as f64 * S3_MARGIN / real.rate;
        let look = (0..)
            .map(|k| real.look(k))
            .find(|&look| look >= s3_done)
            .unwrap_or(f64::MAX);
        look.max(direct as f64 / part_rate)
    }

    #[test]
    fn parts_go_beside_s3_only_when_that_makes_an_earlier_look_of_the_transfer_job() {
        const MB: u64 = 1_000_000;
        let part = 5 * MB;
        let real = S3Timing::REAL;
        // S3 alone is ready for the 61 s look (48 MB/s with the margin:
        // 2.9 GB by then): nothing to gain, nothing beside it.
        assert_eq!(direct_share_beside_s3(2_000 * MB, 15e6, part, &real), 0);
        assert_eq!(direct_share_beside_s3(16 * MB, 150e3, part, &real), 0);
        // 4 GB would take S3 83 s (with the margin): the 121 s look. With
        // the parts at 15 MB/s taking 1.07 GB, S3's 2.93 GB are ready for
        // the 61 s look, and the parts are up at 72 s.
        let direct = direct_share_beside_s3(4_000 * MB, 15e6, part, &real);
        assert_eq!(direct % part, 0, "whole parts");
        let s3 = 4_000 * MB - direct;
        // (S3 carries at most one part more than planned: whole parts.)
        assert!(
            (s3 - part) as f64 * S3_MARGIN / S3_ASSUMED_RATE <= 61.0,
            "{s3}"
        );
        assert!((1_000 * MB..1_200 * MB).contains(&direct), "{direct}");
        // Parts too slow to help before the look S3 alone makes: none.
        assert_eq!(direct_share_beside_s3(4_000 * MB, 1e6, part, &real), 0);
        // 12 GB with parts at 35 MB/s (where `auto` first takes S3): S3
        // alone, at its margin, makes the 301 s look; beside 35 MB/s of
        // parts, S3's 5.8 GB make the 121 s one and the parts end at about
        // 177 s.
        let direct = direct_share_beside_s3(12_000 * MB, 35e6, part, &real);
        let end = planned_end(12_000 * MB, direct, 35e6);
        assert!(end < 200.0, "{direct} bytes beside S3: {end:.0} s");
        assert_eq!(planned_end(12_000 * MB, 0, 35e6), 301.0, "S3 alone");
    }

    #[test]
    fn auto_uses_s3_only_when_the_parts_would_take_clearly_longer() {
        let auto = |remaining: u64, rate: f64| {
            rest_way(
                TransferThreshold::Auto,
                Some(&S3Timing::REAL),
                Some(remaining),
                remaining,
                Some(rate),
            )
        };
        // 35 MB/s: 1 GB of parts is 29 s, far under S3's 61 s pickup.
        assert_eq!(auto(1_000_000_000, 35e6), RestWay::Parts);
        // S3's own 60 MB/s is not much faster: it pays above about 10 GB.
        assert_eq!(auto(9_000_000_000, 35e6), RestWay::Parts);
        assert_eq!(auto(11_000_000_000, 35e6), RestWay::S3);
        // At 5 MB/s, above about 430 MB.
        assert_eq!(auto(400_000_000, 5e6), RestWay::Parts);
        assert_eq!(auto(460_000_000, 5e6), RestWay::S3);
        // A slow link: 16 MB at 150 kB/s is 107 s.
        assert_eq!(auto(16_000_000, 150e3), RestWay::S3);
        assert_eq!(auto(16_000_000, 1e6), RestWay::Parts);
        // Not measured yet, or the size not known yet: keep going with parts.
        let early = rest_way(
            TransferThreshold::Auto,
            Some(&S3Timing::REAL),
            None,
            9,
            Some(1.0),
        );
        assert_eq!(early, RestWay::Parts);
        let unmeasured = rest_way(
            TransferThreshold::Auto,
            Some(&S3Timing::REAL),
            Some(9),
            9,
            None,
        );
        assert_eq!(unmeasured, RestWay::Parts);
        // Without S3 on the server, parts whatever the rate.
        let no_s3 = rest_way(TransferThreshold::Auto, None, Some(9), 9, Some(1.0));
        assert_eq!(no_s3, RestWay::Parts);
    }

    #[test]
    fn overrides_choose_by_size_and_wait_for_it_when_s3_is_due() {
        use TransferThreshold::*;
        assert_eq!(
            rest_way(Never, Some(&S3Timing::REAL), Some(9), 9, Some(1.0)),
            RestWay::Parts
        );
        assert_eq!(
            rest_way(AlwaysS3, Some(&S3Timing::REAL), None, 9, None),
            RestWay::Wait
        );
        assert_eq!(
            rest_way(AlwaysS3, Some(&S3Timing::REAL), Some(9), 9, None),
            RestWay::S3
        );
        assert_eq!(
            rest_way(Above(100), Some(&S3Timing::REAL), None, 50, None),
            RestWay::Wait
        );
        assert_eq!(
            rest_way(Above(100), Some(&S3Timing::REAL), Some(200), 50, None),
            RestWay::S3
        );
        assert_eq!(
            rest_way(Above(100), Some(&S3Timing::REAL), Some(90), 50, None),
            RestWay::Parts
        );
        // Nothing left: nothing to choose.
        assert_eq!(
            rest_way(AlwaysS3, Some(&S3Timing::REAL), Some(9), 0, None),
            RestWay::Parts
        );
    }

    #[test]
    fn part_ranges_cover_every_byte_once() {
        let ranges = part_ranges(10, 4);
        assert_eq!(ranges, vec![0..4, 4..8, 8..10]);
        assert!(part_ranges(0, 4).is_empty());
        assert_eq!(part_ranges(8, 4), vec![0..4, 4..8]);
    }

    #[test]
    fn part_names_sort_in_upload_order() {
        let mut names: Vec<String> = (0..12).map(|i| part_name("w.tar.gz", i)).collect();
        let sorted = {
            let mut s = names.clone();
            s.sort();
            s
        };
        assert_eq!(names, sorted);
        names.dedup();
        assert_eq!(names.len(), 12);
    }

    #[test]
    fn direct_downloads_respect_the_base64_overhead() {
        // The recorded server refused a 4 MiB download with a 5 MiB limit.
        assert!(direct_download_limit(LIMIT) < 4 * 1024 * 1024);
        assert!(direct_download_limit(LIMIT) > 3 * 1024 * 1024);
    }

    #[test]
    fn tail_replies_are_classified_by_where_replacements_stand() {
        assert_eq!(read_tail(""), TailReading::Empty);
        assert_eq!(
            read_tail("grüße ✓\n"),
            TailReading::Exact("grüße ✓\n".into())
        );
        // A character cut at the end of the read: show what precedes it.
        assert_eq!(
            read_tail("line 日\u{fffd}"),
            TailReading::Prefix("line 日".into())
        );
        assert_eq!(read_tail("a\u{fffd}b"), TailReading::Ambiguous);
        assert_eq!(read_tail("\u{fffd}"), TailReading::Pending);
        assert_eq!(read_tail("a\u{fffd}b\u{fffd}"), TailReading::Ambiguous);
        assert_eq!(exact_prefix("ab\u{fffd}cd"), "ab");
    }

    /// The server's `view` (`dd bs=size skip=offset/size count=2`, lossy
    /// decoding, then `size` characters from character `offset % size`).
    fn server_view(file: &[u8], offset: u64, size: u64) -> String {
        let from = (offset / size * size).min(file.len() as u64) as usize;
        let to = (from + 2 * size as usize).min(file.len());
        String::from_utf8_lossy(&file[from..to])
            .chars()
            .skip((offset % size) as usize)
            .take(size as usize)
            .collect()
    }

    #[test]
    fn a_poll_window_answers_with_the_file_from_the_read_offset_on() {
        let mut file = Vec::new();
        for i in 0..3000 {
            file.extend_from_slice(format!("{i} grüße ✓ 日本語 🚀\n").as_bytes());
        }
        let size = 4 * MIN_POLL_WINDOW;
        let mut known = KnownOutput::default();
        let mut offset = 0u64;
        let mut polls = 0;
        // Grow the known output in uneven steps that end on whole characters.
        while offset < file.len() as u64 {
            let window = poll_window(offset, &known, size).expect("a window");
            assert_eq!(window.size, size, "known output anchors a full window");
            let reply = server_view(&file, window.offset, window.size);
            let PollReading::Exact { text, after } = read_poll(&reply, &window, offset) else {
                panic!("valid UTF-8 is exact at byte {offset}");
            };
            let to_end = after == AfterPoll::End;
            let rest = &file[offset as usize..];
            assert!(rest.starts_with(text.as_bytes()), "exact at byte {offset}");
            if to_end {
                assert_eq!(text.len(), rest.len(), "the end at byte {offset}");
            }
            if rest.len() < size as usize / 2 {
                assert!(to_end, "the end seen at byte {offset}");
            }
            // Take a part of it, as a file that was shorter would have given.
            let take = text
                .char_indices()
                .map(|(at, _)| at)
                .nth(1 + polls % 977)
                .unwrap_or(text.len());
            known.push_bytes(offset, &text.as_bytes()[..take]);
            offset += take as u64;
            polls += 1;
        }
        assert!(polls > 100, "{polls} polls");
    }

    #[test]
    fn a_poll_window_that_cannot_see_the_end_says_so() {
        let file = "x".repeat(20_000).into_bytes();
        let window = poll_window(0, &KnownOutput::default(), MIN_POLL_WINDOW).unwrap();
        let reply = server_view(&file, window.offset, window.size);
        // 4 KiB characters: the window is full, more follows.
        match read_poll(&reply, &window, 0) {
            PollReading::Exact { text, after } => {
                assert_eq!(text.chars().count() as u64, MIN_POLL_WINDOW);
                assert_eq!(after, AfterPoll::More);
            }
            other => panic!("{other:?}"),
        }
        // Cut at the end of the bytes read: only the whole characters count.
        let cut = "日".repeat(2731).into_bytes();
        let window = PollWindow {
            size: 4096,
            block: 0,
            offset: 0,
            echo: String::new(),
        };
        let reply = server_view(&cut, 0, 4096);
        assert!(reply.ends_with(char::REPLACEMENT_CHARACTER), "{reply}");
        match read_poll(&reply, &window, 0) {
            PollReading::Exact { text, after } => {
                assert_eq!(text.len(), 8190);
                assert_eq!(after, AfterPoll::More);
            }
            other => panic!("{other:?}"),
        }
        // The same cut at the end of the file: a character being written.
        let file = "日".repeat(100).into_bytes();
        let reply = server_view(&file[..298], 0, 4096);
        assert_eq!(
            read_poll(&reply, &window, 0),
            PollReading::Exact {
                text: "日".repeat(99),
                after: AfterPoll::Pending
            }
        );
    }

    #[test]
    fn replaced_bytes_at_the_offset_leave_the_poll_unsure() {
        let file = b"ok\n\xff\xfe then more\n".to_vec();
        let mut known = KnownOutput::default();
        known.push_bytes(0, b"ok\n");
        let window = poll_window(3, &known, MIN_POLL_WINDOW).unwrap();
        // The window asks for "ok\n" again, to check where the reply starts.
        assert_eq!((window.block, window.offset), (0, 0));
        assert_eq!(window.echo, "ok\n");
        let reply = server_view(&file, window.offset, window.size);
        assert_eq!(read_poll(&reply, &window, 3), PollReading::Unsure);
        // Further in, the exact part before the replacement is kept.
        let from_start = PollWindow {
            echo: String::new(),
            ..window
        };
        let reply = server_view(&file, 0, window.size);
        assert_eq!(
            read_poll(&reply, &from_start, 0),
            PollReading::Exact {
                text: "ok\n".into(),
                after: AfterPoll::More
            }
        );
    }

    #[test]
    fn a_reply_that_does_not_start_where_it_should_is_not_trusted() {
        let file = "grüße ✓ 日本語\n".repeat(40).into_bytes();
        let mut known = KnownOutput::default();
        let offset = 200u64;
        let offset = (offset..)
            .find(|&o| std::str::from_utf8(&file[..o as usize]).is_ok())
            .unwrap();
        known.push_bytes(0, &file[..offset as usize]);
        let window = poll_window(offset, &known, MIN_POLL_WINDOW).unwrap();
        assert_eq!(window.echo.chars().count(), POLL_ECHO_CHARS);
        // The server as it is: the echo, then the file from the offset on.
        let reply = server_view(&file, window.offset, window.size);
        assert_eq!(
            read_poll(&reply, &window, offset),
            PollReading::Exact {
                text: String::from_utf8(file[offset as usize..].to_vec()).unwrap(),
                after: AfterPoll::End
            }
        );
        // A server that took `offset` as bytes: the reply starts elsewhere.
        let bytes_view = String::from_utf8_lossy(&file[window.offset as usize..]).to_string();
        assert_eq!(read_poll(&bytes_view, &window, offset), PollReading::Unsure);
        // The file rewritten under the reader: other text at the echo.
        let mut rewritten = file.clone();
        rewritten[offset as usize - 2] = b'X';
        let reply = server_view(&rewritten, window.offset, window.size);
        assert_eq!(read_poll(&reply, &window, offset), PollReading::Unsure);
    }

    #[test]
    fn without_known_output_only_an_aligned_window_qualifies() {
        let known = KnownOutput::default();
        // 3 * 4096: the largest power of two dividing it is 4096.
        let window = poll_window(3 * 4096, &known, 65536).unwrap();
        assert_eq!(
            (window.size, window.block, window.offset),
            (4096, 12288, 12288)
        );
        // An odd offset would need 1-byte windows: read with stat and tail.
        assert_eq!(poll_window(4097, &known, 65536), None);
        // Nothing read yet: any window starts at byte 0.
        let window = poll_window(0, &known, 65536).unwrap();
        assert_eq!((window.size, window.offset), (65536, 0));
    }
}
