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
//! (1.25 KiB) and otherwise from the unused tail of the caller's output buffer; see
//! [`Tokenizer::encode`]. Nothing allocates; the `alloc` feature adds owning conveniences.
//!
//! Decoding goes through [`Decoder`], which never emits half a UTF-8 character; chat prompts are
//! rendered by [`ChatTemplate`].

mod chat;
mod decoder;
mod merge;
mod pretok;
mod unicode;
mod unicode_tables;

pub use chat::{ChatMessage, ChatTemplate, CHAT_TEMPLATE_KEY};
pub use decoder::Decoder;
pub use pretok::PreTokenizer;

use crate::error::{Error, ErrorKind, Result};
use crate::format::gguf::{ArrayView, Gguf, Value, ValueType};
use merge::{merge_piece, work_len, PairKey, FALLBACK, NONE};
use unicode::{char_to_byte, utf8_len, BYTE_TO_CHAR};

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

/// Working memory on the stack: enough for a piece of 64 bytes.
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

/// Capacity of an open-addressing table for `n` keys (load factor <= 2/3, never full).
const fn table_cap(n: usize) -> usize {
    n + n / 2 + 1
}

/// Where each index lives in the scratch, in `u32` words.
#[derive(Clone, Copy, Debug)]
struct Layout {
    n_vocab: usize,
    n_merges: usize,
    n_special: usize,
    tok_cap: usize,
    merge_cap: usize,
    offs: usize,
    tok: usize,
    bytes: usize,
    spec: usize,
    spec_idx: usize,
    merge: usize,
    merge_out: usize,
    total: usize,
}

impl Layout {
    fn new(n_vocab: usize, n_merges: usize, n_special: usize) -> Option<Layout> {
        let tok_cap = table_cap(n_vocab);
        let merge_cap = if n_merges == 0 {
            0
        } else {
            table_cap(n_merges)
        };
        let offs = 0;
        let tok = offs + n_vocab.checked_add(1)?;
        let bytes = tok.checked_add(tok_cap.checked_mul(2)?)?;
        let spec = bytes + 256;
        let spec_idx = spec.checked_add(n_special)?;
        let merge = spec_idx + 257;
        let merge_out = merge.checked_add(merge_cap.checked_mul(3)?)?;
        let total = merge_out.checked_add(n_merges)?;
        Some(Layout {
            n_vocab,
            n_merges,
            n_special,
            tok_cap,
            merge_cap,
            offs,
            tok,
            bytes,
            spec,
            spec_idx,
            merge,
            merge_out,
            total,
        })
    }
}

/// The metadata a tokenizer is built from, checked for presence, types and lengths.
struct Meta<'a> {
    kind: TokenizerKind,
    pre: PreTokenizer,
    tokens: ArrayView<'a>,
    types: Option<ArrayView<'a>>,
    scores: Option<ArrayView<'a>>,
    merges: Option<ArrayView<'a>>,
    layout: Layout,
}

fn named(kind: ErrorKind, what: &'static str, key: &str) -> Error {
    Error::new(kind, what).named(key.as_bytes())
}

/// Element `i` of a fixed-size integer array.
fn int_elem(a: &ArrayView<'_>, i: usize) -> Option<i64> {
    let size = a.elem_type().fixed_size()?;
    let b = a.raw().get(i.checked_mul(size)?..)?.get(..size)?;
    let mut le = [0u8; 8];
    le[..size].copy_from_slice(b);
    let u = u64::from_le_bytes(le);
    Some(match a.elem_type() {
        ValueType::U8 | ValueType::U16 | ValueType::U32 => u as i64,
        ValueType::I8 => u as u8 as i8 as i64,
        ValueType::I16 => u as u16 as i16 as i64,
        ValueType::I32 => u as u32 as i32 as i64,
        ValueType::I64 => u as i64,
        ValueType::U64 => i64::try_from(u).ok()?,
        _ => return None,
    })
}

fn is_int_type(t: ValueType) -> bool {
    matches!(
        t,
        ValueType::U8
            | ValueType::I8
            | ValueType::U16
            | ValueType::I16
            | ValueType::U32
            | ValueType::I32
            | ValueType::U64
            | ValueType::I64
    )
}

