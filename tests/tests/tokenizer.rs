//! Tokenizer tests against implementations this project did not write.
//!
//! - SmolLM2-135M-Instruct (byte-level BPE, `smollm` pre-tokeniser): ids from Hugging Face
//!   `transformers` loading the same GGUF (`tests/fixtures/tokenizer/smollm2_refs.json`); needs
//!   `models/SmolLM2-135M-Instruct.Q4_1.gguf` and prints `SKIPPED` without it.
//! - A tiny byte-level BPE trained with `tokenizers` (`tiny_bpe*.gguf`, GPT-2 and `smollm`
//!   pre-tokenisers) and a tiny SentencePiece BPE trained with `sentencepiece`
//!   (`tiny_spm.gguf`), with those libraries' own ids. Fixtures are made by
//!   `tests/fixtures/tokenizer/gen_tokenizer_refs.py`.
//! - Malformed metadata built here byte by byte, and random input that must never panic.

use edgelora::format::gguf::Gguf;
use edgelora::tokenizer::{ChatMessage, ChatTemplate, TokenType, Tokenizer, TokenizerKind};
use edgelora::ErrorKind;
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tokenizer");
const SMOLLM2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/SmolLM2-135M-Instruct.Q4_1.gguf"
);

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn smollm2_bytes() -> Option<memmap2::Mmap> {
    let Ok(file) = std::fs::File::open(SMOLLM2) else {
        println!("SKIPPED: {SMOLLM2} is absent; run `cargo run --release -p edgelora-cli -- fetch smollm2`");
        return None;
    };
    // SAFETY: read-only private mapping of a file nobody modifies during the test.
    Some(unsafe { memmap2::Mmap::map(&file) }.unwrap())
}

/// Encode with a generous buffer.
fn enc<S: AsRef<[u32]>>(tok: &Tokenizer<'_, S>, text: &str, special: bool) -> Vec<u32> {
    let mut out = vec![0u32; Tokenizer::encode_buf_len(text.len())];
    let n = tok
        .encode(text, special, &mut out)
        .unwrap_or_else(|e| panic!("{text:?}: {e}"));
    out.truncate(n);
    out
}

/// Decode with the streaming decoder one id at a time, checking every chunk is whole UTF-8.
fn stream_decode<S: AsRef<[u32]>>(tok: &Tokenizer<'_, S>, ids: &[u32], strip: bool) -> String {
    let mut dec = tok.decoder().strip_leading_space(strip);
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

// -------------------------------------------------------------------------------------------
// SmolLM2 against transformers
// -------------------------------------------------------------------------------------------

#[test]
fn smollm2_matches_hf_ids_decode_and_chat() {
    let Some(bytes) = smollm2_bytes() else { return };
    let g = Gguf::parse(&bytes).unwrap();
    let words = Tokenizer::scratch_len(&g).unwrap();
    println!(
        "SmolLM2 tokenizer scratch: {words} words = {} bytes",
        words * 4
    );
    let tok = Tokenizer::new_owned(&g).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::Bpe);
    assert_eq!(
        tok.pre_tokenizer(),
        edgelora::tokenizer::PreTokenizer::Gpt2SplitDigits
    );
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.merge_count(), 48900);
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.unk_id()),
        (Some(1), Some(2), Some(0))
    );
    assert!(!tok.add_bos());
    assert_eq!(tok.token_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_id("<|im_end|>"), Some(2));
    assert_eq!(tok.token_id("Ġthe"), Some(260));
    assert!(tok.is_eog(2) && tok.is_eog(0) && !tok.is_eog(1) && !tok.is_eog(3));
    assert_eq!(tok.token_type(1).unwrap(), TokenType::Control);

    let refs = json("smollm2_refs.json");
    let (mut total, mut match_smollm, mut match_hf, mut hf_differs) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for case in refs["cases"]
        .as_array()
        .unwrap()
        .iter()
        .chain(refs["random"].as_array().unwrap())
    {
        let text = case["text"].as_str().unwrap();
        let (hf, smol) = (ids_of(&case["ids"]), ids_of(&case["ids_smollm"]));
        let ours = enc(&tok, text, true);
        total += 1;
        match_smollm += (ours == smol) as usize;
        match_hf += (ours == hf) as usize;
        hf_differs += (hf != smol) as usize;
        if ours != smol {
            failures.push(format!("{text:?}: ours {ours:?}, HF+Digits {smol:?}"));
        }
        // Decode: HF's decode of its ids, and a lossless round trip of ours.
        let decoded = case["decoded"].as_str().unwrap();
        assert_eq!(tok.decode_to_string(&hf).unwrap(), decoded, "{text:?}");
        assert_eq!(stream_decode(&tok, &hf, false), decoded, "{text:?}");
        // Bytes without a token (SmolLM2 lacks 21, e.g. 0x04) are dropped, as HF does.
        let alphabet = byte_tokens();
        let kept: Vec<u8> = text
            .bytes()
            .filter(|&b| tok.token_id(&alphabet[b as usize]).is_some())
            .collect();
        assert_eq!(
            tok.decode_to_string(&ours).unwrap(),
            String::from_utf8_lossy(&kept),
            "{text:?}"
        );
    }
    println!(
        "SmolLM2: {match_smollm}/{total} strings match HF ids with SmolLM2's pre-tokeniser exactly; \
         {match_hf}/{total} match HF-from-GGUF as loaded ({hf_differs} differ there only because \
         transformers' GGUF loader drops the Digits step)"
    );
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        match_hf + hf_differs,
        total,
        "every difference from HF-from-GGUF is the Digits step"
    );

    // Chat template.
    let tpl = ChatTemplate::from_gguf(&g)
        .unwrap()
        .expect("SmolLM2's template is ChatML");
    assert_eq!(
        tpl.default_system(),
        Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    );
    for chat in refs["chat"].as_array().unwrap() {
        let msgs: Vec<ChatMessage> = chat["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let agp = chat["add_generation_prompt"].as_bool().unwrap();
        let mut s = String::new();
        tpl.render(&msgs, agp, &mut s).unwrap();
        assert_eq!(s, chat["text"].as_str().unwrap());
        assert_eq!(enc(&tok, &s, true), ids_of(&chat["ids"]));
    }

    // Without parse_special, control tokens are plain text.
    let plain = enc(&tok, "<|im_start|>user", false);
    assert!(!plain.contains(&1) && plain.len() > 2, "{plain:?}");
    assert_eq!(tok.decode_to_string(&plain).unwrap(), "<|im_start|>user");
    // skip_special hides control tokens.
    let mut s = String::new();
    let mut dec = tok.decoder().skip_special(true);
    for id in enc(&tok, "<|im_start|>user\nhi<|im_end|>", true) {
        dec.push_to(id, &mut s).unwrap();
    }
    assert_eq!(s, "user\nhi");
}

