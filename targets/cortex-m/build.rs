//! Sizes every static buffer from the assets that go into flash, picks the board's linker
//! script, and tells `include_bytes!` where the assets are. Shared by `targets/riscv`
//! (`build = "../cortex-m/build.rs"`), so every firmware crate sizes its statics alike.
//!
//! The asset list is `assets/manifest.txt` (shared with the host test). Buffer sizes come from
//! the same pure functions the core uses at run time (`State::len_for`,
//! `Tokenizer::scratch_len`, `Adapter::slots_len`), so the statics are exactly as large as
//! needed and the RAM budget is known at link time: no heap is needed.

use edgelora::lora::Adapter;
use edgelora::model::{CacheSpec, CacheType, Model, State};
use edgelora::tokenizer::Tokenizer;
use edgelora::Gguf;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = here.join("../..").canonicalize().unwrap();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());

    // Board: a linker script each (`memory/{board}.x` in the crate being built) and the
    // target it needs. One row per board; a board feature picks its row, none picks the first
    // row for the build's target (an386 on thumbv7em, an505 on thumbv8m.main, virt on RISC-V:
    // the RISC-V crate, which has no board features, builds with this same file).
    const BOARDS: &[(&str, &str)] = &[
        ("an386", "thumbv7em-none-eabihf"),
        ("an500", "thumbv7em-none-eabihf"),
        ("an505", "thumbv8m.main-none-eabihf"),
        ("an547", "thumbv8m.main-none-eabihf"),
        ("virt", "riscv32imac-unknown-none-elf"),
    ];
    let target = std::env::var("TARGET").unwrap();
    let chosen: Vec<_> = BOARDS
        .iter()
        .filter(|(b, _)| {
            std::env::var_os(format!("CARGO_FEATURE_BOARD_{}", b.to_uppercase())).is_some()
        })
        .collect();
    let &(board, triple) = match chosen[..] {
        [] => BOARDS
            .iter()
            .find(|(_, t)| *t == target)
            .unwrap_or_else(|| panic!("no board for target {target}")),
        [one] => one,
        _ => panic!("board features are mutually exclusive; got {chosen:?}"),
    };
    assert!(
        target == triple,
        "board-{board} runs {triple}; build with `--target {triple}` (got {target})"
    );
    let mem = here.join("memory").join(format!("{board}.x"));
    std::fs::copy(&mem, out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed={}", mem.display());

    // Armv8-M (M33, M55) guards the stack with MSPLIM, Armv7-M with the MPU (lib.rs).
    println!("cargo:rustc-check-cfg=cfg(armv8m)");
    if std::env::var("TARGET").is_ok_and(|t| t.starts_with("thumbv8m")) {
        println!("cargo:rustc-cfg=armv8m");
    }

    // Logging through defmt (the Cortex-M crate's `defmt` feature): `cfg(el_defmt)` for the
    // images' sources, which targets/riscv compiles too (it has no such feature, so a
    // `cfg(feature = "defmt")` there would be an unknown cfg), and defmt's linker script, which
    // places the interned format strings in the non-loaded `.defmt` section the host decoder
    // reads from the ELF (defmt's build script puts `defmt.x` on the search path).
    println!("cargo:rustc-check-cfg=cfg(el_defmt)");
    if std::env::var_os("CARGO_FEATURE_DEFMT").is_some() {
        println!("cargo:rustc-cfg=el_defmt");
        println!("cargo:rustc-link-arg=-Tdefmt.x");
    }

    // The assets and their manifest live with the Cortex-M crate; both firmware crates read them.
    let manifest = root.join("targets/cortex-m/assets/manifest.txt");
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
    // The device's KV cache type from the manifest; prompt blocks of one token (a Cortex-M
    // build runs the prompt token by token, so a bigger block would only hold activations
    // nothing uses: 43 KB of the tiny fixture's 116 KB f32 state at ctx 128).
    let cache_ty = CacheType::from_name(&m["kv_cache"])
        .unwrap_or_else(|| panic!("manifest kv_cache `{}`: f32, f16 or q8_0", m["kv_cache"]));
    let spec = CacheSpec::of(cache_ty).with_block(1);
    let state = State::checked_len_for_cache(&cfg, ctx, spec).expect("state size");
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
        "/// KV cache type and prompt block of the state.\npub const CACHE: edgelora::model::CacheSpec = edgelora::model::CacheSpec::of(edgelora::model::CacheType::{cache_ty:?}).with_block(1);"
    )
    .unwrap();
    writeln!(
        s,
        "/// `State::len_for_cache(cfg, CTX, CACHE)` f32 values.\npub const STATE_F32S: usize = {state};"
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
