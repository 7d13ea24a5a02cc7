//! Where frames come from: a V4L2 camera, image files, a YUV4MPEG2 clip or a
//! synthetic test card, behind one [`Source`] trait and one URI syntax.
//!
//! | URI | source |
//! |---|---|
//! | `v4l2:///dev/video0` (or `/dev/video0`) | a camera, MJPEG or YUYV, mmap streaming; reopened with backoff when it disappears |
//! | `file://DIR/` | every `.png`, `.jpg`, `.jpeg` file in `DIR`, in alphanumeric order |
//! | `file://shots/*.png` | the image files a glob pattern matches, in alphanumeric order |
//! | `file://photo.jpg` | one image |
//! | `file://clip.y4m` | a YUV4MPEG2 clip: 8-bit 4:2:0 or 4:4:4 |
//! | `file://clip.mp4` (`.mkv`, `.avi`, `.mov`, `.webm`) | a video file, through GStreamer |
//! | `csi://0` | a CSI camera through NVIDIA's `nvarguscamerasrc`, through GStreamer |
//! | `rtsp://[user:pass@]host[:port]/path` | an RTSP stream, through GStreamer |
//! | `gst://PIPELINE` | any GStreamer pipeline that gives raw video |
//! | `pattern://` | colour bars with a moving square, `--input-width` x `--input-height` |
//!
//! GStreamer is loaded when a URI needs it ([`crate::gst`]); the pipelines
//! each URI becomes are in [`gstreamer`].
//!
//! A URI without a scheme is a file path. Paths after `file://` are taken
//! as written: `file://models/x/` is `./models/x/`, `file:///data/x/` is
//! absolute.
//!
//! "Alphanumeric order" compares runs of digits by value and everything else
//! byte by byte, so `frame2.png` comes before `frame10.png`.
//!
//! # Colour conversion
//!
//! Frames come out as [`Image`]s: `Gray8` for gray image files, `Rgb8` for
//! everything else. YUV becomes RGB by ITU-R BT.601 in limited ("studio")
//! range, Y in [16, 235] and Cb, Cr in [16, 240], which is what YUYV cameras
//! and YUV4MPEG2 clips carry unless they say otherwise:
//!
//! ```text
//! R = 1.164383 (Y - 16)                       + 1.596027 (Cr - 128)
//! G = 1.164383 (Y - 16) - 0.391762 (Cb - 128) - 0.812968 (Cr - 128)
//! B = 1.164383 (Y - 16) + 2.017232 (Cb - 128)
//! ```
//!
//! The factors are 255/219 for Y, and 255/224 times `2 (1 - Kr)`,
//! `2 Kb (1 - Kb) / Kg`, `2 Kr (1 - Kr) / Kg` and `2 (1 - Kb)` for chroma,
//! with `Kr = 0.299`, `Kb = 0.114`, `Kg = 1 - Kr - Kb`. They are applied in
//! 16.16 fixed point, rounded to nearest and clamped to [0, 255]. A clip
//! marked `XCOLORRANGE=FULL` uses the full-range (JPEG) form of the same
//! matrix: `R = Y + 1.402 Cr'`, `G = Y - 0.344136 Cb' - 0.714136 Cr'`,
//! `B = Y + 1.772 Cb'` with `C' = C - 128`.
//!
//! Subsampled chroma is repeated (nearest neighbour): pixel `(x, y)` takes
//! chroma sample `(x / 2, y)` in 4:2:2 and `(x / 2, y / 2)` in 4:2:0, whatever
//! the siting tag (`C420jpeg`, `C420mpeg2`, `C420paldv`) says. FFmpeg's
//! same-size converters do the same, and a classifier that downsamples the
//! frame anyway does not see the difference. MJPEG frames are decoded by the
//! `image` crate (zune-jpeg), which interpolates chroma (libjpeg's "fancy"
//! upsampling) and applies JPEG's full-range matrix.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::preprocess::{Image, MAX_IMAGE_SIDE};

mod camera;
mod convert;
mod files;
mod gstreamer;
mod pattern;
mod y4m;

