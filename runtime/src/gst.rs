//! GStreamer, loaded at run time as cudarc loads CUDA: nothing of it is
//! needed to build, the binary starts where it is absent, and only a URI
//! that needs it fails there, with one line. The few C functions the
//! sources and outputs use (init, parse-launch, the app sink and source,
//! samples, buffers and caps, the bus for errors and end of stream) are looked up
//! once from `libgstreamer-1.0.so.0`, `libgstapp-1.0.so.0` and
//! `libglib-2.0.so.0`.
//!
//! Every pointer this module takes is owned by a [`Pipeline`] (frames
//! out) or a [`Feed`] (frames in), which stops and releases the pipeline
//! when dropped.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Result};

/// The libraries, in the order they are opened.
const LIBRARIES: [&str; 3] = ["libglib-2.0.so.0", "libgstreamer-1.0.so.0", "libgstapp-1.0.so.0"];

type GBoolean = c_int;

#[repr(C)]
struct GError {
    domain: u32,
    code: c_int,
    message: *mut c_char,
}

/// `GstMapInfo`, as gstmemory.h lays it out (stable since 1.0).
#[repr(C)]
struct MapInfo {
    memory: *mut c_void,
    flags: c_uint,
    data: *mut u8,
    size: usize,
    maxsize: usize,
    user_data: [*mut c_void; 4],
    reserved: [*mut c_void; 4],
}

const STATE_NULL: c_int = 1;
const STATE_PLAYING: c_int = 4;
const STATE_CHANGE_FAILURE: c_int = 0;
const FLOW_OK: c_int = 0;
const MESSAGE_EOS: c_uint = 1 << 0;
const MESSAGE_ERROR: c_uint = 1 << 1;
const MAP_READ: c_uint = 1 << 0;

/// The functions used, and the libraries that hold them.
struct Api {
    _libraries: Vec<libloading::Library>,
    g_error_free: unsafe extern "C" fn(*mut GError),
    g_free: unsafe extern "C" fn(*mut c_void),
    init_check: unsafe extern "C" fn(*mut c_int, *mut *mut *mut c_char, *mut *mut GError) -> GBoolean,
    version: unsafe extern "C" fn(*mut c_uint, *mut c_uint, *mut c_uint, *mut c_uint),
    parse_launch: unsafe extern "C" fn(*const c_char, *mut *mut GError) -> *mut c_void,
    bin_get_by_name: unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void,
    element_set_state: unsafe extern "C" fn(*mut c_void, c_int) -> c_int,
    element_get_bus: unsafe extern "C" fn(*mut c_void) -> *mut c_void,
    element_factory_find: unsafe extern "C" fn(*const c_char) -> *mut c_void,
    bus_timed_pop_filtered: unsafe extern "C" fn(*mut c_void, u64, c_uint) -> *mut c_void,
    message_parse_error: unsafe extern "C" fn(*mut c_void, *mut *mut GError, *mut *mut c_char),
    mini_object_unref: unsafe extern "C" fn(*mut c_void),
    object_unref: unsafe extern "C" fn(*mut c_void),
    sample_get_buffer: unsafe extern "C" fn(*mut c_void) -> *mut c_void,
    sample_get_caps: unsafe extern "C" fn(*mut c_void) -> *mut c_void,
    caps_get_structure: unsafe extern "C" fn(*mut c_void, c_uint) -> *mut c_void,
    structure_get_int: unsafe extern "C" fn(*mut c_void, *const c_char, *mut c_int) -> GBoolean,
    buffer_map: unsafe extern "C" fn(*mut c_void, *mut MapInfo, c_uint) -> GBoolean,
    buffer_unmap: unsafe extern "C" fn(*mut c_void, *mut MapInfo),
    app_sink_try_pull_sample: unsafe extern "C" fn(*mut c_void, u64) -> *mut c_void,
    app_sink_is_eos: unsafe extern "C" fn(*mut c_void) -> GBoolean,
    util_set_object_arg: unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char),
    caps_from_string: unsafe extern "C" fn(*const c_char) -> *mut c_void,
    buffer_new_allocate: unsafe extern "C" fn(*mut c_void, usize, *mut c_void) -> *mut c_void,
    buffer_fill: unsafe extern "C" fn(*mut c_void, usize, *const c_void, usize) -> usize,
    app_src_set_caps: unsafe extern "C" fn(*mut c_void, *const c_void),
    app_src_push_buffer: unsafe extern "C" fn(*mut c_void, *mut c_void) -> c_int,
    app_src_end_of_stream: unsafe extern "C" fn(*mut c_void) -> c_int,
    app_src_get_current_level_bytes: unsafe extern "C" fn(*mut c_void) -> u64,
}

