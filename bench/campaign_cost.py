"""What templates, campaigns and short links cost a message on the e2e path.

The same rig as bench/e2e (private Redis, the SMSC simulator in its own process, one
``gatewayd run --burst`` with every policy on), alternating in one run of this script:

  plain     N marketing messages queued through gatewayd.client: Chinese, a 【signature】,
            a URL of a short link's length, the opt-out hint (what a sender without
            templates queues)
  campaign  the same N as an A/B campaign: two approved templates with a {link:url},
            recipients uploaded and fanned out (gatewayd.campaigns) before the daemon
            starts; every message carries campaign, variant, template and links, has a
            short-link record, and is counted in the funnel (queued, submitted,
            delivered, per variant) and in its recipient's marketing record

Figures per kind: final/s, gatewayd and Redis CPU a message in the steady part (first
submit .. last final state), Redis commands a message; and the campaign / plain ratio
of each. Median of --runs pairs with min and max; writes bench/results/campaign_cost.json.
Target: the campaign path costs at most 10 % more CPU a message.

    python -m bench campaign_cost [--quick] [-n 50000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from bench import harness
from bench.common import summary, table, write_result
from bench.e2e import analyse
from gatewayd.campaigns import model, registry
from gatewayd.campaigns.fanout import FanOut
from gatewayd.campaigns.model import Campaign, Variant
from gatewayd.campaigns.registry import TemplateCache
from gatewayd.campaigns.templates import Template
from gatewayd.config import CampaignsConfig, Config, LinksConfig
from gatewayd.store.connection import connect
from gatewayd.store.keys import Keys

CLASSES = ["otp", "transactional", "marketing"]
COPY = {"A": "今晨采摘", "B": "新鲜到货"}
BODY = "{name:text<=6}，%s的水果满99减20，戳 {link:url} 回TD退订"


def _number(run: int, i: int) -> str:
    return f"+86{13_000_000_000 + run * 10_000_000 + i}"


async def _campaign(url: str, n: int, run: int) -> list[str]:
    r = connect(url)
    keys = Keys(harness.PREFIX)
    for code, copy in COPY.items():
        await registry.save(r, keys, Template(code=code, signature="京东", category="marketing",
                                              body=BODY % copy), classes=CLASSES)
        await registry.set_status(r, keys, code, "approved")
    cache = TemplateCache(r, keys)
    await cache.load(list(COPY))
    tpls = {c: cache.get(c) for c in COPY}
    cid = f"bench{run}"
    c = await model.create(r, keys, Campaign(id=cid, tenant=f"shop-{run % 50}", variants=[
        Variant(name=v, template=v) for v in COPY]), tpls)
    rows = (json.dumps({"to": _number(run, i), "params": {
        "name": "会员", "link": f"https://shop.example.com/a?u={i}"}}, ensure_ascii=False)
        for i in range(n))
    up = await model.upload(r, keys, c, {k: v for k, v in tpls.items() if v}, rows,
                            fmt="jsonl", link_sample="https://s.example.cn/0000abcdefg",
                            max_segments=5)
    assert up.accepted == n, up
    await model.change(r, keys, cid, "start")
    await model.change(r, keys, cid, "run")
    cfg = Config(campaigns=CampaignsConfig(max_backlog=n + 1000),
                 links=LinksConfig(enabled=True, base_url="https://s.example.cn/"))
    fan = FanOut(r, keys, cfg)
    while True:
        camp = await model.get(r, keys, cid)
        assert camp is not None
        result, _k = await fan.run(camp, 5000)
        if result == "done":
            break
    await model.change(r, keys, cid, "finish")
    await r.aclose()
    return [f"{cid}.{i}" for i in range(1, n + 1)]


def _plain(n: int, run: int) -> list[dict[str, str]]:
    # The text a campaign message gets, with a URL as long as its short link.
    return [{"to": _number(run, i), "category": "marketing", "tenant": f"shop-{run % 50}",
             "text": f"【京东】会员，{COPY['A' if i % 2 else 'B']}的水果满99减20，戳 "
                     f"https://s.example.cn/{f'{i:04d}abcdefg'[-11:]} 回TD退订"}
            for i in range(n)]


def one_run(rig: harness.Rig, n: int, run: int, kind: str,
            opts: harness.GatewaydOptions) -> dict[str, Any]:
    rig.flush()
    if kind == "plain":
        ids = rig.enqueue(_plain(n, run))
    else:
        ids = asyncio.run(_campaign(rig.redis_url, n, run))
    cfg = rig.config(opts)
    rig.reset_commandstats()
    out = harness.run_gatewayd(rig, cfg, timeout_s=max(120.0, n / 500))
    if out.code != 0:
        raise SystemExit(f"gatewayd exited {out.code}: {out.stderr}")
    cmds = rig.commandstats()
    for k in ("config|resetstat", "config", "info"):
        cmds.pop(k, None)
    res = analyse(rig.statuses(ids))
    t0, t1 = res["first_submit_at"], res["last_final_at"]
    steady = max(1, res["final"])
    res.update({
        "kind": kind, "n": n,
        "gw_us": 1e6 * out.gw.cpu_between(t0, t1) / steady,
        "redis_us": 1e6 * out.redis.cpu_between(t0, t1) / steady if out.redis else 0.0,
        "commands": sum(c for c, _ in cmds.values()) / n,
    })
    res["total_us"] = res["gw_us"] + res["redis_us"]
    if res["states"].get("delivered") != n:
        res["warning"] = f"states {res['states']}"
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench campaign_cost",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=3, help="pairs (plain, campaign)")
    ap.add_argument("--quick", action="store_true", help="-n 2000 --runs 1")
    args = ap.parse_args(argv)
    if args.quick:
        args.n = 2000 if args.n == 50_000 else args.n
        args.runs = 1
    opts = harness.GatewaydOptions()
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    with harness.Rig() as rig:
        print(f"campaign_cost: {args.n:,} marketing messages, plain vs campaign, "
              f"{args.runs} pairs; Redis {rig.redis_version()}", flush=True)
        for i in range(args.runs):
            pair = []
            for kind in ("plain", "campaign"):
                r = one_run(rig, args.n, 2 * i + (kind == "campaign"), kind, opts)
                pair.append(r)
                print(f"run {i + 1} {kind:<8}: {r['final_per_s']:,.0f} final/s; steady CPU a "
                      f"message: gatewayd {r['gw_us']:.1f} us, Redis {r['redis_us']:.1f} us; "
                      f"{r['commands']:.1f} Redis commands; states {r['states']}", flush=True)
            pairs.append((pair[0], pair[1]))

    def s(kind: int, key: str) -> dict[str, float]:
        return summary([float(p[kind][key]) for p in pairs])

    def ratio(key: str) -> dict[str, float]:
        return summary([p[1][key] / p[0][key] for p in pairs if p[0][key]])

    result = {"n": args.n, "runs": [list(p) for p in pairs]}
    rows = []
    for key, label in (("final_per_s", "final/s"), ("gw_us", "gatewayd CPU us a message"),
                       ("redis_us", "Redis CPU us a message"),
                       ("total_us", "gatewayd + Redis us a message"),
                       ("commands", "Redis commands a message")):
        result[key] = {"plain": s(0, key), "campaign": s(1, key), "ratio": ratio(key)}
        rows.append((label, f"plain {result[key]['plain']['median']:,.1f}, campaign "
                            f"{result[key]['campaign']['median']:,.1f}, ratio "
                            f"{result[key]['ratio']['median']:.3f} (min "
                            f"{result[key]['ratio']['min']:.3f}, max "
                            f"{result[key]['ratio']['max']:.3f})"))
    path = write_result("campaign_cost", result)
    print(table(rows))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