#[test]
fn smollm2_long_pieces_use_the_output_tail_and_agree() {
    let Some(bytes) = smollm2_bytes() else { return };
    let g = Gguf::parse(&bytes).unwrap();
    let tok = Tokenizer::new_owned(&g).unwrap();
    let long = [
        "a".repeat(300),
        " ".repeat(500) + "x",
        "日本語のテキスト".repeat(20),
        "supercalifragilistic".repeat(10) + " tail",
        "!?".repeat(100),
    ];
    for text in &long {
        let want = enc(&tok, text, true);
        assert_eq!(tok.decode_to_string(&want).unwrap(), *text);
        // Every buffer size that succeeds gives the same ids; too small ones give BufferTooSmall.
        let mut smallest_ok = usize::MAX;
        for len in (0..=Tokenizer::encode_buf_len(text.len())).rev().step_by(7) {
            let mut out = vec![0u32; len];
            match tok.encode(text, true, &mut out) {
                Ok(n) => {
                    assert_eq!(&out[..n], &want[..], "len {len}");
                    smallest_ok = smallest_ok.min(len);
                }
                Err(e) => assert_eq!(e.kind(), ErrorKind::BufferTooSmall),
            }
        }
        assert!(smallest_ok < Tokenizer::encode_buf_len(text.len()));
    }
}

