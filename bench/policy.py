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
Writes bench/results/policy.json.

    python bench/policy.py [-n 50000] [--batch 256] [--runs 5] [--workers 4]
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

from bench.common import summary, table, write_result  # noqa: E402
from gatewayd.model import OutboundMessage  # noqa: E402
from gatewayd.policy.engine import PolicyEngine  # noqa: E402
from gatewayd.policy.optout import opt_out  # noqa: E402
from gatewayd.store.embedded import EmbeddedRedis, free_port  # noqa: E402
from gatewayd.store.keys import Keys  # noqa: E402

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
                  optouts: list[str]) -> dict[str, Any]:
    await client.flushdb()
    for number in optouts:
        await opt_out(client, keys, number, source="import", at=NOW - 86400)
    batches = [msgs[i : i + batch] for i in range(0, len(msgs), batch)]
    verdicts: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    t0 = time.perf_counter()
    for b in batches:
        s = time.perf_counter()
        for v in await engine.evaluate(client, keys, b, NOW):
            verdicts[v.check or "send"] += 1
        latencies.append(time.perf_counter() - s)
    full = len(msgs) / (time.perf_counter() - t0)

    await client.flushdb()
    queue = list(batches)

    async def worker() -> None:
        while queue:
            await engine.evaluate(client, keys, queue.pop(), NOW)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    parallel = len(msgs) / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    for m in msgs:
        engine.evaluate_local(m, NOW)
    local = len(msgs) / (time.perf_counter() - t0)
    latencies.sort()
    return {
        "full_per_s": full,
        "parallel_per_s": parallel,
        "local_per_s": local,
        "batch_p50_ms": 1000 * statistics.median(latencies),
        "batch_p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "verdicts": dict(verdicts),
    }


async def main_async(args: argparse.Namespace) -> int:
    rng = random.Random(42)
    with tempfile.TemporaryDirectory(prefix="gw-bench-policy-") as tmp:
        d = Path(tmp)
        t0 = time.perf_counter()
        engine = PolicyEngine.load(build_policy(d, rng), classes=CLASSES)
        load_s = time.perf_counter() - t0
        url = os.environ.get("REDIS_URL", "")
        server = None
        if not url:
            server = EmbeddedRedis(d / "redis", port=free_port())
            url = server.start()
        client = aioredis.from_url(url)
        keys = Keys("gwbench:")
        try:
            recipients = numbers(100_000)
            optouts = rng.sample(recipients, 5000)
            runs = []
            for run in range(args.runs):
                msgs = messages(random.Random(run), args.n, recipients, run)
                r = await one_run(engine, client, keys, msgs, args.batch, args.workers, optouts)
                runs.append(r)
                print(f"run {run + 1}: full {r['full_per_s']:,.0f}/s  parallel "
                      f"{r['parallel_per_s']:,.0f}/s  local {r['local_per_s']:,.0f}/s  "
                      f"batch p50 {r['batch_p50_ms']:.2f} ms", flush=True)
            await client.flushdb()
        finally:
            await client.aclose()
            if server is not None:
                server.stop()
    result = {
        "n": args.n, "batch": args.batch, "workers": args.workers,
        "keyword_terms": engine.keyword_terms, "policy_load_s": load_s,
        "uvloop": args.uvloop,
        "full_per_s": summary([r["full_per_s"] for r in runs]),
        "parallel_per_s": summary([r["parallel_per_s"] for r in runs]),
        "local_per_s": summary([r["local_per_s"] for r in runs]),
        "batch_p50_ms": summary([r["batch_p50_ms"] for r in runs]),
        "batch_p99_ms": summary([r["batch_p99_ms"] for r in runs]),
        "runs": runs,
    }
    path = write_result("policy", result)
    f, p, lo = result["full_per_s"], result["parallel_per_s"], result["local_per_s"]
    print(table([
        ("keyword terms", f"{engine.keyword_terms:,} (policy loaded in {load_s:.2f} s)"),
        ("full engine", f"{f['median']:,.0f} msgs/s (min {f['min']:,.0f}, max {f['max']:,.0f})"),
        (f"{args.workers} batches in flight",
         f"{p['median']:,.0f} msgs/s (min {p['min']:,.0f}, max {p['max']:,.0f})"),
        ("pure checks only",
         f"{lo['median']:,.0f} msgs/s (min {lo['min']:,.0f}, max {lo['max']:,.0f})"),
        ("verdicts (last run)", ", ".join(f"{k} {v}" for k, v in sorted(runs[-1]["verdicts"]
                                                                          .items()))),
        ("written", str(path)),
    ]))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=50_000, help="messages a run")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
        args.uvloop = True
    except ImportError:  # pragma: no cover
        args.uvloop = False
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
