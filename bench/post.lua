-- wrk script for bench/relay_bench.py: POST a fixed JSON body, and print the run's figures as one
-- JSON line (prefixed "BENCH_JSON ") when it ends.
--   BENCH_BODY  the request body (JSON)
--   BENCH_AUTH  optional value of the Authorization header
--   BENCH_KEYS_FILE  optional: rotate over these keys instead (see below)
-- wrk counts a response with status >= 400 in errors.status.

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or '{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = auth
end

-- BENCH_KEYS_FILE (bench/soak.py): one key per line, each request with the next one (each wrk thread
-- starts at its own place in the list). Only then is request() defined: wrk sends a prebuilt request
-- otherwise, which is cheaper.
local keys_file = os.getenv("BENCH_KEYS_FILE")
if keys_file and keys_file ~= "" then
  local keys = {}
  for line in io.lines(keys_file) do keys[#keys + 1] = "Bearer " .. line end
  local i = 0
  function setup(thread)
    thread:set("offset", math.random(#keys))
  end
  function init(args)
    i = offset or 0
  end
  function request()
    i = i % #keys + 1
    wrk.headers["Authorization"] = keys[i]
    return wrk.format()
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local out = string.format(
    '{"duration_us":%d,"requests":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9))
  io.write("BENCH_JSON " .. out .. "\n")
end
