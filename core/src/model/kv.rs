//! The KV cache: its element type ([`CacheType`]), the per-layer layout (a ring for
//! sliding-window layers) and the attention of one token over it.
//!
//! Layout: per layer one region of K rows and one of V rows, a row being one position's
//! `kv_dim` values (all KV heads) in the cache type. A global layer holds `ctx` rows, row `p`
//! for position `p`. A sliding-window layer (Gemma 2/3) holds only
//! [`layer_slots`]`= min(ctx, window + block - 1)` rows, position `p` in row `p % slots` (a
//! ring). The rule that makes that enough: a block of `n <= block` tokens at positions
//! `p0..p0 + n` writes its rows first, then each token `p` attends `p + 1 - window ..= p`; the
//! oldest row the block reads is `p0 + 1 - window`, the newest it writes `p0 + n - 1`, a span of
//! `n + window - 1 <= slots` positions, so no write of the block lands on a row one of its
//! tokens still reads. (llama.cpp sizes its SWA cache the same way: window + ubatch.) What a
//! ring cannot do is rewind far: positions older than `slots` before the newest write are
//! gone, so `State` tracks the oldest position still held and refuses a rewind that needs an
//! older one ([`CacheSpec::swa_full`] keeps every position instead, as llama.cpp's `swa_full`).
//!
//! Element types (llama.cpp's `type_k`/`type_v`):
//! - `F32`: the oracle. Scores and the value sum are the table's attention kernels
//!   (`kernels::attn`: one fixed order, the same bits on every table).
//! - `F16`: each value rounded to nearest f16 when written; the same attention kernels read
//!   the halves (widened exactly to f32) against the f32 query (no rounding of q, unlike
//!   llama.cpp's f16 `vec_dot_type`), so an F16 cache gives what an F32 cache holding the
//!   rounded values would.
//! - `Q8_0`: blocks of 32 along `head_dim` (so `head_dim % 32 == 0`), quantised as ggml's
//!   `quantize_row_q8_0`; scores are the table's Q8_0 x Q8_0 dot against the query quantised to
//!   Q8_0 per head (what llama.cpp does for a Q8_0 K), values dequantised (`d * q`) and
//!   accumulated in f32 (llama.cpp's flash-attention path for a quantised V).
//!
//! Regions live in the state's `f32` words; F16 and Q8_0 rows are viewed as bytes (`u8` has
//! no alignment and every bit pattern is valid for both `u8` and `f32`).

use super::{softcap, softmax_with, Config, State};
use crate::error::{Error, ErrorKind, Result};
use crate::kernels::attn::Elems;
#[cfg(feature = "kv-q8_0")]
use crate::kernels::scratch_blocks;
use crate::kernels::Kernel;
#[cfg(feature = "kv-q8_0")]
use crate::quant::cast_blocks;
use crate::quant::BlockQ8_0;

/// Element type of the KV cache (llama.cpp's `type_k` = `type_v`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CacheType {
    /// 4 bytes a value: results bit-identical to the reference forward pass.
    #[default]
    F32,
    /// 2 bytes a value (IEEE half, round to nearest even).
    F16,
    /// 34 bytes per 32 values (f16 scale + 32 `i8`), blocks along each head.
    Q8_0,
}

impl CacheType {
    /// Every cache type.
    pub const ALL: [CacheType; 3] = [CacheType::F32, CacheType::F16, CacheType::Q8_0];

