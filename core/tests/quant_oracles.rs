//! The scalar quant oracles (`quant::{q5, q2_k..q6_k, q8_k, iq4}`) against an implementation
//! nobody here wrote, and against themselves:
//!
//! 1. dequantisation is bit-identical to the `gguf` Python package, and the Q5_0/Q5_1 quantisers
//!    are byte-identical to it (fixture `tests/fixtures/quant/quant_refs.bin`, written by
//!    `gen_quant_refs.py` beside it);
//! 2. every [`QuantType`]'s integer `vec_dot` equals the f64 dot of the dequantised operands
//!    within a bound derived from f32 rounding (see [`dot_bound`]);
//! 3. the Q8_K quantiser on hand-computed cases and its defining formula;
//! 4. mismatched slice lengths (zip semantics, no panic) and NaN-free output for finite input.
//!
//! Each section compiles only with the feature that provides its types, so the file also runs
//! (with less in it) under `--no-default-features`.

use edgelora::quant::{
    self, blocks_as_bytes, cast_blocks, to_f16_le, ActType, Block, BlockQ4_0, BlockQ4_1, BlockQ8_0,
    BlockQ8_1, BlockQ8_K, GgmlType, QuantType, QK_K,
};

// ---------------------------------------------------------------------------------------------
// Helpers

/// splitmix64: small, seeded, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Roughly normal (sum of uniforms), scaled.
    fn normal(&mut self, scale: f64) -> f32 {
        let s: f64 = (0..4).map(|_| self.f64()).sum::<f64>() - 2.0;
        (s * 1.7 * scale) as f32
    }
}

fn blocks_of<T: Block>(bytes: &[u8]) -> Vec<T> {
    cast_blocks::<T>(bytes).expect("whole blocks").to_vec()
}

fn dequant<W: QuantType>(w: &[W]) -> Vec<f32> {
    let mut out = vec![f32::NAN; w.len() * W::BLOCK_LEN];
    W::dequantize(w, &mut out);
    out
}

fn dequant_act<A: ActType>(a: &[A]) -> Vec<f32> {
    let mut out = vec![f32::NAN; a.len() * A::BLOCK_LEN];
    A::dequantize(a, &mut out);
    out
}

fn quant_act<A: ActType>(x: &[f32]) -> Vec<A> {
    let zero: A = cast_blocks::<A>(&vec![0u8; core::mem::size_of::<A>()]).unwrap()[0];
    let mut out = vec![zero; x.len() / A::BLOCK_LEN];
    A::quantize(x, &mut out);
    out
}

/// How to make and take apart random blocks of one weight type, by byte offsets in the ggml
/// layout (the layouts themselves are checked against gguf-py in section 1).
struct Layout {
    /// Offsets of the f16 scale fields, overwritten with sane values in random blocks.
    f16_fields: &'static [usize],
    /// Byte range of the quants; zeroing it leaves only the per-element minimum term (types
    /// with a minimum, `has_min`), which the dot bound needs.
    quants: core::ops::Range<usize>,
    /// `w = scale * q + min` form (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K).
    has_min: bool,
}

fn random_weights<W: QuantType>(rng: &mut Rng, n: usize, lay: &Layout) -> Vec<W> {
    let sz = core::mem::size_of::<W>();
    let mut bytes: Vec<u8> = (0..n * sz).map(|_| rng.next_u64() as u8).collect();
    for b in bytes.chunks_exact_mut(sz) {
        for &off in lay.f16_fields {
            let mag = 10f64.powf(rng.f64() * 4.0 - 3.0);
            let v = if rng.f64() < 0.5 { mag } else { -mag };
            b[off..off + 2].copy_from_slice(&to_f16_le(v as f32));
        }
    }
    blocks_of(&bytes)
}

/// The per-element minimum term of `w` (zero for types without one): `w` dequantised with its
/// quants zeroed.
fn min_part<W: QuantType>(w: &[W], lay: &Layout) -> Vec<f32> {
    if !lay.has_min {
        return vec![0.0; w.len() * W::BLOCK_LEN];
    }
    let mut bytes = blocks_as_bytes(w).to_vec();
    let sz = core::mem::size_of::<W>();
    for b in bytes.chunks_exact_mut(sz) {
        b[lay.quants.clone()].fill(0);
    }
    dequant(&blocks_of::<W>(&bytes))
}

