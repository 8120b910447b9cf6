-- claim_many() without waiting: run the reaper, then lease up to `limit` ready tasks, the
-- oldest first (claim() is a limit of 1). Every lease of the batch has the same receipt:
-- the scripts that check one also name the task, so it still names each lease alone.
-- ARGV: receipt, lease ms, orphan grace ms, limit.
-- Reply: {n, then n times: id, deliveries, deadline ms, record data or nil}, or {0, ms
-- until the reaper has work (-1: none)} when nothing is ready.
local base, receipt = KEYS[1], ARGV[1]
local lease_ms, grace_ms, limit = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
reap(base, now, grace_ms)
local reply, n = {0}, 0
while n < limit do
  local id = redis.call('RPOP', base .. 'ready')
  if not id then
    break
  end
  -- An id deleted while ready is no longer in `queued`, and the wake-up token ('') never
  -- was: skip them.
  if redis.call('HEXISTS', base .. 'queued', id) == 1 then
    local granted = grant(base, id, receipt, now, lease_ms)
    for i = 1, 4 do
      reply[#reply + 1] = granted[i]
    end
    n = n + 1
  end
end
if n == 0 then
  return {0, next_due(base, now, grace_ms)}
end
reply[1] = n
return reply
