//! C API for edgelora (`include/edgelora.h`, kept by hand and checked against this file by
//! `tests/tests/ffi_header.rs`).
//!
//! Nothing here allocates: every object lives in memory the caller passes in, sized by an
//! `el_*_size` query, 8-byte aligned (checked). The model, adapter and stream bytes are
//! borrowed, not copied: they must stay in place, unchanged, while any object made from them
//! is in use (in flash they always do). Objects hold pointers to the objects they were made
//! from (state and adapter to model, state to its active adapters): free nothing before its
//! users. Every function returns an `el_status`; on error `el_last_error` gives the core's
//! message (which key, tensor or byte offset was wrong). No input bytes reach a panic.
#![cfg_attr(not(feature = "std"), no_std)]
#![allow(non_camel_case_types)]

use core::ffi::{c_char, c_int, c_void};
use core::mem::{align_of, size_of, MaybeUninit};
use core::ptr::addr_of_mut;
#[cfg(not(feature = "std"))]
use core::sync::atomic::{AtomicBool, Ordering};
use edgelora::lora::stream::StreamLoader;
use edgelora::lora::{Adapter, AdapterSet, BoundAdapter, LoraPair, MAX_ACTIVE};
use edgelora::model::{CacheSpec, CacheType, Model, State};
use edgelora::sample::argmax;
use edgelora::tokenizer::{Decoder, Tokenizer};
use edgelora::{Error, ErrorKind, Gguf};

/// Most layers a model opened through this API may have.
pub const EL_MAX_LAYERS: usize = 32;
/// Alignment every caller-provided object memory must have.
pub const EL_ALIGN: usize = 8;
/// KV cache element type for `el_state_*_kv`: f32 (what `el_state_init` makes).
pub const EL_KV_F32: u32 = 0;
/// KV cache element type: IEEE half (needs the core's `kv-f16` feature; feature `kv-f16` here).
pub const EL_KV_F16: u32 = 1;
/// KV cache element type: Q8_0 blocks (needs the core's `kv-q8_0` feature).
pub const EL_KV_Q8_0: u32 = 2;

/// The state spec of a KV cache type code (the target's default prompt block).
fn kv_spec(kv: u32) -> Option<CacheSpec> {
    let ty = match kv {
        EL_KV_F32 => CacheType::F32,
        EL_KV_F16 => CacheType::F16,
        EL_KV_Q8_0 => CacheType::Q8_0,
        _ => return None,
    };
    Some(CacheSpec::of(ty))
}

/// Status codes (`el_status` in C).
pub const EL_OK: c_int = 0;
/// A required pointer was null.
pub const EL_ERR_NULL: c_int = 1;
/// Caller memory too small or misaligned, or an output buffer too short.
pub const EL_ERR_BUFFER: c_int = 2;
/// Model or adapter bytes are malformed or unsupported.
pub const EL_ERR_FORMAT: c_int = 3;
/// Adapter does not fit the base (another base, missing target, shape).
pub const EL_ERR_MISMATCH: c_int = 4;
/// Position at or past the state's context.
pub const EL_ERR_CONTEXT: c_int = 5;
/// Invalid argument (token id, scale, empty prompt, too many adapters, ...).
pub const EL_ERR_ARG: c_int = 6;
/// Adapter stream: bad frame, checksum mismatch, truncated, too long.
pub const EL_ERR_STREAM: c_int = 7;

struct ModelH {
    gguf: Gguf<'static>,
    model: Model<'static, EL_MAX_LAYERS>,
}

/// Opaque model handle.
pub struct el_model(ModelH);

struct StateH {
    state: State<'static>,
    model: *const el_model,
    active: [(*const el_adapter, f32); MAX_ACTIVE],
    n_active: usize,
}

/// Opaque inference state.
pub struct el_state(StateH);

/// Opaque bound adapter.
pub struct el_adapter {
    bound: BoundAdapter<'static, 'static>,
    model: *const el_model,
}

/// Opaque adapter stream receiver.
pub struct el_stream(Option<StreamLoader<'static>>);

/// Opaque tokenizer.
pub struct el_tokenizer(Tokenizer<'static>);

/// Model hyper-parameters (`el_model_info` in C).
#[repr(C)]
pub struct el_model_info {
    /// Transformer blocks.
    pub n_layers: u32,
    /// Residual width.
    pub dim: u32,
    /// Vocabulary size (logits per forward).
    pub vocab: u32,
    /// Context the model was trained for (the most `el_state_init` accepts).
    pub ctx_len: u32,
}

// ---- errors ------------------------------------------------------------------------------

/// The last error's message and its length.
type LastBuf = ([u8; 192], usize);

// Hosts (`std`): one message per thread, so concurrent callers on their own handles each read
// their own failure back.
#[cfg(feature = "std")]
std::thread_local! {
    static LAST: core::cell::RefCell<LastBuf> = const { core::cell::RefCell::new(([0; 192], 0)) };
}

#[cfg(feature = "std")]
fn with_last<R>(f: impl FnOnce(&mut LastBuf) -> R) -> Option<R> {
    // `try_with`: a thread being torn down has no slot left; the message is then dropped.
    LAST.try_with(|c| c.try_borrow_mut().ok().map(|mut l| f(&mut l)))
        .ok()
        .flatten()
}

/// Firmware (no `std`, no thread-locals): one process-wide message guarded by a try-lock (a
/// racing writer, e.g. an interrupt handler calling in, simply skips).
#[cfg(not(feature = "std"))]
struct Last {
    lock: AtomicBool,
    buf: core::cell::UnsafeCell<LastBuf>,
}
// SAFETY: `buf` is only touched while `lock` is held (acquired with swap).
#[cfg(not(feature = "std"))]
unsafe impl Sync for Last {}
#[cfg(not(feature = "std"))]
static LAST: Last = Last {
    lock: AtomicBool::new(false),
    buf: core::cell::UnsafeCell::new(([0; 192], 0)),
};

#[cfg(not(feature = "std"))]
fn with_last<R>(f: impl FnOnce(&mut LastBuf) -> R) -> Option<R> {
    if LAST.lock.swap(true, Ordering::Acquire) {
        return None;
    }
    // SAFETY: the lock is held, so this is the only reference.
    let r = f(unsafe { &mut *LAST.buf.get() });
    LAST.lock.store(false, Ordering::Release);
    Some(r)
}

struct Cursor<'a>(&'a mut LastBuf);
impl core::fmt::Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.0 .1 < self.0 .0.len() {
                self.0 .0[self.0 .1] = b;
                self.0 .1 += 1;
            }
        }
        Ok(())
    }
}