/// The bound on `|vec_dot(w, x) - sum(dequant(w) * dequant(x))|` (reference in f64).
///
/// Derivation, with `u = 2^-24` (f32 unit roundoff): the oracle forms every product of quants
/// exactly in integers (no term can overflow i32, and every integer sum converted to f32 is below
/// 2^24, so the conversion is exact) and rounds only (a) the scale products, at most 2 roundings
/// per term `t_k = d_w d_a S_k`, and (b) the running f32 sums, at most `T` additions, with
/// `T <= 10 * blocks + 10` for every type here (8 lanes + 1 minimum term per Q8_K block, 1..2
/// per 32-wide block, 8 final lane additions). First-order error analysis gives
/// `(T + 2) u sum_k |t_k|`. The reference dequantises each operand with up to 3 roundings
/// (`d * sc`, `* q`, `- min`) and the activation with 1, adding `4 u sum_i |w_i x_i|`-sized
/// terms. Since `|t_k| <= sum_{i in k} (|w_i| + 2|m_i|) |x_i|` (the scaled quant part of `w_i` is
/// `w_i - m_i`, and the minimum part is dotted separately), the total is below
/// `(T + 6) u A` with `A = sum_i (|w_i| + 2|m_i|) |x_i|`.
///
/// Q8_1 activations carry `s = d * sum(q)` as f16 and the oracle (as ggml) uses it for the
/// minimum term instead of the exact sum, adding at most `2^-11 sum_blocks |m s|`; that term is
/// added for Q8_1 only.
fn dot_bound<W: QuantType>(wd: &[f32], mins: &[f32], xd: &[f32], blocks: usize) -> (f64, f64) {
    let u = f64::powi(2.0, -24);
    let t = (10 * blocks + 10) as f64;
    let a: f64 = wd
        .iter()
        .zip(mins)
        .zip(xd)
        .map(|((&w, &m), &x)| (w.abs() as f64 + 2.0 * m.abs() as f64) * x.abs() as f64)
        .sum();
    let mut tol = (t + 6.0) * u * a;
    if <W::Act as Block>::TYPE == GgmlType::Q8_1 {
        // Per block |m * d * sum(q)| = |sum_i m_i x_i| (m is constant over a 32-block).
        let ms: f64 = mins
            .chunks(32)
            .zip(xd.chunks(32))
            .map(|(m, x)| {
                m.iter()
                    .zip(x)
                    .map(|(&m, &x)| m as f64 * x as f64)
                    .sum::<f64>()
                    .abs()
            })
            .sum();
        tol += f64::powi(2.0, -10) * ms;
    }
    (tol, a)
}

