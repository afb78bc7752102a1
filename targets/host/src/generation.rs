//! The generation loop every text-producing command shares: prefill a prompt, then sample,
//! decode and run one token at a time, handing each token to a [`Sink`].
//!
//! `generate` and `chat` print what the sink gets; `serve` turns it into server-sent events,
//! cuts stop strings and collects log-probabilities, and stops when the client goes away. The
//! loop itself is the same for all of them, so a served greedy completion is token for token
//! what `edgelora generate` prints.

use crate::tok::{Dec, Tok};
use crate::util::{human, peak_rss};
use anyhow::{bail, Result};
use edgelora::lora::AdapterSet;
use edgelora::model::{Model, State};
use edgelora::sample::{Sampler, SamplerConfig};
use std::ops::ControlFlow;
use std::time::Instant;

/// Where generated tokens go.
pub trait Sink {
    /// The logits the next token is about to be sampled from (before any penalty or
    /// temperature). Only sinks that report log-probabilities need them.
    fn logits(&mut self, _logits: &[f32]) {}

    /// Change the logits before sampling, after [`Sink::logits`] saw them: constrained
    /// decoding sets the tokens the output may not continue with to `-inf`
    /// ([`crate::constrained::Constrained`]).
    fn mask(&mut self, _logits: &mut [f32]) {}

    /// A sampled token (not an end-of-generation token) and the text it completed (empty
    /// while a multi-byte character is incomplete). `Break` ends the generation after it;
    /// the token is then not run, so it is not in the KV cache.
    fn token(&mut self, id: u32, text: &str) -> ControlFlow<()>;

    /// What the streaming decoder still held at the end (an incomplete character, as U+FFFD).
    fn tail(&mut self, _text: &str) {}
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

/// What a generation wants run next, from [`Stepper::next`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Run `token` at `pos` and hand the logits back to [`Stepper::next`].
    Run(u32, usize),
    /// The generation is over. `Some((token, pos))`: its last token (the end-of-generation
    /// token, or the last one `n` allowed), which `generate` and `chat` still run so the KV
    /// cache holds the whole exchange and a chat can continue after it; the server skips it.
    Done(Option<(u32, usize)>),
}

/// One generation driven a token at a time by whoever runs the model: [`run`]'s loop, or the
/// server's batched scheduler, which advances many of them in one pass. Sampling, the sink's
/// hooks, stop conditions and decoding live here once, so both give the same tokens.
pub struct Stepper<'t> {
    tok: &'t Tok<'t>,
    dec: Dec<'t, 't>,
    sampler: Sampler,
    /// The prompt and sampled tokens (the penalties look at it).
    pub history: Vec<u32>,
    out: Vec<u32>,
    text: String,
    /// Tokens still allowed.
    left: usize,
    /// Position of the next token to run.
    pos: usize,
    ctx: usize,
    finish: Finish,
    eog: Option<u32>,
    n_prompt: usize,
    t0: Instant,
    prefill_s: f64,
    t1: Option<Instant>,
}

impl<'t> Stepper<'t> {
    /// A generation of at most `n` tokens after prompt `ids`, which will end at position
    /// `start + ids.len()` of a context of `ctx` positions; `history` already holds what
    /// precedes the prompt (the penalties look at it).
    pub fn new(
        tok: &'t Tok<'t>,
        start: usize,
        ids: &[u32],
        n: usize,
        ctx: usize,
        sampler: Sampler,
        mut history: Vec<u32>,
    ) -> Self {
        history.extend_from_slice(ids);
        Stepper {
            tok,
            dec: tok.decoder(),
            sampler,
            history,
            out: vec![],
            text: String::new(),
            left: n,
            pos: start + ids.len(),
            ctx,
            finish: Finish::Length,
            eog: None,
            n_prompt: ids.len(),
            t0: Instant::now(),
            prefill_s: 0.0,
            t1: None,
        }
    }

    /// Given the logits of the last token run (the prompt's last, then each sampled one):
    /// show them to the sink, sample, hand the token to the sink, and say what to run next.
    ///
    /// # Errors
    /// Non-finite logits (a NaN or an infinity: never sampled from); the sampler's and the
    /// decoder's.
    pub fn next(&mut self, logits: &mut [f32], sink: &mut dyn Sink) -> Result<Next> {
        if self.t1.is_none() {
            self.prefill_s = self.t0.elapsed().as_secs_f64();
            self.t1 = Some(Instant::now());
        }
        if self.left == 0 {
            return Ok(Next::Done(None));
        }
        self.left -= 1;
        let pos = self.pos;
        if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
            anyhow::bail!(
                "the logits before position {pos} are not finite ({} at token id {i}): the model \
                 or an adapter produced invalid values; check the adapter scales and files \
                 (`edgelora adapter inspect A --base M`)",
                logits[i]
            );
        }
        sink.logits(logits);
        sink.mask(logits);
        let next = self.sampler.sample(logits, &self.history)?;
        if self.tok.is_eog(next) {
            self.finish = Finish::Eog;
            self.history.push(next);
            self.eog = Some(next);
            self.left = 0;
            return Ok(Next::Done((pos < self.ctx).then_some((next, pos))));
        }
        self.out.push(next);
        self.history.push(next);
        let piece = self.dec.push(next)?;
        self.text.push_str(&piece);
        if sink.token(next, &piece).is_break() {
            self.finish = Finish::Sink;
            self.left = 0;
            return Ok(Next::Done(None));
        }
        if pos + 1 >= self.ctx {
            self.finish = Finish::Context;
            self.left = 0;
            return Ok(Next::Done(None));
        }
        self.pos += 1;
        if self.left == 0 {
            return Ok(Next::Done(Some((next, pos))));
        }
        Ok(Next::Run(next, pos))
    }

    /// End the generation: hand the decoder's tail to the sink and return the result.
    pub fn finish(mut self, sink: &mut dyn Sink) -> Gen {
        let tail = self.dec.finish();
        sink.tail(&tail);
        self.text.push_str(&tail);
        let now = Instant::now();
        Gen {
            tokens: self.out,
            text: self.text,
            prefill_s: if self.t1.is_some() {
                self.prefill_s
            } else {
                self.t0.elapsed().as_secs_f64()
            },
            decode_s: self.t1.map_or(0.0, |t| (now - t).as_secs_f64()),
            n_prompt: self.n_prompt,
            finish: self.finish,
            eog: self.eog,
        }
    }
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
    let s = std::mem::replace(sampler, Sampler::new(SamplerConfig::default())?);
    let mut g = Stepper::new(tok, start, ids, n, st.ctx(), s, std::mem::take(history));
    let mut logits = model.prefill_with(ids, start, st, set)?.to_vec();
    let r = loop {
        match g.next(&mut logits, sink) {
            Ok(Next::Run(t, pos)) => match model.forward_with(t, pos, st, set) {
                Ok(l) => logits.copy_from_slice(l),
                Err(e) => break Err(e.into()),
            },
            Ok(Next::Done(eog)) => {
                // Keep the last token in the cache so a chat can continue after it.
                if let Some((t, pos)) = eog {
                    if let Err(e) = model.forward_with(t, pos, st, set) {
                        break Err(e.into());
                    }
                }
                break Ok(());
            }
            Err(e) => break Err(e),
        }
    };
    *history = std::mem::take(&mut g.history);
    *sampler = std::mem::replace(&mut g.sampler, Sampler::new(SamplerConfig::default())?);
    r?;
    Ok(g.finish(sink))
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
