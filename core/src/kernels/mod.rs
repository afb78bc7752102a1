//! Compute kernels and the one dispatcher the model calls.
//!
//! # Two paths
//!
//! - **Reference** ([`matvec`], [`reference`](mod@reference)): f32 activations against weights dequantised one
//!   block at a time. The most accurate choice and the parity baseline; the model runs it under
//!   [`KernelMode::Reference`].
//! - **Fast** ([`Kernel`], [`matvec_input`]): as llama.cpp's CPU backend does, the activation
//!   is quantised once to Q8_0 (for Q4_0/Q8_0 weights) or Q8_1 (for Q4_1 weights) and the dot
//!   products run on integers, one f32 scale multiply per 32-weight block. F16/BF16/F32 weights
//!   take the f32 activation directly. This is the default ([`KernelMode::Fast`]).
//!
//! # Kernels and the dispatcher
//!
//! Every instruction set has its own module with a `detect() -> Option<&'static Kernel>`:
//! [`portable`] (always), `x86_64::avx2` (AVX2+FMA+F16C), `x86_64::avx512` (AVX-512
//! F/BW/VL + VNNI + VBMI), `aarch64::neon` (NEON, and NEON with `sdot`; the Q5, K-quant and
//! IQ4 kernels sit beside it in `aarch64/neon_q.rs`), `arm::dsp` and `arm::mve` (Cortex-M,
//! chosen at compile time). A [`Kernel`] is a table of entry points; holding one is the proof
//! that its instructions exist on this CPU, which is why `#[target_feature]` functions sit
//! behind it and nowhere else. [`active`] probes once, caches the best kernel and hands it
//! out; [`force`] (or the `EDGELORA_ISA` environment variable, read once under `std`) picks
//! another; [`ran`] says whether a kernel of a given ISA actually executed, so a test that
//! forces an ISA can fail when it silently ran something else (matrixmultiply's
//! `MMTEST_ENSUREFEATURE`).
//!
//! Detection uses `cpuid`/`xgetbv` directly on x86_64 so it works without `std`. On targets
//! without runtime detection (Cortex-M, RISC-V, wasm) only [`portable`] (and, with their
//! features, the DSP and MVE tables) exists, so no other kernel is linked.
//!
//! Decode runs matvecs ([`Kernel::matvec_q4_1`] etc.); prompt batches can run the blocked
//! [`Kernel::matmul_q4_1`] / [`Kernel::matmul_q8_0`] / [`Kernel::matmul_q4_0`] (and, through
//! [`Kernel::matmul_q`], Q5_0 / Q5_1 / Q6_K / Q4_K), which unpack each weight group once for
//! several tokens (blocked on AVX-512 and AVX2, with each column bit-identical to the same table's
//! matvec; a matvec per token elsewhere, and for Q4_0 on AVX-512), and the LoRA
//! products of a prompt block run [`Kernel::matmul_float`] (A, and float base weights),
//! [`Kernel::matmul_float_add`] / [`Kernel::matmul_q8_0_add`] (B), which share weight
//! conversions across tokens on x86-64 (AVX2 code, also used by the AVX-512 table where its
//! one-vector kernels are the AVX2 ones) and run the one-vector kernel per token elsewhere.
//! Every batched kernel gives, for each token, bit for bit what its one-vector kernel gives
//! (same accumulators, same order): prefill and decode stay interchangeable even where a
//! one-ulp difference would cross a Q8 rounding step downstream.
//!
//! # Threads (hosts, feature `std`)
//!
//! `set_threads(n)` splits every matvec's rows (and every matmul's columns) across the
//! caller and a persistent pool of `n - 1` workers (the `threads` module, feature `std`,
//! explains the design). Row chunks sit on multiples of each kernel's row grouping, and a
//! blocked matmul computes every column exactly as the matvec does whatever its passes hold,
//! so the results are bit-identical to one thread. One thread is the default; without `std`
//! there is no pool and every split is a plain call.
//!
//! # Results, and the contract across tables
//!
//! The integer part of every quantised dot is exact, so each kernel agrees with
//! [`reference`](mod@reference) bit for bit on it; the f32 accumulation of per-block terms runs in a different
//! order (SIMD lanes, FMA), so float results differ by at most the f32 summation error of
//! `n_blocks` terms (see `tests/tests/kernels.rs` for the bound). The activation quantisers
//! are bit-exact with ggml's `quantize_row_q8_0_ref` / `quantize_row_q8_1_ref` for finite input.
//!
//! What holds across tables (the README's "cross-table contract"):
//! - **Within one table** results are deterministic and bit-identical whatever the thread count
//!   and whether a token runs as a decode step or inside a prefill block.
//! - **Between tables** (portable, AVX2, AVX-512, NEON, DSP) the fast path may differ in the
//!   last bits of each f32 reduction, and the next layer's 8-bit activation rounding can turn
//!   that into a whole quantisation step, so two tables' logits differ by the fast path's own
//!   noise (SmolLM2 Q4_1: sigma of the top-2 logit gap error 0.15-0.17 on every table) and each
//!   flips its own near-tied positions. This was chosen over making AVX-512 reduce in AVX2's
//!   order because the portable, NEON and DSP tables would still differ, and every new type's
//!   AVX-512 kernel would be tied to the AVX2 one's lane order.
//! - **The reference path** ([`KernelMode::Reference`]) calls no table: bit-identical on all.
//!
//! Tests therefore assert only what holds on any table (misses only at near-ties, counts within
//! the allowance the measured noise explains) and run once per table a CPU has, each on its
//! own [`State`](crate::model::State) (`State::set_kernel`).

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub(crate) mod attn;
mod input;
pub mod types;
pub use input::{
    act_scratch_f32s, matmul_input, matmul_input_range, matvec_input, matvec_input_side,
    scratch_blocks, Batch, Input,
};
pub use types::{ActRunnable, Runnable};
#[cfg(all(
    target_arch = "arm",
    any(feature = "cortex-m-dsp", feature = "cortex-m-mve")
))]
pub mod arm;
pub mod portable;
pub mod reference;
#[cfg(feature = "std")]
pub mod threads;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

use crate::error::{Error, ErrorKind, Result};
use crate::format::gguf::TensorInfo;
use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, GgmlType, QK};
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
#[cfg(feature = "std")]
pub use threads::{set_threads, threads};

/// Row chunks handed to threads start at multiples of this: a multiple of every matvec's
/// row grouping (pairs on AVX-512), so threaded results are bit-identical to one thread.
const ROW_ALIGN: usize = 16;
/// Columns per thread chunk of a blocked matmul whose passes take `block` columns, over `n`
/// columns: whole passes (a pass of fewer columns costs more per column), halved while that
/// would leave threads without a chunk (an idle thread costs more). Any grouping gives the
/// same results: every column of a blocked matmul is bit-identical to the matvec.
#[cfg(feature = "std")]
fn col_align(n: usize, block: usize) -> usize {
    let t = threads();
    let mut a = block.max(1);
    while a > 1 && n.div_ceil(a) < t {
        a /= 2;
    }
    a
}

