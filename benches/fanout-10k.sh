#!/usr/bin/env bash
# 10 000 consoles at a steady 100 events/s (issue 13, target 1b), every side in one script
# run: the trivial sender (the load tool's ceiling at 10 000 consoles: it only writes
# pre-encoded frames) and opcenter, driven by the same load (`opcenter sim --fanout`,
# raw receivers; one producer creating incidents open-loop at RATE/s for DURATION s).
# Reported per run and as medians: creates answered / offered / asked, `created`
# deliveries received / expected (every event must arrive), create → console p50 / p99 /
# max, server CPU µs per delivery (/proc/PID/stat), the tool's own CPU, LOST.
#
# Usage: benches/fanout-10k.sh [CONSOLES=10000] [RATE=100] [DURATION=20] [RUNS=3]
# Needs (release: this is a benchmark):
#   cargo build --release --bin opcenter
#   cargo build --release -p opcenter-sim --example trivial_sender
# SIDES (default "trivial opcenter") picks and orders the servers; side `baseline` is a
# second opcenter build, BASE_BIN (to compare a change in the same run). BIN, TRIVIAL,
# SIM override the binaries (SIM default: "$BIN sim"). Loopback only; every run bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
CONSOLES=${1:-10000}
RATE=${2:-100}
DURATION=${3:-20}
RUNS=${4:-3}
SIDES=${SIDES:-trivial opcenter}
BIN=${BIN:-target/release/opcenter}
TRIVIAL=${TRIVIAL:-target/release/examples/trivial_sender}
read -r -a SIMCMD <<< "${SIM:-$BIN sim}"
[ -x "$BIN" ] || { echo "build first: cargo build --release --bin opcenter" >&2; exit 1; }
[ -x "$TRIVIAL" ] || { echo "build first: cargo build --release -p opcenter-sim --example trivial_sender" >&2; exit 1; }
need=$((CONSOLES + 100))
[ "$(ulimit -n)" -ge "$need" ] || { echo "open files limit $(ulimit -n) < $need: raise it (ulimit -n)" >&2; exit 1; }
LOGDIR=${LOGDIR:-/tmp/opcenter-fanout-10k}
# The open-files limit, TMP, LOGDIR emptied of reports, PIDS killed at exit, wait_listen.
source benches/common/serve.sh

SECRET=fanout-10k-secret-of-at-least-32-bytes-0123456789
# The queue bound per console stays the default: a console that falls behind is closed
# (4008) and shows up as missing deliveries, not hidden.
printf '[server]\nlisten = "127.0.0.1:0"\n[storage]\ndata_dir = "%s/data"\n[auth]\njwt_secret = "%s"\n' "$TMP" "$SECRET" > "$TMP/opcenter.toml"
common=(--fanout --consoles "$CONSOLES" --incident-rate "$RATE" --duration "$DURATION" --settle 60 --json)

for run in $(seq "$RUNS"); do
  for side in $SIDES; do
    start_side "$side" "$run"
    timeout 600 "${SIMCMD[@]}" --server "$ADDR" --pid "$SRV" "${extra[@]}" "${common[@]}" \
      > "$LOGDIR/$side-$run.json" 2> "$LOGDIR/sim-$side-$run.err" || true
    stop_side "$side" "$run"
  done
done

python3 - "$LOGDIR" "$SIDES" "$RUNS" "$RATE" "$DURATION" <<'EOF'
import json, re, statistics, sys
d, sides, runs, rate, duration = sys.argv[1], sys.argv[2].split(), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
def med(xs):
    xs = sorted(x for x in xs if x == x)
    return xs[(len(xs) - 1) // 2] if xs else float("nan")
rows = {}
for run in range(1, runs + 1):
    for side in sides:
        try:
            r = json.loads(open(f"{d}/{side}-{run}.json").read().strip().split("\n")[-1])
        except Exception:
            print(f"run {run} {side:<8} no report (see {d}/sim-{side}-{run}.err)")
            continue
        t, i, p = r.get("throughput", {}), r.get("incidents", {}), r.get("server_process", {})
        f = r.get("latency", {}).get("fanout", {})
        per_write = float("nan")
        try:
            m = open(f"{d}/metrics-{side}-{run}.txt").read()
            v = lambda n: float(re.search(rf"^{n} (\S+)", m, re.M).group(1))
            per_write = v("opcenter_event_deliveries_total") / v("opcenter_socket_writes_total")
        except Exception:
            pass
        got, want = t.get("created_deliveries", 0), t.get("created_deliveries_expected", -1)
        row = dict(rate=t.get("deliveries_per_s", float("nan")), p50=f.get("p50_us", float("nan")) / 1000,
                   p99=f.get("p99_us", float("nan")) / 1000, mx=f.get("max_us", float("nan")) / 1000,
                   cpu=p.get("cpu_us_per_delivery", float("nan")), tool=r.get("tool_cpu_s", float("nan")),
                   ok=got == want and got > 0, sent=i.get("sent", 0), created=i.get("created", 0), per_write=per_write)
        rows.setdefault(side, []).append(row)
        print(f"run {run} {side:<8} creates {row['created']}/{row['sent']} (asked {rate * duration:.0f})"
              f"  delivered {got}/{want}{'' if row['ok'] else ' INCOMPLETE'}  {row['rate']:.0f} deliveries/s"
              f"  create→console p50 {row['p50']:.1f} ms p99 {row['p99']:.1f} ms max {row['mx']:.1f} ms"
              f"  server {row['cpu']:.3f} µs CPU/delivery"
              + (f"  {per_write:.1f} deliveries/write" if per_write == per_write else "")
              + f"  tool {row['tool']:.2f} CPU-s  lost {i.get('lost')}")
print("medians:")
for side, rs in rows.items():
    m = lambda k: med([r[k] for r in rs])
    print(f"  {side:<8} p50 {m('p50'):.1f} ms  p99 {m('p99'):.1f} ms  max {m('mx'):.1f} ms  µs CPU/delivery {m('cpu'):.3f}"
          f"  deliveries/s {m('rate'):.0f}  creates offered {m('sent'):.0f}/{rate * duration:.0f}"
          f"  tool CPU-s {m('tool'):.2f}  complete {sum(r['ok'] for r in rs)}/{len(rs)}")
EOF
