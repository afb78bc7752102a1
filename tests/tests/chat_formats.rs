//! Built-in chat formats against llama.cpp's own (`chat_refs.json`, from
//! `tests/fixtures/tokenizer/gen_chat_refs.py`), and the choice of format from metadata.
//!
//! The CLI's Jinja renderer (minijinja) is checked against jinja2 on the same fixture in
//! `targets/host/src/chat_template.rs`.

use edgelora::format::gguf::Gguf;
use edgelora::format::gguf_write::{GgufWriter, OwnedValue};
use edgelora::tokenizer::{ChatFormat, ChatMessage, ChatTemplate, Tokenizer};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tokenizer");
const MODELS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models");

fn refs() -> Value {
    let b = std::fs::read(format!("{FIXTURES}/chat_refs.json")).unwrap();
    serde_json::from_slice(&b).unwrap()
}

fn messages(v: &Value) -> Vec<ChatMessage<'_>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

#[test]
fn builtin_formats_match_llama_cpp() {
    let refs = refs();
    let mut n = 0;
    for r in refs["builtin"].as_array().unwrap() {
        let format = match r["format"].as_str().unwrap() {
            "chatml" => ChatFormat::ChatMl,
            "gemma" => ChatFormat::Gemma,
            "llama3" => ChatFormat::Llama3,
            other => panic!("unknown format {other}"),
        };
        assert_eq!(format.name(), r["format"].as_str().unwrap());
        let t = ChatTemplate::builtin(format);
        let msgs = messages(&r["messages"]);
        let gen = r["add_generation_prompt"].as_bool().unwrap();
        let mut s = String::new();
        t.render(&msgs, gen, &mut s).unwrap();
        assert_eq!(s, r["text"].as_str().unwrap(), "{format:?} {msgs:?} {gen}");
        let mut buf = vec![0u8; s.len()];
        assert_eq!(t.render_into(&msgs, gen, &mut buf).unwrap(), s.len());
        assert_eq!(buf, s.as_bytes());
        n += 1;
    }
    println!("built-in chat formats: {n}/{n} renders equal llama.cpp's");
    assert_eq!(n, 30);
}

/// A vocabulary-only GGUF with the given extra tokens and metadata.
fn vocab_file(arch: &str, tokens: &[&str], extra: &[(&str, OwnedValue)]) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set("general.architecture", OwnedValue::Str(arch.into()));
    w.set("tokenizer.ggml.model", OwnedValue::Str("llama".into()));
    let mut toks: Vec<String> = (0u8..=255).map(|b| format!("<0x{b:02X}>")).collect();
    toks.extend(tokens.iter().map(|t| t.to_string()));
    w.set(
        "tokenizer.ggml.tokens",
        OwnedValue::Array(toks.into_iter().map(OwnedValue::Str).collect()),
    );
    for (k, v) in extra {
        w.set(k, v.clone());
    }
    w.to_bytes()
}

fn chosen(bytes: &[u8]) -> Option<ChatFormat> {
    let g = Gguf::parse(bytes).unwrap();
    let tok = Tokenizer::new_owned(&g).unwrap();
    ChatTemplate::for_model(&g, |t| tok.token_id(t).is_some())
        .unwrap()
        .map(|t| t.format())
}

#[test]
fn format_chosen_from_metadata() {
    // Gemma layout without a template (as the real Gemma 3 270M file): the architecture decides.
    let gemma = std::fs::read(format!("{FIXTURES}/tiny_gemma_spm.gguf")).unwrap();
    assert_eq!(chosen(&gemma), Some(ChatFormat::Gemma));
    // Special tokens decide for an unknown architecture.
    let t = vocab_file("llama", &["<start_of_turn>", "<end_of_turn>"], &[]);
    assert_eq!(chosen(&t), Some(ChatFormat::Gemma));
    let t = vocab_file(
        "llama",
        &["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        &[],
    );
    assert_eq!(chosen(&t), Some(ChatFormat::Llama3));
    let t = vocab_file(
        "llama",
        &[],
        &[("tokenizer.ggml.pre", OwnedValue::Str("llama-bpe".into()))],
    );
    assert_eq!(chosen(&t), Some(ChatFormat::Llama3));
    let t = vocab_file("qwen2", &["<|im_start|>", "<|im_end|>"], &[]);
    assert_eq!(chosen(&t), Some(ChatFormat::ChatMl));
    // Nothing to go on: no format is guessed (in particular not ChatML).
    let t = vocab_file("llama", &["<s>", "</s>"], &[]);
    assert_eq!(chosen(&t), None);
    // A template wins over metadata; an unrecognised template falls back to metadata.
    let t = vocab_file(
        "gemma3",
        &[],
        &[(
            "tokenizer.chat_template",
            OwnedValue::Str("{{ '<|im_start|>' + m.role }}".into()),
        )],
    );
    assert_eq!(chosen(&t), Some(ChatFormat::ChatMl));
    let t = vocab_file(
        "gemma3",
        &[],
        &[(
            "tokenizer.chat_template",
            OwnedValue::Str("{{ '[INST]' }}".into()),
        )],
    );
    assert_eq!(chosen(&t), Some(ChatFormat::Gemma));
}

#[test]
fn real_files_choose_their_format() {
    for (file, want) in [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", ChatFormat::ChatMl),
        ("gemma-3-270m-q4_k_m.gguf", ChatFormat::Gemma),
    ] {
        let path = format!("{MODELS}/{file}");
        let Ok(bytes) = std::fs::read(&path) else {
            println!("SKIPPED: {path} is absent (edgelora fetch)");
            continue;
        };
        assert_eq!(chosen(&bytes), Some(want), "{file}");
    }
}
