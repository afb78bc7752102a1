//! JSON Schema text to the flat table of [`Schema`](super::Schema) (feature `alloc`).
//!
//! A host (or a build script) compiles; a device only reads the table. The schema is parsed
//! by a small JSON reader of its own because the order of `properties` matters (it is the
//! order the output must follow) and `serde_json`'s map would sort the keys.
//!
//! Supported: `type` (one of, or a list of, `string`, `number`, `integer`, `boolean`, `null`,
//! `array`, `object`), `properties` + `required` (properties in schema order, the others
//! optional, no additional properties), `items`, `minItems`, `maxItems`, `enum`, `const`,
//! `anyOf`/`oneOf` (as a union chosen by the value's first byte: the first branch that can
//! start with it wins), `$ref` to `#/$defs/NAME` or `#/definitions/NAME` (recursion
//! allowed) and `#`. Annotations (`title`, `description`, `default`, `examples`, `$schema`,
//! `additionalProperties`, `strict`, ...) are ignored, and so are the string and number
//! keywords this does not enforce (`pattern`, `format`, `minLength`, `maxLength`, `minimum`,
//! `maximum`, ...): the output is still valid JSON of the right type. `allOf`, `not`,
//! `if`/`then`, `patternProperties`, `prefixItems` are refused with an error.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::schema::{
    ANY, ANY_ARRAY, ANY_OBJECT, K_ARRAY, K_INTEGER, K_LITERAL, K_NUMBER, K_OBJECT, K_STRING,
    K_UNION, MAGIC, MAX_BRANCHES, MAX_CHOICES, VERSION,
};

/// Why a schema could not be compiled: a message naming the keyword and its JSON path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileError(pub String);

impl core::fmt::Display for CompileError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "JSON schema: {}", self.0)
    }
}

impl core::error::Error for CompileError {}

fn err<T>(msg: impl Into<String>) -> Result<T, CompileError> {
    Err(CompileError(msg.into()))
}

