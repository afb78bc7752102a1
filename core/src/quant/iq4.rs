//! IQ4_NL and IQ4_XS: 4-bit indices into a fixed non-linear table (feature `quant-iq4`).
//!
//! Both store 4-bit indices into [`KVALUES_IQ4NL`] (ggml `kvalues_iq4nl`), a 16-entry table
//! denser near zero, so `w = scale * KVALUES_IQ4NL[q]`. The nibble order inside each 32-element
//! group is Q4_0's: low nibble of byte `j` is element `j`, high nibble element `j + 16`.
//!
//! - IQ4_NL (ggml `block_iq4_nl`, 18 bytes, 32 elements): f16 `d`, `qs: [u8; 16]`. Dots against
//!   Q8_0.
//! - IQ4_XS (ggml `block_iq4_xs`, 136 bytes, 256 elements): f16 `d`, `scales_h: u16` (LE),
//!   `scales_l: [u8; 4]`, `qs: [u8; 128]`. Group `ib` (0..8, 32 elements) has the 6-bit scale
//!   `ls = (scales_l[ib/2] >> 4*(ib%2)) & 15 | ((scales_h >> 2*ib) & 3) << 4` and
//!   `w = d * (ls - 32) * KVALUES_IQ4NL[q]`. Dots against Q8_K.
//!
//! The IQ4_NL quantiser is ggml's `quantize_row_iq4_nl_ref` (no importance matrix, `ntry = -1`):
//! a first scale `max / -127`, nearest table entries, then the least-squares scale for those
//! entries with weights `x^2`. What `llama-quantize` writes into model files is ggml's
//! `ggml_quantize_chunk`, which runs `quantize_iq4_nl` / `quantize_iq4_xs` instead: the same
//! start plus a search over 15 scales around it (`ntry = 7`) and, for IQ4_XS, 6-bit group scales
//! relative to one f16 super-block scale. Those are [`quantize_iq4_nl`] and [`quantize_iq4_xs`],
//! the [`QuantType::QUANTIZE`] of both types (so `edgelora quantize` writes llama.cpp's bytes);
//! `quantize_row_iq4_nl` stays as the `_ref` oracle.

use super::types::QuantizeFn;
use super::{
    f16_le, nearest_int, to_f16_le, Block, BlockQ8_0, BlockQ8_K, GgmlType, QuantType, QK, QK_K,
};
use core::mem::{align_of, size_of};

/// ggml's `kvalues_iq4nl`: the 16 non-linear levels an IQ4 index selects.
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below this quantises to zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// IQ4_NL block: `w = d * KVALUES_IQ4NL[q]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockIQ4_NL {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// 32 table indices: low nibble of byte j is element j, high nibble element j+16.
    pub qs: [u8; 16],
}

/// IQ4_XS super-block: `w = d * (ls - 32) * KVALUES_IQ4NL[q]` with a 6-bit `ls` per 32.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockIQ4_XS {
    /// Super-block scale, f16 little-endian.
    pub d: [u8; 2],
    /// High two bits of the 8 group scales (bits `2ib..2ib+2`), u16 little-endian.
    pub scales_h: [u8; 2],
    /// Low four bits of the 8 group scales, two per byte (group `2k` in the low nibble).
    pub scales_l: [u8; 4],
    /// Table indices, 16 bytes per group of 32, nibble order as IQ4_NL.
    pub qs: [u8; 128],
}

const _: () = assert!(size_of::<BlockIQ4_NL>() == 18 && align_of::<BlockIQ4_NL>() == 1);
const _: () = assert!(size_of::<BlockIQ4_XS>() == 136 && align_of::<BlockIQ4_XS>() == 1);
const _: () = assert!(size_of::<BlockIQ4_NL>() == GgmlType::IQ4_NL.block_bytes());
const _: () = assert!(size_of::<BlockIQ4_XS>() == GgmlType::IQ4_XS.block_bytes());

