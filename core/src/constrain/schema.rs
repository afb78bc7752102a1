//! The compiled schema: a flat, validated byte table a device can keep in flash.
//!
//! # Format (all integers little-endian `u32`)
//!
//! ```text
//! 0   b"ELJS"
//! 4   version (1)
//! 8   node count N (< 0xFFF0)
//! 12  root node reference
//! 16  N node offsets (absolute byte offsets of the records below)
//! ..  records, each starting with its kind:
//!     1 STRING                       any string
//!     2 NUMBER                       any JSON number
//!     3 INTEGER                      -?(0|[1-9][0-9]*)
//!     4 LITERAL n (off len)*n        one of n exact byte strings (enum, const, boolean, null)
//!     5 ARRAY items min max          items of one schema; max = 0xFFFF_FFFF for none
//!     6 OBJECT n (key_off key_len node required)*n
//!                                    properties in this order; keys stored with their quotes
//!     7 UNION n node*n               the first branch whose value can start with the byte
//! ..  literal bytes
//! ```
//!
//! A node reference is an index below N or one of the built-in nodes [`ANY`] (any JSON
//! value), [`ANY_OBJECT`] and [`ANY_ARRAY`]. [`Schema::from_bytes`] checks every offset,
//! length, count and reference once, so the automaton can read the table without further
//! checks (it still never indexes out of bounds: reads of a malformed table give zeros).

use crate::error::{Error, ErrorKind, Result};

/// Any JSON value.
pub const ANY: u16 = 0xFFFF;
/// Any JSON object (values of any type).
pub const ANY_OBJECT: u16 = 0xFFFE;
/// Any JSON array (items of any type).
pub const ANY_ARRAY: u16 = 0xFFFD;
/// Internal: the literals `true`, `false`, `null` of an [`ANY`] value.
pub(crate) const ANY_WORD: u16 = 0xFFFC;

/// The most candidates of one literal or object node (a bit mask of `u64` tracks them).
pub const MAX_CHOICES: usize = 64;
/// The most branches of a union.
pub const MAX_BRANCHES: usize = 16;
/// The table's magic.
pub const MAGIC: &[u8; 4] = b"ELJS";
/// The table's format version.
pub const VERSION: u32 = 1;

pub(crate) const K_STRING: u32 = 1;
pub(crate) const K_NUMBER: u32 = 2;
pub(crate) const K_INTEGER: u32 = 3;
pub(crate) const K_LITERAL: u32 = 4;
pub(crate) const K_ARRAY: u32 = 5;
pub(crate) const K_OBJECT: u32 = 6;
pub(crate) const K_UNION: u32 = 7;
/// Internal kinds of the built-in references.
pub(crate) const K_ANY: u32 = 0x100;
pub(crate) const K_ANY_OBJECT: u32 = 0x101;
pub(crate) const K_ANY_ARRAY: u32 = 0x102;
pub(crate) const K_ANY_WORD: u32 = 0x103;

const WORDS: [&[u8]; 3] = [b"true", b"false", b"null"];

/// Tables of the two schema-free constraints.
const ANY_VALUE_TABLE: [u8; 16] = table_header(ANY);
const ANY_OBJECT_TABLE: [u8; 16] = table_header(ANY_OBJECT);

const fn table_header(root: u16) -> [u8; 16] {
    let r = (root as u32).to_le_bytes();
    [
        b'E', b'L', b'J', b'S', 1, 0, 0, 0, 0, 0, 0, 0, r[0], r[1], r[2], r[3],
    ]
}

/// A validated view of a compiled schema table.
#[derive(Clone, Copy, Debug)]
pub struct Schema<'a> {
    blob: &'a [u8],
    n_nodes: u16,
    root: u16,
}

