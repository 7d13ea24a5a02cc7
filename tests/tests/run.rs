//! `edgevit run`: the main job end to end, and the capture side's promise to
//! drop rather than queue.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use edgevit::{capture, Capture, Slot, Source, SourceArgs};
use edgevit_tests::*;

#[test]
fn samples_to_pngs_agree_with_classify_and_print_the_stage_table() {
    let tmp = tempfile::tempdir().unwrap();
    let out = format!("png://{}", tmp.path().display());
    let input = format!("file://{SAMPLES}/");
    let run = edgevit(["run", &input, &out, "--json", "--profile", "--profile-every", "10"]);
    let frames: Vec<serde_json::Value> = run
        .ok()
        .stdout
        .lines()
        .filter(|l| l.starts_with("{\"frame\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let golden = manifest(&repo(FP32_BUNDLE)).golden.unwrap();
    assert_eq!(frames.len(), 20, "{}", run.stdout);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f["frame"], i as u64);
        assert_eq!(f["top_k"][0]["class"].as_u64().unwrap() as usize, golden.top1[i], "frame {i}: {f}");
    }
    let pngs = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "png"))
        .count();
    assert_eq!(pngs, 20);
    assert!(run.stderr.contains("20 frames, 0 dropped"), "{}", run.stderr);
    for stage in ["Preprocess", "Network", "Postprocess", "Overlay", "Total"] {
        assert!(run.stderr.contains(stage), "{stage} missing:\n{}", run.stderr);
    }
    // Two tables during the run (every 10 frames), on stdout with the frame log.
    assert_eq!(run.stdout.matches("after 10 frames").count(), 2, "{}", run.stdout);
}

#[test]
fn text_mode_prints_the_summary_on_stdout() {
    let input = format!("file://{SAMPLES}/t10k-0000*.png");
    let run = edgevit(["run", &input, "--headless"]);
    let out = &run.ok().stdout;
    // t10k-00000 to t10k-00009 minus 00005, which is not among the samples.
    assert!(out.contains("9 frames, 0 dropped"), "{out}");
    assert!(out.contains("Network"), "{out}");
}

#[test]
fn bad_uris_are_one_clear_line() {
    edgevit(["run", "ftp://camera", "null://"]).fails_with("input URI ftp://camera");
    edgevit(["run", "pattern://", "gopher://screen"]).fails_with("output URI gopher://screen");
    edgevit(["run", "file://no/such/dir/", "null://"]).fails_with("no/such/dir");
}

#[test]
fn sigint_stops_cleanly_with_a_summary() {
    let mut child = Command::new(binary())
        .args(["run", "pattern://", "null://", "--json"])
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..5 {
        let line = lines.next().unwrap().unwrap();
        assert!(line.starts_with("{\"frame\""), "{line}");
    }
    // SAFETY: kill(2) on our own child's pid with a valid signal number.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(" frames, ") && stderr.contains("Total"), "{stderr}");
    assert!(rest.iter().all(|l| l.starts_with("{\"frame\"")), "{rest:?}");
}

/// A live source that yields `left` frames of `pattern://`, then ends.
struct Limited {
    inner: Box<dyn Source>,
    left: u64,
}

impl Source for Limited {
    fn capture(&mut self) -> anyhow::Result<Capture> {
        if self.left == 0 {
            return Ok(Capture::End);
        }
        let c = self.inner.capture()?;
        if matches!(c, Capture::Frame(_)) {
            self.left -= 1;
        }
        Ok(c)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn is_live(&self) -> bool {
        self.inner.is_live()
    }
}

/// A consumer far slower than the camera: the slot never holds more than
/// one frame, the rest are counted as dropped, and memory stays flat.
#[test]
fn a_slow_consumer_makes_capture_drop_not_queue() {
    const FRAMES: u64 = 10_000;
    let args = SourceArgs { input_width: Some(160), input_height: Some(120), ..SourceArgs::default() };
    let source =
        Box::new(Limited { inner: edgevit::open_source("pattern://", &args).unwrap(), left: FRAMES });
    let slot = Arc::new(Slot::default());
    let stop = Arc::new(AtomicBool::new(false));
    let rss_before = rss_bytes(std::process::id());
    let producer = {
        let (slot, stop) = (slot.clone(), stop.clone());
        std::thread::spawn(move || capture(source, &slot, &stop))
    };
    let (mut taken, mut max_depth) = (0u64, 0usize);
    while let Some(_frame) = slot.take(&stop).unwrap() {
        taken += 1;
        max_depth = max_depth.max(slot.depth());
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    producer.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let growth = rss_bytes(std::process::id()).saturating_sub(rss_before);
    assert!(max_depth <= 1, "queue depth reached {max_depth}");
    assert_eq!(taken + slot.dropped(), FRAMES, "every frame is either taken or counted as dropped");
    assert!(slot.dropped() > taken, "taken {taken}, dropped {}", slot.dropped());
    assert!(growth < 16 << 20, "RSS grew by {growth} bytes over {FRAMES} frames");
}

#[test]
fn frames_flag_stops_after_exactly_that_many() {
    let run = edgevit(["run", "pattern://", "null://", "--frames", "50", "--json"]);
    let frames = run.ok().json_lines();
    assert_eq!(frames.len(), 50);
    assert!(run.stderr.contains("50 frames, "), "{}", run.stderr);
}

/// `run --json` and `classify --json` say a prediction one way: the same
/// fields (the frame's index in place of the image's file), and for the
/// same image the same classes, scores and logits.
#[test]
fn run_and_classify_print_one_prediction_schema() {
    let input = format!("file://{SAMPLES}/");
    let run = edgevit(["run", &input, "null://", "--json", "--top-k", "3"]);
    let frames: Vec<serde_json::Value> = run.ok().json_lines();
    let samples: Vec<String> = samples().iter().map(|p| p.display().to_string()).collect();
    let samples: Vec<&str> = samples.iter().map(String::as_str).collect();
    let classify = edgevit([&["classify", "--json", "--top-k", "3"][..], &samples].concat());
    let images = classify.ok().json_lines();
    assert_eq!((frames.len(), images.len()), (20, 20));
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let with = |key: &str| -> Vec<String> {
        let mut keys: Vec<String> =
            ["backend", "logits", "model", "top_k", "version", key].map(String::from).into();
        keys.sort();
        keys
    };
    for (i, (frame, image)) in frames.iter().zip(&images).enumerate() {
        assert_eq!(keys(frame), with("frame"), "{frame}");
        assert_eq!(keys(image), with("image"), "{image}");
        assert_eq!(frame["frame"], i as u64);
        assert_eq!(image["image"], samples[i]);
        let top = |v: &serde_json::Value| -> Vec<(u64, String)> {
            let top = v["top_k"].as_array().unwrap();
            top.iter()
                .map(|c| (c["class"].as_u64().unwrap(), c["label"].as_str().unwrap().to_string()))
                .collect()
        };
        assert_eq!(top(frame), top(image), "frame {i}");
        assert_eq!(top(frame).len(), 3);
        let logits = |v: &serde_json::Value| -> Vec<f64> {
            v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
        };
        let scores = |v: &serde_json::Value| -> Vec<f64> {
            v["top_k"].as_array().unwrap().iter().map(|c| c["score"].as_f64().unwrap()).collect()
        };
        for (what, a, b) in
            [("logits", logits(frame), logits(image)), ("scores", scores(frame), scores(image))]
        {
            assert_eq!(a.len(), b.len());
            assert!(a.iter().zip(&b).all(|(a, b)| (a - b).abs() <= 1e-5), "frame {i} {what}: {a:?} vs {b:?}");
        }
    }
}