#[cfg(not(feature = "std"))]
fn col_align(_n: usize, block: usize) -> usize {
    block
}

/// `f(first_unit, chunk)` over `y` split into per-thread chunks of whole `unit`s (rows of a
/// matvec: 1; columns of a matmul: `rows`), or `f(0, y)` with one thread or without `std`.
#[cfg(feature = "std")]
fn par<F: Fn(usize, &mut [f32]) + Sync>(y: &mut [f32], unit: usize, align: usize, f: F) {
    threads::split(y, unit, align, f);
}

#[cfg(not(feature = "std"))]
fn par<F: Fn(usize, &mut [f32]) + Sync>(y: &mut [f32], _unit: usize, _align: usize, f: F) {
    f(0, y);
}

/// Run the row kernel `f` over `y` (rows of `bpr` blocks in `w`), rows split across threads.
/// Callers guarantee `w.len() >= y.len() * bpr` and `x.len() == bpr`.
fn rows_par<W: Sync, A: Sync>(f: QRowsFn<W, A>, w: &[W], bpr: usize, x: &[A], y: &mut [f32]) {
    par(y, 1, ROW_ALIGN, |r0, ys| {
        if let Some(wc) = w.get(r0 * bpr..(r0 + ys.len()) * bpr) {
            f(wc, bpr, x, ys);
        }
    });
}

/// As [`rows_par`] for a side-stream-aware row kernel: each thread's chunk of rows prefetches
/// the matching share of `side` (a prefetch changes no arithmetic, so results stay
/// bit-identical to one thread).
fn rows_par_side<W: Sync, A: Sync>(
    f: QRowsSideFn<W, A>,
    w: &[W],
    bpr: usize,
    x: &[A],
    y: &mut [f32],
    side: Side<'_>,
) {
    let n = y.len();
    par(y, 1, ROW_ALIGN, |r0, ys| {
        if let Some(wc) = w.get(r0 * bpr..(r0 + ys.len()) * bpr) {
            f(wc, bpr, x, ys, side.share(r0, ys.len(), n));
        }
    });
}

// ---- side streams ----------------------------------------------------------------------------

/// Most byte ranges one [`Side`] stream holds: A and B of up to four active adapters.
pub const SIDE_PARTS: usize = 8;
/// The step (cache line) in which side streams are prefetched.
const LINE: usize = 64;

/// Bytes a decode matvec prefetches *beside* its own weights, spread evenly over its row
/// loop: the LoRA A and B that are applied right after the base matvec.
///
/// Why: the base weights stream through the cache once per token, so by the time a linear's
/// adapter pair is read it has been evicted, and the small A x and B t products stall on
/// memory (6-9 GB/s against 20-45 GB/s from cache on the dev VM). The base matvec itself
/// reads at ~8 GB/s on one core that can read ~14 GB/s, so the adapter's lines can be fetched
/// in its shadow. A single prefetch burst before the matvec did nothing measurable (the
/// prefetch queue is short; most hints were dropped), and splitting the matvec into chunks
/// with prefetches between them cost more in per-call setup than it saved; hence prefetches
/// interleaved inside the row loop, a few lines per pair of rows.
///
/// Kernels without a side-aware row loop (portable, NEON, Cortex-M) ignore the stream. A
/// prefetch is only a hint: results are identical with or without one.
#[derive(Clone, Copy, Debug, Default)]
pub struct Side<'a> {
    parts: [&'a [u8]; SIDE_PARTS],
    n: usize,
}

impl<'a> Side<'a> {
    /// An empty stream: the matvec prefetches nothing beside its weights.
    pub const NONE: Side<'static> = Side {
        parts: [&[]; SIDE_PARTS],
        n: 0,
    };

    /// Append `bytes` to the stream. Returns `false` (and drops them) when the stream already
    /// holds [`SIDE_PARTS`] ranges; empty ranges are skipped.
    pub fn push(&mut self, bytes: &'a [u8]) -> bool {
        if bytes.is_empty() {
            return true;
        }
        let Some(p) = self.parts.get_mut(self.n) else {
            return false;
        };
        *p = bytes;
        self.n += 1;
        true
    }

    /// True if there is nothing to prefetch.
    pub const fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Cache lines in the stream (64-byte steps from the start of each range).
    pub fn lines(&self) -> usize {
        self.parts
            .iter()
            .take(self.n)
            .map(|p| p.len().div_ceil(LINE))
            .sum()
    }

    /// Lines `lo..hi` of the stream (counted as [`Side::lines`] does) as a stream of its own.
    fn lines_range(&self, lo: usize, hi: usize) -> Side<'a> {
        let mut out = Side::default();
        let mut base = 0;
        for p in self.parts.iter().take(self.n) {
            let nl = p.len().div_ceil(LINE);
            let a = lo.max(base) - base;
            let b = hi.min(base + nl).saturating_sub(base);
            if a < b {
                if let Some(r) = p.get(a * LINE..(b * LINE).min(p.len())) {
                    out.push(r);
                }
            }
            base += nl;
        }
        out
    }

    /// The share of the stream that rows `r0..r0 + len` of an `n`-row matvec prefetch.
    pub fn share(&self, r0: usize, len: usize, n: usize) -> Side<'a> {
        if self.n == 0 || n == 0 || (r0 == 0 && len >= n) {
            return *self;
        }
        let l = self.lines() as u64;
        let at = |r: usize| (l * r.min(n) as u64 / n as u64) as usize;
        self.lines_range(at(r0), at(r0 + len))
    }

    /// Walk the stream's lines over `steps` steps of a row loop.
    pub fn cursor(&self, steps: usize) -> SideCursor<'a> {
        SideCursor {
            side: *self,
            part: 0,
            off: 0,
            issued: 0,
            lines: self.lines(),
            steps: steps.max(1),
            credit: 0,
        }
    }
}

/// A [`Side`] stream being walked by a row loop: after step `i` of `steps`, the first
/// `lines * (i + 1) / steps` lines have been handed out (all of them after the last step).
#[derive(Clone, Debug)]
pub struct SideCursor<'a> {
    side: Side<'a>,
    part: usize,
    off: usize,
    issued: usize,
    lines: usize,
    steps: usize,
    credit: usize,
}

impl SideCursor<'_> {
    /// Advance one step: `f` gets a reference to the first byte of each line now due (a byte
    /// inside one of the stream's ranges, so a prefetch of it stays inside valid memory).
    #[inline(always)]
    pub fn step(&mut self, mut f: impl FnMut(&u8)) {
        if self.issued >= self.lines {
            return;
        }
        // Bresenham instead of a division per step: `credit / steps` lines are due.
        self.credit += self.lines;
        while self.credit >= self.steps && self.issued < self.lines {
            self.credit -= self.steps;
            let Some(p) = self.side.parts.get(self.part) else {
                self.issued = self.lines;
                return;
            };
            match p.get(self.off) {
                Some(b) => {
                    f(b);
                    self.off += LINE;
                    self.issued += 1;
                }
                None => {
                    // Next range (every range holds at least one line, so this ends).
                    self.part += 1;
                    self.off = 0;
                    self.credit += self.steps;
                }
            }
        }
    }
}

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

