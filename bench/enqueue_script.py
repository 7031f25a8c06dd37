"""Redis's cost a message of gatewayd/store/lua/enqueue_many.lua alone (intake's one call).

Messages of bench/harness's mix (30 % Chinese, 5 % long, a tenant and a ref each; with
--keyed an idempotency_key each) are validated and their script arguments built by the
real QueueStore (``script_args``) ahead, not measured; then the calls go one after the
other by EVALSHA in chunks of --chunk messages (2,000: the client's send_many; a few:
what HTTP's coalescer gathers from requests of one message). The keyspace holds
--prefill unrelated keys with a TTL and the events stream at --events-maxlen (each XADD
trims as in steady state). Each pass's status records and queue streams are deleted
after it, so every pass meets the same keyspace.

Figures a message: the Redis server's CPU (utime+stime, /proc/<pid>/stat), median of
--runs with min and max; its inner commands (INFO commandstats: calls and usec a
message, the Lua around them not counted); with --callgrind, the server's instructions
(redis-server run under valgrind's callgrind, zeroed before and dumped after each pass:
load-independent; slow, keep -n small). "commands" is the floor: the same writes as
plain pipelined commands (EXISTS, HSET, EXPIRE, XADD, XADD; GET and SET when keyed),
without the script. Extra --script files (variants of the Lua taking the same arguments;
--#include resolved beside the file first) are measured interleaved with the shipped one.

    python -m bench.enqueue_script [-n 40000] [--runs 5] [--chunk 2000] [--keyed]
        [--script x.lua] [--callgrind]

The server must be a throwaway one on this host: the bench writes keys to it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis

from bench import harness
from bench.common import cpu_seconds, summary
from bench.record_script import variant_source
from gatewayd.config import Config, QueueConfig
from gatewayd.model import OutboundMessage
from gatewayd.pipeline.intake import parse_message, to_fields
from gatewayd.pipeline.queue import IDEMPOTENCY_TTL_S, QueueStore
from gatewayd.store import fastpipe
from gatewayd.store.embedded import free_port
from gatewayd.store.keys import Keys
from gatewayd.store.seal import Seal


def _args(qs: QueueStore, msgs: list[OutboundMessage], seal: Seal, now: float) -> tuple[Any, ...]:
    """The script's arguments as the tree under test builds them (an older tree without
    ``QueueStore.script_args``: its _enqueue_script's rows, rebuilt here)."""
    if hasattr(qs, "script_args"):
        return tuple(qs.script_args(msgs, seal, "client", now))
    led, keys = qs.ledger, qs.keys
    rows = []
    for m in msgs:
        m.intake = "client"
        key, status = led.build(m, "queued", now, text=True)
        ikey = keys.idempotency(m.category, m.idempotency_key) if m.idempotency_key else ""
        rows.append([key, m.id, ikey, qs.streams[m.category], status, to_fields(m, seal)])
    return (1, keys.events, msgspec.msgpack.encode(rows), led.status_ttl, IDEMPOTENCY_TTL_S,
            led.events_maxlen, msgspec.msgpack.encode(qs.limits))


def _commands(pipe: Any, qs: QueueStore, msgs: list[OutboundMessage], seal: Seal,
              now: float) -> None:
    """The floor: the script's writes as plain commands (no checks' outcomes used)."""
    from gatewayd.pipeline.events import event_of

    for m in msgs:
        m.intake = "client"
        key, status = qs.ledger.build(m, "queued", now, text=True)
        ikey = qs.keys.idempotency(m.category, m.idempotency_key) if m.idempotency_key else ""
        if ikey:
            pipe.get(ikey)
        pipe.exists(key)
        pipe.hset(key, mapping=status)
        pipe.expire(key, qs.ledger.status_ttl + 3600)
        if ikey:
            pipe.set(ikey, m.id, ex=IDEMPOTENCY_TTL_S)
        pipe.xadd(qs.streams[m.category], to_fields(m, seal))
        pipe.xadd(qs.keys.events, event_of(m.id, status), maxlen=qs.ledger.events_maxlen,
                  approximate=True)


