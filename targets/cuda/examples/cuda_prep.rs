//! Inputs for the GPU check (`scripts/check-cuda.sh prepare`), made where cargo runs:
//!
//! ```text
//! cuda_prep adapter BASE.gguf OUT.gguf all-f16-dora|qv-q8 SEED   random LoRA adapter for BASE
//! cuda_prep truncate BASE.gguf LAYERS OUT.gguf                 BASE with its first LAYERS layers
//! ```

use edgelora::quant::GgmlType;
use edgelora::Gguf;
use edgelora_cuda::testdata::{random_adapter, truncate_layers, AdapterSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: cuda_prep adapter BASE OUT all-f16-dora|qv-q8 SEED | cuda_prep truncate BASE LAYERS OUT";
    match a.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["adapter", base, out, kind, seed] => {
            let bytes = std::fs::read(base)?;
            let g = Gguf::parse(&bytes)?;
            let seed: u64 = seed.parse()?;
            let spec = match *kind {
                // Every linear, rank 8, F16, with DoRA row factors.
                "all-f16-dora" => AdapterSpec {
                    dora: true,
                    ..AdapterSpec::all_f16(8, seed)
                },
                // q and v only, rank 4, Q8_0 A and F32 B (the types llama.cpp's converter may write).
                "qv-q8" => AdapterSpec {
                    a_ty: GgmlType::Q8_0,
                    b_ty: GgmlType::F32,
                    targets: vec![0, 2],
                    rank: 4,
                    alpha: 8.0,
                    ..AdapterSpec::all_f16(4, seed)
                },
                other => return Err(format!("unknown adapter kind {other}; {usage}").into()),
            };
            let bytes = random_adapter(&g, &spec)?;
            std::fs::write(out, &bytes)?;
            println!("wrote {out}: {} bytes ({kind}, seed {seed})", bytes.len());
        }
        ["truncate", base, layers, out] => {
            let bytes = std::fs::read(base)?;
            let g = Gguf::parse(&bytes)?;
            let cut = truncate_layers(&g, layers.parse()?)?;
            std::fs::write(out, &cut)?;
            println!("wrote {out}: {} bytes (first {layers} layers)", cut.len());
        }
        _ => return Err(usage.into()),
    }
    Ok(())
}
