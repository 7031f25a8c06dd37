"""Codes during a campaign: OTP latency while the daemon fans out a large campaign.

Uploads an A/B campaign of --n recipients (two approved marketing templates with a short
link), starts it, and starts one ``gatewayd run`` (not burst) that fans it out itself
(the daemon's CampaignRunner: slices queued while the marketing stream holds fewer than
campaigns.max_backlog entries) and sends it; meanwhile codes are queued through
gatewayd.client at --otp-rate a second until every campaign message is final. Then
SIGTERM. Figures: OTP queue->submit p50/p99/max, marketing final/s, and the RSS of
gatewayd and of its fan-out child at 10 % of the fan-out and at its end (flat: neither
holds the recipients), and their CPU a campaign message.
The fan-out runs in the daemon's child process (campaigns.fanout_process = true, set by
the bench); --in-loop runs it in the dispatching daemon's loop instead (the default), for
interleaved comparisons (--pairs: child and in-loop alternately).
The daemon's loop lag over the run (gatewayd_loop_lag_seconds, bucket bounds; its API
listener is on, idle, for /metrics). Median of --runs with min and max; writes
bench/results/campaign_priority.json.
Target: OTP p99 <= 50 ms during a 1M fan-out.

    python -m bench campaign_priority [--quick] [-n 1000000] [--otp-rate 200] [--runs 1]
        [--in-loop | --pairs]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

import redis.asyncio as aioredis

from bench import harness
from bench.common import (
    bucket_quantile,
    child_pids,
    cpu_seconds,
    histogram,
    rss_bytes,
    summary,
    table,
    write_result,
)
from bench.e2e import _fmt, analyse
from gatewayd.campaigns import model, registry
from gatewayd.campaigns.model import Campaign, Variant
from gatewayd.campaigns.registry import TemplateCache
from gatewayd.campaigns.templates import Template
from gatewayd.client import Client
from gatewayd.store.connection import connect
from gatewayd.store.embedded import free_port
from gatewayd.store.keys import Keys

CLASSES = ["otp", "transactional", "marketing"]


async def _setup(url: str, n: int, run: int) -> str:
    r = connect(url)
    keys = Keys(harness.PREFIX)
    for code, copy in (("A", "今晨采摘"), ("B", "新鲜到货")):
        await registry.save(r, keys, Template(
            code=code, signature="京东", category="marketing",
            body=f"{{name:text<=6}}，{copy}的水果满99减20，戳 {{link:url}} 回TD退订"),
            classes=CLASSES)
        await registry.set_status(r, keys, code, "approved")
    cache = TemplateCache(r, keys)
    await cache.load(["A", "B"])
    tpls = {c: cache.get(c) for c in ("A", "B")}
    cid = f"big{run}"
    c = await model.create(r, keys, Campaign(id=cid, tenant="shop", variants=[
        Variant(name="A", template="A"), Variant(name="B", template="B")]), tpls)
    base = 13_000_000_000 + run * 10_000_000
    rows = (json.dumps({"to": f"+86{base + i}", "params": {
        "name": "会员", "link": f"https://shop.example.com/a?u={i}"}}, ensure_ascii=False)
        for i in range(n))
    up = await model.upload(r, keys, c, {k: v for k, v in tpls.items() if v}, rows,
                            fmt="jsonl", link_sample="https://s.example.cn/0000abcdefg",
                            max_segments=5)
    assert up.accepted == n, up
    await model.change(r, keys, cid, "start")
    await r.aclose()
    return cid


def fanout_child(pid: int) -> int:
    """The daemon's fan-out child's pid (0: none, the fan-out runs in the daemon)."""
    return next(iter(child_pids(pid, b"--fanout-worker")), 0)


def _rss_mb(pid: int) -> float:
    try:
        return rss_bytes(pid) / 1e6 if pid else 0.0
    except OSError:
        return 0.0


async def _drive(url: str, cid: str, n: int, rate: float, run: int, pid: int
                 ) -> tuple[list[str], dict[str, float]]:
    """Codes at `rate`/s until every campaign message is final; RSS and CPU samples."""
    r = aioredis.from_url(url, decode_responses=True)
    keys = Keys(harness.PREFIX)
    rss: dict[str, float] = {}
    ids: list[str] = []
    # Codes start once the fan-out has begun (the daemon's start-up is not the point).
    while int(await r.hget(keys.campaign(cid), "produced") or 0) == 0:
        await asyncio.sleep(0.05)
    child = fanout_child(pid)
    cpu0 = (cpu_seconds(pid), cpu_seconds(child) if child else 0.0)
    async with Client(url, prefix=harness.PREFIX) as c:
        t0, sent, tick = time.monotonic(), 0, 0
        while True:
            due = int((time.monotonic() - t0) * rate)
            batch = [{"to": f"+8615{run:01d}{(sent + k) % 100_000_000:08d}",
                      "text": f"Your verification code is {100000 + (sent + k) % 900000}.",
                      "category": "otp"} for k in range(due - sent)]
            if batch:
                ids += [m for m, _ in await c.send(batch, source="bench")]
                sent += len(batch)
            tick += 1
            if tick % 20 == 0:
                produced = int(await r.hget(keys.campaign(cid), "produced") or 0)
                if "rss_10pct_mb" not in rss and produced >= n // 10:
                    rss["rss_10pct_mb"] = _rss_mb(pid)
                    rss["child_rss_10pct_mb"] = _rss_mb(child)
                delivered = int(await r.hget(keys.funnel(cid), "delivered") or 0)
                if produced >= n and "rss_fanned_mb" not in rss:
                    rss["rss_fanned_mb"] = _rss_mb(pid)
                    rss["child_rss_fanned_mb"] = _rss_mb(child)
                if delivered >= n:
                    rss["gw_cpu_us"] = 1e6 * (cpu_seconds(pid) - cpu0[0]) / n
                    if child:
                        try:
                            rss["child_cpu_us"] = 1e6 * (cpu_seconds(child) - cpu0[1]) / n
                        except OSError:  # started again meanwhile: not comparable
                            pass
                    rss["load_1m"] = os.getloadavg()[0]
                    break
            await asyncio.sleep(0.01)
    await r.aclose()
    return ids, rss


async def _flush(url: str) -> None:
    r = aioredis.from_url(url)
    await r.flushdb(asynchronous=True)
    await r.aclose()


def one_run(rig: harness.Rig, n: int, rate: float, run: int, in_loop: bool = False
            ) -> dict[str, Any]:
    # FLUSHDB ASYNC: after a 1M run a blocking FLUSHDB outlasted the client's read.
    asyncio.run(_flush(rig.redis_url))
    t = time.monotonic()
    cid = asyncio.run(_setup(rig.redis_url, n, run))
    upload_s = time.monotonic() - t
    cfg = rig.config(harness.GatewaydOptions())
    # An idle API listener, for the daemon's /metrics: its loop lag over the run.
    port = free_port()
    cfg.write_text(cfg.read_text(encoding="utf-8").replace(
        "[http]\nenabled = false\n", f'[http]\nenabled = true\nlisten = "127.0.0.1:{port}"\n'),
        encoding="utf-8")
    with open(cfg, "a", encoding="utf-8") as f:
        f.write('\n[links]\nenabled = true\nbase_url = "https://s.example.cn/"\n'
                'listen = "127.0.0.1:0"\n')
        f.write(f"\n[campaigns]\nfanout_process = {'false' if in_loop else 'true'}\n")
    proc = rig.gatewayd(cfg, timeout_s=0, burst=False)
    try:
        otp_ids, rss = asyncio.run(_drive(rig.redis_url, cid, n, rate, run, proc.pid))
        lag = histogram(f"http://127.0.0.1:{port}/metrics", "gatewayd_loop_lag_seconds")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"gatewayd exited {proc.returncode}: {err.decode()[-2000:]}")
    otp = rig.statuses(otp_ids)
    lat = sorted(float(s["submitted_at"]) - float(s["enqueued_at"])
                 for s in otp if s.get("submitted_at") and s.get("enqueued_at"))
    mk = analyse(rig.statuses([f"{cid}.{i}" for i in range(1, n + 1)]))
    return {"n": n, "fanout": "in-loop" if in_loop else "child", "upload_s": upload_s,
            "otp_sent": len(otp_ids), "otp_submitted": len(lat),
            "otp_p50_ms": 1000 * harness.percentile(lat, 50),
            "otp_p99_ms": 1000 * harness.percentile(lat, 99),
            "otp_max_ms": 1000 * (lat[-1] if lat else 0.0),
            "loop_lag_p50_ms": 1000 * bucket_quantile({}, lag, 0.5),
            "loop_lag_p90_ms": 1000 * bucket_quantile({}, lag, 0.9),
            "loop_lag_p99_ms": 1000 * bucket_quantile({}, lag, 0.99),
            "marketing_final_per_s": mk["final_per_s"], "marketing_states": mk["states"],
            **rss}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench campaign_priority",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1_000_000)
    ap.add_argument("--otp-rate", type=float, default=200.0)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="-n 20000")
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--in-loop", action="store_true",
                     help="fan out in the dispatching daemon's loop (fanout_process = false)")
    how.add_argument("--pairs", action="store_true",
                     help="each run twice: child then in-loop (interleaved pairs)")
    args = ap.parse_args(argv)
    if args.quick and args.n == 1_000_000:
        args.n = 20_000
    runs = []
    with harness.Rig() as rig:
        print(f"campaign_priority: a {args.n:,}-recipient campaign fanned out and sent by "
              f"the daemon, OTP at {args.otp_rate:.0f}/s", flush=True)
        modes = [False, True] if args.pairs else [args.in_loop]
        for i in range(args.runs * len(modes)):
            r = one_run(rig, args.n, args.otp_rate, i, modes[i % len(modes)])
            runs.append(r)
            print(f"run {i + 1} ({r['fanout']}, load {r.get('load_1m', 0):.1f}): "
                  f"OTP p50 {r['otp_p50_ms']:.1f} ms, p99 {r['otp_p99_ms']:.1f} ms, "
                  f"max {r['otp_max_ms']:.1f} ms ({r['otp_submitted']}/{r['otp_sent']} codes); "
                  f"daemon loop lag p50/p90/p99 <= {r['loop_lag_p50_ms']:g}/"
                  f"{r['loop_lag_p90_ms']:g}/{r['loop_lag_p99_ms']:g} ms; "
                  f"campaign {r['marketing_final_per_s']:,.0f} final/s, states "
                  f"{r['marketing_states']}; gatewayd RSS {r.get('rss_10pct_mb', 0):.0f} MB "
                  f"at 10 % -> {r.get('rss_fanned_mb', 0):.0f} MB fanned out, fan-out child "
                  f"{r.get('child_rss_10pct_mb', 0):.0f} -> "
                  f"{r.get('child_rss_fanned_mb', 0):.0f} MB; CPU a campaign message: "
                  f"gatewayd {r.get('gw_cpu_us', 0):.1f} us, child "
                  f"{r.get('child_cpu_us', 0):.1f} us", flush=True)

    mine = [r for r in runs if r["fanout"] == ("in-loop" if args.in_loop else "child")]

    def s(key: str) -> dict[str, float]:
        return summary([float(r.get(key, 0.0)) for r in mine])

    result = {"n": args.n, "otp_rate": args.otp_rate, "otp_p50_ms": s("otp_p50_ms"),
              "otp_p99_ms": s("otp_p99_ms"), "otp_max_ms": s("otp_max_ms"),
              "marketing_final_per_s": s("marketing_final_per_s"),
              "rss_10pct_mb": s("rss_10pct_mb"), "rss_fanned_mb": s("rss_fanned_mb"),
              "child_rss_10pct_mb": s("child_rss_10pct_mb"),
              "child_rss_fanned_mb": s("child_rss_fanned_mb"), "runs": runs}
    if args.pairs:
        other = [r for r in runs if r["fanout"] == "in-loop"]
        result["in_loop_otp_p99_ms"] = summary([float(r["otp_p99_ms"]) for r in other])
    path = write_result("campaign_priority", result)
    print(table([
        ("OTP queue->submit p50", _fmt(result["otp_p50_ms"], " ms", digits=1)),
        ("OTP queue->submit p99", _fmt(result["otp_p99_ms"], " ms", digits=1)),
        ("campaign final/s meanwhile", _fmt(result["marketing_final_per_s"])),
        ("gatewayd RSS at 10 % / fanned out", f"{result['rss_10pct_mb']['median']:.0f} / "
         f"{result['rss_fanned_mb']['median']:.0f} MB"),
        ("fan-out child RSS at 10 % / fanned out",
         f"{result['child_rss_10pct_mb']['median']:.0f} / "
         f"{result['child_rss_fanned_mb']['median']:.0f} MB"),
        *([("in-loop OTP p99 (the pairs' other half)",
            _fmt(result["in_loop_otp_p99_ms"], " ms", digits=1))] if args.pairs else []),
    ]))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
