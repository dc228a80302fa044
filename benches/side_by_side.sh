#!/usr/bin/env bash
# Relay binaries side by side in one run, over the relay's own Jelou simulator: requests
# per second, the cores the relay used (its CPU time over the run's wall time) and its
# CPU time per request. Loopback only; each run is bounded.
#
#   LOAD=h2c bash benches/side_by_side.sh OLD NEW   # one h2c connection, 64 streams (h2load)
#   LOAD=wrk CONNECTIONS=64 bash benches/side_by_side.sh OLD NEW   # HTTP/1, wrk, DURATION s
#   LOG_LEVEL=info ...   # the relay writes its JSON line per request (default: warn, none)
#
# Needs h2load (apt-get install nghttp2-client) or wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${REQUESTS:-200000}
load=${LOAD:-h2c} connections=${CONNECTIONS:-16} duration=${DURATION:-8}
sim_port=19381 port=19380 admin=19382
key=bench-caller-key-0123456789abcdef
body='{"bot":"ventas","to":"+593 98 765 4321","title":"Hola","text":"Completa este flujo para comenzar","caption":"Jelou","flow":{"name":"flujo_de_bienvenida","cta":"Iniciar Flujo","screen":"RECOMMEND"}}'
printf '%s' "$body" > /tmp/h2c-body.json
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for binary in "$@"; do
  "$binary" simulate --host 127.0.0.1 --port $sim_port > /tmp/h2c-sim.log 2>&1 &
  sim=$!
  env -i PATH="$PATH" APP_ENVIRONMENT=production JELOU_RELAY_CONFIG_DIR="$PWD/config" \
    JELOU_RELAY__SERVER__HOST=127.0.0.1 JELOU_RELAY__SERVER__PORT=$port \
    JELOU_RELAY__ADMIN__HOST=127.0.0.1 JELOU_RELAY__ADMIN__PORT=$admin \
    JELOU_RELAY__UPSTREAM__BASE_URL=http://127.0.0.1:$sim_port \
    JELOU_RELAY__UPSTREAM__CLIENT_ID=bench-client JELOU_RELAY__UPSTREAM__CLIENT_SECRET=bench-secret \
    JELOU_RELAY__BOTS__VENTAS__ID=BOT_ID \
    JELOU_RELAY__BOTS__VENTAS__RATE_PER_SECOND=1000000 JELOU_RELAY__BOTS__VENTAS__BURST=1000000 \
    JELOU_RELAY__RECIPIENTS__RATE_PER_SECOND=1000000 JELOU_RELAY__RECIPIENTS__BURST=1000000 \
    JELOU_RELAY__CALLERS__BENCH__KEY_SHA256="$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)" \
    JELOU_RELAY__LOG__FORMAT=json JELOU_RELAY__LOG__LEVEL="${LOG_LEVEL:-warn}" \
    "$binary" serve > /tmp/h2c-relay.log 2>&1 &
  relay=$!
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/readyz" > /dev/null 2>&1 && break
    sleep 0.1
  done
  before=$(cpu $relay) started=$(date +%s.%N)
  if [ "$load" = h2c ]; then
    out=$(h2load -n "$requests" -c 1 -m 64 -t 1 -d /tmp/h2c-body.json \
      -H 'content-type: application/json' -H "authorization: Bearer $key" \
      "http://127.0.0.1:$port/v1/flow-messages")
    rps=$(printf '%s\n' "$out" | awk '/^finished in/ {print $4}')
    ok=$(printf '%s\n' "$out" | awk '/^status codes:/ {print $3}')
  else
    printf 'Authorization: Bearer %s\n' "$key" > /tmp/h2c-headers.txt
    out=$(BENCH_BODY=/tmp/h2c-body.json BENCH_HEADERS=/tmp/h2c-headers.txt BENCH_OUT=/tmp/h2c-wrk.json \
      wrk -t 2 -c "$connections" -d "${duration}s" -s benches/wrk.lua \
      "http://127.0.0.1:$port/v1/flow-messages")
    rps=$(printf '%s\n' "$out" | awk '/^Requests\/sec/ {print $2}')
    requests=$(printf '%s\n' "$out" | awk '/requests in/ {print $1}')
    ok="$requests (non-2xx: $(printf '%s\n' "$out" | awk '/Non-2xx/ {print $NF}'))"
  fi
  ended=$(date +%s.%N) after=$(cpu $relay)
  kill $relay $sim; wait $relay $sim 2>/dev/null || true
  cores=$(awk -v c=$((after - before)) -v t="$ticks" -v a="$started" -v b="$ended" 'BEGIN {printf "%.2f", c / t / (b - a)}')
  per_request=$(awk -v c=$((after - before)) -v t="$ticks" -v n="$requests" 'BEGIN {printf "%.0f", c / t / n * 1e6}')
  printf '%s %s: %s req/s, %s answered, relay used %s cores, %s us CPU/request\n' \
    "$load" "$binary" "$rps" "$ok" "$cores" "$per_request"
done
