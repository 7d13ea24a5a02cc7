//! Staged rollouts through the real binary: a fleet of state directories
//! against one channel, and devices left out installing nothing until
//! listed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use edgevit::{channel, rollout::includes, DeviceId};
use edgevit_tests::*;

use super::{assert_classifies, assert_on_v1, device_on_v1, publish, status, update, Nginx};

/// `count` state directories, each holding a device id of its own, the same
/// ids on every run: the share drawn from them is then the same on every
/// run too (the ids the binary chooses are tested in `update::device`).
fn fleet(tmp: &Path, count: usize) -> Vec<(PathBuf, DeviceId)> {
    (0..count)
        .map(|i| {
            let state = tmp.join(format!("device-{i:03}"));
            std::fs::create_dir_all(&state).unwrap();
            let hex = edgevit::sha256_hex(format!("device {i}").as_bytes());
            let id = DeviceId::parse(&hex[..32]).unwrap();
            std::fs::write(state.join("device-id"), format!("{id}\n")).unwrap();
            (state, id)
        })
        .collect()
}

/// What `update check` says about the device in `state`: whether it takes
/// the channel's version, and the line it printed.
fn check(state: &Path, url: &str) -> (bool, String) {
    let run = update("check", state, Some(url), &[]);
    let line = run.ok().stdout.trim().to_string();
    if line.starts_with("update available: ") {
        (true, line)
    } else if line.starts_with("not for this device yet: ") {
        (false, line)
    } else {
        panic!("neither available nor withheld: {line}")
    }
}

/// `update check` for every device, four at a time; whether each takes the version.
fn check_fleet(fleet: &[(PathBuf, DeviceId)], url: &str, fraction: f64) -> Vec<bool> {
    let mut taken = vec![false; fleet.len()];
    std::thread::scope(|scope| {
        let workers: Vec<_> = fleet
            .chunks(fleet.len().div_ceil(4))
            .zip(taken.chunks_mut(fleet.len().div_ceil(4)))
            .map(|(devices, taken)| {
                scope.spawn(move || {
                    for ((state, id), taken) in devices.iter().zip(taken) {
                        let (is_in, line) = check(state, url);
                        if fraction < 1.0 {
                            assert!(line.contains(&format!("this device (id {id}) is")), "{line}");
                        }
                        *taken = is_in;
                    }
                })
            })
            .collect();
        workers.into_iter().for_each(|w| w.join().unwrap());
    });
    taken
}

