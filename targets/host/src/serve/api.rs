//! Request bodies of the OpenAI API, checked field by field, and OpenAI-style errors.
//!
//! Bodies are read as JSON values and each field is checked by hand, so a bad request gets a
//! 400 that names the field and says what it must be (`"temperature must be a number in
//! [0, 2]"`), as OpenAI's API does, rather than a deserialiser's position. Unknown fields are
//! refused (a misspelt `max_token` would otherwise be silently ignored); fields OpenAI defines
//! that are not supported here are refused with the reason unless they hold their default.

use super::engine::Shared;
use super::registry::Loaded;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use edgelora::lora::MAX_ACTIVE;
use edgelora::sample::SamplerConfig;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// An error answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for people.
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A machine-readable code (`model_not_found`, `invalid_api_key`, ...).
    pub code: Option<&'static str>,
    /// Extra members of the error object (the known model ids for a 404).
    pub extra: Option<(&'static str, Value)>,
}

impl ApiError {
    /// A 400 about field `param`.
    pub fn field(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param.to_string()),
            code: None,
            extra: None,
        }
    }

    /// A 400 about the request as a whole.
    pub fn bad(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: None,
            code: None,
            extra: None,
        }
    }

    /// Any status with a message.
    pub fn status(status: StatusCode, code: Option<&'static str>, message: String) -> Self {
        ApiError {
            status,
            message,
            param: None,
            code,
            extra: None,
        }
    }

    /// The error object (without the HTTP status), also sent inside a stream.
    pub fn body(&self) -> Value {
        // OpenAI's own types: 401 and 404 are `invalid_request_error` too, told apart by code.
        let kind = match self.status.as_u16() {
            500.. => "server_error",
            _ => "invalid_request_error",
        };
        let mut e = json!({
            "message": self.message,
            "type": kind,
            "param": self.param,
            "code": self.code,
        });
        if let Some((k, v)) = &self.extra {
            e[*k] = v.clone();
        }
        json!({ "error": e })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// Which endpoint a body is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Completions,
}

/// What to generate from.
#[derive(Debug)]
pub enum Prompt {
    /// Messages `(role, content)` to render with the model's chat format.
    Chat(Vec<(String, String)>),
    /// Plain text (BOS added if the model wants it).
    Text(String),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
}

/// A checked generation request.
#[derive(Debug)]
pub struct GenRequest {
    /// The `model` asked for (echoed in responses).
    pub model: String,
    /// Adapters to run and their scales.
    pub adapters: Vec<(Arc<Loaded>, f32)>,
    /// The model id (or `id*scale+...` mix) counted in /metrics.
    pub label: String,
    /// Sampling parameters.
    pub sampling: SamplerConfig,
    /// `max_tokens` / `max_completion_tokens`, if given.
    pub max_tokens: Option<usize>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Answer with server-sent events.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// Log-probabilities: `Some(n)` with `n` alternatives per token.
    pub logprobs: Option<usize>,
    /// The prompt.
    pub prompt: Prompt,
    /// `response_format` `json_object` / `json_schema`: the compiled schema table
    /// ([`edgelora::constrain::Schema`]); `None` for text.
    pub format: Option<Vec<u8>>,
}

/// Fields each endpoint accepts. Fields OpenAI defines that this server does not support are
/// listed too, so they get a reason rather than "unknown field".
const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "logprobs",
    "top_logprobs",
    "stream",
    "stream_options",
    "n",
    "user",
    "lora",
    "response_format",
    "tools",
    "tool_choice",
    "logit_bias",
];

const COMPLETION_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "max_tokens",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "logprobs",
    "stream",
    "stream_options",
    "n",
    "user",
    "lora",
    "echo",
    "suffix",
    "response_format",
    "best_of",
    "logit_bias",
];

/// Typed access to a body's fields; `null` counts as absent.
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn get(&self, k: &str) -> Option<&'a Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    fn num(&self, k: &str, lo: f64, hi: f64) -> Result<Option<f32>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x >= lo && x <= hi => Ok(Some(x as f32)),
                _ => Err(ApiError::field(
                    k,
                    format!("'{k}' must be a number in [{lo}, {hi}], got {v}"),
                )),
            },
        }
    }

    fn uint(&self, k: &str, lo: u64, hi: u64) -> Result<Option<u64>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(x) if x >= lo && x <= hi => Ok(Some(x)),
                _ => Err(ApiError::field(
                    k,
                    format!("'{k}' must be an integer in [{lo}, {hi}], got {v}"),
                )),
            },
        }
    }

    fn bool(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::field(
                k,
                format!("'{k}' must be true or false, got {v}"),
            )),
        }
    }

    fn string(&self, k: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(ApiError::field(
                k,
                format!("'{k}' must be a string, got {v}"),
            )),
        }
    }
}

