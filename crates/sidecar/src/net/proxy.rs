//! HTTP CONNECT proxies from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`: which proxy a URL uses
//! ([`ProxyPolicy`], the one decision for REST calls and sockets), and the tunnel through it.

use std::{collections::HashMap, fmt, net::IpAddr, sync::Arc};

use base64::Engine as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::{
    NetError, SocketOptions,
    addr::{authority, bare_host},
    connect_tcp,
};

const MAX_PROXY_RESPONSE_HEAD: usize = 8 * 1024;

/// An HTTP proxy to tunnel through with `CONNECT`.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyTarget {
    /// The proxy host (no IPv6 brackets).
    pub host: String,
    /// The proxy port.
    pub port: u16,
    /// `base64(user:password)` for `Proxy-Authorization: Basic`, kept out of `Debug`.
    auth: Option<String>,
    /// The decoded user and password, for the REST client's proxy URL; kept out of `Debug`.
    basic: Option<(String, String)>,
}

impl fmt::Debug for ProxyTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl ProxyTarget {
    /// A proxy without credentials.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: bare_host(&host.into()).to_owned(),
            port,
            auth: None,
            basic: None,
        }
    }

    /// The same proxy with basic credentials.
    pub fn with_basic_auth(mut self, user: &str, password: &str) -> Self {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.auth = Some(encoded);
        self.basic = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// The proxy as an `http://[user:password@]host:port` URL (for the REST client). Holds the
    /// password: never log it.
    pub fn to_url(&self) -> Option<url::Url> {
        let mut url = url::Url::parse(&format!("http://{}", self.authority())).ok()?;
        if let Some((user, password)) = &self.basic {
            url.set_username(user).ok()?;
            url.set_password(Some(password)).ok()?;
        }
        Some(url)
    }

    /// Whether credentials are sent to the proxy.
    pub fn has_auth(&self) -> bool {
        self.auth.is_some()
    }

    /// The proxy's `host:port`.
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }

    /// Parses a proxy URL (`http://[user:pass@]host[:port]`, or `host[:port]`); the error text
    /// never repeats the value.
    fn parse(value: &str) -> Result<Self, String> {
        let with_scheme;
        let value = if value.contains("://") {
            value
        } else {
            with_scheme = format!("http://{value}");
            &with_scheme
        };
        let url = url::Url::parse(value).map_err(|e| format!("not a URL ({e})"))?;
        if url.scheme() != "http" {
            return Err(format!(
                "proxy scheme {:?} is not supported (only http:// CONNECT proxies)",
                url.scheme()
            ));
        }
        let host = url.host_str().ok_or("no host")?;
        let port = url.port_or_known_default().unwrap_or(80);
        let proxy = Self::new(host, port);
        if url.username().is_empty() && url.password().is_none() {
            return Ok(proxy);
        }
        let user = percent_decode(url.username());
        let password = percent_decode(url.password().unwrap_or(""));
        Ok(proxy.with_basic_auth(&user, &password))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The proxy to use for `url`, from the environment as `env` reads it.
///
/// `wss`/`https` use `https_proxy` then `HTTPS_PROXY`; `ws`/`http` use `http_proxy` then
/// `HTTP_PROXY`; an empty value counts as unset. `no_proxy`/`NO_PROXY` (comma list) bypasses the
/// proxy for: `*`; a domain and its subdomains (`example.com`, `.example.com`, `*.example.com`);
/// an exact IP; a CIDR block (`10.0.0.0/8`). Ports in entries are ignored. An unusable proxy
/// value is an error rather than a silent direct connection.
pub fn proxy_for(
    url: &url::Url,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ProxyTarget>, NetError> {
    let vars: [&'static str; 2] = match url.scheme() {
        "wss" | "https" => ["https_proxy", "HTTPS_PROXY"],
        "ws" | "http" => ["http_proxy", "HTTP_PROXY"],
        _ => return Ok(None),
    };
    let Some((var, value)) = vars
        .iter()
        .find_map(|var| env(var).filter(|v| !v.trim().is_empty()).map(|v| (*var, v)))
    else {
        return Ok(None);
    };
    let Some(host) = url.host() else {
        return Ok(None);
    };
    let no_proxy = ["no_proxy", "NO_PROXY"]
        .iter()
        .find_map(|var| env(var).filter(|v| !v.trim().is_empty()));
    if let Some(list) = no_proxy
        && no_proxy_matches(&list, &host)
    {
        return Ok(None);
    }
    ProxyTarget::parse(value.trim())
        .map(Some)
        .map_err(|reason| NetError::ProxyConfig { var, reason })
}

/// The proxy variables this policy reads.
const PROXY_VARS: [&str; 6] = [
    "https_proxy",
    "HTTPS_PROXY",
    "http_proxy",
    "HTTP_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// The pod's one proxy decision, for REST calls and sockets alike: the proxy variables read
/// once (at start), checked once, then asked per URL with [`proxy_for`]'s rules.
#[derive(Clone, Default)]
pub struct ProxyPolicy {
    vars: Arc<HashMap<&'static str, String>>,
}

impl fmt::Debug for ProxyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may carry proxy passwords: only which variables are set.
        let mut set: Vec<&str> = self.vars.keys().copied().collect();
        set.sort_unstable();
        f.debug_struct("ProxyPolicy").field("set", &set).finish()
    }
}

impl ProxyPolicy {
    /// The policy of the process environment.
    pub fn from_env() -> Self {
        Self::from_vars(|var| std::env::var(var).ok())
    }

    /// Direct connections only.
    pub fn direct() -> Self {
        Self::default()
    }

    /// The policy of an environment as `env` reads it (tests, and `from_env`).
    pub fn from_vars(env: impl Fn(&str) -> Option<String>) -> Self {
        let vars = PROXY_VARS
            .iter()
            .filter_map(|var| env(var).map(|v| (*var, v)))
            .collect();
        Self {
            vars: Arc::new(vars),
        }
    }

    /// Fails when a proxy variable is set but unusable (naming the variable, not the value),
    /// so a typo is refused instead of silently connecting directly.
    pub fn check(&self) -> Result<(), NetError> {
        for url in ["https://proxy-check.invalid", "http://proxy-check.invalid"] {
            let url = url::Url::parse(url).map_err(|e| NetError::Tls(e.to_string()))?;
            // NO_PROXY must not hide a bad proxy value from the check.
            let without_exemptions = |var: &str| match var {
                "no_proxy" | "NO_PROXY" => None,
                _ => self.vars.get(var).cloned(),
            };
            proxy_for(&url, &without_exemptions)?;
        }
        Ok(())
    }

    /// The proxy `url` goes through, if any.
    pub fn for_url(&self, url: &url::Url) -> Result<Option<ProxyTarget>, NetError> {
        proxy_for(url, &|var| self.vars.get(var).cloned())
    }

    /// The socket client's proxy setting for `url`: the same decision as the REST client's.
    pub fn mode_for(&self, url: &url::Url) -> Result<crate::ws::ProxyMode, NetError> {
        Ok(match self.for_url(url)? {
            Some(p) => crate::ws::ProxyMode::Via(p),
            None => crate::ws::ProxyMode::Direct,
        })
    }

    /// The REST client's proxy: this policy, asked per request URL (reqwest's own
    /// environment rules stay off).
    pub fn for_reqwest(&self) -> reqwest::Proxy {
        let policy = self.clone();
        reqwest::Proxy::custom(move |url| match policy.for_url(url) {
            Ok(Some(p)) => p.to_url(),
            // `check` refused an unusable setting before any client was built.
            Ok(None) | Err(_) => None,
        })
    }
}

/// Whether a `NO_PROXY` list exempts `host`.
fn no_proxy_matches(list: &str, host: &url::Host<&str>) -> bool {
    let host_ip: Option<IpAddr> = match host {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(*ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(*ip)),
        url::Host::Domain(_) => None,
    };
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = strip_entry_port(entry);
            if let Some((net, bits)) = entry.split_once('/') {
                return match (host_ip, net.parse::<IpAddr>(), bits.parse::<u8>()) {
                    (Some(ip), Ok(net), Ok(bits)) => cidr_contains(net, bits, ip),
                    _ => false,
                };
            }
            if let Ok(ip) = entry.parse::<IpAddr>() {
                return host_ip == Some(ip);
            }
            let url::Host::Domain(domain) = host else {
                return false;
            };
            let suffix = entry.trim_start_matches("*.").trim_start_matches('.');
            let domain = domain.trim_end_matches('.');
            let suffix = suffix.trim_end_matches('.');
            if suffix.is_empty() {
                return false;
            }
            domain.eq_ignore_ascii_case(suffix)
                || (domain.len() > suffix.len()
                    && domain.as_bytes()[domain.len() - suffix.len() - 1] == b'.'
                    && domain[domain.len() - suffix.len()..].eq_ignore_ascii_case(suffix))
        })
}

