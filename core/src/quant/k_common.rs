//! Pieces shared by the K-quant oracles (feature `quant-k`): the 6-bit scale/min unpacking of
//! Q4_K and Q5_K, and the 8-lane integer accumulation ggml's generic Q3_K..Q6_K dots use.
//!
//! ggml's generic K-quant dots accumulate `scale * q_w * q_a` into eight i32 lanes (element `i`
//! of a super-block goes to lane `i % 8`), turn each lane into f32 once per super-block and sum
//! the eight f32 lanes only after the last block. The integer part is exact (no overflow for any
//! input bytes, see the bounds below), so only that float order matters for bit-exactness.

use super::{BlockQ8_K, QK_K};

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
