//! Portable scalar kernels: the fast path for targets without a SIMD module (Cortex-M,
//! RISC-V, wasm) and the fallback everywhere.
//!
//! Same arithmetic as [`super::reference`] (integer block sums, one f32 scale multiply per
//! block, ggml's quantisers), but without the per-block dequantisation of the f32 path and
//! with the rows loop here, so the compiler can keep the activation in registers and
//! auto-vectorise the inner loops where the target allows.

#[cfg(any(feature = "quant-q5", feature = "quant-k", feature = "quant-iq4"))]
use super::types::rows_oracle;
use super::{Isa, Kernel};
use crate::quant::{f16_le, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};

/// The portable kernel table (always available).
pub static KERNEL: Kernel = Kernel {
    isa: Isa::Portable,
    q4_0: q4_0_rows,
    q4_1: q4_1_rows,
    q8_0: q8_0_rows,
    f16: f16_rows,
    bf16: bf16_rows,
    f32: f32_rows,
    f16_add: f16_add_rows,
    bf16_add: bf16_add_rows,
    f32_add: f32_add_rows,
    q8_0_add: q8_0_add_rows,
    quantize_q8_0: super::reference::quantize_row_q8_0,
    quantize_q8_1: super::reference::quantize_row_q8_1,
    side: None,
    #[cfg(any(feature = "quant-k", feature = "quant-iq4"))]
    quantize_q8_k: crate::quant::q8_k::quantize_row_q8_k,
    #[cfg(feature = "quant-q5")]
    q5_0: rows_oracle::<crate::quant::BlockQ5_0>,
    #[cfg(feature = "quant-q5")]
    q5_1: rows_oracle::<crate::quant::BlockQ5_1>,
    #[cfg(feature = "quant-k")]
    q2_k: rows_oracle::<crate::quant::BlockQ2_K>,
    #[cfg(feature = "quant-k")]
    q3_k: rows_oracle::<crate::quant::BlockQ3_K>,
    #[cfg(feature = "quant-k")]
    q4_k: rows_oracle::<crate::quant::BlockQ4_K>,
    #[cfg(feature = "quant-k")]
    q5_k: rows_oracle::<crate::quant::BlockQ5_K>,
    #[cfg(feature = "quant-k")]
    q6_k: rows_oracle::<crate::quant::BlockQ6_K>,
    #[cfg(feature = "quant-iq4")]
    iq4_nl: rows_oracle::<crate::quant::BlockIQ4_NL>,
    #[cfg(feature = "quant-iq4")]
    iq4_xs: rows_oracle::<crate::quant::BlockIQ4_XS>,
    swiglu: crate::kernels::reference::swiglu,
    exp_shifted: crate::kernels::reference::exp_shifted,
    attn_scores: crate::kernels::attn::scores,
    attn_wsum: crate::kernels::attn::wsum,
    #[cfg(feature = "arch-gemma")]
    geglu: crate::kernels::reference::geglu,
    mm_q4_0: None,
    mm_q4_1: None,
    mm_q8_0: None,
    #[cfg(feature = "quant-q5")]
    mm_q5_0: None,
    #[cfg(feature = "quant-q5")]
    mm_q5_1: None,
    #[cfg(feature = "quant-k")]
    mm_q4_k: None,
    #[cfg(feature = "quant-k")]
    mm_q6_k: None,
    mm_float: None,
    mm_float_add: None,
    mm_q8_0_add: None,
};

/// Always `Some`: scalar Rust runs everywhere.
pub fn detect() -> Option<&'static Kernel> {
    Some(&KERNEL)
}

#[inline]
fn i8s(b: u8) -> i32 {
    b as i8 as i32
}

fn dot_q4_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let (lo, hi) = b.qs.split_at(QK / 2);
        let mut s = 0i32;
        for ((&q, &l), &h) in a.qs.iter().zip(lo).zip(hi) {
            s += ((q & 0x0f) as i32 - 8) * i8s(l) + ((q >> 4) as i32 - 8) * i8s(h);
        }
        acc += s as f32 * (f16_le(a.d) * f16_le(b.d));
    }
    acc
}

fn dot_q4_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    let mut acc = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let (lo, hi) = b.qs.split_at(QK / 2);
        let mut s = 0i32;
        for ((&q, &l), &h) in a.qs.iter().zip(lo).zip(hi) {
            s += (q & 0x0f) as i32 * i8s(l) + (q >> 4) as i32 * i8s(h);
        }
        acc += s as f32 * (f16_le(a.d) * f16_le(b.d)) + f16_le(a.m) * f16_le(b.s);
    }
    acc
}

fn dot_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let s: i32 = a.qs.iter().zip(&b.qs).map(|(&p, &q)| i8s(p) * i8s(q)).sum();
        acc += s as f32 * (f16_le(a.d) * f16_le(b.d));
    }
    acc
}

