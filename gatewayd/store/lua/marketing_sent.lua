-- Remember a batch's campaign sends per recipient (campaigns.funnel.Sends): the
-- cooling-off streak and the opt-out attribution read this. Single Redis only (the
-- recipients' keys spread over a cluster's slots; there the same writes go as commands).
-- ARGV[1] now, ARGV[2] TTL (ms), ARGV[3] n; then per send: the recipient's marketing
-- key, campaign ("" = none), variant, "1" when the message carried a link else "0".
local rcall = redis.call
local now, ttl = ARGV[1], ARGV[2]
local a = 4
for _ = 1, tonumber(ARGV[3]) do
  local key, campaign, link = ARGV[a], ARGV[a + 1], ARGV[a + 3]
  if link == '1' then
    rcall('HINCRBY', key, 'n', 1)
    if campaign ~= '' then
      rcall('HSET', key, 'last', now, 'c:' .. campaign, now .. ' ' .. ARGV[a + 2])
    else
      rcall('HSET', key, 'last', now)
    end
  elseif campaign ~= '' then
    rcall('HSET', key, 'c:' .. campaign, now .. ' ' .. ARGV[a + 2])
  end
  rcall('PEXPIRE', key, ttl)
  a = a + 4
end
return 1
