"""``webhooks.sender = "process"`` (the default): the daemon's webhook sender runs as a
child process it supervises. Through the real daemon, a real SMSC simulator, real Redis
and a real aiohttp receiver: events go out from the child (not the daemon's pid), its
per-endpoint metrics are on its own port and in the daemon's /metrics (up 0 there
while the child is away or hung), a child killed -9 is started again and no
event is lost, a HUP reaches it, and neither a SIGTERM nor a kill -9 of the daemon
leaves it behind."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import aiohttp
import psutil
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gatewayd.ops import metrics
from gatewayd.store.embedded import free_port
from gatewayd.store.keys import Keys
from tests.e2e_helpers import Smsc, load, running_daemon, wait_final, write_config
from tests.test_http_workers import _free_run
from tests.test_webhooks import complete, send
from tests.webhook_helpers import Receiver, endpoint_toml, wait_for, webhooks_toml


def default_sender(toml: str) -> str:
    """The [webhooks] section as an operator writes it: no ``sender`` key."""
    return toml.replace('sender = "inline"\n', "")


def delivered(text: str, endpoint: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'gatewayd_webhook_events_delivered_total{{endpoint="{endpoint}"'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def sender_up(text: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("gatewayd_webhook_sender_up "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def scrape(port: int) -> str:
    """GET /metrics: answered 200, every family named once (Prometheus refuses a scrape
    with a second HELP/TYPE line for a name), and parseable."""
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")]
    assert len(helps) == len(set(helps)), sorted(h for h in helps if helps.count(h) > 1)
    list(text_string_to_metric_families(text))
    return text


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_the_default_daemon_sends_from_a_supervised_child(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    recv = Receiver()
    await recv.start()
    mport = free_port()
    try:
        sim = await smsc(receipt_delay_s=0.02)
        eps = endpoint_toml(recv, "proc-main", "/main", tenant="*", batch=20, concurrency=1)
        path = write_config(tmp_path, redis_url=redis_url, sim_port=sim.port, http=True,
                            extra=default_sender(webhooks_toml(
                                recv, endpoints=eps,
                                extra=f'metrics_listen = "127.0.0.1:{mport}"')))
        cfg = load(path)
        assert cfg.webhooks.sender == "process"
        restarts = metrics.WEBHOOK_SENDER_RESTARTS._value.get()
        async with running_daemon(cfg) as daemon:
            assert daemon.webhooks is None and daemon.webhook_sender is not None
            sender = daemon.webhook_sender
            assert await wait_for(lambda: sender.pid() is not None, 10)
            first = sender.pid()
            assert first is not None and first != os.getpid()
            child = psutil.Process(first)
            assert child.ppid() == os.getpid()
            assert "webhooks" in child.cmdline() and "--child" in child.cmdline()

            ids = await send(redis_url, cfg, 100)
            assert await wait_for(lambda: complete(recv, "/main", ids), 60)
            # Sent by the child: its /metrics counts them; this process's registry (the
            # daemon's) has sent none for this endpoint.
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{mport}/metrics") as r:
                    assert r.status == 200
                    text = await r.text()
            assert delivered(text, "proc-main") >= 200
            assert "proc-main" not in [
                s.labels.get("endpoint") for m in metrics.REGISTRY.collect() for s in m.samples]

            # ... and the daemon's /metrics carries them (read from the child at the
            # scrape): the counter once the child has counted every answered event.
            assert daemon.http is not None
            dport = daemon.http.port
            answered = 0.0
            for _ in range(200):
                answered = float(len(recv.events["/main"]))
                if delivered(await scrape(mport), "proc-main") == answered:
                    break
                await asyncio.sleep(0.05)
            text = await scrape(dport)
            assert delivered(text, "proc-main") == answered >= 200
            assert sender_up(text) == 1.0
            assert 'gatewayd_webhook_request_seconds_count{endpoint="proc-main"}' in text
            assert "gatewayd_webhook_sender_processes 1.0" in text  # the daemon's own

            # kill -9 mid-delivery: started again, and every event still arrives.
            recv.delay_s = 0.02
            more = await send(redis_url, cfg, 400, prefix="86139")
            seen = len(recv.ids("/main"))
            assert await wait_for(lambda: len(recv.ids("/main")) >= seen + 100, 60)
            os.kill(first, signal.SIGKILL)
            # Gone, not yet started again (0.5 s at least): the daemon's /metrics still
            # answers, with its own series, and says the sender's are missing.
            assert await wait_for(lambda: sender.pid() is None, 20)
            text = await scrape(dport)
            assert sender_up(text) == 0.0
            assert delivered(text, "proc-main") == 0.0
            assert "gatewayd_webhook_sender_processes 0.0" in text
            assert await wait_for(lambda: sender.pid() not in (None, first), 20)
            assert metrics.WEBHOOK_SENDER_RESTARTS._value.get() == restarts + 1
            await wait_final(redis, keys, more, timeout_s=60)
            assert await wait_for(lambda: complete(recv, "/main", ids + more), 90), (
                len(recv.by_message("/main")))
            recv.delay_s = 0.0

            # HUP reaches it: an endpoint added to the file gets the next events.
            second = sender.pid()
            path.write_text(path.read_text(encoding="utf-8") + endpoint_toml(
                recv, "proc-added", "/added", tenant="*", batch=20), encoding="utf-8")
            os.kill(os.getpid(), signal.SIGHUP)  # the daemon's handler, in this loop
            await asyncio.sleep(2.0)  # the child's runner re-reads endpoints each second
            last = await send(redis_url, cfg, 20, prefix="86136")
            assert await wait_for(lambda: complete(recv, "/added", last), 60)
            assert sender.pid() == second  # reloaded in place, not restarted

            # A hung sender (stopped: its port accepts, nothing answers): the daemon's
            # scrape waits SCRAPE_TIMEOUT_S for it, then answers without its series.
            os.kill(second, signal.SIGSTOP)
            try:
                text = await scrape(dport)
                assert sender_up(text) == 0.0
                assert delivered(text, "proc-main") == 0.0
            finally:
                os.kill(second, signal.SIGCONT)
            assert sender_up(await scrape(dport)) == 1.0
        assert not alive(second)  # the daemon's stop stopped it
        assert recv.bad_signatures == 0
    finally:
        await recv.stop()


async def test_daemon_killed_or_stopped_leaves_no_sender_behind_and_loses_nothing(
    tmp_path: Path, redis_url: str, smsc: Smsc
) -> None:
    """`gatewayd run` (its own process) with the default sender: kill -9 of the daemon
    takes its sender down too; the next daemon's sender sends what was not sent; a
    SIGTERM stops daemon and sender, and no process is left."""
    recv = Receiver()
    recv.delay_s = 0.02
    await recv.start()
    log = (tmp_path / "procs.log").open("ab")
    procs: list[asyncio.subprocess.Process] = []
    try:
        sim = await smsc(receipt_delay_s=0.02)
        eps = endpoint_toml(recv, "proc-orphan", "/hook", batch=20, concurrency=1)
        path = write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                            extra=default_sender(webhooks_toml(recv, endpoints=eps)))
        cfg = load(path)
        ids = await send(redis_url, cfg, 600)

        async def start() -> tuple[asyncio.subprocess.Process, psutil.Process]:
            p = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gatewayd", "run", "-c", str(path),
                env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=log, stderr=log)
            procs.append(p)
            kids: list[psutil.Process] = []

            def found() -> bool:
                kids[:] = [c for c in psutil.Process(p.pid).children()
                           if "webhooks" in c.cmdline()]
                return bool(kids)

            assert await wait_for(found, 30)
            return p, kids[0]

        first, child = await start()
        assert await wait_for(lambda: len(recv.ids("/hook")) >= 200, 60)
        first.send_signal(signal.SIGKILL)
        await first.wait()
        assert await wait_for(lambda: not alive(child.pid), 10)  # no orphan sender
        got = len(recv.ids("/hook"))
        assert got < 1200  # killed mid-delivery

        second, child = await start()
        assert await wait_for(lambda: complete(recv, "/hook", ids), 120), (
            len(recv.by_message("/hook")))
        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), 30) == 0
        assert await wait_for(lambda: not alive(child.pid), 10)
        assert recv.bad_signatures == 0
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        log.close()
        await recv.stop()


async def test_the_senders_series_on_the_daemons_own_port_and_the_shared_one(
    tmp_path: Path, redis_url: str, smsc: Smsc
) -> None:
    """http.daemon_listens = false with an intake worker: the daemon's /metrics is on its
    own port, and the API port's /metrics (a worker forwards it to the daemon's): both
    carry the sender's series, read from its default metrics port (the one after the
    workers')."""
    recv = Receiver()
    await recv.start()
    try:
        sim = await smsc(receipt_delay_s=0.02)
        port, base = free_port(), _free_run(3)
        eps = endpoint_toml(recv, "proc-own-port", "/own", tenant="*", batch=20)
        path = write_config(tmp_path, redis_url=redis_url, sim_port=sim.port, http=True,
                            extra=default_sender(webhooks_toml(recv, endpoints=eps)))
        path.write_text(path.read_text(encoding="utf-8").replace(
            'listen = "127.0.0.1:0"',
            f'listen = "127.0.0.1:{port}"\nworkers = 2\nworker_metrics_port = {base}\n'
            "daemon_listens = false"), encoding="utf-8")
        cfg = load(path)
        assert cfg.webhooks.metrics_listen == ""  # the default: base + workers
        async with running_daemon(cfg) as daemon:
            assert daemon.webhook_sender is not None and daemon.http is not None
            assert daemon.http.port == base  # the daemon's own port
            ids = await send(redis_url, cfg, 30)
            assert await wait_for(lambda: complete(recv, "/own", ids), 60)

            async def shared_up() -> bool:
                try:
                    await scrape(port)
                except (aiohttp.ClientError, AssertionError):
                    return False
                return True

            for _ in range(400):  # the worker listening, the child's counter settled
                answered = float(len(recv.events["/own"]))
                if await shared_up() and \
                        delivered(await scrape(base + 2), "proc-own-port") == answered:
                    break
                await asyncio.sleep(0.05)
            for at in (base, port):
                text = await scrape(at)
                assert delivered(text, "proc-own-port") == answered >= 60, at
                assert sender_up(text) == 1.0, at
    finally:
        await recv.stop()


