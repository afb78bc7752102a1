//! The regression corpus: committed inputs under `tests/fuzz-regressions/`, replayed on every
//! `cargo test` (and under Miri by `scripts/miri.sh`).
//!
//! Every file is named `{entry}.{ErrorKind}.{what}.bin`: fed to `{entry}` it must fail with
//! exactly that [`ErrorKind`] (never a panic, never another kind). `{entry}.Ok.{what}.bin`
//! must be accepted. Inputs that crashed a fuzz target before the fix landed are named
//! `{entry}.{Kind}.crash-{target}-{what}.bin`. Entry points (see `run`):
//!
//! | entry | what runs |
//! |---|---|
//! | `gguf` | `Gguf::parse`, then every key and tensor is read back |
//! | `model` | `Gguf::parse` (must succeed), `Model::<4>::from_gguf`, one token |
//! | `tokenizer` | `Gguf::parse` (must succeed), `Tokenizer::new_owned`, encode + decode |
//! | `adapter` | `Adapter::parse` |
//! | `bind` | `Adapter::parse` (must succeed), `bind` to `tiny-q8_0.gguf`, one token |
//! | `stream` | `StreamLoader` with a 64 KiB buffer, 7-byte chunks, `finish` |
//! | `peft` | the `peft` fuzz target's recipe: options byte, u16 config length, `adapter_config.json`, `adapter_model.safetensors`; `convert_peft` against `tiny-q8_0.gguf` |
//!
//! The hand-made part of the corpus is written by `regenerate_malformed_corpus` (ignored;
//! run it with `--ignored` after changing a builder below). The committed bytes, not the
//! builders, are what the test checks, so a change in the writer cannot silently change an
//! input.

use edgelora::format::gguf::{MAX_ARRAY_LEN, MAX_KV, MAX_STR_LEN, MAX_TENSORS};
use edgelora::format::gguf_write::{GgufWriter, OwnedValue as V};
use edgelora::lora::convert::{convert_peft, ConvertOptions};
use edgelora::lora::stream::{frame_header, Crc32, StreamLoader};
use edgelora::lora::{Adapter, AdapterSet, FINGERPRINT_KEY};
use edgelora::model::{Model, State};
use edgelora::quant::GgmlType as T;
use edgelora::tokenizer::Tokenizer;
use edgelora::{Error, Gguf};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-regressions")
}

fn fixture(rel: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

struct Tiny {
    gguf: Gguf<'static>,
    model: Model<'static, 4>,
}

fn tiny() -> &'static Tiny {
    static T: OnceLock<Tiny> = OnceLock::new();
    T.get_or_init(|| {
        let bytes: &'static [u8] = Box::leak(fixture("tiny/tiny-q8_0.gguf").into_boxed_slice());
        let gguf = Gguf::parse(bytes).expect("tiny fixture");
        let model = Model::from_gguf(&gguf).expect("tiny model");
        Tiny { gguf, model }
    })
}

fn one_token<const L: usize>(m: &Model<'_, L>, set: &AdapterSet<'_, '_, '_>) -> Result<(), Error> {
    let cfg = *m.config();
    let mut buf = vec![0f32; State::len_for(&cfg, 1)];
    let mut st = State::new(&cfg, 1, &mut buf)?;
    m.forward_with(0, 0, &mut st, set)?;
    Ok(())
}

/// Run one entry point on `bytes`.
fn run(entry: &str, bytes: &[u8]) -> Result<(), Error> {
    match entry {
        "gguf" => {
            let g = Gguf::parse(bytes)?;
            for (k, v) in g.metadata() {
                assert!(g.get(k).is_some());
                if let Some(a) = v.as_array() {
                    assert_eq!(a.iter().count(), a.len());
                }
            }
            assert_eq!(g.tensors().count() as u64, g.tensor_count());
            Ok(())
        }
        "model" => {
            let g = Gguf::parse(bytes).expect("a `model` input is a valid GGUF");
            let m = Model::<4>::from_gguf(&g)?;
            one_token(&m, &AdapterSet::EMPTY)
        }
        "tokenizer" => {
            let g = Gguf::parse(bytes).expect("a `tokenizer` input is a valid GGUF");
            let t = Tokenizer::new_owned(&g)?;
            let ids = t.encode_vec("hello world", false)?;
            t.decode_to_string(&ids)?;
            Ok(())
        }
        "adapter" => Adapter::parse(bytes).map(|_| ()),
        "bind" => {
            let a = Adapter::parse(bytes).expect("a `bind` input parses as an adapter");
            let t = tiny();
            let mut slots = vec![None; Adapter::slots_len(t.model.config())];
            let b = a.bind(&t.gguf, &t.model, &mut slots)?;
            one_token(&t.model, &AdapterSet::single(&b, 1.0))
        }
        "stream" => {
            let mut buf = vec![0u8; 64 << 10];
            let mut l = StreamLoader::new(&mut buf);
            for c in bytes.chunks(7) {
                l.push(c)?;
            }
            l.finish().map(|_| ())
        }
        "peft" => {
            let (opt, rest) = bytes.split_first().unwrap_or((&0, &[]));
            let n = rest
                .get(..2)
                .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize);
            let rest = rest.get(2..).unwrap_or(&[]);
            let (cfg, st) = rest.split_at(n.min(rest.len()));
            let dtype = [T::F32, T::F16, T::Q8_0, T::Q4_0][(opt & 3) as usize];
            let t = tiny();
            let (out, _) = convert_peft(cfg, st, &t.gguf, &ConvertOptions { dtype, task: None })?;
            let a = Adapter::parse(&out).expect("converter output parses");
            let mut slots = vec![None; Adapter::slots_len(t.model.config())];
            a.bind(&t.gguf, &t.model, &mut slots)
                .expect("converter output binds");
            Ok(())
        }
        other => panic!("unknown entry point {other:?}"),
    }
}

