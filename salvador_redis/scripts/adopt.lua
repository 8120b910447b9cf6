-- The second half of a blocking claim: BLMOVE moved `id` from ready to processing; lease
-- it now. If the reaper already gave it back (this client stalled past the orphan grace),
-- or it was deleted, the claim comes back empty and the id stays with its new holder.
-- ARGV: id, receipt, lease ms. Reply as claim.lua ({''} when not adopted).
local base, id, receipt = KEYS[1], ARGV[1], ARGV[2]
redis.call('HDEL', base .. 'orphans', id)
if redis.call('LREM', base .. 'processing', -1, id) == 0 then
  return {''}
end
if redis.call('HEXISTS', base .. 'queued', id) == 0 or redis.call('ZSCORE', base .. 'leases', id) then
  return {''}
end
return grant(base, id, receipt, now_ms(), tonumber(ARGV[3]))
