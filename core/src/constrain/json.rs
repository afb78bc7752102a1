//! The byte-level JSON pushdown automaton a [`Schema`] specialises.
//!
//! [`JsonState`] is a small `Copy` value (a stack of [`MAX_DEPTH`] container frames plus the
//! lexer's mode): the mask walk copies it along the token trie, so it must stay cheap to copy
//! and must never allocate. Feeding a byte either moves it on or rejects the byte; a state is
//! *alive* as long as some continuation can still complete a value the schema accepts.
//!
//! What it accepts: RFC 8259 JSON (strings with escapes, `\u` escapes of non-surrogates only,
//! well-formed UTF-8 and no raw control characters; numbers in JSON's grammar), at most
//! [`MAX_DEPTH`] nested containers, and at most `max_ws` whitespace bytes in a row between
//! tokens, so that a model cannot stall in whitespace; numbers of at most [`MAX_NUMBER`]
//! bytes with at most two exponent digits. With a schema: object properties in
//! the schema's order (optional ones may be left out, required ones may not, no others:
//! OpenAI's strict mode and most engines do the same), the types of values, `enum`/`const`
//! (as their compact JSON spelling), `minItems`/`maxItems`, and unions whose branches start
//! with different bytes.

use super::schema::{
    Schema, ANY, ANY_ARRAY, ANY_OBJECT, ANY_WORD, K_ANY, K_ANY_ARRAY, K_ANY_OBJECT, K_ANY_WORD,
    K_ARRAY, K_INTEGER, K_LITERAL, K_NUMBER, K_OBJECT, K_STRING, K_UNION,
};

/// Containers nested deeper than this are refused.
pub const MAX_DEPTH: usize = 32;

/// Longest number, in bytes. With exponents of at most two digits, every accepted number is a
/// finite `f64` (`serde_json` refuses numbers that overflow), and a model cannot stall in one.
pub const MAX_NUMBER: usize = 32;

/// One open container: its schema node and progress (objects: the index of the next property
/// that may come; arrays: items so far).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Frame {
    node: u16,
    prog: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Expecting a value of `node` (whitespace first is fine).
    Value { node: u16 },
    /// After `{`: a key or `}`.
    ObjOpen,
    /// After `,` in an object: a key.
    ObjKey,
    /// After a key: `:`.
    Colon,
    /// After a property's value: `,` or `}`.
    ObjNext,
    /// After `[`: a value or `]`.
    ArrOpen,
    /// After an item: `,` or `]`.
    ArrNext,
    /// Inside a string of any content (`key`: an object key of an any-object). `esc`: 0 none,
    /// 1 after `\`, 2..=6 in a `\uXXXX` (2: first hex digit next, 3: second, 4: second after a
    /// `d` (0-7 only: no surrogates), 5: third, 6: fourth). `rem`/`lead`: UTF-8 continuation
    /// bytes still due and the range of the next one.
    Str {
        key: bool,
        esc: u8,
        rem: u8,
        lead: u8,
    },
    /// Matching literals of `node` (`keys`: the properties of the object `node`) at byte `pos`;
    /// `alive` has a bit per candidate still matching.
    Lit {
        node: u16,
        keys: bool,
        pos: u16,
        alive: u64,
    },
    /// Inside a number (`phase` as in `num_step`) of `len` bytes so far.
    Num { int: bool, phase: u8, len: u8 },
    /// A complete top-level value: nothing more.
    Done,
}

/// The automaton's state: copy it to explore a continuation without committing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonState {
    frames: [Frame; MAX_DEPTH],
    depth: u8,
    ws: u8,
    max_ws: u8,
    mode: Mode,
}

const fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

/// Number phases: 1 after `-`, 2 after a leading `0`, 3 in integer digits, 4 after `.`, 5 in
/// fraction digits, 6 after `e`, 7 after the exponent's sign, 8 and 9 after the exponent's
/// first and second (last) digit.
pub(crate) const fn num_step(int: bool, phase: u8, b: u8) -> Option<u8> {
    let digit = b.is_ascii_digit();
    Some(match (phase, b) {
        (0, b'-') => 1,
        (0 | 1, b'0') => 2,
        (0 | 1, b'1'..=b'9') => 3,
        (3, _) if digit => 3,
        (2 | 3, b'.') if !int => 4,
        (2 | 3 | 5, b'e' | b'E') if !int => 6,
        (4 | 5, _) if digit => 5,
        (6, b'+' | b'-') => 7,
        (6 | 7, _) if digit => 8,
        (8, _) if digit => 9,
        _ => return None,
    })
}

pub(crate) const fn num_final(phase: u8) -> bool {
    matches!(phase, 2 | 3 | 5 | 8 | 9)
}

