#!/usr/bin/env bash
# Replay: time from an engine node's start to serving (`listening on`) with E events
# in the region's stream (issue 11, "Benchmarks": target <= 3 s with a snapshot), in
# one script run: a region with the engine snapshot 25 000 events before the end (a
# node snapshots every 50 000 by default) and a region with no snapshot (replay
# all). The stream is filled by `fill_region` (crates/opcenter-cluster/examples:
# the day of benches/restart.rs, pipelined appends). Each start is ended with
# SIGKILL (a graceful stop would write a final snapshot and change the next run),
# then the killed node's lease is let lapse. Timed: spawn -> /healthz `ok active`.
#
#   cargo build --release --bin opcenter
#   cargo build --release -p opcenter-cluster --example fill_region
#   benches/cluster/replay.sh [RUNS=3] [E=1000000] [TOPOS="single r3"]
set -euo pipefail
cd "$(dirname "$0")/../.."
export NODE_LOG=${NODE_LOG:-info}
source benches/cluster/lib.sh
RUNS=${1:-3}
E=${2:-1000000}
TOPOS=${3:-single r3}
FILL=${FILL:-target/release/examples/fill_region}
[ -x "$FILL" ] || { echo "no $FILL: cargo build --release -p opcenter-cluster --example fill_region" >&2; exit 1; }

load_note
echo "# runs $RUNS, $E events"
for topo in $TOPOS; do
    nats_up "$topo"
    for kind in snap nosnap; do
        region="r${kind}"
        echo "$topo fill: $("$FILL" "$NATS_URL" "$region" "$E" "$REPLICAS" "$([ $kind = snap ] && echo yes || echo no)")"
        : >"$T/res-$topo-$kind"
        for run in $(seq "$RUNS"); do
            node n engine "$region"
            ms=${NODE_MS[n]}
            recovered=$(grep -o 'state recovered.*' "$T/n.err" | head -1 || true)
            echo "$topo $kind run $run: start -> active ${ms} ms ($(cpu_s "${NODE_PID[n]}") CPU-s) ${recovered}"
            echo "$ms" >>"$T/res-$topo-$kind"
            stop n KILL
            NODE_PID=()
            # The killed node held the region's lease: let it lapse
            # (`cluster.lease_ttl_s`, 3 s by default), so the next start times
            # recovery, not a wait for a dead holder's lease.
            sleep 3.5
        done
        printf 'MEDIAN %s %s: start -> active %.0f ms\n' "$topo" "$kind" "$(median "$T/res-$topo-$kind" 1)"
    done
    nats_down
done
