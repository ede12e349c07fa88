//! Showing a byte stream as text without mangling it.

/// Decodes a byte stream for display: valid UTF-8 passes through untouched,
/// invalid bytes become U+FFFD, and a character cut at the end of a read
/// waits for its remaining bytes instead of being mangled.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes; returns what can be shown now.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::with_capacity(self.pending.len());
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    out.extend_from_slice(valid.as_bytes());
                    rest = &[];
                    break;
                }
                Err(err) => {
                    let (valid, after) = rest.split_at(err.valid_up_to());
                    out.extend_from_slice(valid);
                    match err.error_len() {
                        Some(bad) => {
                            out.extend_from_slice(
                                char::REPLACEMENT_CHARACTER.to_string().as_bytes(),
                            );
                            rest = &after[bad..];
                        }
                        None => {
                            // An incomplete character at the end: keep it.
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// Shows whatever is held back, lossily: the stream has ended.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&rest).into_owned().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_stream_reassembles_split_characters() {
        let text = "grüße ✓ 日本語\n".as_bytes();
        for cut in 0..=text.len() {
            let mut stream = Utf8Stream::default();
            let mut out = stream.push(&text[..cut]);
            out.extend(stream.push(&text[cut..]));
            out.extend(stream.finish());
            assert_eq!(out, text, "cut at {cut}");
        }
    }

    #[test]
    fn utf8_stream_replaces_invalid_bytes_without_shifting() {
        let mut stream = Utf8Stream::default();
        let mut out = stream.push(b"a\xffb");
        out.extend(stream.push(b"\xe6\x97"));
        out.extend(stream.push(b"\xa5c\xc0d"));
        out.extend(stream.finish());
        assert_eq!(String::from_utf8(out).unwrap(), "a\u{fffd}b日c\u{fffd}d");
    }

    #[test]
    fn utf8_stream_finish_shows_a_truncated_tail_lossily() {
        let mut stream = Utf8Stream::default();
        assert_eq!(stream.push(b"ok \xe6\x97"), b"ok ");
        assert_eq!(String::from_utf8(stream.finish()).unwrap(), "\u{fffd}");
        assert!(stream.finish().is_empty());
    }
}
