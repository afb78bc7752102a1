//! Q2_K: 256 two-bit weights per super-block with 16 4-bit scales and mins (feature `quant-k`).
//!
//! Layout (ggml `block_q2_K`, 84 bytes): `scales: [u8; 16]` (low nibble scale, high nibble min of
//! each 16-element group), `qs: [u8; 64]`, f16 `d`, f16 `dmin`.
//! `w = d * (sc & 15) * q - dmin * (sc >> 4)`.
//!
//! Element order: the block is two halves of 128; in half `h`, byte `qs[32h + l]` holds four
//! quants at bit shifts 0, 2, 4, 6, which are elements `128h + 32*s + l` for shift index `s`.
//! Group `g` (16 elements) uses `scales[g]`.

use super::{f16_le, Block, BlockQ8_K, GgmlType, QuantType, QK_K};
use core::mem::{align_of, size_of};

/// Q2_K super-block.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ2_K {
    /// Per-16 scale (low nibble) and min (high nibble).
    pub scales: [u8; 16],
    /// 2-bit quants, four per byte.
    pub qs: [u8; 64],
    /// Super-block scale for the scales, f16 little-endian.
    pub d: [u8; 2],
    /// Super-block scale for the mins, f16 little-endian.
    pub dmin: [u8; 2],
}

const _: () = assert!(size_of::<BlockQ2_K>() == 84 && align_of::<BlockQ2_K>() == 1);
const _: () = assert!(size_of::<BlockQ2_K>() == GgmlType::Q2_K.block_bytes());

// SAFETY: #[repr(C)] of u8 arrays only (checked by the asserts above).
unsafe impl Block for BlockQ2_K {
    const TYPE: GgmlType = GgmlType::Q2_K;
}

impl BlockQ2_K {
    /// An all-zero block.
    pub const ZERO: BlockQ2_K = BlockQ2_K {
        scales: [0; 16],
        qs: [0; 64],
        d: [0; 2],
        dmin: [0; 2],
    };
}

/// Dequantise Q2_K blocks into `y` (ggml `dequantize_row_q2_K`).
pub fn dequantize_row_q2_k(x: &[BlockQ2_K], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        let min = f16_le(b.dmin);
        let mut is = 0;
        let mut o = 0;
        for q in b.qs.chunks_exact(32) {
            for shift in [0u32, 2, 4, 6] {
                for half in [&q[..16], &q[16..]] {
                    let sc = b.scales[is];
                    is += 1;
                    let dl = d * (sc & 0x0f) as f32;
                    let ml = min * (sc >> 4) as f32;
                    for &qb in half {
                        out[o] = dl * ((qb >> shift) & 3) as f32 - ml;
                        o += 1;
                    }
                }
            }
        }
    }
}

/// Dot of Q2_K weights with Q8_K activations (ggml `ggml_vec_dot_q2_K_q8_K`, generic path):
/// per block `d_y d * sum(sc * q_w q_a) - d_y dmin * sum(min * bsum)`.
pub fn vec_dot_q2_k_q8_k(x: &[BlockQ2_K], y: &[BlockQ8_K]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        // |bsum| <= 32768 and min <= 15: 16 terms stay far inside i32.
        let mut summs: i32 = 0;
        for (j, &sc) in a.scales.iter().enumerate() {
            summs += b.bsum(j) as i32 * (sc >> 4) as i32;
        }
        let dall = b.d() * f16_le(a.d);
        let dmin = b.d() * f16_le(a.dmin);
        let mut isum: i32 = 0;
        let mut is = 0;
        let mut q8 = 0;
        for q2 in a.qs.chunks_exact(32) {
            for shift in [0u32, 2, 4, 6] {
                for half in [0usize, 16] {
                    let d = (a.scales[is] & 0x0f) as i32;
                    is += 1;
                    let mut isuml: i32 = 0;
                    for (l, &qb) in q2.iter().enumerate().skip(half).take(16) {
                        isuml += b.q(q8 + l) as i32 * ((qb >> shift) & 3) as i32;
                    }
                    isum += d * isuml;
                }
                q8 += 32;
            }
        }
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}

impl QuantType for BlockQ2_K {
    const BLOCK_LEN: usize = QK_K;
    type Act = BlockQ8_K;
    fn dequantize(w: &[Self], out: &mut [f32]) {
        dequantize_row_q2_k(w, out);
    }
    fn vec_dot(w: &[Self], x: &[BlockQ8_K]) -> f32 {
        vec_dot_q2_k_q8_k(w, x)
    }
}
