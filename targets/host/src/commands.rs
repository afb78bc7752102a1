//! The subcommands.

use crate::generation::{report, run};
use crate::tok::Tok;
use crate::util::{huge_bytes, human, map, peak_rss, resolve_model, thread_cpu_secs};
use anyhow::{bail, Context, Result};
use edgelora::format::gguf::{Gguf, Value};
use edgelora::lora::{Adapter, AdapterSet, BoundAdapter, LoraPair, MAX_ACTIVE};
use edgelora::model::{cache_bytes, state_buffer_for, CacheSpec, CacheType, Config, Model, State};
use edgelora::sample::{Sampler, SamplerConfig};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

// ---------------------------------------------------------------- inspect

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// GGUF file (or alias: `smollm2`, `gemma3-270m`).
    pub model: String,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Show every array element and full strings instead of a preview.
    #[arg(long)]
    pub full: bool,
    /// Context length for the state sizes printed (capped at the model's).
    #[arg(long, default_value_t = 2048)]
    pub ctx: usize,
}

fn value_text(v: &Value<'_>, full: bool) -> String {
    match v {
        Value::Str(b) => {
            let s = String::from_utf8_lossy(b);
            if !full && s.chars().count() > 80 {
                format!(
                    "{:?}... ({} bytes)",
                    s.chars().take(80).collect::<String>(),
                    b.len()
                )
            } else {
                format!("{s:?}")
            }
        }
        Value::Array(a) => {
            let n = if full { a.len() } else { a.len().min(6) };
            let items: Vec<String> = a.iter().take(n).map(|x| value_text(&x, false)).collect();
            let more = if n < a.len() { ", ..." } else { "" };
            format!(
                "[{}; {}] [{}{}]",
                a.elem_type().name(),
                a.len(),
                items.join(", "),
                more
            )
        }
        Value::F32(x) => format!("{x}"),
        Value::F64(x) => format!("{x}"),
        Value::Bool(x) => format!("{x}"),
        other => format!("{}", other.as_int().unwrap_or_default()),
    }
}

