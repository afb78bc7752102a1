//! The GGUF reader and quantisers against files and values written by the Python `gguf`
//! package (fixtures from `tests/fixtures/gguf/gen_gguf_fixtures.py`).

use edgelora::format::gguf::{Gguf, Value};
use edgelora::kernels::reference as r;
use edgelora::quant::{self, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, GgmlType};
use serde_json::Value as J;

fn fixture(name: &str) -> Vec<u8> {
    let p = format!("{}/fixtures/gguf/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn jf64(v: &J) -> f64 {
    match v {
        J::String(s) if s == "inf" => f64::INFINITY,
        J::String(s) if s == "-inf" => f64::NEG_INFINITY,
        _ => v.as_f64().unwrap(),
    }
}

fn floats(v: &J) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| jf64(x) as f32)
        .collect()
}

/// Compare one parsed value with its JSON description; `ty` is the GGUF type name.
fn check_value(key: &str, ty: &str, got: &Value<'_>, want: &J, inner: Option<&str>) {
    assert_eq!(got.value_type().name(), ty, "{key}: type");
    match got {
        Value::F32(v) => {
            let w = jf64(want) as f32;
            assert_eq!(v.to_bits(), w.to_bits(), "{key}: {v} vs {w}");
        }
        Value::F64(v) => assert_eq!(v.to_bits(), jf64(want).to_bits(), "{key}"),
        Value::Bool(b) => assert_eq!(Some(*b), want.as_bool(), "{key}"),
        Value::Str(s) => assert_eq!(
            std::str::from_utf8(s).unwrap(),
            want.as_str().unwrap(),
            "{key}"
        ),
        Value::Array(a) => {
            let w = want.as_array().unwrap();
            assert_eq!(a.len(), w.len(), "{key}: array length");
            let et = a.elem_type().name();
            for (i, (g, w)) in a.iter().zip(w).enumerate() {
                if et == "array" {
                    check_value(&format!("{key}[{i}]"), "array", &g, w, None);
                    let inner_t = inner.unwrap();
                    let ga = g.as_array().unwrap();
                    assert_eq!(ga.elem_type().name(), inner_t);
                    for (j, (gi, wi)) in ga.iter().zip(w.as_array().unwrap()).enumerate() {
                        check_value(&format!("{key}[{i}][{j}]"), inner_t, &gi, wi, None);
                    }
                } else {
                    check_value(&format!("{key}[{i}]"), et, &g, w, None);
                }
            }
            // Random access agrees with iteration.
            if !a.is_empty() {
                assert_eq!(a.get(a.len() - 1), a.iter().last());
            }
            assert_eq!(a.get(a.len()), None);
        }
        other => {
            let i = other.as_int().unwrap();
            let w: i128 = if let Some(u) = want.as_u64() {
                u as i128
            } else {
                want.as_i64().unwrap() as i128
            };
            assert_eq!(i, w, "{key}");
        }
    }
}

