"""The receipt-path benchmark must not rot: a tiny run exits 0 and writes its figures.

Runs `python -m bench receipt_path -n 600 --runs 1` in a subprocess (its SMSC in a child
process, no Redis), results written to a temporary folder. Asserts the shape of the
result and that every receipt came through, never a speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gatewayd.carrier.smpp.session import MAX_PDUS_PER_TURN

ROOT = Path(__file__).resolve().parent.parent


def test_bench_receipt_path_writes_its_result(tmp_path: Path) -> None:
    env = {**os.environ, "GATEWAYD_BENCH_RESULTS": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "receipt_path", "-n", "600", "--runs", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "receipt_path.json").read_text())
    assert data["n"] == 600
    for profile in ("sim", "text"):
        for key in ("cpu_us_per_receipt", "receipts_per_s", "max_stall_ms", "p99_stall_ms"):
            assert {"median", "min", "max", "runs"} <= set(data[profile][key]), (profile, key)
        (run,) = data[profile]["runs"]
        assert run["n"] == 600 and run["cpu_us_per_receipt"] > 0
        # The bench fails unless all 600 were collected in order and answered ESME_ROK;
        # no handler call holds more than one loop turn's worth.
        assert run["handler_calls"] >= -(-600 // MAX_PDUS_PER_TURN)
    assert "CPU a receipt" in proc.stdout
