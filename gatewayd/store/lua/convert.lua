-- A conversion reported by the app for one message (campaigns.funnel.convert).
-- KEYS[1] the status hash; ARGV[1] the conversion time.
-- Returns false for an unknown message; {0} when it was reported before (counted once);
-- else {1, funnel key, variant} (the key is '' for a message of no campaign/template).
local f = redis.call('HMGET', KEYS[1], 'state', 'fk', 'variant', 'converted_at')
if not f[1] then
  return false
end
if f[4] then
  return {0}
end
redis.call('HSET', KEYS[1], 'converted_at', ARGV[1])
return {1, f[2] or '', f[3] or ''}
