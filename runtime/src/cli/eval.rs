//! `edgevit eval`: accuracy on an idx test set.

use std::path::PathBuf;

use anyhow::Result;

use crate::engine::EngineArgs;
use crate::eval::{evaluate, EvalReport, Idx};
use crate::update::BundleArgs;

#[derive(Debug, clap::Args)]
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

pub fn eval(args: EvalArgs) -> Result<()> {
    let images = Idx::open(&args.idx_images)?;
    let labels = Idx::open(&args.idx_labels)?;
    let (_, mut engine) = args.bundle.load(&args.engine.options()?)?;
    let acc = evaluate(&mut engine, &images, &labels, args.limit)?;
    let report = EvalReport::new(&engine, &acc);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
