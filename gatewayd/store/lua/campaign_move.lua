-- Move a campaign to another status if it is in one of the allowed ones (campaigns.model).
-- KEYS[1] campaign hash, KEYS[2] active-campaigns set; ARGV[1] allowed statuses
-- (comma-separated), ARGV[2] target status, ARGV[3] campaign id, ARGV[4..] more
-- field/value pairs to set. Returns {1, previous status}, or {0, status} ('' = none).
--#include acl_lib
do
  local refused = acl_refused(KEYS[1], 'HGET', 'HSET', 'SREM', 'SADD')
  if refused then return refused end
end
local s = redis.call('HGET', KEYS[1], 'status')
if not s then
  return {0, ''}
end
if not string.find(',' .. ARGV[1] .. ',', ',' .. s .. ',', 1, true) then
  return {0, s}
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], unpack(ARGV, 4))
if ARGV[2] == 'cancelled' or ARGV[2] == 'done' then
  redis.call('SREM', KEYS[2], ARGV[3])
else
  redis.call('SADD', KEYS[2], ARGV[3])
end
return {1, s}
