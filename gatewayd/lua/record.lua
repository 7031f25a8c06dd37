-- Record a batch of state changes in one call: status records, events, correlation keys.
-- Used on a single Redis only (a cluster spreads these keys over slots; there
-- events.Book writes them as separate pipelined commands instead).
-- KEYS[1] events stream; KEYS[2..n+1] the n status hashes; KEYS[n+2..] correlation keys
-- ARGV[1] status TTL (s), ARGV[2] events MAXLEN (~), ARGV[3] correlation TTL (s), ARGV[4] n;
-- then per record: message id, count, status field/value pairs; then one value per
-- correlation key. Each record's event is derived from its status fields as
-- events.event_of does: "id" first, "updated_at" renamed "at", NOT_IN_EVENT left out.
local NOT_IN_EVENT = {attempts = true, enqueued_at = true, submitted_at = true,
  done_at = true}
local ttl, maxlen, cttl, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local a = 5
for i = 1, n do
  local key = KEYS[1 + i]
  local ns = tonumber(ARGV[a + 1])
  local first, last = a + 2, a + 1 + ns
  redis.call('HSET', key, unpack(ARGV, first, last))
  redis.call('EXPIRE', key, ttl)
  local ev = {'id', ARGV[a]}
  for j = first, last, 2 do
    local f = ARGV[j]
    if f == 'updated_at' then
      ev[#ev + 1] = 'at'
      ev[#ev + 1] = ARGV[j + 1]
    elseif not NOT_IN_EVENT[f] then
      ev[#ev + 1] = f
      ev[#ev + 1] = ARGV[j + 1]
    end
  end
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(ev))
  a = last + 1
end
for k = n + 2, #KEYS do
  redis.call('SET', KEYS[k], ARGV[a], 'EX', cttl)
  a = a + 1
end
return n
