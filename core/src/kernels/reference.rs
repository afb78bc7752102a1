//! The scalar reference kernels: the oracle every optimised kernel is tested against.
//!
//! These follow ggml's reference C implementations (`quantize_row_*_ref`, `dequantize_row_*`,
//! the generic `ggml_vec_dot_*`) operation for operation, so their results match llama.cpp and
//! the `gguf` Python package bit for bit where those are deterministic. Keep this file simple:
//! plain loops, no SIMD, no cleverness. Slices of mismatched lengths are processed up to the
//! shorter one (callers validate shapes once at load time), so nothing here can panic.

use super::types::{with_type, Runnable, TypeFn};
use crate::quant::{f16_le, to_f16_le, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, GgmlType, QK};

/// The longest block of any type (K-quant super-blocks).
const MAX_BLOCK: usize = 256;

/// Dequantise Q4_0 blocks into `y` (`32 * x.len()` values).
pub fn dequantize_row_q4_0(x: &[BlockQ4_0], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_le(b.d);
        for j in 0..QK / 2 {
            let lo = (b.qs[j] & 0x0f) as i32 - 8;
            let hi = (b.qs[j] >> 4) as i32 - 8;
            out[j] = lo as f32 * d;
            out[j + QK / 2] = hi as f32 * d;
        }
    }
}

/// Dequantise Q4_1 blocks into `y`.
pub fn dequantize_row_q4_1(x: &[BlockQ4_1], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_le(b.d);
        let m = f16_le(b.m);
        for j in 0..QK / 2 {
            let lo = (b.qs[j] & 0x0f) as f32;
            let hi = (b.qs[j] >> 4) as f32;
            out[j] = lo * d + m;
            out[j + QK / 2] = hi * d + m;
        }
    }
}

/// Dequantise Q8_0 blocks into `y`.
pub fn dequantize_row_q8_0(x: &[BlockQ8_0], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_le(b.d);
        for (o, &q) in out.iter_mut().zip(b.qs.iter()) {
            *o = (q as i8) as f32 * d;
        }
    }
}

/// Dequantise Q8_1 blocks into `y`.
pub fn dequantize_row_q8_1(x: &[BlockQ8_1], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_le(b.d);
        for (o, &q) in out.iter_mut().zip(b.qs.iter()) {
            *o = (q as i8) as f32 * d;
        }
    }
}

/// Convert little-endian f16 bytes into `y`.
pub fn dequantize_row_f16(x: &[u8], y: &mut [f32]) {
    for (c, o) in x.chunks_exact(2).zip(y.iter_mut()) {
        *o = f16_le([c[0], c[1]]);
    }
}

