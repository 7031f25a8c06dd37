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
