-- Cluster intake, step 3 (pipeline/staging.py): move one staged message from its
-- class's delayed set onto the stream, once its status record is confirmed. Atomic
-- with the mover (lua/move_due.lua), so the message is queued once whichever gets to
-- it first, and a retried call queues nothing twice.
-- KEYS[1] delayed ZSET, KEYS[2] priority stream (same slot); ARGV[1] member,
-- ARGV[2..] stream field/value pairs.
-- Returns 1 when queued now, 0 when it was no longer staged.
--#include acl_lib
do
  local refused = acl_refused(KEYS[1], 'ZREM', 'XADD')
  if refused then return refused end
end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
return 1
