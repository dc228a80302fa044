#!/usr/bin/env bash
# Container smoke test: build the runtime image with a locally built static binary
# standing in for the builder stage, run it, reach the Jelou simulator by host name,
# keep its idempotency keys in a Redis also reached by host name, send a message, then
# SIGTERM it and check it exits 0 within the drain period.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
if ! command -v buildah > /dev/null || ! command -v podman > /dev/null || ! command -v runc > /dev/null; then
  apt-get update -qq
  apt-get install -y -qq buildah podman runc > /dev/null
fi

echo "-- static binary"
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target x86_64-unknown-linux-gnu --bin jelou-relay
binary=target/x86_64-unknown-linux-gnu/release/jelou-relay
if ldd "$binary" 2>&1 | grep -q '=>'; then
  echo "the binary is not static"; ldd "$binary"; exit 1
fi

echo "-- image"
stage=$(mktemp -d)
mkdir -p "$stage/out/etc/ssl/certs"
cp "$binary" "$stage/out/jelou-relay"
cp /etc/ssl/certs/ca-certificates.crt "$stage/out/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nrelay:x:10001:10001:jelou-relay:/nonexistent:/sbin/nologin\n' > "$stage/out/etc/passwd"
printf 'root:x:0:\nrelay:x:10001:\n' > "$stage/out/etc/group"
buildah bud --isolation chroot --format docker --target runtime \
  --build-context builder="$stage" -t jelou-relay:smoke -f Dockerfile . > /dev/null
size=$(podman image inspect --format '{{.Size}}' jelou-relay:smoke)
echo "image size: $size bytes ($((size / 1024 / 1024)) MiB)"
# The image's budget: 20 MB (the binary is most of it; .cargo/config.toml keeps the
# Swagger UI's unused files out of it).
if [ "$size" -ge 20000000 ]; then
  echo "the image is $size bytes, over its 20,000,000-byte budget" >&2
  exit 1
fi

echo "-- run"
sim_port=18381
relay_port=18380
redis_port=18382
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  > target/smoke-redis.log 2>&1 &
redis=$!
"$binary" simulate --host 127.0.0.1 --port "$sim_port" --client-id demo --client-secret demo-secret \
  > target/smoke-simulator.log 2>&1 &
simulator=$!
container=jelou-relay-smoke
cleanup() {
  podman --runtime runc rm -f "$container" > /dev/null 2>&1 || true
  kill "$simulator" "$redis" 2> /dev/null || true
}
trap cleanup EXIT
podman --runtime runc rm -f "$container" > /dev/null 2>&1 || true
# The upstream and Redis are named, not IPs: name resolution must work inside the
# scratch image (no C library resolver there).
podman --runtime runc run -d --pull=never --name "$container" \
  --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 \
  --network host --add-host jelou-sim:127.0.0.1 --add-host redis-host:127.0.0.1 \
  -e APP_ENVIRONMENT=local \
  -e JELOU_RELAY__SERVER__HOST=127.0.0.1 \
  -e JELOU_RELAY__SERVER__PORT=$relay_port \
  -e JELOU_RELAY__ADMIN__PORT=$((relay_port + 10)) \
  -e JELOU_RELAY__SERVER__DRAIN_TIMEOUT_MS=5000 \
  -e JELOU_RELAY__LOG__FORMAT=json \
  -e JELOU_RELAY__UPSTREAM__MODE=jelou \
  -e JELOU_RELAY__UPSTREAM__BASE_URL=http://jelou-sim:$sim_port \
  -e JELOU_RELAY__BOTS__VENTAS__CLIENT_ID=demo \
  -e JELOU_RELAY__BOTS__VENTAS__CLIENT_SECRET=demo-secret \
  -e JELOU_RELAY__STORE__BACKEND=redis \
  -e JELOU_RELAY__STORE__FAILURE_MODE=fail_closed \
  -e JELOU_RELAY__STORE__REDIS_URL=redis://redis-host:$redis_port/0 \
  jelou-relay:smoke serve > /dev/null

started=$(date +%s%N)
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$relay_port/readyz" > /dev/null 2>&1 && break
  sleep 0.1
done
ready_ms=$(( ($(date +%s%N) - started) / 1000000 ))
curl -fsS "http://127.0.0.1:$relay_port/readyz"; echo " (ready after ${ready_ms} ms, polled)"
podman --runtime runc exec "$container" /jelou-relay healthcheck --port $relay_port
echo "healthcheck subcommand: ok"

answer=$(curl -sS "http://127.0.0.1:$relay_port/v1/flow-messages" -H 'content-type: application/json' \
  -H 'idempotency-key: smoke-1' \
  -d '{"to":"+593 98 765 4321","title":"Hola","text":"Completa este flujo para comenzar","caption":"Jelou","flow":{"name":"flujo_de_bienvenida","cta":"Iniciar Flujo","screen":"RECOMMEND"}}')
echo "$answer"
echo "$answer" | grep -q '"status":"sent"' || { podman logs "$container"; exit 1; }
curl -fsS "http://127.0.0.1:$sim_port/_simulator/stats" | grep -q '"received":1'
echo "the simulator, reached as jelou-sim, received the message"
redis-cli -p "$redis_port" --scan --pattern 'jelou-relay:idem:*' | grep -q 'smoke-1'
curl -fsS "http://127.0.0.1:$relay_port/readyz" | grep -q '"backend":"redis","state":"up"'
echo "the answer is stored in Redis, reached as redis-host"

echo "-- SIGTERM"
stop_started=$(date +%s)
podman --runtime runc kill --signal TERM "$container" > /dev/null
status=$(timeout 15 podman --runtime runc wait "$container")
stop_s=$(( $(date +%s) - stop_started ))
echo "exit status $status after ${stop_s} s"
[ "$status" = "0" ] || { podman logs "$container"; exit 1; }
[ "$stop_s" -le 6 ] || { echo "took longer than the 5 s drain period"; exit 1; }
echo "container smoke test passed"
