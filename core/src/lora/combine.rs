//! Combine several LoRA adapters into one (feature `std`): PEFT's
//! `LoraModel.add_weighted_adapter`, on GGUF adapters.
//!
//! Every method computes, per target module, a new (A, B) from the inputs that target it
//! (an input without that module is skipped, as PEFT skips it). Writing `s_i` for input i's
//! module scale, `w_i` for its weight and `c_i = sqrt(|w_i s_i|)`:
//! - `linear`: `A = sum sign(w_i s_i) c_i A_i`, `B = sum c_i B_i` (A and B mixed separately, so
//!   the product has cross terms `B_j A_i`; a rough approximation in PEFT's own words). Equal
//!   ranks required; new rank = that rank.
//! - `ties`, `dare_linear`, `dare_ties`, `magnitude_prune`: the same split, with PEFT's
//!   `merge_utils` function (trim by magnitude / random drop-and-rescale, sign election,
//!   disjoint mean) applied to the A's and to the B's with those weights.
//! - `cat`: A's rows are `w_i s_i A_i` stacked, B's columns the `B_i` side by side: exactly
//!   `sum w_i s_i B_i A_i`. New rank = sum of the input ranks.
//! - `svd`, `ties_svd`, `dare_linear_svd`, `dare_ties_svd`, `magnitude_prune_svd`: the merge
//!   function applied to the full updates `s_i B_i A_i`, then the best rank-R factorisation
//!   `B = U_R S_R`, `A = V_R^T`. R defaults to the largest input rank.
//!
//! The new adapter has PEFT's `r = lora_alpha = new rank`, i.e. module scale 1. One PEFT quirk
//! is not reproduced: PEFT copies `use_rslora` from the first input's config, which makes the
//! new adapter's scale `sqrt(r)` when that input used rsLoRA; here the scale is always 1 (what
//! the arithmetic above intends).
//!
//! **Inputs are GGUF adapters**, whose B already carries PEFT's per-module scale folded so that
//! the runtime scale is `alpha_file / r` ([`super::convert`]). So `s_i = alpha_file / r` with the
//! stored B. Products `s_i B_i A_i` are exactly PEFT's, so `cat` and the `*svd` methods match
//! PEFT on the original adapters. `linear`, `ties`, `dare_*` and `magnitude_prune` depend on
//! how the scale is split between A and B: they match PEFT exactly when the converter folded
//! nothing (no rsLoRA, `rank_pattern` or `alpha_pattern`), and otherwise equal PEFT applied to
//! the equivalent adapter `(A, B_stored, alpha_file / r)`.
//!
//! Where PEFT stores a module with fewer ranks than the new adapter's rank (zero-padded rows
//! under `cat`, or a module whose inputs had a smaller `rank_pattern` rank), this file stores
//! the exact (unpadded) factors: the GGUF layout allows a rank per pair.
//!
//! **DARE masks** come from a [`MaskSource`]: [`SeededMasks`] draws each entry's keep/drop
//! from SplitMix64 keyed by (seed, module, input, tensor), so a seed reproduces a file on any
//! machine and in any order of work; PyTorch's `torch.bernoulli` stream is not reproduced, so
//! DARE agrees with PEFT in distribution (same keep probability, same rescale, same expected
//! update), and exactly when PEFT's masks are supplied ([`GivenMasks`], used by the tests).
//!
//! **SVD**: for `svd` the update `sum w_i s_i B_i A_i = B_cat A_cat` has thin factors, so it is
//! factored exactly and cheaply: `B_cat = Q_b R_b`, `A_cat^T = Q_a R_a` (modified Gram-Schmidt
//! with re-orthogonalisation), then the small `R_b R_a^T` by one-sided Jacobi. The pruned
//! methods' updates are full matrices: one-sided Jacobi on the matrix when its smaller side is
//! at most [`EXACT_SVD_MAX`], else subspace iteration (block `2R + 16`) with a Rayleigh-Ritz
//! step, iterated until the top-R singular values settle. All SVD arithmetic is f64. Measured:
//! `ties_svd` of two SmolLM2-135M rank-8 adapters (60 pairs, 576 x 576 / 192 x 576 / 1536 x
//! 576 updates) takes 5 s on one core; with exact Jacobi up to 256 columns and Ritz values from a
//! full Jacobi each iteration it took 12 s, hence the exact path stops at 96 (the two results
//! agree to 4e-6 relative, F16 storage).

use super::{
    parse_target, Adapter, LoraPair, FINGERPRINT_KEY, HEAD_TENSOR, MAX_RANK, SHAPE_FINGERPRINT_KEY,
};
use crate::error::{Error, ErrorKind, Result};
use crate::format::gguf_write::{GgufWriter, OwnedValue};
use crate::quant::GgmlType;
use std::collections::BTreeMap;
use std::string::{String, ToString};
use std::vec::Vec;

/// Smaller matrix side up to which the pruned `*svd` methods use an exact Jacobi SVD.
pub const EXACT_SVD_MAX: usize = 96;

/// How adapters are combined (PEFT's `combination_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Weighted sums of A's and of B's (equal ranks).
    Linear,
    /// Concatenated ranks: the exact weighted sum of the updates.
    Cat,
    /// Weighted sum of the updates, truncated to rank R by SVD.
    Svd,
    /// TIES (trim, elect sign, disjoint mean) on A's and B's.
    Ties,
    /// TIES on the full updates, then rank-R SVD.
    TiesSvd,
    /// DARE (random drop, rescale) then a weighted sum, on A's and B's.
    DareLinear,
    /// DARE then TIES' sign election and disjoint mean, on A's and B's.
    DareTies,
    /// DARE linear on the full updates, then rank-R SVD.
    DareLinearSvd,
    /// DARE TIES on the full updates, then rank-R SVD.
    DareTiesSvd,
    /// Magnitude trim then a weighted sum, on A's and B's.
    MagnitudePrune,
    /// Magnitude trim on the full updates, weighted sum, rank-R SVD.
    MagnitudePruneSvd,
}

/// Every method with its PEFT name (the table [`Method::parse`] reads).
pub const METHODS: [(&str, Method); 11] = [
    ("linear", Method::Linear),
    ("cat", Method::Cat),
    ("svd", Method::Svd),
    ("ties", Method::Ties),
    ("ties_svd", Method::TiesSvd),
    ("dare_linear", Method::DareLinear),
    ("dare_ties", Method::DareTies),
    ("dare_linear_svd", Method::DareLinearSvd),
    ("dare_ties_svd", Method::DareTiesSvd),
    ("magnitude_prune", Method::MagnitudePrune),
    ("magnitude_prune_svd", Method::MagnitudePruneSvd),
];

/// The elementwise merge a method applies (PEFT's `merge_utils` function).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Merge {
    Sum,
    Ties,
    DareLinear,
    DareTies,
    Magnitude,
}

