-- Strict-priority read in one round trip (single Redis; on a cluster the streams live
-- in different slots and queue.py reads them class by class): the first class, in
-- order, with new entries gives the whole batch (a batch holds one class).
-- KEYS: the priority streams, highest first; ARGV[1] group, ARGV[2] consumer, ARGV[3] count
-- Returns false, or {index of the class (1-based), entries as XREADGROUP gives them}.
for i, key in ipairs(KEYS) do
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
    'STREAMS', key, '>')
  if r then
    return {i, r[1][2]}
  end
end
return false