// SAFETY: #[repr(C)] of u8 arrays only (checked by the asserts above).
unsafe impl Block for BlockIQ4_NL {
    const TYPE: GgmlType = GgmlType::IQ4_NL;
}
// SAFETY: as above.
unsafe impl Block for BlockIQ4_XS {
    const TYPE: GgmlType = GgmlType::IQ4_XS;
}

impl BlockIQ4_NL {
    /// An all-zero block.
    pub const ZERO: BlockIQ4_NL = BlockIQ4_NL {
        d: [0; 2],
        qs: [0; 16],
    };
}
impl BlockIQ4_XS {
    /// An all-zero block.
    pub const ZERO: BlockIQ4_XS = BlockIQ4_XS {
        d: [0; 2],
        scales_h: [0; 2],
        scales_l: [0; 4],
        qs: [0; 128],
    };

    /// The 6-bit scale of group `ib` (0..8), before the `- 32`.
    #[inline(always)]
    fn ls(&self, ib: usize) -> i32 {
        let h = u16::from_le_bytes(self.scales_h) as i32;
        ((self.scales_l[ib / 2] as i32 >> (4 * (ib % 2))) & 0x0f) | (((h >> (2 * ib)) & 3) << 4)
    }
}

/// Table level of index `i` (only the low nibble is used).
#[inline(always)]
fn kv(i: u8) -> i32 {
    KVALUES_IQ4NL[(i & 0x0f) as usize] as i32
}

/// Dequantise IQ4_NL blocks into `y` (ggml `dequantize_row_iq4_nl`).
pub fn dequantize_row_iq4_nl(x: &[BlockIQ4_NL], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_le(b.d);
        for j in 0..QK / 2 {
            out[j] = d * kv(b.qs[j]) as f32;
            out[j + QK / 2] = d * kv(b.qs[j] >> 4) as f32;
        }
    }
}

/// Dequantise IQ4_XS blocks into `y` (ggml `dequantize_row_iq4_xs`).
pub fn dequantize_row_iq4_xs(x: &[BlockIQ4_XS], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        for (ib, (qs, o)) in
            b.qs.chunks_exact(16)
                .zip(out.chunks_exact_mut(32))
                .enumerate()
        {
            let dl = d * (b.ls(ib) - 32) as f32;
            for j in 0..16 {
                o[j] = dl * kv(qs[j]) as f32;
                o[j + 16] = dl * kv(qs[j] >> 4) as f32;
            }
        }
    }
}

/// Dot of IQ4_NL weights with Q8_0 activations (ggml `ggml_vec_dot_iq4_nl_q8_0`, generic path).
pub fn vec_dot_iq4_nl_q8_0(x: &[BlockIQ4_NL], y: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let d = f16_le(b.d) * f16_le(a.d);
        let mut sumi1: i32 = 0;
        let mut sumi2: i32 = 0;
        for j in 0..QK / 2 {
            sumi1 += (b.qs[j] as i8) as i32 * kv(a.qs[j]);
            sumi2 += (b.qs[j + QK / 2] as i8) as i32 * kv(a.qs[j] >> 4);
        }
        sumf += d * (sumi1 + sumi2) as f32;
    }
    sumf
}

/// Dot of IQ4_XS weights with Q8_K activations (ggml `ggml_vec_dot_iq4_xs_q8_K`, generic path).
pub fn vec_dot_iq4_xs_q8_k(x: &[BlockIQ4_XS], y: &[BlockQ8_K]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let d4d8 = f16_le(a.d) * b.d();
        for (ib, qs) in a.qs.chunks_exact(16).enumerate() {
            // ggml walks the groups in pairs with a shifting copy of scales_h; the per-group
            // scale and the float order (one `sumf +=` per group) are the same.
            let dl = d4d8 * (a.ls(ib) - 32) as f32;
            let q8 = 32 * ib;
            let mut sumi1: i32 = 0;
            let mut sumi2: i32 = 0;
            for (j, &q) in qs.iter().enumerate() {
                sumi1 += b.q(q8 + j) as i32 * kv(q);
                sumi2 += b.q(q8 + j + 16) as i32 * kv(q >> 4);
            }
            sumf += dl * (sumi1 + sumi2) as f32;
        }
    }
    sumf
}