fn record(msg: core::fmt::Arguments<'_>) {
    with_last(|l| {
        l.1 = 0;
        let _ = core::fmt::write(&mut Cursor(l), msg);
    });
}

fn status_of(e: &Error) -> c_int {
    match e.kind() {
        ErrorKind::BufferTooSmall => EL_ERR_BUFFER,
        ErrorKind::ContextFull => EL_ERR_CONTEXT,
        ErrorKind::InvalidArgument | ErrorKind::TokenOutOfRange | ErrorKind::TooMany => EL_ERR_ARG,
        ErrorKind::ShapeMismatch | ErrorKind::MissingTensor | ErrorKind::UnsupportedArch => {
            EL_ERR_MISMATCH
        }
        _ => EL_ERR_FORMAT,
    }
}

fn fail(code: c_int, e: &Error) -> c_int {
    record(format_args!("{e}"));
    code
}

fn err(e: Error) -> c_int {
    fail(status_of(&e), &e)
}

fn bad(code: c_int, msg: &'static str) -> c_int {
    record(format_args!("{msg}"));
    code
}

/// A short static description of a status code (never null).
///
/// # Safety
/// None: any value is accepted.
#[no_mangle]
pub unsafe extern "C" fn el_status_str(status: c_int) -> *const c_char {
    let s: &'static [u8] = match status {
        EL_OK => b"ok\0",
        EL_ERR_NULL => b"null pointer argument\0",
        EL_ERR_BUFFER => b"buffer too small or misaligned\0",
        EL_ERR_FORMAT => b"malformed or unsupported model/adapter bytes\0",
        EL_ERR_MISMATCH => b"adapter does not fit the base model\0",
        EL_ERR_CONTEXT => b"context full\0",
        EL_ERR_ARG => b"invalid argument\0",
        EL_ERR_STREAM => b"adapter stream error\0",
        _ => b"unknown status\0",
    };
    s.as_ptr().cast()
}

/// Copy the last error's message (NUL-terminated, truncated to `cap`) into `buf`; returns its
/// full length. Per thread on hosts (feature `std`); one process-wide message on firmware.
///
/// # Safety
/// `buf` must be valid for `cap` bytes (or null with `cap` 0).
#[no_mangle]
pub unsafe extern "C" fn el_last_error(buf: *mut c_char, cap: usize) -> usize {
    with_last(|l| {
        let n = l.1;
        if !buf.is_null() && cap > 0 {
            let k = n.min(cap - 1);
            // SAFETY: the caller gives `cap` writable bytes; k + 1 <= cap.
            unsafe {
                core::ptr::copy_nonoverlapping(l.0.as_ptr(), buf.cast::<u8>(), k);
                *buf.add(k) = 0;
            }
        }
        n
    })
    .unwrap_or(0)
}

// ---- memory helpers ------------------------------------------------------------------------

/// Check caller memory for an object of `need` bytes.
fn room(mem: *mut c_void, len: usize, need: usize) -> Result<(), c_int> {
    if mem.is_null() {
        return Err(bad(EL_ERR_NULL, "object memory is null"));
    }
    if !(mem as usize).is_multiple_of(EL_ALIGN) {
        return Err(bad(EL_ERR_BUFFER, "object memory must be 8-byte aligned"));
    }
    if len < need {
        return Err(bad(
            EL_ERR_BUFFER,
            "object memory smaller than the el_*_size query",
        ));
    }
    Ok(())
}

const fn up(n: usize) -> usize {
    n.div_ceil(EL_ALIGN) * EL_ALIGN
}

macro_rules! nonnull {
    ($($p:expr),+) => {
        if $($p.is_null())||+ {
            return bad(EL_ERR_NULL, "null pointer argument");
        }
    };
}

/// Borrow `len` bytes at `p` for as long as the caller promises (the API's contract).
///
/// # Safety
/// `p` valid for `len` bytes, unchanged while borrowed.
unsafe fn bytes(p: *const u8, len: usize) -> &'static [u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: per the caller's contract.
    unsafe { core::slice::from_raw_parts(p, len) }
}

// ---- model ---------------------------------------------------------------------------------

/// Bytes of object memory `el_model_open` needs.
///
/// # Safety
/// None.
#[no_mangle]
pub unsafe extern "C" fn el_model_size() -> usize {
    size_of::<el_model>()
}

