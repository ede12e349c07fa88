//! Reading the job's output byte-exact through FirecREST's text replies:
//! one bounded `view` window per poll while the output trickles, then
//! `stat` and a `tail` from the offset when what is left fits, `view`
//! windows placed on the file for a backlog, S3 snapshots for tens of MB
//! (decisions in [`crate::transfer`]).

use anyhow::{bail, Context, Result};

use super::{api_error, is_not_found, FirecrestBackend};
use crate::backend::OutputChunk;
use crate::transfer::{self, TailReading};

/// Above this much unread output, and with S3, the backlog is read from an
/// S3 snapshot (one transfer job, then ranged GETs) instead of in pieces.
const S3_BACKLOG: u64 = 32 * 1024 * 1024;

/// One `read_output` call reads at most this much (the watcher shows it,
/// then calls again at once: [`OutputChunk::more`]) ...
const READ_BUDGET: u64 = 16 * 1024 * 1024;

/// ... and stops starting new pieces after this long.
const READ_TIME_BUDGET: std::time::Duration = std::time::Duration::from_secs(3);

/// The window of the one request a poll costs while the output trickles
/// (see [`transfer::poll_window`]); more output than this is read on in
/// pieces, with `stat` first.
const POLL_WINDOW: u64 = 64 * 1024;

/// An S3 snapshot of an output file, for reading a backlog larger than a
/// synchronous call may return.
#[derive(Debug, Clone)]
pub(super) struct Snapshot {
    url: String,
    size: u64,
}

/// How one output file is being read.
#[derive(Debug)]
pub(super) struct ReadState {
    /// The size of the next read: halved after a read the server found too
    /// big or too slow (408, 413, 500), down to [`transfer::MIN_OUTPUT_PIECE`].
    piece: u64,
    /// The output just before the offset, to place `view` windows.
    known: transfer::KnownOutput,
}

/// How a piece's bytes relate to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PieceKind {
    /// The data are the file's bytes.
    Exact,
    /// One replaced unit of `advance` bytes, shown as U+FFFD.
    Unit,
    /// Bytes whose decoding is not known piece by piece.
    Opaque,
}

impl ReadState {
    fn new(piece: u64) -> Self {
        Self {
            piece,
            known: transfer::KnownOutput::default(),
        }
    }

    /// Notes what a read gave.
    fn advanced(&mut self, offset: u64, chunk: &OutputChunk, kind: PieceKind) {
        match kind {
            PieceKind::Exact => self.known.push_bytes(offset, &chunk.data),
            PieceKind::Unit => self.known.push_unit(offset, chunk.advance),
            PieceKind::Opaque => self.known.forget(offset + chunk.advance),
        }
    }

    fn shrink(&mut self) {
        self.piece = (self.piece / 2).max(transfer::MIN_OUTPUT_PIECE);
    }
}

/// A read the server found too big for its buffer or too slow for its
/// command timeout: 408, 413, or 500 (what `view` answers then).
fn is_read_too_big(err: &anyhow::Error) -> bool {
    api_error(err).is_some_and(|e| e.is_timeout() || e.is_too_large() || e.status == 500)
}

impl FirecrestBackend {
    /// Finds how many bytes an ambiguous reply stood for: the file size
    /// before and after the read must agree. A replacement at the very end
    /// may be a character still being written: it is passed over only once
    /// the file is `last`.
    async fn read_settled(&self, path: &str, offset: u64, last_read: bool) -> Result<OutputChunk> {
        let mut last = String::new();
        for _ in 0..3 {
            let before = self.client.output_stat(path).await?.size;
            let text = self.client.output_tail(path, offset).await?.content;
            let after = self.client.output_stat(path).await?.size;
            if before == after {
                if before <= offset {
                    return Ok(OutputChunk::default());
                }
                if last_read || !text.ends_with(char::REPLACEMENT_CHARACTER) {
                    return Ok(OutputChunk {
                        data: text.into_bytes(),
                        advance: before - offset,
                        more: false,
                    });
                }
            }
            last = text;
        }
        // Still growing: show what is certain now, the rest on a later read.
        let prefix = transfer::exact_prefix(&last);
        Ok(OutputChunk {
            data: prefix.as_bytes().to_vec(),
            advance: prefix.len() as u64,
            more: false,
        })
    }

