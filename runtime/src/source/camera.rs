//! `v4l2://`: a V4L2 camera delivering MJPEG or YUYV, mmap streaming.
//!
//! The mode is chosen once per open by [`choose_mode`]. A camera that errors
//! or disappears (unplugged: `ENODEV`; a failing link: `EIO`) is closed,
//! logged, and reopened with exponential backoff (100 ms doubling to 5 s,
//! one log line per attempt); so is one that delivers nothing for 5 s.
//! Meanwhile [`Source::capture`] returns [`Capture::NotYet`]. A camera never
//! ends by itself.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use v4l::buffer::{Flags as BufferFlags, Type};
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::capture::Parameters;
use v4l::video::Capture as _;
use v4l::{Device, Format, FourCC, Fraction};

use super::convert::{mjpeg_to_rgb, yuyv_to_rgb};
use super::{Capture, Source, MAX_WAIT};
use crate::preprocess::{Image, PixelFormat, MAX_IMAGE_SIDE};

/// The wait before reopening a lost live source, doubling to [`MAX_BACKOFF`].
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(100);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(5);
const BUFFERS: u32 = 4;
/// A camera silent this long is treated as failed and reopened.
const STALL: Duration = Duration::from_secs(5);

/// The pixel formats edgevit reads from cameras.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pixels {
    Mjpeg,
    Yuyv,
}

impl Pixels {
    fn from_fourcc(f: FourCC) -> Option<Pixels> {
        match &f.repr {
            b"MJPG" | b"JPEG" => Some(Pixels::Mjpeg),
            b"YUYV" => Some(Pixels::Yuyv),
            _ => None,
        }
    }

    fn fourcc(self) -> FourCC {
        FourCC::new(match self {
            Pixels::Mjpeg => b"MJPG",
            Pixels::Yuyv => b"YUYV",
        })
    }
}

/// One capture mode a camera offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mode {
    pub pixels: Pixels,
    pub width: u32,
    pub height: u32,
    /// Shortest frame interval in seconds, `numerator / denominator`; `None`
    /// when the driver does not enumerate intervals.
    pub interval: Option<(u32, u32)>,
}

impl Mode {
    fn fps(&self) -> f64 {
        self.interval.map_or(0.0, |(n, d)| d as f64 / n as f64)
    }
}

/// The mode closest to `width x height`: smallest `|w - width| + |h - height|`,
/// then the highest frame rate at that size, then YUYV (no decoding) over
/// MJPEG. `None` when `modes` is empty.
pub(crate) fn choose_mode(modes: &[Mode], width: u32, height: u32) -> Option<Mode> {
    let distance = |m: &Mode| m.width.abs_diff(width) as u64 + m.height.abs_diff(height) as u64;
    modes.iter().copied().min_by(|a, b| {
        distance(a)
            .cmp(&distance(b))
            .then_with(|| b.fps().total_cmp(&a.fps()))
            .then_with(|| (a.pixels == Pixels::Mjpeg).cmp(&(b.pixels == Pixels::Mjpeg)))
    })
}

/// `want` clamped to `[min, max]` and rounded down onto the `min + k * step` grid.
fn snap(want: u32, min: u32, max: u32, step: u32) -> u32 {
    let v = want.clamp(min, max.max(min));
    min + (v - min) / step.max(1) * step.max(1)
}

/// The sizes worth asking for: discrete sizes as listed, a stepwise range as
/// its size nearest the request.
fn candidate_size(size: &FrameSizeEnum, width: u32, height: u32) -> (u32, u32) {
    match size {
        FrameSizeEnum::Discrete(d) => (d.width, d.height),
        FrameSizeEnum::Stepwise(s) => (
            snap(width, s.min_width, s.max_width, s.step_width),
            snap(height, s.min_height, s.max_height, s.step_height),
        ),
    }
}

