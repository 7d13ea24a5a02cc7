//! The command line: verbs, their flags (one `Args` struct per stage,
//! flattened into the verbs), and what each verb does with the library.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::backend::cpu::{Kernel, QKernel};
use crate::backend::{select_backend, Backend};
use crate::board::{BackendChoice, Board, BoardArgs, DEVICE_BOARD_FILE};
use crate::bundle::{Bundle, SignaturePolicy};
use crate::create::{create, CreateOptions, Created, Quantize};
use crate::display::DisplayArgs;
use crate::embedded;
use crate::engine::{Engine, EngineOptions};
use crate::eval::{evaluate, Idx};
use crate::keys::{SecretKey, TrustStore, DEFAULT_TRUST_DIR};
use crate::manifest::{InputSpec, Layout, Precision};
use crate::pipeline::LoopOptions;
use crate::postprocess::{Prediction, Ranked, Scored, TopK};
use crate::preprocess::Image;
use crate::source::SourceArgs;
use crate::update::agent::{self, Applied, UpdateOptions};
use crate::update::fetch::Timeouts;
use crate::update::slots::{Slot, StateDir};
use crate::update::{channel, parse_duration, DEFAULT_STATE_DIR};

#[derive(Debug, Parser)]
#[command(name = "edgevit", version, about = "Classify images with a quantized Vision Transformer")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The main job: classify a camera, files or a pattern and show the result.
    Run(Box<RunArgs>),
    /// Classify image files and print `NN.NN% label` lines.
    Classify(ClassifyArgs),
    /// Accuracy on an idx-format test set (e.g. Fashion-MNIST `t10k-*.gz`).
    Eval(EvalArgs),
    /// Latency percentiles, throughput, cold start and peak memory.
    Bench(BenchArgs),
    /// Create, sign, verify and inspect model bundles.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Remote model updates: publish a channel, check, apply, status, roll back.
    #[command(subcommand)]
    Update(UpdateCommand),
    /// List the board profiles built in (or show the one in force with --current).
    Boards {
        #[command(flatten)]
        board: BoardArgs,
        /// Show only the profile in force: --board, --board-file or /etc/edgevit/board.toml.
        #[arg(long)]
        current: bool,
        /// One JSON object per board.
        #[arg(long)]
        json: bool,
    },
    /// What this machine offers the GPU path (driver, devices, NVRTC) and
    /// which backend `auto` picks, and why.
    Doctor {
        #[command(flatten)]
        board: BoardArgs,
    },
}

/// Which public keys to trust.
#[derive(Debug, Args)]
pub struct TrustArgs {
    /// Trust this public key file (repeatable), in addition to `--trust-dir`.
    #[arg(long = "trust", value_name = "KEY.pub")]
    pub trust: Vec<PathBuf>,
    /// Directory of trusted `*.pub` keys.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_TRUST_DIR)]
    pub trust_dir: PathBuf,
}

impl TrustArgs {
    pub fn store(&self) -> Result<TrustStore> {
        TrustStore::load(&self.trust, Some(&self.trust_dir))
    }
}

/// Which bundle to load and which keys to trust.
#[derive(Debug, Args)]
pub struct BundleArgs {
    /// Bundle directory or `.tar`. Without it: the bundle installed in
    /// `--state-dir`, else the default bundle built into the binary.
    #[arg(long = "bundle", value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// State directory of remote updates (slots a/b, `current`, `state.toml`)
    /// [default: /var/lib/edgevit when it holds an installed bundle].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Do not check the manifest signature (hashes are still checked). Logged.
    #[arg(long)]
    pub skip_signature: bool,
}

impl BundleArgs {
    fn policy(&self) -> SignaturePolicy {
        if self.skip_signature {
            SignaturePolicy::Skip
        } else {
            SignaturePolicy::Require
        }
    }

    /// The state directory whose `current` bundle runs: the given one, or the
    /// device's when it holds an installed bundle.
    pub fn state_dir(&self) -> Option<StateDir> {
        match &self.state_dir {
            Some(dir) => Some(StateDir::new(dir)),
            None => Some(StateDir::new(DEFAULT_STATE_DIR)).filter(StateDir::is_installed),
        }
    }

