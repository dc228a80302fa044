#!/usr/bin/env bash
# User-space instructions per request, counted by callgrind, for the relay or the floor:
# the binary runs under valgrind against the relay's own Jelou simulator, collection is
# switched on once it is ready, wrk sends for DURATION seconds over CONNECTIONS
# connections, and the total is divided by the requests answered. Deterministic enough to
# compare two builds of the same code (about ±1 %), unlike wall-clock figures.
#
#   cargo build --profile profiling --bin jelou-relay --example floor
#   bash benches/callgrind.sh relay target/profiling/jelou-relay
#   bash benches/callgrind.sh floor target/profiling/examples/floor target/profiling/jelou-relay
#   callgrind_annotate --inclusive=yes /tmp/callgrind.relay.out | head -60
#
# Two more modes measure asynchronous acceptance against the same checks without a send:
#
#   bash benches/callgrind.sh dry target/profiling/jelou-relay    # POST ?dry_run=true
#   bash benches/callgrind.sh async target/profiling/jelou-relay  # Prefer: respond-async
#
# `async` runs the relay with the Redis store and asynchronous sends on, its bot paced at
# one message a day so that every message is accepted, paced and left waiting for its
# slot (the relay's whole work for such a message short of the send), and counts a redis-server
# under callgrind as well (/tmp/callgrind.redis.out): both totals are printed.
#
# Needs valgrind and wrk (and redis-server for `async`). The relay runs as in
# benches/bench.py (production, JSON logs at info to a file, a caller's bearer key,
# limits above the load).
set -euo pipefail
cd "$(dirname "$0")/.."
what=$1 binary=$2 relay=${3:-$2}
connections=${CONNECTIONS:-4} duration=${DURATION:-15}
sim_port=19481 port=19480 admin=19482
key=bench-caller-key-0123456789abcdef
jelou_body='{"title":"Hola","text":"Completa este flujo para comenzar","caption":"Jelou","parameters":{"flow_name":"flujo_de_bienvenida","flow_cta":"Iniciar Flujo","flow_action_payload":{"screen":"RECOMMEND"}}}'
body='{"bot":"ventas","to":"+593 98 765 4321","title":"Hola","text":"Completa este flujo para comenzar","caption":"Jelou","flow":{"name":"flujo_de_bienvenida","cta":"Iniciar Flujo","screen":"RECOMMEND"}}'
# The floor is sent what the relay would send Jelou; the relay, what a caller sends it.
if [ "$what" = floor ]; then body=$jelou_body; fi
printf '%s' "$body" > /tmp/callgrind-body.json
printf 'Authorization: Bearer %s\n' "$key" > /tmp/callgrind-headers.txt
out=/tmp/callgrind.$what.out
"$relay" simulate --host 127.0.0.1 --port $sim_port \
  --client-id bench-client --client-secret bench-secret > /tmp/callgrind-sim.log 2>&1 &
sim=$!
trap 'kill $sim 2>/dev/null || true' EXIT
redis_env=()
rate=1000000 burst=1000000
if [ "$what" = async ]; then
  redis_port=19483
  rm -f /tmp/callgrind.redis.out
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/callgrind.redis.out \
    redis-server --port $redis_port --bind 127.0.0.1 --save '' --appendonly no \
    > /tmp/callgrind-redis.log 2>&1 &
  redis=$!
  trap 'kill $sim $redis 2>/dev/null || true' EXIT
  for _ in $(seq 1 300); do
    [ "$(redis-cli -p $redis_port PING 2>/dev/null)" = PONG ] && break
    sleep 0.1
  done
  redis_env=(JELOU_RELAY__STORE__BACKEND=redis
    JELOU_RELAY__STORE__REDIS_URL=redis://127.0.0.1:$redis_port/0
    JELOU_RELAY__ASYNC__ENABLED=true JELOU_RELAY__ASYNC__MAX_QUEUED=100000000
    JELOU_RELAY__STORE__TIMEOUT_MS=5000)
  rate=0.00001 burst=1
  printf 'Prefer: respond-async\n' >> /tmp/callgrind-headers.txt
