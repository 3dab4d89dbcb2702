//! Fixtures shared by streamkeeper's test suites (the coord crate's store tests and bench, and
//! the end-to-end tests), so each real dependency is started one way.

pub mod redis;
