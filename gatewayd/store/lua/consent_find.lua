-- One number's consent records (gatewayd.consent.records.read): a chunk of the stream is
-- scanned inside Redis and only the matching entries come back, so finding a number among
-- millions of records is not millions of entries over the wire.
-- KEYS[1] the consent stream; ARGV[1] first id, ARGV[2] last id, ARGV[3] entries a call,
-- ARGV[4] the "number" field's value wanted.
-- Returns {last id scanned ("" = the range is done), id, fields, id, fields, ...}.
local rows = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
local want = ARGV[4]
local out = {''}
for i = 1, #rows do
  local f = rows[i][2]
  for j = 1, #f, 2 do
    if f[j] == 'number' then
      if f[j + 1] == want then
        out[#out + 1] = rows[i][1]
        out[#out + 1] = f
      end
      break
    end
  end
end
if #rows == tonumber(ARGV[3]) then out[1] = rows[#rows][1] end
return out
