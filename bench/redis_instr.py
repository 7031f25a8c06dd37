"""A script bench's Redis cost in instructions (callgrind) instead of CPU ticks.

Runs one of bench.policy_script / bench.record_script against a redis-server started
here under ``valgrind --tool=callgrind``, with the bench's ``cpu_seconds(pid)`` replaced
by the server's instruction count so far (in millions): the bench's "us/message" column
then reads instructions a message. Only what a client's command costs is counted
(``--toggle-collect`` on reading, parsing and running the commands, and on writing the
replies), not serverCron or active expiry, whose share grows with valgrind's wall time:
the counts repeat to ~0.1 % from run to run on a machine however loaded, where the CPU
figures move by 10-20 %. Keep -n and --prefill small (valgrind runs Redis ~50x slower).

    python -m bench.redis_instr policy_script -n 4000 --runs 2 --prefill 20000 [--script x.lua]
    python -m bench.redis_instr record_script -n 4000 --runs 2 --prefill 20000 [--only receipts]
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from bench.harness import bench_redis_server
from gatewayd.store.embedded import free_port

TOGGLES = ("readQueryFromClient", "writeToClient")


class Counter:
    """Cumulative instructions of a callgrind-run process, dumped on demand."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.total = 0
        self.seen: set[Path] = set()

    def __call__(self, pid: int) -> float:
        subprocess.run(["callgrind_control", "-d", str(pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for f in sorted(self.out.parent.glob(self.out.name + "*")):
            if f in self.seen:
                continue
            self.seen.add(f)
            for line in f.read_text().splitlines():
                if line.startswith(("summary:", "totals:")):
                    self.total += int(line.split()[1])
                    break
        return self.total / 1e6


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("policy_script", "record_script"):
        print(__doc__)
        return 2
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed")
    bench = importlib.import_module(f"bench.{args[0]}")
    keep = os.environ.get("BENCH_CG_DIR")  # keep the dumps there (callgrind_annotate)
    with tempfile.TemporaryDirectory(prefix="gw-bench-cg-") as tmp:
        d = keep or tmp
        port = free_port()
        out = Path(d) / "cg.out"
        cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no",
               f"--callgrind-out-file={out}", "--dump-instr=no", "--compress-strings=no",
               *(f"--toggle-collect={t}" for t in TOGGLES),
               bench_redis_server(), "--port", str(port), "--save", "", "--appendonly",
               "no", "--dir", d]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            r = redis.Redis(port=port)
            for _ in range(600):
                try:
                    r.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.1)
            bench.cpu_seconds = Counter(out)  # type: ignore[attr-defined]
            print(f"(instructions a message, not us: redis-server under callgrind, "
                  f"port {port})")
            return int(bench.main([*args[1:], "--port", str(port)]))
        finally:
            proc.terminate()
            proc.wait(60)


if __name__ == "__main__":
    raise SystemExit(main())