/// Walks a validated string array: yields (offset of the length prefix in `raw`, bytes).
struct StrIter<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for StrIter<'a> {
    type Item = (usize, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let at = self.pos;
        let len = u64::from_le_bytes(self.raw.get(at..at.checked_add(8)?)?.try_into().ok()?);
        let start = at + 8;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        let s = self.raw.get(start..end)?;
        self.pos = end;
        Some((at, s))
    }
}

/// An optional array of the given element type whose length must equal `n`.
fn optional_array<'a>(
    gguf: &Gguf<'a>,
    key: &str,
    n: usize,
    ok: fn(ValueType) -> bool,
    what: &'static str,
) -> Result<Option<ArrayView<'a>>> {
    match gguf.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => {
            if !ok(a.elem_type()) {
                return Err(named(ErrorKind::WrongType, what, key));
            }
            if a.len() != n {
                return Err(named(
                    ErrorKind::BadValue,
                    "array length differs from the number of tokens",
                    key,
                )
                .detail(a.len() as u64, n as u64));
            }
            Ok(Some(a))
        }
        Some(_) => Err(named(ErrorKind::WrongType, what, key)),
    }
}

fn optional_bool(gguf: &Gguf<'_>, key: &str) -> Result<Option<bool>> {
    match gguf.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(_) => Err(named(ErrorKind::WrongType, "expected bool", key)),
    }
}

impl<'a> Meta<'a> {
    fn read(gguf: &Gguf<'a>) -> Result<Meta<'a>> {
        let kind = match gguf.get_str(MODEL_KEY)? {
            "gpt2" => TokenizerKind::Bpe,
            "llama" => TokenizerKind::Spm,
            _ => {
                return Err(named(
                    ErrorKind::BadValue,
                    "unsupported tokenizer model (this build has gpt2 and llama)",
                    MODEL_KEY,
                ))
            }
        };
        let pre = match (kind, gguf.get(PRE_KEY)) {
            (TokenizerKind::Spm, _) | (_, None) => PreTokenizer::Gpt2,
            (_, Some(Value::Str(_))) => PreTokenizer::from_name(gguf.get_str(PRE_KEY)?)
                .ok_or_else(|| named(ErrorKind::BadValue, "unsupported pre-tokenizer", PRE_KEY))?,
            (_, Some(_)) => return Err(named(ErrorKind::WrongType, "expected string", PRE_KEY)),
        };
        let tokens = gguf.get_array_of(TOKENS_KEY, ValueType::String)?;
        let n_vocab = tokens.len();
        if n_vocab == 0 {
            return Err(named(ErrorKind::BadValue, "empty vocabulary", TOKENS_KEY));
        }
        // Offsets into the array are stored as u32.
        if tokens.raw().len() > (u32::MAX - 16) as usize {
            return Err(named(
                ErrorKind::TooMany,
                "token array larger than 4 GiB",
                TOKENS_KEY,
            ));
        }
        let types = optional_array(
            gguf,
            TOKEN_TYPE_KEY,
            n_vocab,
            is_int_type,
            "expected an array of integers",
        )?;
        let scores = optional_array(
            gguf,
            SCORES_KEY,
            n_vocab,
            |t| t == ValueType::F32,
            "expected an array of float32",
        )?;
        let merges = match kind {
            TokenizerKind::Bpe => Some(gguf.get_array_of(MERGES_KEY, ValueType::String)?),
            TokenizerKind::Spm => None,
        };
        let n_merges = merges.map_or(0, |m| m.len());
        let n_special = match &types {
            None => 0,
            Some(t) => (0..n_vocab)
                .filter(|&i| {
                    int_elem(t, i)
                        .and_then(TokenType::from_id)
                        .is_some_and(|t| t.is_special())
                })
                .count(),
        };
        let layout = Layout::new(n_vocab, n_merges, n_special).ok_or_else(|| {
            named(
                ErrorKind::TooMany,
                "tokenizer index size overflows",
                TOKENS_KEY,
            )
        })?;
        Ok(Meta {
            kind,
            pre,
            tokens,
            types,
            scores,
            merges,
            layout,
        })
    }
}

/// FNV-1a over bytes, then a murmur3 finaliser so that the top bits (used to pick a slot) mix.
fn hash_bytes(it: impl Iterator<Item = u8>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in it {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    fmix32(h)
}

const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

fn hash_pair(a: u32, b: u32) -> u32 {
    fmix32(a.wrapping_mul(0x9e37_79b1) ^ fmix32(b))
}

/// Map a hash onto `0..cap` (Lemire's multiply-shift; `cap` need not be a power of two).
fn slot_of(h: u32, cap: usize) -> usize {
    ((h as u64 * cap as u64) >> 32) as usize
}

fn tok_text<'r>(offs: &[u32], raw: &'r [u8], id: usize) -> &'r [u8] {
    let start = offs[id] as usize + 8;
    let end = offs[id + 1] as usize;
    raw.get(start..end).unwrap_or(&[])
}

