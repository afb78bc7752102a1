//! LoRA adapters: `y = W x + s * B (A x)` with `A` r x in, `B` out x r.
//!
//! An [`Adapter`] is a set of (target, A, B) views borrowed from a GGUF LoRA file in llama.cpp's
//! layout: `general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha` (f32),
//! tensors `<base tensor>.lora_a` (ggml dims `[in, r]`, i.e. an r x in matrix) and
//! `<base tensor>.lora_b` (`[r, out]`, an out x r matrix). The scale applied is
//! `user_scale * alpha / r` (llama.cpp's convention; the converter folds PEFT's per-module
//! scales, rsLoRA included, into B so that one alpha holds for the file).
//!
//! [`Adapter::bind`] checks the adapter against a loaded base (architecture, fingerprint of the
//! base when the file records one, every target present, shapes) and resolves every pair into
//! a per-(layer, linear) slot table held in caller memory, so the forward pass finds its pairs
//! in O(1). An [`AdapterSet`] is a small fixed list of bound adapters with per-adapter scales;
//! switching sets is O(1): it swaps references, no weights are rewritten.

use crate::error::{Error, ErrorKind, Result};
use crate::format::gguf::{Gguf, TensorInfo};
use crate::kernels::{
    matmul_input_range, matvec_input, Batch, Input, Kernel, KernelMode, MatRef, Side,
};
use crate::model::{Config, Model, LINEARS};
use crate::quant::{cast_blocks, BlockQ8_0, GgmlType, QK};

#[cfg(feature = "std")]
pub mod combine;
#[cfg(feature = "std")]
pub mod convert;
#[cfg(feature = "std")]
pub mod export;
pub mod merge;
pub mod stream;

/// Largest rank accepted (bounds the scratch the forward pass needs: [`MAX_RANK`] floats;
/// defined by the model, which owns that scratch).
pub use crate::model::MAX_RANK;
/// Most adapters active at once in an [`AdapterSet`].
pub const MAX_ACTIVE: usize = 4;
// Every active adapter's A and B fit one side stream.
const _: () = assert!(2 * MAX_ACTIVE <= crate::kernels::SIDE_PARTS);
/// Metadata key where edgelora's converter records the base fingerprint.
pub const FINGERPRINT_KEY: &str = "adapter.edgelora.base_fingerprint";
/// Metadata key where edgelora's converter records the base's shape fingerprint
/// ([`base_shape_fingerprint`]).
pub const SHAPE_FINGERPRINT_KEY: &str = "adapter.edgelora.base_shape_fingerprint";

/// A and B of one target matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraPair<'a> {
    /// r x in.
    pub a: MatRef<'a>,
    /// out x r.
    pub b: MatRef<'a>,
    /// DoRA: per-output-row factor `m / ||W + s B A||_row` (F32 bytes, `out` values),
    /// precomputed by the converter against the exact base (bound by the fingerprint).
    pub dora: Option<&'a [u8]>,
}

impl LoraPair<'_> {
    /// The rank r.
    pub const fn rank(&self) -> usize {
        self.a.rows()
    }
}

/// A parsed, self-consistent LoRA adapter borrowed from its GGUF bytes.
#[derive(Clone, Copy, Debug)]
pub struct Adapter<'a> {
    gguf: Gguf<'a>,
    alpha: f32,
    n_pairs: usize,
    max_rank: usize,
    fingerprint: Option<u64>,
    shape_fingerprint: Option<u64>,
    head: Option<MatRef<'a>>,
}

/// Name of a replacement output head carried by an adapter (PEFT `modules_to_save` of
/// `lm_head`).
pub const HEAD_TENSOR: &str = "output.weight";
/// Suffix of a DoRA per-row scale tensor (`blk.N.attn_q.weight.dora_scale`).
pub const DORA_SUFFIX: &str = ".dora_scale";

fn lora_types_ok(t: &TensorInfo<'_>) -> Result<()> {
    match t.ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 => Ok(()),
        _ => Err(Error::new(
            ErrorKind::UnsupportedTensorType,
            "LoRA tensors must be F32, F16, BF16 or Q8_0",
        )
        .named(t.name.as_bytes())),
    }
}

