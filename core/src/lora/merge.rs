//! Merging adapters into base weights: `W' = W + sum_i s_i B_i A_i`, one row at a time, into a
//! caller buffer of any writable type (F32, F16, Q8_0, or the base's own Q4_0/Q4_1).
//!
//! Merging into a 4-bit base loses small updates (the update is often smaller than the
//! quantisation step). [`MergeStats`] measures it per tensor: `rel_err` is the rounding error of
//! the merged weights relative to the size of the update; above 0.5 most of the update is lost
//! and callers should warn (or merge to Q8_0/F16, or run unmerged).
//!
//! Unmerging never subtracts: the base bytes are never written, so restoring the original
//! [`MatRef`] restores the base exactly.

use super::LoraPair;
use crate::error::{Error, ErrorKind, Result};
use crate::kernels::{reference as r, MatRef};
use crate::quant::{cast_blocks_mut, BlockQ4_0, BlockQ4_1, BlockQ8_0, GgmlType, QK};

/// Error measurements of one merged tensor.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MergeStats {
    /// Frobenius norm of the update `sum s B A`.
    pub delta_norm: f64,
    /// Frobenius norm of (stored merged weights - exact merged weights).
    pub err_norm: f64,
    /// `err_norm / delta_norm` (0 when the update is 0).
    pub rel_err: f64,
}

impl MergeStats {
    /// True if the rounding error is at least half the size of the update.
    pub fn update_lost(&self) -> bool {
        self.delta_norm > 0.0 && self.rel_err >= 0.5
    }
}

/// Bytes needed for a merged `w` stored as `ty`.
pub fn merged_len(w: &MatRef<'_>, ty: GgmlType) -> Option<usize> {
    Some(ty.row_bytes(w.cols() as u64)? as usize * w.rows())
}

/// Merge `pairs` (each with its full scale `user * alpha / r`) into `w`, writing `ty` rows to
/// `out`. `row` needs `2 * cols` floats of scratch.
///
/// # Errors
/// [`ErrorKind::UnsupportedTensorType`] for an output type that cannot be written;
/// [`ErrorKind::BadDims`] if `cols` is not a whole number of blocks of `ty`;
/// [`ErrorKind::ShapeMismatch`] if a pair does not fit `w`;
/// [`ErrorKind::BufferTooSmall`] for short buffers.
pub fn merge_into(
    w: &MatRef<'_>,
    pairs: &[(LoraPair<'_>, f32)],
    ty: GgmlType,
    out: &mut [u8],
    row: &mut [f32],
) -> Result<MergeStats> {
    if !matches!(
        ty,
        GgmlType::F32 | GgmlType::F16 | GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1
    ) {
        return Err(Error::new(
            ErrorKind::UnsupportedTensorType,
            "merge output type (F32, F16, Q8_0, Q4_0, Q4_1)",
        ));
    }
    let (rows, cols) = (w.rows(), w.cols());
    let rb = ty
        .row_bytes(cols as u64)
        .ok_or_else(|| Error::new(ErrorKind::BadDims, "row length vs output block size"))?
        as usize;
    let need = rb
        .checked_mul(rows)
        .ok_or_else(|| Error::new(ErrorKind::BadDims, "merged size"))?;
    let out = out.get_mut(..need).ok_or_else(|| {
        Error::new(ErrorKind::BufferTooSmall, "merge output").detail(0, need as u64)
    })?;
    if row.len() < 2 * cols {
        return Err(Error::new(ErrorKind::BufferTooSmall, "merge row scratch")
            .detail(row.len() as u64, 2 * cols as u64));
    }
    for (p, _) in pairs {
        if p.a.cols() != cols || p.b.rows() != rows {
            return Err(Error::new(
                ErrorKind::ShapeMismatch,
                "LoRA pair vs merged matrix",
            ));
        }
    }
    let (exact, tmp) = row.split_at_mut(cols);
    let tmp = &mut tmp[..cols];
    let mut bbuf = [0f32; super::MAX_RANK];
    let mut st = MergeStats::default();
    for (o, orow) in out.chunks_exact_mut(rb).enumerate() {
        w.dequantize_row(o, exact)?;
        // exact += s * sum_k B[o,k] A[k,:]
        for (p, s) in pairs {
            let rank = p.rank();
            p.b.dequantize_row(o, &mut bbuf[..rank])?;
            for (k, &bk) in bbuf[..rank].iter().enumerate() {
                p.a.dequantize_row(k, tmp)?;
                let f = s * bk;
                for (e, a) in exact.iter_mut().zip(tmp.iter()) {
                    *e += f * a;
                }
            }
        }
        // delta for this row = exact - W row
        w.dequantize_row(o, tmp)?;
        st.delta_norm += exact
            .iter()
            .zip(tmp.iter())
            .map(|(e, b)| {
                let d = (e - b) as f64;
                d * d
            })
            .sum::<f64>();
        encode_row(ty, exact, orow);
        r::dequantize_row(ty, orow, tmp);
        st.err_norm += exact
            .iter()
            .zip(tmp.iter())
            .map(|(e, q)| {
                let d = (e - q) as f64;
                d * d
            })
            .sum::<f64>();
    }
    st.delta_norm = libm::sqrt(st.delta_norm);
    st.err_norm = libm::sqrt(st.err_norm);
    st.rel_err = if st.delta_norm > 0.0 {
        st.err_norm / st.delta_norm
    } else {
        0.0
    };
    Ok(st)
}

/// Write one row of f32 values as `ty` (F32, F16, Q8_0, Q4_0, Q4_1); `out` is exactly one row.
pub fn encode_row(ty: GgmlType, x: &[f32], out: &mut [u8]) {
    match ty {
        GgmlType::F32 => {
            for (c, v) in out.chunks_exact_mut(4).zip(x) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (c, v) in out.chunks_exact_mut(2).zip(x) {
                c.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            }
        }
        GgmlType::Q8_0 => {
            if let Ok(b) = cast_blocks_mut::<BlockQ8_0>(out) {
                r::quantize_row_q8_0(x, b);
            }
        }
        GgmlType::Q4_0 => {
            if let Ok(b) = cast_blocks_mut::<BlockQ4_0>(out) {
                r::quantize_row_q4_0(x, b);
            }
        }
        GgmlType::Q4_1 => {
            if let Ok(b) = cast_blocks_mut::<BlockQ4_1>(out) {
                r::quantize_row_q4_1(x, b);
            }
        }
        _ => {}
    }
    let _ = QK;
}
