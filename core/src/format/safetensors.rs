//! safetensors reader (feature `std`): 8-byte little-endian header length, a JSON header
//! `{name: {dtype, shape, data_offsets: [start, end]}, "__metadata__": {..}}`, then the data.
//!
//! Validation: the header length is capped and inside the file, every entry has a supported
//! dtype, offsets inside the data section, `end - start == prod(shape) * dtype size`, and no
//! two tensors overlap. Tensors are borrowed, not copied.

use crate::error::{Error, ErrorKind, Result};
use std::collections::BTreeMap;
use std::string::{String, ToString};
use std::vec::Vec;

/// Largest accepted JSON header (the format's reference implementation uses 100 MB).
pub const MAX_HEADER: u64 = 100 << 20;

/// Element types this reader converts to f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    F64,
}

impl Dtype {
    fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "F64" => Dtype::F64,
            _ => return None,
        })
    }
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::F64 => 8,
        }
    }
}

/// One tensor view.
#[derive(Clone, Debug)]
pub struct StTensor<'a> {
    /// Key in the header.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape, outermost first (PyTorch order).
    pub shape: Vec<usize>,
    /// Exactly the tensor's bytes.
    pub data: &'a [u8],
}

impl StTensor<'_> {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Values converted to f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let sz = self.dtype.size();
        self.data
            .chunks_exact(sz)
            .map(|c| match self.dtype {
                Dtype::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                Dtype::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
                Dtype::BF16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
                Dtype::F64 => {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                }
            })
            .collect()
    }
}

/// A parsed safetensors file.
#[derive(Clone, Debug)]
pub struct SafeTensors<'a> {
    /// Tensors sorted by name.
    pub tensors: Vec<StTensor<'a>>,
    /// `__metadata__` string map.
    pub metadata: BTreeMap<String, String>,
}

fn bad(what: &'static str) -> Error {
    Error::new(ErrorKind::BadValue, what)
}

impl<'a> SafeTensors<'a> {
    /// Parse and validate.
    ///
    /// # Errors
    /// [`ErrorKind::Truncated`], [`ErrorKind::TooMany`] for an oversized header,
    /// [`ErrorKind::BadValue`] for invalid JSON or entries, [`ErrorKind::UnsupportedTensorType`]
    /// naming the tensor for other dtypes, [`ErrorKind::OutOfBounds`] / [`ErrorKind::BadDims`] /
    /// [`ErrorKind::Overlap`] naming the tensor.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let n = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .ok_or_else(|| Error::new(ErrorKind::Truncated, "safetensors header length").at(0))?;
        if n > MAX_HEADER {
            return Err(Error::new(ErrorKind::TooMany, "safetensors header bytes")
                .at(0)
                .detail(n, MAX_HEADER));
        }
        let hdr = bytes.get(8..8 + n as usize).ok_or_else(|| {
            Error::new(ErrorKind::Truncated, "safetensors header")
                .at(8)
                .detail(n, bytes.len() as u64 - 8)
        })?;
        let data = &bytes[8 + n as usize..];
        let json: serde_json::Value = serde_json::from_slice(hdr)
            .map_err(|_| bad("safetensors header is not valid JSON").at(8))?;
        let obj = json
            .as_object()
            .ok_or_else(|| bad("safetensors header is not a JSON object").at(8))?;
        let mut tensors = Vec::new();
        let mut metadata = BTreeMap::new();
        for (name, v) in obj {
            if name == "__metadata__" {
                if let Some(m) = v.as_object() {
                    for (k, v) in m {
                        metadata.insert(
                            k.clone(),
                            v.as_str()
                                .map(|s| s.to_string())
                                .unwrap_or_else(|| v.to_string()),
                        );
                    }
                }
                continue;
            }
            let nb = name.as_bytes();
            let e = v
                .as_object()
                .ok_or_else(|| bad("tensor entry is not an object").named(nb))?;
            let dt = e
                .get("dtype")
                .and_then(|d| d.as_str())
                .ok_or_else(|| bad("tensor dtype missing").named(nb))?;
            let dtype = Dtype::parse(dt).ok_or_else(|| {
                Error::new(
                    ErrorKind::UnsupportedTensorType,
                    "safetensors dtype (F32, F16, BF16, F64 supported)",
                )
                .named(nb)
            })?;
            let shape: Vec<usize> = e
                .get("shape")
                .and_then(|s| s.as_array())
                .ok_or_else(|| bad("tensor shape missing").named(nb))?
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    bad("tensor shape entries must be non-negative integers").named(nb)
                })?;
            if shape.len() > 8 {
                return Err(Error::new(ErrorKind::BadDims, "too many dims").named(nb));
            }
            let offs = e
                .get("data_offsets")
                .and_then(|o| o.as_array())
                .filter(|o| o.len() == 2)
                .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
                .ok_or_else(|| bad("data_offsets must be [start, end]").named(nb))?;
            let numel = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| Error::new(ErrorKind::BadDims, "shape overflows").named(nb))?;
            let want = numel
                .checked_mul(dtype.size())
                .ok_or_else(|| Error::new(ErrorKind::BadDims, "size overflows").named(nb))?;
            if offs.1 < offs.0 || offs.1 - offs.0 != want as u64 {
                return Err(
                    Error::new(ErrorKind::BadDims, "data_offsets length vs shape x dtype")
                        .named(nb)
                        .detail(offs.1.wrapping_sub(offs.0), want as u64),
                );
            }
            let slice = usize::try_from(offs.0)
                .ok()
                .zip(usize::try_from(offs.1).ok())
                .and_then(|(a, b)| data.get(a..b))
                .ok_or_else(|| {
                    Error::new(ErrorKind::OutOfBounds, "tensor data")
                        .named(nb)
                        .detail(offs.1, data.len() as u64)
                })?;
            tensors.push((
                offs.0,
                StTensor {
                    name: name.clone(),
                    dtype,
                    shape,
                    data: slice,
                },
            ));
        }
        tensors.sort_by_key(|t| t.0);
        for w in tensors.windows(2) {
            if w[1].0 < w[0].0 + w[0].1.data.len() as u64 {
                return Err(
                    Error::new(ErrorKind::Overlap, "safetensors tensors overlap")
                        .named(w[1].1.name.as_bytes()),
                );
            }
        }
        let mut tensors: Vec<StTensor<'a>> = tensors.into_iter().map(|t| t.1).collect();
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(SafeTensors { tensors, metadata })
    }

    /// Find a tensor by name.
    pub fn get(&self, name: &str) -> Option<&StTensor<'a>> {
        self.tensors
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.tensors[i])
    }
}
