//! Tokenizers built from GGUF metadata, without an allocator.
//!
//! Two vocabularies, chosen by `tokenizer.ggml.model`:
//!
//! - `gpt2`: byte-level BPE (GPT-2, SmolLM2, Qwen, Llama 3 style). Text is cut into pieces by the
//!   pre-tokeniser named in `tokenizer.ggml.pre` (see [`PreTokenizer`]), each piece's bytes are
//!   spelled with GPT-2's byte-to-character map (`' '` is `Ġ`), and the pairs listed in
//!   `tokenizer.ggml.merges` ("a b", rank = position) are merged lowest rank first.
//! - `llama`: SentencePiece-style BPE as llama.cpp's SPM tokenizer runs it. Spaces become `▁`,
//!   a `▁` is put in front of the text (`tokenizer.ggml.add_space_prefix`, default true) and
//!   after every special token, and adjacent symbols are merged, highest
//!   `tokenizer.ggml.scores` first, while their concatenation is a token. Characters that end up
//!   as no token are spelled with the byte tokens `<0xXX>` (token type 6).
//!
//! Control (type 3), unknown (2) and user-defined (4) tokens are matched as whole units in the
//! text before any of that: user-defined ones always, control and unknown ones only when the
//! caller passes `parse_special` (llama.cpp's rule; Hugging Face always matches both). Merges
//! never produce a control token.
//!
//! # Memory
//! [`Tokenizer`] borrows the GGUF's arrays and a caller-provided `u32` scratch of
//! [`Tokenizer::scratch_len`] words holding its indexes: the offset of every token in the
//! `tokenizer.ggml.tokens` array (`n_vocab + 1`), an open-addressing token -> id table
//! (`3·n_vocab` words), a byte -> token table, the special tokens sorted by first byte, and for
//! `gpt2` a `(left, right) -> (rank, merged)` table (`≈ 5.5·n_merges` words). Building it is
//! `O(n_vocab + n_merges)` and validates every element it reads: a malformed array gives a typed
//! [`Error`] naming the key and the byte offset of the element, never a panic.
//!
//! Encoding merges each piece in working memory taken from the stack for pieces up to 64 bytes
//! (1.5 KiB) and otherwise from the unused tail of the caller's output buffer; see
//! [`Tokenizer::encode`]. Nothing allocates; the `alloc` feature adds owning conveniences.
//!
//! Decoding goes through [`Decoder`], which never emits half a UTF-8 character; chat prompts are
//! rendered by [`ChatTemplate`].
//!
//! # Measured (SmolLM2-135M, 49 152 tokens, 48 900 merges; 2-core x86_64 VM under load)
//! Scratch 466 094 words (1.86 MB); building the indexes 18-60 ms; encoding 3.3-4.4 M tokens/s
//! (9-11 MB/s of mixed text), where Hugging Face `tokenizers` on the same text and machine does
//! 0.27 M tokens/s single-threaded. Of the encode time, 40% is merge-table lookups (the table is
//! larger than L2), which is why the merge loop keeps each pair's merged id instead of looking it
//! up twice. `cargo test --release -p edgelora-tests --test tokenizer -- --ignored --nocapture
//! encode_throughput` reproduces the figure.

mod build;
mod chat;
mod decoder;
mod merge;
mod pretok;
mod unicode;
mod unicode_tables;

pub use chat::{ChatFormat, ChatMessage, ChatTemplate, CHAT_TEMPLATE_KEY};
pub use decoder::Decoder;
pub use pretok::PreTokenizer;

use crate::error::{Error, ErrorKind, Result};
use crate::format::gguf::ArrayView;
use build::{
    hash_bytes, hash_pair, int_elem, parse_byte_token, slot_of, tok_find, tok_text, Layout,
};
use merge::{merge_piece, work_len, PairKey, FALLBACK, NONE};
use unicode::{byte_level_spelling, char_to_byte, utf8_len};

#[cfg(feature = "alloc")]
use alloc::{string::String, vec, vec::Vec};