/// Parse a request body for `endpoint` against the server's models.
///
/// # Errors
/// 400 for malformed JSON or a bad field, 404 for an unknown model or adapter.
pub fn parse(body: &[u8], endpoint: Endpoint, shared: &Shared) -> Result<GenRequest, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(obj) = &v else {
        return Err(ApiError::bad("the body must be a JSON object"));
    };
    let allowed = match endpoint {
        Endpoint::Chat => CHAT_FIELDS,
        Endpoint::Completions => COMPLETION_FIELDS,
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::field(
            k,
            format!(
                "unknown field '{k}'; this endpoint takes: {}",
                allowed.join(", ")
            ),
        ));
    }
    let f = Fields(obj);

    // Fields defined by OpenAI that only their default is supported for.
    if f.uint("n", 1, u64::MAX)?.unwrap_or(1) != 1 {
        return Err(ApiError::field("n", "only n = 1 is supported"));
    }
    if f.uint("best_of", 1, u64::MAX)?.unwrap_or(1) != 1 {
        return Err(ApiError::field("best_of", "only best_of = 1 is supported"));
    }
    if f.bool("echo")?.unwrap_or(false) {
        return Err(ApiError::field("echo", "echo is not supported"));
    }
    for k in ["suffix", "tools", "tool_choice"] {
        if f.get(k).is_some() {
            return Err(ApiError::field(k, format!("'{k}' is not supported")));
        }
    }
    if let Some(m) = f.get("logit_bias") {
        if m.as_object().is_none_or(|m| !m.is_empty()) {
            return Err(ApiError::field("logit_bias", "logit_bias is not supported"));
        }
    }
    let format = response_format(f.get("response_format"), body)?;
    let _ = f.string("user")?;

    let model = f.string("model")?.unwrap_or(&shared.base_id).to_string();
    let (adapters, label) = resolve_adapters(&f, &model, shared)?;

    let temperature = f.num("temperature", 0.0, 2.0)?.unwrap_or(1.0);
    let sampling = SamplerConfig {
        temperature,
        top_k: f.uint("top_k", 0, u32::MAX as u64)?.unwrap_or(0) as usize,
        top_p: match f.num("top_p", 0.0, 1.0)? {
            // OpenAI accepts top_p = 0; the smallest positive mass keeps just the top token.
            Some(p) if p <= 0.0 => f32::MIN_POSITIVE,
            Some(p) => p,
            None => 1.0,
        },
        min_p: f.num("min_p", 0.0, 1.0)?.unwrap_or(0.0),
        repeat_penalty: f.num("repeat_penalty", 1e-3, 1e3)?.unwrap_or(1.0),
        // As llama-server: the penalties look at the last 64 tokens (prompt included).
        repeat_last_n: 64,
        presence_penalty: f.num("presence_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        frequency_penalty: f.num("frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        seed: match f.get("seed") {
            None => random_seed(),
            Some(v) => v
                .as_i64()
                .map(|x| x as u64)
                .or_else(|| v.as_u64())
                .ok_or_else(|| {
                    ApiError::field("seed", format!("'seed' must be an integer, got {v}"))
                })?,
        },
    };

    let max_tokens = match f.uint("max_completion_tokens", 1, u32::MAX as u64)? {
        Some(n) => Some(n),
        None => f.uint("max_tokens", 1, u32::MAX as u64)?,
    }
    .map(|n| n as usize);

    let stop = match f.get("stop") {
        None => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 16 && a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        Some(v) => {
            return Err(ApiError::field(
                "stop",
                format!("'stop' must be a string or a list of at most 16 strings, got {v}"),
            ))
        }
    };

    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(o) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                return Err(ApiError::field(
                    "stream_options",
                    format!("'stream_options.include_usage' must be true or false, got {v}"),
                ))
            }
        },
    };

    let (logprobs, prompt) = match endpoint {
        Endpoint::Chat => {
            let lp = f.bool("logprobs")?.unwrap_or(false);
            let top = f.uint("top_logprobs", 0, 20)?;
            if top.is_some() && !lp {
                return Err(ApiError::field(
                    "top_logprobs",
                    "'top_logprobs' needs 'logprobs': true",
                ));
            }
            let logprobs = lp.then(|| top.unwrap_or(0) as usize);
            (logprobs, Prompt::Chat(messages(f.get("messages"))?))
        }
        Endpoint::Completions => {
            let logprobs = f.uint("logprobs", 0, 20)?.map(|n| n as usize);
            (logprobs, completion_prompt(f.get("prompt"))?)
        }
    };

    Ok(GenRequest {
        model,
        adapters,
        label,
        sampling,
        max_tokens,
        stop,
        stream,
        include_usage,
        logprobs,
        prompt,
        format,
    })
}

