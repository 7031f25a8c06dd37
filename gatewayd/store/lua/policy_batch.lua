-- The Redis-backed policy checks of one batch, in one atomic call (gatewayd.policy.redischecks).
-- Per message, in order: optout, duplicate, freq_cap, tenant_rate. The first failing check
-- decides; counters (duplicate marker, frequency ZSET, tenant tokens) are kept only for a
-- message that passes every check, so nothing rejected or deferred consumes anything (the
-- duplicate marker is written at its check and put back when the message fails later).
-- Messages are handled in order, so two messages of one batch see each other's counts, and
-- the script is atomic, so batches from several gatewayd processes do too.
--
-- The batch travels as ONE argument (packing thousands of arguments in redis-py cost more
-- than the checks): ARGV[1] now (Unix s), ARGV[2] "1" = dry run (explain: report every
-- check, write nothing), ARGV[3] the messages, separated by \30, each 10 fields separated
-- by \31: mode ("f" all checks, "o" optout only), optout key ("" = no check), optout fields
-- (the opt-out HASH's fields that suppress this message, separated by \29, e.g. "*" or
-- "*\29京东\29*|marketing"; "" = "*"), duplicate key, duplicate window (ms), member (message id), frequency
-- key, caps ("limit:window_s limit:window_s ..."), tenant bucket key, tenant "rate:burst".
-- Keys are named inside the blob, so KEYS is empty: on Redis Cluster the caller would split
-- a batch by slot and pass one key of the slot as KEYS[1] for routing.
-- Returns one string: per message "s" (send) or "check\31detail\31until", joined by \30;
-- a dry run gives 4 entries per message, one per check.
--
-- Cost: this runs for every message inside Redis's single thread, so the per-message path
-- avoids what Lua makes expensive: pattern matching (plain string.find is a memchr),
-- string.format, numbers passed to redis.call (each is printed with "%.17g" there), and
-- global lookups. Whatever depends only on the batch (now's texts, a caps spec's TTL) is
-- computed once.
--#include acl_lib
do
  -- The keys are in the blob: the check uses the first record's first key (a dry run
  -- writes nothing and is not checked). A record names no key only when it needs no
  -- Redis call (an opt-out-only record with no opt-out key).
  local acl_key
  if ARGV[2] ~= '1' then
    for rec in string.gmatch(ARGV[3], '[^\30]+') do
      -- fields 2, 4, 7 and 9: the opt-out, duplicate, frequency and bucket keys
      local o, d, f, t = string.match(rec, '^[^\31]*\31([^\31]*)\31[^\31]*\31([^\31]*)'
        .. '\31[^\31]*\31[^\31]*\31([^\31]*)\31[^\31]*\31([^\31]*)')
      acl_key = (o ~= '' and o) or (d ~= '' and d) or (f ~= '' and f) or (t ~= '' and t)
        or nil
      if acl_key then break end
    end
  end
  local refused = acl_refused(acl_key, 'HMGET', 'HGET', 'GET', 'ZRANGE', 'SET',
    'ZREMRANGEBYSCORE', 'ZADD', 'PEXPIRE', 'HSET', 'DEL')
  if refused then return refused end
end
local rcall, find, sub, format, unpack = redis.call, string.find, string.sub, string.format,
  unpack
local now = tonumber(ARGV[1])
local dry = ARGV[2] == '1'
local blob = ARGV[3]
local out, nout = {}, 0
local caps_cache = {}
local buckets = {}
-- The bytes redis.call would print for the number now (ZADD score), and the duplicate
-- marker's "<time> " prefix: the same for every message of the batch.
local now_arg = format('%.17g', now)
local dup_prefix = format('%.3f', now) .. ' '

