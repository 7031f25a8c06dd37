"""MO replies end to end: a `TD` from a handset opts it out of marketing from then on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gatewayd.client import Client
from gatewayd.policy.numbers import from_person, to_e164
from gatewayd.store.keys import Keys
from tests.e2e_helpers import ROOT, Smsc, load, running_daemon, wait_final, write_config

DEMO_POLICY = ROOT / "policies" / "demo.toml"


@pytest.mark.parametrize("reply", ["TD", " td ", "ＴＤ", "退订", "STOP"])
async def test_td_reply_blocks_the_next_marketing_message(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, reply: str, smsc: Smsc
) -> None:
    sim = await smsc(receipt_delay_s=0.01)
    port = sim.port
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=port,
                            policy=DEMO_POLICY))
    async with running_daemon(cfg):
        # The carrier gives the sender in national form; the opt-out must still match.
        await sim.inject_mo("13800138000", "10690001", reply, wait=True)
        for _ in range(100):
            if await redis.exists(keys.optout("8613800138000")):
                break
            await asyncio.sleep(0.05)
        async with Client(redis_url, queue=cfg.queue) as client:
            [(promo, _), (code, _)] = await client.send([
                {"to": "+8613800138000", "category": "marketing",
                 "text": "【京东】双11全场满300减50 回TD退订"},
                {"to": "+8613800138000", "category": "otp",
                 "text": "【京东】您的验证码是 4821"},
            ])
        records = await wait_final(redis, keys, [promo, code], timeout_s=20)
    assert records[promo]["state"] == "rejected"
    assert records[promo]["reason"].startswith("optout")
    assert records[code]["state"] == "delivered"  # codes still reach the number
    mo = [f for _, f in await redis.xrange(keys.inbound)]
    assert mo[0]["from"] == "+8613800138000" and mo[0]["text"] == reply
    events = [f for _, f in await redis.xrange(keys.events) if f["state"] == "optout"]
    assert events and events[0]["to"] == "+86138****8000"


async def test_a_chatty_reply_is_not_an_opt_out(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    sim = await smsc(receipt_delay_s=0.01)
    port = sim.port
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=port,
                            policy=DEMO_POLICY))
    async with running_daemon(cfg):
        await sim.inject_mo("8613800138000", "10690001", "TD is my favourite shop",
                            wait=True)
        for _ in range(100):
            if await redis.xlen(keys.inbound):
                break
            await asyncio.sleep(0.05)
    assert not await redis.exists(keys.optout("8613800138000"))


def test_mo_senders_become_e164_per_carrier() -> None:
    assert to_e164("13800138000", "86") == "+8613800138000"
    assert to_e164("8613800138000", "86") == "+8613800138000"
    assert to_e164("008613800138000", "86") == "+8613800138000"
    assert to_e164("+8613800138000", "44") == "+8613800138000"
    assert to_e164("8613800138000", "international") == "+8613800138000"
    assert to_e164("+8613800138000", "international") == "+8613800138000"
    # Not a number a person can opt out from: a short code, nothing, letters, 41 digits.
    for odd in ("10086", "", "JD-SHOP", "1" * 41, "13800138000" * 3):
        assert to_e164(odd, "86") is None
        assert to_e164(odd, "international") is None
    # A national number read as international is someone else's (+1 380...): refused.
    assert to_e164("13800138000", "international") is None


def test_cli_numbers_need_a_country() -> None:
    with pytest.raises(ValueError, match="--country"):
        from_person("13900000000")
    assert from_person("13900000000", "86") == "+8613900000000"
    assert from_person("+86 139-0000-0000") == "+8613900000000"
    assert from_person("008613900000000") == "+8613900000000"
    with pytest.raises(ValueError, match="not a valid phone number"):
        from_person("+86123")
