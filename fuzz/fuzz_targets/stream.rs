//! `StreamLoader` fed in random chunks. The input is a recipe:
//!
//! ```text
//! byte 0      flags: bit 0 raw stream (else the payload is framed here, with correct CRCs),
//!             bit 1 the frame lies about the payload length (header CRC recomputed so the
//!             lie is self-consistent), bit 2 wrong payload CRC
//! byte 1      length lie, i8 (bit 1) / receive buffer slack, i8
//! bytes 2..10 chunk sizes, cycled: b*b bytes each (0 = an empty push)
//! rest        the payload (or, raw, the whole stream)
//! ```
//!
//! Oracles besides "no panic": an honest frame whose buffer fits loads exactly when
//! `Adapter::parse` accepts the payload, and hands back the payload unchanged; a frame that
//! lies about the length or the checksum never loads; a failed loader stays failed; whatever
//! loads parses as an adapter.
#![no_main]

#[path = "common.rs"]
mod common;

use common::Recipe;
use edgelora::lora::stream::{frame_header, Crc32, Progress, StreamLoader, FRAME_HEADER};
use edgelora::lora::Adapter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = Recipe(data);
    let flags = r.u8();
    let (raw, lie_len, bad_crc) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
    let delta = r.u8() as i8 as i64;
    let mut sizes: Vec<usize> = r.take(8).iter().map(|&b| b as usize * b as usize).collect();
    if sizes.iter().all(|&s| s == 0) {
        sizes = vec![1];
    }
    let body = r.rest();

    let (stream, payload_len, honest): (Vec<u8>, usize, bool) = if raw {
        let len = body
            .get(8..16)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .min(1 << 20) as usize;
        (body.to_vec(), len, false)
    } else {
        let mut h = frame_header(body);
        let mut declared = body.len() as i64;
        if lie_len && delta != 0 {
            declared = (declared + delta).max(0);
            h[8..16].copy_from_slice(&(declared as u64).to_le_bytes());
        }
        if bad_crc {
            h[16] ^= 1;
        }
        if lie_len || bad_crc {
            let c = Crc32::of(&h[..20]);
            h[20..24].copy_from_slice(&c.to_le_bytes());
        }
        let mut s = h.to_vec();
        s.extend_from_slice(body);
        let lied = declared != body.len() as i64 || bad_crc;
        (s, declared as usize, !lied)
    };
    // Receive buffer: the declared length plus or minus a little (sometimes too small).
    let slack = if lie_len { 0 } else { delta };
    let buf_len = (payload_len as i64 + slack).clamp(0, 1 << 20) as usize;
    let mut buf = vec![0u8; buf_len];
    let fits = buf_len >= payload_len;

    let mut l = StreamLoader::new(&mut buf);
    let mut failed = None;
    let mut last = Progress::Frame;
    let mut at = 0;
    let mut i = 0;
    while at < stream.len() {
        let n = sizes[i % sizes.len()].min(stream.len() - at);
        i += 1;
        match l.push(&stream[at..at + n]) {
            Ok(p) => {
                assert!(failed.is_none(), "a failed loader accepted more bytes");
                assert!(l.received() <= l.payload_len());
                last = p;
            }
            Err(e) => {
                if let Some(k) = failed {
                    assert_eq!(e.kind(), k, "a failed loader keeps its error");
                }
                failed = Some(e.kind());
            }
        }
        at += n;
    }
    let out = l.finish();
    if let Ok(p) = &out {
        assert!(failed.is_none());
        assert_eq!(last, Progress::Complete);
        assert!(Adapter::parse(p).is_ok(), "what loads parses");
        assert_eq!(
            &stream[..FRAME_HEADER],
            &frame_header(p)[..],
            "frame matches what loaded"
        );
        assert_eq!(&stream[FRAME_HEADER..], *p, "payload unchanged");
    }
    if !raw {
        if honest && fits {
            let want = Adapter::parse(body);
            assert_eq!(
                out.is_ok(),
                want.is_ok(),
                "stream vs whole-file parse: {:?} vs {:?}",
                out.err(),
                want.err()
            );
        } else {
            assert!(out.is_err(), "a lying or oversized frame loaded");
        }
    }
});
