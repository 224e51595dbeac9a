#!/usr/bin/env bash
# Fan-out: C consoles split over two hub processes vs C on one (issue 11,
# "Benchmarks"), in one script run on one nats-server:
#   both  - one process, engine and hub (the single-process fan-out on the stream);
#   hub1  - engine node + one hub node holding all C consoles;
#   hub2  - engine node + two hub nodes, C/2 consoles each (`--console-server` x2).
# The load: one producer, a burst of N creates, closed loop (`--window 64`, as in
# benches/node-ws-hub/compare.sh), every console subscribed to `incidents`; each
# create is one `created` event per console. Reported: deliveries/s (all consoles,
# first create sent -> last delivery), delivered/expected, create -> console p50/p99,
# CPU per delivery = CPU seconds of every opcenter process of the mode / deliveries,
# and the tool's own CPU.
#
#   cargo build --release --bin opcenter
#   benches/cluster/fanout.sh [RUNS=3] [C=2000] [N=1000] [MODES="both hub1 hub2"]
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/cluster/lib.sh
RUNS=${1:-3}
C=${2:-2000}
N=${3:-1000}
MODES=${4:-both hub1 hub2}
ulimit -n 65536 2>/dev/null || true

# One measured run of MODE: the burst to every console, one line printed and kept.
measure() {
    local mode=$1 run=$2 line
    sim_run "$mode run $run" --fanout --consoles "$C" --burst "$N" --window 64 \
        --duration 1 --settle 180 || return 0
    line=$(echo "$OUT" | json "' '.join(str(x) for x in [
        round(r['throughput']['deliveries_per_s']), r['throughput']['created_deliveries'],
        r['throughput']['created_deliveries_expected'],
        round(1e6*$NODES_CPU/max(1, r['throughput']['created_deliveries']), 3),
        r['latency']['fanout']['p50_us']/1000, r['latency']['fanout']['p99_us']/1000,
        r['tool_cpu_s'], r['incidents']['lost']])")
    set -- $line
    printf '%-4s run %s: deliveries/s %s | delivered %s of %s | nodes CPU %s us/delivery | create->console p50 %s p99 %s ms | tool CPU %s s | lost %s\n' \
        "$mode" "$run" "$@"
    echo "$line" >>"$T/res-$TOPO-$mode"
}

load_note
echo "# runs $RUNS, $C consoles, burst $N creates (window 64), one nats-server"
TOPO=single
nats_up "$TOPO"
rounds "$RUNS" "$MODES" f measure
for mode in $MODES; do
    f="$T/res-$TOPO-$mode"
    [ -s "$f" ] || continue
    printf 'MEDIAN %-4s: deliveries/s %.0f | nodes CPU %.3f us/delivery | create->console p50 %.1f p99 %.1f ms | tool CPU %.1f s\n' \
        "$mode" "$(median "$f" 1)" "$(median "$f" 4)" "$(median "$f" 5)" "$(median "$f" 6)" "$(median "$f" 7)"
done
