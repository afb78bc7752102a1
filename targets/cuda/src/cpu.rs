//! The CPU side of per-layer parity: `Model::forward`'s step, repeated here op for op on the
//! core's public kernels, recording the residual stream after every layer.
//!
//! `edgelora::model::Model` exposes only the final hidden state ([`edgelora::model::State::hidden`]),
//! and the core stays free of debugging hooks, so this module re-runs the same data flow on the
//! same public building blocks: [`edgelora::kernels::matvec`] (the reference path) or
//! [`edgelora::kernels::matvec_input`] (the fast path), [`AdapterSet::apply`] for LoRA, the
//! core's [`edgelora::model::softmax`], and the same formulas for rmsnorm, rope (with the table
//! the core's own `rope_table`), SwiGLU and the residual adds, in the same order.
//! A test (`tests/cpu_trace.rs`) checks that its logits and final hidden state equal
//! `Model::forward_with`'s bit for bit, in both kernel modes, with and without adapters; that is
//! what makes its per-layer states trustworthy stand-ins for the core's.
//!
//! With a [`Jitter`] seed it also injects, after every op the GPU computes in a different order,
//! an error of the size [`crate::tol`] bounds that op's CPU/GPU difference by, with a random
//! sign: [`derive_tolerance`] turns those runs into the model-level tolerances.

use edgelora::kernels::{self, matvec, matvec_input, reference, Input, KernelMode, MatRef};
use edgelora::lora::{AdapterSet, MAX_RANK};
use edgelora::model::{softmax, Config, Model, LINEARS};
use edgelora::quant::GgmlType;
use edgelora::{Error, ErrorKind, Gguf};

use crate::tol;

/// Hidden states after every layer and the logits, for `n` tokens at positions `0..n`.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// Residual width.
    pub dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Per layer: the residual stream after that layer, `n x dim` row-major.
    pub hidden: Vec<Vec<f32>>,
    /// `n x vocab` row-major.
    pub logits: Vec<f32>,
}

impl Trace {
    /// Number of positions traced.
    pub fn len(&self) -> usize {
        self.logits.len() / self.vocab.max(1)
    }

    /// True if no position was traced.
    pub fn is_empty(&self) -> bool {
        self.logits.is_empty()
    }

    /// The logits of position `p`.
    pub fn logits_at(&self, p: usize) -> &[f32] {
        &self.logits[p * self.vocab..(p + 1) * self.vocab]
    }
}

/// Read `output_norm.weight` (the core's `Model` keeps it private).
///
/// # Errors
/// [`ErrorKind::MissingTensor`] or [`ErrorKind::ShapeMismatch`] naming the tensor.
pub fn output_norm(g: &Gguf<'_>, cfg: &Config) -> edgelora::Result<Vec<f32>> {
    let t = g.tensor("output_norm.weight")?;
    if t.ty != GgmlType::F32 || t.data.len() != cfg.dim * 4 {
        return Err(
            Error::new(ErrorKind::ShapeMismatch, "output_norm.weight (F32, dim)")
                .named(b"output_norm.weight"),
        );
    }
    Ok(f32s(t.data))
}

/// Little-endian f32 bytes to values.
pub fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The (cos, sin) pairs for `pos`: the core's own table (f32, rounded where Hugging Face
/// rounds), so the trace and the GPU path rotate by exactly what `Model::forward_with` does.
pub use edgelora::model::rope_table;

/// `out = x / rms(x) * w`, the core's formula; `jit` multiplies the reciprocal (injection).
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32, jit: f32) {
    let n = x.len().max(1) as f32;
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / n;
    let inv = 1.0 / libm::sqrtf(ss + eps) * jit;
    for ((o, &v), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = v * inv * wi;
    }
}

/// Rotate adjacent pairs of every head, the core's formula.
pub fn rope(x: &mut [f32], head_dim: usize, table: &[f32]) {
    for head in x.chunks_exact_mut(head_dim) {
        for (pair, cs) in head.chunks_exact_mut(2).zip(table.chunks_exact(2)) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * cs[0] - b * cs[1];
            pair[1] = a * cs[1] + b * cs[0];
        }
    }
}

/// `x / (1 + exp(-x))`, the core's formula.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + libm::expf(-x))
}

/// Error injection: a seeded source of signs in [-1, 1].
#[derive(Clone, Debug)]
pub struct Jitter(u64);

