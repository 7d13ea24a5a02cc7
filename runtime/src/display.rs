//! Where frames go: each frame is scaled onto a canvas, the overlay is drawn
//! on top, and the canvas is shown on a Linux framebuffer, written as PNG
//! snapshots, served to browsers, fed to GStreamer, or dropped.
//!
//! Outputs are chosen by URI ([`open`]):
//!
//! | URI | output | canvas |
//! |---|---|---|
//! | `fb:///dev/fb0` (`fb://` alone means `/dev/fb0`) | a Linux framebuffer, 16 or 32 bits per pixel | the device's visible resolution |
//! | `png://DIR` | `DIR/frame-000001.png`, `frame-000002.png`, ... one per `--output-every` frames | `--output-width` x `--output-height` |
//! | `http://ADDR:PORT/` | a live view: page, MJPEG stream, `/stats.json`, `/metrics` ([`http`]) | `--output-width` x `--output-height` |
//! | `gst://PIPELINE` | a GStreamer pipeline starting with `appsrc name=edgevit` ([`gstreamer`]) | `--output-width` x `--output-height` |
//! | `file://NAME.mp4` (`.mkv`, `.mov`) | an H.264 recording through GStreamer | `--output-width` x `--output-height` |
//! | `null://` | nothing: rendering and presenting cost nothing | none |
//!
//! Scaling: the frame keeps its aspect ratio and is centered, with black
//! bars on the two sides it does not fill (letterbox). Sampling is nearest
//! neighbour at pixel centers (canvas pixel `d` of `D` takes frame pixel
//! `floor((d + 0.5) * S / D)` of `S`): one lookup per pixel, no blur when a
//! 28x28 model input is blown up to a screen, and exact values in tests.
//! Gray frames are shown as gray RGB.

mod fb;
mod gstreamer;
mod http;
mod png;

use std::convert::Infallible;
use std::path::Path;

use anyhow::{bail, Result};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::Rectangle;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};

pub use fb::Framebuffer;
pub use gstreamer::GstOutput;
pub use http::HttpOutput;
pub use png::PngSnapshots;

use crate::overlay::OverlayContent;
use crate::preprocess::{Image, PixelFormat};
use crate::stats::{Histogram, Stats};

/// Largest canvas side accepted for `png://` output.
pub const MAX_CANVAS_SIDE: u32 = 16384;
/// The framebuffer behind a bare `fb://`.
pub const DEFAULT_FRAMEBUFFER: &str = "/dev/fb0";

/// Output canvas and snapshot sampling.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct DisplayArgs {
    /// Width in pixels of `png://` snapshots (`fb://` uses the device's resolution).
    #[arg(long, value_name = "PIXELS", default_value_t = 640,
          value_parser = clap::value_parser!(u32).range(1..=MAX_CANVAS_SIDE as i64))]
    pub output_width: u32,
    /// Height in pixels of `png://` snapshots (`fb://` uses the device's resolution).
    #[arg(long, value_name = "PIXELS", default_value_t = 480,
          value_parser = clap::value_parser!(u32).range(1..=MAX_CANVAS_SIDE as i64))]
    pub output_height: u32,
    /// Keep one `png://` snapshot every N frames, from the first; files are numbered without gaps.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub output_every: u32,
    /// Most frames per second an `http://` output encodes and streams.
    #[arg(long, value_name = "FPS", default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=120))]
    pub output_fps: u32,
}

impl Default for DisplayArgs {
    fn default() -> Self {
        DisplayArgs { output_width: 640, output_height: 480, output_every: 1, output_fps: 15 }
    }
}

/// An output for classified frames.
pub trait Display: Send {
    /// Draws `frame` (Gray8 or Rgb8), letterboxed onto the canvas, with the
    /// overlay for `content` on top. Nothing is visible before [`Display::present`].
    fn render(&mut self, frame: &Image, content: &OverlayContent) -> Result<()>;
    /// Makes the last rendered canvas visible: copies it to the framebuffer,
    /// or writes the PNG snapshot when this frame is one to keep.
    fn present(&mut self) -> Result<()>;
    /// Sees the loop's counters after each frame (for outputs that show them).
    fn observe(&mut self, _stats: &Stats) {}
    /// A stage of the output's own, off the loop, for `run --profile`.
    fn profile(&self) -> Option<(&'static str, Histogram)> {
        None
    }
    /// Ends the output when the run ends: a recording is finished and
    /// renamed into place. Dropping without it abandons the output.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
    /// One line for logs: URI, size, pixel format.
    fn describe(&self) -> String;
}