pub use camera::{camera_frame, Pixels};

/// What one call to [`Source::capture`] produced.
#[derive(Debug)]
pub enum Capture {
    /// A new frame.
    Frame(Image),
    /// No frame yet (a camera between frames or reconnecting, a paced source
    /// waiting for its next slot); call again.
    NotYet,
    /// The source is exhausted; every later call returns `End` again.
    End,
}

/// A stream of frames.
pub trait Source: Send {
    /// The next frame. It may block briefly (about 100 ms at most) and
    /// returns [`Capture::NotYet`] rather than blocking longer, so that the
    /// caller can check its stop flag between calls.
    fn capture(&mut self) -> Result<Capture>;

    /// One line for logs and the status line, e.g.
    /// `v4l2:///dev/video0 640x480 MJPG 30 fps`.
    fn describe(&self) -> String;

    /// Whether frames arrive at their own pace (a camera, the pattern) and
    /// may be dropped when the consumer is slower, rather than waiting to be
    /// taken (files).
    fn is_live(&self) -> bool {
        false
    }
}

/// Longest a source sleeps inside one [`Source::capture`] call.
pub(crate) const MAX_WAIT: Duration = Duration::from_millis(100);

/// Frame size when `--input-width` / `--input-height` are not given.
pub const DEFAULT_SIZE: (u32, u32) = (640, 480);

/// Frame source flags.
#[derive(clap::Args, Clone, Debug, Default, PartialEq)]
pub struct SourceArgs {
    /// Frame width to request from a camera (it gets its closest mode) and the
    /// width of `pattern://`; image files and y4m clips keep their own size [default: 640].
    #[arg(long, value_name = "PIXELS", value_parser = clap::value_parser!(u32).range(16..=MAX_IMAGE_SIDE as i64))]
    pub input_width: Option<u32>,
    /// Frame height to request from a camera and the height of `pattern://` [default: 480].
    #[arg(long, value_name = "PIXELS", value_parser = clap::value_parser!(u32).range(16..=MAX_IMAGE_SIDE as i64))]
    pub input_height: Option<u32>,
    /// Play image files and y4m clips this many extra times after the first; -1 repeats forever.
    #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
    pub input_loop: i64,
    /// Deliver frames from files, y4m clips and `pattern://` at this many per second;
    /// 0 delivers them as fast as they are taken. Cameras run at their own rate.
    #[arg(long, value_name = "FPS", default_value_t = 0.0, value_parser = parse_rate)]
    pub input_rate: f64,
    /// How long an `rtsp://` stream is buffered against network jitter, in
    /// milliseconds (rtspsrc's own default is 2000) [default: 200].
    #[arg(long, value_name = "MS")]
    pub input_rtsp_latency: Option<u32>,
}

impl SourceArgs {
    /// The frame size to request, [`DEFAULT_SIZE`] where not given.
    pub fn size(&self) -> (u32, u32) {
        (self.input_width.unwrap_or(DEFAULT_SIZE.0), self.input_height.unwrap_or(DEFAULT_SIZE.1))
    }
}

fn valid_rate(r: f64) -> bool {
    r.is_finite() && r >= 0.0
}

fn parse_rate(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if valid_rate(r) => Ok(r),
        _ => Err(format!("expected frames per second, a number >= 0, but got {s:?}")),
    }
}

