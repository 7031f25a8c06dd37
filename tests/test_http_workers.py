"""http.workers: intake-only processes sharing the daemon's port (SO_REUSEPORT).

A real `gatewayd run` with `http.workers = 3` (the daemon and two workers), a real SMSC
simulator and real HTTP: requests on fresh connections land on every process, every
message is queued once and delivered, a killed worker is started again, SIGHUP reaches
the workers, /metrics on the shared port is the daemon's, and stopping (or killing) the
daemon leaves no process behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from bench.common import alive, child_pids
from gatewayd.store.embedded import free_port
from gatewayd.store.keys import Keys
from tests.e2e_helpers import Smsc, wait_final, write_config

WORKERS = 3


def _free_run(n: int) -> int:
    """A port with the n-1 after it free too (the processes' own metrics ports)."""
    while True:
        base = free_port()
        if base + n > 65535:
            continue
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return base


def _children(pid: int) -> set[int]:
    """The daemon's intake workers (not its other children: the fan-out process)."""
    return set(child_pids(pid, b"--intake-worker"))


def _sample(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.split("{", 1)[0].split(" ", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _get(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as r:
        assert r.status == 200, url
        return await r.text()


async def _wait_up(http: aiohttp.ClientSession, urls: list[str], proc: asyncio.subprocess.Process,
                   timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for url in urls:
        while True:
            assert proc.returncode is None, "the daemon exited"
            try:
                async with http.get(url) as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert loop.time() < deadline, f"{url} did not answer"
            await asyncio.sleep(0.1)


async def _start(tmp_path: Path, redis_url: str, sim_port: int, workers: int = WORKERS,
                 http_extra: str = "") -> tuple[asyncio.subprocess.Process, int, int]:
    port, base = free_port(), _free_run(workers)
    path = write_config(tmp_path, redis_url=redis_url, sim_port=sim_port, http=True,
                        extra="[queue]\nread_batch = 50\n")
    text = path.read_text(encoding="utf-8").replace(
        'listen = "127.0.0.1:0"',
        f'listen = "127.0.0.1:{port}"\nworkers = {workers}\nworker_metrics_port = {base}'
        f'\n{http_extra}')
    path.write_text(text, encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd", "run", "-c", str(path),
        stdout=asyncio.subprocess.DEVNULL, env=dict(os.environ))
    return proc, port, base


async def test_workers_share_the_port_queue_once_restart_and_stop(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    sim = await smsc(receipt_delay_s=0.01)
    proc, port, base = await _start(tmp_path, redis_url, sim.port)
    own = [f"http://127.0.0.1:{base + i}" for i in range(WORKERS)]
    try:
        async with aiohttp.ClientSession() as http:
            await _wait_up(http, [f"{u}/readyz" for u in own], proc)
            workers = _children(proc.pid)
            assert len(workers) == WORKERS - 1
            # One message a request, each on a new connection: the kernel spreads them.
            n = 240
            ids = [f"w-{i}" for i in range(n)]
            conn = aiohttp.TCPConnector(force_close=True, limit=16)
            async with aiohttp.ClientSession(connector=conn) as fresh:
                async def post(i: int) -> None:
                    async with fresh.post(f"http://127.0.0.1:{port}/v1/messages", json={
                            "to": f"+86139{i:08d}", "text": f"m{i}", "id": ids[i]}) as r:
                        assert r.status == 202, await r.text()
                        assert (await r.json())["results"][0]["id"] == ids[i]
                await asyncio.gather(*(post(i) for i in range(n)))
            served = []
            for u in own:
                m = await _get(http, f"{u}/metrics")
                served.append(_sample(m, "gatewayd_http_requests_total",
                                      route="/v1/messages", status="202"))
            assert sum(served) == n
            assert all(s > 0 for s in served), served  # the daemon and both workers
            records = await wait_final(redis, keys, ids, timeout_s=60)
            assert {r.get("state") for r in records.values()} == {"delivered"}
            sent = [s.destination.lstrip("+") for s in sim.submissions]
            assert sorted(sent) == sorted(f"86139{i:08d}" for i in range(n))  # once each
            # /metrics on the shared port is the daemon's, whichever process answers.
            for _ in range(6):
                async with aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(force_close=True)) as fresh:
                    m = await _get(fresh, f"http://127.0.0.1:{port}/metrics")
                assert _sample(m, "gatewayd_http_workers") == WORKERS - 1
                assert _sample(m, "gatewayd_http_requests_total", route="/v1/messages",
                               status="202") == served[0]
            # HUP reaches the workers: each reloads its policy and the live [http] keys,
            # so an API key added to the file is asked for by every process.
            path = tmp_path / "gw.toml"
            digest = hashlib.sha256(b"worker-key").hexdigest()
            path.write_text(path.read_text(encoding="utf-8").replace(
                f"workers = {WORKERS}", f'workers = {WORKERS}\napi_keys = ["{digest}"]'),
                encoding="utf-8")
            proc.send_signal(signal.SIGHUP)
            for u in own:
                for _ in range(100):
                    m = await _get(http, f"{u}/metrics")
                    if (_sample(m, "gatewayd_policy_reloads_total", result="ok") == 1
                            and _sample(m, "gatewayd_config_reloads_total", result="ok") == 1):
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"{u}: no reload after SIGHUP")
            answers = set()
            for i in range(12):  # new connections: the kernel spreads them over processes
                async with aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(force_close=True)) as fresh:
                    async with fresh.post(f"http://127.0.0.1:{port}/v1/messages", json={
                            "to": "+8613900088888", "text": "no key", "id": f"nk-{i}"}) as r:
                        answers.add(r.status)
            assert answers == {401}, answers
            auth = {"Authorization": "Bearer worker-key"}
            # A killed worker is started again (and counted).
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            for _ in range(200):
                now = _children(proc.pid)
                if len(now) == WORKERS - 1 and victim not in now:
                    break
                await asyncio.sleep(0.05)
            assert victim not in _children(proc.pid)
            assert len(_children(proc.pid)) == WORKERS - 1
            await _wait_up(http, [f"{u}/readyz" for u in own], proc)
            m = await _get(http, f"{own[0]}/metrics")
            assert _sample(m, "gatewayd_http_worker_restarts_total") == 1
            async with http.post(f"http://127.0.0.1:{port}/v1/messages", headers=auth, json={
                    "to": "+8613900099999", "text": "after", "id": "w-after"}) as r:
                assert r.status == 202
            last = _children(proc.pid)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert not any(alive(p) for p in last | workers)  # stop leaves no process
    assert (await wait_final(redis, keys, ["w-after"], timeout_s=1))  # queued, once
    assert await redis.exists(keys.status("w-after"))


async def test_a_killed_daemon_takes_its_workers_with_it(
    tmp_path: Path, redis_url: str, smsc: Smsc
) -> None:
    sim = await smsc()
    proc, _port, base = await _start(tmp_path, redis_url, sim.port)
    try:
        async with aiohttp.ClientSession() as http:
            await _wait_up(http, [f"http://127.0.0.1:{base + i}/healthz"
                                  for i in range(WORKERS)], proc)
        workers = _children(proc.pid)
        assert len(workers) == WORKERS - 1
    finally:
        proc.kill()
        await proc.wait()
    # A bound, not a speed: each worker gets SIGTERM from the kernel (parent-death
    # signal) and stops its listener and Redis pool; on a loaded 2-core machine that
    # once took longer than the 10 s this allowed.
    for _ in range(600):
        if not any(alive(p) for p in workers):
            break
        await asyncio.sleep(0.05)
    assert not any(alive(p) for p in workers)


def test_workers_need_a_fixed_port(tmp_path: Path) -> None:
    from gatewayd.config import load_config
    from gatewayd.errors import ConfigError

    path = write_config(tmp_path, redis_url="redis://127.0.0.1:1", sim_port=1, http=True)
    path.write_text(path.read_text(encoding="utf-8").replace(
        'listen = "127.0.0.1:0"', 'listen = "127.0.0.1:0"\nworkers = 2'), encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as e:
        assert re.search(r"http\.workers.*fixed port", str(e)), e
    else:
        raise AssertionError("http.workers with port 0 was accepted")


def _nice(pid: int) -> int:
    """The process's niceness (field 19 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


async def test_a_daemon_that_does_not_listen_leaves_intake_to_niced_workers(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """http.daemon_listens = false: the API port is the workers' alone (an intake flood
    never runs in the dispatching loop), the daemon's whole API is on its own port,
    and http.workers_nice lowers the workers' CPU priority; nothing is lost."""
    sim = await smsc(receipt_delay_s=0.01)
    proc, port, base = await _start(tmp_path, redis_url, sim.port, workers=3,
                                    http_extra="daemon_listens = false\nworkers_nice = 7")
    own = [f"http://127.0.0.1:{base + i}" for i in range(3)]
    try:
        async with aiohttp.ClientSession() as http:
            await _wait_up(http, [f"{u}/readyz" for u in own], proc)
            workers = _children(proc.pid)
            assert len(workers) == 2
            # The kernel's niceness: the daemon's own (the test runner's) + 7, at most 19.
            assert {_nice(w) for w in workers} == {min(19, _nice(proc.pid) + 7)}
            n = 120
            ids = [f"d-{i}" for i in range(n)]
            conn = aiohttp.TCPConnector(force_close=True, limit=16)
            async with aiohttp.ClientSession(connector=conn) as fresh:
                async def post(i: int) -> None:
                    async with fresh.post(f"http://127.0.0.1:{port}/v1/messages", json={
                            "to": f"+86137{i:08d}", "text": f"m{i}", "id": ids[i]}) as r:
                        assert r.status == 202, await r.text()
                await asyncio.gather(*(post(i) for i in range(n)))
            served = []
            for u in own:
                m = await _get(http, f"{u}/metrics")
                served.append(_sample(m, "gatewayd_http_requests_total",
                                      route="/v1/messages", status="202"))
            # Every request was a worker's; the daemon took none (its port is its own).
            assert served[0] == 0 and sum(served) == n and all(served[1:]), served
            records = await wait_final(redis, keys, ids, timeout_s=60)
            assert {r.get("state") for r in records.values()} == {"delivered"}
            sent = [s.destination.lstrip("+") for s in sim.submissions]
            assert sorted(sent) == sorted(f"86137{i:08d}" for i in range(n))  # once each
            # The daemon's own port serves its whole API: carriers (only it has them),
            # and /metrics on the shared port is forwarded there by a worker.
            async with http.get(f"{own[0]}/readyz/carriers") as r:
                assert r.status == 200, await r.text()
            async with http.get(f"{own[0]}/admin/carriers") as r:
                assert r.status == 200, await r.text()
            m = await _get(http, f"http://127.0.0.1:{port}/metrics")
            assert _sample(m, "gatewayd_http_workers") == 2
            assert _sample(m, "gatewayd_loop_lag_seconds_count") > 0  # the daemon's probe
            # Both keys need a restart, and a reload on the daemon's port says so.
            path = tmp_path / "gw.toml"
            path.write_text(path.read_text(encoding="utf-8").replace(
                "workers_nice = 7", "workers_nice = 3").replace(
                "daemon_listens = false", "daemon_listens = true"), encoding="utf-8")
            async with http.post(f"{own[0]}/admin/reload") as r:
                body = await r.json()
                assert r.status == 200, body
            assert set(body["restart_needed"]) == {"http.daemon_listens", "http.workers_nice"}
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert not any(alive(p) for p in workers)


def test_daemon_listens_and_workers_nice_are_checked(tmp_path: Path) -> None:
    """check-config refuses a daemon that listens nowhere for intake, and a bad nice."""
    port = free_port()
    for lines, want in (("daemon_listens = false", r"http\.daemon_listens.*workers >= 2"),
                        ("workers = 2\nworkers_nice = 20", r"http\.workers_nice.*0-19")):
        path = write_config(tmp_path, redis_url="redis://127.0.0.1:1", sim_port=1, http=True)
        path.write_text(path.read_text(encoding="utf-8").replace(
            'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"\n{lines}'),
            encoding="utf-8")
        out = subprocess.run([sys.executable, "-m", "gatewayd", "check-config", "-c",
                              str(path)], capture_output=True, text=True, timeout=60)
        assert out.returncode != 0
        assert re.search(want, out.stderr + out.stdout), out.stderr + out.stdout
