//! `edgelora chat` driven through piped stdin: the commands, multi-line input, adapters
//! switched mid-chat, and the context shift. stdout carries only the answers (one line each
//! here: short replies), stderr the prompts, notices and timing lines.
//!
//! The tiny model (models/tiny, in the repository) has no chat format, so it chats with
//! `--plain`, one line per turn, the way its task adapters are prompted. SmolLM2 (its own
//! ChatML template) runs when `edgelora fetch smollm2` has put it in models/, else SKIPPED.

mod common;

use common::root;
use std::io::Write;
use std::process::{Command, Stdio};

const TINY: &str = "models/tiny/tiny-base.gguf";
const INTENT: &str = "models/tiny/intent/adapter.gguf";
const SMOL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
/// A held-out input of the intent task (models/tiny/intent/predictions.jsonl).
const Q: &str = "intent: please set the garage shades to 1 percent";

/// What one chat printed.
struct Chat {
    /// The answers, one per line.
    answers: Vec<String>,
    stderr: String,
}

impl Chat {
    /// How many turns were answered (one timing line each).
    fn turns(&self) -> usize {
        self.stderr.matches("[context: ").count()
    }
}

/// Run `edgelora chat ARGS` with `input` on stdin; it must exit 0.
fn chat(args: &[&str], input: &str) -> Chat {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgelora"))
        .current_dir(root())
        .arg("chat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running edgelora chat");
    // A chat that exits early closes its stdin; the status below says why.
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes());
    let out = child.wait_with_output().expect("waiting for edgelora chat");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "edgelora chat {args:?} failed: {}\ninput:\n{input}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    Chat {
        answers: stdout.lines().map(str::to_string).collect(),
        stderr,
    }
}

/// The tiny model, `--plain`; `-n 24` unless `extra` sets it.
fn tiny(extra: &[&str], input: &str) -> Chat {
    let mut a = vec!["-m", TINY, "--plain"];
    if !extra.contains(&"-n") {
        a.extend_from_slice(&["-n", "24"]);
    }
    a.extend_from_slice(extra);
    chat(&a, input)
}

/// SmolLM2 args, or `None` (SKIPPED printed) when the file is not there.
fn smol(test: &str) -> Option<Vec<&'static str>> {
    if root().join(SMOL).is_file() {
        Some(vec!["-m", SMOL, "-n", "12"])
    } else {
        println!("SKIPPED {test} on SmolLM2: {SMOL} not found (edgelora fetch smollm2)");
        None
    }
}

#[test]
fn help_unknown_command_and_empty_lines_are_not_sent() {
    let c = tiny(&[], "/help\n/frobnicate now\n\n   \n/stats\nhello\n");
    for cmd in ["/clear", "/system", "/adapter", "/quit", "\"\"\""] {
        assert!(c.stderr.contains(cmd), "/help lacks {cmd}:\n{}", c.stderr);
    }
    let err = c
        .stderr
        .lines()
        .find(|l| l.contains("unknown command /frobnicate"))
        .unwrap_or_else(|| panic!("no unknown-command error:\n{}", c.stderr));
    assert!(err.contains("/help") && err.contains("/adapter"), "{err}");
    assert!(
        c.stderr.contains("context positions used"),
        "/stats:\n{}",
        c.stderr
    );
    // Only "hello" reached the model; the empty lines did not end the chat.
    assert_eq!(c.turns(), 1, "{}", c.stderr);
    assert_eq!(c.answers.len(), 1, "{:?}", c.answers);
}

#[test]
fn quit_ends_the_chat_and_eof_exits_0() {
    let c = tiny(&[], "hello\n/quit\nnot read\n");
    assert_eq!(c.turns(), 1, "{}", c.stderr);
    let c = tiny(&[], "hello\n/exit\nnot read\n");
    assert_eq!(c.turns(), 1, "{}", c.stderr);
}

/// The answer to a question after /clear is the answer to it first (greedy).
fn check_clear(args: &[&str], q1: &str, q2: &str) {
    let c = chat(args, &format!("{q1}\n{q2}\n/clear\n{q1}\n"));
    assert_eq!(c.turns(), 3, "{}", c.stderr);
    assert_eq!(c.answers.len(), 3, "{:?}", c.answers);
    assert_eq!(c.answers[0], c.answers[2], "after /clear:\n{}", c.stderr);
    assert!(c.stderr.contains("conversation cleared"), "{}", c.stderr);
}

