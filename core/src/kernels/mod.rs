//! Compute kernels and the one dispatcher the model calls.
//!
//! [`reference`] is the scalar oracle. Optimised per-ISA kernels (x86_64, aarch64, Cortex-M)
//! are added beside it and selected here; every one of them is tested against the oracle.
//! Today the dispatcher runs the reference path: f32 activations against weights dequantised
//! one block at a time, which is the most accurate choice and the parity baseline.

pub mod reference;

use crate::error::{Error, ErrorKind, Result};
use crate::format::gguf::TensorInfo;
use crate::quant::GgmlType;

/// A borrowed row-major matrix of `rows` rows of `cols` elements of type `ty`.
///
/// In ggml terms `cols = ne[0]` and `rows = ne[1]`; `y = W x` takes `x` of length `cols`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatRef<'a> {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: &'a [u8],
}

impl<'a> MatRef<'a> {
    /// Wrap bytes as a matrix, checking that the size matches exactly.
    ///
    /// # Errors
    /// [`ErrorKind::UnsupportedTensorType`] for types the kernels cannot run,
    /// [`ErrorKind::BadDims`] if `cols` is not a whole number of blocks or the byte length
    /// does not match.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self> {
        if !ty.is_supported() {
            return Err(
                Error::new(ErrorKind::UnsupportedTensorType, "matrix").detail(ty.id() as u64, 0)
            );
        }
        let row_bytes = ty.row_bytes(cols as u64).ok_or_else(|| {
            Error::new(ErrorKind::BadDims, "matrix row length")
                .detail(cols as u64, ty.block_len() as u64)
        })? as usize;
        let total = row_bytes
            .checked_mul(rows)
            .ok_or_else(|| Error::new(ErrorKind::BadDims, "matrix size"))?;
        if total != data.len() {
            return Err(Error::new(ErrorKind::BadDims, "matrix byte length")
                .detail(data.len() as u64, total as u64));
        }
        Ok(MatRef {
            ty,
            rows,
            cols,
            row_bytes,
            data,
        })
    }

    /// View a 2-D (or 1-D) GGUF tensor as a matrix.
    ///
    /// # Errors
    /// As [`MatRef::new`], with the tensor's name attached; [`ErrorKind::BadDims`] for 3-D+.
    pub fn from_tensor(t: &TensorInfo<'a>) -> Result<Self> {
        if t.ne[2] != 1 || t.ne[3] != 1 {
            return Err(
                Error::new(ErrorKind::BadDims, "expected a 2-D tensor").named(t.name.as_bytes())
            );
        }
        let rows = usize::try_from(t.ne[1])
            .map_err(|_| Error::new(ErrorKind::BadDims, "rows").named(t.name.as_bytes()))?;
        let cols = usize::try_from(t.ne[0])
            .map_err(|_| Error::new(ErrorKind::BadDims, "cols").named(t.name.as_bytes()))?;
        MatRef::new(t.ty, rows, cols, t.data).map_err(|e| e.named(t.name.as_bytes()))
    }

    /// Element type.
    pub const fn ty(&self) -> GgmlType {
        self.ty
    }
    /// Number of rows (outputs of a matvec).
    pub const fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns (inputs of a matvec).
    pub const fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes per row.
    pub const fn row_bytes(&self) -> usize {
        self.row_bytes
    }
    /// All the matrix bytes.
    pub const fn data(&self) -> &'a [u8] {
        self.data
    }
    /// Bytes of row `r`, or `None` if out of range.
    pub fn row(&self, r: usize) -> Option<&'a [u8]> {
        let start = r.checked_mul(self.row_bytes)?;
        self.data.get(start..start.checked_add(self.row_bytes)?)
    }

    /// Dequantise row `r` into `out` (`cols` values).
    ///
    /// # Errors
    /// [`ErrorKind::TokenOutOfRange`] if `r >= rows` (rows of an embedding are token ids),
    /// [`ErrorKind::BufferTooSmall`] if `out` is shorter than `cols`.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        let row = self.row(r).ok_or_else(|| {
            Error::new(ErrorKind::TokenOutOfRange, "matrix row").detail(r as u64, self.rows as u64)
        })?;
        let out = out.get_mut(..self.cols).ok_or_else(|| {
            Error::new(ErrorKind::BufferTooSmall, "row output").detail(self.cols as u64, 0)
        })?;
        reference::dequantize_row(self.ty, row, out);
        Ok(())
    }
}

/// `y = W x` for one input vector. `x` has `w.cols()` values, `y` has `w.rows()`.
///
/// Lengths are validated when the model is loaded; extra elements are ignored and missing
/// ones leave outputs untouched, so this cannot panic.
pub fn matvec(w: &MatRef<'_>, x: &[f32], y: &mut [f32]) {
    let x = &x[..w.cols.min(x.len())];
    for (row, out) in w.data.chunks_exact(w.row_bytes).zip(y.iter_mut()) {
        *out = reference::dot_row_f32(w.ty, row, x);
    }
}