impl Jitter {
    /// A new stream for `seed`.
    pub fn new(seed: u64) -> Self {
        Jitter(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// Uniform in [-1, 1] (splitmix64).
    pub fn sample(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    /// `1 + xi * rel` for a fresh xi.
    fn factor(&mut self, rel: f64) -> f32 {
        (1.0 + self.sample() * rel) as f32
    }
}

/// Per row of `w`: the chunk sums' absolute sum `sum_c |b_c|` of `w x` (dequantising as the
/// reference does), and the number of chunks.
pub fn chunk_abs_sums(w: &MatRef<'_>, x: &[f32]) -> (Vec<f64>, usize) {
    let nb = w.cols().div_ceil(32);
    let mut buf = vec![0f32; w.cols()];
    let sums = (0..w.rows())
        .map(|r| {
            let row = w.row(r).unwrap_or(&[]);
            reference::dequantize_row(w.ty(), row, &mut buf);
            buf.chunks(32)
                .zip(x.chunks(32))
                .map(|(a, b)| reference::dot_f32(a, b).abs() as f64)
                .sum()
        })
        .collect();
    (sums, nb)
}

/// Per row of `w`: `sum_j |w_rj| |x_j|`.
fn abs_matvec(w: &MatRef<'_>, x: &[f32]) -> Vec<f64> {
    let mut buf = vec![0f32; w.cols()];
    (0..w.rows())
        .map(|r| {
            reference::dequantize_row(w.ty(), w.row(r).unwrap_or(&[]), &mut buf);
            buf.iter()
                .zip(x)
                .map(|(a, b)| (a.abs() * b.abs()) as f64)
                .sum()
        })
        .collect()
}

/// Bound on the CPU/GPU difference of every output of `y = W x (+ LoRA)` for linear `lin` of
/// layer `l` (`None` for the output head): the reorder bound of the base matvec plus, per
/// adapter, the scaled bound of `B (A x)` including how A's own bound propagates through B.
fn linear_bound(
    w: &MatRef<'_>,
    x: &[f32],
    set: &AdapterSet<'_, '_, '_>,
    at: Option<(usize, usize)>,
) -> Vec<f64> {
    let (sums, nb) = chunk_abs_sums(w, x);
    let mut bound: Vec<f64> = sums
        .iter()
        .map(|&s| tol::sum_reorder_bound(nb, s))
        .collect();
    let Some((l, lin)) = at else { return bound };
    for (ad, user) in set.iter() {
        let Some(p) = ad.pair(l, lin) else { continue };
        let r = p.rank();
        let s = (user * ad.alpha() / r as f32).abs() as f64;
        let mut t = vec![0f32; r];
        matvec(&p.a, x, &mut t);
        let (ta, na) = chunk_abs_sums(&p.a, x);
        let t_bound: Vec<f32> = ta
            .iter()
            .map(|&v| tol::sum_reorder_bound(na, v) as f32)
            .collect();
        let (bs, nbb) = chunk_abs_sums(&p.b, &t);
        let prop = abs_matvec(&p.b, &t_bound);
        let dora = p.dora.map(f32s);
        for (i, o) in bound.iter_mut().enumerate() {
            let g = dora
                .as_ref()
                .map_or(1.0, |d| d.get(i).map_or(1.0, |v| v.abs() as f64));
            *o = (*o + s * (tol::sum_reorder_bound(nbb, bs[i]) + prop[i]) + U2 * s * bs[i]) * g;
        }
    }
    bound
}

/// Two roundings' worth of relative slack for the LoRA accumulate (`y + s * t`).
const U2: f64 = 2.0 * tol::U;

fn jitter_add(y: &mut [f32], bound: &[f64], j: &mut Jitter) {
    for (v, b) in y.iter_mut().zip(bound) {
        *v += (j.sample() * b) as f32;
    }
}

/// Run `tokens` at positions `0..n` on the CPU in `mode`, recording every layer. With
/// `jitter`, inject rounding-sized differences (reference mode only; see [`crate::tol`]).
///
/// # Errors
/// [`ErrorKind::TokenOutOfRange`] for a token outside the vocabulary, [`ErrorKind::InvalidArgument`]
/// for an empty token list or an adapter bound to another model, tensor errors from the GGUF.
pub fn trace(
    model: &Model<'_>,
    g: &Gguf<'_>,
    set: &AdapterSet<'_, '_, '_>,
    tokens: &[u32],
    mode: KernelMode,
    jitter: Option<u64>,
) -> edgelora::Result<Trace> {
    let c = *model.config();
    if tokens.is_empty() {
        return Err(Error::new(ErrorKind::InvalidArgument, "no tokens"));
    }
    if let Some(&t) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
        return Err(
            Error::new(ErrorKind::TokenOutOfRange, "token id").detail(t as u64, c.vocab as u64)
        );
    }
    if set.iter().any(|(a, _)| a.n_layers() != c.n_layers) {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "adapter was bound to a different model",
        ));
    }
    let mut jit = jitter.map(Jitter::new);
    let mode = if jit.is_some() {
        KernelMode::Reference
    } else {
        mode
    };
    let onorm = output_norm(g, &c)?;
    let (dim, hd, kv_dim, n) = (c.dim, c.head_dim, c.kv_dim(), tokens.len());
    let group = c.n_heads / c.n_kv_heads;
    let scale = 1.0 / libm::sqrtf(hd as f32);
    let kern = kernels::active();
    let norms: Vec<(Vec<f32>, Vec<f32>)> = (0..c.n_layers)
        .map(|l| {
            let w = model
                .layer(l)
                .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "layer not loaded"))?;
            Ok((w.attn_norm.iter().collect(), w.ffn_norm.iter().collect()))
        })
        .collect::<edgelora::Result<_>>()?;

    // Buffers, as the core's State carves them.
    let mut x = vec![0f32; dim]; //                                  (dim,)
    let mut xb = vec![0f32; dim]; //                                 (dim,)
    let mut q = vec![0f32; c.q_dim()]; //                            (q_dim,)
    let mut att_out = vec![0f32; c.q_dim()]; //                      (q_dim,)
    let mut hb = vec![0f32; c.ffn_dim]; //                           (ffn_dim,)
    let mut hb2 = vec![0f32; c.ffn_dim]; //                          (ffn_dim,)
    let mut att = vec![0f32; n]; //                                  (n,)
    let mut table = vec![0f32; c.rope_dims]; //                      (rope_dims,)
    let mut lora_tmp = vec![0f32; MAX_RANK]; //                      (MAX_RANK,)
    let mut lora_out = vec![0f32; c.dim.max(c.q_dim()).max(c.ffn_dim)]; // (max out,)
    let mut logits = vec![0f32; c.vocab]; //                         (vocab,)
    let mut kc = vec![0f32; c.n_layers * n * kv_dim]; //             (layers, n, kv_dim)
    let mut vc = vec![0f32; c.n_layers * n * kv_dim]; //             (layers, n, kv_dim)
    let nblk = dim.max(c.q_dim()).max(c.ffn_dim).div_ceil(32);
    let mut act = vec![0f32; edgelora::kernels::act_scratch_f32s(nblk * 32)];
    let mut out = Trace {
        dim,
        vocab: c.vocab,
        hidden: vec![Vec::with_capacity(n * dim); c.n_layers],
        logits: Vec::with_capacity(n * c.vocab),
    };

    // One linear as the core runs it: base matvec on the mode's path, then LoRA; with jitter,
    // the injected difference on top.
    macro_rules! linear {
        ($w:expr, $input:expr, $y:expr, $l:expr, $lin:expr) => {{
            let w: &MatRef<'_> = $w;
            let bound = jit
                .as_ref()
                .map(|_| linear_bound(w, $input, set, $lin.map(|k: usize| ($l, k))));
            let mut inp = Input::new($input, &mut act, kern, mode);
            matvec_input(w, &mut inp, $y);
            if let Some(k) = $lin {
                set.apply($l, k, &mut inp, $y, &mut lora_tmp, &mut lora_out);
            }
            if let (Some(j), Some(b)) = (jit.as_mut(), bound) {
                jitter_add($y, &b, j);
            }
        }};
    }

    for (pos, &token) in tokens.iter().enumerate() {
        model.token_embd().dequantize_row(token as usize, &mut x)?; //        (dim,)
        rope_table(&mut table, pos, c.rope_base, c.rope_dims);
        for (l, (attn_norm, ffn_norm)) in norms.iter().enumerate() {
            let w = model
                .layer(l)
                .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "layer not loaded"))?;
            let f = jit
                .as_mut()
                .map_or(1.0, |j| j.factor(tol::rmsnorm_rel_bound(dim)));
            rmsnorm(&mut xb, &x, attn_norm, c.rms_eps, f);
            let at = (l * n + pos) * kv_dim;
            linear!(&w.wq, &xb, &mut q, l, Some(0));
            linear!(&w.wk, &xb, &mut kc[at..at + kv_dim], l, Some(1));
            linear!(&w.wv, &xb, &mut vc[at..at + kv_dim], l, Some(2));
            rope(&mut q, hd, &table);
            rope(&mut kc[at..at + kv_dim], hd, &table);

            let layer_k = &kc[l * n * kv_dim..(l * n + pos + 1) * kv_dim];
            let layer_v = &vc[l * n * kv_dim..(l * n + pos + 1) * kv_dim];
            for (h, (qh, o)) in q
                .chunks_exact(hd)
                .zip(att_out.chunks_exact_mut(hd))
                .enumerate()
            {
                let kvo = (h / group) * hd;
                let a = &mut att[..pos + 1]; //                                  (pos+1,)
                for (ai, kt) in a.iter_mut().zip(layer_k.chunks_exact(kv_dim)) {
                    *ai = kernels::attention_dot(qh, &kt[kvo..kvo + hd]) * scale;
                }
                softmax(a);
                if let Some(j) = jit.as_mut() {
                    let rel = tol::softmax_rel_bound(pos + 1);
                    for ai in a.iter_mut() {
                        *ai *= j.factor(rel);
                    }
                }
                o.fill(0.0);
                for (&ai, vt) in a.iter().zip(layer_v.chunks_exact(kv_dim)) {
                    for (oo, v) in o.iter_mut().zip(&vt[kvo..kvo + hd]) {
                        *oo += ai * v;
                    }
                }
            }
            linear!(&w.wo, &att_out, &mut xb, l, Some(3));
            for (a, b) in x.iter_mut().zip(&xb) {
                *a += b;
            }

            let f = jit
                .as_mut()
                .map_or(1.0, |j| j.factor(tol::rmsnorm_rel_bound(dim)));
            rmsnorm(&mut xb, &x, ffn_norm, c.rms_eps, f);
            linear!(&w.w_gate, &xb, &mut hb, l, Some(4));
            linear!(&w.w_up, &xb, &mut hb2, l, Some(5));
            for (gv, u) in hb.iter_mut().zip(&hb2) {
                *gv = silu(*gv) * u;
            }
            if let Some(j) = jit.as_mut() {
                for gv in hb.iter_mut() {
                    *gv *= j.factor(tol::swiglu_rel_bound());
                }
            }
            linear!(&w.w_down, &hb, &mut xb, l, Some(6));
            for (a, b) in x.iter_mut().zip(&xb) {
                *a += b;
            }
            out.hidden[l].extend_from_slice(&x);
        }
        let f = jit
            .as_mut()
            .map_or(1.0, |j| j.factor(tol::rmsnorm_rel_bound(dim)));
        rmsnorm(&mut xb, &x, &onorm, c.rms_eps, f);
        let head = set.head().unwrap_or(model.output());
        linear!(head, &xb, &mut logits, 0, None::<usize>);
        out.logits.extend_from_slice(&logits);
    }
    debug_assert_eq!(LINEARS, 7);
    Ok(out)
}