impl Method {
    /// Parse a PEFT `combination_type` name.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for an unknown name.
    pub fn parse(s: &str) -> Result<Method> {
        METHODS
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                Error::new(ErrorKind::InvalidArgument, "unknown combination method")
                    .named(s.as_bytes())
            })
    }
    /// PEFT's name.
    pub fn name(self) -> &'static str {
        METHODS
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("?", |(n, _)| n)
    }
    /// Whether the method ends in a rank-R SVD of full updates.
    pub const fn is_svd(self) -> bool {
        matches!(
            self,
            Method::Svd
                | Method::TiesSvd
                | Method::DareLinearSvd
                | Method::DareTiesSvd
                | Method::MagnitudePruneSvd
        )
    }
    /// Whether the method needs `density`.
    pub const fn uses_density(self) -> bool {
        !matches!(self, Method::Linear | Method::Cat | Method::Svd)
    }
    /// Whether the method draws random masks (DARE).
    pub const fn is_dare(self) -> bool {
        matches!(
            self,
            Method::DareLinear | Method::DareTies | Method::DareLinearSvd | Method::DareTiesSvd
        )
    }
    /// Whether the method mixes A's and B's separately (and so needs equal ranks).
    pub const fn needs_equal_rank(self) -> bool {
        !self.is_svd() && !matches!(self, Method::Cat)
    }
    fn merge(self) -> Merge {
        match self {
            Method::Linear | Method::Svd | Method::Cat => Merge::Sum,
            Method::Ties | Method::TiesSvd => Merge::Ties,
            Method::DareLinear | Method::DareLinearSvd => Merge::DareLinear,
            Method::DareTies | Method::DareTiesSvd => Merge::DareTies,
            Method::MagnitudePrune | Method::MagnitudePruneSvd => Merge::Magnitude,
        }
    }
}

/// TIES' sign election (PEFT's `majority_sign_method`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SignMethod {
    /// Sign of the sum of the (trimmed, unweighted) values.
    #[default]
    Total,
    /// Sign held by more inputs.
    Frequency,
}

/// Options for [`combine`] and [`combine_module`].
#[derive(Clone, Debug)]
pub struct CombineOptions {
    /// The method.
    pub method: Method,
    /// Fraction kept by the trimming methods, in `[0, 1]` (required by them, refused by the
    /// others; PEFT has no default). DARE needs it above 0.
    pub density: Option<f64>,
    /// Rank of the `*svd` methods' output (default: the largest input rank; refused by the
    /// others, whose rank PEFT fixes).
    pub rank: Option<usize>,
    /// TIES sign election.
    pub majority_sign: SignMethod,
    /// Storage type for the new A and B (F32, F16 or Q8_0, as the converter).
    pub dtype: GgmlType,
    /// `adapter.edgelora.task` (default: the inputs' tasks joined with `+`).
    pub task: Option<String>,
}

impl CombineOptions {
    /// Options for `method` with no density or rank, F16 storage.
    pub fn new(method: Method) -> Self {
        CombineOptions {
            method,
            density: None,
            rank: None,
            majority_sign: SignMethod::Total,
            dtype: GgmlType::F16,
            task: None,
        }
    }

    /// Check density and rank against the method.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] naming `density` or `rank`.
    pub fn validate(&self) -> Result<()> {
        let m = self.method;
        match (m.uses_density(), self.density) {
            (true, None) => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "this method needs a density in [0, 1] (PEFT has no default)",
                )
                .named(b"density"))
            }
            (false, Some(_)) => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "density applies only to ties, dare_* and magnitude_prune methods",
                )
                .named(b"density"))
            }
            (true, Some(d)) if !(0.0..=1.0).contains(&d) => {
                return Err(
                    Error::new(ErrorKind::InvalidArgument, "density must be in [0, 1]")
                        .named(b"density"),
                )
            }
            (true, Some(d)) if m.is_dare() && d == 0.0 => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "DARE rescales by 1/density: density must be above 0",
                )
                .named(b"density"))
            }
            _ => {}
        }
        match self.rank {
            Some(_) if !m.is_svd() => Err(Error::new(
                ErrorKind::InvalidArgument,
                "rank applies only to the *svd methods (the others' rank is fixed by the inputs)",
            )
            .named(b"rank")),
            Some(r) if r == 0 || r > MAX_RANK => Err(Error::new(
                ErrorKind::InvalidArgument,
                "rank must be in 1..=MAX_RANK",
            )
            .named(b"rank")
            .detail(r as u64, MAX_RANK as u64)),
            _ => Ok(()),
        }
    }
}

/// One module's LoRA in f32: update `scale * B A`.
#[derive(Clone, Debug, PartialEq)]
pub struct Lora {
    /// r x n_in, row-major.
    pub a: Vec<f32>,
    /// n_out x r, row-major.
    pub b: Vec<f32>,
    /// Rank.
    pub r: usize,
    /// Input features.
    pub n_in: usize,
    /// Output features.
    pub n_out: usize,
    /// Module scale.
    pub scale: f32,
}

impl Lora {
    /// The update `scale * B A` (n_out x n_in, row-major), accumulated in f64.
    pub fn delta(&self) -> Vec<f32> {
        let mut d = std::vec![0f32; self.n_out * self.n_in];
        let mut row = std::vec![0f64; self.n_in];
        for o in 0..self.n_out {
            row.fill(0.0);
            for k in 0..self.r {
                let bk = self.b[o * self.r + k] as f64;
                for (x, a) in row
                    .iter_mut()
                    .zip(&self.a[k * self.n_in..(k + 1) * self.n_in])
                {
                    *x += bk * *a as f64;
                }
            }
            for (d, x) in d[o * self.n_in..(o + 1) * self.n_in].iter_mut().zip(&row) {
                *d = (*x * self.scale as f64) as f32;
            }
        }
        d
    }
}

/// Which tensor a DARE mask is drawn for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskFor {
    /// An input's A (non-svd DARE).
    A,
    /// An input's B (non-svd DARE).
    B,
    /// An input's full update (DARE `*_svd`).
    Delta,
}

/// Supplies DARE keep masks.
pub trait MaskSource {
    /// Fill `keep` (the tensor's elements, row-major) with 1.0 to keep, 0.0 to drop, for input
    /// `input` (its index in the inputs given to [`combine`]) on `module` (GGUF target name).
    ///
    /// # Errors
    /// Implementation-defined (a missing supplied mask).
    fn mask(&mut self, module: &str, input: usize, of: MaskFor, keep: &mut [f32]) -> Result<()>;
}

