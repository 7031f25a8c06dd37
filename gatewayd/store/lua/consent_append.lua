-- Append one consent record (gatewayd.consent.records.write) and index it by number.
-- KEYS[1] the consent stream, KEYS[2] the number's index bucket (a HASH: number -> the
-- stream ids of its records, space-separated; 65,536 buckets, so a bucket stays a small
-- listpack: ~40 bytes a number, where a key a number cost ~170). ARGV[1] oldest stream id
-- kept (XADD MINID: older records go), ARGV[2] the bucket's TTL in seconds (the retention,
-- renewed by every write: a bucket idle that long holds only ids trimmed from the
-- stream), ARGV[3] an index entry's longest length in bytes (older ids are cut), ARGV[4]
-- the number as the record stores it (the bucket's field); then the record's field/value
-- pairs. Single Redis only: on a cluster the two keys live in different slots and
-- records.write pipelines the same commands instead.
local id = redis.call('XADD', KEYS[1], 'MINID', ARGV[1], '*', unpack(ARGV, 5))
local ix, num = KEYS[2], ARGV[4]
local v = redis.call('HGET', ix, num)
if v then
  v = v .. ' ' .. id
  local max = tonumber(ARGV[3])
  if #v > max then v = string.sub(v, string.find(v, ' ', #v - max, true) + 1) end
else
  v = id
end
redis.call('HSET', ix, num, v)
redis.call('EXPIRE', ix, ARGV[2])
return id
