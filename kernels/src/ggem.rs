//! GGeM (Group Generalized Mean) pooling over tokens: the CUDA source, its
//! launch configuration, the launch itself and the f64 reference.
//!
//! For tokens `x[b, n, c]` with channels split into `G` contiguous groups and
//! one exponent `p_g >= 1` per group:
//!
//! ```text
//! y[b, c] = ( (1/N) * sum_n max(x[b, n, c], eps) ^ p_g(c) ) ^ (1 / p_g(c))
//! ```
//!
//! The kernels compute `x^p` as `2^(p * log2 x)` in fp32 and carry the sum in
//! the log domain, as `s * 2^m` with `m` the largest exponent seen, so that
//! neither large inputs (60000^8 overflows fp32 once summed) nor channels
//! below eps (eps^8 underflows) lose the result. [`ggem_reference`] uses the
//! same identity in f64. `cuda/ggem.cu` documents the work split.
//!
//! [`GgemKernels`] holds both kernels loaded into a CUDA context and makes
//! every launch: it checks the device views against the shape, computes the
//! [`GgemLaunch`] ([`launch_config`]), passes the arguments in the order
//! `cuda/ggem.cu` declares them (checked against the PTX when it loads),
//! and keeps one scratch per stream for launches that split the tokens
//! across blocks. The scratch is zeroed once, when it is allocated or grown,
//! never per launch: the kernels leave their counters at zero (the protocol
//! is at the top of `cuda/ggem.cu`), and every workspace slot a launch reads
//! it wrote first. [`GgemParams`] holds a head's exponents on the device.
//!
//! The launch, as [`GgemKernels::launch`] makes it:
//!
//! ```text
//! grid = launch.grid, block = launch.block, no dynamic shared memory
//! args = x, y, p, inv_p, B, N, C, G, eps, launch.vec_tile, launch.rows_per_split,
//!        workspace (launch.workspace_len f32), counters (launch.counters_len u32)
//! ```
//!
//! `x` must be 16-byte aligned and finite (an infinite input makes NaN).

use std::sync::{Arc, Mutex, PoisonError};

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr,
    DriverError as CudaError, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use thiserror::Error;

/// The CUDA C source of both kernels.
pub const SOURCE: &str = include_str!("../cuda/ggem.cu");

/// File name of [`SOURCE`], for compiler diagnostics.
pub const SOURCE_NAME: &str = "ggem.cu";

/// fp16 in, fp16 out, fp32 arithmetic.
pub const KERNEL_F16: &str = "ggem_f16";

/// fp32 in, fp32 out.
pub const KERNEL_F32: &str = "ggem_f32";

/// Every kernel defined by [`SOURCE`].
pub const KERNELS: [&str; 2] = [KERNEL_F16, KERNEL_F32];

/// The PTX types of both kernels' parameters, in the order of the list at
/// the top of [`SOURCE`]: `x, y, p, inv_p` (pointers), `B, N, C, G`, `eps`,
/// `vec_tile, rows_per_split`, `workspace, counters` (pointers). What
/// [`GgemKernels::launch`] passes; [`GgemKernels::load`] refuses PTX whose
/// entries declare anything else.
pub const PTX_PARAMS: [&str; 13] =
    [".u64", ".u64", ".u64", ".u64", ".u32", ".u32", ".u32", ".u32", ".f32", ".u32", ".u32", ".u64", ".u64"];

/// The clamp floor of the model's GGeM head.
pub const EPS: f32 = 1e-6;

/// Channels per lane; the group size must be a multiple of it.
pub const VEC: usize = 8;

/// Most threads per block (`GGEM_MAX_THREADS` in the source).
pub const MAX_THREADS: u32 = 256;

/// Blocks per SM that [`launch_config`] aims for, splitting the tokens of
/// each image when the batch alone does not reach it.
pub const BLOCKS_PER_SM: u32 = 4;

/// Largest grid.y and grid.z a launch may use.
const MAX_GRID_YZ: usize = 65_535;

/// Why sizes or exponents cannot be pooled.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum GgemError {
    #[error("expected non-zero sizes but got B = {batch}, N = {tokens}, C = {channels}, G = {groups}")]
    Empty { batch: usize, tokens: usize, channels: usize, groups: usize },
    #[error("expected C divisible by G but C = {channels} and G = {groups}")]
    Groups { channels: usize, groups: usize },
    #[error(
        "expected a group size that is a multiple of {VEC} but C / G = {channels} / {groups} = {group_size}"
    )]
    GroupSize { channels: usize, groups: usize, group_size: usize },
    #[error("expected at most {max} for {what} but got {got}")]
    TooLarge { what: &'static str, max: usize, got: usize },
    #[error("expected one exponent per group ({groups}) but got {got}")]
    ExponentCount { groups: usize, got: usize },
    #[error("expected finite exponents >= 1 but p[{group}] = {value}")]
    Exponent { group: usize, value: f32 },
    #[error("expected a finite eps > 0 but got {0}")]
    Eps(f32),
    #[error("expected B * N * C = {expected} input elements but got {got}")]
    InputLength { expected: usize, got: usize },
}