fn value_json(v: &Value<'_>, full: bool) -> serde_json::Value {
    match v {
        Value::Str(b) => json!(String::from_utf8_lossy(b)),
        Value::Array(a) => {
            let n = if full { a.len() } else { a.len().min(16) };
            json!({"type": a.elem_type().name(), "len": a.len(), "values": a.iter().take(n).map(|x| value_json(&x, full)).collect::<Vec<_>>()})
        }
        Value::F32(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        other => {
            let i = other.as_int().unwrap_or_default();
            if i >= 0 {
                json!(i as u64)
            } else {
                json!(i as i64)
            }
        }
    }
}

/// The model configuration as a JSON object (`inspect --json`): every field by name, enums as
/// their variant names.
fn config_json(c: &edgelora::model::Config) -> serde_json::Value {
    let a = &c.arch;
    json!({
        "arch": {
            "name": a.name,
            "ffn": format!("{:?}", a.ffn),
            "rope": format!("{:?}", a.rope),
            "post_norms": a.post_norms,
            "qk_norm": a.qk_norm,
            "qkv_bias": a.qkv_bias,
            "embed_scale": a.embed_scale,
            "swa_period": a.swa_period,
            "swa_window": a.swa_window,
            "rope_base_swa": a.rope_base_swa,
            "q_scale": a.q_scale,
            "wide_q_scale_layers": a.wide_q_scale_layers,
            "softcaps": a.softcaps,
            "attn_softcap": a.attn_softcap,
            "final_softcap": a.final_softcap,
        },
        "n_layers": c.n_layers,
        "dim": c.dim,
        "n_heads": c.n_heads,
        "n_kv_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "ffn_dim": c.ffn_dim,
        "vocab": c.vocab,
        "ctx_len": c.ctx_len,
        "rope_base": c.rope_base,
        "rope_freq_scale": c.rope_freq_scale,
        "rope_dims": c.rope_dims,
        "rms_eps": c.rms_eps,
        "tied_output": c.tied_output,
    })
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    let path = resolve_model(&a.model)?;
    let m = map(&path)?;
    let g = Gguf::parse(&m).with_context(|| format!("parsing {}", path.display()))?;
    let mut by_type: std::collections::BTreeMap<&str, (usize, u64, u64)> = Default::default();
    for t in g.tensors() {
        let e = by_type.entry(t.ty.name()).or_default();
        e.0 += 1;
        e.1 += t.data.len() as u64;
        e.2 += t.n_elements();
    }
    let cfg = edgelora::model::Config::from_gguf(&g);
    if a.json {
        let out = json!({
            "file": path.display().to_string(),
            "file_bytes": m.len(),
            "version": g.version(),
            "alignment": g.alignment(),
            "data_offset": g.data_offset(),
            "metadata": g.metadata().map(|(k, v)| json!({"key": k, "type": v.value_type().name(), "value": value_json(&v, a.full)})).collect::<Vec<_>>(),
            "tensors": g.tensors().map(|t| json!({"name": t.name, "type": t.ty.name(), "dims": t.dims(), "offset": t.offset, "bytes": t.data.len()})).collect::<Vec<_>>(),
            "bytes_by_type": by_type.iter().map(|(k, v)| json!({"type": k, "tensors": v.0, "bytes": v.1, "elements": v.2})).collect::<Vec<_>>(),
            "config": cfg.as_ref().ok().map(config_json),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{}: {}", path.display(), human(m.len() as u64));
    println!(
        "GGUF v{}, {} metadata keys, {} tensors, alignment {}, data at byte {}",
        g.version(),
        g.kv_count(),
        g.tensor_count(),
        g.alignment(),
        g.data_offset()
    );
    println!("\nmetadata:");
    for (k, v) in g.metadata() {
        println!(
            "  {k:<44} {:<8} {}",
            v.value_type().name(),
            value_text(&v, a.full)
        );
    }
    println!("\ntensors:");
    println!(
        "  {:<32} {:<5} {:<18} {:>12} {:>10}",
        "name", "type", "dims", "offset", "bytes"
    );
    for t in g.tensors() {
        let dims = t
            .dims()
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(" x ");
        println!(
            "  {:<32} {:<5} {:<18} {:>12} {:>10}",
            t.name,
            t.ty.name(),
            dims,
            t.offset,
            t.data.len()
        );
    }
    println!("\nbytes by type:");
    let total: u64 = by_type.values().map(|v| v.1).sum();
    for (k, v) in &by_type {
        println!(
            "  {k:<5} {:>5} tensors {:>12} elements {:>10} ({:.1}%)",
            v.0,
            v.2,
            human(v.1),
            100.0 * v.1 as f64 / total.max(1) as f64
        );
    }
    match cfg {
        Ok(c) => {
            println!("\nmodel: {c:?}");
            let ctx = a.ctx.clamp(1, c.ctx_len);
            println!("state for {ctx} positions (of which KV cache), per --cache-type:");
            for ty in CacheType::ALL {
                let size = |swa_full| {
                    let spec = CacheSpec {
                        ty,
                        swa_full,
                        block: 0,
                    };
                    format!(
                        "{} ({})",
                        human(State::bytes_for_cache(&c, ctx, spec) as u64),
                        human(cache_bytes(&c, ctx, spec) as u64)
                    )
                };
                let usable = match ty.check(&c) {
                    Ok(()) => String::new(),
                    Err(e) => format!("  [not for this model: {e}]"),
                };
                if c.arch.swa_window > 0 {
                    println!(
                        "  {:<5} {}  sliding layers in a ring; --swa-full: {}{usable}",
                        ty.name(),
                        size(false),
                        size(true)
                    );
                } else {
                    println!("  {:<5} {}{usable}", ty.name(), size(false));
                }
            }
        }
        Err(e) => println!("\nnot a runnable llama model: {e}"),
    }
    Ok(())
}

// ---------------------------------------------------------------- shared model setup

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// GGUF model file, or an alias from `edgelora fetch`: `smollm2`
    /// (models/SmolLM2-135M-Instruct.Q4_1.gguf) or `gemma3-270m` (models/gemma-3-270m-q4_k_m.gguf).
    #[arg(long, short = 'm', default_value = "smollm2")]
    pub model: String,
    /// Context length to allocate the KV cache for (capped at the model's).
    #[arg(long, default_value_t = 2048)]
    pub ctx: usize,
    /// LoRA adapter (GGUF, llama.cpp layout) applied unmerged, as FILE or FILE:SCALE;
    /// repeat for several at once (at most 4; |SCALE| <= 16, default 1).
    #[arg(long = "adapter", value_name = "FILE[:SCALE]")]
    pub adapters: Vec<String>,
    /// Use the scalar reference kernels with f32 activations (slow; the parity baseline)
    /// instead of the SIMD kernels with Q8-quantised activations.
    #[arg(long)]
    pub reference: bool,
    /// Threads for the matrix kernels (rows of each matvec, tokens of each prompt matmul,
    /// split across a persistent pool); results are bit-identical to one thread.
    /// Default: the physical cores.
    #[arg(long, default_value_t = crate::util::default_threads(), value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// How the KV cache is stored.
#[derive(clap::Args, Debug, Clone)]
pub struct CacheArgs {
    /// KV cache element type: `f32` (exact), `f16` (half the memory) or `q8_0` (~27%; needs
    /// head_dim a multiple of 32), as llama.cpp's --cache-type-k/-v.
    #[arg(long, default_value = "f16", value_parser = parse_cache_type)]
    pub cache_type: CacheType,
    /// Keep every position in sliding-window layers (Gemma) instead of a ring of the window:
    /// more memory, but a chat can rewind anywhere without re-running the prompt.
    #[arg(long)]
    pub swa_full: bool,
}

fn parse_cache_type(s: &str) -> std::result::Result<CacheType, String> {
    CacheType::from_name(s).ok_or_else(|| format!("unknown cache type {s:?} (f32, f16, q8_0)"))
}

impl CacheArgs {
    /// The core's cache spec.
    pub fn spec(&self) -> CacheSpec {
        CacheSpec {
            ty: self.cache_type,
            swa_full: self.swa_full,
            // The host's default prompt block (`State::block_for`).
            block: 0,
        }
    }

    /// A zeroed buffer of the size [`CacheArgs::state`] needs (a state borrows its buffer).
    pub fn buffer(&self, cfg: &Config, ctx: usize) -> Vec<f32> {
        state_buffer_for(cfg, ctx, self.spec())
    }

    /// The state over `buf` (from [`CacheArgs::buffer`]).
    pub fn state<'s>(&self, cfg: &Config, ctx: usize, buf: &'s mut [f32]) -> Result<State<'s>> {
        State::with_cache(cfg, ctx, self.spec(), buf).with_context(|| {
            format!(
                "KV cache {} for {} layers of head_dim {}",
                self.cache_type.name(),
                cfg.n_layers,
                cfg.head_dim
            )
        })
    }
}

impl ModelArgs {
    /// The linears' path, after setting the process-wide kernel thread count from `--threads`.
    pub(crate) fn mode(&self) -> edgelora::model::KernelMode {
        edgelora::kernels::set_threads(self.threads.into());
        if self.reference {
            edgelora::model::KernelMode::Reference
        } else {
            edgelora::model::KernelMode::Fast
        }
    }
}

/// Largest `|SCALE|` an adapter may be applied at (`--adapter FILE:SCALE` of generate, chat,
/// eval, merge and serve, and serve's per-request `lora` scales). Trained adapters run at 1 and
/// mixes at fractions of it; past 16 the update swamps the base weights, which is almost
/// always a typo (`:50` for `:0.5`), so it is refused rather than run.
pub const MAX_ADAPTER_SCALE: f32 = 16.0;

/// Check an adapter scale: finite and `|scale| <= MAX_ADAPTER_SCALE`. The error says which
/// rule failed; callers prefix it with the argument or field.
pub fn check_adapter_scale(v: f32) -> std::result::Result<(), String> {
    if !v.is_finite() {
        return Err(format!("the scale must be a finite number, got {v}"));
    }
    if v.abs() > MAX_ADAPTER_SCALE {
        return Err(format!(
            "the scale {v} is outside [-{MAX_ADAPTER_SCALE}, {MAX_ADAPTER_SCALE}]"
        ));
    }
    Ok(())
}

/// Split `FILE[:SCALE]` (SCALE defaults to 1). A suffix after the last `:` that is not a number
/// is an error naming the argument, unless the whole argument is an existing file (a name
/// with a colon); a scale that is not finite or above [`MAX_ADAPTER_SCALE`] is refused.
pub fn parse_adapter_arg(s: &str) -> Result<(String, f32)> {
    let Some((f, sc)) = s.rsplit_once(':') else {
        if s.is_empty() {
            bail!("--adapter \"\": expected FILE[:SCALE]");
        }
        return Ok((s.to_string(), 1.0));
    };
    match sc.trim().parse::<f32>() {
        Ok(v) => {
            if f.is_empty() {
                bail!("--adapter {s:?}: no file before the scale (expected FILE[:SCALE])");
            }
            check_adapter_scale(v).map_err(|e| anyhow::anyhow!("--adapter {s:?}: {e}"))?;
            Ok((f.to_string(), v))
        }
        Err(_) if std::path::Path::new(s).is_file() => Ok((s.to_string(), 1.0)),
        Err(_) => bail!(
            "--adapter {s:?}: scale {sc:?} is not a number (expected FILE[:SCALE], e.g. \
             models/tiny/intent/adapter.gguf:0.5)"
        ),
    }
}

/// Parse an adapter file's bytes, saying what the file is when it is not a LoRA adapter (a model
/// given as `--adapter` reads as "this is a model file", not as a missing metadata key).
pub fn parse_adapter<'a>(bytes: &'a [u8], name: &str) -> Result<Adapter<'a>> {
    match Adapter::parse(bytes) {
        Ok(a) => Ok(a),
        Err(e) => {
            if let Ok(g) = Gguf::parse(bytes) {
                if g.get_str("general.type").is_err() || g.get_str("general.type") == Ok("model") {
                    if let Ok(arch) = g.get_str("general.architecture") {
                        bail!(
                            "{name} is a model file ({arch}), not a LoRA adapter: pass it as \
                             --model, and as --adapter a LoRA GGUF (`edgelora adapter convert \
                             PEFT_DIR --base MODEL -o A.gguf` makes one)"
                        );
                    }
                }
            }
            Err(anyhow::Error::new(e).context(format!("adapter {name}")))
        }
    }
}

