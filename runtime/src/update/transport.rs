//! Trust and identity on the wire. For `https://` the device trusts the
//! built-in public roots (for public CDNs), the system store where there is
//! one, the CA certificates in `/etc/edgevit/ca/` and each `--ca` file; the
//! server's name is always checked and no flag turns verification off. A
//! device proves who it is with a client certificate (mutual TLS) and/or a
//! bearer token, sent only over `https://`. Proxies come from the
//! environment ([`super::proxy`]). Failures of TLS, of the proxy or of the
//! server's checks of the device each become one line that names what
//! failed and what fixes it.
//!
//! What TLS protects and what it does not is in doc/updates.md: the
//! channel and every bundle are signed and verified whatever the transport,
//! so TLS adds privacy and access control, not integrity.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError, RootCertStore};

use super::proxy::{Proxies, ProxyUrl};

/// Directory of CA certificates a device trusts for `https://`; a board
/// image installs the fleet's CA here.
pub const DEFAULT_CA_DIR: &str = "/etc/edgevit/ca";

/// Largest PEM or token file read.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// How the device meets update servers: the TLS and identity flags of
/// `update check/apply` and of `run --update-channel`.
#[derive(Debug, clap::Args)]
pub struct TransportArgs {
    /// Trust the CA certificates in this PEM file for https:// (repeatable),
    /// besides --ca-dir, the system store and the built-in public roots.
    #[arg(long = "ca", value_name = "FILE.pem")]
    pub ca: Vec<PathBuf>,
    /// Directory of trusted CA certificates (`*.pem`, `*.crt`); none when absent.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CA_DIR)]
    pub ca_dir: PathBuf,
    /// Present this certificate chain (PEM) to servers that ask for one (mutual TLS).
    #[arg(long, value_name = "FILE.pem", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1),
    /// readable by its owner only.
    #[arg(long, value_name = "FILE.pem", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Send the token in this file as `Authorization: Bearer` (https:// only);
    /// readable by its owner only.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

impl TransportArgs {
    /// Reads every file the flags name, so that a bad one fails before any request.
    pub fn transport(&self) -> Result<Transport> {
        let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let system = rustls_native_certs::load_native_certs();
        for e in &system.errors {
            log::debug!("system certificate store: {e}");
        }
        roots.add_parsable_certificates(system.certs);
        for file in ca_dir_files(&self.ca_dir)?.iter().chain(&self.ca) {
            add_ca_file(&mut roots, file)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS: no protocol version in common with the crypto provider")?
            .with_root_certificates(roots);
        let tls = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert, "client certificate")?;
                let der = read_private(key, "client key")?;
                let key_der = PrivateKeyDer::from_pem_slice(&der).map_err(|_| {
                    anyhow::anyhow!(
                        "{}: expected a PEM private key (PKCS#8, PKCS#1 or SEC1) but found none",
                        key.display()
                    )
                })?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| anyhow::anyhow!("{} with key {}: {e}", cert.display(), key.display()))?
            }
            _ => builder.with_no_client_auth(),
        };
        let token = self.token_file.as_deref().map(Token::read).transpose()?;
        Ok(Transport {
            tls: Arc::new(tls),
            token,
            client_cert: self.client_cert.is_some(),
            proxies: Proxies::from_env()?,
        })
    }
}

/// Trust, identity and proxies, read once and shared by every request.
#[derive(Clone)]
pub struct Transport {
    tls: Arc<rustls::ClientConfig>,
    token: Option<Token>,
    client_cert: bool,
    proxies: Proxies,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("token", &self.token)
            .field("client_cert", &self.client_cert)
            .field("proxies", &self.proxies)
            .finish_non_exhaustive()
    }
}

/// A bearer token; its `Debug` shows where it came from, never what it is.
#[derive(Clone)]
struct Token {
    value: String,
    file: PathBuf,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(from {})", self.file.display())
    }
}

impl Token {
    fn read(file: &Path) -> Result<Token> {
        let bytes = read_private(file, "token file")?;
        let text = String::from_utf8(bytes).unwrap_or_default();
        let value = text.trim_end_matches(['\n', '\r']);
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("{}: expected the token on one line of printable ASCII, without spaces", file.display());
        }
        Ok(Token { value: value.to_string(), file: file.to_path_buf() })
    }
}

impl Transport {
    /// The proxy `url` goes through, if any.
    pub fn proxy_for(&self, url: &str) -> Option<&ProxyUrl> {
        self.proxies.for_url(url)
    }

    /// An agent for requests through `proxy` (or directly), on this transport's TLS.
    fn agent(&self, builder: ureq::AgentBuilder, proxy: Option<&ProxyUrl>) -> Result<ureq::Agent> {
        let mut builder = builder.tls_config(self.tls.clone());
        if let Some(p) = proxy {
            builder = builder.proxy(p.as_ureq()?);
        }
        Ok(builder.build())
    }

