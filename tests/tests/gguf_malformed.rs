//! Malformed GGUF inputs: each must give its specific typed error, never a panic.

use edgelora::format::gguf::{Gguf, MAX_ARRAY_DEPTH, MAX_KV, MAX_STR_LEN, MAX_TENSORS};
use edgelora::model::Model;
use edgelora::ErrorKind as K;

/// A minimal GGUF writer for building test inputs byte by byte.
#[derive(Default)]
struct W {
    kv: Vec<u8>,
    n_kv: u64,
    ti: Vec<u8>,
    n_t: u64,
    data: Vec<u8>,
    align: usize,
}

fn s(out: &mut Vec<u8>, v: &str) {
    out.extend((v.len() as u64).to_le_bytes());
    out.extend(v.as_bytes());
}

impl W {
    fn new() -> Self {
        W {
            align: 32,
            ..Default::default()
        }
    }
    fn raw_kv(&mut self, key: &str, ty: u32, payload: &[u8]) -> &mut Self {
        s(&mut self.kv, key);
        self.kv.extend(ty.to_le_bytes());
        self.kv.extend(payload);
        self.n_kv += 1;
        self
    }
    fn u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.raw_kv(key, 4, &v.to_le_bytes())
    }
    fn f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.raw_kv(key, 6, &v.to_le_bytes())
    }
    fn str(&mut self, key: &str, v: &str) -> &mut Self {
        let mut p = vec![];
        s(&mut p, v);
        self.raw_kv(key, 8, &p)
    }
    /// Tensor with explicit offset; data appended separately.
    fn raw_tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        s(&mut self.ti, name);
        self.ti.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.ti.extend(d.to_le_bytes());
        }
        self.ti.extend(ty.to_le_bytes());
        self.ti.extend(offset.to_le_bytes());
        self.n_t += 1;
        self
    }
    /// F32 tensor with its data appended at the next aligned offset.
    fn f32_tensor(&mut self, name: &str, dims: &[u64], vals: &[f32]) -> &mut Self {
        while !self.data.len().is_multiple_of(self.align) {
            self.data.push(0);
        }
        let off = self.data.len() as u64;
        for v in vals {
            self.data.extend(v.to_le_bytes());
        }
        self.raw_tensor(name, dims, 0, off)
    }
    fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(self.n_t.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        out.extend(&self.ti);
        while !out.len().is_multiple_of(self.align) {
            out.push(0);
        }
        out.extend(&self.data);
        out
    }
}

fn err(bytes: &[u8]) -> edgelora::Error {
    Gguf::parse(bytes).expect_err("must be rejected")
}

fn valid() -> Vec<u8> {
    let mut w = W::new();
    w.str("general.architecture", "test")
        .u32("a.b", 7)
        .f32("c", 1.5);
    let mut arr = 8u32.to_le_bytes().to_vec();
    arr.extend(2u64.to_le_bytes());
    s(&mut arr, "x");
    s(&mut arr, "yz");
    w.raw_kv("strings", 9, &arr);
    w.f32_tensor("t0", &[4], &[1.0, 2.0, 3.0, 4.0])
        .f32_tensor("t1", &[2, 2], &[5.0; 4]);
    w.build()
}

#[test]
fn valid_file_parses() {
    let b = valid();
    let g = Gguf::parse(&b).unwrap();
    assert_eq!(g.tensor_count(), 2);
    assert_eq!(g.get_u32("a.b").unwrap(), 7);
}

#[test]
fn every_truncation_is_an_error() {
    let b = valid();
    for n in 0..b.len() {
        let e = err(&b[..n]);
        assert!(
            matches!(e.kind(), K::Truncated | K::OutOfBounds),
            "prefix {n}: unexpected {e}"
        );
    }
}

#[test]
fn every_single_byte_corruption_is_handled() {
    // Not every flip is invalid, but none may panic.
    let b = valid();
    for i in 0..b.len() {
        for x in [0x01u8, 0x80, 0xff] {
            let mut c = b.clone();
            c[i] ^= x;
            let _ = Gguf::parse(&c).map(|g| {
                for (_, v) in g.metadata() {
                    let _ = v.as_array().map(|a| a.iter().count());
                }
                g.tensors().count()
            });
        }
    }
}

#[test]
fn bad_magic_and_version() {
    let mut b = valid();
    b[0] = b'X';
    assert_eq!(err(&b).kind(), K::BadMagic);
    for v in [0u32, 1, 4, 0x0300_0000] {
        let mut b = valid();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        let e = err(&b);
        assert_eq!(e.kind(), K::UnsupportedVersion);
        assert_eq!(e.details(), Some((v as u64, 3)));
    }
}

