-- delete(): remove a record, its idempotency key, its status entry and every trace of it
-- in the queue. ARGV: id. Reply: 1 removed, 0 no such record.
local base, id = KEYS[1], ARGV[1]
local rec = base .. 't:' .. id
local idem = redis.call('HGET', rec, 'idem')
if redis.call('DEL', rec) == 0 then
  return 0
end
if idem and redis.call('GET', base .. 'i:' .. idem) == id then
  redis.call('DEL', base .. 'i:' .. idem)
end
for _, status in ipairs(STATUSES) do
  redis.call('ZREM', base .. 's:' .. status, id)
end
drop_lease(base, id)
redis.call('LREM', base .. 'ready', 0, id)
redis.call('LREM', base .. 'processing', 0, id)
redis.call('HDEL', base .. 'orphans', id)
redis.call('ZREM', base .. 'delayed', id)
redis.call('ZREM', base .. 'expiring', id)
return 1
