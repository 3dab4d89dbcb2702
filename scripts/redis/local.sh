#!/usr/bin/env bash
# A throwaway local Redis for demos and end-to-end runs: a single node or a three-master Redis
# Cluster, no persistence, loopback only, everything (data, logs, pid files) under DIR.
# (The crates/coord tests and bench start their own servers; this is for everything else.)
#
#   scripts/redis/local.sh server  DIR [PORT]   # prints redis://127.0.0.1:PORT          (6379)
#   scripts/redis/local.sh cluster DIR [PORT]   # masters on PORT..PORT+2, prints
#                                               # redis+cluster://127.0.0.1:PORT,...     (7000)
#   scripts/redis/local.sh stop    DIR          # stops the servers started in DIR (by pid)
#
# Needs redis-server and redis-cli (scripts/install-test-deps installs them).
set -euo pipefail

die() { echo "local.sh: $*" >&2; exit 1; }
command -v redis-server >/dev/null || die "redis-server is not on PATH (apt-get install redis-server redis-tools)"
command -v redis-cli >/dev/null || die "redis-cli is not on PATH (apt-get install redis-tools)"

start_node() { # DIR PORT [extra redis-server args...]
  local dir=$1 port=$2; shift 2
  mkdir -p "$dir/$port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --protected-mode no \
    --dir "$dir/$port" --logfile "$dir/$port/redis.log" --pidfile "$dir/$port/redis.pid" \
    --daemonize yes "$@" >/dev/null
  for _ in $(seq 1 200); do
    if [ "$(redis-cli -p "$port" PING 2>/dev/null)" = "PONG" ]; then return 0; fi
    sleep 0.05
  done
  die "redis-server on port $port did not answer PING (log: $dir/$port/redis.log)"
}

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 server|cluster|stop DIR [PORT]"
case "$cmd" in
  server)
    port=${3:-6379}
    start_node "$dir" "$port"
    echo "redis://127.0.0.1:$port"
    ;;
  cluster)
    base=${3:-7000}
    ports=("$base" "$((base + 1))" "$((base + 2))")
    for p in "${ports[@]}"; do
      start_node "$dir" "$p" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000
    done
    redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >"$dir/cluster-create.log" 2>&1 \
      || die "redis-cli --cluster create failed (see $dir/cluster-create.log)"
    for p in "${ports[@]}"; do
      ok=
      for _ in $(seq 1 300); do
        if redis-cli -p "$p" CLUSTER INFO 2>/dev/null | grep -q '^cluster_state:ok'; then ok=1; break; fi
        sleep 0.1
      done
      [ -n "$ok" ] || die "node $p did not reach cluster_state:ok"
    done
    echo "redis+cluster://127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
    ;;
  stop)
    for pidfile in "$dir"/*/redis.pid; do
      [ -f "$pidfile" ] || continue
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
      rm -f "$pidfile"
    done
    ;;
  *) die "unknown command $cmd (server, cluster, stop)" ;;
esac