/// Adapter files given as `FILE[:SCALE]`, memory-mapped (a stream frame checked and
/// unwrapped), with their scales: the one path every command takes from arguments to parsed
/// and bound adapters.
pub struct Adapters {
    maps: Vec<memmap2::Mmap>,
    scales: Vec<f32>,
    names: Vec<String>,
    /// Do not print the "bound" line again (`chat` binds once to check, then for good).
    quiet: bool,
}

impl Adapters {
    /// Map every `FILE[:SCALE]` argument ([`parse_adapter_arg`]).
    ///
    /// # Errors
    /// More than [`MAX_ACTIVE`] arguments, a bad argument, a file that cannot be mapped.
    pub fn open(args: &[String]) -> Result<Self> {
        if args.len() > MAX_ACTIVE {
            bail!(
                "--adapter given {} times: at most {MAX_ACTIVE} adapters are applied at once \
                 (merge some into the base with `edgelora merge`, or combine them)",
                args.len()
            );
        }
        Self::open_files(args)
    }

    /// [`Adapters::open`] without the limit on how many: for commands that write the adapters
    /// into a file instead of running them (`merge`, `adapter combine`).
    ///
    /// # Errors
    /// A bad argument, a file that cannot be mapped.
    pub fn open_files(args: &[String]) -> Result<Self> {
        let mut maps = vec![];
        let mut scales = vec![];
        let mut names = vec![];
        for a in args {
            let (f, s) = parse_adapter_arg(a)?;
            maps.push(crate::util::map_adapter(std::path::Path::new(&f))?);
            scales.push(s);
            names.push(f);
        }
        Ok(Adapters {
            maps,
            scales,
            names,
            quiet: false,
        })
    }