    /// Opens and verifies the chosen bundle and hands it to `load`. A bundle
    /// from the state directory that fails to open or load falls back to the
    /// last good slot.
    pub fn open_with<T>(&self, mut load: impl FnMut(Bundle) -> Result<T>) -> Result<T> {
        if let Some(path) = &self.path {
            return load(Bundle::open(path, &self.trust.store()?, self.policy())?);
        }
        match self.state_dir() {
            Some(dir) if dir.is_installed() => {
                let trust = self.trust.store()?;
                agent::open_active(&dir, |slot| load(Bundle::open(slot, &trust, self.policy())?))
            }
            Some(dir) => {
                log::info!("{}: no bundle installed yet; running the built-in default", dir.root.display());
                load(embedded::default_bundle()?)
            }
            None => load(embedded::default_bundle()?),
        }
    }

    /// Opens and verifies the chosen bundle.
    pub fn open(&self) -> Result<Bundle> {
        self.open_with(Ok)
    }
}

/// Where and how the network runs.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Where the network runs: `auto` takes CUDA where it can run and
    /// falls back to the CPU, saying why at info level. Default: the board
    /// profile's, else auto.
    #[arg(long, value_enum)]
    pub backend: Option<BackendChoice>,
    /// Run GGeM heads as the exported ops instead of the fused op (for comparison).
    #[arg(long)]
    pub no_fusion: bool,
    /// CPU threads for the network (0: every core). Default: the board
    /// profile's when one is in force, else 1.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Precision of the network's weights and activations (the input and
    /// logits stay f32). Default: f16 on cuda, f32 on cpu.
    #[arg(long, value_enum)]
    pub float: Option<Float>,
    /// Store the matrix products' weights as Q4_0 blocks (tract's block
    /// quantization, 4.5 bits a weight) when the model loads.
    #[arg(long)]
    pub block_quant: bool,
}

/// Float precision the network runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Float {
    F32,
    F16,
}

impl EngineArgs {
    pub fn options(&self) -> Result<EngineOptions> {
        self.options_on(None)
    }

    /// The options, taking what the command line leaves open from `board`.
    pub fn options_on(&self, board: Option<&Board>) -> Result<EngineOptions> {
        let choice = self.backend.or(board.map(|b| b.backend)).unwrap_or(BackendChoice::Auto);
        let threads = self.threads.or(board.map(|b| b.threads as usize)).unwrap_or(1);
        let backend = select_backend(choice, board)?;
        Ok(EngineOptions {
            backend,
            fuse_ggem: !self.no_fusion,
            threads,
            half: self.float.map_or(backend == Backend::Cuda, |f| f == Float::F16),
            block_quant: self.block_quant,
            ..EngineOptions::default()
        })
    }
}

