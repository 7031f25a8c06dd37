"""campaigns.fanout_process: the daemon's fan-out runs in a supervised child process.

Real Redis, a real SMPP simulator, the daemon in this process and its fan-out child as a
real ``gatewayd run --fanout-worker`` subprocess (killed with SIGKILL mid-campaign here).
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from bench.common import alive, child_pids
from gatewayd.campaigns import funnel, model
from gatewayd.campaigns.worker import fanout_metrics_listen
from gatewayd.config import load_config
from gatewayd.daemon import Daemon
from gatewayd.ops import metrics
from gatewayd.ops.exposition import SCRAPE_TIMEOUT_S
from gatewayd.store.embedded import free_port
from gatewayd.store.keys import Keys
from tests.e2e_helpers import Smsc, running_daemon, wait_final, write_config
from tests.test_campaign_fanout import LINKS, compiled, rows, setup_ab
from tests.test_http_workers import _free_run
from tests.test_webhooks_process import default_sender, scrape, sender_up
from tests.webhook_helpers import Receiver, webhooks_toml


async def _until(what: str, check: object, timeout_s: float = 60.0) -> None:
    """Poll ``check`` (an async callable returning bool) until true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():  # type: ignore[operator]
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def _produced(redis: aioredis.Redis, keys: Keys, cid: str) -> int:
    c = await model.get(redis, keys, cid)
    assert c is not None
    return c.produced


def _child_pid(d: Daemon) -> int:
    assert d.fanout is not None
    proc = d.fanout.proc
    return proc.pid if proc is not None and proc.returncode is None else 0


async def test_the_child_fans_out_exactly_once_through_kill_9_pause_and_cancel(
        redis: aioredis.Redis, redis_url: str, keys: Keys, tmp_path: Path, smsc: Smsc) -> None:
    n = 1500
    sim = await smsc(receipt_delay_s=0.02)
    # A slow carrier (tps) and a small backlog cap: the fan-out is paced by dispatch and
    # is still under way when its process is killed, paused and cancelled.
    cfg = load_config(write_config(
        tmp_path, redis_url=redis_url, sim_port=sim.port, tps=400,
        extra=LINKS + "[campaigns]\nfanout_process = true\nfanout_batch = 20\n"
                      "max_backlog = 60\n"))
    assert cfg.campaigns.fanout_process
    c = await setup_ab(redis, keys)
    t = await compiled(redis, keys, "A", "B")
    await model.upload(redis, keys, c, t, iter(rows(n)), fmt="jsonl",
                       link_sample="https://s.example.cn/0000abcdefg", max_segments=5)
    x = await setup_ab(redis, keys, "x1")
    await model.upload(redis, keys, x, t, iter(rows(n, start=50_000)), fmt="jsonl",
                       link_sample="https://s.example.cn/0000abcdefg", max_segments=5)
    await model.change(redis, keys, "c1", "start")
    await model.change(redis, keys, "x1", "start")
    async with running_daemon(cfg) as d:
        # The daemon's own runner starts, brakes and measures; it never fans out.
        assert d.campaigns is not None and not d.campaigns.fan and d.fanout is not None
        await _until("the child", lambda: _ok(_child_pid(d)))
        first = _child_pid(d)
        assert first != os.getpid()

        async def some() -> bool:
            return await _produced(redis, keys, "c1") >= 200
        await _until("a fan-out under way", some)
        # SIGKILL mid-campaign: the daemon starts another child, which takes the lease
        # back at once (stable token) and goes on from the cursor.
        os.kill(first, signal.SIGKILL)
        await _until("a new child", lambda: _ok(_child_pid(d) not in (0, first)))
        assert await _produced(redis, keys, "c1") < n

        async def more() -> bool:
            return await _produced(redis, keys, "c1") >= 600
        await _until("the new child fanning out", more)
        # Pause reaches the child: nothing more is queued until resume.
        await model.change(redis, keys, "c1", "pause", reason="by hand")
        await asyncio.sleep(0.3)  # a group in flight when the pause landed
        held = await _produced(redis, keys, "c1")
        await asyncio.sleep(1.0)
        assert await _produced(redis, keys, "c1") == held < n
        # Cancel reaches it too.
        await model.change(redis, keys, "x1", "cancel")
        await asyncio.sleep(0.3)
        x_held = await _produced(redis, keys, "x1")
        await model.change(redis, keys, "c1", "resume")

        async def done() -> bool:
            cc = await model.get(redis, keys, "c1")
            return cc is not None and cc.status == "done"
        await _until("c1 fully queued", done, timeout_s=120)
        records = await wait_final(redis, keys, [f"c1.{i}" for i in range(1, n + 1)],
                                   timeout_s=120)
        assert await _produced(redis, keys, "x1") == x_held < n
    # Every recipient exactly once: each message delivered, each number submitted once.
    assert {r["state"] for r in records.values()} == {"delivered"}
    final = await model.get(redis, keys, "c1")
    assert final is not None and (final.status, final.produced) == ("done", n)
    counts = await funnel.read(redis, keys, "c1")
    assert counts["queued"] == counts["delivered"] == n
    c1_numbers = {f"86139{i:08d}" for i in range(n)}
    per_number = collections.Counter(s.destination.lstrip("+") for s in sim.submissions
                                     if s.destination.lstrip("+") in c1_numbers)
    assert set(per_number) == c1_numbers
    assert set(per_number.values()) == {1}, [k for k, v in per_number.items() if v > 1][:5]
    xc = await model.get(redis, keys, "x1")
    assert xc is not None and xc.status == "cancelled"


