//! streamkeeper's operator: admits StreamConnections under per-tenant pools with priority
//! preemption, renders each workload's sidecar config into its ConfigMap, reports runtime state
//! from the store into status and Events, and runs as one leader among replicas.
//!
//! | module | its one job |
//! |---|---|
//! | [`admission`] | the pool decision (pure) |
//! | [`render`] | StreamConnections + decisions → sidecar configs and ConfigMaps (pure) |
//! | [`leader`] | leader election on a coordination.k8s.io Lease |
//! | [`metrics`], [`admin`] | `/metrics`, `/healthz`, `/readyz` |
//! | [`status`] | the desired status and Events of a stream (pure) |
//! | [`runtime`] | the store's view of every stream (transitions and records) |
//! | [`reconcile`] | the reconciler: finalizer, admission per tenant, ConfigMaps, status |
//! | [`run`] | wiring: CRD check, admin endpoint, leader election, the controller |
//! | [`error`] | the reconciler's errors (metric labels) |

pub mod admin;
pub mod admission;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod render;
pub mod run;
pub mod runtime;
pub mod status;

pub use error::Error;
