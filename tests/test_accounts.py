"""Accounts (issue 21): keys that belong to tenants, limits, usage, admin and CLI, across
two daemons sharing one Redis, over real HTTP to real SMPP; and /readyz apart from binds."""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from gatewayd.cli import main as cli_main
from gatewayd.daemon import Daemon
from gatewayd.sim.smpp.smsc import SmscSimulator
from gatewayd.store.keys import Keys
from tests.e2e_helpers import load, running_daemon, wait_final, write_config

ADMIN = "admin-secret-key"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
Smsc = Callable[..., Awaitable[SmscSimulator]]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def config(tmp_path: Path, redis_url: str, sim_port: int, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    p = write_config(d, redis_url=redis_url, sim_port=sim_port, http=True)
    digest = hashlib.sha256(ADMIN.encode()).hexdigest()
    text = p.read_text().replace('listen = "127.0.0.1:0"',
                                 f'listen = "127.0.0.1:0"\napi_keys = ["{digest}"]')
    p.write_text(text.replace("[daemon]\n", f'[daemon]\nconsumer = "{name}"\n', 1))
    return p


@asynccontextmanager
async def two_daemons(tmp_path: Path, redis_url: str,
                      sim_port: int) -> AsyncIterator[tuple[list[str], Path]]:
    """Two daemons on one Redis: their API base URLs, and one's config (for the CLI)."""
    async with AsyncExitStack() as stack:
        bases: list[str] = []
        path = tmp_path
        for name in ("a", "b"):
            path = config(tmp_path, redis_url, sim_port, name)
            d: Daemon = await stack.enter_async_context(running_daemon(load(path)))
            assert d.http is not None
            bases.append(f"http://127.0.0.1:{d.http.port}")
        yield bases, path


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    """`gatewayd account ...` (in a thread: it runs its own event loop)."""
    capsys.readouterr()
    rc = await asyncio.to_thread(cli_main, ["account", *argv])
    out = capsys.readouterr().out.strip()
    return rc, (json.loads(out.splitlines()[-1]) if out else None)


async def until_status(http: aiohttp.ClientSession, method: str, url: str, status: int,
                       code: str = "", **kw: Any) -> dict[str, Any]:
    """Repeat a request until it answers ``status`` (and error ``code`` when given):
    daemons' account caches expire in about a second."""
    deadline = time.monotonic() + 15
    while True:
        async with http.request(method, url, **kw) as r:
            body = await r.json()
            if r.status == status and (not code or body["error"]["code"] == code):
                return dict(body)
        assert time.monotonic() < deadline, (status, r.status, body)
        await asyncio.sleep(0.1)


def msg(n: int, **over: Any) -> dict[str, Any]:
    return {"to": f"+86139{n:08d}", "text": f"【京东】订单 {n} 已发货",
            "category": "transactional", **over}


async def test_account_keys_limits_and_usage_across_two_daemons(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys,
    smsc: Smsc, capsys: pytest.CaptureFixture[str],
) -> None:
    sim = await smsc(receipt_delay_s=0.02)
    async with two_daemons(tmp_path, redis_url, sim.port) as (bases, path), \
            aiohttp.ClientSession() as http:
        a, b = bases
        # Created through daemon a's admin API, with its first key.
        limits = {"daily": {"*": 6}, "priority_ceiling": "transactional",
                  "prefixes": ["+86"], "signatures": ["京东"]}
        async with http.post(f"{a}/admin/accounts", headers=ADMIN_AUTH,
                             json={"tenant": "acme", "limits": limits}) as r:
            assert r.status == 201, await r.text()
            created = await r.json()
        key = created["key"]["key"]
        assert created["account"]["keys"][0]["id"] == created["key"]["id"]
        assert "digest" not in json.dumps(created)
        async with http.post(f"{a}/admin/accounts", headers=ADMIN_AUTH,
                             json={"tenant": "acme"}) as r:
            assert r.status == 409
        rc, other = await cli(capsys, "create", "-c", str(path), "globex")
        assert rc == 0
        other_key = other["key"]["key"]

        # Daemon b honours the account at once (nothing cached there yet).
        batch = [msg(0), msg(1, tenant="acme"), msg(2, tenant="globex"),
                 msg(3, category="otp"), {**msg(4), "to": "+14155550100"},
                 msg(5, text="【淘宝】hello"), msg(6, category="marketing")]
        async with http.post(f"{b}/v1/messages", headers=bearer(key), json=batch) as r:
            assert r.status == 422
            results = (await r.json())["results"]
        fields = {x["index"]: x["errors"][0]["field"] for x in results if "errors" in x}
        assert fields == {2: "tenant", 3: "category", 4: "to", 5: "text"}
        ids = [x["id"] for x in results if "id" in x]
        assert len(ids) == 3  # indexes 0, 1 and 6 (marketing is below the ceiling)

        # Its messages carry its tenant; another account cannot read them.
        async with http.get(f"{a}/v1/messages/{ids[0]}", headers=bearer(key)) as r:
            assert r.status == 200 and (await r.json())["tenant"] == "acme"
        async with http.get(f"{a}/v1/messages/{ids[0]}", headers=bearer(other_key)) as r:
            assert r.status == 404
        # The sending role is not the admin role.
        async with http.get(f"{a}/admin/accounts", headers=bearer(key)) as r:
            assert r.status == 403
        async with http.post(f"{a}/admin/reload", headers=bearer(key)) as r:
            assert r.status == 403

        # The daily quota (6, every category together) is shared by the daemons: 3 used
        # through b, 3 more through a, then the 7th is refused saying which and when.
        async with http.post(f"{a}/v1/messages", headers=bearer(key),
                             json=[msg(10), msg(11), msg(12)]) as r:
            assert r.status == 202
            ids += [x["id"] for x in (await r.json())["results"]]
        async with http.post(f"{b}/v1/messages", headers=bearer(key), json=msg(13)) as r:
            assert r.status == 429
            refused = await r.json()
            retry_after = int(r.headers["Retry-After"])
        g = time.gmtime()
        midnight = calendar.timegm((g.tm_year, g.tm_mon, g.tm_mday, 0, 0, 0)) + 86400
        assert refused["error"]["code"] == "quota_exceeded"
        assert refused["limit"] == {"limit": "daily", "category": "*", "allowed": 6.0,
                                    "used": 6, "resets_at": float(midnight)}
        assert "daily quota" in refused["error"]["message"]
        assert 0 < retry_after <= 86400

        # Usage by the account's own key: sent and, after the receipts, delivered.
        await wait_final(redis, keys, ids, timeout_s=30)
        deadline = time.monotonic() + 15
        while True:
            async with http.get(f"{b}/v1/account/usage?days=2", headers=bearer(key)) as r:
                assert r.status == 200
                usage = await r.json()
            today = usage["days"][0]
            if today.get("delivered", {}).get("transactional") == 5:
                break
            assert time.monotonic() < deadline, usage
            await asyncio.sleep(0.1)
        assert today["sent"] == {"transactional": 5, "marketing": 1, "*": 6}
        assert today["delivered"] == {"transactional": 5, "marketing": 1}
        assert usage["month"]["sent"]["*"] == 6
        rc, shown = await cli(capsys, "usage", "-c", str(path), "acme")
        assert rc == 0 and shown["days"][0]["sent"]["*"] == 6

        # Limits changed through the CLI reach both daemons within a second or so.
        rc, _ = await cli(capsys, "set-limits", "-c", str(path), "acme",
                    '{"daily": {"*": 100}, "rate_per_s": 1, "burst": 2}')
        assert rc == 0
        for base in (a, b):  # requests of 2 empty the shared bucket (burst 2, 1/s)
            got = await until_status(http, "POST", f"{base}/v1/messages", 429,
                                     "rate_limited", headers=bearer(key),
                                     json=[msg(20), msg(21)])
            assert got["limit"]["limit"] == "rate" and got["limit"]["allowed"] == 1
        async with http.post(f"{b}/v1/messages", headers=bearer(key),
                             json=[msg(22), msg(23), msg(24)]) as r:
            assert r.status == 429
            got = await r.json()
        assert got["limit"]["limit"] == "burst" and "at most 2 a request" in \
            got["error"]["message"]

        # Rotation: a second key works beside the first; the first, revoked, stops
        # working on both daemons; last-used times are kept per key.
        rc, added = await cli(capsys, "add-key", "-c", str(path), "acme", "--label", "rotation")
        assert rc == 0
        new_key = added["key"]
        async with http.get(f"{a}/v1/account", headers=bearer(new_key)) as r:
            assert r.status == 200
            me = await r.json()
        assert me["tenant"] == "acme" and len(me["keys"]) == 2
        assert me["limits"]["rate_per_s"] == 1
        first = next(k for k in me["keys"] if k["id"] == created["key"]["id"])
        assert first["last_used_at"] is not None
        rc, _ = await cli(capsys, "revoke-key", "-c", str(path), "acme", created["key"]["id"])
        assert rc == 0
        for base in (a, b):
            await until_status(http, "GET", f"{base}/v1/account", 401, headers=bearer(key))
        async with http.get(f"{b}/v1/account", headers=bearer(new_key)) as r:
            assert r.status == 200

        # A key with an expiry in the past is refused.
        async with http.post(f"{a}/admin/accounts/acme/keys", headers=ADMIN_AUTH,
                             json={"expires_at": time.time() - 1}) as r:
            assert r.status == 201
            expired = (await r.json())["key"]
        async with http.get(f"{a}/v1/account", headers=bearer(expired)) as r:
            assert r.status == 401

        # Suspended through the admin API of a: both daemons refuse, until resumed.
        async with http.post(f"{a}/admin/accounts/acme/suspend", headers=ADMIN_AUTH) as r:
            assert r.status == 200 and (await r.json())["suspended"] is True
        for base in (a, b):
            await until_status(http, "GET", f"{base}/v1/account", 403, "suspended",
                               headers=bearer(new_key))
        rc, _ = await cli(capsys, "resume", "-c", str(path), "acme")
        assert rc == 0
        await until_status(http, "GET", f"{b}/v1/account", 200, headers=bearer(new_key))

        # The admin view: list, show (with the tenant's webhook endpoints, linked).
        await redis.hset(keys.webhook_endpoints, "acme-hook", json.dumps(
            {"name": "acme-hook", "url": "https://acme.example/hook", "tenant": "acme"}))
        async with http.get(f"{a}/admin/accounts/acme", headers=ADMIN_AUTH) as r:
            view = await r.json()
        assert [w["name"] for w in view["webhooks"]] == ["acme-hook"]
        async with http.get(f"{a}/admin/accounts", headers=ADMIN_AUTH) as r:
            assert {x["tenant"] for x in (await r.json())["accounts"]} == {"acme", "globex"}
        rc, _ = await cli(capsys, "show", "-c", str(path), "nobody")
        assert rc == 1
        capsys.readouterr()
        assert await asyncio.to_thread(cli_main, ["account", "list", "-c", str(path)]) == 0
        listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [x["tenant"] for x in listed] == ["acme", "globex"]
        assert not any("digest" in json.dumps(x) for x in listed)
        rc, _ = await cli(capsys, "set-limits", "-c", str(path), "acme", '{"daily": {"*": -1}}')
        assert rc == 2

        # The legacy admin key still sends, naming the tenant in the body.
        async with http.post(f"{a}/v1/messages", headers=ADMIN_AUTH,
                             json=msg(30, tenant="globex", category="otp")) as r:
            assert r.status == 202


async def test_admin_api_refuses_bad_input_with_4xx(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, smsc: Smsc,
) -> None:
    sim = await smsc()
    cfg = load(config(tmp_path, redis_url, sim.port, "a"))
    async with running_daemon(cfg) as d, aiohttp.ClientSession() as http:
        assert d.http is not None
        base = f"http://127.0.0.1:{d.http.port}"
        for body in (b"[", b"[1]", b'{"tenant": "a b"}', b'{"tenant": 5}',
                     b'{"tenant": "x", "limits": {"daily": {"nope": 1}}}',
                     b'{"tenant": "x", "limits": {"rate_per_s": "fast"}}',
                     b'{"tenant": "x", "limits": {"prefixes": ["abc"]}}'):
            async with http.post(f"{base}/admin/accounts", headers=ADMIN_AUTH,
                                 data=body) as r:
                assert r.status == 422, (body, await r.text())
                assert (await r.json())["error"]["code"] == "invalid"
        async with http.patch(f"{base}/admin/accounts/ghost/limits", headers=ADMIN_AUTH,
                              json={}) as r:
            assert r.status == 404
        async with http.get(f"{base}/admin/accounts/x/usage?days=99",
                            headers=ADMIN_AUTH) as r:
            assert r.status in (404, 422)
        # An unknown account-style key is 401, never the admin of an open listener.
        async with http.get(f"{base}/v1/account", headers=bearer("gwk_nope_nope")) as r:
            assert r.status == 401


async def test_readyz_is_intake_and_carriers_have_their_own(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, smsc: Smsc,
) -> None:
    sim = await smsc()
    cfg = load(config(tmp_path, redis_url, sim.port, "a"))
    async with running_daemon(cfg) as d, aiohttp.ClientSession() as http:
        assert d.http is not None
        base = f"http://127.0.0.1:{d.http.port}"
        async with http.get(f"{base}/readyz/carriers") as r:
            assert r.status == 200 and (await r.json())["carriers"] == {"sim": "bound"}
        await sim.stop(timeout_s=0)  # binds down: queuing is still fine
        body = await until_status(http, "GET", f"{base}/readyz/carriers", 503)
        assert body["carriers_bound"] is False
        async with http.get(f"{base}/readyz") as r:
            assert r.status == 200
            ready = await r.json()
        assert ready["ready"] is True and ready["redis"] == "ok"
        assert ready["carriers_bound"] is False
        async with http.post(f"{base}/v1/messages", headers=ADMIN_AUTH, json=msg(1)) as r:
            assert r.status == 202


async def test_a_charge_is_refunded_when_the_enqueue_fails_after_it(
    tmp_path: Path, smsc: Smsc,
) -> None:
    """The charge (rate and quotas) runs before the enqueue; an enqueue that then fails
    as a whole (here the Redis ACL refuses XLEN, which the queue-depth check runs before
    any write) answers 503 and gives the quota back, so the client's retry is not
    charged twice and a day's quota is not eaten by requests that queued nothing."""
    from gatewayd.store.embedded import EmbeddedRedis, free_port
    from tests.security_helpers import GATEWAYD_ACL

    server = EmbeddedRedis(tmp_path / "acl-redis", port=free_port(), extra_args=[
        "--user", "gatewayd", ">gw-pass-1", *GATEWAYD_ACL, "+xlen", "+hincrbyfloat",
        "+hexists", "+scan", "+keys", "+type", "+ttl", "+pttl", "+incr", "+hlen",
    ])
    server.start()
    admin = aioredis.from_url(server.url, decode_responses=True)
    try:
        sim = await smsc()
        user_url = f"redis://gatewayd:gw-pass-1@127.0.0.1:{server.port}/0"
        path = config(tmp_path, user_url, sim.port, "a")
        path.write_text(path.read_text() + "\n[queue]\nmax_queued = { transactional = 100 }\n")
        async with running_daemon(load(path)) as d, aiohttp.ClientSession() as http:
            assert d.http is not None
            base = f"http://127.0.0.1:{d.http.port}"
            async with http.post(f"{base}/admin/accounts", headers=ADMIN_AUTH, json={
                    "tenant": "acme", "limits": {"daily": {"*": 2}}}) as r:
                assert r.status == 201, await r.text()
                key = (await r.json())["key"]["key"]
            await admin.execute_command("ACL", "SETUSER", "gatewayd", "-xlen")
            for n in range(3):  # more than the quota: none of them is charged
                async with http.post(f"{base}/v1/messages", headers=bearer(key),
                                     json=msg(n, id=f"refund.{n}")) as r:
                    body = await r.json()
                    assert r.status == 503, body
                    assert body["error"]["code"] == "store_denied"
                    assert r.headers["Retry-After"] == "5"
                async with http.get(f"{base}/v1/messages/refund.{n}",
                                    headers=bearer(key)) as r:
                    assert r.status == 404  # nothing half-written
            async with http.get(f"{base}/v1/account/usage", headers=bearer(key)) as r:
                usage = await r.json()
            assert usage["days"][0].get("sent", {}).get("*", 0) == 0, usage
            await admin.execute_command("ACL", "SETUSER", "gatewayd", "+xlen")
            for n in range(2):  # the whole quota is still there
                async with http.post(f"{base}/v1/messages", headers=bearer(key),
                                     json=msg(10 + n)) as r:
                    assert r.status == 202, await r.text()
            async with http.post(f"{base}/v1/messages", headers=bearer(key),
                                 json=msg(12)) as r:
                assert r.status == 429, await r.text()
            async with http.get(f"{base}/metrics") as r:
                text = await r.text()
            assert 'gatewayd_redis_denied_total{op="http"} 3.0' in text
    finally:
        await admin.aclose()
        server.stop()
