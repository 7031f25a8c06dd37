"""Campaigns end to end: upload (JSON lines, CSV, a Redis stream), A/B variants, the
fan-out into the ordinary queue, pause / resume / cancel, exactly-once slices, and the
funnel, on real Redis and a real SMSC simulator over SMPP."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gatewayd.campaigns import funnel, links, model, registry
from gatewayd.campaigns.fanout import FanOut
from gatewayd.campaigns.model import Campaign, Variant
from gatewayd.campaigns.registry import TemplateCache
from gatewayd.campaigns.templates import Template
from gatewayd.config import Config, load_config
from gatewayd.pipeline.intake import Resume
from gatewayd.store.keys import Keys
from gatewayd.store.seal import load_seal
from tests.e2e_helpers import Smsc, running_daemon, send_internal, wait_final, write_config

CLASSES = ["otp", "transactional", "marketing"]
LINKS = """
[links]
enabled = true
base_url = "https://s.example.cn/"
listen = "127.0.0.1:0"
"""


async def approved(redis: aioredis.Redis, keys: Keys, code: str, body: str) -> None:
    await registry.save(redis, keys, Template(code=code, signature="京东", category="marketing",
                                              body=body), classes=CLASSES)
    await registry.set_status(redis, keys, code, "approved")


async def compiled(redis: aioredis.Redis, keys: Keys, *codes: str) -> dict[str, Any]:
    cache = TemplateCache(redis, keys)
    await cache.load(codes)
    return {c: cache.get(c) for c in codes}


async def setup_ab(redis: aioredis.Redis, keys: Keys, cid: str = "c1",
                   source: str = "upload") -> Campaign:
    await approved(redis, keys, "A", "{name:text<=6}，今晨采摘 {link:url} 回TD退订")
    await approved(redis, keys, "B", "{name:text<=6}，新鲜到货 {link:url} 回TD退订")
    c = Campaign(id=cid, variants=[Variant(name="A", template="A", weight=1),
                                   Variant(name="B", template="B", weight=1)],
                 tenant="shop", source=source)
    return await model.create(redis, keys, c, await compiled(redis, keys, "A", "B"))


def rows(n: int, start: int = 0) -> list[str]:
    return [json.dumps({"to": f"+86139{start + i:08d}", "ref": f"r{i}",
                        "params": {"name": "小明", "link": f"https://m.example.com/{i}"}},
                       ensure_ascii=False) for i in range(n)]


async def test_upload_validates_rows_and_keeps_memory_in_chunks(
        redis: aioredis.Redis, keys: Keys) -> None:
    c = await setup_ab(redis, keys)
    t = await compiled(redis, keys, "A", "B")
    lines = [*rows(2500), "not json", json.dumps({"to": "12", "params": {}}),
             json.dumps({"to": "+8613900000001", "params": {"name": "x" * 9, "link": "https://a.cn"}}),
             json.dumps({"to": "+8613900000001", "params": {"name": "x", "link": "ftp://a"}}),
             json.dumps({"to": "+8613900000001", "zz": 1}), ""]
    res = await model.upload(redis, keys, c, t, iter(lines), fmt="jsonl",
                             link_sample="https://s.example.cn/0000abcdefg", max_segments=5)
    assert (res.accepted, res.rejected) == (2500, 5)
    assert [(e.line, e.field) for e in res.errors] == [
        (2501, "$"), (2502, "to"), (2503, "params.name"), (2504, "params.link"), (2505, "zz")]
    assert await redis.xlen(keys.campaign_recipients("c1")) == 3  # 1000 + 1000 + 500
    csv_body = [b"to,name,link,ref\n+8613700000001,", b"\xe5\xb0\x8f\xe6\x98\x8e,https://a.cn/x,k1\n",
                b"+8613700000002,bob,https://a.cn/y\n"]

    async def chunks() -> Any:
        for b in csv_body:
            yield b
    res = await model.upload(redis, keys, c, t, chunks(), fmt="csv",
                             link_sample="https://s.example.cn/0000abcdefg", max_segments=5)
    assert (res.accepted, res.rejected) == (1, 1) and res.errors[0].line == 3
    c2 = await model.get(redis, keys, "c1")
    assert c2 is not None and (c2.rows, c2.invalid) == (2501, 6)


async def test_a_slice_is_queued_once_and_only_while_running(
        redis: aioredis.Redis, redis_url: str, keys: Keys, tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, redis_url=redis_url, sim_port=1,
                                   extra=LINKS + "[campaigns]\nqueued_records = true\n"))
    c = await setup_ab(redis, keys)
    await model.upload(redis, keys, c, await compiled(redis, keys, "A", "B"), iter(rows(300)),
                       fmt="jsonl", link_sample="https://s.example.cn/0000abcdefg",
                       max_segments=5)
    fan = FanOut(redis, keys, cfg)
    c = await model.get(redis, keys, "c1")
    assert c is not None
    assert await fan.step(c) == ("stopped", 0)  # a draft queues nothing
    await model.change(redis, keys, "c1", "start")
    await model.change(redis, keys, "c1", "run")
    c = await model.get(redis, keys, "c1")
    assert c is not None
    assert await fan.step(c) == ("queued", 200)
    assert await fan.step(c) == ("stopped", 0)  # the same snapshot again: nothing twice
    c = await model.get(redis, keys, "c1")
    assert c is not None and (c.cursor, c.offset, c.produced) == ("0-0", 200, 200)
    assert await fan.step(c) == ("queued", 100)
    c = await model.get(redis, keys, "c1")
    assert c is not None and await fan.step(c) == ("done", 0)
    assert await redis.xlen(keys.campaign_recipients("c1")) == 0  # consumed chunks go
    assert await redis.xlen(keys.queue("marketing")) == 300
    entries = await redis.xrange(keys.queue("marketing"))
    ids = {f["id"] for _sid, f in entries}
    assert len(ids) == 300 and "c1.1" in ids and "c1.300" in ids
    by_variant: dict[str, int] = {}
    seal = await load_seal(redis, keys)
    for _sid, raw in entries:
        # campaign, variant and links travel sealed (gatewayd.store.seal)
        f = {**raw, **{k: str(v) for k, v in seal.open(raw).items()}}
        by_variant[f["variant"]] = by_variant.get(f["variant"], 0) + 1
        assert ("今晨采摘" in f["text"]) == (f["variant"] == "A") and f["template"] == f["variant"]
        assert f["campaign"] == "c1" and f["tenant"] == "shop" and f["links"] == "1"
    assert 100 < by_variant["A"] < 200 and by_variant["A"] + by_variant["B"] == 300
    # Deterministic per recipient: the same number always gets the same variant.
    assert model.variant_of("c1", "8613900000007", [1, 1]) == model.variant_of(
        "c1", "8613900000007", [1, 1])
    counts = await funnel.read(redis, keys, "c1")
    assert counts["queued"] == 300 and counts["queued|A"] == by_variant["A"]
    status = await redis.hgetall(keys.status("c1.1"))
    assert status["state"] == "queued" and status["fk"] == keys.funnel("c1")
    code = next(f for _s, f in entries if f["id"] == "c1.1")["text"].split("cn/")[1].split()[0]
    assert (await links.read(redis, keys, code) or {})["m"] == "c1.1"


async def test_campaign_through_the_daemon_with_pause_and_cancel(
        redis: aioredis.Redis, redis_url: str, keys: Keys, tmp_path: Path, smsc: Smsc) -> None:
    sim = await smsc(receipt_delay_s=0.05)
    cfg = load_config(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                                   extra=LINKS + "[campaigns]\nfanout_batch = 50\n"
                                                 "max_backlog = 100\n"))
    c = await setup_ab(redis, keys)
    t = await compiled(redis, keys, "A", "B")
    await model.upload(redis, keys, c, t, iter(rows(400)), fmt="jsonl",
                       link_sample="https://s.example.cn/0000abcdefg", max_segments=5)
    # A second campaign fed by a Redis stream of the app's, and a third to cancel.
    await setup_ab(redis, keys, "s1", source="stream:app:recips")
    for i in range(30):
        await redis.xadd("app:recips", {"to": f"+86136{i:08d}",
                                        "params": json.dumps({"name": "n", "link": "https://a.cn"})})
    await redis.xadd("app:recips", {"to": "bad"})
    await redis.xadd("app:recips", {"end": "1"})
    x = await setup_ab(redis, keys, "x1")
    await model.upload(redis, keys, x, t, iter(rows(50, start=5000)), fmt="jsonl",
                       link_sample="https://s.example.cn/0000abcdefg", max_segments=5)
    await model.change(redis, keys, "s1", "start")
    await model.change(redis, keys, "c1", "start")
    async with running_daemon(cfg) as d:
        assert d.campaigns is not None
        for _ in range(1000):
            cc = await model.get(redis, keys, "c1")
            if cc is not None and cc.produced >= 100:
                break
            await asyncio.sleep(0.02)
        await model.change(redis, keys, "c1", "pause", reason="by hand")
        await asyncio.sleep(0.3)
        paused = await model.get(redis, keys, "c1")
        assert paused is not None and paused.status == "paused" and paused.produced < 400
        with pytest.raises(ValueError, match="is paused; start needs draft"):
            await model.change(redis, keys, "c1", "start")
        await model.change(redis, keys, "c1", "resume")
        await model.change(redis, keys, "x1", "cancel")
        for _ in range(1200):
            cc, ss = (await model.get(redis, keys, "c1"), await model.get(redis, keys, "s1"))
            if cc and ss and cc.status == "done" and ss.status == "done":
                break
            await asyncio.sleep(0.05)
        ids = [f"c1.{i}" for i in range(1, 401)]
        records = await wait_final(redis, keys, ids, timeout_s=60)
    assert {r["state"] for r in records.values()} == {"delivered"}
    final = await model.get(redis, keys, "c1")
    assert final is not None and final.status == "done" and final.produced == 400
    counts = await funnel.read(redis, keys, "c1")
    assert counts["queued"] == counts["submitted"] == counts["delivered"] == 400
    # Without campaigns.queued_records a message's record starts at its first transition:
    # its submission, or a deferral when the dispatcher read it while c1 was paused (a
    # slow machine sends fewer before the pause).
    ev = [f["state"] for _sid, f in await redis.xrange(keys.events) if f["id"] == "c1.7"]
    assert "queued" not in ev and ev[-2:] == ["submitted", "delivered"], ev
    assert set(ev[:-2]) <= {"deferred"}, ev
    assert counts["delivered|A"] + counts["delivered|B"] == 400
    assert await redis.sismember(keys.campaigns_active, "c1") == 0
    sc = await model.get(redis, keys, "s1")
    assert sc is not None and (sc.status, sc.produced, sc.invalid) == ("done", 30, 1)
    xc = await model.get(redis, keys, "x1")
    assert xc is not None and (xc.status, xc.produced) == ("cancelled", 0)
    summary = funnel.summarise(counts)
    assert summary["rates"]["delivery"] == {"value": 1.0, "num": 400, "den": 400}


async def test_hostile_rows_of_an_app_stream_are_invalid_rows_not_a_stuck_campaign(
        redis: aioredis.Redis, redis_url: str, keys: Keys, tmp_path: Path) -> None:
    """Issue 14: an entry that is not UTF-8, or whose params are nested 10,000 deep,
    failed every read of the app's stream: the campaign never moved again."""
    cfg = load_config(write_config(tmp_path, redis_url=redis_url, sim_port=1, extra=LINKS))
    await setup_ab(redis, keys, "s2", source="stream:app:r2")
    params = json.dumps({"name": "n", "link": "https://a.cn"})
    raw = aioredis.from_url(redis_url)  # bytes as they are
    try:
        await raw.xadd("app:r2", {b"to": b"+8613600000001", b"params": params.encode()})
        await raw.xadd("app:r2", {b"to": b"\xff\xfe", b"params": b"{}"})
        await raw.xadd("app:r2", {b"to": b"+8613600000002",
                                  b"params": b"[" * 10000 + b"]" * 10000})
        await raw.xadd("app:r2", {b"to": b"+8613600000003", b"params": params.encode()})
        await raw.xadd("app:r2", {b"end": b"1"})
    finally:
        await raw.aclose()
    await model.change(redis, keys, "s2", "start")
    await model.change(redis, keys, "s2", "run")
    fan = FanOut(redis, keys, cfg)
    for _ in range(5):
        c = await model.get(redis, keys, "s2")
        assert c is not None
        if (await fan.step(c))[0] == "done":
            break
    c = await model.get(redis, keys, "s2")
    assert c is not None and (c.produced, c.invalid) == (2, 2)
    queued = [f["to"] for _, f in await redis.xrange(keys.queue("marketing"))]
    assert queued == ["+8613600000001", "+8613600000003"]


