//! The scalar quant oracles against ggml itself (the C library llama.cpp runs), not against a
//! re-implementation: fixture `tests/fixtures/quant/ggml_refs.bin`, written by
//! `gen_ggml_refs.py` beside it through ctypes from llama-cpp-python's bundled ggml (the version
//! and CPU features are in the fixture's note, printed by the tests).
//!
//! 1. Every quantiser we have (Q4_0, Q4_1, Q8_0, Q5_0, Q5_1, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS weights) is
//!    byte-identical to `ggml_quantize_chunk` on the same f32 rows.
//! 2. Dequantising ggml's bytes with our oracle is bit-identical to ggml's `to_float`.
//! 3. The activation quantisers (Q8_0, Q8_1, Q8_K) are byte-identical to ggml's
//!    `quantize_row_*_ref`; against the CPU backend's SIMD `from_float` the quants differ by at
//!    most one step (it rounds half to even and multiplies by `127 / max`).
//! 4. `vec_dot` on ggml's bytes is bit-identical to ggml's exported `ggml_vec_dot_*_generic`
//!    (the plain C the oracles follow), and within [`simd_bound`] of the CPU trait's SIMD
//!    `vec_dot`, whose float order differs.

#![cfg(all(feature = "quant-q5", feature = "quant-k", feature = "quant-iq4"))]

use edgelora::kernels::reference as r;
use edgelora::quant::{
    self, blocks_as_bytes, cast_blocks, ActType, Block, BlockQ8_0, BlockQ8_1, BlockQ8_K, GgmlType,
    QuantType,
};
use std::collections::BTreeMap;
use std::ops::Range;

const FIXTURE: &[u8] = include_bytes!("../../tests/fixtures/quant/ggml_refs.bin");

// ---------------------------------------------------------------------------------------------
// The fixture

/// One record of `ggml_refs.bin` (format in `gen_ggml_refs.py`).
enum Rec<'a> {
    /// f32 input, ggml_quantize_chunk bytes, ggml's to_float of them.
    Weight {
        ty: GgmlType,
        x: Vec<f32>,
        q: &'a [u8],
        deq: Vec<f32>,
    },
    /// f32 input, quantize_row_*_ref bytes, CPU from_float bytes.
    Act {
        ty: GgmlType,
        x: Vec<f32>,
        reference: &'a [u8],
        cpu: &'a [u8],
    },
    /// f32 input, the weight type's `quantize_row_*_ref` bytes (IQ4_NL and Q8_0).
    RefQuant {
        ty: GgmlType,
        x: Vec<f32>,
        q: &'a [u8],
    },
    /// Weight bytes, activation bytes, CPU (SIMD) and generic vec_dot results.
    Dot {
        ty: GgmlType,
        n: usize,
        w: &'a [u8],
        a: &'a [u8],
        simd: f32,
        generic: f32,
    },
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        h
    }
    fn row(&mut self, ty: GgmlType, n: usize) -> &'a [u8] {
        self.take(ty.row_bytes(n as u64).expect("whole blocks") as usize)
    }
}

/// The fixture's note (ggml version, commit, CPU features) and its records.
fn fixture() -> (&'static str, Vec<Rec<'static>>) {
    let mut c = Cursor(FIXTURE);
    assert_eq!(c.take(8), b"EGGML\x01\x00\x00", "fixture magic");
    let nl = u16::from_le_bytes(c.take(2).try_into().unwrap()) as usize;
    let note = std::str::from_utf8(c.take(nl)).unwrap();
    let mut out = Vec::new();
    while !c.0.is_empty() {
        let kind = c.take(1)[0];
        let nl = c.take(1)[0] as usize;
        let name = std::str::from_utf8(c.take(nl)).unwrap();
        let ty = GgmlType::from_name(name).unwrap();
        let n = u32::from_le_bytes(c.take(4).try_into().unwrap()) as usize;
        out.push(match kind {
            1 => Rec::Weight {
                ty,
                x: f32s(c.take(4 * n)),
                q: c.row(ty, n),
                deq: f32s(c.take(4 * n)),
            },
            2 => Rec::Act {
                ty,
                x: f32s(c.take(4 * n)),
                reference: c.row(ty, n),
                cpu: c.row(ty, n),
            },
            3 => {
                let w = c.row(ty, n);
                let a = c.row(ops(ty).act, n);
                let s = f32s(c.take(8));
                Rec::Dot {
                    ty,
                    n,
                    w,
                    a,
                    simd: s[0],
                    generic: s[1],
                }
            }
            4 => Rec::RefQuant {
                ty,
                x: f32s(c.take(4 * n)),
                q: c.row(ty, n),
            },
            k => panic!("record kind {k}"),
        });
    }
    (note, out)
}

