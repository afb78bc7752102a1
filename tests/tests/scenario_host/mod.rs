//! The host side of the firmware scenario (`targets/cortex-m/src/scenario.rs`, compiled here
//! for the host): the `EL ...` lines every firmware image must print, computed with the same
//! assets (`targets/cortex-m/assets/manifest.txt`) and the portable kernel.
//!
//! A test file that compares a firmware with the host includes this with
//! `mod scenario_host;` (a directory module, so cargo does not build it as a test of its own).
#![allow(dead_code)]

#[path = "../../../targets/cortex-m/src/scenario.rs"]
mod scenario;

use edgelora::kernels::{self, Isa};
use edgelora::lora::Adapter;
use edgelora::model::{CacheSpec, CacheType, Model, State};
use edgelora::tokenizer::Tokenizer;
use edgelora::Gguf;
use std::path::PathBuf;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// The value of `key` in the firmware manifest.
pub fn manifest(key: &str) -> String {
    let text =
        std::fs::read_to_string(root().join("targets/cortex-m/assets/manifest.txt")).unwrap();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| panic!("manifest lacks {key}"))
}

/// The bytes of the asset the manifest names under `key`, leaked (the scenario borrows them
/// for its whole run, as a firmware borrows flash).
pub fn asset(key: &str) -> &'static [u8] {
    Box::leak(
        std::fs::read(root().join(manifest(key)))
            .unwrap()
            .into_boxed_slice(),
    )
}

/// The firmware's state: the manifest's KV cache type, prompt blocks of one token (as the
/// firmware's build.rs sizes it).
pub fn device_cache() -> CacheSpec {
    let ty = manifest("kv_cache");
    CacheSpec::of(CacheType::from_name(&ty).unwrap_or_else(|| panic!("manifest kv_cache {ty}")))
        .with_block(1)
}

/// The `EL ` lines the host prints running the scenario with the portable kernel.
pub fn host_lines() -> Vec<String> {
    kernels::force(Isa::Portable).unwrap();
    let base = asset("base");
    let g = Gguf::parse(base).unwrap();
    let m: Model<'_> = Model::from_gguf(&g).unwrap();
    let cfg = *m.config();
    let ctx: usize = manifest("ctx").parse().unwrap();
    let n_gen: usize = manifest("n_gen").parse().unwrap();
    let prompt: &'static str = Box::leak(manifest("prompt").into_boxed_str());
    fn leak<T: Clone>(v: T, n: usize) -> &'static mut [T] {
        Box::leak(vec![v; n].into_boxed_slice())
    }
    let slots = Adapter::slots_len(&cfg);
    let stream = asset("adapter_a")
        .len()
        .max(asset("adapter_b").len())
        .next_multiple_of(32);
    let bufs = scenario::Buffers {
        state: leak(0.0, State::len_for_cache(&cfg, ctx, device_cache())),
        tok: leak(0, Tokenizer::scratch_len(&g).unwrap()),
        prompt: leak(0, Tokenizer::encode_buf_len(prompt.len())),
        gen: leak(0, n_gen),
        slots_a: leak(None, slots),
        slots_b: leak(None, slots),
        slots_s: leak(None, slots),
        stream: leak(0, stream),
    };
    let assets = scenario::Assets {
        base,
        adapter_a: asset("adapter_a"),
        adapter_b: asset("adapter_b"),
        adapter_wrong: asset("adapter_wrong_base"),
        prompt,
        ctx,
        cache: device_cache(),
    };
    let mut out = String::new();
    if let Err(e) = scenario::run::<64, _>(&assets, bufs, &mut out) {
        panic!("host scenario failed: {e}\n{out}");
    }
    assert!(kernels::ran(Isa::Portable));
    out.lines().map(str::to_string).collect()
}

/// The `EL ` lines of a firmware's output (not `EL-BOARD`, `EL-BUDGET`, ...).
pub fn el_lines(s: &str) -> Vec<String> {
    s.lines()
        .filter(|l| l.starts_with("EL "))
        .map(str::to_string)
        .collect()
}
