-- create(task) and submit(task): insert a record (version 1) and, for submit, queue it,
-- atomically. A record with the same id, or the same idempotency key, wins: nothing is
-- written and its data is returned. The id index and the workflow name (keys outside
-- this workflow's slot) are the caller's to write first: Redis Cluster uses this script.
-- ARGV: id, data, status, updated, idempotency key ('' = none), enqueue ('1'/'0'),
--       delay ms, retention ms. Reply: {1} created, {0, data} existing.
local existing = insert(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
  tonumber(ARGV[7]), tonumber(ARGV[8]))
if existing then
  return {0, existing}
end
return {1}
