//! The short soak: `edgevit run pattern:// null://` for 5000 frames with two
//! hot swaps from a local channel, through `tools/soak.py` (the long run is
//! `tools/soak.sh`). Memory must not grow with the swaps.

use std::process::Command;

use edgevit_tests::*;

#[test]
fn five_thousand_frames_and_two_swaps_keep_memory_flat() {
    let out = Command::new("python3")
        .arg(repo("tools/soak.py"))
        .arg("--bin")
        .arg(binary())
        .args(["--frames", "5000", "--swap-every", "1500", "--max-growth-mib", "4"])
        .current_dir(root())
        .output()
        .expect("run python3 tools/soak.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "soak failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("v3 from frame"), "two swaps expected:\n{stdout}");
    eprintln!("{stdout}");
}
