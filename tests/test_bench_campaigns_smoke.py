"""The campaign benchmarks must not rot: tiny runs exit 0 and write their figures.

Each runs `python -m bench NAME --quick` with small N in a subprocess (its own Redis,
simulator and gatewayd processes), results in a temporary folder. They assert the
shape of the result and that every message was delivered, never a speed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # never flush a real one
    env["GATEWAYD_BENCH_RESULTS"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "bench", *args, "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads((tmp_path / f"{args[0]}.json").read_text()), proc.stdout


def test_fanout(tmp_path: Path) -> None:
    data, out = bench(tmp_path, "fanout", "-n", "1500")
    assert data["n"] == 1500 and {"median", "min", "max"} <= set(data["per_s"])
    assert data["runs"][0]["rss_end_mb"] > 0 and "recipients/s" in out
    assert data["runs"][0]["redis_calls"] > 0


def test_campaign_cost(tmp_path: Path) -> None:
    data, _ = bench(tmp_path, "campaign_cost", "-n", "300")
    (plain, campaign), = data["runs"]
    assert plain["states"] == campaign["states"] == {"delivered": 300}
    assert {"plain", "campaign", "ratio"} <= set(data["gw_us"])


def test_campaign_priority(tmp_path: Path) -> None:
    data, _ = bench(tmp_path, "campaign_priority", "-n", "1000")
    (run,) = data["runs"]
    assert run["marketing_states"] == {"delivered": 1000}
    assert run["otp_submitted"] == run["otp_sent"] > 0
    # The fan-out ran in the daemon's child process (campaigns.fanout_process).
    assert run["fanout"] == "child" and run["child_rss_fanned_mb"] > 0


@pytest.mark.skipif(shutil.which("wrk") is None,
                    reason="wrk is not installed (apt-get install wrk)")
def test_redirect(tmp_path: Path) -> None:
    data, _ = bench(tmp_path, "redirect", "--links", "500", "--duration", "1")
    (run,) = data["runs"]
    assert run["requests"] > 0 and run["non_3xx"] == 0 and run["socket_errors"] == 0
    (paced,) = data["paced"]  # the latency run at an offered rate
    assert paced["requests"] > 0 and paced["non_3xx"] == 0 and paced["wait_ms"] > 0
