-- Enqueue a chunk of validated messages in ONE call (QueueStore.enqueue_each's fast
-- path, issue 17): per message what queued.lua + enqueue.lua + the queued event do in
-- three round trips, in the same order and with the same outcomes:
--   1. an idempotency key's owner exists: a repeat -> the owner's id, nothing written;
--   2. a status record of this id exists: the id is another message's -> refused
--      (its record left alone);
--   3. else the "queued" status record (before the entry: a daemon reading the entry
--      at once never has its "submitted" overwritten), the idempotency key, the stream
--      entry, the queued event.
-- A repeat later in the same chunk sees the key an earlier one set (step 1).
-- Single Redis only (the keys of a chunk span slots): a cluster takes the pipelined path.
-- KEYS[1] events stream
-- ARGV[1] msgpack [[status key, id, idempotency key or "", stream, {status field:
--                   value}, {entry field: value}], ...] (every value a string; maps,
--                   not lists: packing Python's dicts as they are costs the client a
--                   fifth of flattening them). Each event is derived from its status
--                   fields as events.event_of (and lua/record.lua) do: "id" first,
--                   "updated_at" renamed "at", NOT_IN_EVENT left out.
-- ARGV[2] status TTL (s), ARGV[3] idempotency TTL (s), ARGV[4] events MAXLEN (~)
-- ARGV[5] msgpack {stream: max_queued} (back-pressure: a message whose stream holds
--         that many entries is refused; checked after the two refusals above)
-- Returns one reply a message: 1 queued, 0 id taken, the owner's id (a string), or
-- -1 - depth: refused, its stream holds depth entries (queue.max_queued).
--#include acl_lib
--#include queued_ttl_lib
do
  local refused = acl_refused(KEYS[1], 'GET', 'EXISTS', 'XLEN', 'HSET', 'EXPIRE', 'SET',
    'XADD')
  if refused then return refused end
end
local rcall, unpack = redis.call, unpack
local NOT_IN_EVENT = {attempts = true, enqueued_at = true, submitted_at = true,
  done_at = true, fk = true, receipts = true, sent_parts = true}
local msgs = cmsgpack.unpack(ARGV[1])
-- The record's TTL holds queued_ttl_lib's slack.
local ttl, ittl, maxlen = tostring(ARGV[2] + QUEUED_SLACK_S), ARGV[3], ARGV[4]
local events = KEYS[1]
local limits = cmsgpack.unpack(ARGV[5])
local depths = {}  -- stream -> entries, once read (XLEN), counting this call's own
local out = {}
for i = 1, #msgs do
  local m = msgs[i]
  local skey, id, ikey = m[1], m[2], m[3]
  local owner = false
  if ikey ~= '' then
    owner = rcall('GET', ikey)
  end
  if owner then
    out[i] = owner
  elseif rcall('EXISTS', skey) == 1 then
    out[i] = 0
  elseif limits[m[4]] and (depths[m[4]] or rcall('XLEN', m[4])) >= limits[m[4]] then
    local d = depths[m[4]] or rcall('XLEN', m[4])
    depths[m[4]] = d
    out[i] = -1 - d
  else
    if limits[m[4]] then
      depths[m[4]] = (depths[m[4]] or rcall('XLEN', m[4])) + 1
    end
    local st, ev, n = {}, {'id', id}, 2
    local k = 0
    for f, v in pairs(m[5]) do
      st[k + 1], st[k + 2], k = f, v, k + 2
      if f == 'updated_at' then
        ev[n + 1], ev[n + 2], n = 'at', v, n + 2
      elseif not NOT_IN_EVENT[f] then
        ev[n + 1], ev[n + 2], n = f, v, n + 2
      end
    end
    rcall('HSET', skey, unpack(st, 1, k))
    rcall('EXPIRE', skey, ttl)
    if ikey ~= '' then
      rcall('SET', ikey, id, 'EX', ittl)
    end
    local en = {}
    k = 0
    for f, v in pairs(m[6]) do
      en[k + 1], en[k + 2], k = f, v, k + 2
    end
    rcall('XADD', m[4], '*', unpack(en, 1, k))
    rcall('XADD', events, 'MAXLEN', '~', maxlen, '*', unpack(ev, 1, n))
    out[i] = 1
  end
end
return out
