//! `edgelora adapter export`: a GGUF LoRA adapter back to a PEFT directory.
//!
//! The tensor and config work is the core's [`edgelora::lora::export`]; this file reads the
//! files, writes `adapter_config.json` and `adapter_model.safetensors` (the `safetensors`
//! crate), and checks the result by parsing it back.

use crate::util::{human, map, resolve_model};
use anyhow::{bail, Context, Result};
use edgelora::lora::export::{export_peft, ExportOptions};
use edgelora::lora::Adapter;
use edgelora::Gguf;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Adapter GGUF to export.
    pub adapter: PathBuf,
    /// Output format: `peft` (adapter_config.json + adapter_model.safetensors, what
    /// `PeftModel.from_pretrained` and vLLM's `--lora-modules` load).
    #[arg(long = "to", value_name = "FORMAT")]
    pub to: String,
    /// Output directory (created if missing; existing files of the same names are replaced).
    pub dir: PathBuf,
    /// Base model GGUF (or alias) the adapter was made for. Needed for llama-architecture
    /// adapters of q/k (to undo llama.cpp's rope row order, which needs the head counts);
    /// otherwise optional, and checked against the adapter's recorded shape when given.
    #[arg(long)]
    pub base: Option<String>,
    /// Stored type of the tensors: f32 (exact for every GGUF type) or f16 (halves the file,
    /// exact for F16 adapters).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Print one JSON object on stdout when the files are written: {command, input, base,
    /// format, dtype, output, bytes, files: [{path, bytes, sha256}], tensors, r, lora_alpha,
    /// target_modules, notes, seconds} (README, "`--json` shapes").
    #[arg(long)]
    pub json: bool,
}

pub fn export(a: ExportArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    if !a.to.eq_ignore_ascii_case("peft") {
        bail!("--to {}: the only export format is `peft`", a.to);
    }
    let (dtype, elt) = match a.dtype.to_ascii_lowercase().as_str() {
        "f32" => (Dtype::F32, 4),
        "f16" => (Dtype::F16, 2),
        o => bail!("--dtype {o}: expected f32 or f16"),
    };
    let am = map(&a.adapter)?;
    let ad = Adapter::parse(&am)
        .with_context(|| format!("{} is not a valid LoRA adapter", a.adapter.display()))?;
    let base_map = match &a.base {
        Some(b) => {
            let p = resolve_model(b)?;
            Some((map(&p)?, p))
        }
        None => None,
    };
    let base = match &base_map {
        Some((m, p)) => Some(Gguf::parse(m).with_context(|| format!("parsing {}", p.display()))?),
        None => None,
    };
    let opts = ExportOptions {
        base_name: base_map.as_ref().map(|(_, p)| p.display().to_string()),
    };
    let ex = export_peft(&ad, base.as_ref(), &opts).with_context(|| {
        format!(
            "exporting {}{}",
            a.adapter.display(),
            if a.base.is_none() {
                " (without --base)"
            } else {
                ""
            }
        )
    })?;

    let bytes: Vec<Vec<u8>> = ex
        .tensors
        .iter()
        .map(|t| match dtype {
            Dtype::F16 => t
                .data
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            _ => t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
        .collect();
    let views = ex
        .tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            debug_assert_eq!(b.len(), t.data.len() * elt);
            TensorView::new(dtype, t.shape.to_vec(), b)
                .map(|v| (t.name.clone(), v))
                .with_context(|| format!("tensor {} (bug: size vs shape)", t.name))
        })
        .collect::<Result<Vec<_>>>()?;
    let st = safetensors::serialize(views, None)
        .map_err(|e| anyhow::anyhow!("serialising the safetensors file: {e:?}"))?;
    // Check what is written reads back with every tensor.
    let back = safetensors::SafeTensors::deserialize(&st)
        .map_err(|e| anyhow::anyhow!("written safetensors does not parse (bug): {e:?}"))?;
    if back.len() != ex.tensors.len() {
        bail!("written safetensors lost tensors (bug)");
    }
    let cfg = serde_json::to_string_pretty(&ex.config)? + "\n";

    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let cfg_path = a.dir.join("adapter_config.json");
    let st_path = a.dir.join("adapter_model.safetensors");
    std::fs::write(&cfg_path, &cfg).with_context(|| format!("writing {}", cfg_path.display()))?;
    std::fs::write(&st_path, &st).with_context(|| format!("writing {}", st_path.display()))?;
    eprintln!(
        "wrote {}: {} tensors ({}), r {}, lora_alpha {}, target_modules {}",
        a.dir.display(),
        ex.tensors.len(),
        human(st.len() as u64),
        ex.config["r"],
        ex.config["lora_alpha"],
        ex.config["target_modules"]
    );
    for n in &ex.notes {
        eprintln!("note: {n}");
    }
    if a.json {
        let file = |p: &std::path::Path, b: &[u8]| {
            serde_json::json!({
                "path": p.display().to_string(),
                "bytes": b.len(),
                "sha256": crate::json_out::sha256_hex(b),
            })
        };
        crate::json_out::print(&serde_json::json!({
            "command": "adapter export",
            "input": a.adapter.display().to_string(),
            "base": base_map.as_ref().map(|(_, p)| p.display().to_string()),
            "format": "peft",
            "dtype": a.dtype.to_ascii_lowercase(),
            "output": a.dir.display().to_string(),
            "bytes": cfg.len() + st.len(),
            "files": [file(&cfg_path, cfg.as_bytes()), file(&st_path, &st)],
            "tensors": ex.tensors.len(),
            "r": ex.config["r"],
            "lora_alpha": ex.config["lora_alpha"],
            "target_modules": ex.config["target_modules"],
            "notes": ex.notes,
            "seconds": t0.elapsed().as_secs_f64(),
        }))?;
    }
    Ok(())
}