impl Schema<'static> {
    /// Any JSON value (`"type"` absent): valid JSON, nothing more.
    pub const fn any_value() -> Schema<'static> {
        Schema {
            blob: &ANY_VALUE_TABLE,
            n_nodes: 0,
            root: ANY,
        }
    }

    /// Any JSON object: OpenAI's `response_format: {"type": "json_object"}`.
    pub const fn any_object() -> Schema<'static> {
        Schema {
            blob: &ANY_OBJECT_TABLE,
            n_nodes: 0,
            root: ANY_OBJECT,
        }
    }
}

fn bad(what: &'static str, at: usize) -> Error {
    Error::new(ErrorKind::BadValue, what).at(at as u64)
}

impl<'a> Schema<'a> {
    /// Check a compiled table (from [`compile`](super::compile) on a host, or from flash).
    ///
    /// # Errors
    /// [`ErrorKind::BadMagic`], [`ErrorKind::UnsupportedVersion`], [`ErrorKind::Truncated`]
    /// or [`ErrorKind::BadValue`] (with the byte offset) for a table that is not well formed:
    /// an offset or literal outside the table, a count over [`MAX_CHOICES`] /
    /// [`MAX_BRANCHES`], a reference to no node, a union inside a union.
    pub fn from_bytes(blob: &'a [u8]) -> Result<Schema<'a>> {
        if blob.len() < 16 {
            return Err(Error::new(ErrorKind::Truncated, "schema table header"));
        }
        if &blob[..4] != MAGIC {
            return Err(Error::new(ErrorKind::BadMagic, "schema table magic"));
        }
        let rd = |off: usize| -> Result<u32> {
            blob.get(off..off.wrapping_add(4))
                .filter(|_| off.checked_add(4).is_some())
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(Error::new(ErrorKind::Truncated, "schema table").at(off as u64))
        };
        if rd(4)? != VERSION {
            return Err(Error::new(
                ErrorKind::UnsupportedVersion,
                "schema table version",
            ));
        }
        let n = rd(8)?;
        if n >= u32::from(ANY_WORD) {
            return Err(bad("schema node count", 8));
        }
        let n = n as usize;
        let is_ref = |r: u32| -> bool {
            (r as usize) < n
                || r == u32::from(ANY)
                || r == u32::from(ANY_OBJECT)
                || r == u32::from(ANY_ARRAY)
        };
        let root = rd(12)?;
        if !is_ref(root) {
            return Err(bad("schema root reference", 12));
        }
        let bytes_ok = |off: u32, len: u32| -> bool {
            (off as usize)
                .checked_add(len as usize)
                .is_some_and(|e| e <= blob.len())
        };
        for i in 0..n {
            let at = rd(16 + 4 * i)? as usize;
            let kind = rd(at)?;
            match kind {
                K_STRING | K_NUMBER | K_INTEGER => {}
                K_LITERAL => {
                    let k = rd(at + 4)? as usize;
                    if k == 0 || k > MAX_CHOICES {
                        return Err(bad("schema literal count", at + 4));
                    }
                    for j in 0..k {
                        let (o, l) = (rd(at + 8 + 8 * j)?, rd(at + 12 + 8 * j)?);
                        if !(1..=0xFFFF).contains(&l) || !bytes_ok(o, l) {
                            return Err(bad("schema literal bytes", at + 8 + 8 * j));
                        }
                    }
                }
                K_ARRAY => {
                    if !is_ref(rd(at + 4)?) {
                        return Err(bad("schema array items reference", at + 4));
                    }
                    rd(at + 12)?;
                }
                K_OBJECT => {
                    let k = rd(at + 4)? as usize;
                    if k > MAX_CHOICES {
                        return Err(bad("schema property count", at + 4));
                    }
                    for j in 0..k {
                        let p = at + 8 + 16 * j;
                        let (o, l) = (rd(p)?, rd(p + 4)?);
                        if !(2..=0xFFFF).contains(&l) || !bytes_ok(o, l) {
                            return Err(bad("schema property key", p));
                        }
                        if !is_ref(rd(p + 8)?) {
                            return Err(bad("schema property reference", p + 8));
                        }
                        rd(p + 12)?;
                    }
                }
                K_UNION => {
                    let k = rd(at + 4)? as usize;
                    if k == 0 || k > MAX_BRANCHES {
                        return Err(bad("schema union branch count", at + 4));
                    }
                    for j in 0..k {
                        let r = rd(at + 8 + 4 * j)?;
                        if !is_ref(r) {
                            return Err(bad("schema union branch reference", at + 8 + 4 * j));
                        }
                        if (r as usize) < n && rd(rd(16 + 4 * r as usize)? as usize)? == K_UNION {
                            return Err(bad("schema union inside a union", at + 8 + 4 * j));
                        }
                    }
                }
                _ => return Err(bad("schema node kind", at)),
            }
        }
        Ok(Schema {
            blob,
            n_nodes: n as u16,
            root: root as u16,
        })
    }

    /// The table's bytes.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.blob
    }

