//! `targets/ffi/include/edgelora.h` is kept by hand; this checks it against
//! `targets/ffi/src/lib.rs`: the same `el_*` functions, each with the same return and
//! parameter types (Rust types mapped to C, whitespace ignored), and the same status codes.

use std::collections::BTreeMap;
use std::path::PathBuf;

fn read(rel: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(rel),
    )
    .unwrap()
}

/// A Rust FFI type in C spelling, e.g. `*const *const el_adapter` -> `const el_adapter *const *`.
fn c_type(rust: &str) -> String {
    let t = rust.trim();
    let ptr = |rest: &str, is_const: bool| {
        let inner = rest.trim();
        if inner.starts_with('*') {
            format!("{}{}*", c_type(inner), if is_const { "const " } else { "" })
        } else {
            format!(
                "{}{} *",
                if is_const { "const " } else { "" },
                c_type(inner)
            )
        }
    };
    if let Some(r) = t.strip_prefix("*const") {
        return ptr(r, true);
    }
    if let Some(r) = t.strip_prefix("*mut") {
        return ptr(r, false);
    }
    match t {
        "c_int" => "int",
        "c_char" => "char",
        "c_void" => "void",
        "usize" => "size_t",
        "u32" => "uint32_t",
        "u8" => "uint8_t",
        "f32" => "float",
        "" => "void",
        other => other,
    }
    .to_string()
}

fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// name -> (return, [param types]) from the Rust source.
fn rust_fns(src: &str) -> BTreeMap<String, (String, Vec<String>)> {
    let mut m = BTreeMap::new();
    for part in src.split("pub unsafe extern \"C\" fn ").skip(1) {
        let (name, rest) = part.split_once('(').unwrap();
        let (params, rest) = rest.split_once(')').unwrap();
        let ret = rest
            .split('{')
            .next()
            .unwrap()
            .trim()
            .strip_prefix("->")
            .unwrap_or("")
            .trim();
        let ps = params
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| squash(&c_type(p.split_once(':').unwrap().1)))
            .collect();
        m.insert(name.trim().to_string(), (squash(&c_type(ret)), ps));
    }
    m
}

/// name -> (return, [param types]) from the header's one-line prototypes.
fn header_fns(h: &str) -> BTreeMap<String, (String, Vec<String>)> {
    let mut m = BTreeMap::new();
    for line in h
        .lines()
        .map(str::trim)
        .filter(|l| l.ends_with(");") && l.contains("el_") && !l.starts_with('*'))
    {
        let (head, params) = line.trim_end_matches(");").split_once('(').unwrap();
        let at = head
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap();
        let (ret, name) = (&head[..=at], &head[at + 1..]);
        let ps = if params.trim() == "void" {
            vec![]
        } else {
            params
                .split(',')
                .map(|p| {
                    let p = p.trim();
                    let cut = p
                        .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .unwrap();
                    squash(&p[..=cut])
                })
                .collect()
        };
        m.insert(name.to_string(), (squash(ret), ps));
    }
    m
}

#[test]
fn header_matches_rust_exports() {
    let (src, h) = (
        read("targets/ffi/src/lib.rs"),
        read("targets/ffi/include/edgelora.h"),
    );
    let (r, c) = (rust_fns(&src), header_fns(&h));
    assert!(r.len() >= 20, "found only {} exports", r.len());
    let rn: Vec<_> = r.keys().collect();
    let cn: Vec<_> = c.keys().collect();
    assert_eq!(rn, cn, "functions differ between lib.rs and edgelora.h");
    for (name, sig) in &r {
        assert_eq!(
            sig, &c[name],
            "signature of {name}: lib.rs (left) vs edgelora.h (right)"
        );
    }
    // Status codes and constants.
    for line in src.lines().filter(|l| l.starts_with("pub const EL_")) {
        let (name, v) = line
            .trim_start_matches("pub const ")
            .split_once(':')
            .unwrap();
        let v = v.split('=').nth(1).unwrap().trim().trim_end_matches(';');
        let define = format!("#define {name} {v}");
        assert!(
            h.lines().any(|l| l.starts_with(&define)),
            "edgelora.h lacks `{define}`"
        );
    }
}
