//! The generation side of the server: a queue of jobs and `--parallel` worker threads, each
//! owning one [`State`] (KV cache), all sharing the one memory-mapped model and its bound
//! adapters.
//!
//! The HTTP side only calls [`Engine::submit`] with a [`Job`] (prompt ids, adapters by index
//! with their scales, sampling, limits) and reads [`Event`]s from the job's channel. A worker
//! takes the oldest job, binds the job's adapters (an O(1) [`AdapterSet`], nothing is copied
//! or merged), runs the same generation loop as `edgelora generate`
//! ([`crate::generation::run`]) and sends text as it completes. A batched scheduler (all
//! running sequences in one pass over the base weights) can replace the workers behind the
//! same `submit`/`Event` interface.
//!
//! Event channels are bounded: a slow reader holds its worker back instead of growing a
//! buffer, and a client that goes away (its receiver dropped) ends its generation at the next
//! token; a job whose client left while it waited in the queue is skipped.

use crate::generation::{self, Finish, Sink};
use crate::tok::Tok;
use anyhow::Result;
use edgelora::lora::{AdapterSet, BoundAdapter};
use edgelora::model::{state_buffer_for, CacheSpec, KernelMode, Model, State};
use edgelora::sample::{Sampler, SamplerConfig};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use super::stop::StopMatcher;

/// Events a job's channel holds before the worker waits for the reader.
pub const EVENT_BUFFER: usize = 64;

/// The model, tokenizer and adapters every worker shares, read-only for the life of the
/// process.
pub struct Shared {
    /// The base model (weights borrowed from the mapped file).
    pub model: &'static Model<'static>,
    /// Its tokenizer and chat renderer.
    pub tok: &'static Tok<'static>,
    /// Adapters bound to the model, in `--adapter` order.
    pub adapters: &'static [BoundAdapter<'static, 'static>],
    /// Model id of each adapter (same order).
    pub adapter_ids: Vec<String>,
    /// Scale each adapter runs at when chosen by `model` (the `:SCALE` of `--adapter`).
    pub adapter_scales: Vec<f32>,
    /// Model id of the base alone.
    pub base_id: String,
    /// Positions of each worker's KV cache.
    pub ctx: usize,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
}

/// One request's generation.
pub struct Job {
    /// Prompt token ids (BOS included where the model wants it).
    pub prompt: Vec<u32>,
    /// Active adapters: index into [`Shared::adapters`] and scale.
    pub adapters: Vec<(usize, f32)>,
    /// Sampling parameters.
    pub sampling: SamplerConfig,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Stop strings (not included in the output).
    pub stop: Vec<String>,
    /// Report log-probabilities: `Some(n)` with the `n` most likely alternatives per token.
    pub logprobs: Option<usize>,
    /// Where the results go.
    pub events: tokio::sync::mpsc::Sender<Event>,
}

/// One generated token's log-probability, OpenAI style.
#[derive(Clone, Debug)]
pub struct TokenLogprob {
    /// The token's bytes.
    pub bytes: Vec<u8>,
    /// Natural log of its probability under the model's logits.
    pub logprob: f32,
    /// The most likely tokens at that position: bytes and log-probability.
    pub top: Vec<(Vec<u8>, f32)>,
    /// Byte offset of the token's text in the completion.
    pub offset: usize,
}

/// Why a completion ended, as OpenAI names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` or the end of the context.
    Length,
}

