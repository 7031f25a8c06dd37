"""Policy engine throughput: messages a second through every check, Redis included.

Builds a realistic policy: a 10,000-term keyword list generated deterministically (plus
the shipped example lists), the default caps, quiet hours, opt-out suppression (5 % of
recipients opted out) and a tenant bucket; messages are 40-120 character Chinese texts
with a 【signature】, 20 % codes, 50 % transactional, 30 % marketing, to 100,000
recipients. Redis is a private redis-server (gatewayd.store.embedded) unless REDIS_URL is set
(then a throwaway database: it is flushed).

Figures (median of --runs, with min and max):
  full/s      PolicyEngine.evaluate on batches of --batch, one batch at a time
  parallel/s  --workers batches in flight at once (as the dispatcher's workers do)
  local/s     the pure checks alone (content, keywords, quiet hours), no Redis
  cpu us      this process's CPU per message during full/s (the steadiest figure), during
              local/s, and redis-server's (only with the private server)
Writes bench/results/policy.json.

--variants runs several set-ups interleaved, each run all of them in turn (the order
rotating), each with its own engine and its own freshly generated messages (no cache
shared between them), and prints each one's ratio to the first:
  shipped     the engine as it is
  nofold      without the traditional/look-alike folding (gatewayd.policy.fold), to
              see what it costs
  privacy     privacy mode (gatewayd.store.privacy): keyed tokens in key names

    python bench/policy.py [-n 50000] [--batch 256] [--runs 5] [--workers 4]
    python bench/policy.py --variants nofold,shipped,privacy
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from bench.common import cpu_seconds, summary, table, write_result  # noqa: E402
from bench.harness import bench_redis_server  # noqa: E402
from gatewayd.consent import bulk  # noqa: E402
from gatewayd.model import OutboundMessage  # noqa: E402
from gatewayd.policy import normalize  # noqa: E402
from gatewayd.policy.engine import PolicyEngine  # noqa: E402
from gatewayd.store.embedded import EmbeddedRedis, free_port  # noqa: E402
from gatewayd.store.keys import Keys  # noqa: E402
from gatewayd.store.privacy import Privacy  # noqa: E402

CLASSES = ["otp", "transactional", "marketing"]
# 10:00 on a weekday in Shanghai: marketing inside its window.
NOW = datetime(2024, 6, 10, 10, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()
COMMON = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动"
          "同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自"
          "二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日")
SIGNATURES = ["京东", "淘宝", "顺丰速运", "美团", "拼多多", "中国银行", "携程旅行", "滴滴出行"]


def keyword_terms(rng: random.Random, n: int) -> list[str]:
    terms: set[str] = set()
    while len(terms) < n:
        terms.add("".join(rng.choice(COMMON) for _ in range(rng.randint(4, 6))))
    return sorted(terms)


def build_policy(d: Path, rng: random.Random) -> Path:
    (d / "big.txt").write_text("\n".join(keyword_terms(rng, 10_000)) + "\n", encoding="utf-8")
    lists = ["gambling", "invoices", "cashout", "fraud"]
    toml = ['[tenants."*"]\nrate = 1000000\nburst = 1000000\n',
            '[[keywords]]\nname = "big"\nfile = "big.txt"\n']
    for name in lists:
        toml.append(f'[[keywords]]\nname = "{name}"\n'
                    f'file = "{ROOT / "policies" / "keywords" / (name + ".txt")}"\n')
    toml.append(f'[[keywords]]\nname = "lures"\naction = "review"\n'
                f'file = "{ROOT / "policies" / "keywords" / "lures.txt"}"\n')
    p = d / "policy.toml"
    p.write_text("\n".join(toml), encoding="utf-8")
    return p


def numbers(n: int) -> list[str]:
    return [f"+86138{i:08d}" for i in range(n)]


def messages(rng: random.Random, n: int, recipients: list[str], run: int) -> list[OutboundMessage]:
    out = []
    for i in range(n):
        r = rng.random()
        category = "otp" if r < 0.2 else "transactional" if r < 0.7 else "marketing"
        sig = rng.choice(SIGNATURES)
        body = "".join(rng.choice(COMMON) for _ in range(rng.randint(34, 110)))
        if category == "otp":
            body = f"您的验证码是{rng.randint(0, 999999):06d}，" + body[:30]
        if rng.random() < 0.01:
            body += "代开发票"
        if category == "marketing" and rng.random() < 0.5:
            body += "回TD退订"
        text = f"【{sig}】{body}" if rng.random() < 0.8 else f"{body}【{sig}】"
        out.append(OutboundMessage(id=f"r{run}-{i}", to=rng.choice(recipients), text=text,
                                   category=category, tenant=f"shop-{i % 7}"))
    return out


async def one_run(engine: PolicyEngine, client: aioredis.Redis, keys: Keys,
                  msgs: list[OutboundMessage], batch: int, workers: int,
                  optouts: list[str], redis_pid: int) -> dict[str, Any]:
    await client.flushdb()
    await bulk.import_optouts(client, keys, [n + "\n" for n in optouts], at=NOW - 86400)
    batches = [msgs[i : i + batch] for i in range(0, len(msgs), batch)]
    verdicts: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    cpu0, rcpu0 = time.process_time(), cpu_seconds(redis_pid) if redis_pid else 0.0
    t0 = time.perf_counter()
    for b in batches:
        s = time.perf_counter()
        for v in await engine.evaluate(client, keys, b, NOW):
            verdicts[v.check or "send"] += 1
        latencies.append(time.perf_counter() - s)
    full = len(msgs) / (time.perf_counter() - t0)
    cpu_us = 1e6 * (time.process_time() - cpu0) / len(msgs)
    redis_us = 1e6 * (cpu_seconds(redis_pid) - rcpu0) / len(msgs) if redis_pid else 0.0

    await client.flushdb()
    queue = list(batches)

    async def worker() -> None:
        while queue:
            await engine.evaluate(client, keys, queue.pop(), NOW)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    parallel = len(msgs) / (time.perf_counter() - t0)

    t0, c0 = time.perf_counter(), time.process_time()
    for m in msgs:
        engine.evaluate_local(m, NOW)
    local = len(msgs) / (time.perf_counter() - t0)
    local_cpu_us = 1e6 * (time.process_time() - c0) / len(msgs)
    latencies.sort()
    return {
        "full_per_s": full,
        "parallel_per_s": parallel,
        "local_per_s": local,
        "cpu_us": cpu_us,
        "local_cpu_us": local_cpu_us,
        "redis_cpu_us": redis_us,
        "batch_p50_ms": 1000 * statistics.median(latencies),
        "batch_p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "verdicts": dict(verdicts),
    }


VARIANTS = ("shipped", "nofold", "privacy")


def _engine(variant: str, path: Path) -> PolicyEngine:
    return PolicyEngine.load(path, classes=CLASSES)


def _keys(variant: str) -> Keys:
    if variant == "privacy":
        return Keys("gwbench:", Privacy(b"bench secret, not a real one!"))
    return Keys("gwbench:")


async def main_async(args: argparse.Namespace) -> int:
    rng = random.Random(42)
    variants = args.variants
    with tempfile.TemporaryDirectory(prefix="gw-bench-policy-") as tmp:
        d = Path(tmp)
        t0 = time.perf_counter()
        path = build_policy(d, rng)
        engines = {v: _engine(v, path) for v in variants}
        load_s = (time.perf_counter() - t0) / len(variants)
        engine = engines[variants[0]]
        url = os.environ.get("REDIS_URL", "")
        server = None
        redis_pid = 0
        if not url:
            server = EmbeddedRedis(d / "redis", port=free_port(), binary=bench_redis_server())
            url = server.start()
        client = aioredis.from_url(url)
        if server is not None:
            redis_pid = int((await client.info("server"))["process_id"])
        try:
            recipients = numbers(100_000)
            optouts = rng.sample(recipients, 5000)
            per: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
            for run in range(args.runs):
                order = variants[run % len(variants):] + variants[: run % len(variants)]
                for v in order:
                    seed = run * 100 + variants.index(v)  # fresh texts for each
                    msgs = messages(random.Random(seed), args.n, recipients, run)
                    # normalize calls the fold it imported: swapped in its namespace
                    # (vars(): it is not an attribute normalize exports).
                    space = vars(normalize)
                    folding = space["fold"]
                    if v == "nofold":
                        space["fold"] = _identity
                    try:
                        r = await one_run(engines[v], client, _keys(v), msgs, args.batch,
                                          args.workers, optouts, redis_pid)
                    finally:
                        space["fold"] = folding
                    per[v].append(r)
                    print(f"run {run + 1} {v:>8}: full {r['full_per_s']:,.0f}/s  parallel "
                          f"{r['parallel_per_s']:,.0f}/s  local {r['local_per_s']:,.0f}/s  "
                          f"cpu {r['cpu_us']:.1f} us (local {r['local_cpu_us']:.1f})  "
                          f"redis {r['redis_cpu_us']:.1f} us  "
                          f"batch p50 {r['batch_p50_ms']:.2f} ms", flush=True)
            await client.flushdb()
        finally:
            await client.aclose()
            if server is not None:
                server.stop()
    figures = ("full_per_s", "parallel_per_s", "local_per_s", "cpu_us", "local_cpu_us",
               "redis_cpu_us", "batch_p50_ms", "batch_p99_ms")
    results = {v: {k: summary([r[k] for r in per[v]]) for k in figures} for v in variants}
    runs = per[variants[0]]
    result = {
        "n": args.n, "batch": args.batch, "workers": args.workers,
        "keyword_terms": engine.keyword_terms, "policy_load_s": load_s,
        "uvloop": args.uvloop, "variants": list(variants),
        **results[variants[0]],
        "by_variant": results,
        "runs": runs, "runs_by_variant": per,
    }
    path_out = write_result("policy", result)
    f, p, lo = result["full_per_s"], result["parallel_per_s"], result["local_per_s"]
    rows = [
        ("keyword terms", f"{engine.keyword_terms:,} (policy loaded in {load_s:.2f} s)"),
        ("full engine", f"{f['median']:,.0f} msgs/s (min {f['min']:,.0f}, max {f['max']:,.0f})"),
        (f"{args.workers} batches in flight",
         f"{p['median']:,.0f} msgs/s (min {p['min']:,.0f}, max {p['max']:,.0f})"),
        ("pure checks only",
         f"{lo['median']:,.0f} msgs/s (min {lo['min']:,.0f}, max {lo['max']:,.0f})"),
        ("verdicts (last run)", ", ".join(f"{k} {v}" for k, v in sorted(runs[-1]["verdicts"]
                                                                          .items()))),
    ]
    if len(variants) > 1:
        first = results[variants[0]]
        for v in variants:
            res = results[v]
            rows.append((f"{v} (vs {variants[0]})",
                         f"cpu {res['cpu_us']['median']:.1f} us/msg "
                         f"({res['cpu_us']['median'] / first['cpu_us']['median']:.3f}x), "
                         f"pure checks cpu {res['local_cpu_us']['median']:.1f} us/msg "
                         f"({res['local_cpu_us']['median'] / first['local_cpu_us']['median']:.3f}"
                         f"x), "
                         f"full {res['full_per_s']['median']:,.0f}/s "
                         f"({res['full_per_s']['median'] / first['full_per_s']['median']:.3f}x)"
                         f", local {res['local_per_s']['median']:,.0f}/s "
                         f"({res['local_per_s']['median'] / first['local_per_s']['median']:.3f}"
                         f"x), redis {res['redis_cpu_us']['median']:.1f} us/msg"))
    rows.append(("written", str(path_out)))
    print(table(rows))
    return 0


def _identity(text: str) -> str:
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=50_000, help="messages a run")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--variants", default="shipped",
                    help=f"comma-separated, interleaved; ratios are to the first; of "
                         f"{', '.join(VARIANTS)}")
    args = ap.parse_args()
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not args.variants or any(v not in VARIANTS for v in args.variants):
        ap.error(f"--variants: choose from {', '.join(VARIANTS)}")
    try:
        import uvloop

        uvloop.install()
        args.uvloop = True
    except ImportError:  # pragma: no cover
        args.uvloop = False
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
