"""Redis connections under an HTTP flood: the core never starves (issue 14 item 6).

Thousands of concurrent POSTs while the daemon drains to the SMPP simulator and
receipts flow back: no 500, no message submitted twice, every receipt applied, every
message final. And when the intake's own connections stay busy, the API answers 503
with Retry-After, never 500, while the core goes on."""

from __future__ import annotations

import asyncio
import collections
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from gatewayd.ops import metrics
from gatewayd.store.keys import Keys
from tests.e2e_helpers import Smsc, load, running_daemon, wait_final, write_config

KEY = "flood-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONCURRENT = 2000  # client connections open at once
MESSAGES = 3000


def config(tmp_path: Path, redis_url: str, sim_port: int, http_extra: str = "",
           redis_extra: str = "") -> Path:
    p = write_config(tmp_path, redis_url=redis_url, sim_port=sim_port, http=True)
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    text = p.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:0"\n'
                                 f'api_keys = ["{digest}"]\n{http_extra}')
    text = text.replace(f'url = "{redis_url}"', f'url = "{redis_url}"\n{redis_extra}')
    p.write_text(text)
    return p


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any],
               statuses: collections.Counter[int]) -> str:
    """POST until accepted: 503 (and a connection refused past the cap) is retried after
    Retry-After, safely, thanks to the idempotency key; anything else is recorded."""
    for _ in range(200):
        try:
            async with http.post(url, json=body, headers=AUTH) as r:
                statuses[r.status] += 1
                if r.status == 202:
                    return str((await r.json())["results"][0]["id"])
                if r.status != 503:
                    return ""
                await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
            statuses[-1] += 1  # refused at the connection cap, or reset: retried
            await asyncio.sleep(0.25)
    return ""


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_flood_of_posts_starves_nothing(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc,
) -> None:
    sim = await smsc(receipt_delay_s=0.05)
    cfg = load(config(tmp_path, redis_url, sim.port, http_extra="max_connections = 4096"))
    unmatched = sample("gatewayd_receipts_total", carrier="sim", result="unmatched")
    core_errors = sample("gatewayd_redis_errors_total", op="dispatch")
    statuses: collections.Counter[int] = collections.Counter()
    async with running_daemon(cfg) as daemon:
        assert daemon.http is not None
        url = f"http://127.0.0.1:{daemon.http.port}/v1/messages"
        connector = aiohttp.TCPConnector(limit=CONCURRENT, force_close=False)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            ids = await asyncio.gather(*(
                post(http, url, {"to": f"+86139{n:08d}", "text": f"flood {n}",
                                 "category": "transactional", "idempotency_key": f"k{n}"},
                     statuses)
                for n in range(MESSAGES)))
        assert all(ids), statuses
        records = await wait_final(redis, keys, ids, timeout_s=180)
        up = sample("gatewayd_redis_up")
    # No 500 (nor any status but 202 and the 503s that were retried).
    assert set(statuses) <= {202, 503, -1}, statuses
    assert len(set(ids)) == MESSAGES
    # Every message final, delivered: every receipt applied; none unmatched.
    states = collections.Counter(r.get("state") for r in records.values())
    assert states == {"delivered": MESSAGES}, states
    assert sample("gatewayd_receipts_total", carrier="sim", result="unmatched") == unmatched
    # The simulator saw each message exactly once: no duplicate submit.
    texts = collections.Counter(s.text for s in sim.submissions if s.status == 0)
    assert len(texts) == MESSAGES and set(texts.values()) == {1}, texts.most_common(3)
    # The core never failed for want of a connection.
    assert sample("gatewayd_redis_errors_total", op="dispatch") == core_errors
    assert up == 1


async def test_busy_intake_answers_503_and_the_core_goes_on(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc,
) -> None:
    """One intake connection, held by a command Redis does not answer for 3 s (CLIENT
    PAUSE): requests that wait past the pool's wait get 503 + Retry-After; afterwards
    everything is accepted and delivered, and the core was never short of connections."""
    sim = await smsc(receipt_delay_s=0.02)
    cfg = load(config(tmp_path, redis_url, sim.port, redis_extra="intake_connections = 1"))
    statuses: collections.Counter[int] = collections.Counter()
    retry_after: set[str] = set()
    async with running_daemon(cfg) as daemon, aiohttp.ClientSession() as http:
        assert daemon.http is not None
        url = f"http://127.0.0.1:{daemon.http.port}/v1/messages"
        await redis.execute_command("CLIENT", "PAUSE", 3000, "WRITE")

        async def once(n: int) -> None:
            body = {"to": f"+86137{n:08d}", "text": f"paused {n}", "idempotency_key": f"p{n}"}
            async with http.post(url, json=body, headers=AUTH) as r:
                statuses[r.status] += 1
                if r.status == 503:
                    retry_after.add(r.headers.get("Retry-After", ""))
                    assert (await r.json())["error"]["code"] == "unavailable"

        async def later(n: int) -> None:
            # Spread out: requests of one loop turn share one Redis call (issue 17), so
            # a burst would hold one connection only; later turns' calls wait for it.
            await asyncio.sleep(0.05 * n)
            await once(n)

        await asyncio.gather(*(later(n) for n in range(20)))
        # After the pause: the same requests again (idempotent), all accepted.
        retried: collections.Counter[int] = collections.Counter()
        ids = await asyncio.gather(*(
            post(http, url, {"to": f"+86137{n:08d}", "text": f"paused {n}",
                             "idempotency_key": f"p{n}"}, retried)
            for n in range(20)))
        records = await wait_final(redis, keys, ids, timeout_s=60)
    assert statuses[503] >= 1 and set(statuses) <= {202, 503}, statuses
    assert retry_after == {"1"}
    assert {r.get("state") for r in records.values()} == {"delivered"}
    texts = collections.Counter(s.text for s in sim.submissions if s.status == 0)
    assert set(texts.values()) == {1} and len(texts) == 20
