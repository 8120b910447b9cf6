-- One batch of a listing: up to `count` ids after `after` from each status index, with
-- their record data (nil for a record that expired meanwhile). The client merges them.
-- ARGV: after ('' = from the start), count, status... Reply: {status index, id, data}...
local base, count = KEYS[1], tonumber(ARGV[2])
local min = ARGV[1] == '' and '-' or '(' .. ARGV[1]
local out = {}
for i = 3, #ARGV do
  for _, id in ipairs(redis.call('ZRANGEBYLEX', base .. 's:' .. ARGV[i], min, '+', 'LIMIT', 0, count)) do
    table.insert(out, i - 2)
    table.insert(out, id)
    table.insert(out, redis.call('HGET', base .. 't:' .. id, 'data') or '')
  end
end
return out
