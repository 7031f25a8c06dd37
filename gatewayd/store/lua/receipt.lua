-- Apply one part's delivery receipt to a message's status record (see receipt_lib).
-- KEYS[1] status hash; ARGV[1] part index, ARGV[2] part state, ARGV[3] now, ARGV[4] err;
-- ARGV[5] (the cluster path) claim lease, s: the final event's publishing is claimed too.
-- Returns {kind, state, category, carrier, carrier_id, segments, ref, tenant, to,
-- submitted_at, err} for 'final' and 'late', with ARGV[5] then claimed: 1, 0 (another
-- call holds a live claim) or 2 (its event was published: nothing to do) last, after
-- the funnel key and variant ('' for a message of no campaign or template);
-- {'early', state}, {'partial'}, {'missing'}.
--
-- The claim: on a cluster the event and the awaiting-receipt set are in other slots, so
-- the caller publishes in later steps; daemons, resent receipts and the expiry sweep
-- race to. Only the one whose call took the claim publishes: the call that made the
-- message final, or a 'late' one when no claim is younger than the lease (the holder
-- died before publishing; the message is still awaiting then). Redis's clock, not the
-- daemons': one clock for every claim on the key. The publisher marks the claim
-- 'published' after its event write: the dispatcher's ZADD to the awaiting set can land
-- on its node after the receipt was handled, and must not make the sweep publish again.
--
-- TIME first, before any write (issue 15): a user whose ACL lacks +time got the receipt
-- applied (state 'delivered') and then the call failed, so no event was ever published.
-- A script fails before it writes.
--#include acl_lib
do
  local refused = acl_refused(KEYS[1], 'TIME', 'HMGET', 'HSET', 'HGET')
  if refused then return refused end
end
--#include receipt_lib
local lease = tonumber(ARGV[5])
local t = lease and redis.call('TIME')
local r = {apply_receipt(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])}
-- r[12], r[13]: the funnel key and variant (the caller counts the funnel on a cluster,
-- where that key lives in another slot), kept only with a lease, before the claim.
if not lease then
  r[12], r[13] = nil, nil
end
if lease and (r[1] == 'final' or r[1] == 'late') then
  local now = t[1] + t[2] / 1000000
  local claim = redis.call('HGET', KEYS[1], 'event_claim')
  local held = tonumber(claim)
  if r[1] == 'late' and claim == 'published' then
    r[14] = 2
  elseif r[1] == 'final' or not held or now - held >= lease then
    redis.call('HSET', KEYS[1], 'event_claim', string.format('%.6f', now))
    r[14] = 1
  else
    r[14] = 0
  end
end
return r