/// Opens the output named by `uri`: `fb://DEVICE`, `png://DIR` (created if
/// missing), `http://ADDR:PORT/`, `gst://PIPELINE`, `file://NAME.mp4` or
/// `null://`.
pub fn open(uri: &str, args: &DisplayArgs) -> Result<Box<dyn Display>> {
    let side = 1..=MAX_CANVAS_SIDE;
    if !side.contains(&args.output_width) || !side.contains(&args.output_height) {
        bail!(
            "output {uri}: expected --output-width and --output-height from 1 to {MAX_CANVAS_SIDE} but got {}x{}",
            args.output_width,
            args.output_height
        );
    }
    if args.output_every == 0 {
        bail!("output {uri}: expected --output-every of at least 1 but got 0");
    }
    if let Some(path) = uri.strip_prefix("fb://") {
        let path = if path.is_empty() { DEFAULT_FRAMEBUFFER } else { path };
        return Ok(Box::new(Framebuffer::open(Path::new(path))?));
    }
    if let Some(dir) = uri.strip_prefix("png://") {
        if dir.is_empty() {
            bail!("output URI {uri}: expected a directory after png://, e.g. png://snapshots/");
        }
        return Ok(Box::new(PngSnapshots::create(Path::new(dir), args)?));
    }
    if uri.starts_with("http://") {
        return Ok(Box::new(HttpOutput::open(uri, args)?));
    }
    if let Some(pipeline) = uri.strip_prefix("gst://") {
        if pipeline.trim().is_empty() {
            bail!("output URI {uri}: expected a pipeline after gst://, e.g. gst://appsrc name=edgevit ! videoconvert ! autovideosink");
        }
        return Ok(Box::new(GstOutput::pipeline(pipeline, args)?));
    }
    if let Some(path) = uri.strip_prefix("file://") {
        if path.is_empty() {
            bail!("output URI {uri}: expected a file after file://, e.g. file://out.mp4");
        }
        return Ok(Box::new(GstOutput::record(Path::new(path), args)?));
    }
    if let Some(rest) = uri.strip_prefix("null://") {
        if !rest.is_empty() {
            bail!("output URI {uri}: null:// takes no path");
        }
        return Ok(Box::new(Null));
    }
    bail!("output URI {uri}: expected fb://, png://, http://, gst://, file:// or null://")
}

/// `null://`: drops every frame without drawing it.
#[derive(Debug)]
struct Null;

impl Display for Null {
    fn render(&mut self, _frame: &Image, _content: &OverlayContent) -> Result<()> {
        Ok(())
    }

    fn present(&mut self) -> Result<()> {
        Ok(())
    }

    fn describe(&self) -> String {
        "null:// (frames are not drawn)".to_string()
    }
}