local function parse_caps(spec)
  local caps = caps_cache[spec]
  if caps then return caps end
  caps = {maxw = 0}
  for limit, window in string.gmatch(spec, '(%d+):([%d%.]+)') do
    local w = tonumber(window)
    caps[#caps + 1] = {tonumber(limit), w, limit .. '/' .. window .. 's'}
    if w > caps.maxw then caps.maxw = w end
  end
  -- The ZSET's PEXPIRE argument, as redis.call would print the number.
  caps.ttl = format('%.17g', math.ceil(caps.maxw * 1000))
  caps_cache[spec] = caps
  return caps
end

local function bucket(key, spec)
  local b = buckets[key]
  if b then return b end
  local rate, burst = string.match(spec, '([%d%.]+):([%d%.]+)')
  rate, burst = tonumber(rate), tonumber(burst)
  -- x: when (the writers' clock) the key's TTL runs out, as its last PEXPIRE set it;
  -- xs: the ts written with it. A ts written since without them (an earlier version)
  -- leaves xs ~= ts: x is then not trusted (see the write below).
  local s = rcall('HMGET', key, 't', 'ts', 'x', 'xs')
  local tokens, ts = tonumber(s[1]), tonumber(s[2])
  local x = s[3] and s[4] == s[2] and tonumber(s[3]) or nil
  if tokens == nil or ts == nil then
    tokens, ts, x = burst, now, nil
  elseif now > ts then
    tokens = math.min(burst, tokens + (now - ts) * rate)
    ts = now
  end
  b = {tokens = tokens, ts = ts, rate = rate, burst = burst, short = 0, dirty = false,
       x = x}
  buckets[key] = b
  return b
end

local function emit(check, detail, untl)
  nout = nout + 1
  if check == 'send' then
    out[nout] = 's'
  else
    out[nout] = check .. '\31' .. detail .. '\31' .. format('%.3f', untl)
  end
end

local MALFORMED = 'policy_batch: malformed record'
local len = #blob
local pos = 1  -- start of the current record in blob
-- Records are walked in place (no table of records, no pattern): e is the record's end,
-- each field ends at the next \31, which must lie inside the record (exactly 10 fields).
-- Written out, not looped: a loop filling a table of positions measured slower.
while pos <= len + 1 do
  local e = find(blob, '\30', pos, true) or len + 1
  local j1 = find(blob, '\31', pos, true)
  if not j1 or j1 > e then return redis.error_reply(MALFORMED) end
  local j2 = find(blob, '\31', j1 + 1, true)
  if not j2 or j2 > e then return redis.error_reply(MALFORMED) end
  local j3 = find(blob, '\31', j2 + 1, true)
  if not j3 or j3 > e then return redis.error_reply(MALFORMED) end
  local j4 = find(blob, '\31', j3 + 1, true)
  if not j4 or j4 > e then return redis.error_reply(MALFORMED) end
  local j5 = find(blob, '\31', j4 + 1, true)
  if not j5 or j5 > e then return redis.error_reply(MALFORMED) end
  local j6 = find(blob, '\31', j5 + 1, true)
  if not j6 or j6 > e then return redis.error_reply(MALFORMED) end
  local j7 = find(blob, '\31', j6 + 1, true)
  if not j7 or j7 > e then return redis.error_reply(MALFORMED) end
  local j8 = find(blob, '\31', j7 + 1, true)
  if not j8 or j8 > e then return redis.error_reply(MALFORMED) end
  local j9 = find(blob, '\31', j8 + 1, true)
  if not j9 or j9 > e then return redis.error_reply(MALFORMED) end
  local extra = find(blob, '\31', j9 + 1, true)
  if extra and extra < e then return redis.error_reply(MALFORMED) end
  local mode, okey, scope = sub(blob, pos, j1 - 1), sub(blob, j1 + 1, j2 - 1),
    sub(blob, j2 + 1, j3 - 1)
  local dkey, dwin, member = sub(blob, j3 + 1, j4 - 1), sub(blob, j4 + 1, j5 - 1),
    sub(blob, j5 + 1, j6 - 1)
  local fkey, capspec = sub(blob, j6 + 1, j7 - 1), sub(blob, j7 + 1, j8 - 1)
  local tkey, tspec = sub(blob, j8 + 1, j9 - 1), sub(blob, j9 + 1, e - 1)
  pos = e + 1
  local failed = false
  local dup_set, dup_prev = false, nil  -- the marker written by the duplicate check

  -- optout: the first of the fields present decides (its name is the detail)
  local check, detail, untl = 'send', '', 0
  if okey ~= '' then
    if scope == '' then scope = '*' end
    if not find(scope, '\29', 1, true) then
      if rcall('HGET', okey, scope) then check, detail = 'optout', scope end
    else
      local fields, p = {}, 1
      while true do
        local q = find(scope, '\29', p, true)
        fields[#fields + 1] = sub(scope, p, (q or 0) - 1)
        if not q then break end
        p = q + 1
      end
      local v = rcall('HMGET', okey, unpack(fields))
      for i = 1, #fields do
        if v[i] then check, detail = 'optout', fields[i]; break end
      end
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
      -- Outside a dry run the marker is written here, reading the one it replaces (SET
      -- ... GET: one command instead of a GET now and a SET at the end), and put back
      -- as it was (below) when this message does not pass: the script is atomic, so
      -- nothing sees the marker in between.
      local prev
      if dry then
        prev = rcall('GET', dkey)
      else
        prev = rcall('SET', dkey, dup_prefix .. member, 'PX', dwin, 'GET')
        dup_set, dup_prev = true, prev
      end
      if prev then
        local sp = find(prev, ' ', 1, true)
        local at = tonumber(sub(prev, 1, sp - 1))
        if sub(prev, sp + 1) ~= member and now - at < tonumber(dwin) / 1000 then
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
      local z = rcall('ZRANGE', fkey, '0', '-1', 'WITHSCORES')  -- texts: see the top
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

  if dup_set and failed then
    -- The marker it replaced, back (with a fresh TTL: the time in it decides), or none.
    if dup_prev then
      rcall('SET', dkey, dup_prev, 'PX', dwin)
    else
      rcall('DEL', dkey)
    end
  end
  if mode == 'f' and not failed then
    if not dry then
      if caps then
        if stale > 0 then
          rcall('ZREMRANGEBYSCORE', fkey, '-inf', now - caps.maxw)
        end
        rcall('ZADD', fkey, now_arg, member)  -- parses back to exactly now
        rcall('PEXPIRE', fkey, caps.ttl)
      end
      if b then b.dirty = true end
    end
    if not dry then emit('send', '', 0) end
  end
end

-- A bucket's key must outlive its refill to full (an absent bucket is full) by a
-- second. Its PEXPIRE gives it BUCKET_SLACK_MS more than that needs at most (a full
-- refill from empty), and is left out while the TTL it set (x) still covers the
-- refill from what is left now plus BUCKET_SKEW_S (x is in the clock of the daemon
-- that set it, now in this one's: they may differ by that much): one PEXPIRE a tenant
-- every ~5 s instead of every batch (~0.6 Redis commands a message in bench e2e, 50
-- tenants). x and xs go in the same HSET, no command of their own.
local BUCKET_SLACK_MS, BUCKET_SKEW_S = 10000, 5
if not dry then
  for key, b in pairs(buckets) do
    if b.dirty then
      local ts = format('%.17g', b.ts)
      if b.x and b.x >= now + (b.burst - b.tokens) / b.rate + BUCKET_SKEW_S then
        rcall('HSET', key, 't', format('%.17g', b.tokens), 'ts', ts, 'xs', ts)
      else
        local life = math.ceil(b.burst / b.rate * 1000) + 1000 + BUCKET_SLACK_MS
        rcall('HSET', key, 't', format('%.17g', b.tokens), 'ts', ts,
              'x', format('%.17g', now + life / 1000), 'xs', ts)
        rcall('PEXPIRE', key, life)
      end
    end
  end
end
return table.concat(out, '\30')
