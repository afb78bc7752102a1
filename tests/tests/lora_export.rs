//! GGUF LoRA -> PEFT export (`edgelora::lora::export`, `edgelora adapter export`): round trips
//! PEFT -> GGUF -> PEFT on the committed task adapters and the PEFT fixtures.
//!
//! - Tensors: converted to an F32 GGUF and exported back, every A and B equals the original
//!   exactly (F32 and F16 originals alike; rsLoRA's folded scale is checked through the
//!   logits instead); through an F16 GGUF, within f16 rounding. The config's r, lora_alpha
//!   and target_modules give PEFT's scale back.
//! - PEFT itself: the CLI's export of each tiny adapter, loaded with `PeftModel.from_pretrained`
//!   (python from `.venv/` or `python3`), gives the original adapter's logits within 1e-4 of
//!   the largest logit. Printed as SKIPPED when python/PEFT or the release CLI binary is absent.
//! - Qwen2, Qwen3 and Gemma 3 (NEOX rope) adapters export the same tensors with or without
//!   their base; llama q/k without the base is refused with an error asking for `--base`.
//! - DoRA files are refused with an error naming the `.dora_scale` tensor.

use edgelora::error::ErrorKind;
use edgelora::format::safetensors::SafeTensors;
use edgelora::lora::convert::{convert_peft, ConvertOptions};
use edgelora::lora::export::{export_peft, ExportOptions};
use edgelora::lora::Adapter;
use edgelora::quant::GgmlType;
use edgelora::Gguf;
use serde_json::Value as J;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// (PEFT dir, base GGUF) of every adapter the round trip covers that is present here.
fn cases() -> Vec<(PathBuf, PathBuf)> {
    let r = root();
    let tiny = r.join("models/tiny/tiny-base.gguf");
    let fx_base = r.join("tests/fixtures/tiny/tiny-f32.gguf");
    let smol = r.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut v = vec![];
    for t in ["intent", "reply", "normalize", "multi"] {
        let d = r.join("models/tiny").join(t);
        if d.join("adapter_model.safetensors").exists() {
            v.push((d, tiny.clone()));
        }
    }
    for f in ["plain", "rslora", "qv", "head"] {
        v.push((r.join("tests/fixtures/lora/tiny").join(f), fx_base.clone()));
    }
    // NEOX-rope architectures (no row permutation), from the transformers-built tiny bases
    for arch in ["qwen2", "qwen3", "gemma3"] {
        let d = r.join("tests/fixtures/lora/arch").join(arch);
        for f in ["plain", "rslora"] {
            v.push((d.join(f), d.join(format!("tiny-{arch}.gguf"))));
        }
    }
    if smol.exists() {
        for t in ["intent", "reply", "normalize", "multi"] {
            let d = r.join("models/smollm2").join(t);
            if d.join("adapter_model.safetensors").exists() {
                v.push((d, smol.clone()));
            }
        }
    } else {
        println!(
            "SKIPPED: SmolLM2 adapters: {} is absent (`edgelora fetch smollm2`)",
            smol.display()
        );
    }
    v
}