    /// The root node reference.
    pub const fn root(&self) -> u16 {
        self.root
    }

    /// Number of nodes in the table (the built-in ones not counted).
    pub const fn node_count(&self) -> usize {
        self.n_nodes as usize
    }

    fn rd(&self, off: usize) -> u32 {
        match self.blob.get(off..off.saturating_add(4)) {
            Some(b) if b.len() == 4 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            _ => 0,
        }
    }

    fn at(&self, node: u16) -> usize {
        self.rd(16 + 4 * node as usize) as usize
    }

    /// The kind of a node reference (`K_*`).
    pub(crate) fn kind(&self, node: u16) -> u32 {
        match node {
            ANY => K_ANY,
            ANY_OBJECT => K_ANY_OBJECT,
            ANY_ARRAY => K_ANY_ARRAY,
            ANY_WORD => K_ANY_WORD,
            n if n < self.n_nodes => self.rd(self.at(n)),
            _ => 0,
        }
    }

    /// Count field (literals, properties, branches) of a node.
    pub(crate) fn count(&self, node: u16) -> usize {
        match node {
            ANY_WORD => WORDS.len(),
            n if n < self.n_nodes => self.rd(self.at(n) + 4) as usize,
            _ => 0,
        }
    }

    fn bytes(&self, off: u32, len: u32) -> &'a [u8] {
        let (o, l) = (off as usize, len as usize);
        self.blob.get(o..o.saturating_add(l)).unwrap_or(&[])
    }

    /// Literal `j` of a LITERAL node.
    pub(crate) fn literal(&self, node: u16, j: usize) -> &'a [u8] {
        if node == ANY_WORD {
            return WORDS.get(j).copied().unwrap_or(&[]);
        }
        let p = self.at(node) + 8 + 8 * j;
        self.bytes(self.rd(p), self.rd(p + 4))
    }

    /// Property `j` of an OBJECT node: (quoted key bytes, value node, required).
    pub(crate) fn property(&self, node: u16, j: usize) -> (&'a [u8], u16, bool) {
        let p = self.at(node) + 8 + 16 * j;
        (
            self.bytes(self.rd(p), self.rd(p + 4)),
            self.rd(p + 8) as u16,
            self.rd(p + 12) != 0,
        )
    }

    /// (items, min, max) of an ARRAY node; the built-in any-array for anything else.
    pub(crate) fn array(&self, node: u16) -> (u16, u32, u32) {
        if node < self.n_nodes && self.kind(node) == K_ARRAY {
            let p = self.at(node);
            (self.rd(p + 4) as u16, self.rd(p + 8), self.rd(p + 12))
        } else {
            (ANY, 0, u32::MAX)
        }
    }

    /// Branch `j` of a UNION node.
    pub(crate) fn branch(&self, node: u16, j: usize) -> u16 {
        self.rd(self.at(node) + 8 + 4 * j) as u16
    }
}
