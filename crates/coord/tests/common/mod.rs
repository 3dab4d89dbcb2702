//! The store tests' view of a Redis deployment: a single node or a cluster behind one trait.
//! The servers themselves come from `streamkeeper-testkit`.

#![allow(dead_code)] // each test binary uses a different part of the fixture

pub use streamkeeper_testkit::redis::*;

/// What the scenario tests need of a deployment, single node or cluster.
pub trait Deployment: Send {
    /// The store URL.
    fn url(&self) -> String;
    /// Deletes every key everywhere.
    fn flushall(&self);
    /// Kills every server.
    fn stop(&mut self);
    /// Restarts every server, empty, on the same ports, and waits until it serves.
    fn restart(&mut self);
    /// Sends a command to the node that owns `key` (any node for `None`).
    fn command_for(&self, key: Option<&str>, args: &[&str]) -> Result<redis::Value, String>;
    /// Whether this is a cluster.
    fn is_cluster(&self) -> bool;
    /// The port of the server that holds `key`.
    fn port_of(&self, key: &str) -> u16;
}

impl Deployment for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }
    fn flushall(&self) {
        RedisServer::flushall(self)
    }
    fn stop(&mut self) {
        RedisServer::stop(self)
    }
    fn restart(&mut self) {
        RedisServer::restart(self)
    }
    fn command_for(&self, _key: Option<&str>, args: &[&str]) -> Result<redis::Value, String> {
        command(self.port, args)
    }
    fn is_cluster(&self) -> bool {
        false
    }
    fn port_of(&self, _key: &str) -> u16 {
        self.port
    }
}

impl Deployment for RedisCluster {
    fn url(&self) -> String {
        RedisCluster::url(self)
    }
    fn flushall(&self) {
        RedisCluster::flushall(self)
    }
    fn stop(&mut self) {
        RedisCluster::stop(self)
    }
    fn restart(&mut self) {
        RedisCluster::restart(self)
    }
    fn command_for(&self, key: Option<&str>, args: &[&str]) -> Result<redis::Value, String> {
        let port = match key {
            Some(k) => self.node_of(k),
            None => self.nodes[0].port,
        };
        command(port, args)
    }
    fn is_cluster(&self) -> bool {
        true
    }
    fn port_of(&self, key: &str) -> u16 {
        self.node_of(key)
    }
}
