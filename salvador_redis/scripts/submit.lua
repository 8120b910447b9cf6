-- create(task) and submit(task): insert a record (version 1) and, for submit, queue it,
-- atomically. A record with the same id, or the same idempotency key, wins: nothing is
-- written and its data is returned.
-- ARGV: id, data, status, updated, idempotency key ('' = none), enqueue ('1'/'0'),
--       delay ms, retention ms. Reply: {1} created, {0, data} existing.
local base, id = KEYS[1], ARGV[1]
local data, status, updated, idem = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local rec = base .. 't:' .. id
local existing = redis.call('HGET', rec, 'data')
if existing then
  return {0, existing}
end
if idem ~= '' then
  local key = base .. 'i:' .. idem
  local owner = redis.call('GET', key)
  if owner then
    existing = redis.call('HGET', base .. 't:' .. owner, 'data')
    if existing then
      return {0, existing}
    end
  end
  redis.call('SET', key, id)
  redis.call('HSET', rec, 'idem', idem)
end
local now = now_ms()
store(base, id, data, status, 1, updated, now, tonumber(ARGV[8]))
if ARGV[6] == '1' then
  enqueue(base, id, tonumber(ARGV[7]), now)
end
return {1}
