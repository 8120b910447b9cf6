-- Retention clean-up, part 1: ids whose record TTL ran out over a second ago leave the
-- status index. The client then drops them from the id index and, last, from `expiring`
-- (so a crash in between only repeats the work). ARGV: max ids. Reply: the ids.
local base = KEYS[1]
local expiring = base .. 'expiring'
local ids = redis.call('ZRANGEBYSCORE', expiring, '-inf', now_ms() - 1000, 'LIMIT', 0, tonumber(ARGV[1]))
local gone = {}
for _, id in ipairs(ids) do
  if redis.call('EXISTS', base .. 't:' .. id) == 0 then
    for status in pairs(TERMINAL) do
      redis.call('ZREM', base .. 's:' .. status, id)
    end
    table.insert(gone, id)
  else
    redis.call('ZREM', expiring, id)  -- kept alive meanwhile: not ours to clean
  end
end
return gone
