//! Building the tokenizer's indexes from GGUF metadata into the caller's scratch.
//!
//! Everything read from the file is checked here once (types, lengths, token types, UTF-8,
//! merges, special ids), so that encoding and decoding can rely on it.

use super::merge::NONE;
use super::unicode::BYTE_TO_CHAR;
use super::{
    PreTokenizer, TokenType, Tokenizer, TokenizerKind, ADD_BOS_KEY, ADD_SPACE_PREFIX_KEY, BOS_KEY,
    EOG_TEXTS, EOM_KEY, EOS_KEY, EOT_KEY, MAX_EOG, MERGES_KEY, MODEL_KEY, PRE_KEY, SCORES_KEY,
    SPM_SPACE, TOKENS_KEY, TOKEN_TYPE_KEY, UNK_KEY,
};
use crate::error::{Error, ErrorKind, Result};
use crate::format::gguf::{ArrayView, Gguf, Value, ValueType};

#[cfg(feature = "alloc")]
use alloc::{vec, vec::Vec};

/// Capacity of an open-addressing table for `n` keys (load factor <= 2/3, never full).
const fn table_cap(n: usize) -> usize {
    n + n / 2 + 1
}

/// Where each index lives in the scratch, in `u32` words.
#[derive(Clone, Copy, Debug)]
pub(super) struct Layout {
    pub(super) n_vocab: usize,
    pub(super) n_merges: usize,
    pub(super) n_special: usize,
    pub(super) tok_cap: usize,
    pub(super) merge_cap: usize,
    pub(super) offs: usize,
    pub(super) tok: usize,
    pub(super) bytes: usize,
    pub(super) spec: usize,
    pub(super) spec_idx: usize,
    pub(super) merge: usize,
    pub(super) merge_out: usize,
    pub(super) total: usize,
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
pub(super) fn int_elem(a: &ArrayView<'_>, i: usize) -> Option<i64> {
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
pub(super) fn hash_bytes(it: impl Iterator<Item = u8>) -> u32 {
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

pub(super) fn hash_pair(a: u32, b: u32) -> u32 {
    fmix32(a.wrapping_mul(0x9e37_79b1) ^ fmix32(b))
}

/// Map a hash onto `0..cap` (Lemire's multiply-shift; `cap` need not be a power of two).
pub(super) fn slot_of(h: u32, cap: usize) -> usize {
    ((h as u64 * cap as u64) >> 32) as usize
}

pub(super) fn tok_text<'r>(offs: &[u32], raw: &'r [u8], id: usize) -> &'r [u8] {
    let start = offs[id] as usize + 8;
    let end = offs[id + 1] as usize;
    raw.get(start..end).unwrap_or(&[])
}

/// Find the id whose text satisfies `eq` among the entries with hash `h`.
pub(super) fn tok_find(
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
    /// `add_bos_token` (default: true for `llama` and for `gpt2` with a Llama 3 `pre`, false for
    /// other `gpt2` files) and `add_space_prefix`
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
        let add_bos =
            optional_bool(gguf, ADD_BOS_KEY)?.unwrap_or(spm || meta.pre.default_add_bos());
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
pub(super) fn parse_byte_token(t: &[u8]) -> Option<u8> {
    let [b'<', b'0', b'x', hi, lo, b'>'] = *t else {
        return None;
    };
    let hex = |c: u8| (c as char).to_digit(16);
    Some((hex(hi)? * 16 + hex(lo)?) as u8)
}