/// Model-level tolerances for parity against the reference trace `reference` (see
/// [`crate::tol`]): per layer and for the logits, [`tol::SAFETY`] times the largest absolute
/// deviation of an error-injected trace, over [`tol::JITTER_SEEDS`].
#[derive(Clone, Debug, PartialEq)]
pub struct Tolerance {
    /// Max-abs tolerance of each layer's hidden state.
    pub hidden: Vec<f32>,
    /// Max-abs tolerance of the logits.
    pub logits: f32,
}

/// Derive [`Tolerance`] by error injection on the CPU (costs `JITTER_SEEDS.len()` reference
/// traces with bound computations, about three reference passes each).
///
/// # Errors
/// As [`trace`].
pub fn derive_tolerance(
    model: &Model<'_>,
    g: &Gguf<'_>,
    set: &AdapterSet<'_, '_, '_>,
    tokens: &[u32],
    reference_trace: &Trace,
) -> edgelora::Result<Tolerance> {
    let mut t = Tolerance {
        hidden: vec![0.0; reference_trace.hidden.len()],
        logits: 0.0,
    };
    for seed in tol::JITTER_SEEDS {
        let j = trace(model, g, set, tokens, KernelMode::Reference, Some(seed))?;
        for ((tl, a), b) in t
            .hidden
            .iter_mut()
            .zip(&reference_trace.hidden)
            .zip(&j.hidden)
        {
            *tl = tl.max(tol::Diff::of(a, b).max_abs);
        }
        t.logits = t
            .logits
            .max(tol::Diff::of(&reference_trace.logits, &j.logits).max_abs);
    }
    // A floor of a few ulps of the largest value, so that an op whose injected difference
    // happened to cancel still tolerates the GPU's own last-bit differences.
    let floor = |v: &[f32]| 8.0 * tol::ULP as f32 * v.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (tl, h) in t.hidden.iter_mut().zip(&reference_trace.hidden) {
        *tl = (*tl * tol::SAFETY).max(floor(h));
    }
    t.logits = (t.logits * tol::SAFETY).max(floor(&reference_trace.logits));
    Ok(t)
}
