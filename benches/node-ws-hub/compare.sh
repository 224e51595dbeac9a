#!/usr/bin/env bash
# Fan-out comparison, every side in one script run: the trivial sender (the ceiling of
# the receiver: it only writes pre-encoded frames), opcenter, and this Node `ws` hub,
# driven by the same load tool (`opcenter sim --fanout`): C consoles subscribed to
# `incidents` (raw receivers: large buffers, many frames per read), one producer
# creating N incidents in a closed loop (at most WINDOW creates beyond what the slowest
# console has received). Reported per run and as medians: `created` deliveries per
# second (first create sent → last delivery), server CPU µs per delivery (from
# /proc/PID/stat), create→console p50/p99, the load tool's own CPU, and lost ones.
#
# Usage: benches/node-ws-hub/compare.sh [CONSOLES=1000] [EVENTS=10000] [RUNS=3] [ENCODING=json] [WINDOW=64]
# Needs (release: this is a benchmark):
#   cargo build --release --bin opcenter
#   cargo build --release -p opcenter-sim --example trivial_sender
#   npm ci (or npm install) in this folder.
# Targets 127.0.0.1 only; every run is bounded (timeout). SIDES (default
# "trivial opcenter node") picks and orders the servers; side `baseline` is a second
# opcenter build, BASE_BIN (an older commit, to compare a change in the same run).
set -euo pipefail
cd "$(dirname "$0")/../.."
CONSOLES=${1:-1000}
EVENTS=${2:-10000}
RUNS=${3:-3}
ENCODING=${4:-json}
WINDOW=${5:-64}
SIDES=${SIDES:-trivial opcenter node}
# BIN: the server binary; SIM: the load tool command (default: "$BIN sim").
BIN=${BIN:-target/release/opcenter}
TRIVIAL=${TRIVIAL:-target/release/examples/trivial_sender}
read -r -a SIMCMD <<< "${SIM:-$BIN sim}"
[ -x "$BIN" ] || { echo "build first: cargo build --release --bin opcenter" >&2; exit 1; }
[ -x "$TRIVIAL" ] || { echo "build first: cargo build --release -p opcenter-sim --example trivial_sender" >&2; exit 1; }
[ -d benches/node-ws-hub/node_modules/ws ] || (cd benches/node-ws-hub && npm install --no-audit --no-fund >/dev/null)
# Logs and JSON reports of every run stay here for inspection.
LOGDIR=${LOGDIR:-/tmp/opcenter-compare}
source benches/common/serve.sh

SECRET=compare-secret-of-at-least-32-bytes-0123456789
printf '[server]\nlisten = "127.0.0.1:0"\n[storage]\ndata_dir = "%s/data"\n[auth]\njwt_secret = "%s"\n' "$TMP" "$SECRET" > "$TMP/opcenter.toml"
common=(--fanout --consoles "$CONSOLES" --burst "$EVENTS" --window "$WINDOW" --duration 1 --settle 120 --encoding "$ENCODING" --json)

for run in $(seq "$RUNS"); do
  for side in $SIDES; do
    case "$ENCODING:$side" in json:*|*:opcenter|*:baseline) ;; *) continue ;; esac # the peers speak JSON only
    start_side "$side" "$run"
    timeout 300 "${SIMCMD[@]}" --server "$ADDR" --pid "$SRV" "${extra[@]}" "${common[@]}" \
      > "$LOGDIR/$side-$run.json" 2> "$LOGDIR/sim-$side-$run.err" || true
    stop_side "$side" "$run"
  done
done

node -e '
  const fs = require("fs"), dir = process.argv[1], sides = process.argv[2].split(" "), runs = +process.argv[3];
  const read = (f) => { try { return JSON.parse(fs.readFileSync(f, "utf8").trim().split("\n").pop()); } catch { return null; } };
  const med = (xs) => { const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b); return v.length ? v[(v.length - 1) >> 1] : NaN; };
  const rows = {};
  for (const side of sides) for (let run = 1; run <= runs; run++) {
    const r = read(`${dir}/${side}-${run}.json`);
    if (!r) { console.log(`run ${run} ${side.padEnd(8)} no report (see ${dir}/sim-${side}-${run}.err)`); continue; }
    const t = r.throughput || {}, l = (r.latency || {}).fanout || {}, p = r.server_process || {};
    let writes = NaN, deliveries = NaN;
    try {
      const m = fs.readFileSync(`${dir}/metrics-${side}-${run}.txt`, "utf8");
      const v = (name) => +((m.match(new RegExp(`^${name} (\\S+)`, "m")) || [])[1]);
      writes = v("opcenter_socket_writes_total"); deliveries = v("opcenter_event_deliveries_total");
    } catch {}
    const row = { per_write: deliveries / writes, rate: t.deliveries_per_s, cpu: p.cpu_us_per_delivery, p50: l.p50_us / 1000, p99: l.p99_us / 1000,
      tool: r.tool_cpu_s, bytes: t.created_bytes_mean, ok: t.created_deliveries === t.created_deliveries_expected && t.created_deliveries > 0,
      lost: (r.incidents || {}).lost };
    (rows[side] = rows[side] || []).push(row);
    console.log(`run ${run} ${side.padEnd(8)} deliveries/s ${Math.round(row.rate).toString().padStart(9)}` +
      `  server ${(row.cpu || 0).toFixed(3)} µs CPU/delivery  p50 ${row.p50.toFixed(1)}ms p99 ${row.p99.toFixed(1)}ms` +
      (Number.isFinite(row.per_write) ? `  ${row.per_write.toFixed(1)} deliveries/write` : "") +
      `  tool ${(row.tool || 0).toFixed(2)} CPU-s  ${Math.round(row.bytes || 0)} B/event` +
      `  delivered ${t.created_deliveries}/${t.created_deliveries_expected}${row.ok ? "" : " INCOMPLETE"}  lost ${row.lost}`);
  }
  console.log("medians:");
  for (const [side, rs] of Object.entries(rows)) {
    const m = (k) => med(rs.map((r) => r[k]));
    console.log(`  ${side.padEnd(8)} deliveries/s ${Math.round(m("rate"))}  µs CPU/delivery ${m("cpu").toFixed(3)}` +
      (Number.isFinite(m("per_write")) ? `  deliveries/write ${m("per_write").toFixed(1)}` : "") +
      `  p50 ${m("p50").toFixed(1)}ms p99 ${m("p99").toFixed(1)}ms  tool CPU-s ${m("tool").toFixed(2)}  complete ${rs.filter((r) => r.ok).length}/${rs.length}`);
  }
  for (const side of ["opcenter", "baseline", "trivial"]) {
    if (!rows[side] || !rows.node) continue;
    const r = med(rows[side].map((r) => r.rate)) / med(rows.node.map((r) => r.rate));
    const c = med(rows.node.map((r) => r.cpu)) / med(rows[side].map((r) => r.cpu));
    console.log(`  ${side} / node: deliveries/s ${r.toFixed(2)}x, CPU per delivery ${c.toFixed(2)}x less`);
  }' "$LOGDIR" "$SIDES" "$RUNS"