/// What to tell a user whose matrix has a type this build cannot run.
fn unsupported_what(ty: GgmlType) -> &'static str {
    match ty.feature() {
        Some("quant-k") => {
            "K-quant matrix (Q2_K..Q6_K), but this build lacks cargo feature `quant-k`: rebuild with it"
        }
        Some("quant-q5") => {
            "Q5_0/Q5_1 matrix, but this build lacks cargo feature `quant-q5`: rebuild with it"
        }
        Some("quant-iq4") => {
            "IQ4_NL/IQ4_XS matrix, but this build lacks cargo feature `quant-iq4`: rebuild with it"
        }
        _ => match ty {
            GgmlType::Q8_1 | GgmlType::Q8_K => {
                "matrix stored in an activation type (Q8_1/Q8_K), which no weight uses: re-quantise the model"
            }
            _ => {
                "matrix type edgelora does not run (it runs F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, IQ4_NL, IQ4_XS): re-quantise the model"
            }
        },
    }
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
            return Err(Error::new(
                ErrorKind::UnsupportedTensorType,
                unsupported_what(ty),
            ));
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

// ---------------------------------------------------------------------------------------------
// The fast path: instruction sets, kernel tables, the dispatcher.
// ---------------------------------------------------------------------------------------------

/// An instruction set that has a kernel table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Scalar Rust, for every target.
    Portable,
    /// x86_64 AVX2 + FMA + F16C.
    Avx2,
    /// x86_64 AVX-512 F/BW/VL with VNNI (`vpdpbusd`) and VBMI (`vpermt2b`), plus
    /// AVX2/FMA/F16C.
    Avx512,
    /// aarch64 Advanced SIMD.
    Neon,
    /// aarch64 Advanced SIMD with the dot-product extension (`sdot`; Armv8.4-A, optional
    /// from 8.2: Cortex-A55/A76 and later, Neoverse, Apple M1 and later).
    NeonDot,
    /// Cortex-M DSP extension (`SMLAD`/`SXTB16`), compiled in by the `cortex-m-dsp` feature.
    Dsp,
    /// Cortex-M55/M85 Helium (M-profile Vector Extension: `VLDRB`, `VMLADAVA`), compiled in by
    /// the `cortex-m-mve` feature (build with `-C target-cpu=cortex-m55`).
    Mve,
}

impl Isa {
    /// Every ISA, slowest first.
    pub const ALL: [Isa; 7] = [
        Isa::Portable,
        Isa::Avx2,
        Isa::Avx512,
        Isa::Neon,
        Isa::NeonDot,
        Isa::Dsp,
        Isa::Mve,
    ];

    const fn index(self) -> usize {
        match self {
            Isa::Portable => 0,
            Isa::Avx2 => 1,
            Isa::Avx512 => 2,
            Isa::Neon => 3,
            Isa::NeonDot => 4,
            Isa::Dsp => 5,
            Isa::Mve => 6,
        }
    }

    /// Lower-case name (`"avx512"`), as accepted by [`Isa::from_name`] and `EDGELORA_ISA`.
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
            Isa::NeonDot => "neon-dotprod",
            Isa::Dsp => "dsp",
            Isa::Mve => "mve",
        }
    }

    /// Parse a name from [`Isa::name`], case-insensitively.
    pub fn from_name(s: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s))
    }

    /// This ISA's kernel if this CPU runs it (probed once, then cached).
    pub fn kernel(self) -> Option<&'static Kernel> {
        probe();
        let p = AVAILABLE[self.index()].load(Ordering::Acquire);
        // SAFETY: AVAILABLE only ever holds null or a pointer taken from a `&'static Kernel`
        // (see `probe`), so a non-null value is valid for 'static and never mutated.
        unsafe { p.as_ref() }
    }
}

