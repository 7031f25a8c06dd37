-- The expiry sweep's final events on a single Redis: each is published only if its
-- message is still awaiting a receipt, and the message leaves the set in the same step.
-- lua/receipts.lua publishes a final event under the same condition and takes no claim
-- (lua/receipt.lua), so this is what keeps the two from both publishing one.
-- Single Redis only: on a cluster the stream and the set are in different slots.
-- KEYS[1] events stream, KEYS[2] awaiting-receipt zset; ARGV[1] events MAXLEN (~),
-- ARGV[2] n; then per event: message id, field count f, f fields and values.
-- Returns n values: 1 when that event was published here, else 0.
--#include acl_lib
do
  local refused = acl_refused(KEYS[1], 'ZSCORE', 'XADD', 'ZREM')
  if refused then return refused end
end
local rcall, unpack = redis.call, unpack
local events, awaiting, maxlen = KEYS[1], KEYS[2], ARGV[1]
local out, a = {}, 3
for i = 1, tonumber(ARGV[2]) do
  local id, f = ARGV[a], tonumber(ARGV[a + 1])
  if rcall('ZSCORE', awaiting, id) then
    -- The event first: a failed write (a script is not undone) leaves it awaiting.
    rcall('XADD', events, 'MAXLEN', '~', maxlen, '*', unpack(ARGV, a + 2, a + 1 + f))
    rcall('ZREM', awaiting, id)
    out[i] = 1
  else
    out[i] = 0
  end
  a = a + 2 + f
end
return out
