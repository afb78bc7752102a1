//! The tiny default model and its task adapters, end to end through the CLI: the README's
//! main command (`edgelora demo`), `edgelora eval` on the held-out split, the size budgets of
//! issue #5, and parity with the PyTorch PEFT predictions recorded by the trainer.
//!
//! Everything here ships in the repository (models/tiny, targets/trainer/data): nothing is
//! downloaded, so none of these tests skip.

mod common;

use common::root;
use std::process::Command;

const TASKS: [&str; 3] = ["intent", "reply", "normalize"];

fn edgelora(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_edgelora"))
        .current_dir(root())
        .args(args)
        .output()
        .expect("running edgelora");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "edgelora {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn eval_json(args: &[&str]) -> serde_json::Value {
    let mut a = vec!["eval", "--json"];
    a.extend_from_slice(args);
    let out = edgelora(&a);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("eval --json output {out:?}: {e}"))
}

fn adapter(task: &str) -> String {
    format!("models/tiny/{task}/adapter.gguf")
}

/// PyTorch PEFT's answers (float32 model, the adapter as trained) for the test split, as
/// written by targets/trainer/train.py.
fn peft_predictions(task: &str) -> Vec<String> {
    let p = root().join(format!("models/tiny/{task}/predictions.jsonl"));
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["adapter"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn tiny_model_fits_its_microcontroller_budgets() {
    let base = std::fs::metadata(root().join("models/tiny/tiny-base.gguf"))
        .unwrap()
        .len();
    println!("tiny base GGUF: {base} bytes");
    assert!(base <= 1_000_000, "base GGUF {base} bytes > 1 MB");
    for t in TASKS {
        let n = std::fs::metadata(root().join(adapter(t))).unwrap().len();
        println!("{t} adapter: {n} bytes");
        assert!(n <= 64 * 1024, "{t} adapter {n} bytes > 64 KiB");
    }
    let bytes = std::fs::read(root().join("models/tiny/tiny-base.gguf")).unwrap();
    let g = edgelora::format::gguf::Gguf::parse(&bytes).unwrap();
    let m = edgelora::model::Model::<64>::from_gguf(&g).unwrap();
    let st = edgelora::model::State::bytes_for(m.config(), 128);
    println!("state for 128 tokens: {st} bytes");
    assert!(st <= 256 * 1024, "state {st} bytes > 256 KiB");
}

#[test]
fn demo_answers_fixed_held_out_inputs_and_switches_adapters() {
    // Round-robin over the tasks: every request switches adapter, the KV cache is cleared.
    let out = edgelora(&["demo", "-n", "4"]);
    println!("{out}");
    for t in TASKS {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(t) && l.contains("with adapter"))
            .unwrap_or_else(|| panic!("no score line for {t}"));
        // "  intent     with adapter 4/4   base alone 0/4"
        let nums: Vec<&str> = line
            .split_whitespace()
            .filter(|w| w.contains('/'))
            .collect();
        assert_eq!(nums.len(), 2, "{line}");
        assert_eq!(
            nums[0], "4/4",
            "{t}: adapter must answer the 4 fixed inputs: {line}"
        );
        assert_eq!(nums[1], "0/4", "{t}: the base alone must not: {line}");
    }
    assert!(out.contains("adapter swap"), "no swap timing");
    assert!(out.contains("tokens/s"), "no speed figure");
}

#[test]
fn adapters_matter_and_match_peft_on_the_test_split() {
    for t in TASKS {
        let a = adapter(t);
        let with = eval_json(&["--task", t, "--adapter", &a]);
        let base = eval_json(&["--task", t]);
        let (em_a, em_b) = (
            with["exact_match"].as_f64().unwrap(),
            base["exact_match"].as_f64().unwrap(),
        );
        let preds: Vec<String> = with["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let peft = peft_predictions(t);
        assert_eq!(peft.len(), preds.len(), "{t}: split sizes differ");
        let same = preds.iter().zip(&peft).filter(|(a, b)| a == b).count();
        println!(
            "{t}: edgelora (unmerged, Q8_0 base) {:.1}%, base alone {:.1}%, same answer as PEFT on {same}/{}",
            100.0 * em_a,
            100.0 * em_b,
            peft.len()
        );
        assert!(em_a >= 0.90, "{t}: adapter exact match {em_a} < 0.90");
        assert!(em_b <= 0.20, "{t}: base alone exact match {em_b} > 0.20");
        // Unmerged on the quantised base may lose at most one point against PEFT.
        assert!(
            same * 100 >= peft.len() * 99,
            "{t}: only {same}/{} answers equal PEFT's",
            peft.len()
        );
    }
}

#[test]
fn merged_adapter_gives_the_same_answers() {
    let dir = std::env::temp_dir().join(format!("edgelora-tiny-merge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let t = "normalize";
    let merged = dir.join("merged.gguf");
    let merged_s = merged.to_str().unwrap();
    edgelora(&[
        "merge",
        "--model",
        "models/tiny/tiny-base.gguf",
        "--adapter",
        &adapter(t),
        "-o",
        merged_s,
        "--type",
        "q8_0",
    ]);
    let m = eval_json(&["--task", t, "-m", merged_s]);
    let u = eval_json(&["--task", t, "--adapter", &adapter(t)]);
    let (em_m, em_u) = (
        m["exact_match"].as_f64().unwrap(),
        u["exact_match"].as_f64().unwrap(),
    );
    println!("{t}: merged to Q8_0 {em_m:.3}, unmerged {em_u:.3}");
    assert!(em_m >= 0.90, "merged exact match {em_m}");
    assert!(
        (em_m - em_u).abs() <= 0.02,
        "merged {em_m} vs unmerged {em_u}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