    /// Every agent a fetcher may need: the direct one first, then one per proxy.
    pub fn agents(
        &self,
        builder: impl Fn() -> ureq::AgentBuilder,
    ) -> Result<Vec<(Option<ProxyUrl>, ureq::Agent)>> {
        let mut agents = vec![(None, self.agent(builder(), None)?)];
        for p in self.proxies.all() {
            agents.push((Some(p.clone()), self.agent(builder(), Some(p))?));
        }
        Ok(agents)
    }

    /// Adds the device's token to a request for `url`; a token is never
    /// sent in the clear.
    pub fn authorize(&self, url: &str, request: ureq::Request) -> Result<ureq::Request> {
        let Some(token) = &self.token else { return Ok(request) };
        if !url.starts_with("https://") {
            bail!("{url}: expected an https:// URL: the token of --token-file is never sent in the clear");
        }
        Ok(request.set("Authorization", &format!("Bearer {}", token.value)))
    }

    /// The line for a transport failure the TLS layer or a proxy explains,
    /// without the URL; `None` for the others.
    pub fn explain(&self, url: &str, t: &ureq::Transport) -> Option<String> {
        let proxy = self.proxy_for(url);
        match (t.kind(), proxy) {
            (ureq::ErrorKind::ProxyConnect, Some(p)) => {
                return Some(format!("proxy {p} refused to open a tunnel to the server"))
            }
            (ureq::ErrorKind::ProxyUnauthorized, Some(p)) => {
                return Some(format!(
                    "proxy {p} asks for credentials (HTTP 407): give them in the proxy's URL, http://user:pass@host:port"
                ))
            }
            _ => {}
        }
        let mut source = std::error::Error::source(t);
        while let Some(e) = source {
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                return Some(self.tls_line(url, tls));
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if let Some(tls) = io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                    return Some(self.tls_line(url, tls));
                }
            }
            source = e.source();
        }
        None
    }

    fn tls_line(&self, url: &str, e: &rustls::Error) -> String {
        let host = host_of(url);
        let time = |t: &rustls::pki_types::UnixTime| super::format_utc(t.as_secs() as i64);
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => format!(
                    "the server's certificate is not signed by a CA this device trusts (add the CA with --ca or to {DEFAULT_CA_DIR}/)"
                ),
                CertificateError::ExpiredContext { time: now, not_after } => format!(
                    "the server's certificate expired at {} (the device's clock says {})",
                    time(not_after),
                    time(now)
                ),
                CertificateError::Expired => "the server's certificate has expired".into(),
                CertificateError::NotValidYetContext { time: now, not_before } => format!(
                    "the server's certificate is valid only from {} but the device's clock says {}: is the clock set?",
                    time(not_before),
                    time(now)
                ),
                CertificateError::NotValidYet => "the server's certificate is not valid yet: is the device's clock set?".into(),
                CertificateError::NotValidForNameContext { presented, .. } => {
                    // webpki writes each name as `DnsName("a.lan")` or `IpAddress(10.0.0.5)`.
                    let names: Vec<&str> = presented
                        .iter()
                        .map(|n| {
                            let n = n.strip_prefix("DnsName(\"").and_then(|n| n.strip_suffix("\")")).unwrap_or(n);
                            n.strip_prefix("IpAddress(").and_then(|n| n.strip_suffix(')')).unwrap_or(n)
                        })
                        .collect();
                    if names.is_empty() {
                        format!("the server's certificate is not valid for {host} (it names no host)")
                    } else {
                        format!("the server's certificate is not valid for {host} (it names {})", names.join(", "))
                    }
                }
                CertificateError::NotValidForName => format!("the server's certificate is not valid for {host}"),
                CertificateError::Revoked => "the server's certificate is revoked".into(),
                other => format!("the server's certificate is refused: {other:?}"),
            },
            rustls::Error::AlertReceived(a) => match a {
                AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure if !self.client_cert => {
                    format!("the server requires a client certificate (TLS alert {a:?}): give --client-cert and --client-key")
                }
                AlertDescription::BadCertificate
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnknownCA
                | AlertDescription::AccessDenied
                    if self.client_cert =>
                {
                    format!("the server refused this device's client certificate (TLS alert {a:?})")
                }
                other => format!("the server ended the TLS handshake (alert {other:?})"),
            },
            other => format!("TLS failed: {other}"),
        }
    }

    /// A hint for an HTTP error status: what the server's refusal says
    /// about the device's identity. `body` is the start of the response.
    pub fn status_hint(&self, code: u16, body: &str) -> Option<String> {
        // nginx ends the handshake and answers 400 with these titles.
        if code == 400 && body.contains("No required SSL certificate was sent") {
            return Some(
                "the server requires a client certificate: give --client-cert and --client-key".into(),
            );
        }
        if code == 400 && body.contains("The SSL certificate error") {
            return Some("the server refused this device's client certificate".into());
        }
        match (code, &self.token) {
            (401 | 403, Some(t)) => Some(format!("the server refused the token of {}", t.file.display())),
            (401, None) => {
                Some("the server asks for credentials: give --token-file or a client certificate".into())
            }
            _ => None,
        }
    }
}