/// Opens the source `uri` names (see the [module docs](self) for the syntax).
///
/// Errors are one line naming the URI and what was expected. A camera must
/// open now; once it has, losing it is not an error (it is reopened).
pub fn open(uri: &str, args: &SourceArgs) -> Result<Box<dyn Source>> {
    let (w, h) = args.size();
    for (name, v) in [("--input-width", w), ("--input-height", h)] {
        if !(16..=MAX_IMAGE_SIDE).contains(&v) {
            bail!("{name} {v}: expected 16 to {MAX_IMAGE_SIDE} pixels");
        }
    }
    if args.input_loop < -1 {
        bail!("--input-loop {}: expected -1 (forever) or a count >= 0", args.input_loop);
    }
    if !valid_rate(args.input_rate) {
        bail!("--input-rate {}: expected frames per second, a number >= 0", args.input_rate);
    }
    let repeat = Repeat::from_arg(args.input_loop);
    let pacer = || Pacer::new(args.input_rate);
    let gst =
        |d| -> Result<Box<dyn Source>> { Ok(Box::new(gstreamer::GstSource::open(d, repeat, pacer())?)) };
    Ok(match parse_uri(uri)? {
        Uri::Camera(device) => Box::new(camera::Camera::open(device, w, h)?),
        Uri::Pattern => Box::new(pattern::Pattern::new(w, h, pacer())),
        Uri::File(path) if has_extension(Path::new(&path), &gstreamer::VIDEO_EXTENSIONS) => {
            if std::fs::metadata(&path).is_err() {
                bail!("input {uri}: no such file or directory");
            }
            gst(gstreamer::video_file(&path))?
        }
        Uri::File(path) => open_path(uri, &path, repeat, pacer())?,
        Uri::Csi(sensor) => gst(gstreamer::csi(sensor, w, h, args.input_rate))?,
        Uri::Rtsp(url) => gst(gstreamer::rtsp(&url, args.input_rtsp_latency.unwrap_or(200)))?,
        Uri::Gst(pipeline) => gst(gstreamer::custom(&pipeline))?,
    })
}

fn open_path(uri: &str, path: &str, repeat: Repeat, pacer: Pacer) -> Result<Box<dyn Source>> {
    let p = Path::new(path);
    let exists = std::fs::metadata(p).is_ok();
    if !exists && path.contains(['*', '?', '[']) {
        return Ok(Box::new(files::ImageFiles::glob(uri, path, repeat, pacer)?));
    }
    if p.is_dir() {
        return Ok(Box::new(files::ImageFiles::dir(uri, p, repeat, pacer)?));
    }
    if !exists {
        bail!("input {uri}: no such file or directory");
    }
    if has_extension(p, &["y4m"]) {
        return Ok(Box::new(y4m::Y4m::open(p, repeat, pacer)?));
    }
    Ok(Box::new(files::ImageFiles::single(uri, p, repeat, pacer)))
}

/// What an input URI names, before touching the file system.
#[derive(Debug, PartialEq, Eq)]
enum Uri {
    Camera(PathBuf),
    File(String),
    Pattern,
    Csi(u32),
    Rtsp(String),
    Gst(String),
}

fn parse_uri(uri: &str) -> Result<Uri> {
    if let Some(rest) = uri.strip_prefix("v4l2://") {
        if rest.is_empty() {
            bail!("input URI {uri}: expected a device, e.g. v4l2:///dev/video0");
        }
        if rest.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(Uri::Camera(PathBuf::from(format!("/dev/video{rest}"))));
        }
        return Ok(Uri::Camera(PathBuf::from(rest)));
    }
    if let Some(rest) = uri.strip_prefix("file://") {
        if rest.is_empty() {
            bail!("input URI {uri}: expected a path, e.g. file://images/ or file://clip.y4m");
        }
        return Ok(Uri::File(rest.to_string()));
    }
    if let Some(rest) = uri.strip_prefix("pattern://") {
        if !rest.is_empty() {
            bail!("input URI {uri}: expected pattern:// with nothing after it");
        }
        return Ok(Uri::Pattern);
    }
    if let Some(rest) = uri.strip_prefix("csi://") {
        return match rest.parse::<u32>() {
            Ok(n) => Ok(Uri::Csi(n)),
            Err(_) => bail!("input URI {uri}: expected a sensor number, e.g. csi://0"),
        };
    }
    if let Some(rest) = uri.strip_prefix("rtsp://") {
        if rest.is_empty() {
            bail!("input URI rtsp://: expected rtsp://[user:pass@]host[:port]/path");
        }
        return Ok(Uri::Rtsp(uri.to_string()));
    }
    if let Some(rest) = uri.strip_prefix("gst://") {
        if rest.trim().is_empty() {
            bail!("input URI {uri}: expected a pipeline, e.g. gst://videotestsrc num-buffers=100");
        }
        return Ok(Uri::Gst(rest.to_string()));
    }
    const SCHEMES: &str = "v4l2://, file://, csi://, rtsp://, gst:// or pattern://";
    if uri.contains("://") {
        bail!("input URI {}: expected {SCHEMES}", gstreamer::without_credentials(uri));
    }
    if uri.is_empty() {
        bail!("input URI is empty: expected {SCHEMES}");
    }
    if uri.starts_with("/dev/video") {
        return Ok(Uri::Camera(PathBuf::from(uri)));
    }
    Ok(Uri::File(uri.to_string()))
}

