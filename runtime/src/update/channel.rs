//! The channel: two small static files next to the bundle tarballs.
//!
//! `channel.toml` names the newest version, where its tarball is (relative
//! to the channel or absolute), its exact size and sha256, and when the
//! channel stops being believed. `channel.sig` is one hex line: the ed25519
//! signature over the exact bytes of `channel.toml`. Any web server, object
//! store or CDN can serve them; devices trust nothing the server says that
//! the signature does not cover.
//!
//! A channel may stage its version (see [`super::rollout`]): `rollout`
//! offers it to a fraction of the devices, `rollout_devices` to devices
//! listed by id. Both are optional, so a channel that offers its version to
//! every device reads as it always did; being in `channel.toml`, both are
//! covered by the signature.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::device::{is_lower_hex, DeviceId};
use super::rollout::{self, Rollout};
use crate::bundle::{sha256_hex, Bundle, SignaturePolicy, MANIFEST, SIGNATURE};
use crate::keys::{SecretKey, TrustStore};

pub const CHANNEL: &str = "channel.toml";
pub const CHANNEL_SIG: &str = "channel.sig";
/// The channel format this runtime reads and writes.
pub const FORMAT: u32 = 1;
/// A channel is a few lines; anything bigger is not one.
pub const MAX_CHANNEL_BYTES: u64 = 64 << 10;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub format: u32,
    /// The model line, the bundle manifest's `name`.
    pub name: String,
    /// The bundle manifest's `version`.
    pub version: u64,
    /// URL of the bundle tarball, absolute or relative to the channel's URL.
    pub bundle: String,
    /// Exact size of the tarball in bytes.
    pub size: u64,
    /// sha256 of the tarball, lowercase hex.
    pub sha256: String,
    /// `YYYY-MM-DDTHH:MM:SSZ`: after this the channel is refused (a frozen
    /// mirror cannot keep a device on an old version forever).
    pub expires: String,
    /// The share of devices this version is offered to, `0 < rollout <= 1`,
    /// each device drawn by [`rollout::includes`]; absent: every device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<f64>,
    /// Device ids (32 lowercase hex digits) offered this version whatever
    /// `rollout` draws.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollout_devices: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("{CHANNEL} is not valid: {0}")]
    Invalid(String),
    #[error("{CHANNEL_SIG} does not verify with any trusted key (tried {0})")]
    BadSignature(usize),
    #[error("expected a channel that expires after now ({now}) but it expired at {expires}")]
    Expired { expires: String, now: String },
}

impl Channel {
    /// Checks the signature with `trust`, then parses and checks the fields.
    /// The expiry is checked against `now` (seconds since the epoch).
    pub fn verify(text: &[u8], signature: &[u8], trust: &TrustStore, now: i64) -> Result<Channel> {
        let sig = crate::keys::parse_signature(signature)
            .map_err(|_| ChannelError::Invalid(format!("expected {CHANNEL_SIG} to be one hex line")))?;
        if trust.verify(text, &sig).is_none() {
            return Err(ChannelError::BadSignature(trust.len()).into());
        }
        let channel = Channel::parse(text)?;
        let expires = super::parse_utc(&channel.expires).expect("checked by parse");
        if expires <= now {
            return Err(
                ChannelError::Expired { expires: channel.expires, now: super::format_utc(now) }.into()
            );
        }
        Ok(channel)
    }

    /// Parses and checks the fields, without the signature.
    pub fn parse(text: &[u8]) -> Result<Channel, ChannelError> {
        let text =
            std::str::from_utf8(text).map_err(|_| ChannelError::Invalid("expected UTF-8 text".into()))?;
        let c: Channel = toml::from_str(text).map_err(|e| ChannelError::Invalid(e.message().to_string()))?;
        let bad = |what: String| Err(ChannelError::Invalid(what));
        if c.format != FORMAT {
            return bad(format!("expected format {FORMAT} but channel has {}", c.format));
        }
        if c.name.is_empty() || c.bundle.is_empty() {
            return bad("expected a name and a bundle URL".into());
        }
        if !is_lower_hex(&c.sha256, 64) {
            return bad("expected sha256 as 64 lowercase hex digits".into());
        }
        if super::parse_utc(&c.expires).is_none() {
            return bad(format!("expected expires as YYYY-MM-DDTHH:MM:SSZ but channel has {:?}", c.expires));
        }
        if let Some(f) = c.rollout {
            rollout::check_fraction(f).map_err(ChannelError::Invalid)?;
        }
        if let Some(id) = c.rollout_devices.iter().find(|id| DeviceId::parse(id).is_none()) {
            return bad(format!(
                "expected rollout_devices as ids of 32 lowercase hex digits but channel has {id:?}"
            ));
        }
        Ok(c)
    }

