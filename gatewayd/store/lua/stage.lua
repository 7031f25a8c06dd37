-- Cluster intake, step 1 (pipeline/staging.py): stage a message in its class's delayed
-- set, due after the staging grace, honouring its idempotency key. Retry-safe: a retry
-- of a call that already staged the message (same id, member still staged) answers as
-- the first call did; the same key with another message, or with this id once it left
-- the set (promoted: a repeat), is a duplicate.
-- KEYS[1] delayed ZSET, KEYS[2] idempotency key (same slot: the class's hash tag)
-- ARGV[1] member (the message's fields, JSON), ARGV[2] due (Unix s), ARGV[3] message id,
-- ARGV[4] idempotency TTL (s)
-- Returns {1, id} when staged, {0, first id} for a duplicate.
--#include acl_lib
do
  local refused = acl_refused(KEYS[1], 'GET', 'ZSCORE', 'SET', 'ZADD')
  if refused then return refused end
end
local prev = redis.call('GET', KEYS[2])
if prev then
  if prev == ARGV[3] and redis.call('ZSCORE', KEYS[1], ARGV[1]) then
    return {1, prev}
  end
  return {0, prev}
end
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return {1, ARGV[3]}
