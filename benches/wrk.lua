-- wrk script: POSTs the body in $BENCH_BODY with the headers in $BENCH_HEADERS
-- ("Name: value" lines), and writes a JSON summary to $BENCH_OUT when done. With
-- $BENCH_DELAY_MS, each connection waits that long after each answer (a paced load).

local function read(path)
  local file = assert(io.open(path, "rb"))
  local text = file:read("*a")
  file:close()
  return text
end

wrk.method = "POST"
wrk.body = read(os.getenv("BENCH_BODY"))
wrk.headers["Content-Type"] = "application/json"
for line in read(os.getenv("BENCH_HEADERS")):gmatch("[^\n]+") do
  local name, value = line:match("^([^:]+):%s*(.*)$")
  if name then
    wrk.headers[name] = value
  end
end

local pause = os.getenv("BENCH_DELAY_MS")
if pause then
  -- Uniform between half and one and a half times the pause: the connections do not fall
  -- into step and send in bursts; the mean pause is the one asked for.
  local mean = tonumber(pause)
  local low, high = math.floor(mean / 2), math.ceil(mean * 3 / 2)
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16))
  function delay()
    return math.random(low, high)
  end
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("BENCH_OUT"), "w"))
  out:write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout,
    latency.min, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
  out:close()
end
