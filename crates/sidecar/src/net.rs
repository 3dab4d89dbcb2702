//! TCP connections to the platforms: socket options (keepalive, `TCP_USER_TIMEOUT`, no-delay),
//! HTTP CONNECT proxies from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`, TLS, and the abortive close
//! (RST) that reaps a dead connection.

use std::{
    fmt, io,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use base64::Engine as _;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::{TcpSocket, TcpStream},
};
use tokio_rustls::{TlsConnector, client::TlsStream};

/// The largest proxy response head read after `CONNECT`.
const MAX_PROXY_RESPONSE_HEAD: usize = 8 * 1024;

/// Socket options for an upstream connection (DESIGN.md "Liveness and reaping").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketOptions {
    /// Idle time before the first keepalive probe (default 30 s).
    pub keepalive_idle: Duration,
    /// Time between keepalive probes (default 10 s).
    pub keepalive_interval: Duration,
    /// Unanswered probes before the kernel drops the connection (default 3).
    pub keepalive_retries: u32,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before the kernel drops
    /// the connection; set to the stream's heartbeat timeout (default 35 s; zero leaves the
    /// system default). Linux only.
    pub user_timeout: Duration,
    /// `TCP_NODELAY` (default true: heartbeats must not wait for Nagle).
    pub nodelay: bool,
    /// Bound on each TCP connect attempt and on a proxy's answer to `CONNECT` (default 10 s).
    pub connect_timeout: Duration,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            keepalive_idle: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(10),
            keepalive_retries: 3,
            user_timeout: Duration::from_secs(35),
            nodelay: true,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a connection could not be made. Messages name the target; never credentials.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Name resolution failed.
    #[error("resolving {host}: {source}")]
    Resolve {
        /// The name being resolved.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// The name resolved to no addresses.
    #[error("{host} resolved to no addresses")]
    NoAddress {
        /// The name that was resolved.
        host: String,
    },
    /// Creating or configuring the socket failed.
    #[error("{what}: {source}")]
    Socket {
        /// What was being done, e.g. "setting TCP_USER_TIMEOUT".
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The TCP connect failed.
    #[error("connecting to {target} ({addr}): {source}")]
    Connect {
        /// `host:port` as asked for.
        target: String,
        /// The address tried.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A step did not finish in time.
    #[error("{stage} {target} timed out after {after:?}")]
    Timeout {
        /// What timed out, e.g. "connecting to".
        stage: &'static str,
        /// `host:port` (or the address) involved.
        target: String,
        /// The bound that ran out.
        after: Duration,
    },
    /// A proxy variable is set but unusable (the value is not shown: it may hold a password).
    #[error("proxy setting {var} is not usable: {reason}")]
    ProxyConfig {
        /// The environment variable, e.g. `HTTPS_PROXY`.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The proxy answered `CONNECT` with a non-2xx status.
    #[error("proxy {proxy} refused CONNECT to {target} with HTTP {status}")]
    ProxyStatus {
        /// The proxy's `host:port`.
        proxy: String,
        /// The tunnel target `host:port`.
        target: String,
        /// The proxy's status code (407: proxy authentication refused).
        status: u16,
    },
    /// The proxy exchange failed otherwise (I/O, malformed answer).
    #[error("proxy {proxy}: {reason}")]
    Proxy {
        /// The proxy's `host:port`.
        proxy: String,
        /// What went wrong.
        reason: String,
    },
    /// The CA file could not be used.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// TLS setup failed (no usable roots, bad server name, configuration).
    #[error("TLS: {0}")]
    Tls(String),
    /// The TLS handshake failed (includes certificate verification errors).
    #[error("TLS handshake with {host}: {source}")]
    TlsHandshake {
        /// The server name.
        host: String,
        /// The error, as rustls reports it through I/O.
        source: io::Error,
    },
}

/// `host:port`, with brackets around IPv6 literals.
fn authority(host: &str, port: u16) -> String {
    let host = bare_host(host);
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The host without IPv6 brackets (`url::Url::host_str` keeps them).
fn bare_host(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Resolves `host` and connects to each address in turn with `opts` applied to the socket
/// before connecting. Returns the first connection made, or the last error.
pub async fn connect_tcp(
    host: &str,
    port: u16,
    opts: &SocketOptions,
) -> Result<TcpStream, NetError> {
    let host = bare_host(host);
    let target = authority(host, port);
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(opts.connect_timeout, tokio::net::lookup_host((host, port)))
            .await
        {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(source)) => {
                return Err(NetError::Resolve {
                    host: host.to_owned(),
                    source,
                });
            }
            Err(_) => {
                return Err(NetError::Timeout {
                    stage: "resolving",
                    target,
                    after: opts.connect_timeout,
                });
            }
        };
    let mut last = NetError::NoAddress {
        host: host.to_owned(),
    };
    for addr in addrs {
        match connect_addr(addr, &target, opts).await {
            Ok(stream) => return Ok(stream),
            Err(err) => {
                tracing::debug!(%addr, error = %err, "connect attempt failed");
                last = err;
            }
        }
    }
    Err(last)
}

async fn connect_addr(
    addr: SocketAddr,
    target: &str,
    opts: &SocketOptions,
) -> Result<TcpStream, NetError> {
    let socket = configured_socket(addr, opts)?;
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    match tokio::time::timeout(opts.connect_timeout, socket.connect(addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(NetError::Connect {
            target: target.to_owned(),
            addr,
            source,
        }),
        Err(_) => Err(NetError::Timeout {
            stage: "connecting to",
            target: format!("{target} ({addr})"),
            after: opts.connect_timeout,
        }),
    }
}

/// A nonblocking TCP socket for `addr` with keepalive, user timeout and no-delay set.
fn configured_socket(addr: SocketAddr, opts: &SocketOptions) -> Result<Socket, NetError> {
    let sock_err = |what: &'static str| move |source| NetError::Socket { what, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(sock_err("creating a TCP socket"))?;
    socket
        .set_nonblocking(true)
        .map_err(sock_err("making the socket nonblocking"))?;
    let keepalive = TcpKeepalive::new().with_time(opts.keepalive_idle);
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
    let keepalive = keepalive
        .with_interval(opts.keepalive_interval)
        .with_retries(opts.keepalive_retries);
    socket
        .set_tcp_keepalive(&keepalive)
        .map_err(sock_err("setting TCP keepalive"))?;
    socket
        .set_tcp_nodelay(opts.nodelay)
        .map_err(sock_err("setting TCP_NODELAY"))?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if !opts.user_timeout.is_zero() {
        socket
            .set_tcp_user_timeout(Some(opts.user_timeout))
            .map_err(sock_err("setting TCP_USER_TIMEOUT"))?;
    }
    Ok(socket)
}

/// Closes `stream` abortively: `SO_LINGER` 0, then drop, so the kernel sends RST and frees the
/// socket at once instead of a FIN that waits on a peer that may be dead.
pub fn reset(stream: TcpStream) {
    if let Err(err) = stream.set_zero_linger() {
        tracing::debug!(error = %err, "setting SO_LINGER 0 before reset failed");
    }
    drop(stream);
}

/// An HTTP proxy to tunnel through with `CONNECT`.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyTarget {
    /// The proxy host (no IPv6 brackets).
    pub host: String,
    /// The proxy port.
    pub port: u16,
    /// `base64(user:password)` for `Proxy-Authorization: Basic`, kept out of `Debug`.
    auth: Option<String>,
}

impl fmt::Debug for ProxyTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ProxyTarget {
    /// A proxy without credentials.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: bare_host(&host.into()).to_owned(),
            port,
            auth: None,
        }
    }

    /// The same proxy with basic credentials.
    pub fn with_basic_auth(mut self, user: &str, password: &str) -> Self {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.auth = Some(encoded);
        self
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

/// Where TLS trust comes from for a stream (`tls.caFile` in the sidecar config).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// A PEM file of CA certificates that replaces the system roots; `None` uses the system
    /// roots.
    pub ca_file: Option<PathBuf>,
}

impl TlsSettings {
    /// Builds the connector for these settings (do it once per stream and share it).
    pub fn connector(&self) -> Result<Arc<TlsConnector>, NetError> {
        tls_connector(self.ca_file.as_deref()).map(Arc::new)
    }
}

/// A rustls connector (ring provider, ALPN `http/1.1`) trusting the CA certificates in
/// `ca_file`, or the system roots when `None`. Fails when no root can be loaded.
pub fn tls_connector(ca_file: Option<&Path>) -> Result<TlsConnector, NetError> {
    let mut config = client_config(ca_file)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// An HTTP client for plain-text REST endpoints only (the emulator): it trusts no roots.
pub fn plain_http_client() -> reqwest::Client {
    rest_client(client_config_without_roots())
        .expect("a client with a preconfigured rustls config always builds")
}

/// An HTTP client for REST calls (tokens, validation, channels) that trusts the same roots
/// as the sockets, on the ring provider. Proxies come from `HTTPS_PROXY`/`NO_PROXY`.
pub fn http_client(ca_file: Option<&Path>) -> Result<reqwest::Client, NetError> {
    rest_client(client_config(ca_file)?).map_err(|e| NetError::Tls(format!("HTTP client: {e}")))
}

/// The REST client's one set of settings: timeouts, and TLS from `tls`.
fn rest_client(tls: rustls::ClientConfig) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .build()
}

/// A rustls config that trusts nothing: for clients that only ever speak plain HTTP, so they
/// need no root store (and never pick a process-wide crypto provider).
pub fn client_config_without_roots() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// The rustls client config: `ca_file`'s certificates, or the system roots.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, NetError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let ca_err = |reason: String| NetError::CaFile {
                path: path.to_owned(),
                reason,
            };
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| ca_err(e.to_string()))?;
            for cert in certs {
                let cert = cert.map_err(|e| ca_err(e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| ca_err(format!("unusable certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(ca_err("no PEM certificates in the file".into()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let detail = found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                return Err(NetError::Tls(format!(
                    "no system CA certificates could be loaded{detail}; set tls.caFile"
                )));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Runs the TLS handshake for `host` (a DNS name or IP literal) over `tcp`.
pub async fn tls_handshake(
    connector: &TlsConnector,
    host: &str,
    tcp: TcpStream,
) -> Result<Transport, NetError> {
    let host = bare_host(host);
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| NetError::Tls(format!("{host:?} is not a valid server name: {e}")))?;
    connector
        .connect(name, tcp)
        .await
        .map(|tls| Transport::Tls(Box::new(tls)))
        .map_err(|source| NetError::TlsHandshake {
            host: host.to_owned(),
            source,
        })
}

/// A connected upstream byte stream: plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP (`ws://`).
    Plain(TcpStream),
    /// TLS over TCP (`wss://`), boxed: the rustls state is large and this keeps the enum small.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    /// The TCP socket underneath (for addresses and socket options).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(tcp) => tcp,
            Self::Tls(tls) => tls.get_ref().0,
        }
    }

    /// Whether this is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// Abortive close: RST, no TLS close_notify, nothing waits on the peer (see [`reset`]).
    pub fn reset(self) {
        match self {
            Self::Plain(tcp) => reset(tcp),
            Self::Tls(tls) => {
                let (tcp, session) = tls.into_inner();
                drop(session);
                reset(tcp);
            }
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(tcp) => tcp.is_write_vectored(),
            Self::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tokio::net::TcpListener;

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

    #[tokio::test]
    async fn socket_options_are_set_on_the_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let opts = SocketOptions {
            keepalive_idle: Duration::from_secs(31),
            keepalive_interval: Duration::from_secs(11),
            keepalive_retries: 4,
            user_timeout: Duration::from_secs(35),
            ..SocketOptions::default()
        };
        let (stream, accepted) =
            tokio::join!(connect_tcp("127.0.0.1", port, &opts), listener.accept());
        let stream = stream.expect("connect");
        accepted.expect("accept");
        let sock = socket2::SockRef::from(&stream);
        assert!(sock.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(
            sock.tcp_keepalive_time().expect("idle"),
            Duration::from_secs(31)
        );
        assert_eq!(
            sock.tcp_keepalive_interval().expect("interval"),
            Duration::from_secs(11)
        );
        assert_eq!(sock.tcp_keepalive_retries().expect("retries"), 4);
        assert!(sock.tcp_nodelay().expect("TCP_NODELAY"));
        #[cfg(target_os = "linux")]
        assert_eq!(
            sock.tcp_user_timeout().expect("TCP_USER_TIMEOUT"),
            Some(Duration::from_secs(35))
        );
    }

    #[tokio::test]
    async fn connect_errors_name_the_target() {
        // Bind then drop to get a port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let err = connect_tcp("127.0.0.1", port, &SocketOptions::default())
            .await
            .expect_err("nothing listens");
        assert!(
            matches!(&err, NetError::Connect { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn reset_sends_rst_to_the_peer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let opts = SocketOptions::default();
        let (stream, accepted) =
            tokio::join!(connect_tcp("127.0.0.1", port, &opts), listener.accept());
        let (mut server, _) = accepted.expect("accept");
        reset(stream.expect("connect"));
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(WAIT, server.read(&mut buf))
            .await
            .expect("peer sees the close");
        let err = read.expect_err("RST, not a clean EOF");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let missing = Path::new("/nonexistent/streamkeeper-ca.pem");
        let err = tls_connector(Some(missing)).err().expect("missing file");
        assert!(
            err.to_string().contains("/nonexistent/streamkeeper-ca.pem"),
            "{err}"
        );
        let not_pem = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
        let err = tls_connector(Some(not_pem)).err().expect("no certificates");
        assert!(err.to_string().contains("no PEM certificates"), "{err}");
        let ca = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/ws/testdata/ca.pem"
        ));
        tls_connector(Some(ca)).expect("the test CA loads");
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
}
