#!/bin/bash
# Times `opcenter audit verify` (file journal and NATS stream), `audit head`,
# `audit show` and `opcenter report response-times` on the simulated day that
# `examples/records_day.rs` writes (docs/records.md, "Measured: a simulated day").
# 3 runs each, median of the wall time.
#
#   nats-server -js -a 127.0.0.1 -p 14922 -sd /tmp/day-nats &
#   cargo run --example records_day -- /tmp/day/data nats://127.0.0.1:14922 zko
#   cargo build --release --bin opcenter
#   DIR=/tmp/day NATS=nats://127.0.0.1:14922 benches/records-day.sh
set -u
B=${B:-$(dirname "$0")/../target/release/opcenter}
DIR=${DIR:?the directory holding data/}
NATS=${NATS:?the nats URL}
REGION=${REGION:-zko}
cd "$DIR" || exit 1
run() { # name, command...
  local name=$1; shift
  local ts=() rc=0
  for _ in 1 2 3; do
    local s e
    s=$(date +%s.%N); "$@" > "out.$name" 2>&1; rc=$?; e=$(date +%s.%N)
    ts+=("$(echo "$e - $s" | bc)")
  done
  echo "== $name (exit $rc): runs ${ts[*]} s, median $(printf "%s\n" "${ts[@]}" | sort -n | sed -n 2p) s"
  echo "\$ $*"; head -"${LINES_SHOWN:-8}" "out.$name"
}
uptime
run verify_file "$B" audit verify --data-dir data
run verify_nats "$B" audit verify --nats "$NATS" --region "$REGION"
run head_nats "$B" audit head --nats "$NATS" --region "$REGION"
run show_file "$B" audit show --incident I-002000 --data-dir data
run show_nats "$B" audit show --incident I-002000 --nats "$NATS" --region "$REGION"
LINES_SHOWN=14 run report "$B" report response-times --data-dir data \
  --from 2025-12-01T00:00:00Z --to 2025-12-02T00:00:00Z --group priority
run report_csv "$B" report response-times --data-dir data \
  --from 2025-12-01T00:00:00Z --to 2025-12-02T00:00:00Z --group district --csv
uptime