/// Section 2 for one type: random weights and activations over 1, 2, 3 and 16 blocks, plus
/// all-zero blocks and the edge cases of section 4.
fn check_dot<W: QuantType>(name: &str, lay: &Layout, seed: u64) {
    let mut rng = Rng(seed);
    assert_eq!(
        W::BLOCK_LEN,
        <W::Act as ActType>::BLOCK_LEN,
        "{name}: block lengths"
    );
    assert_eq!(
        W::BLOCK_LEN,
        W::TYPE.block_len(),
        "{name}: GgmlType::block_len"
    );
    assert_eq!(
        core::mem::size_of::<W>(),
        W::TYPE.block_bytes(),
        "{name}: block_bytes"
    );
    for &nb in &[1usize, 2, 3, 16] {
        for trial in 0..20 {
            let w = random_weights::<W>(&mut rng, nb, lay);
            let scale = 10f64.powf(rng.f64() * 4.0 - 2.0);
            let x: Vec<f32> = (0..nb * W::BLOCK_LEN).map(|_| rng.normal(scale)).collect();
            let xq = quant_act::<W::Act>(&x);
            let wd = dequant(&w);
            let xd = dequant_act(&xq);
            assert!(
                wd.iter().chain(&xd).all(|v| v.is_finite()),
                "{name}: NaN/inf"
            );
            let want: f64 = wd.iter().zip(&xd).map(|(&a, &b)| a as f64 * b as f64).sum();
            let got = W::vec_dot(&w, &xq);
            assert!(got.is_finite(), "{name}: vec_dot not finite");
            let mins = min_part(&w, lay);
            let (tol, mag) = dot_bound::<W>(&wd, &mins, &xd, nb);
            // The bound must stay far below the size of one wrong element or scale (about
            // mag / (32 * blocks)): 2e-5 of the magnitude, 1e-3 where Q8_1's f16 sum enters.
            let limit = if <W::Act as Block>::TYPE == GgmlType::Q8_1 {
                1e-3
            } else {
                2e-5
            };
            assert!(
                tol <= limit * mag + 1e-30,
                "{name}: bound {tol} vs magnitude {mag}"
            );
            assert!(
                (got as f64 - want).abs() <= tol,
                "{name}: {nb} blocks, trial {trial}: vec_dot {got} vs dequantised {want} (tol {tol})"
            );
        }
    }

    // All-zero weight blocks, or all-zero activations, give exactly 0.
    let zero_w = blocks_of::<W>(&vec![0u8; 3 * core::mem::size_of::<W>()]);
    let x: Vec<f32> = (0..3 * W::BLOCK_LEN).map(|_| rng.normal(1.0)).collect();
    let xq = quant_act::<W::Act>(&x);
    assert_eq!(W::vec_dot(&zero_w, &xq), 0.0, "{name}: zero weights");
    assert!(
        dequant(&zero_w).iter().all(|&v| v == 0.0),
        "{name}: zero block"
    );
    let w = random_weights::<W>(&mut rng, 3, lay);
    let zq = quant_act::<W::Act>(&vec![0.0; 3 * W::BLOCK_LEN]);
    assert_eq!(W::vec_dot(&w, &zq), 0.0, "{name}: zero activations");

    // Mismatched lengths: blocks are zipped, extra blocks ignored, nothing panics.
    assert_eq!(
        W::vec_dot(&w, &xq[..2]),
        W::vec_dot(&w[..2], &xq[..2]),
        "{name}: zip"
    );
    assert_eq!(
        W::vec_dot(&w[..1], &xq),
        W::vec_dot(&w[..1], &xq[..1]),
        "{name}: zip"
    );
    assert_eq!(W::vec_dot(&w[..0], &xq), 0.0, "{name}: empty");
    let mut short = vec![7.0f32; W::BLOCK_LEN + 5]; // room for one block and a bit
    W::dequantize(&w, &mut short);
    assert_eq!(
        &short[..W::BLOCK_LEN],
        &dequant(&w[..1])[..],
        "{name}: short output"
    );
    assert!(
        short[W::BLOCK_LEN..].iter().all(|&v| v == 7.0),
        "{name}: partial block written"
    );
    let mut one = quant_act::<W::Act>(&x[..W::BLOCK_LEN]);
    <W::Act as ActType>::quantize(&x[..W::BLOCK_LEN + 3], &mut one); // extra values ignored
    <W::Act as ActType>::quantize(&x[..W::BLOCK_LEN - 1], &mut one); // too few: nothing written
    assert_eq!(
        blocks_as_bytes(&one),
        blocks_as_bytes(&quant_act::<W::Act>(&x[..W::BLOCK_LEN])),
        "{name}: activation quantiser with odd lengths"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. gguf-py fixtures

#[cfg_attr(
    not(any(feature = "quant-q5", feature = "quant-k", feature = "quant-iq4")),
    allow(dead_code, unreachable_code)
)]
struct Record<'a> {
    kind: u8,
    name: &'a str,
    n: usize,
    body: &'a [u8],
}

/// Parse `quant_refs.bin` (format in `gen_quant_refs.py`).
fn records(data: &[u8]) -> Vec<Record<'_>> {
    assert_eq!(&data[..8], b"EQREF\x01\x00\x00", "fixture magic");
    let mut out = Vec::new();
    let mut p = 8;
    while p < data.len() {
        let kind = data[p];
        let nl = data[p + 1] as usize;
        let name = std::str::from_utf8(&data[p + 2..p + 2 + nl]).unwrap();
        p += 2 + nl;
        let n = u32::from_le_bytes(data[p..p + 4].try_into().unwrap()) as usize;
        p += 4;
        let ty = GgmlType::from_name(name).unwrap();
        let len = n * (ty.block_bytes() + 4 * ty.block_len());
        out.push(Record {
            kind,
            name,
            n,
            body: &data[p..p + len],
        });
        p += len;
    }
    out
}

