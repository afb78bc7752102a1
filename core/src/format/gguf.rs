//! Zero-copy GGUF reader (versions 2 and 3, little-endian).
//!
//! Layout (ggml `docs/gguf.md`): magic `GGUF`, u32 version, u64 tensor count, u64 metadata
//! count, metadata key/value pairs, tensor infos, padding to `general.alignment` (default 32),
//! tensor data. Value types 0..=12 are u8 i8 u16 i16 u32 i32 f32 bool string array u64 i64 f64.
//!
//! [`Gguf::parse`] walks the whole header once and checks everything a later access relies on:
//! every length and count is capped (see the `MAX_*` constants), every offset is computed with
//! checked arithmetic, every tensor's bytes lie inside the file, are aligned, do not overlap the
//! previous tensor and have exactly the size that its type and dims imply, and nothing but
//! alignment padding follows the last tensor's bytes. Keys and tensor names are unique and
//! UTF-8. After that, lookups and iteration re-read the already-validated header
//! without allocating; nothing is copied out of the input.
//!
//! # Input policy
//! The reader never panics, never reads out of bounds and never allocates, whatever the bytes.
//! Its work is bounded by the file size, except for the duplicate checks, which are bounded by
//! the caps below times the header size.

use crate::error::{Error, ErrorKind, Result};
use crate::quant::GgmlType;

/// Maximum metadata key/value pairs. Real models carry under 100; tokenizer data is in arrays.
pub const MAX_KV: u64 = 8192;
/// Maximum tensors. The largest public MoE models have a few thousand.
pub const MAX_TENSORS: u64 = 16384;
/// Maximum bytes in a key (the GGUF spec says 65535) or a tensor name (ggml uses 64).
pub const MAX_KEY_LEN: u64 = 65535;
/// Maximum bytes in a metadata string value (chat templates run to tens of KB).
pub const MAX_STR_LEN: u64 = 16 << 20;
/// Maximum elements in one metadata array (vocabularies reach ~256k tokens).
pub const MAX_ARRAY_LEN: u64 = 1 << 24;
/// Maximum nesting of arrays inside arrays.
pub const MAX_ARRAY_DEPTH: u32 = 4;
/// Maximum tensor dimensions (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Maximum `general.alignment`.
pub const MAX_ALIGNMENT: u32 = 1 << 16;
/// Alignment used when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;

/// The file magic, `GGUF` in ASCII.
pub const MAGIC: [u8; 4] = *b"GGUF";

/// Metadata value type ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    /// From the on-disk id (0..=12).
    pub const fn from_id(id: u32) -> Option<ValueType> {
        Some(match id {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return None,
        })
    }

    /// The on-disk id.
    pub const fn id(self) -> u32 {
        self as u32
    }

    /// Size of a fixed-size value, `None` for strings and arrays.
    pub const fn fixed_size(self) -> Option<usize> {
        Some(match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 => 8,
            ValueType::String | ValueType::Array => return None,
        })
    }

    /// Lower-case name as used by the GGUF spec (`"uint32"`).
    pub const fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "uint8",
            ValueType::I8 => "int8",
            ValueType::U16 => "uint16",
            ValueType::I16 => "int16",
            ValueType::U32 => "uint32",
            ValueType::I32 => "int32",
            ValueType::F32 => "float32",
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Array => "array",
            ValueType::U64 => "uint64",
            ValueType::I64 => "int64",
            ValueType::F64 => "float64",
        }
    }
}

/// A metadata value borrowed from the file.
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Value<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    /// Raw string bytes (GGUF says UTF-8; [`Value::as_str`] checks).
    Str(&'a [u8]),
    Array(ArrayView<'a>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl<'a> Value<'a> {
    /// The value's type.
    pub const fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::Str(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer value as i128 (lossless), `None` for other types.
    pub const fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v as i128,
            Value::I8(v) => v as i128,
            Value::U16(v) => v as i128,
            Value::I16(v) => v as i128,
            Value::U32(v) => v as i128,
            Value::I32(v) => v as i128,
            Value::U64(v) => v as i128,
            Value::I64(v) => v as i128,
            _ => return None,
        })
    }

    /// A float value (f32 or f64) as f64, `None` for other types.
    pub const fn as_float(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    /// A float value (f32 as is, f64 rounded to f32), `None` for other types. What
    /// [`Gguf::get_f32`] reads: an f32 does not round-trip through f64 (on Cortex-M that would
    /// link the soft-float `__aeabi_f2d` beside the `__aeabi_d2f` an f64 value needs).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    /// A string value as `&str` if it is valid UTF-8.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::Str(b) => core::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// A string value's raw bytes.
    pub const fn as_bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Value::Str(b) => Some(b),
            _ => None,
        }
    }

    /// An array value.
    pub const fn as_array(&self) -> Option<ArrayView<'a>> {
        match *self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A metadata array borrowed from the file: element type, count and the element bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArrayView<'a> {
    elem: ValueType,
    len: usize,
    /// Exactly the bytes of the elements (for nested arrays: each one's header and data).
    bytes: &'a [u8],
    depth: u32,
}

