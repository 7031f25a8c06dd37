-- Shared by the scripts that write a message's state (status.lua, record.lua): states
-- only move forward, queued < deferred < submitted < final, and a final state is never
-- replaced. Equal ranks below final may be rewritten (a retry's "deferred" over the
-- last one, a resubmission's "submitted").
local RANK = {queued = 1, deferred = 2, submitted = 3, delivered = 4, undeliverable = 4,
  expired = 4, rejected = 4, failed = 4}
-- A transition's event leaves these status fields out (events.NOT_IN_EVENT).
local NOT_IN_EVENT = {attempts = true, enqueued_at = true, submitted_at = true,
  done_at = true, fk = true, receipts = true, sent_parts = true}

local function may_write(current, new)
  if not current then
    return true
  end
  local old = RANK[current] or 0
  return old < 4 and (RANK[new] or 0) >= old
end

--#include queued_ttl_lib
-- Whether a transition written at `now` over a record in state `current` last written
-- at `at` (both updated_at texts, `now` nil when the transition has none) keeps the
-- record's TTL instead of an EXPIRE: only over a "queued" record written within
-- QUEUED_RECENT_S, whose TTL holds the slack (queued_ttl_lib).
local function keeps_ttl(current, at, now)
  if current ~= 'queued' or type(at) ~= 'string' or type(now) ~= 'string' then
    return false
  end
  local t0, t1 = tonumber(at), tonumber(now)
  if not t0 or not t1 then
    return false
  end
  local d = t1 - t0
  return d < QUEUED_RECENT_S and d > -QUEUED_RECENT_S
end