#[cfg_attr(
    not(any(feature = "quant-q5", feature = "quant-k", feature = "quant-iq4")),
    allow(dead_code, unreachable_code)
)]
fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[cfg_attr(
    not(any(feature = "quant-q5", feature = "quant-k", feature = "quant-iq4")),
    allow(dead_code, unreachable_code)
)]
/// Dequantisation of gguf-py's blocks, bit for bit.
fn check_fixture_dequant<W: QuantType>(r: &Record<'_>) {
    let nbytes = r.n * core::mem::size_of::<W>();
    let w = blocks_of::<W>(&r.body[..nbytes]);
    let want = f32s(&r.body[nbytes..]);
    let got = dequant(&w);
    assert_eq!(got.len(), want.len());
    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g.to_bits(),
            e.to_bits(),
            "{}: block {} element {}: {g} vs gguf-py {e}",
            r.name,
            i / W::BLOCK_LEN,
            i % W::BLOCK_LEN
        );
    }
}

#[cfg_attr(
    not(any(feature = "quant-q5", feature = "quant-k", feature = "quant-iq4")),
    allow(dead_code, unreachable_code)
)]
/// A weight quantiser against gguf-py's bytes.
fn check_fixture_quant<W: QuantType>(r: &Record<'_>, quantize: fn(&[f32], &mut [W])) {
    let nx = r.n * W::BLOCK_LEN * 4;
    let x = f32s(&r.body[..nx]);
    let want = &r.body[nx..];
    let mut got = blocks_of::<W>(&vec![0xAAu8; want.len()]);
    quantize(&x, &mut got);
    let got = blocks_as_bytes(&got);
    for (i, (g, e)) in got
        .chunks_exact(core::mem::size_of::<W>())
        .zip(want.chunks_exact(core::mem::size_of::<W>()))
        .enumerate()
    {
        assert_eq!(g, e, "{}: quantised block {i} differs from gguf-py", r.name);
    }
}

#[cfg_attr(
    not(any(feature = "quant-q5", feature = "quant-k", feature = "quant-iq4")),
    allow(dead_code, unreachable_code)
)]
/// Check one fixture record if this build has its type; `false` if it does not.
fn check_record(r: &Record<'_>) -> bool {
    match (r.kind, r.name) {
        #[cfg(feature = "quant-q5")]
        (1, "Q5_0") => check_fixture_dequant::<quant::BlockQ5_0>(r),
        #[cfg(feature = "quant-q5")]
        (1, "Q5_1") => check_fixture_dequant::<quant::BlockQ5_1>(r),
        #[cfg(feature = "quant-q5")]
        (2, "Q5_0") => check_fixture_quant(r, quant::q5::quantize_row_q5_0),
        #[cfg(feature = "quant-q5")]
        (2, "Q5_1") => check_fixture_quant(r, quant::q5::quantize_row_q5_1),
        #[cfg(feature = "quant-k")]
        (1, "Q2_K") => check_fixture_dequant::<quant::BlockQ2_K>(r),
        #[cfg(feature = "quant-k")]
        (1, "Q3_K") => check_fixture_dequant::<quant::BlockQ3_K>(r),
        #[cfg(feature = "quant-k")]
        (1, "Q4_K") => check_fixture_dequant::<quant::BlockQ4_K>(r),
        #[cfg(feature = "quant-k")]
        (1, "Q5_K") => check_fixture_dequant::<quant::BlockQ5_K>(r),
        #[cfg(feature = "quant-k")]
        (1, "Q6_K") => check_fixture_dequant::<quant::BlockQ6_K>(r),
        #[cfg(feature = "quant-iq4")]
        (1, "IQ4_NL") => check_fixture_dequant::<quant::BlockIQ4_NL>(r),
        #[cfg(feature = "quant-iq4")]
        (1, "IQ4_XS") => check_fixture_dequant::<quant::BlockIQ4_XS>(r),
        _ => return false,
    }
    true
}