impl FinishReason {
    /// `"stop"` or `"length"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What a job's channel carries.
#[derive(Debug)]
pub enum Event {
    /// More text (possibly empty when only log-probabilities come with it).
    Delta {
        /// Text to append.
        text: String,
        /// Log-probabilities of the tokens whose text starts in this delta (if asked for).
        logprobs: Vec<TokenLogprob>,
    },
    /// The end.
    Done {
        /// Why.
        finish: FinishReason,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens (an end-of-generation token not counted).
        completion_tokens: usize,
    },
    /// The generation failed.
    Error(String),
}

/// Server counters, rendered as Prometheus text by [`Metrics::render`].
#[derive(Default)]
pub struct Metrics {
    /// Jobs waiting for a worker.
    pub queued: AtomicUsize,
    /// Jobs a worker is running.
    pub running: AtomicUsize,
    inner: Mutex<Counters>,
}

#[derive(Default)]
struct Counters {
    requests: BTreeMap<(String, u16), u64>,
    adapter_use: BTreeMap<String, u64>,
    prompt_tokens: u64,
    generated_tokens: u64,
    prefill_s: f64,
    decode_s: f64,
    completions: u64,
    cancelled: u64,
}

impl Metrics {
    /// Count an HTTP request to `route` answered with `status`.
    pub fn request(&self, route: &str, status: u16) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *c.requests.entry((route.to_string(), status)).or_default() += 1;
    }

    /// Count a generation that uses model id `id` (an adapter, or the base).
    pub fn adapter_use(&self, id: &str) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *c.adapter_use.entry(id.to_string()).or_default() += 1;
    }

    fn generation(&self, g: &generation::Gen, cancelled: bool) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        c.prompt_tokens += g.n_prompt as u64;
        c.generated_tokens += g.tokens.len() as u64;
        c.prefill_s += g.prefill_s;
        c.decode_s += g.decode_s;
        c.completions += 1;
        c.cancelled += cancelled as u64;
    }

    fn cancelled_in_queue(&self) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        c.cancelled += 1;
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, rows: &[(String, String)]| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(s, "{name}{labels} {v}");
            }
        };
        let one = |v: String| vec![(String::new(), v)];
        let requests: Vec<_> = c
            .requests
            .iter()
            .map(|((r, st), n)| (format!("{{route=\"{r}\",status=\"{st}\"}}"), n.to_string()))
            .collect();
        metric(
            "edgelora_requests_total",
            "counter",
            "HTTP requests by route and status code.",
            &requests,
        );
        let uses: Vec<_> = c
            .adapter_use
            .iter()
            .map(|(m, n)| (format!("{{model=\"{}\"}}", label(m)), n.to_string()))
            .collect();
        metric(
            "edgelora_adapter_requests_total",
            "counter",
            "Generations by the model id (adapter or base) they asked for.",
            &uses,
        );
        metric(
            "edgelora_completions_total",
            "counter",
            "Generations run to the end or cancelled.",
            &one(c.completions.to_string()),
        );
        metric(
            "edgelora_cancelled_total",
            "counter",
            "Generations whose client went away (in the queue or while running).",
            &one(c.cancelled.to_string()),
        );
        metric(
            "edgelora_prompt_tokens_total",
            "counter",
            "Prompt tokens prefilled.",
            &one(c.prompt_tokens.to_string()),
        );
        metric(
            "edgelora_generated_tokens_total",
            "counter",
            "Tokens generated.",
            &one(c.generated_tokens.to_string()),
        );
        metric(
            "edgelora_prefill_seconds_total",
            "counter",
            "Seconds spent prefilling prompts (summed over workers).",
            &one(format!("{:.6}", c.prefill_s)),
        );
        metric(
            "edgelora_decode_seconds_total",
            "counter",
            "Seconds spent generating tokens (summed over workers).",
            &one(format!("{:.6}", c.decode_s)),
        );
        let tps = c.generated_tokens as f64 / c.decode_s.max(1e-9);
        metric(
            "edgelora_decode_tokens_per_second",
            "gauge",
            "Generated tokens per decode second of one sequence, over all generations so far.",
            &one(format!("{:.3}", if c.decode_s > 0.0 { tps } else { 0.0 })),
        );
        metric(
            "edgelora_queue_depth",
            "gauge",
            "Requests waiting for a free worker.",
            &one(self.queued.load(Ordering::Relaxed).to_string()),
        );
        metric(
            "edgelora_running",
            "gauge",
            "Requests being generated.",
            &one(self.running.load(Ordering::Relaxed).to_string()),
        );
        s
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The job queue and its workers.
pub struct Engine {
    queue: Mutex<mpsc::Sender<Job>>,
    shared: Arc<Shared>,
}

