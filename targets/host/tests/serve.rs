//! `edgelora serve` over HTTP, against the tiny default model and its three task adapters
//! (`models/tiny/`), and for chat SmolLM2-135M-Instruct with its intent adapter when it has
//! been fetched (SKIPPED otherwise: the tiny models have no chat format).
//!
//! Each test starts the server on an ephemeral port (`--port 0`), reads the bound address
//! from its stdout and talks HTTP/1.1 to it with the small client below. What is asserted:
//! - a greedy completion is token for token what `edgelora generate` gives for the same
//!   prompt and adapter (text and token count), chosen by `model` and by `lora` (by name, by
//!   index, and a two-adapter mix equal to `generate --adapter A:0.5 --adapter B:0.5`);
//! - a greedy chat completion equals `generate --chat`;
//! - streamed chunks concatenate to the whole response, in OpenAI's chunk shapes, ending with
//!   `data: [DONE]`, with the usage chunk when asked;
//! - stop strings: the text ends before the stop string, which never appears in any chunk,
//!   also when it spans tokens; logprobs come one per token;
//! - 404 for an unknown model or adapter (listing the ids), 400 for malformed JSON and bad
//!   fields (naming the field), 401 without the API key (but not on /health);
//! - `/v1/models` lists the base and the adapters; `/metrics` counters move;
//! - `--parallel 2` with concurrent requests for different adapters gives each request's
//!   single answer;
//! - run-time adapters: `POST /v1/adapters` by path and as a framed upload answers like
//!   `generate --adapter FILE`, 409 for a taken id, 400 for a truncated file, a bad CRC or an
//!   adapter of another base (refused by fingerprint); `DELETE` hides it at once (404 with the
//!   list) and `/v1/models` follows;
//! - 413 for a body over the limit, 429 with Retry-After when the queue is full;
//! - SIGTERM during a stream: the stream ends with `[DONE]`, the server exits 0;
//! - the official `openai` Python client (`tests/openai_client.py`), when a Python with it is
//!   found (SKIPPED otherwise).

mod common;

use common::root;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

const TINY: &str = "models/tiny/tiny-base.gguf";
const TASKS: [&str; 3] = ["intent", "reply", "normalize"];

fn adapter_file(task: &str) -> String {
    format!("models/tiny/{task}/adapter.gguf")
}

/// A running server, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(model: &str, extra: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgelora"));
        cmd.current_dir(root())
            .args(["serve", "-m", model, "--port", "0"])
            .args(extra)
            .env_remove("EDGELORA_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("starting edgelora serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("reading the address");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("no address on stdout: {line:?}"))
            .to_string();
        Server { child, addr }
    }

    /// The tiny model with its three adapters.
    fn tiny(extra: &[&str]) -> Server {
        let mut args: Vec<String> = TASKS
            .iter()
            .flat_map(|t| ["--adapter".to_string(), format!("{t}={}", adapter_file(t))])
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start(TINY, &args)
    }

    fn request(&self, method: &str, path: &str, headers: &[&str], body: &str) -> Response {
        http(&self.addr, method, path, headers, body)
    }

    fn post(&self, path: &str, body: &Value) -> Response {
        self.request("POST", path, &[], &body.to_string())
    }

    fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], "")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Response {
    status: u16,
    headers: String,
    body: String,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The `data:` payloads of a server-sent event stream; checks it ends with `[DONE]`.
    fn events(&self) -> Vec<Value> {
        assert!(
            self.headers
                .to_ascii_lowercase()
                .contains("content-type: text/event-stream"),
            "{}",
            self.headers
        );
        let mut datas = vec![];
        for ev in self.body.split("\n\n").filter(|e| !e.trim().is_empty()) {
            let d = ev
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {ev:?}"));
            assert!(!d.contains('\n'), "one line per event: {ev:?}");
            datas.push(d.to_string());
        }
        assert_eq!(
            datas.last().map(String::as_str),
            Some("[DONE]"),
            "{datas:?}"
        );
        datas[..datas.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
            .collect()
    }
}

/// A minimal HTTP/1.1 client: one request per connection, chunked bodies decoded.
fn http(addr: &str, method: &str, path: &str, headers: &[&str], body: &str) -> Response {
    http_bytes(addr, method, path, headers, body.as_bytes())
}

fn http_bytes(addr: &str, method: &str, path: &str, headers: &[&str], body: &[u8]) -> Response {
    let mut s = TcpStream::connect(addr).expect("connecting");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    req.extend_from_slice(body);
    // The server may answer (413) and close before it has read a big body.
    let _ = s.write_all(&req);
    let mut raw = vec![];
    s.read_to_end(&mut raw).expect("reading");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut rest = &raw[split + 4..];
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = vec![];
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size");
            let n = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16)
                .expect("hex chunk size");
            rest = &rest[eol + 2..];
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[..n]);
            rest = &rest[n + 2..];
        }
        out
    } else {
        rest.to_vec()
    };
    Response {
        status,
        headers: head,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}