fn shortest_interval(dev: &Device, fourcc: FourCC, w: u32, h: u32) -> Option<(u32, u32)> {
    let intervals = dev.enum_frameintervals(fourcc, w, h).ok()?;
    intervals
        .into_iter()
        .map(|i| match i.interval {
            FrameIntervalEnum::Discrete(f) => (f.numerator, f.denominator),
            FrameIntervalEnum::Stepwise(s) => (s.min.numerator, s.min.denominator),
        })
        .filter(|&(n, d)| n > 0 && d > 0)
        .min_by(|a, b| (a.0 as u64 * b.1 as u64).cmp(&(b.0 as u64 * a.1 as u64)))
}

fn fourcc_name(f: FourCC) -> String {
    f.str().map(str::to_string).unwrap_or_else(|_| format!("{:?}", f.repr))
}

/// Every MJPEG and YUYV mode, and the names of all formats offered.
fn list_modes(dev: &Device, width: u32, height: u32) -> io::Result<(Vec<Mode>, Vec<String>)> {
    let (mut modes, mut offered) = (Vec::new(), Vec::new());
    for desc in dev.enum_formats()? {
        offered.push(fourcc_name(desc.fourcc));
        let Some(pixels) = Pixels::from_fourcc(desc.fourcc) else { continue };
        let sizes: Vec<(u32, u32)> = match dev.enum_framesizes(desc.fourcc) {
            Ok(sizes) if !sizes.is_empty() => {
                sizes.iter().map(|s| candidate_size(&s.size, width, height)).collect()
            }
            // The driver does not enumerate sizes: ask for the request and
            // let VIDIOC_S_FMT adjust it.
            _ => vec![(width, height)],
        };
        for (w, h) in sizes {
            let interval = shortest_interval(dev, desc.fourcc, w, h);
            modes.push(Mode { pixels, width: w, height: h, interval });
        }
    }
    Ok((modes, offered))
}

fn transient(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}

/// An open, configured camera.
struct Live {
    stream: Stream<'static>,
    width: u32,
    height: u32,
    stride: usize,
    pixels: Pixels,
    /// `v4l`'s `next()` first queues the buffer it handed out last time. After
    /// a `next()` that timed out that buffer is queued already, so the next
    /// buffer must be dequeued by hand (its bytes are not reachable through
    /// the crate and the frame is skipped) before `next()` is safe again.
    can_requeue: bool,
    bad_frames: u64,
    /// Whether a frame came out since the device was opened.
    delivered: bool,
    /// When the last frame (or the open) happened.
    last_frame: Instant,
    description: String,
    _device: Device,
}

impl Live {
    fn open(path: &Path, width: u32, height: u32) -> Result<Live> {
        let dev = Device::with_path(path).with_context(|| format!("cannot open {}", path.display()))?;
        let card = dev.query_caps().map(|c| c.card).unwrap_or_default();
        let (modes, offered) = list_modes(&dev, width, height).context("cannot list its formats")?;
        let mode = choose_mode(&modes, width, height).ok_or_else(|| {
            let offered = if offered.is_empty() { "none".to_string() } else { offered.join(", ") };
            anyhow!("expected a camera offering MJPG or YUYV frames, but it offers {offered}")
        })?;
        let format = dev
            .set_format(&Format::new(mode.width, mode.height, mode.pixels.fourcc()))
            .context("cannot set the capture format")?;
        let Some(pixels) = Pixels::from_fourcc(format.fourcc) else {
            bail!("asked for {:?} frames but the driver chose {}", mode.pixels, fourcc_name(format.fourcc));
        };
        if format.width == 0 || format.height == 0 {
            bail!("the driver chose an empty {}x{} format", format.width, format.height);
        }
        if pixels == Pixels::Yuyv && format.width % 2 != 0 {
            bail!("expected an even width for YUYV frames, the driver chose {}", format.width);
        }
        if let Some((n, d)) = mode.interval {
            if let Err(e) = dev.set_params(&Parameters::new(Fraction::new(n, d))) {
                log::debug!("{}: cannot set the frame interval {n}/{d}: {e}", path.display());
            }
        }
        let fps = match dev.params() {
            Ok(p) if p.interval.numerator > 0 => p.interval.denominator as f64 / p.interval.numerator as f64,
            _ => mode.fps(),
        };
        let mut stream =
            Stream::with_buffers(&dev, Type::VideoCapture, BUFFERS).context("cannot map capture buffers")?;
        stream.set_timeout(MAX_WAIT);
        let min_stride = format.width as usize * 2;
        let stride = if pixels == Pixels::Yuyv { (format.stride as usize).max(min_stride) } else { 0 };
        let name = if card.is_empty() { String::new() } else { format!(" ({card})") };
        let description = format!(
            "v4l2://{}{name} {}x{} {} {fps:.0} fps",
            path.display(),
            format.width,
            format.height,
            fourcc_name(format.fourcc)
        );
        Ok(Live {
            stream,
            width: format.width,
            height: format.height,
            stride,
            pixels,
            can_requeue: true,
            bad_frames: 0,
            delivered: false,
            last_frame: Instant::now(),
            description,
            _device: dev,
        })
    }

