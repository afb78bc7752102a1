//! The core's examples (`core/examples/*.rs`) run as tests: each file is compiled into this
//! test as a module and its entry point called, so the test always runs the current source
//! (no stale binaries from an earlier `cargo build --examples`, no nested cargo run) and the
//! examples' `TINY` path (`CARGO_MANIFEST_DIR/../models/tiny`) resolves here as there.
#![allow(dead_code)] // each example's `main` is unused when it is a module

#[path = "../../core/examples/generate_with_adapter.rs"]
mod generate_with_adapter;
#[path = "../../core/examples/stream_adapter.rs"]
mod stream_adapter;
#[path = "../../core/examples/swap_per_request.rs"]
mod swap_per_request;

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tiny");

#[test]
fn generate_with_adapter_answers_the_intent() {
    let text = generate_with_adapter::generate(
        &format!("{TINY}/tiny-base.gguf"),
        &format!("{TINY}/intent/adapter.gguf"),
        "intent: turn on the kitchen lights\n",
        24,
    )
    .unwrap();
    assert!(
        text.starts_with(r#"{"action":"on","device":"light","room":"kitchen"}"#),
        "{text:?}"
    );
}

#[test]
fn swap_per_request_runs() {
    swap_per_request::main().unwrap();
}

/// Fails if the corrupted stream were accepted or the clean one refused.
#[test]
fn stream_adapter_rejects_corruption_and_accepts_clean() {
    stream_adapter::main().unwrap();
}
