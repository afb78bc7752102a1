//! Gemma 3's SentencePiece tokenizer against llama.cpp.
//!
//! - The real Gemma 3 270M vocabulary (262,144 tokens, byte fallback, no space prefix, BOS
//!   added, `<start_of_turn>`/`<end_of_turn>` control tokens, newline and space runs as
//!   user-defined tokens): ids from llama.cpp on the same file, `gemma3_refs.json`. It needs
//!   `models/gemma-3-270m-q4_k_m.gguf` (`edgelora fetch gemma3-270m`; Gemma Terms of Use, never
//!   committed) and prints `SKIPPED` without it: CI does not fetch it.
//! - Always: a synthetic vocabulary laid out with Gemma's settings (`tiny_gemma_spm.gguf`, no
//!   Gemma data), with llama.cpp's ids for it.
//!
//! Both fixtures come from `tests/fixtures/tokenizer/gen_gemma_refs.py`.

use edgelora::format::gguf::Gguf;
use edgelora::tokenizer::{TokenType, Tokenizer, TokenizerKind};
use serde_json::Value;

mod common;
use common::{enc, json_u32s, stream_decode};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tokenizer");
const GEMMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/gemma-3-270m-q4_k_m.gguf"
);

fn json(name: &str) -> Value {
    let b = std::fs::read(format!("{FIXTURES}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_slice(&b).unwrap()
}

/// Figures of one comparison run.
#[derive(Default, Debug)]
struct Tally {
    strings: usize,
    ids_special: usize,
    ids_plain: usize,
    decoded: usize,
    round_trips: usize,
    round_trip_checked: usize,
    failures: Vec<String>,
}

/// Compare every case of a llama.cpp reference file: ids with and without special-token
/// parsing, llama.cpp's detokenisation, and the text round trip.
fn compare<S: AsRef<[u32]>>(tok: &Tokenizer<'_, S>, refs: &Value) -> Tally {
    let mut t = Tally::default();
    for case in refs["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = json_u32s(&case["ids"]);
        let want_plain = case
            .get("ids_plain")
            .map_or_else(|| want.clone(), json_u32s);
        t.strings += 1;
        let ours = enc(tok, text, true);
        if ours == want {
            t.ids_special += 1;
        } else {
            t.failures.push(format!(
                "special {text:?}: ours {ours:?} llama.cpp {want:?}"
            ));
        }
        let plain = enc(tok, text, false);
        if plain == want_plain {
            t.ids_plain += 1;
        } else {
            t.failures.push(format!(
                "plain {text:?}: ours {plain:?} llama.cpp {want_plain:?}"
            ));
        }
        let decoded = tok.decode_to_string(&want).unwrap();
        if decoded == case["decoded"].as_str().unwrap() {
            t.decoded += 1;
        } else {
            t.failures.push(format!(
                "decode {want:?}: ours {decoded:?} llama.cpp {:?}",
                case["decoded"]
            ));
        }
        // A literal `▁` reads back as a space (SentencePiece's escape), so only texts without
        // it must come back byte for byte, through both decoders.
        if !text.contains('\u{2581}') {
            t.round_trip_checked += 1;
            let back = tok.decode_to_string(&ours).unwrap();
            let streamed = stream_decode(tok, &ours);
            if back == text && streamed == text {
                t.round_trips += 1;
            } else {
                t.failures.push(format!(
                    "round trip {text:?}: {back:?} / streamed {streamed:?}"
                ));
            }
        }
    }
    t
}

fn check_gemma_settings<S: AsRef<[u32]>>(tok: &Tokenizer<'_, S>, refs: &Value) {
    assert_eq!(tok.kind(), TokenizerKind::Spm);
    assert!(tok.add_bos(), "Gemma's add_bos_token is true");
    assert!(!tok.add_space_prefix(), "Gemma's add_space_prefix is false");
    assert_eq!(tok.bos_id(), Some(json_u32s(&refs["bos"])[0]));
    let sot = tok.token_id("<start_of_turn>").unwrap();
    let eot = tok.token_id("<end_of_turn>").unwrap();
    assert_eq!(tok.token_type(sot).unwrap(), TokenType::Control);
    assert!(tok.is_eog(eot) && tok.is_eog(tok.eos_id().unwrap()) && !tok.is_eog(sot));
    // Control tokens are text unless parse_special; user-defined newline runs always match.
    assert_eq!(enc(tok, "<start_of_turn>", true), vec![sot]);
    assert_ne!(enc(tok, "<start_of_turn>", false), vec![sot]);
    let nl = tok.token_id("\n").unwrap();
    assert_eq!(tok.token_type(nl).unwrap(), TokenType::UserDefined);
    assert_eq!(enc(tok, "\n", false), vec![nl]);
    // Byte fallback: a character with no piece becomes its UTF-8 bytes as `<0xXX>` tokens.
    let b = enc(tok, "\u{10fffd}", false);
    assert_eq!(b.len(), 4);
    for id in &b {
        assert_eq!(tok.token_type(*id).unwrap(), TokenType::Byte);
    }
    assert_eq!(tok.decode_to_string(&b).unwrap(), "\u{10fffd}");
}

fn report(name: &str, t: &Tally) {
    println!(
        "{name}: {} strings; ids (special) {}/{}, ids (plain) {}/{}, llama.cpp decode {}/{}, \
         round trip {}/{}; {} mismatches",
        t.strings,
        t.ids_special,
        t.strings,
        t.ids_plain,
        t.strings,
        t.decoded,
        t.strings,
        t.round_trips,
        t.round_trip_checked,
        t.failures.len()
    );
    assert!(t.failures.is_empty(), "{}", t.failures.join("\n"));
}

#[test]
fn gemma3_270m_matches_llama_cpp() {
    let Ok(file) = std::fs::File::open(GEMMA) else {
        println!(
            "SKIPPED: {GEMMA} is absent (CI does not fetch it); run \
             `cargo run --release -p edgelora-cli -- fetch gemma3-270m`"
        );
        return;
    };
    // SAFETY: read-only private mapping of a file nobody modifies during the test.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let words = Tokenizer::scratch_len(&g).unwrap();
    let t0 = std::time::Instant::now();
    let tok = Tokenizer::new_owned(&g).unwrap();
    println!(
        "Gemma 3 tokenizer: scratch {words} words = {:.1} MB, built in {:.1} ms",
        words as f64 * 4.0 / 1e6,
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(tok.vocab_size(), 262_144);
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.unk_id()),
        (Some(2), Some(1), Some(3))
    );
    assert_eq!(tok.token_id("<start_of_turn>"), Some(105));
    assert_eq!(tok.token_id("<end_of_turn>"), Some(106));
    let refs = json("gemma3_refs.json");
    check_gemma_settings(&tok, &refs);
    report("Gemma 3 270M vs llama.cpp", &compare(&tok, &refs));
}

#[test]
fn synthetic_gemma_layout_matches_llama_cpp() {
    let bytes = std::fs::read(format!("{FIXTURES}/tiny_gemma_spm.gguf")).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let tok = Tokenizer::new_owned(&g).unwrap();
    let refs = json("tiny_gemma_spm_refs.json");
    assert_eq!(
        tok.vocab_size() as u64,
        refs["vocab_size"].as_u64().unwrap()
    );
    check_gemma_settings(&tok, &refs);
    report(
        "synthetic Gemma-layout SPM vs llama.cpp",
        &compare(&tok, &refs),
    );
}
