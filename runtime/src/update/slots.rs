//! The state directory: two bundle slots, the `current` link and `state.toml`.
//!
//! ```text
//! DIR/slots/a/        a verified bundle
//! DIR/slots/b/        the other one (the rollback target)
//! DIR/current -> slots/a
//! DIR/state.toml      versions, rollback and replay facts, last error
//! DIR/staging/        downloads in progress (resumable)
//! DIR/device-id       the device's id (see `super::device`)
//! ```
//!
//! The `current` link is the truth about which slot runs: it only ever
//! changes by renaming a fully written new link over it, so a crash leaves it
//! pointing at one complete, verified slot. A new bundle is written to
//! `slots/.incoming` and renamed into place only after it passed its health
//! check. `state.toml` is rewritten atomically after each switch;
//! [`StateDir::reconcile`] repairs it from the slots when a crash came
//! between the switch and the state write.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::bundle::{parse_manifest, MANIFEST};

/// One of the two bundle slots, `slots/a` and `slots/b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const BOTH: [Slot; 2] = [Slot::A, Slot::B];

    /// `a` or `b`, its directory's name.
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
pub const CURRENT: &str = "current";
pub const STATE: &str = "state.toml";
const INCOMING: &str = ".incoming";
const FORMAT: u32 = 1;

/// What a device knows about its updates; see the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub format: u32,
    /// The slot `current` points at, and the version of its bundle.
    pub active: Option<Slot>,
    pub installed: Option<u64>,
    /// The other slot when it holds a bundle: the last good one, where a
    /// rollback goes.
    pub last_good: Option<Slot>,
    pub last_good_version: Option<u64>,
    /// The highest version this device ever ran: a channel offering less
    /// is a replay and is refused.
    #[serde(default)]
    pub highest_version: u64,
    /// A version this device rolled back from; the channel's offer of it is
    /// not installed again (a newer version is).
    pub rolled_back: Option<u64>,
    /// The last failed update or fallback, one line.
    pub last_error: Option<String>,
    /// When this file was written, UTC.
    pub updated: Option<String>,
}

/// The state directory of updates, as the `update` verbs take it.
#[derive(Debug, clap::Args)]
pub struct StateArgs {
    /// Slots a/b, `current`, `state.toml` and `device-id` live here.
    #[arg(long, value_name = "DIR", default_value = super::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

impl StateArgs {
    pub fn dir(&self) -> StateDir {
        StateDir::new(&self.state_dir)
    }
}

/// A state directory, e.g. `/var/lib/edgevit`.
#[derive(Clone, Debug)]
pub struct StateDir {
    pub root: PathBuf,
}

/// An exclusive lock on a state directory, released on drop.
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] File);

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.root.join("slots").join(slot.name())
    }

    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    pub(crate) fn incoming(&self) -> PathBuf {
        self.root.join("slots").join(INCOMING)
    }

    /// Whether `current` exists: the directory holds an installed bundle.
    pub fn is_installed(&self) -> bool {
        self.root.join(CURRENT).symlink_metadata().is_ok()
    }

    /// The slot `current` points at; `None` before the first install.
    pub fn active_slot(&self) -> Result<Option<Slot>> {
        let link = self.root.join(CURRENT);
        let target = match std::fs::read_link(&link) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("{}: expected a link to slots/a or slots/b", link.display()))
            }
        };
        Slot::BOTH.into_iter().find(|s| target == Path::new("slots").join(s.name())).map(Some).with_context(
            || {
                format!(
                    "{}: expected a link to slots/a or slots/b but it points to {}",
                    link.display(),
                    target.display()
                )
            },
        )
    }

    /// The slot that is not active (`a` before the first install).
    pub fn inactive_slot(&self) -> Result<Slot> {
        Ok(self.active_slot()?.map_or(Slot::A, Slot::other))
    }

    /// The version in a slot's manifest, if the slot holds a readable one.
    /// This reads, it does not verify: slots are verified before they are
    /// written and again whenever they are loaded.
    pub fn slot_version(&self, slot: Slot) -> Option<u64> {
        let bytes = std::fs::read(self.slot_dir(slot).join(MANIFEST)).ok()?;
        parse_manifest(&bytes).ok().map(|m| m.version)
    }

    /// Takes the directory's lock, or fails at once when another process holds it.
    pub fn lock(&self) -> Result<Lock> {
        std::fs::create_dir_all(self.root.join("slots"))
            .with_context(|| format!("{}: cannot create", self.root.display()))?;
        let path = self.root.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!("{}: another update holds the lock", path.display());
        }
        Ok(Lock(file))
    }

    pub fn load(&self) -> Result<State> {
        let path = self.root.join(STATE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: not valid: {}", path.display(), e.message())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(State { format: FORMAT, ..State::default() })
            }
            Err(e) => Err(e).with_context(|| format!("{}: cannot read", path.display())),
        }
    }

    pub fn save(&self, state: &State) -> Result<()> {
        let mut state = state.clone();
        state.format = FORMAT;
        state.updated = Some(super::format_utc(super::now_unix()));
        crate::fsutil::write_atomic(&self.root.join(STATE), toml::to_string(&state)?.as_bytes())
    }

    /// The state as the slots say it is: the active slot from `current`,
    /// versions from the manifests, left-overs of an interrupted update
    /// removed. Writes `state.toml` when it disagreed.
    pub fn reconcile(&self) -> Result<State> {
        let saved = self.load()?;
        let mut state = saved.clone();
        let active = self.active_slot()?;
        state.active = active;
        state.installed = active.and_then(|s| self.slot_version(s));
        let other = active.map(Slot::other);
        state.last_good_version = other.and_then(|s| self.slot_version(s));
        state.last_good = other.filter(|_| state.last_good_version.is_some());
        state.highest_version = state.highest_version.max(state.installed.unwrap_or(0));
        for leftover in [self.incoming(), self.root.join("current.new")] {
            remove_any(&leftover)?;
        }
        for slot in Slot::BOTH {
            remove_any(&self.root.join("slots").join(format!(".retired-{slot}")))?;
        }
        if state != saved || !self.root.join(STATE).exists() {
            self.save(&state)?;
        }
        Ok(state)
    }

    /// Moves the verified bundle in `slots/.incoming` into `slot`, replacing
    /// what was there. `current` must not point at `slot`.
    pub fn commit_incoming(&self, slot: Slot) -> Result<()> {
        let slots = self.root.join("slots");
        let target = self.slot_dir(slot);
        let retired = slots.join(format!(".retired-{slot}"));
        remove_any(&retired)?;
        if target.exists() {
            std::fs::rename(&target, &retired)
                .with_context(|| format!("{}: cannot retire", target.display()))?;
        }
        std::fs::rename(self.incoming(), &target)
            .with_context(|| format!("{}: cannot write", target.display()))?;
        crate::fsutil::sync_dir(&slots)?;
        remove_any(&retired)
    }

    /// Points `current` at `slot`: a new link, renamed over the old one,
    /// then the directory synced.
    pub fn switch(&self, slot: Slot) -> Result<()> {
        let next = self.root.join("current.new");
        remove_any(&next)?;
        std::os::unix::fs::symlink(Path::new("slots").join(slot.name()), &next)
            .with_context(|| format!("{}: cannot create", next.display()))?;
        super::crash_point("link-created");
        std::fs::rename(&next, self.root.join(CURRENT))
            .with_context(|| format!("{}: cannot replace", self.root.join(CURRENT).display()))?;
        super::crash_point("switched");
        crate::fsutil::sync_dir(&self.root)
    }
}

