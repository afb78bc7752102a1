//! Feature `cuda`: the GPU twin of the forward pass (crate `edgelora-cuda`) behind
//! `edgelora logits --backend cuda` and `edgelora parity`.
//!
//! Both need an NVIDIA driver and libnvrtc at run time (or `EDGELORA_CUDA_PTX` naming
//! precompiled kernels); without them they stop with a clear error instead of cudarc's panic.

use anyhow::{bail, Context, Result};
use edgelora::lora::AdapterSet;
use edgelora::model::{KernelMode, Model};
use edgelora::Gguf;
use edgelora_cuda::cpu::{derive_tolerance, trace};
use edgelora_cuda::gpu::{Gpu, GpuAdapters, GpuModel, GpuState};
use edgelora_cuda::parity::compare;
use serde_json::json;

use crate::commands::{self, Adapters};
use crate::tok::Tok;
use crate::util::{map, resolve_model};

/// Where `logits` runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// The CPU kernels (`--reference` picks the scalar f32-activation oracle).
    #[default]
    Cpu,
    /// The GPU twin (f32 activations, like `--reference`; `--reference` is ignored).
    Cuda,
}

/// `logits` with a choice of backend.
#[derive(clap::Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub base: commands::LogitsArgs,
    /// Where to run the model.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
    /// CUDA device ordinal (with `--backend cuda`).
    #[arg(long, default_value_t = 0)]
    pub device: usize,
}

/// Which CPU path `parity` compares the GPU with.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuPath {
    /// f32 activations, what the GPU computes: the derived tolerances apply.
    #[default]
    Reference,
    /// Q8-quantised activations (the default CPU path): figures only, no verdict.
    Fast,
}

/// `parity`: CPU and GPU side by side on the same tokens.
#[derive(clap::Args, Debug)]
pub struct ParityArgs {
    /// GGUF model file, or an alias from `edgelora fetch` (`smollm2`, `gemma3-270m`).
    #[arg(long, short = 'm', default_value = "smollm2")]
    pub model: String,
    /// LoRA adapter (GGUF, llama.cpp layout) as FILE or FILE:SCALE; repeat for several.
    #[arg(long = "adapter", value_name = "FILE[:SCALE]")]
    pub adapters: Vec<String>,
    /// Text to tokenize [default: "The capital of France is"].
    #[arg(long, short = 'p', conflicts_with = "tokens")]
    pub prompt: Option<String>,
    /// Comma-separated token ids, used as they are.
    #[arg(long, value_delimiter = ',')]
    pub tokens: Option<Vec<u32>>,
    /// CPU path to compare against.
    #[arg(long, value_enum, default_value_t = CpuPath::Reference)]
    pub cpu: CpuPath,
    /// Skip deriving tolerances (two extra CPU passes); print figures only.
    #[arg(long)]
    pub no_tol: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
}

fn open_gpu(device: usize) -> Result<Gpu> {
    let g = Gpu::new(device).context("starting the CUDA backend")?;
    eprintln!("cuda: {}", g.name());
    Ok(g)
}

fn token_ids(g: &Gguf<'_>, tokens: &Option<Vec<u32>>, prompt: Option<&str>) -> Result<Vec<u32>> {
    let ids = match (tokens, prompt) {
        (Some(t), _) => t.clone(),
        (None, Some(p)) => Tok::new(g)?.encode_prompt(p, false)?,
        (None, None) => bail!("give --prompt or --tokens"),
    };
    if ids.is_empty() {
        bail!("no tokens");
    }
    Ok(ids)
}

/// Run the GPU forward over `ids` with the adapters of `set`.
fn gpu_run(
    gpu: &Gpu,
    g: &Gguf<'_>,
    model: &Model<'_>,
    set: &AdapterSet<'_, '_, '_>,
    ids: &[u32],
    trace_layers: bool,
) -> Result<edgelora_cuda::gpu::GpuOutput> {
    let cfg = model.config();
    if ids.len() > cfg.ctx_len {
        bail!(
            "{} tokens exceed the model's context of {}",
            ids.len(),
            cfg.ctx_len
        );
    }
    let gm = GpuModel::upload(gpu, g, model)?;
    let ga = GpuAdapters::upload(gpu, set, cfg.n_layers)?;
    let mut st = GpuState::new(gpu, cfg, ids.len(), 64)?;
    Ok(gm.forward(gpu, &mut st, ids, 0, &ga, trace_layers)?)
}