impl<'a> Adapter<'a> {
    /// Parse and check an adapter file on its own (no base needed).
    ///
    /// # Errors
    /// GGUF errors; [`ErrorKind::WrongType`]/[`ErrorKind::BadValue`] if it is not a LoRA
    /// adapter (`general.type`, `adapter.type`, `adapter.lora.alpha`); for tensors: names that
    /// are not `*.lora_a`/`*.lora_b`, an A without its B (or the reverse), unsupported types,
    /// inconsistent ranks or a rank above [`MAX_RANK`] — each naming the tensor.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let g = Gguf::parse(bytes)?;
        if g.get_str("general.type")? != "adapter" {
            return Err(
                Error::new(ErrorKind::BadValue, "not an adapter file (general.type)")
                    .named(b"general.type"),
            );
        }
        if g.get_str("adapter.type")? != "lora" {
            return Err(
                Error::new(ErrorKind::BadValue, "only LoRA adapters are supported")
                    .named(b"adapter.type"),
            );
        }
        let alpha = g.get_f32("adapter.lora.alpha")?;
        if !alpha.is_finite() {
            return Err(Error::new(ErrorKind::BadValue, "alpha must be finite")
                .named(b"adapter.lora.alpha"));
        }
        let fingerprint = read_u64(&g, FINGERPRINT_KEY)?;
        let shape_fingerprint = read_u64(&g, SHAPE_FINGERPRINT_KEY)?;
        let mut n_pairs = 0;
        let mut max_rank = 0;
        let mut head = None;
        for t in g.tensors() {
            if t.name == HEAD_TENSOR {
                head = Some(MatRef::from_tensor(&t)?);
                continue;
            }
            if let Some(base) = t.name.strip_suffix(DORA_SUFFIX) {
                if t.ty != GgmlType::F32 || t.n_dims != 1 {
                    return Err(Error::new(
                        ErrorKind::UnsupportedTensorType,
                        "DoRA scale must be a 1-D F32 tensor",
                    )
                    .named(t.name.as_bytes()));
                }
                let a = find_pair_tensor(&g, base, true)?;
                let b = find_pair_tensor(&g, base, false)?;
                if t.ne[0] != b.ne[1] || a.ne[1] == 0 {
                    return Err(Error::new(
                        ErrorKind::ShapeMismatch,
                        "DoRA scale length vs lora_b rows",
                    )
                    .named(t.name.as_bytes()));
                }
                continue;
            }
            let (base, is_a) = split_lora_name(t.name).ok_or_else(|| {
                Error::new(
                    ErrorKind::BadValue,
                    "tensor is not a .lora_a/.lora_b/.dora_scale or output.weight",
                )
                .named(t.name.as_bytes())
            })?;
            lora_types_ok(&t)?;
            if !is_a {
                // Every B must have its A (checked from the A side below, so only existence here).
                find_pair_tensor(&g, base, true)?;
                continue;
            }
            let b = find_pair_tensor(&g, base, false)?;
            let pair = pair_from(&t, &b)?;
            n_pairs += 1;
            max_rank = max_rank.max(pair.rank());
        }
        if n_pairs == 0 && head.is_none() {
            return Err(Error::new(
                ErrorKind::MissingTensor,
                "adapter has no LoRA tensors",
            ));
        }
        Ok(Adapter {
            gguf: g,
            alpha,
            n_pairs,
            max_rank,
            fingerprint,
            shape_fingerprint,
            head,
        })
    }

    /// The underlying GGUF.
    pub const fn gguf(&self) -> &Gguf<'a> {
        &self.gguf
    }
    /// `adapter.lora.alpha`.
    pub const fn alpha(&self) -> f32 {
        self.alpha
    }
    /// Number of (A, B) pairs.
    pub const fn n_pairs(&self) -> usize {
        self.n_pairs
    }
    /// Largest rank of any pair.
    pub const fn max_rank(&self) -> usize {
        self.max_rank
    }
    /// Replacement output head, if the adapter carries one.
    pub const fn head(&self) -> Option<&MatRef<'a>> {
        self.head.as_ref()
    }
    /// Base fingerprint recorded by the converter, if any.
    pub const fn fingerprint(&self) -> Option<u64> {
        self.fingerprint
    }

    /// Base shape fingerprint ([`base_shape_fingerprint`]) recorded by the converter, if any.
    pub const fn shape_fingerprint(&self) -> Option<u64> {
        self.shape_fingerprint
    }

    /// Iterate `(target tensor name, pair)`.
    pub fn pairs(&self) -> impl Iterator<Item = (&'a str, LoraPair<'a>)> + '_ {
        let g = self.gguf;
        g.tensors().filter_map(move |t| {
            let (base, is_a) = split_lora_name(t.name)?;
            if !is_a {
                return None;
            }
            let b = find_pair_tensor(&g, base, false).ok()?;
            let mut p = pair_from(&t, &b).ok()?;
            p.dora = find_dora(&g, base);
            Some((base, p))
        })
    }

    /// Number of slots [`Adapter::bind`] needs for a model with this config.
    pub const fn slots_len(cfg: &Config) -> usize {
        cfg.n_layers * LINEARS
    }

    /// Check the adapter against a base model and resolve its pairs into `slots`.
    ///
    /// `base` is the GGUF the model was loaded from (for the architecture and fingerprint).
    ///
    /// # Errors
    /// [`ErrorKind::UnsupportedArch`] for another architecture; [`ErrorKind::BadValue`] naming
    /// the fingerprint key if it records a different base; [`ErrorKind::MissingTensor`] for a
    /// target the base does not have or edgelora cannot adapt (embeddings, output head);
    /// [`ErrorKind::ShapeMismatch`] naming the tensor; [`ErrorKind::BufferTooSmall`] if
    /// `slots` is shorter than [`Adapter::slots_len`].
    pub fn bind<'s, const L: usize>(
        &self,
        base: &Gguf<'_>,
        model: &Model<'_, L>,
        slots: &'s mut [Option<LoraPair<'a>>],
    ) -> Result<BoundAdapter<'a, 's>> {
        let cfg = model.config();
        let need = Self::slots_len(cfg);
        let slots = slots.get_mut(..need).ok_or_else(|| {
            Error::new(ErrorKind::BufferTooSmall, "adapter slots").detail(0, need as u64)
        })?;
        if let Ok(arch) = self.gguf.get_str("general.architecture") {
            let base_arch = base.get_str("general.architecture")?;
            if arch != base_arch {
                return Err(Error::new(
                    ErrorKind::UnsupportedArch,
                    "adapter architecture differs from the base",
                )
                .named(arch.as_bytes()));
            }
        }
        // The exact fingerprint ties the file to the base's bytes; the shape fingerprint to its
        // tensor names and dims. A re-quantised copy of the base (the usual deployment: train
        // on F16 or Q8_0, run on Q4_K_M) fails the first and passes the second, and is
        // accepted with `same_base_weights() == Some(false)` for the caller to report. DoRA
        // factors were computed against the exact base rows, and files without a shape
        // fingerprint cannot tell a re-quantised copy from another model, so those stay strict.
        let same_weights = self.fingerprint.map(|fp| fp == base_fingerprint(base));
        if same_weights == Some(false) {
            let dora = self.pairs().any(|(_, p)| p.dora.is_some());
            match self.shape_fingerprint {
                Some(sfp) if sfp != base_shape_fingerprint(base) => {
                    return Err(Error::new(
                        ErrorKind::BadValue,
                        "adapter fits a base of other shapes; convert it for this one",
                    )
                    .named(SHAPE_FINGERPRINT_KEY.as_bytes()));
                }
                Some(_) if !dora => {}
                _ => {
                    return Err(Error::new(
                        ErrorKind::BadValue,
                        if dora {
                            "DoRA adapter fits other base weights; convert it for this base"
                        } else {
                            "adapter was converted for another base; convert it for this one"
                        },
                    )
                    .named(FINGERPRINT_KEY.as_bytes()));
                }
            }
        }
        // Resolve everything into a local pass first so a failure leaves `slots` untouched
        // for the caller only after success: we write slots at the end.
        for (name, pair) in self.pairs() {
            let (layer, kind) = parse_target(name).ok_or_else(|| {
                Error::new(
                    ErrorKind::MissingTensor,
                    "LoRA target is not a per-layer linear edgelora can adapt",
                )
                .named(name.as_bytes())
            })?;
            let w = model.layer(layer).map(|l| l.linear(kind)).ok_or_else(|| {
                Error::new(ErrorKind::MissingTensor, "LoRA target layer not in base")
                    .named(name.as_bytes())
            })?;
            if pair.a.cols() != w.cols() || pair.b.rows() != w.rows() {
                return Err(Error::new(
                    ErrorKind::ShapeMismatch,
                    "LoRA pair does not fit its target (in, out)",
                )
                .named(name.as_bytes())
                .detail(
                    (pair.a.cols() * pair.b.rows()) as u64,
                    (w.cols() * w.rows()) as u64,
                ));
            }
        }
        if let Some(h) = &self.head {
            let o = model.output();
            if h.rows() != o.rows() || h.cols() != o.cols() {
                return Err(Error::new(
                    ErrorKind::ShapeMismatch,
                    "replacement output head vs base head",
                )
                .named(HEAD_TENSOR.as_bytes())
                .detail((h.rows() * h.cols()) as u64, (o.rows() * o.cols()) as u64));
            }
        }
        slots.fill(None);
        for (name, pair) in self.pairs() {
            if let Some((layer, kind)) = parse_target(name) {
                if let Some(s) = slots.get_mut(layer * LINEARS + kind) {
                    *s = Some(pair);
                }
            }
        }
        Ok(BoundAdapter {
            slots,
            same_weights,
            alpha: self.alpha,
            n_layers: cfg.n_layers,
            head: self.head,
        })
    }
}