async def _ok(value: object) -> bool:
    return bool(value)


def _fanout_child(pid: int) -> int:
    return next(iter(child_pids(pid, b"--fanout-worker")), 0)


def _nice(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


async def test_the_child_is_niced_stops_with_the_daemon_and_dies_with_a_killed_one(
        redis_url: str, tmp_path: Path, smsc: Smsc) -> None:
    sim = await smsc()
    path = write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                        extra="[campaigns]\nfanout_process = true\nfanout_nice = 7\n")
    for how in ("term", "kill"):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gatewayd", "run", "-c", str(path),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            env=dict(os.environ))
        try:
            async def up(pid: int = proc.pid) -> bool:
                return _fanout_child(pid) != 0
            await _until("the fan-out child", up)
            child = _fanout_child(proc.pid)
            assert _nice(child) - _nice(proc.pid) == 7  # os.nice adds to the parent's
            if how == "term":
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 30) == 0
            else:
                proc.kill()
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

        async def gone(pid: int = child) -> bool:
            return not alive(pid)
        await _until(f"the child gone after {how}", gone, timeout_s=20)


def _value(text: str, line_start: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_the_childs_recipients_counter_is_on_the_daemons_metrics(
        redis: aioredis.Redis, redis_url: str, keys: Keys, tmp_path: Path, smsc: Smsc) -> None:
    """The fan-out in the child counts gatewayd_campaign_recipients_total there; the
    daemon's /metrics carries it (read from the child's own port at the scrape, its
    default one: after the webhook sender's) with gatewayd_campaign_fanout_up 1, and
    this process's registry (the daemon's) counted none of it. A hung child (SIGSTOP):
    up 0 and the daemon's own series, still 200, the webhook sender's series read all the
    same; back (SIGCONT): up 1 again."""
    n = 300
    sim = await smsc(receipt_delay_s=0.01)
    port, base = free_port(), _free_run(3)
    # The webhook sender process too: the daemon merges both children's series.
    path = write_config(tmp_path, redis_url=redis_url, sim_port=sim.port, http=True,
                        extra=LINKS + "[campaigns]\nfanout_process = true\nfanout_batch = 50\n"
                        + default_sender(webhooks_toml(Receiver(), endpoints="")))
    path.write_text(path.read_text(encoding="utf-8").replace(
        'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"\nworker_metrics_port = {base}',
        1), encoding="utf-8")  # [http]'s, not [links]'s
    cfg = load_config(path)
    assert fanout_metrics_listen(cfg) == f"127.0.0.1:{base + 2}"  # workers 1, sender, it
    own_before = metrics.FANOUT.labels("queued")._value.get()
    c = await setup_ab(redis, keys)
    await model.upload(redis, keys, c, await compiled(redis, keys, "A", "B"),
                       iter(rows(n)), fmt="jsonl",
                       link_sample="https://s.example.cn/0000abcdefg", max_segments=5)
    await model.change(redis, keys, "c1", "start")
    queued = 'gatewayd_campaign_recipients_total{result="queued"} '
    up = "gatewayd_campaign_fanout_up "
    async with running_daemon(cfg) as d:
        assert d.fanout is not None and d.http is not None
        await _until("the child", lambda: _ok(_child_pid(d)))
        child = _child_pid(d)

        async def done() -> bool:
            return await _produced(redis, keys, "c1") == n
        await _until("c1 fanned out", done)
        text = ""

        async def counted() -> bool:  # the child counts just after each slice's script
            nonlocal text
            text = await scrape(d.http.port)  # type: ignore[union-attr]
            return _value(text, queued) == n
        await _until("the child's count on the daemon's /metrics", counted)
        assert _value(text, up) == 1.0
        assert sender_up(text) == 1.0  # both children read (scrape: each name once)
        assert metrics.FANOUT.labels("queued")._value.get() == own_before  # not this loop
        # The child's own port answers with the token the daemon gave it.
        async with aiohttp.ClientSession() as s, \
                s.get(f"http://127.0.0.1:{base + 2}/metrics") as r:
            assert r.status == 200 and r.headers.get("X-Gatewayd-Child") == d.fanout.metrics.token
            assert _value(await r.text(), queued) == n

        os.kill(child, signal.SIGSTOP)  # hung: its port accepts, nothing answers
        try:
            began = time.monotonic()
            text = await scrape(d.http.port)
            assert _value(text, up) == 0.0
            assert _value(text, queued) == own_before  # the daemon's own series
            assert sender_up(text) == 1.0  # the other child read meanwhile, not after
            assert time.monotonic() - began < 2 * SCRAPE_TIMEOUT_S
        finally:
            os.kill(child, signal.SIGCONT)
        text = await scrape(d.http.port)
        assert _value(text, up) == 1.0 and _value(text, queued) == n
        records = await wait_final(redis, keys, [f"c1.{i}" for i in range(1, n + 1)],
                                   timeout_s=120)
    assert {r["state"] for r in records.values()} == {"delivered"}
