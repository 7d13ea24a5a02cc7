//! The command line: one file per verb under `cli/`, each with its flags
//! and what it does with the library. The flags of a stage (source,
//! display, board, bundle, engine, trust, postprocess, fetch) live with
//! that stage and are flattened into the verbs.

mod bench;
mod boards;
mod bundle;
mod classify;
mod doctor;
mod eval;
mod run;
mod update;

use std::time::Instant;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "edgevit", version, about = "Classify images with a quantized Vision Transformer")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The main job: classify a camera, files or a pattern and show the result.
    Run(Box<run::RunArgs>),
    /// Classify image files and print `NN.NN% label` lines.
    Classify(classify::ClassifyArgs),
    /// Accuracy on an idx-format test set (e.g. Fashion-MNIST `t10k-*.gz`).
    Eval(eval::EvalArgs),
    /// Latency percentiles, throughput, cold start and peak memory.
    Bench(bench::BenchArgs),
    /// Create, sign, verify and inspect model bundles.
    #[command(subcommand)]
    Bundle(bundle::BundleCommand),
    /// Remote model updates: publish a channel, check, apply, status, roll back.
    #[command(subcommand)]
    Update(update::UpdateCommand),
    /// List the board profiles built in (or show the one in force with --current).
    Boards(boards::BoardsArgs),
    /// What this machine offers the GPU path (driver, devices, NVRTC) and
    /// which backend `auto` picks, and why.
    Doctor(doctor::DoctorArgs),
}

/// Runs a parsed command line. `started` is when `main` began.
pub fn run(cli: Cli, started: Instant) -> Result<()> {
    match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Classify(args) => classify::classify(args),
        Command::Eval(args) => eval::eval(args),
        Command::Bench(args) => bench::bench(args, started),
        Command::Bundle(cmd) => bundle::bundle(cmd),
        Command::Update(cmd) => update::update(cmd),
        Command::Boards(args) => boards::boards(&args),
        Command::Doctor(args) => doctor::doctor(&args),
    }
}
