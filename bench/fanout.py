"""Campaign fan-out: recipients into the queues from one process.

A private redis-server; two approved marketing templates (A/B, each with a short link);
a campaign whose N recipients are uploaded as JSON lines (streamed, validated row by
row: the upload rate is printed too); then the fan-out (gatewayd.campaigns.fanout.FanOut,
the daemon's own code) queues every recipient, slice after slice, in this one process,
with no backlog cap (the rate into the queues, not the dispatchers', is measured).
Each queued recipient is a full queue entry with its "queued" status record and event,
its short link record, and the funnel's count.

Figures: recipients/s (fan-out and upload), this process's CPU per recipient, Redis's
CPU per recipient, and this process's RSS after 10 % and at the end of the fan-out
(memory stays flat however many recipients: rows are read a chunk at a time). Median
of --runs with min and max; writes bench/results/fanout.json. Target: >= 50,000/s.

    python -m bench fanout [--quick] [-n 200000] [--runs 3] [--batch 200] [--profile]

--profile: cProfile over the fan-out's calls (not the upload), its top functions printed
after each run (the profiler slows Python about 2x: read shares, not the rate).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ProcSampler, cpu_seconds, rss_bytes, summary, table, write_result
from bench.harness import bench_redis_server
from gatewayd.campaigns import model, registry
from gatewayd.campaigns.fanout import FanOut
from gatewayd.campaigns.model import Campaign, Variant
from gatewayd.campaigns.registry import TemplateCache
from gatewayd.campaigns.templates import Template
from gatewayd.config import CampaignsConfig, Config, LinksConfig, QueueConfig
from gatewayd.store.connection import connect
from gatewayd.store.embedded import EmbeddedRedis, free_port
from gatewayd.store.keys import Keys

CLASSES = ["otp", "transactional", "marketing"]


def recipients(n: int) -> Any:
    for i in range(n):
        yield json.dumps({"to": f"+86139{i:08d}", "ref": f"r{i}", "params": {
            "name": "会员", "link": f"https://shop.example.com/act/1111?u={i}"}},
            ensure_ascii=False)


async def one_run(url: str, n: int, batch: int, redis_pid: int,
                  profile: cProfile.Profile | None = None) -> dict[str, Any]:
    redis = connect(url)
    keys = Keys("gw:")
    await redis.flushdb()
    cfg = Config(queue=QueueConfig(),
                 campaigns=CampaignsConfig(fanout_batch=batch, max_backlog=max(batch, n)),
                 links=LinksConfig(enabled=True, base_url="https://s.example.cn/"))
    for code, copy in (("A", "今晨采摘"), ("B", "新鲜到货")):
        await registry.save(redis, keys, Template(
            code=code, signature="京东", category="marketing",
            body=f"{{name:text<=6}}，{copy}的水果满99减20，戳 {{link:url}} 回TD退订"),
            classes=CLASSES)
        await registry.set_status(redis, keys, code, "approved")
    cache = TemplateCache(redis, keys)
    await cache.load(["A", "B"])
    tpls = {c: cache.get(c) for c in ("A", "B")}
    c = await model.create(redis, keys, Campaign(id="bench", tenant="shop", variants=[
        Variant(name="A", template="A"), Variant(name="B", template="B")]), tpls)
    t0 = time.monotonic()
    up = await model.upload(redis, keys, c, {k: v for k, v in tpls.items() if v},
                            recipients(n), fmt="jsonl",
                            link_sample="https://s.example.cn/0000abcdefg", max_segments=5)
    upload_s = time.monotonic() - t0
    assert up.accepted == n, up
    await model.change(redis, keys, "bench", "start")
    await model.change(redis, keys, "bench", "run")
    fan = FanOut(redis, keys, cfg)
    me = os.getpid()
    rss_10 = 0
    queued = 0
    await redis.config_resetstat()
    cpu0, rcpu0 = cpu_seconds(me), cpu_seconds(redis_pid)
    t0 = time.monotonic()
    while True:  # as the daemon's runner does, without its backlog cap
        camp = await model.get(redis, keys, "bench")
        assert camp is not None
        if profile is not None:
            profile.enable()
        result, k = await fan.run(camp, 16 * batch)
        if profile is not None:
            profile.disable()
        queued += k
        if not rss_10 and queued >= n // 10:
            rss_10 = rss_bytes(me)
        if result == "done":
            break
        assert result == "queued", result
    wall = time.monotonic() - t0
    cpu, rcpu = cpu_seconds(me) - cpu0, cpu_seconds(redis_pid) - rcpu0
    assert queued == n and int(await redis.xlen(keys.queue("marketing"))) == n
    used = int((await redis.info("memory"))["used_memory"])
    stats = await redis.info("commandstats")
    script_us = sum(int(v["usec"]) for k, v in stats.items()
                    if k.removeprefix("cmdstat_") in ("evalsha", "eval"))
    # Redis commands a recipient: the scripts' own calls (counted by Redis as commands)
    # and the fan-out's reads, not the script calls themselves nor this bench's INFO.
    calls = sum(int(v["calls"]) for k, v in stats.items()
                if k.removeprefix("cmdstat_") not in ("evalsha", "eval", "info"))
    await redis.aclose()
    return {"n": n, "per_s": n / wall, "upload_per_s": n / upload_s,
            "cpu_us": 1e6 * cpu / n, "redis_cpu_us": 1e6 * rcpu / n,
            "script_us": script_us / n, "redis_calls": calls / n,
            "rss_10pct_mb": rss_10 / 1e6, "rss_end_mb": rss_bytes(me) / 1e6,
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
            "redis_mb_per_1k": used / n, "load_1m": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench fanout", description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=CampaignsConfig().fanout_batch,
                    help="recipients a script call (campaigns.fanout_batch)")
    ap.add_argument("--quick", action="store_true", help="-n 5000 --runs 1")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the fan-out; print its top functions by own time")
    args = ap.parse_args(argv)
    if args.quick:
        args.n = 5000 if args.n == 200_000 else args.n
        args.runs = 1
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    runs = []
    with tempfile.TemporaryDirectory(prefix="gw-bench-fanout-") as d:
        srv = EmbeddedRedis(Path(d), port=free_port(), binary=bench_redis_server())
        url = srv.start()
        try:
            assert srv.proc is not None
            with ProcSampler(srv.proc.pid):
                for i in range(args.runs):
                    prof = cProfile.Profile() if args.profile else None
                    r = asyncio.run(one_run(url, args.n, args.batch, srv.proc.pid, prof))
                    runs.append(r)
                    print(f"run {i + 1}: {r['per_s']:,.0f} recipients/s queued "
                          f"(upload {r['upload_per_s']:,.0f}/s); {r['cpu_us']:.1f} us CPU here "
                          f"+ {r['redis_cpu_us']:.1f} us Redis a recipient (the script "
                          f"{r['script_us']:.1f} us by Redis's own count, "
                          f"{r['redis_calls']:.2f} commands); RSS "
                          f"{r['rss_10pct_mb']:.0f} MB at 10 % -> {r['rss_end_mb']:.0f} MB",
                          flush=True)
                    if prof is not None:
                        out = io.StringIO()
                        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
                        print(out.getvalue(), flush=True)
        finally:
            srv.stop()

    def s(key: str) -> dict[str, float]:
        return summary([float(r[key]) for r in runs])

    result = {"n": args.n, "batch": args.batch, "per_s": s("per_s"),
              "upload_per_s": s("upload_per_s"), "cpu_us": s("cpu_us"),
              "redis_cpu_us": s("redis_cpu_us"), "script_us": s("script_us"),
              "redis_calls": s("redis_calls"), "rss_10pct_mb": s("rss_10pct_mb"),
              "rss_end_mb": s("rss_end_mb"), "runs": runs}
    path = write_result("fanout", result)
    print(table([
        ("fan-out, recipients/s (one process)", f"{result['per_s']['median']:,.0f} (min "
         f"{result['per_s']['min']:,.0f}, max {result['per_s']['max']:,.0f})"),
        ("upload (validated), rows/s", f"{result['upload_per_s']['median']:,.0f}"),
        ("CPU a recipient: fan-out / Redis", f"{result['cpu_us']['median']:.1f} / "
         f"{result['redis_cpu_us']['median']:.1f} us (script "
         f"{result['script_us']['median']:.1f} us)"),
        ("Redis commands a recipient", f"{result['redis_calls']['median']:.2f}"),
        ("fan-out RSS at 10 % -> end", f"{result['rss_10pct_mb']['median']:.0f} -> "
         f"{result['rss_end_mb']['median']:.0f} MB"),
    ]))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
