//! `edgevit bundle`: create, sign, verify and inspect model bundles.

use std::fmt;
use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::bundle::Bundle;
use crate::create::{create, CreateOptions, Created, Quantize};
use crate::engine::EngineArgs;
use crate::keys::SecretKey;
use crate::manifest::{InputSpec, Layout, Precision};
use crate::update::BundleArgs;

#[derive(Debug, clap::Subcommand)]
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

#[derive(Debug, clap::Args)]
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

impl From<CreateArgs> for CreateOptions {
    fn from(a: CreateArgs) -> CreateOptions {
        CreateOptions {
            model: a.model,
            labels: a.labels,
            name: a.name,
            version: a.version,
            description: a.description,
            compatible: a.compatible,
            input: InputSpec {
                width: a.width,
                height: a.height,
                channels: a.channels,
                mean: a.mean,
                std: a.std,
                layout: a.layout,
            },
            precision: a.precision,
            golden_images: a.golden_images,
            tolerance: a.tolerance,
            quantize: a.quantize,
            quantize_tolerance: a.quantize_tolerance,
            key: a.key,
            out: a.out,
        }
    }
}

pub fn bundle(cmd: BundleCommand) -> Result<()> {
    match cmd {
        BundleCommand::Create(args) => {
            let opts = CreateOptions::from(args);
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
            let (bundle, mut engine) = bundle.load(&engine.options()?)?;
            let signer = bundle.verified.signature.as_deref().unwrap_or("not checked (--skip-signature)");
            let files = bundle.manifest.files.len();
            match engine.check_golden(&bundle)? {
                Some(report) if !report.passed() => bail!("bundle {}: {report}", bundle.origin),
                Some(report) => {
                    println!("bundle {}: OK; signed by {signer}; {files} files; {report}", bundle.origin)
                }
                None => {
                    println!(
                        "bundle {}: OK; signed by {signer}; {files} files; no golden check",
                        bundle.origin
                    )
                }
            }
        }
        BundleCommand::Info { bundle, json } => {
            let bundle = bundle.open()?;
            if json {
                println!("{}", serde_json::to_string(&bundle.manifest)?);
            } else {
                print!("{}", Info(&bundle));
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

/// `bundle info` in text: what the manifest says, one fact a line.
struct Info<'a>(&'a Bundle);

impl fmt::Display for Info<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bundle = self.0;
        let m = &bundle.manifest;
        let i = &m.input;
        writeln!(f, "bundle   {}", bundle.origin)?;
        writeln!(f, "name     {} v{}", m.name, m.version)?;
        if !m.description.is_empty() {
            writeln!(f, "about    {}", m.description)?;
        }
        writeln!(
            f,
            "model    {} ({}, {} classes{})",
            m.model.file,
            m.model.precision.name(),
            m.model.classes,
            m.model.arch.as_ref().map(|a| format!(", {a}")).unwrap_or_default()
        )?;
        if let Some(p) = &m.model.pooling {
            writeln!(f, "pooling  {p} (groups {})", m.model.groups.unwrap_or(1))?;
        }
        writeln!(
            f,
            "input    {}x{}x{} {} mean {:?} std {:?}",
            i.width,
            i.height,
            i.channels,
            i.layout.name(),
            i.mean,
            i.std
        )?;
        writeln!(f, "fits     {}", m.compatible.join(", "))?;
        writeln!(f, "signed   {}", bundle.verified.signature.as_deref().unwrap_or("not checked"))?;
        for (name, file) in &m.files {
            writeln!(f, "file     {name} {} bytes sha256 {}", file.size, file.sha256)?;
        }
        Ok(())
    }
}
