//! The HTTP routes: OpenAI's chat and text completions (whole or streamed as server-sent
//! events), the model list, health and Prometheus metrics, behind an optional API key.
//!
//! Response shapes follow OpenAI's API reference (and so what vLLM answers): `chat.completion`
//! / `chat.completion.chunk` with `delta`s, `text_completion` for both forms of
//! `/v1/completions`, `usage` in whole responses and, with `stream_options.include_usage`, in
//! a last chunk with no choices; a stream ends with `data: [DONE]`.

use super::api::{self, ApiError, Endpoint, GenRequest, Prompt};
use super::engine::{Engine, Event, FinishReason, Job, TokenLogprob, EVENT_BUFFER};
use super::registry::{Backing, Entry, Loaded};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use edgelora::lora::stream::{StreamLoader, FRAME_MAGIC};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What every handler shares.
pub struct App {
    /// The model, its workers and counters.
    pub engine: Engine,
    /// `--api-key`: required as `Authorization: Bearer KEY` on every route but `/health`.
    pub api_key: Option<String>,
    /// Server start (Unix seconds), the `created` of the model list.
    pub started: u64,
}

/// The router with every route and the key check.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route(
            "/v1/adapters",
            post(add_adapter).layer(DefaultBodyLimit::max(ADAPTER_BODY_LIMIT)),
        )
        .route("/v1/adapters/{id}", delete(delete_adapter))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// Checks the API key and counts every request by route and status.
async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = match req.uri().path() {
        p @ ("/health"
        | "/metrics"
        | "/v1/models"
        | "/v1/chat/completions"
        | "/v1/completions"
        | "/v1/adapters") => p.to_string(),
        p if p.starts_with("/v1/adapters/") => "/v1/adapters/{id}".to_string(),
        _ => "other".to_string(),
    };
    let resp = match &app.api_key {
        Some(key) if route != "/health" => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if given.is_some_and(|g| same(g.as_bytes(), key.as_bytes())) {
                next.run(req).await
            } else {
                ApiError::status(
                    StatusCode::UNAUTHORIZED,
                    Some("invalid_api_key"),
                    "missing or wrong API key: send 'Authorization: Bearer <key>'".into(),
                )
                .into_response()
            }
        }
        _ => next.run(req).await,
    };
    app.engine
        .shared()
        .metrics
        .request(&route, resp.status().as_u16());
    resp
}

/// Compare without stopping at the first differing byte (the key's bytes do not leak through
/// the response time).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.engine.shared().metrics.render(),
    )
        .into_response()
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    let s = app.engine.shared();
    let mut data = vec![json!({
        "id": s.base_id, "object": "model", "created": app.started, "owned_by": "edgelora",
    })];
    for e in s.adapters.list() {
        data.push(model_object(&app, &e));
    }
    Json(json!({ "object": "list", "data": data }))
}

/// An adapter in the model list; vLLM lists a LoRA model with its base as `parent`.
fn model_object(app: &App, e: &Entry) -> Value {
    let base = &app.engine.shared().base_id;
    json!({
        "id": e.id, "object": "model", "created": app.started, "owned_by": "edgelora",
        "parent": base, "root": base, "scale": e.scale, "source": e.source,
        "bytes": e.adapter.size,
    })
}

/// Largest body of `POST /v1/adapters` (a framed adapter upload).
pub const ADAPTER_BODY_LIMIT: usize = 1 << 30;

