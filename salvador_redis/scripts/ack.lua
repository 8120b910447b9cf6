-- ack(): the task is finished with; never deliver it again. ARGV: id, receipt.
-- Reply: {1} or {0, why the lease is lost}.
local base, id, receipt = KEYS[1], ARGV[1], ARGV[2]
local problem = lease_problem(base, id, receipt, now_ms())
if problem then
  return {0, problem}
end
drop_lease(base, id)
return {1}
