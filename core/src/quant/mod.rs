//! Tensor element types and the exact ggml block layouts.
//!
//! Every block type is `#[repr(C)]` with byte-array fields only, so it has alignment 1 and every
//! bit pattern is a valid value. That is what makes [`cast_blocks`] sound on any `&[u8]` of the
//! right length, wherever the tensor sits in the file.
//!
//! Layouts (ggml, `ggml-common.h`; 32 weights per block):
//! - Q4_0: f16 `d` + 16 bytes of nibbles, `w = (q - 8) * d`
//! - Q4_1: f16 `d`, f16 `m` + 16 bytes, `w = q * d + m`
//! - Q8_0: f16 `d` + 32 x i8, `w = q * d`
//! - Q8_1: f16 `d`, f16 `s = d * sum(q)` + 32 x i8
//!
//! In a 4-bit block the low nibble of byte `j` is element `j`, the high nibble element `j + 16`.
//!
//! The other types people download each live in their own file, with the block layout, its
//! scalar oracle and a [`QuantType`] / [`ActType`] impl (see [`types`]):
//! - [`q8_k`]: Q8_K, the 256-wide activation block (always compiled, it is small);
//! - [`q5`]: Q5_0, Q5_1 (feature `quant-q5`);
//! - [`q2_k`] .. [`q6_k`]: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (feature `quant-k`);
//! - [`iq4`]: IQ4_NL, IQ4_XS (feature `quant-iq4`).
//!
//! [`GgmlType`] knows every type's id, name and sizes whatever the features, so any file can be
//! parsed and inspected; the features only decide which arithmetic is linked.

use crate::error::{Error, ErrorKind, Result};
use core::mem::{align_of, size_of};

pub mod types;
pub use types::{ActType, QuantType, QuantizeFn};

pub mod q8_k;
pub use q8_k::{BlockQ8_K, QK_K};

#[cfg(feature = "quant-q5")]
pub mod q5;
#[cfg(feature = "quant-q5")]
pub use q5::{BlockQ5_0, BlockQ5_1};

#[cfg(feature = "quant-k")]
mod k_common;
#[cfg(feature = "quant-k")]
pub mod q2_k;
#[cfg(feature = "quant-k")]
pub mod q3_k;
#[cfg(feature = "quant-k")]
pub mod q4_k;
#[cfg(feature = "quant-k")]
pub mod q5_k;
#[cfg(feature = "quant-k")]
pub mod q6_k;
#[cfg(feature = "quant-k")]
pub use {q2_k::BlockQ2_K, q3_k::BlockQ3_K, q4_k::BlockQ4_K, q5_k::BlockQ5_K, q6_k::BlockQ6_K};

#[cfg(feature = "quant-iq4")]
pub mod iq4;
#[cfg(feature = "quant-iq4")]
pub use iq4::{BlockIQ4_NL, BlockIQ4_XS};

/// Weights per quantised block.
pub const QK: usize = 32;

/// The ggml type table: one row per type, `Variant = ggml id, "NAME", elements per block,
/// bytes per block, cargo feature that builds its kernels, whether this build runs it`. It
/// defines [`GgmlType`] and every per-type fact the reader, the loader and the error messages
/// use; a new quant type is one row here, its block file in this folder and its row in the
/// kernel type table (`kernels/types.rs`).
macro_rules! ggml_types {
    ($($v:ident = $id:literal, $name:literal, $bl:literal, $bb:literal, $feat:expr, $built:expr;)*) => {
        /// ggml tensor types. Only some are runnable (see [`GgmlType::is_supported`]); the
        /// others are known so that files containing them can be parsed and inspected with
        /// correct sizes. The discriminant is the ggml type id.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types, missing_docs)]
        #[repr(u32)]
        pub enum GgmlType {
            $($v = $id,)*
        }

        impl GgmlType {
            /// Map a ggml type id (as stored in GGUF tensor infos) to a type.
            pub const fn from_id(id: u32) -> Option<GgmlType> {
                match id {
                    $($id => Some(GgmlType::$v),)*
                    _ => None,
                }
            }

            /// Upper-case ggml name (`"Q4_1"`).
            pub const fn name(self) -> &'static str {
                match self {
                    $(GgmlType::$v => $name,)*
                }
            }

            /// Elements per block (1 for plain types).
            pub const fn block_len(self) -> usize {
                match self {
                    $(GgmlType::$v => $bl,)*
                }
            }

            /// Bytes per block.
            pub const fn block_bytes(self) -> usize {
                match self {
                    $(GgmlType::$v => $bb,)*
                }
            }

            /// The cargo feature that builds this type's kernels, for error messages (`None`
            /// if the type has no feature: always built, or never runnable).
            pub const fn feature(self) -> Option<&'static str> {
                match self {
                    $(GgmlType::$v => $feat,)*
                }
            }

            /// True if the kernels in this build can run matrices of this type (the K-quant,
            /// Q5 and IQ4 families need their cargo features: `quant-k`, `quant-q5`,
            /// `quant-iq4`).
            pub const fn is_supported(self) -> bool {
                match self {
                    $(GgmlType::$v => $built,)*
                }
            }
        }
    };
}