/// Encode throughput on SmolLM2 (a measurement, not a check):
/// `cargo test --release -p edgelora-tests --test tokenizer -- --ignored --nocapture encode_throughput`
#[test]
#[ignore]
fn encode_throughput() {
    let Some(bytes) = smollm2_bytes() else { return };
    let g = Gguf::parse(&bytes).unwrap();
    let t0 = std::time::Instant::now();
    let tok = Tokenizer::new_owned(&g).unwrap();
    println!("build: {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    let refs = json("smollm2_refs.json");
    let mut text = String::new();
    for case in refs["cases"].as_array().unwrap() {
        text.push_str(case["text"].as_str().unwrap());
        text.push('\n');
    }
    let text = text.repeat(200);
    let mut out = vec![0u32; text.len() + 16];
    let t0 = std::time::Instant::now();
    let mut tokens = 0;
    let reps = 5;
    for _ in 0..reps {
        tokens += tok.encode(&text, true, &mut out).unwrap();
    }
    let dt = t0.elapsed().as_secs_f64();
    println!(
        "encode: {} bytes -> {} tokens, {:.2} M tokens/s, {:.1} MB/s",
        text.len(),
        tokens / reps,
        tokens as f64 / dt / 1e6,
        (text.len() * reps) as f64 / dt / 1e6
    );
}

// -------------------------------------------------------------------------------------------
// tiny vocabularies against tokenizers / sentencepiece
// -------------------------------------------------------------------------------------------

#[test]
fn tiny_bpe_matches_tokenizers() {
    let refs = json("tiny_bpe_refs.json");
    let gpt2 = fixture("tiny_bpe.gguf");
    let smol = fixture("tiny_bpe_smollm.gguf");
    let (g1, g2) = (Gguf::parse(&gpt2).unwrap(), Gguf::parse(&smol).unwrap());
    let mut scratch1 = vec![0u32; Tokenizer::scratch_len(&g1).unwrap()];
    let t1 = Tokenizer::new(&g1, &mut scratch1[..]).unwrap();
    let t2 = Tokenizer::new_owned(&g2).unwrap();
    assert_eq!(
        t1.vocab_size(),
        refs["vocab_size"].as_u64().unwrap() as usize
    );
    assert_eq!(t1.merge_count(), refs["merges"].as_u64().unwrap() as usize);
    assert_eq!(
        t1.token_type(t1.token_id("<tool>").unwrap()).unwrap(),
        TokenType::UserDefined
    );
    let (mut n, mut ok1, mut ok2, mut bad) = (0, 0, 0, Vec::new());
    for case in refs["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        n += 1;
        let (a, b) = (enc(&t1, text, true), enc(&t2, text, true));
        let (ra, rb) = (ids_of(&case["ids"]), ids_of(&case["ids_digits"]));
        ok1 += (a == ra) as usize;
        ok2 += (b == rb) as usize;
        if a != ra || b != rb {
            bad.push(format!(
                "{text:?}: gpt2 {a:?} vs {ra:?}; smollm {b:?} vs {rb:?}"
            ));
        }
        assert_eq!(
            t1.decode_to_string(&ra).unwrap(),
            case["decoded"].as_str().unwrap()
        );
        assert_eq!(stream_decode(&t1, &a, false), text);
        assert_eq!(t2.decode_to_string(&b).unwrap(), text);
    }
    println!(
        "tiny BPE: {ok1}/{n} match tokenizers (GPT-2 regex), {ok2}/{n} (Digits + GPT-2 regex)"
    );
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    // User-defined tokens are matched even without parse_special; control tokens are not.
    let tool = t1.token_id("<tool>").unwrap();
    assert!(enc(&t1, "a<tool>b", false).contains(&tool));
    let ctl = t1.token_id("<|im_end|>").unwrap();
    assert!(!enc(&t1, "a<|im_end|>b", false).contains(&ctl));
    assert!(enc(&t1, "a<|im_end|>b", true).contains(&ctl));
}

#[test]
fn tiny_spm_matches_sentencepiece() {
    let refs = json("tiny_spm_refs.json");
    let bytes = fixture("tiny_spm.gguf");
    let g = Gguf::parse(&bytes).unwrap();
    let tok = Tokenizer::new_owned(&g).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::Spm);
    assert!(tok.add_bos() && tok.add_space_prefix());
    assert_eq!(tok.bos_id(), Some(refs["bos_id"].as_u64().unwrap() as u32));
    let (mut n, mut same_as_sp, mut llamacpp_rule) = (0, 0, 0);
    for case in refs["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let sp = ids_of(&case["ids"]);
        let want = case
            .get("ids_llamacpp")
            .map(ids_of)
            .unwrap_or_else(|| sp.clone());
        // Control tokens are not parsed: sentencepiece never matches them in text either.
        let ours = enc(&tok, text, false);
        assert_eq!(ours, want, "{text:?} ({:?})", case["pieces"]);
        n += 1;
        same_as_sp += (ours == sp) as usize;
        llamacpp_rule += case.get("ids_llamacpp").is_some() as usize;
        if !text.contains("<tool>") {
            assert_eq!(
                tok.decode_to_string(&sp).unwrap(),
                case["decoded"].as_str().unwrap(),
                "{text:?}"
            );
        }
        // Round trip, except where SentencePiece is lossy by design (a literal `▁` is a space).
        if !text.contains("<tool>") && !text.contains('▁') {
            assert_eq!(tok.decode_to_string(&ours).unwrap(), text);
            assert_eq!(stream_decode(&tok, &ours, true), text);
        }
    }
    println!(
        "tiny SPM: {n}/{n} match llama.cpp's rule; {same_as_sp}/{n} equal sentencepiece.encode \
         ({llamacpp_rule} differ by design: llama.cpp re-adds the space prefix after user-defined tokens)"
    );
    assert_eq!(same_as_sp + llamacpp_rule, n);
}

