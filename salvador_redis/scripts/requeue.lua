-- requeue(): a fenced update and an enqueue in one step (runs a finished task again).
-- ARGV: id, expected version, data, status, updated, retention ms, delay ms.
-- Reply as update.lua.
local base, id = KEYS[1], ARGV[1]
local now = now_ms()
local failed = cas_store(base, id, tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], now, tonumber(ARGV[6]))
if failed then
  return failed
end
enqueue(base, id, tonumber(ARGV[7]), now)
return {1}
