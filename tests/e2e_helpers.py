"""Helpers for end-to-end tests: configs pointing at a simulator and a test Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from gatewayd.config import Config, load_config
from gatewayd.daemon import Daemon
from gatewayd.model import FINAL_STATES
from gatewayd.sim.smpp.smsc import SmscSimulator
from gatewayd.store.keys import Keys

# The `smsc` fixture (tests/conftest.py): await smsc(**SimSettings fields) -> started simulator.
Smsc = Callable[..., Awaitable[SmscSimulator]]

ROOT = Path(__file__).resolve().parent.parent
NO_POLICY = ROOT / "tests" / "data" / "no_policy.toml"


def write_config(
    tmp_path: Path,
    *,
    redis_url: str,
    sim_port: int,
    policy: Path | None = NO_POLICY,
    http: bool = False,
    extra_carrier: str = "",
    extra: str = "",
    window: int = 100,
    tps: float = 100000.0,
    name: str = "gw.toml",
    response_timeout_s: float = 5.0,
    mo_country_code: str = "86",
) -> Path:
    text = f"""
[daemon]
state_dir = "{tmp_path / 'state'}"
log_level = "warning"
shutdown_timeout_s = 5.0
housekeeping_interval_s = 0.2

[redis]
url = "{redis_url}"

[http]
enabled = {'true' if http else 'false'}
listen = "127.0.0.1:0"

[policy]
file = "{policy or ''}"

[[carrier]]
name = "sim"
host = "127.0.0.1"
port = {sim_port}
system_id = "demo"
password = "demo"
window = {window}
tps = {tps}
enquire_link_s = 5.0
response_timeout_s = {response_timeout_s}
reconnect_min_s = 0.1
reconnect_max_s = 1.0
auth_retry_s = 1.0
source_addr = "10690001"
mo_country_code = "{mo_country_code}"
{extra_carrier}
{extra}
"""
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    p.chmod(0o600)
    return p


@contextlib.asynccontextmanager
async def running_daemon(cfg: Config, *, burst: bool = False) -> AsyncIterator[Daemon]:
    daemon = Daemon(cfg, burst=burst)
    task = asyncio.create_task(daemon.run())
    started = asyncio.create_task(daemon.started.wait())
    await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        started.cancel()
        task.result()
    try:
        yield daemon
    finally:
        daemon.stop_event.set()
        await asyncio.wait_for(task, 30)


async def wait_final(
    redis: aioredis.Redis, keys: Keys, ids: list[str], timeout_s: float = 60.0
) -> dict[str, dict[str, str]]:
    """Poll status records until every id is final (or time is up); return them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    records: dict[str, dict[str, str]] = {}
    while True:
        async with redis.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hgetall(keys.status(i))
            replies = await pipe.execute()
        records = dict(zip(ids, replies, strict=True))
        if all(r.get("state") in FINAL_STATES for r in records.values()):
            return records
        if loop.time() > deadline:
            return records
        await asyncio.sleep(0.1)


async def events_by_id(redis: aioredis.Redis, keys: Keys) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = defaultdict(list)
    last = "-"
    while True:
        rows = await redis.xrange(keys.events, min=last, count=10000)
        if last != "-":
            rows = rows[1:]
        if not rows:
            return out
        for _sid, fields in rows:
            out[fields.get("id", "")].append(fields)
        last = rows[-1][0]


def sim_texts(sim: SmscSimulator) -> dict[str, list[str]]:
    """Full texts the SMSC accepted, per destination (multipart reassembled)."""
    parts: dict[tuple[str, Any], dict[int, str]] = defaultdict(dict)
    texts: dict[str, list[str]] = defaultdict(list)
    for s in sim.submissions:
        if s.status != 0:  # refused (throttled, error): the handset never sees it
            continue
        dest = s.destination.lstrip("+")
        if s.udh is not None:
            ref, total, seq = s.udh
            parts[(dest, ref, total)][seq] = s.text
            got = parts[(dest, ref, total)]
            if len(got) == total:
                texts[dest].append("".join(got[i] for i in range(1, total + 1)))
                del parts[(dest, ref, total)]
        else:
            texts[dest].append(s.text)
    return texts


def in_flight_bound(cfg: Config) -> int:
    """Entries a process can hold submitted-but-unrecorded when it dies: one batch per
    dispatch worker, the takeover job's batches (as many as workers) and the express
    worker's batch. This is the at-least-once duplicate window the README documents
    (plus stragglers, submits still unanswered: none in the tests that use this)."""
    q = cfg.queue
    express = q.express_batch if len(q.classes) > 1 else 0
    return 2 * q.dispatch_workers * q.read_batch + express


def load(path: Path) -> Config:
    return load_config(path)


async def send_internal(redis_url: str, cfg: Config, items: list[dict[str, Any]]) -> list[str]:
    """Queue messages WITH internal fields (``campaign``, ``resume``, ``enqueued_at``...),
    sealed as gatewayd's own writers do (the fan-out, retries): clients may not set them
    (issue 14), so tests that need such messages go through the queue store."""
    import msgspec

    from gatewayd.client import Client
    from gatewayd.pipeline.intake import INTERNAL, parse_message

    async with Client.from_config(cfg, redis_url) as client:
        assert client._queue is not None
        msgs = []
        for item in items:
            item = dict(item)
            internal = {k: item.pop(k) for k in list(item) if k in INTERNAL}
            m = parse_message(item, classes=list(cfg.queue.classes),
                              max_segments=cfg.queue.max_segments)
            msgs.append(msgspec.structs.replace(m, **internal))
        return [i for i, _ in await client._queue.enqueue(msgs, source="test")]
