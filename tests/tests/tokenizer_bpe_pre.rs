//! The Llama 3 (`llama-bpe`) and Qwen2 (`qwen2`) pre-tokenisers against Hugging Face
//! `tokenizers`, with llama.cpp as a second reference.
//!
//! `tests/fixtures/tokenizer/gen_bpe_pre_refs.py` trains a small byte-level BPE vocabulary for
//! each with `tokenizers` (the `Split` regex, `ByteLevel` and `ignore_merges` settings of the real
//! `tokenizer.json` files), writes it as a GGUF (`tiny_llama3_bpe.gguf`, `tiny_qwen2_bpe.gguf`)
//! and records, for a few hundred strings, `tokenizers`' ids and decode and llama.cpp's ids for
//! the same GGUF (`bpe_pre_refs.json`). Here every string must give `tokenizers`' ids; where
//! llama.cpp differs the fixture lists it, and the test checks that list is what it says.

use edgelora::format::gguf::Gguf;
use edgelora::format::gguf_write::{GgufWriter, OwnedValue};
use edgelora::tokenizer::{
    ChatFormat, ChatMessage, ChatTemplate, PreTokenizer, TokenType, Tokenizer, TokenizerKind,
};
use edgelora::ErrorKind;
use serde_json::Value;

mod common;
use common::{enc, json_u32s, stream_decode};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tokenizer");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn refs() -> Value {
    serde_json::from_slice(&fixture("bpe_pre_refs.json")).unwrap()
}

