-- Correlate and apply a batch of final receipts in one call; publish the final events.
-- Single Redis only: the status hash of a receipt is known only after its correlation
-- key is read, so it cannot be declared up front (a cluster takes inbound.py's
-- three-step path instead).
-- KEYS[1] events stream, KEYS[2] awaiting-receipt zset, KEYS[3..] every receipt's
-- correlation key candidates, in order.
-- ARGV[1] now, ARGV[2] events MAXLEN (~), ARGV[3] / ARGV[4] status key prefix / suffix
-- around the message id, ARGV[5] n; then per receipt: part state, err, candidate count;
-- last, the accounts' usage key of today (gatewayd.accounts) as prefix / suffix around
-- the tenant, and its TTL (s): each published final of a tenant's message is counted
-- there ("<state>:<category>"), summed and written once at the end.
-- A message that carries a funnel key (campaigns.funnel) has its final state counted
-- there too. Returns 6 values a receipt: kind (unmatched|early|missing|partial|final|late), message
-- id, state, carrier, submitted_at, published (1 when its final event was written here).
--
-- Cost (bench/record_script.py): this runs in Redis's single thread for every receipt,
-- so the receipt loop makes no table (one event table serves the whole call, the reply
-- is filled in place), converts no count text twice and reads no global.
--#include acl_lib
do
  local refused = acl_refused(KEYS[1], 'GET', 'HMGET', 'HSET', 'HGET', 'ZSCORE', 'XADD',
    'ZREM', 'HINCRBY', 'EXPIRE')
  if refused then return refused end
