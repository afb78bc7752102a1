//! Test inputs made on the spot: random LoRA adapters in llama.cpp's GGUF layout for any llama
//! base, and a base truncated to its first layers (small enough to travel to a GPU machine).

use edgelora::format::gguf_write::{GgufWriter, OwnedValue};
use edgelora::kernels::reference;
use edgelora::lora::DORA_SUFFIX;
use edgelora::model::{Model, LINEAR_NAMES};
use edgelora::quant::{blocks_as_bytes, to_f16_le, BlockQ4_0, BlockQ4_1, BlockQ8_0, GgmlType};
use edgelora::Gguf;

/// What [`random_adapter`] writes.
#[derive(Clone, Debug)]
pub struct AdapterSpec {
    /// Rank r.
    pub rank: usize,
    /// `adapter.lora.alpha`.
    pub alpha: f32,
    /// Seed of the values.
    pub seed: u64,
    /// Type of every A (F32, F16, BF16, or Q8_0 when the input width is a multiple of 32).
    pub a_ty: GgmlType,
    /// Type of every B (Q8_0 needs the rank to be a multiple of 32).
    pub b_ty: GgmlType,
    /// Linear indices ([`LINEAR_NAMES`] order) adapted in every layer.
    pub targets: Vec<usize>,
    /// Values of A and B are uniform in `[-amp, amp]`.
    pub amp: f32,
    /// Add DoRA row factors (uniform in [0.9, 1.1]).
    pub dora: bool,
    /// Add a replacement output head (F16, values in `[-amp, amp]`).
    pub head: bool,
}

impl AdapterSpec {
    /// Rank `rank`, alpha = rank, F16 A and B on every linear, amplitude 0.05.
    pub fn all_f16(rank: usize, seed: u64) -> AdapterSpec {
        AdapterSpec {
            rank,
            alpha: rank as f32,
            seed,
            a_ty: GgmlType::F16,
            b_ty: GgmlType::F16,
            targets: (0..LINEAR_NAMES.len()).collect(),
            amp: 0.05,
            dora: false,
            head: false,
        }
    }
}

/// Deterministic values uniform in `[-amp, amp)`.
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

/// Encode row-major values (`rows x cols`) as a tensor of type `ty`.
///
/// # Panics
/// For a type other than F32/F16/BF16/Q4_0/Q4_1/Q8_0, or a block type with `cols` not a multiple of 32 (test
/// inputs only; the specs above never ask for that).
pub fn encode(ty: GgmlType, v: &[f32], cols: usize) -> Vec<u8> {
    match ty {
        GgmlType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        GgmlType::F16 => v.iter().flat_map(|&x| to_f16_le(x)).collect(),
        GgmlType::BF16 => v
            .iter()
            .flat_map(|x| {
                let b = x.to_bits();
                (((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16).to_le_bytes()
            })
            .collect(),
        GgmlType::Q8_0 => {
            assert!(cols.is_multiple_of(32), "Q8_0 rows must be whole blocks");
            let mut blocks = vec![BlockQ8_0::ZERO; v.len() / 32];
            reference::quantize_row_q8_0(v, &mut blocks);
            blocks_as_bytes(&blocks).to_vec()
        }
        GgmlType::Q4_0 => {
            assert!(cols.is_multiple_of(32), "Q4_0 rows must be whole blocks");
            let mut blocks = vec![BlockQ4_0::ZERO; v.len() / 32];
            reference::quantize_row_q4_0(v, &mut blocks);
            blocks_as_bytes(&blocks).to_vec()
        }
        GgmlType::Q4_1 => {
            assert!(cols.is_multiple_of(32), "Q4_1 rows must be whole blocks");
            let mut blocks = vec![BlockQ4_1::ZERO; v.len() / 32];
            reference::quantize_row_q4_1(v, &mut blocks);
            blocks_as_bytes(&blocks).to_vec()
        }
        other => panic!("encode: {other:?} is not a test type"),
    }
}

/// A random LoRA adapter for `base` (a llama GGUF), in llama.cpp's layout.
///
/// # Errors
/// The base's model errors.
pub fn random_adapter(base: &Gguf<'_>, spec: &AdapterSpec) -> edgelora::Result<Vec<u8>> {
    let m: Model<'_> = Model::from_gguf(base)?;
    let c = *m.config();
    let mut w = GgufWriter::new();
    w.set("general.architecture", OwnedValue::Str("llama".into()));
    w.set("general.type", OwnedValue::Str("adapter".into()));
    w.set("adapter.type", OwnedValue::Str("lora".into()));
    w.set("adapter.lora.alpha", OwnedValue::F32(spec.alpha));
    let r = spec.rank;
    for l in 0..c.n_layers {
        let layer = m
            .layer(l)
            .ok_or_else(|| edgelora::Error::new(edgelora::ErrorKind::InvalidArgument, "layer"))?;
        for &k in &spec.targets {
            let t = layer.linear(k);
            let name = format!("blk.{l}.{}.weight", LINEAR_NAMES[k]);
            let s = spec
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add((l * 16 + k) as u64);
            let a = rnd(s, r * t.cols(), spec.amp);
            let b = rnd(s ^ 0xb, t.rows() * r, spec.amp);
            w.add_tensor(
                &format!("{name}.lora_a"),
                spec.a_ty,
                &[t.cols() as u64, r as u64],
                encode(spec.a_ty, &a, t.cols()),
            )?;
            w.add_tensor(
                &format!("{name}.lora_b"),
                spec.b_ty,
                &[r as u64, t.rows() as u64],
                encode(spec.b_ty, &b, r),
            )?;
            if spec.dora {
                let g: Vec<f32> = rnd(s ^ 0xd, t.rows(), 0.1)
                    .iter()
                    .map(|v| 1.0 + v)
                    .collect();
                w.add_tensor(
                    &format!("{name}{DORA_SUFFIX}"),
                    GgmlType::F32,
                    &[t.rows() as u64],
                    encode(GgmlType::F32, &g, 1),
                )?;
            }
        }
    }
    if spec.head {
        let h = rnd(spec.seed ^ 0x4ead, c.vocab * c.dim, spec.amp);
        w.add_tensor(
            "output.weight",
            GgmlType::F16,
            &[c.dim as u64, c.vocab as u64],
            encode(GgmlType::F16, &h, c.dim),
        )?;
    }
    Ok(w.to_bytes())
}

/// `base` with only its first `keep` layers (metadata copied, `llama.block_count` changed).
///
/// # Errors
/// GGUF errors of `base`.
pub fn truncate_layers(base: &Gguf<'_>, keep: usize) -> edgelora::Result<Vec<u8>> {
    let mut w = GgufWriter::new();
    for (k, v) in base.metadata() {
        let v = if k == "llama.block_count" {
            OwnedValue::U32(keep as u32)
        } else {
            OwnedValue::from_value(&v)
        };
        w.set(k, v);
    }
    for t in base.tensors() {
        let layer = t
            .name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse::<usize>().ok());
        if layer.is_some_and(|l| l >= keep) {
            continue;
        }
        w.add_tensor(t.name, t.ty, t.dims(), t.data.to_vec())?;
    }
    Ok(w.to_bytes())
}
