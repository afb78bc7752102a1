//! Receive an adapter over a byte stream (radio, UART, BLE) in small chunks, check it, and
//! only then make it active.
//!
//! ```text
//! cargo run --release -p edgelora --example stream_adapter --features std
//! ```
//!
//! The sender prefixes the adapter GGUF with a 24-byte `ELAS` frame header
//! ([`frame_header`]: magic, version, length, CRC-32 of the payload, CRC-32 of the header).
//! The device feeds whatever chunks arrive to a [`StreamLoader`], which writes them into a
//! caller buffer and checks the GGUF header as soon as it is complete;
//! [`StreamLoader::finish`] verifies the CRC and the whole adapter. A corrupted transfer is
//! rejected there and the adapter that was active keeps serving: the swap happens only after
//! a payload has passed every check.

use edgelora::lora::stream::{frame_header, StreamLoader};
use edgelora::lora::{Adapter, AdapterSet};
use edgelora::model::{Model, State};
use edgelora::sample::argmax;
use edgelora::tokenizer::Tokenizer;
use edgelora::{Error, Gguf};

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tiny");
/// What one radio packet might carry.
const CHUNK: usize = 64;

/// Feed `wire` to a loader over `buf` in `CHUNK`-byte pieces; return the verified payload.
fn receive<'b>(buf: &'b mut [u8], wire: &[u8]) -> Result<&'b [u8], Error> {
    let mut loader = StreamLoader::new(buf);
    for chunk in wire.chunks(CHUNK) {
        loader.push(chunk)?;
    }
    loader.finish()
}

/// Greedy answer to one `task: input` line, up to the newline or end token.
fn answer(
    model: &Model<'_>,
    tok: &Tokenizer<'_, Vec<u32>>,
    state: &mut State<'_>,
    set: &AdapterSet<'_, '_, '_>,
    prompt: &str,
) -> Result<String, Error> {
    let mut ids: Vec<u32> = tok.bos_id().into_iter().collect();
    ids.extend(tok.encode_vec(prompt, true)?);
    state.clear();
    let mut logits = model.prefill_with(&ids, 0, state, set)?;
    let mut out = Vec::new();
    while out.len() < 48 {
        let next = argmax(logits);
        if Some(next) == tok.eos_id() || tok.decode_to_string(&[next])?.contains('\n') {
            break;
        }
        out.push(next);
        logits = model.forward_with(next, ids.len() + out.len() - 1, state, set)?;
    }
    tok.decode_to_string(&out)
}

// `pub`: tests/tests/examples.rs compiles this file as a module and runs it.
pub fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model_bytes = std::fs::read(format!("{TINY}/tiny-base.gguf"))?;
    let gguf = Gguf::parse(&model_bytes)?;
    let model: Model<'_> = Model::from_gguf(&gguf)?;
    let tok = Tokenizer::new_owned(&gguf)?;
    let cfg = *model.config();
    let mut buf = vec![0f32; State::len_for(&cfg, 128)];
    let mut state = State::new(&cfg, 128, &mut buf)?;

    // The adapter active before the update: `intent`.
    let intent_bytes = std::fs::read(format!("{TINY}/intent/adapter.gguf"))?;
    let intent = Adapter::parse(&intent_bytes)?;
    let mut intent_slots = vec![None; Adapter::slots_len(&cfg)];
    let intent = intent.bind(&gguf, &model, &mut intent_slots)?;
    let active = AdapterSet::single(&intent, 1.0);
    let req = "intent: turn on the kitchen lights\n";
    println!(
        "active intent: {}",
        answer(&model, &tok, &mut state, &active, req)?
    );

    // The sender's side: frame header + adapter GGUF (`reply`).
    let payload = std::fs::read(format!("{TINY}/reply/adapter.gguf"))?;
    let mut wire = frame_header(&payload).to_vec();
    wire.extend_from_slice(&payload);
    // The receive buffer bounds the adapter size; on a device it is a static array.
    let mut rx = vec![0u8; payload.len()];

    // 1. A transfer with one flipped bit in the tensor data: the CRC check refuses it.
    let mut corrupt = wire.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x01;
    match receive(&mut rx, &corrupt) {
        Ok(_) => return Err("a corrupted adapter was accepted".into()),
        Err(e) => println!("corrupted stream rejected: {e}"),
    }
    println!(
        "still intent: {}",
        answer(&model, &tok, &mut state, &active, req)?
    );

    // 2. A clean transfer: verified, parsed, bound, and only then swapped in.
    let received = receive(&mut rx, &wire)?;
    println!(
        "received {} bytes in {CHUNK}-byte chunks, CRC ok",
        received.len()
    );
    let reply = Adapter::parse(received)?;
    let mut reply_slots = vec![None; Adapter::slots_len(&cfg)];
    let reply = reply.bind(&gguf, &model, &mut reply_slots)?;
    let active = AdapterSet::single(&reply, 1.0);
    let req = "reply: please raise the shades in the bedroom\n";
    println!(
        "active reply: {}",
        answer(&model, &tok, &mut state, &active, req)?
    );
    Ok(())
}
