-- Bulk opt-out import (gatewayd.consent.bulk): per number, its consent record and the
-- record's index entry, then the opt-out HASH field (HSETNX: an earlier opt-out keeps its
-- own, older time), in one atomic call per chunk, so the opt-out and its record never diverge.
-- Single Redis only (the numbers' keys span every slot; on a cluster the importer
-- pipelines plain commands instead).
-- KEYS[1] the consent stream. ARGV[1] HASH field, ARGV[2] at, ARGV[3] scope, ARGV[4]
-- category, ARGV[5] source, ARGV[6] note, ARGV[7] oldest stream id kept (XTRIM MINID),
-- ARGV[8] the index buckets' TTL (s), ARGV[9] an index entry's longest length (bytes; see
-- consent_append.lua); then per number: its opt-out key, its index bucket, its "number"
-- field, its "number_enc" field ("" = none).
-- Returns how many numbers were new opt-outs (HSETNX wrote).
--#include acl_lib
do
  local refused = acl_refused(KEYS[1], 'XADD', 'HSETNX', 'HGET', 'HSET', 'EXPIRE', 'XTRIM')
  if refused then return refused end
end
local rcall, ARGV = redis.call, ARGV
local stream = KEYS[1]
local field, at, scope, category, source, note = ARGV[1], ARGV[2], ARGV[3], ARGV[4],
  ARGV[5], ARGV[6]
local ttl, max = ARGV[8], tonumber(ARGV[9])
local new = 0
local touched = {}
for i = 10, #ARGV, 4 do
  -- The record (and its index entry) before the opt-out: a failing XADD leaves this
  -- number's opt-out unchanged rather than changed without its record.
  local id
  if ARGV[i + 3] == '' then
    id = rcall('XADD', stream, '*', 'action', 'out', 'number', ARGV[i + 2], 'scope', scope,
      'category', category, 'source', source, 'at', at, 'note', note)
  else
    id = rcall('XADD', stream, '*', 'action', 'out', 'number', ARGV[i + 2], 'number_enc',
      ARGV[i + 3], 'scope', scope, 'category', category, 'source', source, 'at', at,
      'note', note)
  end
  local ix, num = ARGV[i + 1], ARGV[i + 2]
  -- Most imported numbers have no record yet: one HSETNX; else append to the entry.
  if rcall('HSETNX', ix, num, id) == 0 then
    local v = rcall('HGET', ix, num) .. ' ' .. id
    if #v > max then v = string.sub(v, string.find(v, ' ', #v - max, true) + 1) end
    rcall('HSET', ix, num, v)
  end
  touched[ix] = true
  new = new + rcall('HSETNX', ARGV[i], field, at)
end
-- Each bucket's TTL renewed once a call, not once a number.
for ix in pairs(touched) do rcall('EXPIRE', ix, ttl) end
rcall('XTRIM', stream, 'MINID', ARGV[7])
return new