/// A canvas in memory: RGB, 3 bytes per pixel, rows packed. A `DrawTarget`
/// that drops pixels outside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canvas {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl Canvas {
    /// A black `width x height` canvas.
    pub fn new(width: u32, height: u32) -> Canvas {
        Canvas { width, height, data: vec![0; width as usize * height as usize * 3] }
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// The pixels, RGB, rows packed.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The pixel at `(x, y)`; panics outside the canvas.
    #[cfg(test)]
    pub fn pixel(&self, x: u32, y: u32) -> Rgb888 {
        assert!(x < self.width && y < self.height, "({x}, {y}) outside {}x{}", self.width, self.height);
        let i = (y as usize * self.width as usize + x as usize) * 3;
        Rgb888::new(self.data[i], self.data[i + 1], self.data[i + 2])
    }

    /// Sets the pixel at `(x, y)`; panics outside the canvas.
    pub fn set_pixel(&mut self, x: u32, y: u32, color: Rgb888) {
        assert!(x < self.width && y < self.height, "({x}, {y}) outside {}x{}", self.width, self.height);
        let i = (y as usize * self.width as usize + x as usize) * 3;
        self.data[i..i + 3].copy_from_slice(&[color.r(), color.g(), color.b()]);
    }

    /// Sets every pixel to `color`.
    #[cfg(test)]
    pub fn fill(&mut self, color: Rgb888) {
        for px in self.data.chunks_exact_mut(3) {
            px.copy_from_slice(&[color.r(), color.g(), color.b()]);
        }
    }

    /// Draws `frame` letterboxed over the whole canvas and the overlay for
    /// `content` on top: what every canvas output shows.
    pub fn compose(&mut self, frame: &Image, content: &OverlayContent) -> Result<()> {
        letterbox(self, frame)?;
        let Ok(()) = crate::overlay::draw(self, content);
        Ok(())
    }

    /// Encodes the canvas as an RGB PNG into `out` (cleared first), favouring
    /// speed over size.
    pub fn encode_png(&self, out: &mut Vec<u8>) -> Result<()> {
        out.clear();
        PngEncoder::new_with_quality(&mut *out, CompressionType::Fast, FilterType::Adaptive).write_image(
            &self.data,
            self.width,
            self.height,
            ExtendedColorType::Rgb8,
        )?;
        Ok(())
    }
}

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(self.width, self.height)
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(&mut self, pixels: I) -> Result<(), Infallible> {
        for Pixel(p, color) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < self.width && (p.y as u32) < self.height {
                self.set_pixel(p.x as u32, p.y as u32, color);
            }
        }
        Ok(())
    }

    /// Row by row, not pixel by pixel: the overlay's boxes are most of its pixels.
    fn fill_solid(&mut self, area: &Rectangle, color: Rgb888) -> Result<(), Infallible> {
        let area = area.intersection(&self.bounding_box());
        if area.size.width > 0 && area.size.height > 0 {
            let (x, y) = (area.top_left.x as u32, area.top_left.y as u32);
            self.fill_rect(x, y, area.size.width, area.size.height, color);
        }
        Ok(())
    }
}

/// Row access for the frame scaler; callers stay in bounds.
pub(crate) trait Raster {
    fn raster_size(&self) -> (u32, u32);
    /// Sets pixels `x0..` of line `y` to `colors`.
    fn write_row(&mut self, x0: u32, y: u32, colors: impl Iterator<Item = Rgb888>);
    /// Copies pixels `x0..x0 + width` of line `from` to line `to`.
    fn copy_row(&mut self, x0: u32, width: u32, from: u32, to: u32);
    /// Sets a `width x height` rectangle at `(x0, y0)` to `color`.
    fn fill_rect(&mut self, x0: u32, y0: u32, width: u32, height: u32, color: Rgb888);
    /// Sets pixels `x0..` of line `y` to the RGB triples of `rgb`.
    fn write_rgb_row(&mut self, x0: u32, y: u32, rgb: &[u8]) {
        self.write_row(x0, y, rgb.chunks_exact(3).map(|p| Rgb888::new(p[0], p[1], p[2])));
    }
}

impl Raster for Canvas {
    fn raster_size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn write_row(&mut self, x0: u32, y: u32, colors: impl Iterator<Item = Rgb888>) {
        let start = (y as usize * self.width as usize + x0 as usize) * 3;
        let end = (y as usize + 1) * self.width as usize * 3;
        for (px, c) in self.data[start..end].chunks_exact_mut(3).zip(colors) {
            px.copy_from_slice(&[c.r(), c.g(), c.b()]);
        }
    }

    fn copy_row(&mut self, x0: u32, width: u32, from: u32, to: u32) {
        let at = |y: u32| (y as usize * self.width as usize + x0 as usize) * 3;
        self.data.copy_within(at(from)..at(from) + width as usize * 3, at(to));
    }

    fn fill_rect(&mut self, x0: u32, y0: u32, width: u32, height: u32, color: Rgb888) {
        let rgb = [color.r(), color.g(), color.b()];
        for y in y0..y0 + height {
            let start = (y as usize * self.width as usize + x0 as usize) * 3;
            for px in self.data[start..start + width as usize * 3].chunks_exact_mut(3) {
                px.copy_from_slice(&rgb);
            }
        }
    }

    fn write_rgb_row(&mut self, x0: u32, y: u32, rgb: &[u8]) {
        let start = (y as usize * self.width as usize + x0 as usize) * 3;
        self.data[start..start + rgb.len()].copy_from_slice(rgb);
    }
}

