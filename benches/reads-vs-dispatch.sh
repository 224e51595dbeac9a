#!/usr/bin/env bash
# Reads vs dispatch (issue 10, item 3; docs/performance.md §5), both sides in one go.
#
# One server (release build), seeded once with history (~60 000 events, so a `since`
# 50 000 events back reads the journal on disk), then RUNS pairs alternating:
#   quiet:   2 000 tablets, 5 consoles, 1 supervisor, 20 incidents/s, 2 000 positions/s
#   readers: the same + 20 supervisors re-subscribing in a loop (odd ones with `since`
#            DEPTH events back), in a second tool process (decoding their snapshots
#            in the measuring tool would delay its tablets: the tool's tail, not the
#            server's)
# Printed per run and as medians: create → assignment p50/p99 as the tool sees it
# and in the server (its histogram opcenter_assignment_written_seconds, create
# frame read → assignment written, this run's counts interpolated in a bucket;
# the ratio of both), creates, the server's
# CPU-seconds per create (/proc/<pid>/stat via --pid) and the load tool's own CPU
# (user+sys over its wall time, in cores: at ~1.0+ the tool, not the server, limits).
# Per run also, from /proc/<pid>/task/*/schedstat, each server thread's CPU and
# its run-queue wait (runnable, waiting for a core): whether the engine thread's
# tail is time spent waiting for a CPU.
# Last, a baseline of the tool: the same quiet load against the same server with the
# positions off, to show how much of the quiet p99 is the tool's own 2 000 positions/s.
#
# Usage: benches/reads-vs-dispatch.sh [RUNS=3] [DURATION=20] [DEPTH=50000]
# Needs: cargo build --release --bin opcenter. Targets 127.0.0.1 only; every run is
# bounded (--duration, timeout). Logs and JSON reports stay in $LOGDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
DURATION=${2:-20}
DEPTH=${3:-50000}
BIN=${BIN:-target/release/opcenter}
[ -x "$BIN" ] || { echo "build first: cargo build --release --bin opcenter" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
LOGDIR=${LOGDIR:-/tmp/opcenter-reads}
rm -rf "$LOGDIR"; mkdir -p "$LOGDIR"
TMP=$(mktemp -d)
SERVER=""
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

SECRET=reads-vs-dispatch-secret-of-32-bytes
printf '[server]\nlisten = "127.0.0.1:0"\n[storage]\ndata_dir = "%s/data"\n[auth]\njwt_secret = "%s"\n' \
  "$TMP" "$SECRET" > "$TMP/opcenter.toml"
# The per-session command budget is lifted: with the defaults a subscribe with a
# snapshot costs 1 000 and a resume 250, so the readers would be refused
# `rate_limited` and the run would measure the budget, not the read path.
OPCENTER_HUB__SESSION_RATE_PER_S=1000000 OPCENTER_HUB__SESSION_BURST=1000000 RUST_LOG=warn \
  "$BIN" serve --config "$TMP/opcenter.toml" > "$TMP/server.out" 2> "$LOGDIR/server.err" &
SERVER=$!
ADDR=""
for _ in $(seq 100); do
  ADDR=$(sed -n 's/^listening on //p' "$TMP/server.out" | head -1)
  [ -n "$ADDR" ] && break
  sleep 0.1
done
[ -n "$ADDR" ] || { echo "server did not start" >&2; exit 1; }
events() { curl -s "http://$ADDR/metrics" | awk '/^opcenter_journal_batch_events_sum/ {print int($2)}'; }

threads() { # per server thread name: CPU ns, run-queue wait ns (schedstat)
  for t in /proc/"$SERVER"/task/*; do
    echo "$(cat "$t/comm" 2>/dev/null) $(cat "$t/schedstat" 2>/dev/null)"
  done | awk 'NF == 4 {r[$1] += $2; w[$1] += $3} END {for (n in r) printf "%s %.0f %.0f\n", n, r[n], w[n]}'
}

sim() { # NAME ARGS... : one run of the tool, its JSON report and its own CPU kept
  local name=$1; shift
  threads > "$LOGDIR/$name.threads0"
  /usr/bin/time -f '%e %U %S' -o "$LOGDIR/$name.time" \
    timeout 300 "$BIN" sim --server "$ADDR" --secret "$SECRET" --json "$@" \
    > "$LOGDIR/$name.json" 2> "$LOGDIR/$name.err" || echo "run $name exited non-zero" >&2
  threads > "$LOGDIR/$name.threads1"
  # The server's own histograms (cumulative) after each run: the engine-side
  # create → assignment-queued time, the group commit time.
  curl -s "http://$ADDR/metrics" > "$LOGDIR/$name.metrics" || true
}

echo "server $ADDR pid $SERVER; seeding history..." >&2
sim seed --tablets 300 --consoles 1 --supervisors 0 --incident-rate 400 \
  --position-rate 0 --duration 20 --no-verify
echo "history: $(events) events in the journal" >&2

BASE=(--tablets 2000 --consoles 5 --supervisors 1 --incident-rate 20
      --duration "$DURATION" --pid "$SERVER")
LOAD=("${BASE[@]}" --position-rate 2000)
for run in $(seq "$RUNS"); do
  sim "quiet-$run" "${LOAD[@]}"
  # The readers in a tool process of their own: decoding 500 snapshots/s in the
  # measuring tool's runtime would delay its tablets' reads, and the tool, not
  # the server, would make the tail.
  /usr/bin/time -f '%e %U %S' -o "$LOGDIR/resub-$run.time" \
    timeout 300 "$BIN" sim --server "$ADDR" --secret "$SECRET" --json --tablets 0 --consoles 0 \
    --supervisors 0 --producers 0 --incident-rate 0 --position-rate 0 --no-verify \
    --resubscribers 20 --resubscribe-depth "$DEPTH" --duration $((DURATION + 8)) \
    > "$LOGDIR/resub-$run.json" 2> "$LOGDIR/resub-$run.err" &
  RESUB=$!
  sleep 2
  sim "readers-$run" "${LOAD[@]}"
  wait "$RESUB" || echo "readers' tool $run exited non-zero" >&2
  echo "pair $run done ($(events) events)" >&2
done
sim "tool-baseline" "${BASE[@]}" --position-rate 0

python3 - "$LOGDIR" "$RUNS" <<'EOF'
import json, statistics, sys
sys.path.insert(0, "benches/common")
from histogram import buckets, quantile
logdir, runs = sys.argv[1], int(sys.argv[2])
ORDER = ["seed"] + [f"{side}-{i}" for i in range(1, runs + 1) for side in ("quiet", "readers")] + ["tool-baseline"]
def server_quantiles(name):
    """The server's own create read -> assignment written p50/p99 (ms) over this
    run: its histogram after the run less after the run before."""
    page = lambda n: buckets(open(f"{logdir}/{n}.metrics").read(), "opcenter_assignment_written_seconds")
    before, after = page(ORDER[ORDER.index(name) - 1]), page(name)
    return tuple(1000 * quantile(after, p, before) for p in (0.5, 0.99))
def row(name):
    with open(f"{logdir}/{name}.json") as f:
        r = json.loads(f.read().strip().splitlines()[-1])
    wall, user, sys_ = map(float, open(f"{logdir}/{name}.time").read().split()[-3:])
    staleness = r["latency"]["position_staleness"]
    a = r["latency"]["create_assignment"]
    # The readers' own tool process (readers runs only).
    resub, readers_cores = {}, 0.0
    if name.startswith("readers-"):
        n = name.split("-")[1]
        with open(f"{logdir}/resub-{n}.json") as f:
            resub = json.loads(f.read().strip().splitlines()[-1])["throughput"]
        w, u, s_ = map(float, open(f"{logdir}/resub-{n}.time").read().split()[-3:])
        readers_cores = (u + s_) / w
    server_q = server_quantiles(name)
    created = r["incidents"]["created"]
    p = r.get("server_process") or {}
    return {
        "p50": a["p50_us"] / 1000, "p99": a["p99_us"] / 1000, "created": created,
        "lost": r["incidents"].get("lost"),
        "cpu_ms_per_create": 1000 * p.get("cpu_s", 0) / max(created, 1),
        "server_cpu": p.get("cpu_percent", 0),
        "tool_cores": (user + sys_) / wall,
        "resub_per_s": resub.get("resubscribes_per_s", 0),
        "readers_cores": readers_cores,
        "srv_p50": server_q[0], "srv_p99": server_q[1],
        "pos_per_s": r["throughput"]["positions_sent_per_s"],
        "errors": sum(r.get("errors", {}).values()),
        "stale_p50": staleness["p50_us"] / 1000,
    }
fmt = ("| {name:<13} | {p50:6.2f} | {p99:7.2f} | {srv_p50:6.2f} | {srv_p99:6.2f} | {created:5d} | {lost} | {cpu_ms_per_create:6.2f} | "
       "{server_cpu:5.1f} | {tool_cores:4.2f} | {readers_cores:4.2f} | {pos_per_s:6.0f} | {stale_p50:8.1f} | {resub_per_s:6.1f} | {errors} |")
print("| run | assign p50 ms (tool) | assign p99 ms (tool) | server p50 ms | server p99 ms | created | LOST | server CPU ms/create | server CPU % | tool cores | readers' tool cores | positions/s | staleness p50 ms | resubscribes/s | errors |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
rows = {}
for side in ("quiet", "readers"):
    rows[side] = [row(f"{side}-{i}") for i in range(1, runs + 1)]
    for i, x in enumerate(rows[side], 1):
        print(fmt.format(name=f"{side}-{i}", **x))
base = row("tool-baseline")
print(fmt.format(name="no positions", **base))
med = {s: {k: statistics.median(x[k] for x in rows[s]) for k in ("p50", "p99", "srv_p50", "srv_p99", "cpu_ms_per_create", "tool_cores")} for s in rows}
for s in rows:
    m = med[s]
    print(f"median {s}: assign p50 {m['p50']:.2f} ms, p99 {m['p99']:.2f} ms (tool); "
          f"server p50 {m['srv_p50']:.2f} ms, p99 {m['srv_p99']:.2f} ms; "
          f"server {m['cpu_ms_per_create']:.2f} CPU-ms/create, tool {m['tool_cores']:.2f} cores")
def threads(name):
    """Per thread name: (CPU s, run-queue wait s) over the run, and its wall s."""
    def load(suffix):
        out = {}
        for line in open(f"{logdir}/{name}.{suffix}"):
            n, run, wait = line.split()
            out[n] = (float(run), float(wait))
        return out
    a, b = load("threads0"), load("threads1")
    wall = float(open(f"{logdir}/{name}.time").read().split()[-3])
    return {n: ((b[n][0] - a.get(n, (0, 0))[0]) / 1e9, (b[n][1] - a.get(n, (0, 0))[1]) / 1e9) for n in b}, wall
print()
print("| run | engine CPU % | engine run-queue wait % | reads CPU % | reads wait % | workers CPU % | workers wait % |")
print("|---|---|---|---|---|---|---|")
for side in ("quiet", "readers"):
    for i in range(1, runs + 1):
        t, wall = threads(f"{side}-{i}")
        pct = lambda n, k: 100 * t.get(n, (0, 0))[k] / wall
        print(f"| {side}-{i} | {pct('opcenter-engine', 0):5.1f} | {pct('opcenter-engine', 1):5.2f} | "
              f"{pct('opcenter-reads', 0):5.1f} | {pct('opcenter-reads', 1):5.2f} | "
              f"{pct('tokio-rt-worker', 0):5.1f} | {pct('tokio-rt-worker', 1):5.2f} |")
ratio = med["readers"]["p99"] / med["quiet"]["p99"] if med["quiet"]["p99"] else float("nan")
srv = med["readers"]["srv_p99"] / med["quiet"]["srv_p99"] if med["quiet"]["srv_p99"] else float("nan")
print(f"loaded p99 / quiet p99 = {ratio:.2f} as the tool sees it, {srv:.2f} in the server (target <= 2)")
EOF
