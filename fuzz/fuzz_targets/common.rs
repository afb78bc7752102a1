//! Shared by the fuzz targets: the committed tiny model, parsed once per process, and a small
//! byte reader for targets whose input is a recipe (chunk sizes, ids, flags) rather than a file.

#![allow(dead_code)]

use edgelora::model::Model;
use edgelora::Gguf;
use std::sync::OnceLock;

/// The tiny llama (4 layers, dim 128, vocab 768, Q8_0) the integration tests use.
pub static TINY_Q8_0: &[u8] = include_bytes!("../../tests/fixtures/tiny/tiny-q8_0.gguf");
/// The same weights in Q4_1 and F32, so the forward target reaches every kernel the model uses.
pub static TINY_Q4_1: &[u8] = include_bytes!("../../tests/fixtures/tiny/tiny-q4_1.gguf");
pub static TINY_F32: &[u8] = include_bytes!("../../tests/fixtures/tiny/tiny-f32.gguf");

/// Layers a tiny `Model` holds (the fixture has 4).
pub const L: usize = 4;

/// A parsed base model.
pub struct Base {
    pub gguf: Gguf<'static>,
    pub model: Model<'static, L>,
}

fn load(bytes: &'static [u8]) -> Base {
    let gguf = Gguf::parse(bytes).expect("committed tiny fixture parses");
    let model = Model::from_gguf(&gguf).expect("committed tiny fixture is a model");
    Base { gguf, model }
}

/// The Q8_0 tiny model (the base adapters are bound against).
pub fn tiny() -> &'static Base {
    static B: OnceLock<Base> = OnceLock::new();
    B.get_or_init(|| load(TINY_Q8_0))
}

/// Tiny model variant `i % 3`: Q8_0, Q4_1, F32.
pub fn tiny_variant(i: u8) -> &'static Base {
    static B: OnceLock<[Base; 3]> = OnceLock::new();
    let all = B.get_or_init(|| [load(TINY_Q8_0), load(TINY_Q4_1), load(TINY_F32)]);
    &all[(i % 3) as usize]
}

/// Reads little-endian values off the front of the fuzz input; yields zeros once it runs dry,
/// so every input is a valid recipe.
pub struct Recipe<'a>(pub &'a [u8]);

impl<'a> Recipe<'a> {
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// Up to `n` bytes off the front.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    pub fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.0)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
