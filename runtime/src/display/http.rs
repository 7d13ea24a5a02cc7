//! `http://ADDR:PORT/`: the live view of a headless device, served by a
//! small blocking server of our own on `std::net` (a thread per connection,
//! no async runtime). It binds where the URI says (`127.0.0.1` for this
//! machine only, `0.0.0.0` for the network) and serves only these
//! read-only paths:
//!
//! | path | what |
//! |---|---|
//! | `/` | a page with the live stream and the stats, refreshed every second |
//! | `/stream.mjpg` | the overlay frames as multipart MJPEG, at most `--output-fps` |
//! | `/stats.json` | FPS, frames, drops, top-k, model, version, backend, stage times, update state |
//! | `/metrics` | the same in Prometheus' text format, with stage latency histograms |
//!
//! Frames are drawn and encoded only while a stream is watched. The loop
//! draws the canvas and hands it to the encoder thread (newest wins: a frame
//! is handed over only once the last was taken), which encodes it as JPEG
//! and publishes it. Each stream sends the newest JPEG once it has sent the
//! one before, so a slow client skips frames, and a stuck one is dropped
//! after [`server::WRITE_TIMEOUT`] without progress: neither ever waits the
//! loop or holds more than the one shared frame.

mod server;

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

use super::{Canvas, Display, DisplayArgs};
use crate::overlay::OverlayContent;
use crate::preprocess::Image;
use crate::stats::{Histogram, Stats, STAGES};

/// JPEG quality of the stream's frames (chroma subsampled 4:2:0).
pub const JPEG_QUALITY: u8 = 80;

/// How often the loop's stage histograms are copied for `/metrics`.
const STAGES_EVERY: Duration = Duration::from_millis(500);

/// The newest encoded frame and its number (0: none yet).
#[derive(Default)]
struct Latest {
    jpeg: Arc<Vec<u8>>,
    seq: u64,
}

/// The canvas handed from the loop to the encoder.
struct Handed {
    canvas: Canvas,
    fresh: bool,
}

/// What the pages show, as of the last frame.
#[derive(Default)]
struct Status {
    model: String,
    version: u64,
    backend: String,
    top: Vec<(String, f32)>,
    live_fps: f32,
    frames: u64,
    dropped: u64,
    seconds: f64,
    /// The loop's stages and then the capture thread's CPU, copied every
    /// [`STAGES_EVERY`]; empty before the first frame.
    stages: Vec<Histogram>,
    /// JPEG encoding, on the encoder thread.
    encode: Histogram,
}

/// What the loop, the encoder and the connections share.
struct Shared {
    status: Mutex<Status>,
    latest: Mutex<Latest>,
    published: Condvar,
    handed: Mutex<Handed>,
    handed_over: Condvar,
    /// Open `/stream.mjpg` responses.
    streams: AtomicUsize,
    /// Open connections.
    connections: AtomicUsize,
    stop: AtomicBool,
    started: Instant,
    fps_cap: u32,
    page: String,
}

/// `http://ADDR:PORT/`: see the module documentation.
pub struct HttpOutput {
    uri: String,
    addr: SocketAddr,
    canvas: Canvas,
    shared: Arc<Shared>,
    interval: Duration,
    next_due: Instant,
    drawn: bool,
    stages_copied: Option<Instant>,
    threads: Vec<JoinHandle<()>>,
}

/// The address of `http://HOST:PORT/`: a literal or a name that resolves.
fn address(uri: &str) -> Result<SocketAddr> {
    let rest = uri.strip_prefix("http://").expect("an http:// URI");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !path.is_empty() {
        bail!("output URI {uri}: expected http://ADDR:PORT/ with no path (the server's paths are fixed)");
    }
    if authority.rsplit_once(':').is_none_or(|(_, port)| port.is_empty() || authority.ends_with(']')) {
        bail!("output URI {uri}: expected a port, e.g. http://0.0.0.0:8080/ or http://127.0.0.1:8080/");
    }
    authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| format!("output URI {uri}: {authority} is not an address to listen on"))
}