/// Find the id whose text satisfies `eq` among the entries with hash `h`.
fn tok_find(
    tab: &[u32],
    offs: &[u32],
    raw: &[u8],
    h: u32,
    eq: impl Fn(&[u8]) -> bool,
) -> Option<u32> {
    let cap = tab.len() / 2;
    let mut s = slot_of(h, cap);
    loop {
        let v = tab[2 * s];
        if v == 0 {
            return None;
        }
        if tab[2 * s + 1] == h && eq(tok_text(offs, raw, (v - 1) as usize)) {
            return Some(v - 1);
        }
        s += 1;
        if s == cap {
            s = 0;
        }
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

impl<'a> Tokenizer<'a> {
    /// Words of scratch (`u32`) that [`Tokenizer::new`] needs for this file's vocabulary. Pure:
    /// depends only on the metadata; `O(n_vocab)` (it counts the special tokens).
    ///
    /// # Errors
    /// As [`Tokenizer::new`] for a missing, mistyped or inconsistent `tokenizer.ggml.model`,
    /// `tokens`, `token_type`, `scores`, `merges` or `pre`.
    pub fn scratch_len(gguf: &Gguf<'_>) -> Result<usize> {
        Ok(Meta::read(gguf)?.layout.total)
    }

    /// An `out` length (in ids) with which [`Tokenizer::encode`] never fails for lack of room,
    /// for a text of `text_len` bytes: `10·text_len + 16`.
    pub const fn encode_buf_len(text_len: usize) -> usize {
        text_len.saturating_mul(10).saturating_add(16)
    }
}

#[cfg(feature = "alloc")]
impl<'a> Tokenizer<'a, Vec<u32>> {
    /// Build a tokenizer that owns its scratch.
    ///
    /// # Errors
    /// As [`Tokenizer::new`].
    pub fn new_owned(gguf: &Gguf<'a>) -> Result<Self> {
        let n = Tokenizer::scratch_len(gguf)?;
        Tokenizer::new(gguf, vec![0u32; n])
    }
}

impl<'a, S: AsRef<[u32]> + AsMut<[u32]>> Tokenizer<'a, S> {
    /// Build the tokenizer described by `gguf`'s `tokenizer.ggml.*` metadata, with its indexes
    /// in `scratch` (at least [`Tokenizer::scratch_len`] words; the rest is left alone).
    ///
    /// Reads `model`, `tokens`, `token_type` (optional: all normal), `scores` (optional: all
    /// 0), `merges` (required for `gpt2`), `pre`, `bos/eos/unknown/eot/eom_token_id`,
    /// `add_bos_token` (default: true for `llama`, false for `gpt2`) and `add_space_prefix`
    /// (default: true for `llama`; not used by `gpt2`, as in llama.cpp).
    ///
    /// # Errors
    /// - [`ErrorKind::MissingKey`] / [`ErrorKind::WrongType`] for an absent or mistyped key,
    ///   named;
    /// - [`ErrorKind::BadValue`] naming the key (and the element's byte offset and index) for an
    ///   unsupported model or pre-tokeniser, an empty vocabulary, an array whose length differs
    ///   from the vocabulary, a token type outside 0..=6, a merge that is not `"a b"` or names a
    ///   token (or a concatenation) not in the vocabulary, a byte token not spelled `<0xXX>`, or
    ///   a special token id `>= n_vocab`;
    /// - [`ErrorKind::InvalidUtf8`] for a token that is not UTF-8;
    /// - [`ErrorKind::BufferTooSmall`] if `scratch` is shorter than [`Tokenizer::scratch_len`]
    ///   (with the needed and given lengths).
    pub fn new(gguf: &Gguf<'a>, mut scratch: S) -> Result<Self> {
        let meta = Meta::read(gguf)?;
        let lay = meta.layout;
        let buf = scratch.as_mut();
        if buf.len() < lay.total {
            return Err(Error::new(ErrorKind::BufferTooSmall, "tokenizer scratch")
                .detail(lay.total as u64, buf.len() as u64));
        }
        let file_base = gguf.bytes().as_ptr() as usize;
        let elem_at = |raw: &[u8], local: usize| {
            (raw.as_ptr() as usize)
                .wrapping_sub(file_base)
                .wrapping_add(local) as u64
        };
        let buf = &mut buf[..lay.total];
        let (offs, rest) = buf.split_at_mut(lay.tok);
        let (tab, rest) = rest.split_at_mut(lay.bytes - lay.tok);
        let (bytes, rest) = rest.split_at_mut(256);
        let (spec, rest) = rest.split_at_mut(lay.n_special);
        let (spec_idx, rest) = rest.split_at_mut(257);
        let (mtab, mout) = rest.split_at_mut(lay.merge_out - lay.merge);
        let n_vocab = lay.n_vocab;
        let raw = meta.tokens.raw();

        // Offsets of every token; each must be UTF-8.
        let mut count = 0;
        let mut max_token_len = 0;
        let mut it = StrIter { raw, pos: 0 };
        for (i, (at, s)) in (&mut it).take(n_vocab).enumerate() {
            if core::str::from_utf8(s).is_err() {
                return Err(named(ErrorKind::InvalidUtf8, "token text", TOKENS_KEY)
                    .at(elem_at(raw, at))
                    .detail(i as u64, n_vocab as u64));
            }
            offs[i] = at as u32;
            max_token_len = max_token_len.max(s.len());
            count += 1;
        }
        if count != n_vocab {
            return Err(named(ErrorKind::Truncated, "token array", TOKENS_KEY)
                .detail(count as u64, n_vocab as u64));
        }
        offs[n_vocab] = it.pos as u32;
        let offs: &[u32] = offs;
        let text = |id: usize| tok_text(offs, raw, id);

        // Token types.
        let ty_of = |id: usize| {
            meta.types
                .as_ref()
                .and_then(|t| int_elem(t, id))
                .and_then(TokenType::from_id)
                .unwrap_or(TokenType::Normal)
        };
        if let Some(t) = &meta.types {
            let size = t.elem_type().fixed_size().unwrap_or(1);
            for i in 0..n_vocab {
                let v = int_elem(t, i);
                if v.and_then(TokenType::from_id).is_none() {
                    return Err(named(
                        ErrorKind::BadValue,
                        "token type outside 0..=6",
                        TOKEN_TYPE_KEY,
                    )
                    .at(elem_at(t.raw(), i * size))
                    .detail(v.unwrap_or(-1) as u64, 6));
                }
            }
        }

        // Token -> id (the last of equal texts wins, as in llama.cpp and Hugging Face).
        tab.fill(0);
        let cap = lay.tok_cap;
        for id in 0..n_vocab {
            let t = text(id);
            let h = hash_bytes(t.iter().copied());
            let mut s = slot_of(h, cap);
            loop {
                let v = tab[2 * s];
                if v == 0 || (tab[2 * s + 1] == h && text((v - 1) as usize) == t) {
                    tab[2 * s] = id as u32 + 1;
                    tab[2 * s + 1] = h;
                    break;
                }
                s += 1;
                if s == cap {
                    s = 0;
                }
            }
        }
        let tab: &[u32] = tab;
        let find = |t: &[u8]| tok_find(tab, offs, raw, hash_bytes(t.iter().copied()), |x| x == t);

        // Byte -> token: GPT-2's byte character, or SentencePiece's `<0xXX>`.
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        for (b, slot) in bytes.iter_mut().enumerate() {
            let id = match meta.kind {
                TokenizerKind::Bpe => {
                    let c = char::from_u32(BYTE_TO_CHAR[b] as u32).unwrap_or('\u{fffd}');
                    let mut enc = [0u8; 4];
                    find(c.encode_utf8(&mut enc).as_bytes())
                }
                TokenizerKind::Spm => find(&[b'<', b'0', b'x', HEX[b >> 4], HEX[b & 15], b'>']),
            };
            *slot = id.unwrap_or(NONE);
        }
        if meta.kind == TokenizerKind::Spm {
            for (id, &off) in offs[..n_vocab].iter().enumerate() {
                if ty_of(id) == TokenType::Byte && parse_byte_token(text(id)).is_none() {
                    return Err(named(
                        ErrorKind::BadValue,
                        "byte token is not spelled <0xXX>",
                        TOKENS_KEY,
                    )
                    .at(elem_at(raw, off as usize))
                    .detail(id as u64, n_vocab as u64));
                }
            }
        }

        // Special tokens, sorted by first byte, longest first (leftmost-longest matching).
        let mut n_special = 0;
        for id in 0..n_vocab {
            if ty_of(id).is_special() && !text(id).is_empty() && n_special < spec.len() {
                spec[n_special] = id as u32;
                n_special += 1;
            }
        }
        let spec = &mut spec[..n_special];
        spec.sort_unstable_by(|&a, &b| {
            let (ta, tb) = (text(a as usize), text(b as usize));
            ta[0]
                .cmp(&tb[0])
                .then(tb.len().cmp(&ta.len()))
                .then(b.cmp(&a))
        });
        spec_idx.fill(0);
        for &id in spec.iter() {
            spec_idx[text(id as usize)[0] as usize + 1] += 1;
        }
        for b in 0..256 {
            spec_idx[b + 1] += spec_idx[b];
        }

        // Merges: (left, right) -> (rank, merged); the first listing of a pair wins.
        if let Some(merges) = &meta.merges {
            let mraw = merges.raw();
            mtab.fill(0);
            let mcap = lay.merge_cap;
            let n_merges = lay.n_merges;
            let bad = |what: &'static str, at: usize, rank: usize| {
                named(ErrorKind::BadValue, what, MERGES_KEY)
                    .at(elem_at(mraw, at))
                    .detail(rank as u64, n_merges as u64)
            };
            let mut it = StrIter { raw: mraw, pos: 0 };
            let mut count = 0;
            for (rank, (at, m)) in (&mut it).take(n_merges).enumerate() {
                count += 1;
                mout[rank] = NONE;
                // Split at the first space after the first byte (llama.cpp's rule).
                let sp = m.iter().skip(1).position(|&c| c == b' ').map(|p| p + 1);
                let Some(sp) = sp.filter(|&sp| sp + 1 < m.len()) else {
                    return Err(bad(
                        "merge is not two tokens separated by a space",
                        at,
                        rank,
                    ));
                };
                let (l, r) = (&m[..sp], &m[sp + 1..]);
                let (Some(a), Some(b)) = (find(l), find(r)) else {
                    return Err(bad(
                        "merge names a token that is not in the vocabulary",
                        at,
                        rank,
                    ));
                };
                let h = hash_bytes(l.iter().chain(r.iter()).copied());
                let merged = tok_find(tab, offs, raw, h, |x| {
                    x.len() == l.len() + r.len() && x.starts_with(l) && x.ends_with(r)
                });
                let Some(merged) = merged else {
                    return Err(bad("merge result is not in the vocabulary", at, rank));
                };
                if ty_of(merged as usize) == TokenType::Control {
                    continue; // merges never produce control tokens
                }
                mout[rank] = merged;
                let hp = hash_pair(a, b);
                let mut s = slot_of(hp, mcap);
                loop {
                    if mtab[3 * s] == 0 {
                        mtab[3 * s] = a + 1;
                        mtab[3 * s + 1] = b;
                        mtab[3 * s + 2] = rank as u32;
                        break;
                    }
                    if mtab[3 * s] == a + 1 && mtab[3 * s + 1] == b {
                        break;
                    }
                    s += 1;
                    if s == mcap {
                        s = 0;
                    }
                }
            }
            if count != n_merges {
                return Err(named(ErrorKind::Truncated, "merge array", MERGES_KEY)
                    .detail(count as u64, n_merges as u64));
            }
        }

        // SentencePiece: can text be cut before each space run? Not if some mergeable token has
        // `▁` right after a character that is not `▁`.
        let spm_cut_at_spaces = meta.kind == TokenizerKind::Spm
            && (0..n_vocab).all(|id| {
                let t = text(id);
                !ty_of(id).is_mergeable()
                    || !t.windows(3).enumerate().any(|(k, w)| {
                        w == SPM_SPACE && k > 0 && (k < 3 || t[k - 3..k] != SPM_SPACE)
                    })
            });

        let id_key = |key: &str| -> Result<Option<u32>> {
            match gguf.get_u32_opt(key)? {
                Some(id) if id as usize >= n_vocab => Err(named(
                    ErrorKind::BadValue,
                    "special token id outside the vocabulary",
                    key,
                )
                .detail(id as u64, n_vocab as u64)),
                v => Ok(v),
            }
        };
        let (bos, eos, unk, eot, eom) = (
            id_key(BOS_KEY)?,
            id_key(EOS_KEY)?,
            id_key(UNK_KEY)?,
            id_key(EOT_KEY)?,
            id_key(EOM_KEY)?,
        );
        let mut eog = [0u32; MAX_EOG];
        let mut n_eog = 0;
        let eog_candidates = [eos, eot, eom]
            .into_iter()
            .flatten()
            .chain(EOG_TEXTS.iter().filter_map(|t| find(t.as_bytes())));
        for id in eog_candidates {
            if n_eog < MAX_EOG && !eog[..n_eog].contains(&id) {
                eog[n_eog] = id;
                n_eog += 1;
            }
        }
        let spm = meta.kind == TokenizerKind::Spm;
        let add_bos = optional_bool(gguf, ADD_BOS_KEY)?.unwrap_or(spm);
        let add_space_prefix = optional_bool(gguf, ADD_SPACE_PREFIX_KEY)?.unwrap_or(spm);

        Ok(Tokenizer {
            kind: meta.kind,
            pre: meta.pre,
            tokens_raw: raw,
            types: meta.types,
            scores: meta.scores,
            lay,
            n_special,
            bos,
            eos,
            unk,
            eog,
            n_eog,
            add_bos,
            add_space_prefix,
            spm_cut_at_spaces,
            max_token_len,
            scratch,
        })
    }
}

/// The byte of a SentencePiece byte token `<0xXX>`.
fn parse_byte_token(t: &[u8]) -> Option<u8> {
    let [b'<', b'0', b'x', hi, lo, b'>'] = *t else {
        return None;
    };
    let hex = |c: u8| (c as char).to_digit(16);
    Some((hex(hi)? * 16 + hex(lo)?) as u8)
}

fn too_small(what: &'static str, need: usize, have: usize) -> Error {
    Error::new(ErrorKind::BufferTooSmall, what).detail(need as u64, have as u64)
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
    /// `llama`, false for `gpt2`). [`Tokenizer::encode`] never adds it: the caller does.
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
    /// `out`, which must then hold `3n + 2·next_pow2(n)` more ids for an `n`-byte piece. An `out`
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
        let mut w = 0;
        let mut after_special = true;
        let mut frag = 0;
        let mut p = 0;
        while p < bytes.len() {
            match self.match_special(bytes, p, parse_special) {
                Some((id, len)) => {
                    if frag < p {
                        self.encode_raw(&text[frag..p], after_special, out, &mut w)?;
                    }
                    push_id(out, &mut w, id)?;
                    after_special = true;
                    p += len;
                    frag = p;
                }
                None => p += 1,
            }
        }
        if frag < bytes.len() {
            self.encode_raw(&text[frag..], after_special, out, &mut w)?;
        }
        Ok(w)
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
    fn encode_raw(
        &self,
        frag: &str,
        after_special: bool,
        out: &mut [u32],
        w: &mut usize,
    ) -> Result<()> {
        match self.kind {
            TokenizerKind::Bpe => {
                for piece in pretok::Pieces::new(frag, self.pre) {
                    let b = piece.as_bytes();
                    let starts = b.iter().enumerate().map(|(i, &c)| (i, self.byte_token(c)));
                    self.run_piece(b.len(), starts, &BpeKeys(self), Fallback::Bpe, out, w)?;
                }
            }
            TokenizerKind::Spm => {
                let b = frag.as_bytes();
                let prefix = self.add_space_prefix && after_special;
                if !self.spm_cut_at_spaces {
                    return self.spm_chunk(SpmView { raw: b, prefix }, out, w);
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
                            out,
                            w,
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
                    out,
                    w,
                )?;
            }
        }
        Ok(())
    }

    fn spm_chunk(&self, view: SpmView<'_>, out: &mut [u32], w: &mut usize) -> Result<()> {
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
            out,
            w,
        )
    }

    /// Merge one piece of `n` bytes and append its tokens to `out[*w..]`.
    fn run_piece<P: PairKey>(
        &self,
        n: usize,
        starts: impl Iterator<Item = (usize, u32)>,
        keys: &P,
        fb: Fallback<'_>,
        out: &mut [u32],
        w: &mut usize,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let need = work_len(n);
        if need <= STACK_WORK {
            let mut stack = [0u32; STACK_WORK];
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