/// `y[r] = dot(w row r, x)` for quantised rows: `w` holds rows of `bpr` blocks, `x` at least
/// `bpr` blocks. Callers ([`Kernel`]'s methods) guarantee `bpr > 0`, `x.len() >= bpr` and
/// `w.len() >= y.len() * bpr`.
pub(crate) type QRowsFn<W, A> = fn(w: &[W], bpr: usize, x: &[A], y: &mut [f32]);
/// As [`QRowsFn`], also prefetching the [`Side`] stream a share at a time inside the row loop.
pub(crate) type QRowsSideFn<W, A> = fn(w: &[W], bpr: usize, x: &[A], y: &mut [f32], side: Side<'_>);
/// The side-stream-aware quantised row kernels of an instruction set.
#[derive(Clone, Copy)]
pub(crate) struct SideRows {
    pub(crate) q4_0: QRowsSideFn<BlockQ4_0, BlockQ8_0>,
    pub(crate) q4_1: QRowsSideFn<BlockQ4_1, BlockQ8_1>,
    pub(crate) q8_0: QRowsSideFn<BlockQ8_0, BlockQ8_0>,
}
/// As [`QRowsFn`] for little-endian F16/BF16/F32 rows of `cols` elements against f32 `x`.
pub(crate) type FRowsFn = fn(w: &[u8], cols: usize, x: &[f32], y: &mut [f32]);
/// `y[o] += s * dot(w row o, t)` for little-endian F16/BF16/F32 rows of `r` elements: the
/// LoRA B update, whose rows are only `r` (the rank) values long, so kernels compute several
/// rows per pass and reduce them together instead of paying a horizontal sum per row.
/// Callers ([`Kernel::matvec_float_add`]) guarantee `r > 0`, `t.len() == r` and
/// `w.len() == y.len() * r * element bytes`.
pub(crate) type FAddRowsFn = fn(w: &[u8], r: usize, t: &[f32], s: f32, y: &mut [f32]);
/// As [`FAddRowsFn`] for Q8_0 rows of `bpr` blocks (`r = 32 * bpr`), with `t` kept in f32:
/// `y[o] += s * sum_b d_b * sum_k q[o, 32 b + k] * t[32 b + k]`. Callers
/// ([`Kernel::matvec_q8_0_add`]) guarantee `bpr > 0`, `t.len() == 32 * bpr` and
/// `w.len() == y.len() * bpr`.
pub(crate) type Q8AddRowsFn = fn(w: &[BlockQ8_0], bpr: usize, t: &[f32], s: f32, y: &mut [f32]);
/// A blocked matmul (see [`Kernel::matmul_q4_1`]): `y[c * rows + r] = dot(w row r, x column
/// c)`, or `false` if it does not take the shape. `k` is the table it was reached through.
pub(crate) type MatmulFn<W, A> =
    fn(k: &Kernel, w: &[W], bpr: usize, rows: usize, x: &[A], y: &mut [f32]) -> bool;
/// A blocked matmul and the columns one of its passes takes.
pub(crate) type Blocked<W, A> = Option<(MatmulFn<W, A>, usize)>;
/// A batched float product over a chunk of columns (see [`Kernel::matmul_float`]), or
/// `false` if it declines the shape.
pub(crate) type MatmulFloatFn = fn(
    k: &Kernel,
    ty: GgmlType,
    w: &[u8],
    cols: usize,
    rows: usize,
    x: &[f32],
    y: &mut [f32],
) -> bool;
/// A batched LoRA B update over a chunk of columns (see [`Kernel::matmul_float_add`]).
pub(crate) type MatmulFloatAddFn = fn(
    k: &Kernel,
    ty: GgmlType,
    w: &[u8],
    r: usize,
    rows: usize,
    t: &[f32],
    s: f32,
    y: &mut [f32],
) -> bool;
/// A batched Q8_0 LoRA B update over a chunk of columns (see [`Kernel::matmul_q8_0_add`]).
pub(crate) type MatmulQ8AddFn = fn(
    k: &Kernel,
    w: &[BlockQ8_0],
    bpr: usize,
    rows: usize,
    t: &[f32],
    s: f32,
    y: &mut [f32],
) -> bool;
/// Quantise `x` (a whole number of blocks) into `y`.
pub(crate) type QuantFn<A> = fn(x: &[f32], y: &mut [A]);

/// One instruction set's entry points. Only its module's `detect` creates one, after checking
/// that the CPU has the instructions; that is what makes calling its entries safe. Crate
/// invariant: a `Kernel` whose `isa` is X is only ever constructed by X's own module, so the
/// `isa` field is itself proof that X runs here (the blocked matmuls rely on it).
#[derive(Clone, Copy)]
pub struct Kernel {
    pub(crate) isa: Isa,
    pub(crate) q4_0: QRowsFn<BlockQ4_0, BlockQ8_0>,
    pub(crate) q4_1: QRowsFn<BlockQ4_1, BlockQ8_1>,
    pub(crate) q8_0: QRowsFn<BlockQ8_0, BlockQ8_0>,
    pub(crate) f16: FRowsFn,
    pub(crate) bf16: FRowsFn,
    pub(crate) f32: FRowsFn,
    pub(crate) f16_add: FAddRowsFn,
    pub(crate) bf16_add: FAddRowsFn,
    pub(crate) f32_add: FAddRowsFn,
    pub(crate) q8_0_add: Q8AddRowsFn,
    pub(crate) quantize_q8_0: QuantFn<BlockQ8_0>,
    pub(crate) quantize_q8_1: QuantFn<BlockQ8_1>,
    /// `g = silu(g) * u` elementwise, bit-identical to [`reference::swiglu`] on every table.
    pub(crate) swiglu: fn(g: &mut [f32], u: &[f32]),
    /// `x = e^(x - m)` elementwise, bit-identical to [`reference::exp_shifted`] on every table.
    pub(crate) exp_shifted: fn(x: &mut [f32], m: f32),
    /// Attention scores over cached rows, bit-identical to [`attn::scores`] on every table.
    pub(crate) attn_scores: attn::ScoresFn,
    /// Attention's weighted sum of cached rows, bit-identical to [`attn::wsum`] on every table.
    pub(crate) attn_wsum: attn::WsumFn,
    /// `g = gelu_tanh(g) * u` elementwise, bit-identical to [`reference::geglu`] on every table.
    #[cfg(feature = "arch-gemma")]
    pub(crate) geglu: fn(g: &mut [f32], u: &[f32]),
    /// Q8_K activations (K-quant and IQ4_XS dots).
    #[cfg(any(feature = "quant-k", feature = "quant-iq4"))]
    pub(crate) quantize_q8_k: QuantFn<crate::quant::BlockQ8_K>,
    /// Row kernels of the types behind features (see `kernels/types.rs`).
    #[cfg(feature = "quant-q5")]
    pub(crate) q5_0: QRowsFn<crate::quant::BlockQ5_0, BlockQ8_0>,
    #[cfg(feature = "quant-q5")]
    pub(crate) q5_1: QRowsFn<crate::quant::BlockQ5_1, BlockQ8_1>,
    #[cfg(feature = "quant-k")]
    pub(crate) q2_k: QRowsFn<crate::quant::BlockQ2_K, crate::quant::BlockQ8_K>,
    #[cfg(feature = "quant-k")]
    pub(crate) q3_k: QRowsFn<crate::quant::BlockQ3_K, crate::quant::BlockQ8_K>,
    #[cfg(feature = "quant-k")]
    pub(crate) q4_k: QRowsFn<crate::quant::BlockQ4_K, crate::quant::BlockQ8_K>,
    #[cfg(feature = "quant-k")]
    pub(crate) q5_k: QRowsFn<crate::quant::BlockQ5_K, crate::quant::BlockQ8_K>,
    #[cfg(feature = "quant-k")]
    pub(crate) q6_k: QRowsFn<crate::quant::BlockQ6_K, crate::quant::BlockQ8_K>,
    #[cfg(feature = "quant-iq4")]
    pub(crate) iq4_nl: QRowsFn<crate::quant::BlockIQ4_NL, BlockQ8_0>,
    #[cfg(feature = "quant-iq4")]
    pub(crate) iq4_xs: QRowsFn<crate::quant::BlockIQ4_XS, crate::quant::BlockQ8_K>,
    /// Row kernels that prefetch a [`Side`] stream, where the ISA has them.
    pub(crate) side: Option<SideRows>,
    /// Blocked prompt-batch matmuls, where the ISA has them (each column bit-identical to
    /// the same table's matvec); `None` runs the matvec per column.
    pub(crate) mm_q4_0: Blocked<BlockQ4_0, BlockQ8_0>,
    /// As `mm_q4_0` for Q4_1.
    pub(crate) mm_q4_1: Blocked<BlockQ4_1, BlockQ8_1>,
    /// As `mm_q4_0` for Q8_0.
    pub(crate) mm_q8_0: Blocked<BlockQ8_0, BlockQ8_0>,
    /// As `mm_q4_0` for Q5_0.
    #[cfg(feature = "quant-q5")]
    pub(crate) mm_q5_0: Blocked<crate::quant::BlockQ5_0, BlockQ8_0>,
    /// As `mm_q4_0` for Q5_1.
    #[cfg(feature = "quant-q5")]
    pub(crate) mm_q5_1: Blocked<crate::quant::BlockQ5_1, BlockQ8_1>,
    /// As `mm_q4_0` for Q4_K.
    #[cfg(feature = "quant-k")]
    pub(crate) mm_q4_k: Blocked<crate::quant::BlockQ4_K, crate::quant::BlockQ8_K>,
    /// As `mm_q4_0` for Q6_K.
    #[cfg(feature = "quant-k")]
    pub(crate) mm_q6_k: Blocked<crate::quant::BlockQ6_K, crate::quant::BlockQ8_K>,
    /// Batched float product (LoRA A, float base weights) sharing conversions across columns.
    pub(crate) mm_float: Option<MatmulFloatFn>,
    /// Batched LoRA B update for F16/BF16/F32 B.
    pub(crate) mm_float_add: Option<MatmulFloatAddFn>,
    /// Batched LoRA B update for Q8_0 B.
    pub(crate) mm_q8_0_add: Option<MatmulQ8AddFn>,
}

impl core::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Kernel").field("isa", &self.isa).finish()
    }
}