impl HttpOutput {
    /// Binds the address of `uri` and starts the server and the encoder.
    pub fn open(uri: &str, args: &DisplayArgs) -> Result<HttpOutput> {
        let wanted = address(uri)?;
        let listener = TcpListener::bind(wanted)
            .with_context(|| format!("output URI {uri}: cannot listen on {wanted}"))?;
        let addr = listener.local_addr().with_context(|| format!("output URI {uri}: no local address"))?;
        let (width, height) = (args.output_width, args.output_height);
        let shared = Arc::new(Shared {
            status: Mutex::default(),
            latest: Mutex::default(),
            published: Condvar::new(),
            handed: Mutex::new(Handed { canvas: Canvas::new(width, height), fresh: false }),
            handed_over: Condvar::new(),
            streams: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            started: Instant::now(),
            fps_cap: args.output_fps,
            page: include_str!("http/page.html")
                .replace("{width}", &width.to_string())
                .replace("{height}", &height.to_string()),
        });
        let threads = vec![
            spawn("http", {
                let shared = shared.clone();
                move || server::serve(listener, &shared)
            })?,
            spawn("jpeg", {
                let shared = shared.clone();
                move || encode_loop(&shared, width, height)
            })?,
        ];
        log::info!("serving the live view on http://{addr}/");
        Ok(HttpOutput {
            uri: uri.to_string(),
            addr,
            canvas: Canvas::new(width, height),
            shared,
            interval: Duration::from_secs_f64(1.0 / f64::from(args.output_fps.max(1))),
            next_due: Instant::now(),
            drawn: false,
            stages_copied: None,
            threads,
        })
    }

    /// Where it listens (the port chosen when the URI said 0).
    #[cfg(test)]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Starts a thread named `name`.
fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .with_context(|| format!("cannot start the {name} thread"))
}

/// Encodes each handed-over canvas and publishes it, until stopped.
fn encode_loop(shared: &Shared, width: u32, height: u32) {
    let mut work = Canvas::new(width, height);
    loop {
        {
            let mut handed = shared.handed.lock().expect("handed lock");
            while !handed.fresh {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                handed = shared
                    .handed_over
                    .wait_timeout(handed, Duration::from_millis(200))
                    .expect("handed lock")
                    .0;
            }
            std::mem::swap(&mut work, &mut handed.canvas);
            handed.fresh = false;
        }
        let start = Instant::now();
        let mut jpeg = Vec::with_capacity(work.data().len() / 8);
        let mut encoder = Encoder::new(&mut jpeg, JPEG_QUALITY);
        encoder.set_sampling_factor(SamplingFactor::R_4_2_0);
        // Canvas sides are at most MAX_CANVAS_SIDE, within a JPEG's u16.
        if let Err(e) = encoder.encode(work.data(), work.width as u16, work.height as u16, ColorType::Rgb) {
            log::warn!("http: cannot encode a frame: {e}");
            continue;
        }
        shared.status.lock().expect("status lock").encode.record(start.elapsed());
        let mut latest = shared.latest.lock().expect("latest lock");
        latest.jpeg = Arc::new(jpeg);
        latest.seq += 1;
        shared.published.notify_all();
    }
}

impl Display for HttpOutput {
    fn render(&mut self, frame: &Image, content: &OverlayContent) -> Result<()> {
        {
            let mut status = self.shared.status.lock().expect("status lock");
            if status.model != content.model {
                status.model = content.model.to_string();
            }
            if status.backend != content.backend {
                status.backend = content.backend.to_string();
            }
            status.version = content.version;
            status.live_fps = content.fps;
            // The labels' strings are kept from frame to frame.
            status.top.resize_with(content.top.len(), Default::default);
            for ((label, score), &(s, l)) in status.top.iter_mut().zip(content.top) {
                if label != l {
                    l.clone_into(label);
                }
                *score = s;
            }
        }
        let now = Instant::now();
        self.drawn = self.shared.streams.load(Ordering::Relaxed) > 0
            && now >= self.next_due
            && !self.shared.handed.lock().expect("handed lock").fresh;
        if !self.drawn {
            return Ok(());
        }
        self.next_due = now + self.interval;
        self.canvas.compose(frame, content)
    }