#[test]
fn corpus_gives_specific_errors() {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .expect("tests/fuzz-regressions exists")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .into_string()
                .expect("UTF-8 name")
        })
        .filter(|n| n.ends_with(".bin"))
        .collect();
    names.sort();
    let mut per_entry = std::collections::BTreeMap::<String, usize>::new();
    let mut kinds = std::collections::BTreeSet::new();
    let mut bad = vec![];
    for name in &names {
        let mut parts = name.splitn(3, '.');
        let (entry, want) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let bytes = std::fs::read(dir().join(name)).expect("read corpus file");
        let got = match run(entry, &bytes) {
            Ok(()) => "Ok".to_string(),
            Err(e) => format!("{:?}", e.kind()),
        };
        if std::env::var_os("EDGELORA_SHOW_ERRORS").is_some() {
            let msg = run(entry, &bytes)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            println!("{name}: {msg}");
        }
        if got != want {
            let detail = run(entry, &bytes)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            bad.push(format!("{name}: got {got} ({detail})"));
        }
        *per_entry.entry(entry.to_string()).or_default() += 1;
        kinds.insert(want.to_string());
    }
    println!(
        "regression corpus: {} inputs, {} distinct outcomes; per entry point {per_entry:?}",
        names.len(),
        kinds.len()
    );
    assert!(
        bad.is_empty(),
        "{} of {} inputs gave the wrong outcome:\n{}",
        bad.len(),
        names.len(),
        bad.join("\n")
    );
    assert!(names.len() >= 100, "the corpus lost files: {}", names.len());
}

// ---------------------------------------------------------------------------------------------
// Builders for the hand-made malformed inputs.
// ---------------------------------------------------------------------------------------------

/// Raw GGUF pieces, for what `GgufWriter` refuses to write.
fn gstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s);
}

fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend(version.to_le_bytes());
    v.extend(n_tensors.to_le_bytes());
    v.extend(n_kv.to_le_bytes());
    v
}

fn kv(out: &mut Vec<u8>, key: &[u8], ty: u32, payload: &[u8]) {
    gstr(out, key);
    out.extend(ty.to_le_bytes());
    out.extend(payload);
}

fn tinfo(out: &mut Vec<u8>, name: &[u8], dims: &[u64], ty: u32, offset: u64) {
    gstr(out, name);
    out.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        out.extend(d.to_le_bytes());
    }
    out.extend(ty.to_le_bytes());
    out.extend(offset.to_le_bytes());
}

fn pad32(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(32) {
        v.push(0);
    }
}

/// A file of `tensors` (name, dims, type id, offset) with `data_len` zero bytes of data.
fn raw_file(
    kvs: &[(&[u8], u32, Vec<u8>)],
    tensors: &[(&[u8], &[u64], u32, u64)],
    data_len: usize,
) -> Vec<u8> {
    let mut v = header(3, tensors.len() as u64, kvs.len() as u64);
    for (k, t, p) in kvs {
        kv(&mut v, k, *t, p);
    }
    for (n, d, t, o) in tensors {
        tinfo(&mut v, n, d, *t, *o);
    }
    pad32(&mut v);
    v.resize(v.len() + data_len, 0);
    v
}

fn u32p(x: u32) -> Vec<u8> {
    x.to_le_bytes().to_vec()
}

fn strp(s: &[u8]) -> Vec<u8> {
    let mut v = vec![];
    gstr(&mut v, s);
    v
}

/// Replace the (unique) `marker` in `bytes` by `with` (same length).
fn patch(mut bytes: Vec<u8>, marker: &[u8], with: &[u8]) -> Vec<u8> {
    assert_eq!(marker.len(), with.len());
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("marker present");
    bytes[at..at + marker.len()].copy_from_slice(with);
    bytes
}

fn zeros(n: usize) -> Vec<u8> {
    vec![0; n]
}

/// Deterministic small values as F16 bytes.
fn f16s(n: usize, seed: u32) -> Vec<u8> {
    let mut s = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .flat_map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            half::f16::from_f32((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5).to_le_bytes()
        })
        .collect()
}

fn f32s(vals: &[f32]) -> Vec<u8> {
    vals.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Adapter metadata for the tiny llama.
fn adapter_meta() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.set("general.architecture", V::Str("llama".into()))
        .set("general.type", V::Str("adapter".into()))
        .set("adapter.type", V::Str("lora".into()))
        .set("adapter.lora.alpha", V::F32(4.0));
    w
}

/// An F16 LoRA pair of rank `r` for `target` with `input` inputs and `out` outputs.
fn pair(w: &mut GgufWriter, target: &str, r: u64, input: u64, out: u64) {
    w.add_tensor(
        &format!("{target}.lora_a"),
        T::F16,
        &[input, r],
        f16s((input * r) as usize, 1),
    )
    .expect("lora_a");
    w.add_tensor(
        &format!("{target}.lora_b"),
        T::F16,
        &[r, out],
        f16s((r * out) as usize, 2),
    )
    .expect("lora_b");
}

/// A valid rank-2 adapter for the tiny model's `blk.0.attn_q` and `blk.1.ffn_down`.
fn good_adapter() -> Vec<u8> {
    let mut w = adapter_meta();
    pair(&mut w, "blk.0.attn_q.weight", 2, 64, 64);
    pair(&mut w, "blk.1.ffn_down.weight", 2, 160, 64);
    w.to_bytes()
}

/// Metadata of a micro llama (dim 32, 2 heads, 1 layer, ffn 32, ctx 16) without tensors.
fn micro_meta(skip: &str) -> GgufWriter {
    let mut w = GgufWriter::new();
    for (k, v) in [
        ("general.architecture", V::Str("llama".into())),
        ("llama.block_count", V::U32(1)),
        ("llama.embedding_length", V::U32(32)),
        ("llama.attention.head_count", V::U32(2)),
        ("llama.attention.head_count_kv", V::U32(2)),
        ("llama.feed_forward_length", V::U32(32)),
        ("llama.context_length", V::U32(16)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
    ] {
        if k != skip {
            w.set(k, v);
        }
    }
    w
}

/// A Q8_0 embedding of 8 tokens x 32.
fn micro_embd(w: &mut GgufWriter) {
    w.add_tensor("token_embd.weight", T::Q8_0, &[32, 8], zeros(8 * 34))
        .expect("embd");
}

fn vocab_meta(model: &str, tokens: &[&str]) -> GgufWriter {
    let mut w = GgufWriter::new();
    w.set("tokenizer.ggml.model", V::Str(model.into()));
    w.set(
        "tokenizer.ggml.tokens",
        V::Array(tokens.iter().map(|t| V::Str((*t).into())).collect()),
    );
    w
}

fn strs(v: &[&str]) -> V {
    V::Array(v.iter().map(|t| V::Str((*t).into())).collect())
}

fn i32s(v: &[i32]) -> V {
    V::Array(v.iter().map(|&t| V::I32(t)).collect())
}

/// A framed stream with the header fields patched and its header CRC recomputed.
fn frame_with(payload: &[u8], version: u32, declared: u64) -> Vec<u8> {
    let mut h = frame_header(payload);
    h[4..8].copy_from_slice(&version.to_le_bytes());
    h[8..16].copy_from_slice(&declared.to_le_bytes());
    let c = Crc32::of(&h[..20]);
    h[20..24].copy_from_slice(&c.to_le_bytes());
    let mut v = h.to_vec();
    v.extend_from_slice(payload);
    v
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut v = frame_header(payload).to_vec();
    v.extend_from_slice(payload);
    v
}

/// A safetensors file from `(name, dtype, shape, [start, end])` and `data_len` data bytes.
fn safetensors(entries: &[(&str, &str, &[u64], [u64; 2])], data_len: usize) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    for (name, dt, shape, offs) in entries {
        m.insert(
            (*name).to_string(),
            serde_json::json!({ "dtype": dt, "shape": shape, "data_offsets": offs }),
        );
    }
    let hdr = serde_json::to_vec(&serde_json::Value::Object(m)).expect("json");
    let mut v = (hdr.len() as u64).to_le_bytes().to_vec();
    v.extend(hdr);
    v.extend(f16s(data_len / 2, 3));
    v
}

