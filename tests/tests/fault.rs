//! Fault injection for adapters on their way to a device, beyond the single instances in
//! `lora.rs` (one chunking of one stream, bit flips at every 7th byte, one duplicated and one
//! reordered chunk): exhaustively, for raw files and framed streams, power cuts, every single
//! bit flip, bursts, every duplicated, dropped and swapped chunk, headers that lie about sizes,
//! and adapters made for another base.
//!
//! The device model: one adapter is active (bound, serving requests); a new one arrives into a
//! separate receive buffer (double buffering) and is activated only if `StreamLoader::finish`,
//! `Adapter::parse` and `Adapter::bind` all succeed. Every scenario checks that each faulty
//! input is refused before activation with a typed error, that the active adapter still gives
//! bit-identical logits afterwards, and that nothing is lost: the same receive buffer then
//! loads a good adapter whose logits equal those of a direct load.

use edgelora::format::gguf_write::{GgufWriter, OwnedValue as V};
use edgelora::lora::convert::{convert_peft, ConvertOptions};
use edgelora::lora::stream::{frame_header, Crc32, StreamLoader};
use edgelora::lora::{base_fingerprint, Adapter, AdapterSet, FINGERPRINT_KEY};
use edgelora::model::{Model, State, LINEAR_NAMES};
use edgelora::quant::GgmlType;
use edgelora::{Error, ErrorKind as K, Gguf};
use std::collections::BTreeMap;

mod common;
use common::{f16_bytes, fixture, rnd};

/// An F16 adapter for `base` on `targets` (layer, linear index), rank `r`.
fn make(
    base: &Gguf<'_>,
    targets: &[(usize, usize)],
    r: usize,
    seed: u64,
    fingerprint: bool,
) -> Vec<u8> {
    let m: Model<4> = Model::from_gguf(base).expect("base model");
    let mut w = GgufWriter::new();
    w.set("general.architecture", V::Str("llama".into()))
        .set("general.type", V::Str("adapter".into()))
        .set("adapter.type", V::Str("lora".into()))
        .set("adapter.lora.alpha", V::F32(2.0 * r as f32));
    if fingerprint {
        w.set(FINGERPRINT_KEY, V::U64(base_fingerprint(base)));
    }
    for (i, &(l, k)) in targets.iter().enumerate() {
        let t = m.layer(l).expect("layer").linear(k);
        let name = format!("blk.{l}.{}.weight", LINEAR_NAMES[k]);
        let s = seed * 100 + i as u64;
        w.add_tensor(
            &format!("{name}.lora_a"),
            GgmlType::F16,
            &[t.cols() as u64, r as u64],
            f16_bytes(&rnd(s, r * t.cols(), 0.5)),
        )
        .expect("lora_a");
        w.add_tensor(
            &format!("{name}.lora_b"),
            GgmlType::F16,
            &[r as u64, t.rows() as u64],
            f16_bytes(&rnd(s + 50, t.rows() * r, 0.5)),
        )
        .expect("lora_b");
    }
    w.to_bytes()
}

fn all_linears(n_layers: usize) -> Vec<(usize, usize)> {
    (0..n_layers)
        .flat_map(|l| (0..LINEAR_NAMES.len()).map(move |k| (l, k)))
        .collect()
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut v = frame_header(payload).to_vec();
    v.extend_from_slice(payload);
    v
}

const TOKENS: [u32; 6] = [1, 17, 42, 99, 3, 250];

fn logits(m: &Model<'_, 4>, set: &AdapterSet<'_, '_, '_>) -> Vec<u32> {
    let cfg = *m.config();
    let mut buf = vec![0f32; State::len_for(&cfg, TOKENS.len())];
    let mut st = State::new(&cfg, TOKENS.len(), &mut buf).expect("state");
    let mut bits = vec![];
    for (p, &t) in TOKENS.iter().enumerate() {
        bits.extend(
            m.forward_with(t, p, &mut st, set)
                .expect("forward")
                .iter()
                .map(|v| v.to_bits()),
        );
    }
    bits
}

/// What happened to one delivery attempt.
#[derive(Debug, PartialEq)]
enum Fate {
    /// Refused by the stream loader (push or finish), with this kind.
    Stream(K),
    /// Loaded but refused by `Adapter::parse` (raw delivery only).
    Parse(K),
    /// Parsed but refused by `bind`.
    Bind(K),
    /// Activated.
    Active,
}

