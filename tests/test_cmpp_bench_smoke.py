"""bench/cmpp_carrier.py and bench cmpp_e2e must not rot: tiny runs exit 0 and write their
figures (no speed is asserted here; figures live in bench/ and the README)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_cmpp_carrier_quick_writes_its_result(tmp_path: Path) -> None:
    env = dict(os.environ, GATEWAYD_BENCH_RESULTS=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "bench/cmpp_carrier.py", "-n", "300", "--runs", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "cmpp_carrier.json").read_text())
    assert data["n"] == 300 and data["window"] == 16
    for protocol in ("smpp", "cmpp"):
        for key in ("per_s", "cpu_us_per_msg"):
            assert {"median", "min", "max", "runs"} <= set(data[protocol][key])
    assert data["ratio_per_s"] > 0 and data["ratio_cpu"] > 0
    assert "cmpp/smpp:" in proc.stdout


def test_bench_cmpp_e2e_quick_writes_its_result(tmp_path: Path) -> None:
    """Both daemons' runs drain every message; the ratios are there (not asserted)."""
    env = dict(os.environ, GATEWAYD_BENCH_RESULTS=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "cmpp_e2e", "-n", "300", "--runs", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=200,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "cmpp_e2e.json").read_text())
    assert data["n"] == 300 and data["window"] == 16
    for protocol in ("smpp", "cmpp"):
        [run] = data[protocol]["runs"]
        assert run["states"] == {"delivered": 300}, run["states"]
    assert {"median", "min", "max"} <= set(data["ratio"]["final_per_s"])
    assert "cmpp/smpp: throughput" in proc.stdout
