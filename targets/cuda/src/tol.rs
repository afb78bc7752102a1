//! Tolerances for GPU-vs-CPU parity, derived from where the two implementations can differ,
//! and the figures that parity reports (max/mean absolute difference, top-1 agreement).
//!
//! # What can differ
//!
//! The kernels (`kernels.cu`) are compiled with `--fmad=false` and repeat the CPU reference's
//! operations in the CPU's order wherever one thread owns a whole sum. Bit-for-bit identical
//! therefore: dequantisation (embedding rows), every 32-element chunk sum of a dot product,
//! attention scores, rope, the residual adds. What differs:
//!
//! 1. **Matvec rows**: the CPU adds the `nb` chunk sums `b_c` of a row left to right; the GPU
//!    adds them lane-strided (at most `ceil(nb/32)` per lane) and then in a 5-level butterfly.
//!    With `u = 2^-24`, recursive summation of `m` terms is off the exact sum by at most
//!    `(m - 1) u sum|b_c|` (Higham, *Accuracy and Stability of Numerical Algorithms*, 4.2), so
//!    the two results differ by at most `(nb + ceil(nb/32) + 4) u sum|b_c|` (to first order; the
//!    bound below adds 2 for the second-order terms and the final scale multiply).
//! 2. **rmsnorm**: the sum of squares (`dim` positive terms) is split over 256 threads and a tree;
//!    relative difference of the sum at most `(dim + dim/256 + 14) u`, halved by the square root,
//!    plus the reciprocal's and square root's own roundings.
//! 3. **softmax**: CUDA's `expf` is within 2 ulp, libm's `expf` within 1 ulp, so the two differ by
//!    at most 3 ulp (`3 * 2^-23` relative); the denominator (`p + 1` positive terms) is split over
//!    128 threads and a tree.
//! 4. **SwiGLU**: `expf` again (3 ulp), then two roundings that may differ once the inputs do.
//!
//! Kernel tests check each op against these bounds directly ([`sum_reorder_bound`] and friends).
//!
//! # Model-level tolerance
//!
//! Through a whole network these local differences are amplified by the model itself, by an
//! amount no closed form gives. It is measured on the CPU instead, without a GPU: the per-layer
//! CPU trace ([`crate::cpu`]) is run with every one of the local differences above *injected* at
//! its full bound with a random sign (`Jitter`), and the tolerance is [`SAFETY`] times the
//! largest deviation from the unperturbed trace over [`JITTER_SEEDS`] seeds. Real rounding
//! differences are typically about `sqrt(m)` times smaller than the `m`-term bound used for the
//! injection, so the margin is wide, yet an indexing or layout bug (a wrong nibble order, a
//! wrong head, a missing adapter) moves results by orders of magnitude more and still fails.
//! Top-1 agreement is required at every position whose CPU margin between the two largest
//! logits exceeds twice the logit tolerance; closer calls are reported, not failed.

/// Unit roundoff of f32 (round to nearest).
pub const U: f64 = 1.0 / 16_777_216.0;
/// Relative size of one ulp of f32 at worst (`2^-23`).
pub const ULP: f64 = 1.0 / 8_388_608.0;
/// Ulps by which CUDA's `expf` (<= 2 ulp) and libm's `expf` (< 1 ulp) can disagree.
pub const EXP_ULPS: f64 = 3.0;
/// Factor between the largest deviation seen under injected errors and the tolerance.
pub const SAFETY: f32 = 4.0;
/// Seeds of injected-error runs the model-level tolerance takes the maximum over.
pub const JITTER_SEEDS: [u64; 2] = [0x5eed_0001, 0x5eed_0002];

/// Largest difference between the CPU's left-to-right sum of `nb` chunk sums and the GPU's
/// lane-strided + butterfly sum of the same values, given `abs_sum = sum |b_c|`.
pub fn sum_reorder_bound(nb: usize, abs_sum: f64) -> f64 {
    let m = nb as f64 + nb.div_ceil(32) as f64 + 6.0;
    m * U * abs_sum
}

/// Relative bound on the difference of rmsnorm's `1/sqrt(mean(x^2) + eps)` between CPU and GPU.
pub fn rmsnorm_rel_bound(dim: usize) -> f64 {
    ((dim as f64 + (dim / 256) as f64 + 14.0) / 2.0 + 3.0) * U
}

