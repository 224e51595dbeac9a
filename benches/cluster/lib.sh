# Shared by the benches/cluster/*.sh scripts (sourced, not run): nats-servers and
# opcenter nodes on free loopback ports under one temp dir, CPU readings from
# /proc, cleanup on exit. Everything started here is killed by its own pid.
#
# Env: BIN (default target/release/opcenter), NODE_LOG (RUST_LOG of the nodes),
# KEEP_LOGS (a directory: the nodes' and the nats-servers' logs, and what a
# script saved under $T as *.csv or metrics-*, are copied there before the temp
# dir goes), NATS_DEBUG=1 (the r3 servers log at debug level: slow consumers,
# "Timed out of fast producer stall", connections). A restarted node's log is
# appended to, not replaced.
BIN=${BIN:-target/release/opcenter}
T=$(mktemp -d /tmp/opc-clbench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "${KEEP_LOGS:-}" ]; then
        mkdir -p "$KEEP_LOGS"
        cp "$T"/*.err "$T"/*.csv "$T"/metrics-* "$T"/nats-*.log "$KEEP_LOGS"/ 2>/dev/null || true
    fi
    rm -rf "$T"
}
trap cleanup EXIT
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release --bin opcenter" >&2; exit 1; }

port() { echo $((20000 + RANDOM % 30000)); }

# nats_up single|r3 -> NATS_TOML (TOML array of URLs), NATS_URL (comma list),
# NATS_PIDS, REPLICAS, NATS_MON (r3: the servers' monitoring host:ports, for
# /connz and /varz), NATS_PROF (r3: their profiling host:ports, for
# /debug/pprof/goroutine), NATS_PORTS (r3: their client ports, space-separated).
# A fresh store per call.
nats_up() {
    local topo=$1 n i base
    base=$(port)
    NATS_PIDS=()
    NATS_MON=()
    NATS_PROF=()
    NATS_PORTS=""
    if [ "$topo" = single ]; then
        nats-server -js -a 127.0.0.1 -p "$base" -sd "$T/nats-$base" >"$T/nats-$base.log" 2>&1 &
        NATS_PIDS+=($!)
        PIDS+=($!)
        NATS_TOML="[\"nats://127.0.0.1:$base\"]"
        NATS_URL="nats://127.0.0.1:$base"
        REPLICAS=1
    else
        for i in 0 1 2; do
            local routes=""
            for n in 0 1 2; do
                [ "$n" = "$i" ] || routes="$routes\"nats-route://127.0.0.1:$((base + 10 + n))\","
            done
            cat >"$T/n$i-$base.conf" <<CONF
server_name: "n$i"
listen: "127.0.0.1:$((base + i))"
jetstream { store_dir: "$T/nats-$base-$i" }
cluster { name: "clbench", listen: "127.0.0.1:$((base + 10 + i))", routes: [${routes%,}] }
http: "127.0.0.1:$((base + 20 + i))"
prof_port: $((base + 30 + i))
debug: $([ -n "${NATS_DEBUG:-}" ] && echo true || echo false)
CONF
            NATS_MON+=("127.0.0.1:$((base + 20 + i))")
            NATS_PROF+=("127.0.0.1:$((base + 30 + i))")
            NATS_PORTS="$NATS_PORTS $((base + i))"
            nats-server -c "$T/n$i-$base.conf" >"$T/nats-$base-$i.log" 2>&1 &
            NATS_PIDS+=($!)
            PIDS+=($!)
        done
        NATS_TOML="[\"nats://127.0.0.1:$base\", \"nats://127.0.0.1:$((base + 1))\", \"nats://127.0.0.1:$((base + 2))\"]"
        NATS_URL="nats://127.0.0.1:$base,nats://127.0.0.1:$((base + 1)),nats://127.0.0.1:$((base + 2))"
        REPLICAS=3
    fi
    # The first node's stream creation retries through the meta leader election
    # itself; give the servers a moment to listen.
    sleep 3
}

nats_down() {
    local p
    for p in "${NATS_PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    NATS_PIDS=()
}

# node NAME KIND REGION [EXTRA_TOML] -> NODE_PID[NAME], NODE_ADDR[NAME], NODE_MS[NAME]
# (spawn -> serving, ms, polled every 5 ms: `listening on`, and for an engine or
# `both` node /healthz `ok active`). KIND: file (single process,
# file journal, fsync on), both, engine, hub.
declare -A NODE_PID NODE_ADDR NODE_MS
node() {
    local name=$1 kind=$2 region=$3 extra=${4:-} cfg="$T/$1.toml" t0 pid addr=""
    printf '[server]\nlisten = "127.0.0.1:0"\n[storage]\ndata_dir = "%s"\n' "$T/data-$name-$RANDOM" >"$cfg"
    if [ "$kind" != file ]; then
        printf '[cluster]\nnats = %s\nregion = "%s"\nrole = "%s"\nreplicas = %s\n' \
            "$NATS_TOML" "$region" "$kind" "$REPLICAS" >>"$cfg"
    fi
    if [ -n "$extra" ]; then printf '%s\n' "$extra" >>"$cfg"; fi
    t0=$(date +%s%N)
    RUST_LOG=${NODE_LOG:-warn} "$BIN" serve --config "$cfg" >"$T/$name.out" 2>>"$T/$name.err" &
    pid=$!
    PIDS+=($pid)
    for _ in $(seq 24000); do
        addr=$(sed -n 's/^listening on //p' "$T/$name.out")
        [ -n "$addr" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.005
    done
    if [ -z "$addr" ]; then
        echo "node $name ($kind) did not start:" >&2
        tail -20 "$T/$name.err" >&2
        exit 1
    fi
    # An engine node listens (answering `ok standby`) before it holds the region's
    # lease and has recovered its state: it serves once /healthz says `ok active`.
    # STANDBY=1: the caller starts it to stand by (another holds the lease).
    if { [ "$kind" = engine ] || [ "$kind" = both ]; } && [ -z "${STANDBY:-}" ]; then
        for _ in $(seq 24000); do
            [ "$(curl -s "http://$addr/healthz")" = "ok active" ] && break
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.005
        done
    fi
    NODE_MS[$name]=$((($(date +%s%N) - t0) / 1000000))
    NODE_PID[$name]=$pid
    NODE_ADDR[$name]=$addr
}

# stop NAME [SIG]: SIGTERM (graceful) by default.
stop() {
    local pid=${NODE_PID[$1]}
    kill -"${2:-TERM}" "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# A hub answers commands once it follows the stream and an engine answers: a few
# creates through it, not measured, before the measured run.
warm() {
    "$BIN" sim --server "$1" --fanout --consoles 1 --burst 5 --duration 1 --settle 30 \
        --json >/dev/null 2>&1 || true
}

# CPU seconds (utime + stime) of a pid so far.
cpu_s() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# python3 expression over the JSON report on stdin as `r`.
json() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }

# median FILE COLUMN (1-based, whitespace-separated numbers)
median() { python3 -c "import statistics,sys; print(statistics.median(float(l.split()[int(sys.argv[2])-1]) for l in open(sys.argv[1]) if l.strip()))" "$1" "$2"; }

load_note() { echo "# $(date -u +%FT%TZ) load average: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores, shared)"; }

# start_mode MODE REGION -> TARGET (the sim's --server), PID (its --pid), EXTRA
# (more sim options: the other processes' --also-pid, --console-server).
#   trivial - the trivial sender (the load tool's ceiling; stores nothing);
#   file    - single process on the file journal; both - engine and hub in one;
#   both1   - `both` appending one batch at a time (cluster.pipeline_depth = 1);
#   hubs    - engine + hubs A and B: TARGET is B, the consoles go to A;
#   hub1    - engine + hub A holding every console;
#   hub2    - engine + hubs A and B, consoles split over both.
start_mode() {
    local mode=$1 region=$2
    EXTRA=()
    case $mode in
    trivial)
        "${TRIVIAL:-target/release/examples/trivial_sender}" >"$T/trivial.out" 2>&1 &
        NODE_PID[n]=$!
        PIDS+=($!)
        sleep 0.5
        NODE_ADDR[n]=$(sed -n 's/^listening on //p' "$T/trivial.out")
        EXTRA=(--no-verify)
        ;;
    file | both) node n "$mode" "$region" ;;
    both1) node n both "$region" "pipeline_depth = 1" ;;
    hubs | hub1 | hub2)
        node e engine "$region"
        node ha hub "$region"
        warm "${NODE_ADDR[ha]}"
        if [ "$mode" = hub1 ]; then
            TARGET=${NODE_ADDR[ha]}
            PID=${NODE_PID[ha]}
            EXTRA=(--also-pid "${NODE_PID[e]}")
            return 0
        fi
        node hb hub "$region"
        warm "${NODE_ADDR[hb]}"
        TARGET=${NODE_ADDR[hb]}
        PID=${NODE_PID[hb]}
        EXTRA=(--also-pid "${NODE_PID[e]}" --also-pid "${NODE_PID[ha]}" --console-server "${NODE_ADDR[ha]}")
        if [ "$mode" = hub2 ]; then EXTRA+=(--console-server "${NODE_ADDR[hb]}"); fi
        return 0
        ;;
    *)
        echo "unknown mode $mode" >&2
        exit 1
        ;;
    esac
    TARGET=${NODE_ADDR[n]}
    PID=${NODE_PID[n]}
}

# Stops every node start_mode started (SIGTERM).
stop_mode() {
    local n
    for n in n e ha hb; do if [ -n "${NODE_PID[$n]:-}" ]; then stop "$n"; fi; done
    NODE_PID=()
}

# CPU seconds of the nats-servers so far, summed.
nats_cpu() {
    local p sum=0
    for p in "${NATS_PIDS[@]}"; do sum=$(echo "$sum + $(cpu_s "$p")" | bc); done
    echo "$sum"
}

# The sim's JSON report on stdin -> CPU seconds of every measured node process.
NODES_CPU="(r['server_process']['cpu_s'] + sum(r.get('also_cpu_s', {}).values()))"

# rounds RUNS MODES PREFIX FN: RUNS rounds; in each, every mode of MODES is started
# afresh (start_mode, region PREFIX<run><mode>), measured by `FN MODE RUN`, and
# stopped. The per-mode result files $T/res-$TOPO-<mode> (TOPO: the topology of the
# caller's loop) are emptied first; FN appends one line of numbers per run.
rounds() {
    local runs=$1 modes=$2 prefix=$3 fn=$4 run mode
    for mode in $modes; do : >"$T/res-$TOPO-$mode"; done
    for run in $(seq "$runs"); do
        for mode in $modes; do
            start_mode "$mode" "$prefix$run$mode"
            "$fn" "$mode" "$run"
            stop_mode
        done
    done
}

# sim_run LABEL SIM_ARGS...: one `opcenter sim` against the mode start_mode started
# (--server TARGET --pid PID and EXTRA are added), its JSON report in OUT. When the
# sim fails, prints LABEL and the tail of its stderr and returns 1.
sim_run() {
    local label=$1
    shift
    OUT=$("$BIN" sim --server "$TARGET" "$@" --pid "$PID" "${EXTRA[@]}" --json 2>"$T/sim.err") || true
    if [ -z "$OUT" ]; then
        echo "$label: sim failed"
        tail -5 "$T/sim.err"
        return 1
    fi
}
