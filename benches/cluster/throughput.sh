#!/usr/bin/env bash
# Durable creates/s through the region's stream (issue 11, "Benchmarks": target
# >= 20 000/s with pipelined appends), in one script run: the trivial sender (the
# load tool's own ceiling: it answers and echoes creates and stores nothing), the
# single process on its file journal (fsync on), the `both` node (pipelined group
# commit, `cluster.pipeline_depth` 8) and `both1` (the same, one batch at a time),
# and one engine + two hubs, on one nats-server and on an R3 cluster.
#
# The load: PRODUCERS dispatchers send a burst of N creates, closed loop (`--window
# W`: never more than W creates beyond what the console has received), and one
# console counts `created` events; durable creates/s = its deliveries/s (every
# `created` leaves only after the append was acknowledged). In the hubs mode the
# producers are on hub B and the console on hub A. CPU per create = CPU seconds
# of the mode's opcenter processes / creates; the nats-servers' CPU is shown apart.
#
#   cargo build --release --bin opcenter
#   cargo build --release -p opcenter-sim --example trivial_sender
#   benches/cluster/throughput.sh [RUNS=3] [N=20000] [TOPOS="single r3"] [MODES="trivial file both1 both hubs"]
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/cluster/lib.sh
RUNS=${1:-3}
N=${2:-20000}
TOPOS=${3:-single r3}
MODES=${4:-trivial file both1 both hubs}
PRODUCERS=${PRODUCERS:-4}
W=${W:-2000}

# One measured run of MODE: the burst, one line of figures printed and kept.
measure() {
    local mode=$1 run=$2 nats0 nats line
    nats0=$(nats_cpu)
    sim_run "$TOPO $mode run $run" --fanout --consoles 1 --producers "$PRODUCERS" \
        --burst "$N" --window "$W" --duration 1 --settle 120 || return 0
    nats=$(echo "$(nats_cpu) - $nats0" | bc)
    line=$(echo "$OUT" | json "' '.join(str(x) for x in [
        round(r['throughput']['deliveries_per_s']), r['incidents']['created'],
        r['incidents']['create_errors'], r['incidents']['lost'],
        round(1e6*$NODES_CPU/max(1, r['incidents']['created']), 1),
        r['tool_cpu_s'], r['latency']['create_ok']['p50_us']/1000, r['latency']['create_ok']['p99_us']/1000])")
    set -- $line
    printf '%s %-7s run %s: durable creates/s %s | created %s errors %s lost %s | nodes CPU %s us/create | nats CPU %s s | tool CPU %s s | create->ok p50 %s p99 %s ms\n' \
        "$TOPO" "$mode" "$run" "$1" "$2" "$3" "$4" "$5" "$nats" "$6" "$7" "$8"
    echo "$line $nats" >>"$T/res-$TOPO-$mode"
}

load_note
echo "# runs $RUNS, burst $N creates from $PRODUCERS producers, window $W, 1 console"
for TOPO in $TOPOS; do
    nats_up "$TOPO"
    rounds "$RUNS" "$MODES" t measure
    for mode in $MODES; do
        f="$T/res-$TOPO-$mode"
        [ -s "$f" ] || continue
        printf 'MEDIAN %s %-7s: durable creates/s %.0f | nodes CPU %.1f us/create | nats CPU %.1f s | tool CPU %.1f s\n' \
            "$TOPO" "$mode" "$(median "$f" 1)" "$(median "$f" 5)" "$(median "$f" 9)" "$(median "$f" 6)"
    done
    nats_down
done
