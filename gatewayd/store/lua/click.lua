-- Record one request for a short link (campaigns.links). KEYS[1] the link hash;
-- ARGV[1] now, ARGV[2] 'c' (a click) or 'p' (a link preview: counted apart, no event).
-- Returns false for an unknown (or expired) code; else {target URL, message id, funnel
-- key, variant, campaign, template, recipient digits, first (1 = the first click),
-- clicks so far}.
local f = redis.call('HMGET', KEYS[1], 'u', 'm', 'f', 'v', 'c', 't', 'd', 'first')
if not f[1] then
  return false
end
if ARGV[2] == 'p' then
  redis.call('HINCRBY', KEYS[1], 'previews', 1)
  return {f[1], f[2] or '', f[3] or '', f[4] or '', f[5] or '', f[6] or '', f[7] or '', 0, 0}
end
local clicks = redis.call('HINCRBY', KEYS[1], 'clicks', 1)
local first = 0
if not f[8] then
  redis.call('HSET', KEYS[1], 'first', ARGV[1])
  first = 1
end
return {f[1], f[2] or '', f[3] or '', f[4] or '', f[5] or '', f[6] or '', f[7] or '',
  first, clicks}
