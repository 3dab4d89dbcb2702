//! Where Redis is and how to talk to it: the URL convention, one connection type over a single
//! node and a cluster, bounded operations, error mapping and secret redaction.

use std::{
    future::Future,
    sync::Mutex as StdMutex,
    time::{Duration, Instant},
};

use ::redis::{
    Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult,
    ServerErrorKind, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};
use tokio::sync::Mutex;

use crate::store::StoreError;

/// Timeouts of the Redis store. The defaults keep an unreachable Redis from stalling a caller
/// for more than about two seconds.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// How long Redis may take to answer one command.
    pub response_timeout: Duration,
    /// The bound on a whole store operation (connecting included): past it the operation
    /// returns [`StoreError::Unavailable`].
    pub op_timeout: Duration,
    /// How long a DEAD record (`sk:{T}:conn:{stream}`) stays readable after it was declared.
    pub dead_retention: Duration,
    /// How long a released or removed lease (a tombstone) or a lapsed one that the sweep
    /// handled keeps fencing its old owner before Redis forgets it.
    pub lease_retention: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            op_timeout: Duration::from_secs(2),
            dead_retention: Duration::from_secs(3600),
            lease_retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// The parsed target: node URLs (with credentials, never shown) and what may be shown.
#[derive(Clone)]
pub(crate) struct Endpoints {
    /// `redis://…` URLs, one per node (one for a single node, the seed nodes of a cluster).
    pub(crate) nodes: Vec<String>,
    /// Whether the nodes are seeds of a Redis Cluster.
    pub(crate) cluster: bool,
    /// The target without credentials, for logs and errors.
    pub(crate) display: String,
    /// Strings that must never appear in an error or a log line (passwords, raw and decoded).
    secrets: Vec<String>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

impl Endpoints {
    /// Parses the store URL. See [`RedisStore::connect`](super::RedisStore::connect) for the
    /// convention.
    pub(crate) fn parse(input: &str) -> Result<Self, StoreError> {
        let input = input.trim();
        let mut secrets = Vec::new();
        let (cluster, urls): (bool, Vec<String>) =
            if let Some((scheme, rest)) = input.split_once("+cluster://") {
                if scheme != "redis" && scheme != "rediss" {
                    return Err(bad(
                        "the cluster scheme is redis+cluster:// or rediss+cluster://",
                    ));
                }
                // Credentials come before the last '@'; a password may hold ',' but a host may not.
                let (userinfo, hosts) = match rest.rsplit_once('@') {
                    Some((u, h)) => (Some(u), h),
                    None => (None, rest),
                };
                if let Some(u) = userinfo {
                    note_secret(u, &mut secrets);
                }
                let (hosts, db) = match hosts.split_once('/') {
                    Some((h, db)) => (h, Some(db)),
                    None => (hosts, None),
                };
                let urls: Vec<String> = hosts
                    .split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(|h| {
                        let mut u = format!("{scheme}://");
                        if let Some(ui) = userinfo {
                            u.push_str(ui);
                            u.push('@');
                        }
                        u.push_str(h);
                        if let Some(db) = db {
                            u.push('/');
                            u.push_str(db);
                        }
                        u
                    })
                    .collect();
                (true, urls)
            } else {
                let urls = split_url_list(input);
                for u in &urls {
                    if let Some((userinfo, _)) = u
                        .split_once("://")
                        .and_then(|(_, rest)| rest.rsplit_once('@'))
                    {
                        note_secret(userinfo, &mut secrets);
                    }
                }
                (urls.len() > 1, urls)
            };
        if urls.is_empty() {
            return Err(bad("no Redis node given"));
        }
        let mut shown = Vec::with_capacity(urls.len());
        for (i, u) in urls.iter().enumerate() {
            let info = u.as_str().into_connection_info().map_err(|e| {
                bad(&format!(
                    "node {}: {}",
                    i + 1,
                    redact(&e.to_string(), &secrets)
                ))
            })?;
            if let Some(p) = info.redis_settings().password().filter(|p| !p.is_empty()) {
                secrets.push(p.to_owned());
            }
            shown.push(info.addr().to_string());
        }
        let display = if cluster {
            format!("redis+cluster://{}", shown.join(","))
        } else {
            format!("redis://{}", shown.join(","))
        };
        Ok(Self {
            nodes: urls,
            cluster,
            display,
            secrets,
        })
    }

