//! Moving bytes: `http://` and `https://` through ureq (connect, stall and
//! overall timeouts) on the trust, identity and proxies of
//! [`super::transport`], and `file://` for channels on local or mounted
//! storage. Downloads go to a staging file and resume with an HTTP Range
//! request from where the last attempt stopped. Every HTTP request names
//! the device in the [`super::device::HEADER`] header.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::device::{DeviceId, HEADER};
use super::proxy::ProxyUrl;
use super::transport::{Transport, TransportArgs};

/// How long to wait for the network.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// To open a connection.
    pub connect: Duration,
    /// Without a single byte arriving: a stalled server.
    pub stall: Duration,
    /// For one whole request, body included.
    pub overall: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            stall: Duration::from_secs(30),
            overall: Duration::from_secs(600),
        }
    }
}

/// How updates are fetched: the flags of `update check/apply` and of `run
/// --update-channel`.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Fetching updates")]
pub struct FetchArgs {
    /// Give up a request after this long, body included.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = super::parse_duration)]
    pub timeout: Duration,
    /// Give up when no byte arrives for this long.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = super::parse_duration)]
    pub stall_timeout: Duration,
    /// Refuse bundles larger than this many bytes, whatever the channel says.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
    pub max_bytes: u64,
    #[command(flatten)]
    pub transport: TransportArgs,
}

impl FetchArgs {
    /// Reads the files the flags name (CAs, client certificate, token).
    pub fn options(&self) -> Result<FetchOptions> {
        Ok(FetchOptions {
            timeouts: Timeouts { stall: self.stall_timeout, overall: self.timeout, ..Timeouts::default() },
            max_bytes: self.max_bytes,
            transport: self.transport.transport()?,
        })
    }
}

/// How updates are fetched, as [`FetchArgs`] says.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    pub timeouts: Timeouts,
    /// Largest tarball accepted, whatever the channel says.
    pub max_bytes: u64,
    pub transport: Transport,
}

/// What one `download` call moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Downloaded {
    /// Bytes already in the staging file before this call.
    pub resumed_from: u64,
    /// Bytes received by this call.
    pub fetched: u64,
}

pub struct Fetcher {
    /// The direct agent, then one per proxy.
    agents: Vec<(Option<ProxyUrl>, ureq::Agent)>,
    timeouts: Timeouts,
    transport: Transport,
    device: Option<DeviceId>,
}

impl Fetcher {
    /// A fetcher whose HTTP requests carry `device`'s id, when there is one.
    pub fn new(options: &FetchOptions, device: Option<DeviceId>) -> Result<Fetcher> {
        let timeouts = options.timeouts;
        let agents = options.transport.agents(|| {
            ureq::AgentBuilder::new()
                .timeout_connect(timeouts.connect)
                .timeout_read(timeouts.stall)
                .timeout(timeouts.overall)
                .user_agent(concat!("edgevit/", env!("CARGO_PKG_VERSION")))
        })?;
        Ok(Fetcher { agents, timeouts, transport: options.transport.clone(), device })
    }

