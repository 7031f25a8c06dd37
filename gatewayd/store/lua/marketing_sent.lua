-- Remember a batch's campaign sends per recipient (campaigns.funnel.Sends): the
-- opt-out attribution reads the first, the cooling-off check the second. Single Redis
-- only (the recipients' keys spread over a cluster's slots; there the same writes go as
-- commands).
-- ARGV[1] now, ARGV[2] TTL (ms), ARGV[3] n; then per send: the recipient's marketing
-- key, campaign ("" = none), variant, "1" to count it in the cooling-off streak.
--   campaign: SET <marketing key>:<campaign> "<now> <variant>" PX ttl (one command)
--   streak:   HINCRBY <marketing key> n 1, HSET last now, PEXPIRE
--#include acl_lib
do
  local refused = acl_refused(ARGV[4], 'SET', 'HINCRBY', 'HSET', 'PEXPIRE')
  if refused then return refused end
end
local rcall = redis.call
local now, ttl = ARGV[1], ARGV[2]
local a = 4
for _ = 1, tonumber(ARGV[3]) do
  local key, campaign = ARGV[a], ARGV[a + 1]
  if campaign ~= '' then
    rcall('SET', key .. ':' .. campaign, now .. ' ' .. ARGV[a + 2], 'PX', ttl)
  end
  if ARGV[a + 3] == '1' then
    rcall('HINCRBY', key, 'n', 1)
    rcall('HSET', key, 'last', now)
    rcall('PEXPIRE', key, ttl)
  end
  a = a + 4
end
return 1