    /// `text` with every secret replaced by `***`.
    pub(crate) fn redact(&self, text: &str) -> String {
        redact(text, &self.secrets)
    }
}

/// Splits `redis://a:1,redis://b:2` into its URLs; a single URL stays whole (its password may
/// contain a comma).
fn split_url_list(input: &str) -> Vec<String> {
    let starts: Vec<usize> = input
        .match_indices(',')
        .map(|(i, _)| i)
        .filter(|&i| {
            let next = input[i + 1..].trim_start();
            next.starts_with("redis://") || next.starts_with("rediss://")
        })
        .collect();
    let mut urls = Vec::new();
    let mut from = 0;
    for s in starts {
        urls.push(input[from..s].trim().to_owned());
        from = s + 1;
    }
    urls.push(input[from..].trim().to_owned());
    urls.retain(|u| !u.is_empty());
    urls
}

/// Records the password part of `user:password` (or the whole userinfo when there is no ':').
fn note_secret(userinfo: &str, secrets: &mut Vec<String>) {
    let pass = userinfo.split_once(':').map(|(_, p)| p).unwrap_or(userinfo);
    if !pass.is_empty() {
        secrets.push(pass.to_owned());
    }
}

fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        if !s.is_empty() {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

/// A refused URL. The URL itself is not echoed: it may carry a password.
fn bad(why: &str) -> StoreError {
    StoreError::Protocol(format!("invalid Redis URL: {why}"))
}

/// A connection that can run commands, single node or cluster.
#[derive(Clone)]
pub(crate) enum Live {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Live {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Live::Single(c) => c.req_packed_command(cmd),
            Live::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Live::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Live::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Live::Single(c) => c.get_db(),
            Live::Cluster(c) => c.get_db(),
        }
    }
}

enum Inner {
    /// A `ConnectionManager`: one multiplexed connection, re-established on demand.
    Single(ConnectionManager),
    /// A cluster connection, made on first use and made again after the cluster was lost.
    Cluster {
        client: Box<ClusterClient>,
        conn: Mutex<Option<ClusterConnection>>,
    },
}

/// The store's command connection: bounded operations, mapped errors.
pub(crate) struct Conn {
    inner: Inner,
    pub(crate) endpoints: Endpoints,
    pub(crate) opts: RedisOptions,
    /// When an operation last found Redis unavailable.
    last_unavailable: StdMutex<Option<Instant>>,
}

impl Conn {
    /// Prepares the connection without connecting: an unreachable Redis is reported by the
    /// first operation, as [`StoreError::Unavailable`].
    pub(crate) fn new(endpoints: Endpoints, opts: RedisOptions) -> Result<Self, StoreError> {
        let inner = if endpoints.cluster {
            let client = ClusterClient::builder(endpoints.nodes.iter().map(String::as_str))
                .connection_timeout(opts.connect_timeout)
                .response_timeout(opts.response_timeout)
                .retries(2)
                .min_retry_wait(50)
                .max_retry_wait(500)
                .build()
                .map_err(|e| endpoints_error(&endpoints, &e))?;
            Inner::Cluster {
                client: Box::new(client),
                conn: Mutex::new(None),
            }
        } else {
            let url = endpoints
                .nodes
                .first()
                .map(String::as_str)
                .unwrap_or_default();
            let client = ::redis::Client::open(url).map_err(|e| endpoints_error(&endpoints, &e))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(opts.connect_timeout))
                .set_response_timeout(Some(opts.response_timeout))
                // One quick retry per reconnection; the next operation starts another. Nothing
                // reconnects in a loop while Redis is down.
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_millis(500));
            let manager = ConnectionManager::new_lazy_with_config(client, config)
                .map_err(|e| endpoints_error(&endpoints, &e))?;
            Inner::Single(manager)
        };
        Ok(Self {
            inner,
            endpoints,
            opts,
            last_unavailable: StdMutex::new(None),
        })
    }

    async fn live(&self) -> RedisResult<Live> {
        match &self.inner {
            Inner::Single(m) => Ok(Live::Single(m.clone())),
            Inner::Cluster { client, conn } => {
                let mut guard = conn.lock().await;
                if let Some(c) = guard.as_ref() {
                    return Ok(Live::Cluster(c.clone()));
                }
                let c = client.get_async_connection().await?;
                *guard = Some(c.clone());
                Ok(Live::Cluster(c))
            }
        }
    }

    /// Notes that Redis could not be reached, and forgets a cluster connection so the next
    /// operation builds a fresh one from the seed nodes.
    async fn unavailable(&self) {
        *self
            .last_unavailable
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        if let Inner::Cluster { conn, .. } = &self.inner {
            conn.lock().await.take();
        }
    }

    /// Whether an operation found Redis unavailable within the last `window`.
    pub(crate) fn unavailable_within(&self, window: Duration) -> bool {
        self.last_unavailable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < window)
    }

    /// Runs `f` on a connection, bounded by the operation timeout. When Redis cannot be
    /// reached, this is noted (see [`Conn::unavailable_within`]).
    pub(crate) async fn run<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Live) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.run_noting(what, true, f).await
    }

    /// [`Conn::run`] for a side task whose failure says nothing about whether the owners can
    /// renew (the `status` registry, on one cluster node): it does not make this store wait
    /// for owners to re-assert.
    pub(crate) async fn run_aside<T, F, Fut>(
        &self,
        what: &'static str,
        f: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(Live) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.run_noting(what, false, f).await
    }

    async fn run_noting<T, F, Fut>(
        &self,
        what: &'static str,
        note: bool,
        f: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(Live) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let fut = async {
            let live = self.live().await?;
            f(live).await
        };
        match tokio::time::timeout(self.opts.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let err = self.map_err(what, &e);
                if note && matches!(err, StoreError::Unavailable(_)) {
                    self.unavailable().await;
                }
                Err(err)
            }
            Err(_) => {
                if note {
                    self.unavailable().await;
                }
                Err(StoreError::Unavailable(format!(
                    "{what} on {}: no answer within {:?}",
                    self.endpoints.display, self.opts.op_timeout
                )))
            }
        }
    }

    fn map_err(&self, what: &str, e: &RedisError) -> StoreError {
        let msg = format!(
            "{what} on {}: {}",
            self.endpoints.display,
            self.endpoints.redact(&e.to_string())
        );
        if is_unavailable(e) {
            StoreError::Unavailable(msg)
        } else {
            StoreError::Protocol(msg)
        }
    }
}

