//! Constrained output through the CLI and the server, checked by parsers this project did not
//! write (`serde_json` here, `json` and `pydantic` through the official `openai` client):
//!
//! - `eval --task intent --json-schema targets/trainer/intent.schema.json` on the tiny model:
//!   every one of the 200 held-out answers is schema-valid JSON, for the base alone (which
//!   never writes JSON unconstrained) and with the intent adapter;
//! - `generate --stop` cuts at the stop string, `--json-object` gives an object;
//! - `serve`: `response_format` `json_object` and `json_schema` (whole and streamed), a bad
//!   schema is a 400 naming `response_format`;
//! - the `openai` client (`tests/openai_json_schema.py`): `json_schema` completions parsed
//!   with `json.loads`, and on SmolLM2 (when fetched) `chat.completions.parse` into a
//!   pydantic model. SKIPPED without a Python that has `openai`.

mod common;

use common::root;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

const TINY: &str = "models/tiny/tiny-base.gguf";
const SCHEMA: &str = "targets/trainer/intent.schema.json";
const SMOLLM2: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn edgelora(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_edgelora"))
        .current_dir(root())
        .args(args)
        .output()
        .expect("running edgelora");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// The intent schema, checked without the automaton: JSON (serde_json), keys a subset of
/// action, device, room, value in that order with action and device present, enum values,
/// an integer value.
fn intent_valid(text: &str) -> Result<(), String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let o = v.as_object().ok_or("not an object")?;
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join(SCHEMA)).unwrap()).unwrap();
    let props = schema["properties"].as_object().unwrap();
    let order = ["action", "device", "room", "value"];
    let mut last = 0;
    for k in o.keys() {
        let i = order
            .iter()
            .position(|x| x == k)
            .ok_or(format!("key {k}"))?;
        let at = text.find(&format!("\"{k}\"")).unwrap();
        if at < last {
            return Err(format!("key {k} out of order"));
        }
        last = at;
        let _ = i;
    }
    for k in ["action", "device"] {
        if !o.contains_key(k) {
            return Err(format!("{k} missing"));
        }
    }
    for k in ["action", "device", "room"] {
        if let Some(x) = o.get(k) {
            if !props[k]["enum"].as_array().unwrap().contains(x) {
                return Err(format!("{k} = {x} not in the enum"));
            }
        }
    }
    if let Some(x) = o.get("value") {
        if !(x.is_i64() || x.is_u64()) {
            return Err(format!("value {x} is not an integer"));
        }
    }
    Ok(())
}

#[test]
fn eval_intent_is_schema_valid_on_every_held_out_input() {
    let adapter = "models/tiny/intent/adapter.gguf";
    for ad in [None, Some(adapter)] {
        let mut args = vec![
            "eval",
            "--task",
            "intent",
            "--json-schema",
            SCHEMA,
            "--json",
        ];
        if let Some(a) = ad {
            args.extend(["--adapter", a]);
        }
        let v: Value = serde_json::from_str(&edgelora(&args)).unwrap();
        let preds = v["predictions"].as_array().unwrap();
        assert_eq!(preds.len(), 200);
        for p in preds {
            let p = p.as_str().unwrap();
            if let Err(e) = intent_valid(p) {
                panic!("{ad:?}: {p:?}: {e}");
            }
        }
        assert_eq!(v["schema_valid"], 200);
        assert_eq!(v["valid_json"], 200);
        println!(
            "{}: exact match {}/200 constrained, all 200 schema-valid",
            ad.unwrap_or("base alone"),
            v["correct"]
        );
    }
}

