-- wrk script of ./crm bench-reads (bench/reads.py): spreads GETs over many customers.
--   wrk -s bench/reads.lua <url> -- <customer ids file> <path template>
-- The template's "{id}" is replaced by a customer id drawn at random for every request. At the
-- end it prints one JSON line with the figures bench/reads.py reports (latencies in µs).

local ids = {}
local template = "/"

function init(args)
  for line in io.lines(args[1]) do
    if line ~= "" then ids[#ids + 1] = line end
  end
  template = args[2]
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end

function request()
  local path = template
  if #ids > 0 then
    path = template:gsub("{id}", ids[math.random(#ids)])
  end
  return wrk.format("GET", path)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "not_2xx": %d, "socket_errors": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
