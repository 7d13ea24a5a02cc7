//! The `edgevit-tools` verbs and their flags; `main.rs` only parses and maps
//! errors to the exit code.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use edgevit::keys::{SecretKey, TrustStore};

use crate::firmware;

/// Build tools of edgevit: firmware images.
#[derive(Debug, Parser)]
#[command(name = "edgevit-tools", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Firmware images: one reproducible tar with a signed manifest.
    #[command(subcommand)]
    Firmware(FirmwareCommand),
}

#[derive(Debug, Subcommand)]
pub enum FirmwareCommand {
    /// Pack a staging tree into a signed, reproducible image.
    Pack(PackArgs),
    /// Check an image's signature and every entry against its manifest.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct PackArgs {
    /// Staging tree laid out as the device's root (usr/, etc/, var/).
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Ed25519 signing key (`.key` file) that signs MANIFEST.toml.
    #[arg(long, value_name = "KEY.key")]
    pub key: PathBuf,
    /// Image to write; replaced atomically.
    #[arg(long, value_name = "IMAGE.tar")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Image to check.
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// Trusted public key (`.pub` file); repeat to trust several.
    #[arg(long, value_name = "KEY.pub", required = true)]
    pub trust: Vec<PathBuf>,
}

/// Runs one verb, printing its result on stdout.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Firmware(FirmwareCommand::Pack(args)) => {
            let key = SecretKey::load(&args.key)?;
            let summary = firmware::pack(&args.root, &key, &args.out)?;
            println!("{summary}");
        }
        Command::Firmware(FirmwareCommand::Verify(args)) => {
            let trust = TrustStore::load(&args.trust, None).context("trust store")?;
            let report = firmware::verify(&args.image, &trust)?;
            println!("{report}");
        }
    }
    Ok(())
}
