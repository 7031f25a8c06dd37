-- Append one consent record and index it by number: shared by consent_append.lua and
-- consent_change.lua (included: a local function). The index bucket is a HASH: number
-- -> the stream ids of its records, space-separated, the oldest cut past max bytes.
-- The XADD goes first: a record that cannot be written leaves nothing behind.
local function consent_append(stream, ix, minid, ttl, max, num, ...)
  local id = redis.call('XADD', stream, 'MINID', minid, '*', ...)
  local v = redis.call('HGET', ix, num)
  if v then
    v = v .. ' ' .. id
    if #v > max then v = string.sub(v, string.find(v, ' ', #v - max, true) + 1) end
  else
    v = id
  end
  redis.call('HSET', ix, num, v)
  redis.call('EXPIRE', ix, ttl)
  return id
end
