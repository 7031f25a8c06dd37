-- Take up to ARGV[4] tokens from a shared token bucket (gatewayd.policy.ratelimit).
-- KEYS[1] bucket HASH {t = tokens, ts = last refill (Unix s)}; an absent bucket is full.
-- ARGV[1] rate (tokens/s, > 0), ARGV[2] burst (>= 1), ARGV[3] now (Unix s), ARGV[4] wanted.
-- Returns {granted, seconds until the next whole token (string; "0" when granted all)}.
-- A caller whose clock is behind the last writer's does not refill backwards.
--#include acl_lib
do
  local refused = acl_refused(KEYS[1], 'HMGET', 'HSET', 'PEXPIRE')
  if refused then return refused end
end
--#include bucket_lib
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local now, want = tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens, ts = bucket_refill(KEYS[1], rate, burst, now)
-- 1e-6: a caller that slept exactly the advertised wait must get its token despite
-- the float rounding of (now - ts) * rate.
local got = math.floor(math.min(want, tokens + 1e-6))
if got < 0 then got = 0 end
tokens = math.max(0, tokens - got)
bucket_save(KEYS[1], tokens, ts, rate, burst)
local wait = 0
if got < want then
  wait = (1 - tokens) / rate
  if wait < 0 then wait = 0 end
end
return {got, string.format('%.6f', wait)}
