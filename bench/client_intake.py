"""gatewayd.client intake: messages a second from one Python process, and CPU a message.

A private Redis (bench/harness.private_redis); N messages of bench/e2e's mix (30 %
Chinese, 5 % long, a tenant and a ref each; with --keyed every one has an
idempotency_key); each round runs, interleaved so that the noise hits both alike:

  send        Client.send (validation, ids, idempotency, the queued record)
  send_many   Client.send_many (the same, chunks validated while the previous chunk's
              one script call runs in Redis)
  xadd        the floor: the same entries as raw XADDs in pipelines of 1,000 (no
              validation, no status record, no event)

Figures: msgs/s (wall clock of the call), client CPU a message (this process's CPU
time over the call) and Redis CPU a message (INFO cpu before and after), median of
--runs with min and max. The queue is emptied between phases. Target (issue 17):
send_many >= 100,000 msgs/s.

    python -m bench.client_intake [-n 100000] [--runs 3] [--keyed]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import redis.asyncio as aioredis

from bench import harness
from bench.common import redis_cpu_s, write_result
from gatewayd.client import Client
from gatewayd.config import QueueConfig
from gatewayd.pipeline.intake import parse_message, to_fields


async def _phase(url: str, name: str, items: list[dict[str, Any]]) -> dict[str, float]:
    r = aioredis.from_url(url)
    await r.flushdb()
    qcfg = QueueConfig()
    fields: list[tuple[str, dict[str, str]]] = []
    async with Client(url, queue=qcfg) as c:
        if name == "xadd":  # the floor: entries made ahead, pipelined XADDs only
            msgs = [parse_message(i, classes=qcfg.classes, max_segments=qcfg.max_segments)
                    for i in items]
            fields = [(c.keys.queue(m.category), to_fields(m)) for m in msgs]
        r0, c0, t0 = await redis_cpu_s(r), time.process_time(), time.perf_counter()
        if name == "send":
            out = await c.send(items)
        elif name == "send_many":
            out = await c.send_many(items)
        else:
            for start in range(0, len(fields), 1000):
                async with c.redis.pipeline(transaction=False) as pipe:
                    for stream, f in fields[start:start + 1000]:
                        pipe.xadd(stream, f)  # type: ignore[arg-type]
                    await pipe.execute()
            out = [("", False)] * len(items)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rcpu = await redis_cpu_s(r) - r0
    n = len(items)
    queued = sum([await r.xlen(c.keys.queue(k)) for k in qcfg.classes])
    await r.aclose()
    assert len(out) == n and queued == n, (name, len(out), queued)
    return {"msgs_s": n / wall, "client_us": cpu / n * 1e6, "redis_us": rcpu / n * 1e6}


def _med(xs: list[float]) -> str:
    return f"{statistics.median(xs):>10,.1f} ({min(xs):,.1f}-{max(xs):,.1f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.client_intake",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keyed", action="store_true", help="every message has an idempotency_key")
    ap.add_argument("--quick", action="store_true", help="n=5000, one run")
    args = ap.parse_args(argv)
    n, runs = (5000, 1) if args.quick else (args.n, args.runs)
    # "send_many" only where the client has it (run against an older tree: a baseline)
    phases = ["xadd", "send", *(["send_many"] if hasattr(Client, "send_many") else [])]
    got: dict[str, list[dict[str, float]]] = {p: [] for p in phases}
    with harness.private_redis(0) as port:
        url = f"redis://127.0.0.1:{port}/0"
        for run in range(runs):
            items: list[dict[str, Any]] = list(harness.make_messages(n, run=run))
            if args.keyed:
                for i, item in enumerate(items):
                    item["idempotency_key"] = f"k-{run}-{i}"
            for p in phases:
                got[p].append(asyncio.run(_phase(url, p, items)))
    print(f"client intake, {n:,} messages, median of {runs} (min-max)"
          + (", keyed" if args.keyed else ""))
    print(f"{'phase':<10} {'msgs/s':>28} {'client us/msg':>28} {'redis us/msg':>28}")
    for p in phases:
        rs = got[p]
        print(f"{p:<10} {_med([r['msgs_s'] for r in rs]):>28} "
              f"{_med([r['client_us'] for r in rs]):>28} {_med([r['redis_us'] for r in rs]):>28}")
    floor = statistics.median(r["msgs_s"] for r in got["xadd"])
    for p in phases[1:]:
        rate = statistics.median(r["msgs_s"] for r in got[p])
        print(f"{p} / raw xadd: {rate / floor:.2f}x")
    write_result("client_intake", {"n": n, "runs": runs, "keyed": args.keyed,
                                   "phases": got})
    return 0


if __name__ == "__main__":
    sys.exit(main())
