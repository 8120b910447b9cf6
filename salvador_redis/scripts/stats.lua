-- stats(): one workflow's figures from the status indexes and the queue structures, never
-- from the records (TaskCounts). The status indexes count by status (ZCARD); pending
-- tasks that are leased, or delayed, are found by intersecting the status index with
-- `leases` and `delayed` (ZINTER iterates the smaller side); the rest of the pending tasks
-- are waiting now. The wait of the queue's head is read from its record by the client.
-- ARGV: how many ready ids to look at from the oldest end for the head, at most.
-- Reply: {server ms, count per status (STATUSES order)..., pending and leased, pending and
-- delayed until later, due time of the oldest pending task whose delay ran out (ms, -1:
-- none), the head's record data ('': none found), completions in each of the last
-- COMPLETION_MINUTES minutes, oldest first...}.
local base, look = KEYS[1], tonumber(ARGV[1])
local now = now_ms()
local pending = base .. 's:pending'
local out = {now}
for _, status in ipairs(STATUSES) do
  table.insert(out, redis.call('ZCARD', base .. 's:' .. status))
end
table.insert(out, #redis.call('ZINTER', 2, base .. 'leases', pending))
-- Scores of the result are the due times (weight 0 drops the status index's score).
local delayed = redis.call('ZINTER', 2, base .. 'delayed', pending, 'WEIGHTS', 1, 0, 'WITHSCORES')
local later, oldest_due = 0, -1
for i = 2, #delayed, 2 do
  local due = tonumber(delayed[i])
  if due > now then
    later = later + 1
  elseif oldest_due < 0 or due < oldest_due then
    oldest_due = due
  end
end
table.insert(out, later)
table.insert(out, oldest_due)
-- The head: the pending id nearest the claiming end of `processing`, then of `ready`
-- (ids of tasks cancelled or finished while queued wait there to be skipped by a claim),
-- looked for 10 ids at a time, then 90, then the rest of `look`.
local function head_of(list)
  local from, size = 0, 10
  while from < look do
    local ids = redis.call('LRANGE', list, -(from + size), -(from + 1))
    for i = #ids, 1, -1 do
      if ids[i] ~= '' and redis.call('ZSCORE', pending, ids[i]) then
        return ids[i]
      end
    end
    if #ids < size then
      return nil
    end
    from = from + size
    size = math.min(from * 9, look - from)
  end
  return nil
end
local head = head_of(base .. 'processing') or head_of(base .. 'ready')
table.insert(out, head and redis.call('HGET', base .. 't:' .. head, 'data') or '')
local minute = math.floor(now / 60000)
local keys = {}
for m = minute - COMPLETION_MINUTES + 1, minute do
  table.insert(keys, base .. 'c:' .. m)
end
for _, n in ipairs(redis.call('MGET', unpack(keys))) do
  table.insert(out, tonumber(n) or 0)
end
return out
