//! Q5_0 and Q5_1: 32 five-bit weights per block (feature `quant-q5`).
//!
//! Layouts (ggml `ggml-common.h`):
//! - Q5_0 (22 bytes): f16 `d`, `qh: [u8; 4]`, `qs: [u8; 16]`; `w = (q - 16) * d`.
//! - Q5_1 (24 bytes): f16 `d`, f16 `m`, `qh`, `qs`; `w = q * d + m`.
//!
//! The low four bits of element `j` are the low nibble of `qs[j]` (j < 16) or the high nibble of
//! `qs[j - 16]`, as in Q4_0. The fifth bit of element `j` is bit `j` of `qh` read as a
//! little-endian u32. Q5_0 dots against Q8_0 activations, Q5_1 against Q8_1 (whose `s` carries
//! the activation sum the minimum multiplies).

use super::types::QuantizeFn;
use super::{f16_le, to_f16_le, Block, BlockQ8_0, BlockQ8_1, GgmlType, QuantType, QK};
use core::mem::{align_of, size_of};

/// Q5_0 block: `w = (q - 16) * d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5_0 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// Fifth bits: bit `j` of this little-endian u32 belongs to element `j`.
    pub qh: [u8; 4],
    /// Low four bits: low nibble of byte j is element j, high nibble element j+16.
    pub qs: [u8; 16],
}

/// Q5_1 block: `w = q * d + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5_1 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// Minimum, f16 little-endian.
    pub m: [u8; 2],
    /// Fifth bits, as in [`BlockQ5_0`].
    pub qh: [u8; 4],
    /// Low four bits, as in [`BlockQ5_0`].
    pub qs: [u8; 16],
}

const _: () = assert!(size_of::<BlockQ5_0>() == 22 && align_of::<BlockQ5_0>() == 1);
const _: () = assert!(size_of::<BlockQ5_1>() == 24 && align_of::<BlockQ5_1>() == 1);
const _: () = assert!(size_of::<BlockQ5_0>() == GgmlType::Q5_0.block_bytes());
const _: () = assert!(size_of::<BlockQ5_1>() == GgmlType::Q5_1.block_bytes());

// SAFETY: #[repr(C)] of u8 arrays only (checked by the asserts above).
unsafe impl Block for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
}
// SAFETY: as above.
unsafe impl Block for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
}

impl BlockQ5_0 {
    /// An all-zero block.
    pub const ZERO: BlockQ5_0 = BlockQ5_0 {
        d: [0; 2],
        qh: [0; 4],
        qs: [0; 16],
    };
}
impl BlockQ5_1 {
    /// An all-zero block.
    pub const ZERO: BlockQ5_1 = BlockQ5_1 {
        d: [0; 2],
        m: [0; 2],
        qh: [0; 4],
        qs: [0; 16],
    };
}

/// The unsigned 5-bit quants (0..32) of elements `j` and `j + 16`, as ggml unpacks them.
#[inline(always)]
fn q5_pair(qh: u32, qs: u8, j: usize) -> (i32, i32) {
    let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
    let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
    (((qs & 0x0f) | xh_0) as i32, ((qs >> 4) | xh_1) as i32)
}

/// Dequantise Q5_0 blocks into `y` (ggml `dequantize_row_q5_0`).
pub fn dequantize_row_q5_0(x: &[BlockQ5_0], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_le(b.d);
        let qh = u32::from_le_bytes(b.qh);
        for j in 0..QK / 2 {
            let (x0, x1) = q5_pair(qh, b.qs[j], j);
            out[j] = (x0 - 16) as f32 * d;
            out[j + QK / 2] = (x1 - 16) as f32 * d;
        }
    }
}

/// Dequantise Q5_1 blocks into `y` (ggml `dequantize_row_q5_1`).
pub fn dequantize_row_q5_1(x: &[BlockQ5_1], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_le(b.d);
        let m = f16_le(b.m);
        let qh = u32::from_le_bytes(b.qh);
        for j in 0..QK / 2 {
            let (x0, x1) = q5_pair(qh, b.qs[j], j);
            out[j] = x0 as f32 * d + m;
            out[j + QK / 2] = x1 as f32 * d + m;
        }
    }
}

