//! Progress of the file-writing commands (`quantize`, `merge`, `adapter convert`,
//! `adapter combine`, `adapter frame`): a bar only on a terminal, and never a different file
//! or a failure because of where stderr goes. Each command runs three ways on the committed
//! tiny model and adapters: stderr piped and read (plain lines, no bar), stderr closed before
//! the first line (`cmd 2>&1 | head -1`), and under a pseudo-terminal through util-linux's
//! `script` (a bar is drawn); the three output files must be byte-identical.

mod common;

use common::root;
use std::path::Path;
use std::process::{Command, Stdio};

const A: &str = "models/tiny/intent/adapter.gguf";
const B: &str = "models/tiny/reply/adapter.gguf";

/// Every command with `OUT` where its output path goes, and the words its bar shows.
fn commands() -> Vec<(&'static str, Vec<&'static str>, &'static str)> {
    vec![
        (
            "quantize",
            vec!["quantize", "tiny", "--type", "q4_0", "-o", "OUT"],
            "quantize [",
        ),
        (
            "merge",
            vec![
                "merge",
                "-m",
                "tiny",
                "--adapter",
                A,
                "--type",
                "base",
                "-o",
                "OUT",
            ],
            "merge [",
        ),
        (
            "convert",
            vec![
                "adapter",
                "convert",
                "models/tiny/intent",
                "--base",
                "tiny",
                "-o",
                "OUT",
            ],
            "convert [",
        ),
        (
            "combine",
            vec!["adapter", "combine", A, B, "--method", "svd", "-o", "OUT"],
            "combine [",
        ),
        ("frame", vec!["adapter", "frame", A, "-o", "OUT"], ""),
    ]
}

fn args_with(args: &[&str], out: &Path) -> Vec<String> {
    args.iter()
        .map(|a| {
            if *a == "OUT" {
                out.to_str().unwrap().to_string()
            } else {
                a.to_string()
            }
        })
        .collect()
}

/// Run with stderr piped (read to the end) or closed at once; returns (success, stderr, file).
fn run(args: &[String], out: &Path, close_stderr: bool) -> (bool, String, Vec<u8>) {
    let _ = std::fs::remove_file(out);
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgelora"))
        .current_dir(root())
        .env("RUST_BACKTRACE", "0")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running edgelora");
    let mut err = String::new();
    let pipe = child.stderr.take().unwrap();
    if close_stderr {
        drop(pipe);
    } else {
        use std::io::Read;
        let mut p = pipe;
        p.read_to_string(&mut err).unwrap();
    }
    let ok = child.wait().unwrap().success();
    let bytes = std::fs::read(out).unwrap_or_default();
    let _ = std::fs::remove_file(out);
    (ok, err, bytes)
}

#[test]
fn files_are_the_same_with_stderr_piped_closed_or_a_terminal() {
    let dir = std::env::temp_dir().join(format!("edgelora-progress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let has_script = Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_script {
        println!("SKIPPED (terminal runs only): util-linux `script` is not installed");
    }
    for (name, args, bar_words) in commands() {
        let out = dir.join(format!("{name}.out"));
        let argv = args_with(&args, &out);

        let (ok, err, piped) = run(&argv, &out, false);
        assert!(ok, "{name} with stderr piped failed:\n{err}");
        assert!(!piped.is_empty(), "{name} wrote nothing");
        // Not a terminal: no bar, no cursor movement, only whole lines.
        assert!(
            !err.contains('\r') && !err.contains("\x1b["),
            "{name}: terminal control codes on a pipe:\n{err:?}"
        );
        assert!(
            err.contains("wrote") || err.contains("merged"),
            "{name}: {err}"
        );

        let (ok, _, closed) = run(&argv, &out, true);
        assert!(ok, "{name} with stderr closed did not succeed");
        assert!(
            closed == piped,
            "{name}: the file differs with stderr closed"
        );

        if !has_script || bar_words.is_empty() {
            continue;
        }
        // `script -qec CMD /dev/null`: CMD on a pseudo-terminal, its exit status returned, what
        // it drew on our stdout. The paths have no spaces or quotes (repo-relative and a temp dir).
        let cmd = std::iter::once(env!("CARGO_BIN_EXE_edgelora").to_string())
            .chain(argv.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        let _ = std::fs::remove_file(&out);
        let t = Command::new("script")
            .current_dir(root())
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let drawn = String::from_utf8_lossy(&t.stdout);
        assert!(t.status.success(), "{name} on a terminal failed:\n{drawn}");
        let tty = std::fs::read(&out).unwrap_or_default();
        let _ = std::fs::remove_file(&out);
        assert!(tty == piped, "{name}: the file differs on a terminal");
        assert!(
            drawn.contains(bar_words),
            "{name}: no progress bar ({bar_words:?}) on a terminal:\n{drawn}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