/// Why the kernels could not be loaded or launched.
#[derive(Debug, Error)]
pub enum GgemLaunchError {
    #[error(transparent)]
    Shape(#[from] GgemError),
    #[error("expected {expected} bytes of {what} but the device view holds {got}")]
    ViewLength { what: &'static str, expected: usize, got: usize },
    #[error("expected tokens 16-byte aligned but they start at {address:#x}")]
    Misaligned { address: u64 },
    #[error("expected a stream of the context the GGeM kernels were loaded into")]
    OtherContext,
    /// `found` is the parameter list the PTX declares, or that it has no
    /// such entry.
    #[error(
        "expected the PTX's {kernel} to take {PTX_PARAMS:?} but {found}: it was not compiled from this ggem.cu"
    )]
    Signature { kernel: &'static str, found: String },
    #[error("{call} failed: {error}")]
    Cuda { call: &'static str, error: CudaError },
}

fn cuda<T>(call: &'static str, r: Result<T, CudaError>) -> Result<T, GgemLaunchError> {
    r.map_err(|error| GgemLaunchError::Cuda { call, error })
}

/// Validated pooling sizes: `batch` images of `tokens` tokens of `channels`
/// channels in `groups` groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgemShape {
    pub batch: usize,
    pub tokens: usize,
    pub channels: usize,
    pub groups: usize,
}

impl GgemShape {
    /// Checks that the sizes are non-zero, that `C` splits into `G` groups
    /// whose size is a multiple of 8, and that they fit the kernels' index
    /// types and grid limits.
    pub fn new(batch: usize, tokens: usize, channels: usize, groups: usize) -> Result<Self, GgemError> {
        if batch == 0 || tokens == 0 || channels == 0 || groups == 0 {
            return Err(GgemError::Empty { batch, tokens, channels, groups });
        }
        if !channels.is_multiple_of(groups) {
            return Err(GgemError::Groups { channels, groups });
        }
        let group_size = channels / groups;
        if !group_size.is_multiple_of(VEC) {
            return Err(GgemError::GroupSize { channels, groups, group_size });
        }
        let int_max = i32::MAX as usize;
        for (what, max, got) in
            [("B (grid.z)", MAX_GRID_YZ, batch), ("N", int_max, tokens), ("C", int_max, channels)]
        {
            if got > max {
                return Err(GgemError::TooLarge { what, max, got });
            }
        }
        Ok(Self { batch, tokens, channels, groups })
    }

    /// Channels per group, a multiple of 8.
    pub fn group_size(&self) -> usize {
        self.channels / self.groups
    }

    /// Elements of the input `[B, N, C]`.
    pub fn input_len(&self) -> usize {
        self.batch * self.tokens * self.channels
    }

    /// Elements of the output `[B, C]`.
    pub fn output_len(&self) -> usize {
        self.batch * self.channels
    }

    /// Checks one exponent per group, each finite and >= 1.
    pub fn check_exponents(&self, p: &[f32]) -> Result<(), GgemError> {
        if p.len() != self.groups {
            return Err(GgemError::ExponentCount { groups: self.groups, got: p.len() });
        }
        check_exponent_values(p)
    }
}

fn check_exponent_values(p: &[f32]) -> Result<(), GgemError> {
    match p.iter().position(|v| !(v.is_finite() && *v >= 1.0)) {
        Some(group) => Err(GgemError::Exponent { group, value: p[group] }),
        None => Ok(()),
    }
}

fn check_eps(eps: f32) -> Result<(), GgemError> {
    if eps.is_finite() && eps > 0.0 {
        Ok(())
    } else {
        Err(GgemError::Eps(eps))
    }
}

/// `1 / p` per group, the kernels' `inv_p` argument.
pub fn inverse_exponents(p: &[f32]) -> Vec<f32> {
    p.iter().map(|v| 1.0 / v).collect()
}

/// Grid, block and buffer sizes of one launch of [`KERNEL_F16`] or
/// [`KERNEL_F32`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgemLaunch {
    /// `[channel tiles, token splits, batch]`.
    pub grid: [u32; 3],
    /// `[vec_tile * row_walkers, 1, 1]`.
    pub block: [u32; 3],
    /// Lanes per row walker, each loading 8 channels: a walker covers
    /// `8 * vec_tile` channels of a token row.
    pub vec_tile: u32,
    /// Row walkers per block, each walking every `row_walkers`-th token.
    pub row_walkers: u32,
    /// Tokens per split; the last split may have fewer, none has zero.
    pub rows_per_split: u32,
    /// f32 elements of the workspace, `B * splits * 2 * C`; zero (pass null)
    /// with a single split.
    pub workspace_len: usize,
    /// u32 elements of the counters, `B * channel tiles`; zero (pass null)
    /// with a single split.
    pub counters_len: usize,
}

impl GgemLaunch {
    pub fn channel_tiles(&self) -> u32 {
        self.grid[0]
    }

    pub fn splits(&self) -> u32 {
        self.grid[1]
    }

    pub fn threads_per_block(&self) -> u32 {
        self.block[0]
    }

    pub fn blocks(&self) -> u64 {
        self.grid.iter().map(|&g| u64::from(g)).product()
    }
}

/// The launch of GGeM over `[b, n, c]` in `groups` groups on a GPU with
/// `sm_count` multiprocessors (0 is taken as 1).
///
/// A block has at most [`MAX_THREADS`] lanes of 8 channels, so it spans up to
/// 2048 channels of a row; wider rows are cut into equal channel tiles, and
/// narrower ones leave room for several row walkers per block. The tokens of
/// each image are then split across blocks until the grid holds about
/// [`BLOCKS_PER_SM`] blocks per SM, so batch 1 still reaches every SM, but
/// never so far that a row walker would be left without a token.
pub fn launch_config(
    b: usize,
    n: usize,
    c: usize,
    groups: usize,
    sm_count: u32,
) -> Result<GgemLaunch, GgemError> {
    let shape = GgemShape::new(b, n, c, groups)?;
    Ok(shape_launch(&shape, sm_count))
}

