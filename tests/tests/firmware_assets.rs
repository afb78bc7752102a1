//! The adapters the Cortex-M firmware carries in flash (`targets/cortex-m/assets/`), made
//! here from the base named in `targets/cortex-m/assets/manifest.txt`.
//!
//! The files are committed so that the firmware builds without running anything first; this
//! test regenerates them in memory and fails if the committed bytes differ (deterministic
//! generator, so any difference is a stale file). `EDGELORA_REGEN_ASSETS=1` rewrites them.

use edgelora::lora::base_fingerprint;
use edgelora::model::Model;
use edgelora::Gguf;
use std::path::PathBuf;

mod common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `key = value` lines of the firmware's asset manifest.
fn manifest(key: &str) -> String {
    let text =
        std::fs::read_to_string(root().join("targets/cortex-m/assets/manifest.txt")).unwrap();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| panic!("manifest lacks {key}"))
}

/// A llama.cpp-layout LoRA GGUF for `base`: rank `r` (alpha = r, so the scale is 1) on the
/// linears `which` of every layer (`None`: all), F32 A and B.
fn adapter(
    base: &Gguf<'_>,
    r: usize,
    seed: u64,
    fingerprint: u64,
    which: Option<&[usize]>,
    layers: Option<usize>,
) -> Vec<u8> {
    let m: Model<'_> = Model::from_gguf(base).unwrap();
    let spec = common::RandomAdapter {
        rank: r,
        alpha: r as f32,
        amp: 0.3,
        fingerprint: Some(fingerprint),
        linears: which,
        layers,
    };
    spec.build(&m, |l, k| {
        let i = (l * 10 + k) as u64;
        (seed * 7919 + i, seed * 7919 + 1000 + i)
    })
}

/// (manifest key, bytes) of every generated asset.
fn generate() -> Vec<(&'static str, Vec<u8>)> {
    let base_bytes = std::fs::read(root().join(manifest("base"))).unwrap();
    let g = Gguf::parse(&base_bytes).unwrap();
    let fp = base_fingerprint(&g);
    vec![
        ("adapter_a", adapter(&g, 4, 1, fp, None, None)),
        // B: attention and FFN of every layer too, another seed and a higher rank.
        ("adapter_b", adapter(&g, 8, 2, fp, None, None)),
        // Records another base: must be refused at bind time.
        (
            "adapter_wrong_base",
            adapter(&g, 1, 3, fp ^ 0x00de_ad00, Some(&[0]), Some(1)),
        ),
    ]
}

#[test]
fn firmware_adapters_are_current() {
    let regen = std::env::var_os("EDGELORA_REGEN_ASSETS").is_some();
    for (key, bytes) in generate() {
        let path = root().join(manifest(key));
        if regen {
            std::fs::write(&path, &bytes).unwrap();
            println!("wrote {} ({} bytes)", path.display(), bytes.len());
            continue;
        }
        let have = std::fs::read(&path).unwrap_or_default();
        assert!(
            have == bytes,
            "{} is stale or missing: run EDGELORA_REGEN_ASSETS=1 cargo test -p edgelora-tests --test firmware_assets",
            path.display()
        );
    }
}
