//! Pieces shared by the K-quant oracles (feature `quant-k`): the 6-bit scale/min unpacking of
//! Q4_K and Q5_K, and the 8-lane integer accumulation ggml's generic Q3_K..Q6_K dots use.
//!
//! ggml's generic K-quant dots accumulate `scale * q_w * q_a` into eight i32 lanes (element `i`
//! of a super-block goes to lane `i % 8`), turn each lane into f32 once per super-block and sum
//! the eight f32 lanes only after the last block. The integer part is exact (no overflow for any
//! input bytes, see the bounds below), so only that float order matters for bit-exactness.

use super::{f16_le, nearest_int, to_f16_le, BlockQ8_K, QK_K};

/// Scale and min `j` (0..8) of a Q4_K/Q5_K super-block, 6 bits each (ggml `get_scale_min_k4`).
///
/// Bytes 0..4 hold scales 0..4 in their low 6 bits, bytes 4..8 mins 0..4; bytes 8..12 hold the
/// low nibbles of scales 4..8 (low half) and mins 4..8 (high half), whose top two bits are the
/// top bits of bytes 0..4 (scales) and 4..8 (mins).
#[inline(always)]
pub(crate) fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `aux32[l] = sum over 8-element chunks c of scale(c) * (q8[8c + l] * a[8c + l])`, where the
/// scale changes every `group` elements (16 for Q3_K/Q6_K, 32 for Q4_K/Q5_K).
///
/// The product is formed in i16 as ggml does (`aux16`): |a| <= 32 and |q8| <= 128 keep it
/// within 4096. Each lane then sums 32 terms of at most 128 * 4096 in magnitude, far inside i32.
#[inline(always)]
pub(crate) fn lanes8(y: &BlockQ8_K, a: &[i8; QK_K], scales: &[i32], group: usize) -> [i32; 8] {
    let mut aux32 = [0i32; 8];
    for (c, (qc, ac)) in y.qs.chunks_exact(8).zip(a.chunks_exact(8)).enumerate() {
        let scale = scales.get(c * 8 / group).copied().unwrap_or(0);
        for l in 0..8 {
            let aux16 = (qc[l] as i8 as i16) * (ac[l] as i16);
            aux32[l] += scale * aux16 as i32;
        }
    }
    aux32
}

/// The float tail of one super-block in ggml's generic Q3_K..Q6_K dots: `sums[l] += d * aux32[l]`.
#[inline(always)]
pub(crate) fn add_lanes(sums: &mut [f32; 8], d: f32, aux32: &[i32; 8]) {
    for (s, &v) in sums.iter_mut().zip(aux32) {
        *s += d * v as f32;
    }
}

/// The final reduction: `sumf += sums[l]` for l = 0..8, in order.
#[inline(always)]
pub(crate) fn reduce_lanes(mut sumf: f32, sums: &[f32; 8]) -> f32 {
    for &s in sums {
        sumf += s;
    }
    sumf
}

// ---------------------------------------------------------------------------------------------
// Weight quantisation (ggml's `*_ref` quantisers, no importance matrix)
//
// Written from ggml-quants.c's `make_qkx2_quants`, `make_qx_quants` and
// `quantize_row_q{4,5}_K_ref`; every float expression keeps the C's operation order, because
// the tests compare bytes with `ggml_quantize_chunk`. All buffers are fixed-size stack arrays.

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below this quantises to zero.
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// Affine `x ~ scale * l - m` fit of `x` (`l` in `0..=nmax`), weighted by `w`, searching
/// `nstep + 1` candidate scales around `nmax / (max - min)` (ggml `make_qkx2_quants`, sum of
/// squared errors). Writes the quants into `l_out`; returns `(scale, m)` with `m >= 0`.
pub(crate) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32; 32],
    w: &[f32; 32],
    l_out: &mut [u8; 32],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..32 {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        *l_out = [0; 32];
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..32 {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += w[i] * (diff * diff);
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..32 {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let lf = l as f32;
            sum_l += w[i] * lf;
            sum_l2 += w[i] * lf * lf;
            sum_xl += w[i] * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..32 {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += w[i] * (diff * diff);
            }
            if cur_error < best_error {
                *l_out = laux;
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Symmetric fit `x ~ scale * (l - nmax)` of 16 values, `l` in `0..2 nmax`, weighted by `x^2`,
/// trying 18 scales around `-nmax / max` (ggml `make_qx_quants` with `rmse_type = 1`, no
/// weights). Writes `l` into `l_out`; returns the scale (its sign follows the largest value).
pub(crate) fn make_qx_quants16(nmax: i32, x: &[f32; 16], l_out: &mut [i8; 16]) -> f32 {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        *l_out = [0; 16];
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (o, &v) in l_out.iter_mut().zip(x) {
        let l = quant(iscale, v);
        *o = (l + nmax) as i8;
        let w = v * v;
        let lf = l as f32;
        sumlx += w * v * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = quant(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (o, &v) in l_out.iter_mut().zip(x) {
                *o = (quant(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// The shared first half of ggml's `quantize_row_q4_K_ref` / `quantize_row_q5_K_ref` for one
/// super-block: per group of 32 an affine fit (`make_qkx2_quants` weighted by
/// `rms(group) + |x|`), the 8 scales and mins quantised to 6 bits against their maxima, then
/// every value re-quantised against the rounded scales. Returns `(d, dmin, scales)` as stored
/// and the quants `0..=nmax` in element order.
pub(crate) fn quantize_scale_min_k(
    x: &[f32; QK_K],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    l: &mut [u8; QK_K],
) -> ([u8; 2], [u8; 2], [u8; 12]) {
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..8 {
        let xg: &[f32; 32] = x[32 * j..32 * j + 32].try_into().unwrap_or(&[0.0; 32]);
        let mut sum_x2 = 0.0f32;
        for &v in xg {
            sum_x2 += v * v;
        }
        let av_x = libm::sqrtf(sum_x2 / 32.0);
        let mut w = [0.0f32; 32];
        for (wi, &v) in w.iter_mut().zip(xg) {
            *wi = av_x + v.abs();
        }
        let mut lg = [0u8; 32];
        let (s, m) = make_qkx2_quants(nmax, xg, &w, &mut lg, rmin, 0.1, nstep);
        l[32 * j..32 * j + 32].copy_from_slice(&lg);
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        // The C stores nearest_int into a uint8_t before clamping: keep that wrap.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = to_f16_le(max_scale / 63.0);
    let dmin = to_f16_le(max_min / 63.0);
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, &packed);
        let dj = f16_le(d) * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = f16_le(dmin) * m as f32;
        for (o, &v) in l[32 * j..32 * j + 32]
            .iter_mut()
            .zip(&x[32 * j..32 * j + 32])
        {
            *o = nearest_int((v + dm) / dj).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed)
}