def test_campaign_config_is_validated(tmp_path: Path) -> None:
    from gatewayd.errors import ConfigError
    base = write_config(tmp_path, redis_url="redis://x", sim_port=1,
                        extra="[links]\nenabled = true\nbase_url = \"s.cn\"\n")
    with pytest.raises(ConfigError, match=r"links\.base_url"):
        load_config(base)
    assert Config().campaigns.max_backlog == 20_000


async def test_the_optout_brake_pauses_and_metrics_stay_bounded(
        redis: aioredis.Redis, redis_url: str, keys: Keys, tmp_path: Path) -> None:
    from gatewayd.campaigns.fanout import CampaignRunner
    from gatewayd.ops import metrics

    cfg = load_config(write_config(tmp_path, redis_url=redis_url, sim_port=1, extra=LINKS + """
[campaigns]
pause_optout_rate = 0.003
pause_min_delivered = 1000
metrics_max = 2
"""))
    for cid in ("old", "c1", "c2"):
        await setup_ab(redis, keys, cid)
        await model.change(redis, keys, cid, "start")
        await model.change(redis, keys, cid, "run")
    await redis.hset(keys.funnel("c1"), mapping={"delivered": 1000, "opted_out": 4})
    await redis.hset(keys.funnel("c2"), mapping={"delivered": 999, "opted_out": 9})
    runner = CampaignRunner(redis, keys, cfg)
    await runner.tick()
    c1, c2 = await model.get(redis, keys, "c1"), await model.get(redis, keys, "c2")
    assert c1 is not None and c1.status == "paused" and c1.reason.startswith("optout_rate 4/1000")
    assert c2 is not None and c2.status != "paused"  # below the minimum sample
    for t in runner.tasks.values():
        t.cancel()
    await asyncio.gather(*runner.tasks.values(), return_exceptions=True)
    assert metrics.CAMPAIGN_MESSAGES.labels("c1", "delivered")._value.get() == 1000
    labelled = {labels[0] for labels in metrics.CAMPAIGN_MESSAGES._metrics}
    assert len(labelled) <= 2 and "old" not in labelled  # the 2 most recent only