#[test]
fn generate_stop_and_json_object() {
    let prompt = "intent: turn on the kitchen lights\n";
    let free = edgelora(&["generate", "-m", TINY, "-p", prompt, "-n", "24", "--json"]);
    let free: Value = serde_json::from_str(&free).unwrap();
    let text = free["text"].as_str().unwrap();
    // Stop at the second word of the free text.
    let word = text.split_whitespace().nth(1).expect("two words");
    let out = edgelora(&[
        "generate",
        "-m",
        TINY,
        "-p",
        prompt,
        "-n",
        "24",
        "--json",
        "--stop",
        word,
        "--stop",
        "zzz-never",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["text"].as_str().unwrap(),
        &text[..text.find(word).unwrap()]
    );
    assert_eq!(v["stop"], "stopped");
    let out = edgelora(&[
        "generate",
        "-m",
        TINY,
        "-p",
        prompt,
        "-n",
        "64",
        "--json",
        "--json-object",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let obj: Value = serde_json::from_str(v["text"].as_str().unwrap()).unwrap();
    assert!(obj.is_object(), "{obj}");
    assert_eq!(v["stop"], "eog");
}

/// A running server, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(model: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_edgelora"))
            .current_dir(root())
            .args(["serve", "-m", model, "--port", "0"])
            .args(extra)
            .env_remove("EDGELORA_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting edgelora serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("no address: {line:?}"))
            .to_string();
        Server { child, addr }
    }

    /// POST a body as raw text (so the schema's key order is the written one): status, body.
    fn post(&self, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut raw = vec![];
        s.read_to_end(&mut raw).unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            let mut out = String::new();
            let mut r = rest;
            loop {
                let (n, tail) = r.split_once("\r\n").unwrap();
                let n = usize::from_str_radix(n.trim(), 16).unwrap();
                if n == 0 {
                    break;
                }
                out.push_str(&tail[..n]);
                r = &tail[n + 2..];
            }
            out
        } else {
            rest.to_string()
        };
        (status, body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn schema_text() -> String {
    std::fs::read_to_string(root().join(SCHEMA)).unwrap()
}

#[test]
fn serve_response_format() {
    let s = Server::start(
        TINY,
        &["--adapter", "intent=models/tiny/intent/adapter.gguf"],
    );
    let inputs = [
        "please raise the shades in the bedroom",
        "set the ac in the bathroom to 24 degrees",
        "count down 5 minutes",
    ];
    for model in ["tiny-base", "intent"] {
        for inp in inputs {
            let body = format!(
                r#"{{"model":"{model}","prompt":"intent: {inp}\n","max_tokens":64,"temperature":0,
                   "response_format":{{"type":"json_schema","json_schema":{{"name":"intent","strict":true,"schema":{}}}}}}}"#,
                schema_text()
            );
            let (st, out) = s.post("/v1/completions", &body);
            assert_eq!(st, 200, "{out}");
            let v: Value = serde_json::from_str(&out).unwrap();
            let text = v["choices"][0]["text"].as_str().unwrap();
            intent_valid(text).unwrap_or_else(|e| panic!("{model} {inp}: {text:?}: {e}"));
            assert_eq!(v["choices"][0]["finish_reason"], "stop");
            // Streamed: the chunks concatenate to the same JSON.
            let body = body.replacen(
                "\"temperature\":0,",
                "\"temperature\":0,\"stream\":true,",
                1,
            );
            let (st, out) = s.post("/v1/completions", &body);
            assert_eq!(st, 200);
            let streamed: String = out
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter(|d| *d != "[DONE]")
                .map(|d| {
                    let c: Value = serde_json::from_str(d).unwrap();
                    c["choices"][0]["text"].as_str().unwrap_or("").to_string()
                })
                .collect();
            assert_eq!(streamed, text);
        }
    }
    let body = json!({"model": "tiny-base", "prompt": "intent: turn off the fan\n", "max_tokens": 64,
                      "temperature": 0, "response_format": {"type": "json_object"}});
    let (st, out) = s.post("/v1/completions", &body.to_string());
    assert_eq!(st, 200, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let obj: Value = serde_json::from_str(v["choices"][0]["text"].as_str().unwrap()).unwrap();
    assert!(obj.is_object());
    for rf in [
        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"allOf": []}}}),
        json!({"type": "xml"}),
        json!({"type": "json_schema"}),
    ] {
        let body = json!({"model": "tiny-base", "prompt": "x", "response_format": rf});
        let (st, out) = s.post("/v1/completions", &body.to_string());
        assert_eq!(st, 400, "{out}");
        assert!(out.contains("response_format"), "{out}");
    }
}

/// A Python with the `openai` package: `$EDGELORA_OPENAI_PYTHON`, the repository's `.venv`,
/// /tmp/openai-venv, or `python3`.
fn openai_python() -> Option<String> {
    let mut cands = vec![];
    if let Ok(p) = std::env::var("EDGELORA_OPENAI_PYTHON") {
        cands.push(p);
    }
    cands.push(
        root()
            .join(".venv/bin/python")
            .to_string_lossy()
            .into_owned(),
    );
    cands.push("/tmp/openai-venv/bin/python".into());
    cands.push("python3".into());
    cands.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import openai, pydantic"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

#[test]
fn openai_client_parses_json_schema_output() {
    let Some(py) = openai_python() else {
        println!("SKIPPED: no Python with the `openai` package (set EDGELORA_OPENAI_PYTHON)");
        return;
    };
    let tiny = Server::start(
        TINY,
        &["--adapter", "intent=models/tiny/intent/adapter.gguf"],
    );
    let smol = root().join(SMOLLM2).exists().then(|| {
        Server::start(
            SMOLLM2,
            &[
                "--adapter",
                "intent=models/smollm2/intent/adapter.gguf",
                "--ctx",
                "512",
            ],
        )
    });
    if smol.is_none() {
        println!("SKIPPED (chat part): {SMOLLM2} is absent");
    }
    let mut cmd = Command::new(&py);
    cmd.current_dir(root())
        .arg("targets/host/tests/openai_json_schema.py")
        .arg(format!("http://{}/v1", tiny.addr))
        .arg(SCHEMA);
    if let Some(s) = &smol {
        cmd.arg(format!("http://{}/v1", s.addr));
    }
    let out = cmd.output().expect("running openai_json_schema.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "openai_json_schema.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ALL OK"), "{stdout}");
}
