//! The steps of an update, in the order `apply` takes them. Every step
//! before the switch works beside the active slot and never touches it; the
//! switch is one rename; every failure is recorded in `state.toml` and
//! leaves the device on the bundle it ran before.

use std::fmt;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::channel::{Channel, CHANNEL, CHANNEL_SIG, MAX_CHANNEL_BYTES};
use super::crash_point;
use super::device::DeviceId;
use super::fetch::{Fetcher, Timeouts};
use super::slots::{remove_any, Slot, State, StateDir};
use crate::board::Board;
use crate::bundle::{sha256_reader, Bundle, RawBundle, SignaturePolicy};
use crate::engine::{Engine, EngineOptions};
use crate::keys::TrustStore;

/// The points `apply` passes, in order; [`super::CRASH_ENV`] can stop it at each.
pub const STEPS: [&str; 15] = [
    "locked",
    "channel-fetched",
    "channel-verified",
    "download-started",
    "download-halfway",
    "downloaded",
    "tarball-verified",
    "bundle-verified",
    "unpack-partial",
    "unpacked",
    "health-checked",
    "slot-committed",
    "link-created",
    "switched",
    "state-written",
];

/// Everything an update needs besides the state directory.
pub struct UpdateOptions {
    /// URL of `channel.toml`; `channel.sig` is read next to it.
    pub channel_url: String,
    /// Keys that may sign channels and bundles.
    pub trust: TrustStore,
    /// The board bundles must fit; `None` accepts any `compatible` list.
    pub board: Option<Board>,
    pub timeouts: Timeouts,
    /// Largest tarball accepted, whatever the channel says.
    pub max_bytes: u64,
    /// How the health check loads the model (the same way `run` will).
    pub engine: EngineOptions,
}

/// What the channel offers compared with what runs here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Offer {
    /// The channel's version is the installed one.
    UpToDate(Channel),
    /// The channel's version was rolled back on this device; a newer one is awaited.
    RolledBack(Channel),
    /// A newer version.
    Newer(Channel),
}

impl Offer {
    pub fn channel(&self) -> &Channel {
        match self {
            Offer::UpToDate(c) | Offer::RolledBack(c) | Offer::Newer(c) => c,
        }
    }
}

impl fmt::Display for Offer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.channel();
        match self {
            Offer::UpToDate(_) => write!(f, "up to date: {} v{}", c.name, c.version),
            Offer::RolledBack(_) => {
                write!(
                    f,
                    "channel offers {} v{}, which was rolled back here; waiting for a newer one",
                    c.name, c.version
                )
            }
            Offer::Newer(_) => write!(f, "update available: {} v{} ({} bytes)", c.name, c.version, c.size),
        }
    }
}

/// A finished install: the new slot and, loaded and health-checked, its engine.
pub struct Installed {
    pub slot: Slot,
    pub from: Option<u64>,
    pub bundle: Bundle,
    pub engine: Engine,
    /// Bytes already staged by an earlier attempt, and bytes fetched now.
    pub resumed_from: u64,
    pub fetched: u64,
}

impl fmt::Display for Installed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.bundle.manifest;
        let from = self.from.map_or("nothing".to_string(), |v| format!("v{v}"));
        write!(
            f,
            "installed {} v{} in slot {} (was {from}); fetched {} bytes",
            m.name, m.version, self.slot, self.fetched
        )?;
        if self.resumed_from > 0 {
            write!(f, ", resuming from byte {}", self.resumed_from)?;
        }
        Ok(())
    }
}

/// What `apply` did.
pub enum Applied {
    Nothing(Offer),
    Installed(Box<Installed>),
}

/// Fetches and verifies the channel and compares it with the device's
/// state. Chooses the device id when the directory has none yet.
pub fn check(dir: &StateDir, opts: &UpdateOptions) -> Result<Offer> {
    let state = dir.load()?;
    let state = State { installed: dir.active_slot()?.and_then(|s| dir.slot_version(s)), ..state };
    let device = DeviceId::load_or_create(dir)?;
    let fetcher = Fetcher::new(opts.timeouts, Some(device));
    offer(&fetch_channel(&fetcher, opts)?, &state)
}

fn fetch_channel(fetcher: &Fetcher, opts: &UpdateOptions) -> Result<Channel> {
    let url = &opts.channel_url;
    let sig_url = match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{CHANNEL_SIG}"),
        None => CHANNEL_SIG.to_string(),
    };
    let text = fetcher.get(url, MAX_CHANNEL_BYTES)?;
    let sig = fetcher.get(&sig_url, 4096)?;
    crash_point("channel-fetched");
    Channel::verify(&text, &sig, &opts.trust, super::now_unix()).with_context(|| format!("channel {url}"))
}

