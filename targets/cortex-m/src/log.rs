//! Logging through defmt (feature `defmt`): a global logger that sends defmt frames over
//! semihosting stdout, and the `defmt::Format` of every line the `demo` and `runtime` images
//! print, written so that `defmt-print -e <elf>` decodes them into exactly the text the plain
//! build prints (tests/tests/firmware.rs compares the decoded lines with the host's).
//!
//! With defmt the device sends an index into the ELF's `.defmt` string table plus the raw
//! arguments, and the host formats them: the numbers, the `{:?}` escapes and the core's error
//! texts are not formatted in flash. Measured (`EL-BUDGET flash_runtime`, an386, portable,
//! 2026-12-06): `demo` 135016 bytes plain, 133320 defmt; `runtime` 64544 plain, 66168 defmt
//! (it prints two lines, so there is little formatting to leave out; the core's tensor-name
//! formatting keeps `core::fmt` in it anyway, and the logger and the inliner's choices cost
//! more). Hence plain text stays the crate's default. The core's `core::fmt` use is one
//! `format_args!("blk.{i}.{part}.{kind}")` (`model::layer_tensor_name_kind`); written by hand
//! it would take the defmt runtime to 64936 and the plain one to 64376 (measured with such a
//! patch, not committed here: the core is outside this change).
//!
//! The logger is this crate's own rather than `defmt-semihosting` 0.4: that crate brings a
//! second semihosting implementation (the `semihosting` crate beside `cortex-m-semihosting`,
//! which the images need for exit anyway), a `critical-section` lock and panicking misuse
//! checks, and makes one semihosting call per encoder chunk (several per frame); this one
//! buffers a frame in RAM and writes it with one call where it fits. Measured (an386,
//! portable): `runtime` 66052 bytes of flash with this logger, 66344 with `defmt-semihosting`;
//! `demo` 133204 against 133508; the buffer costs 132 bytes of RAM more. ([`recover`], which
//! `defmt-semihosting` has no counterpart of, then added 116 bytes: 66168 and 133320.)
//!
//! The images log from thread mode only (no interrupt handler logs); the one context that can
//! interrupt a frame is the HardFault handler, which never returns, so the logger needs no
//! lock. That handler calls [`recover`] first: it rebuilds the logger's state (a stack
//! overflow may have run over it: a frame bigger than the stack guard can step over the guard
//! into `.bss`) and ends any frame the fault cut with a zero byte (rzCOBS frames are
//! zero-terminated, so the decoder drops the cut frame and resynchronises).

use core::cell::UnsafeCell;
use cortex_m_semihosting::hio::{self, HostStream};

use crate::scenario::{Failure, Line, Sink};

/// Bytes of a frame buffered before a semihosting write. The longest frame the images send
/// is a `run` line (8 ids, a hash and up to 256 bytes of text: about 300 bytes encoded);
/// a longer frame is written in pieces, which only costs extra semihosting calls.
const BUF: usize = 128;

/// The frame buffer and the host handle.
struct Out {
    /// Host handle, opened on first use (`None` also if the host refused it).
    host: Option<HostStream>,
    opened: bool,
    len: usize,
    buf: [u8; BUF],
}

struct State {
    encoder: defmt::Encoder,
    out: Out,
}

impl State {
    const fn new() -> State {
        State {
            encoder: defmt::Encoder::new(),
            out: Out {
                host: None,
                opened: false,
                len: 0,
                buf: [0; BUF],
            },
        }
    }
}

struct Shared(UnsafeCell<State>);

// SAFETY: the images are single-threaded and log from thread mode only; the HardFault
// handler, the one context that can preempt a frame, never returns to the frame it cut
// (see the module docs), so no two live references to the state are ever used in turn.
unsafe impl Sync for Shared {}

static STATE: Shared = Shared(UnsafeCell::new(State::new()));

impl Out {
    fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = (BUF - self.len).min(bytes.len());
            self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
            if self.len == BUF {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        if !self.opened {
            self.opened = true;
            self.host = hio::hstdout().ok();
        }
        if let Some(h) = &mut self.host {
            // Nowhere to report a host error to.
            let _ = h.write_all(&self.buf[..self.len]);
        }
        self.len = 0;
    }
}

/// Run `f` on the logger state.
fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    // SAFETY: see `Shared`: one context at a time uses the state, and a context that cuts
    // another's frame never gives control back to it.
    f(unsafe { &mut *STATE.0.get() })
}

#[defmt::global_logger]
struct Logger;

// SAFETY: `acquire`/`release` bracket each frame and `write` only appends to the open frame;
// the state is only touched as `Shared` allows.
unsafe impl defmt::Logger for Logger {
    fn acquire() {
        with(|s| s.encoder.start_frame(|b| s.out.push(b)))
    }

