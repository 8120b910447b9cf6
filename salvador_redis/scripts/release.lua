-- release(): give a leased task back, ready now or after a delay that holds no lease.
-- ARGV: id, receipt, delay ms. Reply: {1} or {0, why the lease is lost}.
local base, id, receipt = KEYS[1], ARGV[1], ARGV[2]
local now = now_ms()
local problem = lease_problem(base, id, receipt, now)
if problem then
  return {0, problem}
end
redis.call('ZREM', base .. 'leases', id)
redis.call('HDEL', base .. 'receipts', id)
local delay_ms = tonumber(ARGV[3])
if delay_ms > 0 then
  delay(base, id, now + delay_ms)
else
  redis.call('LPUSH', base .. 'ready', id)
end
return {1}
