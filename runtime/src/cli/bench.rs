//! `edgevit bench`: one engine's latency, throughput, cold start and memory.

use std::time::Instant;

use anyhow::Result;

use crate::engine::{EngineArgs, EngineOptions};
use crate::update::BundleArgs;

#[derive(Debug, clap::Args)]
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

/// `started` is when `main` began: the cold start runs from there to the
/// first result.
pub fn bench(args: BenchArgs, started: Instant) -> Result<()> {
    let options = EngineOptions { batch: args.batch, ..args.engine.options()? };
    let (bundle, mut engine) = args.bundle.load(&options)?;
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
        print!("{report}");
    }
    Ok(())
}