    /// A backlog of tens of MB: read it from an S3 snapshot of the file (one
    /// transfer job, then ranged GETs of raw bytes), faster than pieces.
    /// Returns an empty chunk while the snapshot is being made.
    async fn read_backlog(&self, path: &str, offset: u64, size: u64) -> Result<OutputChunk> {
        let facts = self.facts().await?.clone();
        let piece = transfer::direct_download_limit(facts.max_ops_file_size).max(64 * 1024);
        let mut snapshots = self.snapshots.lock().await;
        if let Some(snapshot) = snapshots.get(path).cloned() {
            if offset < snapshot.size {
                let len = piece.min(snapshot.size - offset);
                let mut buffer = Vec::with_capacity(len as usize);
                let mut limited = LimitedWriter {
                    inner: &mut buffer,
                    left: len,
                };
                let _ = self
                    .client
                    .s3_get_object(&snapshot.url, offset, &mut limited)
                    .await;
                if buffer.is_empty() {
                    bail!("could not read the output backlog of {path} from S3");
                }
                let advance = buffer.len() as u64;
                return Ok(OutputChunk {
                    data: buffer,
                    advance,
                    more: false,
                });
            }
            snapshots.remove(path);
        }
        tracing::info!(
            "{} of output piled up: reading it through an S3 snapshot",
            crate::progress::format_bytes(size.saturating_sub(offset))
        );
        let url = self.stage_in_s3(path).await?;
        snapshots.insert(path.to_string(), Snapshot { url, size });
        Ok(OutputChunk::default())
    }

    /// Reads what follows `offset`, at most about one piece, never asking
    /// for a reply larger than the piece: `tail` from the offset when all
    /// that is left fits, else a `view` window placed exactly on the file.
    async fn read_piece(
        &self,
        path: &str,
        offset: u64,
        size: u64,
        last: bool,
        state: &mut ReadState,
    ) -> Result<(OutputChunk, PieceKind)> {
        if size - offset <= state.piece {
            let reply = self.client.output_tail(path, offset).await?;
            return Ok(match transfer::read_tail(&reply.content) {
                TailReading::Empty => (OutputChunk::default(), PieceKind::Exact),
                TailReading::Exact(text) | TailReading::Prefix(text) => (
                    OutputChunk {
                        advance: text.len() as u64,
                        data: text.into_bytes(),
                        more: false,
                    },
                    PieceKind::Exact,
                ),
                TailReading::Pending if !last => (OutputChunk::default(), PieceKind::Exact),
                TailReading::Pending | TailReading::Ambiguous => (
                    self.read_settled(path, offset, last).await?,
                    PieceKind::Opaque,
                ),
            });
        }
        self.read_window(path, offset, state).await
    }

