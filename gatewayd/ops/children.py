"""Child processes the daemon starts and keeps: the ``http.workers`` intake processes
(gatewayd.http.workers), the webhook sender (``webhooks.sender = "process"``) and the
campaigns' fan-out (``campaigns.fanout_process``, gatewayd.campaigns.supervisor).

One machinery for both. A child that exits while the daemon runs is started again
(after 0.5 s, doubling to 10 s while it keeps dying within 10 s of its start) and
counted; ``hup`` forwards a reload; ``drain`` sends TERM (the child finishes what it
does and exits) and starts none again; ``stop`` then waits up to its timeout and KILLs
what is left. Children also die with the daemon (the kernel's parent-death signal: TERM),
so a killed daemon leaves no process behind, and each watches its parent as well (not
Linux, or a daemon that re-parented).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence

from prometheus_client import Counter, Gauge

log = logging.getLogger("gatewayd.children")

_PR_SET_PDEATHSIG = 1


def _child_setup(nice: int) -> None:  # pragma: no cover - runs in the child before exec
    """Die with the daemon, and run at ``nice`` (the kernel then gives the dispatching
    daemon the CPU first when the cores are contended)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the child's own watch of its parent stops it
    if nice:
        os.nice(nice)


class Children:
    """Keeps child processes, one per key, running until drained."""

    def __init__(self, what: str, *, nice: int = 0, running: Gauge | None = None,
                 restarts: Counter | None = None) -> None:
        self.what = what  # "http worker", "webhook sender": for the logs
        self.nice = nice
        self.running = running
        self.restarts = restarts
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.started: dict[int, int] = {}  # key -> times started (1 = never restarted)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def keep(self, key: int, argv: Sequence[str], env: Callable[[], dict[str, str]],
             ) -> None:
        """Start ``argv`` (its environment made anew each start) and keep it running."""
        self._tasks.append(asyncio.create_task(self._keep(key, argv, env),
                                               name=f"{self.what}-{key}"))

    def task(self, task: asyncio.Task[None]) -> None:
        """A task of the owner's, cancelled by stop()."""
        self._tasks.append(task)

    async def _spawn(self, argv: Sequence[str], env: dict[str, str]
                     ) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *argv, env=env, stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=functools.partial(_child_setup, self.nice))

    async def _keep(self, key: int, argv: Sequence[str],
                    env: Callable[[], dict[str, str]]) -> None:
        backoff = 0.5
        name = f"{self.what} {key}" if key else self.what
        while not self.stopping():
            started = time.monotonic()
            try:
                proc = await self._spawn(argv, env())
            except OSError as e:
                log.error("%s could not start: %s", name, e)
            else:
                self.procs[key] = proc
                self.started[key] = self.started.get(key, 0) + 1
                if self.stopping():  # drained while it was being started: TERM it too
                    self.signal(signal.SIGTERM)
                if self.running is not None:
                    self.running.inc()
                try:
                    code = await proc.wait()
                finally:
                    if self.running is not None:
                        self.running.dec()
                    self.procs.pop(key, None)
                if self.stopping():
                    return
                if self.restarts is not None:
                    self.restarts.inc()
                log.error("%s exited (%s); starting it again", name, code)
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
        """Forward a reload: each child reloads its own copy of the config file."""
        self.signal(signal.SIGHUP)

    def drain(self) -> None:
        """TERM: each child finishes and stops; none is started again."""
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
