"""Shared bench helpers: medians, result files, process CPU/RSS/fd sampling from /proc."""

from __future__ import annotations

import itertools
import json
import os
import platform
import re
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

# GATEWAYD_BENCH_RESULTS: another folder (the smoke test keeps real results untouched).
RESULTS = Path(os.environ.get("GATEWAYD_BENCH_RESULTS")
               or Path(__file__).resolve().parent / "results")
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def summary(values: list[float]) -> dict[str, float]:
    """Median with min and max: shared machines are noisy, one run proves nothing."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": len(values),
    }


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_1m": os.getloadavg()[0],
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"benchmark": name, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine(), **data}
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path


def child_pids(pid: int, flag: bytes) -> list[int]:
    """The children of ``pid`` whose command line holds ``flag`` (e.g. the daemon's
    ``--fanout-worker`` or ``--intake-worker`` processes)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
    except OSError:
        return []
    out = []
    for k in kids:
        try:
            with open(f"/proc/{k}/cmdline", "rb") as f:
                if flag in f.read():
                    out.append(k)
        except OSError:
            continue
    return out


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process itself (not its children: read theirs apart)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS


async def redis_cpu_s(*nodes: Redis) -> float:
    """CPU seconds the Redis servers have used (INFO cpu: user + system, summed over
    the nodes): also for a server whose process this one cannot read in /proc."""
    total = 0.0
    for node in nodes:
        info = await node.info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


_WRK_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_WRK_S = {"ms": 0.001, "s": 1.0, "m": 60.0}


def wrk_figures(out: str) -> dict[str, float]:
    """wrk's summary (run with ``--latency``): requests, wall_s, rps, p50_ms, p90_ms,
    p99_ms, non_2xx (its "Non-2xx or 3xx responses") and socket_errors (1: it
    reported some)."""
    def ms(v: str) -> float:
        m = re.match(r"([\d.]+)(\w+)", v)
        if m is None:
            raise ValueError(f"wrk latency {v!r}")
        return float(m.group(1)) * _WRK_MS[m.group(2)]
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.MULTILINE))
    done = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if done is None or rps is None or not {"50", "90", "99"} <= lat.keys():
        raise ValueError(f"not wrk --latency output: {out[-2000:]}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests": int(done.group(1)),
            "wall_s": float(done.group(2)) * _WRK_S[done.group(3)],
            "rps": float(rps.group(1)),
            "p50_ms": ms(lat["50"]), "p90_ms": ms(lat["90"]), "p99_ms": ms(lat["99"]),
            "non_2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": 1 if re.search(r"Socket errors: ", out) else 0}


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class ProcSampler:
    """Samples a process's RSS in a thread; CPU % comes from /proc totals."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._cpu0 = 0.0
        self._t0 = 0.0
        self.cpu_s = 0.0
        self.wall_s = 0.0
        # (wall clock, CPU s since start): CPU over a stretch of the run (the steady
        # part between first submit and last final state, without start-up).
        self.samples: list[tuple[float, float]] = []

    def __enter__(self) -> ProcSampler:
        self._cpu0 = cpu_seconds(self.pid)
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_rss = max(self.peak_rss, rss_bytes(self.pid))
                self.cpu_s = cpu_seconds(self.pid) - self._cpu0
                self.wall_s = time.monotonic() - self._t0
                self.samples.append((time.time(), self.cpu_s))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                return
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_between(self, t0: float, t1: float) -> float:
        """CPU seconds spent between two wall-clock times (linear between samples)."""
        return self._cpu_at(t1) - self._cpu_at(t0)

    def _cpu_at(self, t: float) -> float:
        s = self.samples
        if not s:
            return 0.0
        if t <= s[0][0]:
            return s[0][1]
        for (ta, ca), (tb, cb) in itertools.pairwise(s):
            if ta <= t <= tb:
                return ca + (cb - ca) * ((t - ta) / (tb - ta) if tb > ta else 0.0)
        return s[-1][1]

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s else 0.0


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def histogram(url: str, name: str) -> dict[float, float]:
    """A Prometheus histogram's cumulative buckets ({le: count}) read from ``url``
    (empty when the process has no such metric: an older gatewayd)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding quantile ``q`` of what was observed between
    two readings (nan when nothing was)."""
    les = sorted(after)
    counts = [after[le] - before.get(le, 0.0) for le in les]
    if not counts or counts[-1] <= 0:
        return float("nan")
    for le, c in zip(les, counts, strict=True):
        if c >= q * counts[-1]:
            return le
    return les[-1]
