//! Serve requests for several tasks from one base model, each with its own adapter.
//!
//! ```text
//! cargo run --release -p edgelora --example swap_per_request --features std
//! ```
//!
//! The three tiny task adapters (`models/tiny/{intent,reply,normalize}/adapter.gguf`) are
//! parsed and bound once. A request then picks its adapter by building an [`AdapterSet`]: a
//! few pointers and scales on the stack, so a swap costs the same whatever the adapter size
//! (no weights are merged, copied or reloaded). The time printed for each swap is that.

use edgelora::lora::{Adapter, AdapterSet, BoundAdapter};
use edgelora::model::{Model, State};
use edgelora::sample::argmax;
use edgelora::tokenizer::Tokenizer;
use edgelora::Gguf;
use std::time::Instant;

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tiny");
const TASKS: [&str; 3] = ["intent", "reply", "normalize"];
const REQUESTS: [(&str, &str); 5] = [
    ("intent", "turn on the kitchen lights"),
    ("normalize", "twelve twenty in the afternoon"),
    ("reply", "please raise the shades in the bedroom"),
    ("intent", "please set the garage shades to 1 percent"),
    ("normalize", "twenty percent"),
];

// `pub`: tests/tests/examples.rs compiles this file as a module and runs it.
pub fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model_bytes = std::fs::read(format!("{TINY}/tiny-base.gguf"))?;
    let gguf = Gguf::parse(&model_bytes)?;
    let model: Model<'_> = Model::from_gguf(&gguf)?;
    let tok = Tokenizer::new_owned(&gguf)?;
    let cfg = *model.config();

    // Load and bind every adapter once. The bound adapters borrow the file bytes and their
    // slot tables, so those live in vectors that outlive the loop below.
    let files = TASKS
        .iter()
        .map(|t| std::fs::read(format!("{TINY}/{t}/adapter.gguf")))
        .collect::<Result<Vec<_>, _>>()?;
    let adapters = files
        .iter()
        .map(|f| Adapter::parse(f))
        .collect::<Result<Vec<_>, _>>()?;
    let mut slot_tables = vec![vec![None; Adapter::slots_len(&cfg)]; TASKS.len()];
    let mut bound: Vec<BoundAdapter<'_, '_>> = Vec::new();
    for (a, slots) in adapters.iter().zip(slot_tables.iter_mut()) {
        bound.push(a.bind(&gguf, &model, slots)?);
    }

    // One state reused by every request.
    let ctx = 128;
    let mut buf = vec![0f32; State::len_for(&cfg, ctx)];
    let mut state = State::new(&cfg, ctx, &mut buf)?;

    for (task, input) in REQUESTS {
        let Some(i) = TASKS.iter().position(|t| *t == task) else {
            continue;
        };
        let t0 = Instant::now();
        let set = AdapterSet::single(&bound[i], 1.0); // the swap
        let swap = t0.elapsed();

        let mut ids: Vec<u32> = tok.bos_id().into_iter().collect();
        ids.extend(tok.encode_vec(&format!("{task}: {input}\n"), true)?);
        state.clear();
        let mut logits = model.prefill_with(&ids, 0, &mut state, &set)?;
        let mut out = Vec::new();
        while ids.len() + out.len() < ctx {
            let next = argmax(logits);
            // Each task's answer is one line; stop at the newline or the end token.
            if Some(next) == tok.eos_id() || tok.decode_to_string(&[next])?.contains('\n') {
                break;
            }
            out.push(next);
            logits = model.forward_with(next, ids.len() + out.len() - 1, &mut state, &set)?;
        }
        println!(
            "[{task:9} swap {:>6.2} us] {input} -> {}",
            swap.as_secs_f64() * 1e6,
            tok.decode_to_string(&out)?
        );
    }
    Ok(())
}