// SAFETY: the table holds plain function pointers into libraries that stay
// loaded for the life of the process; GStreamer's functions are thread-safe.
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();

fn api() -> Result<&'static Api> {
    API.get_or_init(load).as_ref().map_err(|e| anyhow::anyhow!("{e}"))
}

/// Environment variable naming the directory the libraries are opened
/// from, instead of the system's search path.
pub const DIR_ENV: &str = "EDGEVIT_GSTREAMER_DIR";

fn load() -> std::result::Result<Api, String> {
    let dir = std::env::var_os(DIR_ENV).map(std::path::PathBuf::from);
    let mut libraries = Vec::new();
    for name in LIBRARIES {
        let path = dir.as_ref().map_or_else(|| name.into(), |d| d.join(name));
        // SAFETY: opening a system library runs its initializers, which
        // GLib's and GStreamer's make safe to run in any process.
        let library = unsafe { libloading::Library::new(&path) }.map_err(|e| {
            let e = e.to_string();
            let why = e.rsplit_once(": ").map_or(e.as_str(), |(_, why)| why);
            format!(
                "GStreamer not found: {}: {why} (on Debian and Ubuntu: apt-get install gstreamer1.0-plugins-base)",
                path.display()
            )
        })?;
        libraries.push(library);
    }
    macro_rules! symbol {
        ($lib:expr, $name:literal) => {{
            // SAFETY: the symbol has the C signature of the field it fills,
            // as GStreamer's and GLib's headers declare it.
            let s = unsafe { libraries[$lib].get(concat!($name, "\0").as_bytes()) }
                .map_err(|e| format!("GStreamer: {} lacks {}: {e}", LIBRARIES[$lib], $name))?;
            *s
        }};
    }
    let api = Api {
        g_error_free: symbol!(0, "g_error_free"),
        g_free: symbol!(0, "g_free"),
        init_check: symbol!(1, "gst_init_check"),
        version: symbol!(1, "gst_version"),
        parse_launch: symbol!(1, "gst_parse_launch"),
        bin_get_by_name: symbol!(1, "gst_bin_get_by_name"),
        element_set_state: symbol!(1, "gst_element_set_state"),
        element_get_bus: symbol!(1, "gst_element_get_bus"),
        element_factory_find: symbol!(1, "gst_element_factory_find"),
        bus_timed_pop_filtered: symbol!(1, "gst_bus_timed_pop_filtered"),
        message_parse_error: symbol!(1, "gst_message_parse_error"),
        mini_object_unref: symbol!(1, "gst_mini_object_unref"),
        object_unref: symbol!(1, "gst_object_unref"),
        sample_get_buffer: symbol!(1, "gst_sample_get_buffer"),
        sample_get_caps: symbol!(1, "gst_sample_get_caps"),
        caps_get_structure: symbol!(1, "gst_caps_get_structure"),
        structure_get_int: symbol!(1, "gst_structure_get_int"),
        buffer_map: symbol!(1, "gst_buffer_map"),
        buffer_unmap: symbol!(1, "gst_buffer_unmap"),
        app_sink_try_pull_sample: symbol!(2, "gst_app_sink_try_pull_sample"),
        app_sink_is_eos: symbol!(2, "gst_app_sink_is_eos"),
        util_set_object_arg: symbol!(1, "gst_util_set_object_arg"),
        caps_from_string: symbol!(1, "gst_caps_from_string"),
        buffer_new_allocate: symbol!(1, "gst_buffer_new_allocate"),
        buffer_fill: symbol!(1, "gst_buffer_fill"),
        app_src_set_caps: symbol!(2, "gst_app_src_set_caps"),
        app_src_push_buffer: symbol!(2, "gst_app_src_push_buffer"),
        app_src_end_of_stream: symbol!(2, "gst_app_src_end_of_stream"),
        app_src_get_current_level_bytes: symbol!(2, "gst_app_src_get_current_level_bytes"),
        _libraries: libraries,
    };
    let mut error = std::ptr::null_mut();
    // SAFETY: gst_init_check accepts null argc/argv; `error` receives a
    // GError we own on failure.
    if unsafe { (api.init_check)(std::ptr::null_mut(), std::ptr::null_mut(), &mut error) } == 0 {
        return Err(format!("GStreamer: cannot initialize: {}", take_error(&api, error)));
    }
    Ok(api)
}