ggml_types! {
    F32 = 0, "F32", 1, 4, None, true;
    F16 = 1, "F16", 1, 2, None, true;
    Q4_0 = 2, "Q4_0", 32, 18, None, true;
    Q4_1 = 3, "Q4_1", 32, 20, None, true;
    Q5_0 = 6, "Q5_0", 32, 22, Some("quant-q5"), cfg!(feature = "quant-q5");
    Q5_1 = 7, "Q5_1", 32, 24, Some("quant-q5"), cfg!(feature = "quant-q5");
    Q8_0 = 8, "Q8_0", 32, 34, None, true;
    Q8_1 = 9, "Q8_1", 32, 36, None, true;
    Q2_K = 10, "Q2_K", 256, 84, Some("quant-k"), cfg!(feature = "quant-k");
    Q3_K = 11, "Q3_K", 256, 110, Some("quant-k"), cfg!(feature = "quant-k");
    Q4_K = 12, "Q4_K", 256, 144, Some("quant-k"), cfg!(feature = "quant-k");
    Q5_K = 13, "Q5_K", 256, 176, Some("quant-k"), cfg!(feature = "quant-k");
    Q6_K = 14, "Q6_K", 256, 210, Some("quant-k"), cfg!(feature = "quant-k");
    Q8_K = 15, "Q8_K", 256, 292, None, false;
    IQ4_NL = 20, "IQ4_NL", 32, 18, Some("quant-iq4"), cfg!(feature = "quant-iq4");
    IQ4_XS = 23, "IQ4_XS", 256, 136, Some("quant-iq4"), cfg!(feature = "quant-iq4");
    I8 = 24, "I8", 1, 1, None, false;
    I16 = 25, "I16", 1, 2, None, false;
    I32 = 26, "I32", 1, 4, None, false;
    I64 = 27, "I64", 1, 8, None, false;
    F64 = 28, "F64", 1, 8, None, false;
    BF16 = 30, "BF16", 1, 2, None, true;
}

impl GgmlType {
    /// The ggml type id.
    pub const fn id(self) -> u32 {
        self as u32
    }

    /// Parse a ggml type name, case-insensitively (`"q8_0"`).
    pub fn from_name(s: &str) -> Option<GgmlType> {
        (0..=30u32)
            .filter_map(GgmlType::from_id)
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// Bytes taken by one row of `n` elements, or `None` if `n` is not a whole number of
    /// blocks or the size overflows.
    pub const fn row_bytes(self, n: u64) -> Option<u64> {
        // Every block length is a power of two (asserted below for the whole table), so a
        // mask and a shift do the u64 division: on 32-bit targets a `/` here would link
        // compiler_builtins' `__udivmoddi4` (864 bytes of the Cortex-M runtime image).
        let bl = self.block_len() as u64;
        if n & (bl - 1) != 0 {
            return None;
        }
        (n >> bl.trailing_zeros()).checked_mul(self.block_bytes() as u64)
    }
}

/// Marker for ggml block structs: `#[repr(C)]`, alignment 1, every bit pattern valid.
///
/// # Safety
/// Implementors must be `#[repr(C)]` structs made only of `u8` arrays (so `align_of == 1`,
/// no padding, and any byte pattern is a valid value).
pub unsafe trait Block: Copy + 'static {
    /// The ggml type stored in this block.
    const TYPE: GgmlType;
}

/// Q4_0 block: `w = (q - 8) * d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_0 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// 32 nibbles: low nibble of byte j is element j, high nibble element j+16.
    pub qs: [u8; 16],
}

/// Q4_1 block: `w = q * d + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_1 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// Minimum, f16 little-endian.
    pub m: [u8; 2],
    /// 32 nibbles, as in [`BlockQ4_0`].
    pub qs: [u8; 16],
}

/// Q8_0 block: `w = q * d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_0 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// 32 signed bytes (stored as `u8`, reinterpret with `as i8`).
    pub qs: [u8; 32],
}

/// Q8_1 block: `w = q * d`, with `s = d * sum(q)` precomputed for Q4_1 dots.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_1 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// `d * sum(qs)`, f16 little-endian.
    pub s: [u8; 2],
    /// 32 signed bytes.
    pub qs: [u8; 32],
}

