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

/// The frames of a video file, as `run file://... --json` counts them.
fn frames_of(path: &Path) -> usize {
    top1s(&edgevit(["run", &format!("file://{}", path.display()), "null://", "--json"])).len()
}

#[test]
fn gst_and_file_outputs_record_clips_that_play_back() {
    let tmp = tempfile::tempdir().unwrap();
    // gst:// in, gst:// out: a pipeline of our own records to MP4.
    let out = tmp.path().join("pattern.mp4");
    let sink = format!(
        "gst://appsrc name=edgevit ! videoconvert ! x264enc speed-preset=ultrafast ! mp4mux ! filesink location={}",
        out.display()
    );
    let run = edgevit([
        "run",
        "gst://videotestsrc num-buffers=15 ! video/x-raw,width=64,height=48",
        &sink,
        "--output-width",
        "320",
        "--output-height",
        "240",
    ]);
    assert!(run.ok().stdout.contains("15 frames, 0 dropped"), "{}", run.stdout);
    assert_eq!(frames_of(&out), 15);

    // file://out.mkv: the shorthand, from the samples' clip, replacing an
    // older recording only once the new one is whole.
    let mkv = clip(tmp.path(), "samples.mkv", "video/x-raw,format=RGB", "matroskamux");
    let recorded = tmp.path().join("annotated.mkv");
    std::fs::write(&recorded, b"an older recording").unwrap();
    let uri = format!("file://{}", recorded.display());
    edgevit(["run", &format!("file://{}", mkv.display()), &uri]).ok();
    assert_eq!(frames_of(&recorded), 20);
    let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!names.iter().any(|n| n.to_string_lossy().contains(".partial")), "{names:?}");

    // Stopped by SIGTERM mid-run, a recording is finished and plays back.
    let live = tmp.path().join("live.mp4");
    let run = Background::start(
        &["run", "pattern://", &format!("file://{}", live.display()), "--input-rate", "20"],
        &[],
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    run.terminate();
    let frames: usize =
        run.finish().ok().stdout.split(" frames").next().unwrap().trim().parse().expect("the run's summary");
    assert!(frames > 0);
    assert_eq!(frames_of(&live), frames);
}

#[test]
fn bad_outputs_are_one_line_and_leave_the_old_file() {
    let tmp = tempfile::tempdir().unwrap();
    let input = "gst://videotestsrc num-buffers=3 ! video/x-raw,width=64,height=48";
    edgevit(["run", input, "gst://videotestsrc ! fakesink"]).fails_with(
        "output gst://videotestsrc ! fakesink: expected the pipeline to start with `appsrc name=edgevit`",
    );
    edgevit(["run", input, "gst://appsrc name=edgevit ! nosuchencoder ! fakesink"])
        .fails_with("the pipeline does not parse: no element \"nosuchencoder\"");
    edgevit(["run", input, "file://out.webm"])
        .fails_with("output URI file://out.webm: expected a .mp4, .mkv or .mov file to record to");
    // A recording killed mid-run: the file of that name stays as it was.
    let kept = tmp.path().join("kept.mp4");
    std::fs::write(&kept, b"keep me").unwrap();
    let mut run = Background::start(&["run", "pattern://", &format!("file://{}", kept.display())], &[]);
    let partial = tmp.path().join(format!(".kept.mp4.partial-{}", run.child.id()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) == 0 {
        assert!(std::time::Instant::now() < deadline, "no recording started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    run.child.kill().unwrap();
    run.child.wait().unwrap();
    assert_eq!(std::fs::read(&kept).unwrap(), b"keep me");
}

/// GStreamer's RTSP server (`tools/rtsp-server.py`) on 127.0.0.1:`port`,
/// killed when dropped.
struct RtspServer(std::process::Child);

impl RtspServer {
    fn start(port: u16) -> RtspServer {
        use std::io::BufRead;
        let mut child = Command::new("/usr/bin/python3")
            .arg(repo("tools/rtsp-server.py"))
            .arg(port.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 is missing");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "tools/test.sh installs gir1.2-gst-rtsp-server-1.0 and python3-gi");
        RtspServer(child)
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn rtsp_streams_arrive_reconnect_and_take_the_latency() {
    let port = free_port();
    let server = RtspServer::start(port);
    let url = format!("rtsp://viewer:s3cret@127.0.0.1:{port}/test");
    let run = Background::start(
        &["run", url.as_str(), "null://", "--json", "--frames", "40", "--input-rtsp-latency", "123"],
        &[("RUST_LOG", "edgevit=debug")],
    );
    let next = |what: &str| {
        run.lines
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no frame {what}"))
    };
    for _ in 0..10 {
        next("from the server");
    }
    // The server goes away mid-run and comes back on the same port.
    drop(server);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let _server = RtspServer::start(port);
    let run = run.finish();
    let frames = run.ok().json_lines().len();
    assert_eq!(frames + 10, 40, "{}", run.stderr);
    assert!(run.stderr.contains("reopen"), "no reconnect in the log:\n{}", run.stderr);
    let pipeline = format!("rtspsrc location=\"rtsp://127.0.0.1:{port}/test\" latency=123 ! decodebin");
    assert!(run.stderr.contains(&pipeline), "the latency does not reach the pipeline:\n{}", run.stderr);
    assert!(!run.stderr.contains("s3cret"), "credentials in the log:\n{}", run.stderr);
}

#[test]
fn an_rtsp_url_that_refuses_is_one_line_after_the_timeout() {
    let url = format!("rtsp://127.0.0.1:{}/nothing", free_port());
    edgevit(["run", &url, "null://"]).fails_with(&format!("input {url}: no frame within 10 s: "));
}
