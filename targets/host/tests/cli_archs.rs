//! Every CLI command on every architecture, with adapters, on every kernel table this machine
//! has (issue #15: "each runs every CLI command, with adapters, on every ISA table").
//!
//! Models: the tiny transformers-built Qwen2 / Qwen3 / Gemma 3 bases with their PEFT adapters
//! (`tests/fixtures/lora/arch/`, converted by llama.cpp's `convert_hf_to_gguf.py`), the tiny
//! llama / Gemma 2 bases of `tests/fixtures/arch/` (no adapter), all F32. Everything ships in
//! the repository, so nothing here skips. What is asserted:
//! - `adapter convert` (f32 / f16 / q8_0), `adapter inspect`, `inspect`, `tokenize`,
//!   `generate`, `bench`, `chat`, `logits`, `merge`, `quantize` succeed;
//! - the adapter changes the logits; two threads give the same bytes as one;
//! - every kernel table gives the default table's logits within f32 summation noise;
//! - the adapter merged into an F32 base gives the unmerged logits within f32 rounding.
//!
//! Numerical agreement with PEFT itself is `tests/tests/lora_arch_peft.rs`; this file checks
//! that the commands users type reach that code on every architecture.

mod common;

use common::root;
use std::process::{Command, Output};

fn run(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgelora"));
    cmd.current_dir(root())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("running edgelora");
    if let Some(mut si) = child.stdin.take() {
        si.write_all(stdin.unwrap_or("").as_bytes())
            .expect("writing stdin");
    }
    child.wait_with_output().expect("waiting for edgelora")
}

fn ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run(args, env, None);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "edgelora {args:?} (env {env:?}) failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Top-k logits per position from `logits --json` (the last line of stdout is the JSON).
fn logits(model: &str, extra: &[&str], env: &[(&str, &str)]) -> Vec<(Vec<u64>, Vec<f64>)> {
    let mut args = vec![
        "logits", "-m", model, "--tokens", TOKENS, "--top", "8", "--json",
    ];
    args.extend_from_slice(extra);
    let out = ok(&args, env);
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in logits output:\n{out}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("logits JSON");
    v["positions"]
        .as_array()
        .expect("positions")
        .iter()
        .map(|p| {
            let ids = p["top_ids"].as_array().expect("top_ids");
            let ls = p["top_logits"].as_array().expect("top_logits");
            (
                ids.iter().map(|x| x.as_u64().expect("id")).collect(),
                ls.iter().map(|x| x.as_f64().expect("logit")).collect(),
            )
        })
        .collect()
}

/// Largest difference of the top logits between two runs, relative to the largest |logit|,
/// over the ids both runs list at each position.
fn rel_diff(a: &[(Vec<u64>, Vec<f64>)], b: &[(Vec<u64>, Vec<f64>)]) -> f64 {
    diff(a, b, true)
}

/// [`rel_diff`], optionally without requiring the same leader (for runs that should differ).
fn diff(a: &[(Vec<u64>, Vec<f64>)], b: &[(Vec<u64>, Vec<f64>)], same_top1: bool) -> f64 {
    assert_eq!(a.len(), b.len(), "position counts differ");
    let mut scale = 0f64;
    let mut worst = 0f64;
    for ((ia, la), (ib, lb)) in a.iter().zip(b) {
        for (i, x) in ia.iter().zip(la) {
            scale = scale.max(x.abs());
            if let Some(j) = ib.iter().position(|y| y == i) {
                worst = worst.max((x - lb[j]).abs());
            }
        }
        // the leader of one run must be listed by the other
        assert!(
            !same_top1 || ib.contains(&ia[0]),
            "top-1 {} missing from {ib:?}",
            ia[0]
        );
    }
    worst / scale.max(1e-30)
}

/// Token ids inside every fixture vocabulary (the smallest has 96).
const TOKENS: &str = "1,76,82,38,27,22,79,8,17,25,50,75";

