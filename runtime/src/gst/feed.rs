//! [`Feed`]: frames pushed into a pipeline's app source.

use std::ffi::{c_void, CString};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::{rgb_stride, Launched, MiniObject, FLOW_OK, SOURCE};

/// `GstBuffer` up to its timestamps, as gstbuffer.h lays it out (stable
/// since 1.0); GStreamer sets them through these fields (its macros).
#[repr(C)]
struct BufferHead {
    mini_object: MiniObject,
    pool: *mut c_void,
    pts: u64,
    dts: u64,
    duration: u64,
}

/// How long [`Feed::push`] waits for a pipeline that takes no frames.
pub const FEED_STALL: Duration = Duration::from_secs(5);

/// Frames queued in an app source before [`Feed::push`] waits.
const FEED_QUEUE: usize = 4;

/// A running pipeline whose app source, named [`SOURCE`], takes RGB frames
/// of one size, timestamped from the first.
pub struct Feed {
    launched: Launched,
    width: u32,
    height: u32,
    shown: String,
    first: Option<Instant>,
    last_pts: Option<Duration>,
    finished: bool,
}

impl Feed {
    /// Parses and starts `description`, which must begin with an app source
    /// named [`SOURCE`]: it is given RGB `width x height` caps and time
    /// stamps (`format=time`).
    pub fn start(description: &str, shown: &str, width: u32, height: u32) -> Result<Feed> {
        let caps =
            CString::new(format!("video/x-raw,format=RGB,width={width},height={height},framerate=0/1"))
                .expect("no NUL");
        let launched = Launched::start(description, "output", shown, SOURCE, |api, src| {
            // SAFETY: `src` is the element named SOURCE, a valid object; an
            // appsrc takes caps and a `format`, and on any other element
            // GStreamer's own type checks make both calls warnings that do
            // nothing (the push then fails, one line). The caps are a new
            // reference, released here.
            unsafe {
                (api.util_set_object_arg)(src, c"format".as_ptr(), c"time".as_ptr());
                let caps = (api.caps_from_string)(caps.as_ptr());
                if !caps.is_null() {
                    (api.app_src_set_caps)(src, caps);
                    (api.mini_object_unref)(caps);
                }
            }
        })?;
        Ok(Feed {
            launched,
            width,
            height,
            shown: shown.to_string(),
            first: None,
            last_pts: None,
            finished: false,
        })
    }

    /// Queues one frame (`width x height` RGB, rows packed), timestamped by
    /// the time since the first. Waits, up to [`FEED_STALL`], while the
    /// pipeline has [`FEED_QUEUE`] frames it has not taken yet, so a slow
    /// encoder slows the loop instead of growing memory.
    pub fn push(&mut self, rgb: &[u8]) -> Result<()> {
        let (w, h) = (self.width as usize, self.height as usize);
        assert_eq!(rgb.len(), w * h * 3, "a frame of the feed's size");
        let api = self.launched.api;
        let stride = rgb_stride(w);
        let size = stride * h;
        let waited = Instant::now();
        // SAFETY: the element is the appsrc named SOURCE.
        while unsafe { (api.app_src_get_current_level_bytes)(self.launched.element) } as usize
            >= FEED_QUEUE * size
        {
            if let Some(why) = self.launched.bus_error() {
                bail!("output {}: {why}", self.shown);
            }
            if waited.elapsed() > FEED_STALL {
                bail!("output {}: the pipeline took no frame for {} s", self.shown, FEED_STALL.as_secs());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(why) = self.launched.bus_error() {
            bail!("output {}: {why}", self.shown);
        }
        let now = Instant::now();
        let pts = now - *self.first.get_or_insert(now);
        // The frame lasts as long as the gap before it (a muxer needs the
        // last one's duration); the first, a thirtieth of a second.
        let duration =
            self.last_pts.map_or(Duration::from_millis(33), |last| pts - last).max(Duration::from_millis(1));
        self.last_pts = Some(pts);
        // SAFETY: a new buffer of `size` bytes we own until pushed; it is
        // filled row by row within its size; its timestamps are set through
        // the fields GStreamer's own macros write; push takes it.
        unsafe {
            let buffer = (api.buffer_new_allocate)(std::ptr::null_mut(), size, std::ptr::null_mut());
            if buffer.is_null() {
                bail!("output {}: cannot allocate a {size}-byte buffer", self.shown);
            }
            for (y, row) in rgb.chunks_exact(w * 3).enumerate() {
                (api.buffer_fill)(buffer, y * stride, row.as_ptr().cast(), row.len());
            }
            let head = buffer.cast::<BufferHead>();
            (*head).pts = pts.as_nanos() as u64;
            (*head).dts = u64::MAX;
            (*head).duration = duration.as_nanos() as u64;
            if (api.app_src_push_buffer)(self.launched.element, buffer) != FLOW_OK {
                let why = self.launched.bus_error().unwrap_or_else(|| "the pipeline refused a frame".into());
                bail!("output {}: {why}", self.shown);
            }
        }
        Ok(())
    }

    /// Ends the stream and waits, up to `wait`, for the pipeline to finish
    /// with it (a muxer writes its index then).
    pub fn finish(&mut self, wait: Duration) -> Result<()> {
        if std::mem::replace(&mut self.finished, true) {
            return Ok(());
        }
        // SAFETY: the element is the appsrc named SOURCE.
        unsafe { (self.launched.api.app_src_end_of_stream)(self.launched.element) };
        match self.launched.bus_wait(wait, true) {
            Some(Ok(())) => Ok(()),
            Some(Err(why)) => bail!("output {}: {why}", self.shown),
            None => bail!("output {}: the pipeline did not finish within {} s", self.shown, wait.as_secs()),
        }
    }
}