/// `host:port` → `host`, `[v6]:port` → `v6`; a bare IPv6 literal is left whole.
fn strip_entry_port(entry: &str) -> &str {
    if let Some(rest) = entry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match entry.split_once(':') {
        Some((host, port)) if !port.contains(':') => host,
        _ => entry,
    }
}

fn cidr_contains(net: IpAddr, bits: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

/// Connects to `proxy` (with `opts`) and opens a `CONNECT` tunnel to `host:port`. The returned
/// stream carries the tunnel; the proxy's answer has been consumed.
pub async fn connect_via_proxy(
    proxy: &ProxyTarget,
    host: &str,
    port: u16,
    opts: &SocketOptions,
) -> Result<TcpStream, NetError> {
    let proxy_name = proxy.authority();
    let target = authority(host, port);
    let proxy_err = |reason: String| NetError::Proxy {
        proxy: proxy_name.clone(),
        reason,
    };
    if target
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'/')
    {
        return Err(proxy_err("tunnel target is not a valid host".into()));
    }
    let mut stream = connect_tcp(&proxy.host, proxy.port, opts).await?;
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &proxy.auth {
        request.push_str("Proxy-Authorization: Basic ");
        request.push_str(auth);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let exchange = async {
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("sending CONNECT: {e}"))?;
        read_proxy_head(&mut stream).await
    };
    let answer = tokio::time::timeout(opts.connect_timeout, exchange).await;
    drop(request);
    let head = match answer {
        Ok(Ok(head)) => head,
        Ok(Err(err)) => return Err(proxy_err(err)),
        Err(_) => {
            return Err(NetError::Timeout {
                stage: "CONNECT through proxy",
                target: proxy_name,
                after: opts.connect_timeout,
            });
        }
    };
    if !(200..300).contains(&head) {
        return Err(NetError::ProxyStatus {
            proxy: proxy_name,
            target,
            status: head,
        });
    }
    Ok(stream)
}