async def test_a_foreign_server_on_the_senders_port_is_not_merged(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another process holds the sender's metrics port (a second daemon's sender with the
    same ports, a stale server) and answers /metrics 200 with webhook series of its own:
    the daemon merges only an answer carrying the token it gave the child it started, so
    its /metrics has none of the foreign series and says the sender's are missing (up 0,
    one warning naming the cause). The sender sends all the same; once the port is free
    and the sender started again, its own series are merged."""
    recv = Receiver()
    await recv.start()
    mport = free_port()

    async def foreign_metrics(_request: web.Request) -> web.Response:
        return web.Response(
            body=b"# HELP gatewayd_webhook_events_delivered_total x\n"
                 b"# TYPE gatewayd_webhook_events_delivered_total counter\n"
                 b'gatewayd_webhook_events_delivered_total{endpoint="foreign"} 999.0\n',
            headers={"Content-Type": "text/plain; version=0.0.4",
                     "X-Gatewayd-Child": "another-daemons-token"})

    app = web.Application()
    app.router.add_get("/metrics", foreign_metrics)
    foreign = web.AppRunner(app, access_log=None)
    await foreign.setup()
    await web.TCPSite(foreign, "127.0.0.1", mport).start()
    caplog.set_level(logging.INFO, logger="gatewayd")
    try:
        sim = await smsc(receipt_delay_s=0.02)
        eps = endpoint_toml(recv, "proc-own", "/own", tenant="*", batch=20)
        cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port, http=True,
                                extra=default_sender(webhooks_toml(
                                    recv, endpoints=eps,
                                    extra=f'metrics_listen = "127.0.0.1:{mport}"'))))
        async with running_daemon(cfg) as daemon:
            sender = daemon.webhook_sender
            assert sender is not None and daemon.http is not None
            dport = daemon.http.port
            assert await wait_for(lambda: sender.pid() is not None, 10)
            first = sender.pid()
            ids = await send(redis_url, cfg, 30)
            await wait_final(redis, keys, ids, timeout_s=60)
            assert await wait_for(lambda: complete(recv, "/own", ids), 60)  # sent anyway
            text = await scrape(dport)
            assert 'endpoint="foreign"' not in text
            assert sender_up(text) == 0.0
            assert delivered(text, "proc-own") == 0.0  # the daemon's own series only
            said = [r.getMessage() for r in caplog.records
                    if "another process answers there" in r.getMessage()]
            assert len(said) == 1, said  # once, not at every scrape
            assert "not this daemon's webhook sender" in said[0]

            # The port free, the sender started again (a new token): its own series.
            await foreign.cleanup()
            assert first is not None
            os.kill(first, signal.SIGKILL)
            assert await wait_for(lambda: sender.pid() not in (None, first), 20)
            answered = float(len(recv.events["/own"]))
            more = await send(redis_url, cfg, 10, prefix="86135")
            await wait_final(redis, keys, more, timeout_s=60)
            assert await wait_for(lambda: complete(recv, "/own", ids + more), 60)
            since = 0.0  # events the new sender delivered: its counter, in the daemon's
            for _ in range(200):
                since = float(len(recv.events["/own"])) - answered
                text = await scrape(dport)
                if sender_up(text) == 1.0 and delivered(text, "proc-own") == since:
                    break
                await asyncio.sleep(0.05)
            assert sender_up(text) == 1.0
            assert delivered(text, "proc-own") == since >= 20
            assert 'endpoint="foreign"' not in text
    finally:
        await foreign.cleanup()
        await recv.stop()
