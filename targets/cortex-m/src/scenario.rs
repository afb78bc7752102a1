//! The firmware's script, shared word for word with the host test.
//!
//! `tests/tests/firmware.rs` compiles this same file for the host (`#[path]`), runs it with
//! the same assets and the same kernel choice, and compares every `EL ...` line with what the
//! firmware printed under QEMU. The numbers are not compared "within a tolerance": the hash
//! on each `run` line covers the bits of every logit of every step, so equal lines mean the
//! Cortex-M computed exactly what the host did.
//!
//! The script: generate greedily from a prompt with the base, with adapter A, with B
//! (switching is O(1): another `AdapterSet`), with A and B mixed; then feed bad input (a
//! corrupted, a truncated and an oversized adapter stream, an adapter for another base, a
//! context overflow, a token out of range), each of which must come back as an error while B
//! stays active and still gives B's answer; then stream B again in UART-sized chunks into a
//! receive buffer, bind it, and check it answers exactly as B from flash did.
//!
//! Only `core` and `edgelora`: no allocation, every buffer is handed in.
//!
//! Every line is a [`Line`] value handed to a [`Sink`]. Any `fmt::Write` (the host's
//! `String`, the plain firmware's semihosting `Out`) is a sink that prints its `Display`
//! text; a defmt firmware's sink (the Cortex-M crate's `log` module, feature `defmt`) sends
//! the same value as a defmt frame instead, so the host's decoder formats the numbers, the
//! escaped text and the core's errors (its `defmt::Format`) into the same text.

// The core's `Error` is Copy and about 80 bytes by design (an inline copy of the offending
// name, no allocator); boxing it is not an option here, and errors are the rare path.
#![allow(clippy::result_large_err)]

use core::fmt::{self, Write};
use core::mem::MaybeUninit;
use edgelora::lora::stream::{frame_header, StreamLoader};
use edgelora::lora::{Adapter, AdapterSet, LoraPair};
use edgelora::model::{CacheSpec, Model, State};
use edgelora::sample::argmax;
use edgelora::tokenizer::Tokenizer;
use edgelora::{Error, Gguf};

/// One line of the script's output (`Display`: the text, without the newline).
#[derive(Clone, Copy, Debug)]
pub enum Line<'a> {
    /// The model's shape and the state's size.
    Model {
        /// Layers.
        layers: usize,
        /// Embedding width.
        dim: usize,
        /// FFN width.
        ffn: usize,
        /// Vocabulary size.
        vocab: usize,
        /// Context the state is sized for.
        ctx: usize,
        /// KV cache type name.
        kv: &'static str,
        /// Prompt block.
        block: usize,
        /// `State::bytes_for_cache`.
        state_bytes: usize,
    },
    /// The prompt and its ids.
    Prompt {
        /// Prompt text (printed escaped, as `{:?}`).
        text: &'a str,
        /// Its ids.
        ids: &'a [u32],
    },
    /// One generation: ids, hash of every logit's bits, decoded text (escaped).
    Run {
        /// Which adapters.
        name: &'a str,
        /// Generated ids.
        ids: &'a [u32],
        /// FNV-1a over the bits of every logit.
        hash: u32,
        /// The ids decoded.
        text: &'a str,
    },
    /// A verified adapter stream.
    Stream {
        /// Bytes streamed (frame header + payload).
        bytes: usize,
        /// Chunks pushed.
        chunks: u32,
        /// Payload bytes.
        payload: usize,
    },
    /// Bad input rejected with this error.
    Reject {
        /// Which bad input.
        what: &'a str,
        /// The core's error.
        err: &'a Error,
    },
    /// The script passed.
    Done,
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

impl Line<'_> {
    /// The text, written straight into `f`: a text sink calls this rather than going through
    /// `Display` and a nested `Formatter` (the plain demo image: 135016 bytes of flash against
    /// 135884 through `Display`, 134960 before lines were values).
    ///
    /// # Errors
    /// `f` failed.
    pub fn write_to<W: Write + ?Sized>(&self, f: &mut W) -> fmt::Result {
        match *self {
            Line::Model {
                layers,
                dim,
                ffn,
                vocab,
                ctx,
                kv,
                block,
                state_bytes,
            } => write!(
                f,
                "EL model layers={layers} dim={dim} ffn={ffn} vocab={vocab} ctx={ctx} kv={kv} block={block} state_bytes={state_bytes}"
            ),
            Line::Prompt { text, ids } => {
                write!(f, "EL prompt {text:?} ids=")?;
                write_ids(f, ids)
            }
            Line::Run {
                name,
                ids,
                hash,
                text,
            } => {
                write!(f, "EL run {name} ids=")?;
                write_ids(f, ids)?;
                write!(f, " hash={hash:08x} text={text:?}")
            }
            Line::Stream {
                bytes,
                chunks,
                payload,
            } => write!(f, "EL stream bytes={bytes} chunks={chunks} payload={payload}"),
            Line::Reject { what, err } => write!(f, "EL reject {what}: {err}"),
            Line::Done => f.write_str("EL scenario ok"),
        }
    }
}