/// Every string: `tokenizers`' ids with `parse_special`, llama.cpp's without it where the two
/// references agree, both decodes, and a lossless round trip.
fn check_against_refs(name: &str, pre: PreTokenizer) {
    let refs = refs();
    let r = &refs[name];
    let bytes = fixture(r["gguf"].as_str().unwrap());
    let g = Gguf::parse(&bytes).unwrap();
    let tok = Tokenizer::new_owned(&g).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::Bpe);
    assert_eq!(tok.pre_tokenizer(), pre);
    assert_eq!(tok.vocab_size() as u64, r["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.merge_count() as u64, r["merges"].as_u64().unwrap());

    let disagreements: Vec<&str> = r["disagreements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let (mut n, mut hf_ok, mut llama_ok, mut plain_n, mut nfc) = (0, 0, 0, 0, 0);
    let mut failures = Vec::new();
    for case in r["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let hf = json_u32s(&case["ids"]);
        let ours = enc(&tok, text, true);
        n += 1;
        if ours == hf {
            hf_ok += 1;
        } else {
            failures.push(format!("{text:?}: ours {ours:?}, tokenizers {hf:?}"));
        }
        let llama = case
            .get("ids_llamacpp")
            .map_or_else(|| hf.clone(), json_u32s);
        llama_ok += (ours == llama) as usize;
        assert_eq!(
            llama != hf,
            disagreements.contains(&text),
            "{text:?}: the fixture's disagreement list is stale"
        );
        nfc += case.get("ids_nfc").is_some() as usize;
        // Without parse_special, control tokens are text (llama.cpp's special=false).
        if !disagreements.contains(&text) {
            let plain = case.get("ids_plain").map_or(llama, json_u32s);
            assert_eq!(
                enc(&tok, text, false),
                plain,
                "{text:?} without parse_special"
            );
            plain_n += 1;
        }
        // Decode: tokenizers' decode of its ids, and our ids back to the text (every byte has a
        // token in these vocabularies).
        let decoded = case["decoded"].as_str().unwrap();
        assert_eq!(tok.decode_to_string(&hf).unwrap(), decoded, "{text:?}");
        assert_eq!(stream_decode(&tok, &hf), decoded, "{text:?}");
        assert_eq!(tok.decode_to_string(&ours).unwrap(), text, "{text:?}");
        assert_eq!(
            stream_decode(&tok, &enc(&tok, text, false)),
            text,
            "{text:?}"
        );
    }
    println!(
        "{name}: {hf_ok}/{n} strings give tokenizers' ids, {llama_ok}/{n} llama.cpp's \
         ({} disagreements between the references: {disagreements:?}); {plain_n} checked without \
         parse_special; {nfc} that Qwen2's NFC normaliser would change (not applied: llama.cpp does not)",
        disagreements.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(n >= 300);
}

#[test]
fn llama3_matches_tokenizers() {
    check_against_refs("llama3", PreTokenizer::Llama3);
}

#[test]
fn qwen2_matches_tokenizers() {
    check_against_refs("qwen2", PreTokenizer::Qwen2);
}

#[test]
fn special_tokens_and_bos_rules() {
    let refs = refs();
    // Llama 3: no add_bos_token key, so llama.cpp's default for llama-bpe (true).
    let bytes = fixture("tiny_llama3_bpe.gguf");
    let g = Gguf::parse(&bytes).unwrap();
    assert!(g.get("tokenizer.ggml.add_bos_token").is_none());
    let l3 = Tokenizer::new_owned(&g).unwrap();
    let id = |t: &str| l3.token_id(t).unwrap();
    assert!(l3.add_bos());
    assert!(refs["llama3"]["add_bos_llamacpp"].as_bool().unwrap());
    assert_eq!(l3.bos_id(), Some(id("<|begin_of_text|>")));
    assert_eq!(
        vec![l3.bos_id().unwrap()],
        json_u32s(&refs["llama3"]["bos"])
    );
    assert_eq!(l3.eos_id(), Some(id("<|eot_id|>")));
    for t in [
        "<|begin_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ] {
        assert_eq!(l3.token_type(id(t)).unwrap(), TokenType::Control, "{t}");
    }
    // End of generation: EOS, and the texts llama.cpp treats as such.
    for t in ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"] {
        assert!(l3.is_eog(id(t)), "{t}");
    }
    assert!(!l3.is_eog(id("<|start_header_id|>")));
    let prompt = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>";
    let ids = enc(&l3, prompt, true);
    assert_eq!(ids[0], id("<|start_header_id|>"));
    assert_eq!(ids[ids.len() - 1], id("<|eot_id|>"));
    assert!(!enc(&l3, prompt, false).contains(&id("<|eot_id|>")));

    // Qwen2: add_bos_token=false; <tool_call> is user-defined, so matched even without
    // parse_special; <|im_end|> and <|endoftext|> end generation.
    let bytes = fixture("tiny_qwen2_bpe.gguf");
    let g = Gguf::parse(&bytes).unwrap();
    let q = Tokenizer::new_owned(&g).unwrap();
    let id = |t: &str| q.token_id(t).unwrap();
    assert!(!q.add_bos());
    assert!(!refs["qwen2"]["add_bos_llamacpp"].as_bool().unwrap());
    assert_eq!(q.eos_id(), Some(id("<|im_end|>")));
    assert!(q.is_eog(id("<|im_end|>")) && q.is_eog(id("<|endoftext|>")));
    assert!(!q.is_eog(id("<|im_start|>")));
    assert_eq!(
        q.token_type(id("<tool_call>")).unwrap(),
        TokenType::UserDefined
    );
    assert_eq!(enc(&q, "<tool_call>", false), [id("<tool_call>")]);
    assert_eq!(enc(&q, "<|im_start|>", true), [id("<|im_start|>")]);
    assert!(enc(&q, "<|im_start|>", false).len() > 1);

    // Without the key, a Qwen2 vocabulary has no BOS either; with it, Llama 3's can say false.
    let no_key = rewrite(&fixture("tiny_qwen2_bpe.gguf"), |k| {
        k != "tokenizer.ggml.add_bos_token"
    });
    assert!(!Tokenizer::new_owned(&Gguf::parse(&no_key).unwrap())
        .unwrap()
        .add_bos());
    let mut w = copy(&fixture("tiny_llama3_bpe.gguf"), |_| true);
    w.set("tokenizer.ggml.add_bos_token", OwnedValue::Bool(false));
    let b = w.to_bytes();
    assert!(!Tokenizer::new_owned(&Gguf::parse(&b).unwrap())
        .unwrap()
        .add_bos());
}

/// `ignore_merges`: Llama 3 takes a piece that is a token whole, Qwen2 merges it.
#[test]
fn ignore_merges_is_llama3_only() {
    let whole = "Ġsupercalifragilisticexpialidocious";
    let text = " supercalifragilisticexpialidocious";
    let l3b = fixture("tiny_llama3_bpe.gguf");
    let l3 = Tokenizer::new_owned(&Gguf::parse(&l3b).unwrap()).unwrap();
    assert_eq!(enc(&l3, text, false), [l3.token_id(whole).unwrap()]);
    let qb = fixture("tiny_qwen2_bpe.gguf");
    let q = Tokenizer::new_owned(&Gguf::parse(&qb).unwrap()).unwrap();
    assert!(q.token_id(whole).is_some());
    assert!(enc(&q, text, false).len() > 1);
    // The same vocabulary read as Qwen2 (no ignore_merges) merges the piece.
    let mut w = copy(&l3b, |_| true);
    w.set("tokenizer.ggml.pre", OwnedValue::Str("qwen2".into()));
    let b = w.to_bytes();
    let as_qwen = Tokenizer::new_owned(&Gguf::parse(&b).unwrap()).unwrap();
    assert!(enc(&as_qwen, text, false).len() > 1);
    assert!(!as_qwen.add_bos());
}

/// Unknown `tokenizer.ggml.pre` values are refused by name, as before.
#[test]
fn unknown_pre_is_a_typed_error() {
    for pre in ["qwen35", "gpt-4o", "tekken", "LLAMA-BPE", ""] {
        let mut w = copy(&fixture("tiny_llama3_bpe.gguf"), |_| true);
        w.set("tokenizer.ggml.pre", OwnedValue::Str(pre.into()));
        let b = w.to_bytes();
        let g = Gguf::parse(&b).unwrap();
        let e = Tokenizer::new_owned(&g).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadValue, "{pre:?}");
        assert!(e.to_string().contains("tokenizer.ggml.pre"), "{e}");
        assert_eq!(Tokenizer::scratch_len(&g).unwrap_err(), e);
    }
}

/// The chat templates in the fixtures (Llama 3 Instruct's, Qwen2 Instruct's) select the core's
/// built-in formats, whose renders, with BOS as an id where the vocabulary asks for one, give the
/// text and ids of `transformers`' `apply_chat_template` with those templates.
#[test]
fn builtin_chat_formats_match_transformers() {
    let refs = refs();
    let mut n = 0;
    for (name, format) in [
        ("llama3", ChatFormat::Llama3),
        ("qwen2", ChatFormat::ChatMl),
    ] {
        let bytes = fixture(refs[name]["gguf"].as_str().unwrap());
        let g = Gguf::parse(&bytes).unwrap();
        let tok = Tokenizer::new_owned(&g).unwrap();
        let t = ChatTemplate::from_gguf(&g).unwrap().unwrap();
        assert_eq!(t.format(), format);
        assert_eq!(
            ChatTemplate::for_model(&g, |x| tok.token_id(x).is_some()).unwrap(),
            Some(t)
        );
        for r in refs[name]["chat"].as_array().unwrap() {
            let msgs: Vec<ChatMessage<'_>> = r["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap())
                })
                .collect();
            let gen = r["add_generation_prompt"].as_bool().unwrap();
            let mut s = String::new();
            t.render(&msgs, gen, &mut s).unwrap();
            let mut ids = Vec::new();
            let mut want = r["text"].as_str().unwrap();
            if tok.add_bos() {
                let bos = tok.bos_id().unwrap();
                ids.push(bos);
                let bos_text = std::str::from_utf8(tok.token_text(bos).unwrap()).unwrap();
                want = want
                    .strip_prefix(bos_text)
                    .expect("the template writes BOS");
            }
            assert_eq!(s, want, "{name} {msgs:?} {gen}");
            ids.extend(enc(&tok, &s, true));
            assert_eq!(ids, json_u32s(&r["ids"]), "{name} {msgs:?} {gen}");
            n += 1;
        }
    }
    println!("{n}/{n} chat renders (Llama 3, Qwen2) equal transformers' apply_chat_template");
    assert_eq!(n, 20);
}