/// `edgelora generate --json`: (text, token count).
fn generate(
    model: &str,
    adapters: &[String],
    prompt: &str,
    n: usize,
    chat: bool,
) -> (String, usize) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgelora"));
    cmd.current_dir(root()).args([
        "generate",
        "-m",
        model,
        "-p",
        prompt,
        "-n",
        &n.to_string(),
        "--json",
    ]);
    for a in adapters {
        cmd.args(["--adapter", a]);
    }
    if chat {
        cmd.arg("--chat");
    }
    let out = cmd.output().expect("running generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let start = stdout.find('{').expect("JSON");
    let v: Value = serde_json::from_str(&stdout[start..]).expect("generate JSON");
    (
        v["text"].as_str().expect("text").to_string(),
        v["tokens"].as_array().expect("tokens").len(),
    )
}

fn prompts() -> [(&'static str, &'static str); 3] {
    [
        ("intent", "intent: turn on the kitchen lights\n"),
        ("reply", "reply: set the bedroom thermostat to 21 degrees\n"),
        ("normalize", "normalize: half past seven in the evening\n"),
    ]
}

fn completion(model: &str, prompt: &str, n: usize) -> Value {
    json!({"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0})
}

fn text_of(r: &Value) -> String {
    r["choices"][0]["text"].as_str().expect("text").to_string()
}

#[test]
fn completions_equal_generate_by_model_and_lora() {
    let s = Server::tiny(&[]);
    for (task, prompt) in prompts() {
        // The adapter by `model`, the base alone, and the adapter by `lora` name and index.
        let (want, n_tok) = generate(TINY, &[adapter_file(task)], prompt, 40, false);
        let r = s.post("/v1/completions", &completion(task, prompt, 40));
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(text_of(&v), want, "{task}");
        assert_eq!(v["usage"]["completion_tokens"], n_tok, "{task}");
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["model"], task);
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{task}: {v}");
        println!("{task}: {want:?} ({n_tok} tokens) = generate");

        let (base, _) = generate(TINY, &[], prompt, 40, false);
        let v = s
            .post("/v1/completions", &completion("tiny-base", prompt, 40))
            .json();
        assert_eq!(text_of(&v), base);
        assert_ne!(base, want, "{task}: the adapter changes the answer");

        let i = TASKS.iter().position(|t| *t == task).unwrap();
        for id in [json!(task), json!(i)] {
            let mut body = completion("tiny-base", prompt, 40);
            body["lora"] = json!([{"id": id, "scale": 1.0}]);
            let v = s.post("/v1/completions", &body).json();
            assert_eq!(text_of(&v), want, "lora id {id}");
        }
    }
    // A mix of two adapters at half scale each.
    let (task, prompt) = prompts()[0];
    let (want, _) = generate(
        TINY,
        &[
            format!("{}:0.5", adapter_file("intent")),
            format!("{}:0.5", adapter_file("normalize")),
        ],
        prompt,
        30,
        false,
    );
    let mut body = completion(task, prompt, 30);
    body["lora"] = json!([{"id": "intent", "scale": 0.5}, {"id": 2, "scale": 0.5}]);
    let v = s.post("/v1/completions", &body).json();
    assert_eq!(text_of(&v), want, "mix");
    // max_tokens cuts with finish_reason "length"; token ids as the prompt work too.
    let v = s
        .post("/v1/completions", &completion("intent", prompt, 3))
        .json();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 3);
}