/// Where the script's lines go.
pub trait Sink {
    /// Emit one line.
    ///
    /// # Errors
    /// The sink failed (the script stops with [`Failure::Fmt`]).
    fn line(&mut self, l: &Line<'_>) -> fmt::Result;
}

/// Text: the line's `Display` and a newline.
impl<W: Write> Sink for W {
    fn line(&mut self, l: &Line<'_>) -> fmt::Result {
        l.write_to(self)?;
        self.write_char('\n')
    }
}

/// Bytes per chunk when streaming an adapter, as a UART driver might hand them over (odd on
/// purpose, so chunks straddle the frame header, the GGUF header and every field).
pub const CHUNK: usize = 61;

/// What goes into flash, and the run parameters (`assets/manifest.txt`).
pub struct Assets<'b> {
    /// Base model GGUF.
    pub base: &'b [u8],
    /// Adapter A (GGUF LoRA).
    pub adapter_a: &'b [u8],
    /// Adapter B (GGUF LoRA); also the one streamed.
    pub adapter_b: &'b [u8],
    /// An adapter recording another base's fingerprint.
    pub adapter_wrong: &'b [u8],
    /// Prompt text.
    pub prompt: &'b str,
    /// Context the state was sized for.
    pub ctx: usize,
    /// KV cache type and prompt block the state was sized for (the manifest's `kv_cache`,
    /// block 1: build.rs's `config::CACHE`).
    pub cache: CacheSpec,
}

/// Caller memory for everything that changes (statics on the device, leaked `Vec`s on the
/// host).
pub struct Buffers<'b> {
    /// `State::len_for(cfg, ctx)` f32s.
    pub state: &'b mut [f32],
    /// `Tokenizer::scratch_len` words.
    pub tok: &'b mut [u32],
    /// Prompt ids (`Tokenizer::encode_buf_len(prompt.len())`).
    pub prompt: &'b mut [u32],
    /// Generated ids; its length is the number of tokens generated per run.
    pub gen: &'b mut [u32],
    /// Slots for adapter A, B and the streamed one (`Adapter::slots_len` each).
    pub slots_a: &'b mut [Option<LoraPair<'b>>],
    /// See `slots_a`.
    pub slots_b: &'b mut [Option<LoraPair<'b>>],
    /// See `slots_a`.
    pub slots_s: &'b mut [Option<LoraPair<'b>>],
    /// Receive buffer for a streamed adapter.
    pub stream: &'b mut [u8],
}

/// Why the script stopped.
#[derive(Debug)]
pub enum Failure {
    /// A core call that must succeed failed.
    Core(&'static str, Error),
    /// A check of the script failed (bad input accepted, adapter without effect, ...).
    Check(&'static str),
    /// The output sink failed.
    Fmt,
}

impl From<fmt::Error> for Failure {
    fn from(_: fmt::Error) -> Self {
        Failure::Fmt
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Core(step, e) => write!(f, "{step}: {e}"),
            Failure::Check(what) => write!(f, "check failed: {what}"),
            Failure::Fmt => f.write_str("output failed"),
        }
    }
}

trait Step<T> {
    fn step(self, what: &'static str) -> Result<T, Failure>;
}

impl<T> Step<T> for Result<T, Error> {
    fn step(self, what: &'static str) -> Result<T, Failure> {
        self.map_err(|e| Failure::Core(what, e))
    }
}

/// FNV-1a over the bits of every logit of a run.
struct Fnv(u32);

impl Fnv {
    fn eat(&mut self, xs: &[f32]) {
        for x in xs {
            for b in x.to_bits().to_le_bytes() {
                self.0 = (self.0 ^ b as u32).wrapping_mul(0x0100_0193);
            }
        }
    }
}

/// A `fmt::Write` into a fixed buffer that keeps what fits (for decoded text).
struct Text<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Write for Text<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            let mut tmp = [0u8; 4];
            let e = c.encode_utf8(&mut tmp).as_bytes();
            let Some(dst) = self.buf.get_mut(self.len..self.len + e.len()) else {
                return Ok(()); // full: keep whole characters only
            };
            dst.copy_from_slice(e);
            self.len += e.len();
        }
        Ok(())
    }
}