/// Masks drawn from SplitMix64, keyed by (seed, module, input, tensor): each entry is kept with
/// probability `density`.
#[derive(Clone, Copy, Debug)]
pub struct SeededMasks {
    /// The seed.
    pub seed: u64,
    /// Keep probability.
    pub density: f64,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl MaskSource for SeededMasks {
    fn mask(&mut self, module: &str, input: usize, of: MaskFor, keep: &mut [f32]) -> Result<()> {
        // FNV-1a of the key, then SplitMix64 from there: independent of the order of work.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in module
            .bytes()
            .chain((input as u64).to_le_bytes())
            .chain([of as u8])
        {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        let mut st = h ^ self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for k in keep.iter_mut() {
            let u = (splitmix(&mut st) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            *k = if u < self.density { 1.0 } else { 0.0 };
        }
        Ok(())
    }
}

/// Masks given explicitly, keyed by (module, input, tensor): to reproduce a PEFT run whose
/// `torch.bernoulli` draws were recorded.
#[derive(Clone, Debug, Default)]
pub struct GivenMasks {
    /// The masks (0.0 / 1.0, row-major).
    pub masks: BTreeMap<(String, usize, u8), Vec<f32>>,
}

impl GivenMasks {
    /// Add a mask.
    pub fn insert(&mut self, module: &str, input: usize, of: MaskFor, keep: Vec<f32>) {
        self.masks
            .insert((module.to_string(), input, of as u8), keep);
    }
}

impl MaskSource for GivenMasks {
    fn mask(&mut self, module: &str, input: usize, of: MaskFor, keep: &mut [f32]) -> Result<()> {
        let m = self
            .masks
            .get(&(module.to_string(), input, of as u8))
            .filter(|m| m.len() == keep.len())
            .ok_or_else(|| {
                Error::new(ErrorKind::MissingTensor, "no mask (of this size) supplied")
                    .named(module.as_bytes())
            })?;
        keep.copy_from_slice(m);
        Ok(())
    }
}

/// PEFT's `magnitude_based_pruning`: keep the `int(density * n)` largest |x| (ties: lower
/// index first), zero the rest. `density >= 1` keeps everything.
pub fn magnitude_prune_in_place(x: &mut [f32], density: f64) {
    if density >= 1.0 {
        return;
    }
    let k = (density * x.len() as f64) as usize;
    let mut idx: Vec<u32> = (0..x.len() as u32).collect();
    idx.sort_by(|&i, &j| {
        x[j as usize]
            .abs()
            .total_cmp(&x[i as usize].abs())
            .then(i.cmp(&j))
    });
    for &i in &idx[k.min(idx.len())..] {
        x[i as usize] = 0.0;
    }
}

/// PEFT's merge of `tensors` (equal lengths) with `weights`, by `merge`; DARE masks from
/// `masks` (keyed by `module`, the input indices `inputs` and `of`).
#[allow(clippy::too_many_arguments)]
fn merge_tensors(
    merge: Merge,
    mut tensors: Vec<Vec<f32>>,
    weights: &[f32],
    density: f64,
    sign: SignMethod,
    masks: &mut dyn MaskSource,
    module: &str,
    inputs: &[usize],
    of: MaskFor,
) -> Result<Vec<f32>> {
    let n = tensors.first().map_or(0, Vec::len);
    match merge {
        Merge::Sum => {}
        Merge::Ties | Merge::Magnitude => {
            for t in tensors.iter_mut() {
                magnitude_prune_in_place(t, density);
            }
        }
        Merge::DareLinear | Merge::DareTies => {
            if density < 1.0 {
                let mut keep = std::vec![0f32; n];
                for (t, &inp) in tensors.iter_mut().zip(inputs) {
                    masks.mask(module, inp, of, &mut keep)?;
                    let d = density as f32;
                    for (x, k) in t.iter_mut().zip(&keep) {
                        *x = *x * *k / d;
                    }
                }
            }
        }
    }
    let mut out = std::vec![0f32; n];
    match merge {
        Merge::Sum | Merge::Magnitude | Merge::DareLinear => {
            for (t, &w) in tensors.iter().zip(weights) {
                for (o, x) in out.iter_mut().zip(t) {
                    *o += *x * w;
                }
            }
        }
        Merge::Ties | Merge::DareTies => {
            for (e, o) in out.iter_mut().enumerate() {
                let elect: f32 = match sign {
                    SignMethod::Total => tensors.iter().map(|t| t[e]).sum(),
                    SignMethod::Frequency => tensors.iter().map(|t| sgn(t[e])).sum(),
                };
                let major = if elect >= 0.0 { 1.0 } else { -1.0 };
                let (mut s, mut c) = (0f32, 0f32);
                for (t, &w) in tensors.iter().zip(weights) {
                    if sgn(t[e]) == major {
                        s += t[e] * w;
                        c += 1.0;
                    }
                }
                *o = s / c.max(1.0);
            }
        }
    }
    Ok(out)
}

fn sgn(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Combine one module's inputs `(input index, weight, lora)` (at least one; all of the same
/// `n_in` x `n_out`). The result has scale 1 (PEFT's new adapter: `r = lora_alpha`). `rank`
/// is the `*svd` target rank. DARE masks come from `masks`, keyed by `module`.
///
/// # Errors
/// [`ErrorKind::InvalidArgument`] for no inputs or invalid options;
/// [`ErrorKind::ShapeMismatch`] naming `module` for differing shapes or (methods that need
/// them equal) ranks; mask errors.
pub fn combine_module(
    module: &str,
    parts: &[(usize, f32, &Lora)],
    opts: &CombineOptions,
    rank: usize,
    masks: &mut dyn MaskSource,
) -> Result<Lora> {
    opts.validate()?;
    let first = parts
        .first()
        .ok_or_else(|| {
            Error::new(ErrorKind::InvalidArgument, "no inputs for this module")
                .named(module.as_bytes())
        })?
        .2;
    let (n_in, n_out) = (first.n_in, first.n_out);
    for (_, w, l) in parts {
        if l.n_in != n_in || l.n_out != n_out {
            return Err(
                Error::new(ErrorKind::ShapeMismatch, "inputs differ in (in, out)")
                    .named(module.as_bytes())
                    .detail((l.n_in * l.n_out) as u64, (n_in * n_out) as u64),
            );
        }
        if l.a.len() != l.r * n_in || l.b.len() != n_out * l.r {
            return Err(
                Error::new(ErrorKind::BadDims, "A/B lengths vs rank").named(module.as_bytes())
            );
        }
        if !w.is_finite() || !l.scale.is_finite() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "weight and scale must be finite",
            )
            .named(module.as_bytes()));
        }
    }
    // PEFT applies the method even where only one input has the module (it switches to
    // `linear` only when a single adapter is given, which [`combine`] does).
    let method = opts.method;
    let density = opts.density.unwrap_or(1.0);
    let inputs: Vec<usize> = parts.iter().map(|p| p.0).collect();
    let merge = method.merge();
    if method == Method::Cat {
        let r: usize = parts.iter().map(|p| p.2.r).sum();
        let mut a = Vec::with_capacity(r * n_in);
        let mut b = std::vec![0f32; n_out * r];
        let mut col = 0;
        for (_, w, l) in parts {
            let f = *w * l.scale;
            a.extend(l.a.iter().map(|x| x * f));
            for o in 0..n_out {
                b[o * r + col..o * r + col + l.r].copy_from_slice(&l.b[o * l.r..(o + 1) * l.r]);
            }
            col += l.r;
        }
        return Ok(Lora {
            a,
            b,
            r,
            n_in,
            n_out,
            scale: 1.0,
        });
    }
    if method.is_svd() {
        let weights: Vec<f32> = parts.iter().map(|p| p.1).collect();
        let (uf, vt, r_out) = if merge == Merge::Sum {
            // Thin factors: the update is B_cat A_cat with A rows scaled by w_i s_i.
            let rt: usize = parts.iter().map(|p| p.2.r).sum();
            let mut bc = std::vec![0f64; n_out * rt];
            let mut ac = std::vec![0f64; rt * n_in];
            let mut col = 0;
            for (_, w, l) in parts {
                let f = *w as f64 * l.scale as f64;
                for o in 0..n_out {
                    for k in 0..l.r {
                        bc[o * rt + col + k] = l.b[o * l.r + k] as f64;
                    }
                }
                for (d, s) in ac[col * n_in..(col + l.r) * n_in].iter_mut().zip(&l.a) {
                    *d = *s as f64 * f;
                }
                col += l.r;
            }
            svd_of_product(&bc, &ac, n_out, rt, n_in, rank)
        } else {
            let deltas: Vec<Vec<f32>> = parts.iter().map(|p| p.2.delta()).collect();
            let d = merge_tensors(
                merge,
                deltas,
                &weights,
                density,
                opts.majority_sign,
                masks,
                module,
                &inputs,
                MaskFor::Delta,
            )?;
            let d64: Vec<f64> = d.iter().map(|x| *x as f64).collect();
            svd_truncated(&d64, n_out, n_in, rank)
        };
        return Ok(Lora {
            a: vt.iter().map(|x| *x as f32).collect(),
            b: uf.iter().map(|x| *x as f32).collect(),
            r: r_out,
            n_in,
            n_out,
            scale: 1.0,
        });
    }
    // A and B mixed separately with sqrt weights (sign on A only).
    let r = first.r;
    if let Some(l) = parts.iter().find(|p| p.2.r != r) {
        return Err(Error::new(
            ErrorKind::ShapeMismatch,
            "this method needs equal ranks (use cat or svd)",
        )
        .named(module.as_bytes())
        .detail(l.2.r as u64, r as u64));
    }
    let mut wa = Vec::new();
    let mut wb = Vec::new();
    for (_, w, l) in parts {
        let ws = *w as f64 * l.scale as f64;
        let c = libm::sqrt(ws.abs());
        wa.push(if ws >= 0.0 { c } else { -c } as f32);
        wb.push(c as f32);
    }
    let a = merge_tensors(
        merge,
        parts.iter().map(|p| p.2.a.clone()).collect(),
        &wa,
        density,
        opts.majority_sign,
        masks,
        module,
        &inputs,
        MaskFor::A,
    )?;
    let b = merge_tensors(
        merge,
        parts.iter().map(|p| p.2.b.clone()).collect(),
        &wb,
        density,
        opts.majority_sign,
        masks,
        module,
        &inputs,
        MaskFor::B,
    )?;
    Ok(Lora {
        a,
        b,
        r,
        n_in,
        n_out,
        scale: 1.0,
    })
}

// ---------------------------------------------------------------------------------------------
// SVD (f64).

/// Orthonormalise the `k` columns of `x` (rows x k, row-major) in place by modified
/// Gram-Schmidt, twice (re-orthogonalisation); returns R (k x k, upper triangular) with
/// `x_in = Q R`. Columns that vanish (rank deficiency) are left zero with a zero R row.
fn qr_mgs(x: &mut [f64], rows: usize, k: usize) -> Vec<f64> {
    let mut r = std::vec![0f64; k * k];
    let scale: f64 = x
        .iter()
        .map(|v| v * v)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    for j in 0..k {
        let n0 = col_norm(x, rows, k, j);
        for _pass in 0..2 {
            for i in 0..j {
                let mut d = 0.0;
                for t in 0..rows {
                    d += x[t * k + i] * x[t * k + j];
                }
                r[i * k + j] += d;
                for t in 0..rows {
                    x[t * k + j] -= d * x[t * k + i];
                }
            }
        }
        let n = col_norm(x, rows, k, j);
        // A column that is (numerically) in the span of the previous ones adds nothing.
        if n <= 1e-13 * scale || n <= 1e-13 * n0 {
            for t in 0..rows {
                x[t * k + j] = 0.0;
            }
            continue;
        }
        r[j * k + j] = n;
        for t in 0..rows {
            x[t * k + j] /= n;
        }
    }
    r
}

fn col_norm(x: &[f64], rows: usize, k: usize, j: usize) -> f64 {
    (0..rows)
        .map(|t| x[t * k + j] * x[t * k + j])
        .sum::<f64>()
        .sqrt()
}

/// One-sided Jacobi SVD of `m` (rows x cols, row-major, rows >= cols): returns (U S as rows x
/// cols with columns sorted by decreasing singular value, singular values, V as cols x cols).
fn jacobi_svd(m: &[f64], rows: usize, cols: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    // Column-major working copies: w[j] is column j (length rows), v[j] column j of V.
    let mut w: Vec<Vec<f64>> = (0..cols)
        .map(|j| (0..rows).map(|i| m[i * cols + j]).collect())
        .collect();
    let mut v: Vec<Vec<f64>> = (0..cols)
        .map(|j| (0..cols).map(|i| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    for _sweep in 0..80 {
        let mut rotated = false;
        for p in 0..cols {
            for q in p + 1..cols {
                let (mut al, mut be, mut ga) = (0.0, 0.0, 0.0);
                for (x, y) in w[p].iter().zip(&w[q]) {
                    al += x * x;
                    be += y * y;
                    ga += x * y;
                }
                if ga == 0.0 || ga.abs() <= 1e-14 * (al * be).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (be - al) / (2.0 * ga);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                let (lo, hi) = w.split_at_mut(q);
                for (x, y) in lo[p].iter_mut().zip(hi[0].iter_mut()) {
                    let (a, b) = (*x, *y);
                    *x = c * a - s * b;
                    *y = s * a + c * b;
                }
                let (lo, hi) = v.split_at_mut(q);
                for (x, y) in lo[p].iter_mut().zip(hi[0].iter_mut()) {
                    let (a, b) = (*x, *y);
                    *x = c * a - s * b;
                    *y = s * a + c * b;
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let sv: Vec<f64> = w
        .iter()
        .map(|c| c.iter().map(|x| x * x).sum::<f64>().sqrt())
        .collect();
    let mut order: Vec<usize> = (0..cols).collect();
    order.sort_by(|&i, &j| sv[j].total_cmp(&sv[i]).then(i.cmp(&j)));
    let mut us = std::vec![0f64; rows * cols];
    let mut vv = std::vec![0f64; cols * cols];
    let mut s = std::vec![0f64; cols];
    for (dst, &src) in order.iter().enumerate() {
        s[dst] = sv[src];
        for i in 0..rows {
            us[i * cols + dst] = w[src][i];
        }
        for i in 0..cols {
            vv[i * cols + dst] = v[src][i];
        }
    }
    (us, s, vv)
}

/// Best rank-`rank` factorisation of `b a` (b: n_out x k, a: k x n_in): returns
/// (`U_R S_R`: n_out x R', `V_R^T`: R' x n_in, R') with `R' = min(rank, k, n_in, n_out)`.
fn svd_of_product(
    b: &[f64],
    a: &[f64],
    n_out: usize,
    k: usize,
    n_in: usize,
    rank: usize,
) -> (Vec<f64>, Vec<f64>, usize) {
    let mut qb = b.to_vec();
    let rb = qr_mgs(&mut qb, n_out, k);
    let mut qa = std::vec![0f64; n_in * k];
    for i in 0..k {
        for j in 0..n_in {
            qa[j * k + i] = a[i * n_in + j];
        }
    }
    let ra = qr_mgs(&mut qa, n_in, k);
    // C = Rb Ra^T (k x k).
    let mut c = std::vec![0f64; k * k];
    for i in 0..k {
        for j in 0..k {
            c[i * k + j] = (0..k).map(|t| rb[i * k + t] * ra[j * k + t]).sum();
        }
    }
    let (us, _s, v) = jacobi_svd(&c, k, k);
    let r = rank.min(k).min(n_in).min(n_out);
    // B' = Qb (U S)[:, :r]; A' = (Qa V[:, :r])^T.
    let mut bo = std::vec![0f64; n_out * r];
    for o in 0..n_out {
        for j in 0..r {
            bo[o * r + j] = (0..k).map(|t| qb[o * k + t] * us[t * k + j]).sum();
        }
    }
    let mut ao = std::vec![0f64; r * n_in];
    for j in 0..r {
        for x in 0..n_in {
            ao[j * n_in + x] = (0..k).map(|t| qa[x * k + t] * v[t * k + j]).sum();
        }
    }
    (bo, ao, r)
}

/// Best rank-`rank` factorisation of `m` (rows x cols): (`U_R S_R`, `V_R^T`, R') with
/// `R' = min(rank, rows, cols)`. Exact Jacobi when the smaller side is at most
/// [`EXACT_SVD_MAX`], else subspace iteration.
pub fn svd_truncated(
    m: &[f64],
    rows: usize,
    cols: usize,
    rank: usize,
) -> (Vec<f64>, Vec<f64>, usize) {
    let r = rank.min(rows).min(cols);
    let small = rows.min(cols);
    // Basis Q (cols x p) of the row space to work in.
    let p = if small <= EXACT_SVD_MAX {
        small
    } else {
        (2 * r + 16).min(small)
    };
    if p == cols {
        // Work on M itself (rows >= cols) or its transpose.
        if rows >= cols {
            let (us, _s, v) = jacobi_svd(m, rows, cols);
            return take_factors(&us, &v, rows, cols, cols, r, None);
        }
    }
    if p == rows && small <= EXACT_SVD_MAX {
        // M^T (cols x rows) = V S U^T: its "U S" is V S, its V is U.
        let mut t = std::vec![0f64; m.len()];
        for i in 0..rows {
            for j in 0..cols {
                t[j * rows + i] = m[i * cols + j];
            }
        }
        let (vs, s, u) = jacobi_svd(&t, cols, rows);
        let mut b = std::vec![0f64; rows * r];
        let mut a = std::vec![0f64; r * cols];
        for j in 0..r {
            for i in 0..rows {
                b[i * r + j] = u[i * rows + j] * s[j];
            }
            if s[j] > 0.0 {
                for x in 0..cols {
                    a[j * cols + x] = vs[x * rows + j] / s[j];
                }
            }
        }
        return (b, a, r);
    }
    // Subspace iteration on M^T M with a deterministic start.
    let mut q = std::vec![0f64; cols * p];
    let mut st = 0x5eed_u64;
    for x in q.iter_mut() {
        *x = (splitmix(&mut st) >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
    }
    qr_mgs(&mut q, cols, p);
    let mut prev = std::vec![0f64; r];
    let mut mq = std::vec![0f64; rows * p];
    let mut gram = std::vec![0f64; p * p];
    matmul(m, &q, &mut mq, rows, cols, p);
    for it in 0..300 {
        // q = M^T (M q), orthonormalised (accumulated row by row of M: contiguous inner loops).
        q.fill(0.0);
        for i in 0..rows {
            let mq_i = &mq[i * p..(i + 1) * p];
            for (x, mv) in m[i * cols..(i + 1) * cols].iter().enumerate() {
                for (d, v) in q[x * p..(x + 1) * p].iter_mut().zip(mq_i) {
                    *d += mv * v;
                }
            }
        }
        qr_mgs(&mut q, cols, p);
        matmul(m, &q, &mut mq, rows, cols, p);
        // Ritz values from the small Gram matrix (M Q)^T (M Q): its eigenvalues are sigma^2.
        gram.fill(0.0);
        for row in mq.chunks_exact(p) {
            for (a, x) in row.iter().enumerate() {
                for (g, y) in gram[a * p..(a + 1) * p].iter_mut().zip(row) {
                    *g += x * y;
                }
            }
        }
        let (_, s2, _) = jacobi_svd(&gram, p, p);
        let s: Vec<f64> = s2.iter().map(|v| v.max(0.0).sqrt()).collect();
        let done = it > 2
            && s.iter()
                .zip(&prev)
                .take(r)
                .all(|(a, b)| (a - b).abs() <= 1e-12 * s[0].max(f64::MIN_POSITIVE));
        prev.copy_from_slice(&s[..r]);
        if done {
            break;
        }
    }
    // Rayleigh-Ritz: M Q = U S W^T, so M ~ U S (Q W)^T.
    let (us, _s, w) = jacobi_svd(&mq, rows, p);
    take_factors(&us, &w, rows, p, cols, r, Some(&q))
}

/// `out = m q` (rows x cols times cols x p), inner loops over contiguous rows.
fn matmul(m: &[f64], q: &[f64], out: &mut [f64], rows: usize, cols: usize, p: usize) {
    out.fill(0.0);
    for i in 0..rows {
        let o = &mut out[i * p..(i + 1) * p];
        for (x, mv) in m[i * cols..(i + 1) * cols].iter().enumerate() {
            for (d, v) in o.iter_mut().zip(&q[x * p..(x + 1) * p]) {
                *d += mv * v;
            }
        }
    }
}

/// From `US` (rows x p) and `W` (p x p) take R columns; the right factor is `(Q W)^T` when a
/// basis `Q` (cols x p) is given, else `W^T` (then cols == p).
fn take_factors(
    us: &[f64],
    w: &[f64],
    rows: usize,
    p: usize,
    cols: usize,
    r: usize,
    q: Option<&[f64]>,
) -> (Vec<f64>, Vec<f64>, usize) {
    let mut b = std::vec![0f64; rows * r];
    for i in 0..rows {
        b[i * r..(i + 1) * r].copy_from_slice(&us[i * p..i * p + r]);
    }
    let mut a = std::vec![0f64; r * cols];
    for j in 0..r {
        for x in 0..cols {
            a[j * cols + x] = match q {
                Some(q) => (0..p).map(|t| q[x * p + t] * w[t * p + j]).sum(),
                None => w[x * p + j],
            };
        }
    }
    (b, a, r)
}

// ---------------------------------------------------------------------------------------------
// Files.

/// One input adapter.
#[derive(Clone, Copy, Debug)]
pub struct CombineInput<'r, 'a> {
    /// The parsed adapter.
    pub adapter: &'r Adapter<'a>,
    /// Its weight (any finite value; negative subtracts).
    pub weight: f32,
    /// A label for errors and provenance (the file name).
    pub label: &'r str,
}

/// What [`combine`] did.
#[derive(Clone, Debug, Default)]
pub struct CombineReport {
    /// `(target, rank)` of each pair written.
    pub pairs: Vec<(String, usize)>,
    /// PEFT's rank for the new adapter (also its alpha).
    pub rank: usize,
    /// The method actually used (PEFT uses `linear` for one input).
    pub method: &'static str,
    /// Notes for the user.
    pub notes: Vec<String>,
}

fn input_err(kind: ErrorKind, what: &'static str, label: &str) -> Error {
    Error::new(kind, what).named(label.as_bytes())
}

/// One input's pair in f32, with its module scale `alpha / r`.
fn load_pair(ad: &Adapter<'_>, p: &LoraPair<'_>) -> Result<Lora> {
    let (r, n_in, n_out) = (p.rank(), p.a.cols(), p.b.rows());
    let mut a = std::vec![0f32; r * n_in];
    for (k, row) in a.chunks_exact_mut(n_in).enumerate() {
        p.a.dequantize_row(k, row)?;
    }
    let mut b = std::vec![0f32; n_out * r];
    for (o, row) in b.chunks_exact_mut(r).enumerate() {
        p.b.dequantize_row(o, row)?;
    }
    Ok(Lora {
        a,
        b,
        r,
        n_in,
        n_out,
        scale: ad.alpha() / r as f32,
    })
}

/// Combine GGUF adapters into a new GGUF adapter (same layout: it binds, merges and streams
/// like a converted one).
///
/// Inputs must be for one base: same `general.architecture`, and same shape fingerprint (or,
/// when some input lacks it, same exact fingerprint); exact fingerprints are kept when all
/// agree. DoRA inputs and inputs carrying a replacement output head are refused (PEFT's
/// combination does not cover them: it refuses `modules_to_save` clashes and mixes only A/B).
/// The output records `adapter.edgelora.combine` (method, inputs, weights, density, rank,
/// seed when given in `provenance_seed`), the inputs' fingerprints and the joined task names.
///
/// # Errors
/// [`ErrorKind::InvalidArgument`] for no inputs or bad options (naming `density`/`rank`);
/// [`ErrorKind::BadValue`] naming the input for another base, DoRA or a head;
/// [`ErrorKind::ShapeMismatch`] naming the input or tensor for rank rules PEFT enforces
/// (equal ranks for `linear`, `ties`, `dare_*`, `magnitude_prune`) or differing shapes;
/// [`ErrorKind::TooMany`] when `cat`'s rank exceeds [`MAX_RANK`]; mask errors.
pub fn combine(
    inputs: &[CombineInput<'_, '_>],
    opts: &CombineOptions,
    masks: &mut dyn MaskSource,
    provenance_seed: Option<u64>,
) -> Result<(Vec<u8>, CombineReport)> {
    combine_with_progress(inputs, opts, masks, provenance_seed, &mut |_, _| {})
}

/// [`combine`], calling `progress(done, total)` as the modules are combined (for a progress
/// bar: the `*svd` methods take about 3 s on SmolLM2-135M's 60 modules, and grow with width).
///
/// # Errors
/// As [`combine`].
pub fn combine_with_progress(
    inputs: &[CombineInput<'_, '_>],
    opts: &CombineOptions,
    masks: &mut dyn MaskSource,
    provenance_seed: Option<u64>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<u8>, CombineReport)> {
    opts.validate()?;
    let first = inputs
        .first()
        .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "no input adapters"))?;
    let method = if inputs.len() == 1 {
        Method::Linear
    } else {
        opts.method
    };
    if inputs.len() == 1 && opts.method.uses_density() {
        // PEFT switches to linear for one adapter; a density would silently do nothing.
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "one input is combined with linear (as PEFT does): density has no effect",
        )
        .named(b"density"));
    }
    if inputs.len() == 1 && opts.rank.is_some() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "one input is combined with linear (as PEFT does): rank has no effect",
        )
        .named(b"rank"));
    }
    let arch = first.adapter.gguf().get_str("general.architecture").ok();
    let fp = |i: &CombineInput<'_, '_>| i.adapter.fingerprint();
    let sfp = |i: &CombineInput<'_, '_>| {
        i.adapter
            .gguf()
            .get(SHAPE_FINGERPRINT_KEY)
            .and_then(|v| v.as_int())
            .and_then(|v| u64::try_from(v).ok())
    };
    for inp in inputs {
        if !inp.weight.is_finite() {
            return Err(input_err(
                ErrorKind::InvalidArgument,
                "weight must be finite",
                inp.label,
            ));
        }
        if inp.adapter.gguf().get_str("general.architecture").ok() != arch {
            return Err(input_err(
                ErrorKind::BadValue,
                "inputs are for different architectures",
                inp.label,
            ));
        }
        let same_shape = match (sfp(inp), sfp(first)) {
            (Some(x), Some(y)) => x == y,
            _ => fp(inp) == fp(first),
        };
        if !same_shape {
            return Err(input_err(
                ErrorKind::BadValue,
                "inputs were converted for different bases (base fingerprint)",
                inp.label,
            ));
        }
        if inp.adapter.head().is_some() {
            return Err(input_err(
                ErrorKind::BadValue,
                "input replaces the output head (output.weight): heads cannot be combined",
                inp.label,
            ));
        }
        if inp.adapter.pairs().any(|(_, p)| p.dora.is_some()) {
            return Err(input_err(
                ErrorKind::BadValue,
                "DoRA input: its per-row magnitudes cannot be combined",
                inp.label,
            ));
        }
    }
    let ranks: Vec<usize> = inputs.iter().map(|i| i.adapter.max_rank()).collect();
    let new_rank = if method.needs_equal_rank() {
        if let Some(i) = inputs.iter().zip(&ranks).find(|(_, r)| **r != ranks[0]) {
            return Err(input_err(
                ErrorKind::ShapeMismatch,
                "linear, ties, dare_* and magnitude_prune need inputs of equal rank (use cat or svd)",
                i.0.label,
            )
            .detail(*i.1 as u64, ranks[0] as u64));
        }
        ranks[0]
    } else if method == Method::Cat {
        let s: usize = ranks.iter().sum();
        if s > MAX_RANK {
            return Err(Error::new(
                ErrorKind::TooMany,
                "cat: the sum of the ranks exceeds MAX_RANK (use svd with a rank)",
            )
            .named(b"rank")
            .detail(s as u64, MAX_RANK as u64));
        }
        s
    } else {
        opts.rank
            .unwrap_or_else(|| ranks.iter().copied().max().unwrap_or(1))
    };
    // Union of targets in (layer, linear) order; names that are not per-layer linears last.
    // Each input's pairs by target, resolved once.
    let by_name: Vec<BTreeMap<&str, LoraPair<'_>>> =
        inputs.iter().map(|i| i.adapter.pairs().collect()).collect();
    let mut targets: Vec<&str> = by_name.iter().flat_map(|m| m.keys().copied()).collect();
    targets.sort_by_key(|n| (parse_target(n).unwrap_or((usize::MAX, usize::MAX)), *n));
    targets.dedup();

    let mut w = GgufWriter::new();
    if let Some(a) = arch {
        w.set("general.architecture", OwnedValue::Str(a.to_string()));
    }
    w.set("general.type", OwnedValue::Str("adapter".into()));
    w.set("adapter.type", OwnedValue::Str("lora".into()));
    w.set("adapter.lora.alpha", OwnedValue::F32(new_rank as f32));
    let fps: Vec<Option<u64>> = inputs.iter().map(fp).collect();
    if let Some(f) = fps[0].filter(|f| fps.iter().all(|g| *g == Some(*f))) {
        w.set(FINGERPRINT_KEY, OwnedValue::U64(f));
    }
    let sfps: Vec<Option<u64>> = inputs.iter().map(sfp).collect();
    if let Some(f) = sfps[0].filter(|f| sfps.iter().all(|g| *g == Some(*f))) {
        w.set(SHAPE_FINGERPRINT_KEY, OwnedValue::U64(f));
    }
    if fps.iter().all(Option::is_some) {
        w.set(
            "adapter.edgelora.combine.base_fingerprints",
            OwnedValue::Array(
                fps.iter()
                    .map(|f| OwnedValue::U64(f.unwrap_or(0)))
                    .collect(),
            ),
        );
    }
    let task = opts.task.clone().unwrap_or_else(|| {
        inputs
            .iter()
            .map(|i| {
                i.adapter
                    .gguf()
                    .get_str("adapter.edgelora.task")
                    .map_or_else(|_| i.label.to_string(), |t| t.to_string())
            })
            .collect::<Vec<_>>()
            .join("+")
    });
    w.set("adapter.edgelora.task", OwnedValue::Str(task));
    let mut prov = ["method=", method.name()].concat();
    for inp in inputs {
        prov.push_str(&std::format!(" {}:{}", inp.label, inp.weight));
    }
    if let Some(d) = opts.density {
        prov.push_str(&std::format!(" density={d}"));
    }
    if method.is_svd() {
        prov.push_str(&std::format!(" rank={new_rank}"));
    }
    if opts.majority_sign == SignMethod::Frequency {
        prov.push_str(" majority_sign=frequency");
    }
    if let Some(s) = provenance_seed.filter(|_| method.is_dare()) {
        prov.push_str(&std::format!(" seed={s}"));
    }
    w.set("adapter.edgelora.combine", OwnedValue::Str(prov));

    let mut report = CombineReport {
        rank: new_rank,
        method: method.name(),
        ..Default::default()
    };
    let opts_m = CombineOptions {
        method,
        ..opts.clone()
    };
    let mut maxr = 0;
    let total = targets.len();
    for (done, name) in targets.into_iter().enumerate() {
        progress(done, total);
        if name == HEAD_TENSOR {
            continue;
        }
        let mut loras = Vec::new();
        for (i, (inp, pairs)) in inputs.iter().zip(&by_name).enumerate() {
            if let Some(p) = pairs.get(name) {
                loras.push((i, inp.weight, load_pair(inp.adapter, p)?));
            }
        }
        let parts: Vec<(usize, f32, &Lora)> = loras.iter().map(|(i, w, l)| (*i, *w, l)).collect();
        let mut out = combine_module(name, &parts, &opts_m, new_rank, masks)?;
        if out.r == 0 {
            continue;
        }
        // Runtime scale is alpha / r = new_rank / r: fold its inverse into B.
        let fold = out.r as f32 / new_rank as f32;
        for x in out.b.iter_mut() {
            *x *= fold;
        }
        super::convert::write_pair(
            &mut w,
            name,
            (&out.a, &out.b),
            (out.n_in, out.r, out.n_out),
            opts.dtype,
            &mut report.notes,
        )?;
        maxr = maxr.max(out.r);
        report.pairs.push((name.to_string(), out.r));
    }
    progress(total, total);
    if report.pairs.is_empty() {
        return Err(Error::new(
            ErrorKind::MissingTensor,
            "inputs have no LoRA pairs",
        ));
    }
    w.set(
        "adapter.edgelora.rank",
        OwnedValue::U32(new_rank.max(maxr) as u32),
    );
    Ok((w.to_bytes(), report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| (splitmix(&mut s) >> 11) as f64 / (1u64 << 53) as f64 - 0.5)
            .collect()
    }

    fn mul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut o = std::vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                o[i * n + j] = (0..k).map(|t| a[i * k + t] * b[t * n + j]).sum();
            }
        }
        o
    }

    fn rel(a: &[f64], b: &[f64]) -> f64 {
        let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
        let n: f64 = b.iter().map(|y| y * y).sum();
        (d / n.max(f64::MIN_POSITIVE)).sqrt()
    }

    #[test]
    fn jacobi_reconstructs() {
        for (r, c) in [(1, 1), (5, 3), (7, 7), (40, 13)] {
            let m = rnd(r * c, r as u64 * 31 + c as u64);
            let (us, s, v) = jacobi_svd(&m, r, c);
            assert!(s.windows(2).all(|w| w[0] >= w[1]));
            let mut vt = std::vec![0f64; c * c];
            for i in 0..c {
                for j in 0..c {
                    vt[j * c + i] = v[i * c + j];
                }
            }
            assert!(rel(&mul(&us, &vt, r, c, c), &m) < 1e-12);
            // V orthogonal.
            let vtv = mul(&vt, &v, c, c, c);
            for i in 0..c {
                for j in 0..c {
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((vtv[i * c + j] - want).abs() < 1e-12);
                }
            }
        }
    }

    /// Rank-R truncation by every path equals the exact one (Eckart-Young is unique when
    /// sigma_R > sigma_R+1, true for random matrices).
    #[test]
    fn truncation_paths_agree() {
        // Low rank (4) plus small noise, so subspace iteration converges quickly.
        let (rows, cols, k) = (300, 280, 4);
        let b = rnd(rows * k, 1);
        let a = rnd(k * cols, 2);
        let mut m = mul(&b, &a, rows, k, cols);
        for (x, n) in m.iter_mut().zip(rnd(rows * cols, 3)) {
            *x += 1e-3 * n;
        }
        let (u1, v1, r1) = svd_truncated(&m, rows, cols, 3);
        assert_eq!(r1, 3);
        let p1 = mul(&u1, &v1, rows, 3, cols);
        // Exact: transpose-free Jacobi on the whole matrix.
        let (us, _s, v) = jacobi_svd(&m, rows, cols);
        let (u2, v2, _) = take_factors(&us, &v, rows, cols, cols, 3, None);
        let p2 = mul(&u2, &v2, rows, 3, cols);
        assert!(rel(&p1, &p2) < 1e-9, "{}", rel(&p1, &p2));
        // Wide small matrix (transpose path) vs the product path.
        let (rows, cols, k) = (6, 20, 3);
        let b = rnd(rows * k, 4);
        let a = rnd(k * cols, 5);
        let m = mul(&b, &a, rows, k, cols);
        let (u3, v3, r3) = svd_truncated(&m, rows, cols, 2);
        let (u4, v4, r4) = svd_of_product(&b, &a, rows, k, cols, 2);
        assert_eq!((r3, r4), (2, 2));
        assert!(rel(&mul(&u3, &v3, rows, 2, cols), &mul(&u4, &v4, rows, 2, cols)) < 1e-10);
        // Full rank keeps the product exactly.
        let (u5, v5, r5) = svd_of_product(&b, &a, rows, k, cols, 8);
        assert_eq!(r5, 3);
        assert!(rel(&mul(&u5, &v5, rows, 3, cols), &m) < 1e-12);
    }

    /// The subspace path on a wide matrix (rows < cols, both above EXACT_SVD_MAX) against
    /// exact Jacobi of its transpose.
    #[test]
    fn subspace_wide_matches_exact() {
        let (rows, cols, k) = (120, 300, 6);
        let b = rnd(rows * k, 11);
        let a = rnd(k * cols, 12);
        let mut m = mul(&b, &a, rows, k, cols);
        for (x, n) in m.iter_mut().zip(rnd(rows * cols, 13)) {
            *x += 1e-2 * n;
        }
        let (u1, v1, r1) = svd_truncated(&m, rows, cols, 4);
        assert_eq!(r1, 4);
        let mut t = std::vec![0f64; m.len()];
        for i in 0..rows {
            for j in 0..cols {
                t[j * rows + i] = m[i * cols + j];
            }
        }
        // M^T = V S U^T: the exact rank-4 part of M is U S V^T from those factors.
        let (vs, _s, u) = jacobi_svd(&t, cols, rows);
        let mut exact = std::vec![0f64; rows * cols];
        for i in 0..rows {
            for x in 0..cols {
                exact[i * cols + x] = (0..4).map(|j| u[i * rows + j] * vs[x * rows + j]).sum();
            }
        }
        let e = rel(&mul(&u1, &v1, rows, 4, cols), &exact);
        assert!(e < 1e-9, "{e}");
    }

    #[test]
    fn product_svd_rank_deficient() {
        // Two identical factor columns: B_cat has rank 1.
        let (n_out, k, n_in) = (5, 2, 4);
        let col = rnd(n_out, 9);
        let mut b = std::vec![0f64; n_out * k];
        for o in 0..n_out {
            b[o * k] = col[o];
            b[o * k + 1] = col[o];
        }
        let a = rnd(k * n_in, 10);
        let (u, v, r) = svd_of_product(&b, &a, n_out, k, n_in, 2);
        assert!(rel(&mul(&u, &v, n_out, r, n_in), &mul(&b, &a, n_out, k, n_in)) < 1e-12);
    }

    #[test]
    fn magnitude_prune_keeps_top_k() {
        let mut x = [0.1f32, -3.0, 2.0, 0.5, -0.2];
        magnitude_prune_in_place(&mut x, 0.4);
        assert_eq!(x, [0.0, -3.0, 2.0, 0.0, 0.0]);
        let mut y = [1.0f32, 1.0];
        magnitude_prune_in_place(&mut y, 0.0);
        assert_eq!(y, [0.0, 0.0]);
    }

    #[test]
    fn ties_sign_election() {
        // Element 0: +1 (w 1) and -3 (w 1): total -2 -> keep -3 only.
        let t = std::vec![std::vec![1.0f32, 2.0], std::vec![-3.0, 4.0]];
        let mut m = SeededMasks {
            seed: 0,
            density: 1.0,
        };
        let out = merge_tensors(
            Merge::Ties,
            t.clone(),
            &[1.0, 1.0],
            1.0,
            SignMethod::Total,
            &mut m,
            "x",
            &[0, 1],
            MaskFor::A,
        )
        .unwrap();
        assert_eq!(out, [-3.0, 3.0]);
        let out = merge_tensors(
            Merge::Ties,
            t,
            &[1.0, 1.0],
            1.0,
            SignMethod::Frequency,
            &mut m,
            "x",
            &[0, 1],
            MaskFor::A,
        )
        .unwrap();
        // Frequency: one +, one - -> sum 0 -> majority +.
        assert_eq!(out, [1.0, 3.0]);
    }

    #[test]
    fn seeded_masks_reproducible_and_dense() {
        let mut m = SeededMasks {
            seed: 7,
            density: 0.3,
        };
        let (mut a, mut b, mut c) = (
            std::vec![0f32; 10000],
            std::vec![0f32; 10000],
            std::vec![0f32; 10000],
        );
        m.mask("blk.0.attn_q.weight", 1, MaskFor::A, &mut a)
            .unwrap();
        m.mask("blk.0.attn_q.weight", 1, MaskFor::A, &mut b)
            .unwrap();
        m.mask("blk.0.attn_q.weight", 1, MaskFor::B, &mut c)
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let kept: f32 = a.iter().sum();
        // Binomial(10000, 0.3): sd 45.8; 5 sd.
        assert!((kept - 3000.0).abs() < 230.0, "{kept}");
    }

    #[test]
    fn options_refused() {
        assert_eq!(
            Method::parse("nope").unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        for (n, m) in METHODS {
            assert_eq!(Method::parse(n).unwrap(), m);
            assert_eq!(m.name(), n);
        }
        let mut o = CombineOptions::new(Method::Ties);
        assert!(o.validate().is_err());
        o.density = Some(1.5);
        assert!(o.validate().is_err());
        o.density = Some(0.5);
        assert!(o.validate().is_ok());
        o.rank = Some(4);
        assert!(o.validate().is_err());
        let mut o = CombineOptions::new(Method::DareLinear);
        o.density = Some(0.0);
        assert!(o.validate().is_err());
        let mut o = CombineOptions::new(Method::Svd);
        o.rank = Some(0);
        assert!(o.validate().is_err());
    }
}
