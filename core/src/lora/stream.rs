//! Streaming adapter load: bytes arrive in chunks of any size (UART, flash pages, network)
//! into a caller-provided buffer; nothing becomes loadable until the whole payload is present
//! and its checksum verified.
//!
//! Wire format: a 24-byte frame header, then the adapter GGUF bytes (the payload):
//!
//! ```text
//! 0  magic  "ELAS"
//! 4  u32    frame version (1)
//! 8  u64    payload length
//! 16 u32    CRC-32 (IEEE) of the payload
//! 20 u32    CRC-32 of bytes 0..20 (so a corrupted length is caught before any payload)
//! ```
//!
//! The frame header is checked as soon as its 24 bytes are in; the GGUF header is validated
//! against the declared length as soon as it is complete (so a stream for the wrong thing is
//! refused early); the CRC and a full [`Adapter::parse`] run at [`StreamLoader::finish`].
//! Memory is bounded by the buffer: a payload longer than the buffer is refused from the
//! frame header. The loader only ever writes its own buffer, so an adapter being served from
//! another buffer is untouched by anything that happens here (double buffering).

use super::Adapter;
use crate::error::{Error, ErrorKind, Result};
use crate::format::gguf::{Gguf, HeaderState};

/// Frame magic.
pub const FRAME_MAGIC: [u8; 4] = *b"ELAS";
/// Frame version.
pub const FRAME_VERSION: u32 = 1;
/// Frame header length.
pub const FRAME_HEADER: usize = 24;

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}
static CRC_TABLE: [u32; 256] = crc_table();

/// Incremental CRC-32 (IEEE 802.3, as zlib's `crc32`).
#[derive(Clone, Copy, Debug)]
pub struct Crc32(u32);

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32 {
    /// A fresh CRC.
    pub const fn new() -> Self {
        Crc32(0xffff_ffff)
    }
    /// Feed bytes.
    pub fn update(&mut self, data: &[u8]) {
        let mut c = self.0;
        for &b in data {
            c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }
    /// The checksum so far.
    pub const fn value(&self) -> u32 {
        !self.0
    }
    /// CRC of one slice.
    pub fn of(data: &[u8]) -> u32 {
        let mut c = Crc32::new();
        c.update(data);
        c.value()
    }
}

/// Build the 24-byte frame header for `payload`.
pub fn frame_header(payload: &[u8]) -> [u8; FRAME_HEADER] {
    let mut h = [0u8; FRAME_HEADER];
    h[0..4].copy_from_slice(&FRAME_MAGIC);
    h[4..8].copy_from_slice(&FRAME_VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    h[16..20].copy_from_slice(&Crc32::of(payload).to_le_bytes());
    let hc = Crc32::of(&h[..20]);
    h[20..24].copy_from_slice(&hc.to_le_bytes());
    h
}

/// Where a stream stands after a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Waiting for the frame header.
    Frame,
    /// Receiving the adapter's GGUF header.
    Header,
    /// Header validated; receiving tensor data.
    Data,
    /// Every payload byte is in; call [`StreamLoader::finish`].
    Complete,
}

/// Receives one framed adapter into a caller buffer.
#[derive(Debug)]
pub struct StreamLoader<'b> {
    buf: &'b mut [u8],
    frame: [u8; FRAME_HEADER],
    frame_have: usize,
    payload_len: usize,
    expected_crc: u32,
    have: usize,
    crc: Crc32,
    header_ok: bool,
    /// Do not re-try the header check before this many payload bytes are in.
    retry_at: usize,
    failed: Option<Error>,
}

impl<'b> StreamLoader<'b> {
    /// A loader that will place the payload in `buf` (which bounds the adapter size).
    pub fn new(buf: &'b mut [u8]) -> Self {
        StreamLoader {
            buf,
            frame: [0; FRAME_HEADER],
            frame_have: 0,
            payload_len: 0,
            expected_crc: 0,
            have: 0,
            crc: Crc32::new(),
            header_ok: false,
            retry_at: 0,
            failed: None,
        }
    }

    /// Payload bytes received so far.
    pub const fn received(&self) -> usize {
        self.have
    }

    /// Declared payload length (0 until the frame header is in).
    pub const fn payload_len(&self) -> usize {
        self.payload_len
    }

    fn fail(&mut self, e: Error) -> Error {
        self.failed = Some(e);
        e
    }

