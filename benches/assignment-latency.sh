#!/usr/bin/env bash
# Create → assignment at the tablet under recipe 1 of docs/performance.md (issue 13,
# target 4): 5 000 tablets, 200 consoles, 1 supervisor, 50 creates/s, 20 000 positions/s.
# Quoted both ways: the load tool's (producer's send → the `assigned` event read on the
# tablet; the tool shares the cores) and the server's own histogram
# `opcenter_assignment_written_seconds` (create frame read → assignment written to the
# tablet's socket), as the share of samples within each bucket bound and the bucket
# that holds the p99.
#
# Usage: benches/assignment-latency.sh [RUNS=1] [DURATION=30]
# Needs: cargo build --release --bin opcenter. SIDES (default "opcenter"); side
# `baseline` runs BASE_BIN (another build) in the same script run; side `reniced`
# runs BIN with `hub.engine_nice` = ENGINE_NICE (default -10; needs root or
# CAP_SYS_NICE, else the server logs that it runs unchanged): how much of the
# tail is the engine thread waiting for a CPU (SIDES="opcenter reniced" compares
# both in one run). Loopback only.
# POSITION_RATE (default 20000) changes the recipe's fixes/s, to see what they
# cost the tail (POSITION_RATE=0: no fixes at all). Every run also prints the
# server's other histograms of the same creates: receipt → the engine thread
# applies it (`opcenter_create_queued_seconds`), receipt → reply queued
# (`opcenter_create_seconds`), and one group commit (`opcenter_journal_append_seconds`),
# and, from /proc/<pid>/task/*/schedstat over the run, how long the engine thread
# (and the server's other threads) waited on a CPU's run queue once runnable: the
# share of the create's wait that is the two cores being busy, not the engine.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-1}
DURATION=${2:-30}
POSITION_RATE=${POSITION_RATE:-20000}
SIDES=${SIDES:-opcenter}
BIN=${BIN:-target/release/opcenter}
[ -x "$BIN" ] || { echo "build first: cargo build --release --bin opcenter" >&2; exit 1; }
LOGDIR=${LOGDIR:-/tmp/opcenter-assignment}
# The open-files limit, TMP, LOGDIR emptied of reports, PIDS killed at exit, wait_listen.
source benches/common/serve.sh
SECRET=assignment-latency-secret-of-at-least-32-bytes
printf '[server]\nlisten = "127.0.0.1:0"\n[storage]\ndata_dir = "%s/data"\n[auth]\njwt_secret = "%s"\n' "$TMP" "$SECRET" > "$TMP/opcenter.toml"

