-- Write one transition of a message's status record, never backwards (issue 15).
-- queued < deferred < submitted < final; a final state is never replaced, and a write of
-- a lower rank than the record's is a no-op (a late "queued" after "submitted": on a
-- cluster a pipeline's commands reach their nodes side by side, in any order).
-- KEYS[1] status hash; KEYS[2] (single Redis only) events stream, written with the
-- record when it is written (on a cluster it lives in another slot: the caller writes it)
-- ARGV[1] status TTL (s), ARGV[2] events MAXLEN (~), ARGV[3] message id,
-- ARGV[4..] status field/value pairs, "state" first.
-- Returns 1 when written, 0 when the record is further along.
--#include acl_lib
do
  local refused = acl_refused(KEYS[1], 'HMGET', 'HSET', 'EXPIRE', 'XADD')
  if refused then return refused end
end
--#include rank_lib
local new = ARGV[5]
-- One read: never backwards, and whether the TTL stays (rank_lib.keeps_ttl).
local cur = redis.call('HMGET', KEYS[1], 'state', 'updated_at')
if not may_write(cur[1], new) then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
if new == 'queued' then
  redis.call('EXPIRE', KEYS[1], ARGV[1] + QUEUED_SLACK_S)  -- as every "queued" writer
elseif not keeps_ttl(cur[1], cur[2], ARGV[6] == 'updated_at' and ARGV[7] or nil) then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
if KEYS[2] then
  local ev = {'id', ARGV[3]}
  for j = 4, #ARGV, 2 do
    local f = ARGV[j]
    if f == 'updated_at' then
      ev[#ev + 1] = 'at'
      ev[#ev + 1] = ARGV[j + 1]
    elseif not NOT_IN_EVENT[f] then
      ev[#ev + 1] = f
      ev[#ev + 1] = ARGV[j + 1]
    end
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ev))
end
return 1
