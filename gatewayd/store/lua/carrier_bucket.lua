-- A carrier account's shared token bucket at its learned rate (gatewayd.carrier.throttle:
-- this script is that module's cut() and probed() in Lua, parameters passed in).
-- KEYS[1] bucket HASH {t = tokens, ts = last refill, r = learned rate, tc = last cut,
-- tp = last probe (Unix s), c = the cap last passed}; an absent bucket is empty, at the configured rate (new, or
-- lost in a failover: a full one would add a second burst to the 1-s bound, issue 15).
-- Burst: a twentieth of the rate (policy/ratelimit.py says why: the 1.1 x bound).
-- ARGV[1] cap (configured tps, > 0), ARGV[2] now, ARGV[3] tokens wanted (0: none),
-- ARGV[4] answers accepted and ARGV[5] throttled in a reported window (0 0: no report),
-- ARGV[6..12] margin, max_cut, floor, cooldown_s, hold_s, probe, ttl_s.
-- Returns {granted, seconds until the next whole token, the rate now} (strings but the
-- first). Every process calls it with its own clock; one behind the last writer's does
-- not refill, probe or cut backwards.
--#include acl_lib
do
  local refused = acl_refused(KEYS[1], 'HMGET', 'HSET', 'EXPIRE')
  if refused then return refused end
end
local cap, now, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local accepted, throttled = tonumber(ARGV[4]), tonumber(ARGV[5])
local margin, max_cut, floor = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local cooldown, hold, probe = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local ttl = tonumber(ARGV[12])
local s = redis.call('HMGET', KEYS[1], 't', 'ts', 'r', 'tc', 'tp', 'c')
local rate = tonumber(s[3]) or cap
if rate > cap then rate = cap end  -- the configured tps was lowered
-- Raised (an operator's live tps, gatewayd/control): a rate that sat at the old cap was
-- not learned from throttling, so it moves to the new cap now rather than by probing.
local old_cap = tonumber(s[6])
if old_cap ~= nil and cap > old_cap and rate >= old_cap then rate = cap end
local tc = tonumber(s[4]) or -1e18
local tp = tonumber(s[5]) or now
local burst = math.max(1, rate / 20)
local tokens, ts = tonumber(s[1]), tonumber(s[2])
if tokens == nil or ts == nil then
  tokens, ts = 0, now
elseif now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
-- probed(): grow after the hold, up to the cap
if now > tp then
  if now - tc >= hold and rate < cap then
    rate = math.min(cap, rate * (1 + probe * (now - tp)))
  end
  tp = now
end
-- cut(): at most once per cooldown, whoever reports
if throttled > 0 and now - tc >= cooldown then
  local kept = (1 - throttled / (accepted + throttled)) * margin
  rate = math.max(cap * floor, rate * math.max(max_cut, kept))
  tc, tp = now, now
  tokens = math.min(tokens, math.max(1, rate / 20))
end
local got = 0
if want > 0 then
  -- 1e-6: a caller that slept exactly the advertised wait must get its token despite
  -- the float rounding of (now - ts) * rate.
  got = math.floor(math.min(want, tokens + 1e-6))
  if got < 0 then got = 0 end
  tokens = math.max(0, tokens - got)
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'ts', string.format('%.17g', ts),
  'r', string.format('%.17g', rate), 'tc', string.format('%.17g', tc),
  'tp', string.format('%.17g', tp), 'c', string.format('%.17g', cap))
-- Long enough to remember what was learned between bursts of traffic.
redis.call('EXPIRE', KEYS[1], ttl)
local wait = 0
if got < want then
  wait = (1 - tokens) / rate
  if wait < 0 then wait = 0 end
end
return {got, string.format('%.6f', wait), string.format('%.6f', rate)}
