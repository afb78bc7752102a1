//! `edgelora serve`: an OpenAI-compatible HTTP server over one base model and any number of
//! named LoRA adapters, the adapter chosen per request.
//!
//! - [`api`]: request bodies checked field by field, OpenAI-style errors;
//! - [`routes`]: the axum routes, whole responses and server-sent event streams;
//! - [`engine`]: the job queue and the scheduler that runs up to `--parallel` sequences in
//!   batched steps (continuous batching across adapters, prompt cache), each sequence with
//!   the generation loop `generate` runs ([`crate::generation::Stepper`]);
//! - [`stop`]: stop strings cut from streamed text.
//!
//! The model file is memory-mapped once and lives as long as the process (leaked on purpose:
//! every worker borrows it for the server's whole life, and the OS reclaims it at exit).
//! Adapters live in a [`registry::Registry`] that `POST /v1/adapters` and `DELETE
//! /v1/adapters/{id}` change at run time; binding one to a request is the core's O(1)
//! [`edgelora::lora::AdapterSet`], never a copy or a merge.

pub mod api;
pub mod engine;
pub mod registry;
pub mod routes;
pub mod stop;

use crate::commands::{parse_adapter_arg, CacheArgs};
use crate::tok::Tok;
use crate::util::{map, resolve_model};
use anyhow::{bail, Context, Result};
use edgelora::format::gguf::Gguf;
use edgelora::model::{KernelMode, Model};
use engine::{Engine, Metrics, Shared};
use registry::{Backing, Entry, Loaded, Registry};
use std::io::Write;
use std::sync::Arc;

/// Options of `edgelora serve`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Endpoints: POST /v1/chat/completions, POST /v1/completions, \
GET /v1/models, POST /v1/adapters ({\"id\", \"path\", \"scale\"} or a framed .elas body with \
?id=NAME), DELETE /v1/adapters/ID, GET /health, GET /metrics (Prometheus text).\n\
A request picks its adapter with \"model\": \"NAME\" (the base model's id is the model file's \
name without .gguf), or mixes adapters with llama-server's \"lora\": [{\"id\": NAME or index, \
\"scale\": S}], which replaces the choice \"model\" makes.\n\
SIGTERM/SIGINT: stop accepting, let running requests finish (up to 10 s), exit 0.\n\
The bound address is printed on stdout as `listening on http://HOST:PORT`."
)]
pub struct ServeArgs {
    /// GGUF model file, or an alias from `edgelora fetch` (`smollm2`, `gemma3-270m`). Its id
    /// in requests and in /v1/models is the file name without `.gguf` (see --model-id).
    #[arg(long, short = 'm', default_value = "smollm2")]
    pub model: String,
    /// The base model's id in requests and /v1/models (default: the file name without
    /// `.gguf`).
    #[arg(long)]
    pub model_id: Option<String>,
    /// A LoRA adapter (GGUF, llama.cpp layout) served as model id NAME, applied unmerged at
    /// SCALE (default 1) when a request names it; repeat for more adapters.
    #[arg(long = "adapter", value_name = "NAME=FILE[:SCALE]")]
    pub adapters: Vec<String>,
    /// Address to listen on. The default serves this machine only; use 0.0.0.0 to serve the
    /// network (and set --api-key).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// TCP port; 0 picks a free one (printed on stdout).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health (401 otherwise).
    #[arg(long, env = "EDGELORA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Sequences generated at the same time (continuous batching: every running sequence
    /// advances in one pass over the base weights per step, whatever its adapters), each
    /// with its own KV cache of --ctx positions; more requests wait in the queue.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallel: u16,
    /// Requests that may wait for a free sequence slot; beyond that a request gets 429 with
    /// Retry-After (the queue depth is in /metrics).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue: u32,
    /// Positions of each request's KV cache (prompt + generated tokens; capped at the
    /// model's context length).
    #[arg(long, default_value_t = 2048)]
    pub ctx: usize,
    /// Threads for the matrix kernels of each batched step (results are bit-identical to one
    /// thread; default: the physical cores).
    #[arg(long, default_value_t = crate::util::default_threads(), value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,
    /// Use the scalar reference kernels with f32 activations (slow; the parity baseline).
    #[arg(long)]
    pub reference: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// Split `NAME=FILE[:SCALE]`.
fn parse_named_adapter(s: &str) -> Result<(String, String, f32)> {
    let Some((name, rest)) = s.split_once('=') else {
        bail!("--adapter {s:?}: expected NAME=FILE[:SCALE] (the name is the model id clients ask for)");
    };
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '"') {
        bail!("--adapter {s:?}: the name must be non-empty, without spaces or quotes");
    }
    // FILE[:SCALE] as generate/eval/merge take it (same errors, same scale cap)
    let (file, scale) = parse_adapter_arg(rest).with_context(|| format!("--adapter {s:?}"))?;
    Ok((name.to_string(), file, scale))
}