    /// One `view` window from `offset` (see [`transfer::read_window`]).
    async fn read_window(
        &self,
        path: &str,
        offset: u64,
        state: &mut ReadState,
    ) -> Result<(OutputChunk, PieceKind)> {
        let known_from = state.known.known_from(offset);
        let anchored = transfer::anchored_block(offset, known_from, state.piece);
        // Without enough known output, a full window whose start happens to
        // be plain text places itself; else the smaller anchored one.
        let mut tries = vec![(anchored, true)];
        if anchored < state.piece {
            tries.insert(0, (state.piece, false));
        }
        for (size, use_known) in tries {
            let block = offset / size * size;
            let text = self.client.output_view(path, block, size).await?;
            // anchored_block keeps the block start at or after known_from.
            let known = if use_known {
                state.known.decoded_from(block)
            } else {
                None
            };
            match transfer::read_window(&text, block, offset, known.as_deref()) {
                transfer::WindowReading::Exact(text) => {
                    return Ok((
                        OutputChunk {
                            advance: text.len() as u64,
                            data: text.into_bytes(),
                            more: false,
                        },
                        PieceKind::Exact,
                    ))
                }
                transfer::WindowReading::Empty => {
                    return Ok((OutputChunk::default(), PieceKind::Exact))
                }
                transfer::WindowReading::Replaced { mut after } => {
                    if after
                        .trim_end_matches(char::REPLACEMENT_CHARACTER)
                        .is_empty()
                    {
                        // The window ended at the unit: the server's own
                        // character slicing skips what precedes it.
                        let before =
                            text.len() - after.len() - char::REPLACEMENT_CHARACTER.len_utf8();
                        let chars = text[..before].chars().count() as u64;
                        let longer = self.client.output_view(path, block + chars, size).await?;
                        after = longer
                            .strip_prefix(char::REPLACEMENT_CHARACTER)
                            .unwrap_or_default()
                            .to_string();
                    }
                    let len = self
                        .replaced_unit(path, offset, &after, state.piece)
                        .await?;
                    return Ok((
                        OutputChunk {
                            data: char::REPLACEMENT_CHARACTER.to_string().into_bytes(),
                            advance: len,
                            more: false,
                        },
                        PieceKind::Unit,
                    ));
                }
                transfer::WindowReading::Unplaced => continue,
            }
        }
        bail!("the output of {path} at byte {offset} could not be placed in a window")
    }

    /// How many bytes the replaced unit at `offset` is, from the server's
    /// decoding of blocks that start 1, 2 and 3 bytes further on (see
    /// [`transfer::unit_length`]). Each probe reads a block of a power of two
    /// that divides its start, so it starts exactly there.
    async fn replaced_unit(&self, path: &str, offset: u64, after: &str, piece: u64) -> Result<u64> {
        let mut probes = Vec::new();
        for step in 1..=3u64 {
            let start = offset + step;
            let size = (1u64 << start.trailing_zeros().min(63)).min(piece);
            let decoded = self.client.output_view(path, start, size).await?;
            let probe = transfer::probe(&decoded, size, after);
            probes.push(probe);
            if probe == transfer::Probe::EndsHere {
                break;
            }
        }
        transfer::unit_length(&probes).with_context(|| {
            format!(
                "could not tell how many bytes the invalid UTF-8 at byte {offset} of {path} is \
                 (probes: {probes:?})"
            )
        })
    }

    /// The usual read: one `view` window placed on the known output, which
    /// answers with the output from `offset` on and says whether that is
    /// all, so a poll costs one request, not a `stat` and a `tail`. `None`
    /// when the window cannot tell: the pieces read then.
    async fn read_poll(
        &self,
        path: &str,
        offset: u64,
        state: &ReadState,
    ) -> Result<Option<(OutputChunk, transfer::AfterPoll)>> {
        let max = state.piece.min(POLL_WINDOW);
        let Some(window) = transfer::poll_window(offset, &state.known, max) else {
            return Ok(None);
        };
        let reply = match self
            .client
            .output_view(path, window.offset, window.size)
            .await
        {
            Ok(reply) => reply,
            // Not there yet: the job has not started writing.
            Err(err) if is_not_found(&err) => {
                return Ok(Some((OutputChunk::default(), transfer::AfterPoll::End)))
            }
            Err(err) if is_read_too_big(&err) => {
                tracing::debug!("a poll window of {path} was refused: {err:#}");
                return Ok(None);
            }
            Err(err) => return Err(err),
        };
        Ok(match transfer::read_poll(&reply, &window, offset) {
            transfer::PollReading::Exact { text, after } => Some((
                OutputChunk {
                    advance: text.len() as u64,
                    data: text.into_bytes(),
                    more: false,
                },
                after,
            )),
            transfer::PollReading::Unsure => None,
        })
    }

