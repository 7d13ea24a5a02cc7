//! The HTTP side of [`super::HttpOutput`]: one request per connection
//! (`Connection: close`), `GET` and `HEAD` only, the request head within
//! [`MAX_HEAD`] bytes and no pause over [`READ_TIMEOUT`], at most
//! [`MAX_CONNECTIONS`] connections and [`MAX_STREAMS`] streams at a time.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::Shared;

/// A request head longer than this is refused (431).
pub const MAX_HEAD: usize = 8192;
/// Open connections at most; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 64;
/// Open streams at most; more are answered 503.
pub const MAX_STREAMS: usize = 32;
/// A client sending its request head may pause this long at most.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A client that takes no bytes for this long is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The multipart boundary of `/stream.mjpg`.
const BOUNDARY: &str = "edgevit-frame";

/// Accepts connections until the output stops, each on a thread of its own.
pub(super) fn serve(listener: TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, or a connection reset before accept.
                log::debug!("http: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let guard = Counted::new(shared, |s| &s.connections);
        if guard.count > MAX_CONNECTIONS {
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = respond(
                &mut stream,
                "503 Service Unavailable",
                "text/plain",
                b"too many connections\n",
                false,
            );
            continue;
        }
        let shared = shared.clone();
        let spawned = std::thread::Builder::new().name("http-client".into()).spawn(move || {
            let _guard = guard;
            if let Err(e) = handle(stream, &shared) {
                log::debug!("http: {e}");
            }
        });
        if let Err(e) = spawned {
            log::warn!("http: cannot start a connection thread: {e}");
        }
    }
}

/// One of the shared counters, counted up while the guard lives.
struct Counted {
    shared: Arc<Shared>,
    counter: fn(&Shared) -> &AtomicUsize,
    /// The count, this one included.
    count: usize,
}

impl Counted {
    fn new(shared: &Arc<Shared>, counter: fn(&Shared) -> &AtomicUsize) -> Counted {
        let count = counter(shared).fetch_add(1, Ordering::Relaxed) + 1;
        Counted { shared: shared.clone(), counter, count }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        (self.counter)(&self.shared).fetch_sub(1, Ordering::Relaxed);
    }
}

const BAD_REQUEST: &str = "400 Bad Request";

/// Why a request head was refused.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// The client went away or sent nothing in time: no answer.
    Gone,
    /// Answered with this status.
    Status(&'static str),
}

/// The method and path of a request head (`METHOD SP TARGET SP HTTP/1.x`),
/// the query dropped; else the status that refuses it.
fn parse_head(head: &[u8]) -> Result<(&str, &str), &'static str> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line).map_err(|_| BAD_REQUEST)?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BAD_REQUEST);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(BAD_REQUEST);
    }
    if method != "GET" && method != "HEAD" {
        return Err("405 Method Not Allowed");
    }
    Ok((method, target.split('?').next().unwrap_or(target)))
}

/// Reads up to the end of the request head (a blank line).
fn read_head(stream: &mut impl Read) -> Result<Vec<u8>, Refused> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0; 1024];
    loop {
        let n = stream.read(&mut chunk).map_err(|_| Refused::Gone)?;
        if n == 0 {
            return Err(Refused::Gone);
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(Refused::Status("431 Request Header Fields Too Large"));
        }
    }
}

fn handle(mut stream: TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let head = match read_head(&mut stream) {
        Ok(head) => head,
        Err(Refused::Gone) => return Ok(()),
        Err(Refused::Status(status)) => return refuse(&mut stream, status),
    };
    let (method, path) = match parse_head(&head) {
        Ok(request) => request,
        Err(status) => return refuse(&mut stream, status),
    };
    let head_only = method == "HEAD";
    match path {
        "/" | "/index.html" => {
            respond(&mut stream, "200 OK", "text/html; charset=utf-8", shared.page.as_bytes(), head_only)
        }
        "/stats.json" => {
            respond(&mut stream, "200 OK", "application/json", shared.stats_json().as_bytes(), head_only)
        }
        "/metrics" => respond(
            &mut stream,
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics().as_bytes(),
            head_only,
        ),
        "/stream.mjpg" => stream_frames(&mut stream, shared, head_only),
        _ => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            b"not found: the paths are /, /stream.mjpg, /stats.json and /metrics\n",
            head_only,
        ),
    }
}

/// A refusal: its status as the whole body.
fn refuse(stream: &mut impl Write, status: &str) -> io::Result<()> {
    respond(stream, status, "text/plain", status.as_bytes(), false)
}

/// A whole response, then the connection is closed.
fn respond(
    stream: &mut impl Write,
    status: &str,
    kind: &str,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()
}

/// `/stream.mjpg`: the newest JPEG each time the last one has been sent,
/// until the client goes, stalls past [`WRITE_TIMEOUT`], or the output stops.
fn stream_frames(stream: &mut TcpStream, shared: &Arc<Shared>, head_only: bool) -> io::Result<()> {
    let guard = Counted::new(shared, |s| &s.streams);
    if guard.count > MAX_STREAMS {
        return respond(stream, "503 Service Unavailable", "text/plain", b"too many streams\n", head_only);
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary={BOUNDARY}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes())?;
    if head_only {
        return Ok(());
    }
    let mut sent = 0;
    loop {
        let jpeg = {
            let mut latest = shared.latest.lock().expect("latest lock");
            while latest.seq == sent {
                if shared.stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                latest =
                    shared.published.wait_timeout(latest, Duration::from_millis(500)).expect("latest lock").0;
            }
            sent = latest.seq;
            latest.jpeg.clone()
        };
        let part =
            format!("--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n", jpeg.len());
        stream.write_all(part.as_bytes())?;
        stream.write_all(&jpeg)?;
        stream.write_all(b"\r\n")?;
        stream.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_parse_to_method_and_path() {
        assert_eq!(
            parse_head(b"GET /stats.json?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(("GET", "/stats.json"))
        );
        assert_eq!(parse_head(b"HEAD / HTTP/1.0\r\n\r\n"), Ok(("HEAD", "/")));
        assert_eq!(parse_head(b"POST / HTTP/1.1\r\n\r\n"), Err("405 Method Not Allowed"));
        for bad in [
            &b"GET /\r\n\r\n"[..],
            b"GET http://x/ HTTP/1.1\r\n\r\n",
            b"GET / SPDY/3\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad), Err("400 Bad Request"), "{bad:?}");
        }
    }

    #[test]
    fn heads_end_at_a_blank_line_within_the_limit() {
        let mut ok = &b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"[..];
        assert!(read_head(&mut ok).is_ok());
        let long = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; MAX_HEAD + 10]].concat();
        assert_eq!(
            read_head(&mut long.as_slice()),
            Err(Refused::Status("431 Request Header Fields Too Large"))
        );
        assert_eq!(read_head(&mut &b"GET / HTTP/1.1\r\n"[..]), Err(Refused::Gone));
    }
}