/// Clamp a quantised matvec to what its slices hold: returns the rows that can be computed.
fn q_rows<W, A>(w: &[W], bpr: usize, x: &[A], y: &mut [f32]) -> usize {
    if bpr == 0 || x.len() < bpr {
        y.fill(0.0);
        return 0;
    }
    y.len().min(w.len() / bpr)
}

impl Kernel {
    /// The instruction set this table runs.
    pub const fn isa(&self) -> Isa {
        self.isa
    }

    fn mark(&self) {
        let f = &RAN[self.isa.index()];
        // A load first keeps the steady state read-only (no cache-line ping-pong between threads).
        if !f.load(Ordering::Relaxed) {
            f.store(true, Ordering::Relaxed);
        }
    }

    /// SwiGLU's elementwise step `g[i] = silu(g[i]) * u[i]` over `min(g.len(), u.len())`
    /// elements: bit-identical to [`reference::swiglu`] on every table (AVX-512 runs
    /// `libm::expf`'s operations on sixteen lanes). Never panics.
    pub fn swiglu(&self, g: &mut [f32], u: &[f32]) {
        self.mark();
        (self.swiglu)(g, u);
    }

    /// Softmax's exponentials `x[i] = e^(x[i] - m)`: bit-identical to
    /// [`reference::exp_shifted`] (`libm::expf`) on every table. Never panics.
    pub fn exp_shifted(&self, x: &mut [f32], m: f32) {
        self.mark();
        (self.exp_shifted)(x, m);
    }

    /// GeGLU's elementwise step `g[i] = gelu_tanh(g[i]) * u[i]` (Gemma), as
    /// [`Kernel::swiglu`]: bit-identical to [`reference::geglu`] on every table. Never panics.
    #[cfg(feature = "arch-gemma")]
    pub fn geglu(&self, g: &mut [f32], u: &[f32]) {
        self.mark();
        (self.geglu)(g, u);
    }

    /// `y[r] = dot(w row r, x)` for rows of `bpr` blocks of any [`Runnable`] type against its
    /// activation format: the one matvec driver (rows split across threads), running this
    /// table's row kernel for `T`.
    ///
    /// `w` holds `y.len()` rows of `bpr` blocks (rows it lacks leave `y` untouched), `x` holds
    /// `bpr` blocks (if fewer, or `bpr == 0`, `y` is zeroed). Activation values must lie in
    /// `-127..=127`, as the quantisers produce. Never panics.
    pub fn matvec_q<T: Runnable>(&self, w: &[T], bpr: usize, x: &[T::Act], y: &mut [f32]) {
        let n = q_rows(w, bpr, x, y);
        if n == 0 {
            return;
        }
        self.mark();
        rows_par(T::rows(self), &w[..n * bpr], bpr, &x[..bpr], &mut y[..n]);
    }

    /// As [`Kernel::matvec_q`], prefetching `side` (see [`Side`]) as the rows go by. Results
    /// are identical to [`Kernel::matvec_q`]; tables without a side-aware loop for `T`
    /// ignore `side`.
    pub fn matvec_q_side<T: Runnable>(
        &self,
        w: &[T],
        bpr: usize,
        x: &[T::Act],
        y: &mut [f32],
        side: Side<'_>,
    ) {
        let n = q_rows(w, bpr, x, y);
        if n == 0 {
            return;
        }
        self.mark();
        let (w, x, y) = (&w[..n * bpr], &x[..bpr], &mut y[..n]);
        match T::rows_side(self).filter(|_| cfg!(target_arch = "x86_64") && !side.is_empty()) {
            Some(f) => rows_par_side(f, w, bpr, x, y, side),
            None => rows_par(T::rows(self), w, bpr, x, y),
        }
    }

    /// `y[r] = sum_blocks d_w d_x sum(q_w - 8) q_x` for Q4_0 rows ([`Kernel::matvec_q`]).
    pub fn matvec_q4_0(&self, w: &[BlockQ4_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]) {
        self.matvec_q(w, bpr, x, y);
    }

    /// As [`Kernel::matvec_q4_0`] for Q4_1 rows against Q8_1 activations
    /// (`d_w d_x sum(q_w q_x) + m_w s_x` per block).
    pub fn matvec_q4_1(&self, w: &[BlockQ4_1], bpr: usize, x: &[BlockQ8_1], y: &mut [f32]) {
        self.matvec_q(w, bpr, x, y);
    }

    /// As [`Kernel::matvec_q4_0`] for Q8_0 rows against Q8_0 activations.
    pub fn matvec_q8_0(&self, w: &[BlockQ8_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]) {
        self.matvec_q(w, bpr, x, y);
    }

    /// As [`Kernel::matvec_q4_0`], prefetching `side` ([`Kernel::matvec_q_side`]).
    pub fn matvec_q4_0_side(
        &self,
        w: &[BlockQ4_0],
        bpr: usize,
        x: &[BlockQ8_0],
        y: &mut [f32],
        side: Side<'_>,
    ) {
        self.matvec_q_side(w, bpr, x, y, side);
    }

    /// As [`Kernel::matvec_q4_0_side`] for Q4_1 rows against Q8_1 activations.
    pub fn matvec_q4_1_side(
        &self,
        w: &[BlockQ4_1],
        bpr: usize,
        x: &[BlockQ8_1],
        y: &mut [f32],
        side: Side<'_>,
    ) {
        self.matvec_q_side(w, bpr, x, y, side);
    }

    /// As [`Kernel::matvec_q4_0_side`] for Q8_0 rows against Q8_0 activations.
    pub fn matvec_q8_0_side(
        &self,
        w: &[BlockQ8_0],
        bpr: usize,
        x: &[BlockQ8_0],
        y: &mut [f32],
        side: Side<'_>,
    ) {
        self.matvec_q_side(w, bpr, x, y, side);
    }

    /// `y = W x` for little-endian F16, BF16 or F32 rows of `cols` elements (`ty` says which;
    /// any other type zeroes `y`). `x` must hold `cols` values (else `y` is zeroed); rows
    /// missing from `w` leave `y` untouched.
    pub fn matvec_float(&self, ty: GgmlType, w: &[u8], cols: usize, x: &[f32], y: &mut [f32]) {
        let (f, es) = match ty {
            GgmlType::F16 => (self.f16, 2),
            GgmlType::BF16 => (self.bf16, 2),
            GgmlType::F32 => (self.f32, 4),
            _ => {
                y.fill(0.0);
                return;
            }
        };
        if cols == 0 || x.len() < cols {
            y.fill(0.0);
            return;
        }
        let n = y.len().min(w.len() / (cols * es));
        if n == 0 {
            return;
        }
        self.mark();
        let (w, x) = (&w[..n * cols * es], &x[..cols]);
        par(&mut y[..n], 1, ROW_ALIGN, |r0, ys| {
            if let Some(wc) = w.get(r0 * cols * es..(r0 + ys.len()) * cols * es) {
                f(wc, cols, x, ys);
            }
        });
    }

