-- requeue(): a fenced update and a fresh queue entry in one step (runs a finished task
-- again). Unlike enqueue, any lease held from before is voided and any old due time
-- replaced: a worker that claimed the task while it was terminal must not ack away the
-- entry that makes it run again. A replay (the reply was lost) changes nothing: the
-- first run already queued the task, and may since have been claimed by a worker whose
-- lease must stand. ARGV: id, expected version, data, status, updated, retention ms,
-- delay ms. Reply as update.lua.
local base, id = KEYS[1], ARGV[1]
local expected, data = tonumber(ARGV[2]), ARGV[3]
if already_written(base, id, expected, data) then
  return {1}
end
local now = now_ms()
local failed = cas_store(base, id, expected, data, ARGV[4], ARGV[5], now, tonumber(ARGV[6]))
if failed then
  return failed
end
reschedule(base, id, tonumber(ARGV[7]), now)
return {1}
