//! A small GGUF v3 writer (feature `alloc`): used by the adapter converter and `merge`, and
//! by tests to build inputs. Writes metadata in insertion order, tensor infos, padding to the
//! alignment, then each tensor's bytes padded to the alignment, as llama.cpp expects.

use crate::error::{Error, ErrorKind, Result};
use crate::quant::GgmlType;
use alloc::string::String;
use alloc::vec::Vec;

/// An owned metadata value.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum OwnedValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    /// An array of scalars or strings (all elements must have the same type).
    Array(Vec<OwnedValue>),
}

impl OwnedValue {
    fn type_id(&self) -> u32 {
        match self {
            OwnedValue::U8(_) => 0,
            OwnedValue::I8(_) => 1,
            OwnedValue::U16(_) => 2,
            OwnedValue::I16(_) => 3,
            OwnedValue::U32(_) => 4,
            OwnedValue::I32(_) => 5,
            OwnedValue::F32(_) => 6,
            OwnedValue::Bool(_) => 7,
            OwnedValue::Str(_) => 8,
            OwnedValue::Array(_) => 9,
            OwnedValue::U64(_) => 10,
            OwnedValue::I64(_) => 11,
            OwnedValue::F64(_) => 12,
        }
    }

    /// Copy a borrowed value (from a file being rewritten).
    pub fn from_value(v: &crate::format::gguf::Value<'_>) -> OwnedValue {
        use crate::format::gguf::Value as V;
        match *v {
            V::U8(x) => OwnedValue::U8(x),
            V::I8(x) => OwnedValue::I8(x),
            V::U16(x) => OwnedValue::U16(x),
            V::I16(x) => OwnedValue::I16(x),
            V::U32(x) => OwnedValue::U32(x),
            V::I32(x) => OwnedValue::I32(x),
            V::F32(x) => OwnedValue::F32(x),
            V::Bool(x) => OwnedValue::Bool(x),
            V::Str(b) => OwnedValue::Str(String::from_utf8_lossy(b).into_owned()),
            V::U64(x) => OwnedValue::U64(x),
            V::I64(x) => OwnedValue::I64(x),
            V::F64(x) => OwnedValue::F64(x),
            V::Array(a) => {
                OwnedValue::Array(a.iter().map(|e| OwnedValue::from_value(&e)).collect())
            }
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            OwnedValue::U8(x) => out.push(*x),
            OwnedValue::I8(x) => out.push(*x as u8),
            OwnedValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            OwnedValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            OwnedValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            OwnedValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            OwnedValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            OwnedValue::Bool(x) => out.push(*x as u8),
            OwnedValue::Str(s) => write_str(out, s),
            OwnedValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            OwnedValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            OwnedValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
            OwnedValue::Array(items) => {
                // Empty arrays are written as arrays of uint32 (the element type is moot).
                let et = items.first().map_or(4, |i| i.type_id());
                out.extend_from_slice(&et.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for i in items {
                    if i.type_id() == 9 {
                        // Nested array: each element carries its own header.
                        i.write(out);
                    } else {
                        i.write(out);
                    }
                }
            }
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct TensorEntry {
    name: String,
    ty: GgmlType,
    dims: Vec<u64>,
    data: Vec<u8>,
}

/// Builds a GGUF file in memory.
pub struct GgufWriter {
    alignment: usize,
    kv: Vec<(String, OwnedValue)>,
    tensors: Vec<TensorEntry>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// A writer with the default alignment (32).
    pub fn new() -> Self {
        GgufWriter {
            alignment: 32,
            kv: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Set (or replace) a metadata value; `general.alignment` also sets the alignment.
    pub fn set(&mut self, key: &str, v: OwnedValue) -> &mut Self {
        if key == "general.alignment" {
            if let OwnedValue::U32(a) = v {
                if a.is_power_of_two() {
                    self.alignment = a as usize;
                }
            }
        }
        if let Some(e) = self.kv.iter_mut().find(|(k, _)| k == key) {
            e.1 = v;
        } else {
            self.kv.push((key.into(), v));
        }
        self
    }

    /// Add a tensor; `dims` in ggml order (`dims[0]` is the row length).
    ///
    /// # Errors
    /// [`ErrorKind::BadDims`] if the byte length does not match type and dims;
    /// [`ErrorKind::DuplicateTensor`] if the name is taken.
    pub fn add_tensor(
        &mut self,
        name: &str,
        ty: GgmlType,
        dims: &[u64],
        data: Vec<u8>,
    ) -> Result<&mut Self> {
        let rows: u64 = dims.iter().skip(1).product();
        let want = dims
            .first()
            .and_then(|&d0| ty.row_bytes(d0))
            .and_then(|rb| rb.checked_mul(rows))
            .ok_or_else(|| Error::new(ErrorKind::BadDims, "tensor dims").named(name.as_bytes()))?;
        if want != data.len() as u64 || dims.is_empty() || dims.len() > 4 {
            return Err(
                Error::new(ErrorKind::BadDims, "tensor byte length vs type and dims")
                    .named(name.as_bytes())
                    .detail(data.len() as u64, want),
            );
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(Error::new(ErrorKind::DuplicateTensor, "writer").named(name.as_bytes()));
        }
        self.tensors.push(TensorEntry {
            name: name.into(),
            ty,
            dims: dims.into(),
            data,
        });
        Ok(self)
    }

    /// Serialise.
    pub fn to_bytes(&self) -> Vec<u8> {
        let a = self.alignment;
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            write_str(&mut out, k);
            out.extend_from_slice(&v.type_id().to_le_bytes());
            v.write(&mut out);
        }
        let mut off = 0u64;
        for t in &self.tensors {
            write_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&off.to_le_bytes());
            off += (t.data.len() as u64).div_ceil(a as u64) * a as u64;
        }
        while out.len() % a != 0 {
            out.push(0);
        }
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            while out.len() % a != 0 {
                out.push(0);
            }
        }
        out
    }
}