// ---------------------------------------------------------------------------------------------
// The types under test: one row per weight type (extend by adding a row)

fn blocks_of<T: Block>(bytes: &[u8]) -> Vec<T> {
    cast_blocks::<T>(bytes).expect("whole blocks").to_vec()
}

fn deq<W: QuantType>(b: &[u8]) -> Vec<f32> {
    let w = blocks_of::<W>(b);
    let mut out = vec![f32::NAN; w.len() * W::BLOCK_LEN];
    W::dequantize(&w, &mut out);
    out
}

fn deq_act<A: ActType>(b: &[u8]) -> Vec<f32> {
    let a = blocks_of::<A>(b);
    let mut out = vec![f32::NAN; a.len() * A::BLOCK_LEN];
    A::dequantize(&a, &mut out);
    out
}

fn quant_act<A: ActType>(x: &[f32]) -> Vec<u8> {
    let mut a = blocks_of::<A>(&vec![
        0xAA;
        x.len() / A::BLOCK_LEN * core::mem::size_of::<A>()
    ]);
    A::quantize(x, &mut a);
    blocks_as_bytes(&a).to_vec()
}

/// Run a weight quantiser into a buffer pre-filled with junk (so an unwritten byte shows).
fn quant_with<W: Block>(x: &[f32], f: fn(&[f32], &mut [W])) -> Vec<u8> {
    let bl = W::TYPE.block_len();
    let mut w = blocks_of::<W>(&vec![0xAA; x.len() / bl * core::mem::size_of::<W>()]);
    f(x, &mut w);
    blocks_as_bytes(&w).to_vec()
}

fn dot<W: QuantType>(w: &[u8], a: &[u8]) -> f32 {
    W::vec_dot(&blocks_of::<W>(w), &blocks_of::<W::Act>(a))
}

/// A weight quantiser taking f32 values to row bytes.
type QuantizeFn = fn(&[f32]) -> Vec<u8>;

struct Ops {
    ty: GgmlType,
    act: GgmlType,
    dequantize: fn(&[u8]) -> Vec<f32>,
    dequantize_act: fn(&[u8]) -> Vec<f32>,
    quantize: Option<QuantizeFn>,
    vec_dot: fn(&[u8], &[u8]) -> f32,
    /// Byte range of the quants in a block, for types whose dequantised value has a part that
    /// does not scale with the quant: a minimum (`w = s q + m`: Q4_1, Q5_1, Q2_K, Q4_K, Q5_K) or
    /// an offset (`w = s (q - o)`: Q4_0, Q5_0, Q3_K, Q6_K). With the quants zeroed a block
    /// dequantises to exactly that part, which [`simd_bound`] needs; empty for the others.
    quants: Range<usize>,
}

fn row<W: QuantType>(quantize: Option<QuantizeFn>, quants: Range<usize>) -> Ops {
    Ops {
        ty: W::TYPE,
        act: <W::Act as Block>::TYPE,
        dequantize: deq::<W>,
        dequantize_act: deq_act::<W::Act>,
        quantize,
        vec_dot: dot::<W>,
        quants,
    }
}

