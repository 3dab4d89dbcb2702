//! The Lua scripts: every state change of the store is one of them, run atomically by Redis.
//! Their sources sit beside this file (`lua/*.lua`), each headed by its KEYS, ARGV and answer.

use std::sync::LazyLock;

use ::redis::{
    FromRedisValue, RedisResult, Script, ServerErrorKind, ToRedisArgs, aio::ConnectionLike,
};

/// One Lua script: its source and SHA1, run by EVALSHA.
pub(crate) struct Lua {
    code: &'static str,
    script: Script,
}

impl Lua {
    fn new(code: &'static str) -> Self {
        Self {
            code,
            script: Script::new(code),
        }
    }

    /// Starts a call of this script.
    pub(crate) fn call(&'static self) -> Call {
        Call {
            lua: self,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// A prepared script call: keys and arguments.
pub(crate) struct Call {
    lua: &'static Lua,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Call {
    /// Adds a key (`KEYS[i]`). The first key routes the call in a cluster.
    pub(crate) fn key(&mut self, k: impl ToRedisArgs) -> &mut Self {
        k.write_redis_args(&mut self.keys);
        self
    }

    /// Adds an argument (`ARGV[i]`).
    pub(crate) fn arg(&mut self, a: impl ToRedisArgs) -> &mut Self {
        a.write_redis_args(&mut self.args);
        self
    }

    fn cmd(&self, verb: &str, body: &str) -> ::redis::Cmd {
        let mut c = ::redis::cmd(verb);
        c.arg(body)
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        c
    }

    /// Runs the script by EVALSHA. A server that does not know it yet (a restarted Redis, a new
    /// cluster node) gets the source once by EVAL, on the node that owns the keys, which also
    /// caches it there. (SCRIPT LOAD would go to every node of a cluster and fail while any one
    /// is down.)
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        con: &mut impl ConnectionLike,
    ) -> RedisResult<T> {
        match self
            .cmd("EVALSHA", self.lua.script.get_hash())
            .query_async(con)
            .await
        {
            Err(e) if e.kind() == ::redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.cmd("EVAL", self.lua.code).query_async(con).await
            }
            other => other,
        }
    }
}

/// Takes a lease: SET + fence INCR, see `lua/acquire.lua`.
pub(crate) static ACQUIRE: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(include_str!("lua/acquire.lua")));
/// Reads how many leases stand, see `lua/lease_expiries.lua`.
pub(crate) static LEASE_EXPIRIES: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(include_str!("lua/lease_expiries.lua")));
/// Renews many leases and records liveness, see `lua/beat.lua`.
pub(crate) static BEAT: LazyLock<Lua> = LazyLock::new(|| Lua::new(include_str!("lua/beat.lua")));
/// Releases a lease and publishes the handover, see `lua/release.lua`.
pub(crate) static RELEASE: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(include_str!("lua/release.lua")));
/// A fence-checked state change and PUBLISH, see `lua/publish.lua`.
pub(crate) static PUBLISH: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(include_str!("lua/publish.lua")));
/// Fence-checked checkpoints, see `lua/checkpoint.lua`.
pub(crate) static CHECKPOINT: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(include_str!("lua/checkpoint.lua")));
/// Declares stale streams DEAD once, see `lua/sweep.lua`.
pub(crate) static SWEEP: LazyLock<Lua> = LazyLock::new(|| Lua::new(include_str!("lua/sweep.lua")));
/// Forgets a deleted stream, see `lua/remove.lua`.
pub(crate) static REMOVE: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(include_str!("lua/remove.lua")));
/// Takes a pool slot, see `lua/pool_acquire.lua`.
pub(crate) static POOL_ACQUIRE: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(include_str!("lua/pool_acquire.lua")));
/// Frees a pool slot, see `lua/pool_release.lua`.
pub(crate) static POOL_RELEASE: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(include_str!("lua/pool_release.lua")));
