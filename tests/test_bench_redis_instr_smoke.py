"""bench.redis_instr must not rot: a script bench under callgrind prints instruction
counts a message, and they repeat (the reason the tool exists). Asserts the shape of
the output and the repeatability of a count, never a speed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not shutil.which("valgrind") or not shutil.which("callgrind_control"),
                    reason="valgrind is not installed")
def test_policy_script_under_callgrind_prints_repeatable_counts() -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.redis_instr", "policy_script", "-n", "256",
         "--runs", "2", "--prefill", "500", "--no-commands"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "instructions a message" in proc.stdout
    m = re.search(r"policy_batch\.lua\s+([\d.]+)\s+\(min ([\d.]+), max ([\d.]+), 2 runs\)",
                  proc.stdout)
    assert m, proc.stdout
    median, lo, hi = (float(x) for x in m.groups())
    # A message runs a few Lua calls and 4-5 commands: thousands of instructions, not
    # CPU seconds (the figure would be ~0-100 "us" if the ticks were still read).
    assert 5_000 < median < 1_000_000
    assert hi - lo < 0.05 * median  # the same work counts the same, however loaded
