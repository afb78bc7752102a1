//! Open a model and a LoRA adapter, bind them, and greedily generate from a prompt.
//!
//! ```text
//! cargo run --release -p edgelora --example generate_with_adapter --features std -- \
//!     [MODEL.gguf] [ADAPTER.gguf] [PROMPT] [N_TOKENS]
//! ```
//!
//! Defaults: the committed tiny model `models/tiny/tiny-base.gguf`, its `intent` adapter, the
//! prompt `"intent: turn on the kitchen lights\n"` and 24 tokens.
//!
//! Everything is borrowed: the model and adapter tensors stay inside the file bytes (read into
//! a `Vec` here; on a microcontroller they are a slice of flash), and the KV cache lives in a
//! buffer sized by [`State::len_for`].

use edgelora::lora::{Adapter, AdapterSet};
use edgelora::model::{Model, State};
use edgelora::sample::argmax;
use edgelora::tokenizer::Tokenizer;
use edgelora::Gguf;

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tiny");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: String| args.get(i).cloned().unwrap_or(default);
    let model_path = arg(0, format!("{TINY}/tiny-base.gguf"));
    let adapter_path = arg(1, format!("{TINY}/intent/adapter.gguf"));
    let prompt = arg(2, "intent: turn on the kitchen lights\n".into());
    let n_tokens: usize = arg(3, "24".into()).parse()?;
    let text = generate(&model_path, &adapter_path, &prompt, n_tokens)?;
    print!("{prompt}");
    println!("{}", text.trim_end());
    Ok(())
}

/// Greedily generate up to `n_tokens` after `prompt` with the adapter at `adapter_path`
/// applied to the model at `model_path`; returns the generated text. (`pub`: run by
/// tests/tests/examples.rs.)
pub fn generate(
    model_path: &str,
    adapter_path: &str,
    prompt: &str,
    n_tokens: usize,
) -> Result<String, Box<dyn std::error::Error>> {
    // 1. Parse the model in place; tensors are views into `model_bytes`.
    let model_bytes = std::fs::read(model_path)?;
    let gguf = Gguf::parse(&model_bytes)?;
    let model: Model<'_> = Model::from_gguf(&gguf)?;
    let tok = Tokenizer::new_owned(&gguf)?;

    // 2. Parse the adapter and bind it to this model: `slots` is one entry per
    //    (layer, linear), filled with the adapter's A/B pairs. Binding checks shapes and the
    //    base fingerprint, so a wrong adapter is an error here, not garbage later.
    let adapter_bytes = std::fs::read(adapter_path)?;
    let adapter = Adapter::parse(&adapter_bytes)?;
    let mut slots = vec![None; Adapter::slots_len(model.config())];
    let bound = adapter.bind(&gguf, &model, &mut slots)?;
    let set = AdapterSet::single(&bound, 1.0);

    // 3. The prompt: BOS (if the vocabulary has one) + the text, special tokens parsed.
    let mut ids: Vec<u32> = tok.bos_id().into_iter().collect();
    ids.extend(tok.encode_vec(prompt, true)?);

    // 4. Caller-owned inference state for the prompt plus the tokens to generate.
    let ctx = (ids.len() + n_tokens).min(model.config().ctx_len);
    let mut buf = vec![0f32; State::len_for(model.config(), ctx)];
    let mut state = State::new(model.config(), ctx, &mut buf)?;

    // 5. Greedy decoding: prefill the prompt, then feed back the argmax until the end token.
    let mut logits = model.prefill_with(&ids, 0, &mut state, &set)?;
    let mut out = Vec::new();
    while out.len() < n_tokens && ids.len() + out.len() < ctx {
        let next = argmax(logits);
        if Some(next) == tok.eos_id() {
            break;
        }
        out.push(next);
        logits = model.forward_with(next, ids.len() + out.len() - 1, &mut state, &set)?;
    }

    Ok(tok.decode_to_string(&out)?)
}
