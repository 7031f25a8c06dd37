"""Webhook endpoints managed through the admin HTTP API (issue 18 item 1) against a
running daemon, a real SMSC simulator and a real aiohttp receiver: add, events arrive,
pause/resume, dead letters and replay, test-fire, remove; an account's key gets 403;
bad input 4xx; a private target refused unless allowed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from gatewayd.store.keys import Keys
from tests.e2e_helpers import Smsc, load, running_daemon, wait_final, write_config
from tests.test_webhooks import send, wait_for_async
from tests.webhook_helpers import Receiver, endpoint_toml, wait_for, webhooks_toml

ADMIN = "admin-webhooks-key"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def config(tmp_path: Path, redis_url: str, sim_port: int, webhooks: str) -> Path:
    p = write_config(tmp_path, redis_url=redis_url, sim_port=sim_port, http=True,
                     extra=webhooks)
    digest = hashlib.sha256(ADMIN.encode()).hexdigest()
    p.write_text(p.read_text().replace('listen = "127.0.0.1:0"',
                                       f'listen = "127.0.0.1:0"\napi_keys = ["{digest}"]'))
    return p


async def test_endpoints_through_the_admin_api(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    recv = Receiver()
    await recv.start()
    try:
        sim = await smsc(receipt_delay_s=0.02)
        cfg = load(config(tmp_path, redis_url, sim.port,
                          webhooks_toml(recv, endpoints=endpoint_toml(recv, "conf", "/c"))))
        async with running_daemon(cfg) as daemon, aiohttp.ClientSession() as http:
            runner = daemon.webhooks
            assert runner is not None and daemon.http is not None
            base = f"http://127.0.0.1:{daemon.http.port}/admin/webhooks"
            spec = {"name": "rt", "url": recv.url("/rt"), "tenant": "*",
                    "events": ["final"], "secret": recv.secret}
            async with http.post(base, headers=AUTH, json=spec) as r:
                assert r.status == 201, await r.text()
                added = await r.json()
            assert added["source"] == "redis" and added["signed"] and not added["paused"]
            assert "secret" not in added
            assert await wait_for(lambda: "rt" in runner.senders, 10)
            first = await send(redis_url, cfg, 10, prefix="86141")
            assert await wait_for(lambda: set(first) <= set(recv.by_message("/rt")), 30)

            async with http.post(f"{base}/rt/pause", headers=AUTH) as r:
                assert r.status == 200 and (await r.json())["paused"]
            assert await wait_for(lambda: runner.senders["rt"].paused, 10)
            held = await send(redis_url, cfg, 5, prefix="86142")
            await wait_final(redis, keys, held, timeout_s=30)
            assert await wait_for(
                lambda: runner.senders["rt"].stored + len(runner.senders["rt"].spill) >= 5)
            assert not set(held) & set(recv.by_message("/rt"))  # none while paused
            async with http.get(base, headers=AUTH) as r:
                assert r.status == 200
                listed = {e["name"]: e for e in (await r.json())["endpoints"]}
            assert set(listed) == {"conf", "rt"}
            assert listed["conf"]["source"] == "config" and not listed["conf"]["paused"]
            assert listed["rt"]["paused"] and listed["rt"]["queued"] == 5
            async with http.post(f"{base}/rt/resume", headers=AUTH) as r:
                assert r.status == 200 and not (await r.json())["paused"]
            assert await wait_for(lambda: set(held) <= set(recv.by_message("/rt")), 30)

            recv.script["/rt"] = ["400"]
            [bad] = await send(redis_url, cfg, 1, prefix="86143")
            assert await wait_for(lambda: not recv.script["/rt"])  # the 400 was served
            assert await wait_for_async(lambda: redis.xlen(keys.webhook_dead("rt")), 1)
            async with http.get(f"{base}/rt/dead", headers=AUTH) as r:
                assert r.status == 200
                dead = (await r.json())["dead"]
            assert [d["event"]["message_id"] for d in dead] == [bad]
            assert dead[0]["error"] == "HTTP 400"
            async with http.post(f"{base}/rt/replay", headers=AUTH) as r:
                assert r.status == 200 and (await r.json())["replayed"] == 1
            assert await wait_for(lambda: bad in recv.by_message("/rt"), 30)
            assert await redis.xlen(keys.webhook_dead("rt")) == 0
            async with http.post(f"{base}/rt/replay", headers=AUTH) as r:
                assert r.status == 200 and (await r.json())["replayed"] == 0

            async with http.post(f"{base}/rt/test", headers=AUTH) as r:
                assert r.status == 200
                fired = await r.json()
            assert fired["ok"] and fired["status"] == 200, fired
            assert recv.events["/rt"][-1]["kind"] == "test"

            # An account's key may not touch any of it.
            async with http.post(f"http://127.0.0.1:{daemon.http.port}/admin/accounts",
                                 headers=AUTH, json={"tenant": "acme"}) as r:
                assert r.status == 201, await r.text()
                acct = {"Authorization": f"Bearer {(await r.json())['key']['key']}"}
            for method, url in (("GET", base), ("POST", base), ("DELETE", f"{base}/rt"),
                                ("POST", f"{base}/rt/pause"), ("GET", f"{base}/rt/dead"),
                                ("POST", f"{base}/rt/replay"), ("POST", f"{base}/rt/test")):
                async with http.request(method, url, headers=acct, json=spec) as r:
                    assert r.status == 403, (method, url, r.status)
                async with http.request(method, url, json=spec) as r:
                    assert r.status == 401, (method, url, r.status)
            assert not runner.senders["rt"].paused

            # Bad input: 4xx, nothing stored.
            for body in ({"url": recv.url("/x")}, {"name": "x", "url": "ftp://h/"},
                         {"name": "x", "url": recv.url("/x"), "events": ["nope"]},
                         {"name": "x", "url": recv.url("/x"), "batch": "many"},
                         {"name": "x", "url": recv.url("/x"), "bogus": 1},
                         {"name": "conf", "url": recv.url("/x")}, [1, 2]):
                async with http.post(base, headers=AUTH, json=body) as r:
                    assert r.status == 422, (body, r.status, await r.text())
            async with http.post(base, headers=AUTH, data=b"{not json") as r:
                assert r.status == 422
            async with http.get(f"{base}/rt/dead?count=-1", headers=AUTH) as r:
                assert r.status == 422
            for method, url in (("DELETE", f"{base}/ghost"), ("POST", f"{base}/ghost/pause"),
                                ("GET", f"{base}/ghost/dead"), ("POST", f"{base}/ghost/test"),
                                ("POST", f"{base}/ghost/replay")):
                async with http.request(method, url, headers=AUTH) as r:
                    assert r.status == 404, (method, url, r.status)
            async with http.delete(f"{base}/conf", headers=AUTH) as r:
                assert r.status == 422  # a config endpoint is changed in the config
            assert not await redis.hexists(keys.webhook_endpoints, "x")

            async with http.delete(f"{base}/rt", headers=AUTH) as r:
                assert r.status == 200
            assert await wait_for(lambda: "rt" not in runner.senders, 10)
            async with http.delete(f"{base}/rt", headers=AUTH) as r:
                assert r.status == 404
        assert recv.bad_signatures == 0
    finally:
        await recv.stop()


async def test_private_target_refused_through_the_api(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    recv = Receiver()
    await recv.start()
    try:
        sim = await smsc(receipt_delay_s=0.02)
        cfg = load(config(tmp_path, redis_url, sim.port, webhooks_toml(
            recv, endpoints="").replace("allow_private = true", "allow_private = false")))
        async with running_daemon(cfg) as daemon, aiohttp.ClientSession() as http:
            assert daemon.http is not None
            base = f"http://127.0.0.1:{daemon.http.port}/admin/webhooks"
            async with http.post(base, headers=AUTH,
                                 json={"name": "inside", "url": recv.url("/y")}) as r:
                assert r.status == 422
                assert "private address" in (await r.json())["error"]["message"]
            assert not await redis.hexists(keys.webhook_endpoints, "inside")
    finally:
        await recv.stop()
