//! `edgelora adapter ...` and `edgelora merge`.

use crate::commands::Adapters;
use crate::progress::Progress;
use crate::util::{human, map, resolve_model};
use anyhow::{bail, Context, Result};
use edgelora::lora::convert::{convert_peft_with_progress, ConvertOptions};
use edgelora::lora::merge::{merge_model, MergeType};
use edgelora::lora::{stream, Adapter};
use edgelora::model::Model;
use edgelora::quant::GgmlType;
use edgelora::Gguf;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum AdapterCmd {
    /// Convert a PEFT LoRA directory (adapter_config.json + adapter_model.safetensors) into a
    /// GGUF LoRA adapter that edgelora and llama.cpp load.
    Convert(ConvertArgs),
    /// Show an adapter's metadata and pairs, and check it against a base.
    Inspect(InspectAdapterArgs),
    /// Wrap an adapter GGUF in the streaming frame (length + CRC-32) for chunked transfer.
    Frame(FrameArgs),
    /// Combine adapters into one (PEFT's add_weighted_adapter: linear, cat, svd, ties, dare,
    /// magnitude_prune): `combine A.gguf:0.5 B.gguf:0.7 --method svd -o out.gguf`.
    Combine(crate::combine_cmd::CombineArgs),
    /// Export a GGUF LoRA adapter as a PEFT directory (adapter_config.json +
    /// adapter_model.safetensors) for PyTorch PEFT or vLLM: `export A.gguf --to peft DIR`.
    Export(crate::export_cmd::ExportArgs),
}

#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// PEFT adapter directory.
    pub peft_dir: PathBuf,
    /// Base model GGUF the adapter was trained on (or alias such as `smollm2`).
    #[arg(long)]
    pub base: String,
    /// Output GGUF file.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Storage type of A and B: f32, f16 or q8_0.
    #[arg(long, default_value = "f16")]
    pub dtype: String,
    /// Task name to record in the adapter.
    #[arg(long)]
    pub task: Option<String>,
    /// Print one JSON object on stdout when the file is written: {command, input, base,
    /// output, bytes, sha256, dtype, task, pairs, alpha, max_rank, scales, base_fingerprint,
    /// base_shape_fingerprint, notes, seconds} (README, "`--json` shapes").
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct InspectAdapterArgs {
    /// Adapter GGUF.
    pub adapter: PathBuf,
    /// Base model to check it against (exit status 1 when it does not fit).
    #[arg(long)]
    pub base: Option<String>,
    /// Print one JSON object: {file, bytes, alpha, pairs: [{target, rank, a: {type, dims},
    /// b: {type, dims}}], max_rank, base_fingerprint, base_shape_fingerprint (16 hex digits or
    /// null), task, base_check: {base, fits, error} or null}.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct FrameArgs {
    /// Adapter GGUF.
    pub adapter: PathBuf,
    /// Output stream file.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Print one JSON object on stdout when the file is written: {command, input,
    /// payload_bytes, output, bytes, sha256, crc32, notes, seconds} (README, "`--json`
    /// shapes").
    #[arg(long)]
    pub json: bool,
}

pub fn adapter(cmd: AdapterCmd) -> Result<()> {
    match cmd {
        AdapterCmd::Convert(a) => convert(a),
        AdapterCmd::Inspect(a) => inspect(a),
        AdapterCmd::Combine(a) => crate::combine_cmd::run(a),
        AdapterCmd::Export(a) => crate::export_cmd::export(a),
        AdapterCmd::Frame(a) => frame(a),
    }
}

fn frame(a: FrameArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let bytes =
        std::fs::read(&a.adapter).with_context(|| format!("reading {}", a.adapter.display()))?;
    Adapter::parse(&bytes)
        .with_context(|| format!("{} is not a valid adapter", a.adapter.display()))?;
    let mut out = stream::frame_header(&bytes).to_vec();
    out.extend_from_slice(&bytes);
    std::fs::write(&a.out, &out)?;
    let crc = stream::Crc32::of(&bytes);
    crate::note!(
        "wrote {} ({} payload, CRC-32 {:08x})",
        a.out.display(),
        human(bytes.len() as u64),
        crc
    );
    if a.json {
        crate::json_out::print(&json!({
            "command": "adapter frame",
            "input": a.adapter.display().to_string(),
            "payload_bytes": bytes.len(),
            "output": a.out.display().to_string(),
            "bytes": out.len(),
            "sha256": crate::json_out::sha256_hex(&out),
            "crc32": format!("{crc:08x}"),
            "notes": Vec::<String>::new(),
            "seconds": t0.elapsed().as_secs_f64(),
        }))?;
    }
    Ok(())
}

