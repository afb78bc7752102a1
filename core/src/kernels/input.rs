//! The model-facing drivers: an activation quantised at most once per format ([`Input`] for a
//! vector, [`Batch`] for a prompt block), and `y = W x` over a [`MatRef`] of any type
//! ([`matvec_input`], [`matmul_input`]), written once for every quant type through
//! [`with_type`].

use super::types::{with_type, ActRunnable, Runnable, TypeFn, ACT_FORMATS};
use super::{matvec, Kernel, KernelMode, MatRef, Side};
use crate::quant::{cast_blocks, cast_blocks_mut, Block, GgmlType};

/// `f32` slots of scratch an [`Input`] of `n` values needs for every activation format this
/// build has (Q8_0, Q8_1, and Q8_K with the K-quant or IQ4 features), for sizing a model state
/// carved from `f32`s.
pub const fn act_scratch_f32s(n: usize) -> usize {
    let mut total = 0;
    let mut i = 0;
    while i < ACT_FORMATS.len() {
        total += slot_f32s(n, i);
        i += 1;
    }
    total
}

/// `f32` slots for format `slot`'s blocks of `n` values (whole blocks only).
const fn slot_f32s(n: usize, slot: usize) -> usize {
    let (bl, bytes) = ACT_FORMATS[slot];
    (n / bl * bytes).div_ceil(4)
}

/// View `f32` scratch as activation blocks (a model state is carved from one `&mut [f32]`):
/// as many whole blocks as fit in `4 * buf.len()` bytes.
pub fn scratch_blocks<T: Block>(buf: &mut [f32]) -> &mut [T] {
    let len = core::mem::size_of_val(buf);
    // SAFETY: the bytes of `buf` are initialised f32s; `u8` has alignment 1 and no invalid
    // values, and so has `f32` (any byte pattern written through the view is a valid f32).
    // The exclusive borrow of `buf` is carried over to the result.
    let bytes = unsafe { core::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), len) };
    let n = len / core::mem::size_of::<T>() * core::mem::size_of::<T>();
    cast_blocks_mut(&mut bytes[..n]).unwrap_or_default()
}

/// Quantised forms of `x` (all its values, `per` values per vector), made at most once per
/// format into per-format regions of one scratch buffer.
struct ActCache<'a> {
    scratch: &'a mut [f32],
    have: [bool; ACT_FORMATS.len()],
}

impl<'a> ActCache<'a> {
    fn new(scratch: &'a mut [f32]) -> Self {
        ActCache {
            scratch,
            have: [false; ACT_FORMATS.len()],
        }
    }

    /// `x` as `A` blocks: `None` if a vector of `per` values is not a whole number of `A`
    /// blocks or the scratch is too small (callers then fall back to [`matvec`]).
    fn get<A: ActRunnable>(&mut self, x: &[f32], per: usize, k: &Kernel) -> Option<&[A]> {
        if per == 0 || !per.is_multiple_of(A::BLOCK_LEN) {
            return None;
        }
        let nb = x.len() / A::BLOCK_LEN;
        let off: usize = (0..A::SLOT).map(|i| slot_f32s(x.len(), i)).sum();
        let region = self
            .scratch
            .get_mut(off..off + slot_f32s(x.len(), A::SLOT))?;
        let blocks = scratch_blocks::<A>(region).get_mut(..nb)?;
        let have = self.have.get_mut(A::SLOT)?;
        if !*have {
            k.quantize::<A>(x, blocks);
            *have = true;
        }
        Some(blocks)
    }
}

/// An f32 activation vector with its quantised forms, each made at most once and only when a
/// weight type needs it, then reused by every matrix that reads this input (q/k/v; gate/up).
pub struct Input<'a> {
    x: &'a [f32],
    q: ActCache<'a>,
    kernel: &'static Kernel,
    mode: KernelMode,
}

impl<'a> Input<'a> {
    /// Wrap `x`, with `scratch` for its quantised forms ([`act_scratch_f32s`]`(x.len())`
    /// slots; shorter scratch makes the quantised matrices fall back to [`matvec`]).
    pub fn new(
        x: &'a [f32],
        scratch: &'a mut [f32],
        kernel: &'static Kernel,
        mode: KernelMode,
    ) -> Self {
        Input {
            x,
            q: ActCache::new(scratch),
            kernel,
            mode,
        }
    }

