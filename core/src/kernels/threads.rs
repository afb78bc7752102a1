//! Splitting matvec/matmul outputs across threads on hosts (feature `std`).
//!
//! # Design
//!
//! A token runs about 200 matvecs of 5-500 µs each, so spawning threads per matvec (tens of
//! µs each) would eat the gain. Instead a small persistent pool of `threads - 1` workers waits
//! on one atomic word, `NEXT = (generation, chunks, next unclaimed chunk)`. The caller splits
//! the output into a few chunks per thread, publishes the job (a type-erased `&F`) with a new
//! generation, unparks the workers and claims chunks itself; workers claim chunks with a
//! compare-and-swap on the same word. Claiming is dynamic, so on a loaded machine a worker
//! that is not scheduled costs nothing: the caller simply runs its chunks too, and only waits
//! for chunks a worker has actually claimed. Idle workers spin briefly (the next matvec
//! usually follows within microseconds), then park until the next publication.
//!
//! # Results
//!
//! Each output row (matvec) or column (matmul) is computed by exactly one thread, with the
//! same kernel code on the same inputs, and row chunk boundaries are multiples of the kernels'
//! row grouping, so any pairing a kernel does inside a chunk is the same as single-threaded (a
//! blocked matmul's columns do not depend on how they are grouped into passes): results are
//! bit for bit identical to one thread (`tests/tests/threads.rs`).
//!
//! # Soundness
//!
//! The job borrows the caller's stack (the closure and the output chunks). A worker touches it
//! only after claiming a chunk of the current generation, and the caller does not return (not
//! even by unwinding: the wait sits in a drop guard) before every chunk of its generation has
//! finished, so the borrow outlives every use. A stale worker that wakes later finds the
//! generation's chunks exhausted and touches nothing. Only one caller at a time owns the pool
//! (`BUSY`); a concurrent caller (another thread running another model) computes inline
//! instead of waiting, which gives the same results.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::Thread;
use std::vec::Vec;

/// Most threads a split uses (caller included); [`set_threads`] clamps to it.
pub const MAX_THREADS: usize = 64;

/// Chunks per thread: enough that a descheduled worker's share is picked up by the others,
/// few enough that claiming (one CAS each) stays negligible.
const CHUNKS_PER_THREAD: usize = 4;
/// Most chunks one split makes (fits the 8-bit fields of `NEXT`).
const MAX_CHUNKS: usize = 64;

/// Fewest units (rows) per thread worth a hand-off; below that the split costs more than it
/// saves (a wake-up is ~1 µs, 16 rows of a 576-wide Q4_1 matvec ~0.3 µs).
const MIN_UNITS_PER_THREAD: usize = 64;

/// Idle spin iterations before a worker parks (~10-50 µs: longer than the gap between two
/// matvecs of a token, short enough not to steal a core from others on a loaded host).
const SPINS: u32 = 1 << 12;

static THREADS: AtomicUsize = AtomicUsize::new(1);

/// Use `n` threads (the caller plus `n - 1` pool workers) for matvecs and matmuls from now
/// on, process-wide; clamped to `1..=MAX_THREADS`. 1 (the default) computes everything on the
/// calling thread. Workers are started on first use and live for the rest of the process.
pub fn set_threads(n: usize) {
    THREADS.store(n.clamp(1, MAX_THREADS), Ordering::Relaxed);
}

/// The count set by [`set_threads`] (1 by default).
pub fn threads() -> usize {
    THREADS.load(Ordering::Relaxed)
}

