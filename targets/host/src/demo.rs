//! `edgelora demo` and `edgelora eval`: the task adapters on the default tiny model (or
//! SmolLM2, or Gemma 3 270M), with exact-match on the held-out test split.
//!
//! Prompt format and metric are the trainer's (`targets/trainer/tasks.py`): the model is given
//! `"{task}: {input}\n"` and its answer is the generated text before the first newline,
//! compared exactly with the gold output.

use crate::commands::{CacheArgs, ConstrainArgs};
use crate::constrained::{JsonConstraint, Vocab};
use crate::tok::Tok;
use crate::util::{human, map, peak_rss, repo_path, resolve_model};
use anyhow::{bail, Context, Result};
use edgelora::lora::{Adapter, AdapterSet, BoundAdapter, LoraPair};
use edgelora::model::{Model, State};
use edgelora::Gguf;
use std::path::PathBuf;
use std::time::Instant;

/// The tasks the trainer defines.
pub const TASKS: [&str; 3] = ["intent", "reply", "normalize"];

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Base model: `tiny` (ships in models/tiny), `smollm2`, `gemma3-270m`, or a GGUF path
    /// (the file of one of those, or any base with --adapters).
    #[arg(long, short = 'm', default_value = "tiny")]
    pub model: String,
    /// Held-out inputs per task.
    #[arg(long, short = 'n', default_value_t = 3)]
    pub n: usize,
    /// Directory with <task>/test.jsonl.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Directory with <task>/adapter.gguf (default: the model's own, models/tiny, models/smollm2
    /// or models/gemma3).
    #[arg(long)]
    pub adapters: Option<PathBuf>,
    /// Maximum new tokens per answer (at least 128 when constrained).
    #[arg(long, default_value_t = 48)]
    pub max_new: usize,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Print one JSON object instead of text: {model, model_bytes, layers, dim, ctx,
    /// state_bytes, load_ms, adapters: [{task, file, bytes}], requests: [{task, input, expected,
    /// base, adapter, base_ok, adapter_ok}], exact_match: {TASK: {adapter, base, n}},
    /// swap_ns_mean, swaps, tokens, seconds, tokens_per_s, kernel, peak_rss_bytes}.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Task name (intent, reply, normalize), or `all`: every task's held-out split with the
    /// same adapters, a per-task table and the mean (progress on stderr).
    #[arg(long)]
    pub task: String,
    /// Adapter GGUF applied unmerged, as FILE or FILE:SCALE; repeat to mix several (at most
    /// 4; |SCALE| <= 16, default 1). Omit to evaluate the base alone.
    #[arg(long = "adapter", value_name = "FILE[:SCALE]")]
    pub adapters: Vec<String>,
    /// Base model: `tiny`, `smollm2`, `gemma3-270m`, or a GGUF path.
    #[arg(long, short = 'm', default_value = "tiny")]
    pub model: String,
    /// Directory with <task>/test.jsonl.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Evaluate only the first N examples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Maximum new tokens per answer (at least 128 when constrained).
    #[arg(long, default_value_t = 48)]
    pub max_new: usize,
    /// Print every prediction.
    #[arg(long)]
    pub verbose: bool,
    /// Use the scalar f32-activation reference kernels instead of the SIMD fast path
    /// (slower; isolates the effect of quantising activations to Q8).
    #[arg(long)]
    pub reference: bool,
    /// Print one JSON object instead of text. One task: {task, model, adapter, adapters,
    /// kernels, correct, n, exact_match, constrained, valid_json, schema_valid, predictions}.
    /// `--task all`: {task: "all", model, adapter, adapters, kernels, tasks: {intent: {correct,
    /// n, exact_match, valid_json, seconds, predictions}, reply: {...}, normalize: {...}},
    /// mean_exact_match} (the mean of the tasks' exact_match). `adapter` is the argument as
    /// given (several joined by " + ", null for the base alone); `adapters` lists {file, scale}.
    #[arg(long)]
    pub json: bool,
    /// Constrained output (`--json-object`, `--json-schema FILE`; `--stop` is not used here:
    /// an answer ends at its first newline, or with a constraint when the value is complete).
    #[command(flatten)]
    pub constrain: ConstrainArgs,
    /// With --json-schema: do not constrain, only count the answers that fit the schema.
    #[arg(long, requires = "json_schema")]
    pub check_only: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// One held-out example.
pub struct Example {
    pub input: String,
    pub output: String,
}

pub fn load_examples(data: &Option<PathBuf>, task: &str) -> Result<Vec<Example>> {
    let dir = data
        .clone()
        .unwrap_or_else(|| repo_path("targets/trainer/data"));
    let p = dir.join(task).join("test.jsonl");
    if data.is_none() && !p.exists() && !["intent", "reply", "normalize"].contains(&task) {
        bail!("unknown task '{task}': the tasks are intent, reply, normalize (or `all` for eval)");
    }
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let mut out = vec![];
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}", p.display(), i + 1))?;
        let get = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        match (get("input"), get("output")) {
            (Some(input), Some(output)) => out.push(Example { input, output }),
            _ => bail!(
                "{}:{}: expected \"input\" and \"output\" strings",
                p.display(),
                i + 1
            ),
        }
    }
    Ok(out)
}