    /// The f32 values.
    pub fn values(&self) -> &'a [f32] {
        self.x
    }

    /// The kernel this input runs with.
    pub fn kernel(&self) -> &'static Kernel {
        self.kernel
    }

    /// The path this input runs on.
    pub fn mode(&self) -> KernelMode {
        self.mode
    }

    /// Quantised to `A` (first call quantises), or `None` if the scratch is too small or the
    /// length is not a whole number of `A` blocks.
    pub fn act<A: ActRunnable>(&mut self) -> Option<&[A]> {
        self.q.get(self.x, self.x.len(), self.kernel)
    }
}

/// `y = W x` on the path `x` was set up for ([`KernelMode`]): quantised weights against the
/// activation quantised once (Q8_0, Q8_1 or Q8_K as the type's dot wants), float weights
/// against f32.
///
/// Like [`matvec`], extra elements are ignored and missing ones leave outputs untouched; a
/// scratch too small for the quantised activation falls back to [`matvec`]. Never panics.
pub fn matvec_input(w: &MatRef<'_>, x: &mut Input<'_>, y: &mut [f32]) {
    matvec_input_side(w, x, y, Side::NONE);
}

/// The quantised matvec of one type, for [`with_type`].
struct QMatvec<'r, 'w, 'x, 'a, 's> {
    w: &'r MatRef<'w>,
    x: &'r mut Input<'a>,
    y: &'x mut [f32],
    side: Side<'s>,
}

impl TypeFn for QMatvec<'_, '_, '_, '_, '_> {
    type Out = bool;
    fn call<T: Runnable>(self) -> bool {
        let k = self.x.kernel;
        let bpr = self.w.cols / T::BLOCK_LEN;
        match (cast_blocks::<T>(self.w.data), self.x.act::<T::Act>()) {
            (Ok(wb), Some(xb)) => {
                k.matvec_q_side(wb, bpr, xb, self.y, self.side);
                true
            }
            _ => false,
        }
    }
}

/// As [`matvec_input`], prefetching `side` inside the row loop of a quantised matvec (see
/// [`Side`]); float weights and the reference path ignore it. Results are identical to
/// [`matvec_input`]. Never panics.
pub fn matvec_input_side(w: &MatRef<'_>, x: &mut Input<'_>, y: &mut [f32], side: Side<'_>) {
    #[cfg(not(target_arch = "x86_64"))]
    let side = {
        // no side-aware kernel on this architecture: drop the stream so the `_side` calls
        // below fold into the plain matvecs (smaller firmware)
        let _ = side;
        Side::NONE
    };
    if x.mode == KernelMode::Reference || x.x.len() < w.cols {
        matvec(w, x.x, y);
        return;
    }
    let rows = w.rows.min(y.len());
    let y = &mut y[..rows];
    let done = match w.ty {
        GgmlType::F16 | GgmlType::BF16 | GgmlType::F32 => {
            x.kernel.matvec_float(w.ty, w.data, w.cols, x.x, y);
            true
        }
        ty => with_type(
            ty,
            QMatvec {
                w,
                x: &mut *x,
                y: &mut *y,
                side,
            },
        )
        .unwrap_or(false),
    };
    if !done {
        matvec(w, x.x, y);
    }
}

/// A batch of `n` activation vectors (prompt tokens) laid end to end, with scratch for their
/// quantised forms, each made at most once per format and reused by every matrix that reads
/// the batch (q/k/v; gate/up), as [`Input`] does for one vector.
pub struct Batch<'a> {
    x: &'a [f32],
    n: usize,
    q: ActCache<'a>,
    kernel: &'static Kernel,
    mode: KernelMode,
}