impl JsonState {
    /// The start state for one value of `schema`'s root, allowing at most `max_ws` whitespace
    /// bytes in a row between tokens (0: compact JSON only).
    pub fn new(schema: &Schema<'_>, max_ws: u8) -> JsonState {
        JsonState {
            frames: [Frame::default(); MAX_DEPTH],
            depth: 0,
            ws: 0,
            max_ws,
            mode: Mode::Value {
                node: schema.root(),
            },
        }
    }

    /// Containers open now.
    pub const fn depth(&self) -> usize {
        self.depth as usize
    }

    /// True when the text so far is one complete value (the end of the output may come now).
    pub fn is_complete(&self, schema: &Schema<'_>) -> bool {
        match self.mode {
            Mode::Done => true,
            Mode::Num { phase, .. } => self.depth == 0 && num_final(phase),
            Mode::Lit {
                node,
                keys: false,
                pos,
                alive,
            } => {
                self.depth == 0
                    && Self::complete_candidate(schema, node, false, pos, alive).is_some()
            }
            _ => false,
        }
    }

    /// True when nothing but the end can follow (a closed top-level container, string or
    /// literal that no byte can extend).
    pub const fn is_done(&self) -> bool {
        matches!(self.mode, Mode::Done)
    }

    /// True inside a string between characters (not in an escape or a UTF-8 sequence): any
    /// whole character but `"`, `\` and controls is accepted there and changes nothing.
    #[inline]
    pub(crate) fn at_string_char(&self) -> bool {
        matches!(self.mode, Mode::Str { esc: 0, rem: 0, .. })
    }

    /// True if byte `b` is accepted and leaves the state as it is: printable ASCII other than
    /// `"` and `\` inside a string, between characters. The mask walk shares the parent's
    /// state for such bytes instead of copying it.
    #[inline]
    pub(crate) fn keeps(&self, b: u8) -> bool {
        matches!(self.mode, Mode::Str { esc: 0, rem: 0, .. })
            && matches!(b, 0x20..=0x7f)
            && b != b'"'
            && b != b'\\'
    }

    /// Feed `bytes`; all or nothing: on `false` the state is unchanged.
    pub fn advance(&mut self, schema: &Schema<'_>, bytes: &[u8]) -> bool {
        let mut s = *self;
        for &b in bytes {
            if !s.step(schema, b) {
                return false;
            }
        }
        *self = s;
        true
    }

    /// Feed one byte. On `false` (the byte is not allowed) the state is left in an unspecified
    /// but harmless condition: work on a copy.
    pub fn step(&mut self, schema: &Schema<'_>, b: u8) -> bool {
        // A number or literal ends at the first byte that cannot extend it; that byte is then
        // read again in the container's mode. Once around is enough.
        for _ in 0..2 {
            match self.mode {
                Mode::Str {
                    key,
                    esc,
                    rem,
                    lead,
                } => return self.str_step(schema, key, esc, rem, lead, b),
                Mode::Num { int, phase, len } => {
                    if let Some(p) = num_step(int, phase, b).filter(|_| (len as usize) < MAX_NUMBER)
                    {
                        self.mode = Mode::Num {
                            int,
                            phase: p,
                            len: len + 1,
                        };
                        return true;
                    }
                    if !num_final(phase) {
                        return false;
                    }
                    self.value_done(schema);
                }
                Mode::Lit {
                    node,
                    keys,
                    pos,
                    alive,
                } => match self.lit_step(schema, node, keys, pos, alive, b) {
                    Some(consumed) => {
                        if consumed {
                            return true;
                        }
                    }
                    None => return false,
                },
                Mode::Done => return false,
                _ => return self.structural(schema, b),
            }
        }
        false
    }

    fn structural(&mut self, schema: &Schema<'_>, b: u8) -> bool {
        if is_ws(b) {
            if self.ws >= self.max_ws {
                return false;
            }
            self.ws += 1;
            return true;
        }
        self.ws = 0;
        let top = match self.depth {
            0 => Frame::default(),
            d => self.frames[(d as usize - 1).min(MAX_DEPTH - 1)],
        };
        match self.mode {
            Mode::Value { node } => self.start_value(schema, node, b),
            Mode::ObjOpen if b == b'}' => self.obj_can_close(schema, top) && self.pop(schema),
            Mode::ObjOpen | Mode::ObjKey => self.key_start(schema, top, b),
            Mode::Colon if b == b':' => {
                let node = if schema.kind(top.node) == K_OBJECT {
                    schema
                        .property(top.node, (top.prog as usize).saturating_sub(1))
                        .1
                } else {
                    ANY
                };
                self.mode = Mode::Value { node };
                true
            }
            Mode::ObjNext if b == b',' => {
                let more = schema.kind(top.node) != K_OBJECT
                    || (top.prog as usize) < schema.count(top.node);
                self.mode = Mode::ObjKey;
                more
            }
            Mode::ObjNext if b == b'}' => self.obj_can_close(schema, top) && self.pop(schema),
            Mode::ArrOpen if b == b']' => {
                let (_, min, _) = schema.array(top.node);
                min == 0 && self.pop(schema)
            }
            Mode::ArrOpen => {
                let (items, _, max) = schema.array(top.node);
                max > 0 && self.set_prog(1) && self.start_value(schema, items, b)
            }
            Mode::ArrNext if b == b',' => {
                let (items, _, max) = schema.array(top.node);
                if u32::from(top.prog) >= max || top.prog == u16::MAX {
                    return false;
                }
                self.set_prog(top.prog + 1);
                self.mode = Mode::Value { node: items };
                true
            }
            Mode::ArrNext if b == b']' => {
                let (_, min, _) = schema.array(top.node);
                u32::from(top.prog) >= min && self.pop(schema)
            }
            _ => false,
        }
    }