#[test]
fn clear_forgets_the_conversation() {
    check_clear(
        &["-m", TINY, "--plain", "-n", "24"],
        Q,
        "intent: turn on the tv",
    );
    if let Some(a) = smol("clear") {
        check_clear(&a, "What is the capital of France?", "And of Spain?");
    }
}

/// A `\` continuation and a `"""` block are one turn each, with the same text.
fn check_multiline(args: &[&str], a: &str, b: &str) {
    let c = chat(
        args,
        &format!("{a}\\\n{b}\n/clear\n\"\"\"\n{a}\n{b}\n\"\"\"\n"),
    );
    assert_eq!(c.turns(), 2, "{}", c.stderr);
    assert_eq!(c.answers.len(), 2, "{:?}", c.answers);
    assert_eq!(c.answers[0], c.answers[1], "{}", c.stderr);
}

#[test]
fn multi_line_input_is_one_turn() {
    check_multiline(
        &["-m", TINY, "--plain", "-n", "24"],
        "please set the garage",
        "shades to 1 percent",
    );
    if let Some(a) = smol("multi-line") {
        check_multiline(&a, "Name a colour.", "One word only.");
    }
}

#[test]
fn adapter_switches_mid_chat_and_errors_keep_the_old_one() {
    let c = tiny(
        &[],
        &format!(
            "{Q}\n/adapter {INTENT}\n/clear\n{Q}\n/adapter models/tiny/missing.gguf\n/clear\n{Q}\n\
             /adapter none\n/clear\n{Q}\n"
        ),
    );
    assert_eq!(c.answers.len(), 4, "{:?}\n{}", c.answers, c.stderr);
    let base = &c.answers[0];
    assert!(!base.starts_with('{'), "base model answered JSON: {base}");
    for a in &c.answers[1..3] {
        let v: serde_json::Value = serde_json::from_str(a)
            .unwrap_or_else(|e| panic!("intent adapter answer {a:?} is not JSON: {e}"));
        assert_eq!(v["device"], "blinds", "{a}");
        assert_eq!(v["room"], "garage", "{a}");
    }
    assert!(
        c.stderr
            .lines()
            .any(|l| l.contains("error: /adapter models/tiny/missing.gguf")
                && l.contains("keeping")
                && l.contains(INTENT)),
        "{}",
        c.stderr
    );
    assert_eq!(&c.answers[3], base, "/adapter none restores the base");
}

#[test]
fn a_full_context_shifts_and_keeps_answering() {
    let turns = [
        Q,
        "intent: turn on the tv in the kitchen",
        "intent: please raise the shades in the bedroom",
        "intent: set the ac in the bathroom to 24 degrees",
        "intent: switch off the lights in the office",
    ];
    let mut input = turns.join("\n");
    input.push('\n');
    let c = tiny(&["--ctx", "64", "-n", "16"], &input);
    assert_eq!(c.turns(), turns.len(), "{}", c.stderr);
    assert_eq!(c.answers.len(), turns.len(), "{:?}", c.answers);
    assert!(
        c.stderr.contains("context full: dropped the "),
        "no shift notice:\n{}",
        c.stderr
    );
    // Every timing line's context count is within --ctx.
    for l in c.stderr.lines().filter(|l| l.starts_with("[context: ")) {
        let used: usize = l["[context: ".len()..]
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{l}"));
        assert!(used <= 64, "{l}");
    }
    // A message that cannot fit even alone is refused with the numbers, and the chat goes on.
    let long = "please set the garage shades to 1 percent ".repeat(8);
    let c = tiny(&["--ctx", "32", "-n", "8"], &format!("{long}\nhello\n"));
    assert!(
        c.stderr.contains("does not fit") && c.stderr.contains("the context is 32"),
        "{}",
        c.stderr
    );
    assert_eq!(c.turns(), 1, "{}", c.stderr);
    if let Some(mut a) = smol("context shift") {
        a.extend_from_slice(&["--ctx", "96"]);
        let c = chat(
            &a,
            "What is the capital of France?\nAnd of Spain?\nAnd of Italy?\nAnd of Germany?\n",
        );
        assert_eq!(c.turns(), 4, "{}", c.stderr);
        assert!(
            c.stderr.contains("context full: dropped the "),
            "{}",
            c.stderr
        );
    }
}

#[test]
fn a_model_without_a_chat_format_is_refused_without_plain() {
    let out = Command::new(env!("CARGO_BIN_EXE_edgelora"))
        .current_dir(root())
        .args(["chat", "-m", TINY])
        .stdin(Stdio::null())
        .output()
        .expect("running edgelora chat");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no chat template") && err.contains("--plain"),
        "{err}"
    );
}
