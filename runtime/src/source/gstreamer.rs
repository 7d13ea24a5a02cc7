//! Frames through GStreamer ([`crate::gst`], loaded at run time): video
//! files, CSI cameras through NVIDIA's Argus, RTSP streams and any
//! pipeline the user writes. Each becomes a pipeline ending in
//! [`TAIL`]: a conversion to RGB and the app sink frames are pulled from.
//!
//! | URI | pipeline before the tail |
//! |---|---|
//! | `file://clip.mp4` (`.mkv`, `.avi`, `.mov`, `.webm`) | `filesrc location=... ! decodebin` |
//! | `csi://N` | `nvarguscamerasrc sensor-id=N ! video/x-raw(memory:NVMM),width=W,height=H,framerate=R/1 ! nvvidconv` |
//! | `rtsp://[user:pass@]host[:port]/path` | `rtspsrc location=... latency=MS ! decodebin` |
//! | `gst://PIPELINE` | `PIPELINE`, which must give raw video |
//!
//! Files and `gst://` pipelines are not live: every frame is delivered, end
//! of stream ends them (or starts the next pass with `--input-loop`).
//! Cameras and streams are live: the sink keeps only the newest frame, and
//! one that fails or ends (camera unplugged, server gone) is reopened with
//! the backoff V4L2 cameras have, 100 ms doubling to 5 s, once it has
//! given a first frame (one that stalls for [`STALL_TIMEOUT`] counts as
//! lost): one that gives none within [`FIRST_FRAME_TIMEOUT`]
//! of the start (a camera that is not there, a server that refuses) is an
//! error naming the last reason. An RTSP URL's credentials never appear in
//! a message or a log.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::camera::{FIRST_BACKOFF, MAX_BACKOFF};
use super::{Capture, Pacer, Repeat, Source, MAX_WAIT};
use crate::gst::{quoted, Pipeline, Pulled};
use crate::preprocess::{Image, PixelFormat};

/// The file extensions read as video through GStreamer.
pub(super) const VIDEO_EXTENSIONS: [&str; 5] = ["mp4", "mkv", "avi", "mov", "webm"];

/// What every pipeline ends in, before the sink's settings.
pub(super) const TAIL: &str = " ! videoconvert ! video/x-raw,format=RGB ! appsink name=edgevit";

/// [`TAIL`] with the sink's settings. Live: only the newest frame is kept.
/// Files: the sink holds the pipeline until its frame is taken, so nothing
/// is dropped.
fn tail(live: bool) -> String {
    let sink = if live { "max-buffers=1 drop=true" } else { "max-buffers=2 drop=false" };
    format!("{TAIL} {sink} sync=false")
}

/// A pipeline's description and how messages name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Description {
    pub(super) pipeline: String,
    pub(super) shown: String,
    /// The pipeline as logs show it: an RTSP URL without its credentials.
    pub(super) logged: String,
    pub(super) live: bool,
}

impl Description {
    fn new(pipeline: String, shown: String, live: bool) -> Description {
        Description { logged: pipeline.clone(), pipeline, shown, live }
    }
}

pub(super) fn video_file(path: &str) -> Description {
    Description::new(
        format!("filesrc location={} ! decodebin{}", quoted(path), tail(false)),
        format!("file://{path}"),
        false,
    )
}

pub(super) fn csi(sensor: u32, width: u32, height: u32, rate: f64) -> Description {
    let rate = if rate > 0.0 { rate.round().max(1.0) as u32 } else { 30 };
    Description::new(
        format!(
            "nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),width={width},height={height},framerate={rate}/1 ! nvvidconv{}",
            tail(true)
        ),
        format!("csi://{sensor}"),
        true,
    )
}

pub(super) fn rtsp(url: &str, latency_ms: u32) -> Description {
    let pipeline = |location: &str| {
        format!("rtspsrc location={} latency={latency_ms} ! decodebin{}", quoted(location), tail(true))
    };
    let shown = without_credentials(url);
    Description { pipeline: pipeline(url), logged: pipeline(&shown), shown, live: true }
}

pub(super) fn custom(pipeline: &str) -> Description {
    Description::new(format!("{pipeline}{}", tail(false)), format!("gst://{pipeline}"), false)
}

/// `rtsp://user:pass@host/path` as `rtsp://host/path`.
pub(super) fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://{host}{}", &rest[end..]),
        None => url.to_string(),
    }
}

/// How long a live source has to give its first frame.
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// A live source that gives no frame for this long is reopened (a server
/// gone without a word stalls a stream rather than ending it).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Frames from a GStreamer pipeline.
pub(super) struct GstSource {
    description: Description,
    pipeline: Option<Pipeline>,
    started: Instant,
    /// A frame has arrived since the start.
    delivered: bool,
    /// When the last frame arrived, or the pipeline (re)started.
    last_frame: Instant,
    /// Why the last open or stream of a live source failed.
    last_failure: Option<String>,
    repeat: Repeat,
    pacer: Pacer,
    /// Frames of this pass (files) or since the last (re)open (live).
    frames: u64,
    size: Option<(u32, u32)>,
    retry_at: Instant,
    backoff: Duration,
    ended: bool,
}

impl GstSource {
    /// Starts the pipeline now: one that cannot start is an error.
    pub(super) fn open(description: Description, repeat: Repeat, pacer: Pacer) -> Result<GstSource> {
        let pipeline = Pipeline::start(&description.pipeline, &description.shown)?;
        log::info!("{}: started", description.shown);
        log::debug!("{}: pipeline {}", description.shown, description.logged);
        Ok(GstSource {
            description,
            pipeline: Some(pipeline),
            started: Instant::now(),
            delivered: false,
            last_frame: Instant::now(),
            last_failure: None,
            repeat,
            pacer,
            frames: 0,
            size: None,
            retry_at: Instant::now(),
            backoff: FIRST_BACKOFF,
            ended: false,
        })
    }