/// An adapter resolved against a base: its pairs by (layer, linear).
#[derive(Debug)]
pub struct BoundAdapter<'a, 's> {
    slots: &'s [Option<LoraPair<'a>>],
    same_weights: Option<bool>,
    alpha: f32,
    n_layers: usize,
    head: Option<MatRef<'a>>,
}

impl<'a> BoundAdapter<'a, '_> {
    /// The pair for `(layer, linear)`, where linear indexes [`crate::model::LINEAR_NAMES`].
    #[inline]
    pub fn pair(&self, layer: usize, linear: usize) -> Option<&LoraPair<'a>> {
        self.slots.get(layer * LINEARS + linear)?.as_ref()
    }
    /// Whether the base's bytes are those the adapter was converted against: `Some(false)`
    /// for a base with the same tensor names and shapes but other weights or quant types (a
    /// re-quantised copy, or another fine-tune of the same architecture, which no check can
    /// tell apart), `None` if the file records no fingerprint (llama.cpp's converter).
    pub const fn same_base_weights(&self) -> Option<bool> {
        self.same_weights
    }
    /// `adapter.lora.alpha`.
    pub const fn alpha(&self) -> f32 {
        self.alpha
    }
    /// Layers of the base it was bound to.
    pub const fn n_layers(&self) -> usize {
        self.n_layers
    }
    /// Replacement output head, if any.
    pub const fn head(&self) -> Option<&MatRef<'a>> {
        self.head.as_ref()
    }
}

