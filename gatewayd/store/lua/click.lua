-- Record one request for a short link (campaigns.links). KEYS[1] the link (its packed
-- fields), KEYS[2] its counts hash (same hash tag); ARGV[1] now, ARGV[2] 'c' (a click)
-- or 'p' (a link preview: counted apart, no event).
-- Returns false for an unknown (or expired) code; else {packed fields, first (1 = the
-- first click), clicks so far}. The counts hash expires with the link.
--#include acl_lib
do
  local refused = acl_refused(KEYS[1], 'EXISTS', 'GET', 'HINCRBY', 'PEXPIRE', 'PTTL',
    'HSETNX')
  if refused then return refused end
end
local packed = redis.call('GET', KEYS[1])
if not packed then
  return false
end
local fresh = redis.call('EXISTS', KEYS[2]) == 0
if ARGV[2] == 'p' then
  redis.call('HINCRBY', KEYS[2], 'previews', 1)
  if fresh then redis.call('PEXPIRE', KEYS[2], redis.call('PTTL', KEYS[1])) end
  return {packed, 0, 0}
end
local clicks = redis.call('HINCRBY', KEYS[2], 'clicks', 1)
local first = redis.call('HSETNX', KEYS[2], 'first', ARGV[1])
if fresh then redis.call('PEXPIRE', KEYS[2], redis.call('PTTL', KEYS[1])) end
return {packed, first, clicks}
