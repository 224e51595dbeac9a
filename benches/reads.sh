#!/usr/bin/env bash
# Read commands near the socket floor (issue 13, target 2; docs/performance.md "Read
# commands"), every side in one script run.
#
# Per run: a fresh release server; in the background 5 000 tablets sending 2 000
# positions/s in total and one supervisor on `positions` (one `opcenter sim`); once they
# are all online, READERS closed-loop dispatcher sessions (`opcenter sim --readers`: send
# one read, wait for its reply, send the next) for DURATION s of each kind in turn:
#   base       no readers: what the positions alone cost the server (CPU per second)
#   ws-ping    a WebSocket ping control frame, answered with a pong by tungstenite
#   ping       `ping` with an id, answered `ok` by the session
#   recommend  `incident.recommend` at a random location (5 000 units online)
#   resume     `subscribe` to `incidents` with `since` the previous reply's cut (memory)
# Then the floor, same run, no other load: the trivial sender
# (crates/opcenter-sim/src/trivial.rs: one thread, answers as it reads) with ws-ping and
# ping readers.
# Printed per run and as medians over runs: round trip p50 / p99 (µs, as the tool sees
# it: request written → reply read), reads/s, the server's CPU µs per read (from
# /proc/PID/stat: CPU over the readers' window minus the base window's CPU per second
# times that window, over the reads; for the trivial sender all of its CPU), and the
# load tool's own CPU seconds.
#
# Usage: benches/reads.sh [RUNS=3] [DURATION=10] [READERS=1] [ENCODING=json]
# Needs (release: this is a benchmark):
#   cargo build --release --bin opcenter
#   cargo build --release -p opcenter-sim --example trivial_sender
# Targets 127.0.0.1 only; every run is bounded (--duration, timeout). Logs and JSON
# reports stay in $LOGDIR. KINDS (default "base ws-ping ping recommend resume") picks
# the kinds against opcenter; TABLETS / RATE change the background load.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
DURATION=${2:-10}
READERS=${3:-1}
ENCODING=${4:-json}
KINDS=${KINDS:-base ws-ping ping recommend resume}
TABLETS=${TABLETS:-5000}
RATE=${RATE:-2000}
BIN=${BIN:-target/release/opcenter}
TRIVIAL=${TRIVIAL:-target/release/examples/trivial_sender}
[ -x "$BIN" ] || { echo "build first: cargo build --release --bin opcenter" >&2; exit 1; }
[ -x "$TRIVIAL" ] || { echo "build first: cargo build --release -p opcenter-sim --example trivial_sender" >&2; exit 1; }
LOGDIR=${LOGDIR:-/tmp/opcenter-reads-floor}
rm -rf "$LOGDIR"
# PIDS, cleanup at exit, wait_listen.
source benches/common/serve.sh

SECRET=reads-floor-secret-of-at-least-32-bytes
printf '[server]\nlisten = "127.0.0.1:0"\n[storage]\ndata_dir = "%s/data"\n[auth]\njwt_secret = "%s"\n' \
  "$TMP" "$SECRET" > "$TMP/opcenter.toml"
quiet=(--tablets 0 --consoles 0 --supervisors 0 --producers 0 --incident-rate 0 --position-rate 0
       --no-verify --settle 1 --encoding "$ENCODING" --json)

readers() { # NAME ADDR PID KIND: one closed-loop reader run, its JSON report kept
  local name=$1 addr=$2 pid=$3 kind=$4 n=$READERS
  [ "$kind" = base ] && { n=0; kind=ping; }
  timeout $((DURATION + 120)) "$BIN" sim --server "$addr" --secret "$SECRET" --pid "$pid" "${quiet[@]}" \
    --readers "$n" --read-kind "$kind" --duration "$DURATION" \
    > "$LOGDIR/$name.json" 2> "$LOGDIR/$name.err" || echo "run $name exited non-zero" >&2
}