fn table() -> Vec<Ops> {
    use quant::*;
    vec![
        row::<BlockQ4_0>(Some(|x| quant_with(x, r::quantize_row_q4_0)), 2..18),
        row::<BlockQ4_1>(Some(|x| quant_with(x, r::quantize_row_q4_1)), 4..20),
        row::<BlockQ5_0>(Some(|x| quant_with(x, q5::quantize_row_q5_0)), 2..22),
        row::<BlockQ5_1>(Some(|x| quant_with(x, q5::quantize_row_q5_1)), 4..24),
        row::<BlockQ8_0>(Some(|x| quant_with(x, r::quantize_row_q8_0)), 0..0),
        row::<BlockQ2_K>(None, 16..80),
        row::<BlockQ3_K>(Some(|x| quant_with(x, q3_k::quantize_row_q3_k)), 0..96),
        row::<BlockQ4_K>(Some(|x| quant_with(x, q4_k::quantize_row_q4_k)), 16..144),
        row::<BlockQ5_K>(Some(|x| quant_with(x, q5_k::quantize_row_q5_k)), 16..176),
        row::<BlockQ6_K>(Some(|x| quant_with(x, q6_k::quantize_row_q6_k)), 0..192),
        row::<BlockIQ4_NL>(Some(|x| quant_with(x, iq4::quantize_iq4_nl)), 0..0),
        row::<BlockIQ4_XS>(Some(|x| quant_with(x, iq4::quantize_iq4_xs)), 0..0),
    ]
}

fn ops(ty: GgmlType) -> Ops {
    table()
        .into_iter()
        .find(|o| o.ty == ty)
        .unwrap_or_else(|| panic!("{} has no row", ty.name()))
}

fn act_quantize(ty: GgmlType) -> fn(&[f32]) -> Vec<u8> {
    match ty {
        GgmlType::Q8_0 => quant_act::<BlockQ8_0>,
        GgmlType::Q8_1 => quant_act::<BlockQ8_1>,
        GgmlType::Q8_K => quant_act::<BlockQ8_K>,
        t => panic!("{} is not an activation type", t.name()),
    }
}

// ---------------------------------------------------------------------------------------------
// 1 and 2: weight quantisers and dequantisation

/// First differing block of two byte rows, as a readable message.
fn first_block_diff(ty: GgmlType, x: &[f32], got: &[u8], want: &[u8]) -> Option<String> {
    let bb = ty.block_bytes();
    let bl = ty.block_len();
    let (b, (g, e)) = got
        .chunks_exact(bb)
        .zip(want.chunks_exact(bb))
        .enumerate()
        .find(|(_, (g, e))| g != e)?;
    Some(format!(
        "{} block {b}: ours {g:02x?}\n ggml {e:02x?}\n input {:?}",
        ty.name(),
        &x[b * bl..(b + 1) * bl]
    ))
}

#[test]
fn weight_quantisers_byte_identical_to_ggml() {
    let (note, recs) = fixture();
    println!("{note}");
    let mut checked = BTreeMap::new();
    let mut failures = Vec::new();
    for rec in &recs {
        let Rec::Weight { ty, x, q, .. } = rec else {
            continue;
        };
        let Some(quantize) = ops(*ty).quantize else {
            continue;
        };
        *checked.entry(ty.name()).or_insert(0) += 1;
        if let Some(msg) = first_block_diff(*ty, x, &quantize(x), q) {
            failures.push(msg);
        }
    }
    println!("rows checked per type: {checked:?}");
    assert_eq!(
        checked.len(),
        11,
        "Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q3_K Q4_K Q5_K Q6_K IQ4_NL IQ4_XS all covered"
    );
    for f in &failures {
        println!("DIFF {}", f.lines().next().unwrap_or(""));
    }
    assert!(
        failures.is_empty(),
        "{} rows differ from ggml_quantize_chunk; first:\n{}",
        failures.len(),
        failures[0]
    );
}