/// Convert little-endian bf16 bytes into `y`.
pub fn dequantize_row_bf16(x: &[u8], y: &mut [f32]) {
    for (c, o) in x.chunks_exact(2).zip(y.iter_mut()) {
        *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}

/// Convert little-endian f32 bytes into `y`.
pub fn dequantize_row_f32(x: &[u8], y: &mut [f32]) {
    for (c, o) in x.chunks_exact(4).zip(y.iter_mut()) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

/// Dequantise one row of any supported type from its bytes. Returns `false` (and writes
/// nothing) for a type this build cannot run.
pub fn dequantize_row(ty: GgmlType, x: &[u8], y: &mut [f32]) -> bool {
    use crate::quant::cast_blocks;
    match ty {
        GgmlType::F32 => dequantize_row_f32(x, y),
        GgmlType::F16 => dequantize_row_f16(x, y),
        GgmlType::BF16 => dequantize_row_bf16(x, y),
        GgmlType::Q8_1 => match cast_blocks::<BlockQ8_1>(x) {
            Ok(b) => dequantize_row_q8_1(b, y),
            Err(_) => return false,
        },
        // Every weight type: its own oracle (`QuantType::dequantize`, quant/<type>.rs).
        ty => return with_type(ty, Dequantize { x, y }).unwrap_or(false),
    }
    true
}

/// [`dequantize_row`] of one weight type, for [`with_type`].
struct Dequantize<'x, 'y> {
    x: &'x [u8],
    y: &'y mut [f32],
}

impl TypeFn for Dequantize<'_, '_> {
    type Out = bool;
    fn call<T: Runnable>(self) -> bool {
        match crate::quant::cast_blocks::<T>(self.x) {
            Ok(b) => {
                T::dequantize(b, self.y);
                true
            }
            Err(_) => false,
        }
    }
}

/// Quantise one row of f32 values into `ty` bytes (`y` is exactly one row): F32, F16, BF16, or
/// any weight type whose oracle has a [`QuantType::QUANTIZE`](crate::quant::QuantType::QUANTIZE).
/// Returns `false` (and writes nothing) for a type without a quantiser or a `y` that is not a
/// whole number of blocks.
pub fn quantize_row(ty: GgmlType, x: &[f32], y: &mut [u8]) -> bool {
    match ty {
        GgmlType::F32 => {
            for (c, v) in y.chunks_exact_mut(4).zip(x) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (c, v) in y.chunks_exact_mut(2).zip(x) {
                c.copy_from_slice(&to_f16_le(*v));
            }
        }
        GgmlType::BF16 => {
            for (c, v) in y.chunks_exact_mut(2).zip(x) {
                c.copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
            }
        }
        ty => return with_type(ty, Quantize { x, y }).unwrap_or(false),
    }
    true
}

/// True if [`quantize_row`] can write `ty` in this build: F32, F16, BF16, or a weight type whose
/// oracle has a [`QuantType::QUANTIZE`](crate::quant::QuantType::QUANTIZE) (read from the type
/// table, so a new quantiser is picked up without editing a list).
pub fn has_quantizer(ty: GgmlType) -> bool {
    struct Has;
    impl TypeFn for Has {
        type Out = bool;
        fn call<T: Runnable>(self) -> bool {
            T::QUANTIZE.is_some()
        }
    }
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => true,
        ty => with_type(ty, Has).unwrap_or(false),
    }
}

/// [`quantize_row`] of one weight type, for [`with_type`].
struct Quantize<'x, 'y> {
    x: &'x [f32],
    y: &'y mut [u8],
}

impl TypeFn for Quantize<'_, '_> {
    type Out = bool;
    fn call<T: Runnable>(self) -> bool {
        match (T::QUANTIZE, crate::quant::cast_blocks_mut::<T>(self.y)) {
            (Some(f), Ok(b)) => {
                f(self.x, b);
                true
            }
            _ => false,
        }
    }
}

/// `(int8_t)` conversion as C does for in-range values: truncate toward zero.
#[inline]
fn trunc_i8(v: f32) -> i8 {
    v as i8
}

/// Quantise to Q8_0 (ggml `quantize_row_q8_0_ref`): `d = max|x| / 127`, `q = round(x / d)`.
pub fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    for (xb, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(libm::fabsf(*v)));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = to_f16_le(d);
        for (q, v) in b.qs.iter_mut().zip(xb) {
            *q = libm::roundf(v * id) as i8 as u8;
        }
    }
}

/// Quantise to Q8_1 (ggml `quantize_row_q8_1_ref`): as Q8_0 plus `s = d * sum(q)`.
pub fn quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    for (xb, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(libm::fabsf(*v)));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = to_f16_le(d);
        let mut sum: i32 = 0;
        for (q, v) in b.qs.iter_mut().zip(xb) {
            let qi = libm::roundf(v * id) as i8;
            sum += qi as i32;
            *q = qi as u8;
        }
        b.s = to_f16_le(sum as f32 * d);
    }
}

