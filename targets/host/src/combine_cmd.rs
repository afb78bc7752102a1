//! `edgelora adapter combine`: PEFT's `add_weighted_adapter` on GGUF adapters
//! (arithmetic in `edgelora::lora::combine`).

use crate::commands::Adapters;
use crate::progress::Progress;
use crate::util::human;
use anyhow::{bail, Context, Result};
use edgelora::lora::combine::{
    combine_with_progress, CombineInput, CombineOptions, Method, SeededMasks, SignMethod,
};
use edgelora::lora::Adapter;
use std::path::PathBuf;

/// Methods, one line each (PEFT's `combination_type` names and semantics).
const METHOD_HELP: &str = "\
Methods (PEFT's add_weighted_adapter; s = each input's alpha/r, w = its weight):
  linear               A = sum sqrt(w s) A_i, B = sum sqrt(w s) B_i (cross terms; equal ranks)
  cat                  ranks side by side: exactly sum w s B_i A_i (rank = sum of ranks)
  svd                  sum w s B_i A_i truncated to rank R by SVD (R: --rank, default max rank)
  ties                 TIES (trim to density, elect sign, disjoint mean) on A's and B's
  ties_svd             TIES on the full updates, then rank-R SVD
  dare_linear          DARE (drop with prob 1-density, rescale) then linear, on A's and B's
  dare_ties            DARE then TIES sign election, on A's and B's
  dare_linear_svd      DARE linear on the full updates, then rank-R SVD
  dare_ties_svd        DARE TIES on the full updates, then rank-R SVD
  magnitude_prune      trim each A and B to density by magnitude, then linear
  magnitude_prune_svd  trim the full updates by magnitude, weighted sum, rank-R SVD

One input is always combined with linear (as PEFT does). The result has PEFT's
r = alpha = new rank. DARE masks come from --seed (not PyTorch's RNG: same
expected result as PEFT, not the same draw).";

/// `edgelora adapter combine` arguments.
#[derive(clap::Args, Debug)]
#[command(after_help = METHOD_HELP)]
pub struct CombineArgs {
    /// Input adapters as FILE[:WEIGHT] (weight default 1; negative subtracts), e.g.
    /// `intent.gguf:0.5 reply.gguf:0.7`. All must be converted for the same base.
    #[arg(required = true, num_args = 1..)]
    pub inputs: Vec<String>,
    /// Combination method (see below).
    #[arg(long, default_value = "svd")]
    pub method: String,
    /// Fraction of values kept, in [0, 1]: required by ties*, dare_* and magnitude_prune*
    /// (PEFT has no default; the TIES and DARE papers use 0.2 to 0.5).
    #[arg(long)]
    pub density: Option<f64>,
    /// Rank of the *svd methods' output (default: the largest input rank, as PEFT).
    #[arg(long)]
    pub rank: Option<usize>,
    /// Seed of the DARE masks (dare_* only).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// TIES sign election: total (sign of the sum) or frequency (sign held by more inputs).
    #[arg(long, default_value = "total")]
    pub majority_sign: String,
    /// Storage type of the new A and B: f32, f16 or q8_0.
    #[arg(long, default_value = "f16")]
    pub dtype: String,
    /// Task name recorded in the output (default: the inputs' tasks joined with `+`).
    #[arg(long)]
    pub task: Option<String>,
    /// Output GGUF adapter.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Print one JSON object on stdout when the file is written: {command, inputs: [{file,
    /// weight}], method, density, seed, dtype, task, output, bytes, sha256, pairs, rank,
    /// pair_ranks, alpha, base_fingerprint, base_shape_fingerprint, notes, seconds} (README,
    /// "`--json` shapes").
    #[arg(long)]
    pub json: bool,
}

/// Run `adapter combine`.
pub fn run(a: CombineArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let method = Method::parse(&a.method.to_ascii_lowercase()).map_err(|_| {
        let names: Vec<&str> = edgelora::lora::combine::METHODS
            .iter()
            .map(|m| m.0)
            .collect();
        anyhow::anyhow!(
            "--method {}: expected one of {}",
            a.method,
            names.join(", ")
        )
    })?;
    let dtype = crate::adapter_cmd::adapter_dtype(&a.dtype)?;
    let majority_sign = match a.majority_sign.to_ascii_lowercase().as_str() {
        "total" => SignMethod::Total,
        "frequency" => SignMethod::Frequency,
        o => bail!("--majority-sign {o}: expected total or frequency"),
    };
    let ads = Adapters::open_files(&a.inputs)?;
    let parsed = ads.parse()?;
    let labels = ads.labels();
    let inputs: Vec<CombineInput> = parsed
        .iter()
        .zip(ads.scales())
        .zip(&labels)
        .map(|((ad, w), l)| CombineInput {
            adapter: ad,
            weight: *w,
            label: l,
        })
        .collect();
    let name = method.name();
    if a.density.is_none() && !matches!(name, "linear" | "cat" | "svd") && inputs.len() > 1 {
        bail!(
            "--method {name} needs --density D in [0, 1], the fraction of each update it keeps \
             (PEFT has no default; 0.5 is a common start)"
        );
    }
    let opts = CombineOptions {
        method,
        density: a.density,
        rank: a.rank,
        majority_sign,
        dtype,
        task: a.task.clone(),
    };
    let mut masks = SeededMasks {
        seed: a.seed,
        density: a.density.unwrap_or(1.0),
    };
    let bar = Progress::steps("combine", 0, "modules");
    let (bytes, rep) = combine_with_progress(
        &inputs,
        &opts,
        &mut masks,
        Some(a.seed),
        &mut |done, total| bar.set_pos(done as u64, total as u64),
    )
    .with_context(|| format!("combining with --method {}", method.name()))?;
    bar.finish();
    let out = Adapter::parse(&bytes).context("combined adapter does not parse (bug)")?;
    std::fs::write(&a.out, &bytes).with_context(|| format!("writing {}", a.out.display()))?;
    let mut ranks: Vec<usize> = rep.pairs.iter().map(|p| p.1).collect();
    ranks.sort_unstable();
    ranks.dedup();
    crate::note!(
        "wrote {}: {} ({} inputs), {} pairs, rank {} (pair ranks {:?}), {}",
        a.out.display(),
        rep.method,
        inputs.len(),
        rep.pairs.len(),
        rep.rank,
        ranks,
        human(bytes.len() as u64)
    );
    for n in &rep.notes {
        crate::note!("note: {n}");
    }
    if a.json {
        crate::json_out::print(&serde_json::json!({
            "command": "adapter combine",
            "inputs": ads.names().iter().zip(ads.scales()).map(|(f, w)| serde_json::json!({
                "file": f, "weight": crate::json_out::f32(*w),
            })).collect::<Vec<_>>(),
            "method": rep.method,
            "density": a.density,
            "seed": a.seed,
            "dtype": a.dtype.to_ascii_lowercase(),
            "task": out.gguf().get_str("adapter.edgelora.task").ok(),
            "output": a.out.display().to_string(),
            "bytes": bytes.len(),
            "sha256": crate::json_out::sha256_hex(&bytes),
            "pairs": rep.pairs.len(),
            "rank": rep.rank,
            "pair_ranks": ranks,
            "alpha": crate::json_out::f32(out.alpha()),
            "base_fingerprint": crate::json_out::fingerprint(out.fingerprint()),
            "base_shape_fingerprint": crate::json_out::fingerprint(out.shape_fingerprint()),
            "notes": rep.notes,
            "seconds": t0.elapsed().as_secs_f64(),
        }))?;
    }
    Ok(())
}