class _Callgrind:
    """A redis-server under valgrind's callgrind: ``count()`` around a pass gives its
    instructions (zeroed before, dumped after)."""

    def __init__(self, pid: int, out: str) -> None:
        self.pid, self.out = pid, out
        self.keep = ""  # a path to copy each pass's dump to (callgrind_annotate it)

    def zero(self) -> None:
        subprocess.run(["callgrind_control", "-z", str(self.pid)], check=True,
                       capture_output=True)

    def dump(self) -> int:
        for f in Path(self.out).parent.glob(Path(self.out).name + "*"):
            f.unlink()
        subprocess.run(["callgrind_control", "-d", str(self.pid)], check=True,
                       capture_output=True)
        total = 0
        for f in Path(self.out).parent.glob(Path(self.out).name + "*"):
            m = re.search(r"^(?:summary|totals):\s+(\d+)", f.read_text(errors="replace"), re.M)
            if m:
                total += int(m.group(1))
            if self.keep:
                f.replace(self.keep)
            else:
                f.unlink()
        return total


@contextmanager
def _callgrind_redis() -> Iterator[tuple[int, _Callgrind]]:
    with tempfile.TemporaryDirectory(prefix="gw-bench-cg-") as d:
        port = free_port()
        out = f"{d}/redis.cg"
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             # every dump names its functions itself (callgrind_annotate of one dump)
             "--compress-strings=no", "--compress-pos=no",
             # requests only: not serverCron, whose share grows with valgrind's slowness
             "--toggle-collect=readQueryFromClient",
             harness.bench_redis_server(), "--port", str(port), "--save", "",
             "--appendonly", "no", "--dir", d],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            import redis as syncredis

            deadline = time.monotonic() + 60
            while True:
                try:
                    syncredis.Redis(port=port).ping()
                    break
                except syncredis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            yield port, _Callgrind(proc.pid, out)
        finally:
            proc.terminate()
            proc.wait(60)


async def _prefill(r: aioredis.Redis, keys: Keys, n: int, maxlen: int) -> None:
    for start in range(0, n, 10_000):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(n, start + 10_000)):
            pipe.set(f"bench:fill:{i}", "x" * 40, ex=7 * 86400)
        await fastpipe.execute(pipe)
    fill = r.register_script("""
for i = 1, tonumber(ARGV[1]) do
  redis.call('XADD', KEYS[1], '*', 'id', '193a2b4c5d6-0123456789ab', 'state', 'queued',
    'at', '1765140000.1234567', 'category', 'otp', 'to', '+86138****0000',
    'ref', 'bench-0-0', 'tenant', 'shop-0')
end""")
    while (missing := maxlen - await r.xlen(keys.events)) > 0:
        await fill([keys.events], [min(missing, 10_000)])


