//! Fixtures shared by streamkeeper's test suites (the coord crate's store tests and bench, the
//! end-to-end tests, the controller's API server tests), so each real dependency is started one
//! way.

#[cfg(feature = "k8s")]
pub mod k8s;
pub mod procfs;
#[cfg(feature = "proxy")]
pub mod proxy;
pub mod redis;
pub mod temp;

pub use temp::TempDir;
