//! The PEFT reader: `SafeTensors::parse` and `convert_peft(adapter_config.json,
//! adapter_model.safetensors, base)` against the tiny model. The input is
//!
//! ```text
//! byte 0       options: bits 0-1 storage type (F32, F16, Q8_0, Q4_0 = unsupported, falls
//!              back), bits 2-3 base variant (Q8_0, Q4_1, F32)
//! bytes 1..3   u16 LE length n of the config JSON
//! n bytes      adapter_config.json
//! rest         adapter_model.safetensors
//! ```
//!
//! Oracles besides "no panic": every parsed safetensors tensor has `numel * dtype size` bytes
//! and is found by name; whatever the converter produces parses as an adapter with the pairs
//! it reported and binds to the base it was converted for.
#![no_main]

#[path = "common.rs"]
mod common;

use common::Recipe;
use edgelora::format::safetensors::SafeTensors;
use edgelora::lora::convert::{convert_peft, ConvertOptions};
use edgelora::lora::Adapter;
use edgelora::quant::GgmlType;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = Recipe(data);
    let opt = r.u8();
    let n = r.u16() as usize;
    let config = r.take(n);
    let st = r.rest();

    if let Ok(s) = SafeTensors::parse(st) {
        for t in &s.tensors {
            assert_eq!(t.data.len(), t.numel() * t.dtype.size());
            assert_eq!(t.to_f32().len(), t.numel());
            assert_eq!(
                s.get(&t.name).map(|x| x.data.as_ptr()),
                Some(t.data.as_ptr())
            );
        }
        std::hint::black_box(s.metadata.len());
    }

    let dtype = [GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0][(opt & 3) as usize];
    let base = common::tiny_variant((opt >> 2) & 3);
    let opts = ConvertOptions { dtype, task: None };
    let Ok((bytes, report)) = convert_peft(config, st, &base.gguf, &opts) else {
        return;
    };
    let a = Adapter::parse(&bytes).expect("converter output parses as an adapter");
    assert_eq!(a.n_pairs(), report.pairs.len());
    let mut slots = vec![None; Adapter::slots_len(base.model.config())];
    a.bind(&base.gguf, &base.model, &mut slots)
        .expect("converter output binds to its base");
});
