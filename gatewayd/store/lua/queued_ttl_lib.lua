-- Shared by every script that writes a "queued" status record (queued.lua,
-- enqueue_many.lua, fanout.lua, claim.lua) and by those that write its next transition
-- (record.lua, status.lua, through rank_lib). A "queued" record is kept QUEUED_SLACK_S
-- longer than queue.status_ttl_s, so that its next transition written within
-- QUEUED_RECENT_S of it (by the writers' clocks: updated_at) needs no EXPIRE of its own
-- (a Redis command a message): the record's expiry is then still at least status_ttl_s
-- after that transition, as an EXPIRE would have made it, with QUEUED_SLACK_S -
-- QUEUED_RECENT_S (half an hour) for the clocks of the two writers to differ. Only a
-- "queued" record's TTL is known to hold the slack, so only the transition from
-- "queued" skips its EXPIRE; every later one refreshes the TTL as before.
local QUEUED_SLACK_S = 3600
local QUEUED_RECENT_S = 1800
