"""Redis CPU per message of gatewayd/store/lua/record.lua and receipts.lua (the batch writes).

record.lua: batches of --batch "submitted" records, one correlation key each, built by
the real Ledger.record / Book.correlate and written by Book.flush into a pipeline run
with fastpipe.execute, as the dispatcher does. receipts.lua: chunks of 256 single-part
receipts (1 in 50 undeliverable with an error code) that all match, through the real
InboundHandler._apply_in_script, on messages submitted just before (not measured) and
listed in the awaiting-receipt set. Both scripts go as EVAL with their source, as in
production. The keyspace: ~300k unrelated keys with a TTL (as status records have, so
the expires dict too is big and stable), the events stream at its MAXLEN (the config's
default: each XADD trims as in steady state), 50k other awaiting messages. Each pass's
status and correlation keys are deleted after it, so every pass meets the same keyspace
(keep -n under ~110k: 300k + 2n keys past 524288 make Redis rehash its dicts mid-pass).
The figure is the Redis server's CPU (utime+stime, /proc/<pid>/stat, 10 ms ticks) per
message, median of --runs with min and max. Floors: "commands" is the record writes as
plain pipelined commands (the cluster path), "receipts commands" a minimal script with
receipts.lua's Redis calls and reply and none of its logic. Extra --record / --receipts
files (variants of the Lua; --#include is resolved beside the file first) are measured
interleaved with the shipped ones.

    python -m bench.record_script [--port P] [-n 64000] [--runs 5] [--record x.lua]
        [--receipts y.lua] [--only record|receipts] [--queued]

The server must be a throwaway one on this host: the bench writes keys to it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.common import cpu_seconds, summary
from bench.harness import private_redis
from gatewayd.config import Config
from gatewayd.model import OutboundMessage, Receipt
from gatewayd.pipeline.events import Ledger
from gatewayd.pipeline.inbound import InboundHandler
from gatewayd.pipeline.intake import parse_message
from gatewayd.store import fastpipe
from gatewayd.store.connection import script_source
from gatewayd.store.keys import Keys

CLASSES = ["otp", "transactional", "marketing"]
CARRIER = "cmcc"
CHUNK = 256  # inbound._SCRIPT_CHUNK

# The Redis calls receipts.lua makes for a matched single-part receipt, and its reply,
# without any of its logic: the floor.
RECEIPTS_COMMANDS = """
local now, maxlen, pre, suf = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local out, a, k, gone = {}, 6, 3, {}
for _ = 1, tonumber(ARGV[5]) do
  local st = ARGV[a]
  local id = string.sub(redis.call('GET', KEYS[k]), 1, -3)
  local key = pre .. id .. suf
  local f = redis.call('HMGET', key, 'state', 'segments', 'category', 'carrier',
    'carrier_id', 'ref', 'tenant', 'to', 'submitted_at', 'err')
  redis.call('HSET', key, 'p0', st, 'state', st, 'done_at', now, 'updated_at', now)
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'id', id, 'state', st, 'at', now,
    'category', f[3], 'carrier', f[4], 'carrier_id', f[5], 'segments', f[2], 'ref', f[6],
    'tenant', f[7], 'to', f[8])
  gone[#gone + 1] = id
  for _, v in ipairs({'final', id, st, f[4], f[9], 1}) do out[#out + 1] = v end
  k = k + tonumber(ARGV[a + 2])
  a = a + 3
end
if #gone > 0 then redis.call('ZREM', KEYS[2], unpack(gone)) end
return out
"""


def variant_source(path: Path) -> str:
    """A script file's source with --#include resolved beside it, else in gatewayd/store/lua."""
    out = []
    for line in path.read_text("utf-8").splitlines(keepends=True):
        if line.startswith("--#include "):
            name = line.split()[1]
            lib = path.with_name(f"{name}.lua")
            out.append(variant_source(lib) if lib.exists() else script_source(name))
        else:
            out.append(line)
    return "".join(out)


def messages(first: int, n: int) -> list[tuple[OutboundMessage, str]]:
    """N messages and their SMSC ids (the simulator's: 10 hex digits)."""
    out = []
    for i in range(first, first + n):
        m = parse_message({"to": f"+86138{i % 10**8:08d}", "text": "Your code is 123456",
                           "category": CLASSES[i % 3], "ref": f"order-{i}",
                           "tenant": "acme"}, classes=CLASSES, max_segments=10,
                          now=time.time())
        m.id = f"b{i:012d}"
        out.append((m, f"{0x12_3456_7890 + i:010x}"))
    return out


async def record(r: aioredis.Redis, led: Ledger, keys: Keys, msgs: list[Any],
                 size: int, pid: int, queued: bool = False) -> float:
    """Write the messages as submitted, a Book per batch; Redis CPU us a message.
    ``queued``: each message has its "queued" record first (as intake writes it, not
    measured), as in e2e; else the "submitted" record is the first."""
    if queued:
        now = time.time()
        pipe = r.pipeline(transaction=False)
        for m, _sid in msgs:
            key, status = led.build(m, "queued", now, text=True)
            pipe.hset(key, mapping=status)
            pipe.expire(key, led.status_ttl + 3600)  # lua/queued_ttl_lib.lua's slack
        await fastpipe.execute(pipe)
    books = []
    for start in range(0, len(msgs), size):
        book = led.book()
        now = time.time()
        for m, sid in msgs[start:start + size]:
            led.record(book, m, "submitted", now, carrier=CARRIER, carrier_id=sid,
                       segments=1)
            book.correlate(keys.correlation(CARRIER, sid), f"{m.id} 0")
        books.append(book)
    c0 = cpu_seconds(pid)
    for book in books:
        pipe = r.pipeline(transaction=False)
        book.flush(pipe)
        await fastpipe.execute(pipe)
    return (cpu_seconds(pid) - c0) * 1e6 / len(msgs)


async def receipts(r: aioredis.Redis, h: InboundHandler, msgs: list[Any], pid: int) -> float:
    """Apply one receipt for every (submitted) message; Redis CPU us a receipt."""
    rs = [Receipt(carrier=CARRIER, smsc_id=sid, stat="DELIVRD", state="delivered",
                  err="000") if i % 50 else
          Receipt(carrier=CARRIER, smsc_id=sid, stat="UNDELIV", state="undeliverable",
                  err="034") for i, (_m, sid) in enumerate(msgs)]
    now = time.time()
    c0 = cpu_seconds(pid)
    for i in range(0, len(rs), CHUNK):
        unmatched = await h._apply_in_script(rs[i:i + CHUNK], now)
        assert not unmatched, "every receipt must match"
    return (cpu_seconds(pid) - c0) * 1e6 / len(rs)


async def prefill(r: aioredis.Redis, keys: Keys, n: int, maxlen: int) -> None:
    if await r.dbsize() < n:
        for start in range(0, n, 10_000):
            pipe = r.pipeline(transaction=False)
            for i in range(start, min(n, start + 10_000)):
                pipe.set(f"bench:fill:{i}", "x" * 40, ex=7 * 86400)
            await fastpipe.execute(pipe)
    # The events stream at its MAXLEN, entries shaped like the events written here.
    fill = r.register_script("""
for i = 1, tonumber(ARGV[1]) do
  redis.call('XADD', KEYS[1], '*', 'id', 'b000000000000', 'state', 'submitted',
    'at', '1718000000.1234567', 'category', 'otp', 'to', '+86138****0000',
    'carrier', 'cmcc', 'carrier_id', '1234567890', 'segments', '1', 'ref', 'order-0',
    'tenant', 'acme')
end""")
    while (missing := maxlen - await r.xlen(keys.events)) > 0:
        await fill([keys.events], [min(missing, 10_000)])
    if await r.zcard(keys.awaiting_receipt) < 50_000:
        far = time.time() + 86400
        await r.zadd(keys.awaiting_receipt, {f"other-{i}": far for i in range(50_000)})


async def main_async(a: argparse.Namespace) -> int:
    r = aioredis.Redis(port=a.port, decode_responses=True,
                       socket_timeout=600)  # a server under valgrind (bench.redis_instr)
    pid = int((await r.info("server"))["process_id"])
    keys, cfg = Keys("bench:"), Config()
    await prefill(r, keys, a.prefill, cfg.queue.events_maxlen)
    shipped = Ledger(keys, cfg, r)
    plain = Ledger(keys, cfg)  # no script: the pipelined commands
    h = InboundHandler(r, keys, cfg, lambda: None)
    ledgers: dict[str, Ledger] = {"record.lua": shipped, "commands": plain}
    for p in a.record:
        ledgers[f"record {p}"] = led = Ledger(keys, cfg, r)
        led.script = r.register_script(variant_source(p))
    assert h._receipts is not None
    handlers = {"receipts.lua": h._receipts,
                "receipts commands": r.register_script(RECEIPTS_COMMANDS)}
    for p in a.receipts:
        handlers[f"receipts {p}"] = r.register_script(variant_source(p))
    if a.only == "record":
        handlers.clear()
    elif a.only == "receipts":
        ledgers.clear()
    results: dict[str, list[float]] = {name: [] for name in (*ledgers, *handlers)}
    first = 0
    for run in range(a.runs + 1):  # run 0 warms up (script compile, allocator)
        for name, led in ledgers.items():
            msgs = messages(first, a.n)
            first += a.n
            us = await record(r, led, keys, msgs, a.batch, pid, a.queued)
            if run:
                results[name].append(us)
            await forget(r, keys, msgs)
        for name, script in handlers.items():
            msgs = messages(first, a.n)
            first += a.n
            await record(r, shipped, keys, msgs, a.batch, pid)
            await r.zadd(keys.awaiting_receipt, {m.id: time.time() + 3600 for m, _ in msgs})
            h._receipts = script
            us = await receipts(r, h, msgs, pid)
            if run:
                results[name].append(us)
            await forget(r, keys, msgs)
    print(f"Redis CPU us/message ({a.n} a run; records in batches of {a.batch}, receipts "
          f"in chunks of {CHUNK}), {await r.dbsize()} keys:")
    for name, values in results.items():
        s = summary(values)
        print(f"  {name:<24} {s['median']:6.2f}  (min {s['min']:.2f}, max {s['max']:.2f}, "
              f"{s['runs']} runs)")
    await r.aclose()
    return 0


async def forget(r: aioredis.Redis, keys: Keys, msgs: list[Any]) -> None:
    """Delete a pass's status and correlation keys (the stream trims itself)."""
    written = [k for m, sid in msgs
               for k in (keys.status(m.id), keys.correlation(CARRIER, sid))]
    for i in range(0, len(written), 10_000):
        await r.unlink(*written[i : i + 10_000])
    await r.zrem(keys.awaiting_receipt, *(m.id for m, _ in msgs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0,
                    help="a throwaway redis-server's port (0: start a private one)")
    ap.add_argument("-n", type=int, default=64_000, help="messages per run")
    ap.add_argument("--batch", type=int, default=64, help="records a Book (read_batch)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--prefill", type=int, default=300_000)
    ap.add_argument("--record", action="append", default=[], type=Path,
                    help="another version of record.lua to measure too")
    ap.add_argument("--receipts", action="append", default=[], type=Path,
                    help="another version of receipts.lua to measure too")
    ap.add_argument("--only", choices=("record", "receipts"), help="measure one script")
    ap.add_argument("--queued", action="store_true",
                    help="records written over the messages' 'queued' records (as in e2e)")
    a = ap.parse_args(argv)
    with private_redis(a.port) as port:
        a.port = port
        return asyncio.run(main_async(a))


if __name__ == "__main__":
    raise SystemExit(main())