    /// Whether `offset` is inside the S3 snapshot being read of `path`.
    async fn in_snapshot(&self, path: &str, offset: u64) -> bool {
        self.snapshots
            .lock()
            .await
            .get(path)
            .is_some_and(|snapshot| offset < snapshot.size)
    }

    /// Reads output from `offset` on: a poll window first (see
    /// [`Self::read_poll`]), then, while more is there, bounded pieces,
    /// several per call while a backlog lasts (see [`READ_BUDGET`]).
    pub(super) async fn read_pieces(
        &self,
        path: &str,
        offset: u64,
        last: bool,
    ) -> Result<OutputChunk> {
        let facts = self.facts().await?.clone();
        let mut reads = self.reads.lock().await;
        let state = reads
            .entry(path.to_string())
            .or_insert_with(|| ReadState::new(transfer::output_piece_for(facts.max_ops_file_size)));
        let started = std::time::Instant::now();
        let mut chunk = OutputChunk::default();
        if !self.in_snapshot(path, offset).await {
            if let Some((piece, after)) = self.read_poll(path, offset, state).await? {
                if piece.advance > 0 {
                    state.advanced(offset, &piece, PieceKind::Exact);
                }
                match after {
                    transfer::AfterPoll::End => return Ok(piece),
                    transfer::AfterPoll::Pending if !last => return Ok(piece),
                    _ => chunk = piece,
                }
            }
        }
        loop {
            let at = offset + chunk.advance;
            let size = match self.client.output_stat(path).await {
                Ok(stat) => stat.size,
                // Not there yet: the job has not started writing.
                Err(err) if is_not_found(&err) && chunk.advance == 0 => return Ok(chunk),
                Err(err) if chunk.advance > 0 => {
                    tracing::debug!("stopped reading {path} at byte {at}: {err:#}");
                    return Ok(chunk);
                }
                Err(err) => return Err(err),
            };
            if size <= at {
                return Ok(chunk);
            }
            let backlog = self.in_snapshot(path, at).await || (facts.s3 && size - at > S3_BACKLOG);
            // A `tail` reads to the end of the file: no `stat` after it.
            let to_the_end = !backlog && size - at <= state.piece;
            let read = if backlog {
                self.read_backlog(path, at, size)
                    .await
                    .map(|c| (c, PieceKind::Opaque))
            } else {
                self.read_piece(path, at, size, last, state).await
            };
            let (piece, kind) = match read {
                Ok(read) => read,
                Err(err) if is_read_too_big(&err) && state.piece > transfer::MIN_OUTPUT_PIECE => {
                    state.shrink();
                    tracing::info!(
                        "the server could not return a read of {path}; reading {} at a time",
                        crate::progress::format_bytes(state.piece)
                    );
                    continue;
                }
                Err(err) if chunk.advance > 0 => {
                    tracing::debug!("stopped reading {path} at byte {at}: {err:#}");
                    return Ok(chunk);
                }
                Err(err) => return Err(err),
            };
            if piece.advance == 0 {
                return Ok(chunk);
            }
            state.advanced(at, &piece, kind);
            chunk.data.extend_from_slice(&piece.data);
            chunk.advance += piece.advance;
            if to_the_end {
                return Ok(chunk);
            }
            if chunk.advance >= READ_BUDGET || started.elapsed() >= READ_TIME_BUDGET {
                chunk.more = true;
                return Ok(chunk);
            }
        }
    }
}

/// Writes at most `left` bytes, then refuses, ending the transfer early.
struct LimitedWriter<'a> {
    inner: &'a mut Vec<u8>,
    left: u64,
}

