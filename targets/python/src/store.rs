//! What a Python object owns: a model or adapter file's bytes together with the core's views
//! of them, and the per-(model, adapter) bindings.
//!
//! The core borrows everything (`Model<'w>` and `Adapter<'a>` are views of bytes the caller
//! keeps, `BoundAdapter<'a, 's>` a view of a slot table the caller keeps), which suits firmware
//! and a CLI that lives as long as its mapping. A Python object has no lexical lifetime, so
//! each owner here keeps the bytes and the views side by side: the views are made `'static`
//! with one `unsafe` step each, and every struct declares its views before what they borrow
//! so that Rust drops the views first. The bytes never move (a file mapping, or a heap block
//! the struct owns), so moving the struct does not invalidate the views. The host server's
//! adapter registry (`targets/host/src/serve/registry.rs`) keeps its adapters the same way.
//!
//! Binding an adapter to a model (the core's checks and its slot table) is done once per
//! pair and cached in the adapter ([`AdapterFile::binding`]); a call then swaps adapters by
//! building an [`AdapterSet`] of references, which costs nanoseconds.

use crate::chat::Chat;
use edgelora_core::format::gguf::Gguf;
use edgelora_core::lora::{Adapter, BoundAdapter, LoraPair};
use edgelora_core::model::Model;
use edgelora_core::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

/// 64-byte aligned storage: GGUF aligns tensor data relative to the file start, and the core
/// checks the alignment of the addresses it reinterprets.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Block([u8; 64]);

/// A file's bytes at an address that does not change when the owner moves.
pub enum Bytes {
    /// A read-only mapping of a file.
    Map(memmap2::Mmap),
    /// A heap copy (a converted adapter): the blocks and the byte length.
    Heap(Vec<Block>, usize),
}

impl Bytes {
    /// Map the file at `path` read-only.
    ///
    /// A model's weights (files of 16 MiB and more) are instead read into anonymous memory
    /// advised `MADV_HUGEPAGE` where the kernel grants transparent huge pages, as the CLI
    /// does: decode streams every weight once per token, and 2 MB pages read faster than the
    /// file mapping's 4 KB ones (fewer page walks; prefetchers stop at page boundaries). The
    /// copy costs one read of the file at open (~0.1 s per 250 MB). `EDGELORA_MMAP=1` keeps
    /// the plain mapping (the CLI's `--mmap`).
    ///
    /// # Errors
    /// The I/O error of opening or mapping it.
    pub fn map(path: &Path) -> std::io::Result<Bytes> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        if len >= 16 << 20 && std::env::var_os("EDGELORA_MMAP").is_none() && thp_available() {
            if let Ok(m) = read_huge(&mut f, len) {
                return Ok(Bytes::Map(m));
            }
        }
        // SAFETY: the mapping is read-only and private to this process. Another process
        // truncating or rewriting the file while it is mapped may make reads fault or see new
        // bytes: the usual contract of mapping a model file, as the CLI documents.
        let m = unsafe { memmap2::Mmap::map(&f) }?;
        Ok(Bytes::Map(m))
    }

    /// An aligned heap copy of `bytes`.
    pub fn copy(bytes: &[u8]) -> Bytes {
        let mut blocks = vec![Block([0; 64]); bytes.len().div_ceil(64)];
        for (b, c) in blocks.iter_mut().zip(bytes.chunks(64)) {
            b.0[..c.len()].copy_from_slice(c);
        }
        Bytes::Heap(blocks, bytes.len())
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            Bytes::Heap(b, n) => {
                // SAFETY: `b` holds `b.len() * 64 >= n` initialised bytes (`copy`).
                unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<u8>(), *n) }
            }
        }
    }

    /// The bytes with their lifetime erased.
    ///
    /// # Safety
    /// The caller must drop every view made from the result before `self`, and must not move
    /// out of or mutate `self` meanwhile (moving `self` itself is fine: a mapping and a heap
    /// block keep their address).
    unsafe fn erased(&self) -> &'static [u8] {
        let s = self.as_slice();
        // SAFETY: upheld by the caller, as documented.
        unsafe { std::slice::from_raw_parts(s.as_ptr(), s.len()) }
    }
}

/// Whether the kernel grants transparent huge pages to memory advised `MADV_HUGEPAGE`.
fn thp_available() -> bool {
    cfg!(target_os = "linux")
        && std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|s| !s.contains("[never]"))
}

/// The whole of `f` (`len` bytes) in a fresh anonymous mapping advised for huge pages, then
/// made read-only.
fn read_huge(f: &mut std::fs::File, len: u64) -> std::io::Result<memmap2::Mmap> {
    use std::io::Read;
    let n = usize::try_from(len).map_err(|_| std::io::Error::other("file too large"))?;
    let mut m = memmap2::MmapOptions::new().len(n).map_anon()?;
    #[cfg(target_os = "linux")]
    m.advise(memmap2::Advice::HugePage)?;
    f.read_exact(&mut m[..])?;
    m.make_read_only()
}

/// A loaded model: weights, tokenizer and chat renderer over the file's bytes.
pub struct ModelFile {
    // Views first: dropped before `bytes`.
    /// The weights (boxed: the layer table is large).
    pub model: Box<Model<'static>>,
    /// The tokenizer (owned index, borrowed vocabulary).
    pub tok: Tokenizer<'static, Vec<u32>>,
    /// How `chat=True` renders a prompt.
    pub chat: Chat,
    /// The parsed file (adapters check their base against it).
    pub gguf: Gguf<'static>,
    /// Where it came from.
    pub path: PathBuf,
    /// What the views borrow.
    _bytes: Bytes,
}

