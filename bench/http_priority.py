"""Priority under an HTTP flood: codes keep their promise while intake runs at full speed.

Issue 17 item 6, the HTTP variant of bench/priority. One gatewayd (its own process, every
policy on, HTTP on, bound to the SMSC simulator with receipts: the rig of bench/e2e) takes:

  flood  --n marketing messages (Chinese, one a request) POSTed to /v1/messages by Debian's
         ``wrk`` from --connections keep-alive connections (200) as fast as it is
         answered (bench/intake's Lua script: each body once, then wrk is stopped)
  codes  OTP messages POSTed one a request at --otp-rate a second (200, in 10 ms ticks)
         by a separate client (aiohttp in this process, its own connections), from the
         first flood answer until the flood's last body is accepted

and dispatches all of it meanwhile. Figures: the flood's accepted msg/s; the codes'
queue->submit latency (status record submitted_at - enqueued_at) p50/p99/max and their
request latency; CPU a flood message of gatewayd (with its intake workers, if any), Redis,
the simulator, wrk and the codes' client (this process). Median of --runs with min and
max; writes bench/results/http_priority.json. Target: OTP p99 <= 50 ms.

    python -m bench http_priority [--quick] [-n 40000] [--otp-rate 200] [--runs 3]
                                  [--connections 200] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import harness
from bench.common import cpu_seconds, summary, table, write_result
from bench.intake import (
    _WRK_LUA,
    API_KEY,
    _all_statuses,
    _config,
    _parse_wrk,
    _stop,
    _wait_http,
    gw_pids,
    wait_workers,
    with_workers,
)
from gatewayd.store.embedded import free_port


def _flood_bodies(n: int, run: int) -> list[str]:
    msgs = harness.make_messages(n, run=run, mix=(0.0, 0.0, 1.0))
    for m in msgs:
        m.pop("id", None)
    return [json.dumps(m, ensure_ascii=False, separators=(",", ":")) for m in msgs]


def _exists(marker: Path) -> bool:
    """wrk's marker files (a stat: microseconds, fine between 10 ms ticks)."""
    return marker.exists()


async def _codes(port: int, rate: float, started: Path, done: Path, wrk: subprocess.Popen[str],
                 run: int) -> tuple[list[str], list[float], int]:
    """POST one code a request at ``rate``/s from the flood's first answer until its
    end; returns the ids, the request latencies (s) and the count of non-202 answers."""
    ids: list[str] = []
    lat: list[float] = []
    bad = 0
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    url = f"http://127.0.0.1:{port}/v1/messages"

    async def one(session: aiohttp.ClientSession, k: int) -> None:
        nonlocal bad
        body = json.dumps({"to": f"+8615{run % 10}{k:08d}", "category": "otp",
                           "text": f"Your verification code is {100000 + k % 900000}."})
        t0 = time.perf_counter()
        async with session.post(url, data=body, headers=headers) as resp:
            doc = await resp.json()
        lat.append(time.perf_counter() - t0)
        if resp.status == 202:
            ids.append(doc["results"][0]["id"])
        else:
            bad += 1

    while not _exists(started) and wrk.poll() is None:
        await asyncio.sleep(0.005)
    tasks: set[asyncio.Task[None]] = set()
    conn = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=conn) as session:
        t0 = time.monotonic()
        sent = 0
        while not _exists(done) and wrk.poll() is None:
            due = int((time.monotonic() - t0) * rate)
            for k in range(sent, due):
                t = asyncio.create_task(one(session, k))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            sent = max(sent, due)
            await asyncio.sleep(0.01)
        if tasks:
            await asyncio.gather(*tasks)
    return ids, lat, bad


def one_run(rig: harness.Rig, wrk: str, n: int, run: int, connections: int, rate: float,
            workers: int = 1) -> dict[str, Any]:
    rig.flush()
    port = free_port()
    cfg = with_workers(_config(rig, port, rig.sim_port, "http-priority"), workers)
    gw = rig.gatewayd(cfg, timeout_s=0, burst=False)
    tag = f"hp-{run}"
    try:
        _wait_http(port)
        wait_workers(cfg, workers)
        time.sleep(0.2)  # binds up
        f = rig.dir / f"bodies-{tag}.txt"
        f.write_text("\n".join(_flood_bodies(n, run)) + "\n", encoding="utf-8")
        script = rig.dir / f"wrk-{tag}.lua"
        done = rig.dir / f"done-{tag}"
        started = rig.dir / f"started-{tag}"
        # The first answer drops a marker too: the codes start once the flood runs.
        lua = _WRK_LUA % (f, API_KEY, done)
        lua = lua.replace("response = function(status, headers, body)\n",
                          "response = function(status, headers, body)\n"
                          f"  if accepted == 0 then io.open(\"{started}\", \"w\"):close() end\n")
        script.write_text(lua, encoding="utf-8")
        cmd = [wrk, "-t", "1", "-c", str(min(connections, n)), "-d", "600s", "--latency",
               "-s", str(script), f"http://127.0.0.1:{port}"]
        assert rig.sim is not None
        # CPU read from /proc before and after (exact for a short flood too).
        gws = gw_pids(gw.pid)
        others = {"redis": rig.redis_pid, "sim": rig.sim.pid, "client": os.getpid()}
        cpu0 = {p: cpu_seconds(p) for p in [*gws, *(p for p in others.values() if p)]}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        wrk0 = cpu_seconds(proc.pid)
        try:
            ids, req_lat, bad = asyncio.run(_codes(port, rate, started, done, proc, run))
        finally:
            wrk_cpu = cpu_seconds(proc.pid) - wrk0 if proc.poll() is None else 0.0
            cpu = {p: cpu_seconds(p) - c for p, c in cpu0.items()}
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=60)
        w = _parse_wrk(out)
        # The codes were all answered; wait for them to be submitted (a few ms).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = rig.statuses(ids)
            if all(s.get("submitted_at") for s in st):
                break
            time.sleep(0.2)
    finally:
        _stop(gw)
    lat = sorted(float(s["submitted_at"]) - float(s["enqueued_at"])
                 for s in st if s.get("submitted_at") and s.get("enqueued_at"))
    flood = sum(1 for s in _all_statuses(rig) if s.get("category") == "marketing")
    per = 1e6 / max(1, flood)
    req_lat.sort()
    return {
        "n": n, "flood_accepted": flood, "flood_msg_per_s": flood / w["wall_s"],
        "flood_p50_ms": w["p50_ms"], "flood_p99_ms": w["p99_ms"], "flood_non_2xx": w["non_2xx"],
        "otp_sent": len(ids) + bad, "otp_refused": bad, "otp_submitted": len(lat),
        "otp_p50_ms": 1000 * harness.percentile(lat, 50),
        "otp_p99_ms": 1000 * harness.percentile(lat, 99),
        "otp_max_ms": 1000 * (lat[-1] if lat else 0.0),
        "otp_request_p50_ms": 1000 * harness.percentile(req_lat, 50),
        "otp_request_p99_ms": 1000 * harness.percentile(req_lat, 99),
        "gw_us": per * sum(cpu[p] for p in gws), "workers": len(gws),
        "redis_us": per * cpu.get(rig.redis_pid, 0.0), "sim_us": per * cpu[others["sim"]],
        "wrk_us": per * wrk_cpu, "client_us": per * cpu[others["client"]],
    }