/// Compares a verified channel with the state: replays of older versions
/// are errors, not just "nothing to do".
fn offer(channel: &Channel, state: &State) -> Result<Offer> {
    let c = channel.clone();
    if state.installed == Some(c.version) {
        return Ok(Offer::UpToDate(c));
    }
    let newest = state.highest_version.max(state.installed.unwrap_or(0));
    if c.version < newest {
        bail!(
            "channel {CHANNEL}: expected a version newer than v{newest} (installed v{}) but the channel offers v{}: a replayed or stale channel",
            state.installed.unwrap_or(0),
            c.version
        );
    }
    if state.rolled_back == Some(c.version) {
        return Ok(Offer::RolledBack(c));
    }
    Ok(Offer::Newer(c))
}

/// Runs every step of an update; see the module docs. On failure the error
/// is also recorded in `state.toml`.
pub fn apply(dir: &StateDir, opts: &UpdateOptions) -> Result<Applied> {
    let _lock = dir.lock()?;
    crash_point("locked");
    let state = dir.reconcile()?;
    let result = apply_locked(dir, opts, state);
    let _ = remove_any(&dir.incoming());
    if let Err(e) = &result {
        let recorded = dir.load().and_then(|mut state| {
            state.last_error = Some(format!("{e:#}"));
            dir.save(&state)
        });
        if let Err(save) = recorded {
            log::warn!("cannot record the update error: {save:#}");
        }
    }
    result
}

fn apply_locked(dir: &StateDir, opts: &UpdateOptions, mut state: State) -> Result<Applied> {
    let device = DeviceId::load_or_create(dir)?;
    let fetcher = Fetcher::new(opts.timeouts, Some(device));
    let channel = fetch_channel(&fetcher, opts)?;
    let offered = offer(&channel, &state)?;
    crash_point("channel-verified");
    if !matches!(offered, Offer::Newer(_)) {
        return Ok(Applied::Nothing(offered));
    }
    if channel.size > opts.max_bytes {
        bail!(
            "channel {CHANNEL}: expected a bundle of at most {} bytes but it declares {}",
            opts.max_bytes,
            channel.size
        );
    }

    let staging = dir.staging();
    std::fs::create_dir_all(&staging).with_context(|| format!("{}: cannot create", staging.display()))?;
    let part = staging.join(format!("{}.part", channel.sha256));
    for entry in std::fs::read_dir(&staging)?.flatten() {
        if entry.path() != part {
            remove_any(&entry.path())?;
        }
    }
    let url = channel.bundle_url(&opts.channel_url);
    let moved = fetcher.download(&url, channel.size, &part)?;
    crash_point("downloaded");

    let result = install(dir, opts, &channel, &part, &state);
    let _ = remove_any(&part);
    let (slot, bundle, engine) = result?;
    dir.switch(slot)?;
    state.rolled_back = state.rolled_back.filter(|&v| v > channel.version);
    state.highest_version = state.highest_version.max(channel.version);
    state.last_error = None;
    let from = state.installed;
    dir.save(&state)?;
    let state = dir.reconcile()?;
    debug_assert_eq!(state.installed, Some(channel.version));
    crash_point("state-written");
    Ok(Applied::Installed(Box::new(Installed {
        slot,
        from,
        bundle,
        engine,
        resumed_from: moved.resumed_from,
        fetched: moved.fetched,
    })))
}

/// From a complete staging file to a health-checked bundle in the inactive
/// slot, not yet switched to.
fn install(
    dir: &StateDir,
    opts: &UpdateOptions,
    channel: &Channel,
    part: &Path,
    state: &State,
) -> Result<(Slot, Bundle, Engine)> {
    let digest = sha256_file(part)?;
    if digest != channel.sha256 {
        bail!(
            "{}: expected sha256 {} (from the channel) but the download has {digest}",
            channel.bundle,
            channel.sha256
        );
    }
    crash_point("tarball-verified");

    let bundle = RawBundle::from_tar(part)
        .and_then(|raw| raw.verify(channel.bundle.clone(), &opts.trust, SignaturePolicy::Require))
        .with_context(|| format!("bundle {}", channel.bundle))?;
    check_bundle(&bundle, channel, opts.board.as_ref())?;
    crash_point("bundle-verified");

    let slot = dir.inactive_slot()?;
    let incoming = dir.incoming();
    remove_any(&incoming)?;
    let mut first = true;
    bundle.write_dir(&incoming, &mut |_| {
        if std::mem::take(&mut first) {
            crash_point("unpack-partial");
        }
    })?;
    crash_point("unpacked");

    let (bundle, engine) = health_check(&incoming, &opts.trust, &opts.engine).with_context(|| {
        format!(
            "health check of {} v{} (still on v{})",
            channel.name,
            channel.version,
            state.installed.unwrap_or(0)
        )
    })?;
    crash_point("health-checked");
    dir.commit_incoming(slot)?;
    crash_point("slot-committed");
    Ok((slot, bundle, engine))
}