/// `response_format`: `{"type": "text"}`, `{"type": "json_object"}` or `{"type":
/// "json_schema", "json_schema": {"name": .., "schema": {..}, "strict": ..}}` (the schema is
/// compiled from the body's own text, so its properties keep their written order).
fn response_format(rf: Option<&Value>, body: &[u8]) -> Result<Option<Vec<u8>>, ApiError> {
    let Some(rf) = rf else { return Ok(None) };
    let bad = |m: String| ApiError::field("response_format", m);
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(crate::constrained::any_object_table())),
        Some("json_schema") => {
            let js = rf.get("json_schema").ok_or_else(|| {
                bad(
                    "response_format json_schema needs 'json_schema': {\"name\", \"schema\"}"
                        .into(),
                )
            })?;
            if js
                .get("strict")
                .is_some_and(|s| !s.is_boolean() && !s.is_null())
            {
                return Err(bad("'json_schema.strict' must be a boolean".into()));
            }
            if js.get("schema").is_none() {
                // OpenAI: a missing schema means any JSON object.
                return Ok(Some(crate::constrained::any_object_table()));
            }
            let text =
                std::str::from_utf8(body).map_err(|_| bad("the body is not UTF-8".into()))?;
            edgelora::constrain::compile_at(text, &["response_format", "json_schema", "schema"])
                .map(Some)
                .map_err(|e| bad(e.to_string()))
        }
        _ => Err(bad(
            "response_format type must be \"text\", \"json_object\" or \"json_schema\"".into(),
        )),
    }
}

/// A 404 for an unknown model or adapter id, listing the ids there are.
pub fn not_found(what: &str, id: &str, shared: &Shared) -> ApiError {
    let mut ids = vec![shared.base_id.clone()];
    ids.extend(shared.adapters.list().into_iter().map(|e| e.id));
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!(
            "The {what} '{id}' does not exist; known model ids: {}",
            ids.join(", ")
        ),
        param: Some(if what == "model" { "model" } else { "lora" }.into()),
        code: Some("model_not_found"),
        extra: Some(("available", json!(ids))),
    }
}

/// Adapters to run and their scales.
type Active = Vec<(Arc<Loaded>, f32)>;