/// The active adapters and their user scales. Copying or replacing a set is O(1).
#[derive(Clone, Copy, Debug)]
pub struct AdapterSet<'r, 'a, 's> {
    entries: [Option<(&'r BoundAdapter<'a, 's>, f32)>; MAX_ACTIVE],
}

impl Default for AdapterSet<'_, '_, '_> {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl<'r, 'a, 's> AdapterSet<'r, 'a, 's> {
    /// No adapters: the base model alone.
    pub const EMPTY: Self = AdapterSet {
        entries: [None; MAX_ACTIVE],
    };

    /// A set with one adapter at `scale`.
    pub fn single(a: &'r BoundAdapter<'a, 's>, scale: f32) -> Self {
        let mut s = Self::EMPTY;
        s.entries[0] = Some((a, scale));
        s
    }

    /// Add an adapter.
    ///
    /// # Errors
    /// [`ErrorKind::TooMany`] if [`MAX_ACTIVE`] are already active;
    /// [`ErrorKind::InvalidArgument`] for a non-finite scale.
    pub fn push(&mut self, a: &'r BoundAdapter<'a, 's>, scale: f32) -> Result<()> {
        if !scale.is_finite() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "adapter scale must be finite",
            ));
        }
        let slot = self
            .entries
            .iter_mut()
            .find(|e| e.is_none())
            .ok_or_else(|| {
                Error::new(ErrorKind::TooMany, "active adapters")
                    .detail(MAX_ACTIVE as u64 + 1, MAX_ACTIVE as u64)
            })?;
        *slot = Some((a, scale));
        Ok(())
    }

    /// Change the scale of active adapter `i` (in push order).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if there is no adapter `i` or the scale is not finite.
    pub fn set_scale(&mut self, i: usize, scale: f32) -> Result<()> {
        match self.entries.get_mut(i) {
            Some(Some(e)) if scale.is_finite() => {
                e.1 = scale;
                Ok(())
            }
            _ => Err(Error::new(
                ErrorKind::InvalidArgument,
                "no such active adapter, or scale not finite",
            )
            .detail(i as u64, MAX_ACTIVE as u64)),
        }
    }

    /// Number of active adapters.
    pub fn len(&self) -> usize {
        self.entries.iter().filter(|e| e.is_some()).count()
    }

    /// True if no adapter is active.
    pub fn is_empty(&self) -> bool {
        self.entries.iter().all(|e| e.is_none())
    }

    /// Iterate `(adapter, user scale)`.
    pub fn iter(&self) -> impl Iterator<Item = (&'r BoundAdapter<'a, 's>, f32)> + '_ {
        self.entries.iter().flatten().copied()
    }

    /// The output head to use: the first active adapter's replacement head, if any.
    pub fn head(&self) -> Option<&'r MatRef<'a>> {
        self.iter().find_map(|(a, _)| a.head.as_ref())
    }

    /// The bytes [`AdapterSet::apply`] will read for `(layer, linear)`: each active adapter's
    /// A and B, in the order `apply` reads them. The decode step hands this to the base
    /// matvec of the same linear ([`matvec_input_side`](crate::kernels::matvec_input_side)),
    /// which prefetches it while streaming the base weights (see
    /// [`Side`]); empty when no adapter targets the linear.
    #[inline]
    pub fn side(&self, layer: usize, linear: usize) -> Side<'a> {
        // Only the x86-64 kernels prefetch a side stream: elsewhere (Cortex-M flash budget)
        // the whole prefetch plumbing compiles away.
        if !cfg!(target_arch = "x86_64") {
            let _ = (layer, linear);
            return Side::default();
        }
        let mut side = Side::default();
        for (ad, _) in self.iter() {
            if let Some(p) = ad.pair(layer, linear) {
                side.push(p.a.data());
                side.push(p.b.data());
            }
        }
        side
    }

    /// Add `sum_i s_i B_i (A_i x)` of every active adapter for `(layer, linear)` to `y`.
    ///
    /// `x` is the same [`Input`] the base matrix read, so `A x` reuses its quantised form when
    /// A is Q8_0 and runs the SIMD float kernel when A is F16/F32 (the reference path when the
    /// input is in reference mode). On the fast path an F16/BF16/F32 B is applied by
    /// [`Kernel::matvec_float_add`](crate::kernels::Kernel::matvec_float_add), which adds
    /// `s B t` straight into `y` several rows at a time (B's rows are only r values long, so a
    /// dot product per row would spend most of its time on setup and horizontal sums); a Q8_0
    /// B likewise by [`Kernel::matvec_q8_0_add`](crate::kernels::Kernel::matvec_q8_0_add),
    /// with `t` kept in f32 (quantising a 32-value `t` to Q8 per row was both slower and less
    /// precise). The reference path (and a Q8_0 B whose rank is not a whole number of
    /// blocks, which a Q8_0 tensor cannot have) computes `u = B t` into `out_tmp` and adds
    /// `s u`. `tmp` needs
    /// [`MAX_RANK`] floats, `out_tmp` the output width. Shapes were checked at bind time; this
    /// cannot panic.
    #[inline]
    pub fn apply(
        &self,
        layer: usize,
        linear: usize,
        x: &mut Input<'_>,
        y: &mut [f32],
        tmp: &mut [f32],
        out_tmp: &mut [f32],
    ) {
        for (ad, user) in self.iter() {
            let Some(p) = ad.pair(layer, linear) else {
                continue;
            };
            let r = p.rank();
            let Some(t) = tmp.get_mut(..r) else { continue };
            matvec_input(&p.a, x, t); //                                (r,)
            let s = user * ad.alpha / r as f32;
            let (k, mode) = (x.kernel(), x.mode());
            match fast_b(p, mode) {
                Some(FastB::Q8_0(bb)) => {
                    // y += s B t, t kept in f32                       (out,)
                    k.matvec_q8_0_add(bb, r / QK, t, s, y);
                }
                Some(FastB::Float) => {
                    // y += s B t                                       (out,)
                    k.matvec_float_add(p.b.ty(), p.b.data(), r, t, s, y);
                }
                None => {
                    if !add_b_plain(p, s, t, y, out_tmp, k, mode) {
                        continue;
                    }
                }
            }
            dora(p, y);
        }
    }

    /// [`AdapterSet::apply`] for a [`Batch`] of `n` vectors (a prompt block): adds
    /// `sum_i s_i B_i (A_i x_c)` to output vector `c` of `y` (`(n, out)` row-major: vector `c`
    /// at `y[c * out ..]`) for every vector `c`, each adapter's A and B read once per pass over
    /// the batch rather than once per vector.
    ///
    /// Per active adapter: `T = A X` for as many vectors at once as `tmp` holds (`(vectors,
    /// r)`, by [`matmul_input_range`]: a Q8_0 A runs against the batch's own Q8_0 form, made
    /// once for the batch and shared with its base matmuls, never re-quantised per vector; an
    /// F16/BF16/F32 A against the f32 vectors by
    /// [`Kernel::matmul_float`](crate::kernels::Kernel::matmul_float)), then `Y += s T B^T` by
    /// [`Kernel::matmul_float_add`](crate::kernels::Kernel::matmul_float_add) /
    /// [`Kernel::matmul_q8_0_add`](crate::kernels::Kernel::matmul_q8_0_add), then the DoRA
    /// rescale of each vector's rows. Where [`AdapterSet::apply`] takes the plain B path
    /// (reference mode; microcontrollers) each vector runs exactly that code. Either way every
    /// output is bit-identical to [`AdapterSet::apply`] of its vector: the batched kernels
    /// keep each sum's order (`tests/tests/prefill.rs`, `tests/tests/kernels.rs`).
    ///
    /// `tmp` needs at least [`MAX_RANK`] floats (`n * r` lets every vector share one pass),
    /// `out_tmp` the output width, `y` `n` outputs. Shapes were checked at bind time; this
    /// cannot panic.
    pub fn apply_batch(
        &self,
        layer: usize,
        linear: usize,
        x: &mut Batch<'_>,
        y: &mut [f32],
        tmp: &mut [f32],
        out_tmp: &mut [f32],
    ) {
        let n = x.len();
        self.apply_cols(layer, linear, x, 0..n, y, tmp, out_tmp);
    }

    /// [`AdapterSet::apply_batch`] for vectors `cols` of the batch only: `y` holds their
    /// outputs (`(cols.len(), out)`, vector `cols.start + c` at `y[c * out ..]`). A batch whose
    /// vectors come from several sequences with different adapter sets (the multi-sequence
    /// step, `Model::step_many`) runs each set over its own columns this way: the gathered
    /// per-group LoRA product of Punica/S-LoRA ("BGMV"), with the batch's quantised forms
    /// shared by every group and by the base matmul. Every output is bit-identical to
    /// [`AdapterSet::apply`] of its vector. Cannot panic.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_cols(
        &self,
        layer: usize,
        linear: usize,
        x: &mut Batch<'_>,
        cols: core::ops::Range<usize>,
        y: &mut [f32],
        tmp: &mut [f32],
        out_tmp: &mut [f32],
    ) {
        let (k, mode) = (x.kernel(), x.mode());
        let (lo, hi) = (cols.start.min(x.len()), cols.end.min(x.len()));
        let n = hi.saturating_sub(lo);
        for (ad, user) in self.iter() {
            let Some(p) = ad.pair(layer, linear) else {
                continue;
            };
            let (r, out) = (p.rank(), p.b.rows());
            let s = user * ad.alpha / r as f32;
            // Vectors per pass: as many `(r,)` rows of T as `tmp` holds.
            let per = (tmp.len() / r.max(1)).min(n);
            if per == 0 || out == 0 {
                continue;
            }
            let b_fast = fast_b(p, mode);
            for c0 in (0..n).step_by(per) {
                let c1 = (c0 + per).min(n);
                let (Some(t), Some(yc)) = (
                    tmp.get_mut(..(c1 - c0) * r),  //                  (c1 - c0, r)
                    y.get_mut(c0 * out..c1 * out), //                 (c1 - c0, out)
                ) else {
                    break;
                };
                matmul_input_range(&p.a, x, lo + c0..lo + c1, t);
                match b_fast {
                    // Y += s T B^T, T kept in f32
                    Some(FastB::Q8_0(bb)) => k.matmul_q8_0_add(bb, r / QK, out, t, s, yc),
                    Some(FastB::Float) => {
                        k.matmul_float_add(p.b.ty(), p.b.data(), r, out, t, s, yc)
                    }
                    None => {
                        // Exactly `apply`'s plain path, vector by vector.
                        for (tc, yv) in t.chunks_exact(r).zip(yc.chunks_exact_mut(out)) {
                            if add_b_plain(p, s, tc, yv, out_tmp, k, mode) {
                                dora(p, yv);
                            }
                        }
                        continue;
                    }
                }
                for yv in yc.chunks_exact_mut(out) {
                    dora(p, yv);
                }
            }
        }
    }
}