    /// The name as llama.cpp's `--cache-type-k` spells it: `f32`, `f16`, `q8_0`.
    pub const fn name(self) -> &'static str {
        match self {
            CacheType::F32 => "f32",
            CacheType::F16 => "f16",
            CacheType::Q8_0 => "q8_0",
        }
    }

    /// Parse [`CacheType::name`] (ASCII case-insensitive).
    pub fn from_name(s: &str) -> Option<CacheType> {
        CacheType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// Bytes of one cached row of `kv_dim` values (`kv_dim` a multiple of 32 for Q8_0; any
    /// remainder is rounded up to a whole block), or `None` on overflow.
    pub const fn row_bytes(self, kv_dim: usize) -> Option<usize> {
        match self {
            CacheType::F32 => kv_dim.checked_mul(4),
            CacheType::F16 => kv_dim.checked_mul(2),
            CacheType::Q8_0 => kv_dim.div_ceil(32).checked_mul(34),
        }
    }

    /// Whether a model with `cfg` can use this cache type in this build.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`]: Q8_0 with a `head_dim` that is not a multiple of 32
    /// (its blocks run along each head); F16 in a build without the `kv-f16` feature, Q8_0
    /// without `kv-q8_0` (both in `kv-quant`).
    pub fn check(self, cfg: &Config) -> Result<()> {
        let built = match self {
            CacheType::F32 => true,
            CacheType::F16 => cfg!(feature = "kv-f16"),
            CacheType::Q8_0 => cfg!(feature = "kv-q8_0"),
        };
        if !built {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "KV cache type not built: needs edgelora's `kv-f16` / `kv-q8_0` feature (`kv-quant` has both; or use f32)",
            ));
        }
        if self == CacheType::Q8_0 && !cfg.head_dim.is_multiple_of(32) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "q8_0 KV cache needs head_dim a multiple of 32 (use f16 or f32 for this model)",
            )
            .detail(cfg.head_dim as u64, 32));
        }
        Ok(())
    }
}

/// How a state's KV cache is built: element type, whether sliding-window layers keep every
/// position (`swa_full`, llama.cpp's option of the same name: any rewind works, at the memory
/// of a full cache) or only a ring of their window (the default), and how many prompt tokens
/// pass through the layers together (`block`: it sizes the activations and the rings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CacheSpec {
    /// Element type of K and V.
    pub ty: CacheType,
    /// Keep all `ctx` positions in sliding-window layers too.
    pub swa_full: bool,
    /// Prompt tokens per prefill block, capped by `ctx`; 0 (the default) means this target's
    /// default, [`State::block_for`]. A microcontroller build runs one token at a time either
    /// way, so 1 there keeps only single-token activations in RAM; a host computing a device
    /// state's size (the firmware's build script) says 1 explicitly.
    pub block: usize,
}

impl CacheSpec {
    /// A spec of type `ty` with sliding-window rings and the target's default block.
    pub const fn of(ty: CacheType) -> CacheSpec {
        CacheSpec {
            ty,
            swa_full: false,
            block: 0,
        }
    }

    /// This spec with prompt blocks of `block` tokens (0: the target's default).
    pub const fn with_block(self, block: usize) -> CacheSpec {
        CacheSpec { block, ..self }
    }

    /// Prompt tokens per block for a state of `ctx` positions: `block` (or the target's
    /// default when 0), at most `ctx`.
    pub const fn block_for(self, ctx: usize) -> usize {
        let b = if self.block == 0 {
            State::block_for(ctx)
        } else {
            self.block
        };
        if b < ctx {
            b
        } else {
            ctx
        }
    }
}

/// Rows (positions) layer `l` keeps: `ctx` for a global layer, `min(ctx, window + block - 1)`
/// for a sliding-window layer (the module doc says why that is enough), `block` being
/// [`CacheSpec::block_for`]`(ctx)`.
pub fn layer_slots(cfg: &Config, ctx: usize, spec: CacheSpec, l: usize) -> usize {
    if spec.swa_full || !cfg.arch.is_swa(l) {
        return ctx;
    }
    let w = cfg.arch.swa_window;
    ctx.min(w.saturating_add(spec.block_for(ctx)).saturating_sub(1))
}

/// `f32` words of layer `l`'s K region (V's is the same size), or `None` on overflow.
pub(super) fn layer_words(cfg: &Config, ctx: usize, spec: CacheSpec, l: usize) -> Option<usize> {
    let rb = spec.ty.row_bytes(cfg.kv_dim())?;
    Some(layer_slots(cfg, ctx, spec, l).checked_mul(rb)?.div_ceil(4))
}

/// `f32` words of all layers' K regions (V's is the same size), or `None` on overflow.
pub(super) fn cache_words(cfg: &Config, ctx: usize, spec: CacheSpec) -> Option<usize> {
    (0..cfg.n_layers).try_fold(0usize, |a, l| {
        a.checked_add(layer_words(cfg, ctx, spec, l)?)
    })
}

/// Bytes of the K and V caches of a state for `cfg`, `ctx` positions and `spec`, saturating.
pub fn cache_bytes(cfg: &Config, ctx: usize, spec: CacheSpec) -> usize {
    cache_words(cfg, ctx, spec)
        .and_then(|w| w.checked_mul(8))
        .unwrap_or(usize::MAX)
}

