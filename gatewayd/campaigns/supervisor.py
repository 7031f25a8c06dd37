"""``campaigns.fanout_process``: the daemon starts and supervises its fan-out child.

The child (gatewayd.campaigns.worker) is ``gatewayd run -c <the same file>
--fanout-worker``, at ``campaigns.fanout_nice``. One that exits while the daemon runs is
started again (after 0.5 s, doubling to 10 s while it keeps dying within 10 s of its
start) and counted (``gatewayd_campaign_fanout_restarts_total``); a new child is started
only once the old one is reaped, so two never hold the same lease token at once.
Stopping the daemon sends TERM and after ``daemon.shutdown_timeout_s`` KILL; the child
also dies with the daemon (the kernel's parent-death signal).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
import time

from gatewayd.campaigns.worker import ENV_CONSUMER, ENV_REDIS_URL
from gatewayd.config import Config
from gatewayd.errors import ConfigError
from gatewayd.ops import metrics
from gatewayd.ops.children import child_setup

log = logging.getLogger("gatewayd.campaigns.supervisor")


class FanoutProcess:
    def __init__(self, cfg: Config, redis_url: str, consumer: str) -> None:
        if not cfg.source:
            raise ConfigError("campaigns.fanout_process: the child reads the daemon's "
                              "config file; run the daemon with -c FILE")
        self.cfg = cfg
        self.redis_url = redis_url
        self.consumer = consumer
        self.proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        """Not waited for: the daemon's dispatch never waits on its fan-out."""
        self._task = asyncio.create_task(self._keep(), name="fanout-process")

    async def _spawn(self) -> asyncio.subprocess.Process:
        env = {**os.environ, ENV_REDIS_URL: self.redis_url, ENV_CONSUMER: self.consumer}
        assert self.cfg.source
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gatewayd", "run", "-c", self.cfg.source,
            "--fanout-worker", env=env, stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=functools.partial(child_setup, self.cfg.campaigns.fanout_nice))

    async def _keep(self) -> None:
        backoff = 0.5
        while not self.stopping():
            started = time.monotonic()
            try:
                proc = await self._spawn()
            except OSError as e:
                log.error("fan-out process could not start: %s", e)
            else:
                self.proc = proc
                if self.stopping():  # stopped while it was being started
                    self._signal(signal.SIGTERM)
                code = await proc.wait()
                if self.stopping():
                    return
                metrics.FANOUT_RESTARTS.inc()
                log.error("fan-out process exited (%s); starting it again", code)
            backoff = 0.5 if time.monotonic() - started > 10 else min(backoff * 2, 10.0)
            await asyncio.sleep(backoff)

    def stopping(self) -> bool:
        return self._stopping

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def drain(self) -> None:
        """TERM: the child finishes its group in flight and stops; not started again."""
        self._stopping = True
        self._signal(signal.SIGTERM)

    async def stop(self, timeout_s: float) -> None:
        self.drain()
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                self._signal(signal.SIGKILL)
                await asyncio.wait_for(self.proc.wait(), 5.0)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
