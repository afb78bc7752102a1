//! The generation side of the server: a bounded queue of jobs and one scheduler thread that
//! owns `--parallel` sequence slots (a [`State`] each: KV cache and logits) and advances every
//! running sequence together, continuous batching across adapters.
//!
//! The HTTP side only calls [`Engine::submit`] with a [`Job`] (prompt ids, adapters by index
//! with their scales, sampling, limits) and reads [`Event`]s from the job's channel. Each
//! scheduler step is one [`Model::step_many`] pass over the base weights: the next token of
//! every running sequence plus chunks of at most [`PREFILL_CHUNK`] prompt tokens of the
//! sequences still reading their prompt (so a long prompt never stalls the streams), at most
//! [`STEP_TOKENS`] tokens in all; sequences with the same adapters form one LoRA group of the
//! step (the gathered per-group product of Punica/S-LoRA), and each sequence keeps its own
//! sampler, stop strings and logits hook ([`crate::generation::Stepper`], the loop `generate`
//! runs too). New jobs join between steps, finished ones leave. Every sequence's tokens are
//! the ones it gets alone (greedy): every column of the batched pass is bit-identical to the
//! one-sequence pass (`tests/tests/batch.rs`).
//!
//! Prompt cache: a slot keeps the KV cache of its last sequence and which tokens (under which
//! adapters) it holds; a new job goes to the free slot sharing the longest prefix with its
//! prompt under the same adapters, and only the rest of its prompt is prefilled.
//!
//! Back-pressure: the queue holds at most `--queue` jobs ([`Busy`] beyond, a 429 for the
//! client). Event channels are bounded: a sequence whose reader is slow is simply not
//! advanced until its channel has room (the scheduler never blocks on a reader, so others
//! keep streaming), and a client that goes away (its receiver dropped) frees its slot at the
//! next step; a job whose client left while it waited in the queue is skipped.

use super::registry::{Loaded, Registry};
use crate::generation::{self, Finish, Next, Sink, Stepper};
use crate::tok::Tok;
use anyhow::Result;
use edgelora::format::gguf::Gguf;
use edgelora::lora::AdapterSet;
use edgelora::model::{
    state_buffer_for, step_scratch_buffer, CacheSpec, KernelMode, Model, SeqStep, State,
    StepScratch,
};
use edgelora::sample::{Sampler, SamplerConfig};
use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::stop::StopMatcher;

/// Events a job's channel holds before the worker waits for the reader.
pub const EVENT_BUFFER: usize = 64;

/// The model, tokenizer and adapters every worker shares (the model for the life of the
/// process, the adapter list changed by the adapter routes).
pub struct Shared {
    /// The base model (weights borrowed from the mapped file).
    pub model: &'static Model<'static>,
    /// Its tokenizer and chat renderer.
    pub tok: &'static Tok<'static>,
    /// The GGUF the model was loaded from (adapters added at run time bind against it).
    pub base: &'static Gguf<'static>,
    /// The adapters served now (`--adapter`, then `POST /v1/adapters`).
    pub adapters: Registry,
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
    /// Active adapters and scales (held until the job ends, even if deleted meanwhile).
    pub adapters: Vec<(Arc<Loaded>, f32)>,
    /// Sampling parameters.
    pub sampling: SamplerConfig,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Stop strings (not included in the output).
    pub stop: Vec<String>,
    /// Report log-probabilities: `Some(n)` with the `n` most likely alternatives per token.
    pub logprobs: Option<usize>,
    /// `response_format` JSON constraint: masks the logits before each sample.
    pub constraint: Option<crate::constrained::JsonConstraint>,
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
    cached_prompt_tokens: u64,
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

    fn cached_prompt(&self, n: usize) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        c.cached_prompt_tokens += n as u64;
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
            "edgelora_prompt_cache_tokens_total",
            "counter",
            "Prompt tokens whose KV came from the prompt cache (not prefilled again).",
            &one(c.cached_prompt_tokens.to_string()),
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
            "Seconds from admission to the first token (summed over sequences).",
            &one(format!("{:.6}", c.prefill_s)),
        );
        metric(
            "edgelora_decode_seconds_total",
            "counter",
            "Seconds spent generating tokens (summed over sequences).",
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
            "Requests waiting for a free sequence slot.",
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

/// Most tokens one batched step runs (decodes plus prompt chunks): the blocked matmuls read
/// each weight once per step, so a larger step amortises the weights over more tokens, while
/// a step's latency is what every running stream waits between two tokens.
pub const STEP_TOKENS: usize = 64;

/// Most prompt tokens of one sequence per step: a long prompt is prefilled over several
/// steps, between which the running streams keep getting their tokens.
pub const PREFILL_CHUNK: usize = 32;

/// The request queue: jobs waiting for a sequence slot, at most `cap` of them.
struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
    cap: usize,
}