    fn present(&mut self) -> Result<()> {
        if std::mem::take(&mut self.drawn) {
            let mut handed = self.shared.handed.lock().expect("handed lock");
            std::mem::swap(&mut self.canvas, &mut handed.canvas);
            handed.fresh = true;
            self.shared.handed_over.notify_one();
        }
        Ok(())
    }

    fn observe(&mut self, stats: &Stats) {
        let copy = self.stages_copied.is_none_or(|at| at.elapsed() >= STAGES_EVERY);
        let mut status = self.shared.status.lock().expect("status lock");
        status.frames = stats.frames;
        status.dropped = stats.dropped;
        status.seconds = stats.seconds;
        if copy {
            status.stages = stats.stages.iter().chain([&stats.capture]).cloned().collect();
            self.stages_copied = Some(Instant::now());
        }
    }

    fn profile(&self) -> Option<(&'static str, Histogram)> {
        Some(("Encode", self.shared.status.lock().expect("status lock").encode.clone()))
    }

    fn describe(&self) -> String {
        format!(
            "{} (listening on {}, {}x{} MJPEG at most {} FPS)",
            self.uri,
            self.addr,
            self.canvas.width(),
            self.canvas.height(),
            self.shared.fps_cap
        )
    }
}

impl Drop for HttpOutput {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.handed_over.notify_all();
        self.shared.published.notify_all();
        // The accept loop wakes on a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(if wake.is_ipv4() {
                [127, 0, 0, 1].into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The `/stats.json` document.
#[derive(serde::Serialize)]
struct StatsJson<'a> {
    model: &'a str,
    version: u64,
    backend: &'a str,
    frames: u64,
    dropped: u64,
    /// Smoothed over the last frames, as the overlay shows it.
    fps: f32,
    /// Over the whole run.
    mean_fps: f64,
    uptime_s: f64,
    top_k: Vec<Class<'a>>,
    stages: Vec<Stage>,
    stream: Stream,
    update: Option<crate::update::LastCheck>,
}

#[derive(serde::Serialize)]
struct Class<'a> {
    label: &'a str,
    score: f32,
}

#[derive(serde::Serialize)]
struct Stage {
    name: &'static str,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(serde::Serialize)]
struct Stream {
    clients: usize,
    frames: u64,
    fps_cap: u32,
    encode_p50_ms: f64,
}

impl Shared {
    fn stats_json(&self) -> String {
        let status = self.status.lock().expect("status lock");
        let stage =
            |name, h: &Histogram| Stage { name, p50_ms: h.quantile_ms(0.5), p99_ms: h.quantile_ms(0.99) };
        let names = STAGES.iter().chain(&["Capture"]);
        let mut stages: Vec<Stage> = names.zip(&status.stages).map(|(n, h)| stage(n, h)).collect();
        stages.push(stage("Encode", &status.encode));
        let doc = StatsJson {
            model: &status.model,
            version: status.version,
            backend: &status.backend,
            frames: status.frames,
            dropped: status.dropped,
            fps: status.live_fps,
            mean_fps: status.frames as f64 / status.seconds.max(f64::MIN_POSITIVE),
            uptime_s: self.started.elapsed().as_secs_f64(),
            top_k: status.top.iter().map(|(label, score)| Class { label, score: *score }).collect(),
            stages,
            stream: Stream {
                clients: self.streams.load(Ordering::Relaxed),
                frames: status.encode.count(),
                fps_cap: self.fps_cap,
                encode_p50_ms: status.encode.quantile_ms(0.5),
            },
            update: crate::update::last_check(),
        };
        serde_json::to_string(&doc).expect("stats serialize")
    }