/// The tiny model's SentencePiece vocabulary (another fixture set, `tests/fixtures/tiny`), with
/// sentencepiece's ids for its strings.
#[test]
fn tiny_model_vocab_matches_sentencepiece() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tiny");
    let (Ok(bytes), Ok(cases)) = (
        std::fs::read(format!("{dir}/tiny-f32.gguf")),
        std::fs::read(format!("{dir}/tiny_spm_cases.json")),
    ) else {
        println!("SKIPPED: tests/fixtures/tiny/tiny-f32.gguf or tiny_spm_cases.json absent");
        return;
    };
    let refs: Value = serde_json::from_slice(&cases).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let tok = Tokenizer::new_owned(&g).unwrap();
    let mut n = 0;
    for case in refs["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(enc(&tok, text, false), ids_of(&case["ids"]), "{text:?}");
        assert_eq!(
            tok.decode_to_string(&ids_of(&case["ids"])).unwrap(),
            case["decoded"].as_str().unwrap()
        );
        n += 1;
    }
    println!("tiny model vocab: {n}/{n} match sentencepiece");
}

// -------------------------------------------------------------------------------------------
// malformed metadata
// -------------------------------------------------------------------------------------------

/// A metadata value for the GGUF builder below.
#[derive(Clone)]
enum V {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(Vec<u8>),
    Strs(Vec<Vec<u8>>),
    I32s(Vec<i32>),
    U32s(Vec<u32>),
    F32s(Vec<f32>),
}

fn s(x: &str) -> V {
    V::Str(x.as_bytes().to_vec())
}

fn strs<I: IntoIterator<Item = T>, T: AsRef<[u8]>>(it: I) -> V {
    V::Strs(it.into_iter().map(|t| t.as_ref().to_vec()).collect())
}

/// A GGUF v3 with metadata only.
fn build(kvs: &[(&str, V)]) -> Vec<u8> {
    fn string(b: &mut Vec<u8>, s: &[u8]) {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s);
    }
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        string(&mut b, k.as_bytes());
        match v {
            V::U32(x) => {
                b.extend(4u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            V::F32(x) => {
                b.extend(6u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            V::Bool(x) => {
                b.extend(7u32.to_le_bytes());
                b.push(*x as u8);
            }
            V::Str(x) => {
                b.extend(8u32.to_le_bytes());
                string(&mut b, x);
            }
            V::Strs(xs) => {
                b.extend(9u32.to_le_bytes());
                b.extend(8u32.to_le_bytes());
                b.extend((xs.len() as u64).to_le_bytes());
                xs.iter().for_each(|x| string(&mut b, x));
            }
            V::I32s(xs) => {
                b.extend(9u32.to_le_bytes());
                b.extend(5u32.to_le_bytes());
                b.extend((xs.len() as u64).to_le_bytes());
                xs.iter().for_each(|x| b.extend(x.to_le_bytes()));
            }
            V::U32s(xs) => {
                b.extend(9u32.to_le_bytes());
                b.extend(4u32.to_le_bytes());
                b.extend((xs.len() as u64).to_le_bytes());
                xs.iter().for_each(|x| b.extend(x.to_le_bytes()));
            }
            V::F32s(xs) => {
                b.extend(9u32.to_le_bytes());
                b.extend(6u32.to_le_bytes());
                b.extend((xs.len() as u64).to_le_bytes());
                xs.iter().for_each(|x| b.extend(x.to_le_bytes()));
            }
        }
    }
    b
}

/// GPT-2's byte alphabet, in byte order, as token texts.
fn byte_tokens() -> Vec<String> {
    let printable = |b: u8| matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            let cp = if printable(b) {
                b as u32
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(cp).unwrap().to_string()
        })
        .collect()
}

/// A small valid `gpt2` vocabulary: bytes, "he", "hel", "hell", "hello", a control token.
fn bpe_kvs() -> Vec<(&'static str, V)> {
    let mut toks = byte_tokens();
    toks.extend(["he", "ll", "hell", "hello", "<|eot|>"].map(String::from));
    let mut types = vec![1i32; toks.len()];
    *types.last_mut().unwrap() = 3;
    let n = toks.len() as u32;
    vec![
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("gpt2")),
        ("tokenizer.ggml.tokens", strs(&toks)),
        ("tokenizer.ggml.token_type", V::I32s(types)),
        (
            "tokenizer.ggml.merges",
            strs(["h e", "l l", "he ll", "hell o"]),
        ),
        ("tokenizer.ggml.eos_token_id", V::U32(n - 1)),
    ]
}

