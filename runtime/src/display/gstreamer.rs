//! `gst://PIPELINE` and `file://out.mp4`: the overlay frames into a
//! GStreamer pipeline ([`crate::gst`], loaded at run time) that starts with
//! an app source named `edgevit`: recorded, encoded, sent as RTP or RTSP.
//! Every frame is drawn on the `--output-width` x `--output-height`
//! canvas and pushed as RGB, timestamped by the time since the first, so
//! a recording plays at the pace the frames were classified.
//!
//! `file://NAME.mp4` (`.mkv`, `.mov`) is the shorthand for recording with
//! H.264: `nvv4l2h264enc` where it exists (Jetson), else `x264enc`. The
//! file appears whole: the pipeline writes a hidden temporary beside it,
//! renamed over the name once the muxer has finished, when the run ends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{Canvas, Display, DisplayArgs};
use crate::gst::{self, Feed};
use crate::overlay::OverlayContent;
use crate::preprocess::Image;

/// The recording containers `file://` takes, and their muxers.
pub const CONTAINERS: [(&str, &str); 3] = [("mp4", "mp4mux"), ("mkv", "matroskamux"), ("mov", "qtmux")];

/// How long the run's end waits for the pipeline to finish its stream.
const FINISH_WAIT: Duration = Duration::from_secs(10);

/// The H.264 encoder: NVIDIA's on Jetson, else x264 tuned for speed.
fn encoder() -> &'static str {
    if gst::has_element("nvv4l2h264enc").unwrap_or(false) {
        "nvvidconv ! video/x-raw(memory:NVMM),format=I420 ! nvv4l2h264enc ! h264parse"
    } else {
        "videoconvert ! x264enc speed-preset=ultrafast tune=zerolatency"
    }
}

/// The recording pipeline for `path`, writing to `partial`.
fn recording(path: &Path, partial: &Path) -> Result<String> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    let Some((_, mux)) = CONTAINERS.iter().find(|(e, _)| *e == ext) else {
        bail!("output URI file://{}: expected a .mp4, .mkv or .mov file to record to", path.display());
    };
    let location = partial.to_str().context("a recording path that is not UTF-8")?;
    Ok(format!(
        "appsrc name={} ! {} ! {mux} ! filesink location={}",
        gst::SOURCE,
        encoder(),
        gst::quoted(location)
    ))
}

/// Frames into a GStreamer pipeline.
pub struct GstOutput {
    shown: String,
    canvas: Canvas,
    feed: Feed,
    /// For `file://`: the temporary written and the name it becomes.
    recording: Option<(PathBuf, PathBuf)>,
}

impl GstOutput {
    /// `gst://PIPELINE`, which must start with `appsrc name=edgevit`.
    pub fn pipeline(pipeline: &str, args: &DisplayArgs) -> Result<GstOutput> {
        let shown = format!("gst://{pipeline}");
        let feed = Feed::start(pipeline, &shown, args.output_width, args.output_height)?;
        Ok(GstOutput {
            shown,
            canvas: Canvas::new(args.output_width, args.output_height),
            feed,
            recording: None,
        })
    }

    /// `file://PATH` with a container extension: an H.264 recording.
    pub fn record(path: &Path, args: &DisplayArgs) -> Result<GstOutput> {
        let shown = format!("file://{}", path.display());
        let name = path.file_name().with_context(|| format!("output URI {shown}: expected a file name"))?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.is_dir() {
            bail!("output URI {shown}: {} is not a directory", dir.display());
        }
        let partial = dir.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
        let description = recording(path, &partial)?;
        let feed = Feed::start(&description, &shown, args.output_width, args.output_height);
        let feed = feed.inspect_err(|_| {
            let _ = std::fs::remove_file(&partial);
        })?;
        Ok(GstOutput {
            shown,
            canvas: Canvas::new(args.output_width, args.output_height),
            feed,
            recording: Some((partial, path.to_path_buf())),
        })
    }
}

impl Display for GstOutput {
    fn render(&mut self, frame: &Image, content: &OverlayContent) -> Result<()> {
        self.canvas.compose(frame, content)
    }

    fn present(&mut self) -> Result<()> {
        self.feed.push(self.canvas.data())
    }

    fn finish(&mut self) -> Result<()> {
        self.feed.finish(FINISH_WAIT)?;
        if let Some((partial, path)) = self.recording.take() {
            std::fs::rename(&partial, &path).with_context(|| {
                format!("output {}: cannot rename {} to it", self.shown, partial.display())
            })?;
            log::info!("recorded {}", path.display());
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{} ({}x{} RGB)", self.shown, self.canvas.width(), self.canvas.height())
    }
}

impl Drop for GstOutput {
    fn drop(&mut self) {
        // A recording that did not finish leaves the name as it was.
        if let Some((partial, _)) = &self.recording {
            let _ = std::fs::remove_file(partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recordings_pick_the_muxer_by_extension_and_quote_the_path() {
        let p = recording(Path::new("out/a b.MKV"), Path::new("out/.a b.MKV.partial-1")).unwrap();
        assert!(p.starts_with("appsrc name=edgevit ! "), "{p}");
        assert!(p.ends_with(" ! matroskamux ! filesink location=\"out/.a b.MKV.partial-1\""), "{p}");
        let e = recording(Path::new("clip.webm"), Path::new(".clip.webm.partial")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "output URI file://clip.webm: expected a .mp4, .mkv or .mov file to record to"
        );
    }
}
