"""A minimal sd_notify(3) client: READY, STATUS, WATCHDOG, STOPPING, RELOADING.

Talks to the unix datagram socket named by $NOTIFY_SOCKET (a path, or ``@name`` for the
abstract namespace). Without $NOTIFY_SOCKET every call is a no-op, so the daemon runs the
same under systemd, in a terminal and in tests. Sending never blocks and never raises:
a notification that cannot be delivered is dropped (logged once), because losing a STATUS
line must not take the gateway down. No dependency on libsystemd.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("gatewayd.sdnotify")


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock:// and other forms are not used by systemd for services


def watchdog_interval_s() -> float | None:
    """How often to send WATCHDOG=1: half of $WATCHDOG_USEC, or None when not enabled.

    Honours $WATCHDOG_PID: a watchdog meant for another process (a parent shell) is not ours.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2 / 1_000_000


class Notifier:
    """One datagram socket, opened lazily; ``socket_path`` overrides $NOTIFY_SOCKET."""

    def __init__(self, socket_path: str | None = None) -> None:
        raw = os.environ.get("NOTIFY_SOCKET", "") if socket_path is None else socket_path
        self._addr = _address(raw)
        if raw and self._addr is None:
            log.warning("NOTIFY_SOCKET %r: unsupported address; notifications disabled", raw)
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; True when the datagram went out."""
        if self._addr is None:
            return False
        payload = "\n".join(assignments).encode("utf-8")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload, self._addr)
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warning("sd_notify failed (further failures are not logged): %s", e)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets Type=notify-reload (systemd >= 253) tell this reload from
        # an older one; older systemd ignores it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())