impl<'a> ArrayView<'a> {
    /// Element type.
    pub const fn elem_type(&self) -> ValueType {
        self.elem
    }

    /// Number of elements.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// True if the array has no elements.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The raw element bytes (fixed-size elements are packed little-endian values).
    pub const fn raw(&self) -> &'a [u8] {
        self.bytes
    }

    /// Iterate the elements.
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter {
            cur: Cursor::new(self.bytes),
            elem: self.elem,
            left: self.len,
            depth: self.depth,
        }
    }

    /// Element `i`: O(1) for fixed-size elements, O(i) for strings and arrays.
    pub fn get(&self, i: usize) -> Option<Value<'a>> {
        if i >= self.len {
            return None;
        }
        match self.elem.fixed_size() {
            Some(sz) => {
                let start = i.checked_mul(sz)?;
                let b = self.bytes.get(start..start.checked_add(sz)?)?;
                let mut cur = Cursor::new(b);
                read_value(&mut cur, self.elem, self.depth).ok()
            }
            None => self.iter().nth(i),
        }
    }

    /// Element `i` of a `float32` array.
    pub fn f32_at(&self, i: usize) -> Option<f32> {
        match self.get(i)? {
            Value::F32(v) => Some(v),
            _ => None,
        }
    }

    /// Element `i` of an integer array, as i64 (if it fits).
    pub fn int_at(&self, i: usize) -> Option<i64> {
        self.get(i)?.as_int().and_then(|v| i64::try_from(v).ok())
    }
}

/// Iterator over an [`ArrayView`].
#[derive(Clone, Debug)]
pub struct ArrayIter<'a> {
    cur: Cursor<'a>,
    elem: ValueType,
    left: usize,
    depth: u32,
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = Value<'a>;
    fn next(&mut self) -> Option<Value<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The array was validated when the file was parsed, so this cannot fail; if it somehow
        // did, end the iteration rather than panic.
        match read_value(&mut self.cur, self.elem, self.depth) {
            Ok(v) => Some(v),
            Err(_) => {
                self.left = 0;
                None
            }
        }
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

/// A tensor's header and its bytes, borrowed from the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorInfo<'a> {
    /// Tensor name (`blk.0.attn_q.weight`).
    pub name: &'a str,
    /// Element type.
    pub ty: GgmlType,
    /// Dimensions in ggml order: `ne[0]` is the row length (innermost). Unused dims are 1.
    pub ne: [u64; MAX_DIMS],
    /// Number of dimensions actually stored.
    pub n_dims: usize,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Absolute offset of the data in the file.
    pub file_offset: u64,
    /// Exactly the tensor's bytes.
    pub data: &'a [u8],
}

impl<'a> TensorInfo<'a> {
    /// The stored dimensions (ggml order).
    pub fn dims(&self) -> &[u64] {
        &self.ne[..self.n_dims]
    }

    /// Total number of elements.
    pub fn n_elements(&self) -> u64 {
        // Cannot overflow: checked at parse time.
        self.ne.iter().product()
    }

    /// Number of rows (product of all dims but the first).
    pub fn n_rows(&self) -> u64 {
        self.ne[1..].iter().product()
    }

    /// Elements per row (`ne[0]`).
    pub fn row_len(&self) -> u64 {
        self.ne[0]
    }
}

