-- wrk script for scripts/bench-api: POST /api/v1/auth/login, counting answers by status.
--
--   BENCH_BODY_FILE  the login body ({"email": …, "password": …}), sent as application/json
--
-- Unlike wrk.lua it reads every answer's status (wrk only counts 4xx/5xx as errors, with
-- no detail), so a 429 from the brute-force guard or the rate limiter shows up by name.
-- At the end it prints one line, `BENCH_JSON {...}`, with wrk's own counters and
-- "statuses": {"200": n, …}, which the bench script parses.

local body_file = assert(os.getenv("BENCH_BODY_FILE"), "BENCH_BODY_FILE is required")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
do
  local file = assert(io.open(body_file, "rb"))
  wrk.body = file:read("*a")
  file:close()
end

local threads = {}

setup = function(thread)
  table.insert(threads, thread)
end

init = function(args)
  statuses = {}
end

response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("statuses") or {}) do
      merged[code] = (merged[code] or 0) + n
    end
  end
  local parts = {}
  for code, n in pairs(merged) do
    table.insert(parts, string.format('"%d":%d', code, n))
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors_connect":%d,"errors_read":%d,"errors_write":%d,'
      .. '"errors_status":%d,"errors_timeout":%d,'
      .. '"latency_p50_us":%d,"latency_p99_us":%d,"latency_max_us":%d,'
      .. '"statuses":{%s}}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max,
    table.concat(parts, ",")))
end
