//! Choosing how bytes cross to and from the cluster through FirecREST:
//! direct `ops/upload` within the server's size limit, parts just under the
//! limit (reassembled by the batch job) above it, and the S3-staged transfer
//! for archives beyond a threshold. Pure decisions here, unit tested; the
//! calls themselves live in `backend/firecrest.rs`.

use std::ops::Range;

/// Bytes left free under `max_ops_file_size` for a part: the limit is checked
/// on the uploaded file, so a part just under it is accepted.
pub const PART_MARGIN: u64 = 4096;

/// How many direct uploads run at once: enough to hide the per-request SSH
/// round trip of the server, few enough not to trip its rate limits.
pub const PARALLEL_UPLOADS: usize = 4;

/// Below this, parts are not worth it even when a 413 asks for smaller ones.
pub const MIN_PART_SIZE: u64 = 64 * 1024;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
