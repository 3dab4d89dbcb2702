//! The admin HTTP endpoint: `GET /metrics` (Prometheus text), `GET /healthz` (liveness: the
//! process serves), `GET /readyz` (readiness: the CRD is installed and the API server
//! answered; a standby replica is ready too, it only does not write). Anything else is 404.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use http::{Method, Request, Response, StatusCode, header::CONTENT_TYPE};
use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};

use crate::metrics::Metrics;

/// How long a client may take to send its request head (also bounds idle keep-alive).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin endpoint serves from.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The metrics.
    pub metrics: Metrics,
    /// `Ok` when ready, else why not.
    pub ready: watch::Receiver<Result<(), String>>,
}

/// Serves until `shutdown` completes; in-flight requests are dropped then.
pub async fn serve(
    listener: TcpListener,
    admin: Admin,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let admin = Arc::new(admin);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let admin = Arc::clone(&admin);
                conns.spawn(async move {
                    let service = service_fn(move |req| {
                        let admin = Arc::clone(&admin);
                        async move { Ok::<_, Infallible>(answer(&admin, &req)) }
                    });
                    let mut builder = http1::Builder::new();
                    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn answer<B>(admin: &Admin, req: &Request<B>) -> Response<Full<Bytes>> {
    let text = |code: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = code;
        r
    };
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = text(StatusCode::OK, admin.metrics.encode());
            r.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match &*admin.ready.borrow() {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Binds `addr` and serves in a task until `shutdown`; returns the bound address.
pub async fn spawn(
    addr: SocketAddr,
    admin: Admin,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = serve(listener, admin, shutdown).await {
            tracing::warn!(error = %e, "admin endpoint stopped");
        }
    });
    Ok(bound)
}
