-- wrk script of ./crm bench-recommendations: bench/reads.lua's requests, sent at a fixed total rate.
--   wrk --threads 1 -s bench/fixed_rate.lua <url> -- <customer ids file> <path template> <rate/s>
-- Every connection, before each request, claims the next slot of one schedule (a slot every
-- 1/rate s) and waits until it is due (wrk's delay() hook). A slot claimed after it was due (all
-- connections were busy: the server fell behind) is counted late with by how much: wrk times a
-- request from when it is sent, so the late slots say how far its percentiles understate the
-- wait. Prints a JSON line of pacing figures, then reads.lua's line. Needs LuaJIT (wrk's Lua).

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "reads.lua")

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } crm_timespec;
  int clock_gettime(int clock, crm_timespec *now);
]]
local CLOCK_MONOTONIC = 1
local clock = ffi.new("crm_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end

local interval_ms = 0
local next_due = nil
late, late_max_ms = 0, 0 -- globals: done() reads them from each thread (thread:get)

local read_ids = init
function init(args)
  read_ids(args)
  interval_ms = 1000 / tonumber(args[3])
end

function delay()
  local now = now_ms()
  next_due = (next_due or now) + interval_ms
  local wait = next_due - now
  if wait < -1 then
    late = late + 1
    if -wait > late_max_ms then late_max_ms = -wait end
  end
  return wait > 0 and math.floor(wait + 0.5) or 0
end

local threads = {}
function setup(thread)
  threads[#threads + 1] = thread
end

local report = done
function done(summary, latency, requests)
  local late_total, worst = 0, 0
  for _, thread in ipairs(threads) do
    late_total = late_total + thread:get("late")
    worst = math.max(worst, thread:get("late_max_ms"))
  end
  io.write(string.format('{"late": %d, "late_max_us": %d}\n', late_total, worst * 1000))
  report(summary, latency, requests)
end
