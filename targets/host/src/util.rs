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
    if arg == "tiny" {
        // The tiny default model ships in the repository (every command takes the alias).
        let t = repo_path("models/tiny/tiny-base.gguf");
        if t.exists() {
            return Ok(t);
        }
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
        let shown: Vec<String> = dirs[..dirs.len() - 1]
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        anyhow::bail!(
            "model '{arg}' is not fetched (looked for {file} in {} and the repository's \
             models/); run `edgelora fetch {arg}` first",
            shown.join(", ")
        );
    }
    anyhow::bail!(
        "model file '{arg}' does not exist; give a GGUF path or an alias: tiny (shipped), {} \
         (`edgelora fetch NAME`)",
        crate::fetch::aliases().join(", ")
    )
}

/// Default `--threads`: the machine's physical cores (distinct `thread_siblings_list` entries
/// under /sys on Linux: hyper-threads share a core's SIMD units, so a second thread per core
/// adds little to these kernels), at most what the process may run on (cgroup and affinity
/// limits, `available_parallelism`), between 1 and 64.
pub fn default_threads() -> u16 {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let physical = (|| {
        let mut cores = std::collections::BTreeSet::new();
        for e in std::fs::read_dir("/sys/devices/system/cpu").ok()? {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_prefix("cpu") else {
                continue;
            };
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let path = format!("/sys/devices/system/cpu/{name}/topology/thread_siblings_list");
            if let Ok(s) = std::fs::read_to_string(path) {
                cores.insert(s.trim().to_string());
            }
        }
        (!cores.is_empty()).then_some(cores.len())
    })()
    .unwrap_or(logical);
    physical.min(logical).clamp(1, 64) as u16
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

/// Plain file mappings only (`--mmap`): set once by `main` before any file is opened.
static PLAIN_MMAP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Files smaller than this are always mapped (adapters, tokenizer-only files): the copy would
/// buy nothing.
const HUGE_MIN_BYTES: u64 = 16 << 20;

/// Map every file plainly from now on (`--mmap`), instead of loading large ones into huge pages.
pub fn set_plain_mmap(on: bool) {
    PLAIN_MMAP.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the kernel grants transparent huge pages to a mapping advised `MADV_HUGEPAGE`
/// (`enabled` is `always` or `madvise`, not `never`).
fn thp_available() -> bool {
    cfg!(target_os = "linux")
        && std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|s| !s.contains("[never]"))
}

/// A file's bytes, read-only. Files of 16 MiB and more (model weights) are read into anonymous
/// memory advised `MADV_HUGEPAGE` where the kernel has transparent huge pages: decode streams
/// every weight once per token, and with 2 MB pages a plain read runs at ~34 GB/s on the dev VM
/// against 20-24 GB/s through the file's own 4 KB-page mapping (`bench/examples/roof.rs`: page
/// walks, and hardware prefetchers stopping at every 4 KB boundary). The copy costs one read of
/// the file at start (~0.1 s per 250 MB) and memory the page cache would otherwise share.
/// Smaller files, `--mmap`, kernels without THP, or a failed load: a plain read-only mapping.
pub fn map(path: &Path) -> Result<memmap2::Mmap> {
    if path.is_dir() {
        if path.join("adapter_config.json").exists() {
            anyhow::bail!(
                "{} is a PEFT adapter directory, not a GGUF file; convert it with `edgelora \
                 adapter convert {} --base MODEL -o adapter.gguf` and pass the .gguf",
                path.display(),
                path.display()
            );
        }
        let ggufs: Vec<String> = std::fs::read_dir(path)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".gguf"))
                    .collect()
            })
            .unwrap_or_default();
        if ggufs.is_empty() {
            anyhow::bail!(
                "{} is a directory; give a .gguf file (there is none in it)",
                path.display()
            );
        }
        anyhow::bail!(
            "{} is a directory; give a .gguf file, e.g. {}",
            path.display(),
            path.join(&ggufs[0]).display()
        );
    }
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len >= HUGE_MIN_BYTES
        && !PLAIN_MMAP.load(std::sync::atomic::Ordering::Relaxed)
        && thp_available()
    {
        if let Ok(m) = load_huge(&mut f, len) {
            return Ok(m);
        }
    }
    // SAFETY: the mapping is read-only and private to this process. If another process
    // truncates or rewrites the file while we run, reads may fault or see new bytes; that is
    // the usual contract of mapping a model file and is documented in the README.
    let m =
        unsafe { memmap2::Mmap::map(&f) }.with_context(|| format!("mapping {}", path.display()))?;
    Ok(m)
}

/// An adapter file: a GGUF as [`map`] gives it, or a stream frame written by `edgelora adapter
/// frame` (`ELAS` magic), whose length and CRC-32 are checked and whose payload is returned.
pub fn map_adapter(path: &Path) -> Result<memmap2::Mmap> {
    use edgelora::lora::stream::{StreamLoader, FRAME_HEADER, FRAME_MAGIC};
    let m = map(path)?;
    if !m.starts_with(&FRAME_MAGIC) {
        return Ok(m);
    }
    let n = m.len().saturating_sub(FRAME_HEADER).max(1);
    let mut out = memmap2::MmapOptions::new()
        .len(n)
        .map_anon()
        .with_context(|| format!("memory for the frame {}", path.display()))?;
    let len = {
        let mut ld = StreamLoader::new(&mut out[..]);
        ld.push(&m)
            .map_err(anyhow::Error::new)
            .and_then(|_| ld.finish().map(<[u8]>::len).map_err(anyhow::Error::new))
    }
    .with_context(|| {
        format!(
            "{} is an adapter stream frame (ELAS) that does not check out (truncated or \
             corrupted); write it again with `edgelora adapter frame`",
            path.display()
        )
    })?;
    if len != n {
        anyhow::bail!(
            "{}: frame payload is {len} bytes, the file holds {n} after the header",
            path.display()
        );
    }
    Ok(out.make_read_only()?)
}

/// The whole file read into a fresh anonymous mapping advised for huge pages, then made
/// read-only. (Linux aligns anonymous mappings of 2 MB and more to 2 MB, so every whole 2 MB
/// stretch of it can be one page.)
fn load_huge(f: &mut std::fs::File, len: u64) -> std::io::Result<memmap2::Mmap> {
    use std::io::Read;
    let n = usize::try_from(len).map_err(|_| std::io::Error::other("file too large"))?;
    let mut m = memmap2::MmapOptions::new().len(n).map_anon()?;
    #[cfg(target_os = "linux")]
    m.advise(memmap2::Advice::HugePage)?;
    f.read_exact(&mut m[..])?;
    m.make_read_only()
}

/// The bytes of `m` backed by transparent huge pages, if the kernel says (Linux
/// `/proc/self/smaps`, the mapping that holds `m`'s first byte).
pub fn huge_bytes(m: &[u8]) -> Option<u64> {
    let addr = m.as_ptr() as usize;
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = a <= addr && addr < b;
                    continue;
                }
            }
        }
        if inside {
            if let Some(v) = line.strip_prefix("AnonHugePages:") {
                let kb: u64 = v.split_whitespace().next()?.parse().ok()?;
                return Some(kb * 1024);
            }
        }
    }
    None
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