/// `iq4::quantize_row_iq4_nl` (and our Q8_0 quantiser) is ggml's `quantize_row_iq4_nl_ref`
/// (`ntry = -1`: one scale from the largest value, then its least-squares refit), byte for byte.
/// `ggml_quantize_chunk` (what `llama-quantize` writes into model files) runs `quantize_iq4_nl`
/// instead, which also tries 15 scales around it (`ntry = 7`) and re-picks the indices for the
/// winner: that is `iq4::quantize_iq4_nl`, the type's `QUANTIZE`, checked against the chunk bytes
/// in `weight_quantisers_byte_identical_to_ggml`. Here the two must differ on the chunk rows
/// (else this fixture could not tell them apart).
#[test]
fn iq4_nl_ref_quantiser_is_ggml_ref_not_quantize_chunk() {
    let (_, recs) = fixture();
    let reference = |ty: GgmlType| -> QuantizeFn {
        match ty {
            GgmlType::IQ4_NL => |x| quant_with(x, quant::iq4::quantize_row_iq4_nl),
            t => ops(t).quantize.expect("a quantiser"),
        }
    };
    let (mut rows, mut chunk_rows, mut chunk_differs) = (0, 0, 0);
    for rec in &recs {
        match rec {
            Rec::RefQuant { ty, x, q } => {
                let mut got = reference(*ty)(x);
                // A block below GROUP_MAX_EPS gets d = 0 from both; ggml then packs whatever
                // indices its stack buffer held from the previous block (it `continue`s before
                // writing them), we write zeros. Both dequantise to zeros; compare the rest.
                for (g, e) in got.chunks_exact_mut(18).zip(q.chunks_exact(18)) {
                    if g[..2] == [0, 0] && e[..2] == [0, 0] && g[2..].iter().all(|&b| b == 0) {
                        g.copy_from_slice(e);
                    }
                }
                if let Some(msg) = first_block_diff(*ty, x, &got, q) {
                    panic!("differs from quantize_row_*_ref: {msg}");
                }
                rows += 1;
            }
            Rec::Weight { ty, x, q, .. } if *ty == GgmlType::IQ4_NL => {
                chunk_rows += 1;
                chunk_differs += usize::from(reference(*ty)(x) != *q);
            }
            _ => {}
        }
    }
    println!(
        "IQ4_NL and Q8_0: {rows} rows equal to quantize_row_*_ref; \
         IQ4_NL: {chunk_differs}/{chunk_rows} rows of the _ref quantiser differ from quantize_chunk"
    );
    assert_eq!(rows, 16, "8 IQ4_NL and 8 Q8_0 rows");
    assert!(
        chunk_differs > 0,
        "the chunk rows do not tell ntry = -1 from ntry = 7"
    );
}

#[test]
fn dequantise_bit_identical_to_ggml_to_float() {
    let (_, recs) = fixture();
    let mut checked = BTreeMap::new();
    for rec in &recs {
        let Rec::Weight { ty, q, deq, .. } = rec else {
            continue;
        };
        let got = (ops(*ty).dequantize)(q);
        assert_eq!(got.len(), deq.len());
        for (i, (g, e)) in got.iter().zip(deq).enumerate() {
            assert_eq!(
                g.to_bits(),
                e.to_bits(),
                "{} element {i}: ours {g} vs ggml {e}",
                ty.name()
            );
        }
        *checked.entry(ty.name()).or_insert(0) += 1;
    }
    println!("rows checked per type: {checked:?}");
    assert_eq!(checked.len(), table().len(), "every weight type covered");
}

// ---------------------------------------------------------------------------------------------
// 3: activation quantisers

