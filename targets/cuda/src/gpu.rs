//! The GPU forward pass (feature `cuda`): weights and adapters uploaded from the same GGUF
//! bytes the CPU reads, kernels from `kernels.cu` compiled by NVRTC at run time.
//!
//! cudarc loads `libcuda` and `libnvrtc` with `dlopen` on first use and **panics** when it
//! cannot find them, so every entry point here probes first ([`probe_driver`],
//! [`probe_nvrtc`]) and turns a missing library or device into [`CudaError::Unavailable`], whose
//! text is the reason a test prints with `SKIPPED:`.
//!
//! Data layout on the device mirrors the CPU's `State`: activations of a batch of `m` tokens
//! are `m x width` row-major f32, the KV cache is `layers x ctx x kv_dim` f32. A batch of
//! tokens runs layer by layer (prompt processing: one weight pass per `NT` tokens), so every
//! layer's residual stream can be read back for per-layer parity.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DriverError,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{CompileOptions, Ptx};
use edgelora::kernels::MatRef;
use edgelora::lora::{AdapterSet, MAX_RANK};
use edgelora::model::{Config, Model, LINEARS};
use edgelora::quant::GgmlType;
use edgelora::Gguf;

use crate::cpu::{f32s, output_norm, rope_table};
use crate::KERNELS_CU;

/// Errors of the CUDA backend.
#[derive(Debug)]
pub enum CudaError {
    /// No driver library, no device, or no NVRTC: the reason, fit for a `SKIPPED:` line.
    Unavailable(String),
    /// NVRTC rejected the kernels: its log.
    Compile(String),
    /// A CUDA driver call failed.
    Driver(DriverError),
    /// The model or an adapter was rejected by the core.
    Model(edgelora::Error),
    /// A shape, type or position the backend cannot run.
    Invalid(String),
}

impl std::fmt::Display for CudaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CudaError::Unavailable(s) => write!(f, "CUDA unavailable: {s}"),
            CudaError::Compile(s) => write!(f, "NVRTC failed to compile the kernels:\n{s}"),
            CudaError::Driver(e) => write!(f, "CUDA driver error: {e:?}"),
            CudaError::Model(e) => write!(f, "{e}"),
            CudaError::Invalid(s) => write!(f, "CUDA backend: {s}"),
        }
    }
}

impl std::error::Error for CudaError {}

impl From<DriverError> for CudaError {
    fn from(e: DriverError) -> Self {
        CudaError::Driver(e)
    }
}

impl From<edgelora::Error> for CudaError {
    fn from(e: edgelora::Error) -> Self {
        CudaError::Model(e)
    }
}

/// Result of the CUDA backend.
pub type Result<T> = std::result::Result<T, CudaError>;

fn invalid<T>(s: impl Into<String>) -> Result<T> {
    Err(CudaError::Invalid(s.into()))
}

/// Environment variable naming a PTX file to load instead of compiling with NVRTC (for a
/// machine that has a driver but no libnvrtc; `scripts/check-cuda.sh prepare` writes one).
pub const PTX_ENV: &str = "EDGELORA_CUDA_PTX";

/// Is the CUDA driver library (`libcuda`) loadable?
///
/// # Errors
/// [`CudaError::Unavailable`] saying what was looked for.
pub fn probe_driver() -> Result<()> {
    // SAFETY: loading the driver library runs its initialisers, as any CUDA program does; the
    // handle is dropped again and nothing else is called.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(CudaError::Unavailable(
            "no NVIDIA driver: libcuda.so not found (no GPU driver installed on this machine)"
                .into(),
        ))
    }
}

/// Is NVRTC (`libnvrtc`) loadable?
///
/// # Errors
/// [`CudaError::Unavailable`] with the install hint.
pub fn probe_nvrtc() -> Result<()> {
    // SAFETY: as in probe_driver, for libnvrtc.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(CudaError::Unavailable(
            "libnvrtc not found: `pip install nvidia-cuda-nvrtc-cu12` and put its nvidia/cuda_nvrtc/lib on LD_LIBRARY_PATH (or use a CUDA toolkit's lib64)".into(),
        ))
    }
}

/// NVRTC options: no FMA contraction, so products and sums round as they do in Rust.
pub fn compile_options() -> CompileOptions {
    CompileOptions {
        fmad: Some(false),
        name: Some("edgelora_kernels.cu".into()),
        ..Default::default()
    }
}