    /// Whether `device` is offered this version: listed, or drawn into the
    /// rollout's fraction.
    pub fn includes(&self, device: &DeviceId) -> bool {
        rollout::includes(device, self.version, self.rollout.unwrap_or(1.0), &self.rollout_devices)
    }

    /// The devices offered this version, as a sentence says it (`10% of
    /// devices and 2 listed`), or `None` when it is every device.
    pub fn reach(&self) -> Option<String> {
        let fraction = self.rollout.filter(|&f| f < 1.0)?;
        Some(rollout::describe(fraction, self.rollout_devices.len()))
    }

    /// The tarball's URL, resolving a relative one against `channel_url`.
    pub fn bundle_url(&self, channel_url: &str) -> String {
        if self.bundle.contains("://") {
            return self.bundle.clone();
        }
        let base = channel_url.rsplit_once('/').map_or(channel_url, |(dir, _)| dir);
        format!("{base}/{}", self.bundle.trim_start_matches("./"))
    }
}

/// Writes `channel.toml` and `channel.sig` into `dir`, each atomically, the
/// signature last so a reader never pairs a new channel with an old
/// signature for long (and never trusts a mismatched pair).
pub fn write(dir: &Path, channel: &Channel, key: &SecretKey) -> Result<()> {
    let text = toml::to_string(channel).context("cannot encode channel")?;
    let sig = key.sign(text.as_bytes());
    crate::fsutil::write_atomic(&dir.join(CHANNEL), text.as_bytes())?;
    crate::fsutil::write_atomic(
        &dir.join(CHANNEL_SIG),
        format!("{}\n", hex::encode(sig.to_bytes())).as_bytes(),
    )
}

/// What `publish` wrote.
#[derive(Debug)]
pub struct Published {
    pub channel: Channel,
    pub tarball: PathBuf,
    /// The `channel.toml` written next to it.
    pub channel_file: PathBuf,
}

impl std::fmt::Display for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.channel;
        write!(
            f,
            "published {} v{}: {} ({} bytes, sha256 {}); {} expires {}",
            c.name,
            c.version,
            self.tarball.display(),
            c.size,
            c.sha256,
            self.channel_file.display(),
            c.expires
        )?;
        if let Some(reach) = c.reach() {
            write!(f, "; offered to {reach}")?;
        }
        Ok(())
    }
}

/// Publishes the bundle at `bundle` (a directory or a `.tar`): verifies it
/// with `trust`, writes its tarball `<name>-<version>.tar` into `out` (a
/// directory is packed with sorted entries and fixed metadata, a tar is
/// copied as is), then a channel pointing at it, valid for `valid_for`,
/// offered as `rollout` says, signed with `key`. A rollout to every device
/// writes neither rollout field, so that agents which predate them read
/// the channel too.
pub fn publish(
    bundle: &Path,
    trust: &TrustStore,
    key: &SecretKey,
    out: &Path,
    valid_for: Duration,
    rollout: Rollout,
) -> Result<Published> {
    let rollout = rollout.checked().map_err(anyhow::Error::msg)?;
    let staged = rollout.fraction < 1.0;
    let opened = Bundle::open(bundle, trust, SignaturePolicy::Require)?;
    let m = &opened.manifest;
    let bytes = if bundle.is_dir() {
        let mut names = vec![MANIFEST.to_string(), SIGNATURE.to_string()];
        names.extend(m.files.keys().cloned());
        pack_dir(bundle, &names)?
    } else {
        crate::fsutil::read_regular(bundle, crate::bundle::MAX_FILE_BYTES, "bundle")?
    };
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let name = format!("{}-{}.tar", m.name, m.version);
    let tarball = out.join(&name);
    crate::fsutil::write_atomic(&tarball, &bytes)?;
    let channel = Channel {
        format: FORMAT,
        name: m.name.clone(),
        version: m.version,
        bundle: name,
        size: bytes.len() as u64,
        sha256: sha256_hex(&bytes),
        expires: super::format_utc(super::now_unix().saturating_add(valid_for.as_secs() as i64)),
        rollout: staged.then_some(rollout.fraction),
        rollout_devices: if staged { rollout.devices } else { Vec::new() },
    };
    write(out, &channel, key)?;
    Ok(Published { channel, tarball, channel_file: out.join(CHANNEL) })
}