/// How B is added on the fast path.
enum FastB<'a> {
    /// An F16/BF16/F32 B: [`Kernel::matvec_float_add`](crate::kernels::Kernel::matvec_float_add).
    Float,
    /// A Q8_0 B (its blocks): [`Kernel::matvec_q8_0_add`](crate::kernels::Kernel::matvec_q8_0_add).
    Q8_0(&'a [BlockQ8_0]),
}

/// The fused B kernel for `p` under `mode`, or `None` for the plain matvec + add
/// ([`add_b_plain`]). The fused kernels are a host/phone speed path; on microcontrollers (64
/// KiB flash budget) B goes through the plain path, same result up to summation order.
#[inline]
fn fast_b<'a>(p: &LoraPair<'a>, mode: KernelMode) -> Option<FastB<'a>> {
    if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) || mode != KernelMode::Fast {
        return None;
    }
    match p.b.ty() {
        GgmlType::Q8_0 if p.rank().is_multiple_of(QK) => {
            cast_blocks::<BlockQ8_0>(p.b.data()).ok().map(FastB::Q8_0)
        }
        GgmlType::F16 | GgmlType::BF16 | GgmlType::F32 => Some(FastB::Float),
        _ => None,
    }
}

/// `y += s B t` through `u = B t` in `out_tmp` (the reference path's arithmetic when `mode` is
/// [`KernelMode::Reference`]). False, and `y` untouched, if `out_tmp` is too short.
#[inline]
fn add_b_plain(
    p: &LoraPair<'_>,
    s: f32,
    t: &[f32],
    y: &mut [f32],
    out_tmp: &mut [f32],
    k: &'static Kernel,
    mode: KernelMode,
) -> bool {
    let Some(u) = out_tmp.get_mut(..p.b.rows().min(y.len())) else {
        return false;
    };
    let mut tin = Input::new(t, &mut [], k, mode);
    matvec_input(&p.b, &mut tin, u); //                                 (out,)
    for (o, v) in y.iter_mut().zip(u.iter()) {
        *o += s * v;
    }
    true
}

