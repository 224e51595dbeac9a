# Shared by the benchmark scripts that start servers (sourced, not run): the
# open-files limit, a temp dir TMP, the report dir LOGDIR (emptied of JSON
# reports), PIDS killed on exit by their own pid, and wait_listen.
# Env: LOGDIR (each script gives its default before sourcing this).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
TMP=$(mktemp -d)
mkdir -p "$LOGDIR"
rm -f "$LOGDIR"/*.json
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

wait_listen() { # file -> HOST:PORT (a server's `listening on` line)
  for _ in $(seq 300); do
    a=$(sed -n 's/^listening on //p' "$1" | head -1)
    [ -n "$a" ] && { echo "$a"; return; }
    sleep 0.1
  done
  echo "server did not start" >&2; exit 1
}

# start_side SIDE RUN -> SRV (pid, also in PIDS), ADDR, extra (the tool's options
# for it: --no-verify for the peers, which keep no history). Sides: opcenter, baseline (BASE_BIN: another build), trivial (TRIVIAL),
# node (benches/node-ws-hub/hub.js). An opcenter side uses $TMP/opcenter.toml,
# with a fresh data dir, and SECRET. Its stderr goes to $LOGDIR/server-SIDE-RUN.err.
start_side() {
  local side=$1 run=$2 b
  rm -rf "$TMP/data" "$TMP/srv.out"
  extra=(--no-verify)
  case $side in
    opcenter|baseline)
      b=$BIN; [ "$side" = baseline ] && b=${BASE_BIN:?set BASE_BIN for the baseline side}
      RUST_LOG=warn "$b" serve --config "$TMP/opcenter.toml" > "$TMP/srv.out" 2> "$LOGDIR/server-$side-$run.err" &
      # The server keeps history: the tool checks nothing was lost (no --no-verify).
      extra=(--secret "$SECRET") ;;
    node) node benches/node-ws-hub/hub.js 0 > "$TMP/srv.out" 2> "$LOGDIR/server-$side-$run.err" & ;;
    trivial) "$TRIVIAL" 0 > "$TMP/srv.out" 2> "$LOGDIR/server-$side-$run.err" & ;;
    *) echo "unknown side $side" >&2; exit 2 ;;
  esac
  SRV=$!; PIDS+=("$SRV")
  ADDR=$(wait_listen "$TMP/srv.out")
}

# stop_side SIDE RUN: an opcenter side's /metrics kept in $LOGDIR/metrics-SIDE-RUN.txt
# (its socket writes, its histograms), then the server stopped.
stop_side() {
  case $1 in opcenter|baseline) curl -s "http://$ADDR/metrics" > "$LOGDIR/metrics-$1-$2.txt" || true ;; esac
  kill "$SRV" 2>/dev/null || true
  wait "$SRV" 2>/dev/null || true
}
