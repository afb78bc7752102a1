//! `edgelora quantize`: write a model GGUF in another weight mix (Q4_K_M, Q8_0, ...).
//!
//! The work is the core's [`quantize_model`] (per-tensor rules in its module docs); this file
//! adds the file handling, the progress (a bar on a terminal, one line per tensor elsewhere;
//! [`crate::progress`]) and the error report.

use crate::progress::Progress;
use crate::util::{human, map, resolve_model};
use anyhow::{bail, Context, Result};
use edgelora::model::quantize::{quantize_model, Preset};
use edgelora::model::Model;
use edgelora::quant::GgmlType;
use edgelora::Gguf;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Types follow llama.cpp's llama-quantize without an importance matrix:
  q4_k_m  Q4_K; attn_v and ffn_down of 'more bits' layers (first and last eighth, every third
          between) Q6_K; output.weight (or tied token_embd) Q6_K
  q5_k_m  as q4_k_m with Q5_K
  q3_k_m  Q3_K; attn_v Q5_K (first two layers) / Q4_K; ffn_down Q5_K (first 16th) / Q4_K;
          attn_output Q4_K
  iq4_nl / iq4_xs   that type; ffn_down of the first eighth of layers Q5_K
  q6_k    Q6_K everywhere
  q5_0 / q5_1 / q4_0 / q4_1   that type, output.weight (or tied token_embd) Q6_K
  q8_0    Q8_0 everywhere
Rows whose length is not a multiple of 256 fall back as llama.cpp does: Q3_K -> Q4_0,
Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0 (output.weight -> Q8_0), IQ4_XS -> IQ4_NL. Norms and other 1-D tensors are copied.
A quantised input is dequantised and re-quantised (rounding errors add up; a warning says so).
The error printed per tensor is rms(output - input) / rms(input), input as f32.")]
pub struct QuantizeArgs {
    /// Input model GGUF (F32/F16/BF16 preferred), or an alias such as `smollm2`.
    pub input: String,
    /// Output GGUF.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Weight mix: q4_k_m, q5_k_m, q6_k, q8_0, q5_0, q4_0, q4_1, q5_1, q3_k_m, iq4_nl or iq4_xs.
    #[arg(long = "type", value_parser = parse_preset)]
    pub ty: Preset,
    /// Print one JSON object on stdout instead of the error table: {command, input, output,
    /// bytes, sha256, type, tensors, quantized, copied, requantized: {TYPE: n}, per_tensor:
    /// [{name, type, rel_rms, fallback}], by_type: [{type, tensors, mean_rel_rms,
    /// worst_rel_rms}], notes, seconds} (README, "`--json` shapes").
    #[arg(long)]
    pub json: bool,
}

fn parse_preset(s: &str) -> std::result::Result<Preset, String> {
    Preset::from_name(s).ok_or_else(|| {
        let names: Vec<String> = Preset::ALL
            .iter()
            .map(|p| p.name().to_ascii_lowercase())
            .collect();
        format!("unknown type '{s}'; expected one of {}", names.join(", "))
    })
}