#[test]
fn activation_quantisers_byte_identical_to_ggml_ref() {
    let (_, recs) = fixture();
    let mut checked = BTreeMap::new();
    for rec in &recs {
        let Rec::Act {
            ty, x, reference, ..
        } = rec
        else {
            continue;
        };
        let got = act_quantize(*ty)(x);
        if let Some(msg) = first_block_diff(*ty, x, &got, reference) {
            panic!("differs from quantize_row_*_ref: {msg}");
        }
        *checked.entry(ty.name()).or_insert(0) += 1;
    }
    println!("rows checked per type: {checked:?}");
    assert_eq!(checked.len(), 3, "Q8_0, Q8_1, Q8_K covered");
}

/// The CPU backend's SIMD `from_float` is what llama.cpp runs on activations. It is not the
/// reference quantiser: on x86 the Q8_0/Q8_1 one multiplies by `127 / max` instead of
/// `1 / (max / 127)` and rounds half to even (`_mm256_round_ps`) where the reference uses
/// `roundf` (half away from zero). So its quants may differ from ours by one step, never more,
/// and the f16 scale is the same. This pins that down (it is the size of the activation noise
/// difference between our reference path and llama.cpp on the same input).
#[test]
fn activation_quantisers_within_one_step_of_ggml_cpu() {
    let (_, recs) = fixture();
    let mut diffs = BTreeMap::new();
    for rec in &recs {
        let Rec::Act { ty, x, cpu, .. } = rec else {
            continue;
        };
        let ours = act_quantize(*ty)(x);
        let q = |b: &[u8]| match ty {
            // (scale bytes, quants) of each block
            GgmlType::Q8_K => b
                .chunks_exact(292)
                .flat_map(|c| c[4..260].to_vec())
                .collect::<Vec<u8>>(),
            GgmlType::Q8_0 => b.chunks_exact(34).flat_map(|c| c[2..].to_vec()).collect(),
            _ => b.chunks_exact(36).flat_map(|c| c[4..].to_vec()).collect(),
        };
        let d = |b: &[u8]| match ty {
            GgmlType::Q8_K => b.chunks_exact(292).map(|c| c[..4].to_vec()).collect(),
            GgmlType::Q8_0 => b.chunks_exact(34).map(|c| c[..2].to_vec()).collect(),
            _ => b
                .chunks_exact(36)
                .map(|c| c[..2].to_vec())
                .collect::<Vec<_>>(),
        };
        assert_eq!(d(&ours), d(cpu), "{}: scales", ty.name());
        let mut n = 0;
        for (a, b) in q(&ours).iter().zip(q(cpu)) {
            let step = (*a as i8 as i32 - b as i8 as i32).abs();
            assert!(step <= 1, "{}: quants {a} vs {b}", ty.name());
            n += step as usize;
        }
        *diffs.entry(ty.name()).or_insert(0) += n;
    }
    println!("quants one step off the CPU from_float, per type: {diffs:?}");
}

// ---------------------------------------------------------------------------------------------
// 4: vec_dot