#[test]
fn gguf_py_fixtures() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/quant/quant_refs.bin"
    );
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut checked: Vec<String> = Vec::new();
    for r in records(&data) {
        if !check_record(&r) {
            continue;
        }
        checked.push(format!("{}:{}", r.kind, r.name));
    }
    let mut expect: Vec<&str> = Vec::new();
    if cfg!(feature = "quant-q5") {
        expect.extend(["1:Q5_0", "1:Q5_1", "2:Q5_0", "2:Q5_1"]);
    }
    if cfg!(feature = "quant-k") {
        expect.extend(["1:Q2_K", "1:Q3_K", "1:Q4_K", "1:Q5_K", "1:Q6_K"]);
    }
    if cfg!(feature = "quant-iq4") {
        expect.extend(["1:IQ4_NL", "1:IQ4_XS"]);
    }
    checked.sort();
    expect.sort();
    assert_eq!(
        checked, expect,
        "every fixture record for the enabled types was checked"
    );
}

// ---------------------------------------------------------------------------------------------
// 2 and 4. vec_dot against dequantise, edge cases; one line per type.

#[test]
fn dot_matches_dequantised_existing_types() {
    let q4_0 = Layout {
        f16_fields: &[0],
        quants: 2..18,
        has_min: false,
    };
    let q4_1 = Layout {
        f16_fields: &[0, 2],
        quants: 4..20,
        has_min: true,
    };
    let q8_0 = Layout {
        f16_fields: &[0],
        quants: 2..34,
        has_min: false,
    };
    check_dot::<BlockQ4_0>("Q4_0", &q4_0, 1);
    check_dot::<BlockQ4_1>("Q4_1", &q4_1, 2);
    check_dot::<BlockQ8_0>("Q8_0", &q8_0, 3);
}

#[cfg(feature = "quant-q5")]
#[test]
fn dot_matches_dequantised_q5() {
    let q5_0 = Layout {
        f16_fields: &[0],
        quants: 2..22,
        has_min: false,
    };
    let q5_1 = Layout {
        f16_fields: &[0, 2],
        quants: 4..24,
        has_min: true,
    };
    check_dot::<quant::BlockQ5_0>("Q5_0", &q5_0, 10);
    check_dot::<quant::BlockQ5_1>("Q5_1", &q5_1, 11);
}

#[cfg(feature = "quant-k")]
#[test]
fn dot_matches_dequantised_k() {
    let q2 = Layout {
        f16_fields: &[80, 82],
        quants: 16..80,
        has_min: true,
    };
    let q3 = Layout {
        f16_fields: &[108],
        quants: 0..96,
        has_min: false,
    };
    let q4 = Layout {
        f16_fields: &[0, 2],
        quants: 16..144,
        has_min: true,
    };
    let q5 = Layout {
        f16_fields: &[0, 2],
        quants: 16..176,
        has_min: true,
    };
    let q6 = Layout {
        f16_fields: &[208],
        quants: 0..192,
        has_min: false,
    };
    check_dot::<quant::BlockQ2_K>("Q2_K", &q2, 20);
    check_dot::<quant::BlockQ3_K>("Q3_K", &q3, 21);
    check_dot::<quant::BlockQ4_K>("Q4_K", &q4, 22);
    check_dot::<quant::BlockQ5_K>("Q5_K", &q5, 23);
    check_dot::<quant::BlockQ6_K>("Q6_K", &q6, 24);
}

#[cfg(feature = "quant-iq4")]
#[test]
fn dot_matches_dequantised_iq4() {
    let nl = Layout {
        f16_fields: &[0],
        quants: 2..18,
        has_min: false,
    };
    let xs = Layout {
        f16_fields: &[0],
        quants: 8..136,
        has_min: false,
    };
    check_dot::<quant::BlockIQ4_NL>("IQ4_NL", &nl, 30);
    check_dot::<quant::BlockIQ4_XS>("IQ4_XS", &xs, 31);
}

// ---------------------------------------------------------------------------------------------
// 3. Q8_K

fn q8k(x: &[f32]) -> BlockQ8_K {
    let mut b = [BlockQ8_K::ZERO];
    quant::q8_k::quantize_row_q8_k(x, &mut b);
    b[0]
}