impl Engine {
    /// Start `parallel` workers, each with a KV cache of `shared.ctx` positions.
    ///
    /// # Errors
    /// A cache spec the model cannot use.
    pub fn start(
        shared: Arc<Shared>,
        parallel: usize,
        spec: CacheSpec,
        mode: KernelMode,
    ) -> Result<Engine> {
        let cfg = *shared.model.config();
        // Check the cache once here, so a bad spec is a startup error, not a worker's.
        {
            let mut buf = state_buffer_for(&cfg, 1, spec);
            State::with_cache(&cfg, 1, spec, &mut buf)?;
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..parallel.max(1) {
            let rx = rx.clone();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("edgelora-worker-{i}"))
                .spawn(move || worker(&shared, &rx, spec, mode))?;
        }
        Ok(Engine {
            queue: Mutex::new(tx),
            shared,
        })
    }

    /// The shared model and counters.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Queue a job; its events arrive on `job.events`.
    pub fn submit(&self, job: Job) {
        self.shared.metrics.queued.fetch_add(1, Ordering::Relaxed);
        let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(mpsc::SendError(job)) = q.send(job) {
            // Only if every worker died (a panic in the model): say so to the client.
            self.shared.metrics.queued.fetch_sub(1, Ordering::Relaxed);
            let _ = job
                .events
                .try_send(Event::Error("no worker is running".into()));
        }
    }
}

fn worker(shared: &Shared, rx: &Mutex<mpsc::Receiver<Job>>, spec: CacheSpec, mode: KernelMode) {
    let cfg = *shared.model.config();
    let mut buf = state_buffer_for(&cfg, shared.ctx, spec);
    let Ok(mut st) = State::with_cache(&cfg, shared.ctx, spec, &mut buf) else {
        eprintln!("worker: cannot build a state of {} positions", shared.ctx);
        return;
    };
    st.set_kernel_mode(mode);
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            }
        };
        shared.metrics.queued.fetch_sub(1, Ordering::Relaxed);
        if job.events.is_closed() {
            shared.metrics.cancelled_in_queue();
            continue;
        }
        shared.metrics.running.fetch_add(1, Ordering::Relaxed);
        run_job(shared, &mut st, job);
    }
}

/// Run one job; it stops counting as running before its last event goes out (so a client
/// that has its answer sees it in /metrics as finished).
fn run_job(shared: &Shared, st: &mut State<'_>, job: Job) {
    let events = job.events.clone();
    let done = || shared.metrics.running.fetch_sub(1, Ordering::Relaxed);
    let fail = |e: String| {
        done();
        let _ = events.blocking_send(Event::Error(e));
    };
    let mut set = AdapterSet::EMPTY;
    for &(i, scale) in &job.adapters {
        let Some(a) = shared.adapters.get(i) else {
            return fail(format!("no adapter {i}"));
        };
        if let Err(e) = set.push(a, scale) {
            return fail(format!("adapter {}: {e}", shared.adapter_ids[i]));
        }
    }
    let mut sampler = match Sampler::new(job.sampling) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    let mut sink = ServeSink {
        tok: shared.tok,
        events: &job.events,
        stop: StopMatcher::new(job.stop),
        logprobs: job.logprobs,
        logits: vec![],
        pending: vec![],
        stopped: false,
        gone: false,
    };
    // No prompt cache yet: every request starts from an empty KV cache.
    st.clear();
    let mut history = Vec::with_capacity(job.prompt.len() + job.max_tokens);
    let r = generation::run(
        shared.model,
        shared.tok,
        st,
        0,
        &job.prompt,
        job.max_tokens,
        &mut sampler,
        &mut history,
        &set,
        &mut sink,
    );
    match r {
        Ok(g) => {
            shared.metrics.generation(&g, sink.gone);
            if sink.gone {
                done();
                return;
            }
            if !sink.stopped {
                let text = sink.stop.finish();
                let logprobs = std::mem::take(&mut sink.pending);
                sink.send(text, logprobs);
            }
            let finish = match (sink.stopped, g.finish) {
                (true, _) | (_, Finish::Eog) => FinishReason::Stop,
                _ => FinishReason::Length,
            };
            done();
            let _ = job.events.blocking_send(Event::Done {
                finish,
                prompt_tokens: g.n_prompt,
                completion_tokens: g.tokens.len(),
            });
        }
        Err(e) => fail(format!("{e:#}")),
    }
}

