"""The daemon's children, and the sender run by hand, wait out a Redis that is not up yet
(``redis.startup_wait_s``, as the daemon's own start does: gatewayd.store.connection.
redis_answers).

Each process is started as the daemon starts it (``gatewayd run --intake-worker 1``,
``gatewayd run --fanout-worker``) or as an operator does (``gatewayd webhooks run``),
before a real redis-server listens on its port: it says once that it waits, comes up
when Redis does and works (intake answers 202 and queues, the fan-out queues every
recipient, the sender pushes every event to a real receiver). With the wait at 0 each
exits 3 with the one-line error it gave before; a TERM while waiting stops it at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from gatewayd.campaigns import model
from gatewayd.config import load_config
from gatewayd.store.embedded import EmbeddedRedis, free_port
from gatewayd.store.keys import keys_for
from tests.e2e_helpers import Smsc, running_daemon, wait_final, write_config
from tests.test_campaign_fanout import LINKS, compiled, rows, setup_ab
from tests.test_http_workers import _free_run
from tests.test_webhooks import complete, send
from tests.webhook_helpers import Receiver, endpoint_toml, wait_for, webhooks_toml

WAITING = "Redis cannot answer"
NAMES = {"intake": "http worker 1", "fanout": "fan-out process", "webhooks": "webhook sender"}


def _config(tmp_path: Path, url: str, which: str, wait: float,
            recv: Receiver | None = None, sim_port: int = 1) -> tuple[Path, list[str]]:
    """The config file and the command line of ``which``."""
    extra = ""
    if which == "fanout":
        extra = LINKS + "[campaigns]\nfanout_batch = 20\n"
    elif which == "webhooks" and recv is not None:
        # Sent apart from the daemon: the daemon of this config does not send them.
        extra = webhooks_toml(recv, endpoints=endpoint_toml(recv, "late", "/late", batch=10)
                              ).replace("enabled = true", "enabled = false")
    path = write_config(tmp_path, redis_url=url, sim_port=sim_port, http=which == "intake",
                        extra=extra)
    text = path.read_text(encoding="utf-8").replace(
        "\n[redis]\n", f"\n[redis]\nstartup_wait_s = {wait}\n", 1)
    if which == "intake":
        port, base = free_port(), _free_run(2)
        text = text.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"\n'
                            f"workers = 2\nworker_metrics_port = {base}")
    path.write_text(text, encoding="utf-8")
    argv = {"intake": ["run", "-c", str(path), "--intake-worker", "1"],
            "fanout": ["run", "-c", str(path), "--fanout-worker"],
            "webhooks": ["webhooks", "run", "-c", str(path)]}[which]
    return path, [sys.executable, "-m", "gatewayd", *argv]


def _env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "REDIS_URL"},
            "PYTHONUNBUFFERED": "1"}


def _text(log: Path) -> str:
    return log.read_text()


def _lines(log: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in _text(log).splitlines() if x.startswith("{")]


async def _until_waiting(proc: asyncio.subprocess.Process, log: Path) -> None:
    deadline = time.monotonic() + 60
    while WAITING not in _text(log):
        assert proc.returncode is None, _text(log)
        assert time.monotonic() < deadline, _text(log)
        await asyncio.sleep(0.1)


async def _intake_works(path: Path, url: str) -> None:
    cfg = load_config(path)
    port = int(cfg.http.listen.rsplit(":", 1)[1])
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 30
        while True:
            try:
                async with http.post(f"http://127.0.0.1:{port}/v1/messages", json={
                        "to": "+8613900000001", "text": "after redis", "id": "late-1"}) as r:
                    assert r.status == 202, await r.text()
                    break
            except aiohttp.ClientConnectionError:  # not listening yet
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
    r = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        keys = keys_for(cfg)
        # Queued: in its class's stream, for the daemon's dispatchers.
        streams = [keys.queue(c) for c in cfg.queue.classes]
        assert sum([await r.xlen(s) for s in streams]) == 1
    finally:
        await r.aclose()


async def _fanout_works(path: Path, url: str) -> None:
    n = 60
    r = aioredis.Redis.from_url(url, decode_responses=True)
    keys = keys_for(load_config(path))
    try:
        c = await setup_ab(r, keys)
        await model.upload(r, keys, c, await compiled(r, keys, "A", "B"), iter(rows(n)),
                           fmt="jsonl", link_sample="https://s.example.cn/0000abcdefg",
                           max_segments=5)
        await model.change(r, keys, "c1", "start")
        # What the daemon's runner does with a campaign due now; the child only fans out.
        await model.change(r, keys, "c1", "run", now=time.time())
        deadline = time.monotonic() + 60
        while True:
            got = await model.get(r, keys, "c1")
            assert got is not None
            if got.produced == n:
                break
            assert time.monotonic() < deadline, got.produced
            await asyncio.sleep(0.1)
    finally:
        await r.aclose()


async def _webhooks_work(path: Path, url: str, recv: Receiver) -> None:
    cfg = load_config(path)
    keys = keys_for(cfg)
    r = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        # Up: it holds the lease and has made its cursor (at the streams' ends: what
        # they held before is history to a sender that starts).
        deadline = time.monotonic() + 30
        while not await r.exists(keys.webhook_cursor):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        ids = await send(url, cfg, 20)
        async with running_daemon(cfg):  # dispatches; sends no webhook (enabled = false)
            await wait_final(r, keys, ids, timeout_s=60)
            assert await wait_for(lambda: complete(recv, "/late", ids), 60), recv.events
    finally:
        await r.aclose()


@pytest.mark.parametrize("which", ["intake", "fanout", "webhooks"])
async def test_started_before_redis_it_waits_comes_up_with_it_and_works(
        tmp_path: Path, which: str, smsc: Smsc) -> None:
    recv = Receiver()
    await recv.start()
    sim = await smsc(receipt_delay_s=0.01)
    server = EmbeddedRedis(tmp_path / "r", port=free_port())
    path, argv = _config(tmp_path, server.url, which, 60, recv, sim.port)
    log = tmp_path / "proc.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=out, stderr=asyncio.subprocess.STDOUT, env=_env())
    try:
        await _until_waiting(proc, log)
        await asyncio.sleep(1.5)  # a few refusals more: still waiting, not exited
        assert proc.returncode is None, _text(log)
        await asyncio.to_thread(server.start)
        if which == "intake":
            await _intake_works(path, server.url)
        elif which == "fanout":
            await _fanout_works(path, server.url)
        else:
            await _webhooks_work(path, server.url, recv)
        lines = _lines(log)
        waits = [x for x in lines if WAITING in str(x["msg"])]
        assert len(waits) == 1 and waits[0]["level"] == "warning", waits  # said once
        assert f"({NAMES[which]}: " in str(waits[0]["msg"])
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0, _text(log)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await recv.stop()
        server.stop()


@pytest.mark.parametrize("which", ["intake", "fanout", "webhooks"])
async def test_without_a_wait_it_exits_3_in_one_line(tmp_path: Path, which: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    _path, argv = _config(tmp_path, url, which, 0)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env())
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 3, (out, err)
    lines = (out + err).decode().strip().splitlines()
    assert len(lines) == 1, lines
    line = json.loads(lines[0])
    assert line["level"] == "error"
    assert str(line["msg"]).startswith("startup failed: cannot reach Redis at " + url)


async def test_a_term_while_waiting_stops_it_at_once(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    _path, argv = _config(tmp_path, url, "fanout", 60)
    log = tmp_path / "proc.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=out, stderr=asyncio.subprocess.STDOUT, env=_env())
    try:
        await _until_waiting(proc, log)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0, _text(log)
        assert time.monotonic() - began < 5
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_child_started_again_during_a_redis_restart_waits_for_it(
        tmp_path: Path, smsc: Smsc, capfd: pytest.CaptureFixture[str]) -> None:
    """The case the wait is for: Redis restarts under a running daemon and its fan-out
    child dies meanwhile (kill -9 here). The daemon starts it again at once; it waits
    for Redis instead of exiting 3 and being started again and again (one restart
    counted, the same process throughout), and fans out once Redis is back."""
    from gatewayd.ops import metrics
    from tests.test_campaign_fanout_process import _child_pid

    server = EmbeddedRedis(tmp_path / "r", port=free_port(), persist=True)
    url = server.start()
    sim = await smsc(receipt_delay_s=0.01)
    path = write_config(tmp_path, redis_url=url, sim_port=sim.port,
                        extra=LINKS + "[campaigns]\nfanout_process = true\n")
    path.write_text(path.read_text(encoding="utf-8").replace(
        "\n[redis]\n", "\n[redis]\nstartup_wait_s = 60\n", 1), encoding="utf-8")
    cfg = load_config(path)
    try:
        async with running_daemon(cfg) as d:
            assert await wait_for(lambda: _child_pid(d) != 0, 30)
            first = _child_pid(d)
            restarts = metrics.FANOUT_RESTARTS._value.get()
            await asyncio.to_thread(server.stop)
            os.kill(first, signal.SIGKILL)
            assert await wait_for(lambda: _child_pid(d) not in (0, first), 20)
            second = _child_pid(d)
            out = ""  # the children's log lines (their stdout is this process's)
            deadline = time.monotonic() + 30
            while f"{WAITING} (fan-out process: " not in out:
                assert time.monotonic() < deadline, out
                await asyncio.sleep(0.1)
                out += capfd.readouterr().out
            await asyncio.sleep(2.0)  # Redis still down: it waits, it does not exit
            out += capfd.readouterr().out
            assert "startup failed" not in out, out
            assert _child_pid(d) == second
            assert metrics.FANOUT_RESTARTS._value.get() == restarts + 1
            await asyncio.to_thread(server.start)
            await _fanout_works_with_the_daemon(url, cfg)
            assert _child_pid(d) == second
    finally:
        server.stop()


async def _fanout_works_with_the_daemon(url: str, cfg: object) -> None:
    n = 60
    r = aioredis.Redis.from_url(url, decode_responses=True)
    keys = keys_for(cfg)  # type: ignore[arg-type]
    try:
        c = await setup_ab(r, keys)
        await model.upload(r, keys, c, await compiled(r, keys, "A", "B"), iter(rows(n)),
                           fmt="jsonl", link_sample="https://s.example.cn/0000abcdefg",
                           max_segments=5)
        await model.change(r, keys, "c1", "start")  # the daemon runs it, the child fans out
        deadline = time.monotonic() + 60
        while True:
            got = await model.get(r, keys, "c1")
            assert got is not None
            if got.produced == n:
                break
            assert time.monotonic() < deadline, got.produced
            await asyncio.sleep(0.1)
    finally:
        await r.aclose()
