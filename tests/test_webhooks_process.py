"""``webhooks.sender = "process"`` (the default): the daemon's webhook sender runs as a
child process it supervises. Through the real daemon, a real SMSC simulator, real Redis
and a real aiohttp receiver: events go out from the child (not the daemon's pid), its
per-endpoint metrics are on its own port, a child killed -9 is started again and no
event is lost, a HUP reaches it, and neither a SIGTERM nor a kill -9 of the daemon
leaves it behind."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import psutil
import redis.asyncio as aioredis

from gatewayd.ops import metrics
from gatewayd.store.embedded import free_port
from gatewayd.store.keys import Keys
from tests.e2e_helpers import Smsc, load, running_daemon, wait_final, write_config
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
        path = write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
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

            # kill -9 mid-delivery: started again, and every event still arrives.
            recv.delay_s = 0.02
            more = await send(redis_url, cfg, 400, prefix="86139")
            seen = len(recv.ids("/main"))
            assert await wait_for(lambda: len(recv.ids("/main")) >= seen + 100, 60)
            os.kill(first, signal.SIGKILL)
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
