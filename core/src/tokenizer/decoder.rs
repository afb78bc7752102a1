//! Streaming detokenisation: token ids in, complete UTF-8 text out.
//!
//! Byte-level BPE tokens and SentencePiece byte tokens (`<0xE6>`) can end in the middle of a
//! character. The decoder keeps the incomplete tail (at most 3 bytes) and emits only complete
//! characters. Bytes that can never become a valid character are replaced by U+FFFD, one per
//! maximal ill-formed subpart (the Unicode "substitution of maximal subparts" practice, which is
//! what Rust's `String::from_utf8_lossy` and Python's `bytes.decode(errors="replace")` do), so
//! the stream decodes exactly as decoding the concatenated bytes at once would.

use core::fmt;

use super::{TokenType, Tokenizer};
use crate::error::{Error, ErrorKind, Result};

const REPLACEMENT: [u8; 3] = [0xef, 0xbf, 0xbd];

/// Incremental UTF-8 validator holding an incomplete character.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Utf8Stream {
    pend: [u8; 4],
    len: u8,
    need: u8,
}

impl Utf8Stream {
    /// Feed one byte; complete characters and replacements go to `emit`.
    pub(crate) fn push(&mut self, b: u8, emit: &mut impl FnMut(&[u8])) {
        if self.len > 0 {
            let lead = self.pend[0];
            let ok = if self.len == 1 {
                match lead {
                    0xe0 => (0xa0..=0xbf).contains(&b),
                    0xed => (0x80..=0x9f).contains(&b),
                    0xf0 => (0x90..=0xbf).contains(&b),
                    0xf4 => (0x80..=0x8f).contains(&b),
                    _ => (0x80..=0xbf).contains(&b),
                }
            } else {
                (0x80..=0xbf).contains(&b)
            };
            if ok {
                self.pend[self.len as usize] = b;
                self.len += 1;
                if self.len == self.need {
                    emit(&self.pend[..self.len as usize]);
                    self.len = 0;
                }
                return;
            }
            // The pending bytes are a maximal ill-formed subpart; `b` starts afresh.
            emit(&REPLACEMENT);
            self.len = 0;
        }
        let need = match b {
            0x00..=0x7f => {
                emit(&[b]);
                return;
            }
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => {
                emit(&REPLACEMENT);
                return;
            }
        };
        self.pend[0] = b;
        self.len = 1;
        self.need = need;
    }

    /// End of input: an incomplete character becomes one U+FFFD.
    pub(crate) fn flush(&mut self, emit: &mut impl FnMut(&[u8])) {
        if self.len > 0 {
            emit(&REPLACEMENT);
            self.len = 0;
        }
    }

    /// The bytes of the incomplete character held back.
    pub(crate) fn pending(&self) -> &[u8] {
        &self.pend[..self.len as usize]
    }
}

/// Streaming decoder: push token ids, get text that is always whole UTF-8 characters.
///
/// ```
/// # fn demo<S: AsRef<[u32]>>(tok: &edgelora::tokenizer::Tokenizer<'_, S>, ids: &[u32]) -> edgelora::Result<()> {
/// let mut dec = tok.decoder();
/// let mut buf = [0u8; 256];
/// for &id in ids {
///     let n = dec.push(id, &mut buf)?;
///     let text = core::str::from_utf8(&buf[..n]).unwrap(); // always valid UTF-8
///     # let _ = text;
/// }
/// let n = dec.finish(&mut buf)?; // a trailing incomplete character becomes U+FFFD
/// # let _ = n; Ok(()) }
/// ```
pub struct Decoder<'t, 'a, S: AsRef<[u32]>> {
    tok: &'t Tokenizer<'a, S>,
    utf8: Utf8Stream,
    skip_special: bool,
    strip_leading_space: bool,
    at_start: bool,
}

// Manual impls: deriving would demand `S: Clone + Debug` for a shared reference.
impl<S: AsRef<[u32]>> Clone for Decoder<'_, '_, S> {
    fn clone(&self) -> Self {
        Decoder {
            tok: self.tok,
            ..*self
        }
    }
}

impl<S: AsRef<[u32]>> fmt::Debug for Decoder<'_, '_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("pending", &self.utf8.pending())
            .field("skip_special", &self.skip_special)
            .field("strip_leading_space", &self.strip_leading_space)
            .finish_non_exhaustive()
    }
}

