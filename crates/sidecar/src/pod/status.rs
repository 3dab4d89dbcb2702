//! The pod's `/status`, readiness and liveness answers.
//!
//! `/status` is written straight from typed rows ([`StatusSource::status_json`]): for 10,000
//! streams a `serde_json::Value` tree would allocate about 2 KB per stream for each request
//! (a map node and a key string per field), and a process keeps what a request allocated.

use std::sync::Arc;

use serde::Serialize;
use streamkeeper_api::{ConnectionId, DropReason, Fence, PodName, StreamSpec, StreamState};

use super::Pod;
use crate::{admin::StatusSource, upstream::read_status};

/// One stream of `/status`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StreamRow<'a> {
    id: &'a streamkeeper_api::StreamId,
    tenant: &'a streamkeeper_api::Tenant,
    platform: &'static str,
    state: StreamState,
    owner: bool,
    fence: Option<Fence>,
    connection: Option<ConnectionId>,
    last_pong: u64,
    rtt_ms: Option<f64>,
    retry_count: u32,
    reconnects: u64,
    last_drop_reason: Option<DropReason>,
    last_error: Option<String>,
    pending_events: usize,
    app_clients: usize,
}

/// The whole `/status` document.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PodStatus<'a> {
    pod: &'a PodName,
    store_up: bool,
    store_down_tenants: Vec<streamkeeper_api::Tenant>,
    draining: bool,
    streams: Vec<StreamRow<'a>>,
}

impl Pod {
    /// Every stream's row (sorted by id), built from a snapshot taken under the lock.
    fn with_status<R>(&self, f: impl FnOnce(PodStatus<'_>) -> R) -> R {
        let specs: Vec<(Arc<StreamSpec>, StreamRowData)> = {
            let streams = self.streams();
            streams
                .values()
                .map(|e| {
                    let st = read_status(&e.status);
                    let data = StreamRowData {
                        state: st.state,
                        fence: st.owner,
                        connection: st.connection,
                        last_pong: st.last_pong_ms,
                        rtt_ms: st.rtt.map(|r| r.get().as_secs_f64() * 1000.0),
                        retry_count: st.retry_count,
                        reconnects: st.reconnects.into(),
                        last_drop_reason: st.last_drop,
                        last_error: st.last_error.map(String::from),
                        pending_events: e.hub.pending_events(),
                        app_clients: e.hub.consumers(),
                    };
                    (Arc::clone(&e.spec), data)
                })
                .collect()
        };
        let mut streams: Vec<StreamRow<'_>> = specs
            .iter()
            .map(|(spec, d)| StreamRow {
                id: &spec.id,
                tenant: &spec.tenant,
                platform: spec.platform.as_str(),
                state: d.state,
                owner: d.fence.is_some(),
                fence: d.fence,
                connection: d.connection.clone(),
                last_pong: d.last_pong,
                rtt_ms: d.rtt_ms,
                retry_count: d.retry_count,
                reconnects: d.reconnects,
                last_drop_reason: d.last_drop_reason,
                last_error: d.last_error.clone(),
                pending_events: d.pending_events,
                app_clients: d.app_clients,
            })
            .collect();
        streams.sort_by(|a, b| a.id.cmp(b.id));
        f(PodStatus {
            pod: &self.name,
            store_up: self.ownership.store_up(),
            store_down_tenants: self.ownership.store_down_tenants(),
            draining: self.ownership.draining(),
            streams,
        })
    }
}

/// What a row holds besides the spec's fields.
struct StreamRowData {
    state: StreamState,
    fence: Option<Fence>,
    connection: Option<ConnectionId>,
    last_pong: u64,
    rtt_ms: Option<f64>,
    retry_count: u32,
    reconnects: u64,
    last_drop_reason: Option<DropReason>,
    last_error: Option<String>,
    pending_events: usize,
    app_clients: usize,
}

impl StatusSource for Pod {
    fn status(&self) -> serde_json::Value {
        self.with_status(|doc| serde_json::to_value(doc).unwrap_or(serde_json::Value::Null))
    }

    fn status_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        self.with_status(|doc| {
            // About 300 bytes a stream: reserved once rather than doubled up to.
            let mut out = Vec::with_capacity(256 + doc.streams.len() * 320);
            serde_json::to_writer(&mut out, &doc)?;
            Ok(out)
        })
    }

    fn ready(&self) -> Result<(), String> {
        if self.ownership.draining() {
            return Err("draining: shutting down".into());
        }
        Ok(())
    }

    fn healthy(&self) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use streamkeeper_api::SidecarConfig;
    use streamkeeper_coord::MemoryStore;

    use super::*;
    use crate::metrics::Metrics;

    /// The typed document has the fields and order `/status` always had: the pod's three,
    /// then one row per stream sorted by id, with the row's fields in camelCase.
    #[tokio::test]
    async fn status_json_is_the_documented_shape_sorted_by_id() {
        let pod = Pod::new(
            "p-1".parse().expect("pod name"),
            Arc::new(MemoryStore::new()),
            Arc::new(Metrics::new()),
            None,
        );
        // Nothing listens on port 1: the streams stay unconnected, which is all a row needs.
        let config = SidecarConfig::from_yaml(
            "
streams:
  - {id: cc/b, tenant: t, platform: generic, endpoints: {api: 'http://127.0.0.1:1', login: 'http://127.0.0.1:1', stream: 'ws://127.0.0.1:1/b'}, credentials: {dir: /nonexistent}}
  - {id: cc/a, tenant: t, platform: generic, endpoints: {api: 'http://127.0.0.1:1', login: 'http://127.0.0.1:1', stream: 'ws://127.0.0.1:1/a'}, credentials: {dir: /nonexistent}}
",
        )
        .expect("config")
        .config;
        pod.apply(&config).expect("apply");

        let json: serde_json::Value =
            serde_json::from_slice(&pod.status_json().expect("status json")).expect("parse");
        assert_eq!(json, pod.status(), "status() and status_json() agree");
        let keys = |v: &serde_json::Value| -> Vec<String> {
            v.as_object().expect("object").keys().cloned().collect()
        };
        let mut top = keys(&json);
        top.sort();
        assert_eq!(
            top,
            ["draining", "pod", "storeDownTenants", "storeUp", "streams"]
        );
        assert_eq!(json["pod"], "p-1");
        assert_eq!(json["draining"], false);
        let rows = json["streams"].as_array().expect("streams");
        let ids: Vec<&str> = rows.iter().filter_map(|r| r["id"].as_str()).collect();
        assert_eq!(ids, ["cc/a", "cc/b"]);
        let mut fields = keys(&rows[0]);
        fields.sort();
        assert_eq!(
            fields,
            [
                "appClients",
                "connection",
                "fence",
                "id",
                "lastDropReason",
                "lastError",
                "lastPong",
                "owner",
                "pendingEvents",
                "platform",
                "reconnects",
                "retryCount",
                "rttMs",
                "state",
                "tenant",
            ]
        );
        assert_eq!(rows[0]["tenant"], "t");
        assert_eq!(rows[0]["platform"], "generic");
        assert_eq!(rows[0]["owner"], false);
        assert_eq!(rows[0]["appClients"], 0);
        pod.shutdown(Duration::from_secs(1)).await;
    }
}
