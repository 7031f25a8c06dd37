"""The benchmark code must not rot: a tiny end-to-end run exits 0 and writes its figures.

Runs `python -m bench e2e --quick` with a few hundred messages and one run in a
subprocess (its own embedded Redis, simulator and gatewayd process), results written
to a temporary folder. Asserts the shape of the result, never a speed.
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


def _bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["GATEWAYD_BENCH_RESULTS"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc, tmp_path


def test_bench_stragglers_and_throttle_write_their_results(tmp_path: Path) -> None:
    """Issue 16's two benches, tiny: the shape of their results, never a speed."""
    proc, d = _bench(tmp_path, "stragglers", "-n", "300", "--runs", "1",
                     "--response-timeout", "1")
    data = json.loads((d / "stragglers.json").read_text())
    for key in ("bulk_final_per_s", "bulk_submit_per_s", "all_final_s", "gw_cpu_us_per_msg"):
        assert {"median", "min", "max", "runs"} <= set(data["no_fault"][key]), key
        assert {"median", "min", "max", "runs"} <= set(data["unanswered_runs"][key]), key
    assert {"median", "min", "max"} <= set(data["ratio"])
    assert data["runs"]["no_fault"][0]["states"] == {"delivered": 300}
    assert data["runs"]["unanswered"][0]["states"] == {"delivered": 300}
    assert "ratio (target >= 0.80)" in proc.stdout
    proc, d = _bench(tmp_path, "throttle", "--cap", "200", "--seconds", "4", "--settle", "1",
                     "--runs", "1")
    data = json.loads((d / "throttle.json").read_text())
    for key in ("accepted_per_s", "of_cap", "throttled_after_settle", "throttled_first_s"):
        assert {"median", "min", "max", "runs"} <= set(data[key]), key
    assert data["runs"][0]["submits"] >= 800
    assert "throttled after 1 s" in proc.stdout


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


@pytest.mark.skipif(shutil.which("wrk") is None,
                    reason="wrk is not installed (apt-get install wrk)")
def test_bench_intake_quick_writes_its_result(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # never flush a real one
    env["GATEWAYD_BENCH_RESULTS"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "intake", "--quick", "-n", "400", "--connections", "16",
         "--accounts", "--against-aiohttp"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "intake.json").read_text())
    (run,) = data["runs"]
    # Every request of a phase was accepted (202: none refused), each phase queued every
    # message (and the few sent while wrk was being stopped), and the end-to-end phase
    # took every one it queued to a final state.
    # With --accounts, the same through an account's key (issue 21); with
    # --against-aiohttp, the same with the fast lane off (http.fast_intake = false).
    for tag in ("http-1", "http-100", "e2e-http", "http-1-acct", "http-100-acct",
                "http-1-aiohttp", "http-100-aiohttp"):
        assert set(run[tag]["statuses"]) == {"202"}, (tag, run[tag]["statuses"])
        assert run[tag]["queued"] >= 400, tag
    assert run["e2e-http"]["final"] == run["e2e-http"]["queued"]
    assert {"median", "min", "max"} <= set(data["http-1"]["gw_us"])


def test_bench_client_intake_quick_writes_its_result(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["GATEWAYD_BENCH_RESULTS"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.client_intake", "--quick"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "client_intake.json").read_text())
    assert set(data["phases"]) == {"xadd", "send", "send_many"}
    for runs in data["phases"].values():
        (run,) = runs
        assert {"msgs_s", "client_us", "redis_us"} <= set(run)
    assert "send_many / raw xadd" in proc.stdout


def test_bench_cluster_path_quick_writes_its_result(tmp_path: Path) -> None:
    """Issue 15's cluster bench, tiny, on its own local cluster: every path queued and
    dispatched every message (the script path never ran on the cluster: it would fail
    with CROSSSLOT), their receipts made every message final, and each figure is
    there. Never a speed."""
    proc, d = _bench(tmp_path, "cluster_path", "--quick", "-n", "300")
    data = json.loads((d / "cluster_path.json").read_text())
    paths = ("single", "cluster, single-Redis path", "cluster ordered (shipped)")
    # queued, dispatched, and (receipts: single Redis and the cluster as shipped) none
    # left awaiting a receipt: every final event published.
    assert data["paths"]["counts"] == {paths[0]: [300, 300, 0], paths[1]: [300, 300],
                                       paths[2]: [300, 300, 0]}
    for stage, ps in (("intake", paths), ("dispatch", paths),
                      ("receipts", (paths[0], paths[2]))):
        for p in ps:
            figures = data["paths"][f"{stage} {p}"]
            for key in ("msg_s", "client_cpu_us", "redis_cpu_us"):
                assert {"median", "min", "max", "runs"} <= set(figures[key]), (stage, p, key)
    assert "cluster ordered (shipped)" in proc.stdout


def test_bench_message_cost_prints_every_step() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.message_cost", "-n", "300", "--runs", "1",
         "--countries"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    steps = {line.split()[0]: float(line.split()[1]) for line in proc.stdout.splitlines()
             if line.startswith("  ") and not line.startswith("  client")}
    assert set(steps) == {"parse", "to_fields", "status", "pack", "reparse", "segments"}
    assert all(us > 0 for us in steps.values())
