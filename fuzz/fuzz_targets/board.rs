//! A board profile, as `/etc/edgevit/board.toml` or `--board-file`.
#![no_main]

use edgevit::Board;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(board) = Board::parse(text, "fuzz") {
        let _ = board.gpu_path();
        let _ = board.fits(&["any".into(), board.compatible.clone()]);
    }
});
