//! One small error type for the whole core.
//!
//! Errors carry a kind, a static description of *what* was being read, an optional byte
//! offset, and an inline copy of the offending name (a metadata key or tensor name, truncated
//! to [`NAME_CAP`] bytes) so that an error can say which key or tensor was wrong without
//! borrowing the file and without an allocator.

use core::fmt;

/// Maximum number of bytes of a key or tensor name kept inside an [`Error`].
pub const NAME_CAP: usize = 48;

/// What went wrong. Kept small and `Copy` so errors are cheap to return on a microcontroller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input ended before a field could be read.
    Truncated,
    /// The file does not start with the `GGUF` magic.
    BadMagic,
    /// A GGUF version other than 2 or 3.
    UnsupportedVersion,
    /// A count (keys, tensors, array elements, dims) exceeds its hard cap.
    TooMany,
    /// A string is longer than its cap.
    StringTooLong,
    /// A string that must be UTF-8 is not.
    InvalidUtf8,
    /// A metadata value type id outside 0..=12.
    BadValueType,
    /// Arrays nested deeper than the cap.
    NestingTooDeep,
    /// The same metadata key appears twice.
    DuplicateKey,
    /// The same tensor name appears twice.
    DuplicateTensor,
    /// `general.alignment` is zero, not a power of two, or absurdly large.
    BadAlignment,
    /// A ggml tensor type id this build does not know.
    UnknownTensorType,
    /// A tensor type that is known but not supported by the operation.
    UnsupportedTensorType,
    /// Tensor dimensions that are zero, overflow, or do not fit the block size.
    BadDims,
    /// A tensor's data lies (partly) outside the file.
    OutOfBounds,
    /// A tensor's offset is not a multiple of the alignment.
    Misaligned,
    /// A tensor's data overlaps the previous tensor's data.
    Overlap,
    /// A required metadata key is absent.
    MissingKey,
    /// A required tensor is absent.
    MissingTensor,
    /// A metadata value has the wrong type (or does not fit the requested type).
    WrongType,
    /// A metadata value is out of the accepted range.
    BadValue,
    /// A tensor has a shape other than the one the model needs.
    ShapeMismatch,
    /// A token id is not in the vocabulary.
    TokenOutOfRange,
    /// A position is at or past the context length the state was sized for.
    ContextFull,
    /// A caller-provided buffer is too small (or has the wrong length).
    BufferTooSmall,
    /// Invalid argument from the caller (empty batch, bad sampling parameters, ...).
    InvalidArgument,
    /// The architecture in the file is not one this build runs.
    UnsupportedArch,
}

impl ErrorKind {
    /// A short human description of the kind.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Truncated => "truncated input",
            ErrorKind::BadMagic => "not a GGUF file (bad magic)",
            ErrorKind::UnsupportedVersion => "unsupported GGUF version",
            ErrorKind::TooMany => "count exceeds limit",
            ErrorKind::StringTooLong => "string too long",
            ErrorKind::InvalidUtf8 => "invalid UTF-8",
            ErrorKind::BadValueType => "invalid metadata value type",
            ErrorKind::NestingTooDeep => "arrays nested too deeply",
            ErrorKind::DuplicateKey => "duplicate metadata key",
            ErrorKind::DuplicateTensor => "duplicate tensor name",
            ErrorKind::BadAlignment => "invalid alignment",
            ErrorKind::UnknownTensorType => "unknown tensor type",
            ErrorKind::UnsupportedTensorType => "unsupported tensor type",
            ErrorKind::BadDims => "invalid tensor dimensions",
            ErrorKind::OutOfBounds => "tensor data outside the file",
            ErrorKind::Misaligned => "tensor data misaligned",
            ErrorKind::Overlap => "tensor data overlaps previous tensor",
            ErrorKind::MissingKey => "missing metadata key",
            ErrorKind::MissingTensor => "missing tensor",
            ErrorKind::WrongType => "metadata value has wrong type",
            ErrorKind::BadValue => "metadata value out of range",
            ErrorKind::ShapeMismatch => "tensor shape mismatch",
            ErrorKind::TokenOutOfRange => "token id out of range",
            ErrorKind::ContextFull => "position past the context length",
            ErrorKind::BufferTooSmall => "buffer too small",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::UnsupportedArch => "unsupported architecture",
        }
    }
}

/// A key or tensor name copied into the error (truncated to [`NAME_CAP`] bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Name {
    buf: [u8; NAME_CAP],
    len: u8,
    truncated: bool,
}

impl Name {
    /// The empty name.
    pub const EMPTY: Name = Name {
        buf: [0; NAME_CAP],
        len: 0,
        truncated: false,
    };