/// Parse a GGUF model in place (`gguf` is borrowed, not copied) into `mem`.
///
/// # Safety
/// `gguf` valid for `gguf_len` bytes and unchanged while the model is used; `mem` valid for
/// `mem_len` bytes; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn el_model_open(
    mem: *mut c_void,
    mem_len: usize,
    gguf: *const u8,
    gguf_len: usize,
    out: *mut *mut el_model,
) -> c_int {
    nonnull!(gguf, out);
    if let Err(c) = room(mem, mem_len, size_of::<el_model>()) {
        return c;
    }
    // SAFETY: the caller's contract on `gguf`.
    let g = match Gguf::parse(unsafe { bytes(gguf, gguf_len) }) {
        Ok(g) => g,
        Err(e) => return err(e),
    };
    let p = mem.cast::<el_model>();
    // The model object (~8 KB at EL_MAX_LAYERS = 32) is built in the caller's memory, never
    // on the stack: a by-value build held two or three copies in this frame and the core's
    // (C firmware stack 23 KB). SAFETY: `mem` is aligned (room checks 8, and el_model's
    // alignment is at most 8 on the targets this builds for: asserted below), large enough
    // and writable; the fields are written through raw pointers before any reference to
    // the whole handle exists, and `out` is written only after both are initialised.
    unsafe {
        let model =
            &mut *addr_of_mut!((*p).0.model).cast::<MaybeUninit<Model<'static, EL_MAX_LAYERS>>>();
        if let Err(e) = Model::init_from_gguf(&g, model) {
            return err(e);
        }
        addr_of_mut!((*p).0.gguf).write(g);
        *out = p;
    }
    EL_OK
}

const _: () = assert!(align_of::<el_model>() <= EL_ALIGN);
const _: () = assert!(align_of::<el_state>() <= EL_ALIGN);
const _: () = assert!(align_of::<el_adapter>() <= EL_ALIGN);
const _: () = assert!(align_of::<el_stream>() <= EL_ALIGN);
const _: () = assert!(align_of::<el_tokenizer>() <= EL_ALIGN);
const _: () = assert!(align_of::<Option<LoraPair<'static>>>() <= EL_ALIGN);

/// Fill `info` with the model's hyper-parameters.
///
/// # Safety
/// `model` from `el_model_open`; `info` writable.
#[no_mangle]
pub unsafe extern "C" fn el_model_get_info(
    model: *const el_model,
    info: *mut el_model_info,
) -> c_int {
    nonnull!(model, info);
    // SAFETY: valid handle per contract.
    let c = unsafe { &*model }.0.model.config();
    // SAFETY: writable per contract.
    unsafe {
        *info = el_model_info {
            n_layers: c.n_layers as u32,
            dim: c.dim as u32,
            vocab: c.vocab as u32,
            ctx_len: c.ctx_len as u32,
        };
    }
    EL_OK
}

/// Hidden width of the model's feed-forward block (0 for a null handle).
///
/// # Safety
/// `model` from `el_model_open` (or null).
#[no_mangle]
pub unsafe extern "C" fn el_model_ffn_dim(model: *const el_model) -> u32 {
    if model.is_null() {
        return 0;
    }
    // SAFETY: valid handle per contract.
    unsafe { &*model }.0.model.config().ffn_dim as u32
}

// ---- state ---------------------------------------------------------------------------------

/// Bytes of memory `el_state_init` needs for `ctx` positions (0 if it would overflow).
///
/// # Safety
/// `model` from `el_model_open` (or null: returns 0).
#[no_mangle]
pub unsafe extern "C" fn el_state_size(model: *const el_model, ctx: u32) -> usize {
    // SAFETY: per contract.
    unsafe { el_state_size_kv(model, ctx, EL_KV_F32) }
}

/// `el_state_size` for a KV cache of element type `kv` (`EL_KV_*`); 0 for an unknown code.
///
/// # Safety
/// `model` from `el_model_open` (or null: returns 0).
#[no_mangle]
pub unsafe extern "C" fn el_state_size_kv(model: *const el_model, ctx: u32, kv: u32) -> usize {
    // SAFETY: per contract.
    match unsafe { el_state_data_size_kv(model, ctx, kv) } {
        0 => 0,
        n => n.checked_add(up(size_of::<el_state>())).unwrap_or(0),
    }
}

/// Make a state for `ctx` positions in `mem` (KV cache, activations and logits all inside).
///
/// # Safety
/// `model` from `el_model_open`, outliving the state; `mem` valid for `mem_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn el_state_init(
    model: *const el_model,
    ctx: u32,
    mem: *mut c_void,
    mem_len: usize,
    out: *mut *mut el_state,
) -> c_int {
    // SAFETY: per contract.
    unsafe { el_state_init_kv(model, ctx, EL_KV_F32, mem, mem_len, out) }
}

