//! Q8_K: the 256-element activation block every K-quant (and IQ4_XS) dot runs against.
//!
//! Layout (ggml `block_q8_K`, 292 bytes): f32 `d`, 256 x i8 `qs`, 16 x i16 `bsums` where
//! `bsums[j]` is the sum of `qs[16j..16j+16]` (the K-quant dots fold their minimums into these).
//! `x = d * q`. Unlike the 32-wide types the scale is a full f32, and the quantiser maps the value
//! of largest magnitude *with its sign* to -127 (`iscale = -127 / max`), rounding with ggml's
//! `nearest_int` (round half to even) rather than `roundf`.
//!
//! Always compiled: it is small and every 256-wide type needs it.

use super::{nearest_int, ActType, Block, GgmlType};
use core::mem::{align_of, size_of};

/// Elements per K-quant super-block.
pub const QK_K: usize = 256;

/// Q8_K block: `x = d * q`, with 16-element group sums.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_K {
    /// Scale, f32 little-endian.
    pub d: [u8; 4],
    /// 256 signed bytes (reinterpret with `as i8`).
    pub qs: [u8; QK_K],
    /// 16 little-endian i16: `bsums[j] = sum(qs[16j..16j+16])`.
    pub bsums: [u8; 32],
}

const _: () = assert!(size_of::<BlockQ8_K>() == 292 && align_of::<BlockQ8_K>() == 1);
const _: () = assert!(size_of::<BlockQ8_K>() == GgmlType::Q8_K.block_bytes());

// SAFETY: #[repr(C)] of u8 arrays only (checked by the asserts above).
unsafe impl Block for BlockQ8_K {
    const TYPE: GgmlType = GgmlType::Q8_K;
}

impl BlockQ8_K {
    /// An all-zero block.
    pub const ZERO: BlockQ8_K = BlockQ8_K {
        d: [0; 4],
        qs: [0; QK_K],
        bsums: [0; 32],
    };

    /// The scale `d`.
    #[inline(always)]
    pub fn d(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }

    /// Quant `j` (0..256) as a signed value.
    #[inline(always)]
    pub fn q(&self, j: usize) -> i8 {
        self.qs[j] as i8
    }

    /// Group sum `j` (0..16).
    #[inline(always)]
    pub fn bsum(&self, j: usize) -> i16 {
        i16::from_le_bytes([self.bsums[2 * j], self.bsums[2 * j + 1]])
    }
}

/// Quantise to Q8_K (ggml `quantize_row_q8_K_ref`).
///
/// Per block: `max` is the value of largest magnitude (first one on ties) with its sign,
/// `iscale = -127 / max`, `q = min(127, nearest_int(iscale * x))`, `d = 1 / iscale`. An all-zero
/// block stores `d = 0`, zero quants and zero sums (ggml leaves `bsums` unwritten there; zero is
/// the only value consistent with the quants).
pub fn quantize_row_q8_k(x: &[f32], y: &mut [BlockQ8_K]) {
    for (xb, b) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in xb {
            let ax = libm::fabsf(v);
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax == 0.0 {
            *b = BlockQ8_K::ZERO;
            continue;
        }
        let iscale = -127.0f32 / max;
        for (q, &v) in b.qs.iter_mut().zip(xb) {
            // nearest_int's result is within [-128, 128] here; `min(127)` is ggml's clamp and the
            // `as i8` cannot wrap after it for finite input.
            *q = nearest_int(iscale * v).min(127) as i8 as u8;
        }
        for j in 0..QK_K / 16 {
            let mut sum: i32 = 0;
            for &q in &b.qs[16 * j..16 * j + 16] {
                sum += (q as i8) as i32;
            }
            // |sum| <= 16 * 128, so the i16 store is exact (as in ggml's int16_t store).
            b.bsums[2 * j..2 * j + 2].copy_from_slice(&(sum as i16).to_le_bytes());
        }
        b.d = (1.0f32 / iscale).to_le_bytes();
    }
}

/// Dequantise Q8_K blocks into `y` (ggml `dequantize_row_q8_K`: `y = d * q`).
pub fn dequantize_row_q8_k(x: &[BlockQ8_K], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d();
        for (o, &q) in out.iter_mut().zip(b.qs.iter()) {
            *o = d * (q as i8) as f32;
        }
    }
}

impl ActType for BlockQ8_K {
    const BLOCK_LEN: usize = QK_K;
    fn quantize(x: &[f32], out: &mut [Self]) {
        quantize_row_q8_k(x, out);
    }
    fn dequantize(a: &[Self], out: &mut [f32]) {
        dequantize_row_q8_k(a, out);
    }
}