#[test]
fn streaming_concatenates_to_whole() {
    let s = Server::tiny(&[]);
    for (task, prompt) in prompts() {
        let whole = text_of(
            &s.post("/v1/completions", &completion(task, prompt, 40))
                .json(),
        );
        let mut body = completion(task, prompt, 40);
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let r = s.post("/v1/completions", &body);
        assert_eq!(r.status, 200);
        let evs = r.events();
        assert!(evs.len() >= 3, "{evs:?}");
        let id = evs[0]["id"].clone();
        let mut text = String::new();
        for e in &evs[..evs.len() - 2] {
            assert_eq!(e["object"], "text_completion");
            assert_eq!(e["id"], id);
            assert!(e["choices"][0]["finish_reason"].is_null());
            text.push_str(e["choices"][0]["text"].as_str().unwrap());
        }
        let last = &evs[evs.len() - 2];
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        let usage = &evs[evs.len() - 1];
        assert_eq!(usage["choices"], json!([]));
        assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
        assert_eq!(text, whole, "{task}");
    }
}

/// SmolLM2-135M-Instruct (its own chat template) and its intent adapter, if fetched
/// (`edgelora fetch smollm2`; CI fetches it for the parity tests). The tiny models that ship
/// in the repository have no chat format their vocabulary can spell.
const SMOLLM2: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
const SMOLLM2_INTENT: &str = "models/smollm2/intent/adapter.gguf";

fn smollm2() -> Option<&'static str> {
    if root().join(SMOLLM2).exists() {
        Some(SMOLLM2)
    } else {
        println!("SKIPPED: {SMOLLM2} not found (run `edgelora fetch smollm2`)");
        None
    }
}