/// `el_state_init` with a KV cache of element type `kv` (`EL_KV_*`).
///
/// # Safety
/// As `el_state_init`.
#[no_mangle]
pub unsafe extern "C" fn el_state_init_kv(
    model: *const el_model,
    ctx: u32,
    kv: u32,
    mem: *mut c_void,
    mem_len: usize,
    out: *mut *mut el_state,
) -> c_int {
    nonnull!(model, out);
    let Some(spec) = kv_spec(kv) else {
        return bad(
            EL_ERR_ARG,
            "KV cache type code (EL_KV_F32, EL_KV_F16, EL_KV_Q8_0)",
        );
    };
    // SAFETY: per contract.
    let need = unsafe { el_state_size_kv(model, ctx, kv) };
    if need == 0 {
        return bad(EL_ERR_ARG, "state size overflows");
    }
    if let Err(c) = room(mem, mem_len, need) {
        return c;
    }
    // SAFETY: valid handle per contract.
    let cfg = *unsafe { &*model }.0.model.config();
    let head = up(size_of::<el_state>());
    let n = (need - head) / 4;
    // SAFETY: [mem + head, mem + need) lies in the caller's memory, 4-aligned (head is a
    // multiple of 8, mem 8-aligned), used only through this state from now on; f32 has no
    // invalid bit patterns and State::new zeroes what it uses.
    let buf =
        unsafe { core::slice::from_raw_parts_mut(mem.cast::<u8>().add(head).cast::<f32>(), n) };
    let state = match State::with_cache(&cfg, ctx as usize, spec, buf) {
        Ok(s) => s,
        Err(e) => return err(e),
    };
    let p = mem.cast::<el_state>();
    // SAFETY: aligned and in range (checked by room); `out` writable.
    unsafe {
        p.write(el_state(StateH {
            state,
            model,
            active: [(core::ptr::null(), 0.0); MAX_ACTIVE],
            n_active: 0,
        }));
        *out = p;
    }
    EL_OK
}

/// Bytes of KV cache, activations and logits inside a state for `ctx` positions
/// (`State::bytes_for`: `el_state_size` less the handle); 0 for a null model or on overflow.
///
/// # Safety
/// `model` from `el_model_open` (or null).
#[no_mangle]
pub unsafe extern "C" fn el_state_data_size(model: *const el_model, ctx: u32) -> usize {
    // SAFETY: per contract.
    unsafe { el_state_data_size_kv(model, ctx, EL_KV_F32) }
}

/// `el_state_data_size` for a KV cache of element type `kv` (`EL_KV_*`); 0 for an unknown
/// code.
///
/// # Safety
/// `model` from `el_model_open` (or null: returns 0).
#[no_mangle]
pub unsafe extern "C" fn el_state_data_size_kv(model: *const el_model, ctx: u32, kv: u32) -> usize {
    let Some(spec) = kv_spec(kv) else {
        return 0;
    };
    if model.is_null() {
        return 0;
    }
    // SAFETY: valid handle per contract.
    let c = unsafe { &*model }.0.model.config();
    State::checked_len_for_cache(c, ctx as usize, spec)
        .and_then(|n| n.checked_mul(4))
        .unwrap_or(0)
}

/// Prompt tokens a state of `ctx` positions runs through the layers together on this target
/// (1 on microcontrollers, which run the prompt token by token; up to 16 on hosts).
///
/// # Safety
/// None: any value is accepted (`unsafe` like every export, for one calling convention).
#[no_mangle]
pub unsafe extern "C" fn el_state_block(ctx: u32) -> u32 {
    State::block_for(ctx as usize) as u32
}

/// Forget the state's KV cache (O(1)); the next forward or prefill starts at position 0.
/// The active adapters stay.
///
/// # Safety
/// `state` from `el_state_init`, not in use by another thread.
#[no_mangle]
pub unsafe extern "C" fn el_state_clear(state: *mut el_state) -> c_int {
    nonnull!(state);
    // SAFETY: valid handle per contract.
    unsafe { &mut *state }.0.state.clear();
    EL_OK
}

// ---- adapters ------------------------------------------------------------------------------

/// Bytes of memory `el_adapter_load` needs for an adapter of this model.
///
/// # Safety
/// `model` from `el_model_open` (or null: returns 0).
#[no_mangle]
pub unsafe extern "C" fn el_adapter_size(model: *const el_model) -> usize {
    if model.is_null() {
        return 0;
    }
    // SAFETY: valid handle per contract.
    let c = unsafe { &*model }.0.model.config();
    up(size_of::<el_adapter>()) + Adapter::slots_len(c) * size_of::<Option<LoraPair<'static>>>()
}

/// Parse a GGUF LoRA adapter (borrowed, not copied) and bind it to `model` in `mem`.
///
/// # Safety
/// `bytes` valid for `len` bytes and unchanged while the adapter is used; `model` outlives
/// it; `mem` valid for `mem_len` bytes; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn el_adapter_load(
    model: *const el_model,
    bytes_ptr: *const u8,
    len: usize,
    mem: *mut c_void,
    mem_len: usize,
    out: *mut *mut el_adapter,
) -> c_int {
    nonnull!(model, bytes_ptr, out);
    // SAFETY: per contract.
    let need = unsafe { el_adapter_size(model) };
    if let Err(c) = room(mem, mem_len, need) {
        return c;
    }
    // SAFETY: valid handle per contract.
    let m = &unsafe { &*model }.0;
    // SAFETY: the caller's contract on the bytes.
    let ad = match Adapter::parse(unsafe { bytes(bytes_ptr, len) }) {
        Ok(a) => a,
        Err(e) => return err(e),
    };
    let head = up(size_of::<el_adapter>());
    let n = Adapter::slots_len(m.model.config());
    let slots_p = mem
        .cast::<u8>()
        .wrapping_add(head)
        .cast::<Option<LoraPair<'static>>>();
    // SAFETY: the slots lie in [mem + head, mem + need), aligned (head multiple of 8, the
    // element's alignment <= 8), and are initialised before the slice is formed.
    let slots = unsafe {
        for i in 0..n {
            slots_p.add(i).write(None);
        }
        core::slice::from_raw_parts_mut(slots_p, n)
    };
    let bound = match ad.bind(&m.gguf, &m.model, slots) {
        Ok(b) => b,
        Err(e) => {
            let code = if e.kind() == ErrorKind::BadValue {
                EL_ERR_MISMATCH
            } else {
                status_of(&e)
            };
            return fail(code, &e);
        }
    };
    let p = mem.cast::<el_adapter>();
    // SAFETY: aligned and in range; `out` writable.
    unsafe {
        p.write(el_adapter { bound, model });
        *out = p;
    }
    EL_OK
}

