//! Constrained decoding on hosts: the core's JSON automaton and token trie
//! ([`edgelora::constrain`]) with owned buffers, as a [`Sink`] wrapper the generation loop
//! calls before every sample.
//!
//! The trie of a model's vocabulary is built once ([`Vocab`], 0.3 s for SmolLM2, 1.2 s for
//! Gemma 3) and shared; a request's [`JsonConstraint`] holds its compiled schema table, the
//! automaton state and the mask, so requests with different schemas run side by side.

use crate::generation::Sink;
use crate::tok::Tok;
use anyhow::{Context, Result};
use edgelora::constrain::{apply_mask, compile, JsonState, Schema, TokenTrie};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

/// Whitespace bytes allowed in a row between JSON tokens: one space or one newline (a model
/// may write `{"a": 1}` but cannot stall in whitespace).
pub const MAX_WS: u8 = 1;

/// Masks kept per constraint (32 KiB each for a 262 144-token vocabulary).
const MASK_CACHE: usize = 4;

/// A model's vocabulary as the mask walks it.
pub struct Vocab {
    trie: TokenTrie<Vec<u32>>,
    eog: Vec<u32>,
}

impl Vocab {
    /// Build the trie of `tok`'s vocabulary.
    ///
    /// # Errors
    /// Only a tokenizer the trie cannot hold (never for a loaded model).
    pub fn new(tok: &Tok<'_>) -> Result<Self> {
        let t = tok.inner();
        let mut words = vec![0u32; TokenTrie::<Vec<u32>>::words_for(t)];
        let trie = TokenTrie::build(t, std::mem::take(&mut words))?;
        let used = trie.used_words();
        let mut words = trie.words().to_vec();
        words.truncate(used);
        Ok(Vocab {
            trie: TokenTrie::from_words(words)?,
            eog: t.eog_ids().to_vec(),
        })
    }

    /// The vocabulary of a tokenizer that lives for the whole process (the server's), built
    /// on first use and kept.
    pub fn cached(tok: &'static Tok<'static>) -> Result<Arc<Vocab>> {
        static CACHE: Mutex<Vec<(usize, Arc<Vocab>)>> = Mutex::new(Vec::new());
        let key = tok as *const Tok<'static> as usize;
        let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, v)) = c.iter().find(|(k, _)| *k == key) {
            return Ok(v.clone());
        }
        let v = Arc::new(Vocab::new(tok)?);
        c.push((key, v.clone()));
        Ok(v)
    }
}

/// The compiled table of `--json-schema FILE` / `response_format` `json_schema`.
///
/// # Errors
/// The compiler's message (unsupported keyword, unresolved `$ref`, not JSON).
pub fn compile_schema(schema_json: &str) -> Result<Vec<u8>> {
    Ok(compile(schema_json)?)
}

/// The table of any JSON object (`--json-object`, `response_format` `json_object`).
pub fn any_object_table() -> Vec<u8> {
    Schema::any_object().as_bytes().to_vec()
}

/// One generation's constraint: schema table, automaton state and mask buffers.
pub struct JsonConstraint {
    vocab: Arc<Vocab>,
    table: Vec<u8>,
    state: JsonState,
    stack: Vec<JsonState>,
    mask: Vec<u32>,
    /// Masks of recent states (at most [`MASK_CACHE`], oldest replaced first): inside a free
    /// string the state after a token is often the state before it, and the states "inside a
    /// key" / "inside a value" recur for every property, so their masks are reused.
    cache: Vec<(JsonState, Vec<u32>)>,
    next_slot: usize,
    /// Tokens whose mask allowed nothing but end-of-generation (for reports).
    pub dead_ends: usize,
}

impl JsonConstraint {
    /// A constraint to one value of the schema in `table`, whitespace runs of at most
    /// [`MAX_WS`].
    ///
    /// # Errors
    /// A table that [`Schema::from_bytes`] refuses.
    pub fn new(vocab: Arc<Vocab>, table: Vec<u8>) -> Result<Self> {
        Self::with_ws(vocab, table, MAX_WS)
    }

