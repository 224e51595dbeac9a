#!/usr/bin/env bash
# `opcenter serve` on the file journal vs in the `both` role on one nats-server, in
# the same script: create -> ok p50/p99 at a steady rate, and durable creates/s in
# a burst (one console: its `created` deliveries/s, each sent after the append).
# A fresh data dir and a fresh region (stream) per run; medians of RUNS runs.
#
#   cargo build --release
#   crates/opcenter-cluster/benches/serve_compare.sh [RUNS=3] [RATE=200] [BURST=5000]
set -euo pipefail
RUNS=${1:-3}
RATE=${2:-200}
BURST=${3:-5000}
BIN=${BIN:-target/release/opcenter}
T=$(mktemp -d)
NP=$((20000 + RANDOM % 20000))
nats-server -js -a 127.0.0.1 -p "$NP" -sd "$T/nats" >"$T/nats.log" 2>&1 &
NATS=$!
SRV=
cleanup() {
    [ -n "$SRV" ] && kill "$SRV" 2>/dev/null || true
    kill "$NATS" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$T"
}
trap cleanup EXIT
sleep 1

# start KIND RUN -> sets SRV and ADDR
start() {
    local kind=$1 run=$2 cfg="$T/$1-$2.toml"
    printf '[server]\nlisten = "127.0.0.1:0"\n[storage]\ndata_dir = "%s"\n' "$T/data-$kind-$run" >"$cfg"
    if [ "$kind" = both ]; then
        printf '[cluster]\nnats = ["nats://127.0.0.1:%s"]\nregion = "r%s"\nrole = "both"\n' "$NP" "$run" >>"$cfg"
    fi
    RUST_LOG=warn "$BIN" serve --config "$cfg" >"$T/out-$kind-$run" 2>"$T/err-$kind-$run" &
    SRV=$!
    for _ in $(seq 100); do
        ADDR=$(sed -n 's/^listening on //p' "$T/out-$kind-$run")
        [ -n "$ADDR" ] && return 0
        sleep 0.1
    done
    echo "server $kind did not start" >&2
    cat "$T/err-$kind-$run" >&2
    exit 1
}

stop() {
    kill "$SRV"
    wait "$SRV" 2>/dev/null || true
    SRV=
}

json() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }

for kind in file both; do
    : >"$T/res-$kind"
    for run in $(seq "$RUNS"); do
        start "$kind" "$run"
        lat=$("$BIN" sim --server "$ADDR" --tablets 50 --consoles 1 --incident-rate "$RATE" \
            --duration 5 --pid "$SRV" --json |
            json 'r["latency"]["create_ok"]["p50_us"], r["latency"]["create_ok"]["p99_us"], r["incidents"]["create_errors"]')
        burst=$("$BIN" sim --server "$ADDR" --fanout --consoles 1 --burst "$BURST" --duration 3 \
            --settle 30 --json | json 'round(r["throughput"]["deliveries_per_s"])')
        stop
        echo "$kind run $run: create->ok p50/p99 us, errors: $lat | burst durable creates/s: $burst"
        echo "$lat $burst" >>"$T/res-$kind"
    done
    python3 - "$T/res-$kind" "$kind" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = lambda i: statistics.median(float(r[i]) for r in rows)
print(f"{sys.argv[2]}: median create->ok p50 {med(0)/1000:.2f} ms, p99 {med(1)/1000:.2f} ms; "
      f"durable creates/s {med(3):.0f}")
EOF
done