/// Splits handed to the pool so far (process-wide), so a test can check that the threaded
/// path actually ran rather than falling back to one thread.
pub fn pool_runs() -> usize {
    RUNS.load(Ordering::Relaxed)
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

/// A published job: `call(data, chunk)` runs one chunk.
#[derive(Clone, Copy)]
struct Job {
    data: *const (),
    call: unsafe fn(*const (), usize),
}

/// `NEXT`: generation (48 bits) | chunks (8 bits) | next unclaimed chunk (8 bits). The
/// generation makes a stale compare-and-swap fail; it would take 2^48 jobs during one
/// worker's load-to-CAS window to wrap.
const fn pack(gen: u64, n: usize, i: usize) -> u64 {
    (gen << 16) | ((n as u64 & 0xff) << 8) | (i as u64 & 0xff)
}

const fn unpack(v: u64) -> (u64, usize, usize) {
    (v >> 16, ((v >> 8) & 0xff) as usize, (v & 0xff) as usize)
}

static NEXT: AtomicU64 = AtomicU64::new(0);
/// Chunks of the current generation finished (by anyone).
static DONE: AtomicUsize = AtomicUsize::new(0);
/// A chunk of the current generation panicked on a worker.
static PANICKED: AtomicBool = AtomicBool::new(false);
/// Held by the one caller that owns the pool for a split.
static BUSY: AtomicBool = AtomicBool::new(false);
/// Handles of the spawned workers, to unpark them.
static WORKERS: Mutex<Vec<Thread>> = Mutex::new(Vec::new());

struct JobCell(UnsafeCell<Job>);

// SAFETY: the cell is written only by the `BUSY` owner, before it publishes a generation
// (Release store of `NEXT`) and after every chunk of the previous one finished (`DONE`,
// Acquire). It is read only by a thread that claimed a chunk of the current generation (CAS
// on `NEXT`, Acquire), and that generation cannot end, so the cell cannot be rewritten,
// before the reader's chunk is counted in `DONE` (Release). Writes and reads never race.
unsafe impl Sync for JobCell {}

unsafe fn noop(_: *const (), _: usize) {}

static JOB: JobCell = JobCell(UnsafeCell::new(Job {
    data: core::ptr::null(),
    call: noop,
}));

/// Call the `F` behind `data` with `chunk`.
///
/// # Safety
/// `data` must point to a live `F` (it came from `&F` in [`run`], which outlives the call).
unsafe fn call<F: Fn(usize) + Sync>(data: *const (), chunk: usize) {
    // SAFETY: per this function's contract `data` is a `&F` still borrowed by `run`.
    let f = unsafe { &*data.cast::<F>() };
    f(chunk);
}

/// Claim the next chunk of the current generation, if any.
fn claim() -> Option<usize> {
    let mut v = NEXT.load(Ordering::Acquire);
    loop {
        let (g, n, i) = unpack(v);
        if i >= n {
            return None;
        }
        match NEXT.compare_exchange_weak(v, pack(g, n, i + 1), Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return Some(i),
            Err(now) => v = now,
        }
    }
}

/// Run claimed `chunk` of the current generation and count it done.
fn run_chunk(chunk: usize) {
    // SAFETY: we claimed `chunk` of the current generation, so `JOB` holds that generation's
    // job and will not be rewritten before we count the chunk in `DONE` (see `JobCell`).
    let job = unsafe { *JOB.0.get() };
    let r = std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| {
        // SAFETY: `job.data` points to the `F` that `job.call` was instantiated for, borrowed
        // by the `run` that published this generation; `run` does not return (even when
        // unwinding) before `DONE` counts every chunk, and we count ours only after this.
        unsafe { (job.call)(job.data, chunk) }
    }));
    if r.is_err() {
        PANICKED.store(true, Ordering::Relaxed);
    }
    DONE.fetch_add(1, Ordering::Release);
}

fn worker() {
    let mut idle = 0u32;
    loop {
        if let Some(c) = claim() {
            run_chunk(c);
            idle = 0;
        } else if idle < SPINS {
            idle += 1;
            core::hint::spin_loop();
        } else {
            // A lost wake-up is impossible: an `unpark` before `park` makes it return at once.
            std::thread::park();
            idle = 0;
        }
    }
}

/// Waits until all `n` chunks of the current generation finished, then frees the pool: on
/// normal return and while unwinding, so no worker can still hold the caller's borrows.
struct Finish(usize);