#[test]
fn q8_k_hand_computed() {
    // max = -127 (largest magnitude, negative): iscale = -127 / -127 = 1, d = 1. nearest_int
    // rounds half to even, unlike roundf: 2.5 -> 2, 3.5 -> 4, -2.5 -> -2, 0.5 -> 0, 1.5 -> 2.
    let mut x = [0.0f32; QK_K];
    x[..6].copy_from_slice(&[-127.0, 2.5, 3.5, -2.5, 0.5, 1.5]);
    x[16] = 100.0;
    x[255] = -1.0;
    let b = q8k(&x);
    assert_eq!(b.d(), 1.0);
    let q: Vec<i8> = (0..QK_K).map(|j| b.q(j)).collect();
    assert_eq!(&q[..6], &[-127, 2, 4, -2, 0, 2]);
    assert_eq!((q[16], q[255]), (100, -1));
    assert_eq!(b.bsum(0), -127 + 2 + 4 - 2 + 2);
    assert_eq!(b.bsum(1), 100);
    assert_eq!(b.bsum(15), -1);
    assert!((2..15).all(|j| b.bsum(j) == 0));

    // max = +127: the scale is negative (iscale = -1, d = -1) and the quants flip sign.
    let mut x = [0.0f32; QK_K];
    x[..3].copy_from_slice(&[127.0, 2.5, -100.0]);
    let b = q8k(&x);
    assert_eq!(b.d(), -1.0);
    assert_eq!((b.q(0), b.q(1), b.q(2)), (-127, -2, 100));

    // The first value of largest magnitude wins; -x of it maps to +127.
    let mut x = [0.0f32; QK_K];
    x[3] = 8.0;
    x[7] = -8.0;
    let b = q8k(&x);
    assert_eq!((b.q(3), b.q(7)), (-127, 127));
    assert_eq!(b.d().to_bits(), (1.0f32 / (-127.0f32 / 8.0)).to_bits());

    // All zero: d = 0, quants and sums zero.
    let b = q8k(&[0.0; QK_K]);
    assert_eq!(blocks_as_bytes(&[b]), &[0u8; 292][..]);
}

#[test]
fn q8_k_formula() {
    let mut rng = Rng(99);
    for trial in 0..200 {
        let scale = 10f64.powf(rng.f64() * 8.0 - 4.0);
        let x: Vec<f32> = (0..QK_K).map(|_| rng.normal(scale)).collect();
        let b = q8k(&x);
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in &x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let iscale = -127.0f32 / max;
        assert_eq!(
            b.d().to_bits(),
            (1.0 / iscale).to_bits(),
            "trial {trial}: d"
        );
        let d = b.d().abs() as f64;
        for (j, &v) in x.iter().enumerate() {
            let back = b.d() as f64 * b.q(j) as f64;
            // Half a step, plus the f32 rounding of iscale * x and of d.
            assert!(
                (back - v as f64).abs() <= d / 2.0 * (1.0 + 1e-5),
                "trial {trial} element {j}: {v} -> {}",
                b.q(j)
            );
        }
        for g in 0..QK_K / 16 {
            let s: i32 = (16 * g..16 * g + 16).map(|j| b.q(j) as i32).sum();
            assert_eq!(b.bsum(g) as i32, s, "trial {trial}: bsum {g}");
        }
        let mut back = vec![0.0f32; QK_K];
        <BlockQ8_K as ActType>::dequantize(&[b], &mut back);
        assert!(back.iter().all(|v| v.is_finite()));
    }
}

// ---------------------------------------------------------------------------------------------
// IQ4_NL quantiser (gguf-py has none): hand-computed case and properties.

