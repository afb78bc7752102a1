//! `--json` of the file-writing commands (`quantize`, `merge`, `fetch`, `adapter convert`,
//! `adapter combine`, `adapter export`, `adapter frame`).
//!
//! Each prints exactly one JSON object, on one line, on stdout once its files are written;
//! progress and report lines stay on stderr as without `--json`, and an error is the usual
//! `Error: ...` on stderr with a non-zero exit and nothing on stdout (as the older `--json`
//! commands do). The keys every one of them shares, so a script can treat them alike:
//! `command` (the subcommand as typed, e.g. `"adapter convert"`), `output` (the path written),
//! `bytes` (its size), `sha256` (lower-case hex of its bytes; `adapter export` writes a directory and lists each
//! file's path, bytes and sha256 under `files` instead), `notes` (the warnings and notes
//! printed on stderr, as an array of strings) and `seconds`. The README's "`--json` shapes"
//! lists the rest per command; keys are only ever added, never renamed or removed.

use serde_json::Value;
use sha2::Digest;

/// Lower-case hex SHA-256 of `bytes` (what `sha256sum` prints).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

/// Lower-case hex of a digest.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// An adapter fingerprint as `adapter inspect --json` prints it (16 hex digits), or null.
pub fn fingerprint(f: Option<u64>) -> Value {
    f.map_or(Value::Null, |f| Value::String(format!("{f:016x}")))
}

/// Print `v` as the command's one line on stdout.
///
/// # Errors
/// Serialising cannot fail for a `Value`; the `Result` is serde's signature.
pub fn print(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

/// An `f32` as the shortest decimal that reads back to it (`0.7`, not the `0.699999988...` of
/// widening it to `f64`), so weights and scales appear as they were typed; null if not finite.
pub fn f32(x: f32) -> Value {
    format!("{x}")
        .parse::<f64>()
        .map_or(Value::Null, Value::from)
}

/// [`f32`] of each value.
pub fn f32s(xs: &[f32]) -> Value {
    Value::Array(xs.iter().map(|&x| f32(x)).collect())
}
