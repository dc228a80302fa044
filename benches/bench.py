#!/usr/bin/env python3
"""Side-by-side load benchmark of jelou-relay.

In one run, on one machine, against the Jelou simulator (no added latency):
  direct  - the load tool calls the simulator itself (the physical limit);
  nginx   - nginx proxies to it, injecting the Authorization header, validating nothing;
  floor   - the same pass-through built from the relay's own stack and nothing else (axum,
            hyper, reqwest, tokio, jemalloc; benches/floor.rs): what the libraries cost;
  relay   - jelou-relay in its production configuration (JSON logs at info to a file,
            validation, caller auth, rate limits set above the load, no idempotency key).
Same message, same load tool (wrk), each concurrency level, rounds alternating the order
of the four so that drift on a shared machine hits all of them alike. Then: memory under
pressure (10,000 concurrent requests, an upstream that answers after 1 s), what axum and
hyper hold at 1,024 connections with no work (the floor answering by itself), and start-up
time to /readyz.

    python3 benches/bench.py                 # the full run (about 11 minutes after the builds)
    python3 benches/bench.py --smoke         # a short run, as .ci/run does

Writes results.json, runs.csv and chart.png to --out (benches/results by default) and
prints the tables.
"""

import argparse
import base64
import csv
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "jelou-relay"
BASELINE = None  # another relay binary measured beside this one (--baseline)
FLOOR = ROOT / "target" / "release" / "examples" / "floor"
WRK_SCRIPT = ROOT / "benches" / "wrk.lua"

CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-secret"
CALLER_KEY = "bench-caller-key-0123456789abcdef"
BOT_ID = "BOT_ID"
DIGITS = "593987654321"

PORT_SIM, PORT_NGINX, PORT_RELAY, PORT_ADMIN = 19081, 19082, 19080, 19090
PORT_SLOW_SIM, PORT_PRESSURE, PORT_PRESSURE_ADMIN = 19083, 19084, 19094
PORT_STARTUP, PORT_STARTUP_ADMIN = 19085, 19095
PORT_FLOOR, PORT_FLOOR_LOCAL = 19086, 19087
PORT_BASELINE, PORT_BASELINE_ADMIN = 19088, 19098

RELAY_MESSAGE = {
    "bot": "ventas",
    "to": "+593 98 765 4321",
    "title": "Hola",
    "text": "Completa este flujo para comenzar",
    "caption": "Jelou",
    "flow": {"name": "flujo_de_bienvenida", "cta": "Iniciar Flujo", "screen": "RECOMMEND"},
}
# What Jelou receives for that message (the body the direct and nginx runs send).
JELOU_BODY = {
    "title": "Hola",
    "text": "Completa este flujo para comenzar",
    "caption": "Jelou",
    "parameters": {
        "flow_name": "flujo_de_bienvenida",
        "flow_cta": "Iniciar Flujo",
        "flow_action_payload": {"screen": "RECOMMEND"},
    },
}
JELOU_PATH = f"/v1/bots/{BOT_ID}/users/{DIGITS}/flow_message"
BASIC = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()


def log(message):
    print(message, file=sys.stderr, flush=True)


