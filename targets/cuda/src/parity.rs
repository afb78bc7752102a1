//! Comparing a GPU run with a CPU trace: per-layer and logit figures, and the verdict against
//! the derived [`Tolerance`].

use crate::cpu::{Tolerance, Trace};
use crate::tol::{Diff, Top1};

/// Figures of one comparison.
#[derive(Clone, Debug)]
pub struct Report {
    /// Per layer: the residual stream after it.
    pub layers: Vec<Diff>,
    /// The logits of every position.
    pub logits: Diff,
    /// Top-1 agreement (decisive = reference margin above twice the logit tolerance).
    pub top1: Top1,
    /// The tolerance checked against, if one was derived.
    pub tol: Option<Tolerance>,
}

/// Compare a CPU trace with GPU per-layer states (`gpu_hidden`, may be empty) and logits.
pub fn compare(
    cpu: &Trace,
    gpu_hidden: &[Vec<f32>],
    gpu_logits: &[f32],
    tol: Option<Tolerance>,
) -> Report {
    let layers = cpu
        .hidden
        .iter()
        .zip(gpu_hidden)
        .map(|(c, g)| Diff::of(c, g))
        .collect();
    let margin = tol.as_ref().map_or(f32::INFINITY, |t| 2.0 * t.logits);
    Report {
        layers,
        logits: Diff::of(&cpu.logits, gpu_logits),
        top1: Top1::of(&cpu.logits, gpu_logits, cpu.vocab, margin),
        tol,
    }
}

impl Report {
    /// Every violated expectation, in words (empty when parity holds). Without a tolerance only
    /// non-finite values and length mismatches are failures.
    pub fn failures(&self, cpu: &Trace, gpu_logits_len: usize) -> Vec<String> {
        let mut f = vec![];
        if gpu_logits_len != cpu.logits.len() {
            f.push(format!(
                "GPU returned {gpu_logits_len} logits, CPU {}",
                cpu.logits.len()
            ));
        }
        for (l, d) in self.layers.iter().enumerate() {
            if d.non_finite > 0 {
                f.push(format!("layer {l}: {} non-finite values", d.non_finite));
            }
            if let Some(t) = self.tol.as_ref().and_then(|t| t.hidden.get(l)) {
                if d.max_abs > *t || d.max_abs.is_nan() {
                    f.push(format!(
                        "layer {l}: max |diff| {:.3e} > tolerance {t:.3e}",
                        d.max_abs
                    ));
                }
            }
        }
        if self.logits.non_finite > 0 {
            f.push(format!(
                "logits: {} non-finite values",
                self.logits.non_finite
            ));
        }
        if let Some(t) = &self.tol {
            if self.logits.max_abs > t.logits || self.logits.max_abs.is_nan() {
                f.push(format!(
                    "logits: max |diff| {:.3e} > tolerance {:.3e}",
                    self.logits.max_abs, t.logits
                ));
            }
            if self.top1.decisive_misses > 0 {
                f.push(format!(
                    "top-1 differs at {} positions whose CPU margin exceeds {:.3e}",
                    self.top1.decisive_misses,
                    2.0 * t.logits
                ));
            }
        }
        f
    }

    /// The figures as a table.
    pub fn table(&self) -> String {
        let mut s = String::from("            max|diff|   mean|diff|   max|cpu|    tolerance\n");
        let tol_of = |t: Option<f32>| t.map_or("-".to_string(), |v| format!("{v:.3e}"));
        for (l, d) in self.layers.iter().enumerate() {
            let t = self.tol.as_ref().and_then(|t| t.hidden.get(l).copied());
            s += &format!(
                "layer {l:>3}   {:.3e}   {:.3e}   {:>9.3}   {}\n",
                d.max_abs,
                d.mean_abs,
                d.ref_max,
                tol_of(t)
            );
        }
        let d = &self.logits;
        s += &format!(
            "logits      {:.3e}   {:.3e}   {:>9.3}   {}\n",
            d.max_abs,
            d.mean_abs,
            d.ref_max,
            tol_of(self.tol.as_ref().map(|t| t.logits))
        );
        s += &format!(
            "top-1 agreement: {}/{} positions",
            self.top1.agree, self.top1.positions
        );
        if self.top1.agree != self.top1.positions {
            s += &format!(" ({} decisive misses)", self.top1.decisive_misses);
        }
        s
    }
}
