-- Give a lease back when its holder stops cleanly (lease.lua takes and keeps it): only
-- the holder's own token deletes it, so a lease another process took meanwhile stays.
-- KEYS[1] lease key; ARGV[1] holder token. Returns 1 when released, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
