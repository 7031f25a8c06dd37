-- Apply one part's delivery receipt to a message's status record (see receipt_lib).
-- KEYS[1] status hash; ARGV[1] part index, ARGV[2] part state, ARGV[3] now, ARGV[4] err
-- Returns {kind, state, category, carrier, carrier_id, segments, ref, tenant, to,
-- submitted_at, err} for 'final' and 'late'; {'early', state}, {'partial'}, {'missing'}.
--#include receipt_lib
return {apply_receipt(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])}
