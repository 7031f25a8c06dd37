"""bench/webhooks.py must not rot: a tiny run exits 0 and writes its figures (never a
speed asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_webhooks_quick_writes_its_result(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # never flush a real one
    env["GATEWAYD_BENCH_RESULTS"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "webhooks", "--quick", "-n", "200", "--events",
         "400"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "webhooks.json").read_text())
    for eps in (1, 10, 100):
        run = data[f"endpoints_{eps}"]["runs"][0]
        assert run["delivered"] > 0 and run["events"] == 400, run
    for mode in ("off", "child", "daemon", "apart"):
        (run,) = data[f"e2e_{mode}"]["runs"]
        assert run["states"].get("delivered", 0) > 0, run
    (apart,) = data["e2e_apart"]["runs"]
    assert apart["pushed"] == apart["events"] > 0  # every event reached the receiver
    assert {"median", "min", "max", "runs"} <= set(data["ratio_daemon"])
    # The default, the daemon's sender process: a run this short may end before it sent
    # anything (the tail is sent after), but every event is pushed in the end.
    (child,) = data["e2e_child"]["runs"]
    assert child["events"] > 0 and child["pushed_per_s"] > 0, child
