//! Test data and the row check of the `kernels` images (Cortex-M `src/bin/kernels.rs`, RISC-V
//! `targets/riscv/src/bin/kernels.rs`): random and extreme Q8_0 / Q4_0 blocks (-128/127 bytes,
//! nibbles 0/15, f16 max, the smallest subnormal and zero scales), and a table's matvecs
//! against `reference::vec_dot_*`, bit for bit. Linked only into the images that use it.

use edgelora::kernels::{reference, Kernel};
use edgelora::quant::{to_f16_le, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1};

/// xorshift64 (the high 32 bits of each state).
pub struct Rng(pub u64);

impl Rng {
    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u32
    }
}

/// A Q8 quant byte for `case`: all -128, all 127, a random mix of the two, or random.
fn q8_byte(r: &mut Rng, case: u32) -> u8 {
    match case % 5 {
        0 => 0x80, // -128
        1 => 0x7f,
        2 => {
            if r.next_u32() & 1 == 0 {
                0x80
            } else {
                0x7f
            }
        }
        _ => r.next_u32() as u8,
    }
}

/// A byte of two Q4 nibbles for `case`: both 0, both 15, or random.
fn q4_byte(r: &mut Rng, case: u32) -> u8 {
    match case % 4 {
        0 => 0x00,
        1 => 0xff,
        _ => r.next_u32() as u8,
    }
}

/// Fill Q8_0 blocks: bytes from [`q8_byte`]; each block's scale from [`scale`].
pub fn fill_q8(r: &mut Rng, b: &mut [BlockQ8_0], case: u32) {
    for (i, blk) in b.iter_mut().enumerate() {
        blk.d = scale(r, case.wrapping_add(i as u32));
        for q in blk.qs.iter_mut() {
            *q = q8_byte(r, case);
        }
    }
}

/// Fill Q4_0 blocks: every weight -8, every weight 7, or random nibbles ([`q4_byte`]).
pub fn fill_q4(r: &mut Rng, b: &mut [BlockQ4_0], case: u32) {
    for (i, blk) in b.iter_mut().enumerate() {
        blk.d = scale(r, case.wrapping_add(i as u32));
        for q in blk.qs.iter_mut() {
            *q = q4_byte(r, case);
        }
    }
}

/// An f16 scale: the largest, the smallest subnormal, zero, or random in [-1, 1).
pub fn scale(r: &mut Rng, case: u32) -> [u8; 2] {
    match case % 7 {
        0 => to_f16_le(65504.0),
        1 => [1, 0], // smallest subnormal
        2 => [0, 0],
        _ => to_f16_le((r.next_u32() % 2000) as f32 / 1000.0 - 1.0),
    }
}