#[cfg(any(feature = "kv-f16", feature = "kv-q8_0"))]
fn words_as_bytes(w: &[f32]) -> &[u8] {
    // SAFETY: initialised f32s viewed as bytes: `u8` has alignment 1 and no invalid values;
    // the shared borrow carries over.
    unsafe { core::slice::from_raw_parts(w.as_ptr().cast::<u8>(), core::mem::size_of_val(w)) }
}

#[cfg(feature = "kv-f16")]
fn words_as_bytes_mut(w: &mut [f32]) -> &mut [u8] {
    let len = core::mem::size_of_val(w);
    // SAFETY: as `words_as_bytes`; any byte pattern written through the view is a valid f32,
    // and the exclusive borrow carries over.
    unsafe { core::slice::from_raw_parts_mut(w.as_mut_ptr().cast::<u8>(), len) }
}

/// Store one position's row (`kv_dim` f32 values) into row `slot` of a layer region.
/// Returns `false` if the region is too short (the caller reports it).
pub(super) fn store_row(
    ty: CacheType,
    kern: &Kernel,
    region: &mut [f32],
    slot: usize,
    row: &[f32],
) -> bool {
    let kv_dim = row.len();
    match ty {
        CacheType::F32 => match region.get_mut(slot * kv_dim..(slot + 1) * kv_dim) {
            Some(r) => {
                r.copy_from_slice(row);
                true
            }
            None => false,
        },
        #[cfg(feature = "kv-f16")]
        CacheType::F16 => {
            let rb = kv_dim * 2;
            match words_as_bytes_mut(region).get_mut(slot * rb..(slot + 1) * rb) {
                Some(r) => {
                    for (b, &v) in r.chunks_exact_mut(2).zip(row) {
                        b.copy_from_slice(&crate::quant::to_f16_le(v));
                    }
                    true
                }
                None => false,
            }
        }
        #[cfg(feature = "kv-q8_0")]
        CacheType::Q8_0 => {
            let bpr = kv_dim / 32;
            match scratch_blocks::<BlockQ8_0>(region).get_mut(slot * bpr..(slot + 1) * bpr) {
                Some(r) => {
                    kern.quantize_q8_0(row, r);
                    true
                }
                None => false,
            }
        }
        #[cfg(not(all(feature = "kv-f16", feature = "kv-q8_0")))]
        _ => {
            let _ = kern;
            false
        }
    }
}

