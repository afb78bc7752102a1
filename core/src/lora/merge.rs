//! Merging adapters into base weights: `W' = W + sum_i s_i B_i A_i` (DoRA: each adapter's rows
//! then rescaled by its magnitude factor), one row at a time, into a caller buffer of any type
//! this build can write: F32, F16, BF16, or any weight type with a quantiser in the type table
//! ([`QuantType::QUANTIZE`](crate::quant::QuantType::QUANTIZE): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
//! Q4_K, Q5_K, Q6_K today). `merge_model` (feature `alloc`) merges a whole file, either into
//! one fixed type or into each tensor's own type (`MergeType::Base`), which is what
//! `edgelora merge --type base` runs.
//!
//! Each merged row is dequantised exactly (the base's oracle), the update added in f32, and the
//! row quantised by the same quantiser `edgelora quantize` uses (byte-identical to ggml's
//! `ggml_quantize_chunk` without an importance matrix), so a K-quant base stays K-quant and
//! loads wherever the original did.
//!
//! Merging into a 4-bit base loses small updates (the update is often smaller than the
//! quantisation step). [`MergeStats`] measures it per tensor: `rel_err` is the rounding error of
//! the merged weights relative to the size of the update; above 0.5 most of the update is lost
//! and callers should warn (or merge to Q8_0/F16, or run unmerged). [`MergeStats::rel_rms`] is
//! the same error relative to the merged weights themselves (what `edgelora quantize` reports).
//!
//! DoRA: the unmerged forward pass computes, per adapter in order, `y += s B A x` then
//! `y *= g` (`g` the per-row factor the converter stored). Merging does the same to each row
//! of W in the same order, `W'[o] = g[o] (W[o] + s (B A)[o])`, so merged and unmerged agree up
//! to the final rounding.
//!
//! Unmerging never subtracts: the base bytes are never written, so restoring the original
//! [`MatRef`] restores the base exactly.

use super::LoraPair;
use crate::error::{Error, ErrorKind, Result};
use crate::kernels::{reference as r, MatRef};
use crate::quant::GgmlType;

/// Error measurements of one merged tensor.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MergeStats {
    /// Frobenius norm of the update (exact merged weights - base weights).
    pub delta_norm: f64,
    /// Frobenius norm of (stored merged weights - exact merged weights).
    pub err_norm: f64,
    /// `err_norm / delta_norm` (0 when the update is 0).
    pub rel_err: f64,
    /// Frobenius norm of the exact merged weights (before rounding to the output type).
    pub merged_norm: f64,
}

impl MergeStats {
    /// True if the rounding error is at least half the size of the update.
    pub fn update_lost(&self) -> bool {
        self.delta_norm > 0.0 && self.rel_err >= 0.5
    }

    /// `err_norm / merged_norm`: the rounding error relative to the merged weights (the
    /// relative RMS error of the stored tensor; 0 for an all-zero tensor).
    pub fn rel_rms(&self) -> f64 {
        if self.merged_norm > 0.0 {
            self.err_norm / self.merged_norm
        } else {
            0.0
        }
    }
}

/// Bytes needed for a merged `w` stored as `ty`.
pub fn merged_len(w: &MatRef<'_>, ty: GgmlType) -> Option<usize> {
    Some(ty.row_bytes(w.cols() as u64)? as usize * w.rows())
}

/// The error for a merge output type this build has no quantiser for (Q2_K, or a family whose
/// feature is off). Names the type; `merge_model` renames it to
/// `"<tensor> (<type>)"`.
fn no_quantizer(ty: GgmlType) -> Error {
    Error::new(
        ErrorKind::UnsupportedTensorType,
        "no quantiser for this type, so the merged tensor cannot keep it: merge with --type q8_0 \
         or f16 (or run the adapter unmerged)",
    )
    .named(ty.name().as_bytes())
}