/// Where a frame lands on the canvas: the largest centered rectangle with
/// the frame's aspect ratio (rounded to whole pixels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Placement {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Placement {
    /// `frame` and `canvas` are `(width, height)`, all non-zero.
    pub fn letterbox(frame: (u32, u32), canvas: (u32, u32)) -> Placement {
        let (fw, fh) = (frame.0 as u64, frame.1 as u64);
        let (cw, ch) = (canvas.0 as u64, canvas.1 as u64);
        let (width, height) = if fw * ch <= fh * cw {
            (((2 * fw * ch + fh) / (2 * fh)).clamp(1, cw), ch)
        } else {
            (cw, ((2 * fh * cw + fw) / (2 * fw)).clamp(1, ch))
        };
        Placement {
            x: ((cw - width) / 2) as u32,
            y: ((ch - height) / 2) as u32,
            width: width as u32,
            height: height as u32,
        }
    }
}

/// The source index that destination pixel `d` of `dst_len` samples, of `src_len`.
fn nearest(d: u32, dst_len: u32, src_len: u32) -> usize {
    ((2 * d as u64 + 1) * src_len as u64 / (2 * dst_len as u64)) as usize
}

#[inline]
fn rgb(p: &[u8]) -> Rgb888 {
    Rgb888::new(p[0], p[1], p[2])
}