/// A parsed JSON value that keeps object keys in order and numbers as written.
#[derive(Clone, Debug, PartialEq)]
enum J {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    fn get(&self, k: &str) -> Option<&J> {
        match self {
            J::Obj(kv) => kv.iter().find(|(key, _)| key == k).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Compact JSON, as `json.dumps(v, separators=(",", ":"), ensure_ascii=False)` writes it.
    fn write(&self, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(n),
            J::Str(s) => write_str(s, out),
            J::Arr(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out);
                }
                out.push(']');
            }
            J::Obj(kv) => {
                out.push('{');
                for (i, (k, v)) in kv.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(k, out);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

fn write_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                out.push_str("\\u00");
                let hex = b"0123456789abcdef";
                out.push(hex[(c as usize) >> 4] as char);
                out.push(hex[(c as usize) & 15] as char);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A recursive-descent JSON reader (depth-limited).
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while matches!(self.s.get(self.i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }

    fn fail<T>(&self, what: &str) -> Result<T, CompileError> {
        err(alloc::format!("not valid JSON at byte {}: {what}", self.i))
    }

    fn eat(&mut self, lit: &[u8]) -> bool {
        if self.s[self.i..].starts_with(lit) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<J, CompileError> {
        if depth > 64 {
            return self.fail("nested too deeply");
        }
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut kv = Vec::new();
                self.ws();
                if self.eat(b"}") {
                    return Ok(J::Obj(kv));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.ws();
                    if !self.eat(b":") {
                        return self.fail("expected ':'");
                    }
                    let v = self.value(depth + 1)?;
                    kv.push((k, v));
                    self.ws();
                    if self.eat(b",") {
                        continue;
                    }
                    if self.eat(b"}") {
                        return Ok(J::Obj(kv));
                    }
                    return self.fail("expected ',' or '}'");
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.eat(b"]") {
                    return Ok(J::Arr(a));
                }
                loop {
                    a.push(self.value(depth + 1)?);
                    self.ws();
                    if self.eat(b",") {
                        continue;
                    }
                    if self.eat(b"]") {
                        return Ok(J::Arr(a));
                    }
                    return self.fail("expected ',' or ']'");
                }
            }
            Some(b'"') => Ok(J::Str(self.string()?)),
            Some(b't') if self.eat(b"true") => Ok(J::Bool(true)),
            Some(b'f') if self.eat(b"false") => Ok(J::Bool(false)),
            Some(b'n') if self.eat(b"null") => Ok(J::Null),
            Some(b'-' | b'0'..=b'9') => {
                let at = self.i;
                while matches!(
                    self.s.get(self.i),
                    Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                ) {
                    self.i += 1;
                }
                let text = core::str::from_utf8(&self.s[at..self.i]).unwrap_or("0");
                // Check it with the automaton's own number grammar.
                let mut phase = 0u8;
                for &b in text.as_bytes() {
                    phase = match super::json::num_step(false, phase, b) {
                        Some(p) => p,
                        None => return self.fail("bad number"),
                    };
                }
                if !super::json::num_final(phase) {
                    return self.fail("bad number");
                }
                Ok(J::Num(text.to_string()))
            }
            _ => self.fail("expected a value"),
        }
    }

    fn hex4(&mut self) -> Result<u32, CompileError> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .and_then(|h| core::str::from_utf8(h).ok());
        match h.and_then(|h| u32::from_str_radix(h, 16).ok()) {
            Some(v) => {
                self.i += 4;
                Ok(v)
            }
            None => self.fail("bad \\u escape"),
        }
    }

    fn string(&mut self) -> Result<String, CompileError> {
        if !self.eat(b"\"") {
            return self.fail("expected a string");
        }
        let mut out = Vec::new();
        loop {
            let Some(&b) = self.s.get(self.i) else {
                return self.fail("unterminated string");
            };
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return self.fail("unterminated escape");
                    };
                    self.i += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let mut v = self.hex4()?;
                            if (0xd800..0xdc00).contains(&v) && self.eat(b"\\u") {
                                let lo = self.hex4()?;
                                v = 0x10000 + ((v - 0xd800) << 10) + lo.wrapping_sub(0xdc00);
                            }
                            match char::from_u32(v) {
                                Some(c) => c,
                                None => return self.fail("bad \\u escape"),
                            }
                        }
                        _ => return self.fail("bad escape"),
                    };
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
                0..=0x1f => return self.fail("control character in string"),
                _ => out.push(b),
            }
        }
        String::from_utf8(out).or_else(|_| self.fail("string is not UTF-8"))
    }
}

enum Rec {
    Plain(u32),
    Literal(Vec<Vec<u8>>),
    Array(u16, u32, u32),
    Object(Vec<(Vec<u8>, u16, bool)>),
    Union(Vec<u16>),
    /// A `$ref`: replaced by its target before the table is written.
    Ref(u16),
}

struct Compiler<'a> {
    root: &'a J,
    nodes: Vec<Rec>,
    refs: Vec<(String, u16)>,
}