/// The answer of [`Engine::submit`] when the queue is full.
#[derive(Debug)]
pub struct Busy;

/// The job queue and the scheduler thread.
pub struct Engine {
    queue: Arc<Queue>,
    shared: Arc<Shared>,
}

impl Engine {
    /// Start the scheduler with `parallel` sequence slots, each a KV cache of `shared.ctx`
    /// positions, and a queue of at most `queue_cap` waiting jobs.
    ///
    /// # Errors
    /// A cache spec the model cannot use.
    pub fn start(
        shared: Arc<Shared>,
        parallel: usize,
        queue_cap: usize,
        spec: CacheSpec,
        mode: KernelMode,
    ) -> Result<Engine> {
        let cfg = *shared.model.config();
        // Check the cache once here, so a bad spec is a startup error, not the scheduler's.
        {
            let mut buf = state_buffer_for(&cfg, 1, spec);
            State::with_cache(&cfg, 1, spec, &mut buf)?;
        }
        let queue = Arc::new(Queue {
            jobs: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            cap: queue_cap.max(1),
        });
        let (q, sh) = (queue.clone(), shared.clone());
        let slots = parallel.max(1);
        std::thread::Builder::new()
            .name("edgelora-scheduler".into())
            .spawn(move || scheduler(&sh, &q, slots, spec, mode))?;
        Ok(Engine { queue, shared })
    }

    /// The shared model and counters.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Queue a job; its events arrive on `job.events`.
    ///
    /// # Errors
    /// [`Busy`] when the queue already holds its maximum (the job is dropped).
    pub fn submit(&self, job: Job) -> Result<(), Busy> {
        let mut q = self.queue.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= self.queue.cap {
            return Err(Busy);
        }
        q.push_back(job);
        self.shared.metrics.queued.store(q.len(), Ordering::Relaxed);
        self.queue.ready.notify_one();
        Ok(())
    }
}

/// Adapters by serial ([`Loaded::serial`]) and scale (bits): sequences with equal keys
/// share one adapter set object in a step (one LoRA pass per group), and a KV cache is
/// reused only under the key it was computed with.
type Key = Vec<(u64, u32)>;

fn key_of(adapters: &[(Arc<Loaded>, f32)]) -> Key {
    adapters
        .iter()
        .map(|(a, s)| (a.serial, s.to_bits()))
        .collect()
}

/// A running sequence.
struct Seq {
    prompt: Vec<u32>,
    /// Prompt positions whose K/V are in the slot's cache.
    fed: usize,
    /// The token to run next and its position (after the prompt).
    next: Option<(u32, usize)>,
    key: Key,
    /// The adapters of `key`, kept alive while the sequence runs.
    held: Vec<(Arc<Loaded>, f32)>,
    stepper: Stepper<'static>,
    sink: ServeSink,
    /// The request's `response_format` constraint (masks the logits the stepper samples).
    constraint: Option<crate::constrained::JsonConstraint>,
    /// The last logits, handed to the stepper.
    logits: Vec<f32>,
}

/// A KV cache and what it holds.
struct Slot {
    seq: Option<Seq>,
    /// The tokens whose K/V the cache holds, in order, and the adapters they were run with:
    /// the prompt cache. A new request under the same key starts after the longest common
    /// prefix (a shared system prompt is prefilled once per slot, not once per request).
    cached: Vec<u32>,
    cached_key: Key,
    /// When the slot last finished a sequence (least recently used goes first).
    used: u64,
}

