//! LoRA on the tiny model: unmerged vs merged equality, swap, streaming and fault injection.
//! (Parity with PEFT itself is in `lora_peft.rs`.)

use edgelora::format::gguf_write::{GgufWriter, OwnedValue};
use edgelora::kernels::MatRef;
use edgelora::lora::merge::{merge_into, merged_len};
use edgelora::lora::stream::{frame_header, Progress, StreamLoader};
use edgelora::lora::{base_fingerprint, Adapter, AdapterSet, LoraPair};
use edgelora::model::{Model, State, LINEARS, LINEAR_NAMES};
use edgelora::quant::GgmlType;
use edgelora::{ErrorKind as K, Gguf};

mod common;
use common::{f32_bytes, rnd};

fn tiny() -> Vec<u8> {
    std::fs::read(format!(
        "{}/fixtures/tiny/tiny-q8_0.gguf",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// An all-linear adapter of rank `r` for `base` with random A and B.
fn make_adapter(base: &Gguf<'_>, r: usize, seed: u64, alpha: f32, fingerprint: bool) -> Vec<u8> {
    let m: Model<4> = Model::from_gguf(base).unwrap();
    let spec = common::RandomAdapter {
        rank: r,
        alpha,
        amp: 0.3,
        fingerprint: fingerprint.then(|| base_fingerprint(base)),
        linears: None,
        layers: None,
    };
    spec.build(&m, |l, k| {
        let i = (l * 10 + k) as u64;
        (seed + i, seed + 1000 + i)
    })
}

fn logits_with(m: &Model<4>, set: &AdapterSet<'_, '_, '_>, tokens: &[u32]) -> Vec<Vec<f32>> {
    let cfg = *m.config();
    let mut buf = vec![0f32; State::len_for(&cfg, 32)];
    let mut st = State::new(&cfg, 32, &mut buf).unwrap();
    // The f32-activation reference path, so merged and unmerged are compared exactly (the
    // fast path quantises activations for quantised weights but not for F32 merged ones).
    st.set_kernel_mode(edgelora::model::KernelMode::Reference);
    tokens
        .iter()
        .enumerate()
        .map(|(p, &t)| m.forward_with(t, p, &mut st, set).unwrap().to_vec())
        .collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const TOKENS: [u32; 10] = [1, 17, 42, 99, 3, 250, 7, 7, 120, 64];

#[test]
fn unmerged_equals_merged_f32_and_swaps_are_exact() {
    let base_bytes = tiny();
    let base = Gguf::parse(&base_bytes).unwrap();
    let model: Model<4> = Model::from_gguf(&base).unwrap();
    let (ab, bb) = (
        make_adapter(&base, 8, 1, 16.0, true),
        make_adapter(&base, 4, 2, 4.0, true),
    );
    let (a, b) = (Adapter::parse(&ab).unwrap(), Adapter::parse(&bb).unwrap());
    let n = Adapter::slots_len(model.config());
    let (mut sa, mut sb) = (vec![None; n], vec![None; n]);
    let ba = a.bind(&base, &model, &mut sa).unwrap();
    let bbd = b.bind(&base, &model, &mut sb).unwrap();

    let base_l = logits_with(&model, &AdapterSet::EMPTY, &TOKENS);
    let la = logits_with(&model, &AdapterSet::single(&ba, 1.0), &TOKENS);
    assert!(
        max_diff(&base_l, &la) > 0.1,
        "the adapter must change the logits"
    );

    // Merge A into F32 copies of every linear and compare with the unmerged run.
    let mut merged = model.clone();
    let mut bufs: Vec<Vec<u8>> = vec![];
    for l in 0..model.config().n_layers {
        for k in 0..LINEARS {
            let w = *model.layer(l).unwrap().linear(k);
            let p: LoraPair = *ba.pair(l, k).unwrap();
            let mut out = vec![0u8; merged_len(&w, GgmlType::F32).unwrap()];
            let mut row = vec![0f32; 2 * w.cols()];
            let st = merge_into(
                &w,
                &[(p, a.alpha() / p.rank() as f32)],
                GgmlType::F32,
                &mut out,
                &mut row,
            )
            .unwrap();
            assert!(st.rel_err < 1e-5, "{st:?}");
            bufs.push(out);
        }
    }
    let mut i = 0;
    for l in 0..model.config().n_layers {
        for k in 0..LINEARS {
            let w = *model.layer(l).unwrap().linear(k);
            *merged.layer_mut(l).unwrap().linear_mut(k) =
                MatRef::new(GgmlType::F32, w.rows(), w.cols(), &bufs[i]).unwrap();
            i += 1;
        }
    }
    let lm = logits_with(&merged, &AdapterSet::EMPTY, &TOKENS);
    let scale = la.iter().flatten().fold(1f32, |m, v| m.max(v.abs()));
    let d = max_diff(&la, &lm);
    println!("tiny: unmerged vs merged-F32 max |dlogit| {d:.2e} (max |logit| {scale:.1})");
    assert!(d < 1e-4 * scale, "unmerged vs merged: {d}");

    // Swap A -> B -> A on fresh states: identical logits, bit for bit.
    let lb = logits_with(&model, &AdapterSet::single(&bbd, 1.0), &TOKENS);
    let la2 = logits_with(&model, &AdapterSet::single(&ba, 1.0), &TOKENS);
    assert_eq!(la, la2);
    assert!(max_diff(&la, &lb) > 0.1);
    // Scale 0 is the base; two adapters at once are the sum of their updates (linear in B).
    let l0 = logits_with(&model, &AdapterSet::single(&ba, 0.0), &TOKENS);
    assert_eq!(l0, base_l);
    let mut set = AdapterSet::single(&ba, 1.0);
    set.push(&bbd, 0.5).unwrap();
    set.set_scale(1, 0.0).unwrap();
    assert_eq!(logits_with(&model, &set, &TOKENS), la);
    assert_eq!(
        set.set_scale(3, 1.0).unwrap_err().kind(),
        K::InvalidArgument
    );
}

#[test]
fn bind_rejects_mismatches() {
    let base_bytes = tiny();
    let base = Gguf::parse(&base_bytes).unwrap();
    let model: Model<4> = Model::from_gguf(&base).unwrap();
    let n = Adapter::slots_len(model.config());
    // Fingerprint of another base.
    let other = std::fs::read(format!(
        "{}/fixtures/tiny/tiny-q4_1.gguf",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let og = Gguf::parse(&other).unwrap();
    let ab = make_adapter(&og, 4, 5, 8.0, true);
    let a = Adapter::parse(&ab).unwrap();
    let mut slots = vec![None; n];
    let e = a.bind(&base, &model, &mut slots).unwrap_err();
    assert_eq!(e.kind(), K::BadValue);
    assert!(e.to_string().contains("another base"), "{e}");
    assert!(
        slots.iter().all(|s| s.is_none()),
        "failed bind must not fill slots"
    );
    // Too few slots.
    let ab = make_adapter(&base, 4, 5, 8.0, false);
    let a = Adapter::parse(&ab).unwrap();
    assert_eq!(
        a.bind(&base, &model, &mut slots[..n - 1])
            .unwrap_err()
            .kind(),
        K::BufferTooSmall
    );
    // Wrong shape: an adapter for a target with other dims.
    let mut w = GgufWriter::new();
    w.set("general.type", OwnedValue::Str("adapter".into()))
        .set("adapter.type", OwnedValue::Str("lora".into()))
        .set("adapter.lora.alpha", OwnedValue::F32(1.0));
    w.add_tensor(
        "blk.0.attn_q.weight.lora_a",
        GgmlType::F32,
        &[32, 2],
        vec![0; 256],
    )
    .unwrap();
    w.add_tensor(
        "blk.0.attn_q.weight.lora_b",
        GgmlType::F32,
        &[2, 64],
        vec![0; 512],
    )
    .unwrap();
    let bytes = w.to_bytes();
    let mut slots = vec![None; n];
    let e = Adapter::parse(&bytes)
        .unwrap()
        .bind(&base, &model, &mut slots)
        .unwrap_err();
    assert_eq!(e.kind(), K::ShapeMismatch);
    assert_eq!(e.name().as_bytes(), b"blk.0.attn_q.weight");
    // A layer the base does not have, and a target edgelora cannot adapt.
    for target in ["blk.7.attn_q.weight", "token_embd.weight"] {
        let mut w = GgufWriter::new();
        w.set("general.type", OwnedValue::Str("adapter".into()))
            .set("adapter.type", OwnedValue::Str("lora".into()))
            .set("adapter.lora.alpha", OwnedValue::F32(1.0));
        w.add_tensor(
            &format!("{target}.lora_a"),
            GgmlType::F32,
            &[64, 2],
            vec![0; 512],
        )
        .unwrap();
        w.add_tensor(
            &format!("{target}.lora_b"),
            GgmlType::F32,
            &[2, 64],
            vec![0; 512],
        )
        .unwrap();
        let bytes = w.to_bytes();
        let mut slots = vec![None; n];
        let e = Adapter::parse(&bytes)
            .unwrap()
            .bind(&base, &model, &mut slots)
            .unwrap_err();
        assert_eq!(e.kind(), K::MissingTensor, "{target}: {e}");
    }
    // Parse-level: lone A, non-LoRA tensor, wrong general.type, rank mismatch.
    let mut w = GgufWriter::new();
    w.set("general.type", OwnedValue::Str("adapter".into()))
        .set("adapter.type", OwnedValue::Str("lora".into()))
        .set("adapter.lora.alpha", OwnedValue::F32(1.0));
    w.add_tensor(
        "blk.0.attn_q.weight.lora_a",
        GgmlType::F32,
        &[64, 2],
        vec![0; 512],
    )
    .unwrap();
    assert_eq!(
        Adapter::parse(&w.to_bytes()).unwrap_err().kind(),
        K::MissingTensor
    );
    w.add_tensor(
        "blk.0.attn_q.weight.lora_b",
        GgmlType::F32,
        &[3, 64],
        vec![0; 768],
    )
    .unwrap();
    assert_eq!(
        Adapter::parse(&w.to_bytes()).unwrap_err().kind(),
        K::ShapeMismatch
    );
    let mut w2 = GgufWriter::new();
    w2.set("general.type", OwnedValue::Str("model".into()));
    assert_eq!(
        Adapter::parse(&w2.to_bytes()).unwrap_err().kind(),
        K::BadValue
    );
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut v = frame_header(payload).to_vec();
    v.extend_from_slice(payload);
    v
}

#[test]
fn streaming_any_chunk_size_and_fault_injection() {
    let base_bytes = tiny();
    let base = Gguf::parse(&base_bytes).unwrap();
    let model: Model<4> = Model::from_gguf(&base).unwrap();
    let n = Adapter::slots_len(model.config());
    let active_bytes = make_adapter(&base, 4, 11, 8.0, true);
    let active = Adapter::parse(&active_bytes).unwrap();
    let mut s_active = vec![None; n];
    let bound = active.bind(&base, &model, &mut s_active).unwrap();
    let before = logits_with(&model, &AdapterSet::single(&bound, 1.0), &TOKENS[..4]);

    let payload = make_adapter(&base, 2, 12, 4.0, true);
    let stream = framed(&payload);
    let mut rx = vec![0u8; payload.len() + 64];
    // Every chunk size from 1 byte up to the whole stream (all sizes up to 64, then a spread).
    let sizes: Vec<usize> = (1..=64)
        .chain((65..stream.len()).step_by(97))
        .chain([stream.len()])
        .collect();
    for &cs in &sizes {
        let mut l = StreamLoader::new(&mut rx);
        let mut last = Progress::Frame;
        for c in stream.chunks(cs) {
            last = l.push(c).unwrap();
        }
        assert_eq!(last, Progress::Complete, "chunk {cs}");
        let p = l.finish().unwrap();
        assert_eq!(p, &payload[..]);
    }
    // Truncation at every byte: never loadable.
    for cut in 0..stream.len() {
        let mut l = StreamLoader::new(&mut rx);
        let r = l.push(&stream[..cut]);
        if r.is_ok() {
            assert!(l.finish().is_err(), "cut at {cut} must not load");
        }
    }
    // Single bit flips anywhere: rejected (CRC over frame header and payload).
    let mut rejected = 0;
    for i in (0..stream.len()).step_by(7) {
        for bit in [0, 3, 7] {
            let mut c = stream.clone();
            c[i] ^= 1 << bit;
            let mut l = StreamLoader::new(&mut rx);
            let ok = l.push(&c).is_ok() && l.finish().is_ok();
            assert!(!ok, "flip at byte {i} bit {bit} was accepted");
            rejected += 1;
        }
    }
    // Duplicated and reordered chunks.
    let chunks: Vec<&[u8]> = stream.chunks(50).collect();
    let mut dup: Vec<u8> = vec![];
    for (i, c) in chunks.iter().enumerate() {
        dup.extend_from_slice(c);
        if i == 3 {
            dup.extend_from_slice(c);
        }
    }
    let mut l = StreamLoader::new(&mut rx);
    assert!(l.push(&dup).is_err() || l.finish().is_err());
    let mut re: Vec<u8> = vec![];
    for i in [0, 1, 3, 2] {
        re.extend_from_slice(chunks[i]);
    }
    for c in &chunks[4..] {
        re.extend_from_slice(c);
    }
    let mut l = StreamLoader::new(&mut rx);
    assert!(l.push(&re).is_err() || l.finish().is_err());
    // Payload bigger than the buffer: refused from the frame header.
    let mut small = vec![0u8; payload.len() - 1];
    let mut l = StreamLoader::new(&mut small);
    assert_eq!(l.push(&stream[..24]).unwrap_err().kind(), K::BufferTooSmall);
    // A stream for another base loads but does not bind.
    let other = std::fs::read(format!(
        "{}/fixtures/tiny/tiny-q4_1.gguf",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let og = Gguf::parse(&other).unwrap();
    let wrong = framed(&make_adapter(&og, 2, 13, 4.0, true));
    let mut rx2 = vec![0u8; wrong.len()];
    let mut l = StreamLoader::new(&mut rx2);
    l.push(&wrong).unwrap();
    let p = l.finish().unwrap();
    let mut s2 = vec![None; n];
    assert!(Adapter::parse(p)
        .unwrap()
        .bind(&base, &model, &mut s2)
        .is_err());
    // A stream whose header is not an adapter is refused as soon as the header is complete.
    let not_adapter = framed(&base_bytes[..]);
    let mut rx3 = vec![0u8; not_adapter.len()];
    let mut l = StreamLoader::new(&mut rx3);
    let mut err = None;
    for (i, c) in not_adapter.chunks(256).enumerate() {
        if let Err(e) = l.push(c) {
            err = Some((i, e));
            break;
        }
    }
    let (at, e) = err.expect("model stream must be refused");
    let header_end = 24 + base.data_offset() as usize;
    assert!(
        at * 256 <= header_end + header_end / 16,
        "refused late, at chunk {at} (header ends at {header_end}): {e}"
    );
    assert_eq!(e.kind(), K::BadValue);
    // The active adapter still gives identical logits after all of that.
    let after = logits_with(&model, &AdapterSet::single(&bound, 1.0), &TOKENS[..4]);
    assert_eq!(before, after);
    println!(
        "stream: {} chunk sizes ok, {} truncations and {rejected} bit flips rejected",
        sizes.len(),
        stream.len()
    );
}

const Q8_0_ZERO: edgelora::quant::BlockQ8_0 = edgelora::quant::BlockQ8_0 {
    d: [0; 2],
    qs: [0; 32],
};

/// Encode `v` as `ty` (Q8_0: a whole number of blocks).
fn encode(ty: GgmlType, v: &[f32]) -> Vec<u8> {
    match ty {
        GgmlType::F32 => f32_bytes(v),
        GgmlType::F16 => v
            .iter()
            .flat_map(|&x| edgelora::quant::to_f16_le(x))
            .collect(),
        GgmlType::BF16 => v
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect(),
        GgmlType::Q8_0 => {
            let mut b = vec![Q8_0_ZERO; v.len() / 32];
            edgelora::kernels::reference::quantize_row_q8_0(v, &mut b);
            edgelora::quant::blocks_as_bytes(&b).to_vec()
        }
        _ => unreachable!(),
    }
}

/// `AdapterSet::apply` on the fast path of every ISA this machine runs (the fused B kernel for
/// float B, the fused Q8_0 kernel with f32 `t` for Q8_0 B; A on the activation's Q8 form when A
/// is Q8_0) against
/// the reference path, for every A/B type pair and ranks that are and are not multiples of
/// the kernels' row and element groupings, with DoRA off.
#[test]
fn apply_fast_matches_reference_all_types_and_isas() {
    use edgelora::kernels::{Input, Isa, KernelMode};
    let bytes = tiny();
    let g = Gguf::parse(&bytes).unwrap();
    let m: Model<4> = Model::from_gguf(&g).unwrap();
    let types = [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0];
    for r in [1usize, 3, 8, 13, 16, 32, 40, 64, 96, 128] {
        for ta in types {
            for tb in types {
                if tb == GgmlType::Q8_0 && r % 32 != 0 {
                    continue; // Q8_0 rows are whole 32-element blocks
                }
                let mut w = GgufWriter::new();
                w.set("general.architecture", OwnedValue::Str("llama".into()));
                w.set("general.type", OwnedValue::Str("adapter".into()));
                w.set("adapter.type", OwnedValue::Str("lora".into()));
                w.set("adapter.lora.alpha", OwnedValue::F32(2.0 * r as f32));
                for (k, name) in LINEAR_NAMES.iter().enumerate() {
                    let t = m.layer(0).unwrap().linear(k);
                    let target = format!("blk.0.{name}.weight");
                    let a = rnd(7 + k as u64 + 100 * r as u64, r * t.cols(), 0.5);
                    let b = rnd(77 + k as u64 + 100 * r as u64, t.rows() * r, 0.5);
                    let dims_a = [t.cols() as u64, r as u64];
                    let dims_b = [r as u64, t.rows() as u64];
                    w.add_tensor(&format!("{target}.lora_a"), ta, &dims_a, encode(ta, &a))
                        .unwrap();
                    w.add_tensor(&format!("{target}.lora_b"), tb, &dims_b, encode(tb, &b))
                        .unwrap();
                }
                let file = w.to_bytes();
                let ad = Adapter::parse(&file).unwrap();
                let mut slots = vec![None; Adapter::slots_len(m.config())];
                let bound = ad.bind(&g, &m, &mut slots).unwrap();
                let set = AdapterSet::single(&bound, 0.75);
                for k in 0..LINEARS {
                    let t = m.layer(0).unwrap().linear(k);
                    let x = rnd(5 + k as u64, t.cols(), 1.0);
                    let y0 = rnd(9 + k as u64, t.rows(), 1.0);
                    let (mut tmp, mut out_tmp) = (vec![0f32; 256], vec![0f32; t.rows()]);
                    let kern = Isa::Portable.kernel().unwrap();
                    let mut want = y0.clone();
                    let mut xin = Input::new(&x, &mut [], kern, KernelMode::Reference);
                    set.apply(0, k, &mut xin, &mut want, &mut tmp, &mut out_tmp);
                    let scale = want
                        .iter()
                        .zip(&y0)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(scale > 0.0);
                    // Q8_0 A reads the activation quantised to 8 bits (~0.4% per element).
                    let tol = if ta == GgmlType::Q8_0 { 2e-2 } else { 1e-4 } * scale;
                    for isa in Isa::ALL {
                        let Some(kern) = isa.kernel() else { continue };
                        let mut q = vec![0f32; edgelora::kernels::act_scratch_f32s(t.cols())];
                        let mut got = y0.clone();
                        let mut xin = Input::new(&x, &mut q, kern, KernelMode::Fast);
                        set.apply(0, k, &mut xin, &mut got, &mut tmp, &mut out_tmp);
                        let d = max_diff(&[got], &[want.clone()]);
                        assert!(
                            d <= tol,
                            "{isa:?} r={r} A {ta:?} B {tb:?} linear {k}: {d} > {tol}"
                        );
                    }
                }
            }
        }
    }
}