fn short(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

#[test]
fn peft_gguf_peft_round_trip_keeps_tensors_and_scale() {
    for (dir, base_path) in cases() {
        let cfg_bytes = std::fs::read(dir.join("adapter_config.json")).unwrap();
        let st_bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
        let cfg: J = serde_json::from_slice(&cfg_bytes).unwrap();
        let orig = SafeTensors::parse(&st_bytes).unwrap();
        let base_bytes = std::fs::read(&base_path).unwrap();
        let base = Gguf::parse(&base_bytes).unwrap();
        let rslora = cfg["use_rslora"].as_bool().unwrap_or(false);
        for dtype in [GgmlType::F32, GgmlType::F16] {
            let (gguf, _) = convert_peft(
                &cfg_bytes,
                &st_bytes,
                &base,
                &ConvertOptions { dtype, task: None },
            )
            .unwrap_or_else(|e| panic!("{}: convert: {e}", short(&dir)));
            let ad = Adapter::parse(&gguf).unwrap();
            let ex = export_peft(&ad, Some(&base), &ExportOptions::default())
                .unwrap_or_else(|e| panic!("{}: export: {e}", short(&dir)));
            // Without the base: the same tensors where the rope needs nothing (NEOX), else
            // the error that asks for it.
            match export_peft(&ad, None, &ExportOptions::default()) {
                Ok(no_base) => assert_eq!(no_base.tensors, ex.tensors, "{}", short(&dir)),
                Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{}", short(&dir)),
            }
            assert_eq!(
                ex.tensors.len(),
                orig.tensors.len(),
                "{}: tensor count",
                short(&dir)
            );
            let mut worst = 0f32;
            for t in &ex.tensors {
                let o = orig.get(&t.name).unwrap_or_else(|| {
                    panic!("{}: exported {} not in the original", short(&dir), t.name)
                });
                assert_eq!(
                    o.shape,
                    t.shape.to_vec(),
                    "{}: shape of {}",
                    short(&dir),
                    t.name
                );
                if rslora && t.name.contains("lora_B") {
                    continue; // B holds the rsLoRA scale folded in: the logits check covers it
                }
                for (x, y) in o.to_f32().iter().zip(&t.data) {
                    let err = (x - y).abs();
                    // F32 GGUF: bit-exact; F16 GGUF: one f16 rounding (subnormals included)
                    let tol = if dtype == GgmlType::F32
                        && o.dtype != edgelora::format::safetensors::Dtype::BF16
                    {
                        0.0
                    } else {
                        x.abs() * (1.0 / 2048.0) + 6e-8
                    };
                    assert!(
                        err <= tol,
                        "{} {:?}: {} differs: {x} vs {y}",
                        short(&dir),
                        dtype,
                        t.name
                    );
                    worst = worst.max(err);
                }
            }
            // PEFT's scale alpha / r per module equals the original's (no rsLoRA/patterns here
            // but rslora, whose scale moved into B).
            let c = &ex.config;
            if !rslora {
                assert_eq!(c["r"], cfg["r"], "{}: r", short(&dir));
                assert_eq!(
                    c["lora_alpha"].as_f64(),
                    cfg["lora_alpha"].as_f64(),
                    "{}: lora_alpha",
                    short(&dir)
                );
            }
            let mut want: Vec<String> = match &cfg["target_modules"] {
                J::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
                J::String(s) => vec![s.clone()],
                _ => vec![],
            };
            want.sort();
            // Short names, or exact module paths when not every layer is adapted (the qv
            // fixture adapts one layer): their projections are the original's targets.
            let mut got: Vec<String> = c["target_modules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().rsplit('.').next().unwrap().to_string())
                .collect();
            got.sort();
            got.dedup();
            assert_eq!(got, want, "{}: target_modules", short(&dir));
            assert_eq!(
                c["modules_to_save"].is_null(),
                cfg["modules_to_save"].is_null(),
                "{}: modules_to_save",
                short(&dir)
            );
            println!(
                "{} via {:?} GGUF: {} tensors, worst |diff| {worst:.2e}",
                short(&dir),
                dtype,
                ex.tensors.len()
            );
        }
    }
}

#[test]
fn dora_is_refused_with_the_tensor_named() {
    let r = root();
    let d = r.join("tests/fixtures/lora/tiny/dora");
    let base_bytes = std::fs::read(r.join("tests/fixtures/tiny/tiny-f32.gguf")).unwrap();
    let base = Gguf::parse(&base_bytes).unwrap();
    let (gguf, _) = convert_peft(
        &std::fs::read(d.join("adapter_config.json")).unwrap(),
        &std::fs::read(d.join("adapter_model.safetensors")).unwrap(),
        &base,
        &ConvertOptions {
            dtype: GgmlType::F32,
            task: None,
        },
    )
    .unwrap();
    let ad = Adapter::parse(&gguf).unwrap();
    let e = export_peft(&ad, Some(&base), &ExportOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadValue);
    let msg = e.to_string();
    assert!(
        msg.contains("dora_scale") && msg.contains("magnitude"),
        "{msg}"
    );
}

#[test]
fn llama_q_without_base_asks_for_it() {
    let bytes = std::fs::read(root().join("models/tiny/intent/adapter.gguf")).unwrap();
    let ad = Adapter::parse(&bytes).unwrap();
    let e = export_peft(&ad, None, &ExportOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("--base"), "{e}");
}

const CHECK_PY: &str = r#"
import json, sys, tempfile
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM
from peft import PeftModel

def load(gguf):
    with tempfile.TemporaryDirectory() as td:
        (Path(td) / Path(gguf).name).symlink_to(Path(gguf).resolve())
        m = AutoModelForCausalLM.from_pretrained(td, gguf_file=Path(gguf).name, dtype=torch.float32)
    return m.eval()

out = []
for base, orig, exported in json.loads(sys.argv[1]):
    ids = torch.tensor([[1] + [(7 * i + 3) % 200 + 2 for i in range(15)]])
    logits = []
    for d in (orig, exported):
        m = PeftModel.from_pretrained(load(base), d).eval()
        with torch.no_grad():
            logits.append(m(input_ids=ids).logits[0].float())
    rel = float((logits[0] - logits[1]).abs().max() / logits[0].abs().max())
    out.append({"orig": orig, "rel": rel})
print("RESULT " + json.dumps(out))
"#;

fn python() -> Option<PathBuf> {
    let venv = root().join(".venv/bin/python");
    let py = if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    };
    let ok = Command::new(&py)
        .args(["-c", "import peft, transformers, torch, gguf"])
        .output()
        .ok()?
        .status
        .success();
    ok.then_some(py)
}

#[test]
fn exported_adapters_give_peft_the_same_logits() {
    let Some(py) = python() else {
        println!("SKIPPED: no python with peft, transformers, torch and gguf (.venv or python3)");
        return;
    };
    let cli = root().join("target/release/edgelora");
    if !cli.exists() {
        println!(
            "SKIPPED: {} is absent (cargo build --release -p edgelora-cli)",
            cli.display()
        );
        return;
    }
    let tmp = std::env::temp_dir().join(format!("edgelora-lora-export-{}", std::process::id()));
    let mut jobs = vec![];
    for (dir, base) in cases() {
        // PEFT on the tiny llama bases only: SmolLM2 in transformers is minutes per load
        // here; the other architectures' tensors are checked above
        let b = base.to_string_lossy();
        if b.contains("SmolLM2") || b.contains("lora/arch") {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let parent = dir
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let work = tmp.join(format!("{parent}-{name}"));
        std::fs::create_dir_all(&work).unwrap();
        let gguf = work.join("adapter.gguf");
        let out = work.join("peft");
        for args in [
            vec![
                "adapter".to_string(),
                "convert".into(),
                dir.display().to_string(),
                "--base".into(),
                base.display().to_string(),
                "--dtype".into(),
                "f32".into(),
                "-o".into(),
                gguf.display().to_string(),
            ],
            vec![
                "adapter".to_string(),
                "export".into(),
                gguf.display().to_string(),
                "--to".into(),
                "peft".into(),
                out.display().to_string(),
                "--base".into(),
                base.display().to_string(),
            ],
        ] {
            let o = Command::new(&cli).args(&args).output().unwrap();
            assert!(
                o.status.success(),
                "edgelora {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        jobs.push(serde_json::json!([base, dir, out]));
    }
    let o = Command::new(&py)
        .args(["-c", CHECK_PY, &J::Array(jobs).to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "PEFT check failed: {stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .expect("RESULT line");
    let res: J = serde_json::from_str(line).unwrap();
    for r in res.as_array().unwrap() {
        let rel = r["rel"].as_f64().unwrap();
        println!(
            "PEFT logits, original vs exported {}: rel {rel:.2e}",
            r["orig"]
        );
        assert!(
            rel <= 1e-4,
            "{}: exported adapter's logits differ by {rel:e}",
            r["orig"]
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A minimal safetensors file (F32 tensors) for feeding an export back to the converter; the
/// CLI writes with the `safetensors` crate, which this test crate does not depend on.
fn safetensors_f32(tensors: &[edgelora::lora::export::PeftTensor]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = vec![];
    for t in tensors {
        let start = data.len();
        data.extend(t.data.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = J::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

#[test]
fn mixed_ranks_and_partial_layers_round_trip_gguf_peft_gguf() {
    use edgelora::format::gguf_write::{GgufWriter, OwnedValue};
    use edgelora::model::Model;
    let base_bytes = std::fs::read(root().join("tests/fixtures/tiny/tiny-f32.gguf")).unwrap();
    let base = Gguf::parse(&base_bytes).unwrap();
    let model: Box<Model> = Box::new(Model::from_gguf(&base).unwrap());
    // (layer, linear index, gguf name, rank): q (rope rows), v, down; layer 1 has no v.
    let pairs = [
        (0usize, 0usize, "attn_q", 4usize),
        (1, 0, "attn_q", 4),
        (0, 2, "attn_v", 2),
        (0, 6, "ffn_down", 4),
        (1, 6, "ffn_down", 8),
    ];
    let mut w = GgufWriter::new();
    w.set("general.architecture", OwnedValue::Str("llama".into()));
    w.set("general.type", OwnedValue::Str("adapter".into()));
    w.set("adapter.type", OwnedValue::Str("lora".into()));
    w.set("adapter.lora.alpha", OwnedValue::F32(8.0));
    let mut seed = 1u64;
    let mut rnd = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    };
    for (l, k, name, r) in pairs {
        let lin = model.layer(l).unwrap().linear(k);
        let (out_d, in_d) = (lin.rows(), lin.cols());
        let t = format!("blk.{l}.{name}.weight");
        let bytes = |x: Vec<f32>| x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        w.add_tensor(
            &format!("{t}.lora_a"),
            GgmlType::F32,
            &[in_d as u64, r as u64],
            bytes(rnd(r * in_d)),
        )
        .unwrap();
        w.add_tensor(
            &format!("{t}.lora_b"),
            GgmlType::F32,
            &[r as u64, out_d as u64],
            bytes(rnd(out_d * r)),
        )
        .unwrap();
    }
    let gguf = w.to_bytes();
    let ad = Adapter::parse(&gguf).unwrap();
    let ex = export_peft(&ad, Some(&base), &ExportOptions::default()).unwrap();
    let c = &ex.config;
    assert_eq!(c["r"], 4, "most common rank");
    assert_eq!(c["lora_alpha"], 8.0);
    assert_eq!(
        c["rank_pattern"],
        serde_json::json!({"model.layers.0.self_attn.v_proj": 2, "model.layers.1.mlp.down_proj": 8})
    );
    // not every layer has v: exact module paths
    assert_eq!(c["target_modules"].as_array().unwrap().len(), pairs.len());
    // back through the PEFT converter: every pair equals the original, q rows included
    let st = safetensors_f32(&ex.tensors);
    let cfg = serde_json::to_vec(c).unwrap();
    let (back, rep) = convert_peft(
        &cfg,
        &st,
        &base,
        &ConvertOptions {
            dtype: GgmlType::F32,
            task: None,
        },
    )
    .unwrap();
    let ad2 = Adapter::parse(&back).unwrap();
    assert_eq!(ad2.alpha(), 8.0);
    assert_eq!(ad2.n_pairs(), pairs.len());
    for (target, r, scale) in &rep.pairs {
        assert_eq!(*scale, 8.0 / *r as f32, "{target}: PEFT scale alpha / r");
    }
    let orig: std::collections::BTreeMap<_, _> = ad.pairs().collect();
    for (name, p2) in ad2.pairs() {
        let p1 = orig[name];
        assert_eq!(p1.a.data(), p2.a.data(), "{name} A");
        assert_eq!(p1.b.data(), p2.b.data(), "{name} B");
    }
}

const COMBINED_PY: &str = r#"
import json, sys, tempfile
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM
from peft import PeftModel

base, ids, dirs = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
out = {}
for d in dirs:
    with tempfile.TemporaryDirectory() as td:
        (Path(td) / Path(base).name).symlink_to(Path(base).resolve())
        m = AutoModelForCausalLM.from_pretrained(td, gguf_file=Path(base).name, dtype=torch.float32)
    m = PeftModel.from_pretrained(m.eval(), d).eval()
    with torch.no_grad():
        out[d] = m(input_ids=torch.tensor([ids])).logits[0].float().tolist()
print("RESULT " + json.dumps(out))
"#;

/// A combined adapter (`adapter combine`), exported to PEFT, gives in transformers + PEFT the
/// logits edgelora gives for it (reference kernels: f32 activations, as PyTorch): the file
/// edgelora writes is the adapter PEFT runs, for the exact method (`cat`), the re-factorised one
/// (`svd`) and a pruned one (`ties`).
#[test]
fn combined_adapter_exported_gives_peft_edgeloras_logits() {
    let Some(py) = python() else {
        println!("SKIPPED: no python with peft, transformers, torch and gguf (.venv or python3)");
        return;
    };
    let cli = root().join("target/release/edgelora");
    if !cli.exists() {
        println!(
            "SKIPPED: {} is absent (cargo build --release -p edgelora-cli)",
            cli.display()
        );
        return;
    }
    let r = root();
    let base = r.join("models/tiny/tiny-base.gguf");
    let ids: Vec<u32> = std::iter::once(1)
        .chain((0..15).map(|i| (7 * i + 3) % 200 + 2))
        .collect();
    let ids_s: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let tmp = std::env::temp_dir().join(format!("edgelora-combined-export-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let run = |args: &[String]| -> Vec<u8> {
        let o = Command::new(&cli).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "edgelora {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    };
    let mut ours = vec![];
    let mut dirs = vec![];
    for method in ["cat", "svd", "ties"] {
        let gguf = tmp.join(format!("{method}.gguf"));
        let dir = tmp.join(format!("{method}-peft"));
        let mut args: Vec<String> = vec![
            "adapter".into(),
            "combine".into(),
            format!(
                "{}:0.5",
                r.join("models/tiny/intent/adapter.gguf").display()
            ),
            format!("{}:0.7", r.join("models/tiny/reply/adapter.gguf").display()),
            "--method".into(),
            method.into(),
            "--dtype".into(),
            "f32".into(),
            "-o".into(),
            gguf.display().to_string(),
        ];
        if method == "ties" {
            args.extend(["--density".into(), "0.5".into()]);
        }
        run(&args);
        run(&[
            "adapter".into(),
            "export".into(),
            gguf.display().to_string(),
            "--to".into(),
            "peft".into(),
            dir.display().to_string(),
            "--base".into(),
            base.display().to_string(),
        ]);
        let j: J = serde_json::from_slice(&run(&[
            "logits".into(),
            "-m".into(),
            base.display().to_string(),
            "--tokens".into(),
            ids_s.join(","),
            "--adapter".into(),
            gguf.display().to_string(),
            "--reference".into(),
            "--cache-type".into(),
            "f32".into(),
            "--top".into(),
            "5".into(),
            "--json".into(),
        ]))
        .unwrap();
        ours.push((method, j));
        dirs.push(dir.display().to_string());
    }
    let o = Command::new(&py)
        .args([
            "-c",
            COMBINED_PY,
            &base.display().to_string(),
            &serde_json::to_string(&ids).unwrap(),
            &serde_json::to_string(&dirs).unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "PEFT run failed: {stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .expect("RESULT line");
    let peft: J = serde_json::from_str(line).unwrap();
    for ((method, j), dir) in ours.iter().zip(&dirs) {
        let theirs = peft[dir.as_str()].as_array().unwrap();
        let (mut worst, mut top_max, mut top1) = (0f64, 0f64, 0);
        let positions = j["positions"].as_array().unwrap();
        for (p, row) in positions.iter().enumerate() {
            let t = theirs[p].as_array().unwrap();
            let tv: Vec<f64> = t.iter().map(|v| v.as_f64().unwrap()).collect();
            let hf_top = (0..tv.len())
                .max_by(|&a, &b| tv[a].total_cmp(&tv[b]))
                .unwrap();
            let top_ids = row["top_ids"].as_array().unwrap();
            top1 += usize::from(top_ids[0].as_u64().unwrap() as usize == hf_top);
            for (id, l) in top_ids.iter().zip(row["top_logits"].as_array().unwrap()) {
                let (id, l) = (id.as_u64().unwrap() as usize, l.as_f64().unwrap());
                worst = worst.max((l - tv[id]).abs());
                top_max = top_max.max(tv[id].abs());
            }
        }
        println!(
            "combine {method} -> PEFT: top-1 {top1}/{} positions, max |dlogit| on edgelora's \
             top-5 {worst:.2e} (largest logit {top_max:.2})",
            positions.len()
        );
        assert_eq!(top1, positions.len(), "{method}: top-1 differs from PEFT's");
        assert!(
            worst <= 1e-4 * top_max.max(1.0),
            "{method}: logits differ from PEFT's by {worst:e}"
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
