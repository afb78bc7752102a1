//! Python bindings for edgelora: `import edgelora`.
//!
//! ```python
//! import edgelora
//! model = edgelora.Model.open("models/tiny/tiny-base.gguf")
//! intent = edgelora.Adapter.open("models/tiny/intent/adapter.gguf")
//! print(model.generate("book a table for two", adapters=[(intent, 1.0)], max_tokens=16))
//! logits = model.logits(model.tokenize("hello"), adapters=[(intent, 0.5)])  # (n, n_vocab)
//! ```
//!
//! A [`Model`] and an [`Adapter`] own their file's bytes and the core's views of them
//! (`store`); every call takes the adapters it runs with, binds each to the model once
//! (cached), and runs on a fresh state with the GIL released (`run`), so one model can
//! serve several Python threads at once. Errors are Python exceptions carrying the core's
//! message: `FileNotFoundError` for a missing file, `ValueError` for everything about the
//! inputs (a file that is not a model, an adapter for another base, a token id outside the
//! vocabulary, a bad scale). Nothing here panics on input; pyo3 would turn a panic into a
//! Python exception rather than unwind into the interpreter.

use edgelora_core::lora::convert::{convert_peft, ConvertOptions};
use edgelora_core::model::KernelMode;
use edgelora_core::quant::GgmlType;
use edgelora_core::sample::SamplerConfig;
use pyo3::exceptions::{PyFileNotFoundError, PyIsADirectoryError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyByteArray;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod chat;
mod run;
mod store;

use store::{AdapterFile, Bytes, ModelFile};

/// Largest |scale| accepted for an adapter: far past any useful strength (1 is the trained
/// one), low enough to catch a scale given in the wrong unit.
const MAX_SCALE: f64 = 16.0;

/// Model aliases, as `edgelora fetch` names them, and their files under `models/` (the CLI's
/// table lives in its binary crate, `targets/host/src/fetch.rs`, which a library cannot use).
const ALIASES: &[(&str, &str)] = &[
    ("tiny", "tiny/tiny-base.gguf"),
    ("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("gemma3-270m", "gemma-3-270m-q4_k_m.gguf"),
];

fn value_error(msg: String) -> PyErr {
    PyValueError::new_err(msg)
}

/// An I/O error as the matching Python exception, naming the file.
fn io_error(e: &std::io::Error, what: &str, path: &Path) -> PyErr {
    let msg = format!("{what} {}: {e}", path.display());
    match e.kind() {
        std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
        _ => PyOSError::new_err(msg),
    }
}

/// A model argument: an existing path, or an alias looked up in `$EDGELORA_MODELS`,
/// `./models` and the source tree's `models/`.
fn resolve_model(p: PathBuf) -> PyResult<PathBuf> {
    if p.is_file() {
        return Ok(p);
    }
    let arg = p.display().to_string();
    if let Some((_, file)) = ALIASES.iter().find(|(a, _)| *a == arg) {
        let mut dirs = vec![];
        if let Ok(d) = std::env::var("EDGELORA_MODELS") {
            dirs.push(PathBuf::from(d));
        }
        dirs.push(PathBuf::from("models"));
        dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"));
        if let Some(found) = dirs.iter().map(|d| d.join(file)).find(|c| c.is_file()) {
            return Ok(found);
        }
        return Err(PyFileNotFoundError::new_err(format!(
            "model '{arg}' not found (looked for {file} in {dirs:?}); run `edgelora fetch {arg}` \
             or set EDGELORA_MODELS"
        )));
    }
    if p.is_dir() {
        return Err(PyIsADirectoryError::new_err(format!(
            "model '{arg}' is a directory; give the path of a GGUF file"
        )));
    }
    Err(PyFileNotFoundError::new_err(format!(
        "model file '{arg}' does not exist (give a GGUF path or one of: tiny, smollm2, \
         gemma3-270m)"
    )))
}

/// Token ids from Python, checked against the vocabulary.
fn check_ids(ids: &[i64], vocab: usize) -> PyResult<Vec<u32>> {
    ids.iter()
        .enumerate()
        .map(|(i, &t)| match u32::try_from(t) {
            Ok(v) if (v as usize) < vocab => Ok(v),
            _ => Err(value_error(format!(
                "token id {t} at index {i} is outside the vocabulary (0..{vocab})"
            ))),
        })
        .collect()
}

/// `[(adapter, scale), ...]` from Python, scales checked.
fn check_adapters(
    adapters: Option<Vec<(Py<Adapter>, f64)>>,
) -> PyResult<Vec<(Arc<AdapterFile>, f32)>> {
    let list = adapters.unwrap_or_default();
    if list.len() > edgelora_core::lora::MAX_ACTIVE {
        return Err(value_error(format!(
            "{} adapters given; at most {} can be active at once",
            list.len(),
            edgelora_core::lora::MAX_ACTIVE
        )));
    }
    list.iter()
        .map(|(a, s)| {
            let a = a.get();
            if !s.is_finite() || s.abs() > MAX_SCALE {
                return Err(value_error(format!(
                    "scale {s} for adapter {} must be finite and within [-{MAX_SCALE}, \
                     {MAX_SCALE}] (1.0 is the trained strength)",
                    a.0.source
                )));
            }
            Ok((a.0.clone(), *s as f32))
        })
        .collect()
}

const fn mode(reference: bool) -> KernelMode {
    if reference {
        KernelMode::Reference
    } else {
        KernelMode::Fast
    }
}

/// A GGUF model (llama, Qwen2/3, Gemma 2/3 families), memory-mapped read-only.
///
/// Safe to share between threads: every call runs on its own state with the GIL released.
#[pyclass(frozen, module = "edgelora")]
pub struct Model(Arc<ModelFile>);

#[pymethods]
impl Model {
    /// Open a GGUF model: a path, or an alias (`tiny`, `smollm2`, `gemma3-270m`) looked up
    /// in `$EDGELORA_MODELS`, `./models` and the source tree's `models/`.
    ///
    /// Raises FileNotFoundError for a missing file, ValueError for a file that is not a model
    /// edgelora runs.
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        Self::open(py, path)
    }

    /// Open a GGUF model (see the constructor).
    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let p = resolve_model(path)?;
        let bytes = Bytes::map(&p).map_err(|e| io_error(&e, "opening model", &p))?;
        let m = py
            .detach(|| ModelFile::new(bytes, p))
            .map_err(value_error)?;
        Ok(Model(Arc::new(m)))
    }

    /// Vocabulary size (columns of `logits`).
    #[getter]
    fn n_vocab(&self) -> usize {
        self.0.model.config().vocab
    }

    /// Context length the model was trained for.
    #[getter]
    fn ctx_len(&self) -> usize {
        self.0.model.config().ctx_len
    }

    /// `general.architecture` (`llama`, `qwen2`, `gemma3`, ...).
    #[getter]
    fn architecture(&self) -> &'static str {
        self.0.model.config().arch.name
    }

    /// The file the model was loaded from.
    #[getter]
    fn path(&self) -> String {
        self.0.path.display().to_string()
    }

    /// End-of-generation token ids (generation stops at any of them).
    #[getter]
    fn eog_ids(&self) -> Vec<u32> {
        self.0.tok.eog_ids().to_vec()
    }

    /// Token ids of `text`, BOS first when `add_bos` and the model asks for it (as `logits`
    /// and `generate` run prompts). `special=True` matches special tokens such as
    /// `<|im_start|>` in the text.
    #[pyo3(signature = (text, special = false, add_bos = true))]
    fn tokenize(&self, text: &str, special: bool, add_bos: bool) -> PyResult<Vec<u32>> {
        run::tokenize(&self.0, text, special, add_bos).map_err(value_error)
    }

    /// The text of `ids`, control tokens (BOS, end of turn) skipped.
    fn detokenize(&self, ids: Vec<i64>) -> PyResult<String> {
        let ids = check_ids(&ids, self.0.tok.vocab_size())?;
        run::detokenize(&self.0, &ids).map_err(value_error)
    }

    /// Teacher-forced logits: a float32 array of shape `(len(ids), n_vocab)`, row `i` the
    /// logits after `ids[: i + 1]`, with `adapters` (a list of `(Adapter, scale)`) applied.
    /// `reference=True` runs the scalar reference kernels (f32 activations; slow) instead of
    /// the SIMD ones.
    #[pyo3(signature = (ids, adapters = None, reference = false))]
    fn logits<'py>(
        &self,
        py: Python<'py>,
        ids: Vec<i64>,
        adapters: Option<Vec<(Py<Adapter>, f64)>>,
        reference: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cfg = *self.0.model.config();
        if ids.is_empty() {
            return Err(value_error("logits: no token ids given".into()));
        }
        if ids.len() > cfg.ctx_len {
            return Err(value_error(format!(
                "{} token ids do not fit the model's context of {}",
                ids.len(),
                cfg.ctx_len
            )));
        }
        let ids = check_ids(&ids, cfg.vocab)?;
        let active = run::Active::new(&self.0, &check_adapters(adapters)?).map_err(value_error)?;
        let m = &self.0;
        let out = py
            .detach(|| run::logits(m, &ids, &active, mode(reference)))
            .map_err(value_error)?;
        // One copy into a bytearray that numpy views, writable, without copying (no numpy C
        // API needed, so the module stays abi3).
        let bytes = PyByteArray::new_with(py, out.len() * 4, |buf| {
            for (dst, x) in buf.chunks_exact_mut(4).zip(&out) {
                dst.copy_from_slice(&x.to_ne_bytes());
            }
            Ok(())
        })?;
        drop(out);
        let np = py.import("numpy")?;
        let arr = np.call_method1("frombuffer", (bytes, "float32"))?;
        arr.call_method1("reshape", (ids.len(), cfg.vocab))
    }

    /// Generate text after `prompt` with `adapters` (a list of `(Adapter, scale)`).
    ///
    /// Up to `max_tokens` tokens; stops at the model's end-of-generation token (not included)
    /// or before the first of the `stop` strings. `temperature=0` is greedy; otherwise
    /// `top_k`, `top_p`, `repeat_penalty` and `seed` (default 42, as the CLI) apply.
    /// `chat=True` wraps the prompt as a user turn (after `system`, if given) in the model's
    /// chat template, as `edgelora generate --chat` does.
    #[pyo3(signature = (
        prompt, adapters = None, max_tokens = 64, stop = None, seed = None, temperature = 0.0,
        chat = false, system = None, top_k = 40, top_p = 0.95, repeat_penalty = 1.0,
        reference = false
    ))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &str,
        adapters: Option<Vec<(Py<Adapter>, f64)>>,
        max_tokens: usize,
        stop: Option<Vec<String>>,
        seed: Option<u64>,
        temperature: f32,
        chat: bool,
        system: Option<&str>,
        top_k: usize,
        top_p: f32,
        repeat_penalty: f32,
        reference: bool,
    ) -> PyResult<String> {
        let stop = stop.unwrap_or_default();
        if stop.iter().any(String::is_empty) {
            return Err(value_error("stop strings must not be empty".into()));
        }
        let ids = if chat {
            run::chat_ids(&self.0, system, prompt)
        } else {
            run::tokenize(&self.0, prompt, false, true)
        }
        .map_err(value_error)?;
        let active = run::Active::new(&self.0, &check_adapters(adapters)?).map_err(value_error)?;
        let o = run::GenOptions {
            max_tokens,
            stop,
            sampler: SamplerConfig {
                temperature,
                top_k,
                top_p,
                repeat_penalty,
                repeat_last_n: 64,
                seed: seed.unwrap_or(42),
                ..SamplerConfig::default()
            },
            mode: mode(reference),
        };
        let m = &self.0;
        py.detach(|| run::generate(m, &ids, &active, &o))
            .map_err(value_error)
    }

    fn __repr__(&self) -> String {
        let c = self.0.model.config();
        format!(
            "edgelora.Model('{}', architecture='{}', n_layers={}, n_vocab={})",
            self.0.path.display(),
            c.arch.name,
            c.n_layers,
            c.vocab
        )
    }
}