/// `--dtype` of the adapter writers (`convert`, `combine`): the storage type of A and B.
pub fn adapter_dtype(s: &str) -> Result<GgmlType> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "f32" => GgmlType::F32,
        "f16" => GgmlType::F16,
        "q8_0" => GgmlType::Q8_0,
        other => bail!("--dtype {other}: expected f32, f16 or q8_0"),
    })
}

fn convert(a: ConvertArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let cfg = std::fs::read(a.peft_dir.join("adapter_config.json"))
        .with_context(|| format!("reading {}/adapter_config.json", a.peft_dir.display()))?;
    let st = std::fs::read(a.peft_dir.join("adapter_model.safetensors"))
        .with_context(|| format!("reading {}/adapter_model.safetensors", a.peft_dir.display()))?;
    let base_path = resolve_model(&a.base)?;
    let bm = map(&base_path)?;
    let base = Gguf::parse(&bm).with_context(|| format!("parsing {}", base_path.display()))?;
    let dtype = adapter_dtype(&a.dtype)?;
    let bar = Progress::steps("convert", 0, "modules");
    let (bytes, rep) = convert_peft_with_progress(
        &cfg,
        &st,
        &base,
        &ConvertOptions {
            dtype,
            task: a.task.clone(),
        },
        &mut |done, total| bar.set_pos(done as u64, total as u64),
    )
    .with_context(|| format!("converting {}", a.peft_dir.display()))?;
    bar.finish();
    // Check the result loads and binds before writing it.
    let ad = Adapter::parse(&bytes).context("converted adapter does not parse (bug)")?;
    let model: Box<Model> = Box::new(Model::from_gguf(&base)?);
    let mut slots = vec![None; Adapter::slots_len(model.config())];
    ad.bind(&base, &model, &mut slots)
        .context("converted adapter does not bind to the base (bug)")?;
    std::fs::write(&a.out, &bytes).with_context(|| format!("writing {}", a.out.display()))?;
    let mut scales: Vec<f32> = rep.pairs.iter().map(|p| p.2).collect();
    scales.sort_by(f32::total_cmp);
    scales.dedup();
    crate::note!(
        "wrote {}: {} pairs, alpha {}, PEFT scales {:?}, {}",
        a.out.display(),
        rep.pairs.len(),
        rep.alpha,
        scales,
        human(bytes.len() as u64)
    );
    for n in &rep.notes {
        crate::note!("note: {n}");
    }
    if a.json {
        crate::json_out::print(&json!({
            "command": "adapter convert",
            "input": a.peft_dir.display().to_string(),
            "base": base_path.display().to_string(),
            "output": a.out.display().to_string(),
            "bytes": bytes.len(),
            "sha256": crate::json_out::sha256_hex(&bytes),
            "dtype": a.dtype.to_ascii_lowercase(),
            "task": ad.gguf().get_str("adapter.edgelora.task").ok(),
            "pairs": rep.pairs.len(),
            "alpha": crate::json_out::f32(rep.alpha),
            "max_rank": ad.max_rank(),
            "scales": crate::json_out::f32s(&scales),
            "base_fingerprint": crate::json_out::fingerprint(ad.fingerprint()),
            "base_shape_fingerprint": crate::json_out::fingerprint(ad.shape_fingerprint()),
            "notes": rep.notes,
            "seconds": t0.elapsed().as_secs_f64(),
        }))?;
    }
    Ok(())
}