/// `tokenizer.ggml.model`
pub const MODEL_KEY: &str = "tokenizer.ggml.model";
/// `tokenizer.ggml.pre`
pub const PRE_KEY: &str = "tokenizer.ggml.pre";
/// `tokenizer.ggml.tokens`
pub const TOKENS_KEY: &str = "tokenizer.ggml.tokens";
/// `tokenizer.ggml.token_type`
pub const TOKEN_TYPE_KEY: &str = "tokenizer.ggml.token_type";
/// `tokenizer.ggml.scores`
pub const SCORES_KEY: &str = "tokenizer.ggml.scores";
/// `tokenizer.ggml.merges`
pub const MERGES_KEY: &str = "tokenizer.ggml.merges";
const BOS_KEY: &str = "tokenizer.ggml.bos_token_id";
const EOS_KEY: &str = "tokenizer.ggml.eos_token_id";
const UNK_KEY: &str = "tokenizer.ggml.unknown_token_id";
const EOT_KEY: &str = "tokenizer.ggml.eot_token_id";
const EOM_KEY: &str = "tokenizer.ggml.eom_token_id";
const ADD_BOS_KEY: &str = "tokenizer.ggml.add_bos_token";
const ADD_SPACE_PREFIX_KEY: &str = "tokenizer.ggml.add_space_prefix";

/// Texts llama.cpp treats as end-of-generation when they are in the vocabulary.
const EOG_TEXTS: [&str; 10] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];
const MAX_EOG: usize = 16;

/// `▁` (U+2581), SentencePiece's visible space.
const SPM_SPACE: [u8; 3] = [0xe2, 0x96, 0x81];

/// Working memory on the stack: enough for a piece of 64 bytes (1.5 KiB).
const STACK_WORK: usize = work_len(64);

/// Which algorithm the vocabulary uses (`tokenizer.ggml.model`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// `gpt2`: byte-level BPE with a merge list.
    Bpe,
    /// `llama`: SentencePiece-style BPE with scores and byte fallback.
    Spm,
}

/// The token types of `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TokenType {
    /// 0: not specified (treated as normal).
    Undefined = 0,
    /// 1: an ordinary piece of text.
    Normal = 1,
    /// 2: the unknown token (`<unk>`).
    Unknown = 2,
    /// 3: a control token (`<s>`, `<|im_start|>`): matched in text only with `parse_special`.
    Control = 3,
    /// 4: a user-defined token: always matched as a whole in text.
    UserDefined = 4,
    /// 5: unused.
    Unused = 5,
    /// 6: a byte (`<0x0A>`) for SentencePiece byte fallback.
    Byte = 6,
}

impl TokenType {
    /// From the value stored in the file.
    pub const fn from_id(v: i64) -> Option<TokenType> {
        Some(match v {
            0 => TokenType::Undefined,
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }

    /// Matched as a whole unit in input text (with `parse_special` for control and unknown).
    const fn is_special(self) -> bool {
        matches!(
            self,
            TokenType::Unknown | TokenType::Control | TokenType::UserDefined
        )
    }

    /// May be the result of a SentencePiece merge or stand for a single character.
    const fn is_mergeable(self) -> bool {
        !matches!(
            self,
            TokenType::Unknown | TokenType::Control | TokenType::Byte
        )
    }
}

/// The byte-level BPE merge keys: rank from the merge table.
struct BpeKeys<'t, 'a, S: AsRef<[u32]>>(&'t Tokenizer<'a, S>);

impl<S: AsRef<[u32]>> PairKey for BpeKeys<'_, '_, S> {
    fn pair(&self, _l: usize, _r: usize, _end: usize, a: u32, b: u32) -> Option<(u32, u32)> {
        if a == NONE || b == NONE {
            return None;
        }
        self.0.merge_find(a, b)
    }
}

/// A SentencePiece chunk of input: raw bytes, optionally preceded by a virtual space. Offsets
/// count the virtual space as one byte; spaces read as `▁`.
#[derive(Clone, Copy)]
struct SpmView<'t> {
    raw: &'t [u8],
    prefix: bool,
}

impl SpmView<'_> {
    fn len(&self) -> usize {
        self.raw.len() + self.prefix as usize
    }
    fn byte(&self, i: usize) -> u8 {
        if self.prefix {
            if i == 0 {
                b' '
            } else {
                self.raw[i - 1]
            }
        } else {
            self.raw[i]
        }
    }
    fn char_len(&self, i: usize) -> usize {
        utf8_len(self.byte(i)).min(self.len() - i)
    }
    /// The escaped bytes of `[s, e)`.
    fn escaped(&self, s: usize, e: usize) -> impl Iterator<Item = u8> + '_ {
        (s..e).flat_map(move |i| {
            let b = self.byte(i);
            let (arr, n) = if b == b' ' {
                (SPM_SPACE, 3)
            } else {
                ([b, 0, 0], 1)
            };
            arr.into_iter().take(n)
        })
    }
}

