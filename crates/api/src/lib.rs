//! Types shared by every streamkeeper component: the StreamConnection CRD, the sidecar config file, the local app
//! protocol, stream states and drop reasons, and the small identifiers of the domain.
//!
//! Nothing here does I/O, so the controller, the sidecar and the tests agree on one definition.

pub mod app_protocol;
pub mod config;
pub mod crd;
pub mod duration;
pub mod endpoint;
pub mod ids;
pub mod kube_yaml;
pub mod state;
pub mod transition;

pub use app_protocol::{FromApp, ToApp};
pub use config::{ConfigError, SidecarConfig, StreamSpec};
pub use endpoint::Endpoint;
pub use ids::{ConnectionId, EventId, Fence, PodName, StreamId, Tenant};
pub use state::{DropReason, StreamState};
pub use transition::Transition;
