-- update(): compare-and-set a record on its `version`.
-- ARGV: id, expected version, data, status, updated, retention ms.
-- Reply: {1}, {0, stored version} (conflict) or {-1} (no such record).
local base = KEYS[1]
local failed = cas_store(base, ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], now_ms(), tonumber(ARGV[6]))
return failed or {1}