impl<const N: usize> Text<N> {
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

fn write_ids<W: Write + ?Sized>(out: &mut W, ids: &[u32]) -> fmt::Result {
    out.write_char('[')?;
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.write_char(',')?;
        }
        write!(out, "{id}")?;
    }
    out.write_char(']')
}

/// Greedy generation from `prompt` at position 0; returns (ids generated, logits hash).
fn generate<const L: usize>(
    m: &Model<'_, L>,
    s: &mut State<'_>,
    set: &AdapterSet<'_, '_, '_>,
    tok: &Tokenizer<'_>,
    prompt: &[u32],
    gen: &mut [u32],
) -> Result<(usize, u32), Error> {
    s.clear();
    let mut h = Fnv(0x811c_9dc5);
    let mut n = 0;
    let mut logits = m.prefill_with(prompt, 0, s, set)?;
    while let Some(slot) = gen.get_mut(n) {
        h.eat(logits);
        let t = argmax(logits);
        *slot = t;
        n += 1;
        if n == gen.len() || tok.is_eog(t) {
            break;
        }
        logits = m.forward_with(t, prompt.len() + n - 1, s, set)?;
    }
    Ok((n, h.0))
}

/// Generate and print one `EL run` line; returns the logits hash.
#[allow(clippy::too_many_arguments)]
fn run_line<const L: usize, W: Sink>(
    out: &mut W,
    name: &str,
    m: &Model<'_, L>,
    s: &mut State<'_>,
    set: &AdapterSet<'_, '_, '_>,
    tok: &Tokenizer<'_>,
    prompt: &[u32],
    gen: &mut [u32],
) -> Result<u32, Failure> {
    let (n, hash) = generate(m, s, set, tok, prompt, gen).step("generate")?;
    let ids = &gen[..n];
    let mut text = Text::<256> {
        buf: [0; 256],
        len: 0,
    };
    let mut d = tok.decoder();
    for &id in ids {
        d.push_to(id, &mut text).step("decode")?;
    }
    d.finish_to(&mut text).step("decode")?;
    out.line(&Line::Run {
        name,
        ids,
        hash,
        text: text.as_str(),
    })?;
    Ok(hash)
}

/// Stream `payload` framed, in [`CHUNK`]-byte pieces, optionally flipping one payload byte
/// or stopping halfway; returns the verified payload.
fn stream_in<'b, W: Sink>(
    out: &mut W,
    buf: &'b mut [u8],
    payload: &[u8],
    flip_at: Option<usize>,
    stop_at: Option<usize>,
) -> Result<&'b [u8], Error> {
    let mut loader = StreamLoader::new(buf);
    let header = frame_header(payload);
    let total = header.len() + payload.len();
    let end = stop_at.unwrap_or(total).min(total);
    let mut chunk = [0u8; CHUNK];
    let mut at = 0;
    let mut chunks = 0u32;
    while at < end {
        let n = CHUNK.min(end - at);
        for (i, c) in chunk[..n].iter_mut().enumerate() {
            let k = at + i;
            *c = if k < header.len() {
                header[k]
            } else {
                payload[k - header.len()]
            };
            if Some(k) == flip_at.map(|f| f + header.len()) {
                *c ^= 0x40;
            }
        }
        loader.push(&chunk[..n])?;
        at += n;
        chunks += 1;
    }
    let got = loader.finish()?;
    // Only a complete, verified stream gets here.
    let _ = out.line(&Line::Stream {
        bytes: total,
        chunks,
        payload: got.len(),
    });
    Ok(got)
}

