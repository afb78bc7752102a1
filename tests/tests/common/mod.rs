//! Small helpers shared by several test files (each test file is its own crate and includes
//! this module with `mod common;`, so not every file uses every helper).
#![allow(dead_code)]

/// Deterministic pseudo-random values in `[-amp, amp)` (xorshift64 seeded from `seed`).
pub fn rnd(seed: u64, n: usize, amp: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

/// Little-endian f32 bytes of `x`.
pub fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Little-endian F16 bytes of `x` (round to nearest).
pub fn f16_bytes(x: &[f32]) -> Vec<u8> {
    x.iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect()
}

/// The bytes of `tests/fixtures/<rel>`; panics with the path if it cannot be read.
pub fn fixture(rel: &str) -> Vec<u8> {
    let p = format!("{}/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// The kernel tables of this architecture that this CPU runs (portable first), for tests that
/// run once per table. Prints `SKIPPED` with the reason for each of this architecture's tables
/// the CPU (or build) lacks, so a log says what a machine could not check.
pub fn tables(what: &str) -> Vec<&'static edgelora::kernels::Kernel> {
    use edgelora::kernels::Isa;
    let isas: &[Isa] = if cfg!(target_arch = "x86_64") {
        &[Isa::Portable, Isa::Avx2, Isa::Avx512]
    } else if cfg!(target_arch = "aarch64") {
        &[Isa::Portable, Isa::Neon, Isa::NeonDot]
    } else {
        &[Isa::Portable]
    };
    isas.iter()
        .filter_map(|&isa| {
            let k = isa.kernel();
            if k.is_none() {
                println!(
                    "SKIPPED: {what} on the {} table: this CPU does not have its instructions",
                    isa.name()
                );
            }
            k
        })
        .collect()
}

/// Standard normal upper tail Q(z) (Abramowitz-Stegun 26.2.17, |error| < 7.5e-8).
pub fn q_tail(z: f64) -> f64 {
    if z < 0.0 {
        return 1.0 - q_tail(-z);
    }
    let t = 1.0 / (1.0 + 0.231_641_9 * z);
    let poly = t
        * (0.319_381_530
            + t * (-0.356_563_782
                + t * (1.781_477_937 + t * (-1.821_255_978 + t * 1.330_274_429))));
    (-z * z / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt() * poly
}

/// Top-1 flips that 8-bit activation noise explains, derived from the data instead of a count
/// tuned on one machine (the derivation is in `kernels_model.rs`'s module doc): with `e_i` our
/// logit minus the reference's on the reference's #1 and #2, `sigma` the RMS of `e_1 - e_2`
/// over all positions and `margin` each position's reference top-2 gap, a position flips with
/// probability about `Q(margin / sigma)`. Returns `(sigma, expected, allowed)` with `allowed`
/// the Poisson 3-sigma upper bound `E + 3 sqrt(E) + 1`.
pub fn flip_allowance(sum_sq_e12: f64, margins: &[f64]) -> (f64, f64, f64) {
    let sigma = (sum_sq_e12 / margins.len().max(1) as f64).sqrt();
    let expected: f64 = if sigma > 0.0 {
        margins.iter().map(|&m| q_tail(m / sigma)).sum()
    } else {
        0.0
    };
    (sigma, expected, expected + 3.0 * expected.sqrt() + 1.0)
}

/// A random LoRA adapter in llama.cpp's GGUF layout (F32 A and B) for a model, for tests that
/// need one: every linear of every layer unless narrowed.
pub struct RandomAdapter<'x> {
    /// Rank r.
    pub rank: usize,
    /// `adapter.lora.alpha`.
    pub alpha: f32,
    /// Values of A and B are uniform in `[-amp, amp)`.
    pub amp: f32,
    /// The base fingerprint to record, if any.
    pub fingerprint: Option<u64>,
    /// Only these linears (indices in `LINEAR_NAMES`), if given.
    pub linears: Option<&'x [usize]>,
    /// Only the first this many layers, if given.
    pub layers: Option<usize>,
}

impl RandomAdapter<'_> {
    /// The adapter's GGUF bytes; `seeds(l, k)` gives the `rnd` seeds of A and B of linear `k`
    /// in layer `l` (callers keep their own, so committed fixtures stay byte-identical).
    pub fn build<const L: usize>(
        &self,
        m: &edgelora::model::Model<'_, L>,
        seeds: impl Fn(usize, usize) -> (u64, u64),
    ) -> Vec<u8> {
        use edgelora::format::gguf_write::{GgufWriter, OwnedValue};
        use edgelora::model::LINEAR_NAMES;
        use edgelora::quant::GgmlType;
        let r = self.rank;
        let mut w = GgufWriter::new();
        w.set("general.architecture", OwnedValue::Str("llama".into()));
        w.set("general.type", OwnedValue::Str("adapter".into()));
        w.set("adapter.type", OwnedValue::Str("lora".into()));
        w.set("adapter.lora.alpha", OwnedValue::F32(self.alpha));
        if let Some(fp) = self.fingerprint {
            w.set(edgelora::lora::FINGERPRINT_KEY, OwnedValue::U64(fp));
        }
        for l in 0..self.layers.unwrap_or(m.config().n_layers) {
            for (k, name) in LINEAR_NAMES.iter().enumerate() {
                if self.linears.is_some_and(|ks| !ks.contains(&k)) {
                    continue;
                }
                let t = m.layer(l).unwrap().linear(k);
                let target = format!("blk.{l}.{name}.weight");
                let (sa, sb) = seeds(l, k);
                let a = rnd(sa, r * t.cols(), self.amp);
                let b = rnd(sb, t.rows() * r, self.amp);
                w.add_tensor(
                    &format!("{target}.lora_a"),
                    GgmlType::F32,
                    &[t.cols() as u64, r as u64],
                    f32_bytes(&a),
                )
                .unwrap();
                w.add_tensor(
                    &format!("{target}.lora_b"),
                    GgmlType::F32,
                    &[r as u64, t.rows() as u64],
                    f32_bytes(&b),
                )
                .unwrap();
            }
        }
        w.to_bytes()
    }
}

/// A JSON array of numbers as f64 (panics with the value if it is not one: fixtures only).
pub fn json_f64s(v: &serde_json::Value) -> Vec<f64> {
    let a = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
    a.iter().map(|x| x.as_f64().unwrap()).collect()
}

/// A JSON array of token ids.
pub fn json_u32s(v: &serde_json::Value) -> Vec<u32> {
    json_f64s(v).into_iter().map(|x| x as u32).collect()
}

/// A JSON array of arrays of token ids (per position: a top-k list).
pub fn json_id_rows(v: &serde_json::Value) -> Vec<Vec<usize>> {
    let a = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
    a.iter()
        .map(|r| json_f64s(r).into_iter().map(|x| x as usize).collect())
        .collect()
}

/// A JSON array of arrays of numbers (per position: logits).
pub fn json_f64_rows(v: &serde_json::Value) -> Vec<Vec<f64>> {
    let a = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
    a.iter().map(json_f64s).collect()
}

/// Encode `text` with a generous output buffer (panics with the text on a tokenizer error).
pub fn enc<S: AsRef<[u32]>>(
    tok: &edgelora::tokenizer::Tokenizer<'_, S>,
    text: &str,
    special: bool,
) -> Vec<u32> {
    let mut out = vec![0u32; edgelora::tokenizer::Tokenizer::encode_buf_len(text.len())];
    let n = tok
        .encode(text, special, &mut out)
        .unwrap_or_else(|e| panic!("{text:?}: {e}"));
    out.truncate(n);
    out
}

/// Decode one id at a time with the streaming decoder; every chunk must be whole UTF-8.
pub fn stream_decode<S: AsRef<[u32]>>(
    tok: &edgelora::tokenizer::Tokenizer<'_, S>,
    ids: &[u32],
) -> String {
    let mut dec = tok.decoder();
    let mut s = Vec::new();
    let mut buf = vec![0u8; tok.max_token_bytes() * 3 + 3];
    for &id in ids {
        let n = dec.push(id, &mut buf).unwrap();
        assert!(std::str::from_utf8(&buf[..n]).is_ok());
        s.extend_from_slice(&buf[..n]);
    }
    let n = dec.finish(&mut buf).unwrap();
    s.extend_from_slice(&buf[..n]);
    String::from_utf8(s).unwrap()
}
