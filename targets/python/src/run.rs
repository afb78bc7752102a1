//! The two calls that run the model, in plain Rust (no Python types): they run with the GIL
//! released, each on its own [`State`], so a [`ModelFile`] is shared read-only by every
//! thread that uses it.
//!
//! Both mirror the CLI so that the same inputs give bit-identical results: `logits` runs one
//! position at a time as `edgelora logits` does, `generate` prefills the prompt and samples as
//! `edgelora generate` does (its default sampler settings, the f16 KV cache).

use crate::store::{AdapterFile, Binding, ModelFile};
use edgelora_core::lora::AdapterSet;
use edgelora_core::model::{state_buffer_for, CacheSpec, CacheType, KernelMode, State};
use edgelora_core::sample::{Sampler, SamplerConfig};
use edgelora_core::tokenizer::{Decoder, TokenizerKind};
use std::sync::Arc;

/// The KV cache every call uses: the CLI's default (`--cache-type f16`).
const CACHE: CacheSpec = CacheSpec::of(CacheType::F16);

/// The adapters of one call and their scales. `bindings` is declared first, so it is dropped
/// before the adapters whose bytes the bindings borrow.
pub struct Active {
    bindings: Vec<(Arc<Binding>, f32)>,
    _adapters: Vec<Arc<AdapterFile>>,
}

impl Active {
    /// `adapters` at their scales, bound to `model` (cached per pair).
    ///
    /// # Errors
    /// An adapter that does not fit the model.
    pub fn new(
        model: &Arc<ModelFile>,
        adapters: &[(Arc<AdapterFile>, f32)],
    ) -> Result<Active, String> {
        let mut bindings = vec![];
        for (a, s) in adapters {
            bindings.push((a.binding(model)?, *s));
        }
        Ok(Active {
            bindings,
            _adapters: adapters.iter().map(|(a, _)| a.clone()).collect(),
        })
    }

    /// The core's set over the bindings.
    fn set(&self) -> Result<AdapterSet<'_, 'static, 'static>, String> {
        let mut set = AdapterSet::EMPTY;
        for (b, s) in &self.bindings {
            set.push(b.bound(), *s)
                .map_err(|e| format!("adapters: {e}"))?;
        }
        Ok(set)
    }
}

/// A zeroed state buffer for `ctx` positions (a state borrows its buffer).
fn buffer(m: &ModelFile, ctx: usize) -> Vec<f32> {
    state_buffer_for(m.model.config(), ctx, CACHE)
}

/// A state over `buf` for `ctx` positions running the kernels of `mode`.
fn state<'b>(
    m: &ModelFile,
    ctx: usize,
    mode: KernelMode,
    buf: &'b mut [f32],
) -> Result<State<'b>, String> {
    let mut st = State::with_cache(m.model.config(), ctx, CACHE, buf)
        .map_err(|e| format!("making the state for {ctx} positions: {e}"))?;
    st.set_kernel_mode(mode);
    Ok(st)
}

/// Teacher-forced logits of every position of `ids`: row-major, `ids.len()` rows of the
/// vocabulary size.
///
/// # Errors
/// The core's (ids are checked by the caller).
pub fn logits(
    m: &ModelFile,
    ids: &[u32],
    active: &Active,
    mode: KernelMode,
) -> Result<Vec<f32>, String> {
    let set = active.set()?;
    let vocab = m.model.config().vocab;
    let mut buf = buffer(m, ids.len());
    let mut st = state(m, ids.len(), mode, &mut buf)?;
    let mut out = Vec::with_capacity(ids.len() * vocab);
    for (pos, &t) in ids.iter().enumerate() {
        let l = m
            .model
            .forward_with(t, pos, &mut st, &set)
            .map_err(|e| format!("position {pos}: {e}"))?;
        out.extend_from_slice(l);
    }
    Ok(out)
}

/// What `generate` does besides the prompt.
pub struct GenOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Stop strings: the text ends before the first occurrence of any.
    pub stop: Vec<String>,
    /// Sampler settings (temperature 0: greedy).
    pub sampler: SamplerConfig,
    /// Kernels.
    pub mode: KernelMode,
}