/// Everything a device has: the base, the active adapter, and a staging area.
struct Device<'w> {
    base: &'w Gguf<'w>,
    model: &'w Model<'w, 4>,
}

impl<'w> Device<'w> {
    /// Deliver `stream` in `chunk`-byte pieces into `rx`; on success bind and report activation.
    fn deliver_stream(
        &self,
        rx: &mut [u8],
        stream: &[u8],
        chunk: usize,
    ) -> (Fate, Option<Vec<u32>>) {
        let mut l = StreamLoader::new(rx);
        for c in stream.chunks(chunk.max(1)) {
            if let Err(e) = l.push(c) {
                return (Fate::Stream(e.kind()), None);
            }
        }
        match l.finish() {
            Err(e) => (Fate::Stream(e.kind()), None),
            Ok(p) => self.activate(p, true),
        }
    }

    /// Parse and bind `bytes`; on success return the logits with it active.
    fn activate(&self, bytes: &[u8], parsed_by_loader: bool) -> (Fate, Option<Vec<u32>>) {
        let a = match Adapter::parse(bytes) {
            Ok(a) => a,
            Err(e) => {
                assert!(
                    !parsed_by_loader,
                    "finish() handed out bytes that do not parse: {e}"
                );
                return (Fate::Parse(e.kind()), None);
            }
        };
        let mut slots = vec![None; Adapter::slots_len(self.model.config())];
        match a.bind(self.base, self.model, &mut slots) {
            Err(e) => {
                assert!(slots.iter().all(Option::is_none), "failed bind wrote slots");
                (Fate::Bind(e.kind()), None)
            }
            Ok(b) => (
                Fate::Active,
                Some(logits(self.model, &AdapterSet::single(&b, 1.0))),
            ),
        }
    }
}

/// Tally of fates, printed by each scenario.
fn tally(fates: &[Fate]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for f in fates {
        *m.entry(format!("{f:?}")).or_default() += 1;
    }
    m
}

