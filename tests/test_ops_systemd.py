"""The systemd units: required directives, `systemd-analyze verify`, and W^X under Python.

Tests never install packages: systemd-analyze runs where it is present, else those
tests skip with the reason; the directive checks always run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gatewayd.config import DaemonConfig

UNITS = Path(__file__).resolve().parent.parent / "systemd"
MAIN = UNITS / "gatewayd.service"
TEMPLATE = UNITS / "gatewayd@.service"

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(path: Path) -> Unit:
    """Sections -> (key, value) in order; keys may repeat, as systemd allows."""
    unit: Unit = {}
    section = ""
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            unit.setdefault(section, [])
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {line!r}"
        unit[section].append((key.strip(), value.strip()))
    return unit


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: Unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}: expected once, found {found}"
    return found[0]


def seconds(value: str) -> float:
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|min|h)?", value):
        total += float(num) * {"ms": 0.001, "": 1, "s": 1, "min": 60, "h": 3600}[unit]
    return total


HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
    "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes", "RestrictRealtime": "yes", "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes", "CapabilityBoundingSet": "",
    "SystemCallArchitectures": "native", "DynamicUser": "yes",
}


@pytest.mark.parametrize("path", [MAIN, TEMPLATE], ids=lambda p: p.name)
def test_required_directives(path: Path) -> None:
    u = parse_unit(path)
    assert one(u, "Service", "Type") == "notify"
    assert one(u, "Service", "NotifyAccess") == "main"
    assert one(u, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(u, "Service", "Restart") == "on-failure"
    assert seconds(one(u, "Service", "RestartSec")) > 0
    watchdog = seconds(one(u, "Service", "WatchdogSec"))
    assert watchdog == 30
    # The daemon pings every housekeeping tick: well inside the watchdog.
    assert DaemonConfig().housekeeping_interval_s * 4 <= watchdog
    # A drain waits shutdown_timeout_s for batches, then again for submit_sm_resp.
    assert seconds(one(u, "Service", "TimeoutStopSec")) > 2 * DaemonConfig().shutdown_timeout_s
    assert "-/etc/gatewayd/gatewayd.env" in values(u, "Service", "EnvironmentFile")
    assert set(one(u, "Service", "RestrictAddressFamilies").split()) == {
        "AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in values(u, "Service", "SystemCallFilter")
    assert int(one(u, "Service", "LimitNOFILE")) >= 65536
    assert one(u, "Service", "RestartPreventExitStatus") == "2"  # config errors: no loop
    for key, want in HARDENING.items():
        assert one(u, "Service", key) == want, key
    assert one(u, "Install", "WantedBy") == "multi-user.target"
    assert "network-online.target" in one(u, "Unit", "Wants")


def test_main_and_template_paths() -> None:
    main, tpl = parse_unit(MAIN), parse_unit(TEMPLATE)
    assert one(main, "Service", "ExecStart") == (
        "/usr/bin/env gatewayd run -c /etc/gatewayd/gatewayd.toml")
    assert one(tpl, "Service", "ExecStart") == "/usr/bin/env gatewayd run -c /etc/gatewayd/%i.toml"
    assert one(main, "Service", "StateDirectory") == "gatewayd"
    # Not nested under the main unit's /var/lib/gatewayd (a DynamicUser link): both
    # units on one host must start in either order (checked live under systemd 252).
    assert one(tpl, "Service", "StateDirectory") == "gatewayd-%i"
    assert one(tpl, "Service", "WorkingDirectory") == "/var/lib/gatewayd-%i"
    assert values(tpl, "Service", "EnvironmentFile") == [
        "-/etc/gatewayd/gatewayd.env", "-/etc/gatewayd/%i.env"]
    assert "%i" in one(tpl, "Service", "SyslogIdentifier")
    # Apart from the instance-specific keys, the template is the same unit.
    specific = {"ExecStart", "StateDirectory", "EnvironmentFile", "SyslogIdentifier",
                "WorkingDirectory", "Description"}
    strip = lambda u: [(k, v) for k, v in u["Service"] if k not in specific]  # noqa: E731
    assert strip(main) == strip(tpl)


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (apt-get install systemd)")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # A template is verified as an instance of it: copy it to gatewayd@test.service.
    instance = tmp_path / "gatewayd@test.service"
    instance.write_text(TEMPLATE.read_text())
    for unit in (MAIN, TEMPLATE, instance):
        r = _verify(unit)
        ours = [line for line in (r.stdout + r.stderr).splitlines() if unit.name in line]
        assert r.returncode == 0 and not ours, f"{unit.name}: {r.stdout}{r.stderr}"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (apt-get install systemd)")
def test_systemd_analyze_security_exposure() -> None:
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(MAIN)],
                       capture_output=True, text=True, timeout=60, check=False)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    if m is None:
        pytest.skip(f"this systemd-analyze has no offline security scoring: {r.stderr[:200]}")
    assert float(m.group(1)) <= 2.0, r.stdout[-2000:]


_MDWE_PROBE = textwrap.dedent("""
    import ctypes, mmap, sys
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        print("unsupported", ctypes.get_errno()); sys.exit(0)
    try:  # the control: W+X memory must now be refused, or this proves nothing
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        print("not-enforced"); sys.exit(0)
    except OSError:
        pass
    import asyncio, uvloop, msgspec, ahocorasick, aiohttp, redis.asyncio as aioredis
    from redis.utils import HIREDIS_AVAILABLE
    from gatewayd.http.server import HttpServer
    from gatewayd.ops.logs import setup_logging
    from gatewayd.ops import metrics
    from gatewayd.ops import sdnotify
    from gatewayd.ops import top

    class Backend:
        async def enqueue(self, items, *, source): return []
        async def status(self, msg_id): return None
        async def optout(self, action, number, scope): return {}
        async def reload(self): return True, "ok"
        async def readiness(self): return True, {}
        def liveness(self): return {"uptime_s": 0}

    async def main():
        r = aioredis.from_url(sys.argv[1], decode_responses=True)
        assert await r.ping()
        await r.aclose()
        a = ahocorasick.Automaton(); a.add_word("代开发票", 1); a.make_automaton()
        assert list(a.iter("专业代开发票"))
        assert msgspec.json.decode(msgspec.json.encode({"a": [1]})) == {"a": [1]}
        s = HttpServer("127.0.0.1:0", Backend(), api_key_hashes=[], max_body_bytes=1024)
        await s.start()
        async with aiohttp.ClientSession() as c:
            async with c.get(f"http://127.0.0.1:{s.port}/metrics") as resp:
                assert resp.status == 200
        await s.stop()

    setup_logging("warning", stream=sys.stderr)
    uvloop.run(main())
    print("ok", HIREDIS_AVAILABLE)
""")


def test_python_stack_runs_with_memory_deny_write_execute(redis_url: str) -> None:
    """MemoryDenyWriteExecute=yes is safe: the whole stack runs under the kernel's MDWE.

    PR_SET_MDWE (Linux >= 6.3) is the same rule MemoryDenyWriteExecute= enforces (newer
    systemd uses it; older systemd a seccomp filter): no mapping may be writable and
    executable. uvloop, hiredis, msgspec, pyahocorasick, aiohttp and CPython must not need one.
    """
    r = subprocess.run([sys.executable, "-c", _MDWE_PROBE, redis_url], capture_output=True,
                       text=True, timeout=60, check=False)
    out = r.stdout.split()
    if out[:1] in (["unsupported"], ["not-enforced"]):
        pytest.skip(f"kernel without PR_SET_MDWE ({r.stdout.strip()})")
    assert r.returncode == 0 and out[:1] == ["ok"], r.stdout + r.stderr


def test_the_live_check_script_parses() -> None:
    """systemd/live-check.sh (run by hand: root, network) at least stays valid bash."""
    script = UNITS / "live-check.sh"
    assert os.access(script, os.X_OK)
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True,
                       timeout=30, check=False)
    assert r.returncode == 0, r.stderr
