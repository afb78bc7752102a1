//! Q3_K: 256 three-bit weights per super-block with 16 signed 6-bit scales (feature `quant-k`).
//!
//! Layout (ggml `block_q3_K`, 110 bytes): `hmask: [u8; 32]` (high bits), `qs: [u8; 64]` (low two
//! bits), `scales: [u8; 12]` (16 x 6 bits), f16 `d`. `w = d * (scale - 32) * (q - 4*(1 - h))`:
//! the stored low bits minus 4 where the high bit is *clear*.
//!
//! Element order: low bits as in Q2_K (half `h`, byte `qs[32h + l]`, shift `2s` is element
//! `128h + 32s + l`); the high bit of element `32k + l` (k = 0..8) is bit `k` of `hmask[l]`.
//! Scales: 12 bytes read as three little-endian u32s and shuffled into 16 bytes (ggml's
//! `kmask1/kmask2` dance): low nibbles from bytes 0..8, high two bits from bytes 8..12.
//!
//! The quantiser is ggml's `quantize_row_q3_K_ref` (what `ggml_quantize_chunk` runs without an
//! importance matrix): per 16 values a symmetric 3-bit fit refined by coordinate descent
//! (`make_q3_quants` with `do_rmse`), the 16 scales rounded to 6 bits against the largest, then
//! every value re-quantised against its rounded scale. Float expressions keep the C's order (the
//! tests compare bytes with ggml).

use super::k_common::GROUP_MAX_EPS;
use super::k_common::{add_lanes, lanes8, reduce_lanes};
use super::types::QuantizeFn;
use super::{f16_le, nearest_int, to_f16_le, Block, BlockQ8_K, GgmlType, QuantType, QK_K};
use core::mem::{align_of, size_of};

/// Q3_K super-block.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ3_K {
    /// High bit of each quant: bit `k` of byte `l` belongs to element `32k + l`.
    pub hmask: [u8; 32],
    /// Low two bits, four per byte.
    pub qs: [u8; 64],
    /// 16 scales of 6 bits, packed.
    pub scales: [u8; 12],
    /// Super-block scale, f16 little-endian.
    pub d: [u8; 2],
}

const _: () = assert!(size_of::<BlockQ3_K>() == 110 && align_of::<BlockQ3_K>() == 1);
const _: () = assert!(size_of::<BlockQ3_K>() == GgmlType::Q3_K.block_bytes());

// SAFETY: #[repr(C)] of u8 arrays only (checked by the asserts above).
unsafe impl Block for BlockQ3_K {
    const TYPE: GgmlType = GgmlType::Q3_K;
}

impl BlockQ3_K {
    /// An all-zero block.
    pub const ZERO: BlockQ3_K = BlockQ3_K {
        hmask: [0; 32],
        qs: [0; 64],
        scales: [0; 12],
        d: [0; 2],
    };
}

/// The 16 unpacked 6-bit scales (0..64, before the `- 32`), exactly as ggml's u32 shuffle.
fn unpack_scales(s: &[u8; 12]) -> [u8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let a0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let a1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let tmp = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let aux = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(aux) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// The signed 3-bit quants (-4..4) of one super-block, in element order.
fn unpack_quants(b: &BlockQ3_K) -> [i8; QK_K] {
    let mut a = [0i8; QK_K];
    let mut m: u8 = 1;
    let mut o = 0;
    for q3 in b.qs.chunks_exact(32) {
        for shift in [0u32, 2, 4, 6] {
            for l in 0..32 {
                let lo = ((q3[l] >> shift) & 3) as i8;
                a[o + l] = lo - if b.hmask[l] & m != 0 { 0 } else { 4 };
            }
            o += 32;
            m = m.wrapping_shl(1);
        }
    }
    a
}

/// Dequantise Q3_K blocks into `y` (ggml `dequantize_row_q3_K`).
pub fn dequantize_row_q3_k(x: &[BlockQ3_K], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d_all = f16_le(b.d);
        let scales = unpack_scales(&b.scales);
        let q = unpack_quants(b);
        for ((o16, q16), &sc) in out
            .chunks_exact_mut(16)
            .zip(q.chunks_exact(16))
            .zip(&scales)
        {
            let dl = d_all * (sc as i32 - 32) as f32;
            for (o, &v) in o16.iter_mut().zip(q16) {
                *o = dl * v as f32;
            }
        }
    }
}