/// Merge `pairs` (each with its full scale `user * alpha / r`) into `w`, writing `ty` rows to
/// `out`. `row` needs `2 * cols` floats of scratch. A pair with a DoRA factor rescales the rows
/// after its update is added, in `pairs` order (as the unmerged forward pass does).
///
/// # Errors
/// [`ErrorKind::UnsupportedTensorType`] naming the type if it has no quantiser in this build
/// ([`r::has_quantizer`]); [`ErrorKind::BadDims`] if `cols` is not a whole number of blocks
/// of `ty`; [`ErrorKind::ShapeMismatch`] if a pair (or its DoRA factor) does not fit `w`;
/// [`ErrorKind::BufferTooSmall`] for short buffers. All of these are checked before the first
/// row is written.
pub fn merge_into(
    w: &MatRef<'_>,
    pairs: &[(LoraPair<'_>, f32)],
    ty: GgmlType,
    out: &mut [u8],
    row: &mut [f32],
) -> Result<MergeStats> {
    if !r::has_quantizer(ty) {
        return Err(no_quantizer(ty));
    }
    let (rows, cols) = (w.rows(), w.cols());
    let rb = ty.row_bytes(cols as u64).ok_or_else(|| {
        Error::new(ErrorKind::BadDims, "row length vs output block size")
            .named(ty.name().as_bytes())
            .detail(cols as u64, ty.block_len() as u64)
    })? as usize;
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
        if p.dora.is_some_and(|g| g.len() != 4 * rows) {
            return Err(Error::new(
                ErrorKind::ShapeMismatch,
                "DoRA factor length vs merged matrix rows",
            ));
        }
    }
    let (exact, tmp) = row.split_at_mut(cols);
    let tmp = &mut tmp[..cols];
    let mut bbuf = [0f32; super::MAX_RANK];
    let mut st = MergeStats::default();
    for (o, orow) in out.chunks_exact_mut(rb).enumerate() {
        w.dequantize_row(o, exact)?;
        for (p, s) in pairs {
            // exact += s * sum_k B[o,k] A[k,:]                            (cols,)
            let rank = p.rank();
            p.b.dequantize_row(o, &mut bbuf[..rank])?;
            for (k, &bk) in bbuf[..rank].iter().enumerate() {
                p.a.dequantize_row(k, tmp)?;
                let f = s * bk;
                for (e, a) in exact.iter_mut().zip(tmp.iter()) {
                    *e += f * a;
                }
            }
            // DoRA: exact *= g[o], after this adapter's update, as `AdapterSet::apply`.
            if let Some(c) = p.dora.and_then(|g| g.get(4 * o..4 * o + 4)) {
                let g = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                for e in exact.iter_mut() {
                    *e *= g;
                }
            }
        }
        // delta for this row = exact - W row
        w.dequantize_row(o, tmp)?;
        for (e, b) in exact.iter().zip(tmp.iter()) {
            let d = (e - b) as f64;
            st.delta_norm += d * d;
            st.merged_norm += (*e as f64) * (*e as f64);
        }
        // `ty` has a quantiser and `orow` is exactly one row (checked above).
        if !r::quantize_row(ty, exact, orow) || !r::dequantize_row(ty, orow, tmp) {
            return Err(no_quantizer(ty));
        }
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
    st.merged_norm = libm::sqrt(st.merged_norm);
    st.rel_err = if st.delta_norm > 0.0 {
        st.err_norm / st.delta_norm
    } else {
        0.0
    };
    Ok(st)
}

/// Write one row of f32 values as `ty`; `out` is exactly one row. Any type
/// [`r::quantize_row`] writes; returns `false` (and writes nothing) for any other.
pub fn encode_row(ty: GgmlType, x: &[f32], out: &mut [u8]) -> bool {
    r::quantize_row(ty, x, out)
}

#[cfg(feature = "alloc")]
pub use whole::{merge_model, MergeReport, MergeType};

#[cfg(feature = "alloc")]
mod whole {
    use super::{merge_into, no_quantizer, MergeStats};
    use crate::error::{Error, ErrorKind, Result};
    use crate::format::gguf::Gguf;
    use crate::format::gguf_write::{GgufWriter, OwnedValue};
    use crate::kernels::reference as r;
    use crate::lora::{parse_target, BoundAdapter, LoraPair};
    use crate::model::{Model, LINEARS};
    use crate::quant::GgmlType;
    use alloc::vec;
    use alloc::vec::Vec;

    /// The type merged tensors are written in.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum MergeType {
        /// Every merged tensor in this type (F32, F16, BF16, Q8_0, ...).
        Fixed(GgmlType),
        /// Each merged tensor re-quantised into its own type in the base (a Q4_K tensor stays
        /// Q4_K, a Q6_K tensor Q6_K, ...); refused for a type without a quantiser.
        Base,
    }

    impl MergeType {
        /// The output type of a tensor stored as `base`.
        pub const fn of(self, base: GgmlType) -> GgmlType {
            match self {
                MergeType::Fixed(t) => t,
                MergeType::Base => base,
            }
        }
    }

    /// What [`merge_model`] did to one merged tensor.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub struct MergeReport<'a> {
        /// Tensor name (`blk.3.ffn_down.weight`).
        pub name: &'a str,
        /// The base's type.
        pub from: GgmlType,
        /// The type written.
        pub to: GgmlType,
        /// How many adapters' pairs were merged into it.
        pub n_pairs: usize,
        /// Size of the update and of its rounding error.
        pub stats: MergeStats,
    }

    /// `"<tensor> (<type>)"` as an error name (an inline buffer: no allocation needed).
    fn name_with_type(e: Error, name: &str, ty: GgmlType) -> Error {
        let mut buf = [0u8; crate::error::NAME_CAP];
        let mut n = 0;
        for part in [name.as_bytes(), b" (", ty.name().as_bytes(), b")"] {
            for &b in part {
                if let Some(slot) = buf.get_mut(n) {
                    *slot = b;
                    n += 1;
                }
            }
        }
        e.named(&buf[..n])
    }

    /// Merge `adapters` (each bound to `model`, loaded from `base`, with its user scale; any
    /// number of them, applied in order as an [`AdapterSet`](crate::lora::AdapterSet) would
    /// apply them) into the base and return the new GGUF's bytes: metadata and untargeted
    /// tensors copied unchanged, each targeted linear (`blk.N.<linear>.weight`) replaced by its
    /// merged weights in the type `target` picks. `progress` is called once per merged tensor, after it is done, in file
    /// order.
    ///
    /// Every targeted tensor is checked before any work is done, so an unsupported type fails
    /// at once; `base`, `model` and the adapters are only read.
    ///
    /// # Errors
    /// [`ErrorKind::UnsupportedTensorType`] naming `"<tensor> (<type>)"` for a target type
    /// without a quantiser in this build (with [`MergeType::Base`]: Q2_K;
    /// merge to Q8_0 or F16 instead); [`ErrorKind::BadDims`] naming the tensor if its rows are
    /// not whole blocks of the output type; [`ErrorKind::MissingTensor`] if an adapted linear
    /// is not stored as its own `blk.N.<linear>.weight` tensor; [`ErrorKind::InvalidArgument`]
    /// if an adapter carries a replacement output head (not merged: run it unmerged);
    /// errors of [`merge_into`].
    pub fn merge_model<const L: usize>(
        base: &Gguf<'_>,
        model: &Model<'_, L>,
        adapters: &[(&BoundAdapter<'_, '_>, f32)],
        target: MergeType,
        mut progress: impl FnMut(&MergeReport<'_>),
    ) -> Result<Vec<u8>> {
        if adapters.iter().any(|(b, _)| b.head().is_some()) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "an adapter carries a replacement output head, which merge does not write: run \
                 it unmerged",
            )
            .named(crate::lora::HEAD_TENSOR.as_bytes()));
        }
        let n_layers = model.config().n_layers;
        let pairs_of = |l: usize, k: usize| -> Vec<(LoraPair<'_>, f32)> {
            adapters
                .iter()
                .filter_map(|&(b, user)| {
                    b.pair(l, k)
                        .map(|p| (*p, user * b.alpha() / p.rank() as f32))
                })
                .collect()
        };
        // Check every target before merging anything.
        let mut covered = vec![false; n_layers * LINEARS];
        for t in base.tensors() {
            let Some((l, k)) = parse_target(t.name).filter(|&(l, _)| l < n_layers) else {
                continue;
            };
            if pairs_of(l, k).is_empty() {
                continue;
            }
            let w = model.layer(l).map(|x| *x.linear(k)).ok_or_else(|| {
                Error::new(ErrorKind::MissingTensor, "layer not in the model")
                    .named(t.name.as_bytes())
            })?;
            if t.n_elements() != (w.rows() as u64) * (w.cols() as u64) {
                return Err(Error::new(
                    ErrorKind::ShapeMismatch,
                    "tensor vs the model's matrix of that name",
                )
                .named(t.name.as_bytes()));
            }
            let to = target.of(t.ty);
            if !r::has_quantizer(to) {
                return Err(name_with_type(no_quantizer(to), t.name, to));
            }
            if to.row_bytes(w.cols() as u64).is_none() {
                return Err(name_with_type(
                    Error::new(
                        ErrorKind::BadDims,
                        "row length is not a whole number of the output type's blocks",
                    ),
                    t.name,
                    to,
                )
                .detail(w.cols() as u64, to.block_len() as u64));
            }
            covered[l * LINEARS + k] = true;
        }
        for l in 0..n_layers {
            for k in 0..LINEARS {
                if !covered[l * LINEARS + k] && !pairs_of(l, k).is_empty() {
                    return Err(Error::new(
                        ErrorKind::MissingTensor,
                        "an adapted linear is not stored as its own blk.N.<linear>.weight tensor",
                    )
                    .detail(l as u64, k as u64));
                }
            }
        }

        let mut w = GgufWriter::new();
        for (k, v) in base.metadata() {
            w.set(k, OwnedValue::from_value(&v));
        }
        for t in base.tensors() {
            let hit = parse_target(t.name)
                .filter(|&(l, _)| l < n_layers)
                .map(|(l, k)| (l, k, pairs_of(l, k)))
                .filter(|(_, _, p)| !p.is_empty());
            let Some((l, k, pairs)) = hit else {
                w.add_tensor(t.name, t.ty, t.dims(), t.data.to_vec())?;
                continue;
            };
            let m = model.layer(l).map(|x| *x.linear(k)).ok_or_else(|| {
                Error::new(ErrorKind::MissingTensor, "layer not in the model")
                    .named(t.name.as_bytes())
            })?;
            let to = target.of(t.ty);
            let len = super::merged_len(&m, to).ok_or_else(|| {
                Error::new(ErrorKind::BadDims, "merged size").named(t.name.as_bytes())
            })?;
            let mut out = vec![0u8; len];
            let mut row = vec![0f32; 2 * m.cols()];
            let stats = merge_into(&m, &pairs, to, &mut out, &mut row)
                .map_err(|e| name_with_type(e, t.name, to))?;
            w.add_tensor(t.name, to, t.dims(), out)?;
            progress(&MergeReport {
                name: t.name,
                from: t.ty,
                to,
                n_pairs: pairs.len(),
                stats,
            });
        }
        Ok(w.to_bytes())
    }
}
