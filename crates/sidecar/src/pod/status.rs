//! The pod's `/status`, readiness and liveness answers.

use serde_json::json;

use super::Pod;
use crate::{admin::StatusSource, upstream::read_status};

impl StatusSource for Pod {
    fn status(&self) -> serde_json::Value {
        let streams = self.streams();
        let mut list: Vec<serde_json::Value> = streams
            .values()
            .map(|e| {
                let st = read_status(&e.status);
                let fence = *e.owner.lock().unwrap_or_else(|p| p.into_inner());
                json!({
                    "id": e.spec.id,
                    "tenant": e.spec.tenant,
                    "platform": e.spec.platform.as_str(),
                    "state": st.state,
                    "owner": fence.is_some(),
                    "fence": fence,
                    "connection": st.connection,
                    "lastPong": st.last_pong_ms,
                    "rttMs": st.rtt.map(|r| r.as_secs_f64() * 1000.0),
                    "retryCount": st.retry_count,
                    "reconnects": st.reconnects,
                    "lastDropReason": st.last_drop,
                    "lastError": st.last_error,
                    "pendingEvents": e.hub.pending_events(),
                    "appClients": e.hub.consumers(),
                })
            })
            .collect();
        list.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        json!({"pod": self.name, "storeUp": self.ownership.store_up(), "storeDownTenants": self.ownership.store_down_tenants(), "draining": self.ownership.draining(), "streams": list})
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