/// The adapters a request runs: `lora` if given (llama-server's per-request list, which
/// replaces the choice `model` makes; scale 0 leaves an adapter out), else the adapter
/// `model` names at its `--adapter` scale, else none for the base id.
fn resolve_adapters(
    f: &Fields<'_>,
    model: &str,
    shared: &Shared,
) -> Result<(Active, String), ApiError> {
    // One snapshot: an adapter deleted after this still runs for this request.
    let list = shared.adapters.list();
    let by_model = if model == shared.base_id {
        None
    } else {
        match list.iter().position(|a| a.id == model) {
            Some(i) => Some(i),
            None => return Err(not_found("model", model, shared)),
        }
    };
    let Some(lora) = f.get("lora") else {
        let out = by_model
            .map(|i| vec![(list[i].adapter.clone(), list[i].scale)])
            .unwrap_or_default();
        return Ok((out, model.to_string()));
    };
    let Value::Array(lora) = lora else {
        return Err(ApiError::field(
            "lora",
            "'lora' must be a list of {\"id\": index or name, \"scale\": number}",
        ));
    };
    let mut out: Vec<(usize, f32)> = vec![];
    for e in lora {
        let id = e.get("id").ok_or_else(|| {
            ApiError::field("lora", format!("each 'lora' entry needs an 'id', got {e}"))
        })?;
        let i = match id {
            Value::Number(n) => match n.as_u64() {
                Some(i) if (i as usize) < list.len() => i as usize,
                _ => return Err(not_found("adapter", &n.to_string(), shared)),
            },
            Value::String(s) => list
                .iter()
                .position(|a| a.id == *s)
                .ok_or_else(|| not_found("adapter", s, shared))?,
            v => {
                return Err(ApiError::field(
                    "lora",
                    format!("a 'lora' id must be an index or a name, got {v}"),
                ))
            }
        };
        let scale = match e.get("scale") {
            None | Some(Value::Null) => list[i].scale,
            // the same rule as `--adapter FILE:SCALE` (crate::commands::check_adapter_scale)
            Some(v) => match v.as_f64().map(|s| s as f32) {
                Some(s) if crate::commands::check_adapter_scale(s).is_ok() => s,
                _ => {
                    return Err(ApiError::field(
                        "lora",
                        format!(
                            "a 'lora' scale must be a finite number in [-{m}, {m}], got {v}",
                            m = crate::commands::MAX_ADAPTER_SCALE
                        ),
                    ))
                }
            },
        };
        if out.iter().any(|&(j, _)| j == i) {
            return Err(ApiError::field(
                "lora",
                format!("adapter '{}' is listed twice", list[i].id),
            ));
        }
        out.push((i, scale));
    }
    out.retain(|&(_, s)| s != 0.0);
    if out.len() > MAX_ACTIVE {
        return Err(ApiError::field(
            "lora",
            format!(
                "at most {MAX_ACTIVE} adapters can be active at once, got {}",
                out.len()
            ),
        ));
    }
    let label = match out.as_slice() {
        [] => shared.base_id.clone(),
        [(i, s)] if list[*i].id == model && *s == list[*i].scale => model.to_string(),
        l => l
            .iter()
            .map(|(i, s)| format!("{}*{s}", list[*i].id))
            .collect::<Vec<_>>()
            .join("+"),
    };
    let out = out
        .into_iter()
        .map(|(i, s)| (list[i].adapter.clone(), s))
        .collect();
    Ok((out, label))
}

fn messages(v: Option<&Value>) -> Result<Vec<(String, String)>, ApiError> {
    let bad = |m: String| ApiError::field("messages", m);
    let Some(Value::Array(list)) = v else {
        return Err(bad(
            "'messages' must be a non-empty list of {\"role\", \"content\"}".into(),
        ));
    };
    if list.is_empty() {
        return Err(bad("'messages' must not be empty".into()));
    }
    let mut out = vec![];
    for (i, m) in list.iter().enumerate() {
        let role = match m.get("role").and_then(Value::as_str) {
            Some(r @ ("system" | "user" | "assistant")) => r,
            // OpenAI's newer name for the system message.
            Some("developer") => "system",
            Some(r) => {
                return Err(bad(format!(
                    "messages[{i}].role '{r}' is not supported (system, developer, user, assistant)"
                )))
            }
            None => return Err(bad(format!("messages[{i}] needs a string 'role'"))),
        };
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.get("type").and_then(Value::as_str), p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => s.push_str(t),
                        _ => {
                            return Err(bad(format!(
                                "messages[{i}].content: only text parts are supported, got {p}"
                            )))
                        }
                    }
                }
                s
            }
            _ => {
                return Err(bad(format!(
                    "messages[{i}].content must be a string or a list of text parts"
                )))
            }
        };
        out.push((role.to_string(), content));
    }
    Ok(out)
}

fn completion_prompt(v: Option<&Value>) -> Result<Prompt, ApiError> {
    let bad = || {
        ApiError::field(
            "prompt",
            "'prompt' must be a string, a list of one string, or a list of token ids",
        )
    };
    match v {
        Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(Prompt::Text(a[0].as_str().unwrap_or_default().to_string()))
        }
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_u64) => {
            Ok(Prompt::Tokens(
                // An id past u32 becomes u32::MAX, which the model refuses as out of range.
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|x| u32::try_from(x).unwrap_or(u32::MAX))
                    .collect(),
            ))
        }
        Some(Value::Array(a)) if a.len() > 1 => Err(ApiError::field(
            "prompt",
            "only one prompt per request is supported",
        )),
        _ => Err(bad()),
    }
}

/// A seed for requests that give none: the clock mixed with a counter.
fn random_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut r = edgelora::sample::Rng::new(t ^ N.fetch_add(1, Ordering::Relaxed).rotate_left(32));
    r.next_u64()
}