/// Byte cursor with bounds-checked reads that report the offset they failed at.
#[derive(Clone, Debug)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf[0]` in the original file, for error messages.
    base: u64,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor {
            buf,
            pos: 0,
            base: 0,
        }
    }

    pub(crate) fn at(buf: &'a [u8], pos: usize) -> Self {
        Cursor { buf, pos, base: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn file_pos(&self) -> u64 {
        self.base + self.pos as u64
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8]> {
        let err = || {
            Error::new(ErrorKind::Truncated, what)
                .at(self.file_pos())
                .detail(n, self.remaining() as u64)
        };
        let n = usize::try_from(n).map_err(|_| err())?;
        let end = self.pos.checked_add(n).ok_or_else(err)?;
        let s = self.buf.get(self.pos..end).ok_or_else(err)?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A GGUF string: u64 length + bytes, length capped at `cap`.
    pub(crate) fn string(&mut self, cap: u64, what: &'static str) -> Result<&'a [u8]> {
        let at = self.file_pos();
        let len = self.u64(what)?;
        if len > cap {
            return Err(Error::new(ErrorKind::StringTooLong, what)
                .at(at)
                .detail(len, cap));
        }
        self.take(len, what)
    }

    /// A string that must be UTF-8 (keys, tensor names).
    fn utf8(&mut self, cap: u64, what: &'static str) -> Result<&'a str> {
        let at = self.file_pos();
        let b = self.string(cap, what)?;
        core::str::from_utf8(b).map_err(|_| Error::new(ErrorKind::InvalidUtf8, what).at(at))
    }
}

/// Read one value of type `ty`; `depth` is the array nesting of the value being read.
fn read_value<'a>(cur: &mut Cursor<'a>, ty: ValueType, depth: u32) -> Result<Value<'a>> {
    const W: &str = "metadata value";
    Ok(match ty {
        ValueType::U8 => Value::U8(cur.u8(W)?),
        ValueType::I8 => Value::I8(cur.u8(W)? as i8),
        ValueType::U16 => Value::U16(cur.u16(W)?),
        ValueType::I16 => Value::I16(cur.u16(W)? as i16),
        ValueType::U32 => Value::U32(cur.u32(W)?),
        ValueType::I32 => Value::I32(cur.u32(W)? as i32),
        ValueType::F32 => Value::F32(f32::from_bits(cur.u32(W)?)),
        ValueType::Bool => {
            let at = cur.file_pos();
            match cur.u8(W)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(Error::new(ErrorKind::BadValue, "bool value")
                        .at(at)
                        .detail(b as u64, 1))
                }
            }
        }
        ValueType::String => Value::Str(cur.string(MAX_STR_LEN, "metadata string")?),
        ValueType::U64 => Value::U64(cur.u64(W)?),
        ValueType::I64 => Value::I64(cur.u64(W)? as i64),
        ValueType::F64 => Value::F64(f64::from_bits(cur.u64(W)?)),
        ValueType::Array => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(Error::new(ErrorKind::NestingTooDeep, "metadata array")
                    .at(cur.file_pos())
                    .detail(depth as u64 + 1, MAX_ARRAY_DEPTH as u64));
            }
            let at = cur.file_pos();
            let elem_id = cur.u32("array element type")?;
            let elem = ValueType::from_id(elem_id).ok_or_else(|| {
                Error::new(ErrorKind::BadValueType, "array element type")
                    .at(at)
                    .detail(elem_id as u64, 12)
            })?;
            let at = cur.file_pos();
            let len = cur.u64("array length")?;
            if len > MAX_ARRAY_LEN {
                return Err(Error::new(ErrorKind::TooMany, "array length")
                    .at(at)
                    .detail(len, MAX_ARRAY_LEN));
            }
            let start = cur.pos();
            match elem.fixed_size() {
                Some(sz) => {
                    // len <= 2^24 and sz <= 8: no overflow.
                    cur.take(len * sz as u64, "array data")?;
                    if elem == ValueType::Bool {
                        let mut c = Cursor {
                            buf: cur.buf,
                            pos: start,
                            base: cur.base,
                        };
                        for _ in 0..len {
                            read_value(&mut c, ValueType::Bool, depth + 1)?;
                        }
                    }
                }
                None => {
                    for _ in 0..len {
                        read_value(cur, elem, depth + 1)?;
                    }
                }
            }
            let bytes = cur
                .buf
                .get(start..cur.pos())
                .ok_or_else(|| Error::new(ErrorKind::Truncated, "array"))?;
            Value::Array(ArrayView {
                elem,
                len: len as usize,
                bytes,
                depth: depth + 1,
            })
        }
    })
}