    /// The next frame; `Ok(None)` when none arrived within [`MAX_WAIT`] or
    /// it was unusable; `Err` when the device failed or stalled.
    fn next(&mut self) -> io::Result<Option<Image>> {
        let frame = self.next_inner();
        match frame {
            Ok(Some(_)) => self.last_frame = Instant::now(),
            Ok(None) if self.last_frame.elapsed() > STALL => {
                let msg = format!("no frame for {} s", STALL.as_secs());
                return Err(io::Error::new(io::ErrorKind::TimedOut, msg));
            }
            _ => {}
        }
        frame
    }

    fn next_inner(&mut self) -> io::Result<Option<Image>> {
        if !self.can_requeue {
            return match CaptureStream::dequeue(&mut self.stream) {
                Ok(_) => {
                    self.can_requeue = true;
                    Ok(None)
                }
                Err(e) if transient(&e) => Ok(None),
                Err(e) => Err(e),
            };
        }
        let (buf, meta) = match CaptureStream::next(&mut self.stream) {
            Ok(frame) => frame,
            Err(e) if transient(&e) => {
                self.can_requeue = false;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if meta.flags.contains(BufferFlags::ERROR) {
            self.bad_frames += 1;
            log::debug!("{}: the driver flagged frame {} as corrupt", self.description, meta.sequence);
            return Ok(None);
        }
        let used = match meta.bytesused as usize {
            0 => buf.len(),
            n => n.min(buf.len()),
        };
        match camera_frame(self.pixels, self.width, self.height, self.stride, &buf[..used]) {
            Ok(image) => {
                self.delivered = true;
                Ok(Some(image))
            }
            Err(e) => {
                self.bad_frames += 1;
                if self.bad_frames == 1 {
                    log::warn!("{}: skipping a bad frame: {e:#}", self.description);
                } else {
                    log::debug!("{}: skipping bad frame {}: {e:#}", self.description, self.bad_frames);
                }
                Ok(None)
            }
        }
    }
}

/// Converts one frame as a camera delivered it (`bytes`: the buffer's used
/// part) to an RGB8 image of `width x height`. YUYV rows are `stride`
/// bytes apart (at least `2 * width`, `width` even); MJPEG frames must
/// decode to exactly that size. A frame that does not fit is an error,
/// never a panic: drivers hand over whatever they have.
pub fn camera_frame(pixels: Pixels, width: u32, height: u32, stride: usize, bytes: &[u8]) -> Result<Image> {
    let (w, h) = (width as usize, height as usize);
    if w == 0 || h == 0 || width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        bail!("expected frame sides in 1..={MAX_IMAGE_SIDE} but the frame is {w}x{h}");
    }
    let mut rgb = vec![0; w * h * 3];
    match pixels {
        Pixels::Yuyv if w % 2 != 0 || stride < 2 * w => {
            bail!("expected an even width and a stride of at least {} bytes but have {w} and {stride}", 2 * w)
        }
        Pixels::Yuyv if bytes.len() < stride * (h - 1) + 2 * w => {
            bail!("expected a {w}x{h} YUYV frame but it has {} bytes", bytes.len())
        }
        Pixels::Yuyv => {
            for (row, out) in rgb.chunks_exact_mut(w * 3).enumerate() {
                yuyv_to_rgb(&bytes[row * stride..][..2 * w], width, 1, out);
            }
        }
        Pixels::Mjpeg => mjpeg_to_rgb(bytes, width, height, &mut rgb)?,
    }
    Ok(Image { width, height, format: PixelFormat::Rgb8, data: rgb })
}

/// Drops a camera. `v4l` panics when tearing down buffers fails with anything
/// but `ENODEV` (an `EIO` from a failing link, say); that must not take the
/// capture thread down with it.
fn close(live: Live) {
    let name = live.description.clone();
    if catch_unwind(AssertUnwindSafe(move || drop(live))).is_err() {
        log::warn!("{name}: closing the device failed; continuing");
    }
}

/// A camera that reopens itself.
pub(crate) struct Camera {
    path: PathBuf,
    width: u32,
    height: u32,
    live: Option<Live>,
    description: String,
    retry_at: Instant,
    backoff: Duration,
    attempts: u32,
}

impl Camera {
    /// Opens the camera now: a camera missing at start is an error.
    pub(crate) fn open(path: PathBuf, width: u32, height: u32) -> Result<Camera> {
        let live =
            Live::open(&path, width, height).with_context(|| format!("input v4l2://{}", path.display()))?;
        log::info!("{}", live.description);
        Ok(Camera {
            description: live.description.clone(),
            path,
            width,
            height,
            live: Some(live),
            retry_at: Instant::now(),
            backoff: FIRST_BACKOFF,
            attempts: 0,
        })
    }