/// Compile every kernel in [`KERNELS_CU`] to PTX with NVRTC (needs libnvrtc, not a GPU).
///
/// # Errors
/// [`CudaError::Unavailable`] without libnvrtc, [`CudaError::Compile`] with NVRTC's log.
pub fn compile_ptx() -> Result<String> {
    probe_nvrtc()?;
    match cudarc::nvrtc::compile_ptx_with_opts(KERNELS_CU, compile_options()) {
        Ok(p) => Ok(p.to_src()),
        Err(cudarc::nvrtc::CompileError::CompileError { log, .. }) => {
            Err(CudaError::Compile(log.to_string_lossy().into_owned()))
        }
        Err(e) => Err(CudaError::Compile(format!("{e:?}"))),
    }
}

/// ggml type -> index of its kernels (`matmul_*`, `get_rows_*`), as `TY_*` in kernels.cu.
fn ty_code(ty: GgmlType) -> Result<usize> {
    Ok(match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::BF16 => 2,
        GgmlType::Q4_0 => 3,
        GgmlType::Q4_1 => 4,
        GgmlType::Q8_0 => 5,
        other => return invalid(format!("tensor type {other:?} has no CUDA kernel")),
    })
}

/// Suffixes of the typed kernels, in `ty_code` order.
pub const TYPED: [&str; 6] = ["f32", "f16", "bf16", "q4_0", "q4_1", "q8_0"];
/// The untyped kernels.
pub const UNTYPED: [&str; 6] = ["rmsnorm", "rope", "attention", "swiglu", "add", "row_scale"];
/// Tokens per warp pass in `matmul_*` (`NT` in kernels.cu).
const NT: usize = 4;
/// Most dynamic shared memory the attention kernel asks for: the default 48 KiB per block
/// less 1 KiB for `block_reduce`'s static arrays.
const MAX_SMEM: usize = 47 * 1024;

/// Every kernel entry point's name.
pub fn kernel_names() -> Vec<String> {
    let mut v: Vec<String> = TYPED
        .iter()
        .flat_map(|t| [format!("matmul_{t}"), format!("get_rows_{t}")])
        .collect();
    v.extend(UNTYPED.iter().map(|s| s.to_string()));
    v
}

/// A CUDA device with the kernels loaded.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    matmul: Vec<CudaFunction>,
    get_rows: Vec<CudaFunction>,
    f_rmsnorm: CudaFunction,
    f_rope: CudaFunction,
    f_attention: CudaFunction,
    f_swiglu: CudaFunction,
    f_add: CudaFunction,
    f_row_scale: CudaFunction,
    name: String,
}

fn i32_arg(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).or_else(|_| invalid(format!("{what} {v} exceeds i32")))
}

fn grid(n: usize, per: usize) -> Result<u32> {
    u32::try_from(n.div_ceil(per).max(1)).or_else(|_| invalid("grid too large"))
}