    /// A live source's reopen, when due.
    fn reopen(&mut self) {
        let now = Instant::now();
        if now < self.retry_at {
            thread::sleep((self.retry_at - now).min(MAX_WAIT));
            return;
        }
        match Pipeline::start(&self.description.pipeline, &self.description.shown) {
            Ok(p) => {
                log::info!("{}: reopened", self.description.shown);
                self.pipeline = Some(p);
                self.frames = 0;
                self.last_frame = Instant::now();
            }
            Err(e) => self.fail(&format!("{e:#}")),
        }
    }

    /// A live source lost: log, back off, reopen later.
    fn fail(&mut self, why: &str) {
        self.last_failure = Some(why.to_string());
        self.backoff = if self.frames > 0 { FIRST_BACKOFF } else { (self.backoff * 2).min(MAX_BACKOFF) };
        log::warn!("{}: {why}; reopening in {} ms", self.description.shown, self.backoff.as_millis());
        self.pipeline = None;
        self.retry_at = Instant::now() + self.backoff;
    }
}

impl Source for GstSource {
    fn capture(&mut self) -> Result<Capture> {
        if self.ended {
            return Ok(Capture::End);
        }
        if self.description.live && !self.delivered && self.started.elapsed() > FIRST_FRAME_TIMEOUT {
            let why = self.last_failure.as_deref().map_or(String::new(), |w| format!(": {w}"));
            bail!(
                "input {}: no frame within {} s{why}",
                self.description.shown,
                FIRST_FRAME_TIMEOUT.as_secs()
            );
        }
        if self.pipeline.is_none() {
            self.reopen();
            return Ok(Capture::NotYet);
        }
        if !self.description.live && !self.pacer.ready() {
            return Ok(Capture::NotYet);
        }
        let pulled = self.pipeline.as_mut().expect("checked above").pull(MAX_WAIT);
        match pulled {
            Ok(Pulled::Frame(width, height, data)) => {
                self.frames += 1;
                self.delivered = true;
                self.last_frame = Instant::now();
                self.size = Some((width, height));
                Ok(Capture::Frame(Image { width, height, format: PixelFormat::Rgb8, data }))
            }
            Ok(Pulled::Nothing) if self.description.live && self.last_frame.elapsed() > STALL_TIMEOUT => {
                self.fail(&format!("no frame for {} s", STALL_TIMEOUT.as_secs()));
                Ok(Capture::NotYet)
            }
            Ok(Pulled::Nothing) => Ok(Capture::NotYet),
            Ok(Pulled::End) if self.description.live => {
                self.fail("the stream ended");
                Ok(Capture::NotYet)
            }
            Ok(Pulled::End) => {
                // A pass without frames would loop forever: end instead.
                if self.frames == 0 || !self.repeat.take() {
                    self.ended = true;
                    self.pipeline = None;
                    return Ok(Capture::End);
                }
                self.pipeline = Some(Pipeline::start(&self.description.pipeline, &self.description.shown)?);
                self.frames = 0;
                Ok(Capture::NotYet)
            }
            Err(e) if self.description.live => {
                self.fail(&format!("{e:#}"));
                Ok(Capture::NotYet)
            }
            Err(e) => Err(e.context(format!("input {}", self.description.shown))),
        }
    }

    fn describe(&self) -> String {
        match self.size {
            Some((w, h)) => format!("{} ({w}x{h}, GStreamer)", self.description.shown),
            None => format!("{} (GStreamer)", self.description.shown),
        }
    }

    fn is_live(&self) -> bool {
        self.description.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_uri_builds_its_pipeline() {
        let file = video_file("clips/a \"b\".mp4");
        assert_eq!(
            file.pipeline,
            "filesrc location=\"clips/a \\\"b\\\".mp4\" ! decodebin ! videoconvert ! video/x-raw,format=RGB ! appsink name=edgevit max-buffers=2 drop=false sync=false"
        );
        assert!(!file.live);
        let cam = csi(1, 1280, 720, 0.0);
        assert_eq!(
            cam.pipeline,
            "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! nvvidconv ! videoconvert ! video/x-raw,format=RGB ! appsink name=edgevit max-buffers=1 drop=true sync=false"
        );
        assert!(cam.live);
        assert!(csi(0, 640, 480, 59.94).pipeline.contains("framerate=60/1"));
        assert!(TAIL.ends_with(&format!("appsink name={}", crate::gst::SINK)));
        let stream = rtsp("rtsp://admin:s3cret@10.0.0.9:8554/cam", 200);
        assert!(stream.pipeline.starts_with(
            "rtspsrc location=\"rtsp://admin:s3cret@10.0.0.9:8554/cam\" latency=200 ! decodebin"
        ));
        assert_eq!(stream.shown, "rtsp://10.0.0.9:8554/cam");
        assert!(stream
            .logged
            .starts_with("rtspsrc location=\"rtsp://10.0.0.9:8554/cam\" latency=200 ! decodebin"));
        assert_eq!(file.logged, file.pipeline);
        assert!(custom("videotestsrc num-buffers=3")
            .pipeline
            .starts_with("videotestsrc num-buffers=3 ! videoconvert"));
        assert!(custom("x").pipeline.ends_with(&format!("{TAIL} max-buffers=2 drop=false sync=false")));
    }
}