/// A tar of `names` (relative paths inside `dir`), in that order, with
/// mtime 0, owner 0 and mode 0644: the same files give the same bytes.
fn pack_dir(dir: &Path, names: &[String]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for name in names {
        let bytes = std::fs::read(dir.join(name))
            .with_context(|| format!("{}/{name}: cannot read", dir.display()))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, name, bytes.as_slice())?;
    }
    Ok(builder.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel() -> Channel {
        Channel {
            format: FORMAT,
            name: "m".into(),
            version: 3,
            bundle: "m-3.tar".into(),
            size: 10,
            sha256: "ab".repeat(32),
            expires: "2030-01-01T00:00:00Z".into(),
            rollout: None,
            rollout_devices: Vec::new(),
        }
    }

    #[test]
    fn verify_checks_signature_then_expiry() {
        let key = SecretKey::generate();
        let mut trust = TrustStore::default();
        trust.add(key.public(), "test".into());
        let text = toml::to_string(&channel()).unwrap();
        let sig = hex::encode(key.sign(text.as_bytes()).to_bytes());
        let now = super::super::parse_utc("2029-12-31T23:59:59Z").unwrap();
        assert_eq!(Channel::verify(text.as_bytes(), sig.as_bytes(), &trust, now).unwrap(), channel());
        let err = Channel::verify(text.as_bytes(), sig.as_bytes(), &trust, now + 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected a channel that expires after now (2030-01-01T00:00:00Z) but it expired at 2030-01-01T00:00:00Z"
        );
        let other = TrustStore::default();
        assert!(Channel::verify(text.as_bytes(), sig.as_bytes(), &other, now).is_err());
        let tampered = text.replace("version = 3", "version = 4");
        let err = Channel::verify(tampered.as_bytes(), sig.as_bytes(), &trust, now).unwrap_err();
        assert_eq!(err.to_string(), "channel.sig does not verify with any trusted key (tried 1)");
    }

    #[test]
    fn relative_bundle_urls_resolve_against_the_channel() {
        let c = channel();
        assert_eq!(
            c.bundle_url("https://cdn.example/fleet/channel.toml"),
            "https://cdn.example/fleet/m-3.tar"
        );
        let abs = Channel { bundle: "https://other.example/m.tar".into(), ..channel() };
        assert_eq!(abs.bundle_url("https://cdn.example/channel.toml"), "https://other.example/m.tar");
    }

    #[test]
    fn rollout_fields_are_optional_and_signed() {
        let plain = toml::to_string(&channel()).unwrap();
        assert!(!plain.contains("rollout"), "{plain}");
        let id = "0123456789abcdef".repeat(2);
        let staged = Channel { rollout: Some(0.1), rollout_devices: vec![id.clone()], ..channel() };
        let text = toml::to_string(&staged).unwrap();
        assert!(text.ends_with(&format!("rollout = 0.1\nrollout_devices = [\"{id}\"]\n")), "{text}");
        assert_eq!(Channel::parse(text.as_bytes()).unwrap(), staged);
        assert_eq!(staged.reach().as_deref(), Some("10% of devices and 1 listed"));
        assert!(staged.includes(&DeviceId::parse(&id).unwrap()));
        let everyone = plain.clone() + "rollout = 1\n";
        assert_eq!(Channel::parse(everyone.as_bytes()).unwrap().reach(), None);

        let key = SecretKey::generate();
        let mut trust = TrustStore::default();
        trust.add(key.public(), "test".into());
        let sig = hex::encode(key.sign(text.as_bytes()).to_bytes());
        let now = super::super::parse_utc("2029-01-01T00:00:00Z").unwrap();
        let widened = text.replace("rollout = 0.1", "rollout = 1.0");
        let err = Channel::verify(widened.as_bytes(), sig.as_bytes(), &trust, now).unwrap_err();
        assert_eq!(err.to_string(), "channel.sig does not verify with any trusted key (tried 1)");

        for (field, needle) in [
            ("rollout = 0.0", "expected a rollout fraction above 0 and at most 1 but found 0"),
            ("rollout = 1.5", "expected a rollout fraction above 0 and at most 1 but found 1.5"),
            ("rollout = nan", "expected a rollout fraction above 0 and at most 1 but found NaN"),
            (
                "rollout_devices = [\"ABC\"]",
                "expected rollout_devices as ids of 32 lowercase hex digits but channel has \"ABC\"",
            ),
        ] {
            let err = Channel::parse(format!("{plain}{field}\n").as_bytes()).unwrap_err().to_string();
            assert_eq!(err, format!("channel.toml is not valid: {needle}"));
        }
    }

    #[test]
    fn parse_rejects_bad_fields() {
        let text = toml::to_string(&Channel { sha256: "XY".into(), ..channel() }).unwrap();
        assert!(Channel::parse(text.as_bytes()).unwrap_err().to_string().contains("sha256"));
        // What agents that predate a field say about a channel carrying it.
        let text = toml::to_string(&channel()).unwrap() + "extra = 1\n";
        let err = Channel::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(
            err.starts_with("channel.toml is not valid: unknown field `extra`, expected one of `format`"),
            "{err}"
        );
    }
}
