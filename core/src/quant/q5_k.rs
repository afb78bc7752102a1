//! Q5_K: 256 five-bit weights per super-block, 8 groups of 32 with 6-bit scales and mins
//! (feature `quant-k`).
//!
//! Layout (ggml `block_q5_K`, 176 bytes): f16 `d`, f16 `dmin`, `scales: [u8; 12]` (as Q4_K),
//! `qh: [u8; 32]` (fifth bits), `qs: [u8; 128]` (low nibbles, ordered as Q4_K).
//! `w = d * sc * q - dmin * m`; the fifth bit of element `32k + l` is bit `k` of `qh[l]`.

use super::k_common::{add_lanes, get_scale_min_k4, lanes8, quantize_scale_min_k, reduce_lanes};
use super::types::QuantizeFn;
use super::{f16_le, Block, BlockQ8_K, GgmlType, QuantType, QK_K};
use core::mem::{align_of, size_of};

/// Q5_K super-block.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5_K {
    /// Super-block scale for the scales, f16 little-endian.
    pub d: [u8; 2],
    /// Super-block scale for the mins, f16 little-endian.
    pub dmin: [u8; 2],
    /// 8 scales and 8 mins, 6 bits each, packed as in Q4_K.
    pub scales: [u8; 12],
    /// Fifth bits: bit `k` of byte `l` belongs to element `32k + l`.
    pub qh: [u8; 32],
    /// Low four bits.
    pub qs: [u8; 128],
}

const _: () = assert!(size_of::<BlockQ5_K>() == 176 && align_of::<BlockQ5_K>() == 1);
const _: () = assert!(size_of::<BlockQ5_K>() == GgmlType::Q5_K.block_bytes());

// SAFETY: #[repr(C)] of u8 arrays only (checked by the asserts above).
unsafe impl Block for BlockQ5_K {
    const TYPE: GgmlType = GgmlType::Q5_K;
}

impl BlockQ5_K {
    /// An all-zero block.
    pub const ZERO: BlockQ5_K = BlockQ5_K {
        d: [0; 2],
        dmin: [0; 2],
        scales: [0; 12],
        qh: [0; 32],
        qs: [0; 128],
    };
}

/// The unsigned 5-bit quants (0..32) of one super-block, in element order.
fn unpack_quants(b: &BlockQ5_K) -> [i8; QK_K] {
    let mut a = [0i8; QK_K];
    let mut m: u8 = 1;
    for (qb, qa) in b.qs.chunks_exact(32).zip(a.chunks_exact_mut(64)) {
        for l in 0..32 {
            qa[l] = (qb[l] & 0x0f) as i8 + if b.qh[l] & m != 0 { 16 } else { 0 };
            qa[l + 32] = (qb[l] >> 4) as i8 + if b.qh[l] & (m << 1) != 0 { 16 } else { 0 };
        }
        m <<= 2;
    }
    a
}

/// Dequantise Q5_K blocks into `y` (ggml `dequantize_row_q5_K`).
pub fn dequantize_row_q5_k(x: &[BlockQ5_K], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        let min = f16_le(b.dmin);
        let q = unpack_quants(b);
        for (c, (qc, o)) in q.chunks_exact(64).zip(out.chunks_exact_mut(64)).enumerate() {
            let (sc, m) = get_scale_min_k4(2 * c, &b.scales);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = get_scale_min_k4(2 * c + 1, &b.scales);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            for l in 0..32 {
                o[l] = d1 * qc[l] as f32 - m1;
                o[l + 32] = d2 * qc[l + 32] as f32 - m2;
            }
        }
    }
}

/// Quantise `x` into Q5_K blocks, byte-identical to ggml's `quantize_row_q5_K_ref` (what
/// `ggml_quantize_chunk` runs without an importance matrix): as Q4_K with `nmax 31`,
/// `rmin -0.5`, `nstep 15`; the fifth bits go to `qh`.
///
/// Blocks of `y` past `x.len() / 256` and a tail of `x` shorter than 256 are left alone.
pub fn quantize_row_q5_k(x: &[f32], y: &mut [BlockQ5_K]) {
    for (xb, b) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let xb: &[f32; QK_K] = match xb.try_into() {
            Ok(a) => a,
            Err(_) => continue, // unreachable: chunks_exact
        };
        let mut l = [0u8; QK_K];
        let (d, dmin, scales) = quantize_scale_min_k(xb, 31, -0.5, 15, &mut l);
        b.d = d;
        b.dmin = dmin;
        b.scales = scales;
        b.qh = [0; 32];
        let (mut m1, mut m2) = (1u8, 2u8);
        for (q, lc) in b.qs.chunks_exact_mut(32).zip(l.chunks_exact(64)) {
            for j in 0..32 {
                let (l1, l2) = (lc[j], lc[j + 32]);
                if l1 > 15 {
                    b.qh[j] |= m1;
                }
                if l2 > 15 {
                    b.qh[j] |= m2;
                }
                q[j] = (l1 & 0x0f) | ((l2 & 0x0f) << 4);
            }
            m1 <<= 2;
            m2 <<= 2;
        }
    }
}

/// Dot of Q5_K weights with Q8_K activations (ggml `ggml_vec_dot_q5_K_q8_K`, generic path).
pub fn vec_dot_q5_k_q8_k(x: &[BlockQ5_K], y: &[BlockQ8_K]) -> f32 {
    let mut sums = [0.0f32; 8];
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let q = unpack_quants(a);
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

impl QuantType for BlockQ5_K {
    const QUANTIZE: Option<QuantizeFn<Self>> = Some(quantize_row_q5_k);
    const BLOCK_LEN: usize = QK_K;
    type Act = BlockQ8_K;
    fn dequantize(w: &[Self], out: &mut [f32]) {
        dequantize_row_q5_k(w, out);
    }
    fn vec_dot(w: &[Self], x: &[BlockQ8_K]) -> f32 {
        vec_dot_q5_k_q8_k(w, x)
    }
}
