//! `edgelora perplexity`: llama-perplexity's measurement on a text file.
//!
//! The method is llama.cpp's (`tools/perplexity`, default mode): the whole file is tokenized
//! once (BOS first when the model asks for it), cut into non-overlapping windows of `--ctx`
//! tokens, the first token of each window replaced by BOS when the model uses one, and in each
//! window only the second half is scored: the logits at positions `ctx/2 .. ctx-2` against the
//! next token. The figure is `exp(mean negative log-likelihood)` over every scored token, with
//! llama-perplexity's standard error. The first half of each window is one blocked prefill;
//! the scored half runs token by token (the same logits: prefill is bit-identical to single
//! steps).

use crate::commands::{Adapters, CacheArgs};
use crate::tok::Tok;
use crate::util::{map, resolve_model};
use anyhow::{bail, Context, Result};
use edgelora::model::{KernelMode, Model};
use edgelora::Gguf;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `edgelora perplexity`.
#[derive(clap::Args, Debug)]
pub struct PerplexityArgs {
    /// GGUF model file or alias (`tiny`, `smollm2`, `gemma3-270m`).
    #[arg(long, short = 'm', default_value = "smollm2")]
    pub model: String,
    /// Text file to score (UTF-8).
    #[arg(long, short = 'f')]
    pub file: PathBuf,
    /// Window length in tokens (llama-perplexity's `-c`); the second half of each is scored.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Score only the first K windows (llama-perplexity's `--chunks`); default all.
    #[arg(long)]
    pub chunks: Option<usize>,
    /// LoRA adapter applied unmerged, as FILE or FILE:SCALE; repeat for several.
    #[arg(long = "adapter", value_name = "FILE[:SCALE]")]
    pub adapters: Vec<String>,
    /// Threads for the matrix kernels (results are bit-identical
    /// to one thread; default: the physical cores).
    #[arg(long, default_value_t = crate::util::default_threads(), value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,
    /// Use the scalar reference kernels with f32 activations (slow).
    #[arg(long)]
    pub reference: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Print one JSON object: {model, file, tokens, ctx, chunks, scored, ppl, ppl_stderr,
    /// mean_nll, per_chunk_ppl (running figure after each window), seconds}.
    #[arg(long)]
    pub json: bool,
    /// Print the file's token ids as a JSON array and exit (to score the same ids elsewhere,
    /// e.g. `bench/perplexity_hf.py --tokens-from-edgelora`).
    #[arg(long)]
    pub dump_tokens: bool,
}

/// `log p(token)` under `logits` (max-shifted, the sum of exponentials in f64).
fn log_prob(logits: &[f32], token: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    f64::from(logits[token] - max) - sum.ln()
}

/// Run `edgelora perplexity`.
pub fn perplexity(a: PerplexityArgs) -> Result<()> {
    if a.ctx < 4 {
        bail!(
            "--ctx {} is too short: give at least 4 tokens (512 is usual)",
            a.ctx
        );
    }
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading the text file {}", a.file.display()))?;
    let path = resolve_model(&a.model)?;
    let m = map(&path)?;
    let g = Gguf::parse(&m).with_context(|| format!("parsing {}", path.display()))?;
    let model: Box<Model> = Box::new(Model::from_gguf(&g)?);
    let cfg = *model.config();
    if a.ctx > cfg.ctx_len {
        bail!(
            "--ctx {} is longer than the model's context ({}); give at most {}",
            a.ctx,
            cfg.ctx_len,
            cfg.ctx_len
        );
    }
    let tok = Tok::new(&g)?;
    let tokens = tok.encode_prompt(&text, false)?;
    if a.dump_tokens {
        println!("{}", serde_json::to_string(&tokens)?);
        return Ok(());
    }
    let bos = if tok.inner().add_bos() {
        tok.inner().bos_id()
    } else {
        None
    };
    let available = tokens.len() / a.ctx;
    if tokens.len() < 2 * a.ctx {
        bail!(
            "{} tokenizes to {} tokens; perplexity with --ctx {} needs at least {} (give a \
             longer file or a smaller --ctx)",
            a.file.display(),
            tokens.len(),
            a.ctx,
            2 * a.ctx
        );
    }
    let chunks = a.chunks.unwrap_or(available).min(available);
    if chunks == 0 {
        bail!("--chunks 0: nothing to score");
    }

    let ads = Adapters::open(&a.adapters)?;
    let parsed = ads.parse()?;
    let mut slots = ads.slots(&model);
    let bound = ads.bind(&parsed, &g, &model, &mut slots)?;
    let set = ads.set(&bound)?;
    edgelora::kernels::set_threads(a.threads.into());
    let mut buf = a.cache.buffer(&cfg, a.ctx);
    let mut st = a.cache.state(&cfg, a.ctx, &mut buf)?;
    st.set_kernel_mode(if a.reference {
        KernelMode::Reference
    } else {
        KernelMode::Fast
    });

    let first = a.ctx / 2;
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let mut running = Vec::with_capacity(chunks);
    let t0 = Instant::now();
    let bar = indicatif::ProgressBar::new(chunks as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} perplexity [{bar:30}] {pos}/{len} windows, {msg} ({elapsed}, eta {eta})",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    for c in 0..chunks {
        let mut win = tokens[c * a.ctx..(c + 1) * a.ctx].to_vec();
        if let Some(b) = bos {
            win[0] = b;
        }
        st.clear();
        model
            .prefill_with(&win[..first], 0, &mut st, &set)
            .with_context(|| format!("window {c}: prefill"))?;
        for pos in first..a.ctx - 1 {
            let l = model
                .forward_with(win[pos], pos, &mut st, &set)
                .with_context(|| format!("window {c}, position {pos}"))?;
            if l.iter().any(|v| !v.is_finite()) {
                bail!(
                    "window {c}, position {pos}: the logits are not finite (a NaN or an \
                     infinity); check the adapter scales and the model file"
                );
            }
            let lp = log_prob(l, win[pos + 1] as usize);
            nll -= lp;
            nll2 += lp * lp;
            count += 1;
        }
        let ppl = (nll / count as f64).exp();
        running.push(ppl);
        bar.set_message(format!("PPL {ppl:.4}"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let mean = nll / count as f64;
    let var = nll2 / count as f64 - mean * mean;
    let err = if var > 0.0 && count > 1 {
        (var / (count - 1) as f64).sqrt()
    } else {
        0.0
    };
    let ppl = mean.exp();
    if a.json {
        let out = json!({
            "model": path.display().to_string(),
            "file": a.file.display().to_string(),
            "adapters": a.adapters,
            "tokens": tokens.len(),
            "ctx": a.ctx,
            "chunks": chunks,
            "scored": count,
            "mean_nll": mean,
            "ppl": ppl,
            "ppl_stderr": ppl * err,
            "per_chunk_ppl": running,
            "seconds": secs,
        });
        println!("{}", serde_json::to_string(&out)?);
    } else {
        let s: Vec<String> = running
            .iter()
            .enumerate()
            .map(|(i, p)| format!("[{}]{p:.4}", i + 1))
            .collect();
        println!("{}", s.join(","));
        println!(
            "{} tokens, {chunks} windows of {} ({count} scored) in {secs:.1} s",
            tokens.len(),
            a.ctx
        );
        println!("Final estimate: PPL = {ppl:.4} +/- {:.5}", ppl * err);
    }
    Ok(())
}