/// DoRA: rescale every output row of `(W x + s B A x)` by its magnitude factor.
#[inline]
fn dora(p: &LoraPair<'_>, y: &mut [f32]) {
    if let Some(g) = p.dora {
        for (o, c) in y.iter_mut().zip(g.chunks_exact(4)) {
            *o *= f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    }
}

/// Split `X.lora_a` / `X.lora_b` into `(X, is_a)`.
pub fn split_lora_name(name: &str) -> Option<(&str, bool)> {
    if let Some(b) = name.strip_suffix(".lora_a") {
        Some((b, true))
    } else {
        name.strip_suffix(".lora_b").map(|b| (b, false))
    }
}

fn find_pair_tensor<'a>(g: &Gguf<'a>, base: &str, want_a: bool) -> Result<TensorInfo<'a>> {
    let suffix = if want_a { ".lora_a" } else { ".lora_b" };
    g.tensors()
        .find(|t| {
            t.name.len() == base.len() + suffix.len()
                && t.name.starts_with(base)
                && t.name.ends_with(suffix)
        })
        .ok_or_else(|| {
            Error::new(
                ErrorKind::MissingTensor,
                if want_a {
                    "lora_a for this lora_b"
                } else {
                    "lora_b for this lora_a"
                },
            )
            .named(base.as_bytes())
        })
}