    /// The whole of a small document (a channel or its signature), at most `cap` bytes.
    pub fn get(&self, url: &str, cap: u64) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        let mut reader: Box<dyn Read> = match local_path(url) {
            Some(path) => Box::new(crate::fsutil::open_regular(path, "file")?.0),
            None => self.request(url, None)?.into_reader(),
        };
        reader.by_ref().take(cap + 1).read_to_end(&mut bytes).map_err(|e| self.read_error(url, e))?;
        if bytes.len() as u64 > cap {
            bail!("{url}: expected at most {cap} bytes but it is larger");
        }
        Ok(bytes)
    }

    /// Downloads `url`, which must be exactly `size` bytes, into `part`,
    /// resuming from `part`'s length when it already holds a prefix. Bytes
    /// go to the file as they arrive.
    /// A server that declares a different size than `size` is an error and
    /// the staging file is removed; a connection that ends early keeps it
    /// for the next attempt.
    pub fn download(&self, url: &str, size: u64, part: &Path) -> Result<Downloaded> {
        let mut have = std::fs::metadata(part).map_or(0, |m| m.len());
        if have > size {
            have = 0;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(part)
            .with_context(|| format!("{}: cannot write", part.display()))?;
        let resumed_from = have;
        if have == size {
            file.set_len(size)?;
            return Ok(Downloaded { resumed_from, fetched: 0 });
        }
        let (mut body, start) = match local_path(url) {
            Some(path) => {
                let (mut f, len) = crate::fsutil::open_regular(path, "file")?;
                check_declared(url, len, size, part)?;
                f.seek(SeekFrom::Start(have))?;
                (Box::new(f) as Box<dyn Read>, have)
            }
            None => self.open_range(url, size, have, part)?,
        };
        file.set_len(start)?;
        file.seek(SeekFrom::Start(start))?;
        let mut written = start;
        let mut buf = vec![0u8; 64 << 10];
        let mut halfway = false;
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    file.flush()?;
                    return Err(self.read_error(url, e).context(format!(
                        "download stopped after {written} of {size} bytes; the next attempt resumes there"
                    )));
                }
            };
            if written + n as u64 > size {
                drop(file);
                let _ = std::fs::remove_file(part);
                bail!("{url}: expected {size} bytes (from the channel) but the server sent more");
            }
            file.write_all(&buf[..n]).with_context(|| format!("{}: cannot write", part.display()))?;
            written += n as u64;
            super::crash_point("download-started");
            if !halfway && written * 2 >= size {
                halfway = true;
                super::crash_point("download-halfway");
            }
        }
        file.sync_all().with_context(|| format!("{}: cannot write", part.display()))?;
        if written != size {
            bail!("{url}: expected {size} bytes but the transfer ended after {written}; the next attempt resumes there");
        }
        Ok(Downloaded { resumed_from, fetched: written - start })
    }

    /// Opens the body from byte `have` on: a 206 continues the staging file,
    /// a 200 (server ignores Range) starts it over. Returns the body and the
    /// offset it starts at.
    fn open_range(&self, url: &str, size: u64, have: u64, part: &Path) -> Result<(Box<dyn Read>, u64)> {
        let response = self.request(url, (have > 0).then_some(have))?;
        match response.status() {
            206 => {
                let range = response.header("Content-Range").unwrap_or_default().to_string();
                let total = range.rsplit_once('/').and_then(|(_, t)| t.parse::<u64>().ok());
                let first = range
                    .strip_prefix("bytes ")
                    .and_then(|r| r.split_once('-'))
                    .and_then(|(a, _)| a.parse::<u64>().ok());
                if first != Some(have) {
                    bail!(
                        "{url}: asked for bytes from {have} but the server answered Content-Range {range:?}"
                    );
                }
                check_declared(url, total.unwrap_or(size), size, part)?;
                Ok((response.into_reader(), have))
            }
            _ => {
                if let Some(len) = response.header("Content-Length").and_then(|l| l.parse::<u64>().ok()) {
                    check_declared(url, len, size, part)?;
                }
                Ok((response.into_reader(), 0))
            }
        }
    }

    fn request(&self, url: &str, from: Option<u64>) -> Result<ureq::Response> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("{url}: expected an http://, https:// or file:// URL");
        }
        let proxy = self.transport.proxy_for(url);
        let agent = &self.agents.iter().find(|(p, _)| p.as_ref() == proxy).expect("an agent per proxy").1;
        let mut request = self.transport.authorize(url, agent.get(url))?;
        if let Some(device) = &self.device {
            request = request.set(HEADER, device.as_str());
        }
        if let Some(from) = from {
            request = request.set("Range", &format!("bytes={from}-"));
        }
        match request.call() {
            Ok(response) => Ok(response),
            Err(ureq::Error::Status(code, response)) => {
                let status = format!("{url}: server answered HTTP {code} {}", response.status_text());
                let mut body = Vec::new();
                let _ = response.into_reader().take(4096).read_to_end(&mut body);
                match self.transport.status_hint(code, &String::from_utf8_lossy(&body)) {
                    Some(hint) => bail!("{status}: {hint}"),
                    None => bail!("{status}"),
                }
            }
            Err(ureq::Error::Transport(t)) => Err(self.transport_error(url, &t)),
        }
    }

    fn transport_error(&self, url: &str, t: &ureq::Transport) -> anyhow::Error {
        let timed_out =
            std::error::Error::source(t).and_then(|e| e.downcast_ref::<std::io::Error>()).is_some_and(|e| {
                matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
            });
        if timed_out {
            return self.timeout_error(url);
        }
        if let Some(line) = self.transport.explain(url, t) {
            return anyhow::anyhow!("{url}: {line}");
        }
        let line = t.to_string().lines().next().unwrap_or("transport error").to_string();
        match self.transport.proxy_for(url) {
            Some(p) => anyhow::anyhow!("{url}: {line} (through proxy {p})"),
            None => anyhow::anyhow!("{url}: {line}"),
        }
    }

    fn read_error(&self, url: &str, e: std::io::Error) -> anyhow::Error {
        if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) {
            return self.timeout_error(url);
        }
        anyhow::anyhow!("{url}: cannot read: {e}")
    }

    fn timeout_error(&self, url: &str) -> anyhow::Error {
        let t = &self.timeouts;
        anyhow::anyhow!(
            "{url}: timed out (no data for {:?}, or the request took over {:?})",
            t.stall,
            t.overall
        )
    }
}

/// The path of a `file://` URL.
fn local_path(url: &str) -> Option<&Path> {
    url.strip_prefix("file://").map(Path::new)
}

/// Fails, and removes the staging file, when the server's size is not the declared one.
fn check_declared(url: &str, found: u64, size: u64, part: &Path) -> Result<()> {
    if found != size {
        let _ = std::fs::remove_file(part);
        bail!("{url}: expected {size} bytes (from the channel) but the server has {found}");
    }
    Ok(())
}