fn shape_launch(shape: &GgemShape, sm_count: u32) -> GgemLaunch {
    let max_threads = MAX_THREADS as usize;
    let vecs = shape.channels / VEC;
    let tiles = vecs.div_ceil(max_threads);
    let vec_tile = vecs.div_ceil(tiles);
    let row_walkers = (max_threads / vec_tile).max(1);
    let threads = vec_tile * row_walkers;

    let per_split = shape.batch * tiles;
    let target = sm_count.max(1) as usize * BLOCKS_PER_SM as usize;
    let wanted = target.div_ceil(per_split);
    let most = shape.tokens.div_ceil(row_walkers).min(MAX_GRID_YZ);
    let rows_per_split = shape.tokens.div_ceil(wanted.clamp(1, most));
    let splits = shape.tokens.div_ceil(rows_per_split);

    let (workspace_len, counters_len) =
        if splits > 1 { (shape.batch * splits * 2 * shape.channels, per_split) } else { (0, 0) };
    // Every cast below is bounded: tiles and vec_tile by C / 8 < 2^31,
    // threads by MAX_THREADS, splits by MAX_GRID_YZ and B by GgemShape::new.
    GgemLaunch {
        grid: [tiles as u32, splits as u32, shape.batch as u32],
        block: [threads as u32, 1, 1],
        vec_tile: vec_tile as u32,
        row_walkers: row_walkers as u32,
        rows_per_split: rows_per_split as u32,
        workspace_len,
        counters_len,
    }
}

/// The element type of the tokens and the output: [`KERNEL_F16`] or
/// [`KERNEL_F32`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Float {
    F16,
    F32,
}

impl Float {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Float::F16 => 2,
            Float::F32 => 4,
        }
    }
}

/// The parameter types of `.entry <kernel>(` in `ptx`, in order (`.u64`,
/// `.f32`, ...), or `None` when the PTX has no such entry.
pub fn ptx_params(ptx: &str, kernel: &str) -> Option<Vec<String>> {
    let entry = format!(".entry {kernel}(");
    let list = &ptx[ptx.find(&entry)? + entry.len()..];
    let list = &list[..list.find(')')?];
    Some(
        list.split(',')
            .filter(|param| !param.trim().is_empty())
            .map(|param| param.split_whitespace().nth(1).unwrap_or_default().to_string())
            .collect(),
    )
}

/// Both kernels of `ptx` take [`PTX_PARAMS`].
fn check_signature(ptx: &str) -> Result<(), GgemLaunchError> {
    for kernel in KERNELS {
        let found = match ptx_params(ptx, kernel) {
            Some(params) if params == PTX_PARAMS => continue,
            Some(params) => format!("it declares {params:?}"),
            None => "it has no such entry".to_string(),
        };
        return Err(GgemLaunchError::Signature { kernel, found });
    }
    Ok(())
}

/// A GGeM head's constants on the device: one exponent `p` per group, their
/// reciprocals and the clamp floor.
#[derive(Debug)]
pub struct GgemParams {
    p: CudaSlice<f32>,
    inv_p: CudaSlice<f32>,
    eps: f32,
}

impl GgemParams {
    /// Checks `p` (finite, >= 1) and `eps` (finite, > 0), copies `p` and
    /// `1 / p` to the device on `stream` and waits for the copies, so that
    /// launches on any stream of the context may read them.
    pub fn upload(stream: &Arc<CudaStream>, p: &[f32], eps: f32) -> Result<GgemParams, GgemLaunchError> {
        check_exponent_values(p)?;
        check_eps(eps)?;
        let params = GgemParams {
            p: cuda("cuMemcpyHtoDAsync", stream.clone_htod(p))?,
            inv_p: cuda("cuMemcpyHtoDAsync", stream.clone_htod(&inverse_exponents(p)))?,
            eps,
        };
        cuda("cuStreamSynchronize", stream.synchronize())?;
        Ok(params)
    }

    /// The number of groups, one exponent each.
    pub fn groups(&self) -> usize {
        self.p.len()
    }
}

/// Both GGeM kernels loaded into one CUDA context, and the scratch of every
/// stream that has launched them with the tokens split across blocks (a
/// stream's entry goes when the stream is gone and another one arrives).
#[derive(Debug)]
pub struct GgemKernels {
    context: Arc<CudaContext>,
    f16: CudaFunction,
    f32: CudaFunction,
    sm_count: u32,
    scratch: Mutex<Vec<Scratch>>,
}

/// One stream's workspace and counters (`cuda/ggem.cu`, "Split merge and
/// counters"). Both are zeroed when allocated; the counters are zero again
/// after every launch and the workspace needs no value, so a launch uses
/// them as they are, on the stream they belong to, which orders it after
/// every earlier launch that used them.
#[derive(Debug)]
struct Scratch {
    stream: Arc<CudaStream>,
    workspace: CudaSlice<f32>,
    counters: CudaSlice<u32>,
}

impl Scratch {
    fn new(stream: &Arc<CudaStream>, launch: &GgemLaunch) -> Result<Scratch, GgemLaunchError> {
        Ok(Scratch {
            stream: stream.clone(),
            workspace: cuda("cuMemAllocAsync", stream.alloc_zeros(launch.workspace_len))?,
            counters: cuda("cuMemAllocAsync", stream.alloc_zeros(launch.counters_len))?,
        })
    }

    /// Grows whichever buffer is smaller than `launch` needs. The buffer it
    /// replaces is freed in stream order, after the launches that used it.
    fn fit(&mut self, launch: &GgemLaunch) -> Result<(), GgemLaunchError> {
        if self.workspace.len() < launch.workspace_len {
            self.workspace = cuda("cuMemAllocAsync", self.stream.alloc_zeros(launch.workspace_len))?;
        }
        if self.counters.len() < launch.counters_len {
            self.counters = cuda("cuMemAllocAsync", self.stream.alloc_zeros(launch.counters_len))?;
        }
        Ok(())
    }

    /// Whether nothing but this entry holds its stream, so that no launch
    /// can come on it again: the only handles left are the entry's own and
    /// the one each buffer keeps to the stream it was allocated on. Were
    /// an entry still in use dropped, it would cost only a new allocation:
    /// its frees are ordered on its own stream.
    fn orphaned(&self) -> bool {
        Arc::strong_count(&self.stream) <= 3
    }
}

