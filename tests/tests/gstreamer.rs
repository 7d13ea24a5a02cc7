//! Inputs through GStreamer, with Debian's GStreamer (`tools/test.sh`
//! installs it): clips made here from the shipped samples, classified
//! frame by frame as `classify` classifies the PNGs; `gst://` pipelines;
//! and the one-line errors for GStreamer absent and a pipeline that does
//! not parse.

use std::path::{Path, PathBuf};
use std::process::Command;

use edgevit_tests::*;

/// A clip of the 20 samples, one frame each, muxed by `gst-launch-1.0`
/// from `encode` (elements between the decoded PNGs and the muxer).
fn clip(dir: &Path, name: &str, encode: &str, mux: &str) -> PathBuf {
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    let mut samples = samples();
    samples.sort();
    for (i, sample) in samples.iter().enumerate() {
        std::fs::copy(sample, frames.join(format!("{i:02}.png"))).unwrap();
    }
    let out = dir.join(name);
    let pipeline = format!(
        "multifilesrc location={}/%02d.png index=0 stop-index=19 caps=image/png,framerate=10/1 ! pngdec ! videoconvert ! {encode} ! {mux} ! filesink location={}",
        frames.display(),
        out.display()
    );
    let status = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(pipeline.split(' '))
        .status()
        .expect("gst-launch-1.0 is not installed: tools/test.sh installs gstreamer1.0-tools");
    assert!(status.success(), "gst-launch-1.0 {pipeline}");
    out
}

/// The top-1 class of each `--json` frame line of a run.
fn top1s(run: &Run) -> Vec<u64> {
    run.ok()
        .json_lines()
        .iter()
        .filter(|f| f.get("frame").is_some())
        .map(|f| f["top_k"][0]["class"].as_u64().unwrap())
        .collect()
}

fn golden_top1() -> Vec<u64> {
    manifest(&repo(FP32_BUNDLE)).golden.unwrap().top1.iter().map(|&c| c as u64).collect()
}

#[test]
fn video_files_are_classified_frame_by_frame_as_their_pngs() {
    let tmp = tempfile::tempdir().unwrap();
    let golden = golden_top1();
    // Raw RGB in Matroska: the frames are the PNGs' pixels exactly.
    let mkv = clip(tmp.path(), "samples.mkv", "video/x-raw,format=RGB", "matroskamux");
    let uri = format!("file://{}", mkv.display());
    assert_eq!(top1s(&edgevit(["run", &uri, "null://", "--json"])), golden);
    let twice: Vec<u64> = golden.iter().chain(&golden).copied().collect();
    assert_eq!(top1s(&edgevit(["run", &uri, "null://", "--json", "--input-loop", "1"])), twice);

    // H.264 in MP4, lossless, decoded by whatever decodebin picks.
    let mp4 = clip(tmp.path(), "samples.mp4", "x264enc pass=quant quantizer=0", "mp4mux");
    let uri = format!("file://{}", mp4.display());
    assert_eq!(top1s(&edgevit(["run", &uri, "null://", "--json"])), golden);
}

#[test]
fn a_gst_pipeline_runs_to_its_end() {
    let run = edgevit([
        "run",
        "gst://videotestsrc num-buffers=12 ! video/x-raw,width=64,height=48",
        "null://",
        "--json",
    ]);
    assert_eq!(top1s(&run).len(), 12, "{}", run.stdout);
    assert!(run.stderr.contains("12 frames, 0 dropped"), "{}", run.stderr);
}

#[test]
fn gstreamer_absent_or_a_bad_pipeline_is_one_line() {
    let absent = [("EDGEVIT_GSTREAMER_DIR", "/nonexistent")];
    edgevit_env(["run", "gst://videotestsrc", "null://"], &absent)
        .fails_with("GStreamer not found: /nonexistent/libglib-2.0.so.0: ");
    // Every other input still works.
    edgevit_env(["run", "pattern://", "null://", "--frames", "3"], &absent).ok();
    let doctor = edgevit_env(["doctor"], &absent);
    assert!(doctor.ok().stdout.contains("gstreamer GStreamer not found"), "{}", doctor.stdout);

    edgevit(["run", "gst://videotestsrc ! nosuchelement", "null://"]).fails_with(
        "input gst://videotestsrc ! nosuchelement: the pipeline does not parse: no element \"nosuchelement\"",
    );
    edgevit(["run", "file://no/such/clip.mp4", "null://"])
        .fails_with("input file://no/such/clip.mp4: no such file");
    let doctor = edgevit(["doctor"]);
    let line =
        doctor.ok().stdout.lines().find(|l| l.starts_with("gstreamer ")).unwrap_or_default().to_string();
    assert!(line.starts_with("gstreamer 1.") && line.contains("rtspsrc"), "{}", doctor.stdout);
    assert!(line.contains("lacks nvarguscamerasrc nvvidconv nvv4l2decoder"), "{line}");
}