/// The scheduler: admits jobs into free slots, then runs steps that advance every running
/// sequence by one token and feed waiting prompts in chunks, all in one
/// [`Model::step_many`] pass over the base weights, until the process ends.
fn scheduler(shared: &Shared, q: &Queue, n_slots: usize, spec: CacheSpec, mode: KernelMode) {
    let model = shared.model;
    let cfg = *model.config();
    let ctx = shared.ctx;
    let mut bufs: Vec<Vec<f32>> = (0..n_slots)
        .map(|_| state_buffer_for(&cfg, ctx, spec))
        .collect();
    let mut states: Vec<State<'_>> = Vec::with_capacity(n_slots);
    for b in bufs.iter_mut() {
        match State::with_cache(&cfg, ctx, spec, b) {
            Ok(mut s) => {
                s.set_kernel_mode(mode);
                states.push(s);
            }
            Err(e) => {
                eprintln!("scheduler: cannot build a state of {ctx} positions: {e}");
                return;
            }
        }
    }
    let budget = STEP_TOKENS.max(n_slots);
    let mut sbuf = step_scratch_buffer(&cfg, ctx, budget, n_slots);
    let mut scratch = match StepScratch::new(&cfg, ctx, budget, n_slots, &mut sbuf) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("scheduler: {e}");
            return;
        }
    };
    let mut slots: Vec<Slot> = (0..n_slots)
        .map(|_| Slot {
            seq: None,
            cached: vec![],
            cached_key: vec![],
            used: 0,
        })
        .collect();
    // Sinks of finished sequences whose last events wait for room in their channel.
    let mut draining: Vec<ServeSink> = vec![];
    let mut clock = 0u64;
    loop {
        clock += 1;
        draining.retain_mut(|s| !s.flush());
        // Clients that went away free their sequence now.
        for sl in slots.iter_mut() {
            if sl.seq.as_ref().is_some_and(|s| s.sink.events.is_closed()) {
                let s = sl.seq.take().map(|s| s.stepper.finish(&mut NullSink));
                if let Some(g) = s {
                    shared.metrics.generation(&g, true);
                }
                shared.metrics.running.fetch_sub(1, Ordering::Relaxed);
                sl.used = clock;
            }
        }
        admit(shared, q, &mut slots, &mut states, clock);
        let runnable = slots.iter().any(|s| {
            s.seq.as_ref().is_some_and(|s| {
                s.sink.outbox.is_empty() && (s.fed < s.prompt.len() || s.next.is_some())
            })
        });
        if !runnable {
            let busy = slots.iter().any(|s| s.seq.is_some()) || !draining.is_empty();
            let jobs = q.jobs.lock().unwrap_or_else(|e| e.into_inner());
            if jobs.is_empty() {
                // Sleep until a job arrives; poll when a reader is slow (its channel full).
                let wait = if busy {
                    std::time::Duration::from_millis(2)
                } else {
                    std::time::Duration::from_secs(1)
                };
                let _ = q.ready.wait_timeout(jobs, wait);
            }
            continue;
        }
        step(
            shared,
            &mut slots,
            &mut states,
            &mut scratch,
            budget,
            &mut draining,
            clock,
        );
    }
}

