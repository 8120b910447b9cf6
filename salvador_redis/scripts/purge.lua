-- One batch of purge(): delete records of one status last updated before a cutoff.
-- ARGV: status, cutoff (epoch seconds), after ('' = from the start), count.
-- Reply: {ids scanned, last id scanned, deleted id...}.
local base, status, cutoff, count = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4])
local index = base .. 's:' .. status
local min = ARGV[3] == '' and '-' or '(' .. ARGV[3]
local ids = redis.call('ZRANGEBYLEX', index, min, '+', 'LIMIT', 0, count)
local out = {#ids, ids[#ids] or ''}
for _, id in ipairs(ids) do
  local rec = base .. 't:' .. id
  local updated = redis.call('HGET', rec, 'updated')
  if not updated then
    redis.call('ZREM', index, id)  -- the record's retention TTL ran out
  elseif tonumber(updated) < cutoff then
    local idem = redis.call('HGET', rec, 'idem')
    redis.call('DEL', rec)
    if idem and redis.call('GET', base .. 'i:' .. idem) == id then
      redis.call('DEL', base .. 'i:' .. idem)
    end
    redis.call('ZREM', index, id)
    redis.call('ZREM', base .. 'expiring', id)
    drop_lease(base, id)
    table.insert(out, id)
  end
end
return out
