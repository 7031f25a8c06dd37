-- Shared by receipt.lua and receipts.lua (store.load_script inlines it at --#include).
-- apply_receipt: apply one part's delivery receipt to a message's status record.
-- A multipart message is final only when every part has a final receipt; then the
-- worst part state wins (undeliverable > expired > delivered).
local function summary(key, kind, st)
  local f = redis.call('HMGET', key, 'category', 'carrier', 'carrier_id', 'segments',
    'ref', 'tenant', 'to', 'submitted_at', 'err')
  return {kind, st, f[1] or '', f[2] or '', f[3] or '', f[4] or '', f[5] or '',
    f[6] or '', f[7] or '', f[8] or '', f[9] or ''}
end

local function apply_receipt(key, part, pstate, now, err)
  local state = redis.call('HGET', key, 'state')
  if not state then
    return {'missing'}
  end
  if state == 'delivered' or state == 'undeliverable' or state == 'expired'
      or state == 'rejected' or state == 'failed' then
    -- Already final: the caller re-emits the final event if it was never published
    -- (a crash between the script and the event write; the SMSC resends the receipt).
    return summary(key, 'late', state)
  end
  if state ~= 'submitted' then
    return {'early', state}
  end
  local total = tonumber(redis.call('HGET', key, 'segments') or '1') or 1
  redis.call('HSET', key, 'p' .. part, pstate)
  if err ~= '' and pstate ~= 'delivered' then
    redis.call('HSET', key, 'e' .. part, err)
  end
  local rank = {delivered = 1, expired = 2, undeliverable = 3}
  local worst, worst_rank, worst_part = 'delivered', 1, -1
  for i = 0, total - 1 do
    local p = redis.call('HGET', key, 'p' .. i)
    if not p then
      return {'partial'}
    end
    local r = rank[p] or 3
    if r > worst_rank then
      worst, worst_rank, worst_part = p, r, i
    end
  end
  -- The error code that goes with the final state: the worst part's.
  local werr = worst_part >= 0 and redis.call('HGET', key, 'e' .. worst_part)
  if werr then
    redis.call('HSET', key, 'err', werr)
  end
  redis.call('HSET', key, 'state', worst, 'done_at', now, 'updated_at', now)
  return summary(key, 'final', worst)
end
