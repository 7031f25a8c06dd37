"""bench/http_priority must not rot: a tiny run exits 0 and prints sane figures.

`python -m bench http_priority` with a small flood and one run, in a subprocess (its own
Redis, simulator, gatewayd and wrk), results written to a temporary folder: once as one
process and once with `--workers 2` (an intake worker beside the daemon). Asserts the
shape and sanity of the figures (every code submitted, CPU figures present), never a
speed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
@pytest.mark.parametrize(("workers", "core_own"), [(1, False), (2, False), (2, True)])
def test_bench_http_priority_quick_prints_its_figures(tmp_path: Path, workers: int,
                                                      core_own: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # never flush a real one
    env["GATEWAYD_BENCH_RESULTS"] = str(tmp_path)
    # core_own: the daemon leaves the port to a niced worker, codes go to its own port
    own = ["--workers-only", "--nice", "10", "--codes-to-daemon"] if core_own else []
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "http_priority", "--quick", "-n", "1500",
         "--workers", str(workers), *own],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=150,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "http_priority.json").read_text())
    assert data["n"] == 1500 and data["workers"] == workers
    (run,) = data["runs"]
    assert run["flood_accepted"] >= 1500  # each body once (a few in flight at the end too)
    assert run["workers"] == workers  # the daemon and its worker were both measured
    assert run["otp_sent"] > 0 and run["otp_submitted"] == run["otp_sent"]
    assert 0 < run["otp_p50_ms"] <= run["otp_p99_ms"] <= run["otp_max_ms"]
    for key in ("flood_msg_per_s", "gw_us", "redis_us", "sim_us", "wrk_us", "client_us"):
        assert {"median", "min", "max", "runs"} <= set(data[key]), key
        # /proc counts CPU in 10 ms ticks: a tiny flood may leave the simulator, wrk or
        # the codes' client at 0; the daemon and Redis did the work.
        floor = 0.0 if key in ("sim_us", "wrk_us", "client_us") else 1e-9
        assert data[key]["median"] >= floor, key
    # The codes' latency split at their queued event, and the daemon's loop lag.
    assert 0 <= run["otp_core_p50_ms"] <= run["otp_core_p99_ms"]
    # (a stream id counts whole ms: a code enqueued within its parse's ms reads < 0)
    assert run["otp_intake_p99_ms"] > -1.0 and run["loop_lag_p99_ms"] > 0
    assert data["workers_only"] == data["codes_to_daemon"] == core_own
    for label in ("flood accepted msg/s", "OTP queue->submit p99", "CPU a flood message: wrk",
                  "OTP enqueue->submit", "daemon loop lag"):
        assert label in proc.stdout