    fn metrics(&self) -> String {
        let status = self.status.lock().expect("status lock");
        let mut m = Metrics::default();
        m.family("edgevit_frames_total", "counter", "Frames classified.");
        m.sample("edgevit_frames_total", &[], status.frames as f64);
        m.family(
            "edgevit_dropped_frames_total",
            "counter",
            "Frames a live source replaced before they were classified.",
        );
        m.sample("edgevit_dropped_frames_total", &[], status.dropped as f64);
        m.family("edgevit_fps", "gauge", "Frames per second, smoothed over the last frames.");
        m.sample("edgevit_fps", &[], f64::from(status.live_fps));
        m.family("edgevit_uptime_seconds", "gauge", "Seconds since the output started.");
        m.sample("edgevit_uptime_seconds", &[], self.started.elapsed().as_secs_f64());
        m.family("edgevit_model_info", "gauge", "The model running, its version and backend (always 1).");
        let version = status.version.to_string();
        m.sample(
            "edgevit_model_info",
            &[("model", &status.model), ("version", &version), ("backend", &status.backend)],
            1.0,
        );
        m.family("edgevit_model_version", "gauge", "The version of the bundle running.");
        m.sample("edgevit_model_version", &[], status.version as f64);
        m.family("edgevit_stage_seconds", "histogram", "Time per frame in each stage of the loop.");
        for (name, h) in STAGES.iter().zip(&status.stages) {
            m.histogram("edgevit_stage_seconds", &name.to_lowercase(), h);
        }
        m.family("edgevit_capture_cpu_seconds", "histogram", "CPU time of the capture thread per frame.");
        if let Some(capture) = status.stages.get(STAGES.len()) {
            m.histogram("edgevit_capture_cpu_seconds", "", capture);
        }
        m.family("edgevit_encode_seconds", "histogram", "Time to encode one stream frame as JPEG.");
        m.histogram("edgevit_encode_seconds", "", &status.encode);
        m.family("edgevit_stream_clients", "gauge", "Open /stream.mjpg responses.");
        m.sample("edgevit_stream_clients", &[], self.streams.load(Ordering::Relaxed) as f64);
        if let Some(check) = crate::update::last_check() {
            m.family(
                "edgevit_update_last_check_timestamp_seconds",
                "gauge",
                "When the last update check ended.",
            );
            m.sample("edgevit_update_last_check_timestamp_seconds", &[], check.at as f64);
            m.family(
                "edgevit_update_last_check_success",
                "gauge",
                "Whether the last update check succeeded.",
            );
            m.sample("edgevit_update_last_check_success", &[], f64::from(u8::from(check.ok)));
        }
        m.0
    }
}

/// Upper bounds, in seconds, of the exported latency buckets.
const BUCKETS: [f64; 13] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];

/// Prometheus' text exposition format, version 0.0.4.
#[derive(Default)]
struct Metrics(String);