/// Make `adapters[0..n]` with `scales[0..n]` the active set of `state` (n = 0: base only).
/// On error the previous set stays active.
///
/// # Safety
/// `state` from `el_state_init`; each adapter from `el_adapter_load` for the same model,
/// outliving its use by the state; `adapters` and `scales` valid for `n` entries.
#[no_mangle]
pub unsafe extern "C" fn el_set_adapters(
    state: *mut el_state,
    adapters: *const *const el_adapter,
    scales: *const f32,
    n: usize,
) -> c_int {
    nonnull!(state);
    if n > MAX_ACTIVE {
        return bad(EL_ERR_ARG, "more active adapters than MAX_ACTIVE (4)");
    }
    if n > 0 && (adapters.is_null() || scales.is_null()) {
        return bad(EL_ERR_NULL, "null adapters or scales");
    }
    // SAFETY: valid handle per contract.
    let s = &mut unsafe { &mut *state }.0;
    let mut next = [(core::ptr::null(), 0.0); MAX_ACTIVE];
    for (i, slot) in next.iter_mut().enumerate().take(n) {
        // SAFETY: `n` entries each, per contract.
        let (a, sc) = unsafe { (*adapters.add(i), *scales.add(i)) };
        if a.is_null() {
            return bad(EL_ERR_NULL, "null adapter");
        }
        // SAFETY: valid adapter handle per contract.
        if unsafe { &*a }.model != s.model {
            return bad(
                EL_ERR_MISMATCH,
                "adapter was loaded for another model handle",
            );
        }
        if !sc.is_finite() {
            return bad(EL_ERR_ARG, "adapter scale must be finite");
        }
        *slot = (a, sc);
    }
    s.active = next;
    s.n_active = n;
    EL_OK
}

fn active_set(s: &StateH) -> AdapterSet<'static, 'static, 'static> {
    let mut set = AdapterSet::EMPTY;
    for &(a, sc) in &s.active[..s.n_active] {
        // SAFETY: handles checked non-null in el_set_adapters; outliving the state per contract.
        let b: &'static BoundAdapter<'static, 'static> = unsafe { &(*a).bound };
        let _ = set.push(b, sc); // at most MAX_ACTIVE, scales finite: cannot fail
    }
    set
}

// ---- inference -----------------------------------------------------------------------------

/// Run `token` at `pos` (at most the positions already filled) with the active adapters;
/// `*logits` points at `*n_vocab` floats inside the state, valid until the next call.
///
/// # Safety
/// Handles from this API for the same model; `logits` and `n_vocab` writable.
#[no_mangle]
pub unsafe extern "C" fn el_forward(
    model: *const el_model,
    state: *mut el_state,
    token: u32,
    pos: u32,
    logits: *mut *const f32,
    n_vocab: *mut usize,
) -> c_int {
    nonnull!(model, state, logits, n_vocab);
    // SAFETY: valid handles per contract.
    let (m, s) = (&unsafe { &*model }.0, &mut unsafe { &mut *state }.0);
    if s.model != model {
        return bad(EL_ERR_MISMATCH, "state was made for another model handle");
    }
    let set = active_set(s);
    match m
        .model
        .forward_with(token, pos as usize, &mut s.state, &set)
    {
        Ok(l) => {
            // SAFETY: writable per contract.
            unsafe {
                *logits = l.as_ptr();
                *n_vocab = l.len();
            }
            EL_OK
        }
        Err(e) => err(e),
    }
}

/// Run `n` tokens at positions `pos..pos + n` together (a prompt: each weight is read once per
/// block of tokens, and the logits equal `el_forward` run token by token) with the active
/// adapters; `*logits` points at the `*n_vocab` logits of the last one, inside the state.
///
/// # Safety
/// Handles from this API for the same model; `tokens` valid for `n` ids; `logits` and
/// `n_vocab` writable.
#[no_mangle]
pub unsafe extern "C" fn el_prefill(
    model: *const el_model,
    state: *mut el_state,
    tokens: *const u32,
    n: usize,
    pos: u32,
    logits: *mut *const f32,
    n_vocab: *mut usize,
) -> c_int {
    nonnull!(model, state, tokens, logits, n_vocab);
    // SAFETY: valid handles per contract.
    let (m, s) = (&unsafe { &*model }.0, &mut unsafe { &mut *state }.0);
    if s.model != model {
        return bad(EL_ERR_MISMATCH, "state was made for another model handle");
    }
    // SAFETY: `n` ids per contract.
    let toks = unsafe { core::slice::from_raw_parts(tokens, n) };
    let set = active_set(s);
    match m.model.prefill_with(toks, pos as usize, &mut s.state, &set) {
        Ok(l) => {
            // SAFETY: writable per contract.
            unsafe {
                *logits = l.as_ptr();
                *n_vocab = l.len();
            }
            EL_OK
        }
        Err(e) => err(e),
    }
}

