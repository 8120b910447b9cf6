-- settle(): the last write of a run and its ack in one step. The write is fenced exactly
-- as in update.lua; the lease is dropped only if `receipt` still holds it (otherwise the
-- new holder finds a terminal task and acks it).
-- ARGV: id, expected version, data, status, updated, retention ms, receipt.
-- Reply as update.lua.
local base, id = KEYS[1], ARGV[1]
local failed = cas_store(base, id, tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], now_ms(), tonumber(ARGV[6]))
if failed then
  return failed
end
if redis.call('HGET', base .. 'receipts', id) == ARGV[7] then
  drop_lease(base, id)
end
return {1}
