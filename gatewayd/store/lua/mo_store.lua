-- Store a chunk of MO in the MO stream, each once across SMSC redeliveries.
-- KEYS[1] the MO stream; KEYS[1+i] message i's seen-key (Keys.mo_seen: same slot).
-- ARGV: maxlen, ttl_s, n, then per message: done (1 = nothing left to do after storing
-- it), field count, fields...
-- Returns per message: 0 stored now, 1 stored before but its opt-out/opt-in step not
-- yet done (a redelivery after a failure: do that step again), 2 stored and done
-- (a redelivery: nothing to do).
--#include acl_lib
do
  local refused = acl_refused(KEYS[1], 'GET', 'XADD', 'SET')
  if refused then return refused end
end
local maxlen, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
local a = 4
for i = 1, n do
  local done, nf = ARGV[a], tonumber(ARGV[a + 1])
  local fields = {}
  for j = 1, nf do fields[j] = ARGV[a + 1 + j] end
  a = a + 2 + nf
  local seen = redis.call('GET', KEYS[1 + i])
  if not seen then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(fields))
    redis.call('SET', KEYS[1 + i], done == '1' and 'done' or 'stored', 'EX', ttl)
    out[i] = 0
  elseif seen == 'done' then
    out[i] = 2
  else
    out[i] = 1
  end
end
return out
