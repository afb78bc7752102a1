//! x86_64 kernels and CPU feature detection without `std`.
//!
//! `cpuid` reports what the CPU implements; `xgetbv` reports which register state the OS
//! saves on context switches. AVX needs XCR0 bits 1-2 (SSE, AVX), AVX-512 also bits 5-7
//! (opmask, upper ZMM halves, ZMM16-31): a CPU can implement AVX-512 under an OS that has
//! not enabled it, and then the instructions fault (Intel SDM vol. 1, 13.3).

pub mod avx2;
mod avx2_attn;
#[cfg(any(feature = "quant-q5", feature = "quant-k"))]
mod avx2_mm;
mod avx2_q;
pub mod avx512;
mod avx512_act;
mod avx512_q;

use core::arch::x86_64::{__cpuid, __cpuid_count, _mm_prefetch, _xgetbv, _MM_HINT_T1};

/// Hint the cache to fetch the line holding `b`, a byte of a [`Side`](crate::kernels::Side)
/// stream, into L2 (not L1: the stream is read after the rest of the base matvec, which would
/// evict it from L1 first).
#[inline(always)]
pub(crate) fn prefetch_side(b: &u8) {
    // SAFETY: SSE (which `prefetcht1` belongs to) is part of the x86_64 baseline, so every
    // x86_64 CPU runs it; the address is that of a live byte, and a prefetch never faults.
    unsafe { _mm_prefetch::<_MM_HINT_T1>((b as *const u8).cast()) };
}

/// What the kernels here need, probed once by the dispatcher.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Features {
    /// AVX2 + FMA + F16C with OS support for YMM state.
    pub avx2: bool,
    /// AVX-512 F/BW/VL + VNNI + VBMI with OS support for ZMM and opmask state (plus
    /// `avx2`): Intel Ice Lake / Sapphire Rapids, AMD Zen 4 and later.
    pub avx512: bool,
}

#[target_feature(enable = "xsave")]
fn xcr0() -> u64 {
    // SAFETY: only called after cpuid reported OSXSAVE, which means XGETBV is enabled and
    // XCR0 (index 0) is readable.
    unsafe { _xgetbv(0) }
}

pub(crate) fn features() -> Features {
    let max_leaf = __cpuid(0).eax;
    let l1 = __cpuid(1);
    let bit = |r: u32, b: u32| r >> b & 1 == 1;
    let osxsave = bit(l1.ecx, 27);
    let xcr0 = if osxsave {
        // SAFETY: OSXSAVE is set (checked above), so the `xsave` feature is present.
        unsafe { xcr0() }
    } else {
        0
    };
    let os_ymm = xcr0 & 0b110 == 0b110;
    let os_zmm = xcr0 & 0b1110_0110 == 0b1110_0110;
    let (ebx7, ecx7) = if max_leaf >= 7 {
        let l7 = __cpuid_count(7, 0);
        (l7.ebx, l7.ecx)
    } else {
        (0, 0)
    };
    let avx2 = os_ymm
        && bit(l1.ecx, 28) // avx
        && bit(l1.ecx, 12) // fma
        && bit(l1.ecx, 29) // f16c
        && bit(ebx7, 5); // avx2
    let avx512 = avx2
        && os_zmm
        && bit(ebx7, 16) // avx512f
        && bit(ebx7, 30) // avx512bw
        && bit(ebx7, 31) // avx512vl
        && bit(ecx7, 1) // avx512_vbmi
        && bit(ecx7, 11); // avx512_vnni
    Features { avx2, avx512 }
}