fn has_extension(path: &Path, exts: &[&str]) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// How many more passes a finite source plays after the current one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repeat {
    Times(u64),
    Forever,
}

impl Repeat {
    fn from_arg(n: i64) -> Repeat {
        if n < 0 {
            Repeat::Forever
        } else {
            Repeat::Times(n as u64)
        }
    }

    /// Takes one more pass if any is left.
    fn take(&mut self) -> bool {
        match self {
            Repeat::Forever => true,
            Repeat::Times(0) => false,
            Repeat::Times(n) => {
                *n -= 1;
                true
            }
        }
    }
}

/// Spaces frames `1 / rate` seconds apart. Sleeps at most [`MAX_WAIT`] per
/// call; a consumer slower than the rate gets frames as fast as it takes
/// them, without a burst afterwards.
#[derive(Debug)]
struct Pacer {
    period: Option<Duration>,
    due: Option<Instant>,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        let period = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
        Pacer { period, due: None }
    }

    /// True when the next frame may go out now (the slot is then used).
    fn ready(&mut self) -> bool {
        let Some(period) = self.period else { return true };
        let now = Instant::now();
        let due = self.due.unwrap_or(now);
        if due > now {
            let wait = due - now;
            if wait > MAX_WAIT {
                thread::sleep(MAX_WAIT);
                return false;
            }
            thread::sleep(wait);
        }
        let now = Instant::now();
        self.due = Some(if now.duration_since(due) > period { now + period } else { due + period });
        true
    }
}

