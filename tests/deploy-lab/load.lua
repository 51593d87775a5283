-- METHOD=POST (env) sends POST with a small body instead of GET.
local method = os.getenv("METHOD")
if method and method ~= "" and method ~= "GET" then
  wrk.method = method
  wrk.body = "x=1"
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
end

-- wrk script for tests/deploy-lab/load: one machine-readable summary line.
-- summary.requests counts complete responses (any status); errors.status
-- counts responses with status > 399; socket errors are connect, read
-- (includes a connection closed before the response), write, timeout.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK requests=%d non2xx=%d connect=%d read=%d write=%d timeout=%d duration_us=%d p99_us=%d max_us=%d\n",
    summary.requests, e.status, e.connect, e.read, e.write, e.timeout,
    summary.duration, latency:percentile(99), latency.max))
end