/// Read one key/value pair.
fn read_kv<'a>(cur: &mut Cursor<'a>) -> Result<(&'a str, Value<'a>)> {
    let key = cur.utf8(MAX_KEY_LEN, "metadata key")?;
    let at = cur.file_pos();
    let tid = cur
        .u32("metadata value type")
        .map_err(|e| e.named(key.as_bytes()))?;
    let ty = ValueType::from_id(tid).ok_or_else(|| {
        Error::new(ErrorKind::BadValueType, "metadata value type")
            .at(at)
            .named(key.as_bytes())
            .detail(tid as u64, 12)
    })?;
    let v = read_value(cur, ty, 0).map_err(|e| e.named(key.as_bytes()))?;
    Ok((key, v))
}

/// Layout facts needed to turn a tensor info into a data slice.
#[derive(Clone, Copy, Debug)]
struct DataSection {
    start: u64,
    alignment: u32,
    /// Length of the whole file; larger than the slice when only a prefix (the header) is
    /// present, as while streaming.
    file_len: u64,
}

fn read_tensor_info<'a>(
    cur: &mut Cursor<'a>,
    file: &'a [u8],
    ds: DataSection,
) -> Result<TensorInfo<'a>> {
    let name = cur.utf8(MAX_KEY_LEN, "tensor name")?;
    let nm = name.as_bytes();
    let at = cur.file_pos();
    let n_dims = cur.u32("tensor n_dims").map_err(|e| e.named(nm))?;
    if n_dims == 0 || n_dims as usize > MAX_DIMS {
        return Err(Error::new(ErrorKind::BadDims, "tensor n_dims")
            .at(at)
            .named(nm)
            .detail(n_dims as u64, MAX_DIMS as u64));
    }
    let mut ne = [1u64; MAX_DIMS];
    let mut total: u64 = 1;
    for d in ne.iter_mut().take(n_dims as usize) {
        let at = cur.file_pos();
        *d = cur.u64("tensor dim").map_err(|e| e.named(nm))?;
        total = match total.checked_mul(*d) {
            Some(t) if *d > 0 && t <= i64::MAX as u64 => t,
            _ => {
                return Err(
                    Error::new(ErrorKind::BadDims, "tensor dim (zero or overflowing)")
                        .at(at)
                        .named(nm)
                        .detail(*d, i64::MAX as u64),
                )
            }
        };
    }
    let at = cur.file_pos();
    let tid = cur.u32("tensor type").map_err(|e| e.named(nm))?;
    let ty = GgmlType::from_id(tid).ok_or_else(|| {
        Error::new(ErrorKind::UnknownTensorType, "tensor type")
            .at(at)
            .named(nm)
            .detail(tid as u64, 30)
    })?;
    let at = cur.file_pos();
    let offset = cur.u64("tensor offset").map_err(|e| e.named(nm))?;
    let row = ty.row_bytes(ne[0]).ok_or_else(|| {
        Error::new(
            ErrorKind::BadDims,
            "row length is not a multiple of the block size",
        )
        .at(at)
        .named(nm)
        .detail(ne[0], ty.block_len() as u64)
    })?;
    // Rows = the product of the dimensions after the first (`total / ne[0]` without a u64
    // division: on 32-bit Arm that links compiler_builtins' 864-byte `__udivmoddi4`).
    let rows = ne[1..].iter().product::<u64>();
    let nbytes = row.checked_mul(rows).ok_or_else(|| {
        Error::new(ErrorKind::BadDims, "tensor byte size overflows")
            .at(at)
            .named(nm)
    })?;
    // `alignment` is a power of two (checked where it is read): a mask, no u64 division.
    if offset & (ds.alignment as u64 - 1) != 0 {
        return Err(Error::new(ErrorKind::Misaligned, "tensor offset")
            .at(at)
            .named(nm)
            .detail(offset, ds.alignment as u64));
    }
    let oob = || {
        Error::new(ErrorKind::OutOfBounds, "tensor data")
            .at(at)
            .named(nm)
            .detail(
                offset.saturating_add(nbytes),
                ds.file_len.saturating_sub(ds.start),
            )
    };
    let abs = ds.start.checked_add(offset).ok_or_else(oob)?;
    let end = abs.checked_add(nbytes).ok_or_else(oob)?;
    let (a, e) = (
        usize::try_from(abs).map_err(|_| oob())?,
        usize::try_from(end).map_err(|_| oob())?,
    );
    if end > ds.file_len {
        return Err(oob());
    }
    // With the whole file present (file_len == file.len()) this always succeeds; with only a
    // header prefix the data is not there yet and the view is empty.
    let data = file.get(a..e).unwrap_or(&[]);
    Ok(TensorInfo {
        name,
        ty,
        ne,
        n_dims: n_dims as usize,
        offset,
        file_offset: abs,
        data,
    })
}

