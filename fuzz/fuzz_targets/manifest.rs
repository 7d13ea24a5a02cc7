//! `manifest.toml` and `manifest.sig` as they arrive in a bundle: the first
//! line of the input is the signature, the rest the manifest.
#![no_main]

#[path = "common.rs"]
#[allow(dead_code)]
mod common;

use edgevit::{parse_manifest, RawBundle, SignaturePolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (signature, manifest) = common::split_first_line(data);
    let _ = parse_manifest(manifest);
    for policy in [SignaturePolicy::Require, SignaturePolicy::Skip] {
        let _ =
            RawBundle::from_memory(manifest, signature, &[]).verify("fuzz".into(), common::trust(), policy);
    }
});
