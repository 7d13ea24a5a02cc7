//! Staged rollouts: which devices take a channel's version.
//!
//! A channel may offer its version to a fraction of the fleet and, whatever
//! the fraction, to devices listed by id. Each device decides for itself,
//! from its id and the version alone: the first 8 bytes of
//! sha256("<id>\n<version>"), read as a big-endian integer `h`, place it in
//! the fleet, and it takes the version when `h / 2^64 < fraction`. The same
//! device and version always land in the same place, so a device stays in
//! or out while the fraction stays, and a wider fraction only adds devices.
//! A new version draws a new sample, so the first devices of one rollout
//! are not the first of every rollout.

use sha2::{Digest, Sha256};

use super::device::DeviceId;

/// Who a published version is offered to.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    /// The share of devices drawn by [`includes`], `0 < fraction <= 1`.
    pub fraction: f64,
    /// Ids (32 lowercase hex digits) that take the version whatever the fraction.
    pub devices: Vec<String>,
}

impl Rollout {
    /// Every device.
    pub fn everyone() -> Rollout {
        Rollout { fraction: 1.0, devices: Vec::new() }
    }

    /// Checks the fraction and the ids; the ids come back sorted, once each.
    pub fn checked(self) -> Result<Rollout, String> {
        let fraction = check_fraction(self.fraction)?;
        let mut devices = self.devices;
        if let Some(bad) = devices.iter().find(|id| DeviceId::parse(id).is_none()) {
            return Err(format!(
                "expected a rollout device id of 32 lowercase hex digits (as `update status` prints it) but found {bad:?}"
            ));
        }
        devices.sort();
        devices.dedup();
        Ok(Rollout { fraction, devices })
    }
}

/// `fraction` when it is a share of devices, `0 < fraction <= 1`.
pub fn check_fraction(fraction: f64) -> Result<f64, String> {
    if fraction > 0.0 && fraction <= 1.0 {
        Ok(fraction)
    } else {
        Err(format!("expected a rollout fraction above 0 and at most 1 but found {fraction}"))
    }
}

/// Whether `device` takes `version` when it is offered to `fraction` of
/// all devices (`0 < fraction <= 1`) and to the `listed` ids.
pub fn includes(device: &DeviceId, version: u64, fraction: f64, listed: &[String]) -> bool {
    if fraction >= 1.0 || listed.iter().any(|id| id == device.as_str()) {
        return true;
    }
    // h / 2^64 < fraction exactly: fraction * 2^64 is exact (a power of
    // two), for an integer h, h < x is h < ceil(x), and below 1 the ceiling
    // is at most 2^64 - 2^11, a u64.
    let threshold = (fraction * 18_446_744_073_709_551_616.0).ceil() as u64;
    place(device, version) < threshold
}

/// The device's place in the fleet for `version`: the first 8 bytes of
/// sha256("<id>\n<version>") as a big-endian integer.
pub fn place(device: &DeviceId, version: u64) -> u64 {
    let digest = Sha256::digest(format!("{device}\n{version}"));
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// `10% of devices`, `0.5% of devices and 2 listed`.
pub fn describe(fraction: f64, listed: usize) -> String {
    let percent = format!("{:.3}", fraction * 100.0);
    let percent = percent.trim_end_matches('0').trim_end_matches('.');
    match listed {
        0 => format!("{percent}% of devices"),
        n => format!("{percent}% of devices and {n} listed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids that look like the ones devices choose, the same on every run.
    fn fleet(n: usize) -> Vec<DeviceId> {
        (0..n).map(|i| DeviceId::parse(&crate::bundle::sha256_hex(&i.to_le_bytes())[..32]).unwrap()).collect()
    }

    fn taken(fleet: &[DeviceId], version: u64, fraction: f64) -> Vec<&DeviceId> {
        fleet.iter().filter(|d| includes(d, version, fraction, &[])).collect()
    }

    #[test]
    fn the_place_is_the_first_eight_bytes_of_sha256() {
        let id = DeviceId::parse("0123456789abcdef0123456789abcdef").unwrap();
        // printf '0123456789abcdef0123456789abcdef\n3' | sha256sum | cut -c1-16
        assert_eq!(place(&id, 3), 0x4a950f64e1468b76);
        // 0x4a950f64e1468b76 / 2^64 = 0.29134
        assert!(includes(&id, 3, 0.2914, &[]));
        assert!(!includes(&id, 3, 0.2913, &[]));
    }

    #[test]
    fn the_fraction_draws_that_share_and_widening_only_adds() {
        let fleet = fleet(10_000);
        let tenth = taken(&fleet, 7, 0.1);
        assert!((900..1100).contains(&tenth.len()), "{}", tenth.len());
        assert_eq!(taken(&fleet, 7, 0.1), tenth, "the same devices on every decision");
        let half = taken(&fleet, 7, 0.5);
        assert!((4800..5200).contains(&half.len()), "{}", half.len());
        assert!(tenth.iter().all(|d| half.contains(d)));
        assert_eq!(taken(&fleet, 7, 1.0).len(), fleet.len());
        let next = taken(&fleet, 8, 0.1);
        assert_ne!(next, tenth, "each version draws its own sample");
    }

    #[test]
    fn a_listed_device_is_in_at_any_fraction() {
        let fleet = fleet(1000);
        let out = fleet.iter().find(|d| !includes(d, 2, 0.5, &[])).unwrap();
        let listed = vec![out.to_string()];
        for fraction in [f64::MIN_POSITIVE, 0.001, 0.5] {
            assert!(includes(out, 2, fraction, &listed));
        }
        assert_eq!(taken(&fleet, 2, f64::MIN_POSITIVE), Vec::<&DeviceId>::new());
    }

    #[test]
    fn fractions_and_ids_are_checked() {
        for bad in [0.0, -0.1, 1.0001, f64::NAN, f64::INFINITY] {
            let err = Rollout { fraction: bad, devices: vec![] }.checked().unwrap_err();
            assert!(err.starts_with("expected a rollout fraction above 0 and at most 1 but found"), "{err}");
        }
        let err = Rollout { fraction: 0.1, devices: vec!["ABC".into()] }.checked().unwrap_err();
        assert!(err.ends_with("but found \"ABC\""), "{err}");
        let id = "0123456789abcdef".repeat(2);
        let other = "f".repeat(32);
        let checked =
            Rollout { fraction: 0.1, devices: vec![other.clone(), id.clone(), other.clone()] }.checked();
        assert_eq!(checked, Ok(Rollout { fraction: 0.1, devices: vec![id, other] }));
    }

    #[test]
    fn shares_read_as_percentages() {
        assert_eq!(describe(0.1, 0), "10% of devices");
        assert_eq!(describe(0.005, 2), "0.5% of devices and 2 listed");
        assert_eq!(describe(1.0 / 3.0, 0), "33.333% of devices");
    }
}