/// A small valid `llama` vocabulary.
fn spm_kvs() -> Vec<(&'static str, V)> {
    let mut toks: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    toks.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    toks.extend(["▁", "a", "b", "▁a", "ab", "▁ab"].map(String::from));
    let mut types = vec![2, 3, 3];
    types.extend(std::iter::repeat_n(6, 256));
    types.extend([1; 6]);
    let scores: Vec<f32> = (0..toks.len()).map(|i| -(i as f32)).collect();
    vec![
        ("tokenizer.ggml.model", s("llama")),
        ("tokenizer.ggml.tokens", strs(&toks)),
        ("tokenizer.ggml.token_type", V::I32s(types)),
        ("tokenizer.ggml.scores", V::F32s(scores)),
        ("tokenizer.ggml.bos_token_id", V::U32(1)),
        ("tokenizer.ggml.eos_token_id", V::U32(2)),
        ("tokenizer.ggml.unknown_token_id", V::U32(0)),
    ]
}

fn with(
    mut kvs: Vec<(&'static str, V)>,
    key: &'static str,
    v: Option<V>,
) -> Vec<(&'static str, V)> {
    kvs.retain(|(k, _)| *k != key);
    if let Some(v) = v {
        kvs.push((key, v));
    }
    kvs
}

fn build_err(kvs: &[(&str, V)]) -> edgelora::Error {
    let bytes = build(kvs);
    let g = Gguf::parse(&bytes).unwrap();
    let e1 = Tokenizer::scratch_len(&g).and_then(|n| Tokenizer::new(&g, vec![0u32; n]).map(|_| ()));
    let e2 = Tokenizer::new_owned(&g).map(|_| ());
    assert_eq!(e1, e2);
    e1.expect_err("malformed metadata must be rejected")
}

#[test]
fn valid_small_vocabularies_work() {
    let bytes = build(&bpe_kvs());
    let g = Gguf::parse(&bytes).unwrap();
    let tok = Tokenizer::new_owned(&g).unwrap();
    let hello = tok.token_id("hello").unwrap();
    assert_eq!(enc(&tok, "hello", false), [hello]);
    assert_eq!(
        tok.decode_to_string(&enc(&tok, "hello, hell!", false))
            .unwrap(),
        "hello, hell!"
    );
    // The control token is matched only with parse_special.
    let eot = tok.token_id("<|eot|>").unwrap();
    assert_eq!(enc(&tok, "<|eot|>", true), [eot]);
    assert_eq!(enc(&tok, "<|eot|>", false).len(), 7);
    assert!(tok.is_eog(eot));
    assert!(!tok.add_bos());
    let bytes = build(&with(
        bpe_kvs(),
        "tokenizer.ggml.add_bos_token",
        Some(V::Bool(true)),
    ));
    assert!(Tokenizer::new_owned(&Gguf::parse(&bytes).unwrap())
        .unwrap()
        .add_bos());

    let bytes = build(&spm_kvs());
    let g = Gguf::parse(&bytes).unwrap();
    let tok = Tokenizer::new_owned(&g).unwrap();
    let id = |t: &str| tok.token_id(t).unwrap();
    assert_eq!(enc(&tok, "ab", false), [id("▁ab")]);
    assert_eq!(enc(&tok, "a b", false), [id("▁a"), id("▁"), id("b")]);
    // Byte fallback for characters that are no token: "é" = C3 A9.
    assert_eq!(enc(&tok, "é", false), [id("▁"), id("<0xC3>"), id("<0xA9>")]);
    assert_eq!(
        tok.decode_to_string(&enc(&tok, "é ab\n", false)).unwrap(),
        "é ab\n"
    );
    // The space prefix comes back after a special token.
    assert_eq!(enc(&tok, "a</s>a", true), [id("▁a"), 2, id("▁a")]);
}

/// A SentencePiece vocabulary with a token that continues past a space ("b▁") must be merged
/// over whole fragments, not cut at spaces.
#[test]
fn spm_token_across_a_space_is_found() {
    let toks = ["<unk>", "▁", "a", "b", "b▁", "▁a", "▁ab"];
    let scores = vec![0.0, -10.0, -10.0, -10.0, -1.0, -2.0, -3.0];
    let kvs = vec![
        ("tokenizer.ggml.model", s("llama")),
        ("tokenizer.ggml.tokens", strs(toks)),
        (
            "tokenizer.ggml.token_type",
            V::I32s(vec![2, 1, 1, 1, 1, 1, 1]),
        ),
        ("tokenizer.ggml.scores", V::F32s(scores)),
        ("tokenizer.ggml.unknown_token_id", V::U32(0)),
    ];
    let bytes = build(&kvs);
    let g = Gguf::parse(&bytes).unwrap();
    let tok = Tokenizer::new_owned(&g).unwrap();
    // "▁ab▁b": "b▁" (best score) first, then "▁a"; "▁ab" never gets its chance.
    assert_eq!(enc(&tok, "ab b", false), [5, 4, 3]);
    // Unknown characters (no byte tokens here) become <unk>.
    assert_eq!(enc(&tok, "a\u{e9}", false), [5, 0]);
}

#[test]
fn malformed_metadata_gives_typed_errors() {
    let model = "tokenizer.ggml.model";
    let tokens = "tokenizer.ggml.tokens";
    let types = "tokenizer.ggml.token_type";
    let merges = "tokenizer.ggml.merges";
    let scores = "tokenizer.ggml.scores";
    let check = |kvs: Vec<(&'static str, V)>, kind: ErrorKind, key: &str| {
        let e = build_err(&kvs);
        assert_eq!(e.kind(), kind, "{e}");
        assert_eq!(e.name().as_bytes(), key.as_bytes(), "{e}");
        println!("ok: {e}");
    };
    let bpe = bpe_kvs;
    let spm = spm_kvs;
    // Missing and mistyped keys.
    check(with(bpe(), model, None), ErrorKind::MissingKey, model);
    check(
        with(bpe(), model, Some(V::U32(2))),
        ErrorKind::WrongType,
        model,
    );
    check(
        with(bpe(), model, Some(s("wordpiece"))),
        ErrorKind::BadValue,
        model,
    );
    check(
        with(bpe(), "tokenizer.ggml.pre", Some(s("no-such-pre"))),
        ErrorKind::BadValue,
        "tokenizer.ggml.pre",
    );
    check(
        with(bpe(), "tokenizer.ggml.pre", Some(V::U32(1))),
        ErrorKind::WrongType,
        "tokenizer.ggml.pre",
    );
    check(with(bpe(), tokens, None), ErrorKind::MissingKey, tokens);
    check(
        with(bpe(), tokens, Some(V::U32s(vec![1, 2, 3]))),
        ErrorKind::WrongType,
        tokens,
    );
    check(
        with(bpe(), tokens, Some(s("abc"))),
        ErrorKind::WrongType,
        tokens,
    );
    check(
        with(bpe(), tokens, Some(V::Strs(vec![]))),
        ErrorKind::BadValue,
        tokens,
    );
    check(
        with(bpe(), types, Some(V::F32s(vec![1.0; 261]))),
        ErrorKind::WrongType,
        types,
    );
    check(
        with(bpe(), types, Some(V::I32s(vec![1; 5]))),
        ErrorKind::BadValue,
        types,
    );
    let mut bad_types = vec![1i32; 261];
    bad_types[7] = 9;
    check(
        with(bpe(), types, Some(V::I32s(bad_types))),
        ErrorKind::BadValue,
        types,
    );
    check(with(bpe(), merges, None), ErrorKind::MissingKey, merges);
    check(
        with(bpe(), merges, Some(V::I32s(vec![1]))),
        ErrorKind::WrongType,
        merges,
    );
    check(
        with(bpe(), merges, Some(strs(["h e", "q zz"]))),
        ErrorKind::BadValue,
        merges,
    );
    check(
        with(bpe(), merges, Some(strs(["h e", "he"]))),
        ErrorKind::BadValue,
        merges,
    );
    check(
        with(bpe(), merges, Some(strs(["h "]))),
        ErrorKind::BadValue,
        merges,
    );
    check(
        with(bpe(), merges, Some(strs(["e h"]))),
        ErrorKind::BadValue,
        merges,
    ); // "eh" not a token
    check(
        with(bpe(), "tokenizer.ggml.eos_token_id", Some(V::U32(9999))),
        ErrorKind::BadValue,
        "tokenizer.ggml.eos_token_id",
    );
    check(
        with(bpe(), "tokenizer.ggml.bos_token_id", Some(V::F32(1.0))),
        ErrorKind::WrongType,
        "tokenizer.ggml.bos_token_id",
    );
    check(
        with(bpe(), "tokenizer.ggml.add_bos_token", Some(V::U32(1))),
        ErrorKind::WrongType,
        "tokenizer.ggml.add_bos_token",
    );
    let mut bad_utf8: Vec<Vec<u8>> = byte_tokens().into_iter().map(String::into_bytes).collect();
    bad_utf8.extend([
        b"he".to_vec(),
        b"ll".to_vec(),
        b"hell".to_vec(),
        b"hello".to_vec(),
        vec![0xff, 0xfe],
    ]);
    check(
        with(bpe(), tokens, Some(V::Strs(bad_utf8))),
        ErrorKind::InvalidUtf8,
        tokens,
    );
    check(
        with(spm(), scores, Some(V::F32s(vec![0.0; 3]))),
        ErrorKind::BadValue,
        scores,
    );
    check(
        with(spm(), scores, Some(V::I32s(vec![0; 265]))),
        ErrorKind::WrongType,
        scores,
    );
    check(
        with(spm(), "tokenizer.ggml.add_space_prefix", Some(s("yes"))),
        ErrorKind::WrongType,
        "tokenizer.ggml.add_space_prefix",
    );
    let mut bad_byte: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    bad_byte.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    bad_byte[100] = "<0xZZ>".into();
    bad_byte.extend(["▁", "a", "b", "▁a", "ab", "▁ab"].map(String::from));
    check(
        with(spm(), tokens, Some(strs(&bad_byte))),
        ErrorKind::BadValue,
        tokens,
    );

    // Errors point at the offending element.
    let e = build_err(&with(bpe(), merges, Some(strs(["h e", "q zz"]))));
    assert_eq!(e.details(), Some((1, 2)));
    assert!(e.offset().is_some());

    // Scratch too small.
    let bytes = build(&bpe_kvs());
    let g = Gguf::parse(&bytes).unwrap();
    let need = Tokenizer::scratch_len(&g).unwrap();
    let e = Tokenizer::new(&g, vec![0u32; need - 1]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BufferTooSmall);
    assert_eq!(e.details(), Some((need as u64, need as u64 - 1)));
    assert!(
        Tokenizer::new(&g, [0u32; 4096]).is_ok(),
        "a larger scratch is fine"
    );
}

#[test]
fn out_of_range_ids_and_small_buffers() {
    let bytes = fixture("tiny_bpe.gguf");
    let g = Gguf::parse(&bytes).unwrap();
    let tok = Tokenizer::new_owned(&g).unwrap();
    let n = tok.vocab_size() as u32;
    for bad in [n, n + 1, u32::MAX] {
        assert_eq!(
            tok.token_text(bad).unwrap_err().kind(),
            ErrorKind::TokenOutOfRange
        );
        assert_eq!(
            tok.token_type(bad).unwrap_err().kind(),
            ErrorKind::TokenOutOfRange
        );
        assert_eq!(
            tok.decode_token_into(bad, &mut [0u8; 64])
                .unwrap_err()
                .kind(),
            ErrorKind::TokenOutOfRange
        );
        let mut dec = tok.decoder();
        assert_eq!(
            dec.push(bad, &mut [0u8; 64]).unwrap_err().kind(),
            ErrorKind::TokenOutOfRange
        );
        assert_eq!(
            dec.push_to(bad, &mut String::new()).unwrap_err().kind(),
            ErrorKind::TokenOutOfRange
        );
        assert_eq!(
            tok.decode_to_string(&[0, bad]).unwrap_err().kind(),
            ErrorKind::TokenOutOfRange
        );
    }
    // Output too small.
    let ids = enc(&tok, "The lighthouse keeper counted the ships.", false);
    for len in 0..ids.len() {
        let mut out = vec![0u32; len];
        let e = tok
            .encode("The lighthouse keeper counted the ships.", false, &mut out)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BufferTooSmall);
    }
    let mut tmp = [0u8; 64];
    let id = *ids
        .iter()
        .find(|&&i| tok.decode_token_into(i, &mut tmp).unwrap() > 1)
        .unwrap();
    let mut small = [0u8; 1];
    assert_eq!(
        tok.decode_token_into(id, &mut small).unwrap_err().kind(),
        ErrorKind::BufferTooSmall
    );
    let mut dec = tok.decoder();
    assert_eq!(
        dec.push(id, &mut small).unwrap_err().kind(),
        ErrorKind::BufferTooSmall
    );
    // The failed push left the decoder unchanged.
    let mut big = [0u8; 64];
    let k = dec.push(id, &mut big).unwrap();
    let r = tok.decode_token_into(id, &mut tmp).unwrap();
    assert_eq!(&big[..k], &tmp[..r]);
}