/// Draws `frame` letterboxed onto `dst`, with black bars.
pub(crate) fn letterbox<R: Raster>(dst: &mut R, frame: &Image) -> Result<()> {
    let (fw, fh) = (frame.width, frame.height);
    let channels = frame.format.channels();
    if fw == 0 || fh == 0 {
        bail!("cannot display an empty {fw}x{fh} frame");
    }
    if frame.data.len() != fw as usize * fh as usize * channels {
        bail!(
            "expected {} bytes for a {fw}x{fh} {:?} frame but it has {}",
            fw as usize * fh as usize * channels,
            frame.format,
            frame.data.len()
        );
    }
    let (cw, ch) = dst.raster_size();
    if cw == 0 || ch == 0 {
        return Ok(());
    }
    let p = Placement::letterbox((fw, fh), (cw, ch));
    let black = Rgb888::BLACK;
    let (right, bottom) = (p.x + p.width, p.y + p.height);
    dst.fill_rect(0, 0, cw, p.y, black);
    dst.fill_rect(0, bottom, cw, ch - bottom, black);
    dst.fill_rect(0, p.y, p.x, p.height, black);
    dst.fill_rect(right, p.y, cw - right, p.height, black);

    let columns: Vec<usize> = (0..p.width).map(|dx| nearest(dx, p.width, fw) * channels).collect();
    let stride = fw as usize * channels;
    let mut previous = None;
    for y in p.y..bottom {
        let sy = nearest(y - p.y, p.height, fh);
        // Enlarged frames repeat source lines: convert each once.
        if previous == Some(sy) {
            dst.copy_row(p.x, p.width, y - 1, y);
            continue;
        }
        previous = Some(sy);
        let row = &frame.data[sy * stride..][..stride];
        match frame.format {
            PixelFormat::Gray8 => {
                dst.write_row(p.x, y, columns.iter().map(|&sx| Rgb888::new(row[sx], row[sx], row[sx])))
            }
            // Same width: the row as it is.
            PixelFormat::Rgb8 if p.width == fw => dst.write_rgb_row(p.x, y, row),
            PixelFormat::Rgb8 => dst.write_row(p.x, y, columns.iter().map(|&sx| rgb(&row[sx..sx + 3]))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay;

    fn content() -> OverlayContent<'static> {
        static TOP: [(f32, &str); 2] = [(0.9731, "Ankle boot"), (0.0150, "Sandal")];
        OverlayContent { top: &TOP, model: "fmnist-vit-ggem", version: 1, backend: "cpu", fps: 123.4 }
    }

    fn gray(width: u32, height: u32, data: &[u8]) -> Image {
        Image { width, height, format: PixelFormat::Gray8, data: data.to_vec() }
    }

    /// One character per pixel: the gray value's digit (0..9 for 0, 10, ... 90).
    fn digits(canvas: &Canvas) -> Vec<String> {
        (0..canvas.height())
            .map(|y| {
                (0..canvas.width())
                    .map(|x| {
                        let c = canvas.pixel(x, y);
                        assert!(c.r() == c.g() && c.g() == c.b());
                        char::from(b'0' + c.r() / 10)
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn wide_frames_get_bars_above_and_below() {
        let mut canvas = Canvas::new(8, 6);
        canvas.fill(Rgb888::WHITE);
        letterbox(&mut canvas, &gray(4, 2, &[10, 20, 30, 40, 50, 60, 70, 80])).unwrap();
        assert_eq!(
            digits(&canvas),
            ["00000000", "11223344", "11223344", "55667788", "55667788", "00000000"].map(String::from)
        );
    }

    #[test]
    fn tall_frames_get_bars_left_and_right() {
        let mut canvas = Canvas::new(6, 4);
        letterbox(&mut canvas, &gray(2, 4, &[10, 20, 30, 40, 50, 60, 70, 80])).unwrap();
        assert_eq!(digits(&canvas), ["001200", "003400", "005600", "007800"].map(String::from));
    }

    #[test]
    fn downscaling_samples_pixel_centers() {
        let data: Vec<u8> = (0..8).map(|i| i * 10).collect();
        let mut canvas = Canvas::new(4, 1);
        letterbox(&mut canvas, &gray(8, 1, &data)).unwrap();
        // Centers of 4 pixels over 8: 1, 3, 5, 7.
        assert_eq!(digits(&canvas), ["1357"]);
    }

    #[test]
    fn rgb_frames_keep_their_channels() {
        let frame = Image { width: 2, height: 1, format: PixelFormat::Rgb8, data: vec![1, 2, 3, 4, 5, 6] };
        let mut canvas = Canvas::new(4, 2);
        letterbox(&mut canvas, &frame).unwrap();
        assert_eq!(canvas.pixel(1, 0), Rgb888::new(1, 2, 3));
        assert_eq!(canvas.pixel(2, 1), Rgb888::new(4, 5, 6));
    }

    #[test]
    fn placement_rounds_and_centers() {
        let p = Placement::letterbox((28, 28), (640, 480));
        assert_eq!(p, Placement { x: 80, y: 0, width: 480, height: 480 });
        let p = Placement::letterbox((1920, 1080), (128, 64));
        assert_eq!(p, Placement { x: 7, y: 0, width: 114, height: 64 });
        let p = Placement::letterbox((1000, 1), (10, 10));
        assert_eq!(p, Placement { x: 0, y: 4, width: 10, height: 1 });
    }

    #[test]
    fn malformed_frames_are_refused() {
        let mut canvas = Canvas::new(4, 4);
        let err = letterbox(&mut canvas, &gray(2, 2, &[0; 3])).unwrap_err();
        assert_eq!(err.to_string(), "expected 4 bytes for a 2x2 Gray8 frame but it has 3");
        let err = letterbox(&mut canvas, &gray(0, 2, &[])).unwrap_err();
        assert_eq!(err.to_string(), "cannot display an empty 0x2 frame");
    }

    #[test]
    fn canvas_drops_pixels_outside() {
        let mut canvas = Canvas::new(2, 2);
        let pixels = [(-1, 0), (0, -1), (2, 0), (0, 2), (i32::MAX, i32::MIN), (1, 1)];
        let Ok(()) = canvas.draw_iter(pixels.map(|(x, y)| Pixel(Point::new(x, y), Rgb888::WHITE)));
        assert_eq!(canvas.data(), [0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255]);
    }

    #[test]
    fn solid_fills_are_clipped_to_the_canvas() {
        let mut canvas = Canvas::new(3, 2);
        let white = Rgb888::WHITE;
        let Ok(()) = canvas.fill_solid(&Rectangle::new(Point::new(-5, 1), Size::new(7, 9)), white);
        let Ok(()) = canvas.fill_solid(&Rectangle::new(Point::new(9, 9), Size::new(2, 2)), white);
        let Ok(()) = canvas.fill_solid(&Rectangle::new(Point::new(-9, -9), Size::new(2, 2)), white);
        let expected: Vec<Rgb888> =
            [Rgb888::BLACK; 3].into_iter().chain([white, white, Rgb888::BLACK]).collect();
        let got: Vec<Rgb888> =
            (0..2).flat_map(|y| (0..3).map(move |x| (x, y))).map(|(x, y)| canvas.pixel(x, y)).collect();
        assert_eq!(got, expected);
    }

    fn error(uri: &str, args: &DisplayArgs) -> String {
        format!("{:#}", open(uri, args).err().expect("open should fail"))
    }

    #[test]
    fn unknown_schemes_are_one_clear_error() {
        let args = DisplayArgs::default();
        for uri in ["https://x", "/dev/fb0", "", "PNG://x"] {
            assert_eq!(
                error(uri, &args),
                format!("output URI {uri}: expected fb://, png://, http://, gst://, file:// or null://")
            );
        }
        assert_eq!(
            error("png://", &args),
            "output URI png://: expected a directory after png://, e.g. png://snapshots/"
        );
        assert_eq!(error("null://x", &args), "output URI null://x: null:// takes no path");
    }

    #[test]
    fn null_draws_nothing() {
        let mut d = open("null://", &DisplayArgs::default()).unwrap();
        // A malformed frame is not even looked at.
        d.render(&gray(2, 2, &[]), &content()).unwrap();
        d.present().unwrap();
        assert_eq!(d.describe(), "null:// (frames are not drawn)");
    }

    #[test]
    fn an_uncreatable_png_directory_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let dir = file.join("snapshots");
        let uri = format!("png://{}", dir.display());
        let msg = error(&uri, &DisplayArgs::default());
        assert!(
            msg.starts_with(&format!("output URI {uri}: cannot create directory {}: ", dir.display())),
            "{msg}"
        );
    }

    #[test]
    fn out_of_range_arguments_are_refused() {
        let args = DisplayArgs { output_every: 0, ..DisplayArgs::default() };
        assert_eq!(
            error("null://", &args),
            "output null://: expected --output-every of at least 1 but got 0"
        );
        let args = DisplayArgs { output_width: 0, ..DisplayArgs::default() };
        assert_eq!(
            error("png://x", &args),
            "output png://x: expected --output-width and --output-height from 1 to 16384 but got 0x480"
        );
    }

    #[test]
    fn flags_parse_with_defaults_and_limits() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            display: DisplayArgs,
        }
        let parse = |args: &[&str]| Cli::try_parse_from([&["edgevit"], args].concat()).map(|c| c.display);
        assert_eq!(parse(&[]).unwrap(), DisplayArgs::default());
        let args =
            parse(&["--output-width", "320", "--output-height", "240", "--output-every", "2"]).unwrap();
        assert_eq!(
            args,
            DisplayArgs { output_width: 320, output_height: 240, output_every: 2, ..DisplayArgs::default() }
        );
        assert!(parse(&["--output-every", "0"]).is_err());
        assert!(parse(&["--output-width", "16385"]).is_err());
    }

    #[test]
    fn png_snapshots_end_to_end() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out").join("snapshots");
        let args =
            DisplayArgs { output_width: 320, output_height: 240, output_every: 2, ..DisplayArgs::default() };
        let mut d = open(&format!("png://{}", dir.display()), &args).unwrap();
        assert_eq!(d.describe(), format!("png://{} (320x240, 1 frame in 2)", dir.display()));
        let frame = gray(4, 3, &[128; 12]);
        for _ in 0..5 {
            d.render(&frame, &content()).unwrap();
            d.present().unwrap();
        }
        let mut names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["frame-000001.png", "frame-000002.png", "frame-000003.png"]);

        let img = image::open(dir.join("frame-000001.png")).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (320, 240));
        let at = |x, y| {
            let p: &image::Rgb<u8> = img.get_pixel(x, y);
            Rgb888::new(p[0], p[1], p[2])
        };
        // The panel sits in the top-left corner: its background and text.
        let corner: Vec<Rgb888> =
            (0..20).flat_map(|y| (0..100).map(move |x| (x, y))).map(|(x, y)| at(x, y)).collect();
        assert_eq!(at(0, 0), overlay::BACKGROUND);
        assert!(corner.contains(&overlay::TEXT_BEST), "best class text in the top-left corner");
        assert!(!corner.contains(&Rgb888::new(128, 128, 128)));
        // The frame fills the rest (4:3 on 4:3: no bars).
        assert_eq!(at(160, 120), Rgb888::new(128, 128, 128));
        assert_eq!(at(319, 100), Rgb888::new(128, 128, 128));
        // Later snapshots are the same picture.
        assert_eq!(image::open(dir.join("frame-000003.png")).unwrap().to_rgb8(), img);
    }

    #[test]
    fn png_snapshots_replace_files_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = PngSnapshots::create(tmp.path(), &DisplayArgs::default()).unwrap();
        d.render(&gray(1, 1, &[7]), &content()).unwrap();
        d.present().unwrap();
        // Only the finished file is in the directory: the temporary is renamed.
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["frame-000001.png"]);
        // A present without a new render writes nothing new.
        d.present().unwrap();
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}
