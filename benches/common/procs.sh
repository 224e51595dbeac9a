# Sourced by the benchmark scripts (bash): the processes a script starts, stopped at its
# exit, and waiting for a server's `listening on` line. Expects TMP (a temp dir the
# cleanup removes) to be set; append every started process id to PIDS.
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

wait_listen() { # file -> HOST:PORT
  for _ in $(seq 100); do
    a=$(sed -n 's/^listening on //p' "$1" | head -1)
    [ -n "$a" ] && { echo "$a"; return; }
    sleep 0.1
  done
  echo "server did not start" >&2; exit 1
}