/// `|ours - ggml|` bound for one dot of `w` (dequantised; `mins` its part that does not scale
/// with the quant, see [`Ops::quants`]) with `x`.
///
/// Both dots form the same integers exactly: every product of quants and every partial integer
/// sum is exact in i32, and converting one to f32 is exact because each is below 2^24 in
/// magnitude (at most 32 * 127 * 127 * 63 for a 32-wide block, 256 * 128 * 4096 for a K-quant
/// block). They differ only in how the float terms `t_k = c_k * S_k` are formed and summed:
/// `c_k` is a product of at most three f32 scales (2 roundings, 1 more for `* S_k`, or a fused
/// multiply-add) and the sum has depth at most `T = 10 * blocks + 10` (the oracle's sequential
/// sum: 2 terms per 32-block, 9 per Q8_K block plus 8 lane additions; SIMD paths accumulate per
/// lane and add a horizontal reduction, which is shallower). So each result is within
/// `(T + 3) u sum_k |t_k|` of the exact sum (first order, `u = 2^-24`).
///
/// The SIMD kernels may split a term: ggml's x86 Q6_K dot multiplies the *unsigned* quants and
/// subtracts `32 * scale * bsum` as a separate float term, so its two terms are each larger than
/// the element products they sum to (measured: 6.5e-6 off the exact dot on a row where
/// `sum |w_i x_i|` is 1.09 and `u sum |w_i x_i|` only 6.5e-8). A minimum or offset split off that
/// way adds at most `|m_i x_i|` twice, so `sum_k |t_k| <= A = sum_i (|w_i| + 2 |m_i|) |x_i|` with
/// `m_i` the minimum or offset part. Taking `(T + 6)` for the second-order terms and the rounding
/// of our f32 dequantisation that `A` is computed from, two such results are within
/// `2 (T + 6) u A`. Q8_1's f16 `s` does not enter: both dots read the same bytes.
///
/// For `n <= 512` that is at most 2.1e-5 of `A`; [`bound_catches_single_bit_flips`] checks that
/// a one-bit change of the weights moves the exact dot by more than it in most cases.
fn simd_bound(n: usize, block_len: usize, w: &[f32], mins: &[f32], x: &[f32]) -> (f64, f64) {
    let blocks = (n / block_len) as f64;
    let t = 10.0 * blocks + 10.0;
    let u = f64::powi(2.0, -24);
    let a: f64 = w
        .iter()
        .zip(mins)
        .zip(x)
        .map(|((&w, &m), &x)| (w.abs() as f64 + 2.0 * m.abs() as f64) * x.abs() as f64)
        .sum();
    (2.0 * (t + 6.0) * u * a, a)
}

/// The part of each dequantised weight that does not scale with its quant (see [`Ops::quants`]).
fn min_part(o: &Ops, w: &[u8]) -> Vec<f32> {
    let n = w.len() / o.ty.block_bytes() * o.ty.block_len();
    if o.quants.is_empty() {
        return vec![0.0; n];
    }
    let mut b = w.to_vec();
    for blk in b.chunks_exact_mut(o.ty.block_bytes()) {
        blk[o.quants.clone()].fill(0);
    }
    (o.dequantize)(&b)
}

/// Against ggml's `ggml_vec_dot_*_generic`, the plain C each oracle follows operation for
/// operation. Not bit-identical in this build: GCC contracts its `sumf += a * b` into fused
/// multiply-adds (`-ffp-contract=fast` is GCC's default and the CPU backend is built with FMA);
/// emulating that with `mul_add` reproduced all 20 Q4_0/Q8_0 results bit for bit while checking
/// this. So the check is the same bound as for SIMD, and the bit-identical count is printed.
///
/// Q5_0 is skipped: this build's `ggml_vec_dot_q5_0_q8_0_generic` returns every block as if the
/// `- 16` were missing (one-hot probe: 32 ones against a Q5_0 block of 1.0 and 0.5 gives -30.5
/// instead of 1.5, off by exactly `16 d_w` per element), although its C source subtracts it; its
/// SIMD `vec_dot` (the one llama.cpp calls on x86) agrees with ours within the bound. That looks
/// like a miscompile of the unused generic path in this wheel, not something our oracle can
/// match.
#[test]
fn vec_dot_within_bound_of_ggml_generic() {
    let (_, recs) = fixture();
    let mut checked = BTreeMap::new();
    for rec in &recs {
        let Rec::Dot {
            ty,
            n,
            w,
            a,
            generic,
            ..
        } = rec
        else {
            continue;
        };
        if *ty == GgmlType::Q5_0 {
            continue;
        }
        let o = ops(*ty);
        let got = (o.vec_dot)(w, a);
        let wd = (o.dequantize)(w);
        let xd = (o.dequantize_act)(a);
        let (tol, _) = simd_bound(*n, ty.block_len(), &wd, &min_part(&o, w), &xd);
        let dev = (got as f64 - *generic as f64).abs();
        assert!(
            dev <= tol / 2.0,
            "{} n={n}: ours {got:e} vs ggml generic {generic:e}: |diff| {dev:e} > {:e}",
            ty.name(),
            tol / 2.0
        );
        let e = checked.entry(ty.name()).or_insert((0, 0));
        e.0 += 1;
        e.1 += usize::from(got.to_bits() == generic.to_bits());
    }
    println!("dots (checked, bit-identical) per type: {checked:?}");
    assert_eq!(
        checked.len(),
        table().len() - 1,
        "every weight type but Q5_0 covered"
    );
}

