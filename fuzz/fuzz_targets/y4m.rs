//! A `.y4m` clip opened as `run`'s input: header, FRAME lines and planes,
//! up to a few frames.
#![no_main]

#[path = "common.rs"]
#[allow(dead_code)]
mod common;

use clap::Parser;
use edgevit::{open_source, Capture, SourceArgs};
use libfuzzer_sys::fuzz_target;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    source: SourceArgs,
}

fuzz_target!(|data: &[u8]| {
    let path = common::scratch().join("clip.y4m");
    std::fs::write(&path, data).unwrap();
    let args = Args::parse_from(["fuzz", "--input-loop", "0"]).source;
    let Ok(mut source) = open_source(&format!("file://{}", path.display()), &args) else { return };
    for _ in 0..4 {
        match source.capture() {
            Ok(Capture::Frame(_)) | Ok(Capture::NotYet) => {}
            Ok(Capture::End) | Err(_) => break,
        }
    }
});