impl GgemKernels {
    /// Loads `ptx`, compiled from [`SOURCE`], into `context`, after checking
    /// that both kernels take [`PTX_PARAMS`].
    pub fn load(context: &Arc<CudaContext>, ptx: String) -> Result<GgemKernels, GgemLaunchError> {
        check_signature(&ptx)?;
        let sm_count = cuda(
            "cuDeviceGetAttribute(MULTIPROCESSOR_COUNT)",
            context.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
        )?;
        let module = cuda("cuModuleLoadData", context.load_module(Ptx::from_src(ptx)))?;
        Ok(GgemKernels {
            context: context.clone(),
            f16: cuda("cuModuleGetFunction(ggem_f16)", module.load_function(KERNEL_F16))?,
            f32: cuda("cuModuleGetFunction(ggem_f32)", module.load_function(KERNEL_F32))?,
            sm_count: u32::try_from(sm_count).unwrap_or(1).max(1),
            scratch: Mutex::default(),
        })
    }

    /// The device's multiprocessors, which [`launch_config`] spreads the
    /// blocks over.
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    /// Queues GGeM of `x` (`[B, N, C]` row-major, `float` elements, 16-byte
    /// aligned) into `y` (`[B, C]`) on `stream`, with `params`' exponents
    /// and eps, and returns the launch it made. Launches on one stream run
    /// in order and share that stream's scratch; launches on different
    /// streams each have their own, so they may overlap.
    pub fn launch(
        &self,
        stream: &Arc<CudaStream>,
        float: Float,
        shape: &GgemShape,
        params: &GgemParams,
        x: &CudaView<'_, u8>,
        y: &mut CudaViewMut<'_, u8>,
    ) -> Result<GgemLaunch, GgemLaunchError> {
        if !Arc::ptr_eq(stream.context(), &self.context) {
            return Err(GgemLaunchError::OtherContext);
        }
        if params.groups() != shape.groups {
            return Err(GgemError::ExponentCount { groups: shape.groups, got: params.groups() }.into());
        }
        for (what, expected, got) in [
            ("tokens [B, N, C]", shape.input_len() * float.size(), x.len()),
            ("output [B, C]", shape.output_len() * float.size(), y.len()),
        ] {
            if got != expected {
                return Err(GgemLaunchError::ViewLength { what, expected, got });
            }
        }
        let address = x.device_ptr(stream).0;
        if address % 16 != 0 {
            return Err(GgemLaunchError::Misaligned { address });
        }

        let launch = shape_launch(shape, self.sm_count);
        let function = match float {
            Float::F16 => &self.f16,
            Float::F32 => &self.f32,
        };
        // GgemShape::new bounds B, N and C (so G) below i32::MAX, and
        // vec_tile and rows_per_split are at most C / 8 and N.
        let sizes = [shape.batch, shape.tokens, shape.channels, shape.groups].map(|v| v as i32);
        let (vec_tile, rows_per_split) = (launch.vec_tile as i32, launch.rows_per_split as i32);
        let null: u64 = 0;

        let mut cache = self.scratch.lock().unwrap_or_else(PoisonError::into_inner);
        let scratch = if launch.splits() > 1 {
            let at = match cache.iter().position(|s| Arc::ptr_eq(&s.stream, stream)) {
                Some(at) => {
                    cache[at].fit(&launch)?;
                    at
                }
                None => {
                    cache.retain(|s| !s.orphaned());
                    cache.push(Scratch::new(stream, &launch)?);
                    cache.len() - 1
                }
            };
            Some(&cache[at])
        } else {
            None
        };

        let mut call = stream.launch_builder(function);
        call.arg(x).arg(y).arg(&params.p).arg(&params.inv_p);
        for size in &sizes {
            call.arg(size);
        }
        call.arg(&params.eps).arg(&vec_tile).arg(&rows_per_split);
        match scratch {
            Some(scratch) => call.arg(&scratch.workspace).arg(&scratch.counters),
            None => call.arg(&null).arg(&null),
        };
        let config = LaunchConfig {
            grid_dim: launch.grid.into(),
            block_dim: launch.block.into(),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments are PTX_PARAMS in order and type: four device
        // pointers, four i32 sizes, the f32 eps, two i32 launch sizes and two
        // device pointers (null only with one split, where the kernels do not
        // touch them); `load` checked the PTX declares exactly these. The
        // views were checked above to hold B*N*C and B*C elements of `float`
        // and x to be 16-byte aligned; the exponents are G floats; the
        // workspace and counters hold at least the lengths launch_config
        // gave, on this stream, with the counters at zero (the kernels leave
        // them so), and the lock keeps them alive until the launch is queued.
        // The block is at most MAX_THREADS, the kernels' launch bound.
        cuda("cuLaunchKernel(ggem)", unsafe { call.launch(config) })?;
        Ok(launch)
    }
}

/// GGeM of `x` (`[b, n, c]`, row-major) in f64, the ground truth of the
/// kernels. `p` holds one exponent per group (its length is `G`) and `eps` is
/// the clamp floor; both are taken at their f32 values, as the kernels see
/// them. Returns `y` as `[b, c]`.
///
/// Per channel, with `t_n = p * log2(max(x_n, eps))` and `M = max_n t_n`:
/// `y = 2^((M + log2(sum_n 2^(t_n - M)) - log2 N) / p)`, which is the
/// definition rewritten so that no power overflows or underflows.
pub fn ggem_reference(
    x: &[f32],
    b: usize,
    n: usize,
    c: usize,
    p: &[f32],
    eps: f32,
) -> Result<Vec<f64>, GgemError> {
    let shape = GgemShape::new(b, n, c, p.len())?;
    shape.check_exponents(p)?;
    check_eps(eps)?;
    if x.len() != shape.input_len() {
        return Err(GgemError::InputLength { expected: shape.input_len(), got: x.len() });
    }

    let group_size = shape.group_size();
    let eps = f64::from(eps);
    let log2_n = (n as f64).log2();
    let mut y = vec![0.0; shape.output_len()];
    let mut t = vec![0.0f64; n];
    for (image, out) in x.chunks_exact(n * c).zip(y.chunks_exact_mut(c)) {
        for (ch, y) in out.iter_mut().enumerate() {
            let pg = f64::from(p[ch / group_size]);
            for (tok, t) in t.iter_mut().enumerate() {
                *t = pg * f64::from(image[tok * c + ch]).max(eps).log2();
            }
            let m = t.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = t.iter().map(|t| (t - m).exp2()).sum();
            *y = ((m + s.log2() - log2_n) / pg).exp2();
        }
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::XorShift;
    use crate::Tolerance;

    /// The definition, computed directly in f64. Fine for inputs whose
    /// powers stay within f64's range.
    fn direct(x: &[f32], b: usize, n: usize, c: usize, p: &[f32], eps: f32) -> Vec<f64> {
        let gs = c / p.len();
        let mut y = vec![0.0; b * c];
        for bi in 0..b {
            for ch in 0..c {
                let pg = f64::from(p[ch / gs]);
                let sum: f64 =
                    (0..n).map(|ni| f64::from(x[(bi * n + ni) * c + ch]).max(f64::from(eps)).powf(pg)).sum();
                y[bi * c + ch] = (sum / n as f64).powf(1.0 / pg);
            }
        }
        y
    }

    /// The buffers a stream's launches share: `workspace` holds whatever the
    /// last launch left (never cleared), `counters` must stay zero between
    /// launches.
    struct Scratch {
        workspace: Vec<f32>,
        counters: Vec<u32>,
    }

    impl Scratch {
        fn new() -> Scratch {
            Scratch { workspace: Vec::new(), counters: Vec::new() }
        }

        /// Grows each buffer that is too small for `launch`, as a stream's
        /// scratch on the GPU grows: counters zeroed, the workspace poisoned
        /// with NaN so that a slot read before it is written shows.
        fn fit(&mut self, launch: &GgemLaunch) {
            if self.workspace.len() < launch.workspace_len {
                self.workspace = vec![f32::NAN; launch.workspace_len];
            }
            if self.counters.len() < launch.counters_len {
                self.counters = vec![0; launch.counters_len];
            }
        }
    }

    fn merge(m: &mut f32, s: &mut f32, m2: f32, s2: f32) {
        let (hi, lo) = (m.max(m2), m.min(m2));
        let scale = if lo == f32::NEG_INFINITY { 0.0 } else { (lo - hi).exp2() };
        *s = if *m >= m2 { s2.mul_add(scale, *s) } else { s.mul_add(scale, s2) };
        *m = hi;
    }

    /// One block `(b, tile, split)` of the kernels up to the split merge: its
    /// row walkers with GGEM_UNROLL-row chunks and their in-block merge.
    /// Returns the block's pair per channel of the tile and counts every
    /// input element it reads in `seen`.
    fn emulate_block(
        x: &[f32],
        shape: &GgemShape,
        p: &[f32],
        eps: f32,
        launch: &GgemLaunch,
        (b, tile, split): (usize, usize, usize),
        seen: &mut [u32],
    ) -> Vec<(f32, f32)> {
        const UNROLL: usize = 4; // GGEM_UNROLL
        let (n, c) = (shape.tokens, shape.channels);
        let gs = shape.group_size();
        let vec_tile = launch.vec_tile as usize;
        let walkers = launch.row_walkers as usize;
        let rps = launch.rows_per_split as usize;
        let (n0, n1) = (split * rps, ((split + 1) * rps).min(n));
        assert!(n0 < n1, "split {split} is empty: {launch:?}");
        // Per walker and channel of the tile: (m, s).
        let mut pairs = vec![(f32::NEG_INFINITY, 0.0f32); walkers * vec_tile * VEC];
        for w in 0..walkers {
            for lane in 0..vec_tile {
                let vec = tile * vec_tile + lane;
                if vec >= c / VEC {
                    continue;
                }
                let pg = p[vec * VEC / gs];
                let mut tok = n0 + w;
                while tok < n1 {
                    for k in 0..VEC {
                        let ch = vec * VEC + k;
                        let t: Vec<f32> = (0..UNROLL)
                            .map(|u| tok + u * walkers)
                            .filter(|&nu| nu < n1)
                            .map(|nu| {
                                seen[(b * n + nu) * c + ch] += 1;
                                pg * x[(b * n + nu) * c + ch].max(eps).log2()
                            })
                            .collect();
                        let mc = t.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let sc: f32 = t.iter().map(|t| (t - mc).exp2()).sum();
                        let (m, s) = &mut pairs[(w * vec_tile + lane) * VEC + k];
                        merge(m, s, mc, sc);
                    }
                    tok += walkers * UNROLL;
                }
            }
        }
        (0..vec_tile * VEC)
            .map(|i| {
                let (mut m, mut s) = pairs[i];
                for w in 1..walkers {
                    let (m2, s2) = pairs[w * vec_tile * VEC + i];
                    merge(&mut m, &mut s, m2, s2);
                }
                (m, s)
            })
            .collect()
    }

    /// The kernels' algorithm in f32, one block at a time in the order
    /// `order` shuffles them into, through `scratch` as the kernels use
    /// their workspace and counters: a split block stores its pairs and
    /// counts itself in, and the block that arrives last merges the splits
    /// in split order, applies the root and sets its counter back to zero.
    /// It checks that the launch configuration covers every element once,
    /// that the last block reads only workspace slots its launch wrote, and
    /// that the log-domain arithmetic holds in f32.
    fn emulate(
        x: &[f32],
        shape: &GgemShape,
        p: &[f32],
        eps: f32,
        launch: &GgemLaunch,
        order: &mut XorShift,
        scratch: &mut Scratch,
    ) -> Vec<f32> {
        let (n, c) = (shape.tokens, shape.channels);
        let gs = shape.group_size();
        let inv_p = inverse_exponents(p);
        let tile_channels = launch.vec_tile as usize * VEC;
        let (tiles, splits) = (launch.channel_tiles() as usize, launch.splits() as usize);
        let log2_n = (n as f32).log2();
        let root = |ch: usize, (m, s): (f32, f32)| ((m + s.log2() - log2_n) * inv_p[ch / gs]).exp2();
        let mut y = vec![f32::NAN; shape.output_len()];
        let mut seen = vec![0u32; shape.batch * n * c];

        let mut blocks: Vec<(usize, usize, usize)> = (0..shape.batch)
            .flat_map(|b| (0..tiles).flat_map(move |tile| (0..splits).map(move |split| (b, tile, split))))
            .collect();
        for i in (1..blocks.len()).rev() {
            blocks.swap(i, order.next_u32() as usize % (i + 1));
        }
        assert!(scratch.workspace.len() >= launch.workspace_len, "{launch:?}");
        assert!(scratch.counters.len() >= launch.counters_len, "{launch:?}");
        // What the last block of a (b, tile) may read: the slots stored in this launch.
        let mut stored = vec![false; launch.workspace_len];
        for (b, tile, split) in blocks {
            let pairs = emulate_block(x, shape, p, eps, launch, (b, tile, split), &mut seen);
            let channels = (tile * tile_channels..((tile + 1) * tile_channels).min(c)).zip(pairs);
            if splits == 1 {
                for (ch, pair) in channels {
                    y[b * c + ch] = root(ch, pair);
                }
                continue;
            }
            let ws = (b * splits + split) * 2 * c;
            for (ch, (m, s)) in channels {
                (scratch.workspace[ws + ch], scratch.workspace[ws + c + ch]) = (m, s);
                (stored[ws + ch], stored[ws + c + ch]) = (true, true);
            }
            let counter = &mut scratch.counters[b * tiles + tile];
            let arrived = *counter;
            *counter += 1;
            if arrived as usize != splits - 1 {
                continue;
            }
            *counter = 0;
            let ws_b = b * splits * 2 * c;
            for ch in tile * tile_channels..((tile + 1) * tile_channels).min(c) {
                let read = |sp: usize| {
                    let at = ws_b + sp * 2 * c + ch;
                    assert!(
                        stored[at] && stored[at + c],
                        "split {sp} of {ch} read before written: {launch:?}"
                    );
                    (scratch.workspace[at], scratch.workspace[at + c])
                };
                let (mut m, mut s) = read(0);
                for sp in 1..splits {
                    let (m2, s2) = read(sp);
                    merge(&mut m, &mut s, m2, s2);
                }
                y[b * c + ch] = root(ch, (m, s));
            }
        }
        assert!(seen.iter().all(|&k| k == 1), "every input element must be read exactly once: {launch:?}");
        assert!(scratch.counters.iter().all(|&k| k == 0), "counters left non-zero: {launch:?}");
        y
    }

    fn check_launch_invariants(shape: &GgemShape, sm_count: u32) {
        let l = shape_launch(shape, sm_count);
        let what = format!("{shape:?} on {sm_count} SMs: {l:?}");
        let vecs = shape.channels / VEC;
        let (tiles, splits) = (l.channel_tiles() as usize, l.splits() as usize);
        let (vec_tile, rps) = (l.vec_tile as usize, l.rows_per_split as usize);

        assert!(l.threads_per_block() >= 1 && l.threads_per_block() <= MAX_THREADS, "{what}");
        assert_eq!(l.threads_per_block(), l.vec_tile * l.row_walkers, "{what}");
        assert_eq!(l.block[1..], [1, 1], "{what}");
        // Channel tiles cover every 8-channel vector, with no empty tile.
        assert!(tiles * vec_tile >= vecs && (tiles - 1) * vec_tile < vecs, "{what}");
        // Splits cover every token, with no empty split.
        assert!(splits * rps >= shape.tokens && (splits - 1) * rps < shape.tokens, "{what}");
        // No row walker is left idle by the split, unless N itself is short.
        assert!(rps >= shape.tokens.min(l.row_walkers as usize), "{what}");
        assert!(splits <= MAX_GRID_YZ && shape.batch <= MAX_GRID_YZ, "{what}");
        assert_eq!(l.grid[2] as usize, shape.batch, "{what}");
        if splits > 1 {
            assert_eq!(l.workspace_len, shape.batch * splits * 2 * shape.channels, "{what}");
            assert_eq!(l.counters_len, shape.batch * tiles, "{what}");
        } else {
            assert_eq!((l.workspace_len, l.counters_len), (0, 0), "{what}");
        }
        // The grid reaches the block target whenever the tokens allow (up to
        // the rounding of rows_per_split) and overshoots it by less than one
        // round of splits.
        let target = u64::from(sm_count.max(1)) * u64::from(BLOCKS_PER_SM);
        let per_split = (shape.batch * tiles) as u64;
        let most = shape.tokens.div_ceil(l.row_walkers as usize).min(MAX_GRID_YZ) as u64;
        assert!(2 * l.blocks() >= target.min(per_split * most), "{what}");
        assert!(splits == 1 || l.blocks() < target + per_split, "{what}");
    }

    #[test]
    fn constants_match_the_source() {
        for (define, value) in
            [("GGEM_MAX_THREADS", MAX_THREADS as usize), ("GGEM_VEC", VEC), ("GGEM_UNROLL", 4)]
        {
            let line = format!("#define {define} {value}\n");
            assert!(SOURCE.contains(&line), "ggem.cu lacks `{}`", line.trim());
        }
        for kernel in KERNELS {
            assert!(
                SOURCE.contains(&format!("__global__ void __launch_bounds__(GGEM_MAX_THREADS) {kernel}("))
            );
        }
    }

    #[test]
    fn launch_config_invariants_hold_over_many_shapes() {
        for &(b, n, c, g) in &[
            (1, 196, 192, 3),
            (1, 197, 384, 6),
            (64, 196, 768, 12),
            (1, 1, 8, 1),
            (1, 7, 8, 1),
            (2, 3, 4096, 8),
            (3, 1000, 2056, 257),
            (1, 100_000, 16, 2),
            (65_535, 2, 64, 8),
            (7, 50, 2048, 256),
            (1, 4096, 16_384, 1),
        ] {
            let shape = GgemShape::new(b, n, c, g).unwrap();
            for sm in [0, 1, 8, 16, 132, 1000] {
                check_launch_invariants(&shape, sm);
            }
        }
    }

    #[test]
    fn batch_one_fills_the_sms() {
        // ViT-Ti on a 132-SM H200: tokens cap the split at one per walker.
        let l = launch_config(1, 196, 192, 3, 132).unwrap();
        assert_eq!((l.vec_tile, l.row_walkers, l.block[0]), (24, 10, 240));
        assert_eq!(l.splits(), 20, "{l:?}");
        // ViT-B on Orin: 64 blocks wanted, rows_per_split rounds 196 / 64 up.
        let l = launch_config(1, 196, 768, 12, 16).unwrap();
        assert_eq!((l.block[0], l.rows_per_split, l.splits()), (192, 4, 49), "{l:?}");
        // A large batch needs no split.
        let l = launch_config(1024, 196, 768, 12, 16).unwrap();
        assert_eq!((l.splits(), l.workspace_len, l.counters_len), (1, 0, 0));
    }

    #[test]
    fn wide_rows_are_cut_into_equal_tiles() {
        let l = launch_config(1, 196, 4104, 513, 132).unwrap();
        assert_eq!((l.channel_tiles(), l.vec_tile, l.row_walkers), (3, 171, 1));
    }

    #[test]
    fn shape_validation_names_the_problem() {
        let err = GgemShape::new(1, 196, 190, 3).unwrap_err();
        assert_eq!(err.to_string(), "expected C divisible by G but C = 190 and G = 3");
        let err = GgemShape::new(1, 196, 192, 16).unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected a group size that is a multiple of 8 but C / G = 192 / 16 = 12"
        );
        assert!(matches!(GgemShape::new(0, 1, 8, 1), Err(GgemError::Empty { .. })));
        assert!(matches!(GgemShape::new(65_536, 1, 8, 1), Err(GgemError::TooLarge { .. })));
        let shape = GgemShape::new(1, 4, 16, 2).unwrap();
        assert_eq!(
            shape.check_exponents(&[1.0]).unwrap_err().to_string(),
            "expected one exponent per group (2) but got 1"
        );
        assert_eq!(
            shape.check_exponents(&[3.0, 0.5]).unwrap_err().to_string(),
            "expected finite exponents >= 1 but p[1] = 0.5"
        );
        assert!(shape.check_exponents(&[3.0, f32::NAN]).is_err());
        assert!(shape.check_exponents(&[1.0, 8.0]).is_ok());
        assert_eq!(
            ggem_reference(&[1.0; 3], 1, 4, 16, &[1.0, 2.0], EPS).unwrap_err(),
            GgemError::InputLength { expected: 64, got: 3 }
        );
        assert_eq!(ggem_reference(&[1.0; 64], 1, 4, 16, &[1.0, 2.0], 0.0).unwrap_err(), GgemError::Eps(0.0));
    }

    #[test]
    fn reference_matches_the_definition() {
        let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15);
        let (b, n, c) = (2, 37, 48);
        let x: Vec<f32> = (0..b * n * c).map(|_| rng.uniform(-2.0, 6.0)).collect();
        let p = [1.0, 2.5, 3.0, 4.0, 6.0, 8.0];
        let y = ggem_reference(&x, b, n, c, &p, EPS).unwrap();
        let d = direct(&x, b, n, c, &p, EPS);
        Tolerance::Close.check(&y, &d, &[b, c]).unwrap();
        for (a, e) in y.iter().zip(&d) {
            assert!((a - e).abs() <= 1e-12 * e.abs(), "{a} vs {e}");
        }
    }