impl Metrics {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.0 += &format!("# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0 += name;
        if !labels.is_empty() {
            let pairs: Vec<String> =
                labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))).collect();
            self.0 += &format!("{{{}}}", pairs.join(","));
        }
        self.0 += &format!(" {value}\n");
    }

    /// `name_bucket`, `name_sum` and `name_count`, labelled `stage` unless empty.
    fn histogram(&mut self, name: &str, stage: &str, h: &Histogram) {
        let mut labels = Vec::new();
        if !stage.is_empty() {
            labels.push(("stage", stage));
        }
        for le in BUCKETS {
            let text = le.to_string();
            let with: Vec<_> = labels.iter().copied().chain([("le", text.as_str())]).collect();
            self.sample(&format!("{name}_bucket"), &with, h.count_at_most(le) as f64);
        }
        let with: Vec<_> = labels.iter().copied().chain([("le", "+Inf")]).collect();
        self.sample(&format!("{name}_bucket"), &with, h.count() as f64);
        self.sample(&format!("{name}_sum"), &labels, h.sum_seconds());
        self.sample(&format!("{name}_count"), &labels, h.count() as f64);
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::preprocess::PixelFormat;

    #[test]
    fn addresses_need_a_port_and_no_path() {
        assert_eq!(address("http://127.0.0.1:8080/").unwrap(), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(address("http://[::1]:9000").unwrap(), "[::1]:9000".parse().unwrap());
        let e = address("http://127.0.0.1/").unwrap_err().to_string();
        assert_eq!(e, "output URI http://127.0.0.1/: expected a port, e.g. http://0.0.0.0:8080/ or http://127.0.0.1:8080/");
        assert!(address("http://[::1]/").is_err());
        let e = address("http://0.0.0.0:80/live").unwrap_err().to_string();
        assert!(e.contains("with no path"), "{e}");
        let e = address("http://no-such-host.invalid:80/").unwrap_err().to_string();
        assert!(e.ends_with("no-such-host.invalid:80 is not an address to listen on"), "{e}");
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn frames_are_encoded_for_a_watcher_and_the_counters_served() {
        let args = DisplayArgs { output_width: 64, output_height: 48, ..DisplayArgs::default() };
        let mut out = HttpOutput::open("http://127.0.0.1:0/", &args).unwrap();
        let addr = out.local_addr();
        let frame = Image { width: 8, height: 6, format: PixelFormat::Rgb8, data: vec![90; 8 * 6 * 3] };
        let top = [(0.75, "Bag")];
        let content = OverlayContent { top: &top, model: "m", version: 3, backend: "cpu", fps: 9.0 };

        // No watcher: nothing drawn, nothing encoded.
        out.render(&frame, &content).unwrap();
        out.present().unwrap();
        assert!(!out.drawn);

        let mut watcher = TcpStream::connect(addr).unwrap();
        watcher.write_all(b"GET /stream.mjpg HTTP/1.1\r\n\r\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while out.shared.latest.lock().unwrap().seq < 2 {
            assert!(Instant::now() < deadline, "no frame encoded");
            out.render(&frame, &content).unwrap();
            out.present().unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut head = [0; 200];
        let n = watcher.read(&mut head).unwrap();
        let head = String::from_utf8_lossy(&head[..n]);
        assert!(
            head.starts_with(
                "HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=edgevit-frame"
            ),
            "{head}"
        );
        let jpeg = out.shared.latest.lock().unwrap().jpeg.clone();
        let img = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg).unwrap();
        assert_eq!((img.width(), img.height()), (64, 48));

        let mut stats = Stats::new();
        stats.frames = 7;
        stats.stages[1].record(Duration::from_millis(3));
        out.observe(&stats);
        let json = get(addr, "/stats.json");
        let body: serde_json::Value = serde_json::from_str(json.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["model"], "m");
        assert_eq!(body["version"], 3);
        assert_eq!(body["frames"], 7);
        assert_eq!(body["top_k"][0]["label"], "Bag");
        assert_eq!(body["stream"]["clients"], 1);

        let metrics = get(addr, "/metrics");
        assert!(metrics.contains("edgevit_frames_total 7\n"), "{metrics}");
        assert!(
            metrics.contains("edgevit_stage_seconds_bucket{stage=\"network\",le=\"0.002\"} 0\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("edgevit_stage_seconds_bucket{stage=\"network\",le=\"0.005\"} 1\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("edgevit_stage_seconds_bucket{stage=\"network\",le=\"+Inf\"} 1\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("edgevit_model_info{model=\"m\",version=\"3\",backend=\"cpu\"} 1\n"),
            "{metrics}"
        );
        // Dropping stops the server and the encoder, the watcher included.
        drop(out);
        let mut rest = Vec::new();
        let _ = watcher.read_to_end(&mut rest);
        assert!(TcpStream::connect(addr).is_err(), "still listening");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
