//! `png://DIR`: numbered PNG snapshots of the rendered canvas.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{Canvas, Display, DisplayArgs};
use crate::overlay::OverlayContent;
use crate::preprocess::Image;

/// Writes `DIR/frame-000001.png`, `frame-000002.png`, ...: one snapshot for
/// the first frame and every `--output-every`th after it, numbered without
/// gaps (so `ffmpeg -i frame-%06d.png` reads them as a clip). Frames between
/// snapshots are not drawn. Existing files of the same name are replaced.
///
/// Each file appears whole: it is written to a hidden temporary in `DIR` and
/// renamed over its name. There is no fsync; a snapshot that a power cut
/// loses is not worth slowing every frame for.
#[derive(Debug)]
pub struct PngSnapshots {
    dir: PathBuf,
    canvas: Canvas,
    every: u32,
    /// Frames presented so far.
    frames: u64,
    /// Snapshots written so far.
    written: u64,
    /// A frame was rendered for the next snapshot.
    pending: bool,
    encoded: Vec<u8>,
}

impl PngSnapshots {
    /// Creates `dir` if needed; the canvas is `--output-width` x `--output-height`.
    pub fn create(dir: &Path, args: &DisplayArgs) -> Result<PngSnapshots> {
        std::fs::create_dir_all(dir).with_context(|| {
            format!("output URI png://{}: cannot create directory {}", dir.display(), dir.display())
        })?;
        Ok(PngSnapshots {
            dir: dir.to_path_buf(),
            canvas: Canvas::new(args.output_width, args.output_height),
            every: args.output_every.max(1),
            frames: 0,
            written: 0,
            pending: false,
            encoded: Vec::new(),
        })
    }
}

impl Display for PngSnapshots {
    fn render(&mut self, frame: &Image, content: &OverlayContent) -> Result<()> {
        self.pending = self.frames.is_multiple_of(u64::from(self.every));
        if !self.pending {
            return Ok(());
        }
        self.canvas.compose(frame, content)
    }

    fn present(&mut self) -> Result<()> {
        self.frames += 1;
        if !std::mem::take(&mut self.pending) {
            return Ok(());
        }
        let path = self.dir.join(format!("frame-{:06}.png", self.written + 1));
        self.canvas
            .encode_png(&mut self.encoded)
            .with_context(|| format!("{}: cannot encode", path.display()))?;
        crate::fsutil::write_replace(&path, &self.encoded).context("png snapshot")?;
        self.written += 1;
        Ok(())
    }

    fn describe(&self) -> String {
        let every = match self.every {
            1 => "every frame".to_string(),
            n => format!("1 frame in {n}"),
        };
        format!("png://{} ({}x{}, {every})", self.dir.display(), self.canvas.width(), self.canvas.height())
    }
}