/// Removes a file, link or directory tree; absent is fine.
pub(crate) fn remove_any(path: &Path) -> Result<()> {
    let result = match path.symlink_metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    result.with_context(|| format!("{}: cannot remove", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_with_version(dir: &StateDir, slot: Slot, version: u64) {
        let path = dir.slot_dir(slot);
        std::fs::create_dir_all(&path).unwrap();
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/fmnist-vit-ggem/manifest.toml"
        ))
        .unwrap();
        let text = text.replacen("version = 1", &format!("version = {version}"), 1);
        std::fs::write(path.join(MANIFEST), text).unwrap();
    }

    #[test]
    fn switch_and_reconcile_follow_the_link() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        assert_eq!(dir.active_slot().unwrap(), None);
        assert_eq!(dir.inactive_slot().unwrap(), Slot::A);
        slot_with_version(&dir, Slot::A, 1);
        dir.switch(Slot::A).unwrap();
        let state = dir.reconcile().unwrap();
        assert_eq!((state.active, state.installed, state.last_good), (Some(Slot::A), Some(1), None));
        // A crash after the switch but before the state write: reconcile
        // takes the link's word and keeps the old slot as the last good one.
        slot_with_version(&dir, Slot::B, 2);
        std::fs::create_dir_all(dir.incoming()).unwrap();
        dir.switch(Slot::B).unwrap();
        let state = dir.reconcile().unwrap();
        assert_eq!(state.active, Some(Slot::B));
        assert_eq!(
            (state.installed, state.last_good, state.last_good_version),
            (Some(2), Some(Slot::A), Some(1))
        );
        assert_eq!(state.highest_version, 2);
        assert!(!dir.incoming().exists());
        assert_eq!(dir.load().unwrap().installed, Some(2));
    }

    #[test]
    fn a_link_elsewhere_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", tmp.path().join(CURRENT)).unwrap();
        let err = StateDir::new(tmp.path()).active_slot().unwrap_err().to_string();
        assert!(err.ends_with("expected a link to slots/a or slots/b but it points to /etc"), "{err}");
    }

    #[test]
    fn the_lock_is_exclusive() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        let held = dir.lock().unwrap();
        assert!(dir.lock().unwrap_err().to_string().contains("another update holds the lock"));
        drop(held);
        dir.lock().unwrap();
    }
}
