-- Move due messages from a class's delayed set back onto its stream, oldest first.
-- Atomic, so two daemons running the mover never queue one message twice.
-- KEYS[1] delayed ZSET, KEYS[2] priority stream; ARGV[1] now, ARGV[2] limit
--#include acl_lib
do
  local refused = acl_refused(KEYS[1], 'ZRANGEBYSCORE', 'XADD', 'ZREM')
  if refused then return refused end
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local fields = cjson.decode(member)
  local args = {}
  for k, v in pairs(fields) do
    args[#args + 1] = k
    args[#args + 1] = tostring(v)
  end
  redis.call('XADD', KEYS[2], '*', unpack(args))
  redis.call('ZREM', KEYS[1], member)
end
return #due