/// Kernel tables this machine can run, as `EDGELORA_ISA` values. The variable is ignored for
/// a table the CPU lacks, so each is probed through `bench --json`, which names the table that
/// ran; those not here are printed and left out.
fn tables(model: &str) -> Vec<&'static str> {
    let mut have = Vec::new();
    for isa in ["portable", "avx2", "avx512", "neon", "neon-dotprod"] {
        let out = ok(
            &[
                "bench",
                "-m",
                model,
                "--prompt-len",
                "2",
                "--gen",
                "1",
                "--reps",
                "1",
                "--json",
            ],
            &[("EDGELORA_ISA", isa)],
        );
        let v: serde_json::Value =
            serde_json::from_str(&out[out.find('{').expect("bench JSON")..]).expect("bench JSON");
        if v["kernel"].as_str() == Some(isa) {
            have.push(isa);
        } else {
            println!("  table {isa}: not on this machine (ran {})", v["kernel"]);
        }
    }
    have
}

struct Case {
    arch: &'static str,
    model: &'static str,
    peft: Option<&'static str>,
}

const CASES: [Case; 5] = [
    Case {
        arch: "qwen2",
        model: "tests/fixtures/lora/arch/qwen2/tiny-qwen2.gguf",
        peft: Some("tests/fixtures/lora/arch/qwen2/plain"),
    },
    Case {
        arch: "qwen3",
        model: "tests/fixtures/lora/arch/qwen3/tiny-qwen3.gguf",
        peft: Some("tests/fixtures/lora/arch/qwen3/dora"),
    },
    Case {
        arch: "gemma3",
        model: "tests/fixtures/lora/arch/gemma3/tiny-gemma3.gguf",
        peft: Some("tests/fixtures/lora/arch/gemma3/rslora"),
    },
    Case {
        arch: "llama",
        model: "tests/fixtures/arch/tiny-llama3-freqs.gguf",
        peft: None,
    },
    Case {
        arch: "gemma2",
        model: "tests/fixtures/arch/tiny-gemma2.gguf",
        peft: None,
    },
];

/// f32 summation-order noise between tables and between merged and unmerged runs, relative
/// to the largest logit. These models are F32 with dims of 32-64, so each logit is a few
/// hundred f32 operations deep: ~300 * 2^-24 = 1.8e-5; a wrong kernel or a dropped adapter
/// moves logits by 1e-2 or more (the adapters' own effect, asserted below).
const NOISE: f64 = 1e-4;

