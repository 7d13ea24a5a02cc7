//! A downloaded bundle tarball: read it as the updater does, and when it
//! verifies, write it out as a slot. Nothing may land outside the slot.
#![no_main]

#[path = "common.rs"]
#[allow(dead_code)]
mod common;

use edgevit::{RawBundle, SignaturePolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let root = common::scratch();
    let tar = root.join("bundle.tar");
    let slot = root.join("slot");
    std::fs::write(&tar, data).unwrap();
    let _ = std::fs::remove_dir_all(&slot);
    let Ok(raw) = RawBundle::from_tar(&tar) else { return };
    let Ok(bundle) = raw.verify("fuzz".into(), common::trust(), SignaturePolicy::Skip) else { return };
    bundle.write_dir(&slot, &mut |_| {}).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(root).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["bundle.tar", "slot"], "a bundle wrote outside its slot");
});