for run in $(seq "$RUNS"); do
  rm -rf "$TMP/data"
  # The per-session command budget is lifted: a closed-loop reader sends thousands of
  # reads a second, and a resume costs 250 tokens (docs/protocol.md "Command weights").
  OPCENTER_HUB__SESSION_RATE_PER_S=1000000000 OPCENTER_HUB__SESSION_BURST=1000000000 RUST_LOG=warn \
    "$BIN" serve --config "$TMP/opcenter.toml" > "$TMP/srv.out" 2> "$LOGDIR/server-$run.err" &
  SRV=$!; PIDS+=("$SRV")
  ADDR=$(wait_listen "$TMP/srv.out")
  # The background load, for longer than the readers need; stopped below.
  "$BIN" sim --server "$ADDR" --secret "$SECRET" --tablets "$TABLETS" --position-rate "$RATE" \
    --consoles 0 --supervisors 1 --producers 0 --incident-rate 0 --no-verify --encoding "$ENCODING" \
    --duration 3600 > "$LOGDIR/tablets-$run.out" 2> "$LOGDIR/tablets-$run.err" &
  TABS=$!; PIDS+=("$TABS")
  for _ in $(seq 1200); do
    grep -q '^\[load' "$LOGDIR/tablets-$run.err" 2>/dev/null && break
    kill -0 "$TABS" 2>/dev/null || { echo "tablets' sim ended early (see $LOGDIR/tablets-$run.err)" >&2; exit 1; }
    sleep 0.25
  done
  grep -q '^\[load' "$LOGDIR/tablets-$run.err" || { echo "tablets not online in 300 s" >&2; exit 1; }
  sleep 2
  for kind in $KINDS; do
    readers "opcenter-$kind-$run" "$ADDR" "$SRV" "$kind"
  done
  tail -1 "$LOGDIR/tablets-$run.err" > "$LOGDIR/tablets-$run.last"
  curl -s "http://$ADDR/metrics" > "$LOGDIR/metrics-$run.txt" || true
  kill "$TABS" 2>/dev/null || true; wait "$TABS" 2>/dev/null || true
  kill "$SRV" 2>/dev/null || true; wait "$SRV" 2>/dev/null || true

  "$TRIVIAL" 0 > "$TMP/triv.out" 2> "$LOGDIR/trivial-$run.err" &
  TRV=$!; PIDS+=("$TRV")
  TADDR=$(wait_listen "$TMP/triv.out")
  for kind in ws-ping ping; do
    readers "trivial-$kind-$run" "$TADDR" "$TRV" "$kind"
  done
  kill "$TRV" 2>/dev/null || true; wait "$TRV" 2>/dev/null || true
done

node -e '
  const fs = require("fs"), dir = process.argv[1], runs = +process.argv[2], kinds = process.argv[3].split(" ");
  const read = (f) => { try { return JSON.parse(fs.readFileSync(f, "utf8").trim().split("\n").pop()); } catch { return null; } };
  const med = (xs) => { const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b); return v.length ? v[(v.length - 1) >> 1] : NaN; };
  const rows = {};
  const sides = kinds.filter((k) => k !== "base").map((k) => "opcenter-" + k).concat(["trivial-ws-ping", "trivial-ping"]);
  for (let run = 1; run <= runs; run++) {
    const base = read(`${dir}/opcenter-base-${run}.json`);
    const bp = base && base.server_process;
    const baseRate = bp ? bp.cpu_s / base.window_s : NaN;
    if (bp) console.log(`run ${run} base: positions only, server CPU ${(100 * baseRate).toFixed(0)}% of a core`);
    for (const side of sides) {
      const r = read(`${dir}/${side}-${run}.json`);
      if (!r || !r.reads) { console.log(`run ${run} ${side.padEnd(20)} no report (see ${dir}/${side}-${run}.err)`); continue; }
      const l = r.latency.read, p = r.server_process || {}, n = r.reads.count;
      const own = side.startsWith("opcenter-") ? baseRate * r.window_s : 0;
      const row = { p50: l.p50_us, p99: l.p99_us, rate: r.reads.per_s, cpu: (p.cpu_s - own) * 1e6 / n, tool: r.tool_cpu_s, errors: r.reads.errors };
      (rows[side] = rows[side] || []).push(row);
      console.log(`run ${run} ${side.padEnd(20)} p50 ${String(row.p50).padStart(5)} µs  p99 ${String(row.p99).padStart(6)} µs  ` +
        `${Math.round(row.rate).toString().padStart(6)} reads/s  server ${row.cpu.toFixed(1).padStart(6)} µs CPU/read  tool ${(row.tool || 0).toFixed(2)} CPU-s  errors ${row.errors}`);
    }
  }
  console.log("medians:");
  for (const [side, rs] of Object.entries(rows)) {
    const m = (k) => med(rs.map((r) => r[k]));
    console.log(`  ${side.padEnd(20)} p50 ${String(m("p50")).padStart(5)} µs  p99 ${String(m("p99")).padStart(6)} µs  ` +
      `${Math.round(m("rate")).toString().padStart(6)} reads/s  server ${m("cpu").toFixed(1).padStart(6)} µs CPU/read  runs ${rs.length}`);
  }' "$LOGDIR" "$RUNS" "$KINDS"