fn peft_recipe(opt: u8, config: &[u8], st: &[u8]) -> Vec<u8> {
    let mut v = vec![opt];
    v.extend((config.len() as u16).to_le_bytes());
    v.extend(config);
    v.extend(st);
    v
}

/// The qv PEFT fixture's config with `edit` applied.
fn qv_config(edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> Vec<u8> {
    let mut c: serde_json::Value =
        serde_json::from_slice(&fixture("lora/tiny/qv/adapter_config.json")).expect("config");
    edit(c.as_object_mut().expect("object"));
    serde_json::to_vec(&c).expect("json")
}

const QPROJ: &str = "base_model.model.model.layers.1.self_attn.q_proj";

/// Every hand-made malformed input: (file name, bytes).
fn malformed() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = vec![];
    let mut add = |name: &str, bytes: Vec<u8>| out.push((format!("{name}.bin"), bytes));

    // ---- gguf -----------------------------------------------------------------------------
    let good = good_adapter();
    add("gguf.Truncated.empty", vec![]);
    add("gguf.Truncated.cut-at-300-bytes", good[..300].to_vec());
    add("gguf.Truncated.cut-in-magic", b"GG".to_vec());
    add("gguf.BadMagic.ggml", patch(good.clone(), b"GGUF", b"GGML"));
    add("gguf.UnsupportedVersion.v1", header(1, 0, 0));
    add("gguf.UnsupportedVersion.v4", header(4, 0, 0));
    add("gguf.TooMany.tensor-count", header(3, MAX_TENSORS + 1, 0));
    add("gguf.TooMany.kv-count", header(3, 0, MAX_KV + 1));
    let mut v = header(3, 0, 1);
    v.extend(u64::MAX.to_le_bytes());
    add("gguf.StringTooLong.key-length", v);
    add(
        "gguf.InvalidUtf8.key",
        raw_file(&[(b"general.\xff\xfe", 4, u32p(1))], &[], 0),
    );
    add(
        "gguf.BadValueType.value-type-13",
        raw_file(&[(b"k", 13, u32p(1))], &[], 0),
    );
    add(
        "gguf.BadValue.bool-2",
        raw_file(&[(b"k", 7, vec![2])], &[], 0),
    );
    add(
        "gguf.StringTooLong.string-value",
        raw_file(
            &[(b"k", 8, (MAX_STR_LEN + 1).to_le_bytes().to_vec())],
            &[],
            0,
        ),
    );
    let mut arr = u32p(0);
    arr.extend((MAX_ARRAY_LEN + 1).to_le_bytes());
    add(
        "gguf.TooMany.array-length",
        raw_file(&[(b"k", 9, arr)], &[], 0),
    );
    let mut nested = vec![];
    for _ in 0..5 {
        nested.extend(u32p(9));
        nested.extend(1u64.to_le_bytes());
    }
    nested.extend(u32p(0));
    nested.extend(0u64.to_le_bytes());
    add(
        "gguf.NestingTooDeep.arrays-6-deep",
        raw_file(&[(b"k", 9, nested)], &[], 0),
    );
    let mut arr = u32p(99);
    arr.extend(1u64.to_le_bytes());
    add(
        "gguf.BadValueType.array-element-type",
        raw_file(&[(b"k", 9, arr)], &[], 0),
    );
    let mut v = header(3, 0, 1);
    let mut arr = u32p(4);
    arr.extend(100u64.to_le_bytes());
    arr.extend(zeros(40));
    kv(&mut v, b"k", 9, &arr);
    add("gguf.Truncated.array-data", v);
    add(
        "gguf.DuplicateKey.same-key-twice",
        raw_file(
            &[
                (b"a.b", 4, u32p(1)),
                (b"x", 4, u32p(1)),
                (b"a.b", 4, u32p(2)),
            ],
            &[],
            0,
        ),
    );
    add(
        "gguf.DuplicateTensor.same-name-twice",
        raw_file(&[], &[(b"t", &[8], 0, 0), (b"t", &[8], 0, 32)], 64),
    );
    add(
        "gguf.BadAlignment.alignment-3",
        raw_file(&[(b"general.alignment", 4, u32p(3))], &[], 0),
    );
    add(
        "gguf.BadAlignment.alignment-2^17",
        raw_file(&[(b"general.alignment", 4, u32p(1 << 17))], &[], 0),
    );
    add(
        "gguf.BadAlignment.alignment-0",
        raw_file(&[(b"general.alignment", 4, u32p(0))], &[], 0),
    );
    add(
        "gguf.WrongType.alignment-string",
        raw_file(&[(b"general.alignment", 8, strp(b"32"))], &[], 0),
    );
    add(
        "gguf.InvalidUtf8.tensor-name",
        raw_file(&[], &[(b"blk.\xc3", &[8], 0, 0)], 32),
    );
    add(
        "gguf.BadDims.n-dims-0",
        raw_file(&[], &[(b"t", &[], 0, 0)], 32),
    );
    add(
        "gguf.BadDims.n-dims-5",
        raw_file(&[], &[(b"t", &[1, 1, 1, 1, 1], 0, 0)], 32),
    );
    add(
        "gguf.BadDims.dim-0",
        raw_file(&[], &[(b"t", &[8, 0], 0, 0)], 32),
    );
    add(
        "gguf.BadDims.element-count-overflows",
        raw_file(&[], &[(b"t", &[1 << 32, 1 << 32], 0, 0)], 32),
    );
    add(
        "gguf.BadDims.q4_0-row-of-33",
        raw_file(&[], &[(b"t", &[33], 2, 0)], 32),
    );
    add(
        "gguf.UnknownTensorType.type-99",
        raw_file(&[], &[(b"t", &[8], 99, 0)], 32),
    );
    add(
        "gguf.Misaligned.offset-16",
        raw_file(&[], &[(b"t", &[4], 0, 16)], 64),
    );
    add(
        "gguf.OutOfBounds.data-past-end",
        raw_file(&[], &[(b"t", &[32], 0, 0)], 64),
    );
    add(
        "gguf.OutOfBounds.offset-near-u64-max",
        raw_file(&[], &[(b"t", &[4], 0, u64::MAX - 31)], 64),
    );
    add(
        "gguf.Overlap.second-starts-inside-first",
        raw_file(&[], &[(b"a", &[16], 0, 32), (b"b", &[16], 0, 64)], 128),
    );
    let mut trailing = good.clone();
    trailing.extend([0xa5; 64]);
    add("gguf.OutOfBounds.bytes-after-last-tensor", trailing);
    add(
        "gguf.Overlap.out-of-order",
        raw_file(&[], &[(b"a", &[8], 0, 32), (b"b", &[8], 0, 0)], 64),
    );

    // ---- model ----------------------------------------------------------------------------
    let mut w = micro_meta("");
    w.set("general.architecture", V::Str("gpt2".into()));
    add("model.UnsupportedArch.gpt2", w.to_bytes());
    add(
        "model.MissingKey.no-block-count",
        micro_meta("llama.block_count").to_bytes(),
    );
    add(
        "model.MissingKey.no-rms-epsilon",
        micro_meta("llama.attention.layer_norm_rms_epsilon").to_bytes(),
    );
    let mut w = micro_meta("");
    w.set("llama.block_count", V::Str("1".into()));
    add("model.WrongType.block-count-string", w.to_bytes());
    let mut w = micro_meta("");
    w.set("llama.block_count", V::I32(-1));
    add("model.BadValue.block-count-negative", w.to_bytes());
    let mut w = micro_meta("");
    w.set("llama.embedding_length", V::U32(0));
    add("model.BadValue.dim-0", w.to_bytes());
    let mut w = micro_meta("");
    w.set("llama.attention.head_count_kv", V::U32(3));
    add("model.BadValue.kv-heads-not-dividing", w.to_bytes());
    let mut w = micro_meta("");
    w.set("llama.attention.key_length", V::U32(15));
    add("model.BadValue.head-dim-odd", w.to_bytes());
    let mut w = micro_meta("");
    w.set("llama.rope.dimension_count", V::U32(64));
    add("model.BadValue.rope-dims-above-head-dim", w.to_bytes());
    let mut w = micro_meta("");
    w.set("llama.rope.scaling.type", V::Str("yarn".into()));
    add("model.BadValue.rope-scaling-yarn", w.to_bytes());
    let mut w = micro_meta("");
    w.set("llama.attention.layer_norm_rms_epsilon", V::F32(f32::NAN));
    add("model.BadValue.rms-epsilon-nan", w.to_bytes());
    add(
        "model.MissingTensor.no-token-embd",
        micro_meta("").to_bytes(),
    );
    let mut w = micro_meta("");
    w.set("llama.vocab_size", V::U32(9));
    micro_embd(&mut w);
    add("model.ShapeMismatch.vocab-size-vs-embd", w.to_bytes());
    let mut w = micro_meta("");
    w.set("llama.block_count", V::U32(5));
    micro_embd(&mut w);
    add("model.TooMany.layers-above-capacity", w.to_bytes());
    let mut w = micro_meta("");
    micro_embd(&mut w);
    add("model.MissingTensor.no-output-norm", w.to_bytes());
    let mut w = micro_meta("");
    micro_embd(&mut w);
    w.add_tensor("output_norm.weight", T::F32, &[16], zeros(64))
        .expect("norm");
    add("model.ShapeMismatch.output-norm-length", w.to_bytes());
    let mut w = micro_meta("");
    micro_embd(&mut w);
    w.add_tensor("output_norm.weight", T::F16, &[32], zeros(64))
        .expect("norm");
    add("model.UnsupportedTensorType.output-norm-f16", w.to_bytes());
    let mut w = micro_meta("");
    w.set("llama.embedding_length", V::U32(256));
    w.set("llama.feed_forward_length", V::U32(256));
    w.add_tensor("token_embd.weight", T::Q4_K, &[256, 8], zeros(8 * 144))
        .expect("embd");
    add("model.UnsupportedTensorType.embd-q4_k", w.to_bytes());
    let mut w = micro_meta("");
    micro_embd(&mut w);
    w.add_tensor("output_norm.weight", T::F32, &[32], zeros(128))
        .expect("norm");
    w.add_tensor("blk.0.attn_q.weight", T::Q8_0, &[32, 16], zeros(16 * 34))
        .expect("q");
    add("model.ShapeMismatch.attn-q-rows", w.to_bytes());

    // ---- tokenizer ------------------------------------------------------------------------
    let mut w = GgufWriter::new();
    w.set("tokenizer.ggml.tokens", strs(&["a"]));
    add("tokenizer.MissingKey.no-model", w.to_bytes());
    add(
        "tokenizer.BadValue.model-wordpiece",
        vocab_meta("bert", &["a"]).to_bytes(),
    );
    let mut w = GgufWriter::new();
    w.set("tokenizer.ggml.model", V::Str("llama".into()));
    add("tokenizer.MissingKey.no-tokens", w.to_bytes());
    let mut w = GgufWriter::new();
    w.set("tokenizer.ggml.model", V::Str("llama".into()));
    w.set(
        "tokenizer.ggml.tokens",
        V::Array(vec![V::U32(1), V::U32(2)]),
    );
    add("tokenizer.WrongType.tokens-uint32", w.to_bytes());
    let mut w = GgufWriter::new();
    w.set("tokenizer.ggml.model", V::Str("llama".into()));
    w.set("tokenizer.ggml.tokens", V::Array(vec![]));
    add("tokenizer.WrongType.tokens-empty-untyped", w.to_bytes());
    let mut arr = u32p(8);
    arr.extend(0u64.to_le_bytes());
    let empty = raw_file(
        &[
            (b"tokenizer.ggml.model", 8, strp(b"llama")),
            (b"tokenizer.ggml.tokens", 9, arr),
        ],
        &[],
        0,
    );
    add("tokenizer.BadValue.empty-vocabulary", empty);
    add(
        "tokenizer.InvalidUtf8.token-text",
        patch(
            vocab_meta("llama", &["<unk>", "@@", "b"]).to_bytes(),
            b"@@",
            b"\xff\xfe",
        ),
    );
    let mut w = vocab_meta("llama", &["<unk>", "a", "b"]);
    w.set("tokenizer.ggml.token_type", i32s(&[2, 1, 9]));
    add("tokenizer.BadValue.token-type-9", w.to_bytes());
    let mut w = vocab_meta("llama", &["<unk>", "a", "b"]);
    w.set("tokenizer.ggml.token_type", i32s(&[2, 1]));
    add("tokenizer.BadValue.token-type-length", w.to_bytes());
    let mut w = vocab_meta("llama", &["<unk>", "a", "b"]);
    w.set("tokenizer.ggml.token_type", strs(&["2", "1", "1"]));
    add("tokenizer.WrongType.token-type-strings", w.to_bytes());
    let mut w = vocab_meta("llama", &["<unk>", "a", "b"]);
    w.set(
        "tokenizer.ggml.scores",
        V::Array(vec![V::F32(0.0), V::F32(0.0)]),
    );
    add("tokenizer.BadValue.scores-length", w.to_bytes());
    let mut w = vocab_meta("llama", &["<unk>", "a", "b"]);
    w.set("tokenizer.ggml.scores", i32s(&[0, 0, 0]));
    add("tokenizer.WrongType.scores-int32", w.to_bytes());
    let mut w = vocab_meta("llama", &["<unk>", "<0xZZ>", "b"]);
    w.set("tokenizer.ggml.token_type", i32s(&[2, 6, 1]));
    add("tokenizer.BadValue.byte-token-spelling", w.to_bytes());
    let mut w = vocab_meta("llama", &["<unk>", "a", "b"]);
    w.set("tokenizer.ggml.bos_token_id", V::U32(3));
    add("tokenizer.BadValue.bos-id-out-of-range", w.to_bytes());
    let mut w = vocab_meta("llama", &["<unk>", "a", "b"]);
    w.set("tokenizer.ggml.add_bos_token", V::U32(1));
    add("tokenizer.WrongType.add-bos-uint32", w.to_bytes());
    add(
        "tokenizer.MissingKey.gpt2-without-merges",
        vocab_meta("gpt2", &["a", "b", "ab"]).to_bytes(),
    );
    let mut w = vocab_meta("gpt2", &["a", "b", "ab"]);
    w.set("tokenizer.ggml.merges", strs(&["ab"]));
    add("tokenizer.BadValue.merge-without-space", w.to_bytes());
    let mut w = vocab_meta("gpt2", &["a", "b", "ab"]);
    w.set("tokenizer.ggml.merges", strs(&["a c"]));
    add("tokenizer.BadValue.merge-unknown-token", w.to_bytes());
    let mut w = vocab_meta("gpt2", &["a", "b", "ab"]);
    w.set("tokenizer.ggml.merges", strs(&["a b"]));
    w.set("tokenizer.ggml.pre", V::Str("no-such-pre".into()));
    add("tokenizer.BadValue.unknown-pre-tokenizer", w.to_bytes());
    let mut w = vocab_meta("gpt2", &["a", "b", "ab"]);
    w.set("tokenizer.ggml.merges", strs(&["a b"]));
    add("tokenizer.Ok.minimal-gpt2", w.to_bytes());

    // ---- adapter --------------------------------------------------------------------------
    add("adapter.Ok.rank-2-two-targets", good.clone());
    let mut w = adapter_meta();
    w.set("general.type", V::Str("model".into()));
    pair(&mut w, "blk.0.attn_q.weight", 2, 64, 64);
    add("adapter.BadValue.general-type-model", w.to_bytes());
    let mut w = GgufWriter::new();
    w.set("adapter.type", V::Str("lora".into()))
        .set("adapter.lora.alpha", V::F32(1.0));
    // The tensor count lowered by 2 (the last pair dropped): the data section would start
    // early and shift every tensor view into header bytes; the trailing bytes give it away.
    let mut lowered = good.clone();
    lowered[8..16].copy_from_slice(&2u64.to_le_bytes());
    add("adapter.OutOfBounds.tensor-count-lowered-by-2", lowered);
    add("adapter.MissingKey.no-general-type", w.to_bytes());
    let mut w = adapter_meta();
    w.set("adapter.type", V::Str("ia3".into()));
    add("adapter.BadValue.adapter-type-ia3", w.to_bytes());
    let mut w = GgufWriter::new();
    w.set("general.type", V::Str("adapter".into()))
        .set("adapter.type", V::Str("lora".into()));
    add("adapter.MissingKey.no-alpha", w.to_bytes());
    let mut w = adapter_meta();
    w.set("adapter.lora.alpha", V::Str("16".into()));
    add("adapter.WrongType.alpha-string", w.to_bytes());
    let mut w = adapter_meta();
    w.set("adapter.lora.alpha", V::F32(f32::INFINITY));
    add("adapter.BadValue.alpha-infinite", w.to_bytes());
    let mut w = adapter_meta();
    w.set(FINGERPRINT_KEY, V::Str("0x1234".into()));
    pair(&mut w, "blk.0.attn_q.weight", 2, 64, 64);
    add("adapter.WrongType.fingerprint-string", w.to_bytes());
    let mut w = adapter_meta();
    w.set(FINGERPRINT_KEY, V::I64(-1));
    pair(&mut w, "blk.0.attn_q.weight", 2, 64, 64);
    add("adapter.WrongType.fingerprint-negative", w.to_bytes());
    add(
        "adapter.MissingTensor.no-tensors",
        adapter_meta().to_bytes(),
    );
    let mut w = adapter_meta();
    w.add_tensor("blk.0.attn_q.weight.lora_a", T::F16, &[64, 2], f16s(128, 1))
        .expect("a");
    add("adapter.MissingTensor.lone-lora-a", w.to_bytes());
    let mut w = adapter_meta();
    w.add_tensor("blk.0.attn_q.weight.lora_b", T::F16, &[2, 64], f16s(128, 1))
        .expect("b");
    add("adapter.MissingTensor.lone-lora-b", w.to_bytes());
    let mut w = adapter_meta();
    pair(&mut w, "blk.0.attn_q.weight", 2, 64, 64);
    w.add_tensor("blk.0.attn_q.weight", T::F16, &[64, 1], f16s(64, 1))
        .expect("w");
    add("adapter.BadValue.base-weight-inside", w.to_bytes());
    let mut w = adapter_meta();
    w.add_tensor(
        "blk.0.attn_q.weight.lora_a",
        T::Q4_0,
        &[64, 2],
        zeros(2 * 36),
    )
    .expect("a");
    w.add_tensor("blk.0.attn_q.weight.lora_b", T::F16, &[2, 64], f16s(128, 2))
        .expect("b");
    add("adapter.UnsupportedTensorType.lora-a-q4_0", w.to_bytes());
    let mut w = adapter_meta();
    w.add_tensor("blk.0.attn_q.weight.lora_a", T::F16, &[64, 2], f16s(128, 1))
        .expect("a");
    w.add_tensor("blk.0.attn_q.weight.lora_b", T::F16, &[3, 64], f16s(192, 2))
        .expect("b");
    add("adapter.ShapeMismatch.rank-a-2-b-3", w.to_bytes());
    let mut w = adapter_meta();
    w.add_tensor(
        "blk.0.attn_q.weight.lora_a",
        T::F16,
        &[1, 257],
        f16s(257, 1),
    )
    .expect("a");
    w.add_tensor(
        "blk.0.attn_q.weight.lora_b",
        T::F16,
        &[257, 1],
        f16s(257, 2),
    )
    .expect("b");
    add("adapter.BadDims.rank-257", w.to_bytes());
    let mut w = adapter_meta();
    w.add_tensor(
        "blk.0.attn_q.weight.lora_a",
        T::F16,
        &[64, 2, 2],
        f16s(256, 1),
    )
    .expect("a");
    w.add_tensor("blk.0.attn_q.weight.lora_b", T::F16, &[2, 64], f16s(128, 2))
        .expect("b");
    add("adapter.BadDims.lora-a-3d", w.to_bytes());
    let mut w = adapter_meta();
    pair(&mut w, "blk.0.attn_q.weight", 2, 64, 64);
    w.add_tensor("blk.0.attn_q.weight.dora_scale", T::F16, &[64], f16s(64, 3))
        .expect("d");
    add("adapter.UnsupportedTensorType.dora-scale-f16", w.to_bytes());
    let mut w = adapter_meta();
    pair(&mut w, "blk.0.attn_q.weight", 2, 64, 64);
    w.add_tensor(
        "blk.0.attn_q.weight.dora_scale",
        T::F32,
        &[32],
        f32s(&[1.0; 32]),
    )
    .expect("d");
    add("adapter.ShapeMismatch.dora-scale-length", w.to_bytes());
    let mut w = adapter_meta();
    w.add_tensor(
        "blk.0.attn_q.weight.dora_scale",
        T::F32,
        &[64],
        f32s(&[1.0; 64]),
    )
    .expect("d");
    add(
        "adapter.MissingTensor.dora-scale-without-pair",
        w.to_bytes(),
    );
    let mut w = adapter_meta();
    w.add_tensor("output.weight", T::Q4_K, &[256, 1], zeros(144))
        .expect("head");
    add("adapter.UnsupportedTensorType.head-q4_k", w.to_bytes());

    // ---- bind (against tests/fixtures/tiny/tiny-q8_0.gguf: 2 layers, dim 64, ffn 160) ----
    let mut w = adapter_meta();
    w.set("general.architecture", V::Str("qwen2".into()));
    pair(&mut w, "blk.0.attn_q.weight", 2, 64, 64);
    add("bind.UnsupportedArch.architecture-qwen2", w.to_bytes());
    let mut w = adapter_meta();
    w.set(FINGERPRINT_KEY, V::U64(0x0123_4567_89ab_cdef));
    pair(&mut w, "blk.0.attn_q.weight", 2, 64, 64);
    add("bind.BadValue.fingerprint-of-another-base", w.to_bytes());
    let mut w = adapter_meta();
    pair(&mut w, "blk.2.attn_q.weight", 2, 64, 64);
    add("bind.MissingTensor.layer-2-of-2", w.to_bytes());
    let mut w = adapter_meta();
    pair(&mut w, "token_embd.weight", 2, 64, 400);
    add("bind.MissingTensor.embedding-target", w.to_bytes());
    let mut w = adapter_meta();
    pair(&mut w, "blk.0.attn_qkv.weight", 2, 64, 192);
    add("bind.MissingTensor.fused-qkv-target", w.to_bytes());
    let mut w = adapter_meta();
    pair(&mut w, "blk.0.attn_q.weight", 2, 64, 32);
    add("bind.ShapeMismatch.attn-k-shape-on-attn-q", w.to_bytes());
    let mut w = adapter_meta();
    pair(&mut w, "blk.1.ffn_down.weight", 2, 64, 160);
    add("bind.ShapeMismatch.ffn-down-transposed", w.to_bytes());
    let mut w = adapter_meta();
    w.add_tensor("output.weight", T::F16, &[64, 10], f16s(640, 4))
        .expect("head");
    add("bind.ShapeMismatch.head-10-rows", w.to_bytes());
    add("bind.Ok.rank-2-two-targets", good.clone());

    // ---- stream (64 KiB receive buffer) ---------------------------------------------------
    let s = framed(&good);
    add("stream.Ok.framed-adapter", s.clone());
    add(
        "stream.BadMagic.frame-magic",
        patch(s.clone(), b"ELAS", b"ELAZ"),
    );
    let mut bad = s.clone();
    bad[12] ^= 0x10;
    add("stream.BadValue.frame-header-crc", bad);
    add(
        "stream.UnsupportedVersion.frame-version-2",
        frame_with(&good, 2, good.len() as u64),
    );
    add(
        "stream.BufferTooSmall.declared-2^40-bytes",
        frame_with(&good, 1, 1 << 40),
    );
    // The last tensor ends at the true end, so the header is refused against the shorter length.
    add(
        "stream.OutOfBounds.declared-1-byte-short",
        frame_with(&good, 1, good.len() as u64 - 1),
    );
    let mut extra = s.clone();
    extra.push(0);
    add("stream.InvalidArgument.byte-after-payload", extra);
    // One byte more than the header accounts for: refused as soon as the header is complete.
    add(
        "stream.OutOfBounds.declared-1-byte-long",
        frame_with(&good, 1, good.len() as u64 + 1),
    );
    add("stream.Truncated.power-cut-in-frame", s[..10].to_vec());
    add(
        "stream.Truncated.power-cut-in-header",
        s[..24 + 100].to_vec(),
    );
    add(
        "stream.Truncated.power-cut-in-data",
        s[..s.len() - 100].to_vec(),
    );
    let mut flip = s.clone();
    let last = flip.len() - 3;
    flip[last] ^= 0x04;
    add("stream.BadValue.payload-bit-flip", flip);
    add(
        "stream.BadMagic.payload-not-gguf",
        framed(&patch(good.clone(), b"GGUF", b"GGUG")),
    );
    let mut w = micro_meta("");
    micro_embd(&mut w);
    add("stream.BadValue.payload-is-a-model", framed(&w.to_bytes()));
    add(
        "stream.Truncated.payload-is-half-a-header",
        framed(&good[..200]),
    );
    // The header claims a tensor past the end of the declared payload.
    let lying = raw_file(
        &[
            (b"general.type", 8, strp(b"adapter")),
            (b"adapter.type", 8, strp(b"lora")),
            (b"adapter.lora.alpha", 6, 1f32.to_le_bytes().to_vec()),
        ],
        &[
            (b"blk.0.attn_q.weight.lora_a", &[64, 2], 1, 0),
            (b"blk.0.attn_q.weight.lora_b", &[2, 64], 1, 256),
        ],
        300,
    );
    add(
        "stream.OutOfBounds.tensor-past-declared-end",
        framed(&lying),
    );
    // Chunks duplicated / reordered (the frame is intact: the CRC catches the payload).
    let chunks: Vec<&[u8]> = s.chunks(64).collect();
    let mut dup = vec![];
    for (i, c) in chunks.iter().enumerate() {
        dup.extend_from_slice(c);
        if i == chunks.len() - 3 {
            dup.extend_from_slice(c);
        }
    }
    add("stream.InvalidArgument.chunk-duplicated", dup);
    let n = chunks.len();
    let mut re = vec![];
    for i in (0..n - 4).chain([n - 3, n - 4]).chain(n - 2..n) {
        re.extend_from_slice(chunks[i]);
    }
    add("stream.BadValue.chunks-reordered", re);

    // ---- peft (against tiny-q8_0.gguf) ----------------------------------------------------
    let qv_cfg = fixture("lora/tiny/qv/adapter_config.json");
    add(
        "peft.Ok.qv-fixture",
        peft_recipe(
            1,
            &qv_cfg,
            &fixture("lora/tiny/qv/adapter_model.safetensors"),
        ),
    );
    // Refusals that need tensors use one rank-4 q_proj pair (the qv config says r = 4).
    let qv_st = safetensors(
        &[
            (&format!("{QPROJ}.lora_A.weight"), "F16", &[4, 64], [0, 512]),
            (
                &format!("{QPROJ}.lora_B.weight"),
                "F16",
                &[64, 4],
                [512, 1024],
            ),
        ],
        1024,
    );
    add("peft.Ok.one-q-proj-pair", peft_recipe(2, &qv_cfg, &qv_st));
    add(
        "peft.BadValue.config-not-json",
        peft_recipe(1, b"{\"r\": 4,", b""),
    );
    add(
        "peft.BadValue.peft-type-ia3",
        peft_recipe(
            1,
            &qv_config(|c| {
                c.insert("peft_type".into(), "IA3".into());
            }),
            b"",
        ),
    );
    add(
        "peft.BadValue.no-r",
        peft_recipe(
            1,
            &qv_config(|c| {
                c.remove("r");
            }),
            b"",
        ),
    );
    add(
        "peft.BadValue.r-string",
        peft_recipe(
            1,
            &qv_config(|c| {
                c.insert("r".into(), "4".into());
            }),
            b"",
        ),
    );
    add(
        "peft.BadValue.no-lora-alpha",
        peft_recipe(
            1,
            &qv_config(|c| {
                c.remove("lora_alpha");
            }),
            b"",
        ),
    );
    add(
        "peft.BadValue.bias-all",
        peft_recipe(
            1,
            &qv_config(|c| {
                c.insert("bias".into(), "all".into());
            }),
            b"",
        ),
    );
    add(
        "peft.BadValue.init-pissa",
        peft_recipe(
            1,
            &qv_config(|c| {
                c.insert("init_lora_weights".into(), "pissa_niter_4".into());
            }),
            b"",
        ),
    );
    add(
        "peft.BadValue.modules-to-save-embed",
        peft_recipe(
            1,
            &qv_config(|c| {
                c.insert(
                    "modules_to_save".into(),
                    serde_json::json!(["embed_tokens"]),
                );
            }),
            b"",
        ),
    );
    add(
        "peft.BadValue.layer-replication",
        peft_recipe(
            1,
            &qv_config(|c| {
                c.insert("layer_replication".into(), serde_json::json!([[0, 2]]));
            }),
            b"",
        ),
    );
    add(
        "peft.BadValue.rank-pattern-regex",
        peft_recipe(
            1,
            &qv_config(|c| {
                c.insert(
                    "rank_pattern".into(),
                    serde_json::json!({"^model.*q_proj": 4}),
                );
            }),
            &qv_st,
        ),
    );
    add(
        "peft.ShapeMismatch.rank-vs-config-r",
        peft_recipe(
            1,
            &qv_config(|c| {
                c.insert("r".into(), 8.into());
            }),
            &qv_st,
        ),
    );
    add(
        "peft.BadValue.dora-magnitude-without-use-dora",
        peft_recipe(
            1,
            &qv_cfg,
            &safetensors(
                &[
                    (&format!("{QPROJ}.lora_A.weight"), "F16", &[4, 64], [0, 512]),
                    (
                        &format!("{QPROJ}.lora_B.weight"),
                        "F16",
                        &[64, 4],
                        [512, 1024],
                    ),
                    (
                        &format!("{QPROJ}.lora_magnitude_vector.weight"),
                        "F16",
                        &[64],
                        [1024, 1152],
                    ),
                ],
                1152,
            ),
        ),
    );
    let mut st = 200u64.to_le_bytes().to_vec();
    st.extend(b"{}");
    add(
        "peft.Truncated.st-header-longer-than-file",
        peft_recipe(1, &qv_cfg, &st),
    );
    add(
        "peft.TooMany.st-header-length-2^40",
        peft_recipe(1, &qv_cfg, &(1u64 << 40).to_le_bytes()),
    );
    add(
        "peft.Truncated.st-4-bytes",
        peft_recipe(1, &qv_cfg, b"\x10\0\0\0"),
    );
    let mut st = 4u64.to_le_bytes().to_vec();
    st.extend(b"nope");
    add(
        "peft.BadValue.st-header-not-json",
        peft_recipe(1, &qv_cfg, &st),
    );
    let mut st = 2u64.to_le_bytes().to_vec();
    st.extend(b"[]");
    add(
        "peft.BadValue.st-header-not-object",
        peft_recipe(1, &qv_cfg, &st),
    );
    add(
        "peft.UnsupportedTensorType.st-dtype-i8",
        peft_recipe(
            1,
            &qv_cfg,
            &safetensors(
                &[(&format!("{QPROJ}.lora_A.weight"), "I8", &[4, 64], [0, 256])],
                256,
            ),
        ),
    );
    add(
        "peft.BadDims.st-offsets-vs-shape",
        peft_recipe(
            1,
            &qv_cfg,
            &safetensors(
                &[(&format!("{QPROJ}.lora_A.weight"), "F16", &[4, 64], [0, 500])],
                512,
            ),
        ),
    );
    add(
        "peft.BadDims.st-shape-overflows",
        peft_recipe(
            1,
            &qv_cfg,
            &safetensors(
                &[(
                    &format!("{QPROJ}.lora_A.weight"),
                    "F16",
                    &[1 << 62, 8],
                    [0, 512],
                )],
                512,
            ),
        ),
    );
    add(
        "peft.OutOfBounds.st-offsets-past-data",
        peft_recipe(
            1,
            &qv_cfg,
            &safetensors(
                &[(
                    &format!("{QPROJ}.lora_A.weight"),
                    "F16",
                    &[4, 64],
                    [512, 1024],
                )],
                512,
            ),
        ),
    );
    add(
        "peft.Overlap.st-tensors-overlap",
        peft_recipe(
            1,
            &qv_cfg,
            &safetensors(
                &[
                    (&format!("{QPROJ}.lora_A.weight"), "F16", &[4, 64], [0, 512]),
                    (
                        &format!("{QPROJ}.lora_B.weight"),
                        "F16",
                        &[64, 4],
                        [256, 768],
                    ),
                ],
                768,
            ),
        ),
    );
    add(
        "peft.MissingTensor.only-lora-a",
        peft_recipe(
            1,
            &qv_cfg,
            &safetensors(
                &[(&format!("{QPROJ}.lora_A.weight"), "F16", &[4, 64], [0, 512])],
                512,
            ),
        ),
    );
    add(
        "peft.BadValue.embedding-lora",
        peft_recipe(
            1,
            &qv_cfg,
            &safetensors(
                &[(
                    "base_model.model.model.embed_tokens.lora_embedding_A",
                    "F16",
                    &[4, 8],
                    [0, 64],
                )],
                64,
            ),
        ),
    );
    add(
        "peft.BadValue.bias-tensor",
        peft_recipe(
            1,
            &qv_cfg,
            &safetensors(
                &[(&format!("{QPROJ}.lora_B.bias"), "F16", &[64], [0, 128])],
                128,
            ),
        ),
    );
    add(
        "peft.BadValue.mlp-fc1-target",
        peft_recipe(
            1,
            &qv_cfg,
            &safetensors(
                &[
                    (
                        "base_model.model.model.layers.0.mlp.fc1.lora_A.weight",
                        "F16",
                        &[4, 64],
                        [0, 512],
                    ),
                    (
                        "base_model.model.model.layers.0.mlp.fc1.lora_B.weight",
                        "F16",
                        &[64, 4],
                        [512, 1024],
                    ),
                ],
                1024,
            ),
        ),
    );
    add(
        "peft.ShapeMismatch.a-in-32-vs-base-64",
        peft_recipe(
            1,
            &qv_cfg,
            &safetensors(
                &[
                    (&format!("{QPROJ}.lora_A.weight"), "F16", &[4, 32], [0, 256]),
                    (
                        &format!("{QPROJ}.lora_B.weight"),
                        "F16",
                        &[64, 4],
                        [256, 768],
                    ),
                ],
                768,
            ),
        ),
    );
    add(
        "peft.BadDims.a-3d",
        peft_recipe(
            1,
            &qv_cfg,
            &safetensors(
                &[
                    (
                        &format!("{QPROJ}.lora_A.weight"),
                        "F16",
                        &[4, 64, 1],
                        [0, 512],
                    ),
                    (
                        &format!("{QPROJ}.lora_B.weight"),
                        "F16",
                        &[64, 4],
                        [512, 1024],
                    ),
                ],
                1024,
            ),
        ),
    );
    add(
        "peft.MissingTensor.layer-9",
        peft_recipe(
            1,
            &qv_cfg,
            &safetensors(
                &[
                    (
                        "base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight",
                        "F16",
                        &[4, 64],
                        [0, 512],
                    ),
                    (
                        "base_model.model.model.layers.9.self_attn.q_proj.lora_B.weight",
                        "F16",
                        &[64, 4],
                        [512, 1024],
                    ),
                ],
                1024,
            ),
        ),
    );
    add(
        "peft.MissingTensor.no-tensors",
        peft_recipe(1, &qv_cfg, &safetensors(&[], 0)),
    );
    add(
        "peft.MissingTensor.use-dora-without-magnitude",
        peft_recipe(
            1,
            &qv_config(|c| {
                c.insert("use_dora".into(), true.into());
            }),
            &qv_st,
        ),
    );
    out
}

