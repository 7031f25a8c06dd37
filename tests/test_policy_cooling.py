"""Cooling-off: marketing with links rests for numbers that ignored the last K of them
(engine on real Redis; then end to end: sends counted at submit, a click resets)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from gatewayd.campaigns import registry
from gatewayd.campaigns.templates import Template
from gatewayd.client import Client
from gatewayd.config import load_config
from gatewayd.model import OutboundMessage
from gatewayd.ops import metrics
from gatewayd.policy.engine import PolicyEngine
from gatewayd.policy.optout import opt_out
from gatewayd.store.keys import Keys
from tests.e2e_helpers import Smsc, running_daemon, wait_final, write_config

CLASSES = ["otp", "transactional", "marketing"]
T0 = 1_800_000_000.0
DAY = 86400.0
POLICY = """
[category.marketing]
signature = "either"
send_window = ""
caps = []
duplicate_window_s = 0
[cooling]
enabled = true
after = 3
days = 7
action = "{action}"
"""


def engine(tmp_path: Path, action: str = "defer") -> PolicyEngine:
    p = tmp_path / f"cool-{action}.toml"
    p.write_text(POLICY.format(action=action), encoding="utf-8")
    return PolicyEngine.load(p, classes=CLASSES)


def msg(to: str = "+8613800138000", links: int = 1, category: str = "marketing") -> OutboundMessage:
    return OutboundMessage(id=f"m{links}{category}", to=to, category=category, links=links,
                           text="【京东】新鲜到货 https://s.cn/1abc 回TD退订")


async def test_k_ignored_messages_rest_the_number_d_days(
        redis: aioredis.Redis, keys: Keys, tmp_path: Path) -> None:
    e = engine(tmp_path)
    mk = keys.marketing("8613800138000")
    await redis.hset(mk, mapping={"n": 2, "last": T0 - DAY})
    assert (await e.evaluate(redis, keys, [msg()], T0))[0].action == "send"
    await redis.hset(mk, "n", 3)
    v = (await e.evaluate(redis, keys, [msg(), msg(links=0), msg(category="transactional")],
                          T0))
    assert (v[0].action, v[0].check, v[0].reason, v[0].until) == (
        "defer", "cooling", "cooling:3 unclicked", T0 + 6 * DAY)
    assert v[1].action == "send" and v[2].action == "send"  # no link / not marketing
    # After D days since the last one: one more goes out.
    assert (await e.evaluate(redis, keys, [msg()], T0 + 6 * DAY + 1))[0].action == "send"
    # An opted-out number is rejected (opt-out still checked), never merely deferred.
    await opt_out(redis, keys, "+8613800138000", source="api", at=T0)
    v = await e.evaluate(redis, keys, [msg()], T0)
    assert (v[0].action, v[0].check) == ("reject", "optout")
    await redis.delete(keys.optout("8613800138000"))
    v = await engine(tmp_path, "reject").evaluate(redis, keys, [msg()], T0)
    assert (v[0].action, v[0].reason) == ("reject", "cooling:3 unclicked")
    report = await e.explain(redis, keys, msg(), T0)
    assert report["checks"][-1]["check"] == "cooling"
    assert report["checks"][-1]["verdict"] == "defer"


async def test_sends_count_and_a_click_resets(
        redis: aioredis.Redis, redis_url: str, keys: Keys, tmp_path: Path, smsc: Smsc) -> None:
    sim = await smsc(receipt_delay_s=0.02)
    policy = tmp_path / "p.toml"
    policy.write_text(POLICY.format(action="defer"), encoding="utf-8")
    cfg = load_config(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                                   policy=policy, extra="""
[links]
enabled = true
base_url = "https://s.example.cn/"
listen = "127.0.0.1:0"
"""))
    await registry.save(redis, keys, Template(code="P", signature="京东", category="marketing",
                                              body="新品 {link:url} 回TD退订"), classes=CLASSES)
    await registry.set_status(redis, keys, "P", "approved")
    item = {"to": "+8613800138000", "template": "P", "params": {"link": "https://a.cn/x"}}
    async with running_daemon(cfg) as d, Client.from_config(cfg, redis_url) as c:
        ids = []
        for _ in range(3):
            ids += [i for i, _ in await c.send([item])]
            await wait_final(redis, keys, ids)
        assert await redis.hget(keys.marketing("8613800138000"), "n") == "3"
        [fourth] = [i for i, _ in await c.send([item])]
        for _ in range(400):
            if await redis.hget(keys.status(fourth), "state") == "deferred":
                break
            await asyncio.sleep(0.05)
        status = await redis.hgetall(keys.status(fourth))
        assert (status["state"], status["reason"]) == ("deferred", "cooling:3 unclicked")
        # The recipient clicks the third message's link (the last the SMSC got): the
        # streak starts again.
        assert len(sim.submissions) == 3
        code = sim.submissions[-1].text.split("cn/")[1].split()[0]
        assert d.links is not None
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{d.links.port}/{code}", allow_redirects=False,
                headers={"User-Agent": "Mozilla/5.0 (iPhone)"}) as r:
            assert r.status == 302
        for _ in range(500):
            if await redis.hget(keys.marketing("8613800138000"), "n") == "0":
                break
            await asyncio.sleep(0.02)
        assert await redis.hget(keys.marketing("8613800138000"), "n") == "0"
        [fifth] = [i for i, _ in await c.send([item])]
        assert (await wait_final(redis, keys, [fifth]))[fifth]["state"] == "delivered"


async def test_link_messages_submitted_late_count_too(
        redis: aioredis.Redis, redis_url: str, keys: Keys, tmp_path: Path, smsc: Smsc) -> None:
    """Submits answered after their batch's grace are recorded by the straggler path
    (issue 16): they count in the streak as their batch's others do."""
    sim = await smsc(receipt_delay_s=0.02, response_delay_s=0.5)
    policy = tmp_path / "p.toml"
    policy.write_text(POLICY.format(action="defer"), encoding="utf-8")
    cfg = load_config(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                                   policy=policy, extra="""
[links]
enabled = true
base_url = "https://s.example.cn/"
listen = "127.0.0.1:0"
"""))
    await registry.save(redis, keys, Template(code="P", signature="京东", category="marketing",
                                              body="新品 {link:url} 回TD退订"), classes=CLASSES)
    await registry.set_status(redis, keys, "P", "approved")
    stragglers = "gatewayd_submit_stragglers_total"
    before = metrics.REGISTRY.get_sample_value(stragglers) or 0
    async with running_daemon(cfg), Client.from_config(cfg, redis_url) as c:
        ids = [i for i, _ in await c.send([
            {"to": f"+86138001380{k:02d}", "template": "P",
             "params": {"link": "https://a.cn/x"}} for k in range(3)])]
        await wait_final(redis, keys, ids)
    # Every submit was answered after the grace (the first batches' latency is unknown).
    assert (metrics.REGISTRY.get_sample_value(stragglers) or 0) - before >= 3
    assert [await redis.hget(keys.marketing(f"86138001380{k:02d}"), "n")
            for k in range(3)] == ["1", "1", "1"]
