//! `edgelora adapter combine` through the CLI on the committed tiny task adapters: every
//! method writes an adapter that `adapter inspect --base`, `generate` and `eval` load and run,
//! and bad requests fail with errors that say what is wrong. (Parity with PEFT is in
//! tests/tests/lora_combine.rs.) Everything used ships in the repository: nothing skips.

mod common;

use common::edgelora;

fn ok(args: &[&str]) -> (String, String) {
    let out = edgelora(args);
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "edgelora {args:?} failed: {}\nstdout:\n{so}\nstderr:\n{se}",
        out.status
    );
    (so, se)
}

fn fails(args: &[&str]) -> String {
    let out = edgelora(args);
    assert!(!out.status.success(), "edgelora {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const INTENT: &str = "models/tiny/intent/adapter.gguf";
const REPLY: &str = "models/tiny/reply/adapter.gguf";
const BASE: &str = "models/tiny/tiny-base.gguf";

#[test]
fn every_method_writes_an_adapter_that_runs() {
    let dir = std::env::temp_dir().join(format!("edgelora-combine-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (format!("{INTENT}:0.8"), format!("{REPLY}:0.6"));
    for (method, extra) in [
        ("linear", &[][..]),
        ("cat", &[][..]),
        ("svd", &["--rank", "6"][..]),
        ("ties", &["--density", "0.5"][..]),
        ("ties_svd", &["--density", "0.5"][..]),
        ("dare_linear", &["--density", "0.5", "--seed", "7"][..]),
        ("dare_ties", &["--density", "0.5", "--seed", "7"][..]),
        (
            "magnitude_prune",
            &["--density", "0.5", "--dtype", "q8_0"][..],
        ),
    ] {
        let out = dir.join(format!("{method}.gguf"));
        let out_s = out.to_str().unwrap();
        let mut args = vec![
            "adapter", "combine", &a, &b, "--method", method, "-o", out_s,
        ];
        args.extend_from_slice(extra);
        let (_, summary) = ok(&args);
        assert!(
            summary.contains("pairs, rank"),
            "{method}: summary {summary:?}"
        );
        let (inspect, _) = ok(&["adapter", "inspect", out_s, "--base", BASE]);
        assert!(inspect.contains("fits"), "{method}: {inspect}");
        assert!(
            inspect.contains("task: intent+reply"),
            "{method}: {inspect}"
        );
        ok(&[
            "generate",
            "-m",
            BASE,
            "--adapter",
            out_s,
            "-p",
            "turn on the lights",
            "-n",
            "4",
        ]);
        let (eval, _) = ok(&[
            "eval",
            "--task",
            "intent",
            "--adapter",
            out_s,
            "--limit",
            "3",
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(eval.trim()).unwrap();
        assert_eq!(v["n"], 3, "{method}: {eval}");
    }
    // A seed reproduces a DARE file.
    let again = dir.join("dare_ties_again.gguf");
    ok(&[
        "adapter",
        "combine",
        &a,
        &b,
        "--method",
        "dare_ties",
        "--density",
        "0.5",
        "--seed",
        "7",
        "-o",
        again.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(dir.join("dare_ties.gguf")).unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_requests_say_why() {
    let out =
        std::env::temp_dir().join(format!("edgelora-combine-bad-{}.gguf", std::process::id()));
    let o = out.to_str().unwrap();
    let e = fails(&[
        "adapter", "combine", INTENT, REPLY, "--method", "lerp", "-o", o,
    ]);
    assert!(
        e.contains("expected one of") && e.contains("dare_ties"),
        "{e}"
    );
    let e = fails(&[
        "adapter", "combine", INTENT, REPLY, "--method", "ties", "-o", o,
    ]);
    assert!(e.contains("density"), "{e}");
    let e = fails(&[
        "adapter",
        "combine",
        INTENT,
        REPLY,
        "--method",
        "ties",
        "--density",
        "1.5",
        "-o",
        o,
    ]);
    assert!(e.contains("density"), "{e}");
    // An adapter for another base (the fixtures' tiny-f32 model, converted by llama.cpp).
    let e = fails(&[
        "adapter",
        "combine",
        INTENT,
        "tests/fixtures/lora/tiny/plain.llamacpp.gguf",
        "--method",
        "cat",
        "-o",
        o,
    ]);
    assert!(
        e.contains("different bases") && e.contains("plain.llamacpp.gguf"),
        "{e}"
    );
    assert!(!out.exists(), "nothing is written on error");
}