pub fn logits(a: LogitsArgs) -> Result<()> {
    if a.backend == Backend::Cpu {
        return commands::logits(a.base);
    }
    let b = &a.base;
    let path = resolve_model(&b.model.model)?;
    let m = map(&path)?;
    let g = Gguf::parse(&m)?;
    let model: Box<Model> = Box::new(Model::from_gguf(&g)?);
    let ids = token_ids(&g, &b.tokens, b.prompt.as_deref())?;
    let ads = Adapters::open(&b.model.adapters)?;
    let parsed = ads.parse()?;
    let mut slots = ads.slots(&model);
    let bound = ads.bind(&parsed, &g, &model, &mut slots)?;
    let set = ads.set(&bound)?;
    let gpu = open_gpu(a.device)?;
    let out = gpu_run(&gpu, &g, &model, &set, &ids, false)?;
    let vocab = model.config().vocab;
    let rows: Vec<(u32, Vec<(u32, f32)>)> = ids
        .iter()
        .zip(out.logits.chunks_exact(vocab))
        .map(|(&t, l)| {
            let mut idx: Vec<u32> = (0..l.len() as u32).collect();
            idx.sort_by(|&x, &y| l[y as usize].total_cmp(&l[x as usize]));
            (
                t,
                idx.iter()
                    .take(b.top)
                    .map(|&i| (i, l[i as usize]))
                    .collect(),
            )
        })
        .collect();
    if b.json {
        let out = json!({
            "model": path.display().to_string(),
            "backend": "cuda",
            "tokens": ids,
            "positions": rows.iter().enumerate().map(|(p, (t, top))| json!({
                "pos": p, "token": t,
                "top_ids": top.iter().map(|x| x.0).collect::<Vec<_>>(),
                "top_logits": top.iter().map(|x| x.1).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string(&out)?);
    } else {
        for (p, (t, top)) in rows.iter().enumerate() {
            let s: Vec<String> = top.iter().map(|(i, v)| format!("{i}:{v:.3}")).collect();
            println!("{p:>4} tok {t:>6} -> {}", s.join("  "));
        }
    }
    Ok(())
}

pub fn parity(a: ParityArgs) -> Result<()> {
    let path = resolve_model(&a.model)?;
    let m = map(&path)?;
    let g = Gguf::parse(&m)?;
    let model: Box<Model> = Box::new(Model::from_gguf(&g)?);
    let ids = token_ids(
        &g,
        &a.tokens,
        Some(a.prompt.as_deref().unwrap_or("The capital of France is"))
            .filter(|_| a.tokens.is_none()),
    )?;
    let ads = Adapters::open(&a.adapters)?;
    let parsed = ads.parse()?;
    let mut slots = ads.slots(&model);
    let bound = ads.bind(&parsed, &g, &model, &mut slots)?;
    let set = ads.set(&bound)?;
    let gpu = open_gpu(a.device)?;

    let t0 = std::time::Instant::now();
    let out = gpu_run(&gpu, &g, &model, &set, &ids, true)?;
    let gpu_s = t0.elapsed().as_secs_f64();
    let mode = match a.cpu {
        CpuPath::Reference => KernelMode::Reference,
        CpuPath::Fast => KernelMode::Fast,
    };
    let t0 = std::time::Instant::now();
    let cpu = trace(&model, &g, &set, &ids, mode, None)?;
    let cpu_s = t0.elapsed().as_secs_f64();
    let tol = if a.no_tol || a.cpu == CpuPath::Fast {
        None
    } else {
        Some(derive_tolerance(&model, &g, &set, &ids, &cpu)?)
    };
    let rep = compare(&cpu, &out.hidden, &out.logits, tol);
    let fails = rep.failures(&cpu, out.logits.len());
    if a.json {
        let layer = |d: &edgelora_cuda::tol::Diff| json!({"max_abs": d.max_abs, "mean_abs": d.mean_abs, "cpu_max_abs": d.ref_max});
        let j = json!({
            "model": path.display().to_string(),
            "device": gpu.name(),
            "adapters": a.adapters,
            "tokens": ids,
            "cpu_path": format!("{:?}", a.cpu).to_lowercase(),
            "layers": rep.layers.iter().map(layer).collect::<Vec<_>>(),
            "logits": layer(&rep.logits),
            "tolerance": rep.tol.as_ref().map(|t| json!({"layers": t.hidden, "logits": t.logits})),
            "top1": {"agree": rep.top1.agree, "positions": rep.top1.positions, "decisive_misses": rep.top1.decisive_misses},
            "failures": fails,
        });
        println!("{}", serde_json::to_string(&j)?);
    } else {
        println!(
            "parity: {} on {} ({} adapter(s), {} tokens), CPU path {:?}; GPU {:.2} s, CPU {:.2} s",
            path.display(),
            gpu.name(),
            a.adapters.len(),
            ids.len(),
            a.cpu,
            gpu_s,
            cpu_s
        );
        println!("{}", rep.table());
        for f in &fails {
            println!("FAIL: {f}");
        }
        if rep.tol.is_some() && fails.is_empty() {
            println!("PASS: every layer and the logits within the derived tolerances");
        }
    }
    if !fails.is_empty() {
        bail!("parity failed ({} violations)", fails.len());
    }
    Ok(())
}