    /// Feed the next chunk (any size, including 0).
    ///
    /// # Errors
    /// A bad frame (magic, version, header CRC: [`ErrorKind::BadMagic`],
    /// [`ErrorKind::UnsupportedVersion`], [`ErrorKind::BadValue`]), a payload larger than the
    /// buffer ([`ErrorKind::BufferTooSmall`]), bytes past the declared end
    /// ([`ErrorKind::InvalidArgument`]), or any GGUF header error as soon as the header is
    /// complete. After an error the loader stays failed: every later call returns the error.
    pub fn push(&mut self, mut chunk: &[u8]) -> Result<Progress> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.frame_have < FRAME_HEADER {
            let n = chunk.len().min(FRAME_HEADER - self.frame_have);
            self.frame[self.frame_have..self.frame_have + n].copy_from_slice(&chunk[..n]);
            self.frame_have += n;
            chunk = &chunk[n..];
            if self.frame_have < FRAME_HEADER {
                return Ok(Progress::Frame);
            }
            self.check_frame()?;
        }
        let room = self.payload_len - self.have;
        if chunk.len() > room {
            let e = Error::new(
                ErrorKind::InvalidArgument,
                "stream has bytes past the declared payload length",
            )
            .at((FRAME_HEADER + self.payload_len) as u64)
            .detail((self.have + chunk.len()) as u64, self.payload_len as u64);
            return Err(self.fail(e));
        }
        // In range: have + chunk.len() <= payload_len <= buf.len() (checked in check_frame).
        self.buf[self.have..self.have + chunk.len()].copy_from_slice(chunk);
        self.crc.update(chunk);
        self.have += chunk.len();
        if !self.header_ok && self.have >= self.retry_at {
            match Gguf::parse_header(&self.buf[..self.have], self.payload_len as u64) {
                Ok(HeaderState::Complete(_)) => {
                    self.header_ok = true;
                    // Early semantic check: it must be a LoRA adapter.
                    if let Err(e) = self.check_adapter_kind() {
                        return Err(self.fail(e));
                    }
                }
                Ok(HeaderState::NeedMore(need)) => {
                    // Re-check once the field that stopped us can be read, but also let the
                    // prefix grow by at least 1/16 between attempts, so that re-parsing stays
                    // O(header) overall even for 1-byte chunks and headers of many fields.
                    let need = usize::try_from(need).unwrap_or(usize::MAX);
                    self.retry_at = need.max(self.have + self.have / 16);
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(if self.have == self.payload_len {
            Progress::Complete
        } else if self.header_ok {
            Progress::Data
        } else {
            Progress::Header
        })
    }

    fn check_adapter_kind(&self) -> Result<()> {
        // The header is complete, so metadata lookups on the prefix are in bounds.
        let HeaderState::Complete(g) =
            Gguf::parse_header(&self.buf[..self.have], self.payload_len as u64)?
        else {
            return Err(Error::new(ErrorKind::Truncated, "adapter header"));
        };
        let ok =
            g.get_str("general.type") == Ok("adapter") && g.get_str("adapter.type") == Ok("lora");
        if !ok {
            return Err(Error::new(
                ErrorKind::BadValue,
                "stream is not a LoRA adapter (general.type / adapter.type)",
            )
            .named(b"general.type"));
        }
        Ok(())
    }

    fn check_frame(&mut self) -> Result<()> {
        let f = self.frame;
        let e = if f[0..4] != FRAME_MAGIC {
            Some(Error::new(ErrorKind::BadMagic, "adapter stream frame").at(0))
        } else if Crc32::of(&f[..20]) != u32::from_le_bytes([f[20], f[21], f[22], f[23]]) {
            Some(Error::new(ErrorKind::BadValue, "adapter stream frame header checksum").at(20))
        } else if u32::from_le_bytes([f[4], f[5], f[6], f[7]]) != FRAME_VERSION {
            Some(Error::new(ErrorKind::UnsupportedVersion, "adapter stream frame").at(4))
        } else {
            None
        };
        if let Some(e) = e {
            return Err(self.fail(e));
        }
        let len = u64::from_le_bytes([f[8], f[9], f[10], f[11], f[12], f[13], f[14], f[15]]);
        if len > self.buf.len() as u64 {
            let e = Error::new(
                ErrorKind::BufferTooSmall,
                "adapter payload vs receive buffer",
            )
            .at(8)
            .detail(len, self.buf.len() as u64);
            return Err(self.fail(e));
        }
        self.payload_len = len as usize;
        self.expected_crc = u32::from_le_bytes([f[16], f[17], f[18], f[19]]);
        self.retry_at = 24; // the smallest possible GGUF header
        Ok(())
    }

    /// Verify the checksum and the whole adapter, and hand out the payload.
    ///
    /// # Errors
    /// [`ErrorKind::Truncated`] if bytes are missing, [`ErrorKind::BadValue`] on a checksum
    /// mismatch, any [`Adapter::parse`] error; or the error the stream already failed with.
    pub fn finish(self) -> Result<&'b [u8]> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.frame_have < FRAME_HEADER || self.have < self.payload_len {
            return Err(
                Error::new(ErrorKind::Truncated, "adapter stream ended early")
                    .at((self.frame_have + self.have) as u64)
                    .detail(self.have as u64, self.payload_len as u64),
            );
        }
        if self.crc.value() != self.expected_crc {
            return Err(
                Error::new(ErrorKind::BadValue, "adapter stream checksum mismatch")
                    .detail(self.crc.value() as u64, self.expected_crc as u64),
            );
        }
        let payload: &'b [u8] = &self.buf[..self.payload_len];
        Adapter::parse(payload)?;
        Ok(payload)
    }
}