/// A writer holding the metadata of `bytes` whose keys pass `keep` (the fixtures have no
/// tensors).
fn copy(bytes: &[u8], keep: impl Fn(&str) -> bool) -> GgufWriter {
    let g = Gguf::parse(bytes).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        if keep(k) {
            w.set(k, OwnedValue::from_value(&v));
        }
    }
    w
}

fn rewrite(bytes: &[u8], keep: impl Fn(&str) -> bool) -> Vec<u8> {
    copy(bytes, keep).to_bytes()
}

/// The real Llama 3 and Qwen2 vocabularies (128 256 / 151 936 tokens) that llama.cpp ships for
/// its tokenizer test, `models/ggml-vocab-{llama-bpe,qwen2}.gguf`, against the ids beside them
/// (`.gguf.out`, written by `convert_hf_to_gguf_update.py` with the models' own Hugging Face
/// tokenizers for the strings in `.gguf.inp`). The files are llama.cpp's (7.8 and 5.9 MB, not
/// committed): point `EDGELORA_LLAMA_CPP_MODELS` at that folder (llama-cpp-python 0.3.36's sdist
/// has it under `vendor/llama.cpp/models`); without it the test prints SKIPPED.
#[test]
fn real_vocabularies_match_llama_cpp_test_files() {
    let Some(dir) = std::env::var_os("EDGELORA_LLAMA_CPP_MODELS") else {
        println!(
            "SKIPPED: set EDGELORA_LLAMA_CPP_MODELS to llama.cpp's models/ folder \
             (ggml-vocab-llama-bpe.gguf, ggml-vocab-qwen2.gguf and their .inp/.out)"
        );
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    for (name, pre, n_vocab) in [
        ("llama-bpe", PreTokenizer::Llama3, 128_256),
        ("qwen2", PreTokenizer::Qwen2, 151_936),
    ] {
        let path = dir.join(format!("ggml-vocab-{name}.gguf"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let inp = std::fs::read_to_string(path.with_extension("gguf.inp")).unwrap();
        let out = std::fs::read_to_string(path.with_extension("gguf.out")).unwrap();
        let g = Gguf::parse(&bytes).unwrap();
        let tok = Tokenizer::new_owned(&g).unwrap();
        assert_eq!(tok.pre_tokenizer(), pre);
        assert_eq!(tok.vocab_size(), n_vocab);
        // llama.cpp's test-tokenizer-0 format: tests separated by "\n__ggml_vocab_test__\n"
        // (also after the last), one line of ids per test.
        let texts: Vec<&str> = inp
            .strip_suffix("\n__ggml_vocab_test__\n")
            .unwrap()
            .split("\n__ggml_vocab_test__\n")
            .collect();
        let want: Vec<Vec<u32>> = out
            .lines()
            .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
            .collect();
        assert_eq!(texts.len(), want.len());
        let mut ok = 0;
        for (text, want) in texts.iter().zip(&want) {
            let ours = enc(&tok, text, false);
            assert_eq!(&ours, want, "{name} {text:?}");
            assert_eq!(tok.decode_to_string(&ours).unwrap(), *text);
            ok += 1;
        }
        println!(
            "{name}: {ok}/{} strings give the model's own Hugging Face ids ({} tokens, {} merges, \
             add_bos {}, scratch {} words)",
            texts.len(),
            tok.vocab_size(),
            tok.merge_count(),
            tok.add_bos(),
            Tokenizer::scratch_len(&g).unwrap()
        );

        // llama.cpp's ids for the 364 strings of bpe_pre_refs.json with this vocabulary
        // (real_vocab_refs.json, ids only): equal except where llama.cpp's splitter differs
        // from the regex (see the README: `'ſ`, letters new in Unicode 16).
        let refs: Value = serde_json::from_slice(&fixture("real_vocab_refs.json")).unwrap();
        let (mut n, mut same) = (0, 0);
        let mut differ = Vec::new();
        for case in refs[name]["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let ids = json_u32s(&case["ids"]);
            let ours = enc(&tok, text, true);
            n += 1;
            if ours == ids {
                same += 1;
            } else {
                let known = text.contains('\u{17f}') || text.contains('\u{1e5d0}');
                assert!(known, "{name} {text:?}: ours {ours:?}, llama.cpp {ids:?}");
                differ.push(text);
            }
            let plain = case.get("ids_plain").map_or(ids, json_u32s);
            if ours == json_u32s(&case["ids"]) {
                assert_eq!(enc(&tok, text, false), plain, "{name} {text:?}");
            }
            assert_eq!(tok.decode_to_string(&ours).unwrap(), text);
        }
        println!(
            "{name}: {same}/{n} strings give llama.cpp's ids; the others differ where llama.cpp's \
             splitter does: {differ:?}"
        );
    }
}