end
--#include receipt_lib
local rcall, find, sub, unpack = redis.call, string.find, string.sub, unpack
local KEYS, ARGV = KEYS, ARGV
local now, maxlen, pre, suf = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local n = tonumber(ARGV[5])
local events, awaiting = KEYS[1], KEYS[2]
-- The reply, filled in order (o values so far): one table for the whole call.
local out = {}
-- The final event: id, state and at, then every other value that is not ''; entries
-- past m are a longer earlier event's, never sent (unpack(ev, 1, m)).
local ev = {'id', '', 'state', '', 'at', now}
-- A receipt's candidate count is one of a few texts ("1", "2", "3"): each converted once.
local counts = {}
-- The ids whose final event this call published, removed from the awaiting set by ONE
-- ZREM at the end (a ZREM a receipt was a Redis command a message); gone[id] answers a
-- later receipt of the same id in this call as the removal would have.
local gone, ngone = {}, 0
local funnels = {}  -- funnel key -> field -> count (campaign and template messages)
local usage = {}  -- tenant -> "<state>:<category>" -> count
-- The receipts, in a function so that an error half-way (a status key of the wrong
-- type) still removes what was published before it: pcall below, then the ZREM.
local function apply_all()
  local a, k, o = 6, 3, 0  -- ARGV and KEYS positions, values in the reply so far
  for _ = 1, n do
    local pstate, err = ARGV[a], ARGV[a + 1]
    local nc = counts[ARGV[a + 2]]
    if not nc then
      nc = tonumber(ARGV[a + 2])
      counts[ARGV[a + 2]] = nc
    end
    a = a + 3
    local hit = false
    for c = k, k + nc - 1 do
      hit = rcall('GET', KEYS[c])
      if hit then break end
    end
    k = k + nc
    if not hit then
      out[o + 1] = 'unmatched'; out[o + 2] = ''; out[o + 3] = ''
      out[o + 4] = ''; out[o + 5] = ''; out[o + 6] = 0
    else
      local id, part = hit, '0'
      local sp = find(hit, ' ', 1, true)
      if sp then
        id, part = sub(hit, 1, sp - 1), sub(hit, sp + 1)
      end
      local kind, state, category, carrier, carrier_id, segments, ref, tenant, to,
        submitted_at, e, fk, fv = apply_receipt(pre .. id .. suf, part, pstate, now, err)
      if kind == 'final' and fk ~= '' then
        -- A campaign or template message: its funnel counts the outcome in this call
        -- (summed per funnel field, written once at the end).
        local per = funnels[fk]
        if not per then per = {}; funnels[fk] = per end
        per[state] = (per[state] or 0) + 1
        if fv ~= '' then
          local f2 = state .. '|' .. fv
          per[f2] = (per[f2] or 0) + 1
        end
      end
      local published = 0
      if kind == 'final' or (kind == 'late' and not gone[id]
                             and rcall('ZSCORE', awaiting, id)) then
        ev[2], ev[4] = id, state
        local m = 6
        -- Written out (the values are locals, not a table to loop over), in the events'
        -- order: category, carrier, carrier_id, segments, ref, tenant, to, err.
        if category ~= '' then ev[m + 1] = 'category'; ev[m + 2] = category; m = m + 2 end
        if carrier ~= '' then ev[m + 1] = 'carrier'; ev[m + 2] = carrier; m = m + 2 end
        if carrier_id ~= '' then
          ev[m + 1] = 'carrier_id'; ev[m + 2] = carrier_id; m = m + 2
        end
        if segments ~= '' then ev[m + 1] = 'segments'; ev[m + 2] = segments; m = m + 2 end
        if ref ~= '' then ev[m + 1] = 'ref'; ev[m + 2] = ref; m = m + 2 end
        if tenant ~= '' then ev[m + 1] = 'tenant'; ev[m + 2] = tenant; m = m + 2 end
        if to ~= '' then ev[m + 1] = 'to'; ev[m + 2] = to; m = m + 2 end
        if e ~= '' then ev[m + 1] = 'err'; ev[m + 2] = e; m = m + 2 end
        rcall('XADD', events, 'MAXLEN', '~', maxlen, '*', unpack(ev, 1, m))
        if not gone[id] then
          ngone = ngone + 1
          gone[ngone] = id
          gone[id] = true
        end
        published = 1
        if tenant ~= '' then
          local per = usage[tenant]
          if not per then per = {}; usage[tenant] = per end
          local f = state .. ':' .. (category ~= '' and category or '?')
          per[f] = (per[f] or 0) + 1
        end
      end
      out[o + 1] = kind; out[o + 2] = id; out[o + 3] = state or ''
      out[o + 4] = carrier or ''; out[o + 5] = submitted_at or ''; out[o + 6] = published
    end
    o = o + 6
  end
end
-- A published final event and its id in the awaiting set must not outlive each other:
-- the expiry sweep (and a retried chunk's 'late' receipt) publishes again whatever is
-- still awaiting. So the removal runs even when a receipt's command failed half-way
-- (the error is raised after it, as before). ZREM is not refused under maxmemory.
local ok, failure = pcall(apply_all)
if ngone > 0 then
  -- unpack's limit (LUAI_MAXCSTACK, 8000) is far above a call's receipts (<= 256).
  rcall('ZREM', awaiting, unpack(gone, 1, ngone))
end
if not ok then error(failure, 0) end  -- as raised: no position added to a text
for fk, per in pairs(funnels) do
  for field, c in pairs(per) do rcall('HINCRBY', fk, field, c) end
end
-- A usage key's EXPIRE only when one of its fields was new (HINCRBY answered its own
-- increment): every call that creates one of these fields sets the TTL in the same
-- atomic call, and nothing takes a TTL away, so a key whose fields all existed has its
-- TTL already (an EXPIRE a tenant a call was ~0.4 Redis commands a message). A new
-- field (a tenant's first final state of a kind that day) still sets it.
local na = #ARGV
for tenant, per in pairs(usage) do
  local uk = ARGV[na - 2] .. tenant .. ARGV[na - 1]
  local fresh = false
  for field, c in pairs(per) do
    if rcall('HINCRBY', uk, field, c) == c then fresh = true end
  end
  if fresh then rcall('EXPIRE', uk, ARGV[na]) end
end
return out