/// Relative bound on the difference of one softmax weight over `n` positions.
pub fn softmax_rel_bound(n: usize) -> f64 {
    EXP_ULPS * ULP + (n as f64 + (n / 128) as f64 + 14.0) * U + 2.0 * U
}

/// Relative bound on the difference of `silu(g) * u` (expf, then the division and product).
pub fn swiglu_rel_bound() -> f64 {
    EXP_ULPS * ULP + 4.0 * ULP
}

/// Max and mean absolute difference between two equally long vectors, and the largest
/// magnitude in `reference` (for scale).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Diff {
    /// `max |a - b|`.
    pub max_abs: f32,
    /// `mean |a - b|`.
    pub mean_abs: f32,
    /// `max |reference|`.
    pub ref_max: f32,
    /// Count of non-finite values on either side (always a failure).
    pub non_finite: usize,
}

impl Diff {
    /// Compare `got` against `reference` element by element (the shorter length counts).
    pub fn of(reference: &[f32], got: &[f32]) -> Diff {
        let mut d = Diff::default();
        let mut sum = 0.0f64;
        let n = reference.len().min(got.len());
        for (&r, &g) in reference.iter().zip(got) {
            if !r.is_finite() || !g.is_finite() {
                d.non_finite += 1;
                continue;
            }
            let e = (r - g).abs();
            d.max_abs = d.max_abs.max(e);
            d.ref_max = d.ref_max.max(r.abs());
            sum += e as f64;
        }
        d.mean_abs = if n > 0 { (sum / n as f64) as f32 } else { 0.0 };
        d
    }
}

/// Index of the largest value (first on ties; NaN never wins), `None` if empty.
pub fn argmax(x: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in x.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if v <= b => {}
            _ => best = Some((i, v)),
        }
    }
    best.map(|b| b.0)
}

/// Gap between the largest and second largest value (infinite for fewer than two values).
pub fn top1_margin(x: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in x {
        if v > a {
            b = a;
            a = v;
        } else if v > b {
            b = v;
        }
    }
    a - b
}

/// Top-1 agreement over positions: logits are `n x vocab` row-major.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Top1 {
    /// Positions compared.
    pub positions: usize,
    /// Positions where both argmaxes agree.
    pub agree: usize,
    /// Disagreements at positions whose reference margin exceeds the decisive margin.
    pub decisive_misses: usize,
}

impl Top1 {
    /// Count agreement; a disagreement counts as decisive when the reference's top-1 margin at
    /// that position exceeds `decisive_margin`.
    pub fn of(reference: &[f32], got: &[f32], vocab: usize, decisive_margin: f32) -> Top1 {
        let mut t = Top1::default();
        if vocab == 0 {
            return t;
        }
        for (r, g) in reference.chunks_exact(vocab).zip(got.chunks_exact(vocab)) {
            t.positions += 1;
            if argmax(r) == argmax(g) {
                t.agree += 1;
            } else if top1_margin(r) > decisive_margin {
                t.decisive_misses += 1;
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_and_top1() {
        let d = Diff::of(&[1.0, -2.0, 3.0], &[1.5, -2.0, 2.0]);
        assert_eq!(d.max_abs, 1.0);
        assert!((d.mean_abs - 0.5).abs() < 1e-7);
        assert_eq!(d.ref_max, 3.0);
        assert_eq!(Diff::of(&[f32::NAN], &[0.0]).non_finite, 1);
        assert_eq!(argmax(&[0.0, 2.0, 2.0, f32::NAN]), Some(1));
        assert_eq!(top1_margin(&[1.0, 4.0, 3.5]), 0.5);
        let t = Top1::of(&[0.0, 1.0, 5.0, 0.0], &[0.0, 1.0, 0.0, 5.0], 2, 2.0);
        assert_eq!((t.positions, t.agree, t.decisive_misses), (2, 1, 1));
    }

    #[test]
    fn bounds_grow_with_length() {
        assert!(sum_reorder_bound(18, 1.0) < sum_reorder_bound(48, 1.0));
        assert!(rmsnorm_rel_bound(64) < rmsnorm_rel_bound(576));
        assert!(softmax_rel_bound(1) < softmax_rel_bound(1000));
        // All far below f32's own precision loss of a typical 576-wide dot product's worst case.
        assert!(sum_reorder_bound(18, 1.0) < 576.0 * U);
    }
}