fn is_float(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

pub fn quantize(a: QuantizeArgs) -> Result<()> {
    let ip = resolve_model(&a.input)?;
    let m = map(&ip)?;
    let src = Gguf::parse(&m).with_context(|| format!("{} is not a GGUF file", ip.display()))?;
    // A model edgelora can load, so the output is one too (and a LoRA adapter or a tokenizer-only
    // file is refused with the loader's reason).
    let _model: Box<Model> = Box::new(
        Model::from_gguf(&src)
            .with_context(|| format!("{} is not a model edgelora can load", ip.display()))?,
    );
    // Fail on an unwritable output before minutes of work.
    let mut f = std::fs::File::create(&a.out)
        .with_context(|| format!("cannot write output {}", a.out.display()))?;
    let requant: BTreeMap<&str, usize> = src
        .tensors()
        .filter(|t| t.n_dims >= 2 && !is_float(t.ty))
        .fold(BTreeMap::new(), |mut acc, t| {
            *acc.entry(t.ty.name()).or_insert(0) += 1;
            acc
        });
    let mut notes = Vec::new();
    if !requant.is_empty() {
        let w = format!(
            "warning: {} is already quantised ({requant:?} tensors): its weights are dequantised \
             and quantised again, so the errors below are on top of the input's own",
            ip.display()
        );
        crate::note!("{w}");
        notes.push(w);
    }
    let mut rows = Vec::new();
    let t0 = std::time::Instant::now();
    let bar = Progress::steps("quantize", src.tensors().count() as u64, "tensors");
    let res = quantize_model(&src, a.ty, |r| {
        let what = match r.rel_rms {
            Some(e) => format!(
                "{:>5} -> {:<5}{} rel RMS error {:6.3}%",
                r.from.name(),
                r.to.name(),
                if r.fallback {
                    " (fallback)"
                } else {
                    "           "
                },
                e * 100.0
            ),
            None => format!("{:>5}    copied", r.from.name()),
        };
        // On a terminal the bar shows the tensor; the table on stdout lists every error.
        if bar.is_drawn() {
            bar.set((r.index + 1) as u64, r.name);
        } else {
            bar.line(&format!(
                "[{:>4}/{}] {:<36} {what}",
                r.index + 1,
                r.count,
                r.name
            ));
        }
        if let Some(e) = r.rel_rms {
            rows.push((r.name.to_string(), r.to, e, r.fallback));
        }
    });
    bar.finish();
    let bytes = match res {
        Ok(b) => b,
        Err(e) => {
            drop(f);
            let _ = std::fs::remove_file(&a.out);
            return Err(e)
                .with_context(|| format!("{} is not a model edgelora can quantise", ip.display()));
        }
    };
    Gguf::parse(&bytes).context("quantised file does not parse (bug)")?;
    f.write_all(&bytes)
        .with_context(|| format!("writing {}", a.out.display()))?;
    if rows.is_empty() {
        bail!("{} has no 2-D weights to quantise", ip.display());
    }
    let mut by_type: BTreeMap<&str, (usize, f64, f64)> = BTreeMap::new();
    for (_, ty, e, _) in &rows {
        let s = by_type.entry(ty.name()).or_insert((0, 0.0, 0.0));
        s.0 += 1;
        s.1 += e;
        s.2 = s.2.max(*e);
    }
    if a.json {
        let n_tensors = src.tensors().count();
        let out = json!({
            "command": "quantize",
            "input": ip.display().to_string(),
            "output": a.out.display().to_string(),
            "bytes": bytes.len(),
            "sha256": crate::json_out::sha256_hex(&bytes),
            "type": a.ty.name().to_ascii_lowercase(),
            "tensors": n_tensors,
            "quantized": rows.len(),
            "copied": n_tensors - rows.len(),
            "requantized": requant,
            "per_tensor": rows.iter().map(|(name, ty, e, fb)| json!({
                "name": name, "type": ty.name(), "rel_rms": e, "fallback": fb,
            })).collect::<Vec<_>>(),
            "by_type": by_type.iter().map(|(ty, (n, sum, max))| json!({
                "type": ty, "tensors": n, "mean_rel_rms": sum / *n as f64, "worst_rel_rms": max,
            })).collect::<Vec<_>>(),
            "notes": notes,
            "seconds": t0.elapsed().as_secs_f64(),
        });
        crate::json_out::print(&out)?;
    } else {
        println!("\nper-tensor error, rms(out - in) / rms(in):");
        for (name, ty, e, _) in &rows {
            println!("  {name:<36} {:<5} {:7.3}%", ty.name(), e * 100.0);
        }
        for (ty, (n, sum, max)) in &by_type {
            println!(
                "  {ty:<5}: {n:>3} tensors, mean {:.3}%, worst {:.3}%",
                sum / *n as f64 * 100.0,
                max * 100.0
            );
        }
    }
    crate::note!(
        "wrote {} ({}, {}, {} tensors quantised) in {:.1}s",
        a.out.display(),
        a.ty.name(),
        human(bytes.len() as u64),
        rows.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