/// The same f32 bits (any NaN equals any NaN).
pub fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// `check(rng, rows, blocks per row, case)` for every row count x blocks per row x case, one
/// random stream from `seed`; the number of triples checked, or the first error.
fn each_shape(
    (rows, bprs, cases): (&[usize], &[usize], u32),
    seed: u64,
    mut check: impl FnMut(&mut Rng, usize, usize, u32) -> Result<(), &'static str>,
) -> Result<u32, &'static str> {
    let mut r = Rng(seed);
    let mut n = 0;
    for &rows in rows {
        for &bpr in bprs {
            for case in 0..cases {
                check(&mut r, rows, bpr, case)?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Most rows [`check_rows`] takes.
pub const MAX_ROWS: usize = 9;

/// `run(w, y)` (a matvec of `rows` rows of `bpr` blocks in `w` into `y`) against `want(row)`
/// per row (0 for empty rows), bit for bit; one output past the last row must keep its
/// canary. `Err` with `msgs.0` for a differing row, `msgs.1` for a write past the end.
fn same_rows<W>(
    (w, bpr, rows): (&[W], usize, usize),
    run: impl FnOnce(&[W], &mut [f32]),
    want: impl Fn(&[W]) -> f32,
    msgs: (&'static str, &'static str),
) -> Result<(), &'static str> {
    const CANARY: f32 = 1234.5;
    let mut y = [CANARY; MAX_ROWS + 1];
    run(w, &mut y[..rows]);
    for (row, &got) in w.chunks(bpr.max(1)).zip(&y[..rows]) {
        let want = if bpr == 0 { 0.0 } else { want(row) };
        if !same(got, want) {
            return Err(msgs.0);
        }
    }
    if y[rows] != CANARY {
        return Err(msgs.1);
    }
    Ok(())
}

/// `k`'s Q8_0 and Q4_0 matvecs against the reference, bit for bit, for every row count in
/// `rows` (at most [`MAX_ROWS`]) x blocks per row in `bprs` x `cases` contents (random blocks
/// from `seed`); an output past the last row must stay untouched. The buffers hold at least
/// `max(rows) * max(bprs)` weight blocks and `max(bprs)` activation blocks. The number of
/// (rows, blocks, case) triples checked, or what differed.
pub fn check_rows(
    k: &Kernel,
    (w8, w4, x): (&mut [BlockQ8_0], &mut [BlockQ4_0], &mut [BlockQ8_0]),
    shapes: (&[usize], &[usize], u32),
    seed: u64,
) -> Result<u32, &'static str> {
    each_shape(shapes, seed, |r, rows, bpr, case| {
        let (w8, w4, x) = (&mut w8[..rows * bpr], &mut w4[..rows * bpr], &mut x[..bpr]);
        fill_q8(r, w8, case);
        fill_q4(r, w4, case + 1);
        fill_q8(r, x, case + 2);
        same_rows(
            (w8, bpr, rows),
            |w, y| k.matvec_q8_0(w, bpr, x, y),
            |w| reference::vec_dot_q8_0_q8_0(w, x),
            (
                "q8_0 rows differ from the reference",
                "q8_0 rows wrote past the last row",
            ),
        )?;
        same_rows(
            (w4, bpr, rows),
            |w, y| k.matvec_q4_0(w, bpr, x, y),
            |w| reference::vec_dot_q4_0_q8_0(w, x),
            (
                "q4_0 rows differ from the reference",
                "q4_0 rows wrote past the last row",
            ),
        )
    })
}

/// Fill Q4_1 blocks: nibbles from [`q4_byte`] (0 and 15 at the extremes), the scale and the
/// min each from [`scale`].
pub fn fill_q4_1(r: &mut Rng, b: &mut [BlockQ4_1], case: u32) {
    for (i, blk) in b.iter_mut().enumerate() {
        let c = case.wrapping_add(i as u32);
        blk.d = scale(r, c);
        blk.m = scale(r, c.wrapping_add(3));
        for q in blk.qs.iter_mut() {
            *q = q4_byte(r, case);
        }
    }
}

/// Fill Q8_1 blocks: bytes from [`q8_byte`], `d` and `s` each from [`scale`] (a kernel
/// must take `s` as given, so it need not be `d * sum(qs)` here).
pub fn fill_q8_1(r: &mut Rng, b: &mut [BlockQ8_1], case: u32) {
    for (i, blk) in b.iter_mut().enumerate() {
        let c = case.wrapping_add(i as u32);
        blk.d = scale(r, c);
        blk.s = scale(r, c.wrapping_add(5));
        for q in blk.qs.iter_mut() {
            *q = q8_byte(r, case);
        }
    }
}

/// As [`check_rows`] for `k`'s Q4_1 x Q8_1 matvecs against `reference::vec_dot_q4_1_q8_1`.
pub fn check_rows_q4_1(
    k: &Kernel,
    (w, x): (&mut [BlockQ4_1], &mut [BlockQ8_1]),
    shapes: (&[usize], &[usize], u32),
    seed: u64,
) -> Result<u32, &'static str> {
    each_shape(shapes, seed, |r, rows, bpr, case| {
        let (w, x) = (&mut w[..rows * bpr], &mut x[..bpr]);
        fill_q4_1(r, w, case);
        fill_q8_1(r, x, case + 2);
        same_rows(
            (w, bpr, rows),
            |w, y| k.matvec_q4_1(w, bpr, x, y),
            |w| reference::vec_dot_q4_1_q8_1(w, x),
            (
                "q4_1 rows differ from the reference",
                "q4_1 rows wrote past the last row",
            ),
        )
    })
}