    /// One reopen attempt when it is due; `true` when the camera is back.
    fn reopen(&mut self) -> bool {
        let now = Instant::now();
        if now < self.retry_at {
            thread::sleep((self.retry_at - now).min(MAX_WAIT));
            return false;
        }
        self.attempts += 1;
        match Live::open(&self.path, self.width, self.height) {
            Ok(live) => {
                log::info!("{}: back after {} attempt(s)", live.description, self.attempts);
                self.description = live.description.clone();
                self.live = Some(live);
                true
            }
            Err(e) => {
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                log::warn!(
                    "v4l2://{}: reopen attempt {} failed: {e:#}; next in {} ms",
                    self.path.display(),
                    self.attempts,
                    self.backoff.as_millis()
                );
                self.retry_at = Instant::now() + self.backoff;
                false
            }
        }
    }
}

impl Source for Camera {
    fn capture(&mut self) -> Result<Capture> {
        if self.live.is_none() && !self.reopen() {
            return Ok(Capture::NotYet);
        }
        let Some(live) = self.live.as_mut() else { return Ok(Capture::NotYet) };
        match live.next() {
            Ok(Some(img)) => Ok(Capture::Frame(img)),
            Ok(None) => Ok(Capture::NotYet),
            Err(e) => {
                // A camera that opens but fails before its first frame backs
                // off like one that does not open at all.
                let delivered = live.delivered;
                self.backoff = if delivered { FIRST_BACKOFF } else { (self.backoff * 2).min(MAX_BACKOFF) };
                if delivered {
                    self.attempts = 0;
                }
                log::warn!(
                    "{}: capture failed: {e}; reopening in {} ms",
                    self.description,
                    self.backoff.as_millis()
                );
                if let Some(live) = self.live.take() {
                    close(live);
                }
                self.retry_at = Instant::now() + self.backoff;
                Ok(Capture::NotYet)
            }
        }
    }

