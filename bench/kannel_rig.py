"""The parts bench/kannel.py runs besides gatewayd: the node-smpp SMSC, Kannel, the DLR sink.

* NodeSmsc: tests/interop/node_smsc.js (npm ``smpp``, an SMSC gatewayd did not write),
  quiet (NODE_SMSC_QUIET=1), its bind events read in a thread so that a bench can wait
  for a client to be bound. npm ``smpp`` is installed the way tests/test_carrier_interop.py
  does it (GATEWAYD_INTEROP_NODE_DIR, default ~/.cache/gatewayd-test/node).
* Kannel: bearerbox + smsbox (Debian package ``kannel``, 1.4.5) from a config written in
  a temporary folder: one SMPP transceiver to the SMSC with ``max-pending-submits 1000``,
  internal DLR storage, no message store, the sendsms HTTP interface.
* DlrSink: bench/dlr_sink.py in its own process, the URL Kannel calls for each receipt.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from gatewayd.store.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
NODE_SCRIPT = ROOT / "tests" / "interop" / "node_smsc.js"
SYSTEM_ID, PASSWORD = "demo", "demo"
KANNEL_USER, KANNEL_PASS, ADMIN_PASS = "bench", "bench", "bench-admin"
INSTALL_HINT = ("Kannel is not installed: apt-get install -y kannel (Debian/Ubuntu: "
                "bearerbox and smsbox 1.4.5; the package's own service may stay stopped)")


def node_modules() -> Path:
    """npm ``smpp`` in the tests' cache (installed there when missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise SystemExit("kannel: node and npm are needed for the node-smpp SMSC "
                         "(apt-get install -y nodejs npm)")
    base = Path(os.environ.get("GATEWAYD_INTEROP_NODE_DIR",
                               Path.home() / ".cache" / "gatewayd-test" / "node"))
    modules = base / "node_modules"
    if not (modules / "smpp" / "package.json").exists():
        base.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([npm, "install", "--prefix", str(base), "--no-audit",
                               "--no-fund", "smpp"], capture_output=True, text=True,
                              timeout=180)
        if done.returncode != 0:
            raise SystemExit(f"kannel: npm install smpp failed:\n{done.stderr[-2000:]}")
    return modules


