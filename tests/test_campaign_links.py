"""The short-link redirector over real HTTP on real Redis: 302s, clicks told from link
previews, first click and count, the clicked event through the ledger, the funnel and
the cooling-off reset; nothing else is served."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from gatewayd.campaigns import funnel
from gatewayd.campaigns.links import LinkMaker, b62, link_fields, read, write
from gatewayd.config import load_config
from gatewayd.http.links import LinkServer
from gatewayd.pipeline.events import Ledger
from gatewayd.store.keys import Keys
from tests.e2e_helpers import write_config

BROWSER = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/124.0 Mobile Safari/537.36")


@pytest.fixture
async def server(redis: aioredis.Redis, redis_url: str, keys: Keys,
                 tmp_path: Path) -> AsyncIterator[LinkServer]:
    cfg = load_config(write_config(tmp_path, redis_url=redis_url, sim_port=1))
    srv = LinkServer("127.0.0.1:0", redis, keys, Ledger(keys, cfg, redis))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def a_link(redis: aioredis.Redis, keys: Keys, code: str = "1abcdefg") -> str:
    pipe = redis.pipeline(transaction=False)
    write(pipe, keys, code, link_fields("https://shop.example.com/p/9?x=1", "c9.1",
                                        keys.funnel("c9"), "B", "c9", "PROMO",
                                        "8613800138000", "1.0"), 3600)
    pipe.hset(keys.marketing("8613800138000"), mapping={"n": 3, "last": "1.0"})
    # (the counts hash expires with the link)
    await pipe.execute()
    return code


async def test_clicks_previews_and_nothing_else(redis: aioredis.Redis, keys: Keys,
                                                server: LinkServer) -> None:
    code = await a_link(redis, keys)
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as s:
        async def get(path: str, ua: str = BROWSER, method: str = "GET") -> aiohttp.ClientResponse:
            async with s.request(method, base + path, headers={"User-Agent": ua},
                                 allow_redirects=False) as r:
                await r.read()
                return r
        r = await get(f"/{code}")
        assert r.status == 302 and r.headers["Location"] == "https://shop.example.com/p/9?x=1"
        assert r.headers["Cache-Control"] == "no-store"
        assert (await get(f"/{code}")).status == 302
        assert (await get(f"/{code}", method="HEAD")).status == 302  # a preview
        assert (await get(f"/{code}", ua="facebookexternalhit/1.1")).status == 302
        assert (await get(f"/{code}", ua="WhatsApp/2.23.20.0 A")).status == 302
        assert (await get("/1zzzzzzz")).status == 404  # unknown (or expired)
        assert (await get("/")).status == 404
        assert (await get(f"/{code}/x")).status == 404
        assert (await get(f"/{code}?a=1")).status == 404
        assert (await get("/metrics")).status == 404  # nothing of the API here
        assert (await get(f"/{code}", method="POST")).status == 405
    for _ in range(500):
        counts = await funnel.read(redis, keys, "c9")
        if counts.get("previews", 0) == 3:
            break
        await asyncio.sleep(0.02)
    assert counts == {"clicks": 2, "clicks|B": 2, "clicked": 1, "clicked|B": 1,
                      "previews": 3, "previews|B": 3}
    link = await read(redis, keys, code) or {}
    assert link["clicks"] == "2" and link["previews"] == "3" and float(link["first"]) > 0
    assert 0 < await redis.ttl(keys.link_counts(code)) <= 3600
    assert await redis.hget(keys.marketing("8613800138000"), "n") == "0"
    ev = [f for _sid, f in await redis.xrange(keys.events) if f["state"] == "clicked"]
    assert [(e["id"], e["first"], e["clicks"]) for e in ev] == [("c9.1", "1", "1"),
                                                                 ("c9.1", "0", "2")]
    assert ev[0]["campaign"] == "c9" and ev[0]["variant"] == "B" and ev[0]["to"] == \
        "+86138****8000"


async def test_concurrent_clicks_share_round_trips(redis: aioredis.Redis, keys: Keys,
                                                   server: LinkServer) -> None:
    codes = [await a_link(redis, keys, f"{b62(i)}secret{i}") for i in range(50)]
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as s:
        async def one(c: str) -> int:
            async with s.get(f"{base}/{c}", headers={"User-Agent": BROWSER},
                             allow_redirects=False) as r:
                return r.status
        statuses = await asyncio.gather(*(one(c) for c in codes * 4))
    assert statuses == [302] * 200
    for _ in range(500):
        if (await funnel.read(redis, keys, "c9")).get("clicks") == 200:
            break
        await asyncio.sleep(0.02)
    assert (await funnel.read(redis, keys, "c9"))["clicked"] == 50


async def test_codes_are_unique_and_unguessable(redis: aioredis.Redis, keys: Keys) -> None:
    maker = LinkMaker(redis, keys, base_url="https://s.cn", random_chars=7, block=100)
    await maker.reserve(300)
    codes = [maker.take() for _ in range(300)]
    assert len(set(codes)) == 300
    assert all(len(c) >= 8 for c in codes) and maker.url(codes[0]).startswith("https://s.cn/")
    other = LinkMaker(redis, keys, base_url="https://s.cn/", random_chars=7)
    await other.reserve(1)  # another process: its own block of the counter
    assert other.take()[:-7] not in {c[:-7] for c in codes}
    # The random parts differ even where counters are alike.
    assert len({c[-7:] for c in codes}) == 300
    # A code's head is its counter in base 62, across the digits' carries (the maker
    # keeps the leading digits of a run of counters).
    for start in (3_840, 238_325, 14_776_333):
        await redis.set(keys.link_seq, start - 1)
        maker = LinkMaker(redis, keys, base_url="https://s.cn", random_chars=7, block=10)
        await maker.reserve(8)
        assert [maker.take()[:-7] for _ in range(8)] == [b62(start + i) for i in range(8)]