fn check_file(name: &str) {
    let bytes = fixture(&format!("{name}.gguf"));
    let want: J = serde_json::from_slice(&fixture(&format!("{name}.json"))).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.version() as u64, want["version"].as_u64().unwrap());
    assert_eq!(g.alignment() as u64, want["alignment"].as_u64().unwrap());
    if let Some(off) = want.get("data_section_offset").and_then(|v| v.as_u64()) {
        assert_eq!(g.data_offset(), off);
    }
    let kvs = want["kv"].as_array().unwrap();
    assert_eq!(g.kv_count() as usize, kvs.len());
    for (kv, (k, v)) in kvs.iter().zip(g.metadata()) {
        assert_eq!(k, kv["key"].as_str().unwrap());
        check_value(
            k,
            kv["type"].as_str().unwrap(),
            &v,
            &kv["value"],
            kv.get("inner_elem_type").and_then(|t| t.as_str()),
        );
        assert_eq!(g.get(k), Some(v), "lookup by key {k}");
    }
    let ts = want["tensors"].as_array().unwrap();
    assert_eq!(g.tensor_count() as usize, ts.len());
    for (t, info) in ts.iter().zip(g.tensors()) {
        let name = t["name"].as_str().unwrap();
        assert_eq!(info.name, name);
        assert_eq!(
            info.ty.id() as u64,
            t["type_id"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(info.ty.name(), t["type"].as_str().unwrap(), "{name}");
        let dims: Vec<u64> = t["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(info.dims(), &dims[..], "{name}");
        assert_eq!(info.offset, t["offset"].as_u64().unwrap(), "{name}");
        assert_eq!(
            info.data,
            &hex(t["bytes_hex"].as_str().unwrap())[..],
            "{name}"
        );
        assert_eq!(g.tensor(name).unwrap(), info);
        // Dequantise the whole tensor row by row and compare bit for bit with gguf's numpy.
        let want_f = floats(&t["dequant_f32"]);
        let row_len = info.row_len() as usize;
        let mut got = vec![0f32; want_f.len()];
        let rb = info.ty.row_bytes(row_len as u64).unwrap() as usize;
        for (row, out) in info.data.chunks(rb).zip(got.chunks_mut(row_len)) {
            assert!(
                r::dequantize_row(info.ty, row, out),
                "{name}: type runnable"
            );
        }
        for (i, (a, b)) in got.iter().zip(&want_f).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{name}[{i}]: {a} vs {b}");
        }
    }
    assert!(g.tensor("no.such.tensor").is_err());
}

#[test]
fn all_value_and_tensor_types_match_gguf_py() {
    check_file("all_types");
}

#[test]
fn alignment_64_matches_gguf_py() {
    check_file("align64");
}

#[test]
fn version_2_is_read() {
    check_file("v2");
}

#[test]
fn typed_accessors() {
    let bytes = fixture("all_types.gguf");
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.get_u32("test.uint32.max").unwrap(), u32::MAX);
    assert_eq!(g.get_u32("test.uint8.max").unwrap(), 255);
    assert_eq!(g.get_u64("test.uint64.max").unwrap(), u64::MAX);
    assert_eq!(g.get_i64("test.int64.min").unwrap(), i64::MIN);
    assert_eq!(g.get_str("general.architecture").unwrap(), "fixture");
    assert!(g.get_bool("test.bool.true").unwrap());
    assert_eq!(g.get_f32("test.float32.one_and_half").unwrap(), 1.5);
    let e = g.get_u32("test.int32.min").unwrap_err();
    assert_eq!(e.kind(), edgelora::ErrorKind::BadValue);
    let e = g.get_u32("test.string.ascii").unwrap_err();
    assert_eq!(e.kind(), edgelora::ErrorKind::WrongType);
    assert!(e.to_string().contains("test.string.ascii"), "{e}");
    let e = g.get_u32("no.such.key").unwrap_err();
    assert_eq!(e.kind(), edgelora::ErrorKind::MissingKey);
    assert!(e.to_string().contains("no.such.key"));
    let a = g.get_array("test.array.string").unwrap();
    let strs: Vec<&str> = a.iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(strs, ["a", "", "日本語", "🙂", "two words"]);
    assert_eq!(
        g.get_array("test.array.float32").unwrap().f32_at(2),
        Some(1.5)
    );
}

fn quant_into(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; ty.row_bytes(x.len() as u64).unwrap() as usize];
    match ty {
        GgmlType::Q8_0 => {
            r::quantize_row_q8_0(x, quant::cast_blocks_mut::<BlockQ8_0>(&mut out).unwrap())
        }
        GgmlType::Q4_0 => {
            r::quantize_row_q4_0(x, quant::cast_blocks_mut::<BlockQ4_0>(&mut out).unwrap())
        }
        GgmlType::Q4_1 => {
            r::quantize_row_q4_1(x, quant::cast_blocks_mut::<BlockQ4_1>(&mut out).unwrap())
        }
        GgmlType::Q8_1 => {
            r::quantize_row_q8_1(x, quant::cast_blocks_mut::<BlockQ8_1>(&mut out).unwrap())
        }
        _ => unreachable!(),
    }
    out
}