def wait_http(port, path="/", timeout=20.0, want=None):
    """Polls until an HTTP GET answers (with status `want`, if given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = http_status(port, path)
        if status is not None and (want is None or status == want):
            return
        time.sleep(0.02)
    raise SystemExit(f"nothing answered on port {port}{path} within {timeout} s")


def port_taken(port):
    with socket.socket() as s:
        # As the servers do: connections of an earlier run in TIME_WAIT do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return False
        except OSError:
            return True


def http_status(port, path):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64)
        return int(head.split()[1])
    except (OSError, ValueError, IndexError):
        return None


class Processes:
    """Children started by the benchmark, stopped at the end whatever happens."""

    def __init__(self):
        self.children = []

    def start(self, args, log_path, env=None):
        full_env = dict(os.environ)
        full_env.update(env or {})
        handle = open(log_path, "wb")
        child = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=full_env)
        self.children.append(child)
        return child

    def stop(self, child):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def stop_all(self):
        for child in reversed(self.children):
            self.stop(child)


def relay_env(upstream_port, port, admin_port, extra=None):
    env = {
        "APP_ENVIRONMENT": "production",
        "JELOU_RELAY_CONFIG_DIR": str(ROOT / "config"),
        "JELOU_RELAY__SERVER__HOST": "127.0.0.1",
        "JELOU_RELAY__SERVER__PORT": str(port),
        "JELOU_RELAY__ADMIN__HOST": "127.0.0.1",
        "JELOU_RELAY__ADMIN__PORT": str(admin_port),
        "JELOU_RELAY__UPSTREAM__BASE_URL": f"http://127.0.0.1:{upstream_port}",
        "JELOU_RELAY__UPSTREAM__CLIENT_ID": CLIENT_ID,
        "JELOU_RELAY__UPSTREAM__CLIENT_SECRET": CLIENT_SECRET,
        "JELOU_RELAY__BOTS__VENTAS__ID": BOT_ID,
        # Limits far above the load: the benchmark measures the path, not the limiter's refusals.
        "JELOU_RELAY__BOTS__VENTAS__RATE_PER_SECOND": "1000000",
        "JELOU_RELAY__BOTS__VENTAS__BURST": "1000000",
        "JELOU_RELAY__RECIPIENTS__RATE_PER_SECOND": "1000000",
        "JELOU_RELAY__RECIPIENTS__BURST": "1000000",
        "JELOU_RELAY__CALLERS__BENCH__KEY_SHA256": hashlib.sha256(CALLER_KEY.encode()).hexdigest(),
        "JELOU_RELAY__LOG__FORMAT": "json",
        "JELOU_RELAY__LOG__LEVEL": "info",
    }
    env.update(extra or {})
    return env


NGINX_CONF = """
worker_processes auto;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log {work}/nginx-access.log combined buffer=64k;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fastcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    upstream jelou {{
        server 127.0.0.1:{sim};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=65535;
        location / {{
            proxy_pass http://jelou;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "{basic}";
        }}
    }}
}}
"""


def proc_cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def reset_peak_rss(pids):
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


def nginx_pids(master):
    children = Path(f"/proc/{master}/task/{master}/children")
    try:
        return [master] + [int(p) for p in children.read_text().split()]
    except OSError:
        return [master]


class Target:
    def __init__(self, name, url, body, headers, pids):
        self.name, self.url, self.body, self.headers, self.pids = name, url, body, headers, pids


def run_wrk(work, target, connections, duration, timeout="10s", delay_ms=None):
    body = work / f"{target.name}.json"
    body.write_text(json.dumps(target.body))
    headers = work / f"{target.name}.headers"
    headers.write_text("".join(f"{k}: {v}\n" for k, v in target.headers.items()))
    out = work / "wrk-out.json"
    if out.exists():
        out.unlink()
    env = dict(os.environ, BENCH_BODY=str(body), BENCH_HEADERS=str(headers), BENCH_OUT=str(out))
    if delay_ms is not None:
        env["BENCH_DELAY_MS"] = str(delay_ms)
    threads = max(1, min(2, connections))
    args = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s",
            "--timeout", timeout, "-s", str(WRK_SCRIPT), target.url]
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"wrk failed for {target.name}: {proc.stdout}\n{proc.stderr}")
    return json.loads(out.read_text())


def measure(work, target, connections, duration, delay_ms=None):
    reset_peak_rss(target.pids)
    cpu_before = proc_cpu_seconds(target.pids)
    result = run_wrk(work, target, connections, duration, delay_ms=delay_ms)
    cpu = proc_cpu_seconds(target.pids) - cpu_before
    requests = result["requests"]
    seconds = result["duration_us"] / 1e6
    errors = sum(result["errors"].values())
    return {
        "target": target.name,
        "connections": connections,
        "requests": requests,
        "seconds": round(seconds, 3),
        "rps": round(requests / seconds, 1),
        "errors": errors,
        "status_errors": result["errors"]["status"],
        "p50_ms": result["latency_us"]["p50"] / 1000,
        "p90_ms": result["latency_us"]["p90"] / 1000,
        "p99_ms": result["latency_us"]["p99"] / 1000,
        "p999_ms": result["latency_us"]["p999"] / 1000,
        "max_ms": result["latency_us"]["max"] / 1000,
        "cpu_us_per_request": round(cpu / requests * 1e6, 1) if target.pids and requests else None,
        "peak_rss_kib": peak_rss_kib(target.pids) if target.pids else None,
    }


def summarize(runs, levels, names):
    summary = []
    for level in levels:
        rows = {}
        for name in names:
            mine = [r for r in runs if r["connections"] == level and r["target"] == name]
            med = lambda key: statistics.median(r[key] for r in mine)  # noqa: E731
            rows[name] = {
                "rps": med("rps"),
                "p50_ms": med("p50_ms"),
                "p99_ms": med("p99_ms"),
                "p999_ms": med("p999_ms"),
                "errors": sum(r["errors"] for r in mine),
                "cpu_us_per_request": (statistics.median(r["cpu_us_per_request"] for r in mine)
                                       if mine[0]["cpu_us_per_request"] is not None else None),
                "peak_rss_kib": (max(r["peak_rss_kib"] for r in mine)
                                 if mine[0]["peak_rss_kib"] is not None else None),
                "rounds": len(mine),
            }
        direct = rows["direct"]
        for name in names:
            row = rows[name]
            row["rps_vs_direct"] = round(row["rps"] / direct["rps"], 3)
            row["rps_vs_nginx"] = round(row["rps"] / rows["nginx"]["rps"], 3)
            row["rps_vs_floor"] = round(row["rps"] / rows["floor"]["rps"], 3)
            row["added_p50_ms"] = round(row["p50_ms"] - direct["p50_ms"], 3)
            row["added_p99_ms"] = round(row["p99_ms"] - direct["p99_ms"], 3)
            if "baseline" in rows:
                base = rows["baseline"]
                row["rps_vs_baseline"] = round(row["rps"] / base["rps"], 3)
                if row["cpu_us_per_request"] and base["cpu_us_per_request"]:
                    row["cpu_vs_baseline"] = round(row["cpu_us_per_request"]
                                                   / base["cpu_us_per_request"], 3)
        summary.append({"connections": level, "targets": rows})
    return summary


PACED_CONNECTIONS = 64


def paced(work, targets, relay_peak_rps, duration, rounds):
    """Latency at half of the relay's saturation: every target under the same paced load
    (64 connections, each pausing a random 0.5 to 1.5 times the mean pause after every
    answer), about half the relay's peak req/s."""
    target_rps = relay_peak_rps / 2
    # Each connection sends one request per (pause + latency); the latency is under a
    # millisecond at this load, so the pause alone sets the rate to within a few percent.
    delay_ms = max(1, round(PACED_CONNECTIONS * 1000 / target_rps))
    rows = []
    for round_index in range(rounds):
        shift = round_index % len(targets)
        for target in targets[shift:] + targets[:shift]:
            row = measure(work, target, PACED_CONNECTIONS, duration, delay_ms=delay_ms)
            row["round"] = round_index + 1
            rows.append(row)
            log(f"   paced round {round_index + 1} {target.name:<6} {row['rps']:>7.0f} req/s  "
                f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  errors {row['errors']}")
    targets_summary = summarize(rows, [PACED_CONNECTIONS], [t.name for t in targets])[0]["targets"]
    result = {"relay_peak_rps": relay_peak_rps, "target_rps": round(target_rps),
              "connections": PACED_CONNECTIONS, "delay_ms": delay_ms, "targets": targets_summary}
    return result, rows


def pressure(procs, work, connections, duration, bounds):
    """`connections` concurrent requests through a relay whose upstream answers after 1 s."""
    extra = {}
    if bounds == "raised":
        extra = {
            "JELOU_RELAY__SERVER__MAX_IN_FLIGHT": str(connections * 2),
            "JELOU_RELAY__DELIVERY__MAX_IN_FLIGHT": str(connections * 2),
            "JELOU_RELAY__DELIVERY__MAX_WAITING": str(connections * 2),
        }
    relay = procs.start([str(BIN), "serve"], work / f"pressure-{bounds}.log",
                        relay_env(PORT_SLOW_SIM, PORT_PRESSURE, PORT_PRESSURE_ADMIN, extra))
    wait_http(PORT_PRESSURE, "/readyz", want=200)
    target = Target("relay", f"http://127.0.0.1:{PORT_PRESSURE}/v1/flow-messages", RELAY_MESSAGE,
                    {"Authorization": f"Bearer {CALLER_KEY}"}, [relay.pid])
    idle_rss = peak_rss_kib([relay.pid])
    result = run_wrk(work, target, connections, duration, timeout="30s")
    metrics = fetch(PORT_PRESSURE_ADMIN, "/metrics")
    by_status = {}
    for line in metrics.splitlines():
        if line.startswith("jelou_relay_requests_total{") and 'route="/v1/flow-messages"' in line:
            status = line.split('status="')[1].split('"')[0]
            by_status[status] = by_status.get(status, 0) + int(float(line.rsplit(" ", 1)[1]))
    row = {
        "bounds": bounds,
        "connections": connections,
        "seconds": round(result["duration_us"] / 1e6, 1),
        "answered": by_status,
        "wrk_errors": result["errors"],
        "p50_ms": result["latency_us"]["p50"] / 1000,
        "p99_ms": result["latency_us"]["p99"] / 1000,
        "idle_rss_kib": idle_rss,
        "peak_rss_kib": peak_rss_kib([relay.pid]),
    }
    procs.stop(relay)
    return row


def stack_memory(procs, work, connections, duration):
    """What axum and hyper hold with no work: the floor answering by itself (no upstream
    call; reqwest's client built but unused) to `connections` connections, each sending the
    message again as soon as it has its answer."""
    floor = procs.start([str(FLOOR), "--local", "--port", str(PORT_FLOOR_LOCAL)],
                        work / "floor-local.log")
    wait_http(PORT_FLOOR_LOCAL, "/", want=200)
    target = Target("floor-local", f"http://127.0.0.1:{PORT_FLOOR_LOCAL}{JELOU_PATH}", JELOU_BODY,
                    {}, [floor.pid])
    idle_rss = peak_rss_kib([floor.pid])
    row = measure(work, target, connections, duration)
    procs.stop(floor)
    return {"connections": connections, "rps": row["rps"], "errors": row["errors"],
            "idle_rss_kib": idle_rss, "peak_rss_kib": row["peak_rss_kib"]}


def fetch(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks).decode(errors="replace")
    return raw.split("\r\n\r\n", 1)[1]


def startup(procs, work, times):
    """Process start to /readyz answering 200, polled every 0.5 ms."""
    samples = []
    for i in range(times):
        started = time.perf_counter()
        relay = procs.start([str(BIN), "serve"], work / "startup.log",
                            relay_env(PORT_SIM, PORT_STARTUP, PORT_STARTUP_ADMIN))
        while http_status(PORT_STARTUP, "/readyz") != 200:
            if relay.poll() is not None:
                raise SystemExit(f"relay exited during start-up: {(work / 'startup.log').read_text()}")
            time.sleep(0.0005)
        samples.append((time.perf_counter() - started) * 1000)
        procs.stop(relay)
    return {
        "runs": times,
        "median_ms": round(statistics.median(samples), 1),
        "min_ms": round(min(samples), 1),
        "max_ms": round(max(samples), 1),
    }


def machine():
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])

    def version(args):
        # nginx prints its version on stderr, the others on stdout.
        done = subprocess.run(args, capture_output=True, text=True)
        return done.stderr.strip() or done.stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "nginx": version(["nginx", "-v"]),
        "wrk": version(["wrk", "-v"]).splitlines()[0],
        "relay": subprocess.run([str(BIN), "--version"], capture_output=True, text=True).stdout.strip(),
    }