// -------------------------------------------------------------------------------------------
// robustness
// -------------------------------------------------------------------------------------------

/// SplitMix64, for reproducible random inputs.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn fuzz<S: AsRef<[u32]>>(tok: &Tokenizer<'_, S>, seed: u64, rounds: usize) {
    let mut rng = Rng(seed);
    let pieces: [&[u8]; 12] = [
        b" ",
        b"  ",
        b"\n",
        b"<|im_start|>",
        b"<tool>",
        b"\xe2\x96\x81",
        b"\xf0\x9f\x99\x82",
        b"a",
        b"7",
        b"'s",
        b"\xff",
        b"\xc3",
    ];
    for _ in 0..rounds {
        let n = (rng.next() % 200) as usize;
        let mut raw = Vec::with_capacity(n);
        while raw.len() < n {
            if rng.next().is_multiple_of(3) {
                raw.extend_from_slice(pieces[(rng.next() % 12) as usize]);
            } else {
                raw.push(rng.next() as u8);
            }
        }
        let text = String::from_utf8_lossy(&raw);
        for special in [false, true] {
            let full = enc(tok, &text, special);
            assert!(full.iter().all(|&id| (id as usize) < tok.vocab_size()));
            // Every output size either fits or says BufferTooSmall, never panics.
            let len = (rng.next() % (full.len() as u64 + 2)) as usize;
            let mut out = vec![0u32; len];
            match tok.encode(&text, special, &mut out) {
                Ok(k) => assert_eq!(&out[..k], &full[..]),
                Err(e) => assert_eq!(e.kind(), ErrorKind::BufferTooSmall),
            }
            if !special && !text.contains("<tool>") {
                let spm = tok.kind() == TokenizerKind::Spm;
                if spm && !text.contains('▁') {
                    assert_eq!(stream_decode(tok, &full, true), text, "round trip");
                } else if !spm {
                    // Bytes the vocabulary has no token for are dropped (as HF and llama.cpp do).
                    let alphabet = byte_tokens();
                    let kept: Vec<u8> = text
                        .bytes()
                        .filter(|&b| tok.token_id(&alphabet[b as usize]).is_some())
                        .collect();
                    assert_eq!(
                        stream_decode(tok, &full, false),
                        String::from_utf8_lossy(&kept),
                        "round trip"
                    );
                }
            }
        }
        // Random ids, some out of range: typed errors only.
        let mut dec = tok.decoder();
        let mut buf = [0u8; 8];
        for _ in 0..20 {
            let id = (rng.next() % (tok.vocab_size() as u64 + 10)) as u32;
            match dec.push(id, &mut buf) {
                Ok(_) => {}
                Err(e) => assert!(
                    matches!(
                        e.kind(),
                        ErrorKind::TokenOutOfRange | ErrorKind::BufferTooSmall
                    ),
                    "{e}"
                ),
            }
            let _ = tok.decode_token_into(id, &mut buf);
        }
        let _ = dec.finish(&mut buf);
    }
}

