-- POSTs the chat bodies of $BENCH_PAYLOADS (JSONL) in turn; prints one JSON line of results.
local bodies = {}
for line in io.lines(os.getenv("BENCH_PAYLOADS") or "bench/payloads.jsonl") do
  if #line > 0 then bodies[#bodies + 1] = line end
end
local headers = {["Content-Type"] = "application/json"}
local i = 0

request = function()
  i = i % #bodies + 1
  return wrk.format("POST", nil, headers, bodies[i])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
