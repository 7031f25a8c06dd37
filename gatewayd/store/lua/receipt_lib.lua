-- Shared by receipt.lua and receipts.lua (store.load_script inlines it at --#include).
-- apply_receipt: apply one part's delivery receipt to a message's status record.
-- A multipart message is final only when every part has a final receipt; then the
-- worst part state wins (undeliverable > expired > delivered) with that part's err.
-- Returns kind, state, category, carrier, carrier_id, segments, ref, tenant, to,
-- submitted_at, err, funnel key, variant for 'final' and 'late' (the last two are ''
-- for a message of no campaign or template); 'early', state; 'partial'; 'missing'.
-- A message expects one receipt a submitted PDU: 'receipts' when written (message_payload:
-- one PDU, several segments), else 'segments'. A long message some of whose parts were
-- accepted while the rest waits for a retry ('sent_parts' lists them) records those
-- parts' receipts before it is 'submitted'.
-- Values, not a table (receipt.lua makes its reply of them, {apply_receipt(...)}), and
-- no closure: receipts.lua runs this for up to 256 receipts a call, reading the values
-- into locals, and every table or closure a receipt was Redis CPU (allocation, garbage).
-- One HMGET reads all it needs (this runs once a receipt: Redis CPU is the budget).
local rcall, tonumber, sfind = redis.call, tonumber, string.find
local FINAL_STATES = {delivered = true, undeliverable = true, expired = true,
  rejected = true, failed = true}
local RANK = {delivered = 1, expired = 2, undeliverable = 3}

-- The values of a 'final' or 'late' receipt; f is the HMGET reply.
local function summary(f, kind, st, e)
  return kind, st, f[3] or '', f[4] or '', f[5] or '', f[2] or '', f[6] or '',
    f[7] or '', f[8] or '', f[9] or '', e or '', f[11] or '', f[12] or ''
end

local function apply_receipt(key, part, pstate, now, err)
  local f = rcall('HMGET', key, 'state', 'segments', 'category', 'carrier',
    'carrier_id', 'ref', 'tenant', 'to', 'submitted_at', 'err', 'fk', 'variant',
    'receipts', 'sent_parts')
  local state = f[1]
  if not state then
    return 'missing'
  end
  if FINAL_STATES[state] then
    -- Already final: the caller re-emits the final event if it was never published
    -- (a crash between the script and the event write; the SMSC resends the receipt).
    return summary(f, 'late', state, f[10])
  end
  if state ~= 'submitted' then
    local sent = f[14]
    if sent and sfind(' ' .. sent .. ' ', ' ' .. part .. ' ', 1, true) then
      rcall('HSET', key, 'p' .. part, pstate)
      if err ~= '' and pstate ~= 'delivered' then
        rcall('HSET', key, 'e' .. part, err)
      end
      return 'partial'
    end
    return 'early', state
  end
  -- tonumber(receipts or segments or '1') or 1, without parsing the commonest text, '1'.
  local seg, total = f[13] or f[2], 1
  if seg and seg ~= '1' then
    total = tonumber(seg) or 1
  end
  local failed_err = err ~= '' and pstate ~= 'delivered'
  if total <= 1 then
    -- One part: its state is the message's; one write.
    local e = f[10]
    if failed_err then
      e = err
      rcall('HSET', key, 'p0', pstate, 'e0', err, 'err', err, 'state', pstate,
        'done_at', now, 'updated_at', now)
    else
      rcall('HSET', key, 'p0', pstate, 'state', pstate, 'done_at', now,
        'updated_at', now)
    end
    return summary(f, 'final', pstate, e)
  end
  rcall('HSET', key, 'p' .. part, pstate)
  if failed_err then
    rcall('HSET', key, 'e' .. part, err)
  end
  local worst, worst_rank, worst_part = 'delivered', 1, -1
  for i = 0, total - 1 do
    local p = rcall('HGET', key, 'p' .. i)
    if not p then
      return 'partial'
    end
    local r = RANK[p] or 3
    if r > worst_rank then
      worst, worst_rank, worst_part = p, r, i
    end
  end
  -- The error code that goes with the final state: the worst part's.
  local e = f[10]
  local werr = worst_part >= 0 and rcall('HGET', key, 'e' .. worst_part)
  if werr then
    e = werr
    rcall('HSET', key, 'err', werr)
  end
  rcall('HSET', key, 'state', worst, 'done_at', now, 'updated_at', now)
  return summary(f, 'final', worst, e)
end