/// Greedy answer for one prompt: text up to the first newline (or end token / limit).
/// Returns (answer, generated token count).
#[allow(clippy::too_many_arguments)]
pub fn answer(
    model: &Model<'_>,
    tok: &Tok<'_>,
    st: &mut State<'_>,
    set: &AdapterSet<'_, '_, '_>,
    task: &str,
    input: &str,
    max_new: usize,
    mut constraint: Option<&mut JsonConstraint>,
) -> Result<(String, usize)> {
    st.clear();
    let ids = tok.encode_prompt(&format!("{task}: {input}\n"), false)?;
    if ids.len() + 1 >= st.ctx() {
        bail!(
            "prompt of {} tokens does not fit the context of {}",
            ids.len(),
            st.ctx()
        );
    }
    let mut logits = model.prefill_with(&ids, 0, st, set)?.to_vec();
    let mut dec = tok.decoder();
    let mut text = String::new();
    let mut n = 0;
    for pos in (ids.len()..st.ctx()).take(max_new) {
        if let Some(c) = constraint.as_deref_mut() {
            c.mask(&mut logits);
        }
        let next = edgelora::sample::argmax(&logits);
        if tok.is_eog(next) {
            break;
        }
        n += 1;
        text.push_str(&dec.push(next)?);
        if let Some(c) = constraint.as_deref_mut() {
            // The constraint decides where the answer ends (it may hold a newline).
            c.accept(&tok.piece_bytes(next));
        } else if text.contains('\n') {
            break;
        }
        logits.copy_from_slice(model.forward_with(next, pos, st, set)?);
    }
    text.push_str(&dec.finish());
    if constraint.is_some() {
        return Ok((text.trim().to_string(), n));
    }
    Ok((text.split('\n').next().unwrap_or("").trim().to_string(), n))
}

fn model_alias(m: &str) -> String {
    if m == "tiny" {
        return repo_path("models/tiny/tiny-base.gguf")
            .display()
            .to_string();
    }
    m.to_string()
}

/// Where a named model's task adapters live and how to make them.
struct TaskAdapters {
    /// `--model` alias.
    model: &'static str,
    /// GGUF file name of the base (to recognise a path to it).
    file: &'static str,
    /// Directory with `<task>/adapter.gguf`, relative to the repository.
    dir: &'static str,
    /// The command that builds them.
    build: &'static str,
    /// Why they may be absent from a checkout.
    note: &'static str,
}

/// One row per model with task adapters.
const TASK_ADAPTERS: [TaskAdapters; 3] = [
    TaskAdapters {
        model: "tiny",
        file: "tiny-base.gguf",
        dir: "models/tiny",
        build: "bash targets/trainer/rebuild_tiny.sh",
        note: "they are committed; restore them with `git checkout models/tiny`",
    },
    TaskAdapters {
        model: "smollm2",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        dir: "models/smollm2",
        build: "bash targets/trainer/train_smollm2.sh",
        note: "they are committed; restore them with `git checkout models/smollm2`",
    },
    TaskAdapters {
        model: "gemma3-270m",
        file: "gemma-3-270m-q4_k_m.gguf",
        dir: "models/gemma3",
        build: "bash targets/trainer/train_gemma3.sh",
        note: "they are not committed: weights trained on Gemma are Model Derivatives under the \
               Gemma Terms of Use, so each checkout trains its own",
    },
];