/// The host of an `http(s)://` URL, for messages.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    super::proxy::split_port(authority.rsplit_once('@').map_or(authority, |(_, h)| h)).0
}

/// The `*.pem` and `*.crt` files of `dir`, sorted; none when it does not exist.
fn ca_dir_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read the CA directory", dir.display())),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("{}: cannot read the CA directory", dir.display()))?.path();
        if path.extension().is_some_and(|e| e == "pem" || e == "crt") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Adds the CA certificates of a PEM file to `roots`; returns how many.
fn add_ca_file(roots: &mut RootCertStore, file: &Path) -> Result<usize> {
    let certs = read_certs(file, "CA certificate")?;
    let count = certs.len();
    for cert in certs {
        roots.add(cert).with_context(|| format!("{}: not a usable CA certificate", file.display()))?;
    }
    Ok(count)
}

/// Checks that `file` holds CA certificates a device can trust (as
/// `--ca` and the CA directory read them); returns how many.
pub fn check_ca_file(file: &Path) -> Result<usize> {
    add_ca_file(&mut RootCertStore::empty(), file)
}

/// The certificates of a PEM file: at least one.
fn read_certs(file: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = crate::fsutil::read_regular(file, MAX_PEM_BYTES, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: expected PEM certificates but {e}", file.display()))?;
    if certs.is_empty() {
        bail!("{}: expected PEM certificates (-----BEGIN CERTIFICATE-----) but found none", file.display());
    }
    Ok(certs)
}

/// A file only its owner may read: a key or a token.
fn read_private(file: &Path, what: &str) -> Result<Vec<u8>> {
    let (mut f, len) = crate::fsutil::open_regular(file, what)?;
    let mode = f.metadata().with_context(|| format!("{}: cannot read", file.display()))?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "{}: {what} is open to group or others (mode {:04o}); expected it readable by its owner only (chmod 600)",
            file.display(),
            mode & 0o7777
        );
    }
    if len > MAX_PEM_BYTES {
        bail!("{}: expected a {what} of at most {MAX_PEM_BYTES} bytes but it has {len}", file.display());
    }
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).with_context(|| format!("{}: cannot read", file.display()))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> TransportArgs {
        TransportArgs {
            ca: vec![],
            ca_dir: dir.join("no-ca"),
            client_cert: None,
            client_key: None,
            token_file: None,
        }
    }

    fn private(path: &Path, text: &str, mode: u32) -> PathBuf {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.to_path_buf()
    }

    #[test]
    fn secrets_open_to_others_are_refused_with_their_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let token = private(&tmp.path().join("token"), "s3cret\n", 0o644);
        let a = TransportArgs { token_file: Some(token.clone()), ..args(tmp.path()) };
        assert_eq!(
            a.transport().unwrap_err().to_string(),
            format!(
                "{}: token file is open to group or others (mode 0644); expected it readable by its owner only (chmod 600)",
                token.display()
            )
        );
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = a.transport().unwrap();
        assert_eq!(t.token.as_ref().unwrap().value, "s3cret");
        assert!(!format!("{t:?}").contains("s3cret"), "{t:?}");
        let request = ureq::get("http://cdn.example/c.toml");
        let err = t.authorize("http://cdn.example/c.toml", request).unwrap_err();
        assert!(err.to_string().contains("never sent in the clear"), "{err}");

        private(&token, "two words\n", 0o600);
        assert!(a.transport().unwrap_err().to_string().contains("expected the token on one line"));
    }

    #[test]
    fn ca_files_must_hold_certificates() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = tmp.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let a = TransportArgs { ca: vec![empty.clone()], ..args(tmp.path()) };
        assert_eq!(
            a.transport().unwrap_err().to_string(),
            format!(
                "{}: expected PEM certificates (-----BEGIN CERTIFICATE-----) but found none",
                empty.display()
            )
        );
        let dir = tmp.path().join("ca");
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(&empty, dir.join("fleet.crt")).unwrap();
        std::fs::write(dir.join("README"), "ignored").unwrap();
        let a = TransportArgs { ca_dir: dir.clone(), ..args(tmp.path()) };
        let err = a.transport().unwrap_err().to_string();
        assert!(err.starts_with(&dir.join("fleet.crt").display().to_string()), "{err}");
        assert!(args(tmp.path()).transport().is_ok(), "an absent CA directory is no error");
    }

    #[test]
    fn refusals_get_a_hint_about_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let t = args(tmp.path()).transport().unwrap();
        let nginx = "<html><head><title>400 No required SSL certificate was sent</title></head>";
        assert!(t.status_hint(400, nginx).unwrap().contains("--client-cert"));
        assert!(t.status_hint(401, "").unwrap().contains("--token-file"));
        assert_eq!(t.status_hint(404, ""), None);
        assert_eq!(host_of("https://fleet:pw@updates.lan:8443/c.toml"), "updates.lan");
    }
}