/// The message of a GError, which is freed.
fn take_error(api: &Api, error: *mut GError) -> String {
    if error.is_null() {
        return "unknown error".into();
    }
    // SAFETY: a non-null GError from GStreamer, with a NUL-terminated message
    // (or none), freed exactly once here.
    unsafe {
        let message = (*error).message;
        let text = if message.is_null() {
            "unknown error".into()
        } else {
            CStr::from_ptr(message).to_string_lossy().into_owned()
        };
        (api.g_error_free)(error);
        text
    }
}

/// The GStreamer version found, loading it if needed.
pub fn version() -> Result<(u32, u32, u32)> {
    let api = api()?;
    let (mut major, mut minor, mut micro, mut nano) = (0, 0, 0, 0);
    // SAFETY: gst_version writes four unsigned ints.
    unsafe { (api.version)(&mut major, &mut minor, &mut micro, &mut nano) };
    Ok((major, minor, micro))
}

/// Whether the element factory `name` is installed.
pub fn has_element(name: &str) -> Result<bool> {
    let api = api()?;
    let name = CString::new(name).expect("element names have no NUL");
    // SAFETY: a NUL-terminated name; the factory, when found, is a new
    // reference released at once.
    unsafe {
        let factory = (api.element_factory_find)(name.as_ptr());
        if factory.is_null() {
            return Ok(false);
        }
        (api.object_unref)(factory);
    }
    Ok(true)
}

/// A started pipeline, its bus and its app element (named [`SINK`] or
/// [`SOURCE`]), all owned: released, after the pipeline is stopped, on drop.
struct Launched {
    api: &'static Api,
    pipeline: *mut c_void,
    element: *mut c_void,
    bus: *mut c_void,
}

// SAFETY: GStreamer objects may be used from any thread; a pipeline is
// driven from one thread at a time (`&mut self`).
unsafe impl Send for Launched {}

impl Launched {
    /// Parses `description` and looks up its element named `name`, then runs
    /// `prepare` on that element and starts the pipeline. `role` and
    /// `shown` (the URI without credentials) are how errors name it.
    fn start(
        description: &str,
        role: &str,
        shown: &str,
        name: &str,
        prepare: impl FnOnce(&Api, *mut c_void),
    ) -> Result<Launched> {
        let api = api()?;
        let text = CString::new(description)
            .map_err(|_| anyhow::anyhow!("{role} {shown}: expected a pipeline without NUL bytes"))?;
        let mut error = std::ptr::null_mut();
        // SAFETY: a NUL-terminated description; the result, when not null, is
        // a new floating reference we own; the GError, when set, is ours.
        let pipeline = unsafe { (api.parse_launch)(text.as_ptr(), &mut error) };
        if pipeline.is_null() {
            bail!("{role} {shown}: the pipeline does not parse: {}", take_error(api, error));
        }
        if !error.is_null() {
            // A recoverable parse error (e.g. a missing property): still an error.
            let message = take_error(api, error);
            // SAFETY: the pipeline was returned to us and is released once.
            unsafe { (api.object_unref)(pipeline) };
            bail!("{role} {shown}: the pipeline does not parse: {message}");
        }
        let name_c = CString::new(name).expect("no NUL");
        // SAFETY: the pipeline is a bin (parse_launch wraps several elements
        // in one); the element and the bus are new references we own.
        let (element, bus) =
            unsafe { ((api.bin_get_by_name)(pipeline, name_c.as_ptr()), (api.element_get_bus)(pipeline)) };
        let mut p = Launched { api, pipeline, element, bus };
        if element.is_null() {
            let kind = if role == "input" { "end in `appsink" } else { "start with `appsrc" };
            bail!("{role} {shown}: expected the pipeline to {kind} name={name}`");
        }
        prepare(api, element);
        // SAFETY: a valid element.
        if unsafe { (api.element_set_state)(pipeline, STATE_PLAYING) } == STATE_CHANGE_FAILURE {
            let why = p.bus_error().unwrap_or_else(|| "it refused to start".into());
            bail!("{role} {shown}: {why}");
        }
        if let Some(why) = p.bus_error() {
            p.stop();
            bail!("{role} {shown}: {why}");
        }
        Ok(p)
    }