fi
if [ "$what" = floor ]; then
  path=/v1/bots/BOT_ID/users/593987654321/flow_message
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    "$binary" --port $port --upstream http://127.0.0.1:$sim_port \
    --authorization "Basic $(printf bench-client:bench-secret | base64)" \
    > /tmp/callgrind-target.log 2>&1 &
else
  path=/v1/flow-messages
  if [ "$what" = dry ]; then path='/v1/flow-messages?dry_run=true'; fi
  env -i PATH="$PATH" APP_ENVIRONMENT=production JELOU_RELAY_CONFIG_DIR="$PWD/config" \
    JELOU_RELAY__SERVER__HOST=127.0.0.1 JELOU_RELAY__SERVER__PORT=$port \
    JELOU_RELAY__ADMIN__HOST=127.0.0.1 JELOU_RELAY__ADMIN__PORT=$admin \
    JELOU_RELAY__UPSTREAM__BASE_URL=http://127.0.0.1:$sim_port \
    JELOU_RELAY__UPSTREAM__CLIENT_ID=bench-client JELOU_RELAY__UPSTREAM__CLIENT_SECRET=bench-secret \
    JELOU_RELAY__BOTS__VENTAS__ID=BOT_ID \
    JELOU_RELAY__BOTS__VENTAS__RATE_PER_SECOND=$rate JELOU_RELAY__BOTS__VENTAS__BURST=$burst \
    JELOU_RELAY__RECIPIENTS__RATE_PER_SECOND=1000000 JELOU_RELAY__RECIPIENTS__BURST=1000000 \
    JELOU_RELAY__CALLERS__BENCH__KEY_SHA256="$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)" \
    JELOU_RELAY__LOG__FORMAT=json JELOU_RELAY__LOG__LEVEL=info "${redis_env[@]}" \
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    "$binary" serve > /tmp/callgrind-target.log 2>&1 &
fi
target=$!
trap 'kill $sim $target ${redis:-} 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  curl -fsS -o /dev/null -X POST -H 'content-type: application/json' -H "authorization: Bearer $key" \
    --data-binary @/tmp/callgrind-body.json "http://127.0.0.1:$port$path" 2>/dev/null && break
  sleep 0.1
done
# A warm-up first, so that what each thread does once (its HTTP client, its pools, its
# root certificates) stays out of the count.
BENCH_BODY=/tmp/callgrind-body.json BENCH_HEADERS=/tmp/callgrind-headers.txt \
  BENCH_OUT=/tmp/callgrind-wrk.json wrk -t 1 -c "$connections" -d 3s \
  -s benches/wrk.lua "http://127.0.0.1:$port$path" > /dev/null
callgrind_control -i on "$target" > /dev/null 2>&1
if [ -n "${redis:-}" ]; then callgrind_control -i on "$redis" > /dev/null 2>&1; fi
BENCH_BODY=/tmp/callgrind-body.json BENCH_HEADERS=/tmp/callgrind-headers.txt \
  BENCH_OUT=/tmp/callgrind-wrk.json wrk -t 1 -c "$connections" -d "${duration}s" \
  -s benches/wrk.lua "http://127.0.0.1:$port$path" > /dev/null
requests=$(python3 -c 'import json; print(json.load(open("/tmp/callgrind-wrk.json"))["requests"])')
callgrind_control -i off "$target" > /dev/null 2>&1
if [ -n "${redis:-}" ]; then callgrind_control -i off "$redis" > /dev/null 2>&1; fi
# SIGTERM: a job started with & in a script ignores SIGINT.
kill -TERM "$target"; wait "$target" 2>/dev/null || true
errors=$(python3 -c 'import json; print(json.load(open("/tmp/callgrind-wrk.json"))["errors"]["status"])')
if [ "$errors" != 0 ]; then echo "$what answered $errors non-2xx: nothing to compare" >&2; exit 1; fi
total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
printf '%s: %s requests, %s instructions, %s instructions a request\n' \
  "$what" "$requests" "$total" "$((total / requests))"
if [ -n "${redis:-}" ]; then
  kill -TERM "$redis"; wait "$redis" 2>/dev/null || true
  total=$(callgrind_annotate /tmp/callgrind.redis.out 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  printf 'redis-server: %s instructions, %s instructions a request\n' "$total" "$((total / requests))"
fi
