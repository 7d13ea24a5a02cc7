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
use super::fetch::{FetchOptions, Fetcher};
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
    pub fetch: FetchOptions,
    /// How the health check loads the model (the same way `run` will).
    pub engine: EngineOptions,
}

/// What the channel offers compared with what runs here.
#[derive(Clone, Debug, PartialEq)]
pub enum Offer {
    /// The channel's version is the installed one.
    UpToDate(Channel),
    /// The channel's version was rolled back on this device; a newer one is awaited.
    RolledBack(Channel),
    /// A newer version, offered to this device.
    Newer(Channel, DeviceId),
    /// A newer version whose staged rollout leaves this device out; it stays
    /// on `installed` (`None`: the built-in bundle).
    NotIn { channel: Channel, device: DeviceId, installed: Option<u64> },
}

impl Offer {
    pub fn channel(&self) -> &Channel {
        match self {
            Offer::UpToDate(c) | Offer::RolledBack(c) | Offer::Newer(c, _) => c,
            Offer::NotIn { channel, .. } => channel,
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
            Offer::Newer(_, device) => {
                write!(f, "update available: {} v{} ({} bytes)", c.name, c.version, c.size)?;
                if let Some(reach) = c.reach() {
                    let how = if c.rollout_devices.iter().any(|id| id == device.as_str()) {
                        "is listed"
                    } else {
                        "is in"
                    };
                    write!(f, " offered to {reach}; this device (id {device}) {how}")?;
                }
                Ok(())
            }
            Offer::NotIn { device, installed, .. } => {
                let staying = installed.map_or("the built-in bundle".to_string(), |v| format!("v{v}"));
                write!(
                    f,
                    "not for this device yet: {} v{} offered to {}; this device (id {device}) is not in: staying on {staying}",
                    c.name,
                    c.version,
                    c.reach().unwrap_or_default()
                )
            }
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
/// state and its place in the rollout. Chooses the device id when the
/// directory has none yet (see [`fetcher`] for when).
pub fn check(dir: &StateDir, opts: &UpdateOptions) -> Result<Offer> {
    let state = dir.load()?;
    let state = State { installed: dir.active_slot()?.and_then(|s| dir.slot_version(s)), ..state };
    let (fetcher, device) = fetcher(dir, opts)?;
    let channel = fetch_channel(&fetcher, opts)?;
    offer(&channel, &state, device.map_or_else(|| DeviceId::load_or_create(dir), Ok)?)
}

/// The fetcher of `opts`' channel and the device id it sends. An http(s)
/// request carries the id, so one is chosen before the first; a `file://`
/// channel sends none, and its id waits until the channel has verified:
/// a refused channel leaves the state directory as it was.
fn fetcher(dir: &StateDir, opts: &UpdateOptions) -> Result<(Fetcher, Option<DeviceId>)> {
    let device = if opts.channel_url.starts_with("file://") {
        DeviceId::load(dir)?
    } else {
        Some(DeviceId::load_or_create(dir)?)
    };
    Ok((Fetcher::new(&opts.fetch, device.clone())?, device))
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

/// Compares a verified channel with the state and the device's place in
/// its rollout: replays of older versions are errors, not just "nothing to
/// do"; a version this device is not in is "nothing to do".
fn offer(channel: &Channel, state: &State, device: DeviceId) -> Result<Offer> {
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
    if !c.includes(&device) {
        return Ok(Offer::NotIn { channel: c, device, installed: state.installed });
    }
    Ok(Offer::Newer(c, device))
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
    let (fetcher, device) = fetcher(dir, opts)?;
    let channel = fetch_channel(&fetcher, opts)?;
    let offered = offer(&channel, &state, device.map_or_else(|| DeviceId::load_or_create(dir), Ok)?)?;
    crash_point("channel-verified");
    if !matches!(offered, Offer::Newer(..)) {
        return Ok(Applied::Nothing(offered));
    }
    if channel.size > opts.fetch.max_bytes {
        bail!(
            "channel {CHANNEL}: expected a bundle of at most {} bytes but it declares {}",
            opts.fetch.max_bytes,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(version: u64) -> Channel {
        Channel {
            format: super::super::channel::FORMAT,
            name: "m".into(),
            version,
            bundle: format!("m-{version}.tar"),
            size: 10,
            sha256: "ab".repeat(32),
            expires: "2030-01-01T00:00:00Z".into(),
            rollout: Some(0.5),
            rollout_devices: Vec::new(),
        }
    }

    /// The first of a run of made-up ids that `channel` does (or does not) include.
    fn device(channel: &Channel, included: bool) -> DeviceId {
        (0u64..)
            .map(|i| DeviceId::parse(&format!("{i:032x}")).unwrap())
            .find(|d| channel.includes(d) == included)
            .unwrap()
    }

    #[test]
    fn a_version_the_device_is_not_in_is_nothing_to_do() {
        let state = State { installed: Some(2), highest_version: 2, ..State::default() };
        let v3 = channel(3);
        let (inside, outside) = (device(&v3, true), device(&v3, false));
        assert_eq!(offer(&v3, &state, inside.clone()).unwrap(), Offer::Newer(v3.clone(), inside.clone()));
        let left_out = offer(&v3, &state, outside.clone()).unwrap();
        assert_eq!(
            left_out,
            Offer::NotIn { channel: v3.clone(), device: outside.clone(), installed: Some(2) }
        );
        assert_eq!(
            left_out.to_string(),
            format!("not for this device yet: m v3 offered to 50% of devices; this device (id {outside}) is not in: staying on v2")
        );
        assert_eq!(
            offer(&v3, &state, inside.clone()).unwrap().to_string(),
            format!("update available: m v3 (10 bytes) offered to 50% of devices; this device (id {inside}) is in")
        );
        let listed = Channel { rollout_devices: vec![outside.to_string()], ..v3.clone() };
        assert!(offer(&listed, &state, outside.clone()).unwrap().to_string().ends_with("is listed"));

        // The other answers come first: the installed version, a replay, a rollback.
        let v2 = channel(2);
        let out_of_v2 = device(&v2, false);
        assert_eq!(offer(&v2, &state, out_of_v2).unwrap(), Offer::UpToDate(v2));
        let v1 = channel(1);
        assert!(offer(&v1, &state, device(&v1, false)).is_err());
        let rolled_back = State { rolled_back: Some(3), ..state };
        assert_eq!(offer(&v3, &rolled_back, outside).unwrap(), Offer::RolledBack(v3));
    }
}