KEYS = ["flood_msg_per_s", "otp_p50_ms", "otp_p99_ms", "otp_max_ms", "otp_request_p50_ms",
        "otp_request_p99_ms", "flood_p50_ms", "flood_p99_ms", "gw_us", "redis_us", "sim_us",
        "wrk_us", "client_us"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench http_priority",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=40_000, help="marketing messages in the flood")
    ap.add_argument("--otp-rate", type=float, default=200.0, help="codes a second")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--workers", type=int, default=1, help="http.workers of the daemon")
    ap.add_argument("--quick", action="store_true", help="-n 3000 --runs 1 unless given")
    ap.add_argument("--name", default="http_priority", help="result file name")
    args = ap.parse_args(argv)
    if args.quick:
        args.n = 3000 if args.n == 40_000 else args.n
        args.runs = 1 if args.runs == 3 else args.runs
    wrk = shutil.which("wrk")
    if not wrk:
        print("http_priority: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    runs: list[dict[str, Any]] = []
    with harness.Rig() as rig:
        print(f"http_priority: {args.n:,} marketing over HTTP ({args.connections} "
              f"connections, http.workers {args.workers}) + OTP at {args.otp_rate:.0f}/s "
              f"x {args.runs} runs; Redis {rig.redis_version()}", flush=True)
        for i in range(args.runs):
            r = one_run(rig, wrk, args.n, i, args.connections, args.otp_rate, args.workers)
            runs.append(r)
            print(f"run {i + 1}: flood {r['flood_msg_per_s']:,.0f} msg/s; OTP queue->submit "
                  f"p50/p99/max {r['otp_p50_ms']:.1f}/{r['otp_p99_ms']:.1f}/"
                  f"{r['otp_max_ms']:.1f} ms ({r['otp_submitted']}/{r['otp_sent']} codes); "
                  f"CPU a message gatewayd {r['gw_us']:.0f} us, Redis {r['redis_us']:.0f}, "
                  f"sim {r['sim_us']:.0f}, wrk {r['wrk_us']:.0f}, codes' client "
                  f"{r['client_us']:.0f}", flush=True)

    result: dict[str, Any] = {"n": args.n, "otp_rate": args.otp_rate,
                              "connections": args.connections, "workers": args.workers,
                              **{k: summary([float(r[k]) for r in runs]) for k in KEYS},
                              "runs": runs}
    path = write_result(args.name, result)

    def f(k: str, unit: str, d: int = 1) -> str:
        s = result[k]
        return (f"{s['median']:,.{d}f}{unit} (min {s['min']:,.{d}f}, "
                f"max {s['max']:,.{d}f})")

    print(table([
        ("flood accepted msg/s", f("flood_msg_per_s", "", 0)),
        ("OTP queue->submit p50", f("otp_p50_ms", " ms")),
        ("OTP queue->submit p99 (target <= 50)", f("otp_p99_ms", " ms")),
        ("OTP queue->submit max", f("otp_max_ms", " ms")),
        ("OTP request p50 / p99", f"{result['otp_request_p50_ms']['median']:.1f} / "
                                  f"{result['otp_request_p99_ms']['median']:.1f} ms"),
        ("flood request p50 / p99 (wrk)", f"{result['flood_p50_ms']['median']:.1f} / "
                                          f"{result['flood_p99_ms']['median']:.1f} ms"),
        ("CPU a flood message: gatewayd", f("gw_us", " us")),
        ("CPU a flood message: Redis", f("redis_us", " us")),
        ("CPU a flood message: simulator", f("sim_us", " us")),
        ("CPU a flood message: wrk", f("wrk_us", " us")),
        ("CPU a flood message: codes' client", f("client_us", " us")),
    ]))
    print(f"-> {path}")
    bad = any(r["flood_non_2xx"] or r["otp_refused"] for r in runs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
