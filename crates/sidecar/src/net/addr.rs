//! Host and `host:port` spelling shared by sockets, proxies and TLS.

/// `host:port`, with brackets around IPv6 literals.
pub(crate) fn authority(host: &str, port: u16) -> String {
    let host = bare_host(host);
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The host without IPv6 brackets (`url::Url::host_str` keeps them).
pub(crate) fn bare_host(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}
