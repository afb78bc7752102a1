//! `edgelora perplexity` against llama.cpp's `llama-perplexity`.
//!
//! `bench/perplexity_vs_llamacpp.py --write-fixture` ran llama-perplexity (built from the
//! llama-cpp-python 0.3.36 sdist) on the committed public-domain text
//! `tests/fixtures/text/kjv-genesis-1-20.txt` and recorded its figure per model file (with the
//! file's SHA-256) in `tests/fixtures/text/llamacpp_ppl.json`, with flash attention on (its
//! default) and off, and the exact figure from transformers on the dequantised weights in f32
//! (`bench/perplexity_hf.py`, the same token ids). Here edgelora scores the same file with the
//! same window length and number of windows:
//! - within 0.5% of llama-perplexity's default figure, or within llama.cpp's own spread (its
//!   two attention paths' figures apart) where that is wider: both runtimes quantise
//!   activations to 8 bits, which on a 135M-270M model moves the figure by about 1%;
//! - no further from the exact figure than llama.cpp's furthest path, plus 0.5%.
//!
//! A model file that is not fetched, or whose bytes differ from the recorded ones, prints
//! SKIPPED with the reason.

mod common;

use common::{edgelora, root};
use sha2::{Digest, Sha256};
use std::path::Path;

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("reading the model");
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn perplexity_matches_llama_perplexity() {
    let fixture: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("tests/fixtures/text/llamacpp_ppl.json")).expect("fixture"),
    )
    .expect("fixture JSON");
    let entries = fixture.as_object().expect("fixture object");
    assert!(!entries.is_empty(), "the fixture lists no model");
    let mut checked = 0;
    for (name, want) in entries {
        let model = root().join("models").join(name);
        if !model.exists() {
            println!("SKIPPED {name}: not fetched (`edgelora fetch`)");
            continue;
        }
        if sha256(&model) != want["sha256"].as_str().unwrap() {
            println!("SKIPPED {name}: its bytes differ from the file llama-perplexity scored");
            continue;
        }
        let ctx = want["ctx"].as_u64().unwrap().to_string();
        let chunks = want["chunks"].as_u64().unwrap().to_string();
        let out = edgelora(&[
            "perplexity",
            "-m",
            model.to_str().unwrap(),
            "-f",
            want["file"].as_str().unwrap(),
            "--ctx",
            &ctx,
            "--chunks",
            &chunks,
            "--threads",
            "2",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let ours = got["ppl"].as_f64().unwrap();
        let theirs = want["llama_perplexity_ppl"].as_f64().unwrap();
        let off = want["llama_perplexity_fa_off_ppl"].as_f64().unwrap();
        let exact = want["transformers_f32_ppl"].as_f64().unwrap();
        let rel = (ours / theirs - 1.0).abs();
        let spread = (off / theirs - 1.0).abs();
        let tol = spread.max(0.005);
        println!(
            "{name}: edgelora {ours:.4}, llama-perplexity {theirs:.4} (fa off {off:.4}), exact \
             {exact:.4}; |ratio - 1| {rel:.5}, tolerance {tol:.5}"
        );
        assert!(
            rel <= tol,
            "{name}: perplexity {ours} vs llama-perplexity {theirs} ({:.3}% apart; llama.cpp's \
             own paths are {:.3}% apart)",
            rel * 100.0,
            spread * 100.0
        );
        let llama_err = (theirs / exact - 1.0).abs().max((off / exact - 1.0).abs());
        let ours_err = (ours / exact - 1.0).abs();
        assert!(
            ours_err <= llama_err + 0.005,
            "{name}: {:.3}% from the exact figure {exact}, llama.cpp at most {:.3}%",
            ours_err * 100.0,
            llama_err * 100.0
        );
        assert_eq!(
            got["scored"].as_u64().unwrap(),
            want["chunks"].as_u64().unwrap() * (want["ctx"].as_u64().unwrap() / 2 - 1),
            "{name}: scored tokens per window as llama-perplexity (ctx/2 - 1)"
        );
        checked += 1;
    }
    if checked == 0 {
        println!("SKIPPED: no model of the fixture is fetched here");
    }
}

#[test]
fn perplexity_refuses_short_text_and_bad_window() {
    let model = root().join("models/tiny/tiny-base.gguf");
    let short = std::env::temp_dir().join(format!("edgelora-ppl-short-{}.txt", std::process::id()));
    std::fs::write(&short, "only a few words").unwrap();
    let text = "tests/fixtures/text/kjv-genesis-1-20.txt";
    // (file, extra arguments, what stderr must say)
    let cases: [(&str, &[&str], &str); 4] = [
        (short.to_str().unwrap(), &["--ctx", "64"], "needs at least"),
        (text, &["--ctx", "2"], "too short"),
        ("no/such.txt", &[], "no/such.txt"),
        // A window longer than the model's context names the limit.
        (text, &["--ctx", "4096"], "longer than the model's context"),
    ];
    for (file, extra, want) in cases {
        let mut args = vec!["perplexity", "-m", model.to_str().unwrap(), "-f", file];
        args.extend_from_slice(extra);
        let out = edgelora(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let _ = std::fs::remove_file(&short);
}

#[test]
fn perplexity_on_the_tiny_model_is_finite_and_deterministic() {
    let model = root().join("models/tiny/tiny-base.gguf");
    let run = |threads: &str| -> serde_json::Value {
        let out = edgelora(&[
            "perplexity",
            "-m",
            model.to_str().unwrap(),
            "-f",
            "tests/fixtures/text/kjv-genesis-1-20.txt",
            "--ctx",
            "128",
            "--chunks",
            "3",
            "--threads",
            threads,
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let one = run("1");
    let two = run("2");
    let p = one["ppl"].as_f64().unwrap();
    assert!(p.is_finite() && p > 1.0, "tiny-model perplexity {p}");
    assert_eq!(one["ppl"], two["ppl"], "threads must not change the figure");
    assert_eq!(one["scored"].as_u64(), Some(3 * 63));
    assert_eq!(one["per_chunk_ppl"].as_array().unwrap().len(), 3);
}
