#!/usr/bin/env bash
# Position ingest (docs/performance.md recipe 3), every side in one script run: a fresh
# release server per run, TABLETS tablets sending RATE fixes/s in total, 5 supervisors
# subscribed to `positions`, no consoles and no incidents, JSON then MessagePack.
# Reported per run and as medians: server CPU µs per fix (server CPU over the window
# from /proc/PID/stat ÷ fixes sent in it), fixes offered/s, position items received/s,
# supervisors' staleness p50/p99 (fix `at_ms` → supervisor receive), and the load
# tool's own CPU µs per fix with the ceiling it implies (1e6 ÷ that: the fixes/s one
# full core of the tool could offer; the tool shares the two cores with the server).
#
# Usage: benches/positions.sh [RUNS=3] [RATE=50000] [TABLETS=5000] [DURATION=15]
# Needs: cargo build --release --bin opcenter
# SIDES (default "baseline opcenter" when BASE_BIN exists, else "opcenter"): side
# `baseline` is another opcenter build, BASE_BIN (default /tmp/opcenter-base), run with
# the same load tool ($BIN sim) in the same run. Targets 127.0.0.1 only; every run is
# bounded (timeout). Reports stay in LOGDIR (default /tmp/opcenter-positions).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
RATE=${2:-50000}
TABLETS=${3:-5000}
DURATION=${4:-15}
BIN=${BIN:-target/release/opcenter}
BASE_BIN=${BASE_BIN:-/tmp/opcenter-base}
if [ -z "${SIDES:-}" ]; then
  SIDES=opcenter
  [ -x "$BASE_BIN" ] && SIDES="baseline opcenter"
fi
ENCODINGS=${ENCODINGS:-json msgpack}
[ -x "$BIN" ] || { echo "build first: cargo build --release --bin opcenter" >&2; exit 1; }
LOGDIR=${LOGDIR:-/tmp/opcenter-positions}
source benches/common/serve.sh

SECRET=positions-secret-of-at-least-32-bytes-0123456789
printf '[server]\nlisten = "127.0.0.1:0"\n[storage]\ndata_dir = "%s/data"\n[auth]\njwt_secret = "%s"\n' "$TMP" "$SECRET" > "$TMP/opcenter.toml"
common=(--tablets "$TABLETS" --supervisors 5 --consoles 0 --producers 0 --incident-rate 0
        --position-rate "$RATE" --duration "$DURATION" --settle 1 --secret "$SECRET" --json)

for run in $(seq "$RUNS"); do
  for enc in $ENCODINGS; do
    for side in $SIDES; do
      rm -rf "$TMP/data" "$TMP/srv.out"
      b=$BIN; [ "$side" = baseline ] && b=$BASE_BIN
      RUST_LOG=warn "$b" serve --config "$TMP/opcenter.toml" > "$TMP/srv.out" 2> "$LOGDIR/server-$side-$enc-$run.err" &
      SRV=$!; PIDS+=("$SRV")
      ADDR=$(wait_listen "$TMP/srv.out")
      timeout 600 "$BIN" sim --server "$ADDR" --pid "$SRV" --encoding "$enc" "${common[@]}" \
        > "$LOGDIR/$side-$enc-$run.json" 2> "$LOGDIR/sim-$side-$enc-$run.err" || true
      kill "$SRV" 2>/dev/null || true
      wait "$SRV" 2>/dev/null || true
    done
  done
done

python3 - "$LOGDIR" "$SIDES" "$ENCODINGS" "$RUNS" "$RATE" "$TABLETS" <<'EOF'
import json, statistics, sys
d, sides, encs, runs, rate, tablets = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), int(sys.argv[4]), sys.argv[5], sys.argv[6]
def read(f):
    try:
        return json.loads(open(f).read().strip().splitlines()[-1])
    except Exception:
        return None
def med(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[(len(xs) - 1) // 2] if xs else float("nan")
print(f"{tablets} tablets, {rate} fixes/s asked, 5 supervisors")
rows = {}
for enc in encs:
    for side in sides:
        for run in range(1, runs + 1):
            r = read(f"{d}/{side}-{enc}-{run}.json")
            if not r:
                print(f"run {run} {enc:7} {side:8} no report (see {d}/sim-{side}-{enc}-{run}.err)")
                continue
            t, p, s = r["throughput"], r.get("server_process") or {}, r["latency"]["position_staleness"]
            row = dict(cpu=p.get("cpu_us_per_fix"), offered=t["positions_sent_per_s"], items=t["position_items_per_s"],
                       p50=s["p50_us"] / 1000, p99=s["p99_us"] / 1000, srv=p.get("cpu_percent"),
                       tool=r.get("tool_cpu_us_per_fix"), errors=sum(r.get("errors", {}).values()))
            rows.setdefault((enc, side), []).append(row)
            print(f"run {run} {enc:7} {side:8} server {row['cpu'] or 0:6.2f} µs CPU/fix ({row['srv'] or 0:3.0f}% of a core)"
                  f"  offered {row['offered']:7.0f}/s  items {row['items']:7.0f}/s  staleness p50 {row['p50']:5.0f} ms p99 {row['p99']:5.0f} ms"
                  f"  tool {row['tool'] or 0:5.2f} µs CPU/fix  errors {row['errors']}")
print("medians:")
for (enc, side), rs in rows.items():
    m = lambda k: med([r[k] for r in rs])
    tool = m("tool")
    print(f"  {enc:7} {side:8} server µs CPU/fix {m('cpu'):.2f}  offered {m('offered'):.0f}/s  items {m('items'):.0f}/s"
          f"  staleness p50 {m('p50'):.0f} ms p99 {m('p99'):.0f} ms  tool µs CPU/fix {tool:.2f}"
          f" (ceiling ~{1e6 / tool if tool == tool and tool else float('nan'):.0f} fixes/s per core)  runs {len(rs)}")
for enc in encs:
    a, b = rows.get((enc, "baseline")), rows.get((enc, "opcenter"))
    if a and b:
        print(f"  {enc}: baseline / opcenter server CPU per fix {med([r['cpu'] for r in a]) / med([r['cpu'] for r in b]):.2f}x")
EOF