/// Turns tokens into events: stop strings cut, log-probabilities attached, and the end of the
/// generation once the client has gone.
struct ServeSink<'j> {
    tok: &'static Tok<'static>,
    events: &'j tokio::sync::mpsc::Sender<Event>,
    stop: StopMatcher,
    logprobs: Option<usize>,
    /// The logits of the token being sampled (kept only when log-probabilities are asked for).
    logits: Vec<f32>,
    /// Log-probabilities of tokens whose text is still held back by the stop matcher.
    pending: Vec<TokenLogprob>,
    stopped: bool,
    gone: bool,
}

impl ServeSink<'_> {
    /// Send text and log-probabilities, if there is anything to send; false if the client
    /// has gone.
    fn send(&mut self, text: String, logprobs: Vec<TokenLogprob>) -> bool {
        if text.is_empty() && logprobs.is_empty() {
            return true;
        }
        if self
            .events
            .blocking_send(Event::Delta { text, logprobs })
            .is_err()
        {
            self.gone = true;
        }
        !self.gone
    }

    fn token_logprob(&self, id: u32, offset: usize) -> TokenLogprob {
        let l = &self.logits;
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = l.iter().map(|&v| ((v - max) as f64).exp()).sum();
        let lse = max as f64 + sum.ln();
        let lp = |v: f32| (v as f64 - lse) as f32;
        let n = self.logprobs.unwrap_or(0).min(l.len());
        // The n largest, by a partial selection over indices (n <= 20).
        let mut top: Vec<u32> = vec![];
        for (i, &v) in l.iter().enumerate() {
            if top.len() < n || v > l[top[n - 1] as usize] {
                let at = top.partition_point(|&j| l[j as usize] >= v);
                top.insert(at, i as u32);
                top.truncate(n);
            }
        }
        TokenLogprob {
            bytes: self.tok.piece_bytes(id),
            logprob: l
                .get(id as usize)
                .map(|&v| lp(v))
                .unwrap_or(f32::NEG_INFINITY),
            top: top
                .iter()
                .map(|&j| (self.tok.piece_bytes(j), lp(l[j as usize])))
                .collect(),
            offset,
        }
    }

    /// Text from the decoder: through the stop matcher, with the log-probabilities of the
    /// tokens whose text has been released.
    fn text(&mut self, text: &str) -> ControlFlow<()> {
        let r = self.stop.push(text);
        let released = self.stop.released();
        self.stopped = r.stopped;
        let (out, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|t| t.offset < released);
        self.pending = if r.stopped { vec![] } else { keep };
        if !self.send(r.text, out) || r.stopped {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

impl Sink for ServeSink<'_> {
    fn logits(&mut self, logits: &[f32]) {
        if self.logprobs.is_some() {
            self.logits.clear();
            self.logits.extend_from_slice(logits);
        }
    }

    fn token(&mut self, id: u32, text: &str) -> ControlFlow<()> {
        if self.logprobs.is_some() {
            let t = self.token_logprob(id, self.stop.received());
            self.pending.push(t);
        }
        self.text(text)
    }

    fn tail(&mut self, text: &str) {
        if !self.stopped && !self.gone && !text.is_empty() {
            let _ = self.text(text);
        }
    }
}