async def test_a_cancelled_campaign_still_finishes_a_half_sent_long_message(
        redis: aioredis.Redis, redis_url: str, keys: Keys, tmp_path: Path, smsc: Smsc) -> None:
    """A long message whose first part the SMSC accepted (issue 16's ``resume``) sends
    the rest though its campaign was cancelled meanwhile; the campaign's other queued
    messages are rejected, and a paused campaign's deferred, at dispatch."""
    sim = await smsc(receipt_delay_s=0.02)
    cfg = load_config(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port))
    c = await setup_ab(redis, keys, "x2")
    await model.change(redis, keys, c.id, "cancel")
    await setup_ab(redis, keys, "p2")
    await model.change(redis, keys, "p2", "start")
    await model.change(redis, keys, "p2", "pause")
    long_text = "Fresh fruit this morning, twenty percent off everything until noon. " * 4
    resume = Resume("sim", 77, {0: "abc1"}).encode()
    # campaign, variant and resume are internal: sealed as the fan-out and retries do
    [half, whole, _paused] = await send_internal(redis_url, cfg, [
        {"id": "x2.1", "to": "+8613900000001", "text": long_text, "category": "marketing",
         "campaign": "x2", "variant": "A", "resume": resume},
        {"id": "x2.2", "to": "+8613900000002", "text": long_text, "category": "marketing",
         "campaign": "x2", "variant": "A"},
        {"id": "p2.1", "to": "+8613900000003", "text": "Fruit", "category": "marketing",
         "campaign": "p2", "variant": "A"}])
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, [whole], timeout_s=30)
        for _ in range(400):
            if (await redis.hget(keys.status(half), "state") == "submitted"
                    and await redis.hget(keys.status("p2.1"), "state") == "deferred"):
                break
            await asyncio.sleep(0.05)
    paused = await redis.hgetall(keys.status("p2.1"))
    assert (paused["state"], paused["reason"]) == ("deferred", "campaign_paused")
    assert (records[whole]["state"], records[whole]["reason"]) == (
        "rejected", "campaign_cancelled")
    assert await redis.hget(keys.status(half), "state") == "submitted"
    # Only the parts the SMSC had not accepted, under the same reference.
    got = [s.udh for s in sim.submissions if s.destination == "8613900000001"]
    assert got and all(u is not None and u[0] == 77 and u[2] >= 2 for u in got)
    assert sorted(u[2] for u in got if u is not None) == list(range(2, got[0][1] + 1))
    assert not [s for s in sim.submissions if s.destination in ("8613900000002",
                                                                 "8613900000003")]


