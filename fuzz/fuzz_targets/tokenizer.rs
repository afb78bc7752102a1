//! The tokenizer on the committed vocabularies (byte-level BPE with the GPT-2, SmolLM2, Llama 3
//! and Qwen2 pre-tokenisers, SentencePiece): encode arbitrary bytes (as lossy UTF-8) and decode
//! arbitrary ids. Input:
//!
//! ```text
//! byte 0   bits 0-1 vocabulary (mod 3), or with bit 5 set bit 0 picks Llama 3 / Qwen2;
//!          bit 2 parse_special, bit 3 skip_special, bit 4 strip_leading_space
//! byte 1   where the rest splits into text | ids
//! byte 2   a small output size (ids for encode, bytes for decode) to exercise short buffers
//! rest     text bytes, then u32 LE ids (top bit clear: reduced into the vocabulary + 8)
//! ```
//!
//! Oracles besides "no panic": with `encode_buf_len` ids, encoding never fails and yields
//! in-vocabulary ids; a short buffer either gives the same ids or `BufferTooSmall`;
//! `encode_vec` agrees; decoding an id succeeds exactly when it is in the vocabulary, with the
//! buffer size the docs promise suffices; the decoder's output is always valid UTF-8, and the
//! byte and `fmt::Write` paths give the same text.
#![no_main]

#[path = "common.rs"]
mod common;

use common::Recipe;
use edgelora::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
use edgelora::{ErrorKind, Gguf};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static VOCABS: [&[u8]; 5] = [
    include_bytes!("../../tests/fixtures/tokenizer/tiny_bpe.gguf"),
    include_bytes!("../../tests/fixtures/tokenizer/tiny_bpe_smollm.gguf"),
    include_bytes!("../../tests/fixtures/tokenizer/tiny_spm.gguf"),
    include_bytes!("../../tests/fixtures/tokenizer/tiny_llama3_bpe.gguf"),
    include_bytes!("../../tests/fixtures/tokenizer/tiny_qwen2_bpe.gguf"),
];

fn tokenizers() -> &'static [Tokenizer<'static, Vec<u32>>; 5] {
    static T: OnceLock<[Tokenizer<'static, Vec<u32>>; 5]> = OnceLock::new();
    T.get_or_init(|| {
        VOCABS.map(|b| {
            let g = Gguf::parse(b).expect("committed vocabulary parses");
            Tokenizer::new_owned(&g).expect("committed vocabulary builds")
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let mut r = Recipe(data);
    let flags = r.u8();
    let split = r.u8() as usize;
    let small = r.u8() as usize;
    let rest = r.rest();
    let (text_bytes, id_bytes) = rest.split_at(rest.len() * split / 256);
    // Bits 0-1 as before (older seeds keep their vocabulary); bit 5 for the two added later.
    let pick = if flags & 32 != 0 {
        3 + (flags & 1) as usize
    } else {
        (flags & 3) as usize % 3
    };
    let tok = &tokenizers()[pick];
    let (parse_special, skip, strip) = (flags & 4 != 0, flags & 8 != 0, flags & 16 != 0);
    let vocab = tok.vocab_size();

    // Encode.
    let text = String::from_utf8_lossy(text_bytes);
    let mut ids = vec![0u32; Tokenizer::encode_buf_len(text.len())];
    let n = tok
        .encode(&text, parse_special, &mut ids)
        .expect("encode_buf_len always suffices");
    let ids = &ids[..n];
    assert!(
        ids.iter().all(|&i| (i as usize) < vocab),
        "encoded id out of vocabulary"
    );
    assert_eq!(
        tok.encode_vec(&text, parse_special)
            .expect("encode_vec")
            .as_slice(),
        ids
    );
    let mut short = vec![0u32; small];
    match tok.encode(&text, parse_special, &mut short) {
        Ok(m) => assert_eq!(&short[..m], ids, "short buffer gave other ids"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::BufferTooSmall, "{e}"),
    }

    // Decode the encoded ids and then arbitrary ones.
    let arbitrary: Vec<u32> = id_bytes
        .chunks_exact(4)
        .map(|c| {
            let v = u32::from_le_bytes(c.try_into().expect("4 bytes"));
            if v >> 31 == 0 {
                v % (vocab as u32 + 8)
            } else {
                v
            }
        })
        .collect();
    let all: Vec<u32> = ids
        .iter()
        .copied()
        .chain(arbitrary.iter().copied())
        .collect();
    let mut dec = tok.decoder().skip_special(skip).strip_leading_space(strip);
    let mut dec_w = dec.clone();
    let mut out = vec![0u8; tok.max_token_bytes() * 3 + 3];
    let mut bytes = Vec::new();
    let mut s = String::new();
    for &id in &all {
        let in_vocab = (id as usize) < vocab;
        match dec.push(id, &mut out) {
            Ok(k) => {
                assert!(in_vocab);
                bytes.extend_from_slice(&out[..k]);
            }
            Err(e) => {
                assert!(!in_vocab, "decode {id}: {e}");
                assert_eq!(e.kind(), ErrorKind::TokenOutOfRange);
            }
        }
        assert_eq!(dec_w.push_to(id, &mut s).is_ok(), in_vocab);
        assert_eq!(tok.token_text(id).is_ok(), in_vocab);
        assert_eq!(tok.token_type(id).is_ok(), in_vocab);
        assert_eq!(tok.token_score(id).is_ok(), in_vocab);
        let mut one = vec![0u8; small];
        match tok.decode_token_into(id, &mut one) {
            Ok(k) => assert!(k <= small && in_vocab),
            Err(e) => assert!(matches!(
                e.kind(),
                ErrorKind::BufferTooSmall | ErrorKind::TokenOutOfRange
            )),
        }
    }
    let k = dec.finish(&mut out).expect("3 bytes always fit");
    bytes.extend_from_slice(&out[..k]);
    dec_w.finish_to(&mut s).expect("String accepts");
    let text_out = std::str::from_utf8(&bytes).expect("decoder output is UTF-8");
    assert_eq!(text_out, s, "byte and fmt::Write decoding agree");

    let in_vocab: Vec<u32> = all
        .iter()
        .copied()
        .filter(|&i| (i as usize) < vocab)
        .collect();
    let full = tok
        .decode_to_string(&in_vocab)
        .expect("in-vocabulary ids decode");
    let mut buf = vec![0u8; small];
    match tok.decode_into(&in_vocab, &mut buf) {
        Ok(k) => assert_eq!(&buf[..k], full.as_bytes()),
        Err(e) => assert_eq!(e.kind(), ErrorKind::BufferTooSmall),
    }

    // Chat prompt rendering with the fuzzed text as content and role.
    let (role, content) = text.split_at(text.char_indices().nth(3).map_or(text.len(), |(i, _)| i));
    let msgs = [
        ChatMessage::new("system", content),
        ChatMessage::new(role, content),
    ];
    let t = ChatTemplate::chatml(Some(role));
    let need = t.rendered_len(&msgs, true);
    let mut p = vec![0u8; small];
    match t.render_into(&msgs, true, &mut p) {
        Ok(k) => assert_eq!(k, need),
        Err(e) => assert_eq!(e.kind(), ErrorKind::BufferTooSmall),
    }
});
