"""Redis connection pools: CPU a checkout costs, and a command through each pool.

gatewayd's pools wait for a free connection instead of raising (issue 14). redis-py's
BlockingConnectionPool does that with a Condition, a lock and a timeout scope on every
checkout; gatewayd.store.connection.WaitingPool takes the plain pool's path while a
connection is free and waits only when none is. This prints, for the plain
ConnectionPool (the baseline, which raises when exhausted), BlockingConnectionPool and
WaitingPool: CPU microseconds a checkout + release, and a SET round trip, with the
ratio to the plain pool measured in the same run. Median of --runs (min-max); writes
bench/results/redis_pool.json.

    python -m bench redis_pool [--quick] [-n 5000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.common import summary, write_result
from gatewayd.store.connection import WaitingPool
from gatewayd.store.embedded import EmbeddedRedis

POOLS: dict[str, Any] = {
    "plain": aioredis.ConnectionPool,
    "blocking": aioredis.BlockingConnectionPool,
    "waiting": WaitingPool,
}


async def one(url: str, kind: str, n: int) -> tuple[float, float]:
    pool = POOLS[kind].from_url(url, max_connections=16)
    client = aioredis.Redis.from_pool(pool)
    try:
        await client.ping()
        t = time.process_time()
        for _ in range(n):
            conn = await pool.get_connection()
            await pool.release(conn)
        checkout = (time.process_time() - t) / n * 1e6
        t = time.process_time()
        for _ in range(n):
            await client.set("bench:pool", "v")
        command = (time.process_time() - t) / n * 1e6
        return checkout, command
    finally:
        await client.aclose()


async def run(n: int, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis")
        url = server.start()
        try:
            figures: dict[str, dict[str, list[float]]] = {
                k: {"checkout_us": [], "set_us": []} for k in POOLS}
            for _ in range(runs):
                for kind in POOLS:  # interleaved: the machine's noise hits each alike
                    checkout, command = await one(url, kind, n)
                    figures[kind]["checkout_us"].append(checkout)
                    figures[kind]["set_us"].append(command)
        finally:
            server.stop()
    out: dict[str, Any] = {"n": n}
    base = figures["plain"]
    for kind, f in figures.items():
        out[kind] = {name: summary(values) for name, values in f.items()}
        out[kind]["ratio"] = {
            name: summary([v / b for v, b in zip(values, base[name], strict=True)])
            for name, values in f.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench redis_pool",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5000, help="checkouts (and SETs) a run")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="-n 2000 --runs 1")
    args = ap.parse_args(argv)
    n, runs = (2000, 1) if args.quick else (args.n, args.runs)
    out = asyncio.run(run(n, runs))
    print(f"{'pool':<10} {'checkout+release CPU us':>26} {'ratio':>6} {'SET CPU us':>22} "
          f"{'ratio':>6}")
    for kind in POOLS:
        c, s = out[kind]["checkout_us"], out[kind]["set_us"]
        rc, rs = out[kind]["ratio"]["checkout_us"], out[kind]["ratio"]["set_us"]
        print(f"{kind:<10} {c['median']:>8.1f} ({c['min']:.1f}-{c['max']:.1f}){'':>6} "
              f"{rc['median']:>6.2f} {s['median']:>8.1f} ({s['min']:.1f}-{s['max']:.1f}) "
              f"{rs['median']:>6.2f}")
    print(f"median of {runs} run(s) of {n}; ratio to the plain pool in the same run")
    write_result("redis_pool", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