fn publish_rollout(site: &Path, fraction: &str, listed: &[&DeviceId]) {
    let mut extra = vec!["--rollout".to_string(), fraction.to_string()];
    for id in listed {
        extra.extend(["--rollout-device".to_string(), id.to_string()]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    publish(&repo(FP32_BUNDLE), site, &extra).ok();
}

#[test]
fn a_staged_rollout_keeps_its_devices_and_widening_only_adds() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = fleet(tmp.path(), 200);
    let site = tmp.path().join("site");
    let url = format!("file://{}", site.join(channel::CHANNEL).display());

    publish_rollout(&site, "0.1", &[]);
    let tenth = check_fleet(&fleet, &url, 0.1);
    let count = tenth.iter().filter(|&&t| t).count();
    assert!((10..=30).contains(&count), "{count} of 200 devices in a 10% rollout");
    for ((_, id), &taken) in fleet.iter().zip(&tenth) {
        assert_eq!(taken, includes(id, 1, 0.1, &[]), "the binary and the library disagree on {id}");
    }
    assert_eq!(check_fleet(&fleet, &url, 0.1), tenth, "a second check changed the devices in");

    let (left_out, id) = &fleet[tenth.iter().position(|&t| !t).unwrap()];
    publish_rollout(&site, "0.1", &[id]);
    let (is_in, line) = check(left_out, &url);
    assert!(is_in && line.ends_with(&format!("this device (id {id}) is listed")), "{line}");

    publish_rollout(&site, "0.5", &[]);
    let half = check_fleet(&fleet, &url, 0.5);
    assert!(tenth.iter().zip(&half).all(|(&was, &now)| !was || now), "widening dropped a device");
    let widened = half.iter().filter(|&&t| t).count();
    assert!(widened > count && (70..=130).contains(&widened), "{widened} of 200 in a 50% rollout");

    publish_rollout(&site, "1", &[]);
    assert!(check_fleet(&fleet, &url, 1.0).iter().all(|&t| t), "a rollout to every device left one out");
    let text = std::fs::read_to_string(site.join(channel::CHANNEL)).unwrap();
    assert!(!text.contains("rollout"), "a rollout to everyone writes no rollout fields:\n{text}");
}

/// The first of a run of made-up ids that `version` offered to `fraction` leaves out.
fn id_left_out(version: u64, fraction: f64) -> DeviceId {
    (0u64..)
        .map(|i| DeviceId::parse(&format!("{i:032x}")).unwrap())
        .find(|id| !includes(id, version, fraction, &[]))
        .unwrap()
}

#[test]
fn a_device_left_out_installs_nothing_until_listed() {
    let nginx = Nginx::start();
    let tmp = tempfile::tempdir().unwrap();
    let state = device_on_v1(&nginx, tmp.path());
    let id = id_left_out(2, 0.5);
    std::fs::write(state.join("device-id"), format!("{id}\n")).unwrap();
    let site = nginx.site("staged");
    let v2 = super::bundle_version(tmp.path(), 2, |_| {});
    publish(&v2, &site, &["--rollout", "0.5"]).ok();
    let url = nginx.channel_url("staged");

    let expected = format!(
        "not for this device yet: fmnist-vit-ggem v2 offered to 50% of devices; this device (id {id}) is not in: staying on v1"
    );
    assert_eq!(update("check", &state, Some(&url), &[]).ok().stdout.trim(), expected);
    assert_eq!(update("apply", &state, Some(&url), &[]).ok().stdout.trim(), expected);
    assert_on_v1(&state);
    assert_eq!(status(&state)["last_error"], serde_json::Value::Null);

    // The run loop's poller leaves it alone too, saying so at debug level.
    let out = without_proxies(&mut Command::new(binary()))
        .args(["run", "pattern://", "null://", "--json", "--input-rate", "30", "--frames", "60"])
        .arg("--state-dir")
        .arg(&state)
        .args(["--trust", DEV_PUB, "--trust-dir", "/nonexistent", "--update-interval", "200ms"])
        .arg("--update-channel")
        .arg(&url)
        .current_dir(root())
        .env("RUST_LOG", "error,edgevit::update=debug")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("update: {expected}")), "the poller did not decide:\n{stderr}");
    let versions: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["version"].as_u64().unwrap())
        .collect();
    assert!(versions.len() == 60 && versions.iter().all(|&v| v == 1), "{versions:?}");
    assert_on_v1(&state);
    assert!(!nginx.log("devices.log").contains("/staged/fmnist-vit-ggem-2.tar"), "the tarball was fetched");

    let v2 = super::bundle_version(tmp.path(), 2, |_| {});
    publish(&v2, &site, &["--rollout", "0.5", "--rollout-device", id.as_str()]).ok();
    let check = update("check", &state, Some(&url), &[]);
    assert!(check.ok().stdout.trim().ends_with(&format!("(id {id}) is listed")), "{}", check.stdout);
    let apply = update("apply", &state, Some(&url), &[]);
    assert!(
        apply.ok().stdout.starts_with("installed fmnist-vit-ggem v2 in slot b (was v1)"),
        "{}",
        apply.stdout
    );
    assert_classifies(&state, 2);
}

#[test]
fn publish_refuses_a_bad_fraction_or_id() {
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site");
    let bundle = repo(FP32_BUNDLE);
    for fraction in ["0", "1.5", "-0.1", "NaN"] {
        let found = fraction.parse::<f64>().unwrap();
        publish(&bundle, &site, &["--rollout", fraction])
            .fails_with(&format!("expected a rollout fraction above 0 and at most 1 but found {found}"));
    }
    publish(&bundle, &site, &["--rollout", "0.1", "--rollout-device", "0123ABCD"]).fails_with(
        "expected a rollout device id of 32 lowercase hex digits (as `update status` prints it) but found \"0123ABCD\"",
    );
    assert!(!site.exists(), "a refused publish wrote something");
}
