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
-- ARGV[1] msgpack [[status key, id, idempotency key or "", stream,
--                   {status field/value...}, {entry field/value...},
--                   {event field/value...}], ...] (every value a string)
-- ARGV[2] status TTL (s), ARGV[3] idempotency TTL (s), ARGV[4] events MAXLEN (~)
-- Returns one reply a message: 1 queued, 0 id taken, or the owner's id (a string).
local msgs = cmsgpack.unpack(ARGV[1])
local ttl, ittl, maxlen = ARGV[2], ARGV[3], ARGV[4]
local events = KEYS[1]
local out = {}
for i = 1, #msgs do
  local m = msgs[i]
  local skey, id, ikey = m[1], m[2], m[3]
  local owner = false
  if ikey ~= '' then
    owner = redis.call('GET', ikey)
  end
  if owner then
    out[i] = owner
  elseif redis.call('EXISTS', skey) == 1 then
    out[i] = 0
  else
    redis.call('HSET', skey, unpack(m[5]))
    redis.call('EXPIRE', skey, ttl)
    if ikey ~= '' then
      redis.call('SET', ikey, id, 'EX', ittl)
    end
    redis.call('XADD', m[4], '*', unpack(m[6]))
    redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', unpack(m[7]))
    out[i] = 1
  end
end
return out