async def main_async(a: argparse.Namespace, cg: _Callgrind | None) -> int:
    r = aioredis.Redis(port=a.port, socket_timeout=600)
    pid = int((await r.info("server"))["process_id"])
    keys = Keys("gw:")
    cfg = Config(queue=QueueConfig(events_maxlen=a.events_maxlen))
    await _prefill(r, keys, a.prefill, a.events_maxlen)
    qs = QueueStore(r, keys, cfg, "bench")
    seal = await qs.sealer()
    scripts: dict[str, Any] = {"enqueue_many.lua": qs._enqueue_many}
    for p in a.script:
        scripts[str(p)] = r.register_script(variant_source(p))
    a.script_names = {str(p) for p in a.script}
    if a.floor:
        scripts["commands"] = None
    for s in scripts.values():
        if s is not None:
            await r.script_load(s.script)
    cpu: dict[str, list[float]] = {k: [] for k in scripts}
    ins: dict[str, list[float]] = {k: [] for k in scripts}
    cmds: dict[str, dict[str, tuple[float, float]]] = {}
    for run in range(a.runs + 1):  # run 0 warms up (script compile, allocator)
        for name, script in scripts.items():
            items = harness.make_messages(a.n, run=1000 + run)
            if a.keyed:
                for i, item in enumerate(items):
                    item["idempotency_key"] = f"k-{run}-{name}-{i}"
            now = time.time()
            q = cfg.queue
            msgs = [parse_message(i, classes=q.classes, max_segments=q.max_segments, now=now,
                                  horizon_s=q.horizon_s) for i in items]
            chunks = [msgs[s:s + a.chunk] for s in range(0, len(msgs), a.chunk)]
            calls: list[Any] = []
            if script is None:
                for part in chunks:
                    pipe = r.pipeline(transaction=False)
                    _commands(pipe, qs, part, seal, now)
                    calls.append(pipe)
            else:
                calls = [_args(qs, part, seal, now) for part in chunks]
            await r.config_resetstat()
            if cg is not None:
                cg.zero()
            c0 = cpu_seconds(pid)
            for call, part in zip(calls, chunks, strict=True):
                if script is None:
                    await fastpipe.execute(call)
                else:
                    pipe = r.pipeline(transaction=False)
                    pipe.execute_command("EVALSHA", script.sha, *call)
                    [reply] = await fastpipe.execute(pipe, raw=True)
                    # (a variant made to measure a part of the script may reply otherwise)
                    assert reply == [1] * len(part) or name in a.script_names, reply[:3]
            used = cpu_seconds(pid) - c0
            if cg is not None and a.keep_dumps:
                cg.keep = f"{a.keep_dumps}.{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}"
            got = cg.dump() if cg is not None else 0
            stats = await r.info("commandstats")
            written = sum([await r.xlen(s) for s in qs.streams.values()])
            # (a variant may write less: one made to measure a part of the script)
            assert written == a.n or name in a.script_names, (name, written)
            if run:
                cpu[name].append(used * 1e6 / a.n)
                ins[name].append(got / a.n)
                cmds[name] = {k.removeprefix("cmdstat_"): (v["calls"] / a.n, v["usec"] / a.n)
                              for k, v in stats.items()
                              if k.startswith("cmdstat_") and k not in
                              ("cmdstat_config|resetstat", "cmdstat_info")}
            await _forget(r, qs, msgs)
    print(f"enqueue_many.lua, Redis a message: {a.n:,} messages a pass in calls of "
          f"{a.chunk}{', keyed' if a.keyed else ''}; {a.prefill:,} other keys, events at "
          f"MAXLEN ~{a.events_maxlen:,}; median of {a.runs} (min-max)")
    for name in scripts:
        s = summary(cpu[name])
        line = f"  {name:<28} CPU {s['median']:6.2f} us ({s['min']:.2f}-{s['max']:.2f})"
        if cg is not None:
            line += f"   {summary(ins[name])['median']:10,.0f} instructions"
        print(line)
        inner = ", ".join(f"{k} {c:.2f}x {u:.2f} us" for k, (c, u) in
                          sorted(cmds[name].items(), key=lambda kv: -kv[1][1]))
        print(f"    commandstats a message: {inner}")
    await r.aclose()
    return 0


async def _forget(r: aioredis.Redis, qs: QueueStore, msgs: list[OutboundMessage]) -> None:
    written = [qs.keys.status(m.id) for m in msgs]
    written += [qs.keys.idempotency(m.category, m.idempotency_key) for m in msgs
                if m.idempotency_key]
    for i in range(0, len(written), 10_000):
        await r.unlink(*written[i:i + 10_000])
    await r.unlink(*qs.streams.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.enqueue_script",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0,
                    help="a throwaway redis-server's port (0: start a private one)")
    ap.add_argument("-n", type=int, default=40_000, help="messages a pass")
    ap.add_argument("--chunk", type=int, default=2000, help="messages a call")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keyed", action="store_true", help="an idempotency_key each")
    ap.add_argument("--prefill", type=int, default=100_000)
    ap.add_argument("--events-maxlen", type=int, default=100_000)
    ap.add_argument("--script", action="append", default=[], type=Path,
                    help="another version of enqueue_many.lua to measure too")
    ap.add_argument("--floor", action="store_true",
                    help="also the writes as plain pipelined commands")
    ap.add_argument("--callgrind", action="store_true",
                    help="count the server's instructions (valgrind; load-independent)")
    ap.add_argument("--keep-dumps", default="", metavar="PATH",
                    help="with --callgrind: keep each script's last dump as PATH.<name>")
    a = ap.parse_args(argv)
    if a.callgrind:
        if a.port:
            ap.error("--callgrind starts its own server")
        with _callgrind_redis() as (port, cg):
            a.port = port
            return asyncio.run(main_async(a, cg))
    with harness.private_redis(a.port) as port:
        a.port = port
        return asyncio.run(main_async(a, None))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
