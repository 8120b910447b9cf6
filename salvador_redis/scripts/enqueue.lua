-- enqueue(): queue an id unless it is already queued, delayed or leased.
-- ARGV: id, delay ms. Reply: 1 queued, 0 already there.
return enqueue(KEYS[1], ARGV[1], tonumber(ARGV[2]), now_ms())