/// Write the hand-made corpus to `tests/fuzz-regressions/` (crash inputs are left alone).
#[test]
#[ignore = "writes the committed corpus; run after changing a builder"]
fn regenerate_malformed_corpus() {
    let d = dir();
    std::fs::create_dir_all(&d).expect("mkdir");
    let all = malformed();
    let mut seen = std::collections::BTreeSet::new();
    for (name, bytes) in &all {
        assert!(seen.insert(name.clone()), "duplicate name {name}");
        assert!(!name.contains(".crash-"));
        std::fs::write(d.join(name), bytes).expect("write");
    }
    println!("wrote {} inputs", all.len());
}

/// Every GGUF in the repository (fixtures, shipped models) still parses: the reader's rules
/// (for example "nothing but padding after the last tensor") hold for files written by
/// llama.cpp, gguf-py and edgelora's own writer.
#[test]
fn every_committed_gguf_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut stack = vec![root.join("tests/fixtures"), root.join("models")];
    let (mut n, mut skipped) = (0, 0);
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "gguf") {
                // Under Miri only the small ones (interpretation is ~1000x slower).
                if cfg!(miri) && std::fs::metadata(&p).map_or(0, |m| m.len()) > 64 << 10 {
                    skipped += 1;
                    continue;
                }
                let bytes = std::fs::read(&p).expect("read");
                if let Err(e) = Gguf::parse(&bytes) {
                    panic!("{}: {e}", p.display());
                }
                n += 1;
            }
        }
    }
    println!("{n} GGUF files parse ({skipped} large ones skipped under Miri)");
    assert!(n + skipped >= 10, "found only {} GGUF files", n + skipped);
}