# Per thread of PID: name, ns on a CPU, ns runnable but waiting for one, times run.
schedstat() {
  local t
  for t in /proc/"$1"/task/*; do
    printf '%s %s\n' "$(tr ' ' _ < "$t/comm")" "$(cat "$t/schedstat")"
  done 2>/dev/null || true
}

for run in $(seq "$RUNS"); do
  for side in $SIDES; do
    b=$BIN; [ "$side" = baseline ] && b=${BASE_BIN:?set BASE_BIN for the baseline side}
    rm -rf "$TMP/data" "$TMP/srv.out"
    # Only that side gets the key: an older build (BASE_BIN) refuses keys it does not know.
    extra=(); [ "$side" = reniced ] && extra=("OPCENTER_HUB__ENGINE_NICE=${ENGINE_NICE:--10}")
    env "${extra[@]}" RUST_LOG=warn "$b" serve --config "$TMP/opcenter.toml" > "$TMP/srv.out" 2> "$LOGDIR/server-$side-$run.err" &
    SRV=$!; PIDS+=("$SRV")
    ADDR=$(wait_listen "$TMP/srv.out")
    schedstat "$SRV" > "$LOGDIR/sched-start-$side-$run.txt"
    timeout 600 "$BIN" sim --server "$ADDR" --secret "$SECRET" --pid "$SRV" --tablets 5000 --consoles 200 \
      --supervisors 1 --incident-rate 50 --position-rate "$POSITION_RATE" --duration "$DURATION" --json \
      > "$LOGDIR/$side-$run.json" 2> "$LOGDIR/sim-$side-$run.err" || true
    curl -s "http://$ADDR/metrics" > "$LOGDIR/metrics-$side-$run.txt" || true
    schedstat "$SRV" > "$LOGDIR/sched-end-$side-$run.txt"
    kill "$SRV" 2>/dev/null || true
    wait "$SRV" 2>/dev/null || true
  done
done

python3 - "$LOGDIR" "$SIDES" "$RUNS" <<'EOF'
import json, sys
sys.path.insert(0, "benches/common")
from histogram import buckets, quantile
d, sides, runs = sys.argv[1], sys.argv[2].split(), int(sys.argv[3])
for run in range(1, runs + 1):
    for side in sides:
        try:
            r = json.loads(open(f"{d}/{side}-{run}.json").read().strip().split("\n")[-1])
        except Exception:
            print(f"run {run} {side}: no report (see {d}/sim-{side}-{run}.err)")
            continue
        a, ok = r["latency"]["create_assignment"], r["latency"]["create_ok"]
        t, i, p = r["throughput"], r["incidents"], r["server_process"]
        m = open(f"{d}/metrics-{side}-{run}.txt").read()
        name = "opcenter_assignment_written_seconds"
        b = buckets(m, name)
        total = b.get(float("inf"), 0)
        share = "  ".join(f"≤{le * 1000:g} ms {v / total:.1%}" for le, v in sorted(b.items()) if le <= 0.01) if total else "no samples"
        p50, p99 = quantile(b, 0.5), quantile(b, 0.99)
        print(f"run {run} {side}: tool create→assignment p50 {a['p50_us'] / 1000:.2f} ms p99 {a['p99_us'] / 1000:.2f} ms"
              f" (n {a['count']}); create→ok p50 {ok['p50_us'] / 1000:.2f} ms p99 {ok['p99_us'] / 1000:.2f} ms;"
              f" positions {t['positions_sent_per_s']:.0f}/s; server CPU {p['cpu_percent']:.0f}%; lost {i['lost']}")
        print(f"   in-server {name}: {total} samples, {share}; p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms (interpolated in its bucket)")
        for other in ("opcenter_create_queued_seconds", "opcenter_create_seconds", "opcenter_journal_append_seconds"):
            ob = buckets(m, other)
            if ob:
                print(f"   in-server {other}: {ob.get(float('inf'), 0)} samples; p50 {quantile(ob, 0.5) * 1000:.2f} ms, p99 {quantile(ob, 0.99) * 1000:.2f} ms")
        def sched(path):
            rows = {}
            for line in open(path):
                f = line.split()
                if len(f) == 4:
                    k = f[0]
                    while k in rows:  # several threads of one name
                        k += "+"
                    rows[k] = tuple(int(x) for x in f[1:])
            return rows
        try:
            s0, s1 = sched(f"{d}/sched-start-{side}-{run}.txt"), sched(f"{d}/sched-end-{side}-{run}.txt")
        except OSError:
            s0 = s1 = {}
        def diff(names):
            run_ns = wait_ns = slices = 0
            for k in names:
                a, b = s0.get(k, (0, 0, 0)), s1[k]
                run_ns, wait_ns, slices = run_ns + b[0] - a[0], wait_ns + b[1] - a[1], slices + b[2] - a[2]
            return run_ns, wait_ns, slices
        eng = [k for k in s1 if k.startswith("opcenter-engine")]
        if eng:
            r_, w_, n_ = diff(eng)
            ra, wa, na = diff(list(s1))
            print(f"   engine thread: {r_ / 1e6:.0f} ms on a CPU, {w_ / 1e6:.0f} ms runnable but waiting for one, "
                  f"{n_} times run: {w_ / max(n_, 1) / 1000:.0f} µs waiting per run, {r_ / max(n_, 1) / 1000:.0f} µs per run"
                  f" | all {len(s1)} threads: {ra / 1e6:.0f} ms on a CPU, {wa / 1e6:.0f} ms waiting, {wa / max(na, 1) / 1000:.0f} µs per run")
EOF