/// Quantise to Q4_0 (ggml `quantize_row_q4_0_ref`): `d = max / -8` where `max` is the value of
/// largest magnitude (with its sign), `q = min(15, trunc(x / d + 8.5))`.
pub fn quantize_row_q4_0(x: &[f32], y: &mut [BlockQ4_0]) {
    for (xb, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in xb {
            if amax < libm::fabsf(v) {
                amax = libm::fabsf(v);
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = to_f16_le(d);
        for j in 0..QK / 2 {
            let x0 = xb[j] * id;
            let x1 = xb[QK / 2 + j] * id;
            let q0 = (trunc_i8(x0 + 8.5) as u8).min(15);
            let q1 = (trunc_i8(x1 + 8.5) as u8).min(15);
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// Quantise to Q4_1 (ggml `quantize_row_q4_1_ref`): `d = (max - min) / 15`, `m = min`,
/// `q = min(15, trunc((x - min) / d + 0.5))`.
pub fn quantize_row_q4_1(x: &[f32], y: &mut [BlockQ4_1]) {
    for (xb, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let mut min = f32::MAX;
        let mut max = -f32::MAX;
        for &v in xb {
            min = min.min(v);
            max = max.max(v);
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = to_f16_le(d);
        b.m = to_f16_le(min);
        for j in 0..QK / 2 {
            let x0 = (xb[j] - min) * id;
            let x1 = (xb[QK / 2 + j] - min) * id;
            let q0 = (trunc_i8(x0 + 0.5) as u8).min(15);
            let q1 = (trunc_i8(x1 + 0.5) as u8).min(15);
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// Dot of Q4_0 weights with Q8_0 activations (ggml `ggml_vec_dot_q4_0_q8_0` generic path).
pub fn vec_dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let mut sumi: i32 = 0;
        for j in 0..QK / 2 {
            let v0 = (a.qs[j] & 0x0f) as i32 - 8;
            let v1 = (a.qs[j] >> 4) as i32 - 8;
            sumi += v0 * (b.qs[j] as i8) as i32 + v1 * (b.qs[j + QK / 2] as i8) as i32;
        }
        sumf += sumi as f32 * (f16_le(a.d) * f16_le(b.d));
    }
    sumf
}

/// Dot of Q4_1 weights with Q8_1 activations: `sum(d_x d_y q_x q_y) + m_x s_y` per block.
pub fn vec_dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let mut sumi: i32 = 0;
        for j in 0..QK / 2 {
            let v0 = (a.qs[j] & 0x0f) as i32;
            let v1 = (a.qs[j] >> 4) as i32;
            sumi += v0 * (b.qs[j] as i8) as i32 + v1 * (b.qs[j + QK / 2] as i8) as i32;
        }
        sumf += (f16_le(a.d) * f16_le(b.d)) * sumi as f32 + f16_le(a.m) * f16_le(b.s);
    }
    sumf
}

/// Dot of Q8_0 weights with Q8_0 activations.
pub fn vec_dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let mut sumi: i32 = 0;
        for j in 0..QK {
            sumi += (a.qs[j] as i8) as i32 * (b.qs[j] as i8) as i32;
        }
        sumf += sumi as f32 * (f16_le(a.d) * f16_le(b.d));
    }
    sumf
}

/// Plain f32 dot product.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Dot of one weight row (any supported type, as bytes) with an f32 activation, dequantising
/// one block at a time. This is exact up to f32 rounding: no activation quantisation.
pub fn dot_row_f32(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    let bl = ty.block_len();
    let bb = ty.block_bytes();
    // Dequantise one block at a time (32 elements for plain types) so the buffer stays on the
    // stack; 256-element super-blocks (K-quants, IQ4_XS) take the whole buffer.
    let step_elems = if bl == 1 { QK } else { bl };
    let step_bytes = if bl == 1 { QK * bb } else { bb };
    if step_elems > MAX_BLOCK {
        return 0.0; // no such type; shapes are rejected at load.
    }
    let mut buf = [0f32; MAX_BLOCK];
    let buf = &mut buf[..step_elems];
    let mut acc = 0.0f32;
    let mut rows = row.chunks_exact(step_bytes);
    let mut xs = x.chunks_exact(step_elems);
    for (rb, xb) in (&mut rows).zip(&mut xs) {
        dequantize_row(ty, rb, buf);
        acc += dot_f32(buf, xb);
    }
    // Plain types may have a tail shorter than 32 elements.
    let (rt, xt) = (rows.remainder(), xs.remainder());
    if !rt.is_empty() && bl == 1 {
        let n = xt.len().min(rt.len() / bb);
        dequantize_row(ty, rt, &mut buf[..n]);
        acc += dot_f32(&buf[..n], xt);
    }
    acc
}

/// SwiGLU's elementwise step, `g[i] = silu(g[i]) * u[i]` with `silu(x) = x / (1 + e^-x)`
/// (`libm::expf`): the formula every table's `swiglu` reproduces bit for bit (a vector
/// `expf` may only be faster, never different, so prefill, decode and every table keep the
/// model's activations unchanged).
pub fn swiglu(g: &mut [f32], u: &[f32]) {
    for (g, u) in g.iter_mut().zip(u) {
        *g = silu(*g) * u;
    }
}

/// Softmax's exponentials `x[i] = e^(x[i] - m)` (`libm::expf`): the formula every table's
/// `exp_shifted` reproduces bit for bit.
pub fn exp_shifted(x: &mut [f32], m: f32) {
    for v in x.iter_mut() {
        *v = libm::expf(*v - m);
    }
}

/// `x / (1 + e^-x)`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + libm::expf(-x))
}

/// GeGLU's elementwise step (Gemma), `g[i] = gelu_tanh(g[i]) * u[i]`: the formula every
/// table's `geglu` reproduces bit for bit (as [`swiglu`]).
#[cfg(feature = "arch-gemma")]
pub fn geglu(g: &mut [f32], u: &[f32]) {
    for (g, u) in g.iter_mut().zip(u) {
        *g = gelu_tanh(*g) * u;
    }
}

/// GELU, tanh approximation: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
#[cfg(feature = "arch-gemma")]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + libm::tanhf(SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)))
}
