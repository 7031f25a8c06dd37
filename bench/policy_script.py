"""Redis CPU per message of gatewayd/store/lua/policy_batch.lua (the batch's Redis checks).

Records are built by the real RedisBatch.add, with the shipped policy's categories:
20 % otp, 50 % transactional, 30 % marketing (opt-out checked, 1 in 30 opted out), all
with a 30 s duplicate window and one tenant bucket, every message to a new recipient.
~300k unrelated keys are prefilled. Batches of --batch records run through EVALSHA one
after another; the figure is the Redis server's CPU (utime+stime from /proc/<pid>/stat)
per message, median of --runs with min and max. "commands" runs the same Redis calls
from a minimal script (no parsing, no decisions): the floor the checks cannot go under.
Extra --script files (variants of the Lua) are measured interleaved with the shipped one.

    python -m bench.policy_script [--port P] [-n 64000] [--runs 5] [--script x.lua]

The server must be a throwaway one on this host: the bench writes keys to it.
"""

from __future__ import annotations

import argparse
import time
import uuid
from pathlib import Path

import redis

from bench.common import cpu_seconds, summary
from bench.harness import private_redis
from gatewayd.policy.lua import LuaScript
from gatewayd.policy.redischecks import RedisBatch
from gatewayd.store.keys import Keys

# (share %, caps key, caps, optout checked): the shipped policies/policy.toml.
CATEGORIES = [
    (20, "cap:otp", "1:60 5:3600 10:86400", False),
    (50, "cap:transactional", "30:3600 100:86400", False),
    (30, "cap:marketing", "1:86400 3:604800", True),
]
TENANT_SPEC = "1000000:1000000"
TEXT = "【京东】您的订单{}已发货，快递单号SF{}，请注意查收。回TD退订"

# Every Redis call the checks make for a passing message, without any of the logic.
COMMANDS_ONLY = """
local now = ARGV[1]
for i = 2, #ARGV, 10 do
  if ARGV[i + 1] ~= '' then redis.call('HGET', ARGV[i + 1], '*') end
  if ARGV[i + 3] ~= '' then
    redis.call('SET', ARGV[i + 3], now .. ' ' .. ARGV[i + 5], 'PX', ARGV[i + 4], 'GET')
  end
  if ARGV[i + 6] ~= '' then
    redis.call('ZRANGE', ARGV[i + 6], '0', '-1', 'WITHSCORES')
    redis.call('ZADD', ARGV[i + 6], now, ARGV[i + 5])
    redis.call('PEXPIRE', ARGV[i + 6], '604800000')
  end
end
return 's'
"""


def build(r: redis.Redis, keys: Keys, first: int, n: int, size: int) -> list[list[str]]:
    """Batches of records for recipients first..first+n-1 (opt-outs written now)."""
    batches: list[list[str]] = []
    pipe = r.pipeline(transaction=False)
    cat_of = [c for c in CATEGORIES for _ in range(c[0])]
    for start in range(0, n, size):
        b = RedisBatch(keys, 0.0)
        for i in range(start, min(n, start + size)):
            digits = f"86138{first + i:08d}"
            _share, caps_key, caps, optout = cat_of[i % 100]
            if optout and i % 20 == 0:
                pipe.hset(keys.optout(digits), "*", "1700000000")
            b.add(digits=digits, optout_only=False, optout_fields="*" if optout else None,
                  duplicate_ms=30_000, text_body=TEXT.format(i, first + i),
                  member=uuid.uuid4().hex, caps_key=caps_key, caps=caps,
                  tenant="acme", tenant_spec=TENANT_SPEC)
        batches.append(b.records)
    pipe.execute()
    return batches


def measure(r: redis.Redis, pid: int, sha: str, batches: list[list[str]], flat: bool,
            n: int) -> float:
    """Redis CPU microseconds per message for running every batch through one script."""
    c0 = cpu_seconds(pid)
    for recs in batches:
        now = repr(time.time())
        if flat:  # the commands-only script: one argument per field
            r.evalsha(sha, 0, now, *(f for rec in recs for f in rec.split("\x1f")))
        else:
            r.evalsha(sha, 0, now, "0", "\x1e".join(recs))
    return (cpu_seconds(pid) - c0) * 1e6 / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0,
                    help="a throwaway redis-server's port (0: start a private one)")
    ap.add_argument("-n", type=int, default=64_000, help="messages per run")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--prefill", type=int, default=300_000)
    ap.add_argument("--script", action="append", default=[], type=Path,
                    help="another version of policy_batch.lua to measure too")
    ap.add_argument("--no-commands", action="store_true", help="skip the commands-only floor")
    a = ap.parse_args(argv)
    with private_redis(a.port) as port:
        return _main(a, port)


def _main(a: argparse.Namespace, port: int) -> int:
    r = redis.Redis(port=port)
    pid = int(r.info("server")["process_id"])
    keys = Keys("bench:")
    if r.dbsize() < a.prefill:
        pipe = r.pipeline(transaction=False)
        for i in range(a.prefill):
            pipe.set(f"bench:fill:{i}", "x" * 40)
            if i % 10_000 == 9_999:
                pipe.execute()
        pipe.execute()
    # Counters of earlier invocations go: every pass starts with new recipients.
    for pattern in ("bench:fc:*", "bench:optout:*", "bench:tb:*"):
        old = list(r.scan_iter(match=pattern, count=10_000))
        for i in range(0, len(old), 10_000):
            r.unlink(*old[i : i + 10_000])
    scripts = {"policy_batch.lua": r.script_load(LuaScript("policy_batch").source)}
    for p in a.script:
        scripts[p.name] = r.script_load(p.read_text("utf-8"))
    if not a.no_commands:
        scripts["commands only"] = r.script_load(COMMANDS_ONLY)
    results: dict[str, list[float]] = {name: [] for name in scripts}
    # Fresh recipients for every measured pass: each starts from the same state.
    first = 0
    for run in range(a.runs + 1):  # run 0 warms up (script compile, allocator)
        for name, sha in scripts.items():
            batches = build(r, keys, first, a.n, a.batch)
            first += a.n
            us = measure(r, pid, sha, batches, name == "commands only", a.n)
            if run:
                results[name].append(us)
            # The pass's keys go, so every pass meets the same keyspace (and no rehash).
            fields = [rec.split("\x1f") for recs in batches for rec in recs]
            written = [f[i] for f in fields for i in (1, 3, 6) if f[i]]
            for i in range(0, len(written), 10_000):
                r.unlink(*written[i : i + 10_000])
    print(f"Redis CPU us/message, batches of {a.batch}, {a.n} messages a run, "
          f"{r.dbsize()} keys:")
    for name, values in results.items():
        s = summary(values)
        print(f"  {name:<24} {s['median']:6.2f}  (min {s['min']:.2f}, max {s['max']:.2f}, "
              f"{s['runs']} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