/// Move queued jobs into free slots, each into the slot whose cache shares the longest
/// prefix with its prompt under the same adapters (else the least recently used one).
fn admit(shared: &Shared, q: &Queue, slots: &mut [Slot], states: &mut [State<'_>], clock: u64) {
    loop {
        if !slots.iter().any(|s| s.seq.is_none()) {
            return;
        }
        let job = {
            let mut jobs = q.jobs.lock().unwrap_or_else(|e| e.into_inner());
            let j = jobs.pop_front();
            shared.metrics.queued.store(jobs.len(), Ordering::Relaxed);
            match j {
                Some(j) => j,
                None => return,
            }
        };
        if job.events.is_closed() {
            shared.metrics.cancelled_in_queue();
            continue;
        }
        let sampler = match Sampler::new(job.sampling) {
            Ok(s) => s,
            Err(e) => {
                let _ = job.events.try_send(Event::Error(e.to_string()));
                continue;
            }
        };
        let key = key_of(&job.adapters);
        let lcp = |s: &Slot| -> usize {
            if s.cached_key != key {
                return 0;
            }
            s.cached
                .iter()
                .zip(&job.prompt)
                .take_while(|(a, b)| a == b)
                .count()
        };
        let Some(i) = (0..slots.len())
            .filter(|&i| slots[i].seq.is_none())
            .max_by_key(|&i| (lcp(&slots[i]), u64::MAX - slots[i].used))
        else {
            return;
        };
        // Keep the shared prefix, but run at least the prompt's last token (its logits).
        let mut keep = lcp(&slots[i]).min(job.prompt.len().saturating_sub(1));
        let st = &mut states[i];
        if keep < st.earliest_restart() {
            keep = 0;
        }
        st.truncate(keep);
        let slot = &mut slots[i];
        slot.cached.truncate(keep);
        slot.cached_key = key.clone();
        shared.metrics.cached_prompt(keep);
        shared.metrics.running.fetch_add(1, Ordering::Relaxed);
        let history = Vec::with_capacity(job.prompt.len() + job.max_tokens);
        let stepper = Stepper::new(
            shared.tok,
            0,
            &job.prompt,
            job.max_tokens,
            shared.ctx,
            sampler,
            history,
        );
        slot.seq = Some(Seq {
            fed: keep,
            next: None,
            key,
            held: job.adapters,
            stepper,
            sink: ServeSink::new(shared.tok, job.events, job.stop, job.logprobs),
            constraint: job.constraint,
            logits: vec![0.0; shared.model.config().vocab],
            prompt: job.prompt,
        });
        let _ = clock;
    }
}

/// One batched step: the next token of every running sequence whose reader keeps up, then
/// prompt chunks while the step has room; then sampling, events, and the end of finished
/// sequences.
fn step(
    shared: &Shared,
    slots: &mut [Slot],
    states: &mut [State<'_>],
    scratch: &mut StepScratch<'_>,
    budget: usize,
    draining: &mut Vec<ServeSink>,
    clock: u64,
) {
    // (slot, first token, count, pos, wants logits); tokens are read from the sequence.
    let mut plan: Vec<(usize, usize, usize, bool)> = vec![];
    let mut room = budget;
    for (i, sl) in slots.iter().enumerate() {
        if let Some(s) = &sl.seq {
            if s.next.is_some() && s.sink.outbox.is_empty() && room > 0 {
                plan.push((i, 1, s.next.map_or(0, |n| n.1), true));
                room -= 1;
            }
        }
    }
    for (i, sl) in slots.iter().enumerate() {
        if let Some(s) = &sl.seq {
            if s.fed < s.prompt.len() && room > 0 {
                let n = PREFILL_CHUNK.min(room).min(s.prompt.len() - s.fed);
                plan.push((i, n, s.fed, s.fed + n == s.prompt.len()));
                room -= n;
            }
        }
    }
    if plan.is_empty() {
        return;
    }
    // Sequences with the same adapters side by side: one LoRA group each.
    plan.sort_by(|a, b| {
        let ka = slots[a.0].seq.as_ref().map(|s| &s.key);
        let kb = slots[b.0].seq.as_ref().map(|s| &s.key);
        ka.cmp(&kb)
    });
    let mut keys: Vec<&Key> = vec![];
    let mut sets: Vec<AdapterSet<'_, '_, '_>> = vec![];
    let mut set_of = vec![0usize; plan.len()];
    for (k, p) in plan.iter().enumerate() {
        let Some(s) = slots[p.0].seq.as_ref() else {
            continue;
        };
        if keys.last() != Some(&&s.key) {
            let mut set = AdapterSet::EMPTY;
            for (a, scale) in &s.held {
                // Checked when the request was parsed (at most MAX_ACTIVE, finite scales).
                let _ = set.push(a.bound(), *scale);
            }
            keys.push(&s.key);
            sets.push(set);
        }
        set_of[k] = sets.len() - 1;
    }
    let one_tok: Vec<[u32; 1]> = plan
        .iter()
        .map(|p| {
            [slots[p.0]
                .seq
                .as_ref()
                .and_then(|s| s.next)
                .map_or(0, |n| n.0)]
        })
        .collect();
    let r = {
        let mut refs: Vec<Option<&mut State<'_>>> = states.iter_mut().map(Some).collect();
        let mut seqs: Vec<SeqStep<'_, '_>> = Vec::with_capacity(plan.len());
        for (k, &(i, n, pos, logits)) in plan.iter().enumerate() {
            let (Some(st), Some(s)) = (refs[i].take(), slots[i].seq.as_ref()) else {
                continue;
            };
            let tokens: &[u32] = if s.fed < s.prompt.len() {
                &s.prompt[pos..pos + n]
            } else {
                &one_tok[k]
            };
            seqs.push(SeqStep {
                state: st,
                tokens,
                pos,
                adapters: &sets[set_of[k]],
                logits,
            });
        }
        shared.model.step_many(scratch, &mut seqs)
    };
    if let Err(e) = r {
        // Nothing of the step ran: fail its sequences rather than loop on the error.
        for &(i, ..) in &plan {
            if let Some(mut s) = slots[i].seq.take() {
                shared.metrics.running.fetch_sub(1, Ordering::Relaxed);
                s.sink.push(Event::Error(format!("{e}")));
                draining.push(s.sink);
                slots[i].cached.clear();
            }
        }
        return;
    }
    for &(i, n, pos, logits) in &plan {
        let sl = &mut slots[i];
        let Some(s) = sl.seq.as_mut() else { continue };
        // The cache now holds these tokens at `pos..`.
        sl.cached.truncate(pos);
        if s.fed < s.prompt.len() {
            sl.cached.extend_from_slice(&s.prompt[pos..pos + n]);
            s.fed += n;
        } else if let Some((t, _)) = s.next {
            sl.cached.push(t);
        }
        if !logits {
            continue;
        }
        s.logits.copy_from_slice(states[i].logits());
        let mut sink =
            crate::constrained::Constrained::new(&mut s.sink, s.constraint.as_mut(), shared.tok);
        let next = s.stepper.next(&mut s.logits, &mut sink);
        match next {
            Ok(Next::Run(t, p)) => s.next = Some((t, p)),
            Ok(Next::Done(_)) => {
                if let Some(s) = sl.seq.take() {
                    finish(shared, s, draining);
                }
                sl.used = clock;
            }
            Err(e) => {
                if let Some(mut s) = sl.seq.take() {
                    shared.metrics.running.fetch_sub(1, Ordering::Relaxed);
                    s.sink.push(Event::Error(format!("{e:#}")));
                    draining.push(s.sink);
                }
                sl.used = clock;
            }
        }
    }
}

/// The end of a sequence: the text the stop matcher still held, then `Done`.
fn finish(shared: &Shared, s: Seq, draining: &mut Vec<ServeSink>) {
    let mut sink = s.sink;
    let g = s.stepper.finish(&mut sink);
    shared.metrics.generation(&g, sink.gone);
    shared.metrics.running.fetch_sub(1, Ordering::Relaxed);
    if sink.gone {
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
    sink.push(Event::Done {
        finish,
        prompt_tokens: g.n_prompt,
        completion_tokens: g.tokens.len(),
    });
    if !sink.flush() {
        draining.push(sink);
    }
}

/// A sink that ignores everything (a cancelled sequence's end).
struct NullSink;

impl Sink for NullSink {
    fn token(&mut self, _: u32, _: &str) -> ControlFlow<()> {
        ControlFlow::Break(())
    }
}

/// Turns tokens into events: stop strings cut, log-probabilities attached, and the end of the
/// generation once the client has gone. Events go through a small outbox: the scheduler never
/// blocks on one slow reader (its sequence just waits for the next step until its channel has
/// room), so the buffers stay bounded and the other streams keep going.
struct ServeSink {
    tok: &'static Tok<'static>,
    events: tokio::sync::mpsc::Sender<Event>,
    outbox: VecDeque<Event>,
    stop: StopMatcher,
    logprobs: Option<usize>,
    /// The logits of the token being sampled (kept only when log-probabilities are asked for).
    logits: Vec<f32>,
    /// Log-probabilities of tokens whose text is still held back by the stop matcher.
    pending: Vec<TokenLogprob>,
    stopped: bool,
    gone: bool,
}

impl ServeSink {
    fn new(
        tok: &'static Tok<'static>,
        events: tokio::sync::mpsc::Sender<Event>,
        stop: Vec<String>,
        logprobs: Option<usize>,
    ) -> Self {
        ServeSink {
            tok,
            events,
            outbox: VecDeque::new(),
            stop: StopMatcher::new(stop),
            logprobs,
            logits: vec![],
            pending: vec![],
            stopped: false,
            gone: false,
        }
    }

    /// Queue an event and send what the channel takes.
    fn push(&mut self, e: Event) {
        self.outbox.push_back(e);
        self.flush();
    }

    /// Send queued events while the channel has room; true when nothing is left to send
    /// (all sent, or the client has gone).
    fn flush(&mut self) -> bool {
        use tokio::sync::mpsc::error::TrySendError;
        while let Some(e) = self.outbox.pop_front() {
            match self.events.try_send(e) {
                Ok(()) => {}
                Err(TrySendError::Full(e)) => {
                    self.outbox.push_front(e);
                    return false;
                }
                Err(TrySendError::Closed(_)) => {
                    self.gone = true;
                    self.outbox.clear();
                }
            }
        }
        true
    }

    /// Send text and log-probabilities, if there is anything to send; false if the client
    /// has gone.
    fn send(&mut self, text: String, logprobs: Vec<TokenLogprob>) -> bool {
        if !(text.is_empty() && logprobs.is_empty()) {
            self.push(Event::Delta { text, logprobs });
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

impl Sink for ServeSink {
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
