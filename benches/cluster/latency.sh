#!/usr/bin/env bash
# create -> ok and create -> tablet assignment through one engine + two hubs, against
# the single process (file journal) and the `both` node (engine and hub in one
# process on the stream), in one script run, on one nats-server and on an R3
# cluster of three (issue 11, "Benchmarks"; docs/performance.md "Region on NATS").
#
# Each run starts fresh nodes on a fresh region. The load (`opcenter sim`): TABLETS
# tablets sending POS fixes/s in total, RATE creates/s from one producer, 4 consoles
# and 1 supervisor, for DUR s. In the hubs mode the producer, tablets and supervisor
# are on hub B and the consoles on hub A (`--console-server`), so every create and
# assignment crosses engine -> stream -> hub. CPU per create = CPU seconds of every
# opcenter process of the mode (window + settle, from /proc/<pid>/stat) / creates.
#
#   cargo build --release --bin opcenter
#   benches/cluster/latency.sh [RUNS=3] [RATE=50] [POS=100] [TOPOS="single r3"] [MODES="file both hubs"]
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/cluster/lib.sh
RUNS=${1:-3}
RATE=${2:-50}
POS=${3:-100}
TOPOS=${4:-single r3}
MODES=${5:-file both hubs}
TABLETS=${TABLETS:-100}
DUR=${DUR:-10}

# One measured run of MODE: the load, one line of figures printed and kept.
measure() {
    local mode=$1 run=$2 nats0 nats line
    nats0=$(nats_cpu)
    sim_run "$TOPO $mode run $run" --tablets "$TABLETS" --consoles 4 --supervisors 1 \
        --incident-rate "$RATE" --position-rate "$POS" --duration "$DUR" --settle 5 || return 0
    nats=$(echo "$(nats_cpu) - $nats0" | bc)
    line=$(echo "$OUT" | json "' '.join(str(x) for x in [
        r['latency']['create_ok']['p50_us']/1000, r['latency']['create_ok']['p99_us']/1000,
        r['latency']['create_assignment']['p50_us']/1000, r['latency']['create_assignment']['p99_us']/1000,
        r['incidents']['created'], r['incidents']['create_errors'], r['incidents']['lost'],
        round(1000*$NODES_CPU/max(1, r['incidents']['created']), 3),
        r['tool_cpu_s'], round(r['throughput']['positions_sent_per_s']),
        r['latency']['position_staleness']['p50_us']/1000])")
    set -- $line
    printf '%s %-5s run %s: create->ok p50 %.2f p99 %.2f ms | ->assignment p50 %.2f p99 %.2f ms | created %s errors %s lost %s | nodes CPU %s ms/create | nats CPU %.1f s | tool CPU %s s | fixes %s/s, staleness p50 %s ms\n' \
        "$TOPO" "$mode" "$run" "$1" "$2" "$3" "$4" "$5" "$6" "$7" "$8" "$nats" "$9" "${10}" "${11}"
    echo "$line $nats" >>"$T/res-$TOPO-$mode"
}

load_note
echo "# runs $RUNS, $RATE creates/s, $POS fixes/s over $TABLETS tablets, ${DUR} s window"
for TOPO in $TOPOS; do
    nats_up "$TOPO"
    rounds "$RUNS" "$MODES" l measure
    for mode in $MODES; do
        f="$T/res-$TOPO-$mode"
        [ -s "$f" ] || continue
        printf 'MEDIAN %s %-5s: create->ok p50 %.2f p99 %.2f ms | ->assignment p50 %.2f p99 %.2f ms | nodes CPU %.3f ms/create | nats CPU %.1f s | tool CPU %.1f s\n' \
            "$TOPO" "$mode" "$(median "$f" 1)" "$(median "$f" 2)" "$(median "$f" 3)" "$(median "$f" 4)" \
            "$(median "$f" 8)" "$(median "$f" 12)" "$(median "$f" 9)"
    done
    nats_down
done
