//! `Gguf::parse` on arbitrary bytes, then everything a caller can do with the result: iterate
//! and look up every key with every typed accessor, walk every array (iterator, random access),
//! every tensor, check header prefixes as the stream loader does, and build whatever the file
//! claims to be (a model, which then runs two tokens; a tokenizer, which then encodes and
//! decodes).
//!
//! Oracles besides "no panic": iterators yield exactly the counts the header declared; every
//! key and tensor name is found again by lookup; a tensor's bytes have exactly the size its
//! type and dims imply; a prefix of a valid file is never refused by `parse_header` (the
//! streaming loader relies on that) and asks for more bytes than it has.
#![no_main]

#[path = "common.rs"]
mod common;

use edgelora::format::gguf::{Gguf, HeaderState, Value, ValueType};
use edgelora::kernels::MatRef;
use edgelora::model::{Config, Model, State};
use edgelora::tokenizer::Tokenizer;
use edgelora::ErrorKind;
use libfuzzer_sys::fuzz_target;

const TYPES: [ValueType; 13] = [
    ValueType::U8,
    ValueType::I8,
    ValueType::U16,
    ValueType::I16,
    ValueType::U32,
    ValueType::I32,
    ValueType::F32,
    ValueType::Bool,
    ValueType::String,
    ValueType::Array,
    ValueType::U64,
    ValueType::I64,
    ValueType::F64,
];

/// Touch every accessor of a value; the returned hash keeps the calls alive.
fn touch(v: &Value<'_>) -> u64 {
    let mut h = v.value_type().id() as u64;
    h ^= v.as_int().map_or(1, |i| i as u64);
    h ^= v.as_float().map_or(2, f64::to_bits);
    h ^= v.as_str().map_or(3, |s| s.len() as u64);
    h ^= v.as_bytes().map_or(4, |b| b.len() as u64);
    if let Some(a) = v.as_array() {
        h ^= a.raw().len() as u64 ^ a.elem_type().id() as u64;
        let mut n = 0usize;
        for e in a.iter() {
            assert_eq!(e.value_type(), a.elem_type());
            h = h.rotate_left(5) ^ touch(&e);
            n += 1;
        }
        assert_eq!(n, a.len(), "an array yields exactly its declared length");
        assert_eq!(a.is_empty(), n == 0);
        for i in [0, a.len() / 2, a.len().wrapping_sub(1), a.len(), usize::MAX] {
            assert_eq!(a.get(i).is_some(), i < a.len(), "get({i}) of {}", a.len());
            h ^= a.f32_at(i).map_or(5, |f| f.to_bits() as u64);
            h ^= a.int_at(i).map_or(6, |x| x as u64);
        }
    }
    h
}

fn check_file(data: &[u8], g: &Gguf<'_>) -> u64 {
    let mut h = 0u64;
    assert!(g.version() == 2 || g.version() == 3);
    assert!(g.alignment().is_power_of_two());
    assert!(g.data_offset() <= data.len() as u64 || g.tensor_count() == 0);
    let mut n_kv = 0u64;
    for (k, v) in g.metadata() {
        n_kv += 1;
        h = h.rotate_left(7) ^ touch(&v);
        // Keys are unique, so lookup finds this very value.
        let found = g.get(k).expect("every key is found by lookup");
        assert_eq!(found.value_type(), v.value_type());
        h ^= g.get_u32(k).map_or(7, u64::from);
        h ^= g.get_u32_opt(k).map_or(8, |x| x.map_or(9, u64::from));
        h ^= g.get_u64(k).unwrap_or(10);
        h ^= g.get_i64(k).map_or(11, |x| x as u64);
        h ^= g.get_f32(k).map_or(12, |x| x.to_bits() as u64);
        h ^= g
            .get_f32_opt(k)
            .map_or(13, |x| x.map_or(14, |x| x.to_bits() as u64));
        h ^= g.get_bool(k).map_or(15, u64::from);
        h ^= g.get_str(k).map_or(16, |s| s.len() as u64);
        h ^= g.get_array(k).map_or(17, |a| a.len() as u64);
        for t in TYPES {
            h ^= g.get_array_of(k, t).map_or(18, |a| a.len() as u64);
        }
    }
    assert_eq!(
        n_kv,
        g.kv_count(),
        "metadata yields exactly the declared count"
    );
    assert!(g.get("\u{0}no such key\u{0}").is_none());
    assert!(g.get_u32("\u{0}no such key\u{0}").is_err());

    let mut n_t = 0u64;
    let mut prev_end = 0u64;
    for t in g.tensors() {
        n_t += 1;
        assert!((1..=4).contains(&t.n_dims));
        assert_eq!(t.dims().len(), t.n_dims);
        let rows = t.n_rows();
        let row =
            t.ty.row_bytes(t.row_len())
                .expect("row length was validated");
        assert_eq!(
            t.data.len() as u64,
            row * rows,
            "tensor bytes = rows x row bytes"
        );
        assert_eq!(t.n_elements(), t.row_len() * rows);
        assert_eq!(t.file_offset, g.data_offset() + t.offset);
        assert!(t.offset >= prev_end, "tensors do not overlap");
        assert_eq!(t.offset % g.alignment() as u64, 0);
        prev_end = t.offset + t.data.len() as u64;
        let again = g.tensor(t.name).expect("every tensor is found by name");
        assert_eq!(again.offset, t.offset);
        if let Ok(m) = MatRef::from_tensor(&t) {
            let mut out = vec![0f32; m.cols().min(1 << 16)];
            if m.cols() <= out.len() {
                for r in [0, m.rows().saturating_sub(1), m.rows()] {
                    let res = m.dequantize_row(r, &mut out);
                    assert_eq!(res.is_ok(), r < m.rows());
                }
            }
        }
    }
    assert_eq!(
        n_t,
        g.tensor_count(),
        "tensors yield exactly the declared count"
    );
    assert!(g.tensor("\u{0}no such tensor").is_err());
    h ^= edgelora::lora::base_fingerprint(g);
    h
}