class NodeSmsc:
    """The SMSC both gateways submit to, one process for the whole bench."""

    def __init__(self, id_base: int = 0) -> None:
        env = dict(os.environ, NODE_PATH=str(node_modules()), NODE_SMSC_QUIET="1")
        if id_base:
            env["NODE_SMSC_ID_BASE"] = str(id_base)
        self.proc = subprocess.Popen(["node", str(NODE_SCRIPT), SYSTEM_ID, PASSWORD],
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        first = json.loads(self.proc.stdout.readline() or "{}")
        if first.get("event") != "listening":
            self.close()
            raise SystemExit(f"kannel: the node SMSC did not start: {first}")
        self.port = int(first["port"])
        self.binds = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if json.loads(line).get("event") == "bind":
                self.binds += 1

    def wait_bind(self, before: int, timeout_s: float = 30.0) -> None:
        """Until a bind arrived after ``before`` binds were counted."""
        deadline = time.monotonic() + timeout_s
        while self.binds <= before:
            if time.monotonic() > deadline:
                raise SystemExit("kannel: no bind reached the SMSC")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()  # the script exits when its stdin ends
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def kannel_binaries() -> tuple[str, str] | None:
    """bearerbox and smsbox: in $BENCH_KANNEL_DIR when set, else on PATH or in /usr/sbin
    (where Debian puts them)."""
    where = os.environ.get("BENCH_KANNEL_DIR") or os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    bb, sb = shutil.which("bearerbox", path=where), shutil.which("smsbox", path=where)
    return (bb, sb) if bb and sb else None


def kannel_version(bearerbox: str) -> str:
    out = subprocess.run([bearerbox, "--version"], capture_output=True, text=True,
                         timeout=10)
    m = re.search(r"version `([^']+)'", out.stdout + out.stderr)
    return m.group(1) if m else "?"


def write_kannel_config(d: Path, smsc_port: int, ports: dict[str, int]) -> Path:
    """bearerbox + smsbox, one SMPP transceiver; logs at warning level into ``d``.

    msg-id-type 0x03: the SMSC's submit_sm_resp id and its receipt's id are both hex
    (the receipt's TLV in lower case), so Kannel matches them as numbers."""
    p = d / "kannel.conf"
    p.write_text(f"""
group = core
admin-port = {ports["admin"]}
admin-password = {ADMIN_PASS}
admin-allow-ip = "127.0.0.1"
smsbox-port = {ports["smsbox"]}
box-allow-ip = "127.0.0.1"
log-file = "{d}/bearerbox.log"
log-level = 2
dlr-storage = internal

group = smsc
smsc = smpp
smsc-id = sim
host = 127.0.0.1
port = {smsc_port}
transceiver-mode = true
smsc-username = {SYSTEM_ID}
smsc-password = {PASSWORD}
system-type = ""
source-addr-ton = 0
source-addr-npi = 1
dest-addr-ton = 1
dest-addr-npi = 1
msg-id-type = 0x03
max-pending-submits = 1000
enquire-link-interval = 30
reconnect-delay = 1

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {ports["smsbox"]}
sendsms-port = {ports["sendsms"]}
log-file = "{d}/smsbox.log"
log-level = 2
http-request-retry = 0

group = sendsms-user
username = {KANNEL_USER}
password = {KANNEL_PASS}
max-messages = 10
concatenation = true

group = sms-service
keyword = default
text = "no service"
max-messages = 0
""", encoding="utf-8")
    return p


def _get(url: str, timeout_s: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return str(r.read().decode(errors="replace"))


class Kannel:
    """bearerbox + smsbox started, their SMPP link bound and sendsms answering."""

    def __init__(self, d: Path, smsc: NodeSmsc, binaries: tuple[str, str]) -> None:
        self.dir = d
        d.mkdir(parents=True, exist_ok=True)
        self.ports = {k: free_port() for k in ("admin", "smsbox", "sendsms")}
        cfg = write_kannel_config(d, smsc.port, self.ports)
        before = smsc.binds
        # -v 3: the console gets errors only (log-file has warnings).
        self.bearerbox = subprocess.Popen([binaries[0], "-v", "3", str(cfg)],
                                          stdout=subprocess.DEVNULL,
                                          stderr=open(d / "bearerbox.err", "wb"))
        smsc.wait_bind(before)
        self._wait_port(self.ports["smsbox"])
        self.smsbox = subprocess.Popen([binaries[1], "-v", "3", str(cfg)],
                                       stdout=subprocess.DEVNULL,
                                       stderr=open(d / "smsbox.err", "wb"))
        self._wait_port(self.ports["sendsms"])
        deadline = time.monotonic() + 30
        while "online" not in self.status_text():
            if time.monotonic() > deadline:
                raise SystemExit(f"kannel: the SMSC link did not come online:\n"
                                 f"{self.status_text()}")
            time.sleep(0.1)

    @staticmethod
    def _wait_port(port: int, timeout_s: float = 30.0) -> None:
        import socket
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"kannel: nothing listens on port {port}")

    def status_text(self) -> str:
        try:
            return _get(f"http://127.0.0.1:{self.ports['admin']}/status.txt"
                        f"?password={ADMIN_PASS}")
        except OSError as e:
            return f"(no status: {e})"

    def sent(self) -> int:
        """bearerbox's count of messages sent (SMS: ... sent N)."""
        m = re.search(r"SMS: received \d+ \(\d+ queued\), sent (\d+)", self.status_text())
        return int(m.group(1)) if m else -1

    def sendsms_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['sendsms']}"

    def close(self) -> None:
        for proc in (self.smsbox, self.bearerbox):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class DlrSink:
    """bench/dlr_sink.py until ``expected`` distinct messages have a final receipt."""

    def __init__(self, d: Path, expected: int, tag: str) -> None:
        self.marker = d / f"dlr-done-{tag}"
        self.marker.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.dlr_sink", str(expected),
                                      str(self.marker)], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "listening":
            raise SystemExit(f"kannel: the DLR sink did not start: {line}")
        self.port = int(line[1])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def result(self) -> dict[str, Any] | None:
        if not self.marker.exists():
            return None
        out: dict[str, Any] = json.loads(self.marker.read_text())
        return out

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