#[test]
fn absurd_counts() {
    let mut b = valid();
    b[8..16].copy_from_slice(&(MAX_TENSORS + 1).to_le_bytes());
    assert_eq!(err(&b).kind(), K::TooMany);
    let mut b = valid();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(err(&b).kind(), K::TooMany);
    let mut b = valid();
    b[16..24].copy_from_slice(&MAX_KV.to_le_bytes());
    // Tensor infos and data get read as more keys: whatever they decode to must be an error.
    let k = err(&b).kind();
    assert!(
        matches!(
            k,
            K::Truncated | K::StringTooLong | K::BadValueType | K::InvalidUtf8
        ),
        "{k:?}"
    );
    // An array claiming 2^40 elements.
    let mut w = W::new();
    let mut p = 4u32.to_le_bytes().to_vec();
    p.extend((1u64 << 40).to_le_bytes());
    w.raw_kv("big", 9, &p);
    let e = err(&w.build());
    assert_eq!(e.kind(), K::TooMany);
    assert!(e.to_string().contains("big"), "{e}");
}

#[test]
fn long_string_and_bad_utf8_key() {
    let mut w = W::new();
    let mut p = (MAX_STR_LEN + 1).to_le_bytes().to_vec();
    p.extend([0u8; 16]);
    w.raw_kv("s", 8, &p);
    assert_eq!(err(&w.build()).kind(), K::StringTooLong);
    let mut w = W::new();
    w.kv.extend(2u64.to_le_bytes());
    w.kv.extend([0xff, 0xfe]);
    w.kv.extend(4u32.to_le_bytes());
    w.kv.extend(1u32.to_le_bytes());
    w.n_kv = 1;
    assert_eq!(err(&w.build()).kind(), K::InvalidUtf8);
}

#[test]
fn bad_value_types() {
    let mut w = W::new();
    w.raw_kv("k", 13, &[0; 8]);
    let e = err(&w.build());
    assert_eq!(e.kind(), K::BadValueType);
    assert_eq!(e.name().as_bytes(), b"k");
    let mut w = W::new();
    let mut p = 99u32.to_le_bytes().to_vec();
    p.extend(0u64.to_le_bytes());
    w.raw_kv("arr", 9, &p);
    assert_eq!(err(&w.build()).kind(), K::BadValueType);
    let mut w = W::new();
    w.raw_kv("b", 7, &[2]);
    assert_eq!(err(&w.build()).kind(), K::BadValue);
}

#[test]
fn nesting_too_deep() {
    // array<array<...<u32>>> nested MAX_ARRAY_DEPTH + 1 times, each with one element.
    let mut p = vec![];
    for _ in 0..MAX_ARRAY_DEPTH {
        p.extend(9u32.to_le_bytes());
        p.extend(1u64.to_le_bytes());
    }
    p.extend(4u32.to_le_bytes());
    p.extend(1u64.to_le_bytes());
    p.extend(5u32.to_le_bytes());
    let mut w = W::new();
    w.raw_kv("deep", 9, &p);
    assert_eq!(err(&w.build()).kind(), K::NestingTooDeep);
    // One level less is fine.
    let mut w = W::new();
    w.raw_kv("ok", 9, &p[12..]);
    Gguf::parse(&w.build()).unwrap();
}

#[test]
fn duplicate_key_and_tensor() {
    let mut w = W::new();
    w.u32("x", 1).u32("y", 2).u32("x", 3);
    let e = err(&w.build());
    assert_eq!(e.kind(), K::DuplicateKey);
    assert_eq!(e.name().as_bytes(), b"x");
    let mut w = W::new();
    w.f32_tensor("t", &[1], &[1.0])
        .f32_tensor("t", &[1], &[2.0]);
    let e = err(&w.build());
    assert_eq!(e.kind(), K::DuplicateTensor);
    assert_eq!(e.name().as_bytes(), b"t");
}

#[test]
fn bad_alignment() {
    for a in [0u32, 3, 48, 1 << 20] {
        let mut w = W::new();
        w.u32("general.alignment", a);
        assert_eq!(err(&w.build()).kind(), K::BadAlignment, "alignment {a}");
    }
    let mut w = W::new();
    w.str("general.alignment", "32");
    assert_eq!(err(&w.build()).kind(), K::WrongType);
}

#[test]
fn bad_tensor_infos() {
    let check = |dims: &[u64], ty: u32, off: u64, data: usize, kind: K| {
        let mut w = W::new();
        w.raw_tensor("bad.tensor", dims, ty, off);
        w.data = vec![0; data];
        let e = err(&w.build());
        assert_eq!(e.kind(), kind, "{dims:?} type {ty} off {off}: {e}");
        assert_eq!(e.name().as_bytes(), b"bad.tensor", "{e}");
    };
    check(&[4], 99, 0, 64, K::UnknownTensorType);
    check(&[], 0, 0, 64, K::BadDims);
    check(&[1, 1, 1, 1, 1], 0, 0, 64, K::BadDims);
    check(&[0], 0, 0, 64, K::BadDims);
    check(&[1 << 40, 1 << 40], 0, 0, 64, K::BadDims);
    check(&[33], 2, 0, 64, K::BadDims); // Q4_0 row not a multiple of 32
    check(&[4], 0, 16, 64, K::Misaligned);
    check(&[32], 0, 0, 64, K::OutOfBounds); // 128 bytes needed, 64 present
    check(&[4], 0, u64::MAX - 31, 64, K::OutOfBounds);
}