    /// The first error on the bus, waiting up to `wait` for one; end of
    /// stream too when `eos` (then `Some(Ok(()))`).
    fn bus_wait(&mut self, wait: Duration, eos: bool) -> Option<std::result::Result<(), String>> {
        let api = self.api;
        let types = if eos { MESSAGE_ERROR | MESSAGE_EOS } else { MESSAGE_ERROR };
        // SAFETY: the bus is ours; a popped message is ours to unref, and
        // parse_error hands us a GError and a debug string to free.
        unsafe {
            let message = (api.bus_timed_pop_filtered)(self.bus, wait.as_nanos() as u64, types);
            if message.is_null() {
                return None;
            }
            let kind = *message.cast::<MessageHead>();
            if kind.kind == MESSAGE_EOS {
                (api.mini_object_unref)(message);
                return Some(Ok(()));
            }
            let (mut error, mut debug) = (std::ptr::null_mut(), std::ptr::null_mut());
            (api.message_parse_error)(message, &mut error, &mut debug);
            let text = take_error(api, error);
            let detail = if debug.is_null() {
                String::new()
            } else {
                let d = CStr::from_ptr(debug).to_string_lossy().into_owned();
                (api.g_free)(debug.cast());
                d
            };
            (api.mini_object_unref)(message);
            Some(Err(match failing_element(&detail) {
                Some(e) => format!("{text} (from {e})"),
                None => text,
            }))
        }
    }

    /// The first error on the bus, if one is waiting; end of stream is left
    /// to the sink.
    fn bus_error(&mut self) -> Option<String> {
        self.bus_wait(Duration::ZERO, false).and_then(|r| r.err())
    }

    fn stop(&mut self) {
        // SAFETY: the pipeline is ours; setting NULL is always allowed.
        unsafe { (self.api.element_set_state)(self.pipeline, STATE_NULL) };
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        self.stop();
        // SAFETY: each reference taken in `start` is released once.
        unsafe {
            if !self.element.is_null() {
                (self.api.object_unref)(self.element);
            }
            if !self.bus.is_null() {
                (self.api.object_unref)(self.bus);
            }
            (self.api.object_unref)(self.pipeline);
        }
    }
}

/// The head of a `GstMiniObject`, as gstminiobject.h lays it out (stable
/// since 1.0): a message's type follows it.
#[repr(C)]
#[derive(Clone, Copy)]
struct MiniObject {
    gtype: usize,
    refcount: c_int,
    lockstate: c_int,
    flags: c_uint,
    copy: *mut c_void,
    dispose: *mut c_void,
    free: *mut c_void,
    priv_uint: c_uint,
    priv_pointer: *mut c_void,
}

/// `GstMessage` up to its type.
#[repr(C)]
#[derive(Clone, Copy)]
struct MessageHead {
    mini_object: MiniObject,
    kind: c_uint,
}

mod feed;

pub use feed::Feed;

/// A running pipeline whose app sink, named [`SINK`], gives RGB frames.
pub struct Pipeline(Launched);

/// The name of the app sink a pipeline's frames come out of.
pub const SINK: &str = "edgevit";

/// The name of the app source an output pipeline's frames go into.
pub const SOURCE: &str = "edgevit";

/// What one [`Pipeline::pull`] gave.
pub enum Pulled {
    /// A frame: width, height, and tightly packed RGB rows.
    Frame(u32, u32, Vec<u8>),
    /// Nothing within the wait.
    Nothing,
    /// End of stream.
    End,
}

/// `value` quoted for a pipeline description's property.
pub fn quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// RGB rows are padded to 4 bytes in GStreamer's raw video.
fn rgb_stride(width: usize) -> usize {
    (width * 3).div_ceil(4) * 4
}