impl<'t, 'a, S: AsRef<[u32]>> Decoder<'t, 'a, S> {
    /// A decoder that renders every token, special ones included, and strips nothing.
    pub fn new(tok: &'t Tokenizer<'a, S>) -> Self {
        Decoder {
            tok,
            utf8: Utf8Stream::default(),
            skip_special: false,
            strip_leading_space: false,
            at_start: true,
        }
    }

    /// Render control and unknown tokens (`<|im_end|>`, `<s>`) as nothing (default: render
    /// their text). User-defined tokens are always rendered, as llama.cpp and Hugging Face do.
    pub fn skip_special(mut self, skip: bool) -> Self {
        self.skip_special = skip;
        self
    }

    /// Drop one space at the very start of the output: the space a SentencePiece tokenizer
    /// with `add_space_prefix` put in front of the text (default: keep it).
    pub fn strip_leading_space(mut self, strip: bool) -> Self {
        self.strip_leading_space = strip;
        self
    }

    /// The bytes of an incomplete character held back until the next token completes it.
    pub fn pending(&self) -> &[u8] {
        self.utf8.pending()
    }

    /// Decode `id` and hand the complete text it finishes to `emit` in chunks.
    fn run(&mut self, id: u32, emit: &mut impl FnMut(&[u8])) -> Result<()> {
        let ty = self.tok.token_type(id)?;
        let special = matches!(ty, TokenType::Control | TokenType::Unknown);
        if special && self.skip_special {
            return Ok(());
        }
        let mut strip = self.strip_leading_space && self.at_start;
        let mut out = |mut s: &[u8]| {
            if strip && !s.is_empty() {
                strip = false;
                if s[0] == b' ' {
                    s = &s[1..];
                }
            }
            if !s.is_empty() {
                emit(s);
            }
        };
        if special || ty == TokenType::UserDefined {
            // Special text is not byte-encoded; what was pending before it is cut off (as when
            // Hugging Face decodes the byte runs between added tokens separately).
            self.utf8.flush(&mut out);
            for chunk in self.tok.token_text(id)?.utf8_chunks() {
                out(chunk.valid().as_bytes());
                if !chunk.invalid().is_empty() {
                    out(&REPLACEMENT);
                }
            }
        } else {
            let utf8 = &mut self.utf8;
            self.tok
                .for_each_token_byte(id, &mut |b| utf8.push(b, &mut out))?;
        }
        self.at_start = strip;
        Ok(())
    }

    /// Decode one token into `out`, returning the number of bytes written: always whole UTF-8
    /// characters (the bytes of a character split across tokens are held back).
    ///
    /// # Errors
    /// [`ErrorKind::TokenOutOfRange`] for an id outside the vocabulary;
    /// [`ErrorKind::BufferTooSmall`] if `out` cannot hold the text, in which case the decoder's
    /// state is unchanged (retry with a larger buffer; [`Tokenizer::max_token_bytes`]` * 3 + 3`
    /// bytes always suffice).
    pub fn push(&mut self, id: u32, out: &mut [u8]) -> Result<usize> {
        let mut needed = 0usize;
        self.clone().run(id, &mut |s| needed += s.len())?;
        if needed > out.len() {
            return Err(
                Error::new(ErrorKind::BufferTooSmall, "decoded text of a token")
                    .detail(needed as u64, out.len() as u64),
            );
        }
        let mut n = 0;
        self.run(id, &mut |s| {
            out[n..n + s.len()].copy_from_slice(s);
            n += s.len();
        })?;
        Ok(n)
    }

    /// Decode one token into a [`fmt::Write`] sink (a `String`, `heapless::String`, a UART
    /// writer).
    ///
    /// # Errors
    /// [`ErrorKind::TokenOutOfRange`] for an id outside the vocabulary;
    /// [`ErrorKind::BufferTooSmall`] if the sink refuses the text (it may then hold part of it).
    pub fn push_to<W: fmt::Write + ?Sized>(&mut self, id: u32, w: &mut W) -> Result<()> {
        let mut failed = false;
        self.run(id, &mut |s| {
            // `run` only emits whole characters or U+FFFD, so `s` is UTF-8.
            if let Ok(s) = core::str::from_utf8(s) {
                failed |= w.write_str(s).is_err();
            }
        })?;
        if failed {
            return Err(Error::new(
                ErrorKind::BufferTooSmall,
                "fmt::Write sink refused decoded text",
            ));
        }
        Ok(())
    }

