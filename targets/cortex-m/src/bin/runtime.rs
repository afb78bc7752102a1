//! The runtime alone, for the flash budget: parse the GGUF in flash, load the model, bind
//! adapter A, prefill fixed token ids and generate greedily. No tokenizer and no error
//! formatting, so `EL-BUDGET flash_runtime` is what inference itself costs in flash.
//! Prints the generated ids (checked against the host by tests/tests/firmware.rs), as text or,
//! with the Cortex-M crate's `defmt` feature, as defmt frames.
#![no_std]
#![no_main]

use core::mem::MaybeUninit;
use edgelora::lora::{Adapter, AdapterSet, LoraPair};
use edgelora::model::{Model, State};
use edgelora::sample::argmax;
use edgelora::Gguf;
use edgelora_firmware::config::{CACHE, CTX, MAX_LAYERS, N_GEN, SLOTS, STATE_F32S};
use edgelora_firmware::entry;
use edgelora_firmware::{assets, exit, paint_stack, stack_guard, Once};

/// Prompt ids (any ids below the vocabulary size of every model this runs).
pub const IDS: [u32; 8] = [1, 17, 42, 99, 3, 250, 7, 120];

static STATE: Once<[f32; STATE_F32S]> = Once::new([0.0; STATE_F32S]);
const NO_PAIR: Option<LoraPair<'static>> = None;
static SLOTS_A: Once<[Option<LoraPair<'static>>; SLOTS]> = Once::new([NO_PAIR; SLOTS]);

// With defmt the inliner kept `run` (and `Adapter::parse`, `State::with_cache`, `prefill_with`
// with it) out of `main`: 66456 bytes of flash; forced in, 66052 (an386). The plain build
// inlines it on its own (64544), and forcing it there made it larger (66300).
#[cfg_attr(el_defmt, inline(always))]
fn run(out: &mut [u32; N_GEN]) -> Option<()> {
    let g = Gguf::parse(&assets::BASE.0).ok()?;
    // Built in place: the model object (~250 bytes a layer slot) never passes through a
    // by-value return, which would copy it on the stack.
    let mut slot = MaybeUninit::uninit();
    let model: &Model<'_, MAX_LAYERS> = Model::init_from_gguf(&g, &mut slot).ok()?;
    let mut st = State::with_cache(model.config(), CTX, CACHE, STATE.take()?).ok()?;
    let ad = Adapter::parse(&assets::ADAPTER_A.0).ok()?;
    let bound = ad.bind(&g, model, SLOTS_A.take()?).ok()?;
    let set = AdapterSet::single(&bound, 1.0);
    let mut logits = model.prefill_with(&IDS, 0, &mut st, &set).ok()?;
    for (i, o) in out.iter_mut().enumerate() {
        *o = argmax(logits);
        logits = model.forward_with(*o, IDS.len() + i, &mut st, &set).ok()?;
    }
    Some(())
}

#[entry]
fn main() -> ! {
    paint_stack();
    stack_guard();
    let mut ids = [0u32; N_GEN];
    let ok = run(&mut ids).is_some();
    // Inline here, not in a function of its own: the plain image's flash depends on it
    // (moving these lines into a `report` fn un-inlined `run` and cost 2164 bytes).
    #[cfg(not(el_defmt))]
    {
        use core::fmt::Write;
        let mut o = edgelora_firmware::Out;
        let _ = write!(o, "EL-RUNTIME ok={ok} ids=");
        for id in ids {
            let _ = write!(o, "{id},");
        }
        let _ = writeln!(o);
        let _ = edgelora_firmware::print_budget(&mut o);
    }
    #[cfg(el_defmt)]
    report(ok, &ids);
    exit(ok)
}

/// The same lines as defmt frames (the Cortex-M crate's feature `defmt`): the numbers are
/// formatted by the host's decoder.
#[cfg(el_defmt)]
#[inline(never)]
fn report(ok: bool, ids: &[u32]) {
    use edgelora_firmware::log;
    defmt::println!("EL-RUNTIME ok={=bool} ids={}", ok, log::Ids(ids));
    log::print_budget();
}