/// Runs `scenario` with an adapter active, then checks the active adapter's logits and that the
/// staging buffer still loads a good adapter.
fn with_active_adapter(scenario: impl FnOnce(&Device<'_>, &mut Vec<u8>)) {
    let base_bytes = fixture("tiny/tiny-q8_0.gguf");
    let base = Gguf::parse(&base_bytes).expect("base");
    let model: Model<4> = Model::from_gguf(&base).expect("model");
    let active_bytes = make(&base, &all_linears(model.config().n_layers), 4, 1, true);
    let active_crc = Crc32::of(&active_bytes);
    let active = Adapter::parse(&active_bytes).expect("active adapter");
    let mut active_slots = vec![None; Adapter::slots_len(model.config())];
    let bound = active
        .bind(&base, &model, &mut active_slots)
        .expect("active binds");
    let before = logits(&model, &AdapterSet::single(&bound, 1.0));
    assert_ne!(
        before,
        logits(&model, &AdapterSet::EMPTY),
        "the active adapter changes the logits"
    );

    let dev = Device {
        base: &base,
        model: &model,
    };
    let mut rx = vec![0u8; 1 << 20];
    scenario(&dev, &mut rx);

    // The active adapter is untouched: same bytes, same logits, bit for bit.
    assert_eq!(Crc32::of(&active_bytes), active_crc);
    assert_eq!(
        logits(&model, &AdapterSet::single(&bound, 1.0)),
        before,
        "active adapter's logits changed"
    );
    // Nothing lost: the receive buffer takes a good adapter, which behaves as a direct load.
    let good = make(&base, &[(0, 0), (1, 6)], 2, 7, true);
    let (fate, got) = dev.deliver_stream(&mut rx, &framed(&good), 61);
    assert_eq!(fate, Fate::Active);
    assert_eq!(
        got,
        dev.activate(&good, false).1,
        "stream-loaded adapter differs from a direct load"
    );
}

#[test]
fn power_cut_at_every_byte_of_a_raw_adapter() {
    with_active_adapter(|dev, _rx| {
        let full = make(dev.base, &all_linears(2), 4, 2, true);
        let g = Gguf::parse(&full).expect("full");
        // End of the last tensor's bytes: a cut after it only loses alignment padding.
        let content_end = g
            .tensors()
            .map(|t| t.file_offset as usize + t.data.len())
            .max()
            .expect("tensors");
        let mut fates = vec![];
        for cut in 0..full.len() {
            let (fate, _) = dev.activate(&full[..cut], false);
            if cut < content_end {
                assert!(
                    matches!(fate, Fate::Parse(K::Truncated | K::OutOfBounds)),
                    "cut at {cut} of {}: {fate:?}",
                    full.len()
                );
            } else {
                assert_eq!(fate, Fate::Active, "cut in the trailing padding at {cut}");
            }
            fates.push(fate);
        }
        println!(
            "raw power cuts over {} bytes: {:?}",
            full.len(),
            tally(&fates)
        );
    });
}

#[test]
fn every_single_bit_flip_of_a_framed_adapter_is_refused() {
    with_active_adapter(|dev, rx| {
        let payload = make(dev.base, &[(0, 0), (1, 6)], 2, 3, true);
        let stream = framed(&payload);
        let mut fates = vec![];
        for i in 0..stream.len() {
            for bit in 0..8 {
                let mut s = stream.clone();
                s[i] ^= 1 << bit;
                let (fate, _) = dev.deliver_stream(rx, &s, 97);
                assert!(
                    matches!(fate, Fate::Stream(_)),
                    "flip of byte {i} bit {bit}: {fate:?}"
                );
                fates.push(fate);
            }
        }
        // Bursts of 2..=32 flipped bits (CRC-32 detects every burst up to 32 bits) and random
        // multi-byte corruption anywhere.
        let r = rnd(99, 6000, 1.0);
        for j in 0..2000 {
            let mut s = stream.clone();
            let at = ((r[3 * j].abs() * (stream.len() - 4) as f32) as usize).min(stream.len() - 4);
            let len = 2 + (r[3 * j + 1].abs() * 30.0) as usize;
            let pattern = (r[3 * j + 2].to_bits() | 1 | 1 << (len - 1)) & (u32::MAX >> (32 - len));
            let word = u32::from_le_bytes(s[at..at + 4].try_into().expect("4")) ^ pattern;
            s[at..at + 4].copy_from_slice(&word.to_le_bytes());
            let (fate, _) = dev.deliver_stream(rx, &s, 1 + j % 200);
            assert!(
                matches!(fate, Fate::Stream(_)),
                "burst {j} at {at}: {fate:?}"
            );
            fates.push(fate);
        }
        println!(
            "framed flips: {} single-bit + 2000 bursts over {} bytes: {:?}",
            8 * stream.len(),
            stream.len(),
            tally(&fates)
        );
    });
}

#[test]
fn raw_bit_flips_never_change_an_adapters_structure_silently() {
    // Without a frame nothing catches a flipped weight or alpha (that is what the CRC is for),
    // but a flip in the header must never silently change which tensors are where.
    with_active_adapter(|dev, _rx| {
        let raw = make(dev.base, &[(0, 0), (1, 6)], 2, 4, true);
        let g = Gguf::parse(&raw).expect("raw");
        let shape = |g: &Gguf<'_>| -> Vec<(String, GgmlType, Vec<u64>, u64)> {
            g.tensors()
                .map(|t| (t.name.to_string(), t.ty, t.dims().to_vec(), t.file_offset))
                .collect()
        };
        let want = shape(&g);
        let header_end = g.data_offset() as usize;
        let mut fates = vec![];
        let mut silent_value_changes = 0;
        for i in (0..header_end).chain((header_end..raw.len()).step_by(37)) {
            for bit in 0..8 {
                let mut b = raw.clone();
                b[i] ^= 1 << bit;
                let (fate, _) = dev.activate(&b, false);
                if fate == Fate::Active {
                    let got = Gguf::parse(&b).expect("activated, so it parses");
                    assert_eq!(
                        shape(&got),
                        want,
                        "flip of byte {i} bit {bit} changed the structure but was accepted"
                    );
                    silent_value_changes += 1;
                }
                fates.push(fate);
            }
        }
        println!(
            "raw flips: {} ({} header bytes all bits, data sampled): {:?}; accepted ones changed only values ({silent_value_changes})",
            fates.len(),
            header_end,
            tally(&fates)
        );
    });
}

