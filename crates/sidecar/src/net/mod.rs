//! TCP connections to the platforms: socket options (keepalive, `TCP_USER_TIMEOUT`, no-delay),
//! HTTP CONNECT proxies from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`, TLS, the REST client, and
//! the abortive close (RST) that reaps a dead connection.
//!
//! - `socket.rs`: [`SocketOptions`], [`connect_tcp`], [`reset`]
//! - `proxy.rs`: [`proxy_for`] (which proxy a URL uses), [`connect_via_proxy`]
//! - `tls.rs`: root stores and connectors, [`tls_handshake`]
//! - `http.rs`: the REST client builders
//! - `egress.rs`: [`Egress`], the pod's routes: one proxy decision, TLS trust loaded once
//! - `tls_stream.rs`: [`TlsStream`], TLS on rustls's unbuffered API (no buffer while idle)
//! - `transport.rs`: [`Transport`], plain or TLS
//! - `error.rs`: [`NetError`]

mod addr;
mod egress;
mod error;
mod http;
mod proxy;
mod socket;
mod tls;
mod tls_stream;
mod transport;

pub use egress::{Egress, Route};
pub use error::NetError;
pub use http::plain_http_client;
pub use proxy::{ProxyPolicy, ProxyTarget, connect_via_proxy, proxy_for};
pub use socket::{SocketOptions, connect_tcp, reset};
pub use tls::{
    TlsSettings, certificate_problem, client_config, client_config_without_roots, for_sockets,
    socket_tls_config, tls_handshake,
};
pub use tls_stream::TlsStream;
pub use transport::Transport;
