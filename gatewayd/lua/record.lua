-- Record a batch of state changes in one call: status records, events, correlation keys.
-- Used on a single Redis only (a cluster spreads these keys over slots; there
-- events.Book writes them as separate pipelined commands instead).
-- KEYS[1] events stream; KEYS[2..n+1] the n status hashes; KEYS[n+2..] correlation keys
-- ARGV[1] status TTL (s), ARGV[2] events MAXLEN (~), ARGV[3] correlation TTL (s), ARGV[4] n;
-- then per record: count, status field/value pairs, count, event field/value pairs;
-- then one value per correlation key.
local ttl, maxlen, cttl, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local a = 5
for i = 1, n do
  local key = KEYS[1 + i]
  local ns = tonumber(ARGV[a])
  redis.call('HSET', key, unpack(ARGV, a + 1, a + ns))
  redis.call('EXPIRE', key, ttl)
  a = a + ns + 1
  local ne = tonumber(ARGV[a])
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(ARGV, a + 1, a + ne))
  a = a + ne + 1
end
for k = n + 2, #KEYS do
  redis.call('SET', KEYS[k], ARGV[a], 'EX', cttl)
  a = a + 1
end
return n