#[test]
fn duplicated_dropped_and_swapped_chunks_are_refused() {
    with_active_adapter(|dev, rx| {
        let payload = make(dev.base, &all_linears(2), 2, 5, true);
        let stream = framed(&payload);
        let mut fates = vec![];
        for size in [16, 100, 512, 4096] {
            let chunks: Vec<&[u8]> = stream.chunks(size).collect();
            let join = |order: &[usize]| -> Vec<u8> {
                order
                    .iter()
                    .flat_map(|&i| chunks[i].iter().copied())
                    .collect()
            };
            let n = chunks.len();
            for i in 0..n {
                let mut dup: Vec<usize> = (0..n).collect();
                dup.insert(i, i);
                let mut drop: Vec<usize> = (0..n).collect();
                drop.remove(i);
                let mut cases = vec![dup, drop];
                if i + 1 < n && chunks[i] != chunks[i + 1] {
                    let mut swap: Vec<usize> = (0..n).collect();
                    swap.swap(i, i + 1);
                    cases.push(swap);
                }
                for order in cases {
                    let (fate, _) = dev.deliver_stream(rx, &join(&order), size);
                    assert!(
                        matches!(fate, Fate::Stream(_)),
                        "chunk {i} of {size}-byte chunks, order {order:?}: {fate:?}"
                    );
                    fates.push(fate);
                }
            }
        }
        println!(
            "chunk faults: {} deliveries refused: {:?}",
            fates.len(),
            tally(&fates)
        );
    });
}

/// Overwrite the u64 field at `at`.
fn set_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Replace the u64 field at `at` by `f(old)`.
fn map_u64(b: &mut [u8], at: usize, f: impl Fn(u64) -> u64) {
    let old = u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    set_u64(b, at, f(old));
}

/// Byte offsets of the fields of every tensor info: (name length, first dim, type, offset).
fn tensor_fields(b: &[u8], g: &Gguf<'_>) -> Vec<(usize, usize, usize, usize)> {
    let mut out = vec![];
    // The infos follow the metadata; find each by its name.
    for t in g.tensors() {
        let mut needle = (t.name.len() as u64).to_le_bytes().to_vec();
        needle.extend(t.name.as_bytes());
        let at = b
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("info");
        let dims = at + needle.len() + 4;
        let ty = dims + 8 * t.n_dims;
        out.push((at, dims, ty, ty + 4));
    }
    out
}

#[test]
fn headers_that_lie_about_sizes_are_refused() {
    with_active_adapter(|dev, rx| {
        let good = make(dev.base, &all_linears(2), 4, 6, true);
        let g = Gguf::parse(&good).expect("good");
        let (n_t, n_kv) = (g.tensor_count(), g.kv_count());
        let f = tensor_fields(&good, &g);
        let (last_name, last_dim, _, last_off) = *f.last().expect("tensors");
        let lie = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            edit(&mut b);
            b
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("tensor count + 1", lie(&|b| set_u64(b, 8, n_t + 1))),
            ("tensor count - 1", lie(&|b| set_u64(b, 8, n_t - 1))),
            (
                "tensor count - 2 (drops the last pair)",
                lie(&|b| set_u64(b, 8, n_t - 2)),
            ),
            ("tensor count 0", lie(&|b| set_u64(b, 8, 0))),
            ("metadata count + 1", lie(&|b| set_u64(b, 16, n_kv + 1))),
            ("metadata count - 1", lie(&|b| set_u64(b, 16, n_kv - 1))),
            (
                "last tensor name length + 1",
                lie(&|b| map_u64(b, last_name, |v| v + 1)),
            ),
            (
                "last tensor name length 2^40",
                lie(&|b| set_u64(b, last_name, 1 << 40)),
            ),
            (
                "last tensor row length x 2",
                lie(&|b| map_u64(b, last_dim, |v| 2 * v)),
            ),
            (
                "last tensor offset + 32",
                lie(&|b| map_u64(b, last_off, |v| v + 32)),
            ),
            (
                "first tensor rank 4 -> 8",
                lie(&|b| set_u64(b, f[0].1 + 8, 8)),
            ),
            (
                "file cut by one alignment block",
                good[..good.len() - 32].to_vec(),
            ),
            (
                "64 bytes of garbage appended",
                lie(&|b| b.extend([0xa5; 64])),
            ),
        ];
        let mut report = vec![];
        for (what, bytes) in &cases {
            // As a raw file and as an honestly framed stream (the frame's CRC is right: the
            // sender built the lie), in two chunkings.
            let (raw, _) = dev.activate(bytes, false);
            let (s1, _) = dev.deliver_stream(rx, &framed(bytes), 1);
            let (s2, _) = dev.deliver_stream(rx, &framed(bytes), 1000);
            for fate in [&raw, &s1, &s2] {
                assert_ne!(
                    *fate,
                    Fate::Active,
                    "{what}: accepted ({raw:?}, {s1:?}, {s2:?})"
                );
            }
            report.push(format!("{what}: raw {raw:?}, stream {s1:?}"));
        }
        // The frame itself lying about the payload length (header CRC recomputed).
        for (what, declared) in [
            ("frame length + 1", good.len() as u64 + 1),
            ("frame length - 1", good.len() as u64 - 1),
            ("frame length 0", 0),
            ("frame length 2^40", 1 << 40),
        ] {
            let mut s = framed(&good);
            s[8..16].copy_from_slice(&declared.to_le_bytes());
            let c = Crc32::of(&s[..20]);
            s[20..24].copy_from_slice(&c.to_le_bytes());
            let (fate, _) = dev.deliver_stream(rx, &s, 333);
            assert!(matches!(fate, Fate::Stream(_)), "{what}: {fate:?}");
            report.push(format!("{what}: {fate:?}"));
        }
        println!("lying headers, all refused:\n  {}", report.join("\n  "));
    });
}

