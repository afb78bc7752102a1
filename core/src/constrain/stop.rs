//! Stop strings over streamed bytes, with a bounded holdback in a caller buffer.
//!
//! The bytes released never contain a stop string nor any part of one, even when the string
//! arrives split over several tokens: the scanner holds back the longest tail that could
//! still begin a stop string (at most the longest stop string's length minus one bytes) and
//! releases it once it cannot. When a stop string completes, it and everything after it are
//! dropped (OpenAI's and llama-server's behaviour: the stop sequence is not returned).

use crate::error::{Error, ErrorKind, Result};

/// Incremental stop-string search.
#[derive(Debug)]
pub struct StopScan<'s, 'b> {
    stops: &'s [&'s [u8]],
    held: &'b mut [u8],
    len: usize,
    stopped: bool,
}

impl<'s, 'b> StopScan<'s, 'b> {
    /// A scanner for `stops` (empty ones never match) holding back bytes in `buf`.
    ///
    /// # Errors
    /// [`ErrorKind::BufferTooSmall`] if `buf` is shorter than the longest stop string.
    pub fn new(stops: &'s [&'s [u8]], buf: &'b mut [u8]) -> Result<Self> {
        let need = stops.iter().map(|s| s.len()).max().unwrap_or(0);
        if buf.len() < need {
            return Err(
                Error::new(ErrorKind::BufferTooSmall, "stop string holdback")
                    .detail(buf.len() as u64, need as u64),
            );
        }
        Ok(StopScan {
            stops,
            held: buf,
            len: 0,
            stopped: false,
        })
    }

    /// True once a stop string has completed (everything after it is ignored).
    pub const fn stopped(&self) -> bool {
        self.stopped
    }

    /// Feed output bytes; bytes safe to show go to `emit`. Returns true when a stop string
    /// completed (generation should end).
    pub fn push(&mut self, bytes: &[u8], emit: &mut impl FnMut(&[u8])) -> bool {
        for &b in bytes {
            if self.stopped {
                return true;
            }
            if self.len == self.held.len() {
                // Only reachable with no non-empty stop strings and an empty buffer.
                emit(&[b]);
                continue;
            }
            self.held[self.len] = b;
            self.len += 1;
            let held = &self.held[..self.len];
            // Of the stop strings ending here, the longest starts earliest.
            let hit = self
                .stops
                .iter()
                .filter(|s| !s.is_empty() && held.ends_with(s))
                .max_by_key(|s| s.len());
            if let Some(s) = hit {
                emit(&held[..held.len() - s.len()]);
                self.len = 0;
                self.stopped = true;
                return true;
            }
            let keep = self
                .stops
                .iter()
                .map(|s| {
                    (1..s.len().min(held.len() + 1))
                        .rev()
                        .find(|&n| s.starts_with(&held[held.len() - n..]))
                        .unwrap_or(0)
                })
                .max()
                .unwrap_or(0);
            let cut = self.len - keep;
            if cut > 0 {
                emit(&self.held[..cut]);
                self.held.copy_within(cut..self.len, 0);
                self.len = keep;
            }
        }
        self.stopped
    }

    /// The end of the output without a stop string: release what is held.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8])) {
        if !self.stopped && self.len > 0 {
            emit(&self.held[..self.len]);
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec;

    fn run(stops: &[&[u8]], pieces: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut buf = [0u8; 16];
        let mut s = StopScan::new(stops, &mut buf).unwrap();
        let mut out = Vec::new();
        for p in pieces {
            if s.push(p, &mut |b| out.extend_from_slice(b)) {
                return (out, true);
            }
        }
        s.finish(&mut |b| out.extend_from_slice(b));
        (out, false)
    }

    #[test]
    fn split_stops_never_leak() {
        assert_eq!(
            run(&[b"\n\n"], &[b"ab", b"c\n", b"\nd"]),
            (b"abc".to_vec(), true)
        );
        assert_eq!(
            run(&[b"END"], &[b"xE", b"N", b"D", b"more"]),
            (b"x".to_vec(), true)
        );
        assert_eq!(
            run(&[b"END"], &[b"xE", b"Nd", b"y"]),
            (b"xENdy".to_vec(), false)
        );
        assert_eq!(run(&[b"END"], &[b"abEN"]), (b"abEN".to_vec(), false));
        assert_eq!(run(&[b"b", b"ab"], &[b"xxab"]), (b"xx".to_vec(), true));
        assert_eq!(run(&[], &[b"a", b"b"]), (b"ab".to_vec(), false));
        assert!(StopScan::new(&[b"0123456789abcdefX"], &mut [0u8; 16]).is_err());
    }
}