/// The adapters row of `--model` (an alias, or a path whose file name is a known base's).
fn task_adapters(model: &str) -> Option<&'static TaskAdapters> {
    let file = std::path::Path::new(model)
        .file_name()
        .and_then(|f| f.to_str());
    TASK_ADAPTERS
        .iter()
        .find(|r| r.model == model || Some(r.file) == file)
}

fn adapter_dir(a: &Option<PathBuf>, model: &str) -> Result<PathBuf> {
    if let Some(d) = a {
        return Ok(d.clone());
    }
    match task_adapters(model) {
        Some(r) => Ok(repo_path(r.dir)),
        None => bail!(
            "no task adapters are known for model '{model}': pass --adapters DIR (a directory \
             with intent/, reply/, normalize/ each holding adapter.gguf), or use --model {}",
            TASK_ADAPTERS.map(|r| r.model).join(" / ")
        ),
    }
}

/// The error for a missing `<task>/adapter.gguf`: which file, and the command that makes it.
fn missing_adapter(p: &std::path::Path, task: &str, model: &str) -> String {
    match task_adapters(model) {
        Some(r) => format!(
            "task adapter '{task}' not found: {} does not exist. Build {}'s adapters with `{}` \
             ({}; the trainer needs .venv with targets/trainer/requirements.txt)",
            p.display(),
            r.model,
            r.build,
            r.note
        ),
        None => format!(
            "task adapter '{task}' not found: {} does not exist (train one with \
             targets/trainer/train.py and convert it with `edgelora adapter convert`)",
            p.display()
        ),
    }
}

