//! The adapters a server holds, which `POST /v1/adapters` and `DELETE /v1/adapters/{id}`
//! change while it runs.
//!
//! Each adapter is a [`Loaded`]: its bytes (a mapped file for `--adapter`, a heap copy for
//! one added at run time), its slot table and the core's [`BoundAdapter`] over both, owned
//! together and shared by [`Arc`]. The registry maps ids to them; a queued or running job
//! holds its own `Arc`s, so deleting an id hides it from new requests at once while the
//! memory goes when the last job using it ends.

use anyhow::{Context, Result};
use edgelora::format::gguf::Gguf;
use edgelora::lora::{Adapter, BoundAdapter, LoraPair};
use edgelora::model::Model;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// 64-byte aligned storage (GGUF tensor data is aligned relative to the file start).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Block([u8; 64]);

/// Where an adapter's bytes live. Both kinds keep their address when moved.
pub enum Backing {
    /// A memory-mapped file (`--adapter`).
    Map(memmap2::Mmap),
    /// A heap copy (`POST /v1/adapters`): blocks and the byte length.
    Heap(Vec<Block>, usize),
}

impl Backing {
    /// A heap copy of `bytes`, aligned.
    pub fn copy(bytes: &[u8]) -> Backing {
        let mut blocks = vec![Block([0; 64]); bytes.len().div_ceil(64)];
        for (b, c) in blocks.iter_mut().zip(bytes.chunks(64)) {
            b.0[..c.len()].copy_from_slice(c);
        }
        Backing::Heap(blocks, bytes.len())
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Heap(b, n) => {
                // SAFETY: `b` holds `b.len() * 64 >= n` initialised bytes.
                unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<u8>(), *n) }
            }
        }
    }
}

/// One adapter parsed and bound to the served model, owning what the binding borrows.
pub struct Loaded {
    /// Borrows `slots` and `backing`; dropped first (see `Drop`).
    bound: Option<BoundAdapter<'static, 'static>>,
    /// The slot table, from `Box::into_raw`; freed in `Drop`.
    slots: *mut [Option<LoraPair<'static>>],
    /// Never read after binding, only kept alive.
    _backing: Backing,
    /// Unique for the process: the prompt cache and batch groups key on it, so an id deleted
    /// and added again with another file never reuses the old KV.
    pub serial: u64,
    /// The bytes held (for the model list).
    pub size: usize,
}

// SAFETY: after construction nothing is mutated; the raw pointer is only used to free the
// slot table on drop, and the bound adapter holds shared references into data owned here.
unsafe impl Send for Loaded {}
unsafe impl Sync for Loaded {}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Loaded#{} ({} bytes)", self.serial, self.size)
    }
}

impl Loaded {
    /// Parse and bind `backing` against the served base (the core's checks: architecture,
    /// fingerprint, names and shapes). Nothing is shared until this returns `Ok`.
    ///
    /// # Errors
    /// The core's parse or bind error.
    pub fn new(backing: Backing, base: &Gguf<'_>, model: &Model<'_>) -> Result<Loaded> {
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        let size = backing.bytes().len();
        // SAFETY: the bytes live in `backing` (a mapping or a heap block whose address does
        // not change when `Loaded` moves) as long as `Loaded`, which drops `bound` first.
        let bytes: &'static [u8] =
            unsafe { std::slice::from_raw_parts(backing.bytes().as_ptr(), size) };
        let adapter = Adapter::parse(bytes).context("parsing the adapter")?;
        let table: Box<[Option<LoraPair<'static>>]> =
            vec![None; Adapter::slots_len(model.config())].into_boxed_slice();
        let slots = Box::into_raw(table);
        // SAFETY: `slots` is a live allocation only freed in `Drop`, after `bound`.
        let r: &'static mut [Option<LoraPair<'static>>] = unsafe { &mut *slots };
        let bound = match adapter.bind(base, model, r) {
            Ok(b) => b,
            Err(e) => {
                // SAFETY: from `Box::into_raw` above; nothing borrows it any more.
                drop(unsafe { Box::from_raw(slots) });
                return Err(anyhow::Error::new(e).context("the adapter does not fit the model"));
            }
        };
        Ok(Loaded {
            bound: Some(bound),
            slots,
            _backing: backing,
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            size,
        })
    }

    /// The bound adapter, for [`edgelora::lora::AdapterSet`].
    pub fn bound(&self) -> &BoundAdapter<'_, '_> {
        match &self.bound {
            Some(b) => b,
            None => unreachable!("bound until dropped"),
        }
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        self.bound = None;
        // SAFETY: from `Box::into_raw` in `new`; the only borrower, `bound`, is gone.
        drop(unsafe { Box::from_raw(self.slots) });
    }
}

/// A served adapter: its model id, default scale and data.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Model id clients ask for.
    pub id: String,
    /// Scale when chosen by `model` (or a `lora` entry without a scale).
    pub scale: f32,
    /// Where it came from (a path, or `upload`).
    pub source: String,
    /// The adapter.
    pub adapter: Arc<Loaded>,
}

/// The adapters currently served, in the order they were added (a `lora` index counts in
/// this order).
#[derive(Default)]
pub struct Registry(RwLock<Vec<Entry>>);

impl Registry {
    /// A copy of the list (cheap: ids and `Arc`s).
    pub fn list(&self) -> Vec<Entry> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Add `e` unless its id is taken (`Err` gives it back).
    pub fn add(&self, e: Entry) -> Result<(), Entry> {
        let mut l = self.0.write().unwrap_or_else(|e| e.into_inner());
        if l.iter().any(|x| x.id == e.id) {
            return Err(e);
        }
        l.push(e);
        Ok(())
    }

    /// Remove `id`; its memory goes when the last job holding it ends.
    pub fn remove(&self, id: &str) -> Option<Entry> {
        let mut l = self.0.write().unwrap_or_else(|e| e.into_inner());
        let i = l.iter().position(|x| x.id == id)?;
        Some(l.remove(i))
    }
}