impl Pipeline {
    /// Parses and starts `description`, which must end in an app sink named
    /// [`SINK`] with RGB caps. `shown` is how errors name it (without
    /// credentials).
    pub fn start(description: &str, shown: &str) -> Result<Pipeline> {
        Launched::start(description, "input", shown, SINK, |_, _| {}).map(Pipeline)
    }

    /// The next frame, waiting up to `wait`.
    pub fn pull(&mut self, wait: Duration) -> Result<Pulled> {
        if let Some(why) = self.0.bus_error() {
            bail!("{why}");
        }
        let api = self.0.api;
        // SAFETY: the element is an appsink (it came from a pipeline we
        // started with one of that name, and appsink is the only element
        // taking try-pull-sample); the sample, when not null, is ours.
        let sample = unsafe { (api.app_sink_try_pull_sample)(self.0.element, wait.as_nanos() as u64) };
        if sample.is_null() {
            // SAFETY: as above.
            let eos = unsafe { (api.app_sink_is_eos)(self.0.element) } != 0;
            return Ok(if eos { Pulled::End } else { Pulled::Nothing });
        }
        let frame = self.frame(sample);
        // SAFETY: the sample is released once, after its buffer is unmapped.
        unsafe { (api.mini_object_unref)(sample) };
        frame
    }

    /// The RGB frame of `sample`, whose caps give its size.
    fn frame(&self, sample: *mut c_void) -> Result<Pulled> {
        let api = self.0.api;
        let (mut width, mut height) = (0, 0);
        // SAFETY: caps, structure and buffer belong to the sample, which
        // outlives this call; the field names are NUL-terminated.
        unsafe {
            let caps = (api.sample_get_caps)(sample);
            let structure = if caps.is_null() { caps } else { (api.caps_get_structure)(caps, 0) };
            if structure.is_null()
                || (api.structure_get_int)(structure, c"width".as_ptr(), &mut width) == 0
                || (api.structure_get_int)(structure, c"height".as_ptr(), &mut height) == 0
                || width <= 0
                || height <= 0
            {
                bail!("a frame without a width and height in its caps");
            }
        }
        let (w, h) = (width as usize, height as usize);
        if w > crate::preprocess::MAX_IMAGE_SIDE as usize || h > crate::preprocess::MAX_IMAGE_SIDE as usize {
            bail!("a {w}x{h} frame: expected at most {} pixels a side", crate::preprocess::MAX_IMAGE_SIDE);
        }
        let stride = rgb_stride(w);
        // SAFETY: the buffer belongs to the sample; the map is read-only and
        // undone before the sample goes.
        unsafe {
            let buffer = (api.sample_get_buffer)(sample);
            if buffer.is_null() {
                bail!("a sample without a buffer");
            }
            let mut map: MapInfo = std::mem::zeroed();
            if (api.buffer_map)(buffer, &mut map, MAP_READ) == 0 {
                bail!("cannot map a frame's buffer");
            }
            let data = std::slice::from_raw_parts(map.data, map.size);
            let result = if data.len() < stride * (h - 1) + w * 3 {
                Err(anyhow::anyhow!("a {w}x{h} RGB frame of {} bytes: expected {}", data.len(), stride * h))
            } else {
                let mut rgb = Vec::with_capacity(w * h * 3);
                for row in data.chunks(stride).take(h) {
                    rgb.extend_from_slice(&row[..w * 3]);
                }
                Ok(Pulled::Frame(w as u32, h as u32, rgb))
            };
            (api.buffer_unmap)(buffer, &mut map);
            result
        }
    }
}

/// The element an error's debug text names: the last part of its path,
/// `.../GstPipeline:pipeline0/GstFileSrc:filesrc0:`.
fn failing_element(debug: &str) -> Option<&str> {
    let at = debug.find("/GstPipeline:")?;
    let path = debug[at..].split(['\n', ' ']).next()?.trim_end_matches(':');
    path.rsplit('/').next()?.split_once(':').map(|(_, name)| name).filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_element_of_the_debug_path() {
        let debug = "../libs/gst/base/gstbasesrc.c(3132): gst_base_src_loop (): /GstPipeline:pipeline0/GstFileSrc:source:\nstreaming stopped, reason error (-5)";
        assert_eq!(failing_element(debug), Some("source"));
        assert_eq!(failing_element("no path here"), None);
    }
}