/// One layer's cached rows as the attention reads them.
enum Rows<'a> {
    F32(&'a [f32]),
    #[cfg(feature = "kv-f16")]
    F16(&'a [u8]),
    #[cfg(feature = "kv-q8_0")]
    Q8(&'a [BlockQ8_0]),
}

impl<'a> Rows<'a> {
    fn new(ty: CacheType, region: &'a [f32]) -> Option<Rows<'a>> {
        match ty {
            CacheType::F32 => Some(Rows::F32(region)),
            #[cfg(feature = "kv-f16")]
            CacheType::F16 => Some(Rows::F16(words_as_bytes(region))),
            #[cfg(feature = "kv-q8_0")]
            CacheType::Q8_0 => {
                let b = words_as_bytes(region);
                let n = b.len() / 34 * 34;
                cast_blocks(&b[..n]).ok().map(Rows::Q8)
            }
            #[cfg(not(all(feature = "kv-f16", feature = "kv-q8_0")))]
            _ => None,
        }
    }
}

/// What one token's attention needs besides its query and output.
pub(super) struct Attn<'a> {
    /// This layer's K and V regions.
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub ty: CacheType,
    /// Rows of the region (positions it keeps).
    pub slots: usize,
    /// First and last position attended (inclusive).
    pub first: usize,
    pub pos: usize,
    pub hd: usize,
    pub kv_dim: usize,
    pub group: usize,
    pub scale: f32,
    pub cap: f32,
    /// The state's kernel table (the F16 and Q8_0 dots).
    #[cfg_attr(not(feature = "kv-q8_0"), allow(dead_code))]
    pub kern: &'static Kernel,
}

/// Causal attention of one token, all heads: `q` (n_heads*head_dim,) against the cached keys
/// and values of positions `a.first..=a.pos`; `att` is scratch for one head's scores (at least
/// the span), `qq` for the query's Q8_0 blocks (Q8_0 caches). GQA: query head `h` reads kv
/// head `h / group`. Scores, softmax and the value sum run in position order whatever the ring
/// offset, so a ring gives the same bits as a full cache. Returns `false` if a buffer is short.
pub(super) fn attend<'a>(
    q: &[f32],
    out: &mut [f32],
    a: &Attn<'a>,
    att: &mut [f32],
    qq: &mut [BlockQ8_0],
) -> bool {
    let span = a.pos + 1 - a.first;
    let (Some(k), Some(v), Some(att)) = (
        Rows::new(a.ty, a.k),
        Rows::new(a.ty, a.v),
        att.get_mut(..span),
    ) else {
        return false;
    };
    if a.slots == 0 || span > a.slots {
        return false;
    }
    // The span as up to two runs of rows in position order: [s0, s0 + n0) then [0, span - n0).
    let s0 = a.first % a.slots;
    let n0 = span.min(a.slots - s0);
    let runs = [(s0, n0), (0, span - n0)];
    let (hd, kv_dim) = (a.hd, a.kv_dim);
    #[cfg(feature = "kv-q8_0")]
    let qb = hd / 32;
    #[cfg(feature = "kv-q8_0")]
    if let Rows::Q8(_) = k {
        let nb = q.len() / 32;
        match qq.get_mut(..nb) {
            Some(qq) => a.kern.quantize_q8_0(q, qq),
            None => return false,
        }
    }
    let _ = &qq;
    // F32 and F16 rows through the table's attention kernels (one fixed order on every table,
    // `kernels::attn`), offset to a head's columns: `Elems` for the rows from `r0` on.
    let elems = |rows: &Rows<'a>, r0: usize, kvo: usize| -> Option<Elems<'a>> {
        let e = r0 * kv_dim + kvo;
        match *rows {
            Rows::F32(x) => x.get(e..).map(Elems::F32),
            #[cfg(feature = "kv-f16")]
            Rows::F16(x) => x.get(2 * e..).map(Elems::F16),
            #[cfg(feature = "kv-q8_0")]
            Rows::Q8(_) => None,
        }
    };
    for (h, (qh, out)) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)).enumerate() {
        let kvo = (h / a.group) * hd;
        // Scores, in position order.
        let mut i = 0;
        for (r0, n) in runs {
            let Some(ar) = att.get_mut(i..i + n) else {
                return false;
            };
            i += n;
            if n == 0 {
                continue;
            }
            match k {
                #[cfg(feature = "kv-q8_0")]
                Rows::Q8(k) => {
                    for (s, t) in ar.iter_mut().zip(r0..r0 + n) {
                        let o = (t * kv_dim + kvo) / 32;
                        let (Some(kt), Some(qt)) = (k.get(o..o + qb), qq.get(h * qb..(h + 1) * qb))
                        else {
                            return false;
                        };
                        let mut y = [0.0f32];
                        (a.kern.q8_0)(kt, qb, qt, &mut y);
                        *s = y[0] * a.scale;
                    }
                }
                _ => {
                    let Some(kr) = elems(&k, r0, kvo) else {
                        return false;
                    };
                    if !(a.kern.attn_scores)(qh, kr, kv_dim, a.scale, ar) {
                        return false;
                    }
                }
            }
        }
        if a.cap > 0.0 {
            for s in att.iter_mut() {
                *s = softcap(*s, a.cap);
            }
        }
        softmax_with(a.kern, att);
        // Values, in position order.
        out.fill(0.0);
        let mut i = 0;
        for (r0, n) in runs {
            let Some(p) = att.get(i..i + n) else {
                return false;
            };
            i += n;
            if n == 0 {
                continue;
            }
            match v {
                #[cfg(feature = "kv-q8_0")]
                Rows::Q8(v) => {
                    for (t, &p) in (r0..r0 + n).zip(p) {
                        let o = (t * kv_dim + kvo) / 32;
                        let Some(vt) = v.get(o..o + qb) else {
                            return false;
                        };
                        for (ob, blk) in out.chunks_exact_mut(32).zip(vt) {
                            let d = crate::quant::f16_le(blk.d);
                            for (o, &x) in ob.iter_mut().zip(&blk.qs) {
                                *o += p * ((x as i8) as f32 * d);
                            }
                        }
                    }
                }
                _ => {
                    let Some(vr) = elems(&v, r0, kvo) else {
                        return false;
                    };
                    if !(a.kern.attn_wsum)(p, vr, kv_dim, out) {
                        return false;
                    }
                }
            }
        }
    }
    true
}
