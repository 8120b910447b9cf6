-- Shared by every script (prepended to each one). KEYS[1] is the workflow's key base,
-- `<prefix>{<prefix><workflow, percent-encoded>}:`; every key a script touches is that base
-- plus a suffix, so all of them hash to one Redis Cluster slot:
--   t:<id>   task record (hash: data, status, version, updated, idem)
--   i:<key>  idempotency key -> task id (string, so it can share the record's TTL)
--   s:<st>   ids with status <st> (sorted set, all scores 0, ordered by id)
--   ready    ids to claim (list: LPUSH in, RPOP / BLMOVE RIGHT out)
--   processing  ids moved by BLMOVE, not yet adopted (list)
--   orphans  id -> server ms when the reaper first saw it in processing (hash)
--   queued   id -> deliveries, for every id that is ready, delayed or leased (hash)
--   delayed  id -> due time, server ms (sorted set)
--   leases   id -> lease deadline, server ms (sorted set)
--   receipts id -> receipt of the current lease (hash)
--   expiring id -> when the terminal record's TTL runs out, server ms (sorted set)
--   c:<minute>  tasks that reached `completed` in that minute (server ms // 60000; a
--            counter that expires COMPLETION_TTL_MS after the minute's first completion)

local STATUSES = {'pending', 'running', 'compensating', 'completed', 'failed', 'cancelled', 'compensated'}
local TERMINAL = {completed = true, failed = true, cancelled = true, compensated = true}
-- How many due delayed tasks, expired leases and orphans one claim moves at most.
local REAP_LIMIT = 100
-- Completions are counted per minute for the last COMPLETION_MINUTES minutes (stats); a
-- minute's counter outlives that window, then expires.
local COMPLETION_MINUTES = 60
local COMPLETION_TTL_MS = 2 * 3600 * 1000

-- The server clock in ms: leases and due times never depend on a worker's clock.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Hold `id` back until `due` (server ms). Claimers blocked in BLMOVE chose how long to
-- block before this due time existed, so one of them is woken with an empty id (never a
-- task id: claim and adopt skip it) to look again. At most one such token waits in an
-- empty ready list; a non-empty one wakes claimers anyway.
local function delay(base, id, due)
  redis.call('ZADD', base .. 'delayed', due, id)
  if redis.call('LLEN', base .. 'ready') == 0 then
    redis.call('LPUSH', base .. 'ready', '')
  end
end

-- Queue `id` (ready now, or delayed by `delay_ms`) unless it is queued, leased, or
-- delayed until no later than that: a delayed entry is moved earlier, never later.
local function enqueue(base, id, delay_ms, now)
  if redis.call('HSETNX', base .. 'queued', id, 0) == 0 then
    local due = redis.call('ZSCORE', base .. 'delayed', id)
    if not due or tonumber(due) <= now + math.max(delay_ms, 0) then
      return 0
    end
    redis.call('ZREM', base .. 'delayed', id)
  end
  if delay_ms > 0 then
    delay(base, id, now + delay_ms)
  else
    redis.call('LPUSH', base .. 'ready', id)
  end
  return 1
end

-- Queue `id` afresh whatever its queue state (requeue): any lease is voided, so an ack,
-- extend or release from a claim made before this fails, and the task is ready now or,
-- with `delay_ms` > 0, due then (replacing any earlier due time). An id already in ready
-- or processing (taken by a BLMOVE, being adopted) stays there when no delay is asked:
-- it is claimable now. Only a delayed requeue of such an id scans those lists (LREM).
local function reschedule(base, id, delay_ms, now)
  if redis.call('HSETNX', base .. 'queued', id, 0) == 0 then
    local leased = redis.call('ZREM', base .. 'leases', id) == 1
    redis.call('HDEL', base .. 'receipts', id)
    local delayed = redis.call('ZREM', base .. 'delayed', id) == 1
    if not leased and not delayed then
      if delay_ms <= 0 then
        return
      end
      redis.call('LREM', base .. 'ready', 0, id)
      redis.call('LREM', base .. 'processing', 0, id)
      redis.call('HDEL', base .. 'orphans', id)
    end
  end
  if delay_ms > 0 then
    delay(base, id, now + delay_ms)
  else
    redis.call('LPUSH', base .. 'ready', id)
  end
end

-- Lease `id` to `receipt`; returns what claim() turns into a Claim (record data included,
-- so the engine need not read the task in a second round trip).
local function grant(base, id, receipt, now, lease_ms)
  local deliveries = redis.call('HINCRBY', base .. 'queued', id, 1)
  local deadline = now + lease_ms
  redis.call('ZADD', base .. 'leases', deadline, id)
  redis.call('HSET', base .. 'receipts', id, receipt)
  return {id, deliveries, deadline, redis.call('HGET', base .. 't:' .. id, 'data')}
end

-- Nil when `receipt` holds the live lease on `id`, else why not (for LeaseLostError).
local function lease_problem(base, id, receipt, now)
  if redis.call('HGET', base .. 'receipts', id) ~= receipt then
    return 'it was re-delivered, requeued or acked'
  end
  local deadline = redis.call('ZSCORE', base .. 'leases', id)
  if not deadline or tonumber(deadline) <= now then
    return 'it expired'
  end
  return nil
end

-- The task is finished with: forget its lease and its place in the queue.
local function drop_lease(base, id)
  redis.call('ZREM', base .. 'leases', id)
  redis.call('HDEL', base .. 'receipts', id)
  redis.call('HDEL', base .. 'queued', id)
end

-- The reaper, run by every claim: due delayed tasks become ready, expired leases are
-- re-delivered, and ids a BLMOVE left in processing without ever being adopted (its
-- reply was lost with the connection) go back to ready after `grace_ms`.
local function reap(base, now, grace_ms)
  local ready = base .. 'ready'
  local due = redis.call('ZRANGEBYSCORE', base .. 'delayed', '-inf', now, 'LIMIT', 0, REAP_LIMIT)
  for _, id in ipairs(due) do
    redis.call('ZREM', base .. 'delayed', id)
    redis.call('LPUSH', ready, id)
  end
  local expired = redis.call('ZRANGEBYSCORE', base .. 'leases', '-inf', now, 'LIMIT', 0, REAP_LIMIT)
  for _, id in ipairs(expired) do
    redis.call('ZREM', base .. 'leases', id)
    redis.call('HDEL', base .. 'receipts', id)
    redis.call('LPUSH', ready, id)
  end
  local processing = base .. 'processing'
  if redis.call('LLEN', processing) > 0 then
    local orphans = base .. 'orphans'
    for _, id in ipairs(redis.call('LRANGE', processing, -REAP_LIMIT, -1)) do
      local seen = redis.call('HGET', orphans, id)
      if not seen then
        redis.call('HSET', orphans, id, now)
      elseif now - tonumber(seen) >= grace_ms then
        redis.call('HDEL', orphans, id)
        if redis.call('LREM', processing, -1, id) > 0 then
          redis.call('RPUSH', ready, id)
        end
      end
    end
  end
end

-- Milliseconds until the reaper has something to do (a delayed task due, a lease
-- expiring, an orphan to recheck), or -1: how long an idle claimer may block.
local function next_due(base, now, grace_ms)
  local best = -1
  for _, key in ipairs({base .. 'delayed', base .. 'leases'}) do
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if first[2] then
      local wait = math.max(0, tonumber(first[2]) - now)
      if best < 0 or wait < best then
        best = wait
      end
    end
  end
  if redis.call('LLEN', base .. 'processing') > 0 and (best < 0 or grace_ms < best) then
    best = grace_ms
  end
  return best
end

-- Write a record and keep the status index, the completion counters and the retention
-- TTL in step with it. A record created as completed (no status before) is no completion.
local function store(base, id, data, status, version, updated, now, retention_ms)
  local rec = base .. 't:' .. id
  local old = redis.call('HGET', rec, 'status')
  redis.call('HSET', rec, 'data', data, 'status', status, 'version', version, 'updated', updated)
  if old ~= status then
    if old then
      redis.call('ZREM', base .. 's:' .. old, id)
    end
    redis.call('ZADD', base .. 's:' .. status, 0, id)
    if old and status == 'completed' then
      local counter = base .. 'c:' .. math.floor(now / 60000)
      if redis.call('INCR', counter) == 1 then
        redis.call('PEXPIRE', counter, COMPLETION_TTL_MS)
      end
    end
  end
  if TERMINAL[status] then
    if retention_ms > 0 then
      local at = now + retention_ms
      redis.call('PEXPIREAT', rec, at)
      local idem = redis.call('HGET', rec, 'idem')
      if idem then
        redis.call('PEXPIREAT', base .. 'i:' .. idem, at)
      end
      redis.call('ZADD', base .. 'expiring', at, id)
    end
  elseif old and TERMINAL[old] and redis.call('ZREM', base .. 'expiring', id) == 1 then
    redis.call('PERSIST', rec)
    local idem = redis.call('HGET', rec, 'idem')
    if idem then
      redis.call('PERSIST', base .. 'i:' .. idem)
    end
  end
end

-- True when the record already holds exactly this write at `expected` + 1: the client
-- is sending again a command whose reply it lost (the data carries the writer's
-- timestamp, so two different writes never look alike).
local function already_written(base, id, expected, data)
  local rec = base .. 't:' .. id
  return tonumber(redis.call('HGET', rec, 'version')) == expected + 1
    and redis.call('HGET', rec, 'data') == data
end

-- Compare-and-set on the `version` field. Returns nil when written, else the reply for
-- the client: {0, stored version} on a conflict, {-1} when the record is gone. A write
-- that already landed (the client retried after a lost reply) counts as written.
local function cas_store(base, id, expected, data, status, updated, now, retention_ms)
  local rec = base .. 't:' .. id
  local current = redis.call('HGET', rec, 'version')
  if not current then
    return {-1}
  end
  current = tonumber(current)
  if current ~= expected then
    if already_written(base, id, expected, data) then
      return nil
    end
    return {0, current}
  end
  store(base, id, data, status, expected + 1, updated, now, retention_ms)
  return nil
end

-- Insert a record (version 1) and, when `queue` is '1', queue it, unless a record with the
-- same id or the same idempotency key exists. Returns nil when created, else the existing
-- record's data. Under `maxmemory` the first write (SET or HSET, both refused when the
-- server is full) fails before anything is written; once one write landed Redis runs the
-- script to its end.
local function insert(base, id, data, status, updated, idem, queue, delay_ms, retention_ms)
  local rec = base .. 't:' .. id
  local existing = redis.call('HGET', rec, 'data')
  if existing then
    return existing
  end
  if idem ~= '' then
    local key = base .. 'i:' .. idem
    local owner = redis.call('GET', key)
    if owner then
      existing = redis.call('HGET', base .. 't:' .. owner, 'data')
      if existing then
        return existing
      end
    end
    redis.call('SET', key, id)
    redis.call('HSET', rec, 'idem', idem)
  end
  local now = now_ms()
  store(base, id, data, status, 1, updated, now, retention_ms)
  if queue == '1' then
    enqueue(base, id, delay_ms, now)
  end
  return nil
end
