//! Constrained output (`edgelora::constrain`): the JSON automaton against `serde_json` (a
//! parser this project did not write), schema enforcement on the intent task's schema, the
//! depth bound, random input that must never panic, and the token-trie mask against trying
//! every token one by one.
//!
//! `mask_time` (ignored; `cargo test --release -p edgelora-tests --test constrain -- --ignored
//! --nocapture mask_time`) measures the per-token mask time on SmolLM2 and Gemma 3.

use edgelora::constrain::{compile, JsonState, Schema, TokenTrie, MAX_DEPTH};
use edgelora::format::gguf::Gguf;
use edgelora::tokenizer::Tokenizer;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn intent_schema() -> Vec<u8> {
    let text =
        std::fs::read_to_string(format!("{ROOT}/targets/trainer/intent.schema.json")).unwrap();
    compile(&text).unwrap()
}

/// Feed `text` byte by byte: `Some(complete)` if every byte was accepted.
fn run(schema: &Schema<'_>, max_ws: u8, text: &[u8]) -> Option<bool> {
    let mut s = JsonState::new(schema, max_ws);
    for &b in text {
        if !s.step(schema, b) {
            return None;
        }
    }
    Some(s.is_complete(schema))
}

fn accepts(schema: &Schema<'_>, text: &str) -> bool {
    run(schema, 4, text.as_bytes()) == Some(true)
}

#[test]
fn valid_json_is_accepted_and_invalid_rejected() {
    let any = Schema::any_value();
    for ok in [
        "{}",
        "[]",
        "0",
        "-0",
        "1.5e+3",
        "-12.25E-2",
        "true",
        "false",
        "null",
        "\"\"",
        r#""a\"b\\c\/\b\f\n\r\tz\u00e9\uD7FF""#,
        "\"caf\u{e9} \u{1F600}\"",
        r#"{"a":[1,2,{"b":null}],"c":"d"}"#,
        "[ 1 , [ ] , { } ]",
        " {\"a\" : 1 }",
        "[[[[[]]]]]",
        "123",
        "[true,false,null]",
    ] {
        assert!(accepts(&any, ok), "{ok:?}");
        serde_json::from_str::<serde_json::Value>(ok).unwrap();
    }
    for bad in [
        "{,}",
        "[1,]",
        "{\"a\":1,}",
        "01",
        "1.",
        ".5",
        "-",
        "1e",
        "+1",
        "tru",
        "nul",
        "[1 2]",
        "{\"a\" 1}",
        "{1:2}",
        "\"\\x\"",
        "\"\\u12\"",
        "\"\\uD800\"",
        "\"a\nb\"",
        "\"\u{1}\"",
        "[}",
        "{]",
        "}",
        "]",
        "[1]]",
        "{} {}",
        "\"abc",
        "NaN",
        "Infinity",
    ] {
        assert!(!accepts(&any, bad), "{bad:?}");
    }
    // Bytes that are never UTF-8 inside a string, and a truncated character.
    assert_eq!(run(&any, 0, b"\"\xff\""), None);
    assert_eq!(run(&any, 0, b"\"\xc3\""), None);
    assert_eq!(run(&any, 0, b"\"\xed\xa0\x80\""), None); // a surrogate in UTF-8
    assert_eq!(run(&any, 0, b"\"\xc3\xa9\""), Some(true));
    // Whitespace runs are limited.
    assert_eq!(run(&any, 1, b"{ \"a\":1}"), Some(true));
    assert_eq!(run(&any, 1, b"{  \"a\":1}"), None);
    assert_eq!(run(&any, 0, b"{ }"), None);
    // json_object: objects only.
    let obj = Schema::any_object();
    assert!(accepts(&obj, "{\"x\":[1,\"y\"]}"));
    assert!(!accepts(&obj, "[1]"));
    assert!(!accepts(&obj, "\"s\""));
    // Nothing follows a complete top-level value.
    let mut s = JsonState::new(&obj, 1);
    assert!(s.advance(&obj, b"{}"));
    assert!(s.is_done() && s.is_complete(&obj));
    assert!(!s.advance(&obj, b" "));
}

#[test]
fn depth_is_bounded() {
    let any = Schema::any_value();
    let deep = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
    assert!(accepts(&any, &deep));
    let too_deep = "[".repeat(MAX_DEPTH + 1);
    assert_eq!(run(&any, 0, too_deep.as_bytes()), None);
    let objs = "{\"a\":".repeat(MAX_DEPTH) + "1" + &"}".repeat(MAX_DEPTH);
    assert!(accepts(&any, &objs));
}