    /// End of the stream: an incomplete character still held back becomes U+FFFD. Returns the
    /// bytes written (0 or 3).
    ///
    /// # Errors
    /// [`ErrorKind::BufferTooSmall`] if `out` is shorter than the 3 bytes of U+FFFD while a
    /// character is pending (the state is then unchanged).
    pub fn finish(&mut self, out: &mut [u8]) -> Result<usize> {
        if self.utf8.pending().is_empty() {
            return Ok(0);
        }
        let have = out.len();
        let dst = out.get_mut(..3).ok_or_else(|| {
            Error::new(ErrorKind::BufferTooSmall, "decoder flush").detail(3, have as u64)
        })?;
        dst.copy_from_slice(&REPLACEMENT);
        self.utf8 = Utf8Stream::default();
        self.at_start = false;
        Ok(3)
    }

    /// [`Decoder::finish`] into a [`fmt::Write`] sink.
    ///
    /// # Errors
    /// [`ErrorKind::BufferTooSmall`] if the sink refuses the text.
    pub fn finish_to<W: fmt::Write + ?Sized>(&mut self, w: &mut W) -> Result<()> {
        if self.utf8.pending().is_empty() {
            return Ok(());
        }
        self.utf8 = Utf8Stream::default();
        self.at_start = false;
        w.write_str("\u{fffd}").map_err(|_| {
            Error::new(
                ErrorKind::BufferTooSmall,
                "fmt::Write sink refused decoded text",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    fn stream(chunks: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let mut s = Utf8Stream::default();
        let mut out = Vec::new();
        let mut sizes = Vec::new();
        for c in chunks {
            let before = out.len();
            for &b in *c {
                s.push(b, &mut |x: &[u8]| out.extend_from_slice(x));
            }
            // Every prefix emitted so far is valid UTF-8.
            assert!(core::str::from_utf8(&out).is_ok());
            sizes.push(out.len() - before);
        }
        s.flush(&mut |x: &[u8]| out.extend_from_slice(x));
        (out, sizes)
    }

    #[test]
    fn holds_split_characters() {
        // "日" = E6 97 A5 split over three tokens, then "🙂" = F0 9F 99 82 over two.
        let (out, sizes) = stream(&[b"a\xe6", b"\x97", b"\xa5b", b"\xf0\x9f", b"\x99\x82"]);
        assert_eq!(out, "a日b🙂".as_bytes());
        assert_eq!(sizes, [1, 0, 4, 0, 4]);
    }

    #[test]
    fn lossy_like_std_on_every_split() {
        let cases: [&[u8]; 8] = [
            b"\xe6\x97",          // truncated at the end
            b"\xff\xfeA",         // invalid leads
            b"\xe0\x80\x80",      // overlong: E0 must be followed by A0..BF
            b"\xed\xa0\x80x",     // surrogate
            b"\xf4\x90\x80\x80",  // above U+10FFFF
            b"\xc3\x28",          // broken 2-byte
            b"\xf0\x9f\x99a\xf0", // broken 4-byte, then truncated
            "mixé 日本 🙂".as_bytes(),
        ];
        for case in cases {
            let want = String::from_utf8_lossy(case).into_owned();
            for cut in 0..=case.len() {
                let (out, _) = stream(&[&case[..cut], &case[cut..]]);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    want,
                    "{case:x?} cut at {cut}"
                );
            }
            let singles: Vec<&[u8]> = case.chunks(1).collect();
            assert_eq!(String::from_utf8(stream(&singles).0).unwrap(), want);
        }
    }

    #[test]
    fn random_bytes_match_from_utf8_lossy() {
        let mut rng = crate::sample::Rng::new(3);
        for _ in 0..2000 {
            let n = (rng.next_u64() % 12) as usize;
            let bytes: Vec<u8> = (0..n)
                .map(|_| {
                    let r = rng.next_u64();
                    // Bias toward bytes that matter for UTF-8.
                    [
                        0x41, 0x80, 0xbf, 0xc2, 0xe0, 0xed, 0xf0, 0xf4, 0xff, r as u8,
                    ][(r >> 8) as usize % 10]
                })
                .collect();
            let chunks: Vec<&[u8]> = bytes.chunks(1 + (rng.next_u64() % 3) as usize).collect();
            assert_eq!(
                String::from_utf8(stream(&chunks).0).unwrap(),
                String::from_utf8_lossy(&bytes),
                "{bytes:x?}"
            );
        }
    }
}