/// How logits become the answer.
#[derive(Debug, Args)]
pub struct PostprocessArgs {
    /// Number of classes to report per image (0: all).
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Report only classes whose score is at least this (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub threshold: f32,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where frames come from: `v4l2:///dev/video0`, `file://DIR/`, `file://GLOB`,
    /// `file://clip.y4m`, `pattern://`. Default: `/dev/video0` when it exists.
    #[arg(value_name = "INPUT_URI")]
    pub input: Option<String>,
    /// Where results are shown: `fb:///dev/fb0`, `png://DIR`, `null://`. Default:
    /// the framebuffer when it exists, else PNGs in `out/run/`.
    #[arg(value_name = "OUTPUT_URI")]
    pub output: Option<String>,
    /// Show nothing (`null://`), only classify.
    #[arg(long, conflicts_with = "output")]
    pub headless: bool,
    /// Print the per-stage timing table every `--profile-every` frames.
    #[arg(long)]
    pub profile: bool,
    /// Frames between two `--profile` tables.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub profile_every: u64,
    /// Stop after N frames.
    #[arg(long, value_name = "N")]
    pub frames: Option<u64>,
    /// Average class probabilities over the last N frames (1: none).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub smoothing: u64,
    /// One JSON line per frame on stdout (frame index, model, top-1, label, score).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub board: BoardArgs,
    #[command(flatten)]
    pub update: RunUpdateArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub display: DisplayArgs,
    #[command(flatten)]
    pub bundle: BundleArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub post: PostprocessArgs,
}

/// Updates while `run` runs.
#[derive(Debug, Args)]
pub struct RunUpdateArgs {
    /// Poll this channel (`https://.../channel.toml`) and swap in each new
    /// version between two frames; installs into `--state-dir` (default
    /// /var/lib/edgevit).
    #[arg(long, value_name = "URL")]
    pub update_channel: Option<String>,
    /// Time between two polls, with up to 10% random jitter either way.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub update_interval: Duration,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// PNG or JPEG files.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub bundle: BundleArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub post: PostprocessArgs,
    /// One JSON object per image instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// idx images file (`.gz` or plain), dimensions [count, height, width].
    #[arg(long, value_name = "FILE")]
    pub idx_images: PathBuf,
    /// idx labels file, dimensions [count].
    #[arg(long, value_name = "FILE")]
    pub idx_labels: PathBuf,
    /// Evaluate only the first N images.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub bundle: BundleArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Timed runs.
    #[arg(long, default_value_t = 200)]
    pub iterations: usize,
    /// Untimed runs before timing.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Images per run (the model needs a free batch dimension for more than 1).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Then time every node for as many runs and report the time by kind of op.
    #[arg(long)]
    pub ops: bool,
    #[command(flatten)]
    pub bundle: BundleArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Package an ONNX classifier with its labels and input spec.
    Create(CreateArgs),
    /// Sign a bundle directory's manifest with a secret key.
    Sign {
        /// Bundle directory.
        dir: PathBuf,
        /// Secret key file (`.key`).
        #[arg(long, value_name = "KEY.key")]
        key: PathBuf,
    },
    /// Check signature, hashes, that the model loads and reproduces its golden output.
    Verify {
        #[command(flatten)]
        bundle: BundleArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Print what a bundle holds.
    Info {
        #[command(flatten)]
        bundle: BundleArgs,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Generate an ed25519 key pair `STEM.key` and `STEM.pub`.
    Keygen {
        /// Path without extension.
        #[arg(long, value_name = "STEM")]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// ONNX model: one f32 image input, one `[batch, classes]` output.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Labels, one per line in class order.
    #[arg(long, value_name = "FILE")]
    pub labels: PathBuf,
    /// Bundle name.
    #[arg(long)]
    pub name: String,
    /// Bundle version, strictly increasing across releases.
    #[arg(long)]
    pub version: u64,
    /// Free text.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Board families the bundle fits (repeatable); `any` fits all.
    #[arg(long, default_value = "any")]
    pub compatible: Vec<String>,
    /// Model input width.
    #[arg(long)]
    pub width: u32,
    /// Model input height.
    #[arg(long)]
    pub height: u32,
    /// Model input channels: 1 (luma) or 3 (RGB).
    #[arg(long, default_value_t = 3)]
    pub channels: u32,
    /// Per-channel mean on [0, 1] values, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub mean: Vec<f32>,
    /// Per-channel standard deviation, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub std: Vec<f32>,
    /// Input tensor layout.
    #[arg(long, value_enum, default_value_t = Layout::Nchw)]
    pub layout: Layout,
    /// Precision of the stored weights: `int8` for a model whose weights
    /// already are int8 per output channel (Cast + Mul or DequantizeLinear).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// Quantize an f32 model's weights (MatMul, Gemm, Conv) to int8, one
    /// scale per output channel, into the bundle's model; implies
    /// `--precision int8`. Each golden image is then also run on the f32
    /// model: the same top-1 is required, and logits within
    /// `--quantize-tolerance`.
    #[arg(long, value_enum, value_name = "PRECISION")]
    pub quantize: Option<Quantize>,
    /// With `--quantize`: the largest allowed difference of an int8 logit
    /// from the f32 model's, as a fraction of the image's largest f32 logit.
    #[arg(long, default_value_t = 0.1, value_name = "FRACTION")]
    pub quantize_tolerance: f32,
    /// Images whose outputs become the bundle's golden check (repeatable).
    #[arg(long = "golden-image", value_name = "IMAGE")]
    pub golden_images: Vec<PathBuf>,
    /// Allowed absolute logit difference in the golden check; for an int8
    /// model at least 5% of the largest golden logit, which the int8
    /// kernels of different CPUs may differ by.
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f32,
    /// Sign the new bundle with this secret key.
    #[arg(long, value_name = "KEY.key")]
    pub key: Option<PathBuf>,
    /// New bundle directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum UpdateCommand {
    /// Write a bundle's tarball and a signed channel pointing at it into a
    /// directory that any static web server can serve.
    Publish(PublishArgs),
    /// Fetch and verify the channel; say whether it offers a newer version.
    Check(AgentArgs),
    /// Download, verify, health-check and switch to the channel's version.
    Apply(AgentArgs),
    /// Print the state directory: active slot, versions, last error.
    Status {
        #[command(flatten)]
        state: StateArgs,
        /// Print `state.toml` as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Switch back to the last good slot (after checking it still loads).
    Rollback {
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        trust: TrustArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Signed bundle directory or `.tar` to publish.
    #[arg(long, value_name = "PATH")]
    pub bundle: PathBuf,
    /// Secret key that signs `channel.toml`.
    #[arg(long, value_name = "KEY.key")]
    pub key: PathBuf,
    /// Directory to write the tarball, `channel.toml` and `channel.sig` into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// How long devices believe this channel.
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = parse_duration)]
    pub expires: Duration,
    /// Keys the bundle's own signature may come from, besides `--key`'s.
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// The state directory of updates.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// Slots a/b, `current` and `state.toml` live here.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// URL of the channel: `https://host/path/channel.toml`, `http://...` or `file://...`.
    #[arg(long, value_name = "URL")]
    pub channel: String,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub trust: TrustArgs,
    #[command(flatten)]
    pub board: BoardArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

/// How updates are fetched, for `update check/apply` and `run --update-channel`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Fetching updates")]
pub struct FetchArgs {
    /// Give up a request after this long, body included.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Give up when no byte arrives for this long.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub stall_timeout: Duration,
    /// Refuse bundles larger than this many bytes, whatever the channel says.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
    pub max_bytes: u64,
}

impl FetchArgs {
    fn timeouts(&self) -> Timeouts {
        Timeouts { stall: self.stall_timeout, overall: self.timeout, ..Timeouts::default() }
    }
}

impl AgentArgs {
    fn options(&self) -> Result<UpdateOptions> {
        let board = self.board.current()?;
        Ok(UpdateOptions {
            channel_url: self.channel.clone(),
            trust: self.trust.store()?,
            engine: self.engine.options_on(board.as_ref())?,
            board,
            timeouts: self.fetch.timeouts(),
            max_bytes: self.fetch.max_bytes,
        })
    }
}

/// Runs a parsed command line. `started` is when `main` began.
pub fn run(cli: Cli, started: Instant) -> Result<()> {
    match cli.command {
        Command::Run(args) => run_loop(*args),
        Command::Classify(args) => classify(args),
        Command::Eval(args) => eval(args),
        Command::Bench(args) => bench(args, started),
        Command::Bundle(cmd) => bundle(cmd),
        Command::Update(cmd) => update(cmd),
        Command::Boards { board, current, json } => boards(&board, current, json),
        Command::Doctor { board } => doctor(&board),
    }
}

fn load(bundle: &BundleArgs, options: &EngineOptions) -> Result<(Bundle, Engine)> {
    bundle.open_with(|bundle| {
        let engine = Engine::load(&bundle, options)?;
        Ok((bundle, engine))
    })
}

/// The input URI: as given, else the board's camera, else the first camera
/// when there is one.
fn input_uri(given: Option<String>, board: Option<&Board>) -> Result<String> {
    match (given, board) {
        (Some(uri), _) => Ok(uri),
        (None, Some(b)) => Ok(b.camera.clone()),
        (None, None) if std::path::Path::new("/dev/video0").exists() => Ok("v4l2:///dev/video0".into()),
        (None, None) => bail!("no input: pass an INPUT_URI (there is no camera at /dev/video0)"),
    }
}

/// The output URI: as given, `null://` when headless, else the board's
/// display, else the framebuffer when there is one, else PNG snapshots in
/// `out/run/`.
fn output_uri(given: Option<String>, headless: bool, board: Option<&Board>) -> String {
    match (given, board) {
        (Some(uri), _) => uri,
        _ if headless => "null://".into(),
        (None, Some(b)) => b.display.clone(),
        (None, None) if std::path::Path::new("/dev/fb0").exists() => "fb:///dev/fb0".into(),
        (None, None) => {
            log::warn!("no framebuffer: writing overlay PNGs to out/run/");
            "png://out/run/".into()
        }
    }
}

fn run_loop(args: RunArgs) -> Result<()> {
    let board = args.board.current()?;
    let input = input_uri(args.input, board.as_ref())?;
    let output = output_uri(args.output, args.headless, board.as_ref());
    let engine_options = args.engine.options_on(board.as_ref())?;
    let (bundle, mut engine) = load(&args.bundle, &engine_options)?;
    if let Some(b) = &board {
        b.check_fits(&bundle)?;
    }
    let source = crate::source::open(&input, &args.source)?;
    let mut display = crate::display::open(&output, &args.display)?;
    log::info!(
        "run: {} -> {} ({})",
        source.describe(),
        display.describe(),
        if source.is_live() { "live: newest frame wins" } else { "every frame" }
    );
    let opts = LoopOptions {
        top_k: args.post.top_k,
        threshold: args.post.threshold,
        smoothing: args.smoothing as usize,
        profile_every: args.profile.then_some(args.profile_every),
        json: args.json,
        max_frames: args.frames,
    };
    let updates = match &args.update.update_channel {
        Some(url) => {
            let dir =
                StateDir::new(args.bundle.state_dir.clone().unwrap_or_else(|| DEFAULT_STATE_DIR.into()));
            let options = UpdateOptions {
                channel_url: url.clone(),
                trust: args.bundle.trust.store()?,
                board: board.clone(),
                timeouts: args.update.fetch.timeouts(),
                max_bytes: args.update.fetch.max_bytes,
                engine: engine_options,
            };
            Some(crate::update::poll(dir, options, args.update.update_interval)?)
        }
        None => None,
    };
    let mut stdout = std::io::stdout().lock();
    let summary =
        crate::pipeline::run(source, &mut engine, display.as_mut(), &opts, updates.as_ref(), &mut stdout)?;
    let int8 = engine.cpu.and_then(|cpu| cpu.int8()).map_or(String::new(), |int8| format!("int8: {int8}\n"));
    let text = format!(
        "{} frames, {} dropped, {:.1} FPS over {:.2} s\n{int8}{}",
        summary.frames,
        summary.dropped,
        summary.fps(),
        summary.seconds,
        summary.table()
    );
    if args.json {
        eprint!("{text}");
    } else {
        write!(stdout, "{text}")?;
    }
    Ok(())
}

fn classify(args: ClassifyArgs) -> Result<()> {
    let (_, mut engine) = load(&args.bundle, &args.engine.options()?)?;
    let mut topk = TopK::default();
    let mut ranked: Vec<Scored> = Vec::new();
    let mut out = std::io::stdout().lock();
    for path in &args.images {
        let img = Image::open(path)?;
        engine.set_image(img.view());
        let logits = engine.run()?.to_vec();
        topk.rank(&logits, args.post.top_k, args.post.threshold, &mut ranked);
        if args.json {
            let prediction = Prediction {
                image: Some(path.display().to_string()),
                frame: None,
                model: &engine.name,
                version: engine.version,
                backend: engine.backend.name(),
                top_k: Ranked::named(&ranked, &engine.labels),
                logits: &logits,
            };
            writeln!(out, "{}", serde_json::to_string(&prediction)?)?;
        } else {
            writeln!(out, "{}", path.display())?;
            for s in &ranked {
                writeln!(out, "{:6.2}% {}", s.score * 100.0, engine.labels[s.class])?;
            }
        }
    }
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    let images = Idx::open(&args.idx_images)?;
    let labels = Idx::open(&args.idx_labels)?;
    let (_, mut engine) = load(&args.bundle, &args.engine.options()?)?;
    let acc = evaluate(&mut engine, &images, &labels, args.limit)?;
    if args.json {
        let line = json!({
            "model": engine.name, "version": engine.version, "precision": engine.precision.name(),
            "backend": engine.backend.name(), "float": engine.float(), "block_quant": engine.block_quant, "correct": acc.correct, "total": acc.total,
            "accuracy": acc.percent(), "seconds": acc.seconds,
        });
        println!("{line}");
    } else {
        println!(
            "{} v{} {} on {} in {}: accuracy {:.2}% ({}/{}) in {:.1} s ({:.3} ms/image)",
            engine.name,
            engine.version,
            engine.precision.name(),
            engine.backend,
            engine.float(),
            acc.percent(),
            acc.correct,
            acc.total,
            acc.seconds,
            acc.seconds * 1e3 / acc.total.max(1) as f64
        );
    }
    Ok(())
}

fn bench(args: BenchArgs, started: Instant) -> Result<()> {
    let options = EngineOptions { batch: args.batch, ..args.engine.options()? };
    let (bundle, mut engine) = load(&args.bundle, &options)?;
    if let Some(golden) = bundle.golden() {
        for image in engine.input_mut().chunks_mut(golden.inputs[0].len()) {
            image.copy_from_slice(&golden.inputs[0]);
        }
    }
    engine.run()?;
    let first_result = started.elapsed();
    let mut report = crate::bench::run(&mut engine, args.warmup, args.iterations, first_result)?;
    if args.ops {
        report.ops = engine.profile_ops(args.iterations)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let r = &report;
        println!(
            "{} v{} {} on {} in {} ({} thread(s)), batch {}, {} iterations",
            r.model, r.version, r.precision, r.backend, r.float, r.threads, r.batch, r.iterations
        );
        println!("  latency      p50 {:.3} ms   p99 {:.3} ms   mean {:.3} ms", r.p50_ms, r.p99_ms, r.mean_ms);
        println!("  throughput   {:.1} images/s", r.throughput);
        println!("  cold start   {:.1} ms (main to first result)", r.cold_start_ms);
        println!("  peak RSS     {:.1} MiB", r.peak_rss_mib);
        if let Some(kernel) = r.cpu_kernel {
            println!("  cpu kernel   {kernel} (products and attention)");
        }
        if let Some(int8) = &r.int8 {
            println!("  int8         {int8}");
        }
        if !r.ops.is_empty() {
            println!("  by op (ms per run, nodes):");
            for op in &r.ops {
                println!("    {:>9.3}  {:>4}  {}", op.ms, op.count, op.op);
            }
        }
    }
    Ok(())
}

fn boards(args: &BoardArgs, current: bool, json: bool) -> Result<()> {
    let boards = if current {
        vec![args.current()?.ok_or_else(|| {
            anyhow::anyhow!("no board profile: pass --board or --board-file, or install {DEVICE_BOARD_FILE}")
        })?]
    } else {
        Board::builtin()
    };
    let mut out = std::io::stdout().lock();
    if json {
        for b in &boards {
            writeln!(out, "{}", serde_json::to_string(b)?)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<18} {:<26} {:>6} {:>5} {:>8} {:>6} {:>7} {:>7}  gpu path",
        "board", "target", "glibc", "sm", "jetpack", "cuda", "backend", "threads"
    )?;
    for b in &boards {
        let sm = b.cuda_arch.map_or("-".into(), |a| a.to_string());
        writeln!(
            out,
            "{:<18} {:<26} {:>6} {:>5} {:>8} {:>6} {:>7} {:>7}  {}",
            b.name,
            b.target,
            b.glibc,
            sm,
            b.jetpack.as_deref().unwrap_or("-"),
            b.cuda.as_deref().unwrap_or("-"),
            format!("{:?}", b.backend).to_lowercase(),
            if b.threads == 0 { "all".into() } else { b.threads.to_string() },
            if b.gpu_path() {
                "yes"
            } else if b.cuda.is_none() && b.backend == BackendChoice::Auto {
                "when present"
            } else {
                "no"
            }
        )?;
    }
    Ok(())
}

fn doctor(args: &BoardArgs) -> Result<()> {
    let board = args.current()?;
    let mut out = std::io::stdout().lock();
    match edgevit_kernels::driver::probe() {
        Ok(driver) => {
            writeln!(out, "driver    CUDA {}.{}", driver.cuda.0, driver.cuda.1)?;
            for d in &driver.devices {
                writeln!(
                    out,
                    "device {}  {}, compute capability {}.{}, {:.1} GiB",
                    d.ordinal,
                    d.name,
                    d.compute.0,
                    d.compute.1,
                    d.memory_bytes as f64 / (1u64 << 30) as f64
                )?;
            }
        }
        Err(e) => writeln!(out, "driver    {e}")?,
    }
    match edgevit_kernels::Nvrtc::load() {
        Ok(nvrtc) => {
            let (major, minor) = nvrtc.version();
            let archs: Vec<String> = nvrtc.supported_archs().iter().map(|a| format!("compute_{a}")).collect();
            writeln!(out, "nvrtc     {major}.{minor}, {}", archs.join(" "))?
        }
        Err(e) => writeln!(out, "nvrtc     {e}")?,
    }
    match &board {
        Some(b) => {
            writeln!(out, "board     {} (backend {})", b.name, format!("{:?}", b.backend).to_lowercase())?
        }
        None => {
            writeln!(out, "board     none (pass --board or --board-file, or install {DEVICE_BOARD_FILE})")?
        }
    }
    for library in edgevit_kernels::driver::probe_runtime_libraries() {
        writeln!(out, "library   {}", library.summary())?;
    }
    let store = edgevit_kernels::KernelStore::from_env();
    let cache = store.cache.as_ref().map_or("none (no HOME)".into(), |c| c.display().to_string());
    writeln!(out, "kernels   prebuilt {}, cache {cache}", store.prebuilt.display())?;
    let cpu: Vec<&str> = Kernel::available().iter().map(|k| k.name()).collect();
    writeln!(
        out,
        "cpu       {} products and attention (this CPU runs: {})",
        Kernel::detect().name(),
        cpu.join(", ")
    )?;
    match QKernel::detect() {
        Some(kernel) => {
            let int8: Vec<&str> = QKernel::available().iter().map(|k| k.name()).collect();
            writeln!(out, "int8      {} products (this CPU runs: {})", kernel.name(), int8.join(", "))?
        }
        None => writeln!(
            out,
            "int8      none: no fast int8 dot product on this CPU (arm64 asimddp, x86 AVX2 or VNNI); \
             int8 models run f32 products"
        )?,
    }
    match crate::backend::why_not_cuda(board.as_ref()) {
        None => writeln!(out, "auto      cuda")?,
        Some(why) => writeln!(out, "auto      cpu: {why}")?,
    }
    Ok(())
}

fn update(cmd: UpdateCommand) -> Result<()> {
    match cmd {
        UpdateCommand::Publish(a) => {
            let key = SecretKey::load(&a.key)?;
            let mut trust = a.trust.store()?;
            trust.add(key.public(), a.key.display().to_string());
            let p = channel::publish(&a.bundle, &trust, &key, &a.out, a.expires)?;
            let c = &p.channel;
            println!(
                "published {} v{}: {} ({} bytes, sha256 {}); {} expires {}",
                c.name,
                c.version,
                p.tarball.display(),
                c.size,
                c.sha256,
                a.out.join(channel::CHANNEL).display(),
                c.expires
            );
        }
        UpdateCommand::Check(a) => {
            let offer = agent::check(&StateDir::new(&a.state.state_dir), &a.options()?)?;
            println!("{offer}");
        }
        UpdateCommand::Apply(a) => match agent::apply(&StateDir::new(&a.state.state_dir), &a.options()?)? {
            Applied::Nothing(offer) => println!("{offer}"),
            Applied::Installed(installed) => println!("{installed}"),
        },
        UpdateCommand::Status { state, json } => {
            let dir = StateDir::new(&state.state_dir);
            let mut s = dir.load()?;
            // Report what the slots say, without writing: status is read-only.
            s.active = dir.active_slot()?;
            s.installed = s.active.and_then(|a| dir.slot_version(a));
            if json {
                println!("{}", serde_json::to_string(&s)?);
                return Ok(());
            }
            let slot = |slot: Option<Slot>, version: Option<u64>| match (slot, version) {
                (Some(s), Some(v)) => format!("slot {s}, v{v}"),
                (Some(s), None) => format!("slot {s}, unreadable"),
                _ => "none".into(),
            };
            println!("state dir    {}", dir.root.display());
            println!("active       {}", slot(s.active, s.installed));
            println!("last good    {}", slot(s.last_good, s.last_good_version));
            println!("highest      v{}", s.highest_version);
            if let Some(v) = s.rolled_back {
                println!("rolled back  v{v}");
            }
            println!("last error   {}", s.last_error.as_deref().unwrap_or("none"));
            println!("updated      {}", s.updated.as_deref().unwrap_or("never"));
        }
        UpdateCommand::Rollback { state, trust, engine } => {
            let dir = StateDir::new(&state.state_dir);
            println!("{}", agent::rollback(&dir, &trust.store()?, &engine.options()?)?);
        }
    }
    Ok(())
}

fn bundle(cmd: BundleCommand) -> Result<()> {
    match cmd {
        BundleCommand::Create(a) => {
            let input = InputSpec {
                width: a.width,
                height: a.height,
                channels: a.channels,
                mean: a.mean,
                std: a.std,
                layout: a.layout,
            };
            let opts = CreateOptions {
                model: a.model,
                labels: a.labels,
                name: a.name,
                version: a.version,
                description: a.description,
                compatible: a.compatible,
                input,
                precision: a.precision,
                golden_images: a.golden_images,
                tolerance: a.tolerance,
                quantize: a.quantize,
                quantize_tolerance: a.quantize_tolerance,
                key: a.key,
                out: a.out,
            };
            let Created { manifest: m, quantized } = create(&opts)?;
            let golden = m.golden.as_ref().map_or(0, |g| g.count);
            let signed = if opts.key.is_some() { "signed" } else { "unsigned: run `edgevit bundle sign`" };
            println!(
                "created {}: {} v{}, {} classes, {} golden images, {signed}",
                opts.out.display(),
                m.name,
                m.version,
                m.model.classes,
                golden
            );
            match quantized {
                Some((weights, _, _)) if golden == 0 => println!(
                    "quantized {weights} weights to int8 per output channel; not checked against the f32 \
                     model: that takes --golden-image"
                ),
                Some((weights, worst, relative)) => println!(
                    "quantized {weights} weights to int8 per output channel; against the f32 model on the \
                     golden images: same top-1, logits within {worst:.4} ({:.2}% of the largest)",
                    relative * 100.0
                ),
                None => {}
            }
        }
        BundleCommand::Sign { dir, key } => {
            let key = SecretKey::load(&key)?;
            let path = crate::bundle::sign_dir(&dir, &key)?;
            println!("signed {} ({})", dir.display(), path.display());
        }
        BundleCommand::Verify { bundle, engine } => {
            let (bundle, mut engine) = load(&bundle, &engine.options()?)?;
            let signer = bundle.verified.signature.as_deref().unwrap_or("not checked (--skip-signature)");
            let files = bundle.manifest.files.len();
            match engine.check_golden(&bundle)? {
                Some(report) if !report.passed() => {
                    bail!("bundle {}: {report}", bundle.origin);
                }
                Some(report) => {
                    println!("bundle {}: OK; signed by {signer}; {files} files; {report}", bundle.origin)
                }
                None => println!(
                    "bundle {}: OK; signed by {signer}; {files} files; no golden check",
                    bundle.origin
                ),
            }
        }
        BundleCommand::Info { bundle, json } => {
            let bundle = bundle.open()?;
            let m = &bundle.manifest;
            if json {
                println!("{}", serde_json::to_string(m)?);
            } else {
                let i = &m.input;
                println!("bundle   {}", bundle.origin);
                println!("name     {} v{}", m.name, m.version);
                if !m.description.is_empty() {
                    println!("about    {}", m.description);
                }
                println!(
                    "model    {} ({}, {} classes{})",
                    m.model.file,
                    m.model.precision.name(),
                    m.model.classes,
                    m.model.arch.as_ref().map(|a| format!(", {a}")).unwrap_or_default()
                );
                if let Some(p) = &m.model.pooling {
                    println!("pooling  {p} (groups {})", m.model.groups.unwrap_or(1));
                }
                println!(
                    "input    {}x{}x{} {} mean {:?} std {:?}",
                    i.width,
                    i.height,
                    i.channels,
                    i.layout.name(),
                    i.mean,
                    i.std
                );
                println!("fits     {}", m.compatible.join(", "));
                println!("signed   {}", bundle.verified.signature.as_deref().unwrap_or("not checked"));
                for (name, f) in &m.files {
                    println!("file     {name} {} bytes sha256 {}", f.size, f.sha256);
                }
            }
        }
        BundleCommand::Keygen { out } => {
            let key = SecretKey::generate();
            let (secret, public) = key.write_pair(&out, "edgevit ed25519 key")?;
            println!("wrote {} and {}", secret.display(), public.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine_args(threads: Option<usize>) -> EngineArgs {
        EngineArgs {
            backend: Some(BackendChoice::Cpu),
            no_fusion: false,
            threads,
            float: None,
            block_quant: false,
        }
    }

    #[test]
    fn threads_come_from_the_command_line_then_the_board_then_one() {
        let orin = Board::named("jetson-agx-orin").unwrap();
        assert_eq!(engine_args(Some(3)).options_on(Some(&orin)).unwrap().threads, 3);
        assert_eq!(engine_args(None).options_on(Some(&orin)).unwrap().threads, orin.threads as usize);
        assert_eq!(engine_args(None).options().unwrap().threads, 1);
    }
}
