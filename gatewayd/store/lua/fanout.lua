-- Queue one slice of a campaign's recipients (campaigns.fanout): their queue entries,
-- "queued" status records and events, short links, the funnel's queued counts and the
-- campaign's cursor, in ONE atomic call. The cursor is checked first: a slice already
-- queued (a daemon that died after this call, or a second daemon) is never queued
-- again, and a campaign no longer running queues nothing.
-- Single Redis only (per-message keys are named from the affixes in ARGV).
-- KEYS[1] campaign hash, KEYS[2] class stream, KEYS[3] events stream, KEYS[4] funnel.
-- ARGV[1] expected cursor, ARGV[2] expected offset, ARGV[3] new cursor, ARGV[4] new
-- offset, ARGV[5] now, ARGV[6] status TTL, ARGV[7] events MAXLEN (~), ARGV[8] link TTL,
-- ARGV[9]/ARGV[10] status key prefix/suffix, ARGV[11]/ARGV[12] link key prefix/suffix,
-- ARGV[13] category, ARGV[14] tenant, ARGV[15] campaign id, ARGV[16] sender ("from"),
-- ARGV[17] invalid rows skipped in this slice, ARGV[18] n recipients, ARGV[19] V
-- variants, ARGV[20] '1' = write each message's "queued" status record and event,
-- ARGV[21] '1' = privacy mode (Keys.privacy): each recipient with k > 0 links carries its
-- key-name token before its links, which they store instead of the digits, with the
-- masked number last; ARGV[22] K kinds; then V x (variant name, template code); then
-- K x (variant index (1-based), k links, the kind's internal JSON: the entry's sealed
-- "_gw" after its MAC: campaign, variant, enqueued_at, links; gatewayd.store.seal); then
-- per recipient: message id, number, text, kind (1-based), ref, the MAC of its "_gw"
-- (made by campaigns.fanout over exactly the fields written here), [token,]
-- k x (code, URL). The masked number (records, events, private links) is made here.
-- A recipient whose message id already has a status record (a client took "<campaign>.<n>"
-- before the campaign existed; intake refuses such ids once it does) is skipped, never
-- written over: no entry, no links, counted in the campaign's "invalid" rows.
-- Returns {1, queued, skipped} when queued, {0, status} when the campaign is not running,
-- {2, cursor, offset} when the cursor moved on meanwhile.
--#include acl_lib
--#include queued_ttl_lib
do
  local refused = acl_refused(KEYS[1], 'HMGET', 'EXISTS', 'SET', 'HSET', 'EXPIRE', 'XADD',
    'HINCRBY')
  if refused then return refused end
end
local rcall, tonumber, unpack = redis.call, tonumber, unpack
local camp, stream, events, funnel = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local c = rcall('HMGET', camp, 'status', 'cursor', 'offset')
if c[1] ~= 'running' then
  return {0, c[1] or ''}
end
if (c[2] or '0-0') ~= ARGV[1] or (c[3] or '0') ~= ARGV[2] then
  return {2, c[2] or '0-0', c[3] or '0'}
end
-- sttl: the records' TTL, with queued_ttl_lib's slack.
local now, sttl, maxlen, lttl = ARGV[5], tostring(ARGV[6] + QUEUED_SLACK_S), ARGV[7], ARGV[8]
local spre, ssuf, lpre, lsuf = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local category, tenant, cid, sender = ARGV[13], ARGV[14], ARGV[15], ARGV[16]
local n, nv, nk = tonumber(ARGV[18]), tonumber(ARGV[19]), tonumber(ARGV[22])
local records = ARGV[20] == '1'
local private = ARGV[21] == '1'
local vname, vtpl, vcount = {}, {}, {}
local a = 23
for i = 1, nv do
  vname[i], vtpl[i], vcount[i] = ARGV[a], ARGV[a + 1], 0
  a = a + 2
end
local kvi, klinks, kjson = {}, {}, {}
for i = 1, nk do
  kvi[i], klinks[i], kjson[i] = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), ARGV[a + 2]
  a = a + 3
end
local ssub = string.sub
-- As gatewayd.model.mask.
local function mask(to)
  if #to > 8 then return ssub(to, 1, -9) .. '****' .. ssub(to, -4) end
  return ssub(to, 1, 3) .. '****'