/// `POST /v1/adapters`: either JSON `{"id", "path", "scale"?}` (the file is read whole into
/// memory), or the raw bytes of a framed adapter (`.elas`, see `edgelora::lora::stream`) with
/// `?id=NAME[&scale=S]`. The adapter is parsed, CRC-checked (framed) and bound against the
/// served base before it becomes visible: 201 with its model object, 409 if the id is taken,
/// 400 with the core's error for a bad file or another base (nothing served changes).
async fn add_adapter(State(app): State<Arc<App>>, req: Request) -> Response {
    let query = req.uri().query().unwrap_or("").to_string();
    let body = match axum::body::to_bytes(req.into_body(), ADAPTER_BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::status(
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
                format!("the adapter is over {ADAPTER_BODY_LIMIT} bytes"),
            )
            .into_response()
        }
    };
    let app2 = app.clone();
    // Reading, parsing and binding take a while for a big file: off the async workers.
    let r = tokio::task::spawn_blocking(move || load_adapter(&app2, &query, &body)).await;
    match r {
        Ok(Ok(e)) => (StatusCode::CREATED, Json(model_object(&app, &e))).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => generation_failed(format!("loading the adapter: {e}")).into_response(),
    }
}

fn load_adapter(app: &App, query: &str, body: &[u8]) -> Result<Entry, ApiError> {
    let shared = app.engine.shared();
    let (id, scale, source, backing) = if body.starts_with(&FRAME_MAGIC) {
        let mut id = None;
        let mut scale = 1.0f32;
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some(("id", v)) => id = Some(v.to_string()),
                Some(("scale", v)) => {
                    scale = v.parse().map_err(|_| {
                        ApiError::field("scale", format!("the scale must be a number, got {v:?}"))
                    })?
                }
                _ => {
                    return Err(ApiError::bad(format!(
                        "unknown query parameter {kv:?}; a framed upload takes ?id=NAME&scale=S"
                    )))
                }
            }
        }
        let id = id.ok_or_else(|| {
            ApiError::field("id", "a framed upload needs the adapter's id: ?id=NAME")
        })?;
        let mut buf = vec![0u8; body.len()];
        let mut loader = StreamLoader::new(&mut buf);
        let payload = loader
            .push(body)
            .and_then(|_| loader.finish())
            .map_err(|e| ApiError::bad(format!("the framed adapter is refused: {e}")))?;
        (id, scale, "upload".to_string(), Backing::copy(payload))
    } else {
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad(format!(
                "the body is neither JSON {{\"id\", \"path\", \"scale\"}} nor a framed adapter: {e}"
            ))
        })?;
        let Value::Object(obj) = &v else {
            return Err(ApiError::bad("the body must be a JSON object"));
        };
        if let Some(k) = obj
            .keys()
            .find(|k| !["id", "path", "scale"].contains(&k.as_str()))
        {
            return Err(ApiError::field(
                k,
                format!("unknown field '{k}'; this endpoint takes: id, path, scale"),
            ));
        }
        let id = match obj.get("id") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(ApiError::field("id", "'id' must be a string")),
        };
        let path = match obj.get("path") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(ApiError::field(
                    "path",
                    "'path' must be a string (a file on the server)",
                ))
            }
        };
        let scale = match obj.get("scale") {
            None | Some(Value::Null) => 1.0,
            Some(v) => v.as_f64().ok_or_else(|| {
                ApiError::field("scale", format!("the scale must be a number, got {v}"))
            })? as f32,
        };
        let bytes = std::fs::read(&path)
            .map_err(|e| ApiError::field("path", format!("reading {path}: {e}")))?;
        (id, scale, path, Backing::copy(&bytes))
    };
    if id.is_empty()
        || id
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '/')
    {
        return Err(ApiError::field(
            "id",
            "the id must be non-empty, without spaces, quotes or slashes",
        ));
    }
    if !scale.is_finite() || scale.abs() > 1e3 {
        return Err(ApiError::field(
            "scale",
            "the scale must be a finite number",
        ));
    }
    let taken = || {
        let mut e = ApiError::status(
            StatusCode::CONFLICT,
            Some("adapter_exists"),
            format!("the model id '{id}' is already served; DELETE /v1/adapters/{id} first"),
        );
        e.param = Some("id".into());
        e
    };
    if id == shared.base_id || shared.adapters.list().iter().any(|e| e.id == id) {
        return Err(taken());
    }
    let loaded = Loaded::new(backing, shared.base, shared.model)
        .map_err(|e| ApiError::bad(format!("{e:#}")))?;
    let e = Entry {
        id: id.clone(),
        scale,
        source,
        adapter: Arc::new(loaded),
    };
    shared.adapters.add(e.clone()).map_err(|_| taken())?;
    eprintln!(
        "adapter '{id}' added ({} bytes, from {})",
        e.adapter.size, e.source
    );
    Ok(e)
}