#[test]
fn chat_equals_generate_chat_and_streams() {
    let Some(base) = smollm2() else { return };
    let s = Server::start(
        base,
        &[
            "--adapter",
            &format!("intent={SMOLLM2_INTENT}"),
            "--ctx",
            "256",
        ],
    );
    let msg = "What is the capital of Germany?";
    for (model, ads) in [
        ("intent", vec![SMOLLM2_INTENT.to_string()]),
        ("SmolLM2-135M-Instruct.Q4_1", vec![]),
    ] {
        let (want, n_tok) = generate(base, &ads, msg, 12, true);
        let body = json!({"model": model, "messages": [{"role": "user", "content": msg}],
                          "max_tokens": 12, "temperature": 0});
        let r = s.post("/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            want.as_str(),
            "{model}"
        );
        assert_eq!(v["usage"]["completion_tokens"], n_tok);
        println!("chat {model}: {want:?} = generate --chat");
        // Streamed: a role chunk, content deltas, a finish chunk.
        let mut body = body.clone();
        body["stream"] = json!(true);
        body["logprobs"] = json!(true);
        body["top_logprobs"] = json!(2);
        let evs = s.post("/v1/chat/completions", &body).events();
        assert_eq!(evs[0]["choices"][0]["delta"]["role"], "assistant");
        let mut text = String::new();
        let mut n_lp = 0;
        for e in &evs {
            assert_eq!(e["object"], "chat.completion.chunk");
            let c = &e["choices"][0];
            text.push_str(c["delta"]["content"].as_str().unwrap_or(""));
            if let Some(lp) = c["logprobs"]["content"].as_array() {
                for t in lp {
                    assert!(t["logprob"].as_f64().unwrap() <= 0.0);
                    assert_eq!(t["top_logprobs"].as_array().unwrap().len(), 2);
                    n_lp += 1;
                }
            }
        }
        assert_eq!(text, want);
        assert_eq!(n_lp, n_tok, "one logprob entry per token");
        let fin = &evs.last().unwrap()["choices"][0];
        assert!(fin["finish_reason"] == "length" || fin["finish_reason"] == "stop");
        assert_eq!(fin["delta"], json!({}));
    }
    // A system message and content parts are accepted, and change the prompt.
    let body = json!({"model": "intent", "max_tokens": 4, "temperature": 0, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": msg}]}]});
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["usage"]["prompt_tokens"].as_u64().unwrap() > 10);
}

#[test]
fn stop_strings_never_leak() {
    let s = Server::tiny(&[]);
    let (task, prompt) = prompts()[0];
    let full = text_of(
        &s.post("/v1/completions", &completion(task, prompt, 40))
            .json(),
    );
    // A stop string spanning several tokens, one inside a token, and one that never occurs.
    for stop in ["\"device\":\"", "ice", "kitch"] {
        let at = full
            .find(stop)
            .unwrap_or_else(|| panic!("{stop:?} in {full:?}"));
        let want = &full[..at];
        let mut body = completion(task, prompt, 40);
        body["stop"] = json!([stop, "never-occurs"]);
        let v = s.post("/v1/completions", &body).json();
        assert_eq!(text_of(&v), want, "stop {stop:?}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        body["stream"] = json!(true);
        let evs = s.post("/v1/completions", &body).events();
        let mut text = String::new();
        for e in &evs {
            let t = e["choices"][0]["text"].as_str().unwrap();
            assert!(!t.contains(stop), "chunk {t:?} holds the stop {stop:?}");
            text.push_str(t);
        }
        assert_eq!(text, want, "streamed, stop {stop:?}");
        assert!(!text.contains(&stop[..1]) || want.contains(&stop[..1]));
    }
    // A plain string works too.
    let mut body = completion(task, prompt, 40);
    body["stop"] = json!("room");
    let v = s.post("/v1/completions", &body).json();
    assert_eq!(text_of(&v), full[..full.find("room").unwrap()]);
}

#[test]
fn errors_are_openai_shaped() {
    let s = Server::tiny(&[]);
    let (_, prompt) = prompts()[0];
    // Unknown model and unknown adapter: 404 with the known ids.
    for (body, param) in [
        (completion("nope", prompt, 4), "model"),
        (
            json!({"model": "tiny-base", "prompt": prompt, "lora": [{"id": "nope", "scale": 1}]}),
            "lora",
        ),
        (
            json!({"model": "tiny-base", "prompt": prompt, "lora": [{"id": 7, "scale": 1}]}),
            "lora",
        ),
    ] {
        let r = s.post("/v1/completions", &body);
        assert_eq!(r.status, 404, "{}", r.body);
        let e = &r.json()["error"];
        assert_eq!(e["code"], "model_not_found");
        assert_eq!(e["param"], param);
        assert_eq!(
            e["available"],
            json!(["tiny-base", "intent", "reply", "normalize"])
        );
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains("intent, reply, normalize"), "{msg}");
    }
    // Malformed JSON.
    let r = s.request("POST", "/v1/completions", &[], "{\"model\": ");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    // Bad fields are named.
    for (field, val) in [
        ("temperature", json!("hot")),
        ("temperature", json!(5)),
        ("max_tokens", json!(0)),
        ("top_p", json!(1.5)),
        ("stop", json!(7)),
        ("n", json!(2)),
        ("max_token", json!(3)),
    ] {
        let mut body = completion("intent", prompt, 4);
        body[field] = val.clone();
        let r = s.post("/v1/completions", &body);
        assert_eq!(r.status, 400, "{field}={val}: {}", r.body);
        let e = &r.json()["error"];
        assert_eq!(e["param"], field, "{e}");
        assert_eq!(e["type"], "invalid_request_error");
        assert!(e["message"].as_str().unwrap().contains(field), "{e}");
    }
    // Chat on a model with no chat format, and a missing prompt.
    let r = s.post(
        "/v1/chat/completions",
        &json!({"model": "intent", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("no chat template"), "{}", r.body);
    let r = s.post("/v1/completions", &json!({"model": "intent"}));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "prompt");
    // A prompt longer than the context.
    let long = "turn on the lights ".repeat(100);
    let r = s.post("/v1/completions", &completion("intent", &long, 4));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
}

#[test]
fn api_key_is_required_but_not_for_health() {
    let s = Server::tiny(&["--api-key", "sekrit"]);
    let (_, prompt) = prompts()[0];
    let body = completion("intent", prompt, 4).to_string();
    for (hdr, want) in [
        (None, 401),
        (Some("Authorization: Bearer wrong"), 401),
        (Some("Authorization: sekrit"), 401),
        (Some("Authorization: Bearer sekrit"), 200),
    ] {
        let h: Vec<&str> = hdr.into_iter().collect();
        let r = s.request("POST", "/v1/completions", &h, &body);
        assert_eq!(r.status, want, "{hdr:?}: {}", r.body);
        if want == 401 {
            assert_eq!(r.json()["error"]["code"], "invalid_api_key");
        }
        for path in ["/v1/models", "/metrics"] {
            assert_eq!(s.request("GET", path, &h, "").status, want, "{path}");
        }
    }
    assert_eq!(s.get("/health").status, 200);
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn models_health_and_metrics() {
    let s = Server::tiny(&[]);
    let v = s.get("/v1/models").json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["tiny-base", "intent", "reply", "normalize"]);
    assert_eq!(v["data"][1]["parent"], "tiny-base");
    assert_eq!(s.get("/health").json()["status"], "ok");

    let before = s.get("/metrics");
    assert!(before.headers.contains("text/plain"), "{}", before.headers);
    let (task, prompt) = prompts()[1];
    let v = s
        .post("/v1/completions", &completion(task, prompt, 20))
        .json();
    let n = v["usage"]["completion_tokens"].as_f64().unwrap();
    let _ = s.post("/v1/completions", &completion("tiny-base", prompt, 5));
    let after = s.get("/metrics").body;
    let b = &before.body;
    assert_eq!(
        metric(&after, "edgelora_generated_tokens_total")
            - metric(b, "edgelora_generated_tokens_total"),
        n + 5.0
    );
    assert_eq!(
        metric(&after, "edgelora_adapter_requests_total{model=\"reply\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &after,
            "edgelora_adapter_requests_total{model=\"tiny-base\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &after,
            "edgelora_requests_total{route=\"/v1/completions\",status=\"200\"}"
        ),
        2.0
    );
    assert!(metric(&after, "edgelora_decode_tokens_per_second") > 0.0);
    assert!(after.contains("edgelora_queue_depth 0"), "{after}");
}

#[test]
fn parallel_requests_get_their_own_answers() {
    let s = Server::tiny(&["--parallel", "2"]);
    let single: Vec<String> = prompts()
        .iter()
        .map(|(t, p)| text_of(&s.post("/v1/completions", &completion(t, p, 40)).json()))
        .collect();
    let addr = s.addr.clone();
    let handles: Vec<_> = (0..9)
        .map(|i| {
            let addr = addr.clone();
            let (t, p) = prompts()[i % 3];
            std::thread::spawn(move || {
                let mut body = completion(t, p, 40);
                body["stream"] = json!(i % 2 == 0);
                let r = http(&addr, "POST", "/v1/completions", &[], &body.to_string());
                assert_eq!(r.status, 200, "{}", r.body);
                if i % 2 == 0 {
                    r.events()
                        .iter()
                        .map(|e| e["choices"][0]["text"].as_str().unwrap().to_string())
                        .collect::<String>()
                } else {
                    text_of(&r.json())
                }
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), single[i % 3], "request {i}");
    }
    let m = s.get("/metrics").body;
    assert_eq!(metric(&m, "edgelora_queue_depth"), 0.0);
    assert_eq!(metric(&m, "edgelora_running"), 0.0);
}

/// A Python with the `openai` package: `$EDGELORA_OPENAI_PYTHON`, the repository's `.venv`,
/// or `python3`.
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
    cands.push("python3".into());
    cands.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import openai"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

#[test]
fn official_openai_client() {
    let Some(py) = openai_python() else {
        println!(
            "SKIPPED: no Python with the `openai` package (pip install openai, or set \
             EDGELORA_OPENAI_PYTHON to such a python)"
        );
        return;
    };
    let tiny = Server::tiny(&["--api-key", "sekrit"]);
    // Expected answers from `generate`.
    let mut cases = vec![];
    for (task, prompt) in prompts() {
        let (want, _) = generate(TINY, &[adapter_file(task)], prompt, 40, false);
        cases.push(
            json!({"kind": "completion", "model": task, "prompt": prompt,
                          "max_tokens": 40, "expected": want}),
        );
    }
    let mut spec = json!({
        "tiny": {"base_url": format!("http://{}/v1", tiny.addr), "api_key": "sekrit",
                 "models": ["tiny-base", "intent", "reply", "normalize"], "cases": cases},
    });
    // Chat needs a model with a chat format.
    let chat = smollm2().map(|base| {
        let msg = "What is the capital of Germany?";
        let (want, _) = generate(base, &[SMOLLM2_INTENT.to_string()], msg, 12, true);
        let s = Server::start(
            base,
            &[
                "--adapter",
                &format!("intent={SMOLLM2_INTENT}"),
                "--ctx",
                "256",
            ],
        );
        spec["chat"] = json!({"base_url": format!("http://{}/v1", s.addr), "api_key": "unused",
            "models": ["SmolLM2-135M-Instruct.Q4_1", "intent"],
            "cases": [{"kind": "chat", "model": "intent",
                       "messages": [{"role": "user", "content": msg}],
                       "max_tokens": 12, "expected": want}]});
        s
    });
    let dir = std::env::temp_dir().join(format!("edgelora-serve-openai-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec_path = dir.join("openai_cases.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let out = Command::new(&py)
        .current_dir(root())
        .arg("targets/host/tests/openai_client.py")
        .arg(&spec_path)
        .output()
        .expect("running openai_client.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "openai_client.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ALL OK"), "{stdout}");
    drop(chat);
    let _ = std::fs::remove_dir_all(dir);
}

fn ids(s: &Server) -> Vec<String> {
    s.get("/v1/models").json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect()
}

#[test]
fn adapters_added_used_and_deleted_at_run_time() {
    let s = Server::start(
        TINY,
        &["--adapter", &format!("intent={}", adapter_file("intent"))],
    );
    let (task, prompt) = prompts()[1];
    let (want, n_tok) = generate(TINY, &[adapter_file(task)], prompt, 40, false);
    let path = root().join(adapter_file(task));
    let add = json!({"id": "rt", "path": path.to_str().expect("path"), "scale": 1.0});
    let r = s.post("/v1/adapters", &add);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["id"], "rt");
    assert_eq!(ids(&s), ["tiny-base", "intent", "rt"]);
    let r = s.post("/v1/completions", &completion("rt", prompt, 40));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(text_of(&r.json()), want);
    assert_eq!(r.json()["usage"]["completion_tokens"], n_tok);

    // A taken id (an adapter's or the base's): 409, nothing changes.
    assert_eq!(s.post("/v1/adapters", &add).status, 409);
    let base = json!({"id": "tiny-base", "path": path.to_str().unwrap()});
    assert_eq!(s.post("/v1/adapters", &base).status, 409);

    // A truncated file: 400 with the core's error (here: tensor data outside the file).
    let bytes = std::fs::read(&path).expect("adapter");
    let dir = std::env::temp_dir().join(format!("edgelora-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let r = s.post(
        "/v1/adapters",
        &json!({"id": "cut", "path": cut.to_str().unwrap()}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.starts_with("parsing the adapter: "), "{msg}");

    // A framed upload (`adapter frame`): the same answer; a flipped payload byte: bad CRC.
    let elas = dir.join("a.elas");
    let out = Command::new(env!("CARGO_BIN_EXE_edgelora"))
        .current_dir(root())
        .args([
            "adapter",
            "frame",
            &adapter_file(task),
            "-o",
            elas.to_str().unwrap(),
        ])
        .output()
        .expect("adapter frame");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut framed = std::fs::read(&elas).expect("elas");
    let r = http_bytes(&s.addr, "POST", "/v1/adapters?id=up", &[], &framed);
    assert_eq!(r.status, 201, "{}", r.body);
    let r = s.post("/v1/completions", &completion("up", prompt, 40));
    assert_eq!(text_of(&r.json()), want);
    let mid = framed.len() / 2;
    framed[mid] ^= 0x55;
    let r = http_bytes(&s.addr, "POST", "/v1/adapters?id=bad", &[], &framed);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("checksum"), "{}", r.body);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(ids(&s), ["tiny-base", "intent", "rt", "up"]);

    // DELETE: gone at once (404 with the list), also for a --adapter one; 404 when unknown.
    for id in ["rt", "intent"] {
        let r = s.request("DELETE", &format!("/v1/adapters/{id}"), &[], "");
        assert_eq!(r.status, 200, "{}", r.body);
        let r = s.post("/v1/completions", &completion(id, prompt, 4));
        assert_eq!(r.status, 404, "{}", r.body);
        assert!(!r.json()["error"]["available"]
            .as_array()
            .unwrap()
            .contains(&json!(id)));
    }
    assert_eq!(s.request("DELETE", "/v1/adapters/rt", &[], "").status, 404);
    assert_eq!(ids(&s), ["tiny-base", "up"]);
    // The id can be added again.
    assert_eq!(s.post("/v1/adapters", &add).status, 201);
    let r = s.post("/v1/completions", &completion("rt", prompt, 40));
    assert_eq!(text_of(&r.json()), want);
}

#[test]
fn adapter_for_another_base_is_refused() {
    if !root().join(SMOLLM2_INTENT).exists() {
        println!("SKIPPED: {SMOLLM2_INTENT} not found");
        return;
    }
    let s = Server::tiny(&[]);
    let path = root().join(SMOLLM2_INTENT);
    let r = s.post(
        "/v1/adapters",
        &json!({"id": "other", "path": path.to_str().unwrap()}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("fingerprint") || msg.contains("architecture"),
        "{msg}"
    );
    assert_eq!(ids(&s), ["tiny-base", "intent", "reply", "normalize"]);
}

#[test]
fn body_over_the_limit_is_413() {
    let s = Server::tiny(&[]);
    let prompt = "a".repeat(3 << 20);
    let r = s.post(
        "/v1/completions",
        &json!({"model": "intent", "prompt": prompt}),
    );
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.json()["error"]["message"].is_string(), "{}", r.body);
    // The server still answers.
    assert_eq!(s.get("/health").status, 200);
}

/// The slow model for the tests that need requests to overlap: SmolLM2 if fetched.
fn slow_model() -> &'static str {
    if root().join(SMOLLM2).exists() {
        SMOLLM2
    } else {
        println!("note: {SMOLLM2} not found; using the tiny model (requests may not overlap)");
        TINY
    }
}

#[test]
fn full_queue_is_429_with_retry_after() {
    let model = slow_model();
    let s = Server::start(model, &["--parallel", "1", "--queue", "1", "--ctx", "512"]);
    let addr = s.addr.clone();
    let body = json!({"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0});
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let (addr, body) = (addr.clone(), body.to_string());
            std::thread::spawn(move || http(&addr, "POST", "/v1/completions", &[], &body))
        })
        .collect();
    let rs: Vec<Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = rs.iter().filter(|r| r.status == 200).count();
    let busy: Vec<&Response> = rs.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok + busy.len(), rs.len(), "only 200 or 429");
    if model == SMOLLM2 {
        // One runs, one waits: the other four are refused.
        assert!(busy.len() >= 3, "{ok} answered, {} refused", busy.len());
    }
    for r in busy {
        assert!(
            r.headers.to_ascii_lowercase().contains("retry-after:"),
            "{}",
            r.headers
        );
        assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    }
}

#[test]
fn sigterm_finishes_running_streams_and_exits_0() {
    let model = slow_model();
    let mut s = Server::start(model, &["--ctx", "512"]);
    let mut c = TcpStream::connect(&s.addr).expect("connecting");
    let body = json!({"prompt": "Once upon a time", "max_tokens": 48, "temperature": 0,
                      "stream": true})
    .to_string();
    write!(
        c,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("sending");
    // Wait for the stream to start (headers and a first event), then SIGTERM the server.
    let mut first = [0u8; 256];
    let n = c.read(&mut first).expect("first bytes");
    assert!(n > 0);
    let pid = s.child.id().to_string();
    let k = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(k.success());
    let mut rest = vec![];
    c.read_to_end(&mut rest).expect("reading the stream");
    let all = [&first[..n], &rest[..]].concat();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("data: [DONE]"),
        "the stream did not finish: {text}"
    );
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().expect("wait") {
            break st;
        }
        assert!(t.elapsed().as_secs() < 15, "the server did not exit");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    assert!(TcpStream::connect(&s.addr).is_err(), "still accepting");
}