#[test]
fn quantise_and_dequantise_match_gguf_py() {
    let q: J = serde_json::from_slice(&fixture("quant_ref.json")).unwrap();
    let mut n = 0;
    for (tname, t) in q["types"].as_object().unwrap() {
        let ty = GgmlType::from_name(tname).unwrap();
        for c in t["cases"].as_array().unwrap() {
            let name = c["name"].as_str().unwrap();
            let x = floats(&c["input_f32"]);
            let want = hex(c["bytes_hex"].as_str().unwrap());
            assert_eq!(quant_into(ty, &x), want, "{tname} {name}: quantised bytes");
            let mut deq = vec![0f32; x.len()];
            assert!(r::dequantize_row(ty, &want, &mut deq));
            for (i, (a, b)) in deq.iter().zip(floats(&c["dequant_f32"])).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{tname} {name}[{i}]");
            }
            n += 1;
        }
    }
    println!("{n} quantisation cases match gguf-py bit for bit");
    assert!(n >= 30);
}

#[test]
fn dots_match_float64_reference() {
    let q: J = serde_json::from_slice(&fixture("quant_ref.json")).unwrap();
    for d in q["dot"].as_array().unwrap() {
        let name = d["name"].as_str().unwrap();
        let ty = GgmlType::from_name(d["weight_type"].as_str().unwrap()).unwrap();
        let w = hex(d["weight_bytes_hex"].as_str().unwrap());
        let x = floats(&d["activation_f32"]);
        let exact = d["dot_f64"].as_f64().unwrap();
        let got = r::dot_row_f32(ty, &w, &x) as f64;
        let mag: f64 = {
            let mut deq = vec![0f32; x.len()];
            r::dequantize_row(ty, &w, &mut deq);
            deq.iter().zip(&x).map(|(a, b)| (a * b).abs() as f64).sum()
        };
        assert!(
            (got - exact).abs() <= 1e-6 * mag.max(1.0),
            "{name}: {got} vs {exact}"
        );
        // Activation quantised to Q8_0 as ggml does: bytes match gguf-py, and the integer
        // dot matches the exact dot of the dequantised operands.
        let xq = quant_into(GgmlType::Q8_0, &x);
        assert_eq!(
            xq,
            hex(d["activation_q8_0_hex"].as_str().unwrap()),
            "{name}: q8_0 activation"
        );
        let exact_q = d["dot_f64_act_q8_0"].as_f64().unwrap();
        let yq = quant::cast_blocks::<BlockQ8_0>(&xq).unwrap();
        let got_q = match ty {
            GgmlType::Q4_0 => r::vec_dot_q4_0_q8_0(quant::cast_blocks(&w).unwrap(), yq) as f64,
            GgmlType::Q8_0 => r::vec_dot_q8_0_q8_0(quant::cast_blocks(&w).unwrap(), yq) as f64,
            GgmlType::Q4_1 => {
                // Q4_1 pairs with Q8_1, whose d and qs equal Q8_0's for the same input.
                let x1 = quant_into(GgmlType::Q8_1, &x);
                let b1 = quant::cast_blocks::<BlockQ8_1>(&x1).unwrap();
                for (a, b) in b1.iter().zip(yq) {
                    assert_eq!((a.d, a.qs), (b.d, b.qs), "{name}: q8_1 vs q8_0 layout");
                    let sum: i32 = a.qs.iter().map(|&q| q as i8 as i32).sum();
                    let s = quant::f16_le(a.s);
                    let want_s = half::f16::from_f32(sum as f32 * (quant::f16_le(a.d))).to_f32();
                    assert!(
                        (s - want_s).abs() <= want_s.abs() * 2e-3 + 1e-6,
                        "{name}: q8_1 s"
                    );
                }
                r::vec_dot_q4_1_q8_1(quant::cast_blocks(&w).unwrap(), b1) as f64
            }
            _ => continue,
        };
        assert!(
            (got_q - exact_q).abs() <= 2e-3 * mag.max(1.0),
            "{name}: {got_q} vs {exact_q}"
        );
    }
}
