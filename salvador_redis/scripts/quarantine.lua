-- quarantine(): overwrite an unreadable record without a version check (its version
-- cannot be trusted). ARGV: id, data, status, version, updated, retention ms. Reply: 1.
local base, id = KEYS[1], ARGV[1]
store(base, id, ARGV[2], ARGV[3], ARGV[4], ARGV[5], now_ms(), tonumber(ARGV[6]))
return 1
