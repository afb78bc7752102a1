//! The demo image: the tiny model and two adapters in flash, generating for a prompt with the
//! base, with adapter A, with B, with both, rejecting bad input, and streaming B in chunks as
//! if from a UART (see [`edgelora_firmware::scenario`]). Prints `EL ...` lines over
//! semihosting (text, or defmt frames with the Cortex-M crate's `defmt` feature), then the
//! budget line, and exits 0 on success.
#![no_std]
#![no_main]

#[cfg(not(el_defmt))]
use core::fmt::Write;
use edgelora::kernels;
#[cfg(not(el_defmt))]
use edgelora::kernels::Isa;
use edgelora::lora::LoraPair;
use edgelora_firmware::config::{
    BOARD, CACHE, CTX, MAX_LAYERS, N_GEN, PROMPT, PROMPT_CAP, SLOTS, STATE_F32S, STREAM_BYTES,
    TOK_WORDS,
};
use edgelora_firmware::entry;
use edgelora_firmware::scenario::{self, Assets, Buffers};
use edgelora_firmware::{assets, exit, paint_stack, stack_guard, Aligned, Once};
#[cfg(not(el_defmt))]
use edgelora_firmware::{print_budget, Out};

// Everything that changes lives in statics sized by build.rs (no heap): .bss, zeroed by
// cortex-m-rt before main.
static STATE: Once<[f32; STATE_F32S]> = Once::new([0.0; STATE_F32S]);
static TOK: Once<[u32; TOK_WORDS]> = Once::new([0; TOK_WORDS]);
static PROMPT_IDS: Once<[u32; PROMPT_CAP]> = Once::new([0; PROMPT_CAP]);
static GEN: Once<[u32; N_GEN]> = Once::new([0; N_GEN]);
const NO_PAIR: Option<LoraPair<'static>> = None;
static SLOTS_A: Once<[Option<LoraPair<'static>>; SLOTS]> = Once::new([NO_PAIR; SLOTS]);
static SLOTS_B: Once<[Option<LoraPair<'static>>; SLOTS]> = Once::new([NO_PAIR; SLOTS]);
static SLOTS_S: Once<[Option<LoraPair<'static>>; SLOTS]> = Once::new([NO_PAIR; SLOTS]);
static STREAM: Once<Aligned<[u8; STREAM_BYTES]>> = Once::new(Aligned([0; STREAM_BYTES]));

#[entry]
fn main() -> ! {
    paint_stack();
    stack_guard();
    #[cfg(not(el_defmt))]
    let mut out = Out;
    #[cfg(not(el_defmt))]
    let _ = writeln!(
        out,
        "EL-BOARD {BOARD} kernel={}",
        kernels::active_isa_name()
    );
    // defmt (the Cortex-M crate's feature `defmt`): each line one frame, formatted by the
    // host's decoder; the scenario's lines go through `log::Frames` (`defmt::Format` of
    // `scenario::Line`, the core's errors by the core's own `defmt::Format`).
    #[cfg(el_defmt)]
    let mut out = edgelora_firmware::log::Frames;
    #[cfg(el_defmt)]
    defmt::println!(
        "EL-BOARD {=str} kernel={=str}",
        BOARD,
        kernels::active_isa_name()
    );
    let (
        Some(state),
        Some(tok),
        Some(prompt),
        Some(gen),
        Some(sa),
        Some(sb),
        Some(ss),
        Some(stream),
    ) = (
        STATE.take(),
        TOK.take(),
        PROMPT_IDS.take(),
        GEN.take(),
        SLOTS_A.take(),
        SLOTS_B.take(),
        SLOTS_S.take(),
        STREAM.take(),
    )
    else {
        #[cfg(not(el_defmt))]
        let _ = writeln!(out, "EL-FAIL statics taken twice");
        #[cfg(el_defmt)]
        defmt::println!("EL-FAIL statics taken twice");
        exit(false)
    };
    let a = Assets {
        base: &assets::BASE.0,
        adapter_a: &assets::ADAPTER_A.0,
        adapter_b: &assets::ADAPTER_B.0,
        adapter_wrong: &assets::ADAPTER_WRONG.0,
        prompt: PROMPT,
        ctx: CTX,
        cache: CACHE,
    };
    let b = Buffers {
        state,
        tok,
        prompt,
        gen,
        slots_a: sa,
        slots_b: sb,
        slots_s: ss,
        stream: &mut stream.0,
    };
    let ok = match scenario::run::<MAX_LAYERS, _>(&a, b, &mut out) {
        Ok(()) => true,
        Err(e) => {
            #[cfg(not(el_defmt))]
            let _ = writeln!(out, "EL-FAIL {e}");
            #[cfg(el_defmt)]
            defmt::println!("EL-FAIL {}", e);
            false
        }
    };
    #[cfg(not(el_defmt))]
    {
        let _ = write!(out, "EL-KERNELS ran=");
        for isa in Isa::ALL.into_iter().filter(|&i| kernels::ran(i)) {
            let _ = write!(out, "{} ", isa.name());
        }
        let _ = writeln!(out);
        let _ = print_budget(&mut out);
    }
    #[cfg(el_defmt)]
    {
        defmt::println!("EL-KERNELS ran={}", edgelora_firmware::log::Ran);
        edgelora_firmware::log::print_budget();
    }
    exit(ok)
}