/// Small Bloom filter over names, used to keep duplicate detection near O(n) for real files
/// while staying exact: a possible hit is confirmed by a rescan. 2 KiB on the stack.
struct Bloom([u64; 256]);

impl Bloom {
    fn new() -> Self {
        Bloom([0; 256])
    }
    fn hashes(s: &[u8]) -> (usize, usize) {
        // FNV-1a, two halves of a 64-bit hash as two probe positions.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in s {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        ((h & 0x3fff) as usize, ((h >> 32) & 0x3fff) as usize)
    }
    /// Insert; returns true if the name may have been seen before.
    fn insert(&mut self, s: &[u8]) -> bool {
        let (a, b) = Self::hashes(s);
        let seen = self.get(a) && self.get(b);
        self.0[a / 64] |= 1 << (a % 64);
        self.0[b / 64] |= 1 << (b % 64);
        seen
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
}

/// Result of checking a header prefix ([`Gguf::parse_header`]).
#[derive(Clone, Copy, Debug)]
pub enum HeaderState<'a> {
    /// The header is complete and valid.
    Complete(Gguf<'a>),
    /// More bytes are needed: the prefix must be at least this long for the next read.
    NeedMore(u64),
}

/// A parsed, validated GGUF file borrowed from its bytes.
#[derive(Clone, Copy, Debug)]
pub struct Gguf<'a> {
    bytes: &'a [u8],
    version: u32,
    n_kv: u64,
    n_tensors: u64,
    kv_start: usize,
    ti_start: usize,
    data: DataSection,
}

impl<'a> Gguf<'a> {
    /// Parse and validate a GGUF file held in memory (flash, mmap, or a buffer).
    ///
    /// # Errors
    /// A typed [`Error`] naming the key or tensor and the byte offset for any malformed input:
    /// bad magic or version, truncation anywhere, counts or lengths above the caps, invalid
    /// value types, duplicate keys or tensors, an invalid `general.alignment`, unknown tensor
    /// types, bad dims, tensor data outside the file, misaligned or overlapping, bytes after
    /// the last tensor beyond its alignment padding ([`ErrorKind::OutOfBounds`]).
    pub fn parse(bytes: &'a [u8]) -> Result<Gguf<'a>> {
        Self::parse_impl(bytes, bytes.len() as u64)
    }

    /// Validate the header of a file of `total_len` bytes of which only `prefix` has arrived.
    ///
    /// Returns `Ok(None)` while the header is incomplete, `Ok(Some(data_offset))` once the whole
    /// header (metadata and tensor infos) is present and valid against `total_len` (every
    /// tensor inside the file, aligned, not overlapping). Used by the streaming loader to
    /// reject a bad stream as soon as its header is complete.
    ///
    /// # Errors
    /// Any header error [`Gguf::parse`] would report, and [`ErrorKind::InvalidArgument`] if
    /// `prefix` is longer than `total_len`.
    pub fn check_header(prefix: &[u8], total_len: u64) -> Result<Option<u64>> {
        Ok(match Gguf::parse_header(prefix, total_len)? {
            HeaderState::Complete(g) => Some(g.data_offset()),
            HeaderState::NeedMore(_) => None,
        })
    }

    /// Like [`Gguf::check_header`] but returns the header view (metadata lookups work, tensor
    /// infos are validated against `total_len`, tensor data views are empty where the data has
    /// not arrived), or how long the prefix must at least be before the next attempt can get
    /// further.
    ///
    /// # Errors
    /// As [`Gguf::check_header`].
    pub fn parse_header(prefix: &'a [u8], total_len: u64) -> Result<HeaderState<'a>> {
        if prefix.len() as u64 > total_len {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "prefix longer than the declared file",
            ));
        }
        match Self::parse_impl(prefix, total_len) {
            Ok(g) => Ok(HeaderState::Complete(g)),
            Err(e) if e.kind() == ErrorKind::Truncated && (prefix.len() as u64) < total_len => {
                // The failed read started at `offset` and needed `detail.0` bytes.
                let need = match (e.offset(), e.details()) {
                    (Some(off), Some((n, _))) => off.saturating_add(n),
                    _ => prefix.len() as u64 + 1,
                };
                Ok(HeaderState::NeedMore(
                    need.clamp(prefix.len() as u64 + 1, total_len),
                ))
            }
            Err(e) => Err(e),
        }
    }

