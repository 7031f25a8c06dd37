"""``http.workers = N``: the daemon starts and supervises N-1 intake-only processes.

One Python process's loop is one core: past ~4,000 requests a second (one message a
request) HTTP intake needs more of them. Each worker (gatewayd.http.worker) is ``gatewayd
run -c <the same file> --intake-worker <i>``: it listens on the daemon's own port
(SO_REUSEPORT, the daemon's listener too) and does intake and the other Redis-only
routes; the daemon keeps the carriers, dispatch, receipts and housekeeping. Each process
serves its own /metrics and probes on a port of its own (gatewayd.http.worker.metrics_port:
the daemon's first), and /metrics on the shared port is the daemon's.

``http.daemon_listens = false``: the daemon leaves the shared port to its workers (an
intake flood then never runs in the dispatching loop) and serves its whole API on its
own port instead of the probes alone. ``http.workers_nice``: the workers' niceness.

Supervision: a worker that exits while the daemon runs is started again (after 0.5 s,
doubling to 10 s while it keeps dying within 10 s of its start) and counted
(``gatewayd_http_worker_restarts_total``); SIGHUP is forwarded; stopping the daemon
sends TERM (the worker drains like the daemon's listener) and after
``daemon.shutdown_timeout_s`` KILL. Workers also die with the daemon (the kernel's
parent-death signal), so a killed daemon leaves no intake process behind.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
import time

from aiohttp import web

from gatewayd.config import Config
from gatewayd.errors import ConfigError
from gatewayd.http.server import HttpServer, parse_listen
from gatewayd.http.worker import (
    ENV_CONSUMER,
    ENV_REDIS_URL,
    daemon_listens,
    metrics_port,
    start_probes,
)
from gatewayd.ops import metrics
from gatewayd.ops.children import child_setup

log = logging.getLogger("gatewayd.http.workers")


class WorkerPool:
    def __init__(self, cfg: Config, redis_url: str, consumer: str, http: HttpServer) -> None:
        if not cfg.source:
            raise ConfigError("http.workers: the workers read the daemon's config file; "
                              "run the daemon with -c FILE")
        self.cfg = cfg
        self.count = cfg.http.workers - 1
        self.redis_url = redis_url
        self.consumer = consumer
        self.http = http
        self._probes: web.AppRunner | None = None
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        """Serve the daemon's own metrics port and start every worker; their start is
        not waited for (the daemon's dispatch must not wait on intake processes): a
        worker not listening after ``ready_timeout_s`` is logged."""
        if daemon_listens(self.cfg):  # else its whole API is on that port already
            self._probes = await start_probes(self.cfg, 0, self.http)
        for i in range(1, self.count + 1):
            self._tasks.append(asyncio.create_task(self._keep(i), name=f"http-worker-{i}"))
        self._tasks.append(asyncio.create_task(self._ready(20.0), name="http-workers-ready"))

    async def _ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        host = parse_listen(self.cfg.http.listen)[0] or "127.0.0.1"
        for i in range(1, self.count + 1):
            while not await _answers(host, metrics_port(self.cfg, i)):
                if time.monotonic() > deadline:
                    log.warning("http worker %d is not listening after %g s", i, timeout_s)
                    return
                await asyncio.sleep(0.05)
        log.info("http workers listening", extra={"workers": self.count})

    async def _spawn(self, i: int) -> asyncio.subprocess.Process:
        env = {**os.environ, ENV_REDIS_URL: self.redis_url, ENV_CONSUMER: self.consumer}
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gatewayd", "run", "-c", self.cfg.source,
            "--intake-worker", str(i), env=env, stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=functools.partial(child_setup, self.cfg.http.workers_nice))

    async def _keep(self, i: int) -> None:
        backoff = 0.5
        while not self.stopping():
            started = time.monotonic()
            try:
                proc = await self._spawn(i)
            except OSError as e:
                log.error("http worker %d could not start: %s", i, e)
            else:
                self.procs[i] = proc
                metrics.HTTP_WORKERS.inc()
                try:
                    code = await proc.wait()
                finally:
                    metrics.HTTP_WORKERS.dec()
                    self.procs.pop(i, None)
                if self.stopping():
                    return
                metrics.HTTP_WORKER_RESTARTS.inc()
                log.error("http worker %d exited (%s); starting it again", i, code)
            backoff = 0.5 if time.monotonic() - started > 10 else min(backoff * 2, 10.0)
            await asyncio.sleep(backoff)

    def stopping(self) -> bool:
        return self._stopping

    def signal(self, sig: int) -> None:
        for proc in list(self.procs.values()):
            if proc.returncode is None:
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def hup(self) -> None:
        """Forward a reload: each worker reloads its policy files."""
        self.signal(signal.SIGHUP)

    def drain(self) -> None:
        """TERM: each worker answers intake 503 and stops; not started again."""
        self._stopping = True
        self.signal(signal.SIGTERM)

    async def stop(self, timeout_s: float) -> None:
        self.drain()
        procs = list(self.procs.values())
        if procs:
            waits = [asyncio.ensure_future(p.wait()) for p in procs]
            _done, pending = await asyncio.wait(waits, timeout=timeout_s)
            if pending:
                self.signal(signal.SIGKILL)
                await asyncio.wait(pending, timeout=5.0)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        if self._probes is not None:
            await self._probes.cleanup()
            self._probes = None


async def _answers(host: str, port: int) -> bool:
    try:
        _r, w = await asyncio.open_connection(host, port)
    except OSError:
        return False
    w.close()
    try:
        await w.wait_closed()
    except OSError:
        pass
    return True
