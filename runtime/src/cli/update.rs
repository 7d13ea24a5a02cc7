//! `edgevit update`: publish a channel, check, apply, status, roll back.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::board::BoardArgs;
use crate::engine::EngineArgs;
use crate::keys::{SecretKey, TrustArgs};
use crate::update::agent::{self, Applied, UpdateOptions};
use crate::update::device::DeviceId;
use crate::update::fetch::FetchArgs;
use crate::update::rollout::Rollout;
use crate::update::slots::{Slot, State, StateArgs, StateDir};
use crate::update::{channel, parse_duration};

#[derive(Debug, clap::Subcommand)]
pub enum UpdateCommand {
    /// Write a bundle's tarball and a signed channel pointing at it into a
    /// directory that any static web server can serve.
    Publish(PublishArgs),
    /// Fetch and verify the channel; say whether it offers a newer version
    /// and, for a staged rollout, whether this device is in.
    Check(AgentArgs),
    /// Download, verify, health-check and switch to the channel's version;
    /// a staged version this device is not in is left alone (exit 0).
    Apply(AgentArgs),
    /// Print the state directory: device id, active slot, versions, last error.
    Status {
        #[command(flatten)]
        state: StateArgs,
        /// Print `state.toml` and the device id as one JSON object.
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

#[derive(Debug, clap::Args)]
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
    /// Offer this version to this share of devices only, 0 < FRACTION <= 1
    /// (0.1: one device in ten). Each device draws from its id and the
    /// version, so it stays in or out; publishing again with a larger
    /// fraction keeps those in and adds others [default: 1, every device].
    #[arg(long, value_name = "FRACTION", allow_negative_numbers = true)]
    pub rollout: Option<f64>,
    /// A device that takes this version whatever `--rollout` draws: its id,
    /// as `update status` prints it. Repeat for more.
    #[arg(long = "rollout-device", value_name = "ID", requires = "rollout")]
    pub rollout_devices: Vec<String>,
    /// Keys the bundle's own signature may come from, besides `--key`'s.
    #[command(flatten)]
    pub trust: TrustArgs,
}

#[derive(Debug, clap::Args)]
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

impl AgentArgs {
    fn options(&self) -> Result<UpdateOptions> {
        let board = self.board.current()?;
        Ok(UpdateOptions {
            channel_url: self.channel.clone(),
            trust: self.trust.store()?,
            engine: self.engine.options_on(board.as_ref())?,
            board,
            fetch: self.fetch.options()?,
        })
    }
}

pub fn update(cmd: UpdateCommand) -> Result<()> {
    match cmd {
        UpdateCommand::Publish(a) => {
            let key = SecretKey::load(&a.key)?;
            let mut trust = a.trust.store()?;
            trust.add(key.public(), a.key.display().to_string());
            let rollout = Rollout { fraction: a.rollout.unwrap_or(1.0), devices: a.rollout_devices };
            println!("{}", channel::publish(&a.bundle, &trust, &key, &a.out, a.expires, rollout)?);
        }
        UpdateCommand::Check(a) => println!("{}", agent::check(&a.state.dir(), &a.options()?)?),
        UpdateCommand::Apply(a) => match agent::apply(&a.state.dir(), &a.options()?)? {
            Applied::Nothing(offer) => println!("{offer}"),
            Applied::Installed(installed) => println!("{installed}"),
        },
        UpdateCommand::Status { state, json } => {
            let dir = state.dir();
            let mut s = dir.load()?;
            // Report what the slots say, without writing: status is read-only.
            s.active = dir.active_slot()?;
            s.installed = s.active.and_then(|a| dir.slot_version(a));
            let status = Status { dir: &dir, device_id: DeviceId::load(&dir)?, state: &s };
            if json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                print!("{status}");
            }
        }
        UpdateCommand::Rollback { state, trust, engine } => {
            println!("{}", agent::rollback(&state.dir(), &trust.store()?, &engine.options()?)?);
        }
    }
    Ok(())
}

/// `update status`: in text one fact a line, in JSON `state.toml`'s fields
/// and `device_id` (null before the first check or apply chose one).
#[derive(Serialize)]
struct Status<'a> {
    #[serde(skip)]
    dir: &'a StateDir,
    device_id: Option<DeviceId>,
    #[serde(flatten)]
    state: &'a State,
}

impl fmt::Display for Status<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slot = |slot: Option<Slot>, version: Option<u64>| match (slot, version) {
            (Some(s), Some(v)) => format!("slot {s}, v{v}"),
            (Some(s), None) => format!("slot {s}, unreadable"),
            _ => "none".into(),
        };
        let s = self.state;
        writeln!(f, "state dir    {}", self.dir.root.display())?;
        match &self.device_id {
            Some(id) => writeln!(f, "device id    {id}")?,
            None => writeln!(f, "device id    none yet (chosen by the first check or apply)")?,
        }
        writeln!(f, "active       {}", slot(s.active, s.installed))?;
        writeln!(f, "last good    {}", slot(s.last_good, s.last_good_version))?;
        writeln!(f, "highest      v{}", s.highest_version)?;
        if let Some(v) = s.rolled_back {
            writeln!(f, "rolled back  v{v}")?;
        }
        writeln!(f, "last error   {}", s.last_error.as_deref().unwrap_or("none"))?;
        writeln!(f, "updated      {}", s.updated.as_deref().unwrap_or("never"))
    }
}
