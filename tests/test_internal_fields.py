"""Clients cannot set internal fields, nor schedule past the horizon (issue 14, item 4).

``attempts``, ``enqueued_at``, ``resume``, ``campaign``, ``variant``, ``links`` and
``losses`` travel only sealed in ``_gw`` (gatewayd.store.seal). A raw entry carrying
one bare is dead-lettered ``invalid:internal_field``, a forged or altered seal
``invalid:seal``, over HTTP each is refused with its field named; ``not_before`` /
``expires_at`` beyond ``queue.schedule_horizon_s`` likewise. gatewayd's own sealed
entries (intake, retries through the delayed set) still carry theirs.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from gatewayd.client import Client
from gatewayd.config import Config
from gatewayd.pipeline.intake import INTERNAL, parse_message, to_fields
from gatewayd.store.keys import GROUP, Keys
from gatewayd.store.seal import FIELD, SealError, load_seal
from tests.e2e_helpers import Smsc, load, running_daemon, wait_final, write_config

KEY = "test-api-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


async def dead_by_id(redis: aioredis.Redis, keys: Keys, n: int) -> dict[str, str]:
    """Dead letters' reasons by the raw entry's id (waits for ``n`` of them)."""
    import json

    for _ in range(300):
        if await redis.xlen(keys.dead) >= n:
            break
        await asyncio.sleep(0.05)
    out = {}
    for _, d in await redis.xrange(keys.dead):
        out[json.loads(d["raw"]).get("id", "")] = d["reason"]
    return out


async def test_raw_entries_with_bare_or_forged_internal_fields_are_dead_lettered(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    sim = await smsc(receipt_delay_s=0.01)
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port))
    otp, now = keys.queue("otp"), time.time()
    base = {"to": "+8613800138000", "text": "【京东】验证码 482913"}
    # Sealed by the real gatewayd (the client's intake), then copied with another number.
    async with Client(redis_url, queue=cfg.queue) as client:
        [(sealed_id, _)] = await client.send([{**base, "id": "sealed-1", "category": "otp"}])
        seal = await load_seal(redis, keys)
        [(eid, fields)] = await redis.xrange(otp)
        await redis.xdel(otp, eid)  # so the original is not read too
    assert FIELD in fields and seal.open(fields)["enqueued_at"] > 0
    bad = {
        "bare-attempts": {**base, "attempts": "3"},
        # issue 14: an enqueued_at of 1 made an OTP expire at once, unseen
        "bare-enqueued": {**base, "enqueued_at": "1"},
        "bare-resume": {**base, "resume": '{"c":"sim","r":1,"p":{"0":"x"}}'},
        "bare-campaign": {**base, "campaign": "c1", "variant": "A"},
        "json-links": {"json": '{"to": "+8613800138000", "text": "x", "links": 0}'},
        "forged": {**base, FIELD: "0" * 32 + '{"attempts": 0}'},
        "sealed-1": {**fields, "to": "+8613900000009"},  # another number: the MAC breaks
        "far": {**base, "not_before": repr(now + 8 * 86400)},  # past status_ttl_s (7 d)
        "far-expiry": {**base, "expires_at": repr(now + 30 * 86400)},
    }
    for msg_id, f in bad.items():
        if "json" in f:
            await redis.xadd(otp, {"json": f["json"].replace('"x"', f'"x", "id": "{msg_id}"')})
        else:
            await redis.xadd(otp, {"id": msg_id, **{k: v for k, v in f.items() if k != "id"}})
    await redis.xadd(otp, {**base, "id": "good-1"})
    async with running_daemon(cfg):
        [good] = (await wait_final(redis, keys, ["good-1"], 30)).values()
        dead = await dead_by_id(redis, keys, len(bad))
    assert good["state"] == "delivered"
    assert dead.pop("far") .startswith("invalid:not_before: more than 604800 s ahead")
    assert dead.pop("far-expiry").startswith("invalid:expires_at: more than 604800 s ahead")
    assert dead.pop("forged").startswith("invalid:seal:")
    assert dead.pop("sealed-1").startswith("invalid:seal:")
    assert dead == {i: dead[i] for i in dead if dead[i].startswith("invalid:internal_field:")}
    assert set(dead) == {"bare-attempts", "bare-enqueued", "bare-resume", "bare-campaign",
                         ""}  # the json entry's raw fields hold only "json"
    assert (await redis.xpending(otp, GROUP))["pending"] == 0
    assert sealed_id == "sealed-1"


async def test_http_refuses_internal_fields_and_far_schedules(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    sim = await smsc(receipt_delay_s=0.01)
    p = write_config(tmp_path, redis_url=redis_url, sim_port=sim.port, http=True,
                     extra="[queue]\nschedule_horizon_s = 3600\n")
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    p.write_text(p.read_text().replace('listen = "127.0.0.1:0"',
                                       f'listen = "127.0.0.1:0"\napi_keys = ["{digest}"]'))
    cfg = load(p)
    now = time.time()
    base = {"to": "+8613800138000", "text": "hello"}
    items = [{**base, f: v} for f, v in (("attempts", 0), ("enqueued_at", 1),
                                          ("campaign", "c1"), ("links", 1),
                                          (FIELD, "x" * 40),
                                          ("not_before", now + 7200),
                                          ("expires_at", now + 7200))]
    # item 2 over HTTP: what raised (OverflowError, RecursionError: a 500) is that item's 422
    items.append({**base, "not_before": 10 ** 400})
    items.append({"json": "[" * 10000 + "]" * 10000})
    items.append({**base, "not_before": now + 60, "id": "soon"})
    async with running_daemon(cfg) as daemon, aiohttp.ClientSession() as http:
        assert daemon.http is not None
        url = f"http://127.0.0.1:{daemon.http.port}/v1/messages"
        async with http.post(url, json=items, headers=AUTH) as r:
            assert r.status == 422
            body = await r.json()
    res = body["results"]
    fields = [e["field"] for r in res[:-1] for e in r["errors"]]
    assert fields == ["attempts", "enqueued_at", "campaign", "links", FIELD,
                      "not_before", "expires_at", "not_before", "json"]
    assert res[-2]["errors"][0]["reason"] == "nested too deeply"
    assert "set by gatewayd only" in res[0]["errors"][0]["reason"]
    assert "more than 3600 s ahead" in res[5]["errors"][0]["reason"]
    assert res[-1]["id"] == "soon"  # within the horizon: queued
    assert await redis.hget(keys.status("soon"), "state") in ("queued", "deferred")


async def test_seal_round_trip_and_what_a_client_may_xadd(
    redis: aioredis.Redis, keys: Keys
) -> None:
    seal = await load_seal(redis, keys)
    assert (await load_seal(redis, keys)).seal({"a": "1"}, {}) == seal.seal({"a": "1"}, {})
    cfg = Config()
    m = parse_message({"to": "+8613800138000", "text": "x", "id": "m1"},
                      classes=list(cfg.queue.classes), max_segments=10, now=1000.0)
    m.attempts, m.campaign, m.links = 2, "c1", 1
    sealed = to_fields(m, seal)
    assert not INTERNAL & set(sealed) and FIELD in sealed
    back = parse_message(sealed, classes=list(cfg.queue.classes), max_segments=10,
                         seal=seal)
    assert back == m
    # Without a seal: only what a client may write itself (no internal field at all).
    plain = to_fields(m)
    assert set(plain) == {"id", "to", "text", "category"}


async def test_prepared_seal_is_the_seal_and_still_binds_each_entry(
    redis: aioredis.Redis, keys: Keys
) -> None:
    # The fan-out seals a slice's entries with Seal.prepared: the same MAC as Seal.seal
    # over the whole entry, whichever fields it has, so Seal.open verifies every one,
    # and one entry's seal does not fit another's fields.
    seal = await load_seal(redis, keys)
    internal = {"campaign": "c1", "variant": "A", "enqueued_at": 1733550000.25, "links": 2}
    cases: list[tuple[dict[str, str], tuple[str, ...], tuple[str | None, ...]]] = [
        ({"category": "marketing", "from": "1069", "template": "A", "tenant": "shop"},
         ("id", "to", "text", "ref"), ("c1.1", "+8613900000001", '【京东】"会员"\x01\\ é', "r1")),
        ({"category": "marketing", "template": "A"},
         ("id", "to", "text", "ref"), ("c1.2", "+8613900000002", "hi", None)),
        ({}, ("id", "to"), ("c1.3", "+8613900000003")),
        ({}, ("id",), (None,)),
        ({"a": "1", "c": "3"}, ("b",), (None,)),
        ({"z": "9"}, ("a", "b"), ("1", None)),
        ({"a": "100%", "c%s": "%d"}, ("b",), ("50%s",)),  # printf marks are only text
        ({"category": "marketing"}, ("to",), ("+8613900000004",)),
    ]
    for fixed, varying, values in cases:
        p = seal.prepared(internal, fixed, varying)
        fields = {**fixed, **{k: v for k, v in zip(varying, values, strict=True) if v}}
        value = p.seal(values)
        assert value == seal.seal(fields, internal)
        assert seal.open({**fields, FIELD: value}) == internal
        if "to" in fields:  # moved onto another number: refused
            with pytest.raises(SealError):
                seal.open({**fields, "to": "+8613900000999", FIELD: value})
    with pytest.raises(ValueError):
        seal.prepared(internal, {"id": "x"}, ("id",))


async def test_entries_queued_before_the_upgrade_keep_their_bare_internal_fields(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """queue.unsealed_before: an upgrade from a version without the seal need not drain
    the queues first. Entries older than that time (their stream id's Redis clock) are
    read with bare internal fields, as the old version wrote them; newer ones with bare
    fields are still dead-lettered."""
    sim = await smsc(receipt_delay_s=0.01)
    tx = keys.queue("transactional")
    base = {"to": "+8613800138000", "text": "【京东】订单已发货", "category": "transactional"}
    await redis.xadd(tx, {**base, "id": "old-1", "attempts": "2",
                          "enqueued_at": repr(time.time())})
    await redis.xadd(tx, {**base, "id": "old-2", "campaign": "", "losses": "1"})
    sec, usec = await redis.time()
    upgrade = sec + usec / 1e6 + 0.001
    await asyncio.sleep(0.01)  # later entries get later ids
    await redis.xadd(tx, {**base, "id": "new-1", "attempts": "2"})
    await redis.xadd(tx, {**base, "id": "new-2"})
    p = write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                     extra=f"[queue]\nunsealed_before = {upgrade!r}\n")
    cfg = load(p)
    assert cfg.queue.unsealed_before == upgrade
    async with running_daemon(cfg):
        final = await wait_final(redis, keys, ["old-1", "old-2", "new-2"], 30)
        dead = await dead_by_id(redis, keys, 1)
    assert {i: r["state"] for i, r in final.items()} == {
        "old-1": "delivered", "old-2": "delivered", "new-2": "delivered"}
    assert list(dead) == ["new-1"]
    assert dead["new-1"].startswith("invalid:internal_field: attempts")
    # The bare fields of an old entry are honoured, not dropped: its earlier attempts count.
    assert int(final["old-1"].get("attempts", 0)) >= 2, final["old-1"]


def test_unsealed_before_must_be_a_time(tmp_path: Path) -> None:
    from gatewayd.config import ConfigError

    p = write_config(tmp_path, redis_url="redis://127.0.0.1:1/0", sim_port=1,
                     extra="[queue]\nunsealed_before = -5\n")
    with pytest.raises(ConfigError, match=r"queue\.unsealed_before"):
        load(p)
