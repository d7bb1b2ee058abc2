#!/usr/bin/env bash
# `make demo`: record the bundled pricing service with koala, show what was
# recorded, then stop its dependencies and replay the recording against it.
# Everything runs on loopback, in target/demo.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
koala="$root/target/release/koala"
python=$(python3 -c 'import sys; print(sys.executable)')
work="$root/target/demo"
rm -rf "$work" && mkdir -p "$work"

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port, name: poll until it accepts, for at most 10 s
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "demo: $2 did not start listening on port $1" >&2
    exit 1
}
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
trap cleanup EXIT

pricing_port=$(free_port); inventory_port=$(free_port); cache_port=$(free_port)
"$python" "$here/inventory.py" "$inventory_port" & inventory=$!; pids+=("$inventory")
"$python" "$here/cache.py" "$cache_port" & cache=$!; pids+=("$cache")
wait_port "$inventory_port" inventory; wait_port "$cache_port" cache

echo "== recording: koala record -- pricing.py (port $pricing_port)"
"$koala" record --to "$work/sessions" -- "$python" "$here/pricing.py" \
    "$pricing_port" "$inventory_port" "$cache_port" & pricing=$!
pids+=("$pricing")
wait_port "$pricing_port" pricing
"$python" "$here/client.py" "$pricing_port"
kill -TERM "$pricing"; wait "$pricing" || true   # a clean exit writes the last sessions

echo
echo "== recorded sessions: koala show $work/sessions"
"$koala" show "$work/sessions"

echo
echo "== replay: inventory and cache stopped; koala replay -- pricing.py"
stop "$inventory"; stop "$cache"
"$koala" replay "$work/sessions" --report "$work/report.json" --junit "$work/junit.xml" \
    --service-log "$work/service.log" -- \
    "$python" "$here/pricing.py" "$pricing_port" "$inventory_port" "$cache_port"
echo "(report: $work/report.json, JUnit: $work/junit.xml)"
