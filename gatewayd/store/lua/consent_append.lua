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
--#include acl_lib
do
  local refused = acl_refused(KEYS[1], 'XADD', 'HGET', 'HSET', 'EXPIRE')
  if refused then return refused end
end
--#include consent_lib
return consent_append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4],
  unpack(ARGV, 5))
