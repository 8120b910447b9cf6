-- extend(): renew a live lease. ARGV: id, receipt, lease ms.
-- Reply: {1, new deadline ms} or {0, why the lease is lost}.
local base, id, receipt = KEYS[1], ARGV[1], ARGV[2]
local now = now_ms()
local problem = lease_problem(base, id, receipt, now)
if problem then
  return {0, problem}
end
local deadline = now + tonumber(ARGV[3])
redis.call('ZADD', base .. 'leases', deadline, id)
return {1, deadline}
