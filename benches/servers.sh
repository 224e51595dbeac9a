# Sourced by the fan-out scripts (benches/node-ws-hub/compare.sh, benches/fanout-10k.sh):
# a temp dir and the servers started are cleaned up on exit, and each server's
# address is read from its "listening on" line.
# Sets TMP and PIDS; the caller adds each server's pid to PIDS.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

wait_listen() { # file -> HOST:PORT
  for _ in $(seq 100); do
    a=$(sed -n 's/^listening on //p' "$1" 2>/dev/null | head -1)
    [ -n "$a" ] && { echo "$a"; return; }
    sleep 0.1
  done
  echo "server did not start" >&2; exit 1
}
