-- Shared by receipt.lua and receipts.lua (store.load_script inlines it at --#include).
-- apply_receipt: apply one part's delivery receipt to a message's status record.
-- A multipart message is final only when every part has a final receipt; then the
-- worst part state wins (undeliverable > expired > delivered) with that part's err.
-- Returns {kind, state, category, carrier, carrier_id, segments, ref, tenant, to,
-- submitted_at, err} for 'final' and 'late'; {'early', state}, {'partial'}, {'missing'}.
-- One HMGET reads all it needs (this runs once a receipt: Redis CPU is the budget).
local FINAL_STATES = {delivered = true, undeliverable = true, expired = true,
  rejected = true, failed = true}
local RANK = {delivered = 1, expired = 2, undeliverable = 3}

local function apply_receipt(key, part, pstate, now, err)
  local f = redis.call('HMGET', key, 'state', 'segments', 'category', 'carrier',
    'carrier_id', 'ref', 'tenant', 'to', 'submitted_at', 'err')
  local state = f[1]
  local function summary(kind, st, e)
    return {kind, st, f[3] or '', f[4] or '', f[5] or '', f[2] or '', f[6] or '',
      f[7] or '', f[8] or '', f[9] or '', e or ''}
  end
  if not state then
    return {'missing'}
  end
  if FINAL_STATES[state] then
    -- Already final: the caller re-emits the final event if it was never published
    -- (a crash between the script and the event write; the SMSC resends the receipt).
    return summary('late', state, f[10])
  end
  if state ~= 'submitted' then
    return {'early', state}
  end
  local total = tonumber(f[2] or '1') or 1
  local failed_err = err ~= '' and pstate ~= 'delivered'
  if total <= 1 then
    -- One part: its state is the message's; one write.
    local e = f[10]
    if failed_err then
      e = err
      redis.call('HSET', key, 'p0', pstate, 'e0', err, 'err', err, 'state', pstate,
        'done_at', now, 'updated_at', now)
    else
      redis.call('HSET', key, 'p0', pstate, 'state', pstate, 'done_at', now,
        'updated_at', now)
    end
    return summary('final', pstate, e)
  end
  redis.call('HSET', key, 'p' .. part, pstate)
  if failed_err then
    redis.call('HSET', key, 'e' .. part, err)
  end
  local worst, worst_rank, worst_part = 'delivered', 1, -1
  for i = 0, total - 1 do
    local p = redis.call('HGET', key, 'p' .. i)
    if not p then
      return {'partial'}
    end
    local r = RANK[p] or 3
    if r > worst_rank then
      worst, worst_rank, worst_part = p, r, i
    end
  end
  -- The error code that goes with the final state: the worst part's.
  local e = f[10]
  local werr = worst_part >= 0 and redis.call('HGET', key, 'e' .. worst_part)
  if werr then
    e = werr
    redis.call('HSET', key, 'err', werr)
  end
  redis.call('HSET', key, 'state', worst, 'done_at', now, 'updated_at', now)
  return summary('final', worst, e)
end
