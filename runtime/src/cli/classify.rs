//! `edgevit classify`: image files in, ranked classes out.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use crate::engine::EngineArgs;
use crate::postprocess::{PostprocessArgs, Prediction, Ranked, Scored, TopK};
use crate::preprocess::Image;
use crate::update::BundleArgs;

#[derive(Debug, clap::Args)]
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
    /// One JSON object per image instead of text (the prediction schema of
    /// `run --json`).
    #[arg(long)]
    pub json: bool,
}

pub fn classify(args: ClassifyArgs) -> Result<()> {
    let (_, mut engine) = args.bundle.load(&args.engine.options()?)?;
    let mut topk = TopK::default();
    let mut ranked: Vec<Scored> = Vec::new();
    let mut out = std::io::stdout().lock();
    for path in &args.images {
        let img = Image::open(path)?;
        engine.set_image(img.view());
        let logits = engine.run()?.to_vec();
        topk.rank(&logits, args.post.top_k, args.post.threshold, &mut ranked);
        let prediction = Prediction {
            image: Some(path.display().to_string()),
            frame: None,
            model: &engine.name,
            version: engine.version,
            backend: engine.backend.name(),
            top_k: Ranked::named(&ranked, &engine.labels),
            logits: &logits,
        };
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&prediction)?)?;
        } else {
            write!(out, "{prediction}")?;
        }
    }
    Ok(())
}
