//! The systemd service manager's readiness and watchdog notifications, sent
//! by the run loop once per classified frame: `READY=1` with the first, then
//! `WATCHDOG=1` at least twice per `WATCHDOG_USEC`. A loop that stops
//! classifying (hung inference, a camera that never comes back) stops the
//! pings, and systemd restarts the service (`boards/edgevit.service`).
//!
//! The protocol of sd_notify(3) without libsystemd: one datagram per
//! message to the unix socket named by `NOTIFY_SOCKET` (a path, or `@name`
//! for the abstract namespace). Without that variable, as outside systemd,
//! nothing is sent. Failures to send are logged once and otherwise ignored:
//! the watchdog must never stop the loop.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tells the service manager that the loop is alive; cheap when there is
/// no service manager or no ping is due.
pub fn alive() {
    static NOTIFIER: Mutex<Option<Option<Notifier>>> = Mutex::new(None);
    let Ok(mut notifier) = NOTIFIER.lock() else { return };
    if let Some(n) = notifier.get_or_insert_with(Notifier::from_env).as_mut() {
        n.alive(Instant::now());
    }
}

/// Where and how often to notify.
struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
    /// Half of `WATCHDOG_USEC`, when the watchdog is on for this process.
    every: Option<Duration>,
    last: Option<Instant>,
    failed: bool,
}

impl Notifier {
    fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let usec = std::env::var("WATCHDOG_USEC").ok().and_then(|u| u.parse::<u64>().ok());
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let every = usec.filter(|&u| u > 0 && for_us).map(Duration::from_micros);
        match Notifier::new(path.to_string_lossy().as_ref(), every) {
            Ok(n) => Some(n),
            Err(e) => {
                log::warn!("NOTIFY_SOCKET={}: {e}; not notifying systemd", path.to_string_lossy());
                None
            }
        }
    }

    /// A notifier for the socket at `path` (`@name`: abstract) with the
    /// watchdog interval `watchdog`, if on.
    fn new(path: &str, watchdog: Option<Duration>) -> std::io::Result<Notifier> {
        let address = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())?
            }
            None => SocketAddr::from_pathname(path)?,
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            address,
            every: watchdog.map(|w| w / 2),
            last: None,
            failed: false,
        })
    }

    fn alive(&mut self, now: Instant) {
        let message = match (self.last, self.every) {
            (None, Some(_)) => "READY=1\nWATCHDOG=1",
            (None, None) => "READY=1",
            (Some(last), Some(every)) if now.duration_since(last) >= every => "WATCHDOG=1",
            _ => return,
        };
        self.last = Some(now);
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.address) {
            if !std::mem::replace(&mut self.failed, true) {
                log::warn!("cannot notify systemd: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(socket: &UnixDatagram) -> Vec<String> {
        socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 256];
        let mut messages = Vec::new();
        while let Ok(n) = socket.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        messages
    }

    #[test]
    fn ready_once_then_watchdog_pings_at_half_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let mut n = Notifier::new(path.to_str().unwrap(), Some(Duration::from_secs(30))).unwrap();
        let t0 = Instant::now();
        for ms in [0, 1000, 14_999, 15_000, 20_000, 30_000] {
            n.alive(t0 + Duration::from_millis(ms));
        }
        assert_eq!(received(&systemd), ["READY=1\nWATCHDOG=1", "WATCHDOG=1", "WATCHDOG=1"]);
    }

    #[test]
    fn without_a_watchdog_only_readiness_is_sent() {
        let name = format!("edgevit-watchdog-test-{}", std::process::id());
        let address = {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
        };
        let systemd = UnixDatagram::bind_addr(&address).unwrap();
        let mut n = Notifier::new(&format!("@{name}"), None).unwrap();
        let t0 = Instant::now();
        n.alive(t0);
        n.alive(t0 + Duration::from_secs(60));
        assert_eq!(received(&systemd), ["READY=1"]);
    }

    #[test]
    fn a_missing_socket_does_not_stop_the_loop() {
        let dir = tempfile::tempdir().unwrap();
        let mut n =
            Notifier::new(dir.path().join("gone").to_str().unwrap(), Some(Duration::from_secs(2))).unwrap();
        n.alive(Instant::now());
        assert!(n.failed);
    }
}