    fn set_prog(&mut self, prog: u16) -> bool {
        if let Some(f) = self.frames.get_mut((self.depth as usize).wrapping_sub(1)) {
            f.prog = prog;
        }
        true
    }

    fn push(&mut self, node: u16) -> bool {
        match self.frames.get_mut(self.depth as usize) {
            Some(f) => {
                *f = Frame { node, prog: 0 };
                self.depth += 1;
                true
            }
            None => false,
        }
    }

    /// Close the top container.
    fn pop(&mut self, schema: &Schema<'_>) -> bool {
        if self.depth == 0 {
            return false;
        }
        self.depth -= 1;
        self.value_done(schema);
        true
    }

    /// A value has ended: what its container expects next.
    fn value_done(&mut self, schema: &Schema<'_>) {
        self.ws = 0;
        self.mode = match self.depth {
            0 => Mode::Done,
            d => {
                let top = self.frames[(d as usize - 1).min(MAX_DEPTH - 1)];
                if matches!(schema.kind(top.node), K_ANY_ARRAY | K_ARRAY) {
                    Mode::ArrNext
                } else {
                    Mode::ObjNext
                }
            }
        };
    }

    fn start_value(&mut self, schema: &Schema<'_>, node: u16, b: u8) -> bool {
        match schema.kind(node) {
            K_ANY => match b {
                b'{' => self.push(ANY_OBJECT) && self.open(Mode::ObjOpen),
                b'[' => self.push(ANY_ARRAY) && self.open(Mode::ArrOpen),
                b'"' => self.open(Mode::Str {
                    key: false,
                    esc: 0,
                    rem: 0,
                    lead: 0,
                }),
                b'-' | b'0'..=b'9' => self.start_num(false, b),
                b't' | b'f' | b'n' => self.start_lit(schema, ANY_WORD, b),
                _ => false,
            },
            K_ANY_OBJECT => b == b'{' && self.push(ANY_OBJECT) && self.open(Mode::ObjOpen),
            K_ANY_ARRAY => b == b'[' && self.push(ANY_ARRAY) && self.open(Mode::ArrOpen),
            K_STRING => {
                b == b'"'
                    && self.open(Mode::Str {
                        key: false,
                        esc: 0,
                        rem: 0,
                        lead: 0,
                    })
            }
            K_NUMBER => self.start_num(false, b),
            K_INTEGER => self.start_num(true, b),
            K_LITERAL | K_ANY_WORD => self.start_lit(schema, node, b),
            K_ARRAY => b == b'[' && self.push(node) && self.open(Mode::ArrOpen),
            K_OBJECT => b == b'{' && self.push(node) && self.open(Mode::ObjOpen),
            K_UNION => {
                for j in 0..schema.count(node) {
                    let br = schema.branch(node, j);
                    if schema.kind(br) == K_UNION {
                        continue;
                    }
                    let mut s = *self;
                    if s.start_value(schema, br, b) {
                        *self = s;
                        return true;
                    }
                }
                false
            }
            _ => false,
        }
    }

    fn open(&mut self, mode: Mode) -> bool {
        self.mode = mode;
        true
    }

    fn start_num(&mut self, int: bool, b: u8) -> bool {
        match num_step(int, 0, b) {
            Some(phase) => self.open(Mode::Num { int, phase, len: 1 }),
            None => false,
        }
    }

    fn start_lit(&mut self, schema: &Schema<'_>, node: u16, b: u8) -> bool {
        let n = schema.count(node).min(64);
        let alive = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        matches!(self.lit_step(schema, node, false, 0, alive, b), Some(true))
    }

