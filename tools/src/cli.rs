//! The `edgevit-tools` verbs and their flags; `main.rs` only parses and maps
//! errors to the exit code.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use edgevit::{SecretKey, TrustStore};

use crate::cross::Profile;
use crate::{firmware, image};

/// Build tools of edgevit: firmware images per board.
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
    /// Build one board's image: cross-compile edgevit under the board's glibc
    /// floor, prebuild its PTX, lay out the device tree and pack it (this is
    /// `firmware --board B --bundle M --key K --out DIR` of the design).
    Build(BuildArgs),
    /// Pack a staging tree into a signed, reproducible image.
    Pack(PackArgs),
    /// Check an image's signature and every entry against its manifest.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Board profile, a file in boards/ (see `edgevit boards`).
    #[arg(long, value_name = "NAME")]
    pub board: String,
    /// Model bundle (directory or `.tar`) installed in slot a; it must be
    /// signed by --key or a --trust key and fit the board.
    #[arg(long, value_name = "PATH")]
    pub bundle: PathBuf,
    /// Ed25519 signing key (`.key` file): signs the image; its public half
    /// is trusted on the device.
    #[arg(long, value_name = "KEY.key")]
    pub key: PathBuf,
    /// Another public key the device trusts (repeatable).
    #[arg(long, value_name = "KEY.pub")]
    pub trust: Vec<PathBuf>,
    /// A CA certificate file (PEM, named `*.pem` or `*.crt`) the device
    /// trusts for https:// updates, installed in /etc/edgevit/ca/ (repeatable).
    #[arg(long, value_name = "FILE.pem")]
    pub ca: Vec<PathBuf>,
    /// Cargo profile of the binary.
    #[arg(long, value_enum, default_value = "release")]
    pub profile: Profile,
    /// Directory for the image, `edgevit-BOARD.tar`, replaced atomically.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
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
        Command::Firmware(FirmwareCommand::Build(args)) => {
            let request = image::BuildRequest {
                workspace: source_tree(),
                board: args.board,
                bundle: args.bundle,
                key: args.key,
                trust: args.trust,
                ca: args.ca,
                profile: args.profile,
                out: args.out,
            };
            println!("{}", image::build(&request)?);
        }
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

/// The source tree this binary was built from, which `firmware build`
/// compiles `edgevit` from.
fn source_tree() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}