#[test]
fn random_input_never_panics() {
    for name in [
        "tiny_bpe.gguf",
        "tiny_bpe_smollm.gguf",
        "tiny_llama3_bpe.gguf",
        "tiny_qwen2_bpe.gguf",
        "tiny_spm.gguf",
    ] {
        let bytes = fixture(name);
        let g = Gguf::parse(&bytes).unwrap();
        let tok = Tokenizer::new_owned(&g).unwrap();
        fuzz(&tok, 11, 400);
    }
    for kvs in [bpe_kvs(), spm_kvs()] {
        let bytes = build(&kvs);
        let g = Gguf::parse(&bytes).unwrap();
        fuzz(&Tokenizer::new_owned(&g).unwrap(), 12, 200);
    }
    // A SentencePiece vocabulary without byte tokens: unknown characters become <unk>.
    let mut kvs = spm_kvs();
    let keep: Vec<usize> = (0..265).filter(|&i| !(3..259).contains(&i)).collect();
    for (k, v) in kvs.iter_mut() {
        *v = match (*k, v.clone()) {
            ("tokenizer.ggml.tokens", V::Strs(t)) => {
                V::Strs(keep.iter().map(|&i| t[i].clone()).collect())
            }
            ("tokenizer.ggml.token_type", V::I32s(t)) => {
                V::I32s(keep.iter().map(|&i| t[i]).collect())
            }
            ("tokenizer.ggml.scores", V::F32s(t)) => V::F32s(keep.iter().map(|&i| t[i]).collect()),
            (_, v) => v,
        };
    }
    let bytes = build(&kvs);
    let g = Gguf::parse(&bytes).unwrap();
    let tok = Tokenizer::new_owned(&g).unwrap();
    assert_eq!(enc(&tok, "aé", false), [tok.token_id("▁a").unwrap(), 0]);
}

#[test]
fn random_input_never_panics_smollm2() {
    let Some(bytes) = smollm2_bytes() else { return };
    let g = Gguf::parse(&bytes).unwrap();
    let tok = Tokenizer::new_owned(&g).unwrap();
    fuzz(&tok, 13, 300);
}

#[test]
fn arbitrary_gguf_bytes_never_panic() {
    // Mutate a valid tokenizer GGUF; whatever still parses must give a tokenizer or an error.
    let base = fixture("tiny_spm.gguf");
    let mut rng = Rng(5);
    for _ in 0..300 {
        let mut b = base.clone();
        for _ in 0..(1 + rng.next() % 4) {
            let i = (rng.next() % b.len() as u64) as usize;
            b[i] = rng.next() as u8;
        }
        let Ok(g) = Gguf::parse(&b) else { continue };
        if let Ok(tok) = Tokenizer::new_owned(&g) {
            let _ = tok.encode("hello world <tool> é", true, &mut [0u32; 64]);
            let _ = tok.decode_to_string(&[0, 1, 2, 300, 5000]);
        }
    }
}