    /// `y += s * W x` for little-endian F16, BF16 or F32 rows of `cols` elements (`ty` says
    /// which): the LoRA B update (`cols` is the rank), fused so that no temporary holds `W x`.
    /// Any other type, `cols == 0` or `x` shorter than `cols` leave `y` untouched, as do rows
    /// missing from `w`. Never panics.
    pub fn matvec_float_add(
        &self,
        ty: GgmlType,
        w: &[u8],
        cols: usize,
        x: &[f32],
        s: f32,
        y: &mut [f32],
    ) {
        let (f, es) = match ty {
            GgmlType::F16 => (self.f16_add, 2),
            GgmlType::BF16 => (self.bf16_add, 2),
            GgmlType::F32 => (self.f32_add, 4),
            _ => return,
        };
        if cols == 0 || x.len() < cols {
            return;
        }
        let rb = cols * es;
        let n = y.len().min(w.len() / rb);
        if n == 0 {
            return;
        }
        self.mark();
        let (w, x) = (&w[..n * rb], &x[..cols]);
        par(&mut y[..n], 1, ROW_ALIGN, |r0, ys| {
            if let Some(wc) = w.get(r0 * rb..(r0 + ys.len()) * rb) {
                f(wc, cols, x, s, ys);
            }
        });
    }

    /// `y += s * W t` for Q8_0 rows of `bpr` blocks against f32 `t` (`32 * bpr` values): the
    /// LoRA B update for a Q8_0 B. `t` is not quantised (B's rows are only r values long, and
    /// `t = A x` is small and hot, so keeping it in f32 costs nothing and loses no precision);
    /// several rows are computed per pass as in [`Kernel::matvec_float_add`]. `bpr == 0`, `t`
    /// shorter than `32 * bpr`, or rows missing from `w` leave `y` (or those rows) untouched.
    /// Never panics.
    pub fn matvec_q8_0_add(&self, w: &[BlockQ8_0], bpr: usize, t: &[f32], s: f32, y: &mut [f32]) {
        if bpr == 0 || t.len() < bpr * QK {
            return;
        }
        let n = y.len().min(w.len() / bpr);
        if n == 0 {
            return;
        }
        self.mark();
        let f = self.q8_0_add;
        let (w, t) = (&w[..n * bpr], &t[..bpr * QK]);
        par(&mut y[..n], 1, ROW_ALIGN, |r0, ys| {
            if let Some(wc) = w.get(r0 * bpr..(r0 + ys.len()) * bpr) {
                f(wc, bpr, t, s, ys);
            }
        });
    }

    /// Dot of one Q4_0 row with Q8_0 activations (the shorter length counts).
    pub fn dot_q4_0_q8_0(&self, w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
        let mut y = [0.0];
        let n = w.len().min(x.len());
        self.matvec_q4_0(&w[..n], n, &x[..n], &mut y);
        y[0]
    }

    /// Dot of one Q4_1 row with Q8_1 activations (the shorter length counts).
    pub fn dot_q4_1_q8_1(&self, w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
        let mut y = [0.0];
        let n = w.len().min(x.len());
        self.matvec_q4_1(&w[..n], n, &x[..n], &mut y);
        y[0]
    }

    /// Dot of one Q8_0 row with Q8_0 activations (the shorter length counts).
    pub fn dot_q8_0_q8_0(&self, w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
        let mut y = [0.0];
        let n = w.len().min(x.len());
        self.matvec_q8_0(&w[..n], n, &x[..n], &mut y);
        y[0]
    }

    /// [`Kernel::matmul_q4_1`] for any [`Runnable`] type: blocked where this table has a
    /// blocked kernel for `T`, else the row kernel per column. Every column is bit-identical
    /// to [`Kernel::matvec_q`] on it. Never panics.
    pub fn matmul_q<T: Runnable>(
        &self,
        w: &[T],
        bpr: usize,
        rows: usize,
        x: &[T::Act],
        y: &mut [f32],
    ) {
        self.matmul(T::rows(self), T::blocked(self), w, bpr, rows, x, y);
    }

    /// Quantise `x` to the activation format `A` (whole blocks only: `min(x.len() /
    /// A::BLOCK_LEN, y.len())` blocks are written), bit-exact with ggml's reference quantiser
    /// for finite input.
    pub fn quantize<A: ActRunnable>(&self, x: &[f32], y: &mut [A]) {
        let n = (x.len() / A::BLOCK_LEN).min(y.len());
        self.mark();
        (A::quantizer(self))(&x[..n * A::BLOCK_LEN], &mut y[..n]);
    }

    /// Blocked `Y = W X` for a batch of activations (prompt tokens): `x` holds `n` columns of
    /// `bpr` blocks each (`n = x.len() / bpr`), `y` receives column `c` at
    /// `y[c * rows .. (c + 1) * rows]`. Kernels with a blocked implementation (AVX-512, AVX2)
    /// load and unpack each weight block once for several columns; the others run one matvec
    /// per column. Every column is bit-identical to [`Kernel::matvec_q4_1`] on it. Columns or
    /// rows that do not fit the slices are skipped. Never panics.
    pub fn matmul_q4_1(
        &self,
        w: &[BlockQ4_1],
        bpr: usize,
        rows: usize,
        x: &[BlockQ8_1],
        y: &mut [f32],
    ) {
        self.matmul_q(w, bpr, rows, x, y);
    }

    /// As [`Kernel::matmul_q4_1`] for Q8_0 weights and activations.
    pub fn matmul_q8_0(
        &self,
        w: &[BlockQ8_0],
        bpr: usize,
        rows: usize,
        x: &[BlockQ8_0],
        y: &mut [f32],
    ) {
        self.matmul_q(w, bpr, rows, x, y);
    }

    /// As [`Kernel::matmul_q4_1`] for Q4_0 weights and Q8_0 activations (blocked on AVX2; the
    /// AVX-512 table has no blocked Q4_0 and runs its matvec per column, so that prefill stays
    /// bit-identical to its decode).
    pub fn matmul_q4_0(
        &self,
        w: &[BlockQ4_0],
        bpr: usize,
        rows: usize,
        x: &[BlockQ8_0],
        y: &mut [f32],
    ) {
        self.matmul_q(w, bpr, rows, x, y);
    }

    /// The shared body of the matmuls: with a `blocked` kernel, columns (tokens) split across
    /// threads in chunks of whole passes where there are enough ([`col_align`]; each thread
    /// reads all of `w`, which at these shapes stays in L2, and writes its own contiguous
    /// columns of `y`), and a shape the blocked kernel does not take runs the row kernel
    /// `rows_fn` per column; without one, a threaded matvec per column.
    #[allow(clippy::too_many_arguments)]
    fn matmul<W: Sync, A: Sync>(
        &self,
        rows_fn: QRowsFn<W, A>,
        blocked: Blocked<W, A>,
        w: &[W],
        bpr: usize,
        rows: usize,
        x: &[A],
        y: &mut [f32],
    ) {
        if bpr == 0 || rows == 0 || w.len() / bpr < rows {
            return;
        }
        let n = (x.len() / bpr).min(y.len() / rows);
        let (w, x, y) = (&w[..rows * bpr], &x[..n * bpr], &mut y[..n * rows]);
        if n == 0 {
            return;
        }
        self.mark();
        match blocked {
            Some((mm, block)) => par(y, rows, col_align(n, block), |c0, yc| {
                let nc = yc.len() / rows;
                let Some(xc) = x.get(c0 * bpr..(c0 + nc) * bpr) else {
                    return;
                };
                if !mm(self, w, bpr, rows, xc, yc) {
                    for (xv, yv) in xc.chunks_exact(bpr).zip(yc.chunks_exact_mut(rows)) {
                        rows_fn(w, bpr, xv, yv);
                    }
                }
            }),
            None => {
                for (xc, yc) in x.chunks_exact(bpr).zip(y.chunks_exact_mut(rows)) {
                    rows_par(rows_fn, w, bpr, xc, yc);
                }
            }
        }
    }