fn pair_from<'a>(a: &TensorInfo<'a>, b: &TensorInfo<'a>) -> Result<LoraPair<'a>> {
    lora_types_ok(a)?;
    lora_types_ok(b)?;
    let am = MatRef::from_tensor(a)?;
    let bm = MatRef::from_tensor(b)?;
    let r = am.rows();
    if r == 0 || r > MAX_RANK {
        return Err(Error::new(ErrorKind::BadDims, "LoRA rank")
            .named(a.name.as_bytes())
            .detail(r as u64, MAX_RANK as u64));
    }
    if bm.cols() != r {
        return Err(Error::new(
            ErrorKind::ShapeMismatch,
            "lora_b columns must equal lora_a rows (rank)",
        )
        .named(b.name.as_bytes())
        .detail(bm.cols() as u64, r as u64));
    }
    Ok(LoraPair {
        a: am,
        b: bm,
        dora: None,
    })
}

fn find_dora<'a>(g: &Gguf<'a>, base: &str) -> Option<&'a [u8]> {
    g.tensors()
        .find(|t| {
            t.name.len() == base.len() + DORA_SUFFIX.len()
                && t.name.starts_with(base)
                && t.name.ends_with(DORA_SUFFIX)
        })
        .map(|t| t.data)
}

/// Parse `blk.{i}.{linear}.weight` into `(i, linear index)`.
pub fn parse_target(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("blk.")?;
    let (num, rest) = rest.split_once('.')?;
    if num.is_empty() || num.len() > 5 || !num.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let layer: usize = num.parse().ok()?;
    let part = rest.strip_suffix(".weight")?;
    let k = crate::model::LINEAR_NAMES.iter().position(|n| *n == part)?;
    Some((layer, k))
}

