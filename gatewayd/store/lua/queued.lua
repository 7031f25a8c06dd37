-- A message's "queued" status record, written by intake (QueueStore.enqueue_each)
-- BEFORE its entry, so a daemon that reads the entry at once never has its "submitted"
-- overwritten by a late "queued"; and never over an existing record of the same id: a
-- repeat whose first copy may be long delivered, or another message reusing the id
-- (refused: duplicate_id).
-- KEYS[1] status hash; ARGV[1] TTL (s); ARGV[2..] field/value pairs
-- Returns 1 when written, 0 when a record existed.
--#include acl_lib
--#include queued_ttl_lib
do
  local refused = acl_refused(KEYS[1], 'EXISTS', 'HSET', 'EXPIRE')
  if refused then return refused end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1] + QUEUED_SLACK_S)  -- (queued_ttl_lib)
return 1
