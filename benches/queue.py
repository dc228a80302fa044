#!/usr/bin/env python3
"""The asynchronous path's engine figures, measured in one run against a local Redis.

    python3 benches/queue.py              # about 2 minutes after the build
    python3 benches/queue.py --smoke      # a short run, as .ci/run does

A redis-server on loopback (append-only file, fsync every second, as deploy/ runs it),
the Jelou simulator, and the relay in its production configuration with the Redis store
and asynchronous sending on. Three figures:

  acceptance   - 202s per second (`Prefer: respond-async`) beside synchronous dry runs
                 (`?dry_run=true`: the same parsing and checks, no store, no send), in
                 alternating rounds at one concurrency, medians and their ratio. Twice:
                 while the queue drains to the simulator on the same two cores (the bot at
                 1,000 messages/s), and while it holds (the bot at one message a day: each
                 message is paced as it is accepted and waits for its slot, never
                 sent), which is the relay's acceptance work alone. Each run also
                 gives redis-server's CPU beside the relay's, and the script runs
                 (`EVALSHA`) per answer.
  commands     - Redis commands per message from acceptance to `sent` (INFO commandstats;
                 commands run inside the relay's scripts are counted too), less what an
                 idle relay spends polling over the same time.
  bytes        - used_memory growth per queued message while N messages wait (the bot's
                 rate set so low that none leaves), and so the memory for a million.

Writes queue.json to --out (benches/results by default) and prints the tables.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the shared harness: processes, wrk, ports)

PORT_REDIS = 19379
PORT_RELAY, PORT_ADMIN = 19180, 19190
PORT_IDLE, PORT_IDLE_ADMIN = 19181, 19191


def redis_cli(*args):
    out = subprocess.run(["redis-cli", "-p", str(PORT_REDIS), *map(str, args)],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def redis_ready():
    out = subprocess.run(["redis-cli", "-p", str(PORT_REDIS), "PING"], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() == "PONG"


def info(section):
    fields = {}
    for line in redis_cli("INFO", section).splitlines():
        if ":" in line and not line.startswith("#"):
            key, value = line.split(":", 1)
            fields[key] = value
    return fields


def command_calls():
    """Calls per command since the last CONFIG RESETSTAT."""
    calls = {}
    for key, value in info("commandstats").items():
        name = key.removeprefix("cmdstat_")
        stats = dict(pair.split("=") for pair in value.split(","))
        calls[name] = int(stats["calls"])
    return calls


def relay_env(port, admin, bot_rate, extra=None):
    env = bench.relay_env(bench.PORT_SIM, port, admin, {
        "JELOU_RELAY__STORE__BACKEND": "redis",
        "JELOU_RELAY__STORE__REDIS_URL": f"redis://127.0.0.1:{PORT_REDIS}/0",
        "JELOU_RELAY__ASYNC__ENABLED": "true",
        "JELOU_RELAY__ASYNC__MAX_QUEUED": "10000000",
        "JELOU_RELAY__BOTS__VENTAS__RATE_PER_SECOND": str(bot_rate),
        "JELOU_RELAY__BOTS__VENTAS__BURST": str(max(1, int(bot_rate))),
    })
    env.update(extra or {})
    return env


def post_async(port, count):
    """Queues `count` messages one after another; their ids."""
    body = json.dumps(bench.RELAY_MESSAGE).encode()
    headers = {"content-type": "application/json", "prefer": "respond-async",
               "authorization": f"Bearer {bench.CALLER_KEY}"}
    ids = []
    for _ in range(count):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/flow-messages",
                                         data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 202, answer.status
            ids.append(json.loads(answer.read())["id"])
    return ids


def open_messages():
    return int(redis_cli("ZCARD", "jelou-relay:queue:open") or 0)


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


def acceptance(work, relay_pid, redis_pid, connections, duration, rounds, port=PORT_RELAY):
    auth = {"Authorization": f"Bearer {bench.CALLER_KEY}"}
    dry = bench.Target("dry_run", f"http://127.0.0.1:{port}/v1/flow-messages?dry_run=true",
                       bench.RELAY_MESSAGE, auth, [relay_pid])
    queued = bench.Target("async", f"http://127.0.0.1:{port}/v1/flow-messages",
                          bench.RELAY_MESSAGE, dict(auth, Prefer="respond-async"), [relay_pid])
    runs = []
    for round_ in range(rounds):
        order = [dry, queued] if round_ % 2 == 0 else [queued, dry]
        for target in order:
            # Each run starts from an empty Redis (freed in the background: a blocking
            # flush of the last run's messages would stall Redis past the relay's
            # store timeout), once the last run's drain has stopped.
            redis_cli("FLUSHALL", "ASYNC")
            time.sleep(1.5)
            redis_cli("CONFIG", "RESETSTAT")
            redis_before = bench.proc_cpu_seconds([redis_pid])
            run = bench.measure(work, target, connections, duration)
            # Script runs per answer: below 1 when calls arriving together went as one.
            run["evalsha_per_request"] = round(command_calls().get("evalsha", 0) / run["requests"], 3)
            # redis-server's own CPU beside the relay's: one thread, so a share near 1.0
            # means Redis, not the relay, sets the rate.
            redis_cpu = bench.proc_cpu_seconds([redis_pid]) - redis_before
            run["redis_cpu_us_per_request"] = round(redis_cpu / run["requests"] * 1e6, 1)
            run["redis_cpu_share"] = round(redis_cpu / run["seconds"], 2)
            bench.log(f"   round {round_ + 1} {target.name}: {run['rps']} req/s, "
                      f"p99 {run['p99_ms']} ms, {run['status_errors']} non-2xx")
            if run["status_errors"]:
                raise SystemExit(f"{target.name} answered {run['status_errors']} errors")
            runs.append(run)
    medians = {}
    for name in ("dry_run", "async"):
        mine = [r for r in runs if r["target"] == name]
        medians[name] = {key: statistics.median(r[key] for r in mine)
                         for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request",
                                     "redis_cpu_us_per_request", "redis_cpu_share",
                                     "evalsha_per_request")}
    medians["ratio"] = round(medians["async"]["rps"] / medians["dry_run"]["rps"], 3)
    return runs, medians


def commands_per_message(count, idle_seconds):
    redis_cli("FLUSHALL", "ASYNC")
    time.sleep(1.5)
    redis_cli("CONFIG", "RESETSTAT")
    time.sleep(idle_seconds)
    idle = command_calls()
    idle_rate = {name: calls / idle_seconds for name, calls in idle.items()}
    redis_cli("CONFIG", "RESETSTAT")
    started = time.monotonic()
    post_async(PORT_RELAY, count)
    wait_until(lambda: open_messages() == 0, 120, "the drain")
    elapsed = time.monotonic() - started
    busy = command_calls()
    per_message = {}
    for name, calls in busy.items():
        if name in ("info", "config", "zcard", "flushall"):
            continue  # the benchmark's own
        net = calls - idle_rate.get(name, 0) * elapsed
        per_message[name] = round(max(net, 0) / count, 2)
    per_message = dict(sorted(per_message.items(), key=lambda kv: -kv[1]))
    return {"messages": count, "seconds": round(elapsed, 2),
            "total": round(sum(per_message.values()), 1), "by_command": per_message}


def bytes_per_message(procs, work, count):
    redis_cli("FLUSHALL", "ASYNC")
    time.sleep(1.5)
    # A relay whose bot sends one message a day: everything it accepts stays queued.
    idle = procs.start([str(bench.BIN), "serve"], work / "relay-idle.log",
                       env=relay_env(PORT_IDLE, PORT_IDLE_ADMIN, 0.00001))
    bench.wait_http(PORT_IDLE, "/readyz", want=200)
    time.sleep(0.5)
    post_async(PORT_IDLE, 1)  # the stream, its group and the rate keys exist
    wait_until(lambda: redis_cli("XLEN", "jelou-relay:queue:stream") == "0", 30, "the first take")
    before = int(info("memory")["used_memory"])
    post_async(PORT_IDLE, count)
    wait_until(lambda: redis_cli("XLEN", "jelou-relay:queue:stream") == "0", 60,
               "every message waiting")
    after = int(info("memory")["used_memory"])
    procs.stop(idle)
    per = (after - before) / count
    return {"messages": count, "bytes_per_message": round(per), "mib_per_million": round(per * 1e6 / 2**20)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=8, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=2000, help="for the commands per message")
    parser.add_argument("--queued", type=int, default=10000, help="for the bytes per message")
    parser.add_argument("--out", default=str(bench.ROOT / "benches" / "results"))
    parser.add_argument("--binary", help="a jelou-relay binary to use instead of building one")
    parser.add_argument("--smoke", action="store_true", help="a short run that checks the harness")
    args = parser.parse_args()
    if args.smoke:
        args.duration, args.rounds, args.messages, args.queued = 2, 1, 200, 500
    for tool in ("wrk", "redis-server", "redis-cli"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            raise SystemExit(f"{tool} is not installed (apt-get install -y wrk redis-server)")
    if args.binary:
        bench.BIN = Path(args.binary).resolve()
    else:
        bench.log("== cargo build --release")
        subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "jelou-relay"],
                       cwd=bench.ROOT, check=True)
    busy = [p for p in (PORT_REDIS, bench.PORT_SIM, PORT_RELAY, PORT_ADMIN, PORT_IDLE,
                        PORT_IDLE_ADMIN) if bench.port_taken(p)]
    if busy:
        raise SystemExit(f"ports already in use: {busy}; stop whatever listens there first")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="jelou-queue-bench-"))
    procs = bench.Processes()
    try:
        bench.log(f"== redis-server, the simulator and the relay (logs in {work})")
        redis = procs.start(["redis-server", "--port", str(PORT_REDIS), "--bind", "127.0.0.1",
                     "--dir", str(work), "--appendonly", "yes", "--appendfsync", "everysec",
                     "--save", ""], work / "redis.log")
        wait_until(redis_ready, 10, "redis-server answering PING")
        procs.start([str(bench.BIN), "simulate", "--host", "127.0.0.1", "--port", str(bench.PORT_SIM),
                     "--client-id", bench.CLIENT_ID, "--client-secret", bench.CLIENT_SECRET],
                    work / "simulator.log")
        relay = procs.start([str(bench.BIN), "serve"], work / "relay.log",
                            env=relay_env(PORT_RELAY, PORT_ADMIN, 1000))
        bench.wait_http(bench.PORT_SIM, "/_simulator/stats", want=200)
        bench.wait_http(PORT_RELAY, "/readyz", want=200)

        bench.log(f"== acceptance: 202s beside dry runs, {args.connections} connections, "
                  f"{args.rounds} alternating rounds of {args.duration} s")
        runs, accept = acceptance(work, relay.pid, redis.pid, args.connections, args.duration, args.rounds)
        procs.stop(relay)
        bench.log("== acceptance again, the queue holding (the bot at one message a day)")
        held = procs.start([str(bench.BIN), "serve"], work / "relay-held.log",
                           env=relay_env(PORT_IDLE, PORT_IDLE_ADMIN, 0.00001))
        bench.wait_http(PORT_IDLE, "/readyz", want=200)
        held_runs, accept_held = acceptance(work, held.pid, redis.pid, args.connections, args.duration,
                                            args.rounds, PORT_IDLE)
        procs.stop(held)
        relay = procs.start([str(bench.BIN), "serve"], work / "relay-2.log",
                            env=relay_env(PORT_RELAY, PORT_ADMIN, 1000))
        bench.wait_http(PORT_RELAY, "/readyz", want=200)
        bench.log(f"== Redis commands per message ({args.messages} messages, accepted to sent)")
        commands = commands_per_message(args.messages, 2 if args.smoke else 5)
        bench.log(f"== bytes per queued message ({args.queued} messages waiting)")
        memory = bytes_per_message(procs, work, args.queued)
    finally:
        procs.stop_all()

    results = {"machine": bench.machine(), "connections": args.connections,
               "acceptance": accept, "runs": runs, "acceptance_held": accept_held,
               "runs_held": held_runs, "commands": commands, "memory": memory}
    (out / "queue.json").write_text(json.dumps(results, indent=2))
    for title, figures in (("while the queue drains", accept), ("while the queue holds", accept_held)):
        d, a = figures["dry_run"], figures["async"]
        print(f"\nAcceptance {title}, {args.connections} connections, medians of {args.rounds} rounds:")
        print("| | req/s | p50 ms | p99 ms | relay CPU µs/req | Redis CPU µs/req | Redis busy (cores) "
              "| EVALSHA/req |")
        print("|---|---|---|---|---|---|---|---|")
        for name, f in (("synchronous dry run", d), ("asynchronous (202)", a)):
            print(f"| {name} | {f['rps']:.0f} | {f['p50_ms']} | {f['p99_ms']} | {f['cpu_us_per_request']} "
                  f"| {f['redis_cpu_us_per_request']} | {f['redis_cpu_share']} | {f['evalsha_per_request']} |")
        print(f"| ratio | {figures['ratio']} | | | | | | |")
    print(f"\nRedis commands per message, accepted to sent: {commands['total']}")
    print("| command | per message |")
    print("|---|---|")
    for name, calls in commands["by_command"].items():
        if calls:
            print(f"| {name} | {calls} |")
    print(f"\nMemory per queued message: {memory['bytes_per_message']} bytes "
          f"({memory['mib_per_million']} MiB per million)")


if __name__ == "__main__":
    main()
