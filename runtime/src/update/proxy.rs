//! Which proxy carries a request, from the environment as curl and most
//! tools read it: `HTTPS_PROXY` for `https://`, `HTTP_PROXY` for `http://`,
//! `ALL_PROXY` for either, each also in lower case, and `NO_PROXY` for the
//! hosts reached directly. A proxy is an HTTP proxy (`http://[user:pass@]host[:port]`);
//! `https://` requests go through it in a CONNECT tunnel, so TLS runs end
//! to end with the update server. Proxy credentials never appear in a
//! message: [`ProxyUrl`]'s `Display` leaves them out.

use std::fmt;
use std::net::IpAddr;

use anyhow::{bail, Result};

/// A proxy as configured, credentials included.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// What ureq is given: `[user:pass@]host:port`.
    raw: String,
    /// `host:port`, safe to print.
    shown: String,
}

impl ProxyUrl {
    /// Parses the value of the environment variable `var`.
    fn parse(var: &str, value: &str) -> Result<ProxyUrl> {
        let rest = match value.split_once("://") {
            Some(("http" | "HTTP", rest)) => rest,
            Some((scheme, _)) => bail!(
                "{var}: expected an http:// proxy (http://[user:pass@]host[:port]) but found a {scheme}:// one"
            ),
            None => value,
        };
        let rest = rest.trim_end_matches('/');
        let (creds, hostport) = match rest.rsplit_once('@') {
            Some((creds, hostport)) => (Some(creds), hostport),
            None => (None, rest),
        };
        let (host, port) = split_port(hostport);
        let port = match port {
            None => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => bail!("{var}: expected a port from 1 to 65535 after the proxy's host but found {p:?}"),
            },
        };
        if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
            bail!("{var}: expected http://[user:pass@]host[:port] but found no valid host in it");
        }
        let shown = format!("{host}:{port}");
        let raw = match creds {
            Some(c) => format!("{c}@{shown}"),
            None => shown.clone(),
        };
        Ok(ProxyUrl { raw, shown })
    }

    /// The proxy as ureq takes it.
    pub fn as_ureq(&self) -> Result<ureq::Proxy> {
        ureq::Proxy::new(format!("http://{}", self.raw))
            .map_err(|_| anyhow::anyhow!("proxy {self}: not a valid proxy"))
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.shown)
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One `NO_PROXY` entry.
#[derive(Clone, Debug, PartialEq)]
enum Bypass {
    /// `*`: every host.
    All,
    /// A host name and its subdomains (`example.com`, `.example.com` and
    /// `*.example.com` alike).
    Domain(String),
    /// An address, or a network in CIDR form (`10.0.0.0/8`).
    Net(IpAddr, u8),
}

/// The proxies of the environment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Proxies {
    https: Option<ProxyUrl>,
    http: Option<ProxyUrl>,
    bypass: Vec<Bypass>,
}

impl Proxies {
    /// The process's environment.
    pub fn from_env() -> Result<Proxies> {
        Proxies::from_vars(|name| std::env::var(name).ok())
    }

    /// The variables `var` gives; an empty value counts as unset.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Proxies> {
        let first = |names: &[&str]| -> Result<Option<ProxyUrl>> {
            for name in names {
                if let Some(value) = var(name).filter(|v| !v.trim().is_empty()) {
                    return ProxyUrl::parse(name, value.trim()).map(Some);
                }
            }
            Ok(None)
        };
        let https = first(&["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"])?;
        let http = first(&["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"])?;
        let no_proxy = var("NO_PROXY").filter(|v| !v.trim().is_empty()).or_else(|| var("no_proxy"));
        let bypass = match no_proxy {
            Some(list) => {
                list.split([',', ' ']).filter(|e| !e.is_empty()).map(parse_bypass).collect::<Result<_>>()?
            }
            None => Vec::new(),
        };
        Ok(Proxies { https, http, bypass })
    }

    /// The proxy for `url`, or `None` to connect directly.
    pub fn for_url(&self, url: &str) -> Option<&ProxyUrl> {
        let (scheme, rest) = url.split_once("://")?;
        let proxy = match scheme {
            "https" => self.https.as_ref()?,
            "http" => self.http.as_ref()?,
            _ => return None,
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = split_port(hostport).0.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        (!self.bypass.iter().any(|b| b.matches(&host))).then_some(proxy)
    }

    /// Every distinct proxy configured.
    pub fn all(&self) -> Vec<&ProxyUrl> {
        let mut all: Vec<&ProxyUrl> = self.https.iter().chain(self.http.iter()).collect();
        all.dedup();
        all
    }
}

/// `host:port` split at the port's colon (IPv6 in brackets keeps its own).
pub(super) fn split_port(hostport: &str) -> (&str, Option<&str>) {
    if let Some(rest) = hostport.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((_, tail)) => {
                let host = &hostport[..rest.len() - tail.len() + 1];
                (host, tail.strip_prefix(':'))
            }
            None => (hostport, None),
        };
    }
    match hostport.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(port)),
        _ => (hostport, None),
    }
}