#[test]
fn every_command_runs_every_architecture_with_adapters_on_every_table() {
    let dir = std::env::temp_dir().join(format!("edgelora-cli-archs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let tmp = |name: &str| dir.join(name).to_string_lossy().into_owned();
    for c in &CASES {
        println!("== {} ({})", c.arch, c.model);
        let info = ok(&["inspect", c.model], &[]);
        assert!(info.contains(c.arch), "inspect does not name {}", c.arch);
        let ids = ok(&["tokenize", "-m", c.model, "-p", "hello world"], &[]);
        assert!(!ids.trim().is_empty(), "tokenize printed nothing");

        // Adapter: convert in every storage type, inspect it.
        let mut adapter = None;
        if let Some(peft) = c.peft {
            for dtype in ["f32", "f16", "q8_0"] {
                let out = tmp(&format!("{}-{dtype}.gguf", c.arch));
                ok(
                    &[
                        "adapter", "convert", "--base", c.model, "--dtype", dtype, "-o", &out, peft,
                    ],
                    &[],
                );
                ok(&["adapter", "inspect", &out], &[]);
            }
            adapter = Some(tmp(&format!("{}-f32.gguf", c.arch)));
        }
        let ad: Vec<&str> = match &adapter {
            Some(a) => vec!["--adapter", a.as_str()],
            None => vec![],
        };

        // Logits: the adapter matters; threads change nothing.
        let base = logits(c.model, &[], &[]);
        let with = logits(c.model, &ad, &[]);
        if adapter.is_some() {
            let d = diff(&base, &with, false);
            println!("  adapter moves logits by {d:.2e} of the largest");
            assert!(
                d > 100.0 * NOISE,
                "{}: the adapter changed nothing ({d:e})",
                c.arch
            );
        }
        let mut two = ad.clone();
        two.extend_from_slice(&["--threads", "2"]);
        assert_eq!(
            with,
            logits(c.model, &two, &[]),
            "{}: 2 threads differ",
            c.arch
        );

        // The reference path and every table, with the adapter, against the default table.
        let mut r = ad.clone();
        r.push("--reference");
        let d = rel_diff(&with, &logits(c.model, &r, &[]));
        println!("  reference: {d:.2e}");
        assert!(d <= NOISE, "{}: reference path differs by {d:e}", c.arch);
        for isa in tables(c.model) {
            let l = logits(c.model, &ad, &[("EDGELORA_ISA", isa)]);
            let d = rel_diff(&with, &l);
            println!("  table {isa}: {d:.2e}");
            assert!(d <= NOISE, "{}: table {isa} differs by {d:e}", c.arch);
        }

        // Merge into an F32 copy: same logits as unmerged.
        if let Some(a) = &adapter {
            let merged = tmp(&format!("{}-merged.gguf", c.arch));
            ok(
                &[
                    "merge",
                    "-m",
                    c.model,
                    "--adapter",
                    a,
                    "--type",
                    "f32",
                    "-o",
                    &merged,
                ],
                &[],
            );
            let d = rel_diff(&with, &logits(&merged, &[], &[]));
            println!("  merged vs unmerged: {d:.2e}");
            assert!(d <= NOISE, "{}: merged differs by {d:e}", c.arch);
        }

        // Quantize, then run the result with the adapter.
        let q8 = tmp(&format!("{}-q8_0.gguf", c.arch));
        ok(&["quantize", "--type", "q8_0", "-o", &q8, c.model], &[]);
        // The adapter records the F32 base's fingerprints. On the re-quantised copy a plain
        // adapter binds (same tensors and shapes) and the CLI says the weights differ; a DoRA
        // adapter, whose row norms fit the exact base, is refused until converted against it.
        let mut ad_q8 = ad.clone();
        let reconverted;
        if let (Some(a), Some(peft)) = (&adapter, c.peft) {
            let out = run(
                &["generate", "-m", &q8, "--adapter", a, "-p", "hi", "-n", "1"],
                &[],
                None,
            );
            let err = String::from_utf8_lossy(&out.stderr);
            if peft.ends_with("dora") {
                assert!(
                    !out.status.success(),
                    "{}: DoRA bound to other weights",
                    c.arch
                );
                assert!(
                    err.contains("convert it for this base"),
                    "{}: unclear refusal: {err}",
                    c.arch
                );
                reconverted = tmp(&format!("{}-q8-dora.gguf", c.arch));
                ok(
                    &[
                        "adapter",
                        "convert",
                        "--base",
                        &q8,
                        "-o",
                        &reconverted,
                        peft,
                    ],
                    &[],
                );
                ad_q8 = vec!["--adapter", reconverted.as_str()];
            } else {
                assert!(out.status.success(), "{}: {err}", c.arch);
                assert!(err.contains("note: adapter"), "{}: no note: {err}", c.arch);
            }
        }
        let lq = logits(&q8, &ad_q8, &[]);
        assert!(
            lq.iter().all(|(_, l)| l.iter().all(|v| v.is_finite())),
            "{}: non-finite logits after quantize",
            c.arch
        );

        // generate, bench, chat with the adapter.
        let mut g = vec!["generate", "-m", c.model, "-p", "hello", "-n", "4"];
        g.extend_from_slice(&ad);
        ok(&g, &[]);
        let mut b = vec![
            "bench",
            "-m",
            c.model,
            "--prompt-len",
            "8",
            "--gen",
            "4",
            "--reps",
            "1",
            "--json",
        ];
        b.extend_from_slice(&ad);
        let out = ok(&b, &[]);
        let json = &out[out.find('{').expect("bench JSON")..];
        let v: serde_json::Value = serde_json::from_str(json).expect("bench JSON parses");
        assert!(v["decode_tokens_per_s"].as_f64().is_some_and(|t| t > 0.0));
        let mut ch = vec!["chat", "-m", c.model, "-n", "4"];
        ch.extend_from_slice(&ad);
        let out = run(&ch, &[], Some("hello\n\n"));
        let err = String::from_utf8_lossy(&out.stderr);
        // These tiny vocabularies have no chat tokens and no byte fallback, so chat may be
        // refused (no format for Qwen without a template; a Gemma turn marker with characters
        // the 96-piece vocabulary cannot spell): then with a typed error, never a panic.
        println!(
            "  chat: {}",
            if out.status.success() {
                "ran"
            } else {
                "refused"
            }
        );
        assert!(
            out.status.success() || (out.status.code() == Some(1) && err.contains("Error:")),
            "{}: chat failed without a clear error ({}): {err}",
            c.arch,
            out.status
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