/// The bundle is the one the channel names, fits this board, and can be
/// health-checked.
fn check_bundle(bundle: &Bundle, channel: &Channel, board: Option<&Board>) -> Result<()> {
    let m = &bundle.manifest;
    if m.name != channel.name || m.version != channel.version {
        bail!(
            "bundle {}: expected {} v{} (from the channel) but the bundle is {} v{}",
            channel.bundle,
            channel.name,
            channel.version,
            m.name,
            m.version
        );
    }
    if let Some(b) = board {
        b.check_fits(bundle)?;
    }
    if m.golden.is_none() {
        bail!(
            "bundle {}: expected golden inputs and logits for the health check but the bundle has none",
            channel.bundle
        );
    }
    Ok(())
}

/// Loads the bundle from `dir` as `run` would (verifying it again, from the
/// bytes on disk) and runs its golden inputs: every top-1 must match and
/// every logit be within the bundle's tolerance.
pub fn health_check(dir: &Path, trust: &TrustStore, engine: &EngineOptions) -> Result<(Bundle, Engine)> {
    let bundle = Bundle::open(dir, trust, SignaturePolicy::Require)?;
    let mut engine = Engine::load(&bundle, engine)?;
    match engine.check_golden(&bundle)? {
        Some(report) if report.passed() => Ok((bundle, engine)),
        Some(report) => bail!("{report}"),
        None => bail!("expected golden inputs and logits but the bundle has none"),
    }
}

/// Switches back to the last good slot after checking it still loads.
pub fn rollback(dir: &StateDir, trust: &TrustStore, engine: &EngineOptions) -> Result<String> {
    let _lock = dir.lock()?;
    let mut state = dir.reconcile()?;
    let (Some(active), Some(previous)) = (state.active, state.last_good) else {
        bail!("{}: expected a previous bundle to roll back to but there is none", dir.root.display());
    };
    let target = dir.slot_dir(previous);
    let (bundle, _) = health_check(&target, trust, engine)
        .with_context(|| format!("slot {previous}: cannot roll back to it"))?;
    dir.switch(previous)?;
    state.rolled_back = state.installed;
    state.last_error = None;
    dir.save(&state)?;
    dir.reconcile()?;
    Ok(format!(
        "rolled back from slot {active} (v{}) to slot {previous} ({} v{})",
        state.installed.unwrap_or(0),
        bundle.manifest.name,
        bundle.manifest.version
    ))
}

fn sha256_file(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let (_, sha256) = sha256_reader(file).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(sha256)
}

/// The bundle a device should run: `current`, or when it fails to open or
/// load, the last good slot, switching `current` to it (and saying so) so
/// that the next start does not try the broken one again.
pub fn open_active<T>(dir: &StateDir, mut open: impl FnMut(&Path) -> Result<T>) -> Result<T> {
    let Some(active) = dir.active_slot()? else {
        bail!("{}: expected an installed bundle (a `current` link) but there is none", dir.root.display());
    };
    let first = match open(&dir.slot_dir(active)) {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    let other = active.other();
    let fallback = dir.slot_dir(other);
    if dir.slot_version(other).is_none() {
        return Err(
            first.context(format!("slot {active} is active and there is no other slot to fall back to"))
        );
    }
    let t = open(&fallback)
        .map_err(|e| anyhow::anyhow!("slot {active} failed ({first:#}) and so did slot {other} ({e:#})"))?;
    log::warn!(
        "slot {active} failed to load ({first:#}); running slot {other} (v{}), the last good bundle",
        dir.slot_version(other).unwrap_or(0)
    );
    let persisted = dir.lock().and_then(|_lock| {
        let mut state = dir.reconcile()?;
        dir.switch(other)?;
        state.rolled_back = state.installed;
        state.last_error = Some(format!("slot {active} failed to load: {first:#}"));
        dir.save(&state)?;
        dir.reconcile().map(drop)
    });
    if let Err(e) = persisted {
        log::warn!("cannot record the fallback in {}: {e:#}", dir.root.display());
    }
    Ok(t)
}