/// Run the whole script, printing `EL ...` lines to `out`.
///
/// # Errors
/// The first [`Failure`]; the caller reports it and exits with a failure status.
pub fn run<'b, const L: usize, W: Sink>(
    a: &Assets<'b>,
    b: Buffers<'b>,
    out: &mut W,
) -> Result<(), Failure> {
    let g = Gguf::parse(a.base).step("parse base")?;
    // Built in place, not returned by value (which copies the ~250 bytes a layer slot).
    let mut slot = MaybeUninit::uninit();
    let model: &Model<'b, L> = Model::init_from_gguf(&g, &mut slot).step("load model")?;
    let cfg = *model.config();
    out.line(&Line::Model {
        layers: cfg.n_layers,
        dim: cfg.dim,
        ffn: cfg.ffn_dim,
        vocab: cfg.vocab,
        ctx: a.ctx,
        kv: a.cache.ty.name(),
        block: a.cache.block_for(a.ctx),
        state_bytes: State::bytes_for_cache(&cfg, a.ctx, a.cache),
    })?;

    let tok = Tokenizer::new(&g, b.tok).step("tokenizer")?;
    let mut np = 0;
    if tok.add_bos() {
        if let (Some(bos), Some(slot)) = (tok.bos_id(), b.prompt.first_mut()) {
            *slot = bos;
            np = 1;
        }
    }
    let rest = b
        .prompt
        .get_mut(np..)
        .ok_or(Failure::Check("prompt buffer"))?;
    np += tok.encode(a.prompt, false, rest).step("encode prompt")?;
    let prompt = &b.prompt[..np];
    out.line(&Line::Prompt {
        text: a.prompt,
        ids: prompt,
    })?;

    let mut st = State::with_cache(&cfg, a.ctx, a.cache, b.state).step("state")?;
    let gen = b.gen;
    let h_base = run_line(
        out,
        "base",
        model,
        &mut st,
        &AdapterSet::EMPTY,
        &tok,
        prompt,
        gen,
    )?;

    let ad_a = Adapter::parse(a.adapter_a).step("parse adapter A")?;
    let bound_a = ad_a.bind(&g, model, b.slots_a).step("bind adapter A")?;
    let set_a = AdapterSet::single(&bound_a, 1.0);
    let h_a = run_line(out, "lora_a", model, &mut st, &set_a, &tok, prompt, gen)?;

    // Swap: bind B beside A; switching is choosing another set.
    let ad_b = Adapter::parse(a.adapter_b).step("parse adapter B")?;
    let bound_b = ad_b.bind(&g, model, b.slots_b).step("bind adapter B")?;
    let set_b = AdapterSet::single(&bound_b, 1.0);
    let h_b = run_line(out, "lora_b", model, &mut st, &set_b, &tok, prompt, gen)?;
    if h_a == h_base || h_b == h_base || h_a == h_b {
        return Err(Failure::Check("adapters must change the output"));
    }

    let mut mix = AdapterSet::EMPTY;
    mix.push(&bound_a, 0.5).step("mix")?;
    mix.push(&bound_b, 0.5).step("mix")?;
    run_line(
        out,
        "mix_a0.5_b0.5",
        model,
        &mut st,
        &mix,
        &tok,
        prompt,
        gen,
    )?;

    // Bad input while B is active: every one is an error value, and B stays in place.
    let active = set_b;
    let reject = |out: &mut W, what: &str, r: Result<(), Error>| -> Result<(), Failure> {
        match r {
            Err(e) => {
                out.line(&Line::Reject { what, err: &e })?;
                Ok(())
            }
            Ok(()) => Err(Failure::Check("bad input was accepted")),
        }
    };
    let half = a.adapter_b.len() / 2;
    let r = stream_in(out, b.stream, a.adapter_b, Some(half), None).map(drop);
    reject(out, "corrupt_stream", r)?;
    let r = stream_in(out, b.stream, a.adapter_b, None, Some(half)).map(drop);
    reject(out, "truncated_stream", r)?;
    let r = stream_in(out, b.stream, a.base, None, Some(64)).map(drop);
    reject(out, "oversized_stream", r)?;
    let wrong = Adapter::parse(a.adapter_wrong).step("parse wrong-base adapter")?;
    reject(
        out,
        "wrong_base",
        wrong.bind(&g, model, b.slots_s).map(drop),
    )?;
    reject(
        out,
        "context_overflow",
        model.forward_with(0, a.ctx, &mut st, &active).map(drop),
    )?;
    let long = [0u32; 1];
    reject(
        out,
        "prompt_past_context",
        model.prefill_with(&long, a.ctx, &mut st, &active).map(drop),
    )?;
    reject(
        out,
        "token_out_of_range",
        model
            .forward_with(cfg.vocab as u32, 0, &mut st, &active)
            .map(drop),
    )?;
    let h_kept = run_line(
        out,
        "lora_b_kept",
        model,
        &mut st,
        &active,
        &tok,
        prompt,
        gen,
    )?;
    if h_kept != h_b {
        return Err(Failure::Check("adapter B changed after rejected input"));
    }

    // Stream B in chunks into the receive buffer, then swap to it.
    let payload = stream_in(out, b.stream, a.adapter_b, None, None).step("stream adapter")?;
    let ad_s = Adapter::parse(payload).step("parse streamed adapter")?;
    let bound_s = ad_s
        .bind(&g, model, b.slots_s)
        .step("bind streamed adapter")?;
    let h_s = run_line(
        out,
        "stream_b",
        model,
        &mut st,
        &AdapterSet::single(&bound_s, 1.0),
        &tok,
        prompt,
        gen,
    )?;
    if h_s != h_b {
        return Err(Failure::Check(
            "streamed adapter differs from the same adapter in flash",
        ));
    }
    out.line(&Line::Done)?;
    Ok(())
}
