//! HTTPS on a fleet's own CA, the device's identity (a client certificate,
//! a bearer token) and proxies, through the real binary against nginx with
//! TLS on 127.0.0.1: a CA and certificates made here with rcgen, nginx
//! checking client certificates and the `Authorization` header, and a
//! small CONNECT proxy of the test's own.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use edgevit_tests::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use super::{a_cut_download_resumes, publish, status, update, Nginx};

const TOKEN: &str = "fleet-token-5be1d2";

/// A CA and the certificates the servers and devices use, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = issuer("edgevit fleet test CA");
        let other_ca = issuer("some other CA");
        let pki = Pki { dir };
        pki.write("ca.pem", &ca.pem(), 0o644);
        let (server, client) = (ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth);
        pki.leaf("server", &ca, &["localhost"], server.clone(), None);
        pki.leaf("expired", &ca, &["localhost"], server.clone(), Some((2020, 2021)));
        pki.leaf("future", &ca, &["localhost"], server, Some((2090, 2091)));
        pki.leaf("device", &ca, &[], client.clone(), None);
        pki.leaf("stranger", &other_ca, &[], client, None);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn write(&self, name: &str, text: &str, mode: u32) {
        std::fs::write(self.path(name), text).unwrap();
        std::fs::set_permissions(self.path(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// `NAME.pem` and `NAME.key`, signed by `ca`, valid from the first of
    /// January of one year to that of another when `years` says so.
    fn leaf(
        &self,
        name: &str,
        ca: &CertifiedIssuer<'static, KeyPair>,
        names: &[&str],
        purpose: ExtendedKeyUsagePurpose,
        years: Option<(i32, i32)>,
    ) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![purpose];
        params.use_authority_key_identifier_extension = true;
        if let Some((from, until)) = years {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(until, 1, 1);
        }
        let cert = params.signed_by(&key, ca).unwrap();
        self.write(&format!("{name}.pem"), &cert.pem(), 0o644);
        self.write(&format!("{name}.key"), &key.serialize_pem(), 0o600);
    }

    /// The nginx directives of a TLS server with certificate `name`.
    fn server(&self, name: &str, more: &str) -> String {
        format!(
            "ssl;\n        ssl_certificate {};\n        ssl_certificate_key {};\n        {more}",
            self.arg(&format!("{name}.pem")),
            self.arg(&format!("{name}.key"))
        )
    }
}

fn issuer(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// nginx with five TLS servers: `tls` (a good certificate for localhost),
/// `expired`, `future` (valid from 2090), `mtls` (requires a client certificate from the CA) and
/// `token` (requires the bearer token), all serving a published `v1` site.
fn fleet_nginx(pki: &Pki) -> Nginx {
    let mtls = format!("ssl_verify_client on;\n        ssl_client_certificate {};", pki.arg("ca.pem"));
    let token = format!("if ($http_authorization != \"Bearer {TOKEN}\") {{ return 401; }}");
    let nginx = Nginx::with_servers(&[
        ("tls", pki.server("server", "")),
        ("expired", pki.server("expired", "")),
        ("future", pki.server("future", "")),
        ("mtls", pki.server("server", &mtls)),
        ("token", pki.server("server", &token)),
    ]);
    publish(&repo(FP32_BUNDLE), &nginx.site("v1"), &[]).ok();
    nginx
}

fn https(nginx: &Nginx, server: &str, site: &str) -> String {
    format!("https://localhost:{}/{site}/channel.toml", nginx.port_of(server))
}

/// An apply on a fresh device that must install v1.
fn installs(url: &str, extra: &[&str]) {
    let state = tempfile::tempdir().unwrap();
    let run = update("apply", state.path(), Some(url), extra);
    assert!(run.ok().stdout.contains("installed fmnist-vit-ggem v1 in slot a"), "{}", run.stdout);
}

/// An apply on a fresh device that must fail with `needle`, recording it
/// and installing nothing.
fn refused(url: &str, extra: &[&str], needle: &str) {
    let state = tempfile::tempdir().unwrap();
    update("apply", state.path(), Some(url), extra).fails_with(needle);
    let s = status(state.path());
    assert_eq!(s["installed"], serde_json::Value::Null, "{s}");
    assert!(s["last_error"].as_str().unwrap_or_default().contains(needle), "{s}");
}

#[test]
fn https_trusts_the_fleet_ca_and_names_each_refusal() {
    let pki = Pki::new();
    let nginx = fleet_nginx(&pki);
    let url = https(&nginx, "tls", "v1");
    let ca = pki.arg("ca.pem");

    refused(
        &url,
        &[],
        &format!("{url}: the server's certificate is not signed by a CA this device trusts (add the CA with --ca or to /etc/edgevit/ca/)"),
    );
    installs(&url, &["--ca", &ca]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(pki.path("ca.pem"), dir.path().join("fleet.crt")).unwrap();
    installs(&url, &["--ca-dir", &dir.path().display().to_string()]);

    let by_address = format!("https://127.0.0.1:{}/v1/channel.toml", nginx.port_of("tls"));
    refused(
        &by_address,
        &["--ca", &ca],
        "the server's certificate is not valid for 127.0.0.1 (it names localhost)",
    );
    refused(
        &https(&nginx, "expired", "v1"),
        &["--ca", &ca],
        "the server's certificate expired at 2021-01-01T00:00:00Z (the device's clock says 20",
    );
    refused(
        &https(&nginx, "future", "v1"),
        &["--ca", &ca],
        "the server's certificate is valid only from 2090-01-01T00:00:00Z but the device's clock says 20",
    );
}

#[test]
fn a_device_proves_who_it_is_with_a_client_certificate_or_a_token() {
    let pki = Pki::new();
    let nginx = fleet_nginx(&pki);
    let ca = pki.arg("ca.pem");

    let mtls = https(&nginx, "mtls", "v1");
    refused(
        &mtls,
        &["--ca", &ca],
        "the server requires a client certificate: give --client-cert and --client-key",
    );
    let (cert, key) = (pki.arg("device.pem"), pki.arg("device.key"));
    installs(&mtls, &["--ca", &ca, "--client-cert", &cert, "--client-key", &key]);
    let (cert, key) = (pki.arg("stranger.pem"), pki.arg("stranger.key"));
    refused(
        &mtls,
        &["--ca", &ca, "--client-cert", &cert, "--client-key", &key],
        "the server refused this device's client certificate",
    );
    std::fs::set_permissions(pki.path("device.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let state = tempfile::tempdir().unwrap();
    let (cert, key) = (pki.arg("device.pem"), pki.arg("device.key"));
    update("apply", state.path(), Some(&mtls), &["--ca", &ca, "--client-cert", &cert, "--client-key", &key])
        .fails_with(&format!(
            "{key}: client key is open to group or others (mode 0644); expected it readable by its owner only (chmod 600)"
        ));

    let token = https(&nginx, "token", "v1");
    refused(&token, &["--ca", &ca], "server answered HTTP 401 Unauthorized: the server asks for credentials");
    pki.write("wrong.token", "not-the-token\n", 0o600);
    let wrong = pki.arg("wrong.token");
    refused(
        &token,
        &["--ca", &ca, "--token-file", &wrong],
        &format!("the server refused the token of {wrong}"),
    );
    pki.write("device.token", &format!("{TOKEN}\n"), 0o600);
    let good = pki.arg("device.token");
    installs(&token, &["--ca", &ca, "--token-file", &good]);
    refused(
        &nginx.channel_url("v1"),
        &["--token-file", &good],
        "expected an https:// URL: the token of --token-file is never sent in the clear",
    );

    // Nothing secret reaches the log, even at its most verbose.
    let run = apply_with_env(&token, &["--ca", &ca, "--token-file", &good], &[("RUST_LOG", "trace")]);
    assert!(run.ok().stderr.contains("GET"), "expected ureq's trace:\n{}", run.stderr);
    assert!(
        !run.stderr.contains(TOKEN) && !run.stdout.contains(TOKEN),
        "the token was printed:\n{}",
        run.stderr
    );
}

#[test]
fn a_cut_download_resumes_over_https() {
    let pki = Pki::new();
    let nginx = fleet_nginx(&pki);
    a_cut_download_resumes(&nginx, &https(&nginx, "tls", "resume"), &["--ca", &pki.arg("ca.pem")]);
}

/// An HTTP proxy on 127.0.0.1: CONNECT tunnels and absolute-form requests,
/// or, when `refuse`, a 403 to everything. Keeps each request line.
struct Proxy {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    fn start(refuse: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || Proxy::serve(client, refuse, &log));
            }
        });
        Proxy { port, seen }
    }

    fn serve(client: TcpStream, refuse: bool, log: &Mutex<Vec<String>>) {
        let mut reader = BufReader::new(client.try_clone().unwrap());
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let first = head.lines().next().unwrap_or_default().to_string();
        log.lock().unwrap().push(first.clone());
        let mut client = client;
        if refuse {
            let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
            return;
        }
        let mut parts = first.split(' ');
        let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        let authority = match method {
            "CONNECT" => target.to_string(),
            _ => target.trim_start_matches("http://").split('/').next().unwrap_or_default().to_string(),
        };
        let Ok(mut upstream) = TcpStream::connect(&authority) else {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
            return;
        };
        if method == "CONNECT" {
            client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").unwrap();
        } else {
            upstream.write_all(head.as_bytes()).unwrap();
        }
        let buffered = reader.buffer().to_vec();
        upstream.write_all(&buffered).unwrap();
        let (mut from_client, mut to_client) = (reader.into_inner(), client);
        let mut from_upstream = upstream.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from_client, &mut upstream);
            let _ = upstream.shutdown(std::net::Shutdown::Write);
        });
        let _ = std::io::copy(&mut from_upstream, &mut to_client);
        let _ = to_client.shutdown(std::net::Shutdown::Write);
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// `update apply` on a fresh device with the environment `env`.
fn apply_with_env(url: &str, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().display().to_string();
    let mut args = vec!["update", "apply", "--channel", url, "--state-dir", &state];
    args.extend(["--trust", DEV_PUB, "--trust-dir", "/nonexistent", "--ca-dir", "/nonexistent"]);
    args.extend(extra);
    edgevit_env(args, env)
}

