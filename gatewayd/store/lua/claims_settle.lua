-- Remove registrations from the event-claims set (pipeline/inbound.py take_over_claims)
-- only where the score is still the one the sweep read: a registration renewed since (a
-- new receipt for the message, whose handler may yet die after its claim) is kept.
-- KEYS[1] the event-claims zset; ARGV member, score pairs. Returns how many were removed.
local n = 0
for i = 1, #ARGV, 2 do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) == tonumber(ARGV[i + 1]) then
    n = n + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return n
