//! `channel.toml` and `channel.sig` from a web server: the first line of the
//! input is the signature, the rest the channel.
#![no_main]

#[path = "common.rs"]
#[allow(dead_code)]
mod common;

use edgevit::{channel::Channel, DeviceId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (signature, text) = common::split_first_line(data);
    if let Ok(channel) = Channel::parse(text) {
        let _ = channel.bundle_url("https://cdn.example/fleet/channel.toml");
        let _ = channel.reach();
        for id in
            channel.rollout_devices.iter().chain(["0123456789abcdef0123456789abcdef".to_string()].iter())
        {
            if let Some(device) = DeviceId::parse(id) {
                let _ = channel.includes(&device);
            }
        }
    }
    let _ = Channel::verify(text, signature, common::trust(), 1_800_000_000);
});