/// Greedy generation: clear the state, run `prompt`, then write up to `max_out` ids to `out`,
/// stopping when the next id would be `eos` (which is not written; pass `0xFFFFFFFF` for
/// none). `*n_out` is the count written.
///
/// # Safety
/// Handles from this API for the same model; `prompt` valid for `n_prompt` ids, `out` for
/// `max_out`; `n_out` writable.
#[no_mangle]
pub unsafe extern "C" fn el_generate(
    model: *const el_model,
    state: *mut el_state,
    prompt: *const u32,
    n_prompt: usize,
    out: *mut u32,
    max_out: usize,
    eos: u32,
    n_out: *mut usize,
) -> c_int {
    nonnull!(model, state, prompt, n_out);
    if max_out > 0 && out.is_null() {
        return bad(EL_ERR_NULL, "null output");
    }
    // SAFETY: valid handles per contract.
    let (m, s) = (&unsafe { &*model }.0, &mut unsafe { &mut *state }.0);
    if s.model != model {
        return bad(EL_ERR_MISMATCH, "state was made for another model handle");
    }
    // SAFETY: per contract.
    let (prompt, outs) = unsafe {
        (
            core::slice::from_raw_parts(prompt, n_prompt),
            if max_out == 0 {
                &mut [][..]
            } else {
                core::slice::from_raw_parts_mut(out, max_out)
            },
        )
    };
    // SAFETY: writable per contract.
    unsafe { *n_out = 0 };
    let set = active_set(s);
    s.state.clear();
    let mut logits = match m.model.prefill_with(prompt, 0, &mut s.state, &set) {
        Ok(l) => l,
        Err(e) => return err(e),
    };
    let mut n = 0;
    while n < outs.len() {
        let t = argmax(logits);
        // The end token ends the output; it is not part of it.
        if t == eos {
            break;
        }
        outs[n] = t;
        n += 1;
        // SAFETY: writable per contract.
        unsafe { *n_out = n };
        if n == outs.len() {
            break;
        }
        logits = match m
            .model
            .forward_with(t, prompt.len() + n - 1, &mut s.state, &set)
        {
            Ok(l) => l,
            Err(e) => return err(e),
        };
    }
    EL_OK
}

// ---- adapter streaming ---------------------------------------------------------------------

/// Bytes of memory `el_stream_begin` needs.
///
/// # Safety
/// None.
#[no_mangle]
pub unsafe extern "C" fn el_stream_size() -> usize {
    size_of::<el_stream>()
}

/// Start receiving one framed adapter (24-byte `ELAS` header + GGUF) into `buf`.
///
/// # Safety
/// `buf` valid for `buf_len` bytes, untouched by the caller until the payload is no longer
/// used; `mem` valid for `mem_len` bytes; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn el_stream_begin(
    mem: *mut c_void,
    mem_len: usize,
    buf: *mut u8,
    buf_len: usize,
    out: *mut *mut el_stream,
) -> c_int {
    nonnull!(buf, out);
    if let Err(c) = room(mem, mem_len, size_of::<el_stream>()) {
        return c;
    }
    // SAFETY: per contract, exclusively the stream's from now on.
    let b = unsafe { core::slice::from_raw_parts_mut(buf, buf_len) };
    let p = mem.cast::<el_stream>();
    // SAFETY: aligned and in range; `out` writable.
    unsafe {
        p.write(el_stream(Some(StreamLoader::new(b))));
        *out = p;
    }
    EL_OK
}

/// Feed the next chunk (any size). After an error the stream stays failed.
///
/// # Safety
/// `stream` from `el_stream_begin`; `chunk` valid for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn el_stream_push(
    stream: *mut el_stream,
    chunk: *const u8,
    len: usize,
) -> c_int {
    nonnull!(stream);
    if len > 0 && chunk.is_null() {
        return bad(EL_ERR_NULL, "null chunk");
    }
    // SAFETY: valid handle per contract.
    let Some(l) = unsafe { &mut *stream }.0.as_mut() else {
        return bad(EL_ERR_ARG, "stream already finished");
    };
    // SAFETY: per contract.
    match l.push(unsafe { bytes(chunk, len) }) {
        Ok(_) => EL_OK,
        Err(e) => fail(EL_ERR_STREAM, &e),
    }
}

/// Check the checksum and the adapter, and hand out the payload (inside the stream's
/// buffer) for `el_adapter_load`. The stream is finished either way.
///
/// # Safety
/// `stream` from `el_stream_begin`; `payload` and `len` writable.
#[no_mangle]
pub unsafe extern "C" fn el_stream_finish(
    stream: *mut el_stream,
    payload: *mut *const u8,
    len: *mut usize,
) -> c_int {
    nonnull!(stream, payload, len);
    // SAFETY: valid handle per contract.
    let Some(l) = unsafe { &mut *stream }.0.take() else {
        return bad(EL_ERR_ARG, "stream already finished");
    };
    match l.finish() {
        Ok(p) => {
            // SAFETY: writable per contract.
            unsafe {
                *payload = p.as_ptr();
                *len = p.len();
            }
            EL_OK
        }
        Err(e) => fail(EL_ERR_STREAM, &e),
    }
}

// ---- tokenizer -----------------------------------------------------------------------------

/// `u32` words of scratch the model's tokenizer needs (`*words`).
///
/// # Safety
/// `model` from `el_model_open`; `words` writable.
#[no_mangle]
pub unsafe extern "C" fn el_tokenizer_scratch_words(
    model: *const el_model,
    words: *mut usize,
) -> c_int {
    nonnull!(model, words);
    // SAFETY: valid handle per contract.
    match Tokenizer::scratch_len(&unsafe { &*model }.0.gguf) {
        Ok(n) => {
            // SAFETY: writable per contract.
            unsafe { *words = n };
            EL_OK
        }
        Err(e) => err(e),
    }
}

