"""The benchmark code must not rot: a tiny end-to-end run exits 0 and writes its figures.

Runs `python -m bench e2e --quick` with a few hundred messages and one run in a
subprocess (its own embedded Redis, simulator and gatewayd process), results written
to a temporary folder. Asserts the shape of the result, never a speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_e2e_quick_writes_its_result(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # never flush a real one
    env["GATEWAYD_BENCH_RESULTS"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "e2e", "--quick", "-n", "300", "--runs", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "e2e.json").read_text())
    for key in ("final_per_s", "submit_per_s", "queue_submit_p50_ms", "queue_submit_p99_ms",
                "submit_final_p50_ms", "submit_final_p99_ms", "gw_cpu_pct", "gw_peak_rss_mb",
                "sim_cpu_pct", "baseline", "ratio"):
        assert {"median", "min", "max", "runs"} <= set(data[key] if key != "baseline"
                                                       else data[key]["final_per_s"]), key
    assert data["n"] == 300
    (run,) = data["runs"]
    assert run["states"] == {"delivered": 300}
    assert run["final"] == 300
    assert "messages/s to final state" in proc.stdout


def test_bench_consent_quick_writes_its_result(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["GATEWAYD_BENCH_RESULTS"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "bench.consent", "-n", "2000", "--runs", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "consent.json").read_text())
    assert data["n"] == 2000
    for key in ("import_s", "import_per_s", "gatewayd_cpu_us", "redis_cpu_us", "by_number_s",
                "memory_bytes_per_number"):
        assert {"median", "min", "max", "runs"} <= set(data[key]), key