/// An optional `u64` key (a fingerprint).
fn read_u64(g: &Gguf<'_>, key: &'static str) -> Result<Option<u64>> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_int()
            .and_then(|i| u64::try_from(i).ok())
            .map(Some)
            .ok_or_else(|| {
                Error::new(ErrorKind::WrongType, "fingerprint must be uint64").named(key.as_bytes())
            }),
    }
}

/// A 64-bit fingerprint of a base model's shape: FNV-1a over the architecture and every
/// tensor's name and dims, not types or data, so it is the same for every quantisation of one
/// model (and for every fine-tune of the same architecture and size).
pub fn base_shape_fingerprint(g: &Gguf<'_>) -> u64 {
    fingerprint(g, false)
}

/// A 64-bit fingerprint of a base model: FNV-1a over the architecture, every tensor's name,
/// type and dims, and up to 256 bytes from the start and end of each tensor's data. Cheap
/// enough for a microcontroller at load time and different for any two real fine-tunes.
pub fn base_fingerprint(g: &Gguf<'_>) -> u64 {
    fingerprint(g, true)
}

/// The two fingerprints' one loop (one copy in a firmware image): with `bytes`, each tensor's
/// type and data ends are hashed after its name and dims.
fn fingerprint(g: &Gguf<'_>, bytes: bool) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h ^= x as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(g.get_str("general.architecture").unwrap_or("").as_bytes());
    for t in g.tensors() {
        eat(t.name.as_bytes());
        if bytes {
            eat(&t.ty.id().to_le_bytes());
        }
        for d in t.dims() {
            eat(&d.to_le_bytes());
        }
        if bytes {
            let n = t.data.len();
            eat(&t.data[..n.min(256)]);
            eat(&t.data[n.saturating_sub(256)..]);
        }
    }
    h
}

impl crate::model::Adapters for AdapterSet<'_, '_, '_> {
    fn apply(
        &self,
        layer: usize,
        linear: usize,
        x: &mut Input<'_>,
        y: &mut [f32],
        tmp: &mut [f32],
        out_tmp: &mut [f32],
    ) {
        AdapterSet::apply(self, layer, linear, x, y, tmp, out_tmp);
    }
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn apply_cols(
        &self,
        layer: usize,
        linear: usize,
        x: &mut Batch<'_>,
        cols: core::ops::Range<usize>,
        y: &mut [f32],
        tmp: &mut [f32],
        out_tmp: &mut [f32],
    ) {
        AdapterSet::apply_cols(self, layer, linear, x, cols, y, tmp, out_tmp);
    }
    fn is_empty(&self) -> bool {
        AdapterSet::is_empty(self)
    }
    fn side(&self, layer: usize, linear: usize) -> Side<'_> {
        AdapterSet::side(self, layer, linear)
    }
    fn head(&self) -> Option<&MatRef<'_>> {
        AdapterSet::head(self)
    }
    fn fits(&self, n_layers: usize) -> bool {
        self.iter().all(|(a, _)| a.n_layers() == n_layers)
    }
}
