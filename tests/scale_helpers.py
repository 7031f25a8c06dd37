"""Helpers for scale-out tests: several `gatewayd run` subprocesses on one Redis.

Each daemon gets its own config file (own consumer name, own state directory, no HTTP)
naming the same carrier account ("sim"), so the carrier's TPS bucket, the queues and
the policy keys are shared through Redis while the SMPP binds are per process.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from gatewayd.model import FINAL_STATES
from gatewayd.sim.smpp.smsc import SmscSimulator
from gatewayd.store.keys import Keys
from tests.e2e_helpers import NO_POLICY, events_by_id


def daemon_config(
    tmp_path: Path, name: str, *, redis_url: str, sim_port: int, tps: float,
    read_batch: int = 128, workers: int = 2, window: int = 200,
    reclaim_idle_s: float = 1.0, extra_redis: str = "", extra_carrier: str = "",
    log_level: str = "warning", source_addr: str = "10690001", policy: Path = NO_POLICY,
) -> Path:
    text = f"""
[daemon]
state_dir = "{tmp_path / ('state-' + name)}"
log_level = "{log_level}"
consumer = "{name}"
shutdown_timeout_s = 5.0
housekeeping_interval_s = 0.2

[redis]
url = "{redis_url}"
{extra_redis}

[http]
enabled = false

[policy]
file = "{policy}"

[queue]
read_batch = {read_batch}
dispatch_workers = {workers}
reclaim_idle_s = {reclaim_idle_s}
early_receipt_hold_s = 2.0

[[carrier]]
mo_country_code = "86"
name = "sim"
host = "127.0.0.1"
port = {sim_port}
system_id = "demo"
password = "demo"
window = {window}
tps = {tps}
enquire_link_s = 5.0
response_timeout_s = 5.0
reconnect_min_s = 0.1
reconnect_max_s = 1.0
auth_retry_s = 1.0
source_addr = "{source_addr}"
{extra_carrier}
"""
    p = tmp_path / f"{name}.toml"
    p.write_text(text, encoding="utf-8")
    p.chmod(0o600)
    return p


@dataclass
class DaemonProc:
    name: str
    proc: asyncio.subprocess.Process
    log: Path

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)

    async def wait(self, timeout_s: float) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout_s)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


async def spawn(config: Path, name: str, tmp_path: Path, *, burst: bool,
                burst_timeout_s: float = 0.0, env: dict[str, str] | None = None) -> DaemonProc:
    cmd = [sys.executable, "-m", "gatewayd", "run", "-c", str(config)]
    if burst:
        cmd.append("--burst")
        if burst_timeout_s:
            cmd += ["--burst-timeout", str(burst_timeout_s)]
    log = tmp_path / f"{name}.log"
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=dict(os.environ if env is None else env, PYTHONUNBUFFERED="1"),
            stdout=out, stderr=asyncio.subprocess.STDOUT,
        )
    return DaemonProc(name, proc, log)


async def stop_all(procs: list[DaemonProc]) -> None:
    """Cleanup for a failed test: TERM (drain), then KILL what is still there."""
    for p in procs:
        if p.proc.returncode is None:
            p.proc.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            await asyncio.wait_for(p.proc.wait(), 15)
        except TimeoutError:
            p.proc.kill()
            await p.proc.wait()


@dataclass
class Tally:
    finals: collections.Counter[str] = field(default_factory=collections.Counter)
    not_one_final: list[tuple[str, list[str]]] = field(default_factory=list)
    submissions_per_dest: collections.Counter[str] = field(
        default_factory=collections.Counter)

    @property
    def duplicates(self) -> int:
        return sum(self.submissions_per_dest.values()) - len(self.submissions_per_dest)


async def tally(redis: aioredis.Redis, keys: Keys, ids: list[str],
                sim: SmscSimulator) -> Tally:
    """Final events per message id, and SMSC submissions per destination."""
    t = Tally()
    events = await events_by_id(redis, keys)
    for mid in ids:
        f = [e["state"] for e in events.get(mid, []) if e["state"] in FINAL_STATES]
        if len(f) == 1:
            t.finals[f[0]] += 1
        else:
            t.not_one_final.append((mid, f))
    t.submissions_per_dest.update(s.destination.lstrip("+") for s in sim.submissions)
    return t


def shares(sim: SmscSimulator) -> dict[str, int]:
    """Submissions per source address (each test daemon sends from its own)."""
    return dict(collections.Counter(s.source for s in sim.submissions))


def busiest_window(times: list[float], width_s: float) -> int:
    """The most submissions in any sliding window of ``width_s`` seconds (a bound to
    check, unlike a rate: a slow machine sends less, never more)."""
    ts = sorted(times)
    best = lo = 0
    for hi, t in enumerate(ts):
        while t - ts[lo] > width_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def steady_rate(times: list[float], lo: float = 0.2, hi: float = 0.8) -> float:
    """Submissions per second between the lo and hi fractions of the run (by count):
    leaves out the start (binds, first bucket burst) and the tail (the last daemon
    finishing alone)."""
    ts = sorted(times)
    a, b = int(len(ts) * lo), int(len(ts) * hi)
    if b - a < 2 or ts[b] <= ts[a]:
        raise ValueError("too few submissions to measure a rate")
    return (b - a) / (ts[b] - ts[a])
