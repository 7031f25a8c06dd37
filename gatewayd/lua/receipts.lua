-- Correlate and apply a batch of final receipts in one call; publish the final events.
-- Single Redis only: the status hash of a receipt is known only after its correlation
-- key is read, so it cannot be declared up front (a cluster takes inbound.py's
-- three-step path instead).
-- KEYS[1] events stream, KEYS[2] awaiting-receipt zset, KEYS[3..] every receipt's
-- correlation key candidates, in order.
-- ARGV[1] now, ARGV[2] events MAXLEN (~), ARGV[3] / ARGV[4] status key prefix / suffix
-- around the message id, ARGV[5] n; then per receipt: part state, err, candidate count.
-- Returns 6 values a receipt: kind (unmatched|early|missing|partial|final|late), message
-- id, state, carrier, submitted_at, published (1 when its final event was written here).
--#include receipt_lib
local now, maxlen, pre, suf = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local n = tonumber(ARGV[5])
local out = {}
local a, k = 6, 3
local EVENT = {'category', 'carrier', 'carrier_id', 'segments', 'ref', 'tenant', 'to'}
for _ = 1, n do
  local pstate, err, nc = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 3
  local hit = false
  for c = k, k + nc - 1 do
    if not hit then
      hit = redis.call('GET', KEYS[c])
    end
  end
  k = k + nc
  if not hit then
    for _, v in ipairs({'unmatched', '', '', '', '', 0}) do out[#out + 1] = v end
  else
    local id, part = hit, '0'
    local sp = string.find(hit, ' ', 1, true)
    if sp then
      id, part = string.sub(hit, 1, sp - 1), string.sub(hit, sp + 1)
    end
    local res = apply_receipt(pre .. id .. suf, part, pstate, now, err)
    local kind = res[1]
    local published = 0
    if kind == 'final' or (kind == 'late' and redis.call('ZSCORE', KEYS[2], id)) then
      local ev = {'id', id, 'state', res[2], 'at', now}
      for i, name in ipairs(EVENT) do
        if res[2 + i] ~= '' then
          ev[#ev + 1] = name
          ev[#ev + 1] = res[2 + i]
        end
      end
      if res[11] ~= '' then
        ev[#ev + 1] = 'err'
        ev[#ev + 1] = res[11]
      end
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(ev))
      redis.call('ZREM', KEYS[2], id)
      published = 1
    end
    for _, v in ipairs({kind, id, res[2] or '', res[4] or '', res[10] or '', published}) do
      out[#out + 1] = v
    end
  end
end
return out
