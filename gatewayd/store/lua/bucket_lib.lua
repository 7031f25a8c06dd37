-- A token bucket kept in a HASH {t = tokens, ts = last refill (Unix s)}, shared by
-- token_bucket.lua (tenant and sender rates) and account_charge.lua (an account's rate).
-- Included (--#include bucket_lib) at the top of a script: locals, not globals.
-- An absent bucket is full; a caller whose clock is behind the last writer's does not
-- refill backwards.
local function bucket_refill(key, rate, burst, now)
  local s = redis.call('HMGET', key, 't', 'ts')
  local tokens, ts = tonumber(s[1]), tonumber(s[2])
  if tokens == nil or ts == nil then
    return burst, now
  elseif now > ts then
    return math.min(burst, tokens + (now - ts) * rate), now
  end
  return tokens, ts
end

-- Store what is left; the key outlives a full refill by a second, then goes (an absent
-- bucket is full anyway).
local function bucket_save(key, tokens, ts, rate, burst)
  redis.call('HSET', key, 't', string.format('%.17g', tokens), 'ts', string.format('%.17g', ts))
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
end
