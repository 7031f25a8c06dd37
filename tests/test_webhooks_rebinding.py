"""Webhooks (issue 18): no DNS rebinding. A target's name is resolved once a connection,
by the resolver the sender is given, its addresses checked and connected to as checked:
a name server that answers a public address to the check and 127.0.0.1 to the connect
gets no request through. The name stays the request's Host."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp.abc import AbstractResolver, ResolveResult

from gatewayd.config import Config
from gatewayd.store.keys import Keys
from gatewayd.webhooks.runner import WebhookRunner
from gatewayd.webhooks.targets import GuardedResolver, PrivateTarget
from tests.e2e_helpers import Smsc, load, running_daemon, wait_final, write_config
from tests.test_webhooks import send, wait_for_async
from tests.webhook_helpers import Receiver, endpoint_toml, wait_for, webhooks_toml

PUBLIC = "93.184.216.34"  # never connected to: the test's resolver answers it only once


class Rebinding(AbstractResolver):
    """A hostile name server: ``first`` to the first question, ``then`` to every later
    one (an attacker's zone with a TTL of 0)."""

    def __init__(self, first: str, then: str) -> None:
        self.first, self.then = first, then
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.asked.append(host)
        addr = self.first if len(self.asked) == 1 else self.then
        return [{"hostname": host, "host": addr, "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        pass


@asynccontextmanager
async def sender(redis_url: str, keys: Keys, cfg: Config,
                 resolver: AbstractResolver) -> AsyncIterator[WebhookRunner]:
    """The webhook sender as `gatewayd webhooks run` runs it, with ``resolver``."""
    from gatewayd.store.connection import connect

    redis = connect(redis_url)
    runner = WebhookRunner(redis, keys, cfg, resolver=resolver)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await asyncio.wait_for(runner.ready.wait(), 10)
        yield runner
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await redis.aclose()


async def test_guarded_resolver_checks_every_answer() -> None:
    guard = GuardedResolver(Rebinding(PUBLIC, "127.0.0.1"))
    assert [h["host"] for h in await guard.resolve("hooks.rebind.test", 80)] == [PUBLIC]
    with pytest.raises(PrivateTarget, match=r"resolves to 127\.0\.0\.1"):
        await guard.resolve("hooks.rebind.test", 80)
    open_guard = GuardedResolver(Rebinding("10.0.0.1", "10.0.0.1"), allow_private=True)
    assert [h["host"] for h in await open_guard.resolve("x.test", 80)] == ["10.0.0.1"]


async def test_a_name_that_rebinds_to_loopback_gets_no_request_through(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """The early check (subscriptions.check_target) asks first and hears a public
    address; the connection asks again and hears 127.0.0.1, where the receiver listens:
    refused at connect time, no request arrives, the events are dead-lettered with the
    reason."""
    recv = Receiver()
    await recv.start()
    try:
        sim = await smsc(receipt_delay_s=0.02)
        ep = endpoint_toml(recv, "rebound", "/x").replace(
            "127.0.0.1", "hooks.rebind.test")
        toml = webhooks_toml(recv, endpoints=ep).replace(
            "enabled = true", "enabled = false").replace(
            "allow_private = true", "allow_private = false")
        cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port, extra=toml))
        resolver = Rebinding(PUBLIC, "127.0.0.1")
        async with running_daemon(cfg), sender(redis_url, keys, cfg, resolver):
            ids = await send(redis_url, cfg, 3)
            await wait_final(redis, keys, ids)
            # Each message's submitted and delivered event, refused at connect time.
            assert await wait_for_async(
                lambda: redis.xlen(keys.webhook_dead("rebound")), 2 * len(ids))
        assert recv.requests.total() == 0
        assert resolver.asked[0] == "hooks.rebind.test" and len(resolver.asked) >= 2
        rows = await redis.xrange(keys.webhook_dead("rebound"))
        assert rows and all(
            f["error"].startswith("refused: hooks.rebind.test resolves to 127.0.0.1")
            for _i, f in rows)
        assert await redis.zcard(keys.webhook_queue("rebound")) == 0
    finally:
        await recv.stop()


async def test_connections_go_to_the_resolved_address_under_the_name(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """With private targets allowed, a name no real DNS knows reaches the receiver: the
    connection went to the address the sender's resolver gave, and the request still
    names the host (Host header) as the URL does."""
    recv = Receiver()
    await recv.start()
    try:
        sim = await smsc(receipt_delay_s=0.02)
        ep = endpoint_toml(recv, "named", "/x").replace("127.0.0.1", "hooks.rebind.test")
        toml = webhooks_toml(recv, endpoints=ep).replace("enabled = true", "enabled = false")
        cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port, extra=toml))
        async with running_daemon(cfg), sender(redis_url, keys, cfg,
                                               Rebinding("127.0.0.1", "127.0.0.1")):
            ids = await send(redis_url, cfg, 3)
            await wait_final(redis, keys, ids)
            assert await wait_for(lambda: set(recv.by_message("/x")) == set(ids), 30)
        assert set(recv.hosts) == {f"hooks.rebind.test:{recv.port}"}
        assert recv.bad_signatures == 0
    finally:
        await recv.stop()


async def test_https_to_a_pinned_address_checks_the_certificate_under_the_name(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """An app behind a private CA (endpoint ``ca_file``), over https, the connection
    pinned to the address the sender's resolver gave (127.0.0.1 for every name). The
    certificate is checked under the URL's name, not the address: "localhost", which
    the certificate names, gets every event; "hooks.rebind.test", connected to the same
    address but not in the certificate, gets none (its events wait in its retry queue);
    without ``ca_file`` the system's CAs do not know the app's CA and nothing goes
    either. The TLS handshake carried the name (SNI): the receiver saw it."""
    from tests.security_helpers import make_pki

    pki = make_pki(tmp_path / "pki")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(pki.server_cert, pki.server_key)
    names: list[str] = []
    server.sni_callback = lambda _s, name, _c: names.append(name or "") or None
    recv = Receiver(tls=server)
    await recv.start()
    try:
        sim = await smsc(receipt_delay_s=0.02)
        base = recv.url("")
        eps = "".join((
            endpoint_toml(recv, "named", "/tls", ca_file=str(pki.ca)).replace(
                base, base.replace("127.0.0.1", "localhost")),
            endpoint_toml(recv, "othername", "/wrong", ca_file=str(pki.ca)).replace(
                base, base.replace("127.0.0.1", "hooks.rebind.test")),
            endpoint_toml(recv, "noca", "/noca").replace(
                base, base.replace("127.0.0.1", "localhost")),
        ))
        toml = webhooks_toml(recv, endpoints=eps).replace("enabled = true", "enabled = false")
        cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port, extra=toml))
        async with running_daemon(cfg), sender(redis_url, keys, cfg,
                                               Rebinding("127.0.0.1", "127.0.0.1")):
            ids = await send(redis_url, cfg, 3)
            await wait_final(redis, keys, ids)
            assert await wait_for(lambda: set(recv.by_message("/tls")) == set(ids), 30)
            assert await wait_for_async(
                lambda: _queued(redis, keys, ["othername", "noca"]), 2)
        assert recv.requests["/wrong"] == recv.requests["/noca"] == 0
        assert set(recv.hosts) == {f"localhost:{recv.port}"}
        assert "localhost" in names and "hooks.rebind.test" in names
        assert recv.bad_signatures == 0
    finally:
        await recv.stop()


async def _queued(redis: aioredis.Redis, keys: Keys, endpoints: list[str]) -> int:
    """How many of ``endpoints`` have events waiting in their retry queues."""
    return sum([await redis.zcard(keys.webhook_queue(e)) > 0 for e in endpoints])


@pytest.mark.parametrize("case", ["http", "missing", "not-pem"])
def test_ca_file_is_checked_with_the_config(tmp_path: Path, redis_url: str,
                                            case: str) -> None:
    """check-config's checks: ca_file only for https, and a readable PEM of CAs."""
    from gatewayd.errors import ConfigError

    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    url, ca = {"http": ("http://app.test/x", str(junk)),
               "missing": ("https://app.test/x", str(tmp_path / "none.pem")),
               "not-pem": ("https://app.test/x", str(junk))}[case]
    toml = (f'[webhooks]\nenabled = false\n[[webhooks.endpoints]]\nname = "x"\n'
            f'url = "{url}"\nca_file = "{ca}"\n')
    with pytest.raises(ConfigError, match=r"webhooks\.endpoints\[0\]\.ca_file"):
        load(write_config(tmp_path, redis_url=redis_url, sim_port=1, extra=toml))