/// ggml `best_index_int8`: the index of the table entry nearest `x` (binary search over the
/// sorted table; on an exact midpoint the upper entry wins).
fn best_index_int8(values: &[i8; 16], x: f32) -> usize {
    if x <= values[0] as f32 {
        return 0;
    }
    if x >= values[15] as f32 {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < values[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (values[mu - 1] as f32) < (values[mu] as f32) - x {
        mu - 1
    } else {
        mu
    }
}

/// Quantise to IQ4_NL (ggml `quantize_row_iq4_nl_ref`, i.e. `quantize_row_iq4_nl_impl` with one
/// 32-element block, no importance weights and `ntry = -1`).
///
/// `max` is the value of largest magnitude with its sign; the indices are the nearest table
/// entries to `x * (-127 / max)`; the stored scale is the weighted least-squares fit
/// `sum(w q x) / sum(w q q)` with `w = x^2`. A block with `max|x| < 1e-15` stores zeros.
pub fn quantize_row_iq4_nl(x: &[f32], y: &mut [BlockIQ4_NL]) {
    let values = &KVALUES_IQ4NL;
    for (xb, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in xb {
            let ax = libm::fabsf(v);
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        let mut l = [0u8; QK];
        let mut scale = 0.0f32;
        if amax >= GROUP_MAX_EPS {
            // ntry <= 0: d = max / values[0].
            let d = max / values[0] as f32;
            let id = 1.0 / d;
            let mut sumqx = 0.0f32;
            let mut sumq2 = 0.0f32;
            for (li, &v) in l.iter_mut().zip(xb) {
                let idx = best_index_int8(values, id * v);
                *li = idx as u8;
                let q = values[idx] as f32;
                let w = v * v;
                sumqx += w * q * v;
                sumq2 += w * q * q;
            }
            scale = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        }
        b.d = to_f16_le(scale);
        for j in 0..QK / 2 {
            b.qs[j] = l[j] | (l[j + QK / 2] << 4);
        }
    }
}

/// The scale search of ggml's `quantize_row_iq4_nl_impl` with `ntry = 7` and no importance
/// matrix (weights `x^2`), for one super-block of `x.len()` values (32 for IQ4_NL, 256 for
/// IQ4_XS) in groups of 32: writes the group indices into `l` and returns the per-group scales
/// (unused tail entries 0). Every float expression keeps the C's operation order (the tests
/// compare bytes with `ggml_quantize_chunk`).
fn iq4_group_scales(x: &[f32], l: &mut [u8; QK_K]) -> [f32; QK_K / QK] {
    const NTRY: i32 = 7;
    let values = &KVALUES_IQ4NL;
    let v0 = values[0] as f32;
    let mut scales = [0.0f32; QK_K / QK];
    for (ib, xb) in x.chunks_exact(QK).enumerate() {
        let lb = &mut l[ib * QK..(ib + 1) * QK];
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xb {
            let ax = libm::fabsf(v);
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            continue;
        }
        // ntry > 0: the first scale maps the largest value to +127 (the C's `-max/values[0]`).
        let mut d = -max / v0;
        let mut id = 1.0 / d;
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for (li, &v) in lb.iter_mut().zip(xb) {
            let idx = best_index_int8(values, id * v);
            *li = idx as u8;
            let q = values[idx] as f32;
            let w = v * v;
            sumqx += w * q * v;
            sumq2 += w * q * q;
        }
        d = sumqx / sumq2;
        let mut best = d * sumqx;
        for itry in -NTRY..=NTRY {
            id = (itry as f32 + v0) / max;
            sumqx = 0.0;
            sumq2 = 0.0;
            for &v in xb {
                let q = values[best_index_int8(values, id * v)] as f32;
                let w = v * v;
                sumqx += w * q * v;
                sumq2 += w * q * q;
            }
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
    }
    scales
}

/// Pack 32-value groups of indices the IQ4 way (low nibble element `j`, high `j + 16`).
fn pack_iq4(l: &[u8], qs: &mut [u8]) {
    for (lg, q) in l.chunks_exact(QK).zip(qs.chunks_exact_mut(QK / 2)) {
        for j in 0..QK / 2 {
            q[j] = lg[j] | (lg[j + QK / 2] << 4);
        }
    }
}

/// Quantise to IQ4_NL as `ggml_quantize_chunk` does (ggml `quantize_iq4_nl`, no importance
/// matrix): `iq4_group_scales`'s search, the winning scale stored as f16, and the indices
/// re-picked for the f32 winner (an all-tiny block: `d = 0`, every index 8, the level nearest 0).
pub fn quantize_iq4_nl(x: &[f32], y: &mut [BlockIQ4_NL]) {
    let mut l = [0u8; QK_K];
    for (xb, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let d = iq4_group_scales(xb, &mut l)[0];
        b.d = to_f16_le(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (li, &v) in l.iter_mut().zip(xb) {
            *li = best_index_int8(&KVALUES_IQ4NL, id * v) as u8;
        }
        pack_iq4(&l[..QK], &mut b.qs);
    }
}

/// Quantise to IQ4_XS as `ggml_quantize_chunk` does (ggml `quantize_iq4_xs`, no importance
/// matrix): per 32-group scales from `iq4_group_scales`, the super-block scale
/// `d = -max_scale / 32` (f16) with 6-bit group scales `clamp(round(s / d), -32, 31) + 32`, and
/// the indices re-picked for each group's stored scale `d * l` (in f32, before f16 rounding of `d`,
/// as the C does).
pub fn quantize_iq4_xs(x: &[f32], y: &mut [BlockIQ4_XS]) {
    let values = &KVALUES_IQ4NL;
    let mut l = [0u8; QK_K];
    for (xs, b) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let scales = iq4_group_scales(xs, &mut l);
        let (mut max_scale, mut amax_scale) = (0.0f32, 0.0f32);
        for &s in &scales {
            if libm::fabsf(s) > amax_scale {
                amax_scale = libm::fabsf(s);
                max_scale = s;
            }
        }
        let d = -max_scale / 32.0;
        b.d = to_f16_le(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut scales_h = 0u16;
        b.scales_l = [0; 4];
        for (ib, (&s, xb)) in scales.iter().zip(xs.chunks_exact(QK)).enumerate() {
            let ls = nearest_int(id * s).clamp(-32, 31);
            let dl = d * ls as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            for (li, &v) in l[ib * QK..(ib + 1) * QK].iter_mut().zip(xb) {
                *li = best_index_int8(values, idl * v) as u8;
            }
            let ls = (ls + 32) as u8;
            b.scales_l[ib / 2] |= (ls & 0x0f) << (4 * (ib % 2));
            scales_h |= ((ls >> 4) as u16) << (2 * ib);
        }
        b.scales_h = scales_h.to_le_bytes();
        pack_iq4(&l, &mut b.qs);
    }
}

impl QuantType for BlockIQ4_NL {
    const QUANTIZE: Option<QuantizeFn<Self>> = Some(quantize_iq4_nl);
    const BLOCK_LEN: usize = QK;
    type Act = BlockQ8_0;
    fn dequantize(w: &[Self], out: &mut [f32]) {
        dequantize_row_iq4_nl(w, out);
    }
    fn vec_dot(w: &[Self], x: &[BlockQ8_0]) -> f32 {
        vec_dot_iq4_nl_q8_0(w, x)
    }
}

impl QuantType for BlockIQ4_XS {
    const QUANTIZE: Option<QuantizeFn<Self>> = Some(quantize_iq4_xs);
    const BLOCK_LEN: usize = QK_K;
    type Act = BlockQ8_K;
    fn dequantize(w: &[Self], out: &mut [f32]) {
        dequantize_row_iq4_xs(w, out);
    }
    fn vec_dot(w: &[Self], x: &[BlockQ8_K]) -> f32 {
        vec_dot_iq4_xs_q8_k(w, x)
    }
}
