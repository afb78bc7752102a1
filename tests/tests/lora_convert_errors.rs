//! The PEFT converter refuses what it cannot represent, naming the field or tensor.

use edgelora::lora::convert::{convert_peft, ConvertOptions};
use edgelora::{ErrorKind as K, Gguf};
use serde_json::{json, Value as J};

fn fx(p: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(p)
}

#[test]
fn refusals_name_the_field() {
    let base_bytes = std::fs::read(fx("tiny/tiny-f32.gguf")).unwrap();
    let base = Gguf::parse(&base_bytes).unwrap();
    let cfg: J =
        serde_json::from_slice(&std::fs::read(fx("lora/tiny/plain/adapter_config.json")).unwrap())
            .unwrap();
    let st = std::fs::read(fx("lora/tiny/plain/adapter_model.safetensors")).unwrap();
    let opts = ConvertOptions::default();
    // The untouched config converts.
    convert_peft(&serde_json::to_vec(&cfg).unwrap(), &st, &base, &opts).unwrap();
    let cases: Vec<(&str, J)> = vec![
        ("bias", json!("all")),
        ("init_lora_weights", json!("pissa")),
        ("init_lora_weights", json!("olora")),
        ("peft_type", json!("IA3")),
        ("use_dora", json!(true)),
        ("modules_to_save", json!(["embed_tokens"])),
        ("trainable_token_indices", json!([1, 2])),
        ("layer_replication", json!([[0, 1]])),
        ("rank_pattern", json!({"^model.*v_proj$": 4})),
        ("r", json!(4)),
    ];
    for (field, value) in cases {
        let mut c = cfg.clone();
        c[field] = value.clone();
        let e = convert_peft(&serde_json::to_vec(&c).unwrap(), &st, &base, &opts).unwrap_err();
        let msg = e.to_string();
        println!("{field}={value}: {msg}");
        let names_it =
            msg.contains(field) || e.kind() == K::ShapeMismatch || e.kind() == K::MissingTensor;
        assert!(names_it, "{field}: {msg}");
    }
    // Not JSON; truncated safetensors; a base with other shapes.
    assert!(convert_peft(b"{", &st, &base, &opts).is_err());
    assert_eq!(
        convert_peft(
            &serde_json::to_vec(&cfg).unwrap(),
            &st[..st.len() / 2],
            &base,
            &opts
        )
        .unwrap_err()
        .kind(),
        K::OutOfBounds
    );
    let other = std::fs::read(fx("gguf/all_types.gguf")).unwrap();
    assert!(convert_peft(
        &serde_json::to_vec(&cfg).unwrap(),
        &st,
        &Gguf::parse(&other).unwrap(),
        &opts
    )
    .is_err());
}