impl<'a> Batch<'a> {
    /// Wrap `n` vectors of `x.len() / n` values each, with `scratch` for their quantised forms
    /// ([`act_scratch_f32s`]`(x.len())` slots; shorter scratch makes [`matmul_input`] fall
    /// back to one [`matvec`] per vector).
    pub fn new(
        x: &'a [f32],
        n: usize,
        scratch: &'a mut [f32],
        kernel: &'static Kernel,
        mode: KernelMode,
    ) -> Self {
        Batch {
            x,
            n,
            q: ActCache::new(scratch),
            kernel,
            mode,
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True if the batch holds no vector.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Values per vector.
    fn width(&self) -> usize {
        self.x.len().checked_div(self.n).unwrap_or(0)
    }

    /// The kernel this batch runs with.
    pub fn kernel(&self) -> &'static Kernel {
        self.kernel
    }

    /// The path this batch runs on.
    pub fn mode(&self) -> KernelMode {
        self.mode
    }

    /// The whole batch as `A` blocks (quantising is per block, so this equals each vector
    /// quantised on its own when the width is a whole number of blocks).
    fn act<A: ActRunnable>(&mut self) -> Option<&[A]> {
        let per = self.width();
        self.q.get(self.x, per, self.kernel)
    }
}

/// `Y = W X` for a [`Batch`]: output vector `c` goes to `y[c * w.rows() .. (c + 1) * w.rows()]`.
/// Quantised weights run [`Kernel::matmul_q`] (blocked where the table has a blocked kernel
/// for the type), F16/BF16/F32 weights [`Kernel::matmul_float`]. The batch's width must equal
/// `w.cols()` (else `y` is left untouched). Never panics.
pub fn matmul_input(w: &MatRef<'_>, x: &mut Batch<'_>, y: &mut [f32]) {
    let n = x.n;
    matmul_input_range(w, x, 0..n, y);
}

/// The quantised matmul of one type over vectors `c0..c0 + n`, for [`with_type`].
struct QMatmul<'r, 'w, 'x, 'a> {
    w: &'r MatRef<'w>,
    x: &'r mut Batch<'a>,
    c0: usize,
    n: usize,
    y: &'x mut [f32],
}

impl TypeFn for QMatmul<'_, '_, '_, '_> {
    type Out = bool;
    fn call<T: Runnable>(self) -> bool {
        let k = self.x.kernel;
        let (rows, bpr) = (self.w.rows, self.w.cols / T::BLOCK_LEN);
        let (c0, n) = (self.c0, self.n);
        if let (Ok(wb), Some(xb)) = (cast_blocks::<T>(self.w.data), self.x.act::<T::Act>()) {
            // The quantised vectors `c0..c0 + n` of a whole-batch quantisation.
            if let Some(xb) = xb.get(c0 * bpr..(c0 + n) * bpr) {
                k.matmul_q(wb, bpr, rows, xb, self.y);
                return true;
            }
        }
        false
    }
}

/// As [`matmul_input`] for vectors `range` of the batch only: vector `range.start + c` goes to
/// `y[c * w.rows() ..]`. The range is clamped to the batch (and to what `y` holds); the
/// batch's quantised forms are made once for the whole batch and shared by every range (the
/// LoRA A products of a prompt block read them this way, a few tokens at a time).
/// Never panics.
pub fn matmul_input_range(
    w: &MatRef<'_>,
    x: &mut Batch<'_>,
    range: core::ops::Range<usize>,
    y: &mut [f32],
) {
    let (rows, cols) = (w.rows, w.cols);
    if x.width() != cols || cols == 0 || rows == 0 {
        return;
    }
    let c0 = range.start.min(x.n);
    let n = range.end.min(x.n).saturating_sub(c0).min(y.len() / rows);
    let y = &mut y[..n * rows];
    let xs: &[f32] = x.x;
    let Some(xf) = xs.get(c0 * cols..(c0 + n) * cols) else {
        return;
    };
    if x.mode == KernelMode::Fast {
        match w.ty {
            GgmlType::F16 | GgmlType::BF16 | GgmlType::F32 => {
                return x.kernel.matmul_float(w.ty, w.data, cols, rows, xf, y);
            }
            ty => {
                if with_type(
                    ty,
                    QMatmul {
                        w,
                        x: &mut *x,
                        c0,
                        n,
                        y: &mut *y,
                    },
                ) == Some(true)
                {
                    return;
                }
            }
        }
    }
    for (xc, yc) in xf.chunks_exact(cols).zip(y.chunks_exact_mut(rows)) {
        matvec(w, xc, yc);
    }
}