pub fn demo(a: DemoArgs) -> Result<()> {
    let path = resolve_model(&model_alias(&a.model))?;
    let t_load = Instant::now();
    let m = map(&path)?;
    let g = Gguf::parse(&m).with_context(|| format!("parsing {}", path.display()))?;
    let model: Box<Model> = Box::new(Model::from_gguf(&g)?);
    let tok = Tok::new(&g)?;
    let cfg = *model.config();
    let ctx = 128.min(cfg.ctx_len);
    let mut buf = a.cache.buffer(&cfg, ctx);
    let mut st = a.cache.state(&cfg, ctx, &mut buf)?;
    let dir = adapter_dir(&a.adapters, &a.model)?;
    // Load every task adapter once; all stay resident and bound, switching is a set swap.
    let mut maps = vec![];
    for t in TASKS {
        let p = dir.join(t).join("adapter.gguf");
        if !p.exists() {
            bail!("{}", missing_adapter(&p, t, &a.model));
        }
        let mm = map(&p).with_context(|| format!("adapter for task '{t}'"))?;
        maps.push((t, p, mm));
    }
    let parsed: Vec<Adapter> = maps
        .iter()
        .map(|(_, p, mm)| Adapter::parse(mm).with_context(|| p.display().to_string()))
        .collect::<Result<_>>()?;
    let mut slots: Vec<Vec<Option<LoraPair>>> = parsed
        .iter()
        .map(|_| vec![None; Adapter::slots_len(&cfg)])
        .collect();
    let mut bound: Vec<BoundAdapter> = vec![];
    for ((ad, sl), (_, p, _)) in parsed.iter().zip(slots.iter_mut()).zip(&maps) {
        bound.push(
            ad.bind(&g, &model, sl)
                .with_context(|| format!("{} does not fit {}", p.display(), path.display()))?,
        );
    }
    let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let mut requests = vec![];
    if !a.json {
        println!(
        "edgelora demo: base {} ({}, {} layers, dim {}), {} task adapters ({}), state {} for {} tokens; loaded in {load_ms:.1} ms",
        path.display(),
        human(m.len() as u64),
        cfg.n_layers,
        cfg.dim,
        bound.len(),
        maps.iter().map(|(_, _, mm)| human(mm.len() as u64)).collect::<Vec<_>>().join(" + "),
        human(State::bytes_for_cache(&cfg, ctx, a.cache.spec()) as u64),
        ctx
    );
    }
    let data: Vec<Vec<Example>> = TASKS
        .iter()
        .map(|t| load_examples(&a.data, t))
        .collect::<Result<_>>()?;
    let mut score = [[0usize; 2]; TASKS.len()];
    let (mut gen_tokens, mut gen_secs, mut swap_ns, mut swaps) = (0usize, 0f64, 0f64, 0usize);
    // Round-robin over tasks so every request switches adapters.
    for i in 0..a.n {
        for (ti, task) in TASKS.iter().enumerate() {
            let Some(ex) = data[ti].get(i) else { continue };
            let t0 = Instant::now();
            let set = AdapterSet::single(&bound[ti], 1.0);
            swap_ns += t0.elapsed().as_nanos() as f64;
            swaps += 1;
            let t1 = Instant::now();
            let (with, n1) = answer(
                &model, &tok, &mut st, &set, task, &ex.input, a.max_new, None,
            )?;
            let (base, n2) = answer(
                &model,
                &tok,
                &mut st,
                &AdapterSet::EMPTY,
                task,
                &ex.input,
                a.max_new,
                None,
            )?;
            gen_secs += t1.elapsed().as_secs_f64();
            gen_tokens += n1 + n2;
            let (ok_a, ok_b) = (with == ex.output, base == ex.output);
            score[ti][0] += ok_a as usize;
            score[ti][1] += ok_b as usize;
            if a.json {
                requests.push(serde_json::json!({
                    "task": task, "input": ex.input, "expected": ex.output,
                    "base": base, "adapter": with, "base_ok": ok_b, "adapter_ok": ok_a,
                }));
                continue;
            }
            println!("\n[{task}] {}", ex.input);
            println!("  base alone : {base:?} {}", if ok_b { "✓" } else { "✗" });
            println!("  + adapter  : {with:?} {}", if ok_a { "✓" } else { "✗" });
            if !ok_a {
                println!("  expected   : {:?}", ex.output);
            }
        }
    }
    if a.json {
        let mut em = serde_json::Map::new();
        for (ti, task) in TASKS.iter().enumerate() {
            let n = a.n.min(data[ti].len());
            em.insert(
                task.to_string(),
                serde_json::json!({"adapter": score[ti][0], "base": score[ti][1], "n": n}),
            );
        }
        let out = serde_json::json!({
            "model": path.display().to_string(),
            "model_bytes": m.len(),
            "layers": cfg.n_layers,
            "dim": cfg.dim,
            "ctx": ctx,
            "state_bytes": State::bytes_for_cache(&cfg, ctx, a.cache.spec()),
            "load_ms": load_ms,
            "adapters": maps.iter().map(|(t, p, mm)| serde_json::json!({
                "task": t, "file": p.display().to_string(), "bytes": mm.len(),
            })).collect::<Vec<_>>(),
            "requests": requests,
            "exact_match": em,
            "swap_ns_mean": swap_ns / swaps.max(1) as f64,
            "swaps": swaps,
            "tokens": gen_tokens,
            "seconds": gen_secs,
            "tokens_per_s": gen_tokens as f64 / gen_secs.max(1e-9),
            "kernel": edgelora::kernels::active_isa_name(),
            "peak_rss_bytes": peak_rss(),
        });
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    println!("\nexact match on {} held-out inputs per task:", a.n);
    for (ti, task) in TASKS.iter().enumerate() {
        let n = a.n.min(data[ti].len()).max(1);
        println!(
            "  {task:<10} with adapter {}/{n}   base alone {}/{n}",
            score[ti][0], score[ti][1]
        );
    }
    println!(
        "adapter swap {:.0} ns on average ({swaps} swaps, no weights rewritten; KV cache cleared per request)",
        swap_ns / swaps.max(1) as f64
    );
    println!(
        "{gen_tokens} tokens generated in {gen_secs:.2} s ({:.0} tokens/s incl. prompts), kernel {}, peak RSS {}",
        gen_tokens as f64 / gen_secs.max(1e-9),
        edgelora::kernels::active_isa_name(),
        peak_rss().map(human).unwrap_or_else(|| "?".into())
    );
    Ok(())
}

/// Exact match of one task's held-out split.
struct TaskScore {
    correct: usize,
    n: usize,
    valid_json: usize,
    schema_valid: usize,
    predictions: Vec<String>,
    seconds: f64,
}

impl TaskScore {
    fn exact_match(&self) -> f64 {
        self.correct as f64 / self.n.max(1) as f64
    }
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let all = a.task == "all";
    if all && (a.constrain.json_object || a.constrain.json_schema.is_some()) {
        bail!(
            "--task all with --json-object/--json-schema: a constraint fits one task's answers \
             (intent's JSON); run --task intent with it"
        );
    }
    let path = resolve_model(&model_alias(&a.model))?;
    let m = map(&path)?;
    let g = Gguf::parse(&m)?;
    let model: Box<Model> = Box::new(Model::from_gguf(&g)?);
    let tok = Tok::new(&g)?;
    let cfg = *model.config();
    let constrained =
        (a.constrain.json_object || a.constrain.json_schema.is_some()) && !a.check_only;
    // A constrained answer ends only when its value is complete: give it room (an intent
    // object with whitespace and a long number can take ~70 tokens).
    let max_new = if constrained {
        a.max_new.max(128)
    } else {
        a.max_new
    };
    let ctx = if constrained { 256 } else { 128 }.min(cfg.ctx_len);
    let mut buf = a.cache.buffer(&cfg, ctx);
    let mut st = a.cache.state(&cfg, ctx, &mut buf)?;
    if a.reference {
        st.set_kernel_mode(edgelora::model::KernelMode::Reference);
    }
    // --adapter FILE[:SCALE], repeated: the same parsing, cap and binding as generate's.
    let ads = crate::commands::Adapters::open(&a.adapters)?;
    let parsed = ads.parse()?;
    let mut slots = ads.slots(&model);
    let bound = ads.bind(&parsed, &g, &model, &mut slots)?;
    let set = ads.set(&bound)?;
    let adapter_label = match a.adapters.len() {
        0 => None,
        _ => Some(a.adapters.join(" + ")),
    };
    let adapter_list: Vec<serde_json::Value> = a
        .adapters
        .iter()
        .map(|s| {
            crate::commands::parse_adapter_arg(s)
                .map(|(f, sc)| serde_json::json!({"file": f, "scale": sc}))
        })
        .collect::<Result<_>>()?;
    let table = a.constrain.table()?;
    let vocab = match (&table, a.check_only) {
        (Some(_), false) => Some(std::sync::Arc::new(Vocab::new(&tok)?)),
        _ => None,
    };
    let kernels = if a.reference { "reference" } else { "fast" };

    // One task's split; `progress` prints a line per task on stderr (for --task all).
    let mut run_task = |task: &str, progress: bool| -> Result<TaskScore> {
        let mut ex = load_examples(&a.data, task)?;
        if let Some(l) = a.limit {
            ex.truncate(l);
        }
        let t = Instant::now();
        let mut sc = TaskScore {
            correct: 0,
            n: ex.len(),
            valid_json: 0,
            schema_valid: 0,
            predictions: vec![],
            seconds: 0.0,
        };
        for (i, e) in ex.iter().enumerate() {
            let mut c = a.constrain.constraint(&table, &vocab)?;
            let (pred, _) = answer(
                &model,
                &tok,
                &mut st,
                &set,
                task,
                &e.input,
                max_new,
                if a.check_only { None } else { c.as_mut() },
            )?;
            let hit = pred == e.output;
            sc.correct += hit as usize;
            sc.valid_json += serde_json::from_str::<serde_json::Value>(&pred).is_ok() as usize;
            if let Some(t) = &table {
                let schema = edgelora::constrain::Schema::from_bytes(t)?;
                let mut s = edgelora::constrain::JsonState::new(&schema, u8::MAX);
                sc.schema_valid +=
                    (s.advance(&schema, pred.as_bytes()) && s.is_complete(&schema)) as usize;
            }
            if progress && (i + 1) % 50 == 0 && i + 1 < ex.len() {
                eprintln!("  {task}: {}/{} ({} correct)", i + 1, ex.len(), sc.correct);
            }
            if a.verbose && !a.json {
                println!(
                    "{}{} {i}: {:?} -> {pred:?}{}",
                    if all {
                        format!("[{task}] ")
                    } else {
                        String::new()
                    },
                    if hit { "✓" } else { "✗" },
                    e.input,
                    if hit {
                        String::new()
                    } else {
                        format!(" (gold {:?})", e.output)
                    }
                );
            }
            sc.predictions.push(pred);
        }
        sc.seconds = t.elapsed().as_secs_f64();
        Ok(sc)
    };

    if all {
        let mut scores = vec![];
        for (k, task) in TASKS.iter().enumerate() {
            eprintln!("eval [{}/{}] {task} ...", k + 1, TASKS.len());
            let sc = run_task(task, true)?;
            eprintln!(
                "eval [{}/{}] {task}: {}/{} = {:.1}% in {:.1} s",
                k + 1,
                TASKS.len(),
                sc.correct,
                sc.n,
                100.0 * sc.exact_match(),
                sc.seconds
            );
            scores.push((*task, sc));
        }
        let mean = scores.iter().map(|(_, s)| s.exact_match()).sum::<f64>() / scores.len() as f64;
        if a.json {
            let tasks: serde_json::Map<String, serde_json::Value> = scores
                .iter()
                .map(|(t, s)| {
                    (
                        t.to_string(),
                        serde_json::json!({
                            "correct": s.correct,
                            "n": s.n,
                            "exact_match": s.exact_match(),
                            "valid_json": s.valid_json,
                            "seconds": (s.seconds * 10.0).round() / 10.0,
                            "predictions": s.predictions,
                        }),
                    )
                })
                .collect();
            let v = serde_json::json!({
                "task": "all",
                "model": path.display().to_string(),
                "adapter": adapter_label,
                "adapters": adapter_list,
                "kernels": kernels,
                "tasks": tasks,
                "mean_exact_match": mean,
            });
            println!("{v}");
            return Ok(());
        }
        println!(
            "exact match on the held-out splits ({} on {}, {kernels} kernels):",
            adapter_label.as_deref().unwrap_or("base alone"),
            path.display()
        );
        println!(
            "  {:<10} {:>9} {:>7} {:>8}",
            "task", "correct", "EM", "time"
        );
        for (t, s) in &scores {
            println!(
                "  {t:<10} {:>9} {:>6.1}% {:>7.1}s",
                format!("{}/{}", s.correct, s.n),
                100.0 * s.exact_match(),
                s.seconds
            );
        }
        println!("  {:<10} {:>9} {:>6.1}%", "mean", "", 100.0 * mean);
        return Ok(());
    }

    let sc = run_task(&a.task, false)?;
    let (ok, n) = (sc.correct, sc.n);
    if a.json {
        let v = serde_json::json!({
            "task": a.task,
            "model": path.display().to_string(),
            "adapter": adapter_label,
            "adapters": adapter_list,
            "kernels": kernels,
            "correct": ok,
            "n": n,
            "exact_match": sc.exact_match(),
            "constrained": table.is_some() && !a.check_only,
            "valid_json": sc.valid_json,
            "schema_valid": table.as_ref().map(|_| sc.schema_valid),
            "predictions": sc.predictions,
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "task {}: exact match {ok}/{n} = {:.1}% ({} on {}, {kernels} kernels, {:.1} s)",
        a.task,
        100.0 * sc.exact_match(),
        adapter_label.as_deref().unwrap_or("base alone"),
        path.display(),
        sc.seconds
    );
    println!(
        "valid JSON {}/{n}{}{}",
        sc.valid_json,
        match &table {
            Some(_) => format!(", schema-valid {}/{n}", sc.schema_valid),
            None => String::new(),
        },
        match (&table, a.check_only) {
            (Some(_), false) => " (constrained)",
            (Some(_), true) => " (checked only, not constrained)",
            _ => "",
        },
    );
    Ok(())
}