impl ModelFile {
    /// Parse `bytes` (read from `path`) as a model.
    ///
    /// # Errors
    /// A message naming the file and the core's error.
    pub fn new(bytes: Bytes, path: PathBuf) -> Result<ModelFile, String> {
        // SAFETY: every view made from `b` is stored in the `ModelFile` below, whose fields
        // drop the views before `_bytes`, which is never touched again.
        let b = unsafe { bytes.erased() };
        let at = path.display();
        let gguf = Gguf::parse(b).map_err(|e| format!("parsing {at}: {e}"))?;
        let model = Box::new(Model::from_gguf(&gguf).map_err(|e| format!("loading {at}: {e}"))?);
        let tok = Tokenizer::new_owned(&gguf)
            .map_err(|e| format!("loading the tokenizer of {at} from its metadata: {e}"))?;
        let chat = Chat::new(&gguf, &tok)?;
        Ok(ModelFile {
            model,
            tok,
            chat,
            gguf,
            path,
            _bytes: bytes,
        })
    }
}

/// One adapter bound to one model: the core's [`BoundAdapter`] and the slot table it reads.
pub struct Binding {
    // The view first: dropped before the table it borrows.
    bound: BoundAdapter<'static, 'static>,
    /// Never touched after binding, only kept alive. A `Vec` rather than a `Box` so that
    /// moving this struct asserts nothing about the uniqueness of the borrowed table.
    _slots: Vec<Option<LoraPair<'static>>>,
}

impl Binding {
    /// The bound adapter, for an `AdapterSet`.
    pub fn bound(&self) -> &BoundAdapter<'static, 'static> {
        &self.bound
    }
}

/// A loaded adapter and its bindings to the models it has been used with.
pub struct AdapterFile {
    /// Bindings by model; each borrows `adapter`'s bytes, so they are declared (dropped)
    /// before them. A binding handed to a call is an `Arc` clone that the call drops before
    /// its own `Arc<AdapterFile>` (see `crate::run::Active`).
    bindings: Mutex<Vec<(Weak<ModelFile>, Arc<Binding>)>>,
    /// The parsed adapter.
    pub adapter: Adapter<'static>,
    /// `adapter.edgelora.task`, if recorded.
    pub task: Option<String>,
    /// Where it came from (a path, or what it was converted from).
    pub source: String,
    /// What the views borrow.
    bytes: Bytes,
}

impl AdapterFile {
    /// Parse `bytes` (from `source`) as a LoRA adapter.
    ///
    /// # Errors
    /// A message naming the source and the core's error.
    pub fn new(bytes: Bytes, source: String) -> Result<AdapterFile, String> {
        // SAFETY: the adapter and every binding made from it live in this struct (or in `Arc`
        // clones of bindings that calls drop before their `Arc<AdapterFile>`), and the fields
        // drop them before `bytes`, which is only read after this.
        let b = unsafe { bytes.erased() };
        let adapter = Adapter::parse(b).map_err(|e| format!("parsing adapter {source}: {e}"))?;
        let task = adapter
            .gguf()
            .get_str("adapter.edgelora.task")
            .ok()
            .map(str::to_owned);
        Ok(AdapterFile {
            bindings: Mutex::new(vec![]),
            adapter,
            task,
            source,
            bytes,
        })
    }

    /// The file's bytes (to save a converted adapter).
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// This adapter bound to `model`: from the cache, else bound now (the core checks
    /// architecture, base fingerprint, targets and shapes) and cached. Bindings to models
    /// that no longer exist are dropped on the way.
    ///
    /// # Errors
    /// A message naming the adapter, the model and the core's error.
    pub fn binding(&self, model: &Arc<ModelFile>) -> Result<Arc<Binding>, String> {
        let mut cache = self.bindings.lock().unwrap_or_else(|e| e.into_inner());
        // A `Weak` keeps its model's allocation, so no new model can take the address of one
        // in the cache: comparing addresses is exact.
        cache.retain(|(m, _)| m.strong_count() > 0);
        if let Some((_, b)) = cache
            .iter()
            .find(|(m, _)| std::ptr::eq(m.as_ptr(), Arc::as_ptr(model)))
        {
            return Ok(b.clone());
        }
        let mut slots = vec![None; Adapter::slots_len(model.model.config())];
        // SAFETY: the table's heap block does not move while `slots` lives (it is never
        // resized), and `Binding` drops `bound`, the only borrower, before `_slots`.
        let table: &'static mut [Option<LoraPair<'static>>] =
            unsafe { std::slice::from_raw_parts_mut(slots.as_mut_ptr(), slots.len()) };
        let bound = self
            .adapter
            .bind(&model.gguf, &model.model, table)
            .map_err(|e| {
                format!(
                    "adapter {} does not fit model {}: {e}",
                    self.source,
                    model.path.display()
                )
            })?;
        let b = Arc::new(Binding {
            bound,
            _slots: slots,
        });
        cache.push((Arc::downgrade(model), b.clone()));
        Ok(b)
    }
}