fn parse_bypass(entry: &str) -> Result<Bypass> {
    if entry == "*" {
        return Ok(Bypass::All);
    }
    let (addr, bits) = match entry.split_once('/') {
        Some((addr, bits)) => (addr, Some(bits)),
        None => (entry, None),
    };
    if let Ok(ip) = addr.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => match b.parse::<u8>() {
                Ok(b) if b <= max => b,
                _ => bail!("NO_PROXY: expected a prefix length from 0 to {max} in {entry:?}"),
            },
        };
        return Ok(Bypass::Net(ip, bits));
    }
    if bits.is_some() {
        bail!("NO_PROXY: expected an address before the prefix length in {entry:?}");
    }
    let domain = entry.trim_start_matches('*').trim_start_matches('.');
    let domain = split_port(domain).0.to_ascii_lowercase();
    if domain.is_empty() {
        bail!("NO_PROXY: expected a host, a domain, an address or a network but found {entry:?}");
    }
    Ok(Bypass::Domain(domain))
}

impl Bypass {
    fn matches(&self, host: &str) -> bool {
        match self {
            Bypass::All => true,
            Bypass::Domain(d) => {
                host == d || host.strip_suffix(d.as_str()).is_some_and(|head| head.ends_with('.'))
            }
            Bypass::Net(net, bits) => host.parse::<IpAddr>().is_ok_and(|ip| in_network(ip, *net, *bits)),
        }
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (ip, net, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    let shift = width - bits as u32;
    shift >= width || (ip >> shift) == (net >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(vars: &[(&str, &str)]) -> Result<Proxies> {
        Proxies::from_vars(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string()))
    }

    fn via<'a>(p: &'a Proxies, url: &str) -> Option<String> {
        p.for_url(url).map(|p: &'a ProxyUrl| p.to_string())
    }

    #[test]
    fn each_scheme_takes_its_own_variable_then_all_proxy() {
        let p = proxies(&[("https_proxy", "http://secure:3128"), ("ALL_PROXY", "fallback:8080")]).unwrap();
        assert_eq!(via(&p, "https://cdn.example/c.toml").as_deref(), Some("http://secure:3128"));
        assert_eq!(via(&p, "http://cdn.example/c.toml").as_deref(), Some("http://fallback:8080"));
        assert_eq!(via(&p, "file:///srv/c.toml"), None);
        assert_eq!(proxies(&[]).unwrap(), Proxies::default());
        assert_eq!(proxies(&[("HTTPS_PROXY", " ")]).unwrap(), Proxies::default());
    }

    #[test]
    fn no_proxy_takes_hosts_domains_addresses_and_networks() {
        let p = proxies(&[
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("NO_PROXY", "localhost, .factory.lan,*.corp.example 10.0.0.0/8,[::1],192.168.1.7"),
        ])
        .unwrap();
        for direct in [
            "https://localhost:8443/c.toml",
            "https://updates.factory.lan/c.toml",
            "https://factory.lan/c.toml",
            "https://a.b.corp.example/c.toml",
            "https://10.20.30.40/c.toml",
            "https://[::1]:8443/c.toml",
            "https://192.168.1.7/c.toml",
            "https://user:pw@LOCALHOST/c.toml",
        ] {
            assert_eq!(via(&p, direct), None, "{direct}");
        }
        for proxied in [
            "https://notfactory.lan/c.toml",
            "https://11.0.0.1/c.toml",
            "https://192.168.1.8/c.toml",
            "https://[::2]/c.toml",
            "https://cdn.example/c.toml",
        ] {
            assert_eq!(via(&p, proxied).as_deref(), Some("http://proxy:3128"), "{proxied}");
        }
        let all = proxies(&[("HTTPS_PROXY", "proxy"), ("no_proxy", "*")]).unwrap();
        assert_eq!(via(&all, "https://cdn.example/c.toml"), None);
    }

    #[test]
    fn credentials_reach_ureq_but_never_a_message() {
        let p = proxies(&[("HTTPS_PROXY", "http://fleet:s3cret@proxy.lan:3128/")]).unwrap();
        let proxy = p.for_url("https://cdn.example/c.toml").unwrap();
        assert_eq!(proxy.to_string(), "http://proxy.lan:3128");
        assert!(!format!("{p:?}").contains("s3cret"));
        assert!(proxy.as_ureq().is_ok());
        assert_eq!(proxy.raw, "fleet:s3cret@proxy.lan:3128");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = |vars: &[(&str, &str)]| proxies(vars).unwrap_err().to_string();
        assert_eq!(
            err(&[("HTTPS_PROXY", "socks5://proxy:1080")]),
            "HTTPS_PROXY: expected an http:// proxy (http://[user:pass@]host[:port]) but found a socks5:// one"
        );
        assert_eq!(
            err(&[("http_proxy", "http://proxy:99999")]),
            "http_proxy: expected a port from 1 to 65535 after the proxy's host but found \"99999\""
        );
        assert_eq!(
            err(&[("NO_PROXY", "10.0.0.0/33")]),
            "NO_PROXY: expected a prefix length from 0 to 32 in \"10.0.0.0/33\""
        );
        assert!(err(&[("ALL_PROXY", "http://:8080")]).starts_with("ALL_PROXY: expected http://"));
    }
}