    fn parse_impl(bytes: &'a [u8], file_len: u64) -> Result<Gguf<'a>> {
        let mut cur = Cursor::new(bytes);
        let magic: [u8; 4] = cur.array("magic")?;
        if magic != MAGIC {
            return Err(Error::new(ErrorKind::BadMagic, "file header").at(0));
        }
        let version = cur.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::new(ErrorKind::UnsupportedVersion, "file header")
                .at(4)
                .detail(version as u64, 3));
        }
        let n_tensors = cur.u64("tensor count")?;
        if n_tensors > MAX_TENSORS {
            return Err(Error::new(ErrorKind::TooMany, "tensor count")
                .at(8)
                .detail(n_tensors, MAX_TENSORS));
        }
        let n_kv = cur.u64("metadata count")?;
        if n_kv > MAX_KV {
            return Err(Error::new(ErrorKind::TooMany, "metadata count")
                .at(16)
                .detail(n_kv, MAX_KV));
        }
        let kv_start = cur.pos();
        let mut alignment = DEFAULT_ALIGNMENT;
        let mut bloom = Bloom::new();
        for _ in 0..n_kv {
            let at = cur.file_pos();
            let (key, v) = read_kv(&mut cur)?;
            if bloom.insert(key.as_bytes()) {
                let mut c = Cursor::at(bytes, kv_start);
                while c.pos() < at as usize {
                    let (k2, _) = read_kv(&mut c)?;
                    if k2 == key {
                        return Err(Error::new(ErrorKind::DuplicateKey, "metadata")
                            .at(at)
                            .named(key.as_bytes()));
                    }
                }
            }
            if key == "general.alignment" {
                alignment = match v {
                    Value::U32(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => a,
                    Value::U32(a) => {
                        return Err(Error::new(ErrorKind::BadAlignment, "general.alignment")
                            .at(at)
                            .named(key.as_bytes())
                            .detail(a as u64, MAX_ALIGNMENT as u64))
                    }
                    _ => {
                        return Err(Error::new(
                            ErrorKind::WrongType,
                            "general.alignment must be uint32",
                        )
                        .at(at)
                        .named(key.as_bytes()))
                    }
                };
            }
        }
        let ti_start = cur.pos();
        // First pass over tensor infos: find where the header ends.
        for _ in 0..n_tensors {
            let name = cur.utf8(MAX_KEY_LEN, "tensor name")?;
            let at = cur.file_pos();
            let n_dims = cur
                .u32("tensor n_dims")
                .map_err(|e| e.named(name.as_bytes()))?;
            if n_dims == 0 || n_dims as usize > MAX_DIMS {
                return Err(Error::new(ErrorKind::BadDims, "tensor n_dims")
                    .at(at)
                    .named(name.as_bytes())
                    .detail(n_dims as u64, MAX_DIMS as u64));
            }
            cur.take(8 * n_dims as u64 + 4 + 8, "tensor info")
                .map_err(|e| e.named(name.as_bytes()))?;
        }
        let header_end = cur.pos() as u64;
        let a = alignment as u64;
        // Round up to the power-of-two alignment with a mask (no u64 division on 32-bit).
        let data_start = (header_end + (a - 1)) & !(a - 1);
        if data_start > file_len && n_tensors > 0 {
            return Err(
                Error::new(ErrorKind::Truncated, "padding before tensor data")
                    .at(header_end)
                    .detail(data_start, file_len),
            );
        }
        let data = DataSection {
            file_len,
            start: data_start,
            alignment,
        };
        // Second pass: full validation of every tensor against the file.
        let mut cur = Cursor::at(bytes, ti_start);
        let mut prev_end: u64 = 0;
        let mut bloom = Bloom::new();
        for _ in 0..n_tensors {
            let at = cur.file_pos();
            let t = read_tensor_info(&mut cur, bytes, data)?;
            if t.offset < prev_end {
                return Err(Error::new(
                    ErrorKind::Overlap,
                    "tensor data overlaps (or precedes) the previous tensor's",
                )
                .at(at)
                .named(t.name.as_bytes())
                .detail(t.offset, prev_end));
            }
            // The size from type and dims, not `t.data.len()`: while streaming, a tensor whose
            // bytes have not arrived has an empty view but still occupies its range.
            // `read_tensor_info` checked `offset + size` against the file length.
            let size =
                t.ty.row_bytes(t.ne[0])
                    .and_then(|r| r.checked_mul(t.n_rows()));
            prev_end = t.offset + size.unwrap_or(t.data.len() as u64);
            if bloom.insert(t.name.as_bytes()) {
                let mut c = Cursor::at(bytes, ti_start);
                while c.pos() < at as usize {
                    let t2 = read_tensor_info(&mut c, bytes, data)?;
                    if t2.name == t.name {
                        return Err(Error::new(ErrorKind::DuplicateTensor, "tensor infos")
                            .at(at)
                            .named(t.name.as_bytes()));
                    }
                }
            }
        }
        // Every byte is accounted for: after the last tensor only its alignment padding may
        // follow (llama.cpp and gguf-py write exactly that). Otherwise the header describes
        // less than the file holds, as when a tensor count was lowered: the data section then
        // starts early and every tensor view would be shifted into other bytes.
        if n_tensors > 0 {
            let end = data_start + prev_end;
            let padded = (end + (a - 1)) & !(a - 1); // power-of-two alignment: no u64 division
            if file_len > padded {
                return Err(Error::new(
                    ErrorKind::OutOfBounds,
                    "bytes after the last tensor's data (the header describes less than the file)",
                )
                .at(end)
                .detail(file_len, padded));
            }
        }
        Ok(Gguf {
            bytes,
            version,
            n_kv,
            n_tensors,
            kv_start,
            ti_start,
            data,
        })
    }