async def test_a_campaign_never_writes_over_an_id_a_client_took(
        redis: aioredis.Redis, redis_url: str, keys: Keys, tmp_path: Path) -> None:
    """The fan-out names its messages "<campaign>.<row>". A client that took such an id
    before the campaign existed keeps its message (the fan-out skips that row, counted
    as refused); once the campaign exists, intake refuses ids of its namespace like any
    taken id; ids of that shape for no campaign are an ordinary client's."""
    from gatewayd.client import Client
    from gatewayd.errors import MessageError

    cfg = load_config(write_config(tmp_path, redis_url=redis_url, sim_port=1, extra=LINKS))
    mine = {"to": "+8613800000001", "text": "【京东】您的订单已发货", "category": "transactional"}
    async with Client(redis_url, queue=cfg.queue) as client:
        await client.send([{**mine, "id": "c1.2"}])
        c = await setup_ab(redis, keys)
        await model.upload(redis, keys, c, await compiled(redis, keys, "A", "B"),
                           iter(rows(5)), fmt="jsonl",
                           link_sample="https://s.example.cn/0000abcdefg", max_segments=5)
        await model.change(redis, keys, "c1", "start")
        await model.change(redis, keys, "c1", "run")
        c = await model.get(redis, keys, "c1")
        assert c is not None
        assert await FanOut(redis, keys, cfg).step(c) == ("queued", 4)
        c = await model.get(redis, keys, "c1")
        assert c is not None and (c.produced, c.invalid) == (4, 1)
        # The client's message is as it queued it; the campaign's row 2 was not queued.
        status = await redis.hgetall(keys.status("c1.2"))
        assert status["category"] == "transactional" and "campaign" not in status
        entries = await redis.xrange(keys.queue("marketing"))
        assert sorted(f["id"] for _s, f in entries) == ["c1.1", "c1.3", "c1.4", "c1.5"]
        assert (await funnel.read(redis, keys, "c1"))["queued"] == 4
        # Now that c1 exists, its namespace is refused at intake (HTTP gives 409 the same
        # way), alone or among others; the same shape for no campaign is fine.
        with pytest.raises(MessageError) as e:
            await client.send([{**mine, "id": "c1.9"}, {**mine, "id": "order.9"}])
        assert e.value.code == "duplicate_id" and "c1.9" in str(e.value)
        assert await redis.exists(keys.status("order.9"))
        assert not await redis.exists(keys.status("c1.9"))
        assert await client.send_many([{**mine, "id": "c2.9"}]) == [("c2.9", False)]