/// Alphanumeric order: runs of ASCII digits compare by value (then by
/// length, so `07` follows `7`), everything else byte by byte.
fn alphanumeric_cmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let (si, sj) = (i, j);
            while i < a.len() && a[i].is_ascii_digit() {
                i += 1;
            }
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let (da, db) = (&a[si..i], &b[sj..j]);
            let trim = |d: &[u8]| -> usize { d.iter().position(|&c| c != b'0').unwrap_or(d.len()) };
            let (na, nb) = (&da[trim(da)..], &db[trim(db)..]);
            let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb)).then_with(|| da.len().cmp(&db.len()));
            if ord != Ordering::Equal {
                return ord;
            }
        } else {
            if a[i] != b[j] {
                return a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (a.len() - i).cmp(&(b.len() - j))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_schemes() {
        assert_eq!(parse_uri("v4l2:///dev/video2").unwrap(), Uri::Camera("/dev/video2".into()));
        assert_eq!(parse_uri("v4l2://1").unwrap(), Uri::Camera("/dev/video1".into()));
        assert_eq!(parse_uri("/dev/video0").unwrap(), Uri::Camera("/dev/video0".into()));
        assert_eq!(parse_uri("file://models/x/").unwrap(), Uri::File("models/x/".into()));
        assert_eq!(parse_uri("file:///abs/x.png").unwrap(), Uri::File("/abs/x.png".into()));
        assert_eq!(parse_uri("photo.jpg").unwrap(), Uri::File("photo.jpg".into()));
        assert_eq!(parse_uri("pattern://").unwrap(), Uri::Pattern);
        assert_eq!(parse_uri("csi://1").unwrap(), Uri::Csi(1));
        assert_eq!(parse_uri("rtsp://cam:8554/s").unwrap(), Uri::Rtsp("rtsp://cam:8554/s".into()));
        assert_eq!(parse_uri("gst://videotestsrc").unwrap(), Uri::Gst("videotestsrc".into()));
    }

    #[test]
    fn pattern_is_live_and_files_wait() {
        assert!(open("pattern://", &SourceArgs::default()).unwrap().is_live());
        let samples = concat!("file://", env!("CARGO_MANIFEST_DIR"), "/../models/samples/fashion-mnist/");
        assert!(!open(samples, &SourceArgs::default()).unwrap().is_live());
    }

    #[test]
    fn unknown_scheme_is_one_clear_line() {
        let err = open("rtmp://admin:pw@cam/stream", &SourceArgs::default()).err().unwrap();
        assert_eq!(
            format!("{err:#}"),
            "input URI rtmp://cam/stream: expected v4l2://, file://, csi://, rtsp://, gst:// or pattern://"
        );
        let err = open("csi://front", &SourceArgs::default()).err().unwrap();
        assert_eq!(format!("{err:#}"), "input URI csi://front: expected a sensor number, e.g. csi://0");
        let err = open("pattern://bars", &SourceArgs::default()).err().unwrap();
        assert!(format!("{err:#}").contains("expected pattern:// with nothing after it"), "{err:#}");
        let err = open("file://", &SourceArgs::default()).err().unwrap();
        assert!(format!("{err:#}").contains("expected a path"), "{err:#}");
    }

    #[test]
    fn missing_path_names_it() {
        let err = open("file://no/such/dir/", &SourceArgs::default()).err().unwrap();
        assert_eq!(format!("{err:#}"), "input file://no/such/dir/: no such file or directory");
    }

    #[test]
    fn missing_camera_is_an_error_at_open() {
        let err = open("v4l2:///dev/video-edgevit-none", &SourceArgs::default()).err().unwrap();
        let msg = format!("{err:#}");
        assert!(msg.starts_with("input v4l2:///dev/video-edgevit-none: cannot open"), "{msg}");
    }

    #[test]
    fn alphanumeric_order() {
        let mut names =
            vec!["frame10.png", "frame2.png", "b.png", "a.png", "frame1.png", "frame02.png", "A.png"];
        names.sort_by(|a, b| alphanumeric_cmp(a, b));
        assert_eq!(
            names,
            ["A.png", "a.png", "b.png", "frame1.png", "frame2.png", "frame02.png", "frame10.png"]
        );
        assert_eq!(alphanumeric_cmp("x", "x"), Ordering::Equal);
        assert_eq!(alphanumeric_cmp("x1", "x"), Ordering::Greater);
    }

    #[test]
    fn args_parse_with_defaults_and_limits() {
        use clap::{CommandFactory, Parser};
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            input: SourceArgs,
        }
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.input, SourceArgs::default());
        assert_eq!(cli.input.size(), DEFAULT_SIZE);
        let cli =
            Cli::try_parse_from(["x", "--input-loop", "-1", "--input-rate", "12.5", "--input-width", "320"])
                .unwrap();
        assert_eq!((cli.input.input_loop, cli.input.input_rate, cli.input.size()), (-1, 12.5, (320, 480)));
        assert!(Cli::try_parse_from(["x", "--input-loop", "-2"]).is_err());
        assert!(Cli::try_parse_from(["x", "--input-rate", "-1"]).is_err());
        assert!(Cli::try_parse_from(["x", "--input-rate", "nan"]).is_err());
        assert!(Cli::try_parse_from(["x", "--input-width", "8"]).is_err());
    }

    #[test]
    fn pacer_spaces_frames() {
        let mut p = Pacer::new(50.0);
        let start = Instant::now();
        let mut frames = 0;
        while frames < 4 {
            if p.ready() {
                frames += 1;
            }
        }
        // Four frames at 50 fps: the first at once, then three periods of 20 ms.
        assert!(start.elapsed() >= Duration::from_millis(60), "{:?}", start.elapsed());
        let mut slow = Pacer::new(0.5);
        assert!(slow.ready());
        let t = Instant::now();
        assert!(!slow.ready(), "the second frame is 2 s away");
        assert!(t.elapsed() < Duration::from_millis(500));
    }
}