    fn is_live(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        if let Some(live) = self.live.take() {
            close(live);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(pixels: Pixels, width: u32, height: u32, fps: u32) -> Mode {
        Mode { pixels, width, height, interval: (fps > 0).then_some((1, fps)) }
    }

    /// A typical USB webcam: YUYV is bandwidth-bound above VGA, MJPEG is not.
    fn webcam() -> Vec<Mode> {
        use Pixels::*;
        vec![
            mode(Mjpeg, 1920, 1080, 30),
            mode(Mjpeg, 1280, 720, 30),
            mode(Mjpeg, 640, 480, 30),
            mode(Mjpeg, 320, 240, 30),
            mode(Yuyv, 1920, 1080, 5),
            mode(Yuyv, 1280, 720, 10),
            mode(Yuyv, 640, 480, 30),
            mode(Yuyv, 320, 240, 30),
        ]
    }

    #[test]
    fn exact_size_prefers_the_faster_format() {
        assert_eq!(choose_mode(&webcam(), 1280, 720), Some(mode(Pixels::Mjpeg, 1280, 720, 30)));
        assert_eq!(choose_mode(&webcam(), 1920, 1080), Some(mode(Pixels::Mjpeg, 1920, 1080, 30)));
    }

    #[test]
    fn equal_rates_prefer_yuyv() {
        assert_eq!(choose_mode(&webcam(), 640, 480), Some(mode(Pixels::Yuyv, 640, 480, 30)));
    }

    #[test]
    fn closest_size_wins_over_rate() {
        // 800x600 is 280 from 640x480 and 600 from 1280x720.
        assert_eq!(choose_mode(&webcam(), 800, 600), Some(mode(Pixels::Yuyv, 640, 480, 30)));
        assert_eq!(choose_mode(&webcam(), 4000, 3000), Some(mode(Pixels::Mjpeg, 1920, 1080, 30)));
        let yuyv_only = [mode(Pixels::Yuyv, 1280, 720, 10), mode(Pixels::Yuyv, 640, 480, 30)];
        assert_eq!(choose_mode(&yuyv_only, 1280, 720), Some(yuyv_only[0]));
    }

    #[test]
    fn unknown_rates_and_fractional_rates() {
        let modes = [
            Mode { pixels: Pixels::Yuyv, width: 640, height: 480, interval: None },
            Mode { pixels: Pixels::Mjpeg, width: 640, height: 480, interval: Some((1001, 30000)) },
        ];
        assert_eq!(choose_mode(&modes, 640, 480), Some(modes[1]));
        assert_eq!(choose_mode(&[], 640, 480), None);
    }

    #[test]
    fn stepwise_sizes_snap_to_the_grid() {
        assert_eq!(snap(640, 16, 1920, 16), 640);
        assert_eq!(snap(650, 16, 1920, 16), 640);
        assert_eq!(snap(4000, 16, 1920, 8), 1920);
        assert_eq!(snap(8, 16, 1920, 8), 16);
        assert_eq!(snap(333, 1, 1000, 0), 333);
        let s = FrameSizeEnum::Stepwise(v4l::framesize::Stepwise {
            min_width: 32,
            max_width: 2592,
            step_width: 32,
            min_height: 32,
            max_height: 1944,
            step_height: 2,
        });
        assert_eq!(candidate_size(&s, 650, 481), (640, 480));
    }

    #[test]
    fn fourcc_names() {
        assert_eq!(Pixels::from_fourcc(FourCC::new(b"MJPG")), Some(Pixels::Mjpeg));
        assert_eq!(Pixels::from_fourcc(FourCC::new(b"JPEG")), Some(Pixels::Mjpeg));
        assert_eq!(Pixels::from_fourcc(FourCC::new(b"YUYV")), Some(Pixels::Yuyv));
        assert_eq!(Pixels::from_fourcc(FourCC::new(b"RG10")), None);
        assert_eq!(fourcc_name(Pixels::Yuyv.fourcc()), "YUYV");
    }
}