#[test]
fn overlapping_tensors() {
    let mut w = W::new();
    w.raw_tensor("a", &[16], 0, 0).raw_tensor("b", &[16], 0, 32);
    w.data = vec![0; 128];
    let e = err(&w.build());
    assert_eq!(e.kind(), K::Overlap);
    assert_eq!(e.name().as_bytes(), b"b");
}

#[test]
fn model_rejects_wrong_types_for_known_keys() {
    let mut w = W::new();
    w.str("general.architecture", "llama")
        .str("llama.block_count", "two");
    let b = w.build();
    let g = Gguf::parse(&b).unwrap();
    let e = Model::<4>::from_gguf(&g).unwrap_err();
    assert_eq!(e.kind(), K::WrongType);
    assert!(e.to_string().contains("llama.block_count"), "{e}");
    let mut w = W::new();
    w.str("general.architecture", "gptx");
    let b = w.build();
    assert_eq!(
        Model::<4>::from_gguf(&Gguf::parse(&b).unwrap())
            .unwrap_err()
            .kind(),
        K::UnsupportedArch
    );
}

#[test]
fn model_rejects_missing_and_misshapen_tensors() {
    let tiny = std::fs::read(format!(
        "{}/fixtures/tiny/tiny-f32.gguf",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let g = Gguf::parse(&tiny).unwrap();
    Model::<4>::from_gguf(&g).unwrap();
    // Rename one tensor in place: same length, so the file stays valid GGUF.
    let pos = tiny
        .windows(22)
        .position(|w| w == b"blk.1.ffn_down.weight\0")
        .or_else(|| tiny.windows(21).position(|w| w == b"blk.1.ffn_down.weight"));
    let pos = pos.unwrap();
    let mut c = tiny.clone();
    c[pos..pos + 5].copy_from_slice(b"blk.9");
    let g = Gguf::parse(&c).unwrap();
    let e = Model::<4>::from_gguf(&g).unwrap_err();
    assert_eq!(e.kind(), K::MissingTensor);
    assert_eq!(e.name().as_bytes(), b"blk.1.ffn_down.weight");
    // Too many layers for the chosen capacity.
    let g = Gguf::parse(&tiny).unwrap();
    assert_eq!(Model::<1>::from_gguf(&g).unwrap_err().kind(), K::TooMany);
}

#[test]
fn forward_rejects_bad_tokens_positions_and_states() {
    use edgelora::model::State;
    let tiny = std::fs::read(format!(
        "{}/fixtures/tiny/tiny-q8_0.gguf",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let g = Gguf::parse(&tiny).unwrap();
    let m: Model<4> = Model::from_gguf(&g).unwrap();
    let cfg = *m.config();
    let mut small = vec![0f32; State::len_for(&cfg, 8) - 1];
    assert_eq!(
        State::new(&cfg, 8, &mut small).unwrap_err().kind(),
        K::BufferTooSmall
    );
    let mut buf = vec![0f32; State::len_for(&cfg, 8)];
    assert_eq!(
        State::new(&cfg, 0, &mut buf).unwrap_err().kind(),
        K::InvalidArgument
    );
    assert_eq!(
        State::new(&cfg, cfg.ctx_len + 1, &mut buf)
            .unwrap_err()
            .kind(),
        K::InvalidArgument
    );
    let mut st = State::new(&cfg, 8, &mut buf).unwrap();
    assert_eq!(
        m.forward(cfg.vocab as u32, 0, &mut st).unwrap_err().kind(),
        K::TokenOutOfRange
    );
    assert_eq!(
        m.forward(u32::MAX, 0, &mut st).unwrap_err().kind(),
        K::TokenOutOfRange
    );
    assert_eq!(
        m.forward(1, 1, &mut st).unwrap_err().kind(),
        K::InvalidArgument,
        "skipping ahead"
    );
    for p in 0..8 {
        m.forward(1, p, &mut st).unwrap();
    }
    assert_eq!(m.forward(1, 8, &mut st).unwrap_err().kind(), K::ContextFull);
    assert_eq!(
        m.prefill(&[], 0, &mut st).unwrap_err().kind(),
        K::InvalidArgument
    );
    assert_eq!(
        m.prefill(&[1, 2, 3], 6, &mut st).unwrap_err().kind(),
        K::ContextFull
    );
    // A failed call leaves the state usable and consistent: rewinding and recomputing
    // position 0 gives the same logits as a fresh state.
    let first: Vec<f32> = m.forward(5, 0, &mut st).unwrap().to_vec();
    let mut buf2 = vec![0f32; State::len_for(&cfg, 8)];
    let mut st2 = State::new(&cfg, 8, &mut buf2).unwrap();
    assert_eq!(m.forward(5, 0, &mut st2).unwrap(), &first[..]);
}
