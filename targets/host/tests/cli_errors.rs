//! Table-driven: what a new user gets wrong, and what the CLI must answer (issue #19's list).
//! Every case must fail with exit status 1 (not a panic's 101, not 0) and a message that says
//! what is wrong and what to do; the success cases check that the helpful paths work.
//! All on the committed tiny model and adapters (plus SmolLM2's committed adapter as a
//! wrong-base file): nothing to fetch.

mod common;

use common::{edgelora, root};
use std::process::{Command, Stdio};

const A: &str = "models/tiny/intent/adapter.gguf";

#[test]
fn every_bad_input_fails_with_a_message_that_says_what_to_do() {
    let tmp = std::env::temp_dir().join(format!("edgelora-cli-errors-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    // A stream frame cut short.
    let frame = tmp.join("a.elas");
    let out = edgelora(&["adapter", "frame", A, "-o", frame.to_str().unwrap()]);
    assert!(out.status.success());
    let cut = tmp.join("cut.elas");
    let bytes = std::fs::read(&frame).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let cut_s = cut.to_str().unwrap().to_string();
    let missing_dir = tmp.join("no/such/dir/out.gguf");
    let missing_s = missing_dir.to_str().unwrap().to_string();

    let g = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["generate", "-m", "tiny", "-p", "intent: hi", "-n", "2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let s = |v: &[&str]| -> Vec<String> { v.iter().map(|s| s.to_string()).collect() };
    let cases: Vec<(&str, Vec<String>, &[&str])> = vec![
        (
            "scale that is not a number",
            g(&["--adapter", &format!("{A}:abc")]),
            &["is not a number", "FILE[:SCALE]"],
        ),
        (
            "scale out of range",
            g(&["--adapter", &format!("{A}:1e30")]),
            &["outside [-16, 16]"],
        ),
        (
            "non-finite scale",
            g(&["--adapter", &format!("{A}:nan")]),
            &["--adapter"],
        ),
        (
            "PEFT directory as --model",
            s(&["generate", "-m", "models/tiny/intent", "-p", "hi"]),
            &["PEFT adapter directory", "edgelora adapter convert"],
        ),
        (
            "PEFT directory as --adapter",
            g(&["--adapter", "models/tiny/intent"]),
            &["PEFT adapter directory", "edgelora adapter convert"],
        ),
        (
            "a directory of models as --model",
            s(&["generate", "-m", "models/tiny", "-p", "hi"]),
            &["is a directory", "tiny-base.gguf"],
        ),
        (
            "unknown model alias",
            s(&["generate", "-m", "no-such-model", "-p", "hi"]),
            &["does not exist", "tiny", "smollm2", "gemma3-270m"],
        ),
        (
            "adapter for another base",
            g(&["--adapter", "models/smollm2/intent/adapter.gguf"]),
            &["another base"],
        ),
        (
            "adapter inspect --base on a mismatch",
            s(&[
                "adapter",
                "inspect",
                "models/smollm2/intent/adapter.gguf",
                "--base",
                "tiny",
            ]),
            &["does not fit"],
        ),
        (
            "a model file as --adapter",
            g(&["--adapter", "models/tiny/tiny-base.gguf"]),
            &["is a model file", "--model"],
        ),
        (
            "a truncated stream frame as --adapter",
            g(&["--adapter", &cut_s]),
            &["stream frame", "adapter frame"],
        ),
        (
            "merge -o into a missing directory",
            s(&[
                "merge",
                "-m",
                "tiny",
                "--adapter",
                A,
                "--type",
                "q8_0",
                "-o",
                &missing_s,
            ]),
            &["does not exist", "no/such/dir"],
        ),
        (
            "unknown task",
            s(&["eval", "--task", "nosuch"]),
            &["unknown task", "intent", "reply", "normalize"],
        ),
        (
            "a pruning combine method without --density",
            s(&[
                "adapter",
                "combine",
                A,
                "models/tiny/reply/adapter.gguf",
                "--method",
                "ties",
                "-o",
                &missing_s,
            ]),
            &["--density"],
        ),
        (
            "more adapters than can run at once",
            g(&[
                "--adapter",
                A,
                "--adapter",
                A,
                "--adapter",
                A,
                "--adapter",
                A,
                "--adapter",
                A,
            ]),
            &["at most 4"],
        ),
    ];
    let mut failures = vec![];
    for (what, args, want) in &cases {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = edgelora(&argv);
        let err = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        let ok =
            code == Some(1) && !err.contains("panicked") && want.iter().all(|w| err.contains(w));
        println!(
            "{} {what}: exit {code:?}: {}",
            if ok { "ok  " } else { "FAIL" },
            err.lines().next().unwrap_or("")
        );
        if !ok {
            failures.push(format!("{what}: exit {code:?}, stderr:\n{err}"));
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

#[test]
fn a_framed_adapter_works_wherever_the_gguf_does() {
    let tmp = std::env::temp_dir().join(format!("edgelora-cli-frame-{}.elas", std::process::id()));
    assert!(
        edgelora(&["adapter", "frame", A, "-o", tmp.to_str().unwrap()])
            .status
            .success()
    );
    let run = |adapter: &str| {
        let out = edgelora(&[
            "generate",
            "-m",
            "tiny",
            "-p",
            "intent: turn on the kitchen lights",
            "-n",
            "16",
            "--adapter",
            adapter,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let framed = run(tmp.to_str().unwrap());
    let _ = std::fs::remove_file(&tmp);
    assert_eq!(framed, run(A), "the framed adapter must give the same text");
}

#[test]
fn merge_with_a_closed_stderr_still_writes_its_file() {
    // `edgelora merge ... 2>&1 | head -1`: the reader goes away after the first line.
    let out =
        std::env::temp_dir().join(format!("edgelora-merge-closed-{}.gguf", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgelora"))
        .current_dir(root())
        .args([
            "merge",
            "-m",
            "tiny",
            "--adapter",
            A,
            "--type",
            "base",
            "-o",
            out.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take()); // closed before the first line is written
    let status = child.wait().unwrap();
    let written = std::fs::read(&out).ok();
    let _ = std::fs::remove_file(&out);
    assert!(
        status.success(),
        "merge with stderr closed ended with {status:?}"
    );
    let bytes = written.expect("the merged file was not written");
    assert_eq!(&bytes[..4], b"GGUF");
}

#[test]
fn prompt_from_a_file_or_stdin_equals_the_argument() {
    let prompt = "intent: turn on the kitchen lights";
    let base = ["generate", "-m", "tiny", "-n", "12", "--adapter", A];
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["-p", prompt]);
    let want = edgelora(&args);
    assert!(want.status.success());
    let file = std::env::temp_dir().join(format!("edgelora-prompt-{}.txt", std::process::id()));
    std::fs::write(&file, prompt).unwrap();
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["--prompt-file", file.to_str().unwrap()]);
    let from_file = edgelora(&args);
    let _ = std::fs::remove_file(&file);
    assert_eq!(from_file.stdout, want.stdout, "--prompt-file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgelora"))
        .current_dir(root())
        .args(base)
        .args(["-p", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(prompt.as_bytes()).unwrap();
    }
    let from_stdin = child.wait_with_output().unwrap();
    assert_eq!(from_stdin.stdout, want.stdout, "--prompt -");
    // Neither given: an error that names all three ways.
    let out = edgelora(&["generate", "-m", "tiny"]);
    assert!(!out.status.success());
}

#[test]
fn an_unknown_isa_in_the_environment_is_warned_about() {
    let out = Command::new(env!("CARGO_BIN_EXE_edgelora"))
        .current_dir(root())
        .env("EDGELORA_ISA", "sse9")
        .args(["generate", "-m", "tiny", "-p", "hi", "-n", "1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("EDGELORA_ISA=\"sse9\" is not a kernel table") && err.contains("portable"),
        "{err}"
    );
}

#[test]
fn inspect_json_gives_the_config_as_an_object() {
    let out = edgelora(&["inspect", "models/tiny/tiny-base.gguf", "--json"]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &j["config"];
    assert_eq!(c["arch"]["name"], "llama");
    assert!(c["n_layers"].as_u64().unwrap() > 0);
    assert_eq!(
        c["dim"].as_u64().unwrap(),
        c["n_heads"].as_u64().unwrap() * c["head_dim"].as_u64().unwrap()
    );
}

#[test]
fn tokenize_and_adapter_inspect_speak_json() {
    let out = edgelora(&["tokenize", "-m", "tiny", "-p", "hello world", "--json"]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids = j["ids"].as_array().unwrap();
    assert!(!ids.is_empty());
    assert_eq!(ids.len(), j["pieces"].as_array().unwrap().len());
    let out = edgelora(&["adapter", "inspect", A, "--base", "tiny", "--json"]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["base_check"]["fits"], true);
    assert_eq!(j["base_fingerprint"].as_str().unwrap().len(), 16);
    assert!(!j["pairs"].as_array().unwrap().is_empty());
    let out = edgelora(&[
        "adapter",
        "inspect",
        "models/smollm2/intent/adapter.gguf",
        "--base",
        "tiny",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a mismatch exits 1 in JSON mode too"
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["base_check"]["fits"], false);
}

#[test]
fn an_adapter_that_makes_the_logits_non_finite_is_an_error_not_garbage() {
    // The tiny intent adapter with one B value set to infinity.
    let bytes = std::fs::read(root().join(A)).unwrap();
    let g = edgelora::Gguf::parse(&bytes).unwrap();
    let t = g
        .tensors()
        .find(|t| t.name.ends_with(".lora_b"))
        .expect("a B tensor");
    let start = t.data.as_ptr() as usize - bytes.as_ptr() as usize;
    let mut bad = bytes.clone();
    match t.ty.name() {
        "F16" => {
            for e in bad[start..start + t.data.len()].chunks_exact_mut(2) {
                e.copy_from_slice(&0x7c00u16.to_le_bytes());
            }
        }
        "F32" => {
            for e in bad[start..start + t.data.len()].chunks_exact_mut(4) {
                e.copy_from_slice(&f32::INFINITY.to_le_bytes());
            }
        }
        other => panic!("the tiny adapter's B is {other}; extend this test"),
    }
    let path = std::env::temp_dir().join(format!("edgelora-inf-{}.gguf", std::process::id()));
    std::fs::write(&path, &bad).unwrap();
    let out = edgelora(&[
        "generate",
        "-m",
        "tiny",
        "-p",
        "intent: turn on the lights",
        "-n",
        "4",
        "--adapter",
        path.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not finite"), "{err}");
}

#[test]
fn min_p_and_repeat_last_n_reach_the_sampler() {
    let run = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "-m",
            "tiny",
            "-p",
            "reply: hello there",
            "-n",
            "16",
            "--temp",
            "1.5",
            "--seed",
            "3",
        ];
        args.extend_from_slice(extra);
        let out = edgelora(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    // min-p 1 keeps only the most likely token: the greedy text, whatever the temperature.
    let greedy = edgelora(&[
        "generate",
        "-m",
        "tiny",
        "-p",
        "reply: hello there",
        "-n",
        "16",
    ]);
    assert_eq!(run(&["--min-p", "1"]), greedy.stdout);
    // A strong penalty over a long window changes a hot sample's text; over no window not.
    let plain = run(&[]);
    assert_eq!(
        run(&["--repeat-penalty", "3", "--repeat-last-n", "0"]),
        plain
    );
    let out = edgelora(&["generate", "-m", "tiny", "-p", "hi", "--min-p", "2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("min_p"));
}

#[test]
fn demo_speaks_json() {
    let out = edgelora(&["demo", "--json", "-n", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["requests"].as_array().unwrap().len(), 6);
    assert_eq!(j["adapters"].as_array().unwrap().len(), 3);
    for task in ["intent", "reply", "normalize"] {
        let e = &j["exact_match"][task];
        assert_eq!(e["n"], 2);
        assert!(e["adapter"].as_u64().unwrap() >= e["base"].as_u64().unwrap());
    }
    assert!(j["swaps"].as_u64().unwrap() == 6 && j["tokens"].as_u64().unwrap() > 0);
}