    /// The same adapters, binding without printing what they are (already printed once).
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// The files, as given.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The scales (`adapter combine`: the weights), in the order given.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Each file's name without its directory: how reports and `adapter combine`'s recorded
    /// provenance name the inputs.
    pub fn labels(&self) -> Vec<String> {
        self.names
            .iter()
            .map(|f| {
                std::path::Path::new(f)
                    .file_name()
                    .map_or_else(|| f.clone(), |n| n.to_string_lossy().into_owned())
            })
            .collect()
    }

    /// Parse every adapter.
    pub fn parse(&self) -> Result<Vec<Adapter<'_>>> {
        self.maps
            .iter()
            .zip(&self.names)
            .map(|(m, n)| parse_adapter(m, n))
            .collect()
    }

    /// Bind parsed adapters to the model, filling `slots` (one Vec per adapter).
    pub fn bind<'a, 's>(
        &self,
        parsed: &[Adapter<'a>],
        base: &Gguf<'_>,
        model: &Model<'_>,
        slots: &'s mut [Vec<Option<LoraPair<'a>>>],
    ) -> Result<Vec<BoundAdapter<'a, 's>>> {
        let mut out = vec![];
        for ((a, sl), n) in parsed.iter().zip(slots.iter_mut()).zip(&self.names) {
            let t = std::time::Instant::now();
            let b = a
                .bind(base, model, sl)
                .with_context(|| format!("adapter {n} does not fit the model"))?;
            out.push(b);
            if self.quiet {
                continue;
            }
            let b = out.last().expect("just pushed");
            eprintln!(
                "adapter {n}: {} pairs, rank <= {}, alpha {}, bound in {:.2} ms",
                a.n_pairs(),
                a.max_rank(),
                a.alpha(),
                t.elapsed().as_secs_f64() * 1e3
            );
            if b.same_base_weights() == Some(false) {
                eprintln!(
                    "note: adapter {n} was converted against a base with the same tensors and \
                     shapes but other weights or quant types (fine for a re-quantised copy of \
                     that base; another fine-tune of the same model would also pass this check)"
                );
            }
        }
        Ok(out)
    }

    /// Slot tables for `n` adapters.
    pub fn slots<'a>(&self, model: &Model<'_>) -> Vec<Vec<Option<LoraPair<'a>>>> {
        (0..self.maps.len())
            .map(|_| vec![None; Adapter::slots_len(model.config())])
            .collect()
    }

    pub fn set<'r, 'a, 's>(
        &self,
        bound: &'r [BoundAdapter<'a, 's>],
    ) -> Result<AdapterSet<'r, 'a, 's>> {
        let mut set = AdapterSet::EMPTY;
        for (b, s) in bound.iter().zip(&self.scales) {
            set.push(b, *s)?;
        }
        Ok(set)
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct SampleArgs {
    /// Temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temp: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens whose probability is below this fraction of the most likely one's (0 = off;
    /// llama.cpp's --min-p).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many of the last tokens the repetition penalty looks at (0 = none).
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// RNG seed: the same seed gives the same text.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl SampleArgs {
    pub(crate) fn sampler(&self) -> Result<Sampler> {
        Ok(Sampler::new(SamplerConfig {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            min_p: self.min_p,
            seed: self.seed,
            ..SamplerConfig::default()
        })?)
    }
}