/// Run the server until SIGINT or SIGTERM.
///
/// # Errors
/// A model or adapter that does not load, a bad option, an address that cannot be bound.
pub fn serve(a: ServeArgs) -> Result<()> {
    let path = resolve_model(&a.model)?;
    let base_id = match &a.model_id {
        Some(id) => id.clone(),
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "base".into()),
    };
    let mut named = vec![];
    for s in &a.adapters {
        let (name, file, scale) = parse_named_adapter(s)?;
        if name == base_id || named.iter().any(|(n, _, _)| *n == name) {
            bail!("--adapter {s:?}: the id '{name}' is already taken (the base model's id is '{base_id}')");
        }
        named.push((name, file, scale));
    }

    // Everything below lives until the process exits (see the module docs).
    let bytes: &'static memmap2::Mmap = Box::leak(Box::new(map(&path)?));
    let g: &'static Gguf<'static> = Box::leak(Box::new(
        Gguf::parse(bytes).with_context(|| format!("parsing {}", path.display()))?,
    ));
    let model: &'static Model<'static> = Box::leak(Box::new(
        Model::from_gguf(g).with_context(|| format!("loading {}", path.display()))?,
    ));
    let tok: &'static Tok<'static> = Box::leak(Box::new(Tok::new(g)?));
    let adapters = Registry::default();
    for (id, file, scale) in named {
        let p = std::path::Path::new(&file);
        let loaded = Loaded::new(Backing::Map(map(p)?), g, model)
            .with_context(|| format!("adapter {file}"))?;
        let b = loaded.bound();
        if b.same_base_weights() == Some(false) {
            eprintln!(
                "note: adapter {file} was converted against a base with the same tensors and \
                 shapes but other weights or quant types"
            );
        }
        let e = Entry {
            id,
            scale,
            source: file,
            adapter: Arc::new(loaded),
        };
        if adapters.add(e).is_err() {
            bail!("duplicate adapter id");
        }
    }

    edgelora::kernels::set_threads(a.threads.into());
    let mode = if a.reference {
        KernelMode::Reference
    } else {
        KernelMode::Fast
    };
    let cfg = *model.config();
    let ctx = a.ctx.clamp(2, cfg.ctx_len.max(2));
    // Build the vocabulary trie for response_format requests in the background (0.3 s for
    // SmolLM2, 1.2 s for Gemma 3), so the first such request does not wait for it.
    std::thread::spawn(move || crate::constrained::Vocab::cached(tok));
    let shared = Arc::new(Shared {
        model,
        tok,
        base: g,
        adapters,
        base_id,
        ctx,
        metrics: Metrics::default(),
    });
    let engine = Engine::start(
        shared,
        a.parallel.into(),
        a.queue as usize,
        a.cache.spec(),
        mode,
    )?;
    let app = Arc::new(routes::App {
        engine,
        api_key: a.api_key.clone(),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("binding {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        let s = app.engine.shared();
        let ids: Vec<String> = s.adapters.list().into_iter().map(|e| e.id).collect();
        eprintln!(
            "serving {} as '{}' ({} adapters: {}), {} parallel, ctx {ctx}, chat format: {}",
            path.display(),
            s.base_id,
            ids.len(),
            ids.join(", "),
            a.parallel,
            s.tok.chat_format()
        );
        // The one line on stdout: scripts and tests read the bound address from it.
        println!("listening on http://{addr}");
        std::io::stdout().flush()?;
        axum::serve(listener, routes::router(app))
            .with_graceful_shutdown(async {
                shutdown().await;
                // Stop accepting now; running requests get DRAIN to finish, then the process
                // ends (cancelling them), still with status 0.
                eprintln!(
                    "shutting down: no new connections; waiting up to {} s for running requests",
                    DRAIN.as_secs()
                );
                std::thread::spawn(|| {
                    std::thread::sleep(DRAIN);
                    eprintln!(
                        "requests still running after {} s: cancelled",
                        DRAIN.as_secs()
                    );
                    std::process::exit(0);
                });
            })
            .await?;
        eprintln!("shut down");
        anyhow::Ok(())
    })
}

/// How long running requests may take to finish after SIGTERM or SIGINT.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown() {
    let int = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = int => {},
        _ = term => {},
    }
}