#[test]
fn adapters_for_another_base_are_refused_before_activation() {
    with_active_adapter(|dev, rx| {
        let mut report = vec![];
        let mut check = |what: &str, bytes: &[u8], want: &dyn Fn(&Fate) -> bool| {
            let (fate, _) = dev.deliver_stream(rx, &framed(bytes), 500);
            assert!(want(&fate), "{what}: {fate:?}");
            report.push(format!("{what}: {fate:?}"));
        };
        // A real SmolLM2-135M adapter (llama.cpp's converter) on the tiny base: wrong shapes.
        let smol = fixture("lora/smollm2/rslora.llamacpp.gguf");
        check("SmolLM2 adapter on the tiny base", &smol, &|f| {
            matches!(f, Fate::Bind(K::ShapeMismatch | K::MissingTensor))
        });
        // The same PEFT adapter converted for the Q4_1 base, delivered to the Q8_0 base (a
        // re-quantised copy: same tensors and shapes, other bytes): plain LoRA binds (the
        // shape fingerprint matches), DoRA, whose row norms fit the exact base only, does not.
        let q41 = fixture("tiny/tiny-q4_1.gguf");
        let q41 = Gguf::parse(&q41).expect("q4_1 base");
        let peft = |d: &str, base: &Gguf<'_>| -> Vec<u8> {
            convert_peft(
                &fixture(&format!("lora/tiny/{d}/adapter_config.json")),
                &fixture(&format!("lora/tiny/{d}/adapter_model.safetensors")),
                base,
                &ConvertOptions::default(),
            )
            .map_err(|e: Error| e.to_string())
            .expect("convert")
            .0
        };
        check(
            "PEFT qv converted for the Q4_1 base",
            &peft("qv", &q41),
            &|f| *f == Fate::Active,
        );
        check(
            "PEFT DoRA converted for the Q4_1 base",
            &peft("dora", &q41),
            &|f| *f == Fate::Bind(K::BadValue),
        );
        check(
            "PEFT qv converted for this base",
            &peft("qv", dev.base),
            &|f| *f == Fate::Active,
        );
        // A hand-made adapter for a 3-layer model of the same width.
        let mut deep = make(dev.base, &[(1, 0)], 2, 8, false);
        for at in 0..deep.len() - 12 {
            if &deep[at..at + 12] == b"blk.1.attn_q" {
                deep[at + 4] = b'2';
            }
        }
        check("adapter for a deeper model", &deep, &|f| {
            *f == Fate::Bind(K::MissingTensor)
        });
        // Another architecture's adapter.
        let mut w = GgufWriter::new();
        w.set("general.architecture", V::Str("gemma".into()))
            .set("general.type", V::Str("adapter".into()))
            .set("adapter.type", V::Str("lora".into()))
            .set("adapter.lora.alpha", V::F32(1.0));
        w.add_tensor(
            "blk.0.attn_q.weight.lora_a",
            GgmlType::F32,
            &[64, 1],
            vec![0; 256],
        )
        .expect("a");
        w.add_tensor(
            "blk.0.attn_q.weight.lora_b",
            GgmlType::F32,
            &[1, 64],
            vec![0; 256],
        )
        .expect("b");
        check("gemma adapter", &w.to_bytes(), &|f| {
            *f == Fate::Bind(K::UnsupportedArch)
        });
        println!("other bases:\n  {}", report.join("\n  "));
    });
}
