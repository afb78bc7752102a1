//! Shared helpers: finding and mapping model files, memory figures.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Resolve a model argument: a path, or an alias of `edgelora fetch` (`smollm2`,
/// `gemma3-270m`; see [`crate::fetch::MODELS`]) looked up in `./models`, `$EDGELORA_MODELS`
/// and the repository's `models/`.
pub fn resolve_model(arg: &str) -> Result<PathBuf> {
    let p = Path::new(arg);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    if let Some(file) = crate::fetch::known(arg).map(|m| m.file) {
        let mut dirs = vec![PathBuf::from("models")];
        if let Ok(d) = std::env::var("EDGELORA_MODELS") {
            dirs.insert(0, PathBuf::from(d));
        }
        dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"));
        for d in &dirs {
            let c = d.join(file);
            if c.exists() {
                return Ok(c);
            }
        }
        anyhow::bail!("model '{arg}' not found (looked for {file} in {dirs:?}); run `edgelora fetch {arg}` first");
    }
    anyhow::bail!("model file '{arg}' does not exist")
}

/// A path inside the repository: relative to the working directory if it exists there (the
/// usual case, running from the repository root), else relative to the source tree.
pub fn repo_path(rel: &str) -> PathBuf {
    let here = PathBuf::from(rel);
    if here.exists() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// Memory-map a file read-only.
pub fn map(path: &Path) -> Result<memmap2::Mmap> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the mapping is read-only and private to this process. If another process
    // truncates or rewrites the file while we run, reads may fault or see new bytes; that is
    // the usual contract of mapping a model file and is documented in the README.
    let m =
        unsafe { memmap2::Mmap::map(&f) }.with_context(|| format!("mapping {}", path.display()))?;
    Ok(m)
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time this thread has run, in seconds (Linux: `/proc/thread-self/schedstat`, ns
/// resolution), or `None` where unavailable. On a shared host it leaves out the time slices
/// other processes take, which wall-clock time does not.
pub fn thread_cpu_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 * 1e-9)
}

/// Human-readable byte count.
pub fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}
