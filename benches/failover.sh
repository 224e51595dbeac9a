#!/usr/bin/env bash
# Failover under load (issue 12, "Benchmark"): TRIALS times, kill -9 of the
# active engine of a region (2 engines, 1 hub, 3-node nats-server cluster, R3)
# while the hub takes RATE keyed creates/s (open loop, benches/failover-load.mjs,
# 4 dispatcher sessions). Per trial:
#   - serving after ms: from the kill to when the new engine began serving the
#     hubs' commands (its `opcenter_engine_serving_since_seconds`);
#   - its first ok: from the kill to the first `ok` answered after that (the old
#     engine died seconds before: the issue's "first ok served by the new one";
#     it answers the calls that waited in order, so this can be any of them);
#   - no-engine ms: from the kill to the first `ok` of a create *sent after* the
#     kill (only the new engine can have served it);
#   - acked/s: `ok`s per second over the 15 s from 5 s before the kill;
#   - errors: `error` replies (the hub's `internal` after command_timeout_s), and
#     creates never answered;
#   - new engine acked/s: `ok`s per second over the 3 s from the first `ok` of a
#     create sent after the kill (what the new engine answers, backlog included);
#   - from the new engine's /metrics: replay ms (`opcenter_replay_seconds`: a warm
#     standby's tail replay, or a cold snapshot load + replay), records replayed
#     and the seq it replayed from; the standby's lag (records) just before the kill.
# The killed engine is started again and, before the next trial, waited for
# until it follows the stream (warm: its lag gauge ≤ 2 000 records; the time that
# took is printed); the trials alternate which engine is active. p50/max at the end.
#
# Also per trial: the hub calls the new engine shed (`opcenter_calls_shed_total`:
# their deadline had nearly passed while queued), the hub's attempts that found no
# engine (`opcenter_call_no_engine_total`, this trial's), the connections the
# probe found stuck and reconnected (`opcenter_nats_probe_reconnects_total`: the
# new engine's, the hub's); saved under $T for 14 s after the
# kill: the new engine's and the hub's CPU per thread and second, and each
# nats-server's slow consumers, most-pending client connections (/connz) and routes
# (/routez), the bytes queued in the kernel on the servers' client sockets (`ss`;
# for a client socket with over 1 MB queued, TCP's window, segment size and
# `rwnd_limited`: "stuck" lines),
# and 6 s after the kill every server's goroutines (pprof). NODE_LOG=info KEEP_LOGS=<dir>
# keeps every node's log, the trials' CSVs and the new engines' /metrics.
#
#   cargo build --release --bin opcenter
#   benches/failover.sh [TRIALS=20] [RATE=2000]
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/cluster/lib.sh
TRIALS=${1:-20}
RATE=${2:-2000}
SECONDS_LOAD=${SECONDS_LOAD:-16}
KILL_AT=${KILL_AT:-6}