def chart(summary, levels, names, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"direct": ("#888888", "o"), "nginx": ("#2a7ab9", "s"), "floor": ("#4f9a3a", "D"),
              "relay": ("#d9541e", "^"), "baseline": ("#9467bd", "v")}
    labels = {"direct": "direct to upstream", "nginx": "nginx (Authorization injected)",
              "floor": "axum + reqwest pass-through (stack floor)", "relay": "jelou-relay",
              "baseline": "jelou-relay, baseline binary"}
    for name in names:
        color, marker = styles[name]
        rps = [s["targets"][name]["rps"] for s in summary]
        p99 = [s["targets"][name]["p99_ms"] for s in summary]
        left.plot(levels, rps, marker=marker, color=color, label=labels[name])
        right.plot(levels, p99, marker=marker, color=color, label=labels[name])
    for axis, title, unit in ((left, "Throughput", "requests/s (median of rounds)"),
                              (right, "p99 latency", "ms (median of rounds)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels)
        axis.set_xticklabels([str(level) for level in levels])
        axis.set_xlabel("concurrent connections")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_tables(summary, half, pressure_rows, stack, start, info):
    print(f"\nMachine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, "
          f"kernel {info['kernel']}; {info['nginx']}; {info['wrk']}; {info['relay']}\n")
    print("| conns | target | req/s | vs nginx | vs floor | vs direct | p50 ms | p99 ms | p99.9 ms "
          "| added p50 ms | added p99 ms | CPU µs/req | peak RSS MiB | errors |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for level in summary:
        for name, row in level["targets"].items():
            rss = f"{row['peak_rss_kib'] / 1024:.1f}" if row["peak_rss_kib"] else "—"
            cpu = f"{row['cpu_us_per_request']:.0f}" if row["cpu_us_per_request"] else "—"
            print(f"| {level['connections']} | {name} | {row['rps']:.0f} | {row['rps_vs_nginx']:.2f} "
                  f"| {row['rps_vs_floor']:.2f} | {row['rps_vs_direct']:.2f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
                  f"| {row['p999_ms']:.2f} | {row['added_p50_ms']:+.2f} | {row['added_p99_ms']:+.2f} "
                  f"| {cpu} | {rss} | {row['errors']} |")
    if "baseline" in summary[0]["targets"]:
        print("\nThe relay against the baseline binary, side by side in this run:\n")
        print("| conns | relay req/s | baseline req/s | relay / baseline | relay CPU µs/req "
              "| baseline CPU µs/req | relay CPU / baseline |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for level in summary:
            relay, base = level["targets"]["relay"], level["targets"]["baseline"]
            cpu_ratio = relay.get("cpu_vs_baseline")
            print(f"| {level['connections']} | {relay['rps']:.0f} | {base['rps']:.0f} "
                  f"| {relay['rps_vs_baseline']:.2f} | {relay['cpu_us_per_request'] or 0:.0f} "
                  f"| {base['cpu_us_per_request'] or 0:.0f} "
                  f"| {f'{cpu_ratio:.2f}' if cpu_ratio else '—'} |")
    print(f"\nHalf of the relay's saturation: {half['connections']} connections pausing on average "
          f"{half['delay_ms']} ms after each answer, aiming at {half['target_rps']} req/s "
          f"(the relay's peak: {half['relay_peak_rps']:.0f}):\n")
    print("| target | req/s | p50 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in half["targets"].items():
        print(f"| {name} | {row['rps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
              f"| {row['p999_ms']:.2f} | {row['added_p50_ms']:+.2f} | {row['added_p99_ms']:+.2f} "
              f"| {row['errors']} |")
    print("\nMemory under pressure (upstream answers after 1 s):\n")
    print("| bounds | connections | answered by status | wrk errors | p50 ms | p99 ms "
          "| idle RSS MiB | peak RSS MiB |")
    print("|---|---:|---|---|---:|---:|---:|---:|")
    for row in pressure_rows:
        answered = ", ".join(f"{k}: {v}" for k, v in sorted(row["answered"].items()))
        errors = ", ".join(f"{k} {v}" for k, v in row["wrk_errors"].items() if v)
        print(f"| {row['bounds']} | {row['connections']} | {answered} | {errors or 'none'} "
              f"| {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {row['idle_rss_kib'] / 1024:.1f} "
              f"| {row['peak_rss_kib'] / 1024:.1f} |")
    print(f"\naxum + hyper with no work (the floor answering by itself, no upstream call), "
          f"{stack['connections']} connections: {stack['rps']:.0f} req/s, idle RSS "
          f"{stack['idle_rss_kib'] / 1024:.1f} MiB, peak RSS {stack['peak_rss_kib'] / 1024:.1f} MiB, "
          f"errors {stack['errors']}")
    print(f"\nStart-up to /readyz 200: median {start['median_ms']} ms "
          f"(min {start['min_ms']}, max {start['max_ms']}, {start['runs']} runs)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--levels", default="1,16,64,256,1024")
    parser.add_argument("--duration", type=int, default=8, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pressure-connections", type=int, default=10000)
    parser.add_argument("--pressure-duration", type=int, default=10)
    parser.add_argument("--startup-runs", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "benches" / "results"))
    parser.add_argument("--smoke", action="store_true",
                        help="a short run that checks the harness works (CI)")
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--binary", help="a jelou-relay binary to use instead of building one")
    parser.add_argument("--floor", help="a floor binary (benches/floor.rs, built as the example "
                        "`floor`) to use instead of building one")
    parser.add_argument("--baseline-config", help="the config/ folder of the --baseline "
                        "binary's version (default: this repository's)")
    parser.add_argument("--baseline", help="another jelou-relay binary (e.g. built from an "
                        "earlier commit) measured beside the relay in every level")
    parser.add_argument("--stack-connections", type=int, default=1024,
                        help="connections for the axum + hyper memory floor")
    args = parser.parse_args()
    global BIN, FLOOR, BASELINE
    if args.baseline:
        BASELINE = Path(args.baseline).resolve()
        if not BASELINE.exists():
            raise SystemExit(f"--baseline {BASELINE}: no such file")
    if args.binary:
        BIN = Path(args.binary).resolve()
        args.skip_build = True
    if args.floor:
        FLOOR = Path(args.floor).resolve()
    if args.smoke:
        args.levels, args.duration, args.rounds = "1,16", 2, 1
        args.pressure_connections, args.pressure_duration, args.startup_runs = 500, 3, 3
        args.stack_connections = 100
    levels = [int(level) for level in args.levels.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # Every prerequisite is checked before the run, so none fails it at its end.
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install -y wrk nginx)")
    try:
        import matplotlib  # noqa: F401  (the chart is drawn last, after the results are written)
    except ImportError:
        raise SystemExit("matplotlib is not installed (python3 -m pip install 'matplotlib==3.*')")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(65536, soft)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard))
    if not args.skip_build:
        log("== cargo build --release")
        subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "jelou-relay"],
                       cwd=ROOT, check=True)
    if not args.floor and (not args.skip_build or not FLOOR.exists()):
        log("== cargo build --release --example floor")
        subprocess.run(["cargo", "build", "--release", "--locked", "--example", "floor"],
                       cwd=ROOT, check=True)

    busy = [port for port in (PORT_SIM, PORT_NGINX, PORT_RELAY, PORT_ADMIN, PORT_SLOW_SIM,
                              PORT_PRESSURE, PORT_PRESSURE_ADMIN, PORT_STARTUP, PORT_STARTUP_ADMIN,
                              PORT_FLOOR, PORT_FLOOR_LOCAL, PORT_BASELINE, PORT_BASELINE_ADMIN)
            if http_status(port, "/") is not None or port_taken(port)]
    if busy:
        raise SystemExit(f"ports already in use: {busy}; stop whatever listens there first")
    work = Path(tempfile.mkdtemp(prefix="jelou-bench-"))
    procs = Processes()
    try:
        log(f"== starting the simulator, nginx, the floor and the relay (logs in {work})")
        sim = procs.start([str(BIN), "simulate", "--host", "127.0.0.1", "--port", str(PORT_SIM),
                           "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET],
                          work / "simulator.log")
        slow = procs.start([str(BIN), "simulate", "--host", "127.0.0.1", "--port", str(PORT_SLOW_SIM),
                            "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET,
                            "--delay-ms", "1000"], work / "simulator-slow.log")
        for name in ("nginx-body", "nginx-proxy", "nginx-fastcgi", "nginx-uwsgi", "nginx-scgi"):
            (work / name).mkdir()
        conf = work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(work=work, sim=PORT_SIM, port=PORT_NGINX, basic=BASIC))
        nginx = procs.start(["nginx", "-c", str(conf), "-p", str(work)], work / "nginx.out")
        floor = procs.start([str(FLOOR), "--port", str(PORT_FLOOR),
                             "--upstream", f"http://127.0.0.1:{PORT_SIM}", "--authorization", BASIC],
                            work / "floor.log")
        relay = procs.start([str(BIN), "serve"], work / "relay.log",
                            relay_env(PORT_SIM, PORT_RELAY, PORT_ADMIN))
        baseline = None
        if BASELINE:
            # The baseline reads its own configuration files: another version may not
            # know this one's keys.
            own_config = {"JELOU_RELAY_CONFIG_DIR": args.baseline_config} if args.baseline_config else {}
            baseline = procs.start([str(BASELINE), "serve"], work / "baseline.log",
                                   relay_env(PORT_SIM, PORT_BASELINE, PORT_BASELINE_ADMIN, own_config))
            wait_http(PORT_BASELINE, "/readyz", want=200)
        wait_http(PORT_SIM, "/_simulator/stats", want=200)
        wait_http(PORT_SLOW_SIM, "/_simulator/stats", want=200)
        wait_http(PORT_NGINX, "/_simulator/stats", want=200)
        wait_http(PORT_FLOOR, "/_simulator/stats", want=200)
        wait_http(PORT_RELAY, "/readyz", want=200)
        for child in (sim, slow, nginx, floor, relay):
            if child.poll() is not None:
                raise SystemExit(f"{child.args[0]} exited at start (logs in {work})")
        targets = [
            Target("direct", f"http://127.0.0.1:{PORT_SIM}{JELOU_PATH}", JELOU_BODY,
                   {"Authorization": BASIC}, [sim.pid]),
            Target("nginx", f"http://127.0.0.1:{PORT_NGINX}{JELOU_PATH}", JELOU_BODY, {},
                   nginx_pids(nginx.pid)),
            Target("floor", f"http://127.0.0.1:{PORT_FLOOR}{JELOU_PATH}", JELOU_BODY, {},
                   [floor.pid]),
            Target("relay", f"http://127.0.0.1:{PORT_RELAY}/v1/flow-messages", RELAY_MESSAGE,
                   {"Authorization": f"Bearer {CALLER_KEY}"}, [relay.pid]),
        ]
        if baseline:
            targets.append(Target("baseline", f"http://127.0.0.1:{PORT_BASELINE}/v1/flow-messages",
                                  RELAY_MESSAGE, {"Authorization": f"Bearer {CALLER_KEY}"},
                                  [baseline.pid]))
        names = [t.name for t in targets]

        log("== warm-up")
        for target in targets:
            run_wrk(work, target, 16, 1)

        runs = []
        for level in levels:
            for round_index in range(args.rounds):
                shift = round_index % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    row = measure(work, target, level, args.duration)
                    row["round"] = round_index + 1
                    runs.append(row)
                    log(f"   c={level:<5} round {round_index + 1} {target.name:<6} "
                        f"{row['rps']:>9.0f} req/s  p50 {row['p50_ms']:.2f} ms  "
                        f"p99 {row['p99_ms']:.2f} ms  errors {row['errors']}")
        summary = summarize(runs, levels, names)
        relay_peak = max(level["targets"]["relay"]["rps"] for level in summary)
        log(f"== paced load at half of the relay's peak ({relay_peak:.0f} req/s)")
        half, paced_runs = paced(work, targets, relay_peak, args.duration, args.rounds)
        bad = [r for r in runs + paced_runs if r["errors"]]

        log(f"== memory under pressure: {args.pressure_connections} connections, upstream 1 s")
        pressure_rows = [pressure(procs, work, args.pressure_connections, args.pressure_duration, b)
                         for b in ("default", "raised")]
        procs.stop(floor)
        if baseline:
            procs.stop(baseline)
        log(f"== axum + hyper with no work: the floor answering by itself, "
            f"{args.stack_connections} connections")
        stack = stack_memory(procs, work, args.stack_connections, args.duration)
        if stack["errors"]:
            bad.append({"target": "floor --local", "connections": stack["connections"],
                        "round": 1, "errors": stack["errors"]})
        log("== start-up")
        procs.stop(relay)
        start = startup(procs, work, args.startup_runs)
        relay_log_lines = sum(1 for _ in open(work / "relay.log", "rb"))
    finally:
        procs.stop_all()

    info = machine()
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": info,
        "settings": {"levels": levels, "duration_s": args.duration, "rounds": args.rounds,
                     "load_tool": "wrk", "smoke": args.smoke},
        "summary": summary,
        "half_saturation": half,
        "pressure": pressure_rows,
        "stack_memory": stack,
        "startup": start,
        "relay_log_lines": relay_log_lines,
        "runs": runs,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    with open(out / "runs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(runs[0].keys()))
        writer.writeheader()
        writer.writerows(runs)
        writer.writerows({**row, "connections": f"paced-{row['connections']}"} for row in paced_runs)
    chart(summary, levels, names, out / "chart.png")
    print_tables(summary, half, pressure_rows, stack, start, info)
    print(f"\nrelay log: {relay_log_lines} lines written to a file during the run")
    print(f"raw results: {out / 'results.json'}, {out / 'runs.csv'}; chart: {out / 'chart.png'}")
    if bad:
        print(f"\n{len(bad)} runs had socket or non-2xx errors:", file=sys.stderr)
        for row in bad:
            print(f"  {row['target']} c={row['connections']} round {row['round']}: {row['errors']}",
                  file=sys.stderr)
        sys.exit(1)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
