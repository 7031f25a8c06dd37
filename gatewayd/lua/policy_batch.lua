-- The Redis-backed policy checks of one batch, in one atomic call (gatewayd.policy.redischecks).
-- Per message, in order: optout, duplicate, freq_cap, tenant_rate. The first failing check
-- decides; counters (duplicate marker, frequency ZSET, tenant tokens) are written only for a
-- message that passes every check, so nothing rejected or deferred consumes anything.
-- Messages are handled in order, so two messages of one batch see each other's counts, and
-- the script is atomic, so batches from several gatewayd processes do too.
--
-- The batch travels as ONE argument (packing thousands of arguments in redis-py cost more
-- than the checks): ARGV[1] now (Unix s), ARGV[2] "1" = dry run (explain: report every
-- check, write nothing), ARGV[3] the messages, separated by \30, each 10 fields separated
-- by \31: mode ("f" all checks, "o" optout only), optout key ("" = no check), optout scope
-- ("" = "*" only), duplicate key, duplicate window (ms), member (message id), frequency
-- key, caps ("limit:window_s limit:window_s ..."), tenant bucket key, tenant "rate:burst".
-- Keys are named inside the blob, so KEYS is empty: on Redis Cluster the caller would split
-- a batch by slot and pass one key of the slot as KEYS[1] for routing.
-- Returns one string: per message "s" (send) or "check\31detail\31until", joined by \30;
-- a dry run gives 4 entries per message, one per check.
local now = tonumber(ARGV[1])
local dry = ARGV[2] == '1'
local blob = ARGV[3]
local out = {}
local caps_cache = {}
local buckets = {}

local function split(str, sep)
  local t, pos = {}, 1
  while true do
    local i = string.find(str, sep, pos, true)
    if not i then
      t[#t + 1] = string.sub(str, pos)
      return t
    end
    t[#t + 1] = string.sub(str, pos, i - 1)
    pos = i + 1
  end
end

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

local function bucket(key, spec)
  local b = buckets[key]
  if b then return b end
  local rate, burst = string.match(spec, '([%d%.]+):([%d%.]+)')
  rate, burst = tonumber(rate), tonumber(burst)
  local s = redis.call('HMGET', key, 't', 'ts')
  local tokens, ts = tonumber(s[1]), tonumber(s[2])
  if tokens == nil or ts == nil then
    tokens, ts = burst, now
  elseif now > ts then
    tokens = math.min(burst, tokens + (now - ts) * rate)
    ts = now
  end
  b = {tokens = tokens, ts = ts, rate = rate, burst = burst, short = 0, dirty = false}
  buckets[key] = b
  return b
end

local function emit(check, detail, untl)
  if check == 'send' then
    out[#out + 1] = 's'
  else
    out[#out + 1] = check .. '\31' .. detail .. '\31' .. string.format('%.3f', untl)
  end
end

local FIELDS = '^([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31' ..
               '([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)$'
for _, rec in ipairs(split(blob, '\30')) do
  local mode, okey, scope, dkey, dwin, member, fkey, capspec, tkey, tspec =
    string.match(rec, FIELDS)
  if not mode then return redis.error_reply('policy_batch: malformed record') end
  local failed = false

  -- optout
  local check, detail, untl = 'send', '', 0
  if okey ~= '' then
    local v = redis.call('HMGET', okey, '*', scope == '' and '*' or scope)
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
    if dkey ~= '' then
      -- "<time> <message id>": the time, not the key's TTL, decides (explicit clock);
      -- the TTL only collects the key. The same id again is a redelivery, not a duplicate.
      local prev = redis.call('GET', dkey)
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

  local caps, stale
  if mode == 'f' and (dry or not failed) then
    -- freq_cap: sliding windows over one ZSET (member = message id, score = time)
    check, detail, untl = 'send', '', 0
    if fkey ~= '' then
      caps = parse_caps(capspec)
      -- The set is small (bounded by the largest limit plus not-yet-trimmed entries):
      -- one read serves every window, the redelivery test and the trim decision.
      local z = redis.call('ZRANGE', fkey, 0, -1, 'WITHSCORES')
      local horizon = now - caps.maxw
      local scores, present = {}, false
      stale = 0
      for j = 1, #z, 2 do
        local sc = tonumber(z[j + 1])
        if z[j] == member then present = true end
        if sc <= horizon then stale = stale + 1 else scores[#scores + 1] = sc end
      end
      if present then
        -- Already counted (a redelivered message that passed before): not counted twice.
        caps = nil
      else
        local n = #scores
        for _, cap in ipairs(caps) do
          if n >= cap[1] then
            local lo = now - cap[2]
            local c = 0
            for j = n, 1, -1 do
              if scores[j] > lo then c = c + 1 else break end
            end
            if c >= cap[1] then
              -- The window frees a slot when its (c - limit)-th oldest entry leaves it.
              local free = scores[n - cap[1] + 1] + cap[2]
              if free > untl then
                check, detail, untl = 'freq_cap', cap[3], free
              end
            end
          end
        end
      end
    end
    if check ~= 'send' then failed = true end
    if dry or check ~= 'send' then emit(check, detail, untl) end
  end

  local b
  if mode == 'f' and (dry or not failed) then
    -- tenant_rate: token bucket; the k-th message short of a token waits k token-times
    check, detail, untl = 'send', '', 0
    if tkey ~= '' then
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
      if dkey ~= '' then
        redis.call('SET', dkey, string.format('%.3f', now) .. ' ' .. member, 'PX', dwin)
      end
      if caps then
        if stale > 0 then
          redis.call('ZREMRANGEBYSCORE', fkey, '-inf', now - caps.maxw)
        end
        redis.call('ZADD', fkey, now, member)
        redis.call('PEXPIRE', fkey, math.ceil(caps.maxw * 1000))
      end
      if b then b.dirty = true end
    end
    if not dry then emit('send', '', 0) end
  end
end

if not dry then
  for key, b in pairs(buckets) do
    if b.dirty then
      redis.call('HSET', key, 't', string.format('%.17g', b.tokens), 'ts', string.format('%.17g', b.ts))
      redis.call('PEXPIRE', key, math.ceil(b.burst / b.rate * 1000) + 1000)
    end
  end
end
return table.concat(out, '\30')