    #[test]
    fn reference_special_values() {
        // p = 1 is the mean of the clamped values; a constant channel pools
        // to itself; a channel entirely below eps pools to eps.
        let x =
            [[1.0, 4.0, -3.0, 1e-9, 0.0, 0.0, 0.0, 0.0], [5.0, 4.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0]].concat();
        let y = ggem_reference(&x, 1, 2, 8, &[1.0], EPS).unwrap();
        let eps = f64::from(EPS);
        assert!((y[0] - 3.0).abs() < 1e-12, "{y:?}");
        assert!((y[1] - 4.0).abs() < 1e-12, "{y:?}");
        assert!((y[2] - eps).abs() < 1e-18, "{y:?}");
        assert!((y[3] - eps).abs() < 1e-18, "{y:?}");
        let y = ggem_reference(&[0.0; 64], 1, 8, 8, &[8.0], EPS).unwrap();
        assert!(y.iter().all(|v| (v - eps).abs() < 1e-18), "{y:?}");
    }

    #[test]
    fn reference_survives_powers_beyond_f64() {
        // f32::MAX^9 overflows f64, so the definition cannot be evaluated
        // directly; that token dominates the sum, so y = MAX * 196^(-1/9).
        let n = 196;
        let mut x = vec![60_000.0f32; n * 8];
        x[5 * 8] = f32::MAX;
        let y = ggem_reference(&x, 1, n, 8, &[9.0], EPS).unwrap();
        let expect = f64::from(f32::MAX) * (n as f64).powf(-1.0 / 9.0);
        assert!((y[0] - expect).abs() <= 1e-12 * expect, "{} vs {expect}", y[0]);
        assert!(y[1..].iter().all(|&v| (v - 60_000.0).abs() < 1e-9), "{y:?}");
    }