    /// Blocked `Y = W X` for little-endian F16, BF16 or F32 rows of `cols` elements (`ty` says
    /// which; any other type leaves `y` untouched): `x` holds `n` vectors of `cols` values
    /// (`n = x.len() / cols`), `y` receives vector `c` at `y[c * rows .. (c + 1) * rows]`.
    /// Each output is bit-identical to [`Kernel::matvec_float`] of its vector. The AVX2 and
    /// AVX-512 tables convert each weight vector once for two vectors (the F16 row kernel is
    /// bound by conversions and loads, not by weight traffic); the others run
    /// [`Kernel::matvec_float`] per vector. Vectors or rows that do not fit the slices are
    /// skipped. Never panics.
    pub fn matmul_float(
        &self,
        ty: GgmlType,
        w: &[u8],
        cols: usize,
        rows: usize,
        x: &[f32],
        y: &mut [f32],
    ) {
        let es = match ty {
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::F32 => 4,
            _ => return,
        };
        if cols == 0 || rows == 0 || w.len() / (cols * es) < rows {
            return;
        }
        let n = (x.len() / cols).min(y.len() / rows);
        let (w, x, y) = (&w[..rows * cols * es], &x[..n * cols], &mut y[..n * rows]);
        let batched = self
            .mm_float
            .map(|f| move |xc: &[f32], yc: &mut [f32]| f(self, ty, w, cols, rows, xc, yc));
        self.batch_cols(x, cols, rows, y, batched, |xv, yv| {
            self.matvec_float(ty, w, cols, xv, yv)
        });
    }

    /// The shared body of the batched float/LoRA products: `x` holds columns of `len` values,
    /// `y` their outputs of `rows` values. With a `batched` kernel (x86-64 tables that have
    /// one) the columns are split across threads and each chunk runs it, or `one` per column
    /// where it declines the shape; without, `one` runs per column on this thread (it splits
    /// its own rows).
    fn batch_cols<B, O>(
        &self,
        x: &[f32],
        len: usize,
        rows: usize,
        y: &mut [f32],
        batched: Option<B>,
        one: O,
    ) where
        B: Fn(&[f32], &mut [f32]) -> bool + Sync,
        O: Fn(&[f32], &mut [f32]) + Sync,
    {
        if let Some(batched) = batched {
            self.mark();
            // Columns (tokens) split across threads, as the quantised matmuls do.
            par(y, rows, col_align(y.len() / rows, 2), |c0, yc| {
                let nc = yc.len() / rows;
                let Some(xc) = x.get(c0 * len..(c0 + nc) * len) else {
                    return;
                };
                if !batched(xc, yc) {
                    for (xv, yv) in xc.chunks_exact(len).zip(yc.chunks_exact_mut(rows)) {
                        one(xv, yv);
                    }
                }
            });
            return;
        }
        for (xv, yv) in x.chunks_exact(len).zip(y.chunks_exact_mut(rows)) {
            one(xv, yv);
        }
    }

    /// `Y += s W T` for a batch: the LoRA B update of a block of tokens. `w` holds `rows` rows
    /// of `r` little-endian F16, BF16 or F32 values (`ty` says which; any other type leaves
    /// `y` untouched), `t` holds `n` vectors of `r` values (`n = t.len() / r`) and `y` their
    /// `n` outputs of `rows` values, vector `c` at `y[c * rows ..]`. Each output is
    /// bit-identical to [`Kernel::matvec_float_add`] of its vector. The AVX2 and AVX-512
    /// tables transpose an r = 8 B once per batch (its one-vector kernel is bound by
    /// horizontal sums there); other ranks and tables run [`Kernel::matvec_float_add`] per
    /// vector. Vectors or rows that do not fit the slices are skipped. Never panics.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_float_add(
        &self,
        ty: GgmlType,
        w: &[u8],
        r: usize,
        rows: usize,
        t: &[f32],
        s: f32,
        y: &mut [f32],
    ) {
        let es = match ty {
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::F32 => 4,
            _ => return,
        };
        if r == 0 || rows == 0 || w.len() / (r * es) < rows {
            return;
        }
        let n = (t.len() / r).min(y.len() / rows);
        let (w, t, y) = (&w[..rows * r * es], &t[..n * r], &mut y[..n * rows]);
        let batched = self
            .mm_float_add
            .map(|f| move |tc: &[f32], yc: &mut [f32]| f(self, ty, w, r, rows, tc, s, yc));
        self.batch_cols(t, r, rows, y, batched, |tv, yv| {
            self.matvec_float_add(ty, w, r, tv, s, yv)
        });
    }

    /// As [`Kernel::matmul_float_add`] for Q8_0 rows of `bpr` blocks (`r = 32 * bpr`) against
    /// f32 `t`: [`Kernel::matvec_q8_0_add`] for a batch of vectors, bit-identical per vector.
    /// The AVX2 table unpacks each block's int8 values once per batch (the one-vector kernel
    /// spends most of its time unpacking); other tables (AVX-512 has its own Q8_0 add rows)
    /// run [`Kernel::matvec_q8_0_add`] per vector.
    pub fn matmul_q8_0_add(
        &self,
        w: &[BlockQ8_0],
        bpr: usize,
        rows: usize,
        t: &[f32],
        s: f32,
        y: &mut [f32],
    ) {
        let r = bpr * QK;
        if r == 0 || rows == 0 || w.len() / bpr < rows {
            return;
        }
        let n = (t.len() / r).min(y.len() / rows);
        let (w, t, y) = (&w[..rows * bpr], &t[..n * r], &mut y[..n * rows]);
        let batched = self
            .mm_q8_0_add
            .map(|f| move |tc: &[f32], yc: &mut [f32]| f(self, w, bpr, rows, tc, s, yc));
        self.batch_cols(t, r, rows, y, batched, |tv, yv| {
            self.matvec_q8_0_add(w, bpr, tv, s, yv)
        });
    }

    /// Quantise `x` to Q8_0, bit-exact with ggml's `quantize_row_q8_0_ref` for finite input.
    /// Whole blocks only: `min(x.len() / 32, y.len())` blocks are written.
    pub fn quantize_q8_0(&self, x: &[f32], y: &mut [BlockQ8_0]) {
        let n = (x.len() / QK).min(y.len());
        self.mark();
        (self.quantize_q8_0)(&x[..n * QK], &mut y[..n]);
    }

    /// Quantise `x` to Q8_1, bit-exact with ggml's `quantize_row_q8_1_ref` for finite input.
    pub fn quantize_q8_1(&self, x: &[f32], y: &mut [BlockQ8_1]) {
        let n = (x.len() / QK).min(y.len());
        self.mark();
        (self.quantize_q8_1)(&x[..n * QK], &mut y[..n]);
    }
}

