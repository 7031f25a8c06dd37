-- Enqueue one message, honouring its idempotency key (atomic: no second copy).
-- KEYS[1] priority stream, KEYS[2] idempotency key
-- ARGV[1] message id, ARGV[2] idempotency TTL (s), ARGV[3..] stream field/value pairs
--#include acl_lib
do
  local refused = acl_refused(KEYS[1], 'GET', 'SET', 'XADD')
  if refused then return refused end
end
local prev = redis.call('GET', KEYS[2])
if prev then
  return {0, prev}
end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
return {1, ARGV[1]}