    /// The f32 emulation of the kernels against the reference, on the shapes
    /// the GPU harness runs and on extremes: inputs up to 60000, negatives,
    /// channels entirely below eps, p from 1 to 8.
    #[test]
    fn kernel_algorithm_matches_reference() {
        let mut rng = XorShift::new(0x2545_f491_4f6c_dd1d);
        for &(b, n, c, g, sm) in &[
            (1, 196, 192, 3, 132),
            (1, 197, 384, 6, 132),
            (2, 196, 768, 12, 16),
            (2, 197, 384, 48, 132),
            (1, 5, 4104, 513, 8),
            (1, 1, 8, 1, 132),
        ] {
            let shape = GgemShape::new(b, n, c, g).unwrap();
            let p: Vec<f32> = (0..g).map(|i| 1.0 + 7.0 * i as f32 / (g - 1).max(1) as f32).collect();
            let mut x: Vec<f32> = (0..b * n * c).map(|_| rng.uniform(-1.0, 4.0)).collect();
            for bi in 0..b {
                for ni in 0..n {
                    let row = &mut x[(bi * n + ni) * c..][..c];
                    // Channel 0: large values; channel 1: all below eps;
                    // channel 2: negatives with one huge outlier token.
                    row[0] = rng.uniform(30_000.0, 60_000.0);
                    row[1] = rng.uniform(-1.0, 9e-7);
                    row[2] = if ni == n / 2 { 60_000.0 } else { -rng.uniform(0.0, 5.0) };
                }
            }
            let launch = shape_launch(&shape, sm);
            let mut scratch = Scratch::new();
            scratch.fit(&launch);
            let got = emulate(&x, &shape, &p, EPS, &launch, &mut XorShift::new(3), &mut scratch);
            assert!(got.iter().all(|v| v.is_finite()), "{shape:?}: {got:?}");
            let got: Vec<f64> = got.into_iter().map(f64::from).collect();
            let want = ggem_reference(&x, b, n, c, &p, EPS).unwrap();
            if let Err(e) = Tolerance::Close.check(&got, &want, &[b, c]) {
                panic!("{launch:?}: {e}");
            }
        }
    }