/// SentencePiece merge keys: the concatenation must be a token; higher score merges first.
struct SpmKeys<'t, 'a, S: AsRef<[u32]>> {
    tok: &'t Tokenizer<'a, S>,
    view: SpmView<'t>,
}

impl<S: AsRef<[u32]>> PairKey for SpmKeys<'_, '_, S> {
    fn pair(&self, l: usize, _r: usize, end: usize, _a: u32, _b: u32) -> Option<(u32, u32)> {
        let id = self.tok.spm_lookup(self.view, l, end)?;
        Some((score_key(self.tok.score(id as usize)), id))
    }
}

/// Order key of a score: higher scores give lower keys (and never [`NONE`]).
fn score_key(score: f32) -> u32 {
    let b = score.to_bits();
    let ascending = if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    };
    (!ascending).min(NONE - 1)
}

/// What a non-token symbol is spelled with.
#[derive(Clone, Copy)]
enum Fallback<'t> {
    /// A byte of a BPE piece.
    Bpe,
    /// A character of a SentencePiece chunk.
    Spm(SpmView<'t>),
}

/// A tokenizer over a GGUF vocabulary; `S` is the scratch holding its indexes (`&mut [u32]`,
/// `[u32; N]`, or with `alloc` a `Vec<u32>`).
pub struct Tokenizer<'a, S: AsRef<[u32]> = &'a mut [u32]> {
    kind: TokenizerKind,
    pre: PreTokenizer,
    tokens_raw: &'a [u8],
    types: Option<ArrayView<'a>>,
    scores: Option<ArrayView<'a>>,
    lay: Layout,
    n_special: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    eog: [u32; MAX_EOG],
    n_eog: usize,
    add_bos: bool,
    add_space_prefix: bool,
    /// SentencePiece: no mergeable token has `▁` after another character, so text can be cut
    /// before every space run without changing the result.
    spm_cut_at_spaces: bool,
    max_token_len: usize,
    scratch: S,
}

impl<S: AsRef<[u32]>> core::fmt::Debug for Tokenizer<'_, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("pre", &self.pre)
            .field("vocab_size", &self.lay.n_vocab)
            .field("merges", &self.lay.n_merges)
            .field("special_tokens", &self.n_special)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

fn too_small(what: &'static str, need: usize, have: usize) -> Error {
    Error::new(ErrorKind::BufferTooSmall, what).detail(need as u64, have as u64)
}

/// The caller's output buffer, how much of it is written, and the stack work area.
struct Out<'o> {
    ids: &'o mut [u32],
    w: usize,
    stack: [u32; STACK_WORK],
}

fn push_id(out: &mut [u32], w: &mut usize, id: u32) -> Result<()> {
    let have = out.len();
    let slot = out
        .get_mut(*w)
        .ok_or_else(|| too_small("token output buffer", *w + 1, have))?;
    *slot = id;
    *w += 1;
    Ok(())
}