const _: () = assert!(size_of::<BlockQ4_0>() == 18 && align_of::<BlockQ4_0>() == 1);
const _: () = assert!(size_of::<BlockQ4_1>() == 20 && align_of::<BlockQ4_1>() == 1);
const _: () = assert!(size_of::<BlockQ8_0>() == 34 && align_of::<BlockQ8_0>() == 1);
const _: () = assert!(size_of::<BlockQ8_1>() == 36 && align_of::<BlockQ8_1>() == 1);

// SAFETY: each is #[repr(C)] of u8 arrays only (checked by the asserts above).
unsafe impl Block for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
}
// SAFETY: as above.
unsafe impl Block for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
}
// SAFETY: as above.
unsafe impl Block for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
}
// SAFETY: as above.
unsafe impl Block for BlockQ8_1 {
    const TYPE: GgmlType = GgmlType::Q8_1;
}

impl BlockQ4_0 {
    /// An all-zero block.
    pub const ZERO: BlockQ4_0 = BlockQ4_0 {
        d: [0; 2],
        qs: [0; 16],
    };
}
impl BlockQ4_1 {
    /// An all-zero block.
    pub const ZERO: BlockQ4_1 = BlockQ4_1 {
        d: [0; 2],
        m: [0; 2],
        qs: [0; 16],
    };
}
impl BlockQ8_0 {
    /// An all-zero block.
    pub const ZERO: BlockQ8_0 = BlockQ8_0 {
        d: [0; 2],
        qs: [0; 32],
    };
}
impl BlockQ8_1 {
    /// An all-zero block.
    pub const ZERO: BlockQ8_1 = BlockQ8_1 {
        d: [0; 2],
        s: [0; 2],
        qs: [0; 32],
    };
}

/// Read a little-endian f16 stored as two bytes.
#[inline(always)]
pub fn f16_le(b: [u8; 2]) -> f32 {
    half::f16::from_le_bytes(b).to_f32()
}

/// Store an f32 as little-endian f16 bytes (round to nearest even).
#[inline(always)]
pub fn to_f16_le(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// ggml's `nearest_int`: round to nearest, ties to even, by adding `1.5 * 2^23` and reading the
/// low mantissa bits. Exact for `|x| <= 4194303` (ggml asserts that range); outside it the result
/// is as meaningless as the C's, but it never panics.
#[inline(always)]
pub(crate) fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    (val.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// View bytes as blocks without copying.
///
/// # Errors
/// [`ErrorKind::BadDims`] if `bytes.len()` is not a multiple of the block size.
pub fn cast_blocks<T: Block>(bytes: &[u8]) -> Result<&[T]> {
    let sz = size_of::<T>();
    if !bytes.len().is_multiple_of(sz) {
        return Err(Error::new(
            ErrorKind::BadDims,
            "byte length is not a whole number of blocks",
        )
        .detail(bytes.len() as u64, sz as u64));
    }
    // SAFETY: T is repr(C) of u8 arrays (Block's contract): alignment 1, no padding, every bit
    // pattern valid. The length is a whole multiple of size_of::<T>() (checked above), so the
    // new slice covers exactly the same bytes with the same lifetime.
    Ok(unsafe { core::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / sz) })
}

/// View blocks as mutable bytes' blocks (for quantising into a caller buffer).
///
/// # Errors
/// [`ErrorKind::BadDims`] if `bytes.len()` is not a multiple of the block size.
pub fn cast_blocks_mut<T: Block>(bytes: &mut [u8]) -> Result<&mut [T]> {
    let sz = size_of::<T>();
    if !bytes.len().is_multiple_of(sz) {
        return Err(Error::new(
            ErrorKind::BadDims,
            "byte length is not a whole number of blocks",
        )
        .detail(bytes.len() as u64, sz as u64));
    }
    // SAFETY: as in cast_blocks; the exclusive borrow is carried over to the result.
    Ok(
        unsafe {
            core::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<T>(), bytes.len() / sz)
        },
    )
}

/// View blocks as their bytes.
pub fn blocks_as_bytes<T: Block>(blocks: &[T]) -> &[u8] {
    // SAFETY: Block types have no padding and alignment 1, so their memory is plain bytes.
    unsafe {
        core::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), core::mem::size_of_val(blocks))
    }
}

// `GgmlType::row_bytes` divides by the block length with a shift.
const _: () = {
    let mut id = 0;
    while id <= 30 {
        if let Some(t) = GgmlType::from_id(id) {
            assert!(t.block_len().is_power_of_two());
        }
        id += 1;
    }
};
