//! Remote model updates: a signed channel on plain static hosting, A/B
//! slots, a health check before an atomic switch, rollback, and a poller
//! that hands a new engine to the running loop.
//!
//! [`channel`] is the signed pointer to the newest bundle, [`rollout`]
//! decides whether this device takes it, [`device`] owns the id that
//! decision and the servers' logs go by, [`fetch`] moves bytes (HTTP(S)
//! with Range resume, or `file://`) on the trust and identity of
//! [`transport`] through the proxies of [`proxy`], [`slots`] owns the state directory and
//! its switches, [`agent`] runs the steps of `apply` in order.
//! See `doc/updates.md` for the whole story and its guarantees.

pub mod agent;
pub mod channel;
pub mod device;
pub mod fetch;
pub mod proxy;
pub mod rollout;
pub mod slots;
pub mod transport;

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, TrySendError};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rand_core::{OsRng, RngCore};

use crate::board::Board;
use crate::bundle::{Bundle, SignaturePolicy};
use crate::engine::{Engine, EngineOptions};
use crate::keys::TrustArgs;
use slots::StateDir;

/// Where a device keeps its slots, the `current` link and `state.toml`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/edgevit";

/// Environment variable naming the [`agent::STEPS`] step at which `apply`
/// kills its own process with SIGKILL: the crash-consistency tests use it to
/// stop the agent at every step, exactly as a power cut or an OOM kill would.
/// Only builds with the `testing` feature (the tests') have it.
#[cfg(feature = "testing")]
pub const CRASH_ENV: &str = "EDGEVIT_UPDATE_CRASH_AT";

