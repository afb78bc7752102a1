//! The type table: which quant types the fast path runs, and where each one's entries sit in a
//! [`Kernel`] table.
//!
//! A weight type is one file in `quant/` (its block layout and scalar oracle, [`QuantType`])
//! plus, here, one [`Runnable`] impl naming its row kernel's slot in [`Kernel`] and one line in
//! [`with_type`]. Every table starts as the portable one, whose row kernel for a type is
//! [`rows_oracle`] (the type's own `vec_dot` per row) unless a scalar loop was written for it,
//! and an ISA overrides only the slots it speeds up (`..portable::KERNEL`). The drivers
//! (threads, side-stream prefetch, blocked prompt matmuls, activation quantising) are written
//! once, generic over [`Runnable`], in `kernels/mod.rs` and `kernels/input.rs`.
//!
//! An activation format ([`ActType`]: Q8_0, Q8_1, Q8_K) has an [`ActRunnable`] impl naming its
//! quantiser's slot and its scratch slot in [`Input`](super::Input) / [`Batch`](super::Batch).

use super::{Blocked, Kernel, QRowsFn, QRowsSideFn, QuantFn};
use crate::quant::{ActType, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, GgmlType, QuantType};

/// An activation format the fast path quantises inputs to.
pub trait ActRunnable: ActType + Sync {
    /// Its index among [`ACT_FORMATS`] (its scratch region in an input).
    const SLOT: usize;
    /// This table's quantiser for it.
    fn quantizer(k: &Kernel) -> QuantFn<Self>;
}

/// A weight type the fast path runs.
pub trait Runnable: QuantType<Act: ActRunnable> + Sync {
    /// This table's row kernel (`y[r] = dot(w row r, x)`).
    fn rows(k: &Kernel) -> QRowsFn<Self, Self::Act>;
    /// A row kernel that also prefetches a [`Side`](super::Side) stream, where the table has one.
    fn rows_side(_k: &Kernel) -> Option<QRowsSideFn<Self, Self::Act>> {
        None
    }
    /// A blocked prompt-batch matmul, where the table has one.
    fn blocked(_k: &Kernel) -> Blocked<Self, Self::Act> {
        None
    }
}

/// `(elements per block, bytes per block)` of each activation format, in [`ActRunnable::SLOT`]
/// order: Q8_0, Q8_1, Q8_K. Q8_K is counted whatever the features, so a model state has the
/// same size in every build (the firmware test compares the device's with the host's); a
/// build without a Q8_K type leaves that region unused (tiny model: 2.9 KB).
pub const ACT_FORMATS: &[(usize, usize)] = &[
    (32, core::mem::size_of::<BlockQ8_0>()),
    (32, core::mem::size_of::<BlockQ8_1>()),
    (256, core::mem::size_of::<crate::quant::BlockQ8_K>()),
];

impl ActRunnable for BlockQ8_0 {
    const SLOT: usize = 0;
    fn quantizer(k: &Kernel) -> QuantFn<Self> {
        k.quantize_q8_0
    }
}

impl ActRunnable for BlockQ8_1 {
    const SLOT: usize = 1;
    fn quantizer(k: &Kernel) -> QuantFn<Self> {
        k.quantize_q8_1
    }
}

#[cfg(any(feature = "quant-k", feature = "quant-iq4"))]
impl ActRunnable for crate::quant::BlockQ8_K {
    const SLOT: usize = 2;
    fn quantizer(k: &Kernel) -> QuantFn<Self> {
        k.quantize_q8_k
    }
}

/// The portable row kernel of any type: its scalar oracle's `vec_dot`, row by row. Callers
/// guarantee `w.len() >= y.len() * bpr` and `x.len() >= bpr` (the drivers clamp first).
pub fn rows_oracle<T: QuantType>(w: &[T], bpr: usize, x: &[T::Act], y: &mut [f32]) {
    let x = &x[..bpr.min(x.len())];
    for (o, row) in y.iter_mut().zip(w.chunks_exact(bpr.max(1))) {
        *o = T::vec_dot(row, x);
    }
}

impl Runnable for BlockQ4_0 {
    fn rows(k: &Kernel) -> QRowsFn<Self, BlockQ8_0> {
        k.q4_0
    }
    fn rows_side(k: &Kernel) -> Option<QRowsSideFn<Self, BlockQ8_0>> {
        k.side.map(|s| s.q4_0)
    }
    fn blocked(k: &Kernel) -> Blocked<Self, BlockQ8_0> {
        k.mm_q4_0
    }
}

impl Runnable for BlockQ4_1 {
    fn rows(k: &Kernel) -> QRowsFn<Self, BlockQ8_1> {
        k.q4_1
    }
    fn rows_side(k: &Kernel) -> Option<QRowsSideFn<Self, BlockQ8_1>> {
        k.side.map(|s| s.q4_1)
    }
    fn blocked(k: &Kernel) -> Blocked<Self, BlockQ8_1> {
        k.mm_q4_1
    }
}

