//! Small helpers shared by several test files (each test file is its own crate and includes
//! this module with `mod common;`, so not every file uses every helper).
#![allow(dead_code)]

/// Deterministic pseudo-random values in `[-amp, amp)` (xorshift64 seeded from `seed`).
pub fn rnd(seed: u64, n: usize, amp: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

/// Little-endian f32 bytes of `x`.
pub fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Little-endian F16 bytes of `x` (round to nearest).
pub fn f16_bytes(x: &[f32]) -> Vec<u8> {
    x.iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect()
}

/// The bytes of `tests/fixtures/<rel>`; panics with the path if it cannot be read.
pub fn fixture(rel: &str) -> Vec<u8> {
    let p = format!("{}/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}
