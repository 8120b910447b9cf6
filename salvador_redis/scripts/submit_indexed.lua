-- submit.lua plus its two index entries, for a single server (on a cluster the index keys
-- live in other slots). One script, so a submit that Redis refuses (out of memory) leaves
-- nothing behind, not even an index entry pointing at no record.
-- KEYS: workflow base, `<prefix>ids`, `<prefix>workflows`.
-- ARGV: as submit.lua, then the workflow name. Reply as submit.lua.
local existing = insert(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
  tonumber(ARGV[7]), tonumber(ARGV[8]))
if existing then
  return {0, existing}
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[9])
redis.call('SADD', KEYS[3], ARGV[9])
return {1}