/// Reads the proxy's response head (bounded) and returns its status.
async fn read_proxy_head(stream: &mut TcpStream) -> Result<u16, String> {
    let mut buf = Vec::with_capacity(512);
    loop {
        if buf.len() >= MAX_PROXY_RESPONSE_HEAD {
            return Err(format!(
                "response head exceeds {MAX_PROXY_RESPONSE_HEAD} bytes"
            ));
        }
        buf.reserve(512.min(MAX_PROXY_RESPONSE_HEAD - buf.len()));
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("reading the CONNECT response: {e}"))?;
        if n == 0 {
            return Err("closed the connection before answering CONNECT".into());
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = response.code.unwrap_or(0);
                if (200..300).contains(&status) && len < buf.len() {
                    return Err(format!(
                        "sent {} bytes after its CONNECT response",
                        buf.len() - len
                    ));
                }
                return Ok(status);
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(format!("malformed CONNECT response: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Duration};

    use tokio::{io::AsyncReadExt as _, net::TcpListener};

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).expect("test URL")
    }

    fn proxy(target: &str, env: &[(&str, &str)]) -> Option<ProxyTarget> {
        proxy_for(&url(target), &env_of(env)).expect("usable proxy settings")
    }

    #[test]
    fn proxy_variable_follows_the_scheme() {
        let env = [
            ("HTTPS_PROXY", "http://secure-proxy:3128"),
            ("http_proxy", "plain-proxy:8080"),
        ];
        assert_eq!(
            proxy("wss://platform.example/ws", &env),
            Some(ProxyTarget::new("secure-proxy", 3128))
        );
        assert_eq!(
            proxy("ws://platform.example/ws", &env),
            Some(ProxyTarget::new("plain-proxy", 8080))
        );
        assert_eq!(proxy("wss://platform.example/ws", &[]), None);
        // Lowercase wins over uppercase; empty counts as unset.
        let env = [
            ("https_proxy", "http://lower:1"),
            ("HTTPS_PROXY", "http://upper:2"),
        ];
        assert_eq!(
            proxy("wss://x.example", &env),
            Some(ProxyTarget::new("lower", 1))
        );
        let env = [("https_proxy", " "), ("HTTPS_PROXY", "http://upper:2")];
        assert_eq!(
            proxy("wss://x.example", &env),
            Some(ProxyTarget::new("upper", 2))
        );
        // Default port of an http:// proxy.
        assert_eq!(
            proxy("wss://x.example", &[("HTTPS_PROXY", "http://p.example")]),
            Some(ProxyTarget::new("p.example", 80))
        );
    }

    #[test]
    fn no_proxy_rules() {
        let through = |target: &str, no_proxy: &str| {
            proxy(
                target,
                &[("HTTPS_PROXY", "http://proxy:3128"), ("NO_PROXY", no_proxy)],
            )
            .is_some()
        };
        assert!(!through("wss://api.example.com", "*"));
        assert!(!through("wss://api.example.com", "example.com"));
        assert!(!through("wss://example.com", "example.com"));
        assert!(!through("wss://api.example.com", ".example.com"));
        assert!(!through("wss://api.example.com", "*.example.com"));
        assert!(!through("wss://API.Example.com", "example.COM"));
        assert!(!through(
            "wss://api.example.com:8443",
            "other.org, example.com:443"
        ));
        assert!(through("wss://notexample.com", "example.com"));
        assert!(through("wss://example.com.evil.org", "example.com"));
        assert!(!through("wss://10.1.2.3", "10.1.2.3"));
        assert!(through("wss://10.1.2.4", "10.1.2.3"));
        assert!(!through("wss://10.1.2.3:9000", "10.0.0.0/8"));
        assert!(through("wss://11.1.2.3", "10.0.0.0/8"));
        assert!(!through("wss://[::1]:9000", "::1"));
        assert!(!through("wss://[::1]", "[::1]:443"));
        assert!(!through("wss://[fd00::5]", "fd00::/8"));
        assert!(through("wss://localhost", "127.0.0.1"));
        assert!(through("wss://api.example.com", " , ,"));
        // Lowercase no_proxy is honoured too.
        assert!(
            proxy(
                "wss://api.example.com",
                &[("HTTPS_PROXY", "http://p:1"), ("no_proxy", "example.com")]
            )
            .is_none()
        );
    }

    #[test]
    fn proxy_credentials_are_decoded_and_never_shown() {
        let p = proxy(
            "wss://x.example",
            &[("HTTPS_PROXY", "http://us%40er:p%3Ass@proxy:3128")],
        )
        .expect("proxy");
        assert!(p.has_auth());
        assert_eq!(
            p.auth.as_deref(),
            Some(
                base64::engine::general_purpose::STANDARD
                    .encode("us@er:p:ss")
                    .as_str()
            )
        );
        let shown = format!("{p:?}");
        assert!(!shown.contains("p%3Ass") && !shown.contains(p.auth.as_deref().unwrap_or("-")));
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn unusable_proxy_is_an_error_without_the_value() {
        let err = proxy_for(
            &url("wss://x.example"),
            &env_of(&[("HTTPS_PROXY", "socks5://user:hunter2@proxy:1080")]),
        )
        .expect_err("socks is not supported");
        let text = err.to_string();
        assert!(
            text.contains("HTTPS_PROXY") && text.contains("socks5"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    /// What a test proxy saw and answers.
    struct ProxySeen {
        request_head: String,
    }

    /// A one-shot CONNECT proxy: answers `status`, and on 200 splices to the target.
    async fn one_shot_proxy(status: u16) -> (u16, tokio::task::JoinHandle<ProxySeen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let (mut client, _) = listener.accept().await.expect("proxy accept");
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                client.read_exact(&mut byte).await.expect("read CONNECT");
                head.push(byte[0]);
            }
            let request_head = String::from_utf8(head).expect("ascii head");
            if status != 200 {
                client
                    .write_all(
                        format!("HTTP/1.1 {status} No\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                    )
                    .await
                    .expect("answer");
                return ProxySeen { request_head };
            }
            let target = request_head
                .split(' ')
                .nth(1)
                .expect("CONNECT target")
                .to_owned();
            let mut upstream = TcpStream::connect(target).await.expect("proxy to target");
            client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .expect("answer");
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            ProxySeen { request_head }
        });
        (port, task)
    }

    #[tokio::test]
    async fn tunnel_through_connect_proxy_with_credentials() {
        let target = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
        let target_port = target.local_addr().expect("addr").port();
        let (proxy_port, proxy_task) = one_shot_proxy(200).await;
        let proxy = ProxyTarget::new("127.0.0.1", proxy_port).with_basic_auth("user", "s3cret");
        let opts = SocketOptions::default();
        let (tunnel, accepted) = tokio::join!(
            connect_via_proxy(&proxy, "127.0.0.1", target_port, &opts),
            target.accept()
        );
        let mut tunnel = tunnel.expect("tunnel");
        let (mut far_end, _) = accepted.expect("target accept");
        // The tunnel's socket has our options (it is the socket to the proxy).
        assert!(
            socket2::SockRef::from(&tunnel)
                .keepalive()
                .expect("keepalive")
        );
        tunnel.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        tokio::time::timeout(WAIT, far_end.read_exact(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(&buf, b"ping");
        drop(tunnel);
        drop(far_end);
        let seen = tokio::time::timeout(WAIT, proxy_task)
            .await
            .expect("proxy finishes")
            .expect("proxy task");
        let expected_auth = base64::engine::general_purpose::STANDARD.encode("user:s3cret");
        assert_eq!(
            seen.request_head,
            format!(
                "CONNECT 127.0.0.1:{target_port} HTTP/1.1\r\nHost: 127.0.0.1:{target_port}\r\n\
                 Proxy-Authorization: Basic {expected_auth}\r\n\r\n"
            )
        );
    }

    #[tokio::test]
    async fn proxy_refusal_names_the_status_not_the_credentials() {
        let (proxy_port, proxy_task) = one_shot_proxy(407).await;
        let proxy = ProxyTarget::new("127.0.0.1", proxy_port).with_basic_auth("user", "s3cret");
        let err = connect_via_proxy(&proxy, "platform.example", 443, &SocketOptions::default())
            .await
            .expect_err("refused");
        assert!(
            matches!(err, NetError::ProxyStatus { status: 407, .. }),
            "{err:?}"
        );
        let text = format!("{err} {err:?}");
        assert!(
            text.contains("407") && text.contains("platform.example:443"),
            "{text}"
        );
        assert!(
            !text.contains("s3cret") && !text.contains("dXNlcjpzM2NyZXQ"),
            "{text}"
        );
        proxy_task.await.expect("proxy task");
    }

    #[test]
    fn the_policy_reads_once_checks_once_and_decides_for_both_clients() {
        let policy = ProxyPolicy::from_vars(env_of(&[
            ("HTTPS_PROXY", "http://user:pw%21@proxy.example:3128"),
            ("NO_PROXY", "internal.example"),
        ]));
        policy.check().expect("usable");
        let via = policy
            .for_url(&url("https://api.mypurecloud.com/api/v2"))
            .expect("decision")
            .expect("proxied");
        assert_eq!(via.authority(), "proxy.example:3128");
        let rest = via.to_url().expect("url");
        assert_eq!(rest.username(), "user");
        assert!(rest.password().is_some_and(|p| p.starts_with("pw")));
        assert!(
            policy
                .for_url(&url("wss://streaming.internal.example/x"))
                .expect("decision")
                .is_none()
        );
        assert!(matches!(
            policy.mode_for(&url("wss://streaming.mypurecloud.com/x")),
            Ok(crate::ws::ProxyMode::Via(_))
        ));
        let shown = format!("{policy:?}");
        assert!(!shown.contains("pw"), "{shown}");
        let bad = ProxyPolicy::from_vars(env_of(&[
            ("HTTPS_PROXY", "socks5://u:hunter2@p:1"),
            ("NO_PROXY", "*"),
        ]));
        let err = bad
            .check()
            .expect_err("socks is refused even when NO_PROXY is *");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
