//! Q4_K: 256 four-bit weights per super-block, 8 groups of 32 with 6-bit scales and mins
//! (feature `quant-k`).
//!
//! Layout (ggml `block_q4_K`, 144 bytes): f16 `d`, f16 `dmin`, `scales: [u8; 12]` (8 scales and
//! 8 mins of 6 bits; ggml `get_scale_min_k4`), `qs: [u8; 128]`.
//! `w = d * sc * q - dmin * m`.
//!
//! Element order: four chunks of 64; in chunk `c`, byte `qs[32c + l]` holds element `64c + l`
//! (low nibble, group `2c`) and element `64c + 32 + l` (high nibble, group `2c + 1`).

use super::k_common::{add_lanes, get_scale_min_k4, lanes8, quantize_scale_min_k, reduce_lanes};
use super::types::QuantizeFn;
use super::{f16_le, Block, BlockQ8_K, GgmlType, QuantType, QK_K};
use core::mem::{align_of, size_of};

/// Q4_K super-block.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_K {
    /// Super-block scale for the scales, f16 little-endian.
    pub d: [u8; 2],
    /// Super-block scale for the mins, f16 little-endian.
    pub dmin: [u8; 2],
    /// 8 scales and 8 mins, 6 bits each, packed.
    pub scales: [u8; 12],
    /// 4-bit quants.
    pub qs: [u8; 128],
}

const _: () = assert!(size_of::<BlockQ4_K>() == 144 && align_of::<BlockQ4_K>() == 1);
const _: () = assert!(size_of::<BlockQ4_K>() == GgmlType::Q4_K.block_bytes());

// SAFETY: #[repr(C)] of u8 arrays only (checked by the asserts above).
unsafe impl Block for BlockQ4_K {
    const TYPE: GgmlType = GgmlType::Q4_K;
}

impl BlockQ4_K {
    /// An all-zero block.
    pub const ZERO: BlockQ4_K = BlockQ4_K {
        d: [0; 2],
        dmin: [0; 2],
        scales: [0; 12],
        qs: [0; 128],
    };
}

/// Dequantise Q4_K blocks into `y` (ggml `dequantize_row_q4_K`).
pub fn dequantize_row_q4_k(x: &[BlockQ4_K], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        let min = f16_le(b.dmin);
        for (c, (q, o)) in
            b.qs.chunks_exact(32)
                .zip(out.chunks_exact_mut(64))
                .enumerate()
        {
            let (sc, m) = get_scale_min_k4(2 * c, &b.scales);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = get_scale_min_k4(2 * c + 1, &b.scales);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            for l in 0..32 {
                o[l] = d1 * (q[l] & 0x0f) as f32 - m1;
                o[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// Quantise `x` into Q4_K blocks, byte-identical to ggml's `quantize_row_q4_K_ref` (what
/// `ggml_quantize_chunk` runs without an importance matrix): per group of 32 a weighted affine
/// fit searching 21 scales (`make_qkx2_quants(nmax 15, rmin -1, rdelta 0.1, nstep 20)`), 6-bit
/// scales and mins, then a re-quantisation against the rounded scales.
///
/// Blocks of `y` past `x.len() / 256` and a tail of `x` shorter than 256 are left alone.
pub fn quantize_row_q4_k(x: &[f32], y: &mut [BlockQ4_K]) {
    for (xb, b) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let xb: &[f32; QK_K] = match xb.try_into() {
            Ok(a) => a,
            Err(_) => continue, // unreachable: chunks_exact
        };
        let mut l = [0u8; QK_K];
        let (d, dmin, scales) = quantize_scale_min_k(xb, 15, -1.0, 20, &mut l);
        b.d = d;
        b.dmin = dmin;
        b.scales = scales;
        for (q, lc) in b.qs.chunks_exact_mut(32).zip(l.chunks_exact(64)) {
            for i in 0..32 {
                q[i] = lc[i] | (lc[i + 32] << 4);
            }
        }
    }
}

/// Dot of Q4_K weights with Q8_K activations (ggml `ggml_vec_dot_q4_K_q8_K`, generic path).
pub fn vec_dot_q4_k_q8_k(x: &[BlockQ4_K], y: &[BlockQ8_K]) -> f32 {
    let mut sums = [0.0f32; 8];
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let mut q = [0i8; QK_K];
        for (qb, qa) in a.qs.chunks_exact(32).zip(q.chunks_exact_mut(64)) {
            for l in 0..32 {
                qa[l] = (qb[l] & 0x0f) as i8;
                qa[l + 32] = (qb[l] >> 4) as i8;
            }
        }
        let mut scales = [0i32; 8];
        let mut mins = [0i32; 8];
        for j in 0..8 {
            let (sc, m) = get_scale_min_k4(j, &a.scales);
            scales[j] = sc as i32;
            mins[j] = m as i32;
        }
        // |bsum| <= 32768, min < 64: 16 terms stay far inside i32.
        let mut sumi: i32 = 0;
        for j in 0..QK_K / 16 {
            sumi += b.bsum(j) as i32 * mins[j / 2];
        }
        let aux32 = lanes8(b, &q, &scales, 32);
        add_lanes(&mut sums, f16_le(a.d) * b.d(), &aux32);
        let dmin = f16_le(a.dmin) * b.d();
        sumf -= dmin * sumi as f32;
    }
    reduce_lanes(sumf, &sums)
}

impl QuantType for BlockQ4_K {
    const QUANTIZE: Option<QuantizeFn<Self>> = Some(quantize_row_q4_k);
    const BLOCK_LEN: usize = QK_K;
    type Act = BlockQ8_K;
    fn dequantize(w: &[Self], out: &mut [f32]) {
        dequantize_row_q4_k(w, out);
    }
    fn vec_dot(w: &[Self], x: &[BlockQ8_K]) -> f32 {
        vec_dot_q4_k_q8_k(w, x)
    }
}