    /// The bytes the file was parsed from.
    pub const fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// GGUF version (2 or 3).
    pub const fn version(&self) -> u32 {
        self.version
    }

    /// Data alignment (`general.alignment`, default 32).
    pub const fn alignment(&self) -> u32 {
        self.data.alignment
    }

    /// Absolute offset of the tensor data section.
    pub const fn data_offset(&self) -> u64 {
        self.data.start
    }

    /// Number of metadata pairs.
    pub const fn kv_count(&self) -> u64 {
        self.n_kv
    }

    /// Number of tensors.
    pub const fn tensor_count(&self) -> u64 {
        self.n_tensors
    }

    /// Iterate metadata pairs in file order.
    pub fn metadata(&self) -> MetaIter<'a> {
        MetaIter {
            cur: Cursor::at(self.bytes, self.kv_start),
            left: self.n_kv,
        }
    }

    /// Iterate tensor infos in file order.
    pub fn tensors(&self) -> TensorIter<'a> {
        TensorIter {
            cur: Cursor::at(self.bytes, self.ti_start),
            left: self.n_tensors,
            file: self.bytes,
            data: self.data,
        }
    }

    /// Look up a metadata value.
    pub fn get(&self, key: &str) -> Option<Value<'a>> {
        self.metadata().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Look up a tensor by name.
    ///
    /// # Errors
    /// [`ErrorKind::MissingTensor`] naming the tensor.
    pub fn tensor(&self, name: &str) -> Result<TensorInfo<'a>> {
        self.tensors()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::new(ErrorKind::MissingTensor, "tensor").named(name.as_bytes()))
    }

    fn require(&self, key: &str) -> Result<Value<'a>> {
        self.get(key)
            .ok_or_else(|| Error::new(ErrorKind::MissingKey, "metadata").named(key.as_bytes()))
    }

    fn int_in(
        &self,
        key: &str,
        v: Value<'a>,
        min: i128,
        max: i128,
        what: &'static str,
    ) -> Result<i128> {
        let i = v
            .as_int()
            .ok_or_else(|| Error::new(ErrorKind::WrongType, what).named(key.as_bytes()))?;
        if i < min || i > max {
            return Err(Error::new(ErrorKind::BadValue, what).named(key.as_bytes()));
        }
        Ok(i)
    }

    /// An integer value that fits in u32 (any integer type is accepted if the value fits).
    ///
    /// # Errors
    /// [`ErrorKind::MissingKey`], [`ErrorKind::WrongType`] for non-integers,
    /// [`ErrorKind::BadValue`] if it does not fit.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        let v = self.require(key)?;
        Ok(self.int_in(
            key,
            v,
            0,
            u32::MAX as i128,
            "expected an integer that fits in uint32",
        )? as u32)
    }

    /// Like [`Gguf::get_u32`] but `Ok(None)` when the key is absent.
    ///
    /// # Errors
    /// As [`Gguf::get_u32`], except for a missing key.
    pub fn get_u32_opt(&self, key: &str) -> Result<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => Ok(Some(self.int_in(
                key,
                v,
                0,
                u32::MAX as i128,
                "expected an integer that fits in uint32",
            )? as u32)),
        }
    }

    /// An integer value that fits in u64.
    ///
    /// # Errors
    /// As [`Gguf::get_u32`].
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        Ok(self.int_in(
            key,
            v,
            0,
            u64::MAX as i128,
            "expected an integer that fits in uint64",
        )? as u64)
    }

    /// An integer value that fits in i64.
    ///
    /// # Errors
    /// As [`Gguf::get_u32`].
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        let v = self.require(key)?;
        Ok(self.int_in(
            key,
            v,
            i64::MIN as i128,
            i64::MAX as i128,
            "expected an integer that fits in int64",
        )? as i64)
    }

    /// A float value (float32, or float64 narrowed).
    ///
    /// # Errors
    /// [`ErrorKind::MissingKey`] or [`ErrorKind::WrongType`].
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_f32().ok_or_else(|| {
            Error::new(ErrorKind::WrongType, "expected float32").named(key.as_bytes())
        })
    }

    /// Like [`Gguf::get_f32`] but `Ok(None)` when absent.
    ///
    /// # Errors
    /// [`ErrorKind::WrongType`].
    pub fn get_f32_opt(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f32().map(Some).ok_or_else(|| {
                Error::new(ErrorKind::WrongType, "expected float32").named(key.as_bytes())
            }),
        }
    }

    /// A bool value.
    ///
    /// # Errors
    /// [`ErrorKind::MissingKey`] or [`ErrorKind::WrongType`].
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.require(key)? {
            Value::Bool(b) => Ok(b),
            _ => Err(Error::new(ErrorKind::WrongType, "expected bool").named(key.as_bytes())),
        }
    }

    /// A UTF-8 string value.
    ///
    /// # Errors
    /// [`ErrorKind::MissingKey`], [`ErrorKind::WrongType`], or [`ErrorKind::InvalidUtf8`].
    pub fn get_str(&self, key: &str) -> Result<&'a str> {
        match self.require(key)? {
            Value::Str(b) => core::str::from_utf8(b).map_err(|_| {
                Error::new(ErrorKind::InvalidUtf8, "metadata string").named(key.as_bytes())
            }),
            _ => Err(Error::new(ErrorKind::WrongType, "expected string").named(key.as_bytes())),
        }
    }

    /// An array value.
    ///
    /// # Errors
    /// [`ErrorKind::MissingKey`] or [`ErrorKind::WrongType`].
    pub fn get_array(&self, key: &str) -> Result<ArrayView<'a>> {
        self.require(key)?
            .as_array()
            .ok_or_else(|| Error::new(ErrorKind::WrongType, "expected array").named(key.as_bytes()))
    }

    /// An array whose elements must all be of type `elem`.
    ///
    /// # Errors
    /// As [`Gguf::get_array`], and [`ErrorKind::WrongType`] for the wrong element type.
    pub fn get_array_of(&self, key: &str, elem: ValueType) -> Result<ArrayView<'a>> {
        let a = self.get_array(key)?;
        if a.elem_type() != elem {
            return Err(
                Error::new(ErrorKind::WrongType, "array element type").named(key.as_bytes())
            );
        }
        Ok(a)
    }
}

/// Iterator over metadata pairs.
#[derive(Clone, Debug)]
pub struct MetaIter<'a> {
    cur: Cursor<'a>,
    left: u64,
}

impl<'a> Iterator for MetaIter<'a> {
    type Item = (&'a str, Value<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Validated by Gguf::parse; an error here is impossible, end iteration if it happens.
        read_kv(&mut self.cur).ok().or_else(|| {
            self.left = 0;
            None
        })
    }
}

/// Iterator over tensor infos.
#[derive(Clone, Debug)]
pub struct TensorIter<'a> {
    cur: Cursor<'a>,
    left: u64,
    file: &'a [u8],
    data: DataSection,
}

impl<'a> Iterator for TensorIter<'a> {
    type Item = TensorInfo<'a>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        read_tensor_info(&mut self.cur, self.file, self.data)
            .ok()
            .or_else(|| {
                self.left = 0;
                None
            })
    }
}