/// Generate after prompt `ids`: up to `o.max_tokens` tokens, ending at the model's
/// end-of-generation token (not included), a stop string (cut, with what follows) or the end
/// of the context. Returns the text.
///
/// # Errors
/// A prompt that does not fit the context, and the core's errors.
pub fn generate(
    m: &ModelFile,
    ids: &[u32],
    active: &Active,
    o: &GenOptions,
) -> Result<String, String> {
    let cfg = m.model.config();
    if ids.len() >= cfg.ctx_len {
        return Err(format!(
            "prompt of {} tokens does not fit the model's context of {}; shorten it",
            ids.len(),
            cfg.ctx_len
        ));
    }
    if o.max_tokens == 0 {
        return Ok(String::new());
    }
    let set = active.set()?;
    let mut sampler = Sampler::new(o.sampler).map_err(|e| format!("sampler: {e}"))?;
    // Room for the prompt and every token but the last, which is sampled and never run.
    let ctx = (ids.len() + o.max_tokens).min(cfg.ctx_len);
    let mut buf = buffer(m, ctx);
    let mut st = state(m, ctx, o.mode, &mut buf)?;
    let mut logits = m
        .model
        .prefill_with(ids, 0, &mut st, &set)
        .map_err(|e| format!("running the prompt: {e}"))?
        .to_vec();
    let mut history = ids.to_vec();
    let mut dec = Decoder::new(&m.tok).skip_special(true);
    let mut text = String::new();
    // Token `i` is sampled from the logits of position `pos - 1` and run at `pos`.
    for (i, pos) in (ids.len()..).take(o.max_tokens).enumerate() {
        let next = sampler
            .sample(&mut logits, &history)
            .map_err(|e| format!("sampling: {e}"))?;
        if m.tok.is_eog(next) {
            break;
        }
        history.push(next);
        dec.push_to(next, &mut text)
            .map_err(|e| format!("decoding token {next}: {e}"))?;
        if cut_at_stop(&mut text, &o.stop) || i + 1 == o.max_tokens || pos + 1 >= ctx {
            return Ok(finish(dec, text, &o.stop));
        }
        let l = m
            .model
            .forward_with(next, pos, &mut st, &set)
            .map_err(|e| format!("position {pos}: {e}"))?;
        logits.copy_from_slice(l);
    }
    Ok(finish(dec, text, &o.stop))
}

/// The decoder's tail (an incomplete character becomes U+FFFD) appended, unless a stop
/// string already cut the text.
fn finish(mut dec: Decoder<'_, '_, Vec<u32>>, mut text: String, stop: &[String]) -> String {
    if !cut_at_stop(&mut text, stop) {
        let _ = dec.finish_to(&mut text);
        cut_at_stop(&mut text, stop);
    }
    text
}

/// Cut `text` before the earliest occurrence of any stop string; true if one occurs.
fn cut_at_stop(text: &mut String, stop: &[String]) -> bool {
    match stop.iter().filter_map(|s| text.find(s.as_str())).min() {
        Some(at) => {
            text.truncate(at);
            true
        }
        None => false,
    }
}

/// `ids` as text: control tokens (BOS, end of turn) skipped, and for SentencePiece models
/// the space the tokenizer put before the first word taken off, so that
/// `detokenize(tokenize(s)) == s` for ordinary text.
///
/// # Errors
/// An id outside the vocabulary.
pub fn detokenize(m: &ModelFile, ids: &[u32]) -> Result<String, String> {
    let strip = m.tok.kind() == TokenizerKind::Spm && m.tok.add_space_prefix();
    let mut dec = Decoder::new(&m.tok)
        .skip_special(true)
        .strip_leading_space(strip);
    let mut s = String::new();
    for &id in ids {
        dec.push_to(id, &mut s)
            .map_err(|e| format!("decoding token {id}: {e}"))?;
    }
    dec.finish_to(&mut s)
        .map_err(|e| format!("decoding: {e}"))?;
    Ok(s)
}

/// Token ids for `text`, with BOS first when `add_bos` and the model asks for it.
///
/// # Errors
/// The tokenizer's.
pub fn tokenize(
    m: &ModelFile,
    text: &str,
    special: bool,
    add_bos: bool,
) -> Result<Vec<u32>, String> {
    let mut ids = vec![];
    if add_bos && m.tok.add_bos() {
        ids.extend(m.tok.bos_id());
    }
    let body = m
        .tok
        .encode_vec(text, special)
        .map_err(|e| format!("tokenizing: {e}"))?;
    ids.extend(body);
    Ok(ids)
}

/// The token ids `generate --chat` runs for `user`: the rendered chat prompt with special
/// tokens parsed, BOS first when the model asks for it unless the template wrote it.
///
/// # Errors
/// A model without a chat format, a failing template, the tokenizer's.
pub fn chat_ids(m: &ModelFile, system: Option<&str>, user: &str) -> Result<Vec<u32>, String> {
    let text = m.chat.render(system, user)?;
    let body = m
        .tok
        .encode_vec(&text, true)
        .map_err(|e| format!("tokenizing the chat prompt: {e}"))?;
    let mut ids = vec![];
    if m.tok.add_bos() && body.first().copied() != m.tok.bos_id() {
        ids.extend(m.tok.bos_id());
    }
    ids.extend(body);
    Ok(ids)
}