/// Bytes of memory `el_tokenizer_open` needs (besides the scratch).
///
/// # Safety
/// None.
#[no_mangle]
pub unsafe extern "C" fn el_tokenizer_size() -> usize {
    size_of::<el_tokenizer>()
}

/// Build the model's tokenizer with its indexes in `scratch` (`el_tokenizer_scratch_words`).
///
/// # Safety
/// `model` outlives the tokenizer; `scratch` valid for `words` u32s and used only by it;
/// `mem` valid for `mem_len` bytes; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn el_tokenizer_open(
    model: *const el_model,
    scratch: *mut u32,
    words: usize,
    mem: *mut c_void,
    mem_len: usize,
    out: *mut *mut el_tokenizer,
) -> c_int {
    nonnull!(model, scratch, out);
    if let Err(c) = room(mem, mem_len, size_of::<el_tokenizer>()) {
        return c;
    }
    // SAFETY: per contract.
    let (m, s) = unsafe { (&(*model).0, core::slice::from_raw_parts_mut(scratch, words)) };
    let t = match Tokenizer::new(&m.gguf, s) {
        Ok(t) => t,
        Err(e) => return err(e),
    };
    let p = mem.cast::<el_tokenizer>();
    // SAFETY: aligned and in range; `out` writable.
    unsafe {
        p.write(el_tokenizer(t));
        *out = p;
    }
    EL_OK
}

/// The vocabulary's end-of-sequence id in `*eos` (`EL_NO_EOS`, `0xFFFFFFFF`, if it has none):
/// what to pass to `el_generate`.
///
/// # Safety
/// `tok` from `el_tokenizer_open`; `eos` writable.
#[no_mangle]
pub unsafe extern "C" fn el_tokenizer_eos(tok: *const el_tokenizer, eos: *mut u32) -> c_int {
    nonnull!(tok, eos);
    // SAFETY: valid handle and writable pointer per contract.
    unsafe { *eos = (*tok).0.eos_id().unwrap_or(u32::MAX) };
    EL_OK
}

/// Whether the model asks for BOS in front of a prompt (`tokenizer.ggml.add_bos_token`), in
/// `*add_bos` (1 or 0).
///
/// # Safety
/// `tok` from `el_tokenizer_open`; `add_bos` writable.
#[no_mangle]
pub unsafe extern "C" fn el_tokenizer_add_bos(
    tok: *const el_tokenizer,
    add_bos: *mut c_int,
) -> c_int {
    nonnull!(tok, add_bos);
    // SAFETY: valid handle and writable pointer per contract.
    unsafe { *add_bos = c_int::from((*tok).0.add_bos()) };
    EL_OK
}

/// 1 if `id` ends generation (EOS, EOT, `<|im_end|>`, ...: llama.cpp's end-of-generation
/// list), 0 if not or if `tok` is null.
///
/// # Safety
/// `tok` from `el_tokenizer_open` (or null).
#[no_mangle]
pub unsafe extern "C" fn el_tokenizer_is_eog(tok: *const el_tokenizer, id: u32) -> c_int {
    if tok.is_null() {
        return 0;
    }
    // SAFETY: valid handle per contract.
    c_int::from(unsafe { &*tok }.0.is_eog(id))
}

/// Encode UTF-8 `text` (special tokens parsed), with BOS first if `add_bos` and the
/// vocabulary has one. `out` is also working memory: `10 * len + 16` ids always suffice.
///
/// # Safety
/// `tok` from `el_tokenizer_open`; `text` valid for `len` bytes, `out` for `cap` ids, `n`
/// writable.
#[no_mangle]
pub unsafe extern "C" fn el_tokenize(
    tok: *const el_tokenizer,
    text: *const c_char,
    len: usize,
    add_bos: c_int,
    out: *mut u32,
    cap: usize,
    n: *mut usize,
) -> c_int {
    nonnull!(tok, text, out, n);
    // SAFETY: per contract.
    let (t, raw, outs) = unsafe {
        (
            &(*tok).0,
            bytes(text.cast(), len),
            core::slice::from_raw_parts_mut(out, cap),
        )
    };
    let Ok(s) = core::str::from_utf8(raw) else {
        return bad(EL_ERR_ARG, "text is not UTF-8");
    };
    let mut k = 0;
    if add_bos != 0 {
        if let Some(b) = t.bos_id() {
            let Some(o) = outs.first_mut() else {
                return bad(EL_ERR_BUFFER, "no room for BOS");
            };
            *o = b;
            k = 1;
        }
    }
    match t.encode(s, true, &mut outs[k..]) {
        Ok(c) => {
            // SAFETY: writable per contract.
            unsafe { *n = k + c };
            EL_OK
        }
        Err(e) => err(e),
    }
}

