-- Charge one request's messages to an account (gatewayd.accounts.quota): all or nothing.
-- KEYS[1] token bucket HASH {t, ts}; KEYS[2] today's usage HASH; KEYS[3] this month's.
-- ARGV[1] now (Unix s), ARGV[2] rate (tokens/s, 0 = none), ARGV[3] burst, ARGV[4] total
-- messages, ARGV[5] day TTL s, ARGV[6] month TTL s, then per category (and "*" for all
-- together) 4 values: category, count, daily limit, monthly limit (-1 = none).
-- Returns {"ok"} or {"daily"|"monthly", category, limit, used} or {"rate", "", rate, wait s}.
--#include acl_lib
do
  local refused = acl_refused(KEYS[1], 'HMGET', 'HSET', 'PEXPIRE', 'HGET', 'HINCRBY',
    'EXPIRE')
  if refused then return refused end
end
--#include bucket_lib
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local total = tonumber(ARGV[4])
for i = 7, #ARGV, 4 do
  local cat, n = ARGV[i], tonumber(ARGV[i + 1])
  local dl, ml = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local f = 'sent:' .. cat
  if dl >= 0 then
    local used = tonumber(redis.call('HGET', KEYS[2], f) or '0')
    if used + n > dl then return {'daily', cat, tostring(dl), tostring(used)} end
  end
  if ml >= 0 then
    local used = tonumber(redis.call('HGET', KEYS[3], f) or '0')
    if used + n > ml then return {'monthly', cat, tostring(ml), tostring(used)} end
  end
end
if rate > 0 then
  local tokens, ts = bucket_refill(KEYS[1], rate, burst, now)
  if tokens + 1e-6 < total then
    local wait = (total - tokens) / rate
    return {'rate', '', tostring(rate), string.format('%.3f', wait)}
  end
  tokens = math.max(0, tokens - total)
  bucket_save(KEYS[1], tokens, ts, rate, burst)
end
for i = 7, #ARGV, 4 do
  local f, n = 'sent:' .. ARGV[i], tonumber(ARGV[i + 1])
  redis.call('HINCRBY', KEYS[2], f, n)
  redis.call('HINCRBY', KEYS[3], f, n)
end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]))
return {'ok'}