/// A valid file's prefixes are never refused, and ask for more than they have.
fn check_prefixes(data: &[u8], g: &Gguf<'_>) {
    let n = data.len();
    let doff = (g.data_offset() as usize).min(n);
    for k in [0, 1, 23, 24, n / 3, n / 2, doff.saturating_sub(1), doff, n] {
        if k > n {
            continue;
        }
        match Gguf::parse_header(&data[..k], n as u64) {
            Ok(HeaderState::Complete(h)) => {
                assert_eq!(h.data_offset(), g.data_offset());
                assert_eq!(h.tensor_count(), g.tensor_count());
            }
            Ok(HeaderState::NeedMore(need)) => {
                assert!(
                    need > k as u64 && need <= n as u64,
                    "need {need} at {k} of {n}"
                );
            }
            Err(e) => panic!("prefix {k} of a valid file refused: {e}"),
        }
        let c = Gguf::check_header(&data[..k], n as u64).expect("prefix of a valid file");
        if let Some(off) = c {
            assert_eq!(off, g.data_offset());
        }
    }
    if n > 0 {
        assert!(Gguf::parse_header(data, n as u64 - 1).is_err());
    }
}

/// If the file is a llama model: build it and run two tokens (never panics, finite sizes).
fn run_model(g: &Gguf<'_>) {
    let Ok(cfg) = Config::from_gguf(g) else {
        return;
    };
    let Ok(model) = Model::<8>::from_gguf(g) else {
        return;
    };
    assert_eq!(*model.config(), cfg);
    let ctx = cfg.ctx_len.min(4);
    let Some(len) = State::checked_len_for(&cfg, ctx) else {
        return;
    };
    // Keep one run's memory bounded (a fuzzed header can declare a vocabulary of millions).
    if len > 1 << 22 {
        return;
    }
    let mut buf = vec![0f32; len];
    let mut st = State::new(&cfg, ctx, &mut buf).expect("state of the computed size");
    for (pos, tok) in [
        (0usize, 0u32),
        (1, (cfg.vocab - 1) as u32),
        (0, cfg.vocab as u32),
    ] {
        let r = model.forward(tok, pos, &mut st);
        if (tok as usize) < cfg.vocab && pos < ctx {
            let logits = r.expect("in-range token at a valid position");
            assert_eq!(logits.len(), cfg.vocab);
        } else {
            assert!(r.is_err());
        }
    }
}

/// If the file carries a tokenizer: build it, encode a fixed text, decode a few ids.
fn run_tokenizer(g: &Gguf<'_>) {
    let Ok(words) = Tokenizer::scratch_len(g) else {
        return;
    };
    if words > 1 << 22 {
        return;
    }
    let Ok(tok) = Tokenizer::new_owned(g) else {
        return;
    };
    let text = "Hello, wörld! <s> 12345 \u{1F600}\n\t  x";
    let mut ids = vec![0u32; Tokenizer::encode_buf_len(text.len())];
    for special in [false, true] {
        // A `llama` vocabulary that cannot even spell <unk> may refuse; a buffer of
        // `encode_buf_len` ids is documented to always suffice.
        match tok.encode(text, special, &mut ids) {
            Ok(n) => assert!(ids[..n].iter().all(|&i| (i as usize) < tok.vocab_size())),
            Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}"),
        }
    }
    let ids: Vec<u32> = (0..tok.vocab_size().min(64) as u32)
        .chain([u32::MAX])
        .collect();
    let mut out = vec![0u8; tok.max_token_bytes() * 3 + 3];
    let mut dec = tok.decoder();
    for &id in &ids {
        let r = dec.push(id, &mut out);
        assert_eq!(r.is_ok(), (id as usize) < tok.vocab_size(), "decode {id}");
    }
    let _ = dec.finish(&mut out);
}

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::parse(data) else {
        // A file refused as a whole is never accepted as a header either (once complete).
        return;
    };
    let h = check_file(data, &g);
    std::hint::black_box(h);
    check_prefixes(data, &g);
    run_model(&g);
    run_tokenizer(&g);
});