    /// One scratch, zeroed once and grown when a launch needs more, serves
    /// launches of every shape in a row, whatever order their blocks run in:
    /// the counters are back at zero after each launch and the result does
    /// not depend on the order.
    #[test]
    fn one_scratch_serves_every_launch_on_a_stream() {
        let mut rng = XorShift::new(0x5851_f42d_4c95_7f2d);
        let mut scratch = Scratch::new();
        // Growing, shrinking and unsplit launches, on the sizes of a large
        // GPU and of a small one.
        for &(b, n, c, g, sm) in &[
            (1, 196, 192, 3, 132),
            (2, 197, 384, 6, 132),
            (1, 196, 192, 3, 132),
            (64, 196, 768, 12, 16),
            (1, 50, 4104, 513, 8),
            (3, 37, 64, 8, 132),
            (1, 196, 192, 3, 16),
        ] {
            let shape = GgemShape::new(b, n, c, g).unwrap();
            let launch = shape_launch(&shape, sm);
            let p: Vec<f32> = (0..g).map(|i| 1.0 + (i % 8) as f32).collect();
            let x: Vec<f32> = (0..b * n * c).map(|_| rng.uniform(-1.0, 8.0)).collect();
            scratch.fit(&launch);
            let first = emulate(&x, &shape, &p, EPS, &launch, &mut XorShift::new(11), &mut scratch);
            let again = emulate(&x, &shape, &p, EPS, &launch, &mut XorShift::new(12), &mut scratch);
            let bits = |y: &[f32]| y.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&first), bits(&again), "block order changed the result: {launch:?}");
            let got: Vec<f64> = first.into_iter().map(f64::from).collect();
            let want = ggem_reference(&x, b, n, c, &p, EPS).unwrap();
            if let Err(e) = Tolerance::Close.check(&got, &want, &[b, c]) {
                panic!("{launch:?}: {e}");
            }
        }
        assert!(scratch.counters.len() > 1 && scratch.workspace.len() > 1);
    }

    /// PTX as NVRTC writes an entry's parameter list, for the two kernels.
    fn ptx_with(params: &[&str]) -> String {
        KERNELS
            .iter()
            .map(|kernel| {
                let list: Vec<String> = params
                    .iter()
                    .enumerate()
                    .map(|(i, t)| format!("\t.param {t} {kernel}_param_{i}"))
                    .collect();
                format!(".visible .entry {kernel}(\n{}\n)\n.maxntid 256, 1, 1\n{{\n}}\n", list.join(",\n"))
            })
            .collect()
    }

    #[test]
    fn ptx_of_another_parameter_list_is_refused() {
        assert_eq!(ptx_params(&ptx_with(&PTX_PARAMS), KERNEL_F32).unwrap(), PTX_PARAMS);
        check_signature(&ptx_with(&PTX_PARAMS)).unwrap();
        // One parameter fewer: a ggem.cu from before the counters.
        let older = ptx_with(&PTX_PARAMS[..12]);
        let err = check_signature(&older).unwrap_err().to_string();
        assert!(err.starts_with("expected the PTX's ggem_f16 to take [\".u64\""), "{err}");
        assert!(err.ends_with("it was not compiled from this ggem.cu"), "{err}");
        let mut swapped = PTX_PARAMS;
        swapped.swap(8, 9);
        assert!(check_signature(&ptx_with(&swapped)).is_err());
        let only_f16 = ptx_with(&PTX_PARAMS).replace("ggem_f32", "ggem_f64");
        let err = check_signature(&only_f16).unwrap_err().to_string();
        assert!(err.contains("ggem_f32") && err.contains("it has no such entry"), "{err}");
        assert_eq!(ptx_params(".entry ggem_f16()\n", KERNEL_F16).unwrap(), Vec::<String>::new());
    }
}