impl Runnable for BlockQ8_0 {
    fn rows(k: &Kernel) -> QRowsFn<Self, BlockQ8_0> {
        k.q8_0
    }
    fn rows_side(k: &Kernel) -> Option<QRowsSideFn<Self, BlockQ8_0>> {
        k.side.map(|s| s.q8_0)
    }
    fn blocked(k: &Kernel) -> Blocked<Self, BlockQ8_0> {
        k.mm_q8_0
    }
}

#[cfg(feature = "quant-q5")]
impl Runnable for crate::quant::BlockQ5_0 {
    fn rows(k: &Kernel) -> QRowsFn<Self, Self::Act> {
        k.q5_0
    }
    fn blocked(k: &Kernel) -> Blocked<Self, Self::Act> {
        k.mm_q5_0
    }
}

#[cfg(feature = "quant-k")]
impl Runnable for crate::quant::BlockQ4_K {
    fn rows(k: &Kernel) -> QRowsFn<Self, Self::Act> {
        k.q4_k
    }
    fn blocked(k: &Kernel) -> Blocked<Self, Self::Act> {
        k.mm_q4_k
    }
}

#[cfg(feature = "quant-k")]
impl Runnable for crate::quant::BlockQ6_K {
    fn rows(k: &Kernel) -> QRowsFn<Self, Self::Act> {
        k.q6_k
    }
    fn blocked(k: &Kernel) -> Blocked<Self, Self::Act> {
        k.mm_q6_k
    }
}

/// `impl Runnable` for types whose only table entry is their row kernel.
macro_rules! runnable {
    ($feat:literal, $t:ident, $field:ident) => {
        #[cfg(feature = $feat)]
        impl Runnable for crate::quant::$t {
            fn rows(k: &Kernel) -> QRowsFn<Self, Self::Act> {
                k.$field
            }
        }
    };
}

#[cfg(feature = "quant-q5")]
impl Runnable for crate::quant::BlockQ5_1 {
    fn rows(k: &Kernel) -> QRowsFn<Self, Self::Act> {
        k.q5_1
    }
    fn blocked(k: &Kernel) -> Blocked<Self, Self::Act> {
        k.mm_q5_1
    }
}

runnable!("quant-k", BlockQ2_K, q2_k);
runnable!("quant-k", BlockQ3_K, q3_k);
runnable!("quant-k", BlockQ5_K, q5_k);
runnable!("quant-iq4", BlockIQ4_NL, iq4_nl);
runnable!("quant-iq4", BlockIQ4_XS, iq4_xs);

/// Something to do with a weight type, chosen at run time from a tensor's [`GgmlType`]
/// (the visitor [`with_type`] calls).
pub trait TypeFn {
    /// What it returns.
    type Out;
    /// Do it for `T`.
    fn call<T: Runnable>(self) -> Self::Out;
}

/// `f.call::<T>()` for the block type `T` of `ty`, or `None` if this build does not run `ty`
/// on the quantised fast path (float types, types whose feature is off). The one place a
/// [`GgmlType`] becomes a block type.
pub fn with_type<F: TypeFn>(ty: GgmlType, f: F) -> Option<F::Out> {
    #[allow(unused_imports)]
    use crate::quant::*;
    Some(match ty {
        GgmlType::Q4_0 => f.call::<BlockQ4_0>(),
        GgmlType::Q4_1 => f.call::<BlockQ4_1>(),
        GgmlType::Q8_0 => f.call::<BlockQ8_0>(),
        #[cfg(feature = "quant-q5")]
        GgmlType::Q5_0 => f.call::<BlockQ5_0>(),
        #[cfg(feature = "quant-q5")]
        GgmlType::Q5_1 => f.call::<BlockQ5_1>(),
        #[cfg(feature = "quant-k")]
        GgmlType::Q2_K => f.call::<BlockQ2_K>(),
        #[cfg(feature = "quant-k")]
        GgmlType::Q3_K => f.call::<BlockQ3_K>(),
        #[cfg(feature = "quant-k")]
        GgmlType::Q4_K => f.call::<BlockQ4_K>(),
        #[cfg(feature = "quant-k")]
        GgmlType::Q5_K => f.call::<BlockQ5_K>(),
        #[cfg(feature = "quant-k")]
        GgmlType::Q6_K => f.call::<BlockQ6_K>(),
        #[cfg(feature = "quant-iq4")]
        GgmlType::IQ4_NL => f.call::<BlockIQ4_NL>(),
        #[cfg(feature = "quant-iq4")]
        GgmlType::IQ4_XS => f.call::<BlockIQ4_XS>(),
        _ => return None,
    })
}

/// True if [`with_type`] runs `ty` in this build.
pub fn is_runnable_quant(ty: GgmlType) -> bool {
    struct Yes;
    impl TypeFn for Yes {
        type Out = ();
        fn call<T: Runnable>(self) {}
    }
    with_type(ty, Yes).is_some()
}