// ---------------------------------------------------------------- generate

/// The prompt of `--prompt TEXT`, `--prompt -` (standard input) or `--prompt-file FILE`.
fn read_prompt(prompt: Option<&str>, file: Option<&std::path::Path>) -> Result<String> {
    match (prompt, file) {
        (_, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("--prompt-file {}: reading the prompt", f.display())),
        (Some("-"), None) => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .context("--prompt -: reading the prompt from standard input")?;
            Ok(s)
        }
        (Some(p), None) => Ok(p.to_string()),
        (None, None) => {
            bail!("give --prompt TEXT, --prompt - (standard input) or --prompt-file FILE")
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text; `-` reads it from standard input.
    #[arg(long, short = 'p', required_unless_present = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file (UTF-8; used as it is, final newline included).
    #[arg(long, value_name = "FILE", conflicts_with = "prompt")]
    pub prompt_file: Option<PathBuf>,
    /// Maximum new tokens.
    #[arg(long, short = 'n', default_value_t = 128)]
    pub n: usize,
    /// Wrap the prompt as a user message in the model's chat format: its own
    /// `tokenizer.chat_template` (rendered with minijinja) or, for files without one, the
    /// built-in ChatML / Gemma / Llama 3 format its metadata points to.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat (default: the template's own).
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Print one JSON object (text, token ids, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub constrain: ConstrainArgs,
}

/// Constrained output: stop strings, JSON, JSON Schema.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConstrainArgs {
    /// Stop at this string (repeatable); it and what follows are not printed.
    #[arg(long = "stop", value_name = "S")]
    pub stop: Vec<String>,
    /// Constrain the output to one JSON object (OpenAI's `json_object`): every token is
    /// checked against a JSON automaton before sampling, and the end comes only once the
    /// object is complete.
    #[arg(long, conflicts_with = "json_schema")]
    pub json_object: bool,
    /// Constrain the output to one JSON value of this JSON Schema (properties in schema
    /// order; types, enum/const, required, items, minItems/maxItems, anyOf, $ref).
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<PathBuf>,
    /// With --json-object/--json-schema: whitespace bytes allowed in a row between JSON
    /// tokens (0: compact JSON only). Bounded so that a model cannot stall in whitespace.
    #[arg(long, value_name = "N", default_value_t = crate::constrained::MAX_WS)]
    pub json_ws: u8,
}

impl ConstrainArgs {
    /// The compiled schema table asked for, if any.
    pub fn table(&self) -> Result<Option<Vec<u8>>> {
        if let Some(p) = &self.json_schema {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let t = crate::constrained::compile_schema(&text)
                .with_context(|| format!("compiling {}", p.display()))?;
            return Ok(Some(t));
        }
        Ok(self.json_object.then(crate::constrained::any_object_table))
    }

    /// A fresh constraint for one generation.
    pub fn constraint(
        &self,
        table: &Option<Vec<u8>>,
        vocab: &Option<std::sync::Arc<crate::constrained::Vocab>>,
    ) -> Result<Option<crate::constrained::JsonConstraint>> {
        match (table, vocab) {
            (Some(t), Some(v)) => Ok(Some(crate::constrained::JsonConstraint::with_ws(
                v.clone(),
                t.clone(),
                self.json_ws,
            )?)),
            _ => Ok(None),
        }
    }
}

/// Prints what the stop matcher releases; stops at a stop string.
struct PrintSink {
    stop: crate::serve::stop::StopMatcher,
    print: bool,
    text: String,
    stopped: bool,
}

impl PrintSink {
    fn out(&mut self, s: &str) {
        self.text.push_str(s);
        if self.print {
            let mut o = std::io::stdout();
            let _ = o.write_all(s.as_bytes());
            let _ = o.flush();
        }
    }
}

impl crate::generation::Sink for PrintSink {
    fn token(&mut self, _id: u32, text: &str) -> std::ops::ControlFlow<()> {
        let r = self.stop.push(text);
        self.out(&r.text);
        if r.stopped {
            self.stopped = true;
            return std::ops::ControlFlow::Break(());
        }
        std::ops::ControlFlow::Continue(())
    }

    fn tail(&mut self, text: &str) {
        if !self.stopped {
            let mut r = self.stop.push(text).text;
            r.push_str(&self.stop.finish());
            self.out(&r);
        }
    }
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let path = resolve_model(&a.model.model)?;
    let m = map(&path)?;
    let g = Gguf::parse(&m).with_context(|| format!("parsing {}", path.display()))?;
    let model: Box<Model> =
        Box::new(Model::from_gguf(&g).with_context(|| format!("loading {}", path.display()))?);
    let tok = Tok::new(&g)?;
    let ads = Adapters::open(&a.model.adapters)?;
    let parsed = ads.parse()?;
    let mut slots = ads.slots(&model);
    let bound = ads.bind(&parsed, &g, &model, &mut slots)?;
    let set = ads.set(&bound)?;
    let cfg = *model.config();
    let ctx = a.model.ctx.min(cfg.ctx_len);
    let mut buf = a.model.cache.buffer(&cfg, ctx);
    let mut st = a.model.cache.state(&cfg, ctx, &mut buf)?;
    st.set_kernel_mode(a.model.mode());
    let prompt = read_prompt(a.prompt.as_deref(), a.prompt_file.as_deref())?;
    let (text, ids) = if a.chat {
        eprintln!("chat format: {}", tok.chat_format());
        let text = tok.chat_prompt(a.system.as_deref(), &[("user", prompt.as_str())])?;
        let ids = tok.encode_chat(&text)?;
        (text, ids)
    } else {
        let ids = tok.encode_prompt(&prompt, false)?;
        (prompt, ids)
    };
    let mut sampler = a.sample.sampler()?;
    let mut history = vec![];
    let json = a.json;
    let table = a.constrain.table()?;
    let vocab = match table {
        Some(_) => Some(std::sync::Arc::new(crate::constrained::Vocab::new(&tok)?)),
        None => None,
    };
    let mut constraint = a.constrain.constraint(&table, &vocab)?;
    let mut printer = PrintSink {
        stop: crate::serve::stop::StopMatcher::new(a.constrain.stop.clone()),
        print: !json,
        text: String::new(),
        stopped: false,
    };
    let mut gen = run(
        &model,
        &tok,
        &mut st,
        0,
        &ids,
        a.n,
        &mut sampler,
        &mut history,
        &set,
        &mut crate::constrained::Constrained::new(&mut printer, constraint.as_mut(), &tok),
    )?;
    gen.text = printer.text;
    if json {
        let out = json!({
            "model": path.display().to_string(),
            "prompt": text,
            "prompt_tokens": ids,
            "tokens": gen.tokens,
            "text": gen.text,
            "stop": gen.finish.name(),
            "prefill_tokens_per_s": gen.n_prompt as f64 / gen.prefill_s.max(1e-9),
            "decode_tokens_per_s": gen.tokens.len() as f64 / gen.decode_s.max(1e-9),
            "peak_rss_bytes": peak_rss(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!();
    }
    report(&gen);
    Ok(())
}

// ---------------------------------------------------------------- logits

#[derive(clap::Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to tokenize (with the model's tokenizer; BOS added if the model asks for it).
    #[arg(long, short = 'p', conflicts_with = "tokens")]
    pub prompt: Option<String>,
    /// Comma-separated token ids, used as they are.
    #[arg(long, value_delimiter = ',')]
    pub tokens: Option<Vec<u32>>,
    /// How many of the largest logits to print per position.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn logits(a: LogitsArgs) -> Result<()> {
    let path = resolve_model(&a.model.model)?;
    let m = map(&path)?;
    let g = Gguf::parse(&m)?;
    let model: Box<Model> = Box::new(Model::from_gguf(&g)?);
    let ids = match (&a.tokens, &a.prompt) {
        (Some(t), _) => t.clone(),
        (None, Some(p)) => Tok::new(&g)?.encode_prompt(p, false)?,
        (None, None) => bail!("give --prompt or --tokens"),
    };
    if ids.is_empty() {
        bail!("no tokens");
    }
    let ads = Adapters::open(&a.model.adapters)?;
    let parsed = ads.parse()?;
    let mut slots = ads.slots(&model);
    let bound = ads.bind(&parsed, &g, &model, &mut slots)?;
    let set = ads.set(&bound)?;
    let cfg = *model.config();
    let ctx = ids.len().min(cfg.ctx_len);
    let mut buf = a.model.cache.buffer(&cfg, ctx);
    let mut st = a.model.cache.state(&cfg, ctx, &mut buf)?;
    st.set_kernel_mode(a.model.mode());
    let mut rows = vec![];
    for (pos, &t) in ids.iter().enumerate() {
        let l = model
            .forward_with(t, pos, &mut st, &set)
            .with_context(|| format!("position {pos}"))?;
        let mut idx: Vec<u32> = (0..l.len() as u32).collect();
        let k = a.top.min(l.len());
        idx.select_nth_unstable_by(k.saturating_sub(1).min(l.len() - 1), |&x, &y| {
            l[y as usize].total_cmp(&l[x as usize])
        });
        let mut top: Vec<u32> = idx[..k].to_vec();
        top.sort_by(|&x, &y| l[y as usize].total_cmp(&l[x as usize]));
        rows.push((
            t,
            top.iter().map(|&i| (i, l[i as usize])).collect::<Vec<_>>(),
        ));
    }
    if a.json {
        let out = json!({
            "model": path.display().to_string(),
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

// ---------------------------------------------------------------- tokenize

#[derive(clap::Args, Debug)]
pub struct TokenizeArgs {
    /// GGUF model whose tokenizer to use (or alias: `smollm2`, `gemma3-270m`).
    #[arg(long, short = 'm', default_value = "smollm2")]
    pub model: String,
    /// Text to tokenize.
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Match special tokens such as <|im_start|> in the text.
    #[arg(long)]
    pub special: bool,
    /// Show the ids of the chat prompt `generate --chat` would run for this user message
    /// (the rendered prompt goes to stderr).
    #[arg(long)]
    pub chat: bool,
    /// Print one JSON object: {model, ids: [..], pieces: [..]} (pieces as text, lossy UTF-8).
    #[arg(long)]
    pub json: bool,
}

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let path = resolve_model(&a.model)?;
    let m = map(&path)?;
    let g = Gguf::parse(&m)?;
    let tok = Tok::new(&g)?;
    let ids = if a.chat {
        let text = tok.chat_prompt(None, &[("user", a.prompt.as_str())])?;
        eprintln!("chat format: {}\nprompt: {text:?}", tok.chat_format());
        tok.encode_chat(&text)?
    } else {
        tok.encode_prompt(&a.prompt, a.special)?
    };
    if a.json {
        let pieces: Vec<String> = ids.iter().map(|&id| tok.piece(id)).collect();
        let out = json!({"model": path.display().to_string(), "ids": ids, "pieces": pieces});
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    for id in ids {
        println!("{id:>6} {:?}", tok.piece(id));
    }
    Ok(())
}

// ---------------------------------------------------------------- bench

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens processed per prefill run.
    #[arg(long, default_value_t = 64)]
    pub prompt_len: usize,
    /// Tokens generated per decode run.
    #[arg(long, default_value_t = 64)]
    pub gen: usize,
    /// Repetitions; the best run is reported (least disturbed by other processes).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let path = resolve_model(&a.model.model)?;
    let m = map(&path)?;
    let g = Gguf::parse(&m)?;
    let model: Box<Model> = Box::new(Model::from_gguf(&g)?);
    let ads = Adapters::open(&a.model.adapters)?;
    let parsed = ads.parse()?;
    let mut slots = ads.slots(&model);
    let bound = ads.bind(&parsed, &g, &model, &mut slots)?;
    let set = ads.set(&bound)?;
    let cfg = *model.config();
    let ctx = (a.prompt_len + a.gen + 1).min(cfg.ctx_len);
    let mut buf = a.model.cache.buffer(&cfg, ctx);
    let mut st = a.model.cache.state(&cfg, ctx, &mut buf)?;
    st.set_kernel_mode(a.model.mode());
    // A fixed, ordinary token sequence (ids spread over the vocabulary).
    let prompt: Vec<u32> = (0..a.prompt_len)
        .map(|i| ((i * 7919 + 13) % cfg.vocab) as u32)
        .collect();
    let (mut best_pp, mut best_tg) = (0f64, 0f64);
    // The same rates in this thread's CPU time (the one-thread figure to compare on a busy
    // host; with more threads the workers' time is not in it).
    let (mut cpu_pp, mut cpu_tg) = (None::<f64>, None::<f64>);
    let rate = |n: usize, c0: Option<f64>| Some(n as f64 / (thread_cpu_secs()? - c0?));
    let best = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(x, y)| x.max(y)).or(a).or(b);
    for _ in 0..a.reps.max(1) {
        st.clear();
        let (t, c) = (Instant::now(), thread_cpu_secs());
        let mut logits = model.prefill_with(&prompt, 0, &mut st, &set)?.to_vec();
        best_pp = best_pp.max(prompt.len() as f64 / t.elapsed().as_secs_f64());
        cpu_pp = best(cpu_pp, rate(prompt.len(), c));
        let (t, c) = (Instant::now(), thread_cpu_secs());
        for i in 0..a.gen {
            let next = edgelora::sample::argmax(&logits);
            logits.copy_from_slice(model.forward_with(next, prompt.len() + i, &mut st, &set)?);
        }
        best_tg = best_tg.max(a.gen as f64 / t.elapsed().as_secs_f64());
        cpu_tg = best(cpu_tg, rate(a.gen, c));
    }
    // Adapter swap cost: replacing the active set (what a request switch does).
    let swap_ns = if bound.is_empty() {
        None
    } else {
        let n = 1_000_000u32;
        let t = Instant::now();
        let mut cur = AdapterSet::EMPTY;
        for i in 0..n {
            cur = if i % 2 == 0 {
                AdapterSet::single(&bound[0], 1.0)
            } else {
                AdapterSet::EMPTY
            };
            std::hint::black_box(&cur);
        }
        std::hint::black_box(cur);
        Some(t.elapsed().as_nanos() as f64 / n as f64)
    };
    let rss = peak_rss();
    // How much of the weights the kernel backed with 2 MB pages (`util::map`).
    let huge = huge_bytes(&m);
    let kernel = edgelora::kernels::active_isa_name();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "model": path.display().to_string(),
                "kernel": kernel,
                "mode": format!("{:?}", a.model.mode()),
                "threads": a.model.threads,
                "cache_type": a.model.cache.cache_type.name(),
                "state_bytes": State::bytes_for_cache(&cfg, ctx, a.model.cache.spec()),
                "adapters": a.model.adapters,
                "prompt_tokens": a.prompt_len,
                "gen_tokens": a.gen,
                "prefill_tokens_per_s": best_pp,
                "decode_tokens_per_s": best_tg,
                "prefill_cpu_tokens_per_s": cpu_pp,
                "decode_cpu_tokens_per_s": cpu_tg,
                "swap_ns": swap_ns,
                "peak_rss_bytes": rss,
                "weights_bytes": m.len(),
                "weights_huge_page_bytes": huge,
            }))?
        );
    } else {
        println!("model    {}", path.display());
        println!("kernel   {kernel} ({:?})", a.model.mode());
        println!("threads  {}", a.model.threads);
        println!(
            "cache    {} (state {} for {ctx} positions)",
            a.model.cache.cache_type.name(),
            human(State::bytes_for_cache(&cfg, ctx, a.model.cache.spec()) as u64)
        );
        println!(
            "prefill  {best_pp:.1} tokens/s ({} tokens, best of {})",
            a.prompt_len, a.reps
        );
        println!(
            "decode   {best_tg:.1} tokens/s ({} tokens, best of {})",
            a.gen, a.reps
        );
        if let Some(ns) = swap_ns {
            println!("swap     {ns:.1} ns per adapter-set switch");
        }
        println!("peak RSS {}", rss.map(human).unwrap_or_else(|| "?".into()));
        println!(
            "weights  {} ({} in 2 MB pages{})",
            human(m.len() as u64),
            huge.map(human).unwrap_or_else(|| "?".into()),
            if huge.unwrap_or(0) == 0 {
                "; `--mmap`, no THP, or a small file"
            } else {
                ""
            }
        );
    }
    Ok(())
}