/// A LoRA adapter (GGUF, llama.cpp's layout). Pass it to `Model.logits` / `Model.generate`
/// as `(adapter, scale)`; binding it to a model happens once and is cached, so switching
/// adapters between calls costs nothing measurable.
#[pyclass(frozen, module = "edgelora")]
pub struct Adapter(Arc<AdapterFile>);

#[pymethods]
impl Adapter {
    /// Open a GGUF LoRA adapter. Raises FileNotFoundError for a missing file, ValueError for
    /// a file that is not a LoRA adapter.
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        Self::open(py, path)
    }

    /// Open a GGUF LoRA adapter (see the constructor).
    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        if path.is_dir() {
            return Err(PyIsADirectoryError::new_err(format!(
                "adapter {} is a directory; give a GGUF file (Adapter.convert reads PEFT \
                 directories)",
                path.display()
            )));
        }
        let bytes = Bytes::map(&path).map_err(|e| io_error(&e, "opening adapter", &path))?;
        let source = path.display().to_string();
        let a = py
            .detach(|| AdapterFile::new(bytes, source))
            .map_err(value_error)?;
        Ok(Adapter(Arc::new(a)))
    }

    /// Convert a PEFT LoRA directory (`adapter_config.json` + `adapter_model.safetensors`)
    /// for `base`, storing A and B as `dtype` (`f32`, `f16` or `q8_0`), as
    /// `edgelora adapter convert` does. `save(path)` writes the result.
    #[staticmethod]
    #[pyo3(signature = (peft_dir, base, dtype = "f16"))]
    fn convert(py: Python<'_>, peft_dir: PathBuf, base: &Model, dtype: &str) -> PyResult<Self> {
        let dtype = match dtype.to_ascii_lowercase().as_str() {
            "f32" | "f16" | "q8_0" => GgmlType::from_name(dtype),
            _ => None,
        }
        .ok_or_else(|| value_error(format!("dtype {dtype:?}: expected f32, f16 or q8_0")))?;
        let read = |name: &str| {
            let p = peft_dir.join(name);
            std::fs::read(&p).map_err(|e| io_error(&e, "reading", &p))
        };
        let cfg = read("adapter_config.json")?;
        let st = read("adapter_model.safetensors")?;
        let source = peft_dir.display().to_string();
        let m = &base.0;
        let a = py
            .detach(|| {
                let opts = ConvertOptions {
                    dtype,
                    ..ConvertOptions::default()
                };
                let (bytes, _) = convert_peft(&cfg, &st, &m.gguf, &opts)
                    .map_err(|e| format!("converting {source}: {e}"))?;
                AdapterFile::new(Bytes::copy(&bytes), source)
            })
            .map_err(value_error)?;
        Ok(Adapter(Arc::new(a)))
    }

    /// Write the adapter's GGUF bytes to `path`.
    fn save(&self, path: PathBuf) -> PyResult<()> {
        std::fs::write(&path, self.0.bytes()).map_err(|e| io_error(&e, "writing", &path))
    }

    /// Largest rank of any (A, B) pair.
    #[getter]
    fn rank(&self) -> usize {
        self.0.adapter.max_rank()
    }

    /// `adapter.lora.alpha` (the scale applied is `scale * alpha / rank`).
    #[getter]
    fn alpha(&self) -> f32 {
        self.0.adapter.alpha()
    }

    /// The task recorded by edgelora's converter (`adapter.edgelora.task`), or None.
    #[getter]
    fn task(&self) -> Option<String> {
        self.0.task.clone()
    }

    /// Number of (A, B) pairs.
    #[getter]
    fn n_pairs(&self) -> usize {
        self.0.adapter.n_pairs()
    }

    /// The file it was opened from (or the PEFT directory it was converted from).
    #[getter]
    fn path(&self) -> String {
        self.0.source.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "edgelora.Adapter('{}', rank={}, alpha={}, task={:?})",
            self.0.source,
            self.0.adapter.max_rank(),
            self.0.adapter.alpha(),
            self.0.task.as_deref().unwrap_or("")
        )
    }
}

/// Threads for the matrix kernels, process-wide (default 1). Results are bit-identical for
/// any count.
#[pyfunction]
fn set_threads(n: usize) -> PyResult<()> {
    if !(1..=64).contains(&n) {
        return Err(value_error(format!("threads {n}: expected 1 to 64")));
    }
    edgelora_core::kernels::set_threads(n);
    Ok(())
}

/// The SIMD kernel set this machine runs (`avx2`, `neon`, ...).
#[pyfunction]
fn kernel() -> &'static str {
    edgelora_core::kernels::active_isa_name()
}

/// GGUF models with swappable LoRA adapters, on the CPU.
#[pymodule]
fn edgelora(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_class::<Adapter>()?;
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    m.add_function(wrap_pyfunction!(kernel, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