end
-- Tables made once a call and refilled per recipient (a table per recipient was Redis
-- CPU: allocation and garbage), sent with unpack(t, 1, m).
local e = {'id', '', 'to', '', 'text', '', 'category', category, 'template', '', '_gw', ''}
local s = {'state', 'queued', 'updated_at', now, 'category', category, 'to', '',
  'attempts', '0', 'campaign', cid, 'variant', '', 'template', '', 'fk', funnel,
  'enqueued_at', now}
local ev = {'id', '', 'state', 'queued', 'at', now, 'category', category, 'to', '',
  'campaign', cid, 'variant', '', 'template', ''}
-- A link's packed fields (campaigns.links.pack): target, message, funnel, variant,
-- campaign, template, recipient (digits, or the token), created[, masked number].
local sep = '\31'
local ltail = sep .. now
local taken = 0
for _ = 1, n do
  local id, to, text, kind, ref, mac = ARGV[a], ARGV[a + 1], ARGV[a + 2],
    tonumber(ARGV[a + 3]), ARGV[a + 4], ARGV[a + 5]
  local vi, k = kvi[kind], klinks[kind]
  a = a + 6
  local variant, template = vname[vi], vtpl[vi]
  local skey = spre .. id .. ssuf
  if rcall('EXISTS', skey) == 1 then
    taken = taken + 1
    if k > 0 then
      a = a + 2 * k
      if private then a = a + 1 end
    end
  else
  vcount[vi] = vcount[vi] + 1
  local masked = (records or private) and mask(to) or ''
  if k > 0 then
    local rest
    if private then
      rest = sep .. id .. sep .. funnel .. sep .. variant .. sep .. cid .. sep ..
        template .. sep .. ARGV[a] .. ltail .. sep .. masked
      a = a + 1
    else
      rest = sep .. id .. sep .. funnel .. sep .. variant .. sep .. cid .. sep ..
        template .. sep .. string.sub(to, 2) .. ltail
    end
    for _ = 1, k do
      rcall('SET', lpre .. ARGV[a] .. lsuf, ARGV[a + 1] .. rest, 'EX', lttl)
      a = a + 2
    end
  end
  local m
  if records then
    -- The status record first, as QueueStore.enqueue writes it (events.Ledger.build).
    s[8], s[14], s[16] = masked, variant, template
    m = 20
    if ref ~= '' then s[m + 1] = 'ref'; s[m + 2] = ref; m = m + 2 end
    if tenant ~= '' then s[m + 1] = 'tenant'; s[m + 2] = tenant; m = m + 2 end
    rcall('HSET', skey, unpack(s, 1, m))
    rcall('EXPIRE', skey, sttl)
    ev[2], ev[10], ev[14], ev[16] = id, masked, variant, template
    m = 16
    if ref ~= '' then ev[m + 1] = 'ref'; ev[m + 2] = ref; m = m + 2 end
    if tenant ~= '' then ev[m + 1] = 'tenant'; ev[m + 2] = tenant; m = m + 2 end
    rcall('XADD', events, 'MAXLEN', '~', maxlen, '*', unpack(ev, 1, m))
  end
  e[2], e[4], e[6], e[10], e[12] = id, to, text, template, mac .. kjson[kind]
  m = 12
  if tenant ~= '' then e[m + 1] = 'tenant'; e[m + 2] = tenant; m = m + 2 end
  if ref ~= '' then e[m + 1] = 'ref'; e[m + 2] = ref; m = m + 2 end
  if sender ~= '' then e[m + 1] = 'from'; e[m + 2] = sender; m = m + 2 end
  rcall('XADD', stream, '*', unpack(e, 1, m))
  end
end
local queued = n - taken
if queued > 0 then
  rcall('HINCRBY', funnel, 'queued', queued)
  for i = 1, nv do
    if vcount[i] > 0 then rcall('HINCRBY', funnel, 'queued|' .. vname[i], vcount[i]) end
  end
end
rcall('HSET', camp, 'cursor', ARGV[3], 'offset', ARGV[4])
rcall('HINCRBY', camp, 'produced', queued)
local invalid = tonumber(ARGV[17]) + taken
if invalid > 0 then rcall('HINCRBY', camp, 'invalid', invalid) end
return {1, queued, taken}
