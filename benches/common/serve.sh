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