impl tokio::io::AsyncWrite for LimitedWriter<'_> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.left == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::other("piece complete")));
        }
        let n = (buf.len() as u64).min(self.left) as usize;
        self.inner.extend_from_slice(&buf[..n]);
        self.left -= n as u64;
        std::task::Poll::Ready(Ok(n))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Reads of a file served like FirecREST serves it: byte-exact through the
/// `tail` and `view` pieces, and never a reply over the buffer.
#[cfg(test)]
mod piece_tests {
    use super::super::FirecrestBackend;
    use crate::backend::{Backend, OutputChunk};
    use crate::config::Credentials;
    use crate::firecrest::retry::RetryPolicy;
    use crate::firecrest::{Client, ClientSettings};
    use crate::secret::Secret;
    use crate::transfer::TransferThreshold;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

    /// The server's `stat`, `tail` and `view` over `data`, like the double
    /// and the recordings: lossy decoding, `view` sliced by characters from
    /// its `size`-aligned block; counts replies over `limit`.
    struct FileServer {
        data: Arc<std::sync::Mutex<Vec<u8>>>,
        limit: u64,
        oversized: Arc<AtomicU64>,
        requests: Arc<AtomicU64>,
    }

    impl Respond for FileServer {
        fn respond(&self, request: &Request) -> ResponseTemplate {
            self.requests.fetch_add(1, Ordering::SeqCst);
            let data = self.data.lock().unwrap().clone();
            let query: std::collections::HashMap<String, String> =
                request.url.query_pairs().into_owned().collect();
            let number = |key: &str| query.get(key).and_then(|v| v.parse::<u64>().ok());
            let len = data.len() as u64;
            let reply = |bytes: &[u8]| {
                if bytes.len() as u64 > self.limit {
                    self.oversized.fetch_add(1, Ordering::SeqCst);
                }
            };
            match request.url.path().rsplit('/').next() {
                Some("stat") => ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"output": {"size": len, "mode": 33188}})),
                Some("tail") => {
                    let from = number("bytes").unwrap_or(1).saturating_sub(1).min(len) as usize;
                    reply(&data[from..]);
                    ResponseTemplate::new(200).set_body_json(serde_json::json!({"output": {
                        "content": String::from_utf8_lossy(&data[from..]),
                        "contentType": "bytes", "startPosition": from + 1, "endPosition": -1}}))
                }
                Some("view") => {
                    let size = number("size").unwrap_or(self.limit).max(1);
                    let offset = number("offset").unwrap_or(0);
                    let from = (offset / size * size).min(len);
                    let to = (from + 2 * size).min(len);
                    let block = &data[from as usize..to as usize];
                    reply(block);
                    let text: String = String::from_utf8_lossy(block)
                        .chars()
                        .skip((offset % size) as usize)
                        .take(size as usize)
                        .collect();
                    ResponseTemplate::new(200).set_body_json(serde_json::json!({"output": text}))
                }
                _ => ResponseTemplate::new(404),
            }
        }
    }

    /// A backend reading `data` from a [`FileServer`] whose limit is `limit`;
    /// with the counts of oversized replies and of requests.
    async fn file_backend(
        data: Arc<std::sync::Mutex<Vec<u8>>>,
        limit: u64,
    ) -> (MockServer, FirecrestBackend, Arc<AtomicU64>, Arc<AtomicU64>) {
        let server = MockServer::start().await;
        let mut systems: serde_json::Value = {
            let text = std::fs::read_to_string(format!(
                "{}/tests/fixtures/recorded/systems.json",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap();
            let exchanges: serde_json::Value = serde_json::from_str(&text).unwrap();
            exchanges[1]["response"]["body"].clone()
        };
        systems["systems"][0]["dataOperation"]["max_ops_file_size"] = serde_json::json!(limit);
        systems["systems"][0]["dataOperation"]["data_transfer"] = serde_json::Value::Null;
        Mock::given(method("GET"))
            .and(path("/status/systems"))
            .respond_with(ResponseTemplate::new(200).set_body_json(systems))
            .mount(&server)
            .await;
        let oversized = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        Mock::given(method("GET"))
            .respond_with(FileServer {
                data,
                limit,
                oversized: oversized.clone(),
                requests: requests.clone(),
            })
            .mount(&server)
            .await;
        let client = Client::new(ClientSettings {
            base_url: server.uri(),
            system: "daint".into(),
            auth: Credentials::AccessToken(Secret::new("token")),
            request_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
        })
        .unwrap();
        let backend = FirecrestBackend::from_client(client, TransferThreshold::Above(1 << 30));
        (server, backend, oversized, requests)
    }

    /// Reads `data` through the backend from offset 0 until it is all read,
    /// with the server's limit at `limit`; returns what was shown, the
    /// number of oversized replies and of requests.
    async fn read_through(data: Vec<u8>, limit: u64) -> (Vec<u8>, u64, u64) {
        let file = Arc::new(std::sync::Mutex::new(data.clone()));
        let (_server, backend, oversized, requests) = file_backend(file, limit).await;
        let mut shown = Vec::new();
        let mut offset = 0;
        let mut stuck = 0;
        while offset < data.len() as u64 {
            let chunk = backend
                .read_output("/f/job.out", offset, true)
                .await
                .unwrap();
            offset += chunk.advance;
            shown.extend(chunk.data);
            stuck = if chunk.advance == 0 { stuck + 1 } else { 0 };
            assert!(stuck < 3, "no progress at byte {offset}");
        }
        assert_eq!(offset, data.len() as u64, "read past the end");
        (
            shown,
            oversized.load(Ordering::SeqCst),
            requests.load(Ordering::SeqCst),
        )
    }

    #[tokio::test]
    async fn replaced_bytes_inside_a_read_are_counted_from_the_file_size() {
        // "a", one invalid byte, "b\n": 4 bytes, shown as 5.
        let file = Arc::new(std::sync::Mutex::new(b"a\xffb\n".to_vec()));
        let (_server, backend, _, _) = file_backend(file, 5 * 1024 * 1024).await;
        let chunk = backend.read_output("/f/job.out", 0, false).await.unwrap();
        assert_eq!(chunk.advance, 4);
        assert_eq!(chunk.data, "a\u{fffd}b\n".as_bytes());
    }

    #[tokio::test]
    async fn a_possible_partial_character_at_the_end_waits_until_the_last_read() {
        // The first two bytes of "日" at the end, read through a `tail`
        // (at byte 10) and through a poll window (at byte 0).
        for (data, offset) in [(&b"0123456789\xe6\x97"[..], 10), (&b"\xe6\x97"[..], 0)] {
            let file = Arc::new(std::sync::Mutex::new(data.to_vec()));
            let (_server, backend, _, _) = file_backend(file, 5 * 1024 * 1024).await;
            let path = "/f/job.out";
            assert_eq!(
                backend.read_output(path, offset, false).await.unwrap(),
                OutputChunk::default()
            );
            let last = backend.read_output(path, offset, true).await.unwrap();
            assert_eq!(last.advance, 2);
            assert_eq!(last.data, "\u{fffd}".as_bytes());
        }
    }

    #[tokio::test]
    async fn a_poll_of_trickling_output_costs_one_request() {
        let file = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (_server, backend, oversized, requests) =
            file_backend(file.clone(), 5 * 1024 * 1024).await;
        let mut written = Vec::new();
        let mut shown = Vec::new();
        let mut offset = 0;
        // The first read learns the server's limits (`status/systems`).
        backend.read_output("/f/job.out", 0, false).await.unwrap();
        let before = requests.load(Ordering::SeqCst);
        let polls = 400;
        for i in 0..polls {
            // Lines of every length, multi-byte characters cut across polls,
            // and polls that find nothing.
            let line = format!("{i} grüße ✓ 日本語 🚀 {}\n", "x".repeat(i % 37));
            let bytes = line.as_bytes();
            let cut = (i * 7) % bytes.len();
            if i % 5 != 4 {
                file.lock().unwrap().extend_from_slice(&bytes[..cut]);
                written.extend_from_slice(&bytes[..cut]);
            }
            let chunk = backend
                .read_output("/f/job.out", offset, false)
                .await
                .unwrap();
            offset += chunk.advance;
            shown.extend(chunk.data);
            if i % 5 != 4 {
                file.lock().unwrap().extend_from_slice(&bytes[cut..]);
                written.extend_from_slice(&bytes[cut..]);
            }
        }
        let chunk = backend
            .read_output("/f/job.out", offset, true)
            .await
            .unwrap();
        shown.extend(chunk.data);
        assert_eq!(
            String::from_utf8_lossy(&shown),
            String::from_utf8_lossy(&written)
        );
        assert_eq!(oversized.load(Ordering::SeqCst), 0);
        let spent = requests.load(Ordering::SeqCst) - before;
        // Each poll is one `view`, also one that ends inside a character;
        // the last read, at a whole line, too.
        assert!(
            spent <= polls as u64 + 1,
            "{spent} requests for {polls} polls"
        );
    }

    /// Output that puts multi-byte characters, invalid bytes, truncated
    /// characters and literal U+FFFD at every alignment against a power of two.
    fn mixed_output(lines: usize) -> Vec<u8> {
        let mut data = Vec::new();
        for i in 0..lines {
            data.extend_from_slice(format!("L{i} grüße ✓ 日本語 🚀 ").as_bytes());
            match i % 7 {
                0 => data.extend_from_slice(b"bad \xff byte"),
                1 => data.extend_from_slice(b"cut \xe6\x97 char"),
                2 => data.extend_from_slice(b"two \xff\xfe bad"),
                3 => data.extend_from_slice("literal \u{fffd} mark".as_bytes()),
                4 => data.extend_from_slice(b"stray \x80\xbf cont"),
                5 => data.extend_from_slice(b"lead \xf0\x9f\x9a then \xe2"),
                _ => data.extend_from_slice(&b"x".repeat(i % 13)),
            }
            data.push(b'\n');
        }
        data
    }

    #[tokio::test]
    async fn a_backlog_over_the_limit_is_read_byte_exact_in_bounded_pieces() {
        let data = mixed_output(3000);
        assert!(data.len() > 100_000, "{}", data.len());
        // 16 KiB buffer: pieces of 4 KiB, so the backlog goes through views.
        let (shown, oversized, requests) = read_through(data.clone(), 16 * 1024).await;
        assert_eq!(oversized, 0, "a reply was over the buffer");
        let expected = String::from_utf8_lossy(&data).into_owned().into_bytes();
        if shown != expected {
            let at = shown
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!(
                "differs at byte {at}: shown {:?} expected {:?}",
                String::from_utf8_lossy(&shown[at.saturating_sub(20)..(at + 40).min(shown.len())]),
                String::from_utf8_lossy(
                    &expected[at.saturating_sub(20)..(at + 40).min(expected.len())]
                )
            );
        }
        eprintln!("{} bytes in {requests} requests", data.len());
    }

    #[tokio::test]
    async fn plain_text_backlogs_need_about_one_request_per_piece() {
        let data: Vec<u8> = (0..20000)
            .flat_map(|i| format!("B{i} xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n").into_bytes())
            .collect();
        let (shown, oversized, requests) = read_through(data.clone(), 64 * 1024).await;
        assert_eq!(oversized, 0);
        assert_eq!(shown, data);
        // Pieces of 16 KiB, a stat and a view each.
        let pieces = data.len() as u64 / (16 * 1024);
        assert!(
            requests < 3 * pieces + 10,
            "{requests} requests for {pieces} pieces"
        );
    }
}