#[test]
fn proxies_from_the_environment_carry_requests_or_refuse_in_one_line() {
    let pki = Pki::new();
    let nginx = fleet_nginx(&pki);
    let ca = pki.arg("ca.pem");
    let url = https(&nginx, "tls", "v1");
    let proxy = Proxy::start(false);

    let run = apply_with_env(&url, &["--ca", &ca], &[("HTTPS_PROXY", &proxy.url())]);
    assert!(run.ok().stdout.contains("installed fmnist-vit-ggem v1"), "{}", run.stdout);
    let tunnel = format!("CONNECT localhost:{} HTTP/1.1", nginx.port_of("tls"));
    assert!(!proxy.seen().is_empty() && proxy.seen().iter().all(|l| *l == tunnel), "{:?}", proxy.seen());

    let before = proxy.seen().len();
    let env = [("https_proxy", proxy.url()), ("NO_PROXY", "example.com,localhost".to_string())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    apply_with_env(&url, &["--ca", &ca], &env).ok();
    assert_eq!(proxy.seen().len(), before, "NO_PROXY=localhost still went through the proxy");

    let plain = nginx.channel_url("v1");
    apply_with_env(&plain, &[], &[("HTTP_PROXY", &proxy.url())]).ok();
    assert!(proxy.seen().contains(&format!("GET {plain} HTTP/1.1")), "{:?}", proxy.seen());

    let refusing = Proxy::start(true);
    let with_credentials = format!("http://fleet:pr0xy-s3cret@127.0.0.1:{}", refusing.port);
    let run = apply_with_env(&url, &["--ca", &ca], &[("HTTPS_PROXY", &with_credentials)]);
    run.fails_with(&format!("{url}: proxy {} refused to open a tunnel to the server", refusing.url()));
    assert!(!run.stderr.contains("pr0xy-s3cret"), "{}", run.stderr);
    assert_eq!(refusing.seen(), vec![tunnel]);

    let gone = format!("http://127.0.0.1:{}", free_port());
    let run = apply_with_env(&url, &["--ca", &ca], &[("HTTPS_PROXY", &gone)]);
    run.fails_with(&format!("(through proxy {gone})"));
    apply_with_env(&url, &[], &[("HTTPS_PROXY", "socks5://127.0.0.1:1080")]).fails_with(
        "HTTPS_PROXY: expected an http:// proxy (http://[user:pass@]host[:port]) but found a socks5:// one",
    );
}
