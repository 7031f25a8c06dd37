-- End a message that is still waiting for receipts as expired (atomic with receipt.lua).
-- KEYS[1] status hash; ARGV[1] now, ARGV[2] reason
if redis.call('HGET', KEYS[1], 'state') ~= 'submitted' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'expired', 'reason', ARGV[2], 'done_at', ARGV[1],
  'updated_at', ARGV[1])
return 1