/// Decode `ids` to UTF-8 into `out` (NUL-terminated if room); `*len` is the byte count.
///
/// # Safety
/// `tok` from `el_tokenizer_open`; `ids` valid for `n` ids, `out` for `cap` bytes, `len`
/// writable.
#[no_mangle]
pub unsafe extern "C" fn el_detokenize(
    tok: *const el_tokenizer,
    ids: *const u32,
    n: usize,
    out: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> c_int {
    nonnull!(tok, ids, out, len);
    // SAFETY: per contract.
    let (t, ids, o) = unsafe {
        (
            &(*tok).0,
            core::slice::from_raw_parts(ids, n),
            core::slice::from_raw_parts_mut(out.cast::<u8>(), cap),
        )
    };
    let room = cap.saturating_sub(1);
    match t.decode_into(ids, &mut o[..room]) {
        Ok(k) => {
            if let Some(z) = o.get_mut(k) {
                *z = 0;
            }
            // SAFETY: writable per contract.
            unsafe { *len = k };
            EL_OK
        }
        Err(e) => err(e),
    }
}

// ---- streaming decoder ---------------------------------------------------------------------

/// Opaque streaming decoder: text token by token, characters split across tokens held back.
pub struct el_decoder(Decoder<'static, 'static, &'static mut [u32]>);

const _: () = assert!(align_of::<el_decoder>() <= EL_ALIGN);

/// Bytes of object memory `el_decoder_begin` needs.
///
/// # Safety
/// None.
#[no_mangle]
pub unsafe extern "C" fn el_decoder_size() -> usize {
    size_of::<el_decoder>()
}

/// Start decoding a sequence: every token rendered (special ones included), nothing stripped.
///
/// # Safety
/// `tok` from `el_tokenizer_open`, outliving the decoder; `mem` valid for `mem_len` bytes;
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn el_decoder_begin(
    tok: *const el_tokenizer,
    mem: *mut c_void,
    mem_len: usize,
    out: *mut *mut el_decoder,
) -> c_int {
    nonnull!(tok, out);
    if let Err(c) = room(mem, mem_len, size_of::<el_decoder>()) {
        return c;
    }
    // SAFETY: valid handle per contract, outliving the decoder.
    let t: &'static Tokenizer<'static> = unsafe { &(*tok).0 };
    let p = mem.cast::<el_decoder>();
    // SAFETY: aligned and in range (checked by room); `out` writable.
    unsafe {
        p.write(el_decoder(t.decoder()));
        *out = p;
    }
    EL_OK
}

/// Decode one token: write the UTF-8 text it completes to `out` (`*len` bytes, no NUL).
/// `max_token_bytes * 3 + 3` bytes always suffice; on `EL_ERR_BUFFER` nothing is written and
/// the decoder is unchanged.
///
/// # Safety
/// `dec` from `el_decoder_begin`; `out` valid for `cap` bytes (or null with `cap` 0); `len`
/// writable.
#[no_mangle]
pub unsafe extern "C" fn el_decoder_push(
    dec: *mut el_decoder,
    id: u32,
    out: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> c_int {
    // SAFETY: the caller's contract, passed on.
    unsafe { decoder_out(dec, out, cap, len, |d, o| d.0.push(id, o)) }
}

/// The shared body of `el_decoder_push` / `el_decoder_finish`: null checks, `out` as a slice
/// (empty for `cap` 0), `f`'s byte count to `*len`.
///
/// # Safety
/// As `el_decoder_push`.
unsafe fn decoder_out(
    dec: *mut el_decoder,
    out: *mut c_char,
    cap: usize,
    len: *mut usize,
    f: impl FnOnce(&mut el_decoder, &mut [u8]) -> Result<usize, Error>,
) -> c_int {
    nonnull!(dec, len);
    if cap > 0 && out.is_null() {
        return bad(EL_ERR_NULL, "null output");
    }
    // SAFETY: per contract (an empty slice for cap 0).
    let (d, o) = unsafe {
        (
            &mut *dec,
            if cap == 0 {
                &mut [][..]
            } else {
                core::slice::from_raw_parts_mut(out.cast::<u8>(), cap)
            },
        )
    };
    match f(d, o) {
        Ok(k) => {
            // SAFETY: writable per contract.
            unsafe { *len = k };
            EL_OK
        }
        Err(e) => err(e),
    }
}

/// End of the sequence: a character still incomplete becomes U+FFFD (3 bytes) in `out`;
/// `*len` is 0 or 3. The decoder may then start a new sequence.
///
/// # Safety
/// As `el_decoder_push`.
#[no_mangle]
pub unsafe extern "C" fn el_decoder_finish(
    dec: *mut el_decoder,
    out: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> c_int {
    // SAFETY: the caller's contract, passed on.
    unsafe { decoder_out(dec, out, cap, len, |d, o| d.0.finish(o)) }
}

#[cfg(all(not(feature = "std"), target_os = "none"))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // Unreachable from input bytes (the core returns errors); a C firmware sees a hang it can
    // catch with its watchdog rather than undefined behaviour.
    loop {}
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;

    fn last() -> std::string::String {
        let mut b = [0 as c_char; 192];
        // SAFETY: `b` holds 192 bytes.
        let n = unsafe { el_last_error(b.as_mut_ptr(), b.len()) };
        let bytes: std::vec::Vec<u8> = b[..n.min(191)].iter().map(|&c| c as u8).collect();
        std::string::String::from_utf8(bytes).unwrap()
    }

    /// Each thread reads back its own failure, whatever other threads did since.
    #[test]
    fn last_error_is_per_thread() {
        let mut out = core::ptr::null_mut();
        // SAFETY: null arguments are what is tested; nothing is dereferenced.
        let st = unsafe { el_model_open(core::ptr::null_mut(), 0, core::ptr::null(), 0, &mut out) };
        assert_eq!(st, EL_ERR_NULL);
        std::thread::spawn(|| {
            let (mut buf, mut out) = ([0u8; 8], core::ptr::null_mut());
            // SAFETY: `buf` is valid; null object memory is what is tested.
            let st =
                unsafe { el_stream_begin(core::ptr::null_mut(), 0, buf.as_mut_ptr(), 8, &mut out) };
            assert_eq!(st, EL_ERR_NULL);
            assert_eq!(last(), "object memory is null");
        })
        .join()
        .unwrap();
        assert_eq!(last(), "null pointer argument");
    }
}
