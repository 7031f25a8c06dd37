-- Record a batch of state changes in one call: correlation keys, status records, events,
-- and the batch's queue entries acknowledged after them.
-- Used on a single Redis only (a cluster spreads these keys over slots; there
-- events.Book writes them as separate pipelined commands, and the dispatcher confirms
-- keys, then records, then acknowledges, each in a round trip of its own).
-- KEYS[1] events stream; KEYS[2..n+1] the n status hashes; then c correlation keys;
-- then s queue streams.
-- ARGV[1] status TTL (s), ARGV[2] events MAXLEN (~), ARGV[3] correlation TTL (s), ARGV[4] n,
-- ARGV[5] c, ARGV[6] s, ARGV[7] the consumer group; then per record: message id, count,
-- status field/value pairs; then one value per correlation key; then per stream: the
-- count of its entry ids, the ids. Each record's event is derived from its status fields
-- as events.event_of does: "id" first, "updated_at" renamed "at", NOT_IN_EVENT left out.
-- The pairs come as Ledger.build orders them: "state", "updated_at", the event's other
-- fields, then the NOT_IN_EVENT ones (the script relies on it: tests/test_record_event_order.py).
--
-- Order (issue 15, the same rule as the cluster path): correlation keys first, then the
-- records, then XDEL and XACK. Redis never rolls a script back, so a write that fails
-- half-way (maxmemory) stops the script where it is: a "submitted" record never exists
-- without the key its receipt is matched by, and an entry is acknowledged only once its
-- outcome is recorded. The acknowledgements were pipelined after this script before,
-- so a refused script (an ACL without +set, or whose key patterns leave out gw:smsc:*)
-- still let them through: the entries were gone and their messages "queued" for ever.
--
-- Cost (bench/record_script.py): this runs in Redis's single thread for every message,
-- so the record loop makes no table (one event table serves the whole call), converts
-- no count text twice and reads no global (redis.call, unpack, KEYS, ARGV are locals).
--
-- States only move forward (rank_lib): a record further along than its transition is
-- left as it is, and that transition publishes no event.
--#include acl_lib
local n, c, s = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
do
  -- (A key pattern refusing one of KEYS, e.g. gw:smsc:*, refuses the EVAL itself.)
  local refused = acl_refused(KEYS[1], 'HMGET', 'HSET', 'EXPIRE', 'XADD', 'SET', 'XDEL',
                              'XACK')
  if refused then return refused end
end
--#include rank_lib
local rcall, unpack, tonumber, KEYS, ARGV = redis.call, unpack, tonumber, KEYS, ARGV
local ttl, maxlen, cttl, group = ARGV[1], ARGV[2], ARGV[3], ARGV[7]
local stream = KEYS[1]
-- Skip past the records to the correlation values: they are written first.
local a = 8
for _ = 1, n do
  a = a + 2 + tonumber(ARGV[a + 1])
end
for k = n + 2, n + 1 + c do
  rcall('SET', KEYS[k], ARGV[a], 'EX', cttl)
  a = a + 1
end
local acks = a
-- A record's field count is one of a few texts ("20", "22"...): each converted once.
local counts = {}
a = 8
for i = 1, n do
  local key = KEYS[1 + i]
  local ns = counts[ARGV[a + 1]]
  if not ns then
    ns = tonumber(ARGV[a + 1])
    counts[ARGV[a + 1]] = ns
  end
  local first, last = a + 2, a + 1 + ns
  -- ARGV[first] is "state", then "updated_at" (Ledger.build puts them first). One read
  -- serves both: never backwards, and whether the TTL stays (rank_lib.keeps_ttl: the
  -- EXPIRE after a fresh "queued" record, one command a message, is not needed).
  local cur = rcall('HMGET', key, 'state', 'updated_at')
  if may_write(cur[1], ARGV[first + 1]) then
    rcall('HSET', key, unpack(ARGV, first, last))
    if ARGV[first + 1] == 'queued' then
      rcall('EXPIRE', key, ttl + QUEUED_SLACK_S)  -- as every "queued" writer
    elseif not keeps_ttl(cur[1], cur[2], ARGV[first + 2] == 'updated_at'
                         and ARGV[first + 3] or nil) then
      rcall('EXPIRE', key, ttl)
    end
    -- The event: Ledger.build / Ledger.record put the fields it leaves out
    -- (NOT_IN_EVENT) after all of its own, so it is "id", "state", "at" and one range
    -- of the arguments: only those last few fields are looked at, not every field.
    local k = last - 1
    while k > first + 2 and NOT_IN_EVENT[ARGV[k]] do k = k - 2 end
    rcall('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'id', ARGV[a], 'state',
          ARGV[first + 1], 'at', ARGV[first + 3], unpack(ARGV, first + 4, k + 1))
  end
  a = last + 1
end
-- XDEL before XACK, as AckBatch.flush explains.
a = acks
for k = n + c + 2, n + c + 1 + s do
  local ids = tonumber(ARGV[a])
  rcall('XDEL', KEYS[k], unpack(ARGV, a + 1, a + ids))
  rcall('XACK', KEYS[k], group, unpack(ARGV, a + 1, a + ids))
  a = a + 1 + ids
end
return n
