-- Mark a status record's event claim 'published' (lua/receipt.lua), only while the record
-- exists: an HSET on a record that expired meanwhile would leave a hash with no TTL.
-- KEYS[1] status hash. Returns 1 when marked.
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'event_claim', 'published')
  return 1
end
return 0
