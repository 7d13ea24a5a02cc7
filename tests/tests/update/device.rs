//! The device id through the real binary: chosen once, kept across runs,
//! shown by `update status`, and sent with every request (nginx logs it).

use edgevit::DeviceId;

use super::{device_on_v1, status, update, Nginx};

#[test]
fn the_device_id_is_kept_shown_and_sent_with_every_request() {
    let nginx = Nginx::start();
    let tmp = tempfile::tempdir().unwrap();
    let fresh = tmp.path().join("fresh");
    assert!(update("status", &fresh, None, &[]).ok().stdout.contains("device id    none yet"));
    assert_eq!(status(&fresh)["device_id"], serde_json::Value::Null);

    let state = device_on_v1(&nginx, tmp.path());
    let id = status(&state)["device_id"].as_str().unwrap().to_string();
    assert!(DeviceId::parse(&id).is_some(), "{id}");
    let text = update("status", &state, None, &[]);
    assert!(text.ok().stdout.contains(&format!("device id    {id}\n")), "{}", text.stdout);
    update("check", &state, Some(&nginx.channel_url("v1")), &[]).ok();
    assert_eq!(status(&state)["device_id"].as_str(), Some(id.as_str()), "the id changed between runs");

    let other = device_on_v1(&nginx, tmp.path());
    let other_id = status(&other)["device_id"].as_str().unwrap().to_string();
    assert_ne!(other_id, id);

    let log = nginx.log("devices.log");
    for name in ["channel.toml", "channel.sig", "fmnist-vit-ggem-1.tar"] {
        for device in [&id, &other_id] {
            let line = format!("/v1/{name} 200 \"{device}\"");
            assert!(log.lines().any(|l| l == line), "no {line:?} in nginx's log:\n{log}");
        }
    }
    assert!(log
        .lines()
        .all(|l| l.ends_with(&format!("\"{id}\"")) || l.ends_with(&format!("\"{other_id}\""))));

    std::fs::write(state.join("device-id"), "not an id\n").unwrap();
    let needle = format!(
        "device id {}: expected 32 lowercase hex digits on one line but found \"not an id\\n\"",
        state.join("device-id").display()
    );
    update("check", &state, Some(&nginx.channel_url("v1")), &[]).fails_with(&needle);
    update("status", &state, None, &[]).fails_with(&needle);
}