fn endpoints_error(endpoints: &Endpoints, e: &RedisError) -> StoreError {
    StoreError::Protocol(format!(
        "Redis at {}: {}",
        endpoints.display,
        endpoints.redact(&e.to_string())
    ))
}

/// Whether an error means "Redis cannot be reached or cannot serve right now" rather than "Redis
/// answered something unexpected".
pub(crate) fn is_unavailable(e: &RedisError) -> bool {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return true;
    }
    matches!(
        e.kind(),
        ErrorKind::Io
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(
                ServerErrorKind::ClusterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
            )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_node_url() {
        let e = Endpoints::parse("redis://:s3cret@127.0.0.1:6379").expect("parses");
        assert!(!e.cluster);
        assert_eq!(e.nodes, vec!["redis://:s3cret@127.0.0.1:6379"]);
        assert!(!e.display.contains("s3cret"));
        assert_eq!(e.redact("auth s3cret failed"), "auth *** failed");
    }

    #[test]
    fn cluster_url_with_a_comma_in_the_password() {
        let e =
            Endpoints::parse("redis+cluster://u:p,w@10.0.0.1:7000,10.0.0.2:7001").expect("parses");
        assert!(e.cluster);
        assert_eq!(
            e.nodes,
            vec!["redis://u:p,w@10.0.0.1:7000", "redis://u:p,w@10.0.0.2:7001"]
        );
        assert!(!format!("{e:?}").contains("p,w"));
        assert_eq!(e.redact("x p,w y"), "x *** y");
    }

    #[test]
    fn a_list_of_urls_is_a_cluster() {
        let e = Endpoints::parse("redis://127.0.0.1:7000, redis://127.0.0.1:7001").expect("parses");
        assert!(e.cluster);
        assert_eq!(e.nodes.len(), 2);
    }

    #[test]
    fn bad_urls_are_refused_without_their_secret() {
        for bad in [
            "",
            "http://x:1",
            "foo+cluster://h:1",
            "redis+cluster://:pw@",
        ] {
            let err = Endpoints::parse(bad).err();
            assert!(err.is_some(), "{bad:?} must be refused");
            assert!(
                !err.map(|e| e.to_string())
                    .unwrap_or_default()
                    .contains("pw@")
            );
        }
    }
}
