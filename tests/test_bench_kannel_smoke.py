"""bench/kannel.py must not rot: a tiny run exits 0 and accounts for every message.

`python -m bench kannel --quick -n 300` with the HTTP phases (wrk's script, the accept
gate, Kannel's config, the DLR sink: the parts most likely to rot) and the send_many
phase (the producer process), in a subprocess (its own Redis, the node-smpp SMSC,
gatewayd, Kannel's bearerbox and smsbox, the DLR sink, wrk), results written to a
temporary folder; 8 connections (Kannel's listen backlog is 10: with 200 the bench
waits up to a minute for every connection to be accepted). Skipped where Kannel, wrk or
node/npm are not installed (Kannel is not part of CI: `apt-get install -y kannel`).
Asserts that every phase brought every message to its end (final state, final receipt,
or sent) with CPU figures, never a speed. And: without bearerbox the bench says how to
install Kannel and exits 2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.kannel_rig import kannel_binaries

PHASES = ["gw-send_many", "gw-http", "kannel-dlr", "kannel-nodlr"]

ROOT = Path(__file__).resolve().parent.parent


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # never flush a real one
    env["GATEWAYD_BENCH_RESULTS"] = str(tmp_path)
    return env


@pytest.mark.skipif(kannel_binaries() is None, reason="Kannel is not installed")
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
@pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                    reason="node and npm are needed for the node-smpp SMSC")
def test_bench_kannel_quick_accounts_for_every_message(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "kannel", "--quick", "-n", "300", "--phases",
         ",".join(PHASES), "--connections", "8"],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "kannel.json").read_text())
    assert data["n"] == 300 and data["kannel_version"].startswith("1.4")
    (run,) = data["runs"]
    for phase in PHASES:
        r = run[phase]
        assert r["final"] == 300 and "warning" not in r, (phase, r)
        assert r["msg_per_s"] > 0
        # /proc counts CPU in 10 ms ticks: a small process may show 0 for 300 messages.
        main_proc = "gatewayd" if phase.startswith("gw-") else "bearerbox"
        assert main_proc in r["cpu_us"] and "smsc" in r["cpu_us"], (phase, r["cpu_us"])
    # Every request answered as accepted; every Kannel message had its one final receipt.
    assert run["gw-http"]["answers"] == {"202": 300}
    assert run["kannel-dlr"]["answers"] == {"202": 300}
    assert run["kannel-nodlr"]["answers"] == {"202": 300}
    assert run["kannel-dlr"]["receipts"]["final"] == 300
    assert "gw-http / kannel-dlr" in data["ratios"] and "gw-send_many" in data
    assert "target gw-http / kannel-dlr >= 1.5" in proc.stdout


def test_bench_kannel_without_kannel_says_how_to_install(tmp_path: Path) -> None:
    env = _env(tmp_path) | {"BENCH_KANNEL_DIR": str(tmp_path)}  # no bearerbox there
    proc = subprocess.run([sys.executable, "-m", "bench", "kannel", "--quick"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "apt-get install -y kannel" in proc.stderr
    assert not (tmp_path / "kannel.json").exists()
