-- One number's opt-out change and its consent records, in one call (policy.optout.record
-- on a single Redis): every record first (consent_lib: XADD, then its index entry), the
-- opt-out HASH last, so a failure (an ACL refusal, a key of the wrong type) leaves the
-- opt-out as it was rather than changed without its record. Before, a MULTI held the
-- HASH change and the record script, and a failing script did not stop the HSET.
-- KEYS[1] the consent stream, KEYS[2] the number's index bucket, KEYS[3] its opt-out HASH.
-- ARGV[1] oldest stream id kept, ARGV[2] the bucket's TTL (s), ARGV[3] an index entry's
-- longest length (bytes), ARGV[4] the number as records store it, ARGV[5] "out" (HSET
-- the fields to ARGV[6], the time) or "in" (HDEL them), ARGV[7] n fields, then the n
-- HASH fields, then per record: its field/value count, then those values.
-- Returns the records' stream ids.
--#include acl_lib
do
  local refused = acl_refused(KEYS[1], 'XADD', 'HGET', 'HSET', 'EXPIRE', 'HDEL')
  if refused then return refused end
end
--#include consent_lib
local stream, ix, hash = KEYS[1], KEYS[2], KEYS[3]
local minid, ttl, max, num = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local nf = tonumber(ARGV[7])
local a = 8 + nf
local ids = {}
while a <= #ARGV do
  local c = tonumber(ARGV[a])
  ids[#ids + 1] = consent_append(stream, ix, minid, ttl, max, num,
    unpack(ARGV, a + 1, a + c))
  a = a + 1 + c
end
for i = 8, 7 + nf do
  if ARGV[5] == 'out' then
    redis.call('HSET', hash, ARGV[i], ARGV[6])
  else
    redis.call('HDEL', hash, ARGV[i])
  end
end
return ids