/// Dies at once, without unwinding or flushing, when [`CRASH_ENV`] names `step`.
#[cfg(feature = "testing")]
pub(crate) fn crash_point(step: &str) {
    if std::env::var_os(CRASH_ENV).is_some_and(|v| v == step) {
        // SAFETY: getpid and kill have no preconditions; SIGKILL ends the
        // process before kill returns.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Without the `testing` feature a step is only a name.
#[cfg(not(feature = "testing"))]
#[inline(always)]
pub(crate) fn crash_point(_step: &str) {}

/// Which bundle runs: the flags of every verb that loads one.
#[derive(Debug, clap::Args)]
pub struct BundleArgs {
    /// Bundle directory or `.tar`. Without it: the bundle installed in
    /// `--state-dir`, else the default bundle built into the binary.
    #[arg(long = "bundle", value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// State directory of remote updates (slots a/b, `current`, `state.toml`)
    /// [default: /var/lib/edgevit when it holds an installed bundle].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Do not check the manifest signature (hashes are still checked). Logged.
    #[arg(long)]
    pub skip_signature: bool,
}

impl BundleArgs {
    fn policy(&self) -> SignaturePolicy {
        if self.skip_signature {
            SignaturePolicy::Skip
        } else {
            SignaturePolicy::Require
        }
    }

    /// The state directory whose `current` bundle runs: the given one, or the
    /// device's when it holds an installed bundle.
    pub fn state_dir(&self) -> Option<StateDir> {
        match &self.state_dir {
            Some(dir) => Some(StateDir::new(dir)),
            None => Some(StateDir::new(DEFAULT_STATE_DIR)).filter(StateDir::is_installed),
        }
    }

    /// Opens and verifies the chosen bundle and hands it to `load`. A bundle
    /// from the state directory that fails to open or load falls back to the
    /// last good slot.
    pub fn open_with<T>(&self, mut load: impl FnMut(Bundle) -> Result<T>) -> Result<T> {
        if let Some(path) = &self.path {
            return load(Bundle::open(path, &self.trust.store()?, self.policy())?);
        }
        match self.state_dir() {
            Some(dir) if dir.is_installed() => {
                let trust = self.trust.store()?;
                agent::open_active(&dir, |slot| load(Bundle::open(slot, &trust, self.policy())?))
            }
            Some(dir) => {
                log::info!("{}: no bundle installed yet; running the built-in default", dir.root.display());
                load(crate::embedded::default_bundle()?)
            }
            None => load(crate::embedded::default_bundle()?),
        }
    }

    /// Opens and verifies the chosen bundle.
    pub fn open(&self) -> Result<Bundle> {
        self.open_with(Ok)
    }

    /// Opens the chosen bundle and loads its engine.
    pub fn load(&self, options: &EngineOptions) -> Result<(Bundle, Engine)> {
        self.open_with(|bundle| {
            let engine = Engine::load(&bundle, options)?;
            Ok((bundle, engine))
        })
    }
}

/// Updates while `run` runs.
#[derive(Debug, clap::Args)]
pub struct RunUpdateArgs {
    /// Poll this channel (`https://.../channel.toml`) and swap in each new
    /// version between two frames; installs into `--state-dir` (default
    /// /var/lib/edgevit).
    #[arg(long, value_name = "URL")]
    pub update_channel: Option<String>,
    /// Time between two polls, with up to 10% random jitter either way.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub update_interval: Duration,
    #[command(flatten)]
    pub fetch: fetch::FetchArgs,
}

impl RunUpdateArgs {
    /// The poller of `--update-channel`, installing into `bundle`'s state
    /// directory and loading new engines as `engine` says; none without a
    /// channel.
    pub fn poll(
        &self,
        bundle: &BundleArgs,
        board: Option<Board>,
        engine: EngineOptions,
    ) -> Result<Option<Receiver<Engine>>> {
        let Some(url) = &self.update_channel else { return Ok(None) };
        let dir = StateDir::new(bundle.state_dir.clone().unwrap_or_else(|| DEFAULT_STATE_DIR.into()));
        let options = agent::UpdateOptions {
            channel_url: url.clone(),
            trust: bundle.trust.store()?,
            board,
            fetch: self.fetch.options()?,
            engine,
        };
        poll(dir, options, self.update_interval).map(Some)
    }
}

/// The outcome of the running loop's last update check, for its status
/// pages: when (seconds since the Unix epoch), whether it succeeded, and
/// the line the log got.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LastCheck {
    pub at: i64,
    pub ok: bool,
    pub result: String,
}

static LAST_CHECK: Mutex<Option<LastCheck>> = Mutex::new(None);

/// The last check [`poll`] made in this process, if any.
pub fn last_check() -> Option<LastCheck> {
    LAST_CHECK.lock().expect("last check lock").clone()
}

fn record_check(ok: bool, result: String) {
    let at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    *LAST_CHECK.lock().expect("last check lock") = Some(LastCheck { at, ok, result });
}

/// Polls the channel in the background: the first check within a tenth of
/// `interval`, then one every `interval`, each wait jittered by up to 10%
/// either way so that a fleet does not poll in step. Each new version this
/// device is in is installed by [`agent::apply`] (a staged version it is
/// not in is, like an unchanged one, nothing to do) and its loaded,
/// health-checked engine sent
/// to the returned receiver, which the run loop swaps in between frames.
/// The thread ends when the receiver is dropped.
pub fn poll(dir: StateDir, options: agent::UpdateOptions, interval: Duration) -> Result<Receiver<Engine>> {
    let (tx, rx) = sync_channel(1);
    let jitter = move |lo: f64, hi: f64| {
        interval.mul_f64(lo + (hi - lo) * (OsRng.next_u32() as f64 / u32::MAX as f64))
    };
    std::thread::Builder::new()
        .name("update".into())
        .spawn(move || {
            let mut wait = jitter(0.0, 0.1);
            loop {
                std::thread::sleep(wait);
                wait = jitter(0.9, 1.1);
                match agent::apply(&dir, &options) {
                    Ok(agent::Applied::Installed(installed)) => {
                        log::info!("update: {installed}");
                        record_check(true, installed.to_string());
                        match tx.try_send(installed.engine) {
                            Ok(()) | Err(TrySendError::Full(_)) => {}
                            Err(TrySendError::Disconnected(_)) => return,
                        }
                    }
                    Ok(agent::Applied::Nothing(offer)) => {
                        log::debug!("update: {offer}");
                        record_check(true, offer.to_string());
                    }
                    Err(e) => {
                        log::warn!("update: {e:#}");
                        record_check(false, format!("{e:#}"));
                    }
                }
            }
        })
        .context("cannot start the update thread")?;
    Ok(rx)
}

/// Parses `90s`, `15m`, `12h`, `30d` or `500ms` (an integer and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("expected a duration like 90s, 15m, 12h or 30d but found {text:?}"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("expected a duration unit ms, s, m, h or d but found {text:?}")),
    };
    n.checked_mul(seconds).map(Duration::from_secs).ok_or_else(|| format!("duration {text:?} is too long"))
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_utc(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86400), unix.rem_euclid(86400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

/// Parses exactly `YYYY-MM-DDTHH:MM:SSZ` into seconds since the Unix epoch.
pub fn parse_utc(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = &text[r];
        s.bytes().all(|c| c.is_ascii_digit()).then(|| s.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_one_unit() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "m", "15", "1.5h", "-1s", "3w"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn utc_round_trips_and_rejects_other_forms() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_utc("2000-02-29T12:34:56Z"), Some(951827696));
        for t in [0, 951827696, 1_795_000_000, 4_102_444_800] {
            assert_eq!(parse_utc(&format_utc(t)), Some(t));
        }
        for bad in ["2001-02-29T00:00:00Z", "2026-11-28 22:00:00Z", "2026-11-28T22:00:00+01:00", ""] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }
}
