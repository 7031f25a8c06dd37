-- The Redis-backed policy checks of one batch, in one atomic call (gatewayd.policy.redischecks).
-- Per message, in order: optout, duplicate, freq_cap, tenant_rate. The first failing check
-- decides; counters (duplicate marker, frequency ZSET, tenant tokens) are written only for a
-- message that passes every check, so nothing rejected or deferred consumes anything.
-- Messages are handled in order, so two messages of one batch see each other's counts, and
-- the script is atomic, so batches from several gatewayd processes do too.
--
-- KEYS: every key used, referenced by index from the per-message fields (0 = none).
-- ARGV[1] now (Unix s), ARGV[2] "1" = dry run (explain: report every check, write nothing),
-- then 10 fields per message:
--   mode ("f" all checks, "o" optout only), optout key, optout scope ("" = "*" only),
--   duplicate key, duplicate window (ms), member (message id),
--   frequency key, caps ("limit:window_s limit:window_s ..."),
--   tenant bucket key, tenant "rate:burst"
-- Returns per message {check, detail, until} (dry run: 4 such triples, one per check), where
-- check is "send" or the failing check's name.
local now = tonumber(ARGV[1])
local dry = ARGV[2] == '1'
local STRIDE = 10
local out = {}
local caps_cache = {}
local buckets = {}

local function parse_caps(spec)
  local caps = caps_cache[spec]
  if caps then return caps end
  caps = {maxw = 0}
  for limit, window in string.gmatch(spec, '(%d+):([%d%.]+)') do
    local w = tonumber(window)
    caps[#caps + 1] = {tonumber(limit), w, limit .. '/' .. window .. 's'}
    if w > caps.maxw then caps.maxw = w end
  end
  caps_cache[spec] = caps
  return caps
end

local function bucket(idx, spec)
  local b = buckets[idx]
  if b then return b end
  local rate, burst = string.match(spec, '([%d%.]+):([%d%.]+)')
  rate, burst = tonumber(rate), tonumber(burst)
  local s = redis.call('HMGET', KEYS[idx], 't', 'ts')
  local tokens, ts = tonumber(s[1]), tonumber(s[2])
  if tokens == nil or ts == nil then
    tokens, ts = burst, now
  elseif now > ts then
    tokens = math.min(burst, tokens + (now - ts) * rate)
    ts = now
  end
  b = {tokens = tokens, ts = ts, rate = rate, burst = burst, short = 0, dirty = false}
  buckets[idx] = b
  return b
end

local function emit(check, detail, untl)
  out[#out + 1] = check
  out[#out + 1] = detail
  out[#out + 1] = string.format('%.3f', untl)
end

local n = (#ARGV - 2) / STRIDE
for i = 0, n - 1 do
  local a = 2 + i * STRIDE
  local mode = ARGV[a + 1]
  local okey, scope = tonumber(ARGV[a + 2]), ARGV[a + 3]
  local dkey, dwin, member = tonumber(ARGV[a + 4]), ARGV[a + 5], ARGV[a + 6]
  local fkey, capspec = tonumber(ARGV[a + 7]), ARGV[a + 8]
  local tkey, tspec = tonumber(ARGV[a + 9]), ARGV[a + 10]
  local failed = false

  -- optout
  local check, detail, untl = 'send', '', 0
  if okey > 0 then
    local v = redis.call('HMGET', KEYS[okey], '*', scope == '' and '*' or scope)
    if v[1] then
      check, detail = 'optout', '*'
    elseif v[2] then
      check, detail = 'optout', scope
    end
  end
  if check ~= 'send' then failed = true end
  if dry or failed or mode == 'o' then emit(check, detail, untl) end

  if mode == 'f' and (dry or not failed) then
    -- duplicate
    check, detail, untl = 'send', '', 0
    if dkey > 0 then
      -- "<time> <message id>": the time, not the key's TTL, decides (explicit clock);
      -- the TTL only collects the key. The same id again is a redelivery, not a duplicate.
      local prev = redis.call('GET', KEYS[dkey])
      if prev then
        local sp = string.find(prev, ' ', 1, true)
        local at = tonumber(string.sub(prev, 1, sp - 1))
        if string.sub(prev, sp + 1) ~= member and now - at < tonumber(dwin) / 1000 then
          check = 'duplicate'
        end
      end
    end
    if check ~= 'send' then failed = true end
    if dry or check ~= 'send' then emit(check, detail, untl) end
  end

  local caps
  if mode == 'f' and (dry or not failed) then
    -- freq_cap: sliding windows over one ZSET (member = message id, score = time)
    check, detail, untl = 'send', '', 0
    if fkey > 0 then
      caps = parse_caps(capspec)
      local key = KEYS[fkey]
      -- Already counted (a redelivered message that passed before): not counted twice.
      if not redis.call('ZSCORE', key, member) then
        for _, cap in ipairs(caps) do
          local lo = '(' .. (now - cap[2])
          local c = redis.call('ZCOUNT', key, lo, '+inf')
          if c >= cap[1] then
            local r = redis.call('ZRANGEBYSCORE', key, lo, '+inf', 'WITHSCORES', 'LIMIT', c - cap[1], 1)
            local free = tonumber(r[2]) + cap[2]
            if free > untl then
              check, detail, untl = 'freq_cap', cap[3], free
            end
          end
        end
      else
        caps = nil
      end
    end
    if check ~= 'send' then failed = true end
    if dry or check ~= 'send' then emit(check, detail, untl) end
  end

  local b
  if mode == 'f' and (dry or not failed) then
    -- tenant_rate: token bucket; the k-th message short of a token waits k token-times
    check, detail, untl = 'send', '', 0
    if tkey > 0 then
      b = bucket(tkey, tspec)
      -- 1e-6: a message deferred to exactly when its token is due must get it, whatever
      -- the float rounding of (now - ts) * rate.
      if b.tokens >= 1 - 1e-6 and b.short == 0 then
        if not dry then b.tokens = math.max(0, b.tokens - 1) end
      else
        b.short = b.short + 1
        check, detail = 'tenant_rate', ''
        untl = now + (b.short - b.tokens) / b.rate
        b = nil
      end
    end
    if check ~= 'send' then failed = true end
    if dry or check ~= 'send' then emit(check, detail, untl) end
  end

  if mode == 'f' and not failed then
    if not dry then
      if dkey > 0 then
        redis.call('SET', KEYS[dkey], string.format('%.3f', now) .. ' ' .. member, 'PX', dwin)
      end
      if caps then
        local key = KEYS[fkey]
        redis.call('ZREMRANGEBYSCORE', key, '-inf', now - caps.maxw)
        redis.call('ZADD', key, now, member)
        redis.call('PEXPIRE', key, math.ceil(caps.maxw * 1000))
      end
      if b then b.dirty = true end
    end
    if not dry then emit('send', '', 0) end
  end
end

if not dry then
  for idx, b in pairs(buckets) do
    if b.dirty then
      redis.call('HSET', KEYS[idx], 't', tostring(b.tokens), 'ts', tostring(b.ts))
      redis.call('PEXPIRE', KEYS[idx], math.ceil(b.burst / b.rate * 1000) + 1000)
    end
  end
end
return out