fn q4_0_rows(w: &[BlockQ4_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]) {
    for (row, o) in w.chunks_exact(bpr).zip(y) {
        *o = dot_q4_0(row, x);
    }
}

fn q4_1_rows(w: &[BlockQ4_1], bpr: usize, x: &[BlockQ8_1], y: &mut [f32]) {
    for (row, o) in w.chunks_exact(bpr).zip(y) {
        *o = dot_q4_1(row, x);
    }
}

fn q8_0_rows(w: &[BlockQ8_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]) {
    for (row, o) in w.chunks_exact(bpr).zip(y) {
        *o = dot_q8_0(row, x);
    }
}

/// Eight partial sums so the compiler may vectorise; `conv` reads one element's bytes.
fn dot_float<const N: usize>(row: &[u8], x: &[f32], conv: impl Fn(&[u8]) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut rc = row.chunks_exact(8 * N);
    let mut xc = x.chunks_exact(8);
    for (r, xs) in (&mut rc).zip(&mut xc) {
        for ((a, e), &v) in acc.iter_mut().zip(r.chunks_exact(N)).zip(xs) {
            *a += conv(e) * v;
        }
    }
    let mut tail = 0.0f32;
    for (e, &v) in rc.remainder().chunks_exact(N).zip(xc.remainder()) {
        tail += conv(e) * v;
    }
    acc.iter().sum::<f32>() + tail
}

fn f16_rows(w: &[u8], cols: usize, x: &[f32], y: &mut [f32]) {
    for (row, o) in w.chunks_exact(cols * 2).zip(y) {
        *o = dot_float::<2>(row, x, |e| f16_le([e[0], e[1]]));
    }
}

/// `y[o] += s * dot(row o, t)` through the plain row kernel `rows` (rows of `r` elements of
/// `es` bytes), sixteen rows at a time via a stack buffer: the same arithmetic as the row
/// kernel plus one multiply-add, and no second copy of the dot product in flash (this table
/// is the Cortex-M one too).
fn add_via_rows(
    rows: fn(&[u8], usize, &[f32], &mut [f32]),
    es: usize,
    w: &[u8],
    r: usize,
    t: &[f32],
    s: f32,
    y: &mut [f32],
) {
    let mut buf = [0.0f32; 16];
    let step = (16 * r * es).max(1);
    for (wc, yc) in w.chunks(step).zip(y.chunks_mut(16)) {
        let n = yc.len().min(wc.len() / (r * es).max(1));
        let (b, yc) = (&mut buf[..n], &mut yc[..n]);
        rows(wc, r, t, b);
        for (o, v) in yc.iter_mut().zip(b.iter()) {
            *o += s * v;
        }
    }
}

pub(crate) fn f16_add_rows(w: &[u8], r: usize, t: &[f32], s: f32, y: &mut [f32]) {
    add_via_rows(f16_rows, 2, w, r, t, s, y);
}

pub(crate) fn bf16_add_rows(w: &[u8], r: usize, t: &[f32], s: f32, y: &mut [f32]) {
    add_via_rows(bf16_rows, 2, w, r, t, s, y);
}

pub(crate) fn f32_add_rows(w: &[u8], r: usize, t: &[f32], s: f32, y: &mut [f32]) {
    add_via_rows(f32_rows, 4, w, r, t, s, y);
}

fn bf16_rows(w: &[u8], cols: usize, x: &[f32], y: &mut [f32]) {
    for (row, o) in w.chunks_exact(cols * 2).zip(y) {
        *o = dot_float::<2>(row, x, |e| {
            f32::from_bits((u16::from_le_bytes([e[0], e[1]]) as u32) << 16)
        });
    }
}

fn f32_rows(w: &[u8], cols: usize, x: &[f32], y: &mut [f32]) {
    for (row, o) in w.chunks_exact(cols * 4).zip(y) {
        *o = dot_float::<4>(row, x, |e| f32::from_le_bytes([e[0], e[1], e[2], e[3]]));
    }
}

/// `y[o] += s * sum_b d_b * sum_k q_k t_k` for Q8_0 rows of `bpr` blocks against f32 `t` (the
/// LoRA B update for a Q8_0 B), one row at a time. Also the DSP entry: B is a few percent of
/// the bytes a decode step reads, so a scalar loop costs little there (NEON and x86 have
/// their own, several rows per pass).
fn q8_0_add_rows(w: &[BlockQ8_0], bpr: usize, t: &[f32], s: f32, y: &mut [f32]) {
    let (tb, _) = t.as_chunks::<QK>();
    for (row, o) in w.chunks_exact(bpr).zip(y) {
        let mut acc = 0.0f32;
        for (b, tc) in row.iter().zip(tb) {
            let mut sum = 0.0f32;
            for (&q, &tv) in b.qs.iter().zip(tc) {
                sum += i8s(q) as f32 * tv;
            }
            acc += f16_le(b.d) * sum;
        }
        *o += s * acc;
    }
}