#[test]
fn vec_dot_within_bound_of_ggml_simd() {
    let (note, recs) = fixture();
    println!("{note}");
    // Per type: (max |ours - simd| / bound, max |ours - simd| / A, bound / A at that max, dots)
    let mut worst: BTreeMap<&str, (f64, f64, f64, usize)> = BTreeMap::new();
    for rec in &recs {
        let Rec::Dot {
            ty, n, w, a, simd, ..
        } = rec
        else {
            continue;
        };
        let o = ops(*ty);
        let got = (o.vec_dot)(w, a);
        let wd = (o.dequantize)(w);
        let xd = (o.dequantize_act)(a);
        let (tol, mag) = simd_bound(*n, ty.block_len(), &wd, &min_part(&o, w), &xd);
        let dev = (got as f64 - *simd as f64).abs();
        assert!(
            dev <= tol,
            "{} n={n}: ours {got:e} vs ggml SIMD {simd:e}: |diff| {dev:e} > bound {tol:e}",
            ty.name()
        );
        let e = worst.entry(ty.name()).or_insert((0.0, 0.0, 0.0, 0));
        e.3 += 1;
        if mag > 0.0 && dev / tol > e.0 {
            (e.0, e.1, e.2) = (dev / tol, dev / mag, tol / mag);
        }
    }
    for (name, (of_bound, of_a, bound_a, count)) in &worst {
        println!(
            "{name:7} {count:2} dots: max |ours - simd| = {of_bound:.3} of the bound \
             ({of_a:.2e} of A; bound {bound_a:.2e} of A)"
        );
    }
    assert_eq!(worst.len(), table().len(), "every weight type covered");
}

/// The bound is tight enough to matter: flipping the low bit of one byte (over every byte of
/// every dot record's weights, scales included; measured 58% (Q5_0) to 91% (Q2_K) of the
/// flips: the rest land on zero or tiny activations, or on a scale's last mantissa bit) changes
/// the exact dot by more than the bound in most cases.
#[test]
fn bound_catches_single_bit_flips() {
    let (_, recs) = fixture();
    let mut seen: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for rec in &recs {
        let Rec::Dot { ty, n, w, a, .. } = rec else {
            continue;
        };
        let o = ops(*ty);
        let wd = (o.dequantize)(w);
        let xd = (o.dequantize_act)(a);
        let (tol, _) = simd_bound(*n, ty.block_len(), &wd, &min_part(&o, w), &xd);
        // Every byte is tried; flips that leave `w` unchanged (unused bits) are not counted.
        let mut m = w.to_vec();
        for i in 0..m.len() {
            m[i] ^= 1;
            let md = (o.dequantize)(&m);
            m[i] ^= 1;
            let delta: f64 = md
                .iter()
                .zip(&wd)
                .zip(&xd)
                .map(|((&p, &q), &x)| (p as f64 - q as f64) * x as f64)
                .sum();
            if md.iter().zip(&wd).all(|(p, q)| p.to_bits() == q.to_bits()) {
                continue;
            }
            let e = seen.entry(ty.name()).or_insert((0, 0));
            e.0 += 1;
            if delta.abs() > tol {
                e.1 += 1;
            }
        }
    }
    for (name, (total, caught)) in &seen {
        let frac = *caught as f64 / *total as f64;
        println!("{name:7} {caught}/{total} single-bit changes exceed the bound ({frac:.3})");
        assert!(
            frac > 0.5,
            "{name}: the bound is too loose to catch bit flips"
        );
    }
}
