"""`gatewayd demo --campaign`: a small A/B campaign from upload to funnel.

With the demo daemon running (embedded Redis, the SMSC simulator, the short-link
redirector on loopback): the templates of policies/templates.toml (loaded and approved
at start), a campaign of 300 recipients split between two copies, uploaded as JSON
lines, started, fanned out and delivered; then people click (some twice, a link preview
too) through the real redirector, a few convert and one opts out; then the funnel.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from gatewayd.campaigns import funnel, model
from gatewayd.campaigns.cli import show
from gatewayd.campaigns.model import Campaign, Variant
from gatewayd.campaigns.registry import TemplateCache
from gatewayd.daemon import Daemon
from gatewayd.policy.optout import opt_in, opt_out, optout_status

RECIPIENTS = 300
OPTS_OUT = "+8613500000007"  # the recipient who replies TD in the demo
PHONE = "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 Chrome/124.0 Mobile Safari/537.36"


async def run_campaign(d: Daemon, timeout_s: float) -> bool:
    redis, keys, cfg = d.store.client, d.keys, d.cfg
    cid = f"demo-{int(time.time())}"
    cache = TemplateCache(redis, keys, ttl_s=0)
    await cache.load(["SMS_PROMO_A", "SMS_PROMO_B"])
    templates = {c: cache.get(c) for c in ("SMS_PROMO_A", "SMS_PROMO_B")}
    if any(t is None or t.template.status != "approved" for t in templates.values()):
        print("demo campaign: SMS_PROMO_A/B are not approved templates here "
              "([campaigns] templates_file = policies/templates.toml)")
        return False
    c = await model.create(redis, keys, Campaign(
        id=cid, name="水果 A/B", tenant="demo-shop",
        variants=[Variant(name="A", template="SMS_PROMO_A"),
                  Variant(name="B", template="SMS_PROMO_B")]), templates)
    rows = [json.dumps({"to": f"+86135{i:08d}", "ref": f"member-{i}", "params": {
        "name": "会员", "link": f"https://fruit.example.com/sale?m={i}"}}, ensure_ascii=False)
        for i in range(RECIPIENTS)]
    up = await model.upload(redis, keys, c, {k: v for k, v in templates.items() if v}, rows,
                            fmt="jsonl", link_sample=cfg.links.base_url + "x" * 12,
                            max_segments=cfg.queue.max_segments)
    print(f"\ncampaign {cid}: {up.accepted} recipients uploaded; variant A "
          f"\"{templates['SMS_PROMO_A'].template.body[:24]}...\" vs B "  # type: ignore[union-attr]
          f"\"{templates['SMS_PROMO_B'].template.body[:24]}...\"")  # type: ignore[union-attr]
    # The demo's Redis persists (.gatewayd/): an earlier run's opt-out is taken back, as
    # the recipient would by re-subscribing, so this run's message reaches them.
    if await optout_status(redis, keys, OPTS_OUT):
        await opt_in(redis, keys, OPTS_OUT, source="api", at=time.time(),
                     note="gatewayd demo: earlier run's opt-out taken back")
    await model.change(redis, keys, cid, "start")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (await funnel.read(redis, keys, cid)).get("delivered", 0) >= RECIPIENTS:
            break
        await asyncio.sleep(0.1)
    # The recipients read their SMS: the texts the simulator got carry the short links.
    by_variant: dict[str, list[str]] = {"A": [], "B": []}
    sim = d.sim
    for sub in (sim.submissions if sim is not None else []):
        if cfg.links.base_url in sub.text:
            code = sub.text.split(cfg.links.base_url, 1)[1].split()[0]
            by_variant["A" if "今晨采摘" in sub.text else "B"].append(code)
    links = d.links
    clicked = 0
    if links is not None:
        async with aiohttp.ClientSession() as s:
            for variant, share in (("A", 0.25), ("B", 0.12)):
                codes = by_variant[variant][: int(len(by_variant[variant]) * share)]
                for i, code in enumerate(codes):
                    for ua in [PHONE] * (2 if i % 7 == 0 else 1) + (
                            ["WhatsApp/2.24"] if i % 10 == 0 else []):
                        async with s.get(f"http://127.0.0.1:{links.port}/{code}",
                                         headers={"User-Agent": ua},
                                         allow_redirects=False) as r:
                            clicked += r.status == 302
    await funnel.convert(redis, keys, [f"{cid}.{i}" for i in range(1, 16)], time.time())
    await opt_out(redis, keys, OPTS_OUT, source="api", at=time.time())
    await funnel.attribute_optout(redis, keys, OPTS_OUT.lstrip("+"), time.time(),
                                  cfg.campaigns.optout_window_days * 86400,
                                  cfg.campaigns.recipient_ttl_days * 86400)
    await asyncio.sleep(0.3)  # the redirector writes its click records after answering
    camp = await model.get(redis, keys, cid)
    assert camp is not None
    print(show(camp, await funnel.read(redis, keys, cid)))
    print(f"report: http://{cfg.http.listen}/v1/campaigns/{cid}/report "
          f"(also: gatewayd campaign show -c {cfg.source} {cid})")
    return (await funnel.read(redis, keys, cid)).get("delivered", 0) >= RECIPIENTS