impl<'a, S: AsRef<[u32]>> Tokenizer<'a, S> {
    fn words(&self) -> &[u32] {
        self.scratch.as_ref()
    }
    fn offs(&self) -> &[u32] {
        &self.words()[self.lay.offs..self.lay.tok]
    }
    fn text(&self, id: usize) -> &'a [u8] {
        let offs = &self.scratch.as_ref()[self.lay.offs..self.lay.tok];
        tok_text(offs, self.tokens_raw, id)
    }
    fn ty(&self, id: usize) -> TokenType {
        self.types
            .as_ref()
            .and_then(|t| int_elem(t, id))
            .and_then(TokenType::from_id)
            .unwrap_or(TokenType::Normal)
    }
    fn score(&self, id: usize) -> f32 {
        self.scores
            .as_ref()
            .and_then(|s| s.raw().get(4 * id..4 * id + 4))
            .map_or(0.0, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn byte_token(&self, b: u8) -> u32 {
        self.words()[self.lay.bytes + b as usize]
    }
    fn find_text(&self, h: u32, eq: impl Fn(&[u8]) -> bool) -> Option<u32> {
        let w = self.words();
        tok_find(
            &w[self.lay.tok..self.lay.bytes],
            self.offs(),
            self.tokens_raw,
            h,
            eq,
        )
    }
    fn merge_find(&self, a: u32, b: u32) -> Option<(u32, u32)> {
        let cap = self.lay.merge_cap;
        if cap == 0 {
            return None;
        }
        let w = self.words();
        let tab = &w[self.lay.merge..self.lay.merge_out];
        let mut s = slot_of(hash_pair(a, b), cap);
        loop {
            let k = tab[3 * s];
            if k == 0 {
                return None;
            }
            if k == a + 1 && tab[3 * s + 1] == b {
                let rank = tab[3 * s + 2];
                return Some((rank, w[self.lay.merge_out + rank as usize]));
            }
            s += 1;
            if s == cap {
                s = 0;
            }
        }
    }
    /// The mergeable token spelled by the escaped bytes `[s, e)` of a SentencePiece chunk.
    fn spm_lookup(&self, v: SpmView<'_>, s: usize, e: usize) -> Option<u32> {
        let h = hash_bytes(v.escaped(s, e));
        let id = self.find_text(h, |t| t.iter().copied().eq(v.escaped(s, e)))?;
        self.ty(id as usize).is_mergeable().then_some(id)
    }

    /// Which algorithm the vocabulary uses.
    pub const fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// The pre-tokeniser (`gpt2` vocabularies; SentencePiece ones report [`PreTokenizer::Gpt2`]
    /// but do not use it).
    pub const fn pre_tokenizer(&self) -> PreTokenizer {
        self.pre
    }

    /// Number of tokens.
    pub const fn vocab_size(&self) -> usize {
        self.lay.n_vocab
    }

    /// Number of merges (`gpt2`), 0 for SentencePiece.
    pub const fn merge_count(&self) -> usize {
        self.lay.n_merges
    }

    /// Beginning-of-sequence token, if the file names one.
    pub const fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token, if the file names one.
    pub const fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Unknown token, if the file names one.
    pub const fn unk_id(&self) -> Option<u32> {
        self.unk
    }

    /// Whether prompts should start with BOS (`tokenizer.ggml.add_bos_token`; default true for
    /// `llama` and for `gpt2` with a Llama 3 pre-tokeniser, false for other `gpt2` files, as in
    /// llama.cpp; see [`PreTokenizer::default_add_bos`]). [`Tokenizer::encode`] never adds it:
    /// the caller does.
    pub const fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether SentencePiece encoding puts `▁` before the text (`add_space_prefix`).
    pub const fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// End-of-generation tokens: EOS, EOT, EOM, and the tokens spelled `<|im_end|>`,
    /// `<|endoftext|>`, `<|eot_id|>`, `<end_of_turn>`, ... when present (llama.cpp's list).
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog[..self.n_eog]
    }

    /// True if generation should stop at `id`.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog_ids().contains(&id)
    }

    /// Length in bytes of the longest token text (an upper bound on one token's decoded bytes).
    pub const fn max_token_bytes(&self) -> usize {
        self.max_token_len
    }

    /// The id of the token whose text, as stored in the vocabulary, is `text` (`"Ġthe"` in a
    /// `gpt2` vocabulary, `"▁the"` in a `llama` one, `"<|im_start|>"` in either).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        let t = text.as_bytes();
        self.find_text(hash_bytes(t.iter().copied()), |x| x == t)
    }

    fn check(&self, id: u32) -> Result<usize> {
        if (id as usize) < self.lay.n_vocab {
            Ok(id as usize)
        } else {
            Err(Error::new(ErrorKind::TokenOutOfRange, "token id")
                .detail(id as u64, self.lay.n_vocab as u64))
        }
    }

    /// The token's text as stored in the vocabulary (byte-level spelling for `gpt2`, `▁` for
    /// spaces in `llama`).
    ///
    /// # Errors
    /// [`ErrorKind::TokenOutOfRange`] if `id >= vocab_size()`.
    pub fn token_text(&self, id: u32) -> Result<&'a [u8]> {
        Ok(self.text(self.check(id)?))
    }

    /// The token's type (normal if the file has no `token_type`).
    ///
    /// # Errors
    /// [`ErrorKind::TokenOutOfRange`] if `id >= vocab_size()`.
    pub fn token_type(&self, id: u32) -> Result<TokenType> {
        Ok(self.ty(self.check(id)?))
    }

    /// The token's score (0 if the file has no `scores`).
    ///
    /// # Errors
    /// [`ErrorKind::TokenOutOfRange`] if `id >= vocab_size()`.
    pub fn token_score(&self, id: u32) -> Result<f32> {
        Ok(self.score(self.check(id)?))
    }

    /// Call `f` with each byte the token stands for: special tokens give their text, byte-level
    /// tokens their bytes, SentencePiece tokens their text with `▁` as space and `<0xXX>` as
    /// the byte.
    pub(crate) fn for_each_token_byte(&self, id: u32, f: &mut impl FnMut(u8)) -> Result<()> {
        let id = self.check(id)?;
        let ty = self.ty(id);
        let text = self.text(id);
        if ty.is_special() {
            text.iter().for_each(|&b| f(b));
            return Ok(());
        }
        match self.kind {
            TokenizerKind::Spm => {
                if ty == TokenType::Byte {
                    if let Some(b) = parse_byte_token(text) {
                        f(b);
                        return Ok(());
                    }
                }
                let mut i = 0;
                while i < text.len() {
                    if text[i..].starts_with(&SPM_SPACE) {
                        f(b' ');
                        i += 3;
                    } else {
                        f(text[i]);
                        i += 1;
                    }
                }
            }
            TokenizerKind::Bpe => {
                // Validated UTF-8 at construction.
                for c in core::str::from_utf8(text).unwrap_or("").chars() {
                    match char_to_byte(c) {
                        Some(b) => f(b),
                        None => c.encode_utf8(&mut [0u8; 4]).bytes().for_each(&mut *f),
                    }
                }
            }
        }
        Ok(())
    }

    /// Write the bytes one token stands for into `out` (they may end mid-character; see
    /// [`Decoder`] for text). Returns the length written.
    ///
    /// # Errors
    /// [`ErrorKind::TokenOutOfRange`] for an id outside the vocabulary,
    /// [`ErrorKind::BufferTooSmall`] if `out` is too short (nothing is written;
    /// [`Tokenizer::max_token_bytes`] always suffices).
    pub fn decode_token_into(&self, id: u32, out: &mut [u8]) -> Result<usize> {
        let mut n = 0;
        self.for_each_token_byte(id, &mut |_| n += 1)?;
        if n > out.len() {
            return Err(too_small("token bytes buffer", n, out.len()));
        }
        let mut i = 0;
        self.for_each_token_byte(id, &mut |b| {
            out[i] = b;
            i += 1;
        })?;
        Ok(n)
    }

    /// A streaming decoder over this vocabulary.
    pub fn decoder(&self) -> Decoder<'_, 'a, S> {
        Decoder::new(self)
    }

    /// Decode a whole sequence into `out` (lossy UTF-8, special tokens rendered; for `llama`
    /// vocabularies with `add_space_prefix` the leading space is dropped, as SentencePiece
    /// does). Returns the length written.
    ///
    /// # Errors
    /// [`ErrorKind::TokenOutOfRange`] for an id outside the vocabulary,
    /// [`ErrorKind::BufferTooSmall`] if `out` is too short.
    pub fn decode_into(&self, ids: &[u32], out: &mut [u8]) -> Result<usize> {
        let mut dec = self
            .decoder()
            .strip_leading_space(self.kind == TokenizerKind::Spm && self.add_space_prefix);
        let mut n = 0;
        for &id in ids {
            n += dec.push(id, &mut out[n..])?;
        }
        n += dec.finish(&mut out[n..])?;
        Ok(n)
    }

    /// Decode a whole sequence into a `String`, as [`Tokenizer::decode_into`] does.
    ///
    /// # Errors
    /// [`ErrorKind::TokenOutOfRange`] for an id outside the vocabulary.
    #[cfg(feature = "alloc")]
    pub fn decode_to_string(&self, ids: &[u32]) -> Result<String> {
        let mut dec = self
            .decoder()
            .strip_leading_space(self.kind == TokenizerKind::Spm && self.add_space_prefix);
        let mut s = String::new();
        for &id in ids {
            dec.push_to(id, &mut s)?;
        }
        dec.finish_to(&mut s)?;
        Ok(s)
    }

    /// The longest special token starting at `bytes[p]`, if any.
    fn match_special(&self, bytes: &[u8], p: usize, parse_special: bool) -> Option<(u32, usize)> {
        let w = self.words();
        let idx = &w[self.lay.spec_idx..self.lay.spec_idx + 257];
        let b = bytes[p] as usize;
        let (lo, hi) = (idx[b] as usize, idx[b + 1] as usize);
        let spec = &w[self.lay.spec..self.lay.spec + self.n_special];
        spec.get(lo..hi)?.iter().find_map(|&id| {
            let t = self.text(id as usize);
            let ok = parse_special || self.ty(id as usize) == TokenType::UserDefined;
            (ok && bytes[p..].starts_with(t)).then_some((id, t.len()))
        })
    }

    /// Encode `text` into `out`, returning the number of ids written. BOS is not added (see
    /// [`Tokenizer::add_bos`]).
    ///
    /// With `parse_special`, control tokens such as `<|im_start|>` written in the text become
    /// their ids (as llama.cpp's `parse_special` and Hugging Face's default do); without it they
    /// are ordinary text. User-defined tokens are always matched.
    ///
    /// `out` is also working memory: pieces (pre-tokens for `gpt2`; runs between spaces for
    /// `llama`) of up to 64 bytes are merged on the stack, longer ones in the unused tail of
    /// `out`, which must then hold `4n + 2·next_pow2(n)` more ids for an `n`-byte piece. An `out`
    /// of [`Tokenizer::encode_buf_len`]`(text.len())` ids always suffices.
    ///
    /// A byte that a `gpt2` vocabulary has no token for is dropped (Hugging Face and llama.cpp
    /// do the same); a character that a `llama` vocabulary cannot spell, not even with byte
    /// tokens, becomes the unknown token.
    ///
    /// # Errors
    /// [`ErrorKind::BufferTooSmall`] when `out` is full (the ids written so far are valid but
    /// the count is lost; retry with a larger buffer); [`ErrorKind::InvalidArgument`] when a
    /// `llama` vocabulary can spell a character neither with tokens, byte tokens nor `<unk>`;
    /// [`ErrorKind::TooMany`] for a text of 2 GiB or more.
    pub fn encode(&self, text: &str, parse_special: bool, out: &mut [u32]) -> Result<usize> {
        if text.len() >= 1 << 31 {
            return Err(
                Error::new(ErrorKind::TooMany, "text to encode is 2 GiB or more")
                    .detail(text.len() as u64, 1 << 31),
            );
        }
        let bytes = text.as_bytes();
        // One stack work area for the whole call (initialising it per piece would cost more
        // than merging a typical 5-byte piece).
        let mut o = Out {
            ids: out,
            w: 0,
            stack: [0u32; STACK_WORK],
        };
        let mut after_special = true;
        let mut frag = 0;
        let mut p = 0;
        while p < bytes.len() {
            match self.match_special(bytes, p, parse_special) {
                Some((id, len)) => {
                    if frag < p {
                        self.encode_raw(&text[frag..p], after_special, &mut o)?;
                    }
                    push_id(o.ids, &mut o.w, id)?;
                    after_special = true;
                    p += len;
                    frag = p;
                }
                None => p += 1,
            }
        }
        if frag < bytes.len() {
            self.encode_raw(&text[frag..], after_special, &mut o)?;
        }
        Ok(o.w)
    }

    /// Encode into a new `Vec` (no BOS).
    ///
    /// # Errors
    /// As [`Tokenizer::encode`], except for [`ErrorKind::BufferTooSmall`].
    #[cfg(feature = "alloc")]
    pub fn encode_vec(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let mut v = vec![0u32; text.len() + 16];
        let n = match self.encode(text, parse_special, &mut v) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::BufferTooSmall => {
                v = vec![0u32; Tokenizer::encode_buf_len(text.len())];
                self.encode(text, parse_special, &mut v)?
            }
            Err(e) => return Err(e),
        };
        v.truncate(n);
        v.shrink_to_fit();
        Ok(v)
    }

    /// Encode text that contains no special token.
    fn encode_raw(&self, frag: &str, after_special: bool, o: &mut Out<'_>) -> Result<()> {
        match self.kind {
            TokenizerKind::Bpe => {
                for piece in pretok::Pieces::new(frag, self.pre) {
                    let b = piece.as_bytes();
                    if let [c] = *b {
                        // One byte: nothing to merge (a byte with no token is dropped).
                        let id = self.byte_token(c);
                        if id != NONE {
                            push_id(o.ids, &mut o.w, id)?;
                        }
                        continue;
                    }
                    if self.pre.ignores_merges() {
                        // A piece that is a token is that token (llama.cpp looks up every
                        // token, as Hugging Face's `ignore_merges` looks up its whole vocab).
                        let spelled = byte_level_spelling(b);
                        let h = hash_bytes(spelled.clone());
                        if let Some(id) =
                            self.find_text(h, |t| t.iter().copied().eq(spelled.clone()))
                        {
                            push_id(o.ids, &mut o.w, id)?;
                            continue;
                        }
                    }
                    let starts = b.iter().enumerate().map(|(i, &c)| (i, self.byte_token(c)));
                    self.run_piece(b.len(), starts, &BpeKeys(self), Fallback::Bpe, o)?;
                }
            }
            TokenizerKind::Spm => {
                let b = frag.as_bytes();
                let prefix = self.add_space_prefix && after_special;
                if !self.spm_cut_at_spaces {
                    return self.spm_chunk(SpmView { raw: b, prefix }, o);
                }
                // Cut before every space that follows a non-space: no token crosses such a cut.
                let (mut start, mut chunk_prefix, mut prev_space) = (0, prefix, prefix);
                for (i, c) in frag.char_indices() {
                    let space = c == ' ' || c == '\u{2581}';
                    if space && !prev_space && i > start {
                        self.spm_chunk(
                            SpmView {
                                raw: &b[start..i],
                                prefix: chunk_prefix,
                            },
                            o,
                        )?;
                        start = i;
                        chunk_prefix = false;
                    }
                    prev_space = space;
                }
                self.spm_chunk(
                    SpmView {
                        raw: &b[start..],
                        prefix: chunk_prefix,
                    },
                    o,
                )?;
            }
        }
        Ok(())
    }

    fn spm_chunk(&self, view: SpmView<'_>, o: &mut Out<'_>) -> Result<()> {
        let n = view.len();
        if n == 0 {
            return Ok(());
        }
        let mut i = 0;
        let starts = core::iter::from_fn(|| {
            if i >= n {
                return None;
            }
            let l = view.char_len(i);
            let id = self.spm_lookup(view, i, i + l).unwrap_or(NONE);
            let at = i;
            i += l;
            Some((at, id))
        });
        self.run_piece(
            n,
            starts,
            &SpmKeys { tok: self, view },
            Fallback::Spm(view),
            o,
        )
    }

    /// Merge one piece of `n` bytes and append its tokens to the output.
    fn run_piece<P: PairKey>(
        &self,
        n: usize,
        starts: impl Iterator<Item = (usize, u32)>,
        keys: &P,
        fb: Fallback<'_>,
        o: &mut Out<'_>,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let (out, w) = (&mut *o.ids, &mut o.w);
        let need = work_len(n);
        if need <= STACK_WORK {
            let stack = &mut o.stack;
            let m = merge_piece(&mut stack[..need], n, starts, keys);
            let total = self.expanded_len(&stack[..m], fb)?;
            if *w + total > out.len() {
                return Err(too_small("token output buffer", *w + total, out.len()));
            }
            let mut pos = *w;
            for &e in &stack[..m] {
                pos += self.expand(e, fb, &mut out[pos..])?;
            }
            *w = pos;
            return Ok(());
        }
        // Long piece: work in the unused tail of `out`, where the final symbols end up compacted
        // at the front (entry j at index j) before they are expanded into ids in place. A
        // byte-level symbol becomes at most one id, so expanding front to back never overtakes
        // the entry being read; a SentencePiece symbol becomes at least one id, so expanding
        // back to front puts entry j's ids at an index >= j, past every unread entry.
        let region = out.get_mut(*w..).unwrap_or(&mut []);
        if region.len() < need {
            return Err(too_small(
                "token output buffer (working space for a long piece)",
                *w + need,
                *w + region.len(),
            ));
        }
        let m = merge_piece(region, n, starts, keys);
        let total = self.expanded_len(&region[..m], fb)?;
        if total > region.len() {
            return Err(too_small(
                "token output buffer",
                *w + total,
                *w + region.len(),
            ));
        }
        match fb {
            Fallback::Bpe => {
                let mut pos = 0;
                for j in 0..m {
                    let e = region[j];
                    let k = self.expand_count(e, fb)?;
                    self.expand(e, fb, &mut region[pos..pos + k])?;
                    pos += k;
                }
            }
            Fallback::Spm(_) => {
                let mut pos = total;
                for j in (0..m).rev() {
                    let e = region[j];
                    let k = self.expand_count(e, fb)?;
                    pos -= k;
                    self.expand(e, fb, &mut region[pos..pos + k])?;
                }
            }
        }
        *w += total;
        Ok(())
    }

    fn expanded_len(&self, entries: &[u32], fb: Fallback<'_>) -> Result<usize> {
        entries
            .iter()
            .try_fold(0usize, |acc, &e| Ok(acc + self.expand_count(e, fb)?))
    }

    /// How many ids a final symbol becomes.
    fn expand_count(&self, e: u32, fb: Fallback<'_>) -> Result<usize> {
        if e & FALLBACK == 0 {
            return Ok(1);
        }
        let at = (e & !FALLBACK) as usize;
        match fb {
            // A byte with no token in a byte-level vocabulary is dropped, as Hugging Face and
            // llama.cpp do (SmolLM2 lacks 21 of the 256, e.g. 0x04 and 0xC0).
            Fallback::Bpe => Ok(0),
            Fallback::Spm(v) => {
                let (buf, len) = spm_char(v, at);
                if buf[..len].iter().all(|&b| self.byte_token(b) != NONE) {
                    Ok(len)
                } else {
                    Ok(1)
                }
            }
        }
    }

    /// Write the ids of a final symbol to the front of `dst`; returns how many.
    fn expand(&self, e: u32, fb: Fallback<'_>, dst: &mut [u32]) -> Result<usize> {
        if e & FALLBACK == 0 {
            dst[0] = e;
            return Ok(1);
        }
        let at = (e & !FALLBACK) as usize;
        let unk = || {
            self.unk.ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    "text has a character with no token, no byte token and no unknown token",
                )
            })
        };
        match fb {
            Fallback::Bpe => Ok(0),
            Fallback::Spm(v) => {
                let (buf, len) = spm_char(v, at);
                if buf[..len].iter().all(|&b| self.byte_token(b) != NONE) {
                    for (d, &b) in dst.iter_mut().zip(&buf[..len]) {
                        *d = self.byte_token(b);
                    }
                    Ok(len)
                } else {
                    dst[0] = unk()?;
                    Ok(1)
                }
            }
        }
    }
}

/// The escaped bytes of the character at `at` in a SentencePiece chunk.
fn spm_char(v: SpmView<'_>, at: usize) -> ([u8; 4], usize) {
    let mut buf = [0u8; 4];
    let mut len = 0;
    for b in v.escaped(at, at + v.char_len(at)) {
        if len < 4 {
            buf[len] = b;
            len += 1;
        }
    }
    (buf, len)
}
