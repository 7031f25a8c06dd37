"""Webhooks (issue 18) through the real daemon, a real SMSC simulator and a real HTTP
receiver: every state change and MO pushed, signed, in order per message, never lost."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import redis.asyncio as aioredis

from gatewayd.client import Client, verify_webhook
from gatewayd.model import FINAL_STATES
from gatewayd.store.keys import Keys
from gatewayd.webhooks.signing import sign
from tests.e2e_helpers import Smsc, load, running_daemon, wait_final, write_config
from tests.webhook_helpers import Receiver, endpoint_toml, wait_for, webhooks_toml


async def send(redis_url: str, cfg: object, n: int, prefix: str = "86137",
               **fields: str) -> list[str]:
    async with Client(redis_url, queue=cfg.queue) as client:  # type: ignore[attr-defined]
        return [i for i, _ in await client.send(
            [{"to": f"+{prefix}{k:08d}", "text": f"parcel {k} is on its way",
              "category": "transactional", **fields} for k in range(n)])]


def in_order(by_msg: dict[str, list[str]]) -> bool:
    """Per message: submitted arrived, and before its final event."""
    for kinds in by_msg.values():
        finals = [i for i, k in enumerate(kinds) if k in FINAL_STATES]
        if "submitted" not in kinds or not finals or kinds.index("submitted") > finals[0]:
            return False
    return True


async def test_states_and_mo_pushed_signed_in_order(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    recv = Receiver()
    await recv.start()
    try:
        sim = await smsc(receipt_delay_s=0.05)
        eps = (endpoint_toml(recv, "all", "/all", tenant="*", events=["*"], batch=20)
               + endpoint_toml(recv, "dlr", "/dlr", tenant="*", events=["final"],
                               format="kannel",
                               url="?d=%d&id=%I&to=%p&smsc=%i&t=%T&a=%A&pct=%%"))
        cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                                extra=webhooks_toml(recv, endpoints=eps),
                                extra_carrier='mo_country_code = "86"'))
        async with running_daemon(cfg) as daemon:
            assert daemon.webhooks is not None
            await asyncio.wait_for(daemon.webhooks.ready.wait(), 10)
            ids = await send(redis_url, cfg, 60, ref="order-7")
            await wait_final(redis, keys, ids, timeout_s=30)
            await sim.inject_mo("13800138000", "10690001", "hello back", wait=True)
            assert await wait_for(lambda: len(recv.by_message("/all")) == 60
                                  and in_order(recv.by_message("/all"))
                                  and any(e["kind"] == "mo" for e in recv.events["/all"])
                                  and len(recv.events["/dlr"]) >= 60)
        assert recv.bad_signatures == 0
        by_msg = recv.by_message("/all")
        assert set(by_msg) == set(ids)
        assert all(k[:3] == ["queued", "submitted", "delivered"] for k in by_msg.values())
        sample = next(e for e in recv.events["/all"] if e["kind"] == "delivered")
        assert sample["message_id"] in ids and sample["ref"] == "order-7"
        assert sample["carrier"] == "sim" and sample["carrier_id"]
        assert isinstance(sample["at"], float) and sample["event_id"].startswith("e")
        mo = next(e for e in recv.events["/all"] if e["kind"] == "mo")
        assert mo["from"] == "+8613800138000" and mo["text"] == "hello back"
        dlr = {q["id"]: q for q in recv.events["/dlr"]}
        assert set(dlr) == set(ids)
        q = dlr[ids[0]]
        assert q["d"] == "1" and q["smsc"] == "sim" and q["a"] == "delivered"
        assert q["to"].endswith("0000") and q["pct"] == "%" and int(q["t"]) > 0
        # Everything delivered was acknowledged: nothing left pending in the group.
        pending = await redis.xpending(keys.events, "webhooks")
        assert pending["pending"] == 0
    finally:
        await recv.stop()


def test_signature_recipe() -> None:
    body = b'{"events":[]}'
    header = sign(b"k", body, 1_700_000_000)
    assert verify_webhook("k", body, header, now=1_700_000_100)
    assert not verify_webhook("k", body + b" ", header, now=1_700_000_100)
    assert not verify_webhook("other", body, header, now=1_700_000_100)
    assert not verify_webhook("k", body, header, now=1_700_000_000 + 301)  # a replay
    # The recipe of the README, by hand: HMAC-SHA256 over "<t>." + body, hex.
    import hashlib
    import hmac

    mac = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={mac}"
    assert verify_webhook("k", body, f"t={int(time.time())},v1=x,v1="
                          + hmac.new(b"k", f"{int(time.time())}.".encode() + body,
                                     hashlib.sha256).hexdigest())