    /// As [`JsonConstraint::new`], with at most `max_ws` whitespace bytes in a row (0: compact
    /// JSON).
    ///
    /// # Errors
    /// A table that [`Schema::from_bytes`] refuses.
    pub fn with_ws(vocab: Arc<Vocab>, table: Vec<u8>, max_ws: u8) -> Result<Self> {
        let schema = Schema::from_bytes(&table).context("schema table")?;
        let state = JsonState::new(&schema, max_ws);
        let stack = vec![state; vocab.trie.max_depth() + 1];
        let mask = vec![0u32; vocab.trie.vocab_size().div_ceil(32)];
        Ok(JsonConstraint {
            vocab,
            table,
            state,
            stack,
            mask,
            cache: Vec::new(),
            next_slot: 0,
            dead_ends: 0,
        })
    }

    fn schema(&self) -> Schema<'_> {
        // Checked in `new`; the table does not change.
        Schema::from_bytes(&self.table).unwrap_or(Schema::any_value())
    }

    /// Set every logit the output may not continue with to `-inf`.
    pub fn mask(&mut self, logits: &mut [f32]) {
        if let Some((_, m)) = self.cache.iter().find(|(s, _)| *s == self.state) {
            apply_mask(m, logits);
            return;
        }
        let schema = Schema::from_bytes(&self.table).unwrap_or(Schema::any_value());
        let n = self
            .vocab
            .trie
            .fill_mask(
                &schema,
                &self.state,
                &self.vocab.eog,
                &mut self.stack,
                &mut self.mask,
            )
            .unwrap_or(0);
        if n == 0 {
            // Nothing fits (a vocabulary without the bytes the schema needs): end the output
            // rather than sample from nothing.
            self.dead_ends += 1;
            for &e in &self.vocab.eog {
                if let Some(m) = self.mask.get_mut(e as usize / 32) {
                    *m |= 1 << (e % 32);
                }
            }
        }
        apply_mask(&self.mask, logits);
        let entry = (self.state, self.mask.clone());
        if self.cache.len() < MASK_CACHE {
            self.cache.push(entry);
        } else {
            self.cache[self.next_slot] = entry;
            self.next_slot = (self.next_slot + 1) % MASK_CACHE;
        }
    }

    /// Feed the bytes of a sampled token. False if they do not fit (never after `mask`).
    pub fn accept(&mut self, bytes: &[u8]) -> bool {
        let schema = self.schema();
        let mut s = self.state;
        let ok = s.advance(&schema, bytes);
        self.state = s;
        ok
    }
}

/// A sink that constrains the tokens another sink gets (no constraint: passes through).
pub struct Constrained<'a, 'c> {
    inner: &'a mut dyn Sink,
    c: Option<&'c mut JsonConstraint>,
    tok: &'a Tok<'a>,
}

impl<'a, 'c> Constrained<'a, 'c> {
    /// Wrap `inner`; `c` masks each step and follows each sampled token.
    pub fn new(
        inner: &'a mut dyn Sink,
        c: Option<&'c mut JsonConstraint>,
        tok: &'a Tok<'a>,
    ) -> Self {
        Constrained { inner, c, tok }
    }
}

impl Sink for Constrained<'_, '_> {
    fn logits(&mut self, logits: &[f32]) {
        self.inner.logits(logits);
    }

    fn mask(&mut self, logits: &mut [f32]) {
        self.inner.mask(logits);
        if let Some(c) = self.c.as_deref_mut() {
            c.mask(logits);
        }
    }

    fn token(&mut self, id: u32, text: &str) -> ControlFlow<()> {
        if let Some(c) = self.c.as_deref_mut() {
            c.accept(&self.tok.piece_bytes(id));
        }
        self.inner.token(id, text)
    }

    fn tail(&mut self, text: &str) {
        self.inner.tail(text);
    }
}
