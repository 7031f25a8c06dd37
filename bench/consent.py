"""Consent records at scale: importing an opt-out list, and exporting one number's records.

Writes a list of -n numbers (one a line, ``+86138xxxxxxxx``) to a file, then for each run
(on a flushed private redis-server, the one bench_redis_server() picks):

  import/s       `gatewayd consent import`'s code (gatewayd.consent.bulk) reading that file:
                 per number the opt-out field and its consent record, 10,000 numbers to
                 one script call; wall time, gatewayd CPU and Redis CPU per number
  by number      records.read(number=...) for one number among the n records (scanned
                 inside Redis, 1,000 entries a call): wall time
  memory         Redis used_memory after the import, per number

    python -m bench.consent [-n 1000000] [--runs 3]

Writes bench/results/consent.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.common import cpu_seconds, summary, table, write_result
from bench.harness import private_redis
from gatewayd.consent import bulk, records
from gatewayd.store.keys import Keys


async def one_run(port: int, path: Path, n: int) -> dict[str, Any]:
    r = aioredis.from_url(f"redis://127.0.0.1:{port}", socket_timeout=120)
    keys = Keys("gwbench:")
    try:
        await r.flushdb()
        info = await r.info("server")
        redis_pid = int(info["process_id"])
        mem0 = int((await r.info("memory"))["used_memory"])
        cpu_r0, cpu_p0 = cpu_seconds(redis_pid), time.process_time()
        t0 = time.perf_counter()
        with path.open(encoding="utf-8") as f:
            result = await bulk.import_optouts(r, keys, f, note=path.name)
        wall = time.perf_counter() - t0
        cpu_r, cpu_p = cpu_seconds(redis_pid) - cpu_r0, time.process_time() - cpu_p0
        assert result.read == n and result.invalid == 0, result
        mem = int((await r.info("memory"))["used_memory"]) - mem0
        target = f"86138{n // 2:08d}"
        t1 = time.perf_counter()
        found = [x async for x in records.read(r, keys, number=target)]
        lookup = time.perf_counter() - t1
        assert len(found) == 1 and found[0]["number"] == "+" + target
        return {"import_s": wall, "import_per_s": n / wall,
                "gatewayd_cpu_us": 1e6 * cpu_p / n, "redis_cpu_us": 1e6 * cpu_r / n,
                "by_number_s": lookup, "memory_bytes_per_number": mem / n}
    finally:
        await r.flushdb()  # synchronous: the next run's memory baseline needs it done
        await r.aclose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--port", type=int, default=0, help="a throwaway redis-server's port")
    ap.add_argument("--quick", action="store_true", help="100,000 numbers, one run")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.runs = 100_000, 1
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gw-bench-consent-") as d:
        path = Path(d) / "optouts.txt"
        path.write_text("".join(f"+86138{i:08d}\n" for i in range(args.n)), encoding="utf-8")
        with private_redis(args.port) as port:
            for i in range(args.runs):
                res = asyncio.run(one_run(port, path, args.n))
                runs.append(res)
                print(f"run {i + 1}: import {res['import_s']:.1f} s "
                      f"({res['import_per_s']:,.0f}/s), by number {res['by_number_s']:.2f} s",
                      flush=True)
    keys_ = ("import_s", "import_per_s", "gatewayd_cpu_us", "redis_cpu_us", "by_number_s",
             "memory_bytes_per_number")
    result = {"n": args.n, **{k: summary([r[k] for r in runs]) for k in keys_}, "runs": runs,
              "load_1m_after": os.getloadavg()[0]}
    path_out = write_result("consent", result)

    def fmt(k: str, unit: str, f: str = ",.1f") -> str:
        s = result[k]
        return f"{s['median']:{f}}{unit} (min {s['min']:{f}}, max {s['max']:{f}})"

    print(table([
        ("numbers imported", f"{args.n:,}"),
        ("import wall time", fmt("import_s", " s")),
        ("import rate", fmt("import_per_s", "/s", ",.0f")),
        ("CPU per number", f"gatewayd {fmt('gatewayd_cpu_us', ' us')}, "
                           f"Redis {fmt('redis_cpu_us', ' us')}"),
        ("one number's records among all", fmt("by_number_s", " s", ".2f")),
        ("Redis memory per number", fmt("memory_bytes_per_number", " B", ",.0f")),
        ("written", str(path_out)),
    ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