/// Attention's score dot `q . k` in the one order every table uses (sixteen lanes, then a
/// pairwise fold; see the `attn` module): what the model's attention computes per key before
/// the scale, for code that re-traces the forward pass (the CUDA crate's CPU trace).
pub fn attention_dot(q: &[f32], k: &[f32]) -> f32 {
    let n = q.len().min(k.len());
    let mut out = [0.0f32];
    if attn::scores(&q[..n], attn::Elems::F32(&k[..n]), n, 1.0, &mut out) {
        out[0]
    } else {
        0.0
    }
}

/// Per ISA: its kernel if this CPU runs it, else null. Filled once by `probe`.
static AVAILABLE: [AtomicPtr<Kernel>; Isa::ALL.len()] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; Isa::ALL.len()];
static PROBED: AtomicBool = AtomicBool::new(false);
/// The kernel [`active`] hands out; null until first use.
static ACTIVE: AtomicPtr<Kernel> = AtomicPtr::new(core::ptr::null_mut());
/// Per ISA: has one of its kernels executed since the last [`reset_ran`]?
static RAN: [AtomicBool; Isa::ALL.len()] = [const { AtomicBool::new(false) }; Isa::ALL.len()];

fn detect(isa: Isa) -> Option<&'static Kernel> {
    // Miri interprets neither `cpuid`/`xgetbv` (inline assembly) nor most SIMD intrinsics, so
    // under Miri only the portable kernel exists and every path runs scalar Rust
    // (`scripts/miri.sh`).
    #[cfg(miri)]
    if isa != Isa::Portable {
        return None;
    }
    match isa {
        // A DSP-only or MVE-only image links no portable table (`cortex-m-dsp-only`,
        // `cortex-m-mve-only`).
        #[cfg(all(
            target_arch = "arm",
            any(feature = "cortex-m-dsp-only", feature = "cortex-m-mve-only")
        ))]
        Isa::Portable => None,
        #[cfg(not(all(
            target_arch = "arm",
            any(feature = "cortex-m-dsp-only", feature = "cortex-m-mve-only")
        )))]
        Isa::Portable => portable::detect(),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86_64::avx2::detect(),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86_64::avx512::detect(),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => aarch64::neon::detect(),
        #[cfg(target_arch = "aarch64")]
        Isa::NeonDot => aarch64::neon::detect_dotprod(),
        // Compile-time choice on Cortex-M: present if and only if the feature built it.
        #[cfg(all(target_arch = "arm", feature = "cortex-m-dsp"))]
        Isa::Dsp => arm::dsp::detect(),
        #[cfg(all(target_arch = "arm", feature = "cortex-m-mve"))]
        Isa::Mve => arm::mve::detect(),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// Probe every ISA once. Racing first calls both probe and store identical values.
fn probe() {
    if PROBED.load(Ordering::Acquire) {
        return;
    }
    for isa in Isa::ALL {
        if let Some(k) = detect(isa) {
            AVAILABLE[isa.index()].store((k as *const Kernel).cast_mut(), Ordering::Release);
        }
    }
    PROBED.store(true, Ordering::Release);
}

/// The fastest kernel this CPU runs (AVX-512 > AVX2 > NEON dotprod > NEON > MVE > DSP >
/// portable).
pub fn best() -> &'static Kernel {
    [
        Isa::Avx512,
        Isa::Avx2,
        Isa::NeonDot,
        Isa::Neon,
        Isa::Mve,
        Isa::Dsp,
    ]
    .into_iter()
    .find_map(Isa::kernel)
    .unwrap_or(fallback())
}

/// The table when no SIMD one is available: portable, or the one table of a DSP-only or
/// MVE-only image.
fn fallback() -> &'static Kernel {
    #[cfg(all(target_arch = "arm", feature = "cortex-m-mve-only"))]
    return &arm::mve::KERNEL;
    #[cfg(all(
        target_arch = "arm",
        feature = "cortex-m-dsp-only",
        not(feature = "cortex-m-mve-only")
    ))]
    return &arm::dsp::KERNEL;
    #[cfg(not(all(
        target_arch = "arm",
        any(feature = "cortex-m-dsp-only", feature = "cortex-m-mve-only")
    )))]
    &portable::KERNEL
}

/// The kernel the model uses: [`best`] unless [`force`] (or, under `std`, the environment
/// variable `EDGELORA_ISA=portable|avx2|avx512|neon|neon-dotprod|dsp|mve`, read on first use) chose another. An
/// `EDGELORA_ISA` naming an ISA this CPU lacks is ignored; tests that set it check
/// [`ran`] to catch that.
pub fn active() -> &'static Kernel {
    let p = ACTIVE.load(Ordering::Acquire);
    // SAFETY: ACTIVE only ever holds null or a pointer from a `&'static Kernel` (below and in
    // `force`).
    if let Some(k) = unsafe { p.as_ref() } {
        return k;
    }
    let k = from_env().unwrap_or_else(best);
    ACTIVE.store((k as *const Kernel).cast_mut(), Ordering::Release);
    k
}

#[cfg(feature = "std")]
fn from_env() -> Option<&'static Kernel> {
    let v = std::env::var("EDGELORA_ISA").ok()?;
    Isa::from_name(v.trim())?.kernel()
}

#[cfg(not(feature = "std"))]
fn from_env() -> Option<&'static Kernel> {
    None
}

/// Make [`active`] return `isa`'s kernel from now on (process-wide).
///
/// # Errors
/// [`ErrorKind::InvalidArgument`] if this CPU (or build) cannot run `isa`; the active
/// kernel is unchanged.
pub fn force(isa: Isa) -> Result<&'static Kernel> {
    let k = isa.kernel().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidArgument,
            "instruction set not available on this CPU",
        )
        .named(isa.name().as_bytes())
    })?;
    ACTIVE.store((k as *const Kernel).cast_mut(), Ordering::Release);
    Ok(k)
}

/// True if a kernel of `isa` has executed since the last [`reset_ran`] (any thread).
pub fn ran(isa: Isa) -> bool {
    RAN[isa.index()].load(Ordering::Relaxed)
}

/// Clear the record read by [`ran`].
pub fn reset_ran() {
    for f in &RAN {
        f.store(false, Ordering::Relaxed);
    }
}

/// Name of the ISA [`active`] returns.
pub fn active_isa_name() -> &'static str {
    active().isa.name()
}

// ---------------------------------------------------------------------------------------------
// Model-facing API: an activation quantised at most once per format, and a matvec over MatRef.
// ---------------------------------------------------------------------------------------------

/// Which path the model's linears take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KernelMode {
    /// SIMD kernels; activations quantised to Q8_0/Q8_1 for quantised weights (as llama.cpp).
    #[default]
    Fast,
    /// The scalar oracle with f32 activations ([`matvec`]): slowest, most accurate, the path
    /// parity tests against f32 frameworks use.
    Reference,
}