#[test]
fn intent_schema_enforces_keys_order_enums_and_types() {
    let table = intent_schema();
    let schema = Schema::from_bytes(&table).unwrap();
    let gold =
        std::fs::read_to_string(format!("{ROOT}/targets/trainer/data/intent/test.jsonl")).unwrap();
    let mut n = 0;
    for line in gold.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let out = v["output"].as_str().unwrap();
        assert_eq!(run(&schema, 0, out.as_bytes()), Some(true), "{out}");
        n += 1;
    }
    assert_eq!(n, 200);
    for ok in [
        r#"{"action":"on","device":"fan"}"#,
        r#"{ "action": "timer", "device": "timer", "value": 90 }"#,
        r#"{"action":"set","device":"tv","room":"guest room","value":-3}"#,
    ] {
        assert!(accepts(&schema, ok), "{ok}");
    }
    for bad in [
        r#"{"device":"fan","action":"on"}"#,                // order
        r#"{"action":"on"}"#,                               // device is required
        r#"{"action":"jump","device":"fan"}"#,              // not in the enum
        r#"{"action":"on","device":"fan","value":1.5}"#,    // integer
        r#"{"action":"on","device":"fan","value":"1"}"#,    // type
        r#"{"action":"on","device":"fan","colour":"red"}"#, // no other keys
        r#"{"action":"on","device":"fan","value":1,"room":"office"}"#, // order
        r#"{"action":"on","device":"fan","room":"attic"}"#,
        r#"["action"]"#,
    ] {
        assert!(!accepts(&schema, bad), "{bad}");
    }
}