healthz() { curl -s --max-time 2 "http://$1/healthz" || true; }
metric() { # NODE NAME: the value of NAME in NODE's /metrics (empty: none)
    curl -s --max-time 2 "http://${NODE_ADDR[$1]}/metrics" | awk -v n="$2" '$1 == n {print $2}'
}
threads() { # PID SECONDS: per-thread CPU ms of PID in each of SECONDS seconds
    python3 - "$1" "$2" <<'PY'
import os, sys, time
pid, secs = sys.argv[1], int(sys.argv[2])
tick = os.sysconf("SC_CLK_TCK")
def sample():
    out = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    s = f.read()
            except OSError:
                continue
            name = s[s.index("(") + 1 : s.rindex(")")]
            fields = s[s.rindex(")") + 2 :].split()
            out[(tid, name)] = int(fields[11]) + int(fields[12])
    except OSError:
        pass
    return out
prev = sample()
for sec in range(1, secs + 1):
    time.sleep(1)
    cur = sample()
    for key, v in sorted(cur.items()):
        d = (v - prev.get(key, v)) * 1000 // tick
        if d > 0:
            print(sec, key[1], d)
    prev = cur
PY
}
connz() { # SECONDS: each second, per nats-server, its slow-consumer count and the
    # three client connections with the most bytes pending to them
    for s in $(seq "$1"); do
        sleep 1
        for m in "${NATS_MON[@]}"; do
            v=$(curl -s --max-time 1 "http://$m/varz" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("slow_consumers", "?"))' 2>/dev/null || echo "?")
            c=$(curl -s --max-time 1 "http://$m/connz?sort=pending&limit=3" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(" ".join("%s:%sB/in%s/out%s" % (c.get("port"), c.get("pending_bytes"), c.get("in_msgs"), c.get("out_msgs")) for c in d.get("connections", [])))' 2>/dev/null || echo "?")
            r=$(curl -s --max-time 1 "http://$m/routez" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(" ".join("rid%s:%sB/in%s/out%s" % (r.get("rid"), r.get("pending_size"), r.get("in_msgs"), r.get("out_msgs")) for r in d.get("routes", [])))' 2>/dev/null || echo "?")
            echo "$s $m slow_consumers=$v top_pending: $c routes: $r"
        done
        # Bytes queued in the kernel on every client connection of the servers
        # (Recv-Q at a server: it is not reading; Send-Q at a client: not taken).
        ss -tn 2>/dev/null | awk -v s="$s" -v ports="$NATS_PORTS" 'BEGIN { n = split(ports, p, " "); for (i = 1; i <= n; i++) want[p[i]] = 1 }
            { split($4, l, ":"); split($5, r, ":"); if ((l[2] in want || r[2] in want) && ($2 > 0 || $3 > 0)) print s, "ss", $2, $3, $4, $5 }'
        # A client socket with over 1 MB queued: TCP's view of why it does not send
        # (notsent, snd_wnd against mss, rwnd_limited, lastsnd; docs/performance.md §7).
        ss -tinH 2>/dev/null | awk -v s="$s" -v ports="$NATS_PORTS" 'BEGIN { n = split(ports, p, " "); for (i = 1; i <= n; i++) want[p[i]] = 1 }
            $1 == "ESTAB" { split($5, r, ":"); big = (r[2] in want) && $3 > 1000000; head = s " stuck " $3 " " $4 " " $5; next }
            big { out = head; n = split($0, f, " "); for (i = 1; i <= n; i++) if (f[i] ~ /^(mss|snd_wnd|notsent|rwnd_limited|lastsnd|bytes_sent|bytes_acked|backoff):/) out = out " " f[i]; print out; big = 0 }'
        # What every goroutine of each server is doing, 6 s after the kill.
        if [ "$s" = 6 ]; then
            for prof in "${NATS_PROF[@]}"; do
                echo "=== $prof" >>"$T/metrics-stacks-$TRIAL.txt"
                curl -s --max-time 3 "http://$prof/debug/pprof/goroutine?debug=2" >>"$T/metrics-stacks-$TRIAL.txt" || true
            done
        fi
    done
}
wait_healthz() { # NAME WANT
    for _ in $(seq 600); do
        [ "$(healthz "${NODE_ADDR[$1]}")" = "$2" ] && return 0
        sleep 0.1
    done
    echo "engine $1 never said '$2'" >&2
    exit 1
}

# wait_warm NAME -> WARM_MS: a standby is warm once it follows the stream (its
# opcenter_standby_lag_records gauge exists and says ≤ 2 000 records). A fresh
# process first loads the snapshot and walks the audit chain (the whole stream):
# a kill before that would measure a cold start, not a handover.
wait_warm() {
    local t0 lag
    t0=$(date +%s%3N)
    for _ in $(seq 3000); do
        lag=$(metric "$1" opcenter_standby_lag_records)
        if [ -n "$lag" ] && [ "${lag%.*}" -le 2000 ]; then
            WARM_MS=$(($(date +%s%3N) - t0))
            return 0
        fi
        sleep 0.1
    done
    echo "standby $1 never caught up" >&2
    exit 1
}

load_note
echo "# trials $TRIALS, $RATE creates/s for ${SECONDS_LOAD}s, kill -9 at ${KILL_AT}s"
nats_up r3
node a engine fo 'node = "a"'
wait_healthz a "ok active"
STANDBY=1 node b engine fo 'node = "b"'
wait_healthz b "ok standby"
wait_warm b
node h hub fo
warm "${NODE_ADDR[h]}"
TOKEN=$("$BIN" token --role dispatcher --sub bench --config "$T/h.toml")
: >"$T/res"
active=a
standby=b
for trial in $(seq "$TRIALS"); do
    csv="$T/trial-$trial.csv"
    command node --experimental-websocket benches/failover-load.mjs "${NODE_ADDR[h]}" "$TOKEN" \
        "$RATE" "$SECONDS_LOAD" "$csv" 2>"$T/load.err" &
    load=$!
    sleep "$KILL_AT"
    lag=$(metric "$standby" opcenter_standby_lag_records)
    no_engine_before=$(metric h opcenter_call_no_engine_total)
    probe_hub_before=$(metric h 'opcenter_nats_probe_reconnects_total{connection="hub"}')
    kill_ms=$(date +%s%3N)
    kill -9 "${NODE_PID[$active]}"
    # Where the new engine's CPU goes, per thread, each second for 14 s after the
    # kill (metrics-threads-<trial>: second, thread name, CPU ms in that second).
    threads "${NODE_PID[$standby]}" 14 >"$T/metrics-threads-$trial.txt" &
    threads "${NODE_PID[h]}" 14 >"$T/metrics-hubthreads-$trial.txt" &
    TRIAL=$trial connz 14 >"$T/metrics-connz-$trial.txt" &
    ss -tnp >"$T/metrics-ss-$trial.txt" 2>/dev/null || true # which process owns which client port
    wait "${NODE_PID[$active]}" 2>/dev/null || true
    wait "$load" || { echo "trial $trial: load failed"; cat "$T/load.err"; exit 1; }
    # When the new engine began serving the hubs' commands, as it says (same host clock).
    since=$(metric "$standby" opcenter_engine_serving_since_seconds)
    since_ms=$(awk -v s="${since:-0}" 'BEGIN { if (s > 0) printf "%.0f", s * 1000; else print -1 }')
    line=$(python3 - "$csv" "$kill_ms" "$SECONDS_LOAD" "$since_ms" <<'PY'
import sys
rows = [l.rstrip("\n").split(",") for l in open(sys.argv[1]) if l.strip()]
kill = int(sys.argv[2])
since = int(sys.argv[4])
oks = sorted(int(r[3]) for r in rows if r[4] == "ok")
after = [int(r[3]) for r in rows if r[4] == "ok" and int(r[2]) > kill]
gap = (min(after) - kill) if after else -1
window = [t for t in oks if kill - 5000 <= t < kill + 10000]
errors = sum(1 for r in rows if r[4] == "error")
none = sum(1 for r in rows if r[4] == "none")
first = min(after) if after else 0
new_rate = round(sum(1 for t in oks if first <= t < first + 3000) / 3) if after else 0
# The old engine died at the kill, 2 s and more before the new one served: an ok
# answered after the new engine began serving is the new engine's.
served = [int(r[3]) for r in rows if r[4] == "ok" and since > 0 and int(r[3]) >= since]
first_new = (min(served) - kill) if served else -1
serving = (since - kill) if since > 0 else -1
print(gap, round(len(window) / 15), len(rows), errors, none, round(len(rows) / float(sys.argv[3])), new_rate, serving, first_new)
PY
)
    # The new active one; the killed one comes back as the standby.
    wait_healthz "$standby" "ok active"
    replay_ms=$(metric "$standby" opcenter_replay_seconds | awk '{printf "%d", $1 * 1000}')
    replayed=$(metric "$standby" opcenter_replayed_records)
    from=$(metric "$standby" opcenter_replay_from_seq)
    # Its read model's start: the standby's copy taken over (1), or copied (0).
    read_start_ms=$(metric "$standby" opcenter_read_model_start_seconds | awk '{printf "%d", $1 * 1000}')
    read_warm=$(metric "$standby" opcenter_read_copy_from_standby)
    # The new engine's counters after the trial (KEEP_LOGS keeps them).
    curl -s --max-time 2 "http://${NODE_ADDR[$standby]}/metrics" >"$T/metrics-trial-$trial.txt" || true
    shed=$(metric "$standby" opcenter_calls_shed_total)
    no_engine_after=$(metric h opcenter_call_no_engine_total)
    no_engine_before=${no_engine_before:-0} no_engine_after=${no_engine_after:-0}
    no_engine=$(( ${no_engine_after%.*} - ${no_engine_before%.*} ))
    # Connections the probe found stuck and reconnected: the new engine's (since it
    # started) and the hub's (this trial's).
    probe_engine=$(metric "$standby" 'opcenter_nats_probe_reconnects_total{connection="engine"}')
    probe_hub_after=$(metric h 'opcenter_nats_probe_reconnects_total{connection="hub"}')
    probe_hub=$(( ${probe_hub_after:-0} - ${probe_hub_before:-0} ))
    set -- $line
    printf 'trial %2s (killed %s): serving after %5s ms, its first ok after %5s ms, no-engine %5s ms | acked/s across the handover %5s | new engine acked/s %5s | sent %s/s, %s creates, errors %s, unanswered %s | replay %s ms, %s records after seq %s, standby lag %s | read model start %s ms (standby copy %s) | calls shed %s | hub attempts without engine %s | probe reconnects: engine %s, hub %s\n' \
        "$trial" "$active" "$8" "$9" "$1" "$2" "$7" "$6" "$3" "$4" "$5" "$replay_ms" "$replayed" "$from" "$lag" "${read_start_ms:-?}" "${read_warm:-?}" "${shed:-0}" "$no_engine" "${probe_engine:-0}" "$probe_hub"
    echo "$line ${replay_ms:-0} ${replayed:-0} $(( ${probe_engine:-0} + probe_hub ))" >>"$T/res"
    STANDBY=1 node "$active" engine fo "node = \"$active\""
    wait_healthz "$active" "ok standby"
    wait_warm "$active"
    echo "  engine $active restarted: standing by, warm after $WARM_MS ms"
    tmp=$active
    active=$standby
    standby=$tmp
done
python3 - "$T/res" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
gaps = [r[0] for r in rows if r[0] >= 0]
acked = [r[1] for r in rows]
serving = [r[7] for r in rows if r[7] >= 0]
first_new = [r[8] for r in rows if r[8] >= 0]
print(f"TRIALS {len(rows)}: serving after the kill ms p50 {statistics.median(serving):.0f} max {max(serving):.0f} | "
      f"its first ok ms p50 {statistics.median(first_new):.0f} max {max(first_new):.0f} | "
      f"no-engine ms p50 {statistics.median(gaps):.0f} max {max(gaps):.0f} | "
      f"acked/s across the handover p50 {statistics.median(acked):.0f} min {min(acked):.0f} | "
      f"errors {sum(r[3] for r in rows):.0f} in {sum(1 for r in rows if r[3] > 0)} trials, unanswered {sum(r[4] for r in rows):.0f} | "
      f"new engine acked/s p50 {statistics.median(r[6] for r in rows):.0f} | "
      f"replay ms p50 {statistics.median(r[9] for r in rows):.0f} max {max(r[9] for r in rows):.0f} | "
      f"records replayed p50 {statistics.median(r[10] for r in rows):.0f} max {max(r[10] for r in rows):.0f} | "
      f"probe reconnects {sum(r[11] for r in rows):.0f} in {sum(1 for r in rows if r[11] > 0)} trials")
PY