impl Drop for Finish {
    fn drop(&mut self) {
        // Chunks nobody claimed yet are ours (cannot fail to drain: claims only go up).
        while let Some(c) = claim() {
            run_chunk(c);
        }
        let mut spins = 0u32;
        while DONE.load(Ordering::Acquire) < self.0 {
            if spins < 64 {
                spins += 1;
                core::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        BUSY.store(false, Ordering::Release);
    }
}

/// Run `f(0) .. f(n - 1)` on this thread and the pool's workers, and return when all are
/// done. Runs everything inline if the pool is busy (another caller) or cannot start.
///
/// # Panics
/// If a chunk panics (the kernels never do), after every chunk has finished.
fn run<F: Fn(usize) + Sync>(n: usize, workers_wanted: usize, f: &F) {
    let inline = || (0..n).for_each(f);
    if n <= 1
        || n > MAX_CHUNKS
        || BUSY
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        return inline();
    }
    let Ok(mut workers) = WORKERS.lock() else {
        BUSY.store(false, Ordering::Release);
        return inline();
    };
    while workers.len() < workers_wanted {
        let id = workers.len() + 1;
        match std::thread::Builder::new()
            .name(std::format!("edgelora-{id}"))
            .spawn(worker)
        {
            Ok(h) => workers.push(h.thread().clone()),
            Err(_) => break,
        }
    }
    // SAFETY: we hold `BUSY`, and the previous generation's `Finish` saw all its chunks done
    // before releasing it, so no thread reads `JOB` now (see `JobCell`).
    unsafe {
        *JOB.0.get() = Job {
            data: (f as *const F).cast(),
            call: call::<F>,
        };
    }
    PANICKED.store(false, Ordering::Relaxed);
    DONE.store(0, Ordering::Relaxed);
    RUNS.fetch_add(1, Ordering::Relaxed);
    let (g, _, _) = unpack(NEXT.load(Ordering::Relaxed));
    // From here workers may hold `f`: `Finish` keeps us from returning before they are done.
    let done = Finish(n);
    NEXT.store(pack(g.wrapping_add(1), n, 0), Ordering::Release);
    for t in workers.iter().take(workers_wanted) {
        t.unpark();
    }
    drop(workers);
    drop(done);
    assert!(
        !PANICKED.load(Ordering::Relaxed),
        "a kernel thread panicked"
    );
}

/// A chunk of output waiting for the thread that claims it: (first unit, values).
type Slot<'a> = Mutex<Option<(usize, &'a mut [f32])>>;

/// Split `y` (`n_units` units of `unit` values) into one chunk per thread, boundaries on
/// multiples of `align` units, and call `f(first_unit, chunk)` for each, in parallel.
/// With one thread, or too little work, it is a plain `f(0, y)`.
pub(crate) fn split<F>(y: &mut [f32], unit: usize, align: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let n_units = y.len().checked_div(unit).unwrap_or(0);
    let t = threads().min(n_units / MIN_UNITS_PER_THREAD.div_ceil(unit).max(1));
    if t <= 1 {
        return f(0, y);
    }
    let chunks = (t * CHUNKS_PER_THREAD).min(MAX_CHUNKS);
    let per = n_units.div_ceil(chunks).next_multiple_of(align.max(1));
    // One slot per chunk, each taken by the one thread that claims it (safe hand-off of `&mut`).
    let slots: [Slot<'_>; MAX_CHUNKS] = [const { Mutex::new(None) }; MAX_CHUNKS];
    let mut parts = 0;
    for (i, (s, c)) in slots.iter().zip(y.chunks_mut(per * unit)).enumerate() {
        if let Ok(mut g) = s.lock() {
            *g = Some((i * per, c));
        }
        parts = i + 1;
    }
    run(parts, t - 1, &|i: usize| {
        let chunk = slots
            .get(i)
            .and_then(|s| s.lock().ok())
            .and_then(|mut g| g.take());
        if let Some((u0, c)) = chunk {
            f(u0, c);
        }
    });
}
