-- A consent record's index entry, on Redis Cluster (gatewayd.consent.records.index_entry),
-- where the record and its index bucket live in different slots: the record is written
-- first, then this appends its id. (A single Redis does both in consent_append.lua.)
-- KEYS[1] the index bucket; ARGV[1] the number as records store it, ARGV[2] the record's
-- stream id, ARGV[3] the bucket's TTL (s), ARGV[4] an entry's longest length (bytes).
--#include acl_lib
do
  local refused = acl_refused(KEYS[1], 'HGET', 'HSET', 'EXPIRE')
  if refused then return refused end
end
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then
  v = v .. ' ' .. ARGV[2]
  local max = tonumber(ARGV[4])
  if #v > max then v = string.sub(v, string.find(v, ' ', #v - max, true) + 1) end
else
  v = ARGV[2]
end
redis.call('HSET', KEYS[1], ARGV[1], v)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
