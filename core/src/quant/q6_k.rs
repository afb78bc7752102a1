//! Q6_K: 256 six-bit weights per super-block with 16 signed 8-bit scales (feature `quant-k`).
//!
//! Layout (ggml `block_q6_K`, 210 bytes): `ql: [u8; 128]` (low nibbles), `qh: [u8; 64]` (high
//! two bits), `scales: [i8; 16]`, f16 `d`. `w = d * scale * (q - 32)`.
//!
//! Element order: two halves of 128; in half `h` with `ql' = ql[64h..]`, `qh' = qh[32h..]`, for
//! l in 0..32: element `128h + l` is `ql'[l] & 15 | (qh'[l] & 3) << 4`, `+32` is
//! `ql'[l+32] & 15 | (qh'[l] >> 2 & 3) << 4`, `+64` is `ql'[l] >> 4 | (qh'[l] >> 4 & 3) << 4`,
//! `+96` is `ql'[l+32] >> 4 | (qh'[l] >> 6) << 4`. Group `g` (16 elements) uses `scales[g]`.

use super::k_common::{add_lanes, lanes8, make_qx_quants16, reduce_lanes, GROUP_MAX_EPS};
use super::types::QuantizeFn;
use super::{f16_le, nearest_int, to_f16_le, Block, BlockQ8_K, GgmlType, QuantType, QK_K};
use core::mem::{align_of, size_of};

/// Q6_K super-block.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ6_K {
    /// Low four bits.
    pub ql: [u8; 128],
    /// High two bits, four per byte.
    pub qh: [u8; 64],
    /// 16 signed scales (reinterpret with `as i8`).
    pub scales: [u8; 16],
    /// Super-block scale, f16 little-endian.
    pub d: [u8; 2],
}

const _: () = assert!(size_of::<BlockQ6_K>() == 210 && align_of::<BlockQ6_K>() == 1);
const _: () = assert!(size_of::<BlockQ6_K>() == GgmlType::Q6_K.block_bytes());

// SAFETY: #[repr(C)] of u8 arrays only (checked by the asserts above).
unsafe impl Block for BlockQ6_K {
    const TYPE: GgmlType = GgmlType::Q6_K;
}

impl BlockQ6_K {
    /// An all-zero block.
    pub const ZERO: BlockQ6_K = BlockQ6_K {
        ql: [0; 128],
        qh: [0; 64],
        scales: [0; 16],
        d: [0; 2],
    };
}

/// The signed 6-bit quants (-32..32) of one super-block, in element order.
fn unpack_quants(b: &BlockQ6_K) -> [i8; QK_K] {
    let mut a = [0i8; QK_K];
    for ((ql, qh), o) in
        b.ql.chunks_exact(64)
            .zip(b.qh.chunks_exact(32))
            .zip(a.chunks_exact_mut(128))
    {
        for l in 0..32 {
            o[l] = ((ql[l] & 0x0f) | (qh[l] & 3) << 4) as i8 - 32;
            o[l + 32] = ((ql[l + 32] & 0x0f) | ((qh[l] >> 2) & 3) << 4) as i8 - 32;
            o[l + 64] = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) as i8 - 32;
            o[l + 96] = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) as i8 - 32;
        }
    }
    a
}

/// Dequantise Q6_K blocks into `y` (ggml `dequantize_row_q6_K`: `y = d * scale * q`, the two
/// products in that order).
pub fn dequantize_row_q6_k(x: &[BlockQ6_K], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        let q = unpack_quants(b);
        for ((o16, q16), &sc) in out
            .chunks_exact_mut(16)
            .zip(q.chunks_exact(16))
            .zip(&b.scales)
        {
            for (o, &v) in o16.iter_mut().zip(q16) {
                *o = d * (sc as i8) as f32 * v as f32;
            }
        }
    }
}

/// Quantise `x` into Q6_K blocks, byte-identical to ggml's `quantize_row_q6_K_ref` (what
/// `ggml_quantize_chunk` runs without an importance matrix): per group of 16 a symmetric fit
/// weighted by `x^2` over 19 candidate scales (`make_qx_quants(nmax 32, rmse_type 1)`), the 16
/// scales quantised to i8 against the largest in magnitude, then a re-quantisation against them.
///
/// Blocks of `y` past `x.len() / 256` and a tail of `x` shorter than 256 are left alone.
pub fn quantize_row_q6_k(x: &[f32], y: &mut [BlockQ6_K]) {
    for (xb, b) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut l = [0i8; QK_K];
        let mut scales = [0.0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
        for ((xg, lg), s) in xb
            .chunks_exact(16)
            .zip(l.chunks_exact_mut(16))
            .zip(scales.iter_mut())
        {
            let (Ok(xg), Ok(lg)) = (<&[f32; 16]>::try_from(xg), <&mut [i8; 16]>::try_from(lg))
            else {
                continue; // unreachable: chunks_exact
            };
            *s = make_qx_quants16(32, xg, lg);
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = *s;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            *b = BlockQ6_K::ZERO;
            continue;
        }
        let iscale = -128.0 / max_scale;
        b.d = to_f16_le(1.0 / iscale);
        for (o, &s) in b.scales.iter_mut().zip(&scales) {
            *o = nearest_int(iscale * s).min(127) as i8 as u8;
        }
        let d = f16_le(b.d);
        for ((lg, xg), &sc) in l
            .chunks_exact_mut(16)
            .zip(xb.chunks_exact(16))
            .zip(&b.scales)
        {
            let dj = d * (sc as i8) as f32;
            if dj == 0.0 {
                continue;
            }
            for (o, &v) in lg.iter_mut().zip(xg) {
                *o = (nearest_int(v / dj).clamp(-32, 31) + 32) as i8;
            }
        }
        for ((ql, qh), lh) in
            b.ql.chunks_exact_mut(64)
                .zip(b.qh.chunks_exact_mut(32))
                .zip(l.chunks_exact(128))
        {
            for i in 0..32 {
                let q = |k: usize| lh[i + 32 * k] as u8;
                ql[i] = (q(0) & 0x0f) | ((q(2) & 0x0f) << 4);
                ql[i + 32] = (q(1) & 0x0f) | ((q(3) & 0x0f) << 4);
                qh[i] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
            }
        }
    }
}

/// Dot of Q6_K weights with Q8_K activations (ggml `ggml_vec_dot_q6_K_q8_K`, generic path).
pub fn vec_dot_q6_k_q8_k(x: &[BlockQ6_K], y: &[BlockQ8_K]) -> f32 {
    let mut sums = [0.0f32; 8];
    for (a, b) in x.iter().zip(y) {
        let q = unpack_quants(a);
        let mut scales = [0i32; 16];
        for (s, &u) in scales.iter_mut().zip(&a.scales) {
            *s = (u as i8) as i32;
        }
        let aux32 = lanes8(b, &q, &scales, 16);
        add_lanes(&mut sums, f16_le(a.d) * b.d(), &aux32);
    }
    reduce_lanes(0.0, &sums)
}

impl QuantType for BlockQ6_K {
    const QUANTIZE: Option<QuantizeFn<Self>> = Some(quantize_row_q6_k);
    const BLOCK_LEN: usize = QK_K;
    type Act = BlockQ8_K;
    fn dequantize(w: &[Self], out: &mut [f32]) {
        dequantize_row_q6_k(w, out);
    }
    fn vec_dot(w: &[Self], x: &[BlockQ8_K]) -> f32 {
        vec_dot_q6_k_q8_k(w, x)
    }
}
