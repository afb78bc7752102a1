//! The generation loop every text-producing command shares: prefill a prompt, then sample,
//! decode and run one token at a time, handing each token to a [`Sink`].
//!
//! `generate` and `chat` print what the sink gets; `serve` turns it into server-sent events,
//! cuts stop strings and collects log-probabilities, and stops when the client goes away. The
//! loop itself is the same for all of them, so a served greedy completion is token for token
//! what `edgelora generate` prints.

use crate::tok::Tok;
use crate::util::{human, peak_rss};
use anyhow::{bail, Result};
use edgelora::lora::AdapterSet;
use edgelora::model::{Model, State};
use edgelora::sample::Sampler;
use std::ops::ControlFlow;
use std::time::Instant;

/// Where generated tokens go.
pub trait Sink {
    /// The logits the next token is about to be sampled from (before any penalty or
    /// temperature). Only sinks that report log-probabilities need them.
    fn logits(&mut self, _logits: &[f32]) {}

    /// A sampled token (not an end-of-generation token) and the text it completed (empty
    /// while a multi-byte character is incomplete). `Break` ends the generation after it;
    /// the token is then not run, so it is not in the KV cache.
    fn token(&mut self, id: u32, text: &str) -> ControlFlow<()>;

    /// What the streaming decoder still held at the end (an incomplete character, as U+FFFD).
    fn tail(&mut self, _text: &str) {}
}

/// A sink that only wants the text, piece by piece.
pub struct TextSink<F: FnMut(&str)>(pub F);

impl<F: FnMut(&str)> Sink for TextSink<F> {
    fn token(&mut self, _id: u32, text: &str) -> ControlFlow<()> {
        (self.0)(text);
        ControlFlow::Continue(())
    }

    fn tail(&mut self, text: &str) {
        (self.0)(text);
    }
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The model produced an end-of-generation token.
    Eog,
    /// The token limit was reached.
    Length,
    /// The context is full.
    Context,
    /// The sink asked to stop (a stop string, or a client that went away).
    Sink,
}

impl Finish {
    /// The word `generate --json` and the timing line print.
    pub const fn name(self) -> &'static str {
        match self {
            Finish::Eog => "eog",
            Finish::Length => "length",
            Finish::Context => "context",
            Finish::Sink => "stopped",
        }
    }
}

/// One generation's tokens, text and timings.
pub struct Gen {
    /// The sampled tokens, end-of-generation token excluded.
    pub tokens: Vec<u32>,
    /// Their text.
    pub text: String,
    /// Seconds spent on the prompt.
    pub prefill_s: f64,
    /// Seconds spent sampling and running the generated tokens.
    pub decode_s: f64,
    /// Prompt tokens run (those after `start`).
    pub n_prompt: usize,
    /// Why it ended.
    pub finish: Finish,
    /// The end-of-generation token that stopped it (now in the KV cache), if one did.
    pub eog: Option<u32>,
}

/// Run prompt `ids` from position `start` (the state already holds `start` positions) and
/// sample up to `n` tokens, handing each to `sink`. `history` gets the prompt and the sampled
/// tokens (the penalties look at it).
///
/// # Errors
/// A prompt that does not fit the state's context, and any error of the model or sampler.
#[allow(clippy::too_many_arguments)]
pub fn run(
    model: &Model<'_>,
    tok: &Tok<'_>,
    st: &mut State<'_>,
    start: usize,
    ids: &[u32],
    n: usize,
    sampler: &mut Sampler,
    history: &mut Vec<u32>,
    set: &AdapterSet<'_, '_, '_>,
    sink: &mut dyn Sink,
) -> Result<Gen> {
    if start + ids.len() >= st.ctx() {
        bail!(
            "prompt of {} tokens does not fit the context of {} (use --ctx)",
            start + ids.len(),
            st.ctx()
        );
    }
    let t0 = Instant::now();
    let mut logits = model.prefill_with(ids, start, st, set)?.to_vec();
    let prefill_s = t0.elapsed().as_secs_f64();
    history.extend_from_slice(ids);
    let mut dec = tok.decoder();
    let mut out = vec![];
    let mut text = String::new();
    let t1 = Instant::now();
    let mut finish = Finish::Length;
    let mut eog = None;
    for pos in (start + ids.len()..).take(n) {
        sink.logits(&logits);
        let next = sampler.sample(&mut logits, history)?;
        if tok.is_eog(next) {
            finish = Finish::Eog;
            history.push(next);
            eog = Some(next);
            // Keep the end token in the cache so a chat can continue after it.
            if pos < st.ctx() {
                model.forward_with(next, pos, st, set)?;
            }
            break;
        }
        out.push(next);
        history.push(next);
        let piece = dec.push(next)?;
        text.push_str(&piece);
        if sink.token(next, &piece).is_break() {
            finish = Finish::Sink;
            break;
        }
        if pos + 1 >= st.ctx() {
            finish = Finish::Context;
            break;
        }
        logits.copy_from_slice(model.forward_with(next, pos, st, set)?);
    }
    let tail = dec.finish();
    sink.tail(&tail);
    text.push_str(&tail);
    Ok(Gen {
        tokens: out,
        text,
        prefill_s,
        decode_s: t1.elapsed().as_secs_f64(),
        n_prompt: ids.len(),
        finish,
        eog,
    })
}

/// The timing line `generate` and `chat` print on stderr.
pub fn report(g: &Gen) {
    let rss = peak_rss().map(human).unwrap_or_else(|| "?".into());
    eprintln!(
        "\n[{} prompt tokens in {:.2} s ({:.1} tok/s); {} generated in {:.2} s ({:.1} tok/s); stop: {}; peak RSS {}]",
        g.n_prompt,
        g.prefill_s,
        g.n_prompt as f64 / g.prefill_s.max(1e-9),
        g.tokens.len(),
        g.decode_s,
        g.tokens.len() as f64 / g.decode_s.max(1e-9),
        g.finish.name(),
        rss
    );
}