impl Compiler<'_> {
    fn add(&mut self, r: Rec) -> Result<u16, CompileError> {
        if self.nodes.len() >= 0x7000 {
            return err("too many schema nodes");
        }
        self.nodes.push(r);
        Ok((self.nodes.len() - 1) as u16)
    }

    fn literal(&mut self, vals: &[J], path: &str) -> Result<u16, CompileError> {
        if vals.is_empty() || vals.len() > MAX_CHOICES {
            return err(alloc::format!(
                "{path}: enum needs 1 to {MAX_CHOICES} values"
            ));
        }
        let lits = vals
            .iter()
            .map(|v| {
                let mut s = String::new();
                v.write(&mut s);
                s.into_bytes()
            })
            .collect();
        self.add(Rec::Literal(lits))
    }

    fn resolve(&mut self, r: &str, path: &str) -> Result<u16, CompileError> {
        if let Some(&(_, id)) = self.refs.iter().find(|(k, _)| k == r) {
            return Ok(id);
        }
        let target = if r == "#" {
            Some(self.root)
        } else {
            let name = r
                .strip_prefix("#/$defs/")
                .map(|n| ("$defs", n))
                .or_else(|| r.strip_prefix("#/definitions/").map(|n| ("definitions", n)));
            name.and_then(|(sec, n)| self.root.get(sec).and_then(|d| d.get(n)))
        };
        let Some(target) = target else {
            return err(alloc::format!("{path}: cannot resolve $ref {r:?}"));
        };
        // Reserve the node first so that recursive references find it.
        let id = self.add(Rec::Ref(id_none()))?;
        self.refs.push((r.to_string(), id));
        let body = self.node(target, r, 0)?;
        self.nodes[id as usize] = Rec::Ref(body);
        Ok(id)
    }

    fn node(&mut self, s: &J, path: &str, depth: usize) -> Result<u16, CompileError> {
        if depth > 48 {
            return err(alloc::format!("{path}: schema nested too deeply"));
        }
        let J::Obj(kv) = s else {
            return match s {
                J::Bool(true) => Ok(ANY),
                _ => err(alloc::format!("{path}: a schema must be an object")),
            };
        };
        for (k, _) in kv {
            if matches!(
                k.as_str(),
                "allOf"
                    | "not"
                    | "if"
                    | "then"
                    | "else"
                    | "patternProperties"
                    | "prefixItems"
                    | "dependentSchemas"
                    | "unevaluatedProperties"
            ) {
                return err(alloc::format!("{path}: `{k}` is not supported"));
            }
        }
        if let Some(J::Str(r)) = s.get("$ref") {
            let id = self.resolve(r, path)?;
            return Ok(id);
        }
        if let Some(c) = s.get("const") {
            return self.literal(core::slice::from_ref(c), path);
        }
        if let Some(e) = s.get("enum") {
            let J::Arr(vals) = e else {
                return err(alloc::format!("{path}: enum must be an array"));
            };
            return self.literal(vals, path);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(alts) = s.get(key) {
                let J::Arr(alts) = alts else {
                    return err(alloc::format!("{path}: {key} must be an array"));
                };
                let mut br = Vec::new();
                for (i, a) in alts.iter().enumerate() {
                    br.push(self.node(a, &alloc::format!("{path}/{key}/{i}"), depth + 1)?);
                }
                return self.union(br, path);
            }
        }
        match s.get("type") {
            None => {
                if s.get("properties").is_some() {
                    self.typed(s, "object", path, depth)
                } else if s.get("items").is_some() {
                    self.typed(s, "array", path, depth)
                } else {
                    Ok(ANY)
                }
            }
            Some(J::Str(t)) => self.typed(s, t, path, depth),
            Some(J::Arr(ts)) => {
                let mut br = Vec::new();
                for t in ts {
                    let J::Str(t) = t else {
                        return err(alloc::format!("{path}: type list must hold strings"));
                    };
                    br.push(self.typed(s, t, path, depth)?);
                }
                self.union(br, path)
            }
            Some(_) => err(alloc::format!("{path}: type must be a string or a list")),
        }
    }

    fn union(&mut self, br: Vec<u16>, path: &str) -> Result<u16, CompileError> {
        if br.is_empty() || br.len() > MAX_BRANCHES {
            return err(alloc::format!(
                "{path}: a union needs 1 to {MAX_BRANCHES} branches"
            ));
        }
        if br.len() == 1 {
            return Ok(br[0]);
        }
        self.add(Rec::Union(br))
    }

    fn typed(&mut self, s: &J, t: &str, path: &str, depth: usize) -> Result<u16, CompileError> {
        let count = |k: &str| -> Result<Option<u32>, CompileError> {
            match s.get(k) {
                None => Ok(None),
                Some(J::Num(n)) => n.parse::<u32>().map(Some).or_else(|_| {
                    err(alloc::format!(
                        "{path}: {k} must be a small non-negative integer"
                    ))
                }),
                Some(_) => err(alloc::format!("{path}: {k} must be a number")),
            }
        };
        match t {
            "string" => self.add(Rec::Plain(K_STRING)),
            "number" => self.add(Rec::Plain(K_NUMBER)),
            "integer" => self.add(Rec::Plain(K_INTEGER)),
            "boolean" => self.literal(&[J::Bool(true), J::Bool(false)], path),
            "null" => self.literal(&[J::Null], path),
            "array" => {
                let (min, max) = (
                    count("minItems")?.unwrap_or(0),
                    count("maxItems")?.unwrap_or(u32::MAX),
                );
                if min > max {
                    return err(alloc::format!("{path}: minItems > maxItems"));
                }
                let items = match s.get("items") {
                    None => {
                        if min == 0 && max == u32::MAX {
                            return Ok(ANY_ARRAY);
                        }
                        ANY
                    }
                    Some(it) => self.node(it, &alloc::format!("{path}/items"), depth + 1)?,
                };
                self.add(Rec::Array(items, min, max))
            }
            "object" => {
                let Some(props) = s.get("properties") else {
                    return Ok(ANY_OBJECT);
                };
                let J::Obj(props) = props else {
                    return err(alloc::format!("{path}: properties must be an object"));
                };
                if props.len() > MAX_CHOICES {
                    return err(alloc::format!("{path}: more than {MAX_CHOICES} properties"));
                }
                let required: Vec<&str> = match s.get("required") {
                    Some(J::Arr(r)) => r
                        .iter()
                        .filter_map(|x| {
                            if let J::Str(x) = x {
                                Some(x.as_str())
                            } else {
                                None
                            }
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                for r in &required {
                    if !props.iter().any(|(k, _)| k == r) {
                        return err(alloc::format!(
                            "{path}: required property {r:?} is not in properties"
                        ));
                    }
                }
                let mut out = Vec::new();
                for (k, v) in props {
                    let node = self.node(v, &alloc::format!("{path}/properties/{k}"), depth + 1)?;
                    let mut key = String::new();
                    write_str(k, &mut key);
                    out.push((key.into_bytes(), node, required.contains(&k.as_str())));
                }
                self.add(Rec::Object(out))
            }
            other => err(alloc::format!("{path}: unknown type {other:?}")),
        }
    }

    fn emit(self, root: u16) -> Vec<u8> {
        let n = self.nodes.len();
        let mut words: Vec<u32> = Vec::new();
        let mut lit_bytes: Vec<(usize, Vec<u8>)> = Vec::new(); // (word index of the offset, bytes)
        let mut offsets = Vec::with_capacity(n);
        let base = 16 + 4 * n;
        for r in &self.nodes {
            offsets.push((base + 4 * words.len()) as u32);
            match r {
                Rec::Plain(k) => words.push(*k),
                Rec::Literal(l) => {
                    words.extend([K_LITERAL, l.len() as u32]);
                    for b in l {
                        lit_bytes.push((words.len(), b.clone()));
                        words.extend([0, b.len() as u32]);
                    }
                }
                Rec::Array(items, min, max) => {
                    words.extend([K_ARRAY, u32::from(*items), *min, *max])
                }
                Rec::Object(props) => {
                    words.extend([K_OBJECT, props.len() as u32]);
                    for (k, node, req) in props {
                        lit_bytes.push((words.len(), k.clone()));
                        words.extend([0, k.len() as u32, u32::from(*node), u32::from(*req)]);
                    }
                }
                Rec::Ref(_) => words.push(K_STRING),
                Rec::Union(br) => {
                    words.extend([K_UNION, br.len() as u32]);
                    words.extend(br.iter().map(|&b| u32::from(b)));
                }
            }
        }
        let mut tail = Vec::new();
        let tail_base = base + 4 * words.len();
        for (w, b) in &lit_bytes {
            words[*w] = (tail_base + tail.len()) as u32;
            tail.extend_from_slice(b);
        }
        let mut out = Vec::with_capacity(tail_base + tail.len());
        out.extend_from_slice(MAGIC);
        for w in [VERSION, n as u32, u32::from(root)]
            .into_iter()
            .chain(offsets)
            .chain(words)
        {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&tail);
        out
    }
}

/// Compile JSON Schema text (e.g. OpenAI's `response_format.json_schema.schema`) to the
/// table [`Schema::from_bytes`](super::Schema::from_bytes) reads.
///
/// # Errors
/// [`CompileError`] for text that is not JSON, a keyword this does not support, a `$ref`
/// that does not resolve, or a count over the table's limits.
pub fn compile(schema_json: &str) -> Result<Vec<u8>, CompileError> {
    compile_at(schema_json, &[])
}

/// Compile the schema found under the object keys `path` of the JSON document `json` (for
/// OpenAI's request body: `["response_format", "json_schema", "schema"]`), keeping the order
/// its properties are written in (a JSON library's map would sort them).
///
/// # Errors
/// As [`compile`], and a `path` that is not in the document.
pub fn compile_at(json: &str, path: &[&str]) -> Result<Vec<u8>, CompileError> {
    let mut p = Parser {
        s: json.as_bytes(),
        i: 0,
    };
    let doc = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return p.fail("trailing characters");
    }
    let mut root = &doc;
    for k in path {
        root = match root.get(k) {
            Some(v) => v,
            None => return err(alloc::format!("no {k:?} in the document")),
        };
    }
    let mut c = Compiler {
        root,
        nodes: Vec::new(),
        refs: Vec::new(),
    };
    let top = c.node(root, "#", 0)?;
    let top = c.link(top)?;
    Ok(c.emit(top))
}

const fn id_none() -> u16 {
    u16::MAX
}

impl Compiler<'_> {
    /// Follow `$ref` aliases to the node they name.
    fn target(&self, mut id: u16) -> Result<u16, CompileError> {
        for _ in 0..=self.nodes.len() {
            match self.nodes.get(id as usize) {
                Some(Rec::Ref(t)) => id = *t,
                _ => return Ok(id),
            }
        }
        err("a $ref refers only to itself")
    }

    /// Replace every reference to a `$ref` alias by its target and flatten unions of unions
    /// (the table reader refuses them); returns the root's target.
    fn link(&mut self, root: u16) -> Result<u16, CompileError> {
        for i in 0..self.nodes.len() {
            let mut r = core::mem::replace(&mut self.nodes[i], Rec::Plain(K_STRING));
            match &mut r {
                Rec::Array(items, _, _) => *items = self.target(*items)?,
                Rec::Object(props) => {
                    for p in props.iter_mut() {
                        p.1 = self.target(p.1)?;
                    }
                }
                Rec::Union(br) => {
                    for b in br.iter_mut() {
                        *b = self.target(*b)?;
                    }
                }
                _ => {}
            }
            self.nodes[i] = r;
        }
        for i in 0..self.nodes.len() {
            let Rec::Union(br) = &self.nodes[i] else {
                continue;
            };
            let mut flat: Vec<u16> = Vec::new();
            let mut todo: Vec<(u16, usize)> = br.iter().rev().map(|&b| (b, 0)).collect();
            while let Some((b, d)) = todo.pop() {
                match self.nodes.get(b as usize) {
                    Some(Rec::Union(inner)) if d < 8 && b as usize != i => {
                        todo.extend(inner.iter().rev().map(|&x| (x, d + 1)));
                    }
                    Some(Rec::Union(_)) => {}
                    _ if !flat.contains(&b) => flat.push(b),
                    _ => {}
                }
            }
            if flat.is_empty() || flat.len() > MAX_BRANCHES {
                return err(alloc::format!(
                    "a union needs 1 to {MAX_BRANCHES} branches after expanding $ref"
                ));
            }
            self.nodes[i] = Rec::Union(flat);
        }
        self.target(root)
    }
}
