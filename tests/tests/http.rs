//! The `http://` live view, served by the real binary on 127.0.0.1: its
//! four paths, the MJPEG stream's frames, `/metrics` read by Prometheus'
//! own parser, the page in a real headless Chromium (Debian's `chromium`,
//! installed by `tools/test.sh`), and clients that never read.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use edgevit_tests::*;

/// `edgevit run pattern:// http://127.0.0.1:PORT/` plus `extra`, started
/// and listening.
fn serve(extra: &[&str]) -> (Background, u16) {
    let port = free_port();
    let uri = format!("http://127.0.0.1:{port}/");
    let mut args = vec!["run", "pattern://", uri.as_str(), "--input-rate", "30"];
    args.extend_from_slice(extra);
    let run = Background::start(&args, &[]);
    assert!(wait_for_port(port, Duration::from_secs(60)), "edgevit did not listen on {port}");
    (run, port)
}

fn stats(port: u16) -> serde_json::Value {
    let (status, _, body) = http(port, "GET", "/stats.json");
    assert_eq!(status, "HTTP/1.1 200 OK");
    serde_json::from_slice(&body).expect("stats.json is JSON")
}

/// Reads `/stream.mjpg` parts until `n` JPEGs have arrived.
fn stream_frames(port: u16, n: usize) -> Vec<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0; 65536];
    let mut frames = Vec::new();
    while frames.len() < n {
        let got = s.read(&mut chunk).expect("stream read");
        assert!(got > 0, "the stream ended after {} frames", frames.len());
        buf.extend_from_slice(&chunk[..got]);
        // Each part: --edgevit-frame, headers with Content-Length, blank line, JPEG.
        while let Some(start) = find(&buf, b"--edgevit-frame\r\n") {
            let Some(end) = find(&buf[start..], b"\r\n\r\n").map(|e| start + e + 4) else { break };
            let head = String::from_utf8_lossy(&buf[start..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .expect("a part length")
                .parse()
                .unwrap();
            if buf.len() < end + len {
                break;
            }
            frames.push(buf[end..end + len].to_vec());
            buf.drain(..end + len);
        }
    }
    frames
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Pixels of `img` within `tolerance` of `rgb` on every channel.
fn near(img: &image::RgbImage, rgb: [u8; 3], tolerance: u8) -> usize {
    img.pixels().filter(|p| p.0.iter().zip(rgb).all(|(&a, b)| a.abs_diff(b) <= tolerance)).count()
}

#[test]
fn the_live_view_serves_its_four_paths_and_nothing_else() {
    let (run, port) = serve(&["--output-width", "320", "--output-height", "240"]);

    let (status, headers, page) = http(port, "GET", "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains(&"Content-Type: text/html; charset=utf-8".to_string()), "{headers:?}");
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains(r#"src="stream.mjpg" width="320" height="240""#), "{page}");

    // JPEGs of the canvas size with the overlay's confidence bar in them.
    let frames = stream_frames(port, 3);
    for jpeg in &frames {
        let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (320, 240));
        assert!(near(&img, [0, 200, 0], 24) > 50, "no confidence bar in a stream frame");
    }
    assert_ne!(frames[0], frames[2], "the stream's frames do not change");

    let first = stats(port);
    std::thread::sleep(Duration::from_millis(1500));
    let second = stats(port);
    assert_eq!(second["model"], "fmnist-vit-ggem");
    assert_eq!(second["backend"], "cpu");
    assert_eq!(second["version"], 1);
    assert!(second["frames"].as_u64() > first["frames"].as_u64(), "{first} then {second}");
    assert!(!second["top_k"].as_array().unwrap().is_empty(), "{second}");
    assert_eq!(second["stream"]["fps_cap"], 15);
    let names: Vec<&str> =
        second["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Preprocess", "Network", "Postprocess", "Overlay", "Total", "Capture", "Encode"]);
    assert!(second["update"].is_null(), "no update channel, no check: {second}");

    // Read-only, these paths only.
    assert_eq!(http(port, "POST", "/").0, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(http(port, "GET", "/../etc/passwd").0, "HTTP/1.1 404 Not Found");
    assert_eq!(http(port, "GET", "/stats.json/x").0, "HTTP/1.1 404 Not Found");
    let (status, headers, body) = http(port, "HEAD", "/stats.json");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.is_empty() && headers.iter().any(|h| h.starts_with("Content-Length: ")), "{headers:?}");
    let mut garbage = TcpStream::connect(("127.0.0.1", port)).unwrap();
    garbage.write_all(&vec![b'x'; 20_000]).unwrap();
    let mut answer = String::new();
    let _ = garbage.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    drop(run);
}

#[test]
fn metrics_parse_as_prometheus_text() {
    let (run, port) = serve(&[]);
    std::thread::sleep(Duration::from_millis(500));
    let (status, headers, body) = http(port, "GET", "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains(&"Content-Type: text/plain; version=0.0.4; charset=utf-8".to_string()));
    let python = repo(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: tools/test.sh installs prometheus-client there",
        python.display()
    );
    // Prometheus' Python client parses the text and lists what it found.
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(family.type, s.name, labels, s.value)
"#;
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&body)
    );
    let parsed = String::from_utf8(out.stdout).unwrap();
    let sample = |prefix: &str| -> f64 {
        let line = parsed
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{parsed}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let frames = sample("counter edgevit_frames_total ");
    assert!(frames >= 1.0, "{parsed}");
    assert_eq!(sample("gauge edgevit_model_info backend=cpu,model=fmnist-vit-ggem,version=1 "), 1.0);
    // A histogram per stage, its +Inf bucket its count.
    let network_count = sample("histogram edgevit_stage_seconds_count stage=network ");
    assert_eq!(sample("histogram edgevit_stage_seconds_bucket le=+Inf,stage=network "), network_count);
    assert!(network_count >= 1.0, "{parsed}");
    drop(run);
}

/// The page in a real browser: `chromium --headless` with `--screenshot`
/// and `--dump-dom`, each stopped after a few seconds (the stream never
/// ends, so the page never finishes loading).
#[test]
fn the_page_shows_the_stream_and_live_stats_in_chromium() {
    let Some(chromium) =
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|p| Path::new(p).exists())
    else {
        panic!("chromium is not installed: tools/test.sh installs it (apt-get install chromium)");
    };
    let (run, port) = serve(&[]);
    let url = format!("http://127.0.0.1:{port}/");
    let tmp = tempfile::tempdir().unwrap();
    // A loaded machine starts a browser slowly: each look is retried with
    // a longer time before Chromium stops the page, until it shows what
    // is looked for.
    let browser = |extra: &str, ready: &dyn Fn(&str) -> bool| -> String {
        for timeout in [5_000, 10_000, 20_000, 40_000] {
            let out = Command::new(chromium)
                .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"])
                .arg(format!("--user-data-dir={}", tmp.path().join("profile").display()))
                .arg("--window-size=1000,700")
                .arg(format!("--timeout={timeout}"))
                .arg(extra)
                .arg(&url)
                .output()
                .unwrap();
            assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            if ready(&stdout) {
                return stdout;
            }
        }
        panic!("the page never showed it within 40 s");
    };

    let shot = tmp.path().join("page.png");
    // The stream's image sits at the top left (16 px margin), 640x480.
    let frame =
        || image::imageops::crop_imm(&image::open(&shot).unwrap().to_rgb8(), 16, 16, 640, 480).to_image();
    browser(&format!("--screenshot={}", shot.display()), &|_| near(&frame(), [0, 200, 0], 24) > 200);
    assert!(near(&frame(), [255, 255, 255], 24) > 200, "no overlay text in the screenshot");

    let read = |dom: &str, id: &str| -> String {
        let at = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in\n{dom}"));
        let rest = &dom[at..];
        let rest = &rest[rest.find('>').unwrap() + 1..];
        rest[..rest.find('<').unwrap()].to_string()
    };
    // Once the page has read /stats.json (it counts its reads on <body>).
    let has_read = |dom: &str| dom.contains("data-reads=");
    let first = browser("--dump-dom", &has_read);
    let second = browser("--dump-dom", &has_read);
    assert_eq!(read(&second, "model"), "fmnist-vit-ggem v1");
    assert_eq!(read(&second, "state"), "live");
    let frames = |dom: &str| read(dom, "frames").parse::<u64>().unwrap_or_else(|_| panic!("{dom}"));
    assert!(frames(&second) > frames(&first), "the stats did not change between two reads");
    drop(run);
}

/// Twenty clients ask for the stream and never read: the loop classifies
/// every frame it would have, a reading client still gets fresh frames,
/// and memory stays flat.
#[test]
fn clients_that_never_read_do_not_hold_the_loop_or_grow_memory() {
    const FRAMES: u64 = 300;
    let frames = FRAMES.to_string();
    let (mut run, port) = serve(&["--frames", &frames, "--output-fps", "30"]);
    let stuck: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(s, "GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            s
        })
        .collect();
    let reader = std::thread::spawn(move || stream_frames(port, 20).len());
    let mut rss = Vec::new();
    let start = Instant::now();
    while run.child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(120) {
        rss.push(run.rss_bytes());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(reader.join().unwrap(), 20, "the reading client got fewer frames");
    let result = run.finish();
    assert!(result.ok().stdout.contains(&format!("{FRAMES} frames, ")), "{}", result.stdout);
    drop(stuck);
    rss.retain(|&r| r > 0);
    let (early, late) = rss.split_at(rss.len() / 2);
    let (early, late) = (early.iter().max().unwrap(), late.iter().max().unwrap());
    eprintln!("RSS: first half at most {} MiB, second half {} MiB", early >> 20, late >> 20);
    assert!(*late <= early + (16 << 20), "RSS grew from {early} to {late} bytes with 20 stuck clients");
}
