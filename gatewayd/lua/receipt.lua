-- Apply one part's delivery receipt to a message's status record.
-- A multipart message is final only when every part has a final receipt; then the
-- worst part state wins (undeliverable > expired > delivered).
-- KEYS[1] status hash; ARGV[1] part index, ARGV[2] part state, ARGV[3] now, ARGV[4] err
local function summary(kind, st)
  local f = redis.call('HMGET', KEYS[1], 'category', 'carrier', 'carrier_id', 'segments',
    'ref', 'tenant', 'to', 'submitted_at', 'err')
  return {kind, st, f[1] or '', f[2] or '', f[3] or '', f[4] or '', f[5] or '',
    f[6] or '', f[7] or '', f[8] or '', f[9] or ''}
end
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return {'missing'}
end
if state == 'delivered' or state == 'undeliverable' or state == 'expired'
    or state == 'rejected' or state == 'failed' then
  -- Already final: the caller re-emits the final event if it was never published
  -- (a crash between this script and the event pipeline; the SMSC resends the receipt).
  return summary('late', state)
end
if state ~= 'submitted' then
  return {'early', state}
end
local total = tonumber(redis.call('HGET', KEYS[1], 'segments') or '1') or 1
redis.call('HSET', KEYS[1], 'p' .. ARGV[1], ARGV[2])
if ARGV[4] ~= '' and ARGV[2] ~= 'delivered' then
  redis.call('HSET', KEYS[1], 'err', ARGV[4])
end
local rank = {delivered = 1, expired = 2, undeliverable = 3}
local worst, worst_rank = 'delivered', 1
for i = 0, total - 1 do
  local p = redis.call('HGET', KEYS[1], 'p' .. i)
  if not p then
    return {'partial'}
  end
  local r = rank[p] or 3
  if r > worst_rank then
    worst, worst_rank = p, r
  end
end
redis.call('HSET', KEYS[1], 'state', worst, 'done_at', ARGV[3], 'updated_at', ARGV[3])
return summary('final', worst)