fn inspect(a: InspectAdapterArgs) -> Result<()> {
    let m = crate::util::map_adapter(&a.adapter)?;
    let ad = crate::commands::parse_adapter(&m, &a.adapter.display().to_string())?;
    if a.json {
        let check = match &a.base {
            None => serde_json::Value::Null,
            Some(b) => {
                let bp = resolve_model(b)?;
                let bm = map(&bp)?;
                let base = Gguf::parse(&bm)?;
                let model: Box<Model> = Box::new(Model::from_gguf(&base)?);
                let mut slots = vec![None; Adapter::slots_len(model.config())];
                let r = ad.bind(&base, &model, &mut slots).map(|_| ());
                serde_json::json!({
                    "base": bp.display().to_string(),
                    "fits": r.is_ok(),
                    "error": r.err().map(|e| e.to_string()),
                })
            }
        };
        let out = serde_json::json!({
            "file": a.adapter.display().to_string(),
            "bytes": m.len(),
            "alpha": ad.alpha(),
            "max_rank": ad.max_rank(),
            "base_fingerprint": ad.fingerprint().map(|f| format!("{f:016x}")),
            "base_shape_fingerprint": ad.shape_fingerprint().map(|f| format!("{f:016x}")),
            "task": ad.gguf().get_str("adapter.edgelora.task").ok(),
            "pairs": ad.pairs().map(|(name, p)| serde_json::json!({
                "target": name,
                "rank": p.rank(),
                "a": {"type": p.a.ty().name(), "dims": [p.a.rows(), p.a.cols()]},
                "b": {"type": p.b.ty().name(), "dims": [p.b.rows(), p.b.cols()]},
            })).collect::<Vec<_>>(),
            "base_check": check,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        if check["fits"] == serde_json::Value::Bool(false) {
            bail!(
                "{} does not fit {}",
                a.adapter.display(),
                check["base"].as_str().unwrap_or("the base")
            );
        }
        return Ok(());
    }
    println!("{}: {}", a.adapter.display(), human(m.len() as u64));
    println!(
        "alpha {}, {} pairs, max rank {}, base fingerprint {:?}",
        ad.alpha(),
        ad.n_pairs(),
        ad.max_rank(),
        ad.fingerprint().map(|f| format!("{f:016x}"))
    );
    if let Ok(t) = ad.gguf().get_str("adapter.edgelora.task") {
        println!("task: {t}");
    }
    for (name, p) in ad.pairs() {
        println!(
            "  {name:<32} r={:<3} A {} {}x{}  B {} {}x{}",
            p.rank(),
            p.a.ty().name(),
            p.a.rows(),
            p.a.cols(),
            p.b.ty().name(),
            p.b.rows(),
            p.b.cols()
        );
    }
    if let Some(b) = a.base {
        let bp = resolve_model(&b)?;
        let bm = map(&bp)?;
        let base = Gguf::parse(&bm)?;
        let model: Box<Model> = Box::new(Model::from_gguf(&base)?);
        let mut slots = vec![None; Adapter::slots_len(model.config())];
        match ad.bind(&base, &model, &mut slots) {
            Ok(_) => println!("fits {}", bp.display()),
            Err(e) => {
                println!("does NOT fit {}: {e}", bp.display());
                bail!("{} does not fit {}: {e}", a.adapter.display(), bp.display());
            }
        }
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// Base model GGUF (or alias).
    #[arg(long, short = 'm')]
    pub model: String,
    /// Adapter FILE[:SCALE] to merge (repeatable).
    #[arg(long = "adapter", required = true)]
    pub adapters: Vec<String>,
    /// Output GGUF.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Type of the merged matrices: f32, f16, q8_0, or `base` (re-quantise each merged tensor
    /// into its own type: every type but Q2_K, whose tensors are refused). Prints each tensor's rounding error and how much of the update it loses.
    #[arg(long = "type", default_value = "q8_0")]
    pub ty: String,
    /// Print one JSON object on stdout when the file is written: {command, model, adapters:
    /// [{file, scale}], output, bytes, sha256, type, matrices, lost, worst_rel_err,
    /// worst_rel_rms, per_tensor: [{name, from, to, pairs, delta_norm, err_norm, rel_err,
    /// rel_rms, update_lost}], notes, seconds} (README, "`--json` shapes").
    #[arg(long)]
    pub json: bool,
}

pub fn merge(a: MergeArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    // Check where the output goes before the work, not after it.
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!(
                "-o {}: the directory {} does not exist; create it or choose another path",
                a.out.display(),
                dir.display()
            );
        }
    }
    let bp = resolve_model(&a.model)?;
    let bm = map(&bp)?;
    let base = Gguf::parse(&bm)?;
    let model: Box<Model> = Box::new(Model::from_gguf(&base)?);
    // Merging writes a file, so more adapters than run at once are fine; the "bound" lines
    // of the running commands are left out.
    let ads = Adapters::open_files(&a.adapters)?.quiet();
    let parsed = ads.parse()?;
    let mut slots = ads.slots(&model);
    let bound = ads.bind(&parsed, &base, &model, &mut slots)?;
    let target = match a.ty.to_ascii_lowercase().as_str() {
        "f32" => MergeType::Fixed(GgmlType::F32),
        "f16" => MergeType::Fixed(GgmlType::F16),
        "q8_0" => MergeType::Fixed(GgmlType::Q8_0),
        "base" => MergeType::Base,
        o => bail!("--type {o}: expected f32, f16, q8_0 or base"),
    };
    let adapters: Vec<_> = bound.iter().zip(ads.scales().iter().copied()).collect();
    let (mut lost, mut n) = (0, 0);
    let (mut worst, mut worst_rms) = (0f64, 0f64);
    // One step per adapted matrix: the union of the adapters' targets.
    let targets: std::collections::BTreeSet<&str> = parsed
        .iter()
        .flat_map(|p| p.pairs().map(|(t, _)| t))
        .collect();
    let bar = Progress::steps("merge", targets.len() as u64, "matrices");
    // Every merged tensor, for --json (the text report lists only the notable ones).
    let mut per_tensor = Vec::new();
    let bytes = merge_model(&base, &model, &adapters, target, |r| {
        n += 1;
        if a.json {
            per_tensor.push(json!({
                "name": r.name,
                "from": r.from.name(),
                "to": r.to.name(),
                "pairs": r.n_pairs,
                "delta_norm": r.stats.delta_norm,
                "err_norm": r.stats.err_norm,
                "rel_err": r.stats.rel_err,
                "rel_rms": r.stats.rel_rms(),
                "update_lost": r.stats.update_lost(),
            }));
        }
        bar.set(n as u64, r.name);
        worst = worst.max(r.stats.rel_err);
        worst_rms = worst_rms.max(r.stats.rel_rms());
        lost += usize::from(r.stats.update_lost());
        if r.from != r.to || target == MergeType::Base || r.stats.update_lost() {
            // One line per re-quantised tensor: `edgelora quantize` reports the same rms.
            bar.line(&format!(
                "  {:<28} {:>6} -> {:<6} update {:.3e}, rounding error {:.3e} = {:.1}% of the update, {:.2}% rms of the weights{}",
                r.name,
                r.from.name(),
                r.to.name(),
                r.stats.delta_norm,
                r.stats.err_norm,
                r.stats.rel_err * 100.0,
                r.stats.rel_rms() * 100.0,
                if r.stats.update_lost() { " (warning: update mostly lost)" } else { "" }
            ));
        }
    })
    .with_context(|| {
        format!(
            "merging into {} with --type {}",
            bp.display(),
            a.ty.to_ascii_lowercase()
        )
    })?;
    bar.finish();
    Gguf::parse(&bytes).context("merged file does not parse (bug)")?;
    std::fs::write(&a.out, &bytes).with_context(|| format!("writing {}", a.out.display()))?;
    crate::note!(
        "merged {n} matrices into {} ({}); worst rounding error {:.1}% of the update ({:.2}% rms of the weights); {lost} tensors lost most of their update",
        a.out.display(),
        human(bytes.len() as u64),
        worst * 100.0,
        worst_rms * 100.0
    );
    if a.json {
        let notes: Vec<String> = per_tensor
            .iter()
            .filter(|t| t["update_lost"] == true)
            .map(|t| {
                format!(
                    "warning: {} lost most of its update in the rounding to {}",
                    t["name"].as_str().unwrap_or(""),
                    t["to"].as_str().unwrap_or("")
                )
            })
            .collect();
        crate::json_out::print(&json!({
            "command": "merge",
            "model": bp.display().to_string(),
            "adapters": ads.names().iter().zip(ads.scales()).map(|(f, s)| json!({
                "file": f, "scale": crate::json_out::f32(*s),
            })).collect::<Vec<_>>(),
            "output": a.out.display().to_string(),
            "bytes": bytes.len(),
            "sha256": crate::json_out::sha256_hex(&bytes),
            "type": a.ty.to_ascii_lowercase(),
            "matrices": n,
            "lost": lost,
            "worst_rel_err": worst,
            "worst_rel_rms": worst_rms,
            "per_tensor": per_tensor,
            "notes": notes,
            "seconds": t0.elapsed().as_secs_f64(),
        }))?;
    }
    Ok(())
}