#[test]
fn schema_features_and_errors() {
    let schema_of = |s: &str| compile(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    let t = schema_of(
        r##"{"$defs":{"P":{"type":"object","properties":{"n":{"type":"string"},"kids":{"type":"array","items":{"$ref":"#/$defs/P"},"maxItems":2}},"required":["n"]}},
            "type":"object","properties":{"root":{"$ref":"#/$defs/P"},"x":{"type":["integer","null"]},"b":{"type":"boolean"},"k":{"const":{"a":[1]}},
            "l":{"type":"array","items":{"type":"number"},"minItems":1}},"required":["root","x","b","k","l"]}"##,
    );
    let s = Schema::from_bytes(&t).unwrap();
    assert!(accepts(
        &s,
        r#"{"root":{"n":"a","kids":[{"n":"b"},{"n":"c","kids":[]}]},"x":null,"b":true,"k":{"a":[1]},"l":[1.5]}"#
    ));
    assert!(accepts(
        &s,
        r#"{"root":{"n":"a"},"x":7,"b":false,"k":{"a":[1]},"l":[0,1]}"#
    ));
    for bad in [
        r#"{"root":{"n":"a","kids":[{"n":"b"},{"n":"c"},{"n":"d"}]},"x":null,"b":true,"k":{"a":[1]},"l":[1]}"#, // maxItems
        r#"{"root":{"n":"a"},"x":null,"b":true,"k":{"a":[1]},"l":[]}"#, // minItems
        r#"{"root":{"n":"a"},"x":"s","b":true,"k":{"a":[1]},"l":[1]}"#,
        r#"{"root":{"n":"a"},"x":null,"b":1,"k":{"a":[1]},"l":[1]}"#,
        r#"{"root":{"n":"a"},"x":null,"b":true,"k":{"a":[2]},"l":[1]}"#,
        r#"{"root":{"kids":[]},"x":null,"b":true,"k":{"a":[1]},"l":[1]}"#,
    ] {
        assert!(!accepts(&s, bad), "{bad}");
    }
    // Number enums whose spellings are prefixes of each other end at the next byte.
    let t = schema_of(r#"{"type":"array","items":{"enum":[1,12,"x"]}}"#);
    let s = Schema::from_bytes(&t).unwrap();
    assert!(accepts(&s, "[1,12,\"x\",1]"));
    assert!(!accepts(&s, "[13]"));
    assert!(!accepts(&s, "[123]"));
    // A top-level number is complete while it could still go on.
    let t = schema_of(r#"{"type":"integer"}"#);
    let s = Schema::from_bytes(&t).unwrap();
    assert_eq!(run(&s, 0, b"12"), Some(true));
    assert_eq!(run(&s, 0, b"-"), Some(false));
    for bad in [
        "",
        "{",
        r#"{"allOf":[]}"#,
        r#"{"type":"thing"}"#,
        r##"{"$ref":"#/$defs/none"}"##,
        r#"{"enum":[]}"#,
        r#"{"type":"object","properties":{"a":{}},"required":["b"]}"#,
        r##"{"$defs":{"A":{"$ref":"#/$defs/A"}},"$ref":"#/$defs/A"}"##,
    ] {
        assert!(compile(bad).is_err(), "{bad}");
    }
    assert!(compile("{}").is_ok());
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_value(r: &mut Rng, depth: usize) -> serde_json::Value {
    use serde_json::Value as V;
    match r.below(if depth > 4 { 5 } else { 7 }) {
        0 => V::Null,
        1 => V::Bool(r.below(2) == 0),
        2 => serde_json::json!(r.next() as i64 >> r.below(60)),
        3 => serde_json::json!(
            (r.next() as f64 / u64::MAX as f64 - 0.5) * 10f64.powi(r.below(30) as i32 - 15)
        ),
        4 => {
            let alphabet = ['a', 'é', '"', '\\', '\n', '\u{1}', '😀', ' ', '/', '\u{7f}'];
            V::String(
                (0..r.below(6))
                    .map(|_| alphabet[r.below(10) as usize])
                    .collect(),
            )
        }
        5 => V::Array(
            (0..r.below(4))
                .map(|_| random_value(r, depth + 1))
                .collect(),
        ),
        _ => V::Object(
            (0..r.below(4))
                .map(|i| (format!("k{i}"), random_value(r, depth + 1)))
                .collect(),
        ),
    }
}

#[test]
fn random_json_agrees_with_serde_json_and_never_panics() {
    let any = Schema::any_value();
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    // Everything serde_json writes (compact and pretty) is accepted.
    for _ in 0..2000 {
        let v = random_value(&mut r, 0);
        let compact = serde_json::to_string(&v).unwrap();
        assert_eq!(run(&any, 0, compact.as_bytes()), Some(true), "{compact}");
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        assert_eq!(run(&any, 255, pretty.as_bytes()), Some(true), "{pretty}");
    }
    // Mutated documents and random bytes: whatever the automaton accepts as complete,
    // serde_json parses; nothing panics.
    let table = intent_schema();
    let intent = Schema::from_bytes(&table).unwrap();
    let alphabet = b"{}[]:,\"\\ \n01-+.eEtrufalsn\x80\xc3\xa9\xffaxu";
    let mut accepted = 0;
    for i in 0..60_000 {
        let mut bytes: Vec<u8> = if i % 2 == 0 {
            serde_json::to_string(&random_value(&mut r, 0))
                .unwrap()
                .into_bytes()
        } else {
            (0..r.below(24))
                .map(|_| alphabet[r.below(alphabet.len() as u64) as usize])
                .collect()
        };
        for _ in 0..r.below(3) {
            if bytes.is_empty() {
                break;
            }
            let at = r.below(bytes.len() as u64) as usize;
            match r.below(3) {
                0 => bytes[at] = alphabet[r.below(alphabet.len() as u64) as usize],
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, alphabet[r.below(alphabet.len() as u64) as usize]),
            }
        }
        for schema in [&any, &intent] {
            if run(schema, 2, &bytes) == Some(true) {
                accepted += 1;
                assert!(
                    serde_json::from_slice::<serde_json::Value>(&bytes).is_ok(),
                    "accepted but not JSON: {:?}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
    }
    assert!(accepted > 1000, "{accepted}");
    // Random tables never panic the reader or the automaton.
    for _ in 0..20_000 {
        let mut t = table.clone();
        for _ in 0..1 + r.below(4) {
            let at = r.below(t.len() as u64) as usize;
            t[at] = r.next() as u8;
        }
        t.truncate(r.below(t.len() as u64 + 1) as usize + 8.min(t.len()));
        if let Ok(s) = Schema::from_bytes(&t) {
            let _ = run(
                &s,
                1,
                br#"{"action":"set","device":"tv","room":"office","value":3}"#,
            );
        }
    }
}

fn tiny_tokenizer_bytes() -> Vec<u8> {
    std::fs::read(format!("{ROOT}/models/tiny/tiny-base.gguf")).unwrap()
}

/// The trie's mask equals trying every token on its own, along a schema-valid output and at
/// states inside strings, numbers and enums.
#[test]
fn trie_mask_equals_trying_every_token() {
    let bytes = tiny_tokenizer_bytes();
    let g = Gguf::parse(&bytes).unwrap();
    let tok = Tokenizer::new_owned(&g).unwrap();
    let trie = TokenTrie::build(&tok, vec![0u32; TokenTrie::<Vec<u32>>::words_for(&tok)]).unwrap();
    let table = intent_schema();
    let intent = Schema::from_bytes(&table).unwrap();
    let any = Schema::any_value();
    let v = tok.vocab_size();
    let mut stack = vec![JsonState::new(&any, 0); trie.max_depth() + 1];
    let mut mask = vec![0u32; v.div_ceil(32)];
    let mut buf = [0u8; 256];
    let texts: [(&Schema<'_>, &[u8]); 2] = [
        (
            &intent,
            br#"{"action":"set","device":"light","room":"living room","value":40}"#,
        ),
        (
            &any,
            b"[\"caf\xc3\xa9 \\u00e9\", -1.5e3, {\"k\": [true, null]}, \"\"]",
        ),
    ];
    let mut checked = 0;
    for (schema, text) in texts {
        let mut state = JsonState::new(schema, 1);
        for cut in 0..=text.len() {
            if cut > 0 {
                assert!(state.step(schema, text[cut - 1]));
            }
            let n = trie
                .fill_mask(schema, &state, tok.eog_ids(), &mut stack, &mut mask)
                .unwrap();
            let mut want = 0;
            for id in 0..v as u32 {
                let len = tok.decode_token_into(id, &mut buf).unwrap();
                let allowed = if tok.is_eog(id) {
                    state.is_complete(schema)
                } else {
                    let ty = tok.token_type(id).unwrap();
                    use edgelora::tokenizer::TokenType as T;
                    matches!(ty, T::Normal | T::Undefined | T::UserDefined | T::Byte)
                        && len > 0
                        && state.clone().advance(schema, &buf[..len])
                };
                assert_eq!(
                    edgelora::constrain::mask_allows(&mask, id),
                    allowed,
                    "token {id} {:?} after {:?}",
                    String::from_utf8_lossy(&buf[..len]),
                    String::from_utf8_lossy(&text[..cut])
                );
                want += allowed as usize;
            }
            assert_eq!(n, want);
            assert!(
                n > 0,
                "nothing allowed after {:?}",
                String::from_utf8_lossy(&text[..cut])
            );
            checked += 1;
        }
    }
    assert!(checked > 100);
    // A stored trie reads back.
    let again = TokenTrie::from_words(trie.words()).unwrap();
    assert_eq!(again.node_count(), trie.node_count());
    let mut w = trie.words().to_vec();
    w[4 + 1] = u32::MAX; // a token id out of range
    assert!(TokenTrie::from_words(&w[..]).is_err());
}

/// The same on the real vocabularies (byte-level BPE and 262 144-token SentencePiece with
/// many non-ASCII tokens), at states inside strings (between characters, inside a UTF-8
/// sequence and an escape), keys, numbers and structure.
#[test]
fn trie_mask_equals_trying_every_token_on_real_vocabularies() {
    for name in [
        "SmolLM2-135M-Instruct.Q4_K_M.gguf",
        "gemma-3-270m-q4_k_m.gguf",
    ] {
        let path = format!("{ROOT}/models/{name}");
        let Ok(file) = std::fs::File::open(&path) else {
            println!("SKIPPED: {path} is absent");
            continue;
        };
        // SAFETY: read-only private mapping of a file nobody modifies during the test.
        let m = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let g = Gguf::parse(&m).unwrap();
        let tok = Tokenizer::new_owned(&g).unwrap();
        let trie =
            TokenTrie::build(&tok, vec![0u32; TokenTrie::<Vec<u32>>::words_for(&tok)]).unwrap();
        let any = Schema::any_value();
        let mut stack = vec![JsonState::new(&any, 0); trie.max_depth() + 1];
        let mut mask = vec![0u32; tok.vocab_size().div_ceil(32)];
        let mut buf = [0u8; 256];
        let prefixes: [&[u8]; 9] = [
            b"",
            b"{\"",
            b"{\"k\": \"caf",
            b"{\"k\": \"caf\xc3",
            b"{\"k\": \"\xe6\x97",
            b"{\"k\": \"a\\",
            b"{\"k\": \"a\\u00",
            b"[1",
            b"{\"k\": \"x\", ",
        ];
        for pre in prefixes {
            let mut state = JsonState::new(&any, 1);
            assert!(state.advance(&any, pre), "{pre:?}");
            trie.fill_mask(&any, &state, tok.eog_ids(), &mut stack, &mut mask)
                .unwrap();
            let mut n = 0;
            for id in 0..tok.vocab_size() as u32 {
                let len = tok.decode_token_into(id, &mut buf).unwrap_or(usize::MAX);
                let want = if tok.is_eog(id) {
                    state.is_complete(&any)
                } else {
                    use edgelora::tokenizer::TokenType as T;
                    matches!(
                        tok.token_type(id).unwrap(),
                        T::Normal | T::Undefined | T::UserDefined | T::Byte
                    ) && (1..=edgelora::constrain::MAX_TOKEN_BYTES).contains(&len)
                        && state.clone().advance(&any, &buf[..len])
                };
                assert_eq!(
                    edgelora::constrain::mask_allows(&mask, id),
                    want,
                    "{name}: token {id} after {pre:?}"
                );
                n += want as usize;
            }
            println!(
                "{name}: {n} tokens allowed after {:?}",
                String::from_utf8_lossy(pre)
            );
        }
    }
}

fn mask_time_for(path: &str) {
    let Ok(file) = std::fs::File::open(path) else {
        println!("SKIPPED: {path} is absent");
        return;
    };
    // SAFETY: read-only private mapping of a file nobody modifies during the test.
    let m = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let g = Gguf::parse(&m).unwrap();
    let tok = Tokenizer::new_owned(&g).unwrap();
    let t0 = std::time::Instant::now();
    let trie = TokenTrie::build(&tok, vec![0u32; TokenTrie::<Vec<u32>>::words_for(&tok)]).unwrap();
    let build = t0.elapsed();
    let table = intent_schema();
    let intent = Schema::from_bytes(&table).unwrap();
    let any = Schema::any_object();
    let mut stack = vec![JsonState::new(&any, 0); trie.max_depth() + 1];
    let mut mask = vec![0u32; tok.vocab_size().div_ceil(32)];
    let cases: [(&str, &Schema<'_>, &[u8]); 2] = [
        (
            "intent schema",
            &intent,
            br#"{"action":"set","device":"light","room":"living room","value":40}"#,
        ),
        (
            "json_object",
            &any,
            br#"{"name": "a free string of text here", "n": [1, 2.5, true]}"#,
        ),
    ];
    println!(
        "{path}: {} tokens, trie {} nodes ({:.1} MB) built in {:.0} ms",
        tok.vocab_size(),
        trie.node_count(),
        trie.used_words() as f64 * 4e-6,
        build.as_secs_f64() * 1e3
    );
    for (name, schema, text) in cases {
        let mut state = JsonState::new(schema, 1);
        let (mut total, mut worst, mut steps) = (0.0f64, 0.0f64, 0);
        for cut in 0..=text.len() {
            if cut > 0 {
                assert!(state.step(schema, text[cut - 1]));
            }
            let t = std::time::Instant::now();
            let reps = 3;
            for _ in 0..reps {
                trie.fill_mask(schema, &state, tok.eog_ids(), &mut stack, &mut mask)
                    .unwrap();
            }
            let dt = t.elapsed().as_secs_f64() / reps as f64;
            total += dt;
            worst = worst.max(dt);
            steps += 1;
        }
        println!(
            "  {name}: mean {:.3} ms, worst {:.3} ms per token over {steps} states",
            total / steps as f64 * 1e3,
            worst * 1e3
        );
    }
}

#[test]
#[ignore = "timing; run with --release --ignored --nocapture"]
fn mask_time() {
    mask_time_for(&format!("{ROOT}/models/SmolLM2-135M-Instruct.Q4_K_M.gguf"));
    mask_time_for(&format!("{ROOT}/models/gemma-3-270m-q4_k_m.gguf"));
    mask_time_for(&format!("{ROOT}/models/tiny/tiny-base.gguf"));
}
