"""sd_notify against a real unix datagram socket set as $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator

import pytest

from gatewayd.ops.sdnotify import Notifier, watchdog_interval_s


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    # A short path: AF_UNIX paths are limited to 108 bytes; pytest's tmp_path may be longer.
    d = tempfile.mkdtemp(prefix="gw-sd-")
    path = os.path.join(d, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        yield sock
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(d)


def recv(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_each_notification(listener: socket.socket) -> None:
    n = Notifier()
    assert n.enabled
    assert n.ready()
    assert recv(listener) == ["READY=1"]
    assert n.ready("processed 0; binds up 2")
    assert recv(listener) == ["READY=1", "STATUS=processed 0; binds up 2"]
    assert n.status("queued 5\nbinds\tup 1")
    assert recv(listener) == ["STATUS=queued 5 binds up 1"]
    assert n.watchdog()
    assert recv(listener) == ["WATCHDOG=1"]
    assert n.stopping()
    assert recv(listener) == ["STOPPING=1"]
    assert n.reloading()
    reloading, monotonic = recv(listener)
    assert reloading == "RELOADING=1"
    assert monotonic.startswith("MONOTONIC_USEC=") and int(monotonic.split("=")[1]) > 0
    n.close()


def test_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"gatewayd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", f"@{name}")
        n = Notifier()
        assert n.ready()
        assert recv(sock) == ["READY=1"]
        n.close()


def test_no_socket_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert not n.ready() and not n.watchdog() and not n.status("x")


def test_gone_socket_never_raises(monkeypatch: pytest.MonkeyPatch,
                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/gatewayd/notify")
    n = Notifier()
    assert n.enabled
    assert not n.ready()
    assert not n.watchdog()
    warnings = [r for r in caplog.records if "sd_notify failed" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not on every tick
    n.close()


def test_unsupported_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert not Notifier().enabled


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval_s() is None  # meant for another process
    monkeypatch.delenv("WATCHDOG_PID")
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "junk")
    assert watchdog_interval_s() is None