async def test_the_fan_out_renders_one_slice_a_loop_turn(
        redis: aioredis.Redis, redis_url: str, keys: Keys, tmp_path: Path) -> None:
    """Slices of a group come from one decoded chunk without waiting on Redis; each is
    rendered in a loop turn of its own, so the dispatchers (a code's hops) run between
    them instead of waiting out a whole group's rendering."""
    cfg = load_config(write_config(tmp_path, redis_url=redis_url, sim_port=1))
    c = await setup_ab(redis, keys)
    await model.upload(redis, keys, c, await compiled(redis, keys, "A", "B"), iter(rows(1000)),
                       fmt="jsonl", link_sample="https://s.example.cn/0000abcdefg",
                       max_segments=5)
    await model.change(redis, keys, "c1", "start")
    await model.change(redis, keys, "c1", "run")
    c = await model.get(redis, keys, "c1")
    assert c is not None
    fan = FanOut(redis, keys, cfg)
    turns = 0

    async def other_task() -> None:  # stands for the dispatchers: counts its turns
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    seen: list[int] = []
    prepare = fan._prepare

    async def counted(*args: Any) -> Any:
        seen.append(turns)
        return await prepare(*args)

    fan._prepare = counted  # type: ignore[method-assign]
    ticker = asyncio.create_task(other_task())
    try:
        assert (await fan.run(c, 1000, group=4))[1] == 1000
    finally:
        ticker.cancel()
    assert len(seen) >= 5  # one chunk of 1,000 rows: 5 slices of 200, 4 in the first group
    assert all(b > a for a, b in itertools.pairwise(seen)), seen
    assert await redis.xlen(keys.queue("marketing")) == 1000
