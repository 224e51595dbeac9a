#!/usr/bin/env bash
# Fan-out comparison, one run: opcenter vs this Node `ws` hub, same load from the same
# tool (`opcenter sim --fanout`): C consoles subscribed to `incidents`, one producer
# creating a burst of N incidents; reported: `created` deliveries per second (first
# create sent → last delivery received) and create→console latency percentiles.
#
# Usage: benches/node-ws-hub/compare.sh [CONSOLES=1000] [BURST=2000] [RUNS=3] [ENCODING=json]
# Needs: `cargo build --release --bin opcenter`, `npm ci` (or `npm install`) in this folder.
# Targets 127.0.0.1 only; every run is bounded (--duration, timeout).
set -euo pipefail
cd "$(dirname "$0")/../.."
CONSOLES=${1:-1000}
BURST=${2:-2000}
RUNS=${3:-3}
ENCODING=${4:-json}
# BIN: the server binary; SIM: the load tool command (default: "$BIN sim").
BIN=${BIN:-target/release/opcenter}
read -r -a SIMCMD <<< "${SIM:-$BIN sim}"
[ -x "$BIN" ] || { echo "build first: cargo build --release --bin opcenter" >&2; exit 1; }
[ -d benches/node-ws-hub/node_modules/ws ] || (cd benches/node-ws-hub && npm install --no-audit --no-fund >/dev/null)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
TMP=$(mktemp -d)
# Logs and JSON reports of every run stay here for inspection.
LOGDIR=${LOGDIR:-/tmp/opcenter-compare}
mkdir -p "$LOGDIR"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

wait_listen() { # file -> HOST:PORT
  for _ in $(seq 100); do
    a=$(sed -n 's/^listening on //p' "$1" | head -1)
    [ -n "$a" ] && { echo "$a"; return; }
    sleep 0.1
  done
  echo "server did not start" >&2; exit 1
}

SECRET=compare-secret
printf '[server]\nlisten = "127.0.0.1:0"\n[storage]\ndata_dir = "%s/data"\n[auth]\njwt_secret = "%s"\n' "$TMP" "$SECRET" > "$TMP/opcenter.toml"

for run in $(seq "$RUNS"); do
  # Remove the previous run's output first, or its `listening on` line is read back.
  rm -rf "$TMP/data" "$TMP/op.out" "$TMP/node.out"
  RUST_LOG=warn "$BIN" serve --config "$TMP/opcenter.toml" > "$TMP/op.out" 2> "$TMP/op.err" &
  OP=$!; PIDS+=("$OP")
  OPADDR=$(wait_listen "$TMP/op.out")
  node benches/node-ws-hub/hub.js 0 > "$TMP/node.out" 2> "$TMP/node.err" &
  NODE=$!; PIDS+=("$NODE")
  NODEADDR=$(wait_listen "$TMP/node.out")
  common=(--fanout --consoles "$CONSOLES" --burst "$BURST" --duration 3 --settle 30 --encoding "$ENCODING" --json)
  timeout 120 "${SIMCMD[@]}" --server "$OPADDR" --secret "$SECRET" --pid "$OP" "${common[@]}" > "$TMP/op.json" 2> "$LOGDIR/sim-opcenter-$run.err" || true
  # The Node peer has no HTTP API (no LOST check) and speaks JSON only.
  if [ "$ENCODING" = json ]; then
    timeout 120 "${SIMCMD[@]}" --server "$NODEADDR" --pid "$NODE" --no-verify "${common[@]}" > "$TMP/node.json" 2> "$LOGDIR/sim-node-$run.err" || true
  else
    echo '{}' > "$TMP/node.json"
  fi
  kill "$OP" "$NODE" 2>/dev/null || true
  wait "$OP" "$NODE" 2>/dev/null || true
  cp "$TMP/op.json" "$LOGDIR/opcenter-$run.json"; cp "$TMP/node.json" "$LOGDIR/node-$run.json"
  cp "$TMP/op.err" "$LOGDIR/server-opcenter-$run.err"; cp "$TMP/node.err" "$LOGDIR/server-node-$run.err"
  node -e '
    const [run, a, b] = process.argv.slice(1);
    const f = (name, file) => {
      let r; try { r = JSON.parse(require("fs").readFileSync(file, "utf8").trim().split("\n").pop()); } catch { r = {}; }
      const t = r.throughput || {}, l = (r.latency || {}).fanout || {}, p = r.server_process || {};
      console.log(`run ${run} ${name.padEnd(8)} deliveries/s ${Math.round(t.deliveries_per_s || 0).toString().padStart(9)}` +
        `  delivered ${t.created_deliveries}/${t.created_deliveries_expected}` +
        `  create→console p50 ${((l.p50_us||0)/1000).toFixed(1)}ms p99 ${((l.p99_us||0)/1000).toFixed(1)}ms` +
        `  server ${(p.cpu_s||0).toFixed(2)} CPU-s = ${Math.round(p.deliveries_per_cpu_s||0)} deliveries/CPU-s  lost ${(r.incidents||{}).lost}`);
    };
    f("opcenter", a); f("node-ws", b);' "$run" "$TMP/op.json" "$TMP/node.json"
done