#[cfg(feature = "quant-iq4")]
#[test]
fn iq4_nl_quantiser() {
    use quant::iq4::{quantize_row_iq4_nl, BlockIQ4_NL, KVALUES_IQ4NL};
    let q = |x: &[f32]| {
        let mut b = [BlockIQ4_NL::ZERO];
        quantize_row_iq4_nl(x, &mut b);
        b[0]
    };
    // Exactly the table times 0.01: the first scale -1.27 / -127 = 0.01 picks index j % 16 for
    // element j, and the least-squares scale is 0.01 again (up to f32 rounding, far below the
    // f16 step).
    let x: Vec<f32> = (0..32)
        .map(|j| KVALUES_IQ4NL[j % 16] as f32 * 0.01)
        .collect();
    let b = q(&x);
    for j in 0..16 {
        assert_eq!(b.qs[j], (j as u8) | ((j as u8) << 4), "byte {j}");
    }
    assert_eq!(b.d, to_f16_le(0.01));

    // Negated: now the largest magnitude is +1.27, so d0 = 1.27 / -127 = -0.01, x / d0 is the
    // table again (same indices) and the fitted scale is -0.01.
    let neg: Vec<f32> = x.iter().map(|v| -v).collect();
    let b = q(&neg);
    for j in 0..16 {
        assert_eq!(b.qs[j], (j as u8) | ((j as u8) << 4), "negated, byte {j}");
    }
    assert_eq!(b.d, to_f16_le(-0.01));
    let mut back = [0.0f32; 32];
    quant::iq4::dequantize_row_iq4_nl(&[b], &mut back);
    for (j, (&v, &r)) in neg.iter().zip(&back).enumerate() {
        // Only the f16 rounding of the scale remains: 127 * 0.01 * 2^-11 < 1e-3.
        assert!((v - r).abs() <= 1e-3, "element {j}: {v} vs {r}");
    }

    // All zero and tiny (< 1e-15) blocks store zeros.
    assert_eq!(q(&[0.0; 32]), BlockIQ4_NL::ZERO);
    assert_eq!(q(&[1e-16; 32]), BlockIQ4_NL::ZERO);

    // Random blocks: finite, and every element's index is the table entry nearest x / d0 where
    // d0 = max / -127 (the first pass) -- checked through the round trip error bound.
    let mut rng = Rng(5);
    for _ in 0..200 {
        let s = 10f64.powf(rng.f64() * 6.0 - 3.0);
        let x: Vec<f32> = (0..64).map(|_| rng.normal(s)).collect();
        let mut b = [BlockIQ4_NL::ZERO; 2];
        quantize_row_iq4_nl(&x, &mut b);
        let mut back = [0.0f32; 64];
        quant::iq4::dequantize_row_iq4_nl(&b, &mut back);
        for (blk, (xb, rb)) in x.chunks(32).zip(back.chunks(32)).enumerate() {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(rb.iter().all(|v| v.is_finite()));
            // Widest table gap is 24 levels of 127 for the largest magnitude: error <= 0.2 amax
            // (the refitted scale moves it by a little).
            for (&v, &r) in xb.iter().zip(rb) {
                assert!(
                    (v - r).abs() <= 0.2 * amax,
                    "block {blk}: {v} vs {r} (amax {amax})"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The enum rows (ids, names, sizes) that files are parsed with, checked against ggml.

#[test]
fn ggml_type_rows() {
    let rows: [(GgmlType, u32, &str, usize, usize); 11] = [
        (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
        (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
        (GgmlType::Q2_K, 10, "Q2_K", 256, 84),
        (GgmlType::Q3_K, 11, "Q3_K", 256, 110),
        (GgmlType::Q4_K, 12, "Q4_K", 256, 144),
        (GgmlType::Q5_K, 13, "Q5_K", 256, 176),
        (GgmlType::Q6_K, 14, "Q6_K", 256, 210),
        (GgmlType::Q8_K, 15, "Q8_K", 256, 292),
        (GgmlType::IQ4_NL, 20, "IQ4_NL", 32, 18),
        (GgmlType::IQ4_XS, 23, "IQ4_XS", 256, 136),
        (GgmlType::Q8_1, 9, "Q8_1", 32, 36),
    ];
    for (t, id, name, bl, bb) in rows {
        assert_eq!(GgmlType::from_id(id), Some(t));
        assert_eq!(
            (t.id(), t.name(), t.block_len(), t.block_bytes()),
            (id, name, bl, bb)
        );
        assert_eq!(GgmlType::from_name(&name.to_ascii_lowercase()), Some(t));
        assert_eq!(t.row_bytes(2 * bl as u64), Some(2 * bb as u64));
        assert_eq!(t.row_bytes(bl as u64 + 1), None);
    }
    // Runnable exactly when its feature is built.
    assert_eq!(GgmlType::IQ4_NL.is_supported(), cfg!(feature = "quant-iq4"));
    assert_eq!(GgmlType::Q4_K.is_supported(), cfg!(feature = "quant-k"));
    assert_eq!(GgmlType::Q5_0.is_supported(), cfg!(feature = "quant-q5"));
    let _ = BlockQ8_1::ZERO;
}