/// `DELETE /v1/adapters/{id}`: the id is gone for new requests at once; the memory goes when
/// the last request running with it ends. 404 (with the list) for an unknown id.
async fn delete_adapter(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let shared = app.engine.shared();
    match shared.adapters.remove(&id) {
        Some(e) => {
            eprintln!(
                "adapter '{id}' deleted ({} requests still hold it)",
                Arc::strong_count(&e.adapter) - 1
            );
            Json(json!({ "id": id, "object": "model", "deleted": true })).into_response()
        }
        None => api::not_found("model", &id, shared).into_response(),
    }
}

async fn chat(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    match body {
        Ok(body) => generate(app, body, Endpoint::Chat).await,
        Err(e) => body_error(e),
    }
}

async fn completions(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    match body {
        Ok(body) => generate(app, body, Endpoint::Completions).await,
        Err(e) => body_error(e),
    }
}

/// A body that could not be read (over the 2 MiB limit: 413), as an OpenAI-style error.
fn body_error(e: BytesRejection) -> Response {
    let status = e.status();
    let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "the request body is over the server's limit of 2 MiB".to_string()
    } else {
        format!("reading the request body: {e}")
    };
    ApiError::status(status, None, msg).into_response()
}

/// A response id: a prefix and a process-wide counter mixed with the start time.
fn new_id(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{:x}{:06x}",
        unix_now(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn generate(app: Arc<App>, body: Bytes, ep: Endpoint) -> Response {
    match start(&app, &body, ep) {
        Ok((req, rx)) => {
            let meta = Meta {
                id: new_id(if ep == Endpoint::Chat {
                    "chatcmpl"
                } else {
                    "cmpl"
                }),
                created: unix_now(),
                model: req.model.clone(),
                ep,
                include_usage: req.include_usage,
            };
            if req.stream {
                stream(meta, rx).into_response()
            } else {
                whole(meta, rx).await
            }
        }
        Err(e) => {
            let busy = e.status == StatusCode::TOO_MANY_REQUESTS;
            let mut r = e.into_response();
            if busy {
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    axum::http::HeaderValue::from_static("1"),
                );
            }
            r
        }
    }
}

/// Check the request, tokenize its prompt and queue it.
fn start(
    app: &App,
    body: &[u8],
    ep: Endpoint,
) -> Result<(GenRequest, tokio::sync::mpsc::Receiver<Event>), ApiError> {
    let shared = app.engine.shared();
    let mut req = api::parse(body, ep, shared)?;
    let tok = shared.tok;
    let ids = match &req.prompt {
        Prompt::Chat(msgs) => {
            let pairs: Vec<(&str, &str)> =
                msgs.iter().map(|(r, c)| (r.as_str(), c.as_str())).collect();
            let text = tok
                .chat_prompt(None, &pairs)
                .map_err(|e| ApiError::field("messages", format!("{e:#}")))?;
            tok.encode_chat(&text)
                .map_err(|e| ApiError::field("messages", format!("{e:#}")))?
        }
        Prompt::Text(t) => tok
            .encode_prompt(t, false)
            .map_err(|e| ApiError::field("prompt", format!("{e:#}")))?,
        Prompt::Tokens(ids) => ids.clone(),
    };
    if ids.is_empty() {
        return Err(ApiError::field("prompt", "the prompt has no tokens"));
    }
    let vocab = shared.model.config().vocab;
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::field(
            "prompt",
            format!("token id {bad} is outside the vocabulary of {vocab}"),
        ));
    }
    let ctx = shared.ctx;
    if ids.len() >= ctx {
        let mut e = ApiError::bad(format!(
            "This model's maximum context length is {ctx} tokens (--ctx); the prompt has {} \
             tokens, which leaves no room to generate.",
            ids.len()
        ));
        e.code = Some("context_length_exceeded");
        return Err(e);
    }
    // OpenAI's defaults: 16 tokens for text completions, the rest of the context for chat.
    let room = ctx - ids.len();
    let max_tokens = match (req.max_tokens, ep) {
        (Some(n), _) => n.min(room),
        (None, Endpoint::Completions) => 16.min(room),
        (None, Endpoint::Chat) => room,
    };
    let label = std::mem::take(&mut req.label);
    let constraint = match req.format.take() {
        Some(table) => {
            let vocab = crate::constrained::Vocab::cached(shared.tok)
                .map_err(|e| ApiError::bad(format!("response_format: {e:#}")))?;
            Some(
                crate::constrained::JsonConstraint::new(vocab, table)
                    .map_err(|e| ApiError::field("response_format", format!("{e:#}")))?,
            )
        }
        None => None,
    };
    shared.metrics.adapter_use(&label);
    let (tx, rx) = tokio::sync::mpsc::channel(EVENT_BUFFER);
    let queued = app.engine.submit(Job {
        prompt: ids,
        adapters: std::mem::take(&mut req.adapters),
        sampling: req.sampling,
        max_tokens,
        stop: std::mem::take(&mut req.stop),
        logprobs: req.logprobs,
        constraint,
        events: tx,
    });
    if queued.is_err() {
        return Err(ApiError::status(
            StatusCode::TOO_MANY_REQUESTS,
            Some("rate_limit_exceeded"),
            "The server's queue is full; retry after a moment (Retry-After).".into(),
        ));
    }
    Ok((req, rx))
}

