-- Claim a message id for a raw stream entry (one pushed without gatewayd's intake, which
-- creates the record itself: lua/queued.lua), so reusing an id never overwrites an
-- earlier message's status (issue 14). One key: cluster-safe, pipelined a batch at once.
-- KEYS[1] status hash; ARGV[1] the entry ("<class> <stream entry id>"), ARGV[2] TTL (s),
-- ARGV[3] now. The claim is the record's "entry" field.
-- Returns {1, state} when this entry holds the id (a new record, "queued"; or its own
-- earlier claim, read again after a crash: the state it reached), {0, ''} when another
-- message holds it.
--#include acl_lib
--#include queued_ttl_lib
do
  local refused = acl_refused(KEYS[1], 'EXISTS', 'HGET', 'HSET', 'EXPIRE')
  if refused then return refused end
end
local cur = redis.call('HGET', KEYS[1], 'entry')
if cur == ARGV[1] then
  return {1, redis.call('HGET', KEYS[1], 'state') or ''}
end
if cur or redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, ''}
end
redis.call('HSET', KEYS[1], 'entry', ARGV[1], 'state', 'queued', 'updated_at', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2] + QUEUED_SLACK_S)  -- (queued_ttl_lib)
return {1, 'queued'}