    /// Copy up to [`NAME_CAP`] bytes of `s`, cutting at a char boundary if it is UTF-8.
    pub fn new(s: &[u8]) -> Name {
        let mut n = s.len().min(NAME_CAP);
        if let Ok(st) = core::str::from_utf8(s) {
            while n > 0 && !st.is_char_boundary(n) {
                n -= 1;
            }
        }
        let mut buf = [0u8; NAME_CAP];
        buf[..n].copy_from_slice(&s[..n]);
        Name {
            buf,
            len: n as u8,
            truncated: n < s.len(),
        }
    }

    /// The stored bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    /// True if no name is attached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.as_bytes().utf8_chunks() {
            f.write_str(chunk.valid())?;
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        if self.truncated {
            f.write_str("...")?;
        }
        Ok(())
    }
}

/// The core's error: kind, what was being processed, where, and which key/tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    what: &'static str,
    offset: Option<u64>,
    name: Name,
    /// Two numbers that make the message concrete (found/limit, needed/available, ...).
    detail: Option<(u64, u64)>,
}

/// Result alias used throughout the core.
pub type Result<T> = core::result::Result<T, Error>;

// On bare-metal targets the builders are `#[cold]`: an error is built at a few hundred sites
// (most in the GGUF and adapter parsers), and the hint moves those paths out of the hot code
// and lets the size-optimised build share them: -1480 bytes of flash on the Cortex-M4
// runtime image (64220 from 65700; `inline(never)` instead made it 236 bytes larger).
impl Error {
    /// A new error of `kind` while processing `what`.
    #[cfg_attr(target_os = "none", cold)]
    pub const fn new(kind: ErrorKind, what: &'static str) -> Error {
        Error {
            kind,
            what,
            offset: None,
            name: Name::EMPTY,
            detail: None,
        }
    }

    /// Attach the byte offset in the input at which the problem was found.
    #[cfg_attr(target_os = "none", cold)]
    pub const fn at(mut self, offset: u64) -> Error {
        self.offset = Some(offset);
        self
    }

    /// Attach the name of the key or tensor concerned.
    #[cfg_attr(target_os = "none", cold)]
    pub fn named(mut self, name: &[u8]) -> Error {
        self.name = Name::new(name);
        self
    }

    /// Attach two numbers, printed as `(got A, limit B)`.
    #[cfg_attr(target_os = "none", cold)]
    pub const fn detail(mut self, got: u64, limit: u64) -> Error {
        self.detail = Some((got, limit));
        self
    }

    /// The kind of error.
    pub const fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// What was being read or checked (a static description).
    pub const fn what(&self) -> &'static str {
        self.what
    }

    /// Byte offset in the input, if the error came from parsing bytes.
    pub const fn offset(&self) -> Option<u64> {
        self.offset
    }

    /// The key or tensor name concerned (empty if none).
    pub const fn name(&self) -> &Name {
        &self.name
    }

    /// The numbers attached with [`Error::detail`].
    pub const fn details(&self) -> Option<(u64, u64)> {
        self.detail
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.what)?;
        if !self.name.is_empty() {
            write!(f, " '{}'", self.name)?;
        }
        if let Some(off) = self.offset {
            write!(f, " at byte {off}")?;
        }
        if let Some((a, b)) = self.detail {
            write!(f, " (got {a}, limit {b})")?;
        }
        Ok(())
    }
}

impl core::error::Error for Error {}

/// The same text as `Display`, formatted by the host's defmt decoder (a firmware's log
/// frames carry the parts, not the text; the firmware test compares the decoded lines with the
/// host's `Display` lines).
#[cfg(feature = "defmt")]
impl defmt::Format for Error {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{=str}: {=str}", self.kind.as_str(), self.what);
        if !self.name.is_empty() {
            defmt::write!(f, " '{}'", self.name);
        }
        if let Some(off) = self.offset {
            defmt::write!(f, " at byte {=u64}", off);
        }
        if let Some((a, b)) = self.detail {
            defmt::write!(f, " (got {=u64}, limit {=u64})", a, b);
        }
    }
}

/// As `Display`: valid UTF-8 as is, other bytes as `\xNN`, `...` if cut.
#[cfg(feature = "defmt")]
impl defmt::Format for Name {
    fn format(&self, f: defmt::Formatter<'_>) {
        for chunk in self.as_bytes().utf8_chunks() {
            defmt::write!(f, "{=str}", chunk.valid());
            for b in chunk.invalid() {
                defmt::write!(f, "\\x{=u8:02x}", b);
            }
        }
        if self.truncated {
            defmt::write!(f, "...");
        }
    }
}
