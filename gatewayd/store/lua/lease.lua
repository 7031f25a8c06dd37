-- Take or keep a lease: one holder at a time for housekeeping jobs that must not run
-- in two daemons at once. KEYS[1] lease key; ARGV[1] holder token, ARGV[2] TTL (ms).
-- Returns 1 when ARGV[1] holds the lease (taken now or renewed), else 0.
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
