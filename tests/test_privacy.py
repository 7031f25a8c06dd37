"""Privacy mode (issue 19 item 9): numbers never in clear in Redis key names, policy state,
consent records, status records, events or the MO stream; nor in campaigns' per-number
state (issue 20: cooling-off streaks, opt-out attribution, short-link records)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from gatewayd.campaigns import model, registry
from gatewayd.campaigns.model import Campaign, Variant
from gatewayd.campaigns.registry import TemplateCache
from gatewayd.campaigns.templates import Template
from gatewayd.cli import main
from gatewayd.client import Client
from gatewayd.config import load_config
from gatewayd.consent import records
from gatewayd.errors import ConfigError
from gatewayd.model import OutboundMessage
from gatewayd.policy.engine import PolicyEngine
from gatewayd.policy.optout import opt_out, optout_status
from gatewayd.store.keys import Keys, keys_for
from gatewayd.store.privacy import Privacy, PrivacyError
from tests.e2e_helpers import ROOT, Smsc, load, running_daemon, wait_final, write_config

SECRET = "correct horse battery staple 42"
DIGITS = "8613800138000"
NATIONAL = DIGITS[2:]  # what must appear nowhere: the 11-digit mobile number
CLASSES = ["otp", "transactional", "marketing"]


def test_tokens_and_sealing() -> None:
    p, q = Privacy(SECRET.encode()), Privacy(b"another secret, also long")
    assert p.token(DIGITS) == Privacy(SECRET.encode()).token(DIGITS)  # stable
    assert p.token(DIGITS) != q.token(DIGITS) and len(p.token(DIGITS)) == 32
    assert p.token(DIGITS) != p.token("8613800138001")
    sealed = p.seal(DIGITS)
    assert sealed.startswith("v1.") and NATIONAL not in sealed
    assert sealed != p.seal(DIGITS)  # a fresh nonce each time
    assert p.open(sealed) == DIGITS
    with pytest.raises(PrivacyError, match="does not decrypt"):
        q.open(sealed)
    with pytest.raises(PrivacyError, match="does not decrypt"):
        p.open("v1.AAAA")
    with pytest.raises(PrivacyError, match="at least 16 bytes"):
        Privacy(b"short")


def test_keys_carry_tokens_in_privacy_mode() -> None:
    plain, private = Keys(), Keys(privacy=Privacy(SECRET.encode()))
    assert plain.optout(DIGITS) == "gw:optout:{8613800138000}"
    for name in (private.optout(DIGITS), private.freq(DIGITS, "cap:otp"),
                 private.freq(DIGITS, "dup:abc")):
        assert NATIONAL not in name and "{" + private.privacy.token(DIGITS) + "}" in name  # type: ignore[union-attr]
    fields = private.number_fields(DIGITS)
    assert fields["number"] == private.privacy.token(DIGITS)  # type: ignore[union-attr]
    assert private.open_number(fields) == DIGITS
    assert Keys().open_number(fields) == "~" + fields["number"]  # no secret: the token
    mo = private.mo_sender("+" + DIGITS)
    assert mo["from"] == "+86138****8000" and NATIONAL not in mo["from_enc"]


def test_keys_for_needs_the_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "gw.toml"
    p.write_text('[privacy]\nenabled = true\nsecret_env = "GW_TEST_SECRET"\n'
                 '[[carrier]]\n'
                 'mo_country_code = "86"\nname = "sim"\nhost = "127.0.0.1"\nsystem_id = "a"\n'
                 'password = "b"\n', encoding="utf-8")
    monkeypatch.delenv("GW_TEST_SECRET", raising=False)
    with pytest.raises(ConfigError, match=r"privacy\.secret_env: environment variable "
                                          r"GW_TEST_SECRET is not set"):
        load_config(p)  # `run` needs it
    cfg = load_config(p, need_secrets=False)  # check-config and friends load...
    with pytest.raises(ConfigError, match=r"privacy\.secret_env: privacy mode is on"):
        keys_for(cfg)  # ...but nothing touches Redis without it
    monkeypatch.setenv("GW_TEST_SECRET", SECRET)
    assert keys_for(load_config(p)).privacy is not None


async def test_policy_checks_work_on_tokens(redis: aioredis.Redis) -> None:
    keys = Keys(privacy=Privacy(SECRET.encode()))
    engine = PolicyEngine.load(None, classes=CLASSES)
    await opt_out(redis, keys, "+" + DIGITS, source="api", at=1.0)
    to = "+" + DIGITS
    out = await engine.evaluate(redis, keys, [
        OutboundMessage(id="a", to=to, text="【京东】大促 回TD退订", category="marketing"),
        OutboundMessage(id="b", to="+" + DIGITS, text="【京东】验证码 1", category="otp"),
        OutboundMessage(id="c", to="+" + DIGITS, text="【京东】验证码 1", category="otp"),
    ], 1_718_000_000.0)
    assert [(v.action, v.check) for v in out] == [("reject", "optout"), ("send", ""),
                                                  ("reject", "duplicate")]
    assert await optout_status(redis, keys, DIGITS) == {"*": 1.0}
    assert not await redis.exists(Keys().optout(DIGITS))  # nothing under the clear name
    rows = [r async for r in records.read(redis, keys, number=DIGITS)]
    assert [r["number"] for r in rows] == ["+" + DIGITS]  # decrypted for the export
    assert await dump_contains(redis, NATIONAL) == []
    await opt_out(redis, Keys(), "+" + DIGITS, source="api", at=1.0)  # plain mode: there
    assert len(await dump_contains(redis, NATIONAL)) == 3  # HASH name, record, its index


async def dump_contains(redis: aioredis.Redis, needle: str) -> list[str]:
    """Every key whose name or value holds ``needle``: all of Redis, read by type."""
    hits: list[str] = []
    async for key in redis.scan_iter(count=1000):
        kind = await redis.type(key)
        value: Any
        if kind == "string":
            value = await redis.get(key)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        elif kind == "set":
            value = await redis.smembers(key)
        elif kind == "stream":
            value = await redis.xrange(key)
        else:
            value = ""
        if needle in key or needle in repr(value):
            hits.append(key)
    return hits


async def test_nothing_in_clear_end_to_end(tmp_path: Path, redis_url: str,
                                           redis: aioredis.Redis, smsc: Smsc,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GATEWAYD_PRIVACY_SECRET", SECRET)
    sim = await smsc(receipt_delay_s=0.01)
    path = write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                        policy=ROOT / "policies" / "demo.toml",
                        extra="[privacy]\nenabled = true\n")
    cfg = load(path)
    keys = keys_for(cfg)
    async with running_daemon(cfg):
        async with Client(redis_url, queue=cfg.queue) as client:
            [(first, _), (code, _)] = await client.send([
                {"to": "+" + DIGITS, "category": "marketing", "text": "【京东】新品 回TD退订"},
                {"to": "+" + DIGITS, "category": "otp", "text": "【京东】验证码 4821"}])
        await wait_final(redis, keys, [first, code], 20)
        await sim.inject_mo(NATIONAL, "10690001", "退订", wait=True)
        for _ in range(200):
            if await redis.exists(keys.optout(DIGITS)):
                break
            await asyncio.sleep(0.05)
        async with Client(redis_url, queue=cfg.queue) as client:
            [(promo, _)] = await client.send([{"to": "+" + DIGITS, "category": "marketing",
                                               "text": "【京东】双11 回TD退订"}])
        final = await wait_final(redis, keys, [first, code, promo], 20)
    assert [final[i]["state"] for i in (first, code, promo)] == [
        "delivered", "delivered", "rejected"]
    assert final[promo]["reason"] == "optout"
    # The whole of Redis: the number is nowhere, in no key name and no value.
    assert await dump_contains(redis, NATIONAL) == []
    mo = [f for _, f in await redis.xrange(keys.inbound)]
    assert mo[0]["from"] == "+86138****8000" and keys.privacy is not None
    assert keys.privacy.open(mo[0]["from_enc"]) == "+" + DIGITS
    # The export, with the secret, gives the number back.
    # (The CLI runs its own event loop: from a thread.)
    assert await asyncio.to_thread(main, ["consent", "export", "-c", str(path),
                                          "--number", "+" + DIGITS]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["number"], r["action"], r["source"]) for r in rows] == [
        ("+" + DIGITS, "out", "mo:sim")]
    monkeypatch.delenv("GATEWAYD_PRIVACY_SECRET")
    assert await asyncio.to_thread(main, ["consent", "export", "-c", str(path)]) == 2
    assert "privacy mode is on" in capsys.readouterr().err


CAMPAIGN_POLICY = """
[category.marketing]
signature = "either"
send_window = ""
caps = []
duplicate_window_s = 0
[cooling]
enabled = true
after = 3
days = 7
"""


async def test_campaigns_keep_no_number_in_clear(tmp_path: Path, redis_url: str,
                                                 redis: aioredis.Redis, smsc: Smsc,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20's per-number state in privacy mode: a campaign with short links, a direct
    template send, a click (the cooling-off streak reset) and an MO opt-out (attributed
    to the campaign): every key is named by the token, link records hold it and the
    masked number, and the whole of Redis holds the number nowhere."""
    monkeypatch.setenv("GATEWAYD_PRIVACY_SECRET", SECRET)
    sim = await smsc(receipt_delay_s=0.01)
    policy = tmp_path / "cooling.toml"
    policy.write_text(CAMPAIGN_POLICY, encoding="utf-8")
    path = write_config(tmp_path, redis_url=redis_url, sim_port=sim.port, policy=policy,
                        extra='[privacy]\nenabled = true\n[links]\nenabled = true\n'
                              'base_url = "https://s.example.cn/"\nlisten = "127.0.0.1:0"\n')
    cfg = load(path)
    keys = keys_for(cfg)
    await registry.save(redis, keys, Template(code="P", signature="京东", category="marketing",
                                              body="新品 {link:url} 回TD退订"), classes=CLASSES)
    await registry.set_status(redis, keys, "P", "approved")
    cache = TemplateCache(redis, keys, ttl_s=0)
    await cache.load(["P"])
    compiled = {"P": cache.get("P")}
    camp = await model.create(redis, keys, Campaign(
        id="c1", variants=[Variant(name="A", template="P")]), compiled)
    others = ["8613900139001", "8613900139002"]
    up = await model.upload(redis, keys, camp, compiled, iter([
        json.dumps({"to": "+" + n, "params": {"link": f"https://a.cn/{n[-1]}"}})
        for n in (DIGITS, *others)]), fmt="jsonl", link_sample="https://s.example.cn/"
        + "x" * 12, max_segments=5)
    assert up.accepted == 3
    await model.change(redis, keys, "c1", "start")
    async with running_daemon(cfg) as d:
        ids = ["c1.1", "c1.2", "c1.3"]
        async with Client.from_config(cfg) as client:  # the direct path's link records
            ids += [i for i, _ in await client.send([
                {"to": "+" + DIGITS, "template": "P", "params": {"link": "https://a.cn/d"}}])]
        final = await wait_final(redis, keys, ids, 30)
        assert {r["state"] for r in final.values()} == {"delivered"}
        # Both link messages to the number counted in its cooling-off streak, by token.
        assert await redis.hget(keys.marketing(DIGITS), "n") == "2"
        codes = [s.text.split("cn/")[1].split()[0] for s in sim.submissions
                 if s.destination.endswith(DIGITS)]
        assert d.links is not None and len(codes) == 2
        async with aiohttp.ClientSession() as s:
            for code in codes:  # the campaign's link and the direct send's
                async with s.get(f"http://127.0.0.1:{d.links.port}/{code}",
                                 allow_redirects=False,
                                 headers={"User-Agent": "Mozilla/5.0 (iPhone)"}) as r:
                    assert r.status == 302
        await sim.inject_mo(NATIONAL, "10690001", "退订", wait=True)
        for _ in range(400):
            if (await redis.hget(keys.marketing(DIGITS), "n") == "0"
                    and await redis.hget(keys.funnel("c1"), "opted_out") == "1"):
                break
            await asyncio.sleep(0.05)
    assert await redis.hget(keys.marketing(DIGITS), "n") == "0"  # the click reset it
    funnel = await redis.hgetall(keys.funnel("c1"))
    assert (funnel["delivered"], funnel["clicked"], funnel["opted_out"]) == ("3", "1", "1")
    assert await redis.exists(keys.campaign_send(DIGITS, "c1"))
    plain = Keys(cfg.redis.prefix)
    assert not await redis.exists(plain.marketing(DIGITS), plain.campaign_send(DIGITS, "c1"))
    clicked = [f for _, f in await redis.xrange(keys.events) if f["state"] == "clicked"]
    assert sorted((f.get("campaign", ""), f["template"], f["to"]) for f in clicked) == [
        ("", "P", "+86138****8000"), ("c1", "P", "+86138****8000")]
    # The whole of Redis: the number is nowhere, in no key name and no value.
    assert await dump_contains(redis, NATIONAL) == []
