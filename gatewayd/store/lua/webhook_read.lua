-- The webhook sender's read: each new entry of the events and MO streams handed over
-- ready to send (gatewayd/webhooks/runner.py, WebhookRunner._read).
-- KEYS[1] the events stream, KEYS[2] the MO stream; ARGV[1], ARGV[2] the last entry read
-- of each; ARGV[3] entries a stream at most. Answers, per stream, a flat list of six
-- per entry: id, kind, tenant, message id, callback URL, and the event's JSON, byte for
-- byte what gatewayd/webhooks/body.py makes of it (event_of, then msgspec's encoding:
-- the fields in stream order, "id" renamed "message_id" and put last, "callback" left
-- out, at/until as numbers, segments/parts as integers; "m" events: "from_enc" left
-- out). Where that is not certain (a number not in the form Python's repr writes, a
-- value that is not UTF-8, a field named twice or named as one of ours, anything that
-- errs) the sixth is the entry's field list instead and the sender makes the event in
-- Python as it always did: the JSON never differs, the common case costs the sender no
-- dict, no field strings and no encoding (hiredis made ~22 strings an event before).
-- Read only: the cursor stays the sender's.

local find, gsub, format, concat = string.find, string.gsub, string.format, table.concat

local ESC = {['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\t'] = '\\t',
             ['\n'] = '\\n', ['\f'] = '\\f', ['\r'] = '\\r'}
for c = 0, 31 do
  local ch = string.char(c)
  if not ESC[ch] then ESC[ch] = format('\\u%04x', c) end
end

-- Strict UTF-8 (what Python's decode accepts): each valid sequence replaced by an ASCII
-- byte (never by nothing, so that what is left cannot join into a sequence), then no
-- byte above 127 may remain.
local UTF8 = {'[\194-\223][\128-\191]', '\224[\160-\191][\128-\191]',
              '[\225-\236\238\239][\128-\191][\128-\191]', '\237[\128-\159][\128-\191]',
              '\240[\144-\191][\128-\191][\128-\191]',
              '[\241-\243][\128-\191][\128-\191][\128-\191]',
              '\244[\128-\143][\128-\191][\128-\191]'}
local function utf8_ok(v)
  for i = 1, #UTF8 do v = gsub(v, UTF8[i], '.') end
  return not find(v, '[\128-\255]')
end

-- A JSON string as msgspec writes it (control characters escaped, \u00xx in lower case,
-- everything else as it is), or nil: not UTF-8.
local function str(v)
  if find(v, '[%z\1-\31"\\\128-\255]') then
    if find(v, '[\128-\255]') and not utf8_ok(v) then return nil end
    v = gsub(v, '[%z\1-\31"\\]', ESC)
  end
  return '"' .. v .. '"'
end

-- float(v) as msgspec writes it (the shortest digits that give the number back, as
-- Python's repr), or nil when that is not certain (Python then does it).
local function float(v)
  if find(v, '^[1-9]%d*%.%d+$') or find(v, '^0%.%d+$') then
    local x = tonumber(v)
    if not x or x >= 1e15 then return nil end
    for p = 15, 17 do  -- the shortest %g that reads back as x: repr's digits
      local f = format('%.' .. p .. 'g', x)
      if tonumber(f) == x then
        if f == v or (not find(f, '[.e]') and v == f .. '.0') then return v end
        return nil
      end
    end
    return nil
  end
  if #v <= 15 and find(v, '^[1-9]%d*$') then return v .. '.0' end
  if v == '0' then return '0.0' end
  return nil
end

-- int(v) where Python's isdigit() holds (ASCII digits here), else the string; nil for
-- other digits than ASCII's (Python decides).
local function int(v)
  if find(v, '^%d+$') then
    v = gsub(v, '^0+', '')
    return v == '' and '0' or v
  end
  if find(v, '[\128-\255]') then return nil end
  return str(v)
end

local OURS = {event_id = true, kind = true}

-- One entry: kind, tenant, message id, callback, JSON; nil when Python must make it.
local function ready(mo, id, f)
  local out, n, seen = {}, 0, {}
  local tenant, state, mid, cb = '', '', '', ''
  for j = 1, #f, 2 do
    local k, v = f[j], f[j + 1]
    if seen[k] or OURS[k] then return nil end
    seen[k] = true
    local jv = nil
    if k == 'at' then
      jv = v == '' and '""' or float(v)
    elseif mo then
      if k == 'from_enc' then jv = false
      elseif k == 'parts' then jv = v == '' and '""' or int(v)
      else jv = str(v) end
    elseif k == 'id' then
      mid, jv = v, false
    elseif k == 'callback' then
      cb, jv = v, false
    elseif k == 'message_id' then
      return nil  -- "id" would write it in place: rare, Python does it
    elseif k == 'segments' then
      jv = v == '' and '""' or int(v)
    elseif k == 'until' then
      jv = v == '' and '""' or float(v)
    else
      jv = str(v)
    end
    if jv == nil then return nil end
    if k == 'tenant' then tenant = v elseif k == 'state' then state = v end
    if jv then
      local jk = str(k)
      if not jk then return nil end
      n = n + 1
      out[n] = jk .. ':' .. jv
    end
  end
  local kind = mo and 'mo' or state
  local tail
  if mo then
    tail = '"event_id":"m' .. id .. '","kind":"mo"}'
  else
    local jkind = str(state)
    if not jkind then return nil end
    tail = '"event_id":"e' .. id .. '","kind":' .. jkind
    if mid ~= '' then
      local jm = str(mid)
      if not jm then return nil end
      tail = tail .. ',"message_id":' .. jm
    end
    tail = tail .. '}'
    cb = cb or ''
  end
  if n > 0 then
    return kind, tenant, mid, cb, '{' .. concat(out, ',') .. ',' .. tail
  end
  return kind, tenant, mid, cb, '{' .. tail
end

local answer = {}
for s = 1, 2 do
  local rows = redis.call('XRANGE', KEYS[s], '(' .. ARGV[s], '+', 'COUNT', ARGV[3])
  local flat, m = {}, 0
  local mo = s == 2
  for i = 1, #rows do
    local id, f = rows[i][1], rows[i][2]
    local ok, kind, tenant, mid, cb, body = pcall(ready, mo, id, f)
    if ok and kind then
      flat[m + 1], flat[m + 2], flat[m + 3] = id, kind, tenant
      flat[m + 4], flat[m + 5], flat[m + 6] = mo and '' or mid, cb, body
    else  -- the fields as they are: the sender makes this one itself
      flat[m + 1], flat[m + 2], flat[m + 3] = id, '', ''
      flat[m + 4], flat[m + 5], flat[m + 6] = '', '', f
    end
    m = m + 6
  end
  answer[s] = flat
end
return answer
