#!/usr/bin/env python3
"""Two callgrind profiles side by side, by crate: the instructions per request spent in
each crate's functions (code inlined into a function counts for that function's crate),
for the relay and for the floor, and the difference. Where the relay's extra work runs.

    bash benches/callgrind.sh relay target/profiling/jelou-relay      # prints N requests
    cp /tmp/callgrind.relay.out /tmp/relay.out
    bash benches/callgrind.sh floor target/profiling/examples/floor target/profiling/jelou-relay
    python3 benches/callgrind_crates.py /tmp/relay.out N /tmp/callgrind.floor.out M

Needs valgrind's callgrind_annotate."""
import re, subprocess, sys, collections

def crate_of(fn):
    fn = fn.strip()
    if fn.startswith("0x") or fn == "???":
        return "unknown"
    # <A as B>::c  -> the impl's type A decides
    m = re.match(r"<+\s*(?:&(?:mut )?)?(?:dyn )?([A-Za-z_][A-Za-z0-9_]*)", fn)
    if m:
        name = m.group(1)
    else:
        name = re.match(r"([A-Za-z_][A-Za-z0-9_]*)", fn).group(1) if re.match(r"[A-Za-z_]", fn) else fn[:20]
    if name in ("core", "alloc", "std"):
        # core::ptr::drop_in_place<X>, core::ops::function::FnOnce::call_once<...>: look inside
        inner = re.search(r"<\s*(?:&(?:mut )?)?([a-z_][a-z0-9_]*)::", fn[len(name):])
        if inner and inner.group(1) not in ("core", "alloc", "std"):
            return inner.group(1) + " (via std)"
        return "std"
    if re.fullmatch(r"[A-Z]", name):
        return "generic impls (<F as ...>)"
    if re.match(r"(je_|_rjem_|tikv|do_rallocx)", name):
        return "jemalloc"
    if re.match(r"(mem|__mem|__libc|_int_|str|__strlen)", name):
        return "libc"
    return name

def load(path, requests):
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--auto=no", "--threshold=100", path],
                         capture_output=True, text=True).stdout
    totals = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(\S.*)$", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        where = m.group(2)
        fn = where.split(":", 1)[1] if ":" in where and not where.startswith("???:") else where.split(":",1)[-1]
        fn = re.sub(r"\s*\[[^\]]*\]$", "", fn)
        totals[crate_of(fn)] += int(m.group(1).replace(",", ""))
    return {k: v / requests for k, v in totals.items()}

r = load(sys.argv[1], float(sys.argv[2]))
f = load(sys.argv[3], float(sys.argv[4]))
keys = sorted(set(r) | set(f), key=lambda k: -(r.get(k, 0) - f.get(k, 0)))
print(f"{'crate of the function':32} {'relay':>8} {'floor':>8} {'diff':>8}")
for k in keys:
    a, b = r.get(k, 0), f.get(k, 0)
    if abs(a - b) < 200 and max(a, b) < 1000:
        continue
    print(f"{k:32} {a:8.0f} {b:8.0f} {a-b:8.0f}")
print(f"{'TOTAL':32} {sum(r.values()):8.0f} {sum(f.values()):8.0f} {sum(r.values())-sum(f.values()):8.0f}")
