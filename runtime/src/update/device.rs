//! The device's id: 128 random bits in lowercase hex, chosen the first time
//! an update needs them and kept in `<state-dir>/device-id`. The same id
//! answers every staged rollout the same way (see [`super::rollout`]) and
//! names the device in the servers' logs: the fetcher sends it as the
//! [`HEADER`] of every HTTP request.

use std::fmt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use rand_core::{OsRng, RngCore};
use serde::Serialize;

use super::slots::StateDir;

/// The file in the state directory that holds the id and a newline.
pub const DEVICE_ID: &str = "device-id";
/// The HTTP header that carries the id.
pub const HEADER: &str = "X-Edgevit-Device";
/// Hex digits in an id.
const DIGITS: usize = 32;

/// A device id: 32 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct DeviceId(String);

impl DeviceId {
    /// A new id from the operating system's random numbers.
    pub fn generate() -> DeviceId {
        let mut bytes = [0u8; DIGITS / 2];
        OsRng.fill_bytes(&mut bytes);
        DeviceId(hex::encode(bytes))
    }

    /// An id written as 32 lowercase hex digits; anything else is `None`.
    pub fn parse(text: &str) -> Option<DeviceId> {
        is_lower_hex(text, DIGITS).then(|| DeviceId(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where `dir` keeps its id.
    pub fn path(dir: &StateDir) -> PathBuf {
        dir.root.join(DEVICE_ID)
    }

    /// The id kept in `dir`, or `None` before one was chosen. A file that
    /// is not one id on one line is an error naming it.
    pub fn load(dir: &StateDir) -> Result<Option<DeviceId>> {
        let path = Self::path(dir);
        if let Err(e) = path.symlink_metadata() {
            if e.kind() == std::io::ErrorKind::NotFound {
                return Ok(None);
            }
        }
        let bytes = crate::fsutil::read_regular(&path, 64, "device id")?;
        let text = String::from_utf8_lossy(&bytes);
        match DeviceId::parse(text.strip_suffix('\n').unwrap_or(&text)) {
            Some(id) => Ok(Some(id)),
            None => anyhow::bail!(
                "device id {}: expected {DIGITS} lowercase hex digits on one line but found {text:?}",
                path.display()
            ),
        }
    }

    /// The id kept in `dir`, choosing and writing one when there is none.
    /// Two processes choosing at once end with the same id: the file is
    /// only ever created, never replaced.
    pub fn load_or_create(dir: &StateDir) -> Result<DeviceId> {
        if let Some(id) = Self::load(dir)? {
            return Ok(id);
        }
        std::fs::create_dir_all(&dir.root)
            .with_context(|| format!("{}: cannot create", dir.root.display()))?;
        let id = DeviceId::generate();
        let path = Self::path(dir);
        if crate::fsutil::create_atomic(&path, format!("{id}\n").as_bytes())? {
            log::info!("{}: this device's id is {id}", path.display());
            return Ok(id);
        }
        Self::load(dir)?.with_context(|| format!("device id {}: cannot read", path.display()))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `text` is exactly `len` digits of `0-9a-f`.
pub fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_chosen_once_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("state"));
        assert_eq!(DeviceId::load(&dir).unwrap(), None);
        let id = DeviceId::load_or_create(&dir).unwrap();
        assert!(is_lower_hex(id.as_str(), 32), "{id}");
        assert_eq!(DeviceId::load_or_create(&dir).unwrap(), id);
        assert_eq!(DeviceId::load(&dir).unwrap(), Some(id.clone()));
        assert_eq!(std::fs::read_to_string(DeviceId::path(&dir)).unwrap(), format!("{id}\n"));
        assert_ne!(DeviceId::generate(), id);
    }

    #[test]
    fn a_malformed_file_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        let path = DeviceId::path(&dir);
        for bad in ["", "0123\n", &"A".repeat(32), &format!("{}\n\n", "a".repeat(32)), &"a".repeat(33)] {
            std::fs::write(&path, bad).unwrap();
            let err = DeviceId::load_or_create(&dir).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "device id {}: expected 32 lowercase hex digits on one line but found {bad:?}",
                    path.display()
                )
            );
            assert_eq!(std::fs::read_to_string(&path).unwrap(), bad, "a bad id is left for a person to see");
        }
        std::fs::write(&path, "a".repeat(100)).unwrap();
        let err = DeviceId::load(&dir).unwrap_err().to_string();
        assert!(err.ends_with("expected at most 64 bytes but it has 100"), "{err}");
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let err = DeviceId::load(&dir).unwrap_err().to_string();
        assert!(err.ends_with("expected a regular file but it is a directory"), "{err}");
    }

    #[test]
    fn ids_are_32_lowercase_hex_digits() {
        assert!(DeviceId::parse(&"0123456789abcdef".repeat(2)).is_some());
        for bad in ["", "0123456789abcdef", &"0123456789ABCDEF".repeat(2), &"g".repeat(32), &"a".repeat(31)] {
            assert_eq!(DeviceId::parse(bad), None, "{bad}");
        }
    }
}
