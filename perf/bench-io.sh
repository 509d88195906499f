#!/bin/sh
# Compares the transport backends: for each of mmsg and uring, RUNS times, starts the release
# server with one shard on 127.0.0.1:5960, drives it with examples/udp_load (OPTIONS to the
# server, one receive + one send each) and prints the load tool's line.
#
# Usage (from the repository root, after `cargo build --release --examples`), under the
# machine's benchmark lock:
#   flock /tmp/bench.lock perf/bench-io.sh [RUNS] [udp_load options...]
# e.g. a closed-loop saturation run:   flock /tmp/bench.lock perf/bench-io.sh 3
#      a fixed offered load:           flock /tmp/bench.lock perf/bench-io.sh 3 --rate 50000
# The load tool is pinned to the last CPU; the server pins its shard to CPU 0 itself.
set -eu
T=${CARGO_TARGET_DIR:-target}/release
RUNS=${1:-3}
[ $# -gt 0 ] && shift
LAST_CPU=$(($(nproc) - 1))
# Runs alternate between the backends so that load from elsewhere on the machine falls on both.
for run in $(seq 1 "$RUNS"); do
  for backend in ${BACKENDS:-mmsg uring}; do
    "$T/sipshard" --listen 127.0.0.1:5960 --shards 1 --io "$backend" --log warn &
    pid=$!
    sleep 0.5
    printf '%s run=%s loadavg=%s ' "$backend" "$run" "$(cut -d' ' -f1 /proc/loadavg)"
    taskset -c "$LAST_CPU" "$T/examples/udp_load" --target 127.0.0.1:5960 --duration 8 \
      --pid "$pid" "$@"
    kill "$pid"
    wait "$pid" || true
  done
done
