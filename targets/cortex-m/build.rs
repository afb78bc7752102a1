//! Sizes every static buffer from the assets that go into flash, picks the board's linker
//! script, and tells `include_bytes!` where the assets are.
//!
//! The asset list is `assets/manifest.txt` (shared with the host test). Buffer sizes come from
//! the same pure functions the core uses at run time (`State::len_for`,
//! `Tokenizer::scratch_len`, `Adapter::slots_len`), so the statics are exactly as large as
//! needed and the RAM budget is known at link time: no heap is needed.

use edgelora::lora::Adapter;
use edgelora::model::{Model, State};
use edgelora::tokenizer::Tokenizer;
use edgelora::Gguf;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = here.join("../..").canonicalize().unwrap();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());

    // Board: one linker script each, chosen by the one `board-*` feature (an386 if none).
    const BOARDS: [&str; 3] = ["an386", "an500", "an547"];
    let on: Vec<&str> = BOARDS
        .into_iter()
        .filter(|b| std::env::var_os(format!("CARGO_FEATURE_BOARD_{}", b.to_uppercase())).is_some())
        .collect();
    let board = match on[..] {
        [] => "an386",
        [b] => b,
        _ => panic!("board features are mutually exclusive, got {on:?}"),
    };
    let mem = here.join("memory").join(format!("{board}.x"));
    std::fs::copy(&mem, out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed={}", mem.display());

    let manifest = here.join("assets/manifest.txt");
    println!("cargo:rerun-if-changed={}", manifest.display());
    let m = read_manifest(&manifest);
    let path = |k: &str| -> PathBuf {
        let p = root.join(m.get(k).unwrap_or_else(|| panic!("manifest lacks `{k}`")));
        println!("cargo:rerun-if-changed={}", p.display());
        p
    };
    let num = |k: &str| -> usize {
        m[k].parse()
            .unwrap_or_else(|_| panic!("manifest `{k}` is not a number"))
    };
    let (base_p, a_p, b_p, w_p) = (
        path("base"),
        path("adapter_a"),
        path("adapter_b"),
        path("adapter_wrong_base"),
    );
    for (env, p) in [
        ("EL_BASE", &base_p),
        ("EL_ADAPTER_A", &a_p),
        ("EL_ADAPTER_B", &b_p),
        ("EL_ADAPTER_WRONG", &w_p),
    ] {
        println!("cargo:rustc-env={env}={}", p.display());
    }

    let base = std::fs::read(&base_p).unwrap();
    let g = Gguf::parse(&base).expect("base model");
    let model: Model<'_> = Model::from_gguf(&g).expect("base model");
    let cfg = *model.config();
    let ctx = num("ctx");
    let n_gen = num("n_gen");
    let prompt = &m["prompt"];
    let state = State::checked_len_for(&cfg, ctx).expect("state size");
    let tok_words = Tokenizer::scratch_len(&g).expect("tokenizer");
    let mut stream = 0;
    for p in [&a_p, &b_p] {
        let bytes = std::fs::read(p).unwrap();
        Adapter::parse(&bytes).expect("adapter");
        stream = stream.max(bytes.len());
    }

    let mut s = String::new();
    writeln!(s, "/// Prompt generated from in every run.").unwrap();
    writeln!(s, "pub const PROMPT: &str = {prompt:?};").unwrap();
    writeln!(
        s,
        "/// Tokens generated per run.\npub const N_GEN: usize = {n_gen};"
    )
    .unwrap();
    writeln!(
        s,
        "/// Context the state is sized for.\npub const CTX: usize = {ctx};"
    )
    .unwrap();
    writeln!(s, "/// Layers of the model in flash (`Model<'_, MAX_LAYERS>`).\npub const MAX_LAYERS: usize = {};", cfg.n_layers).unwrap();
    writeln!(
        s,
        "/// `State::len_for(cfg, CTX)` f32 values.\npub const STATE_F32S: usize = {state};"
    )
    .unwrap();
    writeln!(
        s,
        "/// `Tokenizer::scratch_len` u32 words.\npub const TOK_WORDS: usize = {tok_words};"
    )
    .unwrap();
    writeln!(
        s,
        "/// `Adapter::slots_len` per bound adapter.\npub const SLOTS: usize = {};",
        Adapter::slots_len(&cfg)
    )
    .unwrap();
    writeln!(s, "/// Receive buffer for a streamed adapter (the larger flash adapter).\npub const STREAM_BYTES: usize = {};", stream.next_multiple_of(32)).unwrap();
    writeln!(
        s,
        "/// Prompt id capacity (`Tokenizer::encode_buf_len`).\npub const PROMPT_CAP: usize = {};",
        Tokenizer::encode_buf_len(prompt.len())
    )
    .unwrap();
    writeln!(
        s,
        "/// Board this image was linked for.\npub const BOARD: &str = {board:?};"
    )
    .unwrap();
    std::fs::write(out.join("config.rs"), s).unwrap();
}

fn read_manifest(p: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(p).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("manifest line without `=`: {l}"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}