/// What every response and chunk of one request repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
    ep: Endpoint,
    include_usage: bool,
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

/// JSON has no -inf; OpenAI reports -9999 for impossible tokens.
fn finite(lp: f32) -> f32 {
    if lp.is_finite() {
        lp
    } else {
        -9999.0
    }
}

/// Chat log-probabilities: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
fn chat_logprobs(lps: &[TokenLogprob]) -> Value {
    let entry = |b: &[u8], lp: f32| {
        json!({
            "token": String::from_utf8_lossy(b),
            "logprob": finite(lp),
            "bytes": b,
        })
    };
    let content: Vec<Value> = lps
        .iter()
        .map(|t| {
            let mut e = entry(&t.bytes, t.logprob);
            e["top_logprobs"] = t.top.iter().map(|(b, lp)| entry(b, *lp)).collect();
            e
        })
        .collect();
    json!({ "content": content, "refusal": null })
}

/// Text-completion log-probabilities: parallel lists, as the legacy API.
fn text_logprobs(lps: &[TokenLogprob]) -> Value {
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    json!({
        "tokens": lps.iter().map(|t| s(&t.bytes)).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|t| finite(t.logprob)).collect::<Vec<_>>(),
        "top_logprobs": lps.iter().map(|t| {
            t.top.iter().map(|(b, lp)| (s(b), json!(finite(*lp)))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
        "text_offset": lps.iter().map(|t| t.offset).collect::<Vec<_>>(),
    })
}

/// Collect a whole completion.
async fn whole(meta: Meta, mut rx: tokio::sync::mpsc::Receiver<Event>) -> Response {
    let mut text = String::new();
    let mut lps: Vec<TokenLogprob> = vec![];
    let mut logprobs_asked = false;
    loop {
        match rx.recv().await {
            Some(Event::Delta { text: t, logprobs }) => {
                text.push_str(&t);
                logprobs_asked |= !logprobs.is_empty();
                lps.extend(logprobs);
            }
            Some(Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            }) => {
                let lp = if logprobs_asked { Some(&lps[..]) } else { None };
                let choice = match meta.ep {
                    Endpoint::Chat => json!({
                        "index": 0,
                        "message": { "role": "assistant", "content": text, "refusal": null },
                        "logprobs": lp.map(chat_logprobs),
                        "finish_reason": finish.as_str(),
                    }),
                    Endpoint::Completions => json!({
                        "index": 0,
                        "text": text,
                        "logprobs": lp.map(text_logprobs),
                        "finish_reason": finish.as_str(),
                    }),
                };
                return Json(json!({
                    "id": meta.id,
                    "object": if meta.ep == Endpoint::Chat { "chat.completion" } else { "text_completion" },
                    "created": meta.created,
                    "model": meta.model,
                    "choices": [choice],
                    "usage": usage(prompt_tokens, completion_tokens),
                }))
                .into_response();
            }
            Some(Event::Error(e)) => return generation_failed(e).into_response(),
            None => return generation_failed("the worker stopped".into()).into_response(),
        }
    }
}

fn generation_failed(e: String) -> ApiError {
    ApiError::status(
        StatusCode::INTERNAL_SERVER_ERROR,
        None,
        format!("generation failed: {e}"),
    )
}

/// One streamed chunk.
fn chunk(
    meta: &Meta,
    text: Option<&str>,
    lps: &[TokenLogprob],
    finish: Option<FinishReason>,
) -> Value {
    let finish = finish.map(FinishReason::as_str);
    let choice = match meta.ep {
        Endpoint::Chat => json!({
            "index": 0,
            "delta": match text { Some(t) => json!({ "content": t }), None => json!({}) },
            "logprobs": if lps.is_empty() { Value::Null } else { chat_logprobs(lps) },
            "finish_reason": finish,
        }),
        Endpoint::Completions => json!({
            "index": 0,
            "text": text.unwrap_or(""),
            "logprobs": if lps.is_empty() { Value::Null } else { text_logprobs(lps) },
            "finish_reason": finish,
        }),
    };
    json!({
        "id": meta.id,
        "object": if meta.ep == Endpoint::Chat { "chat.completion.chunk" } else { "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
    })
}

/// Server-sent events: a first chunk with the assistant role (chat), one chunk per delta, a
/// last chunk with the finish reason, the usage chunk if asked for, then `[DONE]`.
fn stream(
    meta: Meta,
    rx: tokio::sync::mpsc::Receiver<Event>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let data = |v: &Value| SseEvent::default().data(v.to_string());
    let mut first = vec![];
    if meta.ep == Endpoint::Chat {
        let mut c = chunk(&meta, Some(""), &[], None);
        c["choices"][0]["delta"] = json!({ "role": "assistant", "content": "" });
        first.push(data(&c));
    }
    let head = futures_util::stream::iter(first);
    let body = futures_util::stream::unfold(Some((meta, rx)), move |st| async move {
        let (meta, mut rx) = st?;
        let (events, more) = match rx.recv().await {
            Some(Event::Delta { text, logprobs }) => (
                vec![data(&chunk(&meta, Some(&text), &logprobs, None))],
                true,
            ),
            Some(Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            }) => {
                let mut ev = vec![data(&chunk(&meta, None, &[], Some(finish)))];
                if meta.include_usage {
                    let mut u = chunk(&meta, None, &[], None);
                    u["choices"] = json!([]);
                    u["usage"] = usage(prompt_tokens, completion_tokens);
                    ev.push(data(&u));
                }
                ev.push(SseEvent::default().data("[DONE]"));
                (ev, false)
            }
            Some(Event::Error(e)) => (
                vec![
                    data(&generation_failed(e).body()),
                    SseEvent::default().data("[DONE]"),
                ],
                false,
            ),
            None => (vec![SseEvent::default().data("[DONE]")], false),
        };
        Some((events, more.then_some((meta, rx))))
    })
    .flat_map(futures_util::stream::iter);
    Sse::new(head.chain(body).map(Ok))
}
