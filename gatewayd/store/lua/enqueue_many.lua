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
-- ARGV[1] msgpack: one flat array of strings and counts, message after message:
--           status key, id, idempotency key or "", stream, nv, ns, ne,
--           ns strings: the status record's field/value pairs, its event's fields first
--             (nv strings: every field the event repeats, as events.event_of keeps
--             them), then "updated_at" and its value (the event's "at"), then the
--             fields the event leaves out (NOT_IN_EVENT),
--           ne strings: the stream entry's field/value pairs.
--         Flat and ready for unpack(): per message Lua copies no field and builds no
--         table (decoding maps and a loop a field building the three commands' tables
--         were a third of Redis's instructions a message: bench/enqueue_script.py).
-- ARGV[2] status TTL (s), ARGV[3] idempotency TTL (s), ARGV[4] events MAXLEN (~)
-- ARGV[5] msgpack {stream: max_queued} (back-pressure: a message whose stream holds
--         that many entries is refused; checked after the two refusals above)
-- Returns one reply a message: 1 queued, 0 id taken, the owner's id (a string), or
-- -1 - depth: refused, its stream holds depth entries (queue.max_queued).
--#include acl_lib
--#include queued_ttl_lib
local rcall, unpack = redis.call, unpack
local a = cmsgpack.unpack(ARGV[1])
local limits = ARGV[5] ~= '\128' and cmsgpack.unpack(ARGV[5]) or {}  -- (\128: {})
do
  -- Only the commands that may run after this call's first write are checked (a check
  -- is ~2,100 instructions; HTTP's calls carry a few messages). Not EXISTS: it runs
  -- before the first write of any message, so its refusal comes before anything is
  -- written; nor HSET: it is the call's first write, refused before anything else is
  -- (and the HSETs after it are the same command, on keys of the same kind). GET and
  -- SET when a message has an idempotency key; GET not when the first one has (its
  -- GET is the call's first command); XLEN with a queue.max_queued.
  local keyed, i = 0, 1
  while i <= #a do
    if a[i + 2] ~= '' then
      keyed = i
      break
    end
    i = i + 7 + a[i + 5] + a[i + 6]
  end
  local check, e = redis.acl_check_cmd, KEYS[1]
  if check then  -- (none on Redis 6.2: unchecked there, as acl_lib says)
    -- Asked directly, each with the full arity acl_lib's acl_args gives it: through
    -- acl_refused's look-up a check cost ~4,500 instructions, not ~2,100.
    local refused = (not check('EXPIRE', e, '1') and 'EXPIRE')
      or (not check('XADD', e, '*', 'f', 'v') and 'XADD')
      or (not check('XTRIM', e, 'MAXLEN', '1') and 'XTRIM')
      or (keyed > 1 and not check('GET', e) and 'GET')
      or (keyed > 0 and not check('SET', e, 'v') and 'SET')
      or (next(limits) and not check('XLEN', e) and 'XLEN')
    if refused then return acl_denied(e, refused) end
  end
end
-- The record's TTL holds queued_ttl_lib's slack. (%d, not tostring: a number's
-- "%.14g" takes glibc's float printing, ~3,400 instructions, a 50th of a lone call.)
local ttl, ittl, maxlen = string.format('%d', ARGV[2] + QUEUED_SLACK_S), ARGV[3], ARGV[4]
local events = KEYS[1]
local depths = {}  -- stream -> entries, once read (XLEN), counting this call's own
local out, k, added = {}, 0, 0
local i, last = 1, #a
while i <= last do
  local skey, id, ikey, stream, nv, ns, ne = unpack(a, i, i + 6)
  local s0 = i + 7  -- the record's first string
  local e0 = s0 + ns  -- the entry's first string
  i = e0 + ne
  k = k + 1
  local owner = false
  if ikey ~= '' then
    owner = rcall('GET', ikey)
  end
  if owner then
    out[k] = owner
  elseif rcall('EXISTS', skey) == 1 then
    out[k] = 0
  elseif limits[stream] and (depths[stream] or rcall('XLEN', stream)) >= limits[stream] then
    local d = depths[stream] or rcall('XLEN', stream)
    depths[stream] = d
    out[k] = -1 - d
  else
    if limits[stream] then
      depths[stream] = (depths[stream] or rcall('XLEN', stream)) + 1
    end
    rcall('HSET', skey, unpack(a, s0, e0 - 1))
    rcall('EXPIRE', skey, ttl)
    if ikey ~= '' then
      rcall('SET', ikey, id, 'EX', ittl)
    end
    rcall('XADD', stream, '*', unpack(a, e0, i - 1))
    rcall('XADD', events, '*', 'id', id, 'at', a[s0 + nv + 1], unpack(a, s0, s0 + nv - 1))
    added = added + 1
    out[k] = 1
  end
end
-- The events stream trimmed once a call, not by each XADD (3.5 % of Redis's
-- instructions a message); the call is atomic, so no reader sees it longer. Up to 10,000
-- entries an event added, what each XADD's own MAXLEN ~ could trim (Redis's default
-- LIMIT): a stream far over a lowered events_maxlen shrinks as fast as before.
if added > 0 then
  rcall('XTRIM', events, 'MAXLEN', '~', maxlen, 'LIMIT', 10000 * added)
end
return out