/// Dot of Q3_K weights with Q8_K activations (ggml `ggml_vec_dot_q3_K_q8_K`, generic path).
pub fn vec_dot_q3_k_q8_k(x: &[BlockQ3_K], y: &[BlockQ8_K]) -> f32 {
    let mut sums = [0.0f32; 8];
    for (a, b) in x.iter().zip(y) {
        let q = unpack_quants(a);
        let mut scales = [0i32; 16];
        for (s, &u) in scales.iter_mut().zip(&unpack_scales(&a.scales)) {
            *s = u as i32 - 32;
        }
        let aux32 = lanes8(b, &q, &scales, 16);
        add_lanes(&mut sums, f16_le(a.d) * b.d(), &aux32);
    }
    reduce_lanes(0.0, &sums)
}

/// ggml `make_q3_quants(16, 4, x, L, true)`: a symmetric fit `x ~ scale * l` with `l` in `-4..4`
/// weighted by `x^2`, from `-4 / max`, then up to 5 rounds of moving single quants while that
/// raises `sumlx^2 / suml2`. Writes `l + 4` into `l_out` (0 for an all-tiny group) and returns
/// the scale.
fn make_q3_quants(x: &[f32], l_out: &mut [i8]) -> f32 {
    const NMAX: i32 = 4;
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        let ax = libm::fabsf(v);
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let iscale = -(NMAX as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (o, &v) in l_out.iter_mut().zip(x) {
        let l = nearest_int(iscale * v).clamp(-NMAX, NMAX - 1);
        *o = l as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (o, &v) in l_out.iter_mut().zip(x) {
            let w = v * v;
            let li = *o as f32;
            let mut slx = sumlx - w * v * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(v * sl2 / slx).clamp(-NMAX, NMAX - 1);
                if new_l != *o as i32 {
                    let nl = new_l as f32;
                    slx += w * v * nl;
                    sl2 += w * nl * nl;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *o = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for o in l_out.iter_mut() {
        *o += NMAX as i8;
    }
    sumlx / suml2
}

/// Quantise to Q3_K (ggml `quantize_row_q3_K_ref`; module docs).
pub fn quantize_row_q3_k(x: &[f32], y: &mut [BlockQ3_K]) {
    for (xs, b) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut l = [0i8; QK_K];
        let mut scales = [0.0f32; QK_K / 16];
        let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
        for (j, s) in scales.iter_mut().enumerate() {
            *s = make_q3_quants(&xs[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
            if libm::fabsf(*s) > amax {
                amax = libm::fabsf(*s);
                max_scale = *s;
            }
        }
        b.scales = [0; 12];
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for (j, &s) in scales.iter().enumerate() {
                let mut q = (nearest_int(iscale * s).clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    b.scales[j] = q & 0x0f;
                } else {
                    b.scales[j - 8] |= (q & 0x0f) << 4;
                }
                q >>= 4;
                b.scales[j % 4 + 8] |= q << (2 * (j / 4));
            }
            b.d = to_f16_le(1.0 / iscale);
        } else {
            b.d = to_f16_le(0.0);
        }
        let d_all = f16_le(b.d);
        for j in 0..QK_K / 16 {
            let lo = if j < 8 {
                b.scales[j] & 0x0f
            } else {
                b.scales[j - 8] >> 4
            };
            let sc = (lo | (((b.scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i32 - 32;
            let d = d_all * sc as f32;
            if d == 0.0 {
                continue; // the C keeps make_q3_quants' quants for this group
            }
            for ii in 0..16 {
                let q = nearest_int(xs[16 * j + ii] / d).clamp(-4, 3);
                l[16 * j + ii] = (q + 4) as i8;
            }
        }
        // High bit of the first 32 quants into bit 0 of hmask[0..32], the next 32 bit 1, ...
        b.hmask = [0; 32];
        for (j, lj) in l.iter_mut().enumerate() {
            if *lj > 3 {
                b.hmask[j % 32] |= 1 << (j / 32);
                *lj -= 4;
            }
        }
        for (h, q3) in b.qs.chunks_exact_mut(32).enumerate() {
            let base = 128 * h;
            for (i, q) in q3.iter_mut().enumerate() {
                *q = (l[base + i]
                    | (l[base + i + 32] << 2)
                    | (l[base + i + 64] << 4)
                    | (l[base + i + 96] << 6)) as u8;
            }
        }
    }
}

impl QuantType for BlockQ3_K {
    const QUANTIZE: Option<QuantizeFn<Self>> = Some(quantize_row_q3_k);
    const BLOCK_LEN: usize = QK_K;
    type Act = BlockQ8_K;
    fn dequantize(w: &[Self], out: &mut [f32]) {
        dequantize_row_q3_k(w, out);
    }
    fn vec_dot(w: &[Self], x: &[BlockQ8_K]) -> f32 {
        vec_dot_q3_k_q8_k(w, x)
    }
}