/// Pack 32 unsigned 5-bit quants (`L[j]` for element `j`) into `qs` and `qh`.
#[inline(always)]
fn pack_q5(l: &[u8; QK], qs: &mut [u8; 16], qh_out: &mut [u8; 4]) {
    let mut qh: u32 = 0;
    for j in 0..QK / 2 {
        let (xi0, xi1) = (l[j], l[j + QK / 2]);
        qs[j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
        qh |= (((xi0 & 0x10) as u32) >> 4) << j;
        qh |= (((xi1 & 0x10) as u32) >> 4) << (j + QK / 2);
    }
    *qh_out = qh.to_le_bytes();
}

/// Quantise to Q5_0 (ggml `quantize_row_q5_0_ref`): `max` is the value of largest magnitude
/// with its sign, `d = max / -16`, `q = min(31, trunc(x / d + 16.5))`.
pub fn quantize_row_q5_0(x: &[f32], y: &mut [BlockQ5_0]) {
    for (xb, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in xb {
            if amax < libm::fabsf(v) {
                amax = libm::fabsf(v);
                max = v;
            }
        }
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = to_f16_le(d);
        let mut l = [0u8; QK];
        for (q, &v) in l.iter_mut().zip(xb) {
            // C: MIN(31, (int8_t)(x*id + 16.5f)); the argument is in [0.5, 32.5] for finite x,
            // where `as i8` truncates toward zero exactly as the C conversion does.
            *q = ((v * id + 16.5) as i8 as u8).min(31);
        }
        pack_q5(&l, &mut b.qs, &mut b.qh);
    }
}

/// Quantise to Q5_1 (ggml `quantize_row_q5_1_ref`): `d = (max - min) / 31`, `m = min`,
/// `q = trunc((x - min) / d + 0.5)`.
pub fn quantize_row_q5_1(x: &[f32], y: &mut [BlockQ5_1]) {
    for (xb, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let mut min = f32::MAX;
        let mut max = -f32::MAX;
        for &v in xb {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = to_f16_le(d);
        b.m = to_f16_le(min);
        let mut l = [0u8; QK];
        for (q, &v) in l.iter_mut().zip(xb) {
            // C: (uint8_t)((x - min)*id + 0.5f), in [0.5, 31.5] for finite x; ggml does not
            // clamp, and `as u8` (saturating) agrees with the C conversion on that range.
            *q = ((v - min) * id + 0.5) as u8;
        }
        pack_q5(&l, &mut b.qs, &mut b.qh);
    }
}

/// Dot of Q5_0 weights with Q8_0 activations (ggml `ggml_vec_dot_q5_0_q8_0`, generic path).
pub fn vec_dot_q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let qh = u32::from_le_bytes(a.qh);
        let mut sumi0: i32 = 0;
        let mut sumi1: i32 = 0;
        for j in 0..QK / 2 {
            let (x0, x1) = q5_pair(qh, a.qs[j], j);
            sumi0 += (x0 - 16) * (b.qs[j] as i8) as i32;
            sumi1 += (x1 - 16) * (b.qs[j + QK / 2] as i8) as i32;
        }
        let sumi = sumi0 + sumi1;
        sumf += (f16_le(a.d) * f16_le(b.d)) * sumi as f32;
    }
    sumf
}

/// Dot of Q5_1 weights with Q8_1 activations (ggml `ggml_vec_dot_q5_1_q8_1`, generic path):
/// `d_x d_y sum(q_x q_y) + m_x s_y` per block.
pub fn vec_dot_q5_1_q8_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let qh = u32::from_le_bytes(a.qh);
        let mut sumi0: i32 = 0;
        let mut sumi1: i32 = 0;
        for j in 0..QK / 2 {
            let (x0, x1) = q5_pair(qh, a.qs[j], j);
            sumi0 += x0 * (b.qs[j] as i8) as i32;
            sumi1 += x1 * (b.qs[j + QK / 2] as i8) as i32;
        }
        let sumi = sumi0 + sumi1;
        sumf += (f16_le(a.d) * f16_le(b.d)) * sumi as f32 + f16_le(a.m) * f16_le(b.s);
    }
    sumf
}

impl QuantType for BlockQ5_0 {
    const QUANTIZE: Option<QuantizeFn<Self>> = Some(quantize_row_q5_0);
    const BLOCK_LEN: usize = QK;
    type Act = BlockQ8_0;
    fn dequantize(w: &[Self], out: &mut [f32]) {
        dequantize_row_q5_0(w, out);
    }
    fn vec_dot(w: &[Self], x: &[BlockQ8_0]) -> f32 {
        vec_dot_q5_0_q8_0(w, x)
    }
}

impl QuantType for BlockQ5_1 {
    const QUANTIZE: Option<QuantizeFn<Self>> = Some(quantize_row_q5_1);
    const BLOCK_LEN: usize = QK;
    type Act = BlockQ8_1;
    fn dequantize(w: &[Self], out: &mut [f32]) {
        dequantize_row_q5_1(w, out);
    }
    fn vec_dot(w: &[Self], x: &[BlockQ8_1]) -> f32 {
        vec_dot_q5_1_q8_1(w, x)
    }
}