fn elems(n: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (grid(n, 256)?, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn need(len: usize, want: usize, what: &str) -> Result<()> {
    if len < want {
        return invalid(format!("{what}: buffer of {len} values, need {want}"));
    }
    Ok(())
}

impl Gpu {
    /// Open device `ordinal` and load the kernels: from the PTX file named by [`PTX_ENV`] if
    /// set, else compiled by NVRTC.
    ///
    /// # Errors
    /// [`CudaError::Unavailable`] without a driver, a device or NVRTC; [`CudaError::Compile`];
    /// [`CudaError::Driver`] if loading the module fails (e.g. PTX newer than the driver).
    pub fn new(ordinal: usize) -> Result<Gpu> {
        probe_driver()?;
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| CudaError::Unavailable(format!("no CUDA device {ordinal}: {e:?}")))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let ptx = match std::env::var_os(PTX_ENV) {
            Some(p) => {
                let src = std::fs::read_to_string(&p).map_err(|e| {
                    CudaError::Invalid(format!("{PTX_ENV}={}: {e}", p.to_string_lossy()))
                })?;
                Ptx::from_src(src)
            }
            None => Ptx::from_src(compile_ptx()?),
        };
        let module = ctx.load_module(ptx)?;
        let f = |n: &str| module.load_function(n).map_err(CudaError::from);
        let matmul = TYPED
            .iter()
            .map(|t| f(&format!("matmul_{t}")))
            .collect::<Result<Vec<_>>>()?;
        let get_rows = TYPED
            .iter()
            .map(|t| f(&format!("get_rows_{t}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Gpu {
            stream: ctx.default_stream(),
            matmul,
            get_rows,
            f_rmsnorm: f("rmsnorm")?,
            f_rope: f("rope")?,
            f_attention: f("attention")?,
            f_swiglu: f("swiglu")?,
            f_add: f("add")?,
            f_row_scale: f("row_scale")?,
            ctx,
            name,
        })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's compute capability.
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn compute_capability(&self) -> Result<(i32, i32)> {
        Ok(self.ctx.compute_capability()?)
    }

    /// Copy values to a new device buffer (at least one element is allocated).
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn upload<T: cudarc::driver::DeviceRepr + Copy + Default>(
        &self,
        v: &[T],
    ) -> Result<CudaSlice<T>> {
        let s = if v.is_empty() {
            self.stream.clone_htod(&[T::default()])?
        } else {
            self.stream.clone_htod(v)?
        };
        self.stream.synchronize()?;
        Ok(s)
    }

    /// A zeroed device buffer of `n` f32 (at least one).
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn zeros(&self, n: usize) -> Result<CudaSlice<f32>> {
        Ok(self.stream.alloc_zeros::<f32>(n.max(1))?)
    }

    /// Copy the first `n` values of a device buffer back.
    ///
    /// # Errors
    /// [`CudaError::Invalid`] if it holds fewer, [`CudaError::Driver`].
    pub fn download(&self, s: &CudaSlice<f32>, n: usize) -> Result<Vec<f32>> {
        let v = s
            .try_slice(0..n)
            .ok_or_else(|| CudaError::Invalid(format!("download of {n} from {}", s.len())))?;
        let out = self.stream.clone_dtoh(&v)?;
        self.stream.synchronize()?;
        Ok(out)
    }

    /// `y = W x` (store, `scale` multiplies) or `y += scale * W x` (accumulate) for `n` tokens.
    /// `x`: `n x cols`, `y`: `n x rows`.
    ///
    /// # Errors
    /// [`CudaError::Invalid`] for short buffers, [`CudaError::Driver`].
    pub fn matmul(
        &self,
        w: &DMat,
        x: &CudaView<'_, f32>,
        n: usize,
        y: &mut CudaViewMut<'_, f32>,
        scale: f32,
        accumulate: bool,
    ) -> Result<()> {
        need(x.len(), n * w.cols, "matmul input")?;
        need(y.len(), n * w.rows, "matmul output")?;
        if n == 0 || w.rows == 0 {
            return Ok(());
        }
        let (rows, cols, nn) = (
            i32_arg(w.rows, "rows")?,
            i32_arg(w.cols, "cols")?,
            i32_arg(n, "tokens")?,
        );
        let row_bytes = w.row_bytes as i64;
        let acc = accumulate as i32;
        let cfg = LaunchConfig {
            grid_dim: (grid(w.rows, 4)?, grid(n, NT)?, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&self.matmul[w.code]);
        b.arg(&w.buf)
            .arg(&rows)
            .arg(&cols)
            .arg(&row_bytes)
            .arg(x)
            .arg(&nn)
            .arg(y)
            .arg(&scale)
            .arg(&acc);
        // SAFETY: the signature matches matmul_* in kernels.cu; x holds n*cols and y n*rows
        // values (checked above), w.buf holds rows*row_bytes bytes (DMat::upload).
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// `out[t] = dequantised row ids[t] of w` for `n` ids (ids outside `0..rows` are skipped).
    ///
    /// # Errors
    /// [`CudaError::Invalid`] for short buffers, [`CudaError::Driver`].
    pub fn get_rows(
        &self,
        w: &DMat,
        ids: &CudaView<'_, i32>,
        n: usize,
        out: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        need(ids.len(), n, "row ids")?;
        need(out.len(), n * w.cols, "rows output")?;
        if n == 0 {
            return Ok(());
        }
        let (rows, cols) = (i32_arg(w.rows, "rows")?, i32_arg(w.cols, "cols")?);
        let row_bytes = w.row_bytes as i64;
        let cfg = LaunchConfig {
            grid_dim: (
                grid(w.cols.div_ceil(32), 128)?,
                u32::try_from(n).or_else(|_| invalid("too many ids"))?,
                1,
            ),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&self.get_rows[w.code]);
        b.arg(&w.buf)
            .arg(&rows)
            .arg(&cols)
            .arg(&row_bytes)
            .arg(ids)
            .arg(out);
        // SAFETY: matches get_rows_*; ids holds n values, out n*cols, ids are range-checked on
        // the device.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// `out[t] = x[t] / rms(x[t]) * w` for `n` rows of `dim`.
    ///
    /// # Errors
    /// [`CudaError::Invalid`] for short buffers, [`CudaError::Driver`].
    pub fn rmsnorm(
        &self,
        x: &CudaView<'_, f32>,
        w: &CudaSlice<f32>,
        out: &mut CudaViewMut<'_, f32>,
        n: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        need(x.len(), n * dim, "rmsnorm input")?;
        need(out.len(), n * dim, "rmsnorm output")?;
        need(w.len(), dim, "rmsnorm weight")?;
        let d = i32_arg(dim, "dim")?;
        let cfg = LaunchConfig {
            grid_dim: (
                u32::try_from(n.max(1)).or_else(|_| invalid("too many rows"))?,
                1,
                1,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        if n == 0 {
            return Ok(());
        }
        let mut b = self.stream.launch_builder(&self.f_rmsnorm);
        b.arg(x).arg(w).arg(out).arg(&d).arg(&eps);
        // SAFETY: matches rmsnorm; sizes checked above.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// Rope `n` tokens (`stride` floats apart) of `heads` heads by their table rows
    /// (`n x 2*pairs`).
    ///
    /// # Errors
    /// [`CudaError::Invalid`] for bad shapes, [`CudaError::Driver`].
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        x: &mut CudaViewMut<'_, f32>,
        n: usize,
        stride: usize,
        heads: usize,
        head_dim: usize,
        table: &CudaView<'_, f32>,
        pairs: usize,
    ) -> Result<()> {
        if 2 * pairs > head_dim || heads * head_dim > stride {
            return invalid("rope shape");
        }
        need(x.len(), n * stride, "rope input")?;
        need(table.len(), n * 2 * pairs, "rope table")?;
        if n == 0 || pairs == 0 {
            return Ok(());
        }
        let (s, h, hd, p) = (
            i32_arg(stride, "stride")?,
            i32_arg(heads, "heads")?,
            i32_arg(head_dim, "head_dim")?,
            i32_arg(pairs, "pairs")?,
        );
        let cfg = LaunchConfig {
            grid_dim: (
                u32::try_from(n).or_else(|_| invalid("too many tokens"))?,
                1,
                1,
            ),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&self.f_rope);
        b.arg(x).arg(&s).arg(&h).arg(&hd).arg(table).arg(&p);
        // SAFETY: matches rope; sizes checked above.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// Causal attention of `n` query tokens at positions `start..start+n` over one layer's
    /// cache (`kc`, `vc`: at least `start+n` positions of `n_kv_heads*head_dim`).
    ///
    /// # Errors
    /// [`CudaError::Invalid`] for bad shapes or a context too long for shared memory,
    /// [`CudaError::Driver`].
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        q: &CudaView<'_, f32>,
        kc: &CudaView<'_, f32>,
        vc: &CudaView<'_, f32>,
        out: &mut CudaViewMut<'_, f32>,
        n: usize,
        heads: (usize, usize),
        head_dim: usize,
        start: usize,
    ) -> Result<()> {
        let (nh, nkv) = heads;
        if nkv == 0 || nh % nkv != 0 || head_dim == 0 {
            return invalid("attention heads");
        }
        let positions = start + n;
        need(q.len(), n * nh * head_dim, "attention q")?;
        need(out.len(), n * nh * head_dim, "attention output")?;
        need(kc.len(), positions * nkv * head_dim, "key cache")?;
        need(vc.len(), positions * nkv * head_dim, "value cache")?;
        let smem = positions * 4;
        if smem > MAX_SMEM {
            return invalid(format!("attention over {positions} positions needs {smem} bytes of shared memory (max {MAX_SMEM})"));
        }
        if n == 0 {
            return Ok(());
        }
        let (a, b_, c, s) = (
            i32_arg(nh, "heads")?,
            i32_arg(nkv, "kv heads")?,
            i32_arg(head_dim, "head_dim")?,
            i32_arg(start, "start")?,
        );
        let scale = 1.0 / libm::sqrtf(head_dim as f32);
        let cfg = LaunchConfig {
            grid_dim: (
                a as u32,
                u32::try_from(n).or_else(|_| invalid("too many tokens"))?,
                1,
            ),
            block_dim: (128, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        let mut b = self.stream.launch_builder(&self.f_attention);
        b.arg(q)
            .arg(kc)
            .arg(vc)
            .arg(out)
            .arg(&a)
            .arg(&b_)
            .arg(&c)
            .arg(&s)
            .arg(&scale);
        // SAFETY: matches attention; sizes and shared memory checked above.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// `g = silu(g) * u` over `len` values.
    ///
    /// # Errors
    /// [`CudaError::Invalid`] for short buffers, [`CudaError::Driver`].
    pub fn swiglu(
        &self,
        g: &mut CudaViewMut<'_, f32>,
        u: &CudaView<'_, f32>,
        len: usize,
    ) -> Result<()> {
        need(g.len(), len, "swiglu gate")?;
        need(u.len(), len, "swiglu up")?;
        let n = i32_arg(len, "len")?;
        let mut b = self.stream.launch_builder(&self.f_swiglu);
        b.arg(g).arg(u).arg(&n);
        // SAFETY: matches swiglu; sizes checked above.
        unsafe { b.launch(elems(len)?) }?;
        Ok(())
    }

    /// `x += y` over `len` values.
    ///
    /// # Errors
    /// [`CudaError::Invalid`] for short buffers, [`CudaError::Driver`].
    pub fn add(
        &self,
        x: &mut CudaViewMut<'_, f32>,
        y: &CudaView<'_, f32>,
        len: usize,
    ) -> Result<()> {
        need(x.len(), len, "add target")?;
        need(y.len(), len, "add source")?;
        let n = i32_arg(len, "len")?;
        let mut b = self.stream.launch_builder(&self.f_add);
        b.arg(x).arg(y).arg(&n);
        // SAFETY: matches add; sizes checked above.
        unsafe { b.launch(elems(len)?) }?;
        Ok(())
    }

    /// `y[t][r] *= g[r]` for `n` rows of `rows` values.
    ///
    /// # Errors
    /// [`CudaError::Invalid`] for short buffers, [`CudaError::Driver`].
    pub fn row_scale(
        &self,
        y: &mut CudaViewMut<'_, f32>,
        g: &CudaSlice<f32>,
        rows: usize,
        n: usize,
    ) -> Result<()> {
        need(y.len(), n * rows, "row_scale target")?;
        need(g.len(), rows, "row_scale factors")?;
        let (r, nn) = (i32_arg(rows, "rows")?, i32_arg(n, "tokens")?);
        let mut b = self.stream.launch_builder(&self.f_row_scale);
        b.arg(y).arg(g).arg(&r).arg(&nn);
        // SAFETY: matches row_scale; sizes checked above.
        unsafe { b.launch(elems(n * rows)?) }?;
        Ok(())
    }

    /// Wait for all queued work (and surface asynchronous kernel errors).
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn sync(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }
}

/// A weight matrix on the device: the GGUF bytes as they are, plus shape and type.
pub struct DMat {
    code: usize,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    buf: CudaSlice<u8>,
}

impl DMat {
    /// Upload a matrix's bytes.
    ///
    /// # Errors
    /// [`CudaError::Invalid`] for a type without kernels, [`CudaError::Driver`].
    pub fn upload(gpu: &Gpu, m: &MatRef<'_>) -> Result<DMat> {
        Ok(DMat {
            code: ty_code(m.ty())?,
            rows: m.rows(),
            cols: m.cols(),
            row_bytes: m.row_bytes(),
            buf: gpu.upload(m.data())?,
        })
    }

    /// Rows (outputs).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (inputs).
    pub fn cols(&self) -> usize {
        self.cols
    }
}

struct GpuLayer {
    attn_norm: CudaSlice<f32>,
    ffn_norm: CudaSlice<f32>,
    lin: Vec<DMat>,
}

/// A llama-family model on the device.
pub struct GpuModel {
    cfg: Config,
    embd: DMat,
    /// `None` when the head is tied to the embedding.
    output: Option<DMat>,
    output_norm: CudaSlice<f32>,
    layers: Vec<GpuLayer>,
}

impl GpuModel {
    /// Upload every weight of `model` (read from `g`, the GGUF it was loaded from).
    ///
    /// # Errors
    /// [`CudaError::Model`] for a missing `output_norm.weight`, [`CudaError::Invalid`] for a
    /// tensor type without kernels, [`CudaError::Driver`].
    pub fn upload(gpu: &Gpu, g: &Gguf<'_>, model: &Model<'_>) -> Result<GpuModel> {
        let cfg = *model.config();
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let w = model
                .layer(l)
                .ok_or_else(|| CudaError::Invalid(format!("layer {l} not loaded")))?;
            let lin = (0..LINEARS)
                .map(|k| DMat::upload(gpu, w.linear(k)))
                .collect::<Result<Vec<_>>>()?;
            let an: Vec<f32> = w.attn_norm.iter().collect();
            let fnm: Vec<f32> = w.ffn_norm.iter().collect();
            layers.push(GpuLayer {
                attn_norm: gpu.upload(&an)?,
                ffn_norm: gpu.upload(&fnm)?,
                lin,
            });
        }
        let output = if cfg.tied_output {
            None
        } else {
            Some(DMat::upload(gpu, model.output())?)
        };
        Ok(GpuModel {
            cfg,
            embd: DMat::upload(gpu, model.token_embd())?,
            output,
            output_norm: gpu.upload(&output_norm(g, &cfg)?)?,
            layers,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
}

struct GpuPair {
    a: DMat,
    b: DMat,
    dora: Option<CudaSlice<f32>>,
}

struct GpuAdapter {
    alpha: f32,
    pairs: Vec<Option<GpuPair>>,
    head: Option<DMat>,
}

/// The active adapters of an [`AdapterSet`] on the device, with their user scales.
#[derive(Default)]
pub struct GpuAdapters {
    list: Vec<(GpuAdapter, f32)>,
    n_layers: usize,
}

impl GpuAdapters {
    /// No adapters.
    pub fn none() -> GpuAdapters {
        GpuAdapters::default()
    }

    /// Upload every active adapter of `set` (its A, B, DoRA factors and replacement head),
    /// keeping the set's order and scales.
    ///
    /// # Errors
    /// [`CudaError::Invalid`] for an adapter bound to another layer count or a type without
    /// kernels, [`CudaError::Driver`].
    pub fn upload(gpu: &Gpu, set: &AdapterSet<'_, '_, '_>, n_layers: usize) -> Result<GpuAdapters> {
        let mut list = vec![];
        for (ad, scale) in set.iter() {
            if ad.n_layers() != n_layers {
                return invalid("adapter was bound to a model with another layer count");
            }
            let mut pairs = Vec::with_capacity(n_layers * LINEARS);
            for l in 0..n_layers {
                for k in 0..LINEARS {
                    pairs.push(match ad.pair(l, k) {
                        None => None,
                        Some(p) => Some(GpuPair {
                            a: DMat::upload(gpu, &p.a)?,
                            b: DMat::upload(gpu, &p.b)?,
                            dora: p.dora.map(|d| gpu.upload(&f32s(d))).transpose()?,
                        }),
                    });
                }
            }
            let head = ad.head().map(|h| DMat::upload(gpu, h)).transpose()?;
            list.push((
                GpuAdapter {
                    alpha: ad.alpha(),
                    pairs,
                    head,
                },
                scale,
            ));
        }
        Ok(GpuAdapters { list, n_layers })
    }

    /// The replacement head of the first adapter that has one (as `AdapterSet::head`).
    fn head(&self) -> Option<&DMat> {
        self.list.iter().find_map(|(a, _)| a.head.as_ref())
    }
}

/// Device buffers for a batch of up to `batch` tokens and a KV cache of `ctx` positions.
pub struct GpuState {
    ctx: usize,
    batch: usize,
    filled: usize,
    x: CudaSlice<f32>,
    xb: CudaSlice<f32>,
    q: CudaSlice<f32>,
    att_out: CudaSlice<f32>,
    hb: CudaSlice<f32>,
    hb2: CudaSlice<f32>,
    tmp: CudaSlice<f32>,
    logits: CudaSlice<f32>,
    kc: CudaSlice<f32>,
    vc: CudaSlice<f32>,
    table: CudaSlice<f32>,
    ids: CudaSlice<i32>,
}

impl GpuState {
    /// Allocate for `cfg`, `ctx` positions and batches of up to `batch` tokens.
    ///
    /// # Errors
    /// [`CudaError::Invalid`] for `ctx`/`batch` of 0 or `ctx` above the model's,
    /// [`CudaError::Driver`] (out of memory).
    pub fn new(gpu: &Gpu, cfg: &Config, ctx: usize, batch: usize) -> Result<GpuState> {
        if ctx == 0 || batch == 0 || ctx > cfg.ctx_len {
            return invalid(format!(
                "state: ctx {ctx} (1..={}), batch {batch} (>= 1)",
                cfg.ctx_len
            ));
        }
        let b = batch.min(ctx);
        let kv = cfg.n_layers * ctx * cfg.kv_dim();
        Ok(GpuState {
            ctx,
            batch: b,
            filled: 0,
            x: gpu.zeros(b * cfg.dim)?,
            xb: gpu.zeros(b * cfg.dim)?,
            q: gpu.zeros(b * cfg.q_dim())?,
            att_out: gpu.zeros(b * cfg.q_dim())?,
            hb: gpu.zeros(b * cfg.ffn_dim)?,
            hb2: gpu.zeros(b * cfg.ffn_dim)?,
            tmp: gpu.zeros(b * MAX_RANK)?,
            logits: gpu.zeros(b * cfg.vocab)?,
            kc: gpu.zeros(kv)?,
            vc: gpu.zeros(kv)?,
            table: gpu.zeros(b * cfg.rope_dims)?,
            ids: gpu.upload(&vec![0i32; b])?,
        })
    }

    /// Positions in the KV cache.
    pub fn len(&self) -> usize {
        self.filled
    }

    /// True if the KV cache is empty.
    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }
}

/// What a GPU forward returns.
#[derive(Clone, Debug, Default)]
pub struct GpuOutput {
    /// Per layer, the residual stream after it, `n x dim` (empty unless traced).
    pub hidden: Vec<Vec<f32>>,
    /// `n x vocab` logits.
    pub logits: Vec<f32>,
}

macro_rules! view {
    ($s:expr, $r:expr) => {
        $s.try_slice($r)
            .ok_or_else(|| CudaError::Invalid("buffer range".into()))?
    };
}
macro_rules! view_mut {
    ($s:expr, $r:expr) => {
        $s.try_slice_mut($r)
            .ok_or_else(|| CudaError::Invalid("buffer range".into()))?
    };
}

impl GpuModel {
    /// Run `tokens` at positions `start..start+n` (in batches of the state's size) and return
    /// the logits of every position, and with `trace` every layer's residual stream.
    ///
    /// # Errors
    /// [`CudaError::Invalid`] for an empty list, a token outside the vocabulary, `start` past
    /// the filled cache, or positions beyond the state's context; [`CudaError::Driver`].
    pub fn forward(
        &self,
        gpu: &Gpu,
        st: &mut GpuState,
        tokens: &[u32],
        start: usize,
        ads: &GpuAdapters,
        trace: bool,
    ) -> Result<GpuOutput> {
        let c = &self.cfg;
        if tokens.is_empty() {
            return invalid("no tokens");
        }
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
            return invalid(format!("token {t} outside the vocabulary ({})", c.vocab));
        }
        if start > st.filled || start + tokens.len() > st.ctx {
            return invalid(format!(
                "positions {start}..{} with {} filled of {}",
                start + tokens.len(),
                st.filled,
                st.ctx
            ));
        }
        if !ads.list.is_empty() && ads.n_layers != c.n_layers {
            return invalid("adapters were uploaded for another layer count");
        }
        let mut out = GpuOutput {
            hidden: vec![vec![]; if trace { c.n_layers } else { 0 }],
            logits: Vec::with_capacity(tokens.len() * c.vocab),
        };
        for (i, chunk) in tokens.chunks(st.batch).enumerate() {
            self.batch(gpu, st, chunk, start + i * st.batch, ads, &mut out)?;
        }
        Ok(out)
    }

    /// LoRA on `y` (`n x rows`) for linear `k` of layer `l`, as `AdapterSet::apply`: per
    /// adapter, `tmp = A x`, `y += (user * alpha / r) B tmp`, then DoRA's row factors.
    #[allow(clippy::too_many_arguments)]
    fn lora(
        &self,
        gpu: &Gpu,
        ads: &GpuAdapters,
        l: usize,
        k: usize,
        x: &CudaView<'_, f32>,
        n: usize,
        y: &mut CudaViewMut<'_, f32>,
        tmp: &mut CudaSlice<f32>,
    ) -> Result<()> {
        for (ad, user) in &ads.list {
            let Some(p) = ad.pairs.get(l * LINEARS + k).and_then(|p| p.as_ref()) else {
                continue;
            };
            let r = p.a.rows;
            let s = user * ad.alpha / r as f32;
            gpu.matmul(&p.a, x, n, &mut view_mut!(tmp, 0..n * r), 1.0, false)?;
            gpu.matmul(&p.b, &view!(tmp, 0..n * r), n, y, s, true)?;
            if let Some(g) = &p.dora {
                gpu.row_scale(y, g, p.b.rows, n)?;
            }
        }
        Ok(())
    }

    fn batch(
        &self,
        gpu: &Gpu,
        st: &mut GpuState,
        tokens: &[u32],
        p0: usize,
        ads: &GpuAdapters,
        out: &mut GpuOutput,
    ) -> Result<()> {
        let c = &self.cfg;
        let m = tokens.len();
        let (dim, qd, kvd, ffn, hd, ctx) =
            (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim, c.head_dim, st.ctx);
        // Token ids and this batch's rope tables (computed as the CPU does, in f64 by libm).
        let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        gpu.stream.memcpy_htod(&ids, &mut view_mut!(st.ids, 0..m))?;
        let mut table = vec![0f32; m * c.rope_dims];
        for (i, row) in table.chunks_exact_mut(c.rope_dims).enumerate() {
            rope_table(row, p0 + i, c.rope_base, c.rope_dims);
        }
        gpu.stream
            .memcpy_htod(&table, &mut view_mut!(st.table, 0..m * c.rope_dims))?;

        // x = token_embd[tokens]                                                  (m, dim)
        gpu.get_rows(
            &self.embd,
            &view!(st.ids, 0..m),
            m,
            &mut view_mut!(st.x, 0..m * dim),
        )?;
        for (l, w) in self.layers.iter().enumerate() {
            let kv_at = (l * ctx + p0) * kvd..(l * ctx + p0 + m) * kvd; //         (m, kv_dim)
            let kv_layer = l * ctx * kvd..(l * ctx + p0 + m) * kvd; //               (p0+m, kv_dim)
            gpu.rmsnorm(
                &view!(st.x, 0..m * dim),
                &w.attn_norm,
                &mut view_mut!(st.xb, 0..m * dim),
                m,
                dim,
                c.rms_eps,
            )?;
            let xb = view!(st.xb, 0..m * dim);
            gpu.matmul(
                &w.lin[0],
                &xb,
                m,
                &mut view_mut!(st.q, 0..m * qd),
                1.0,
                false,
            )?;
            self.lora(
                gpu,
                ads,
                l,
                0,
                &xb,
                m,
                &mut view_mut!(st.q, 0..m * qd),
                &mut st.tmp,
            )?;
            gpu.matmul(
                &w.lin[1],
                &xb,
                m,
                &mut view_mut!(st.kc, kv_at.clone()),
                1.0,
                false,
            )?;
            self.lora(
                gpu,
                ads,
                l,
                1,
                &xb,
                m,
                &mut view_mut!(st.kc, kv_at.clone()),
                &mut st.tmp,
            )?;
            gpu.matmul(
                &w.lin[2],
                &xb,
                m,
                &mut view_mut!(st.vc, kv_at.clone()),
                1.0,
                false,
            )?;
            self.lora(
                gpu,
                ads,
                l,
                2,
                &xb,
                m,
                &mut view_mut!(st.vc, kv_at.clone()),
                &mut st.tmp,
            )?;
            let table = view!(st.table, 0..m * c.rope_dims);
            gpu.rope(
                &mut view_mut!(st.q, 0..m * qd),
                m,
                qd,
                c.n_heads,
                hd,
                &table,
                c.rope_dims / 2,
            )?;
            gpu.rope(
                &mut view_mut!(st.kc, kv_at.clone()),
                m,
                kvd,
                c.n_kv_heads,
                hd,
                &table,
                c.rope_dims / 2,
            )?;
            gpu.attention(
                &view!(st.q, 0..m * qd),
                &view!(st.kc, kv_layer.clone()),
                &view!(st.vc, kv_layer),
                &mut view_mut!(st.att_out, 0..m * qd),
                m,
                (c.n_heads, c.n_kv_heads),
                hd,
                p0,
            )?;
            let ao = view!(st.att_out, 0..m * qd);
            gpu.matmul(
                &w.lin[3],
                &ao,
                m,
                &mut view_mut!(st.xb, 0..m * dim),
                1.0,
                false,
            )?;
            self.lora(
                gpu,
                ads,
                l,
                3,
                &ao,
                m,
                &mut view_mut!(st.xb, 0..m * dim),
                &mut st.tmp,
            )?;
            gpu.add(
                &mut view_mut!(st.x, 0..m * dim),
                &view!(st.xb, 0..m * dim),
                m * dim,
            )?;

            gpu.rmsnorm(
                &view!(st.x, 0..m * dim),
                &w.ffn_norm,
                &mut view_mut!(st.xb, 0..m * dim),
                m,
                dim,
                c.rms_eps,
            )?;
            let xb = view!(st.xb, 0..m * dim);
            gpu.matmul(
                &w.lin[4],
                &xb,
                m,
                &mut view_mut!(st.hb, 0..m * ffn),
                1.0,
                false,
            )?;
            self.lora(
                gpu,
                ads,
                l,
                4,
                &xb,
                m,
                &mut view_mut!(st.hb, 0..m * ffn),
                &mut st.tmp,
            )?;
            gpu.matmul(
                &w.lin[5],
                &xb,
                m,
                &mut view_mut!(st.hb2, 0..m * ffn),
                1.0,
                false,
            )?;
            self.lora(
                gpu,
                ads,
                l,
                5,
                &xb,
                m,
                &mut view_mut!(st.hb2, 0..m * ffn),
                &mut st.tmp,
            )?;
            gpu.swiglu(
                &mut view_mut!(st.hb, 0..m * ffn),
                &view!(st.hb2, 0..m * ffn),
                m * ffn,
            )?;
            let hb = view!(st.hb, 0..m * ffn);
            gpu.matmul(
                &w.lin[6],
                &hb,
                m,
                &mut view_mut!(st.xb, 0..m * dim),
                1.0,
                false,
            )?;
            self.lora(
                gpu,
                ads,
                l,
                6,
                &hb,
                m,
                &mut view_mut!(st.xb, 0..m * dim),
                &mut st.tmp,
            )?;
            gpu.add(
                &mut view_mut!(st.x, 0..m * dim),
                &view!(st.xb, 0..m * dim),
                m * dim,
            )?;
            if let Some(h) = out.hidden.get_mut(l) {
                h.extend(gpu.download(&st.x, m * dim)?);
            }
        }
        gpu.rmsnorm(
            &view!(st.x, 0..m * dim),
            &self.output_norm,
            &mut view_mut!(st.xb, 0..m * dim),
            m,
            dim,
            c.rms_eps,
        )?;
        let head = ads.head().or(self.output.as_ref()).unwrap_or(&self.embd);
        gpu.matmul(
            head,
            &view!(st.xb, 0..m * dim),
            m,
            &mut view_mut!(st.logits, 0..m * c.vocab),
            1.0,
            false,
        )?;
        out.logits.extend(gpu.download(&st.logits, m * c.vocab)?);
        gpu.sync()?;
        st.filled = p0 + m;
        Ok(())
    }
}
