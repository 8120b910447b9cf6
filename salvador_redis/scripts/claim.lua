-- claim() without waiting: run the reaper, then lease the next ready task.
-- ARGV: receipt, lease ms, orphan grace ms.
-- Reply: {id, deliveries, deadline ms, record data or nil}, or {'', ms until the reaper
-- has work (-1: none)} when nothing is ready.
local base, receipt = KEYS[1], ARGV[1]
local lease_ms, grace_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
reap(base, now, grace_ms)
while true do
  local id = redis.call('RPOP', base .. 'ready')
  if not id then
    break
  end
  -- An id deleted while ready is no longer in `queued`, and the wake-up token ('') never
  -- was: skip them.
  if redis.call('HEXISTS', base .. 'queued', id) == 1 then
    return grant(base, id, receipt, now, lease_ms)
  end
end
return {'', next_due(base, now, grace_ms)}