    fn candidate<'s>(schema: &Schema<'s>, node: u16, keys: bool, j: usize) -> &'s [u8] {
        if keys {
            schema.property(node, j).0
        } else {
            schema.literal(node, j)
        }
    }

    fn complete_candidate(
        schema: &Schema<'_>,
        node: u16,
        keys: bool,
        pos: u16,
        alive: u64,
    ) -> Option<usize> {
        let mut a = alive;
        while a != 0 {
            let j = a.trailing_zeros() as usize;
            a &= a - 1;
            if Self::candidate(schema, node, keys, j).len() == pos as usize {
                return Some(j);
            }
        }
        None
    }

    /// `Some(true)`: consumed; `Some(false)`: the literal ended before `b`, read `b` again;
    /// `None`: rejected.
    fn lit_step(
        &mut self,
        schema: &Schema<'_>,
        node: u16,
        keys: bool,
        pos: u16,
        alive: u64,
        b: u8,
    ) -> Option<bool> {
        let mut next = 0u64;
        let mut longer = false;
        let mut a = alive;
        while a != 0 {
            let j = a.trailing_zeros() as usize;
            a &= a - 1;
            let c = Self::candidate(schema, node, keys, j);
            if c.get(pos as usize) == Some(&b) {
                next |= 1 << j;
                longer |= c.len() > pos as usize + 1;
            }
        }
        if next != 0 {
            let pos = pos.checked_add(1)?;
            if longer {
                self.mode = Mode::Lit {
                    node,
                    keys,
                    pos,
                    alive: next,
                };
            } else {
                self.lit_end(schema, node, keys, next.trailing_zeros() as usize);
            }
            return Some(true);
        }
        let j = Self::complete_candidate(schema, node, keys, pos, alive)?;
        self.lit_end(schema, node, keys, j);
        Some(false)
    }

    fn lit_end(&mut self, schema: &Schema<'_>, _node: u16, keys: bool, j: usize) {
        if keys {
            self.set_prog(j as u16 + 1);
            self.mode = Mode::Colon;
        } else {
            self.value_done(schema);
        }
    }

    fn obj_can_close(&self, schema: &Schema<'_>, top: Frame) -> bool {
        if schema.kind(top.node) != K_OBJECT {
            return true;
        }
        (top.prog as usize..schema.count(top.node)).all(|j| !schema.property(top.node, j).2)
    }

    fn key_start(&mut self, schema: &Schema<'_>, top: Frame, b: u8) -> bool {
        if schema.kind(top.node) != K_OBJECT {
            return b == b'"'
                && self.open(Mode::Str {
                    key: true,
                    esc: 0,
                    rem: 0,
                    lead: 0,
                });
        }
        // Candidates: the next properties up to and including the first required one.
        let mut alive = 0u64;
        for j in top.prog as usize..schema.count(top.node).min(64) {
            alive |= 1 << j;
            if schema.property(top.node, j).2 {
                break;
            }
        }
        alive != 0
            && matches!(
                self.lit_step(schema, top.node, true, 0, alive, b),
                Some(true)
            )
    }

    fn str_step(
        &mut self,
        schema: &Schema<'_>,
        key: bool,
        esc: u8,
        rem: u8,
        lead: u8,
        b: u8,
    ) -> bool {
        let hex = b.is_ascii_hexdigit();
        let (esc, rem, lead) = match (esc, rem) {
            (1, _) => match b {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => (0, 0, 0),
                b'u' => (2, 0, 0),
                _ => return false,
            },
            (2, _) if b == b'd' || b == b'D' => (4, 0, 0),
            (2, _) if hex => (3, 0, 0),
            (3, _) if hex => (5, 0, 0),
            (4, _) if (b'0'..=b'7').contains(&b) => (5, 0, 0),
            (5, _) if hex => (6, 0, 0),
            (6, _) if hex => (0, 0, 0),
            (2..=6, _) => return false,
            (_, 1..) => {
                let ok = match lead {
                    1 => (0xa0..=0xbf).contains(&b),
                    2 => (0x80..=0x9f).contains(&b),
                    3 => (0x90..=0xbf).contains(&b),
                    4 => (0x80..=0x8f).contains(&b),
                    _ => (0x80..=0xbf).contains(&b),
                };
                if !ok {
                    return false;
                }
                (0, rem - 1, 0)
            }
            _ => match b {
                b'"' => {
                    if key {
                        self.mode = Mode::Colon;
                    } else {
                        self.value_done(schema);
                    }
                    return true;
                }
                b'\\' => (1, 0, 0),
                0x00..=0x1f => return false,
                0x20..=0x7f => (0, 0, 0),
                0xc2..=0xdf => (0, 1, 0),
                0xe0 => (0, 2, 1),
                0xed => (0, 2, 2),
                0xe1..=0xef => (0, 2, 0),
                0xf0 => (0, 3, 3),
                0xf4 => (0, 3, 4),
                0xf1..=0xf3 => (0, 3, 0),
                _ => return false,
            },
        };
        self.mode = Mode::Str {
            key,
            esc,
            rem,
            lead,
        };
        true
    }
}