    unsafe fn flush() {
        with(|s| s.out.flush())
    }

    unsafe fn release() {
        with(|s| {
            s.encoder.end_frame(|b| s.out.push(b));
            s.out.flush();
        })
    }

    unsafe fn write(bytes: &[u8]) {
        with(|s| s.encoder.write(bytes, |b| s.out.push(b)))
    }
}

/// Start the logger over, from the fault handler: fresh state (the fault may have come from a
/// stack that ran over it) and a zero byte that ends any frame the fault cut short.
pub fn recover() {
    with(|s| {
        *s = State::new();
        s.out.push(&[0]);
        s.out.flush();
    })
}

/// Ids as `1,2,3,` (the runtime image's `ids=` field).
pub struct Ids<'a>(pub &'a [u32]);

impl defmt::Format for Ids<'_> {
    fn format(&self, f: defmt::Formatter<'_>) {
        for id in self.0 {
            defmt::write!(f, "{=u32},", id);
        }
    }
}

/// Ids as `[1,2,3]` (the scenario's `ids=` fields; defmt's own `{=[u32]}` puts spaces in).
struct IdList<'a>(&'a [u32]);

impl defmt::Format for IdList<'_> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "[");
        for (i, id) in self.0.iter().enumerate() {
            if i > 0 {
                defmt::write!(f, ",");
            }
            defmt::write!(f, "{=u32}", id);
        }
        defmt::write!(f, "]");
    }
}

/// The same text as `Line`'s `Display`; strings that the plain build prints with `{:?}` use
/// the decoder's `:?` hint, which is Rust's `Debug` of `str` on the host.
impl defmt::Format for Line<'_> {
    fn format(&self, f: defmt::Formatter<'_>) {
        match *self {
            Line::Model {
                layers,
                dim,
                ffn,
                vocab,
                ctx,
                kv,
                block,
                state_bytes,
            } => defmt::write!(
                f,
                "EL model layers={=usize} dim={=usize} ffn={=usize} vocab={=usize} ctx={=usize} kv={=str} block={=usize} state_bytes={=usize}",
                layers,
                dim,
                ffn,
                vocab,
                ctx,
                kv,
                block,
                state_bytes
            ),
            Line::Prompt { text, ids } => {
                defmt::write!(f, "EL prompt {=str:?} ids={}", text, IdList(ids))
            }
            Line::Run {
                name,
                ids,
                hash,
                text,
            } => defmt::write!(
                f,
                "EL run {=str} ids={} hash={=u32:08x} text={=str:?}",
                name,
                IdList(ids),
                hash,
                text
            ),
            Line::Stream {
                bytes,
                chunks,
                payload,
            } => defmt::write!(
                f,
                "EL stream bytes={=usize} chunks={=u32} payload={=usize}",
                bytes,
                chunks,
                payload
            ),
            // The core's error through its own `defmt::Format` (its `defmt` feature).
            Line::Reject { what, err } => defmt::write!(f, "EL reject {=str}: {}", what, err),
            Line::Done => defmt::write!(f, "EL scenario ok"),
        }
    }
}

impl defmt::Format for Failure {
    fn format(&self, f: defmt::Formatter<'_>) {
        match self {
            Failure::Core(step, e) => defmt::write!(f, "{=str}: {}", step, e),
            Failure::Check(what) => defmt::write!(f, "check failed: {=str}", what),
            Failure::Fmt => defmt::write!(f, "output failed"),
        }
    }
}

/// The kernels that ran, as `portable ` (each name and a space: the demo's `EL-KERNELS ran=`).
pub struct Ran;

impl defmt::Format for Ran {
    fn format(&self, f: defmt::Formatter<'_>) {
        use edgelora::kernels::{self, Isa};
        for isa in Isa::ALL.into_iter().filter(|&i| kernels::ran(i)) {
            defmt::write!(f, "{=str} ", isa.name());
        }
    }
}

/// The scenario's sink on a defmt image: one frame per line.
pub struct Frames;

impl Sink for Frames {
    fn line(&mut self, l: &Line<'_>) -> core::fmt::Result {
        defmt::println!("{}", l);
        Ok(())
    }
}

/// The `EL-BUDGET` line ([`crate::budget`]) as a frame.
pub fn print_budget() {
    let b = crate::budget();
    defmt::println!(
        "EL-BUDGET flash_runtime={=usize} text={=usize} rodata_runtime={=usize} assets={=usize} ram_static={=usize} stack_hwm={=usize} ram_total={=usize}",
        b.flash_runtime,
        b.text,
        b.rodata_runtime,
        b.assets,
        b.ram_static,
        b.stack_hwm,
        b.ram_total
    );
}
