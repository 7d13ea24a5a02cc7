//! `channel.toml` and `channel.sig` from a web server: the first line of the
//! input is the signature, the rest the channel.
#![no_main]

#[path = "common.rs"]
#[allow(dead_code)]
mod common;

use edgevit::channel::Channel;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (signature, text) = common::split_first_line(data);
    if let Ok(channel) = Channel::parse(text) {
        let _ = channel.bundle_url("https://cdn.example/fleet/channel.toml");
    }
    let _ = Channel::verify(text, signature, common::trust(), 1_800_000_000);
});
