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
queue->submit latency (status record submitted_at - enqueued_at) p50/p99/max, split at
their "queued" event's stream time (Redis's clock at the enqueue call) into intake
(parse -> enqueue) and the core (enqueue -> submit), and their request latency; the
daemon's loop lag (gatewayd_loop_lag_seconds, bucket bounds) over the flood; CPU a flood
message of gatewayd (with its intake workers, if any), Redis, the simulator, wrk and the
codes' client (this process). Median of --runs with min and max; writes
bench/results/http_priority.json. Target: OTP p99 <= 50 ms.

--workers-only (http.daemon_listens = false) and --nice N (http.workers_nice) try the
core's own resources; --codes-to-daemon sends the codes to the daemon's own port (its
whole API, where no flood arrives once it does not listen on the shared port);
--turn-requests N sets http.turn_requests (0: the fast lane starts every request
received in a turn, as before it had the bound; default: the daemon's, 32).

    python -m bench http_priority [--quick] [-n 40000] [--otp-rate 200] [--runs 3]
                                  [--connections 200] [--workers 1]
                                  [--workers-only] [--nice 0] [--codes-to-daemon]
                                  [--turn-requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import aiohttp
import redis.asyncio as aioredis

from bench import harness
from bench.common import (
    bucket_quantile,
    cpu_seconds,
    histogram,
    summary,
    table,
    write_result,
    wrk_figures,
)
from bench.intake import (
    _WRK_LUA,
    API_KEY,
    _all_statuses,
    _config,
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


def _queued_ms(rig: harness.Rig, ids: list[str]) -> dict[str, float]:
    """Each code's "queued" event's stream time (Redis's clock when intake's enqueue
    call ran, ms): splits queue->submit into intake (parse -> enqueue) and the core."""
    want = set(ids)

    async def go() -> dict[str, float]:
        r = aioredis.from_url(rig.redis_url, decode_responses=True)
        out: dict[str, float] = {}
        start = "-"
        try:
            while True:
                got = cast(list[tuple[str, dict[str, str]]], await r.xrange(
                    f"{harness.PREFIX}events", min=start, count=5000))
                for eid, f in got:
                    if f.get("state") == "queued" and f.get("id") in want:
                        out.setdefault(f["id"], float(eid.split("-")[0]))
                if len(got) < 5000:
                    return out
                start = "(" + got[-1][0]
        finally:
            await r.aclose()
    return asyncio.run(go())


def one_run(rig: harness.Rig, wrk: str, n: int, run: int, connections: int, rate: float,
            workers: int = 1, extra: str = "", codes_to_daemon: bool = False,
            turn_requests: int = -1) -> dict[str, Any]:
    rig.flush()
    port = free_port()
    cfg = with_workers(_config(rig, port, rig.sim_port, "http-priority"), workers, extra)
    if turn_requests >= 0:
        text = cfg.read_text(encoding="utf-8")
        cfg.write_text(text.replace("[http]\nenabled = true\n",
                                    f"[http]\nenabled = true\nturn_requests = {turn_requests}\n"),
                       encoding="utf-8")
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
        # The daemon's loop lag (gatewayd_loop_lag_seconds) over the flood, from its
        # own metrics port (the API port's /metrics is the daemon's too).
        m = re.search(r"worker_metrics_port = (\d+)", cfg.read_text(encoding="utf-8"))
        lag_url = f"http://127.0.0.1:{int(m.group(1)) if m else port}/metrics"
        lag0 = histogram(lag_url, "gatewayd_loop_lag_seconds")
        cpu0 = {p: cpu_seconds(p) for p in [*gws, *(p for p in others.values() if p)]}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        wrk0 = cpu_seconds(proc.pid)
        try:
            # --codes-to-daemon: the codes' app uses the daemon's own port (its whole
            # API; with http.daemon_listens = false no flood arrives there).
            codes_port = int(m.group(1)) if codes_to_daemon and m else port
            ids, req_lat, bad = asyncio.run(_codes(codes_port, rate, started, done, proc,
                                                   run))
        finally:
            wrk_cpu = cpu_seconds(proc.pid) - wrk0 if proc.poll() is None else 0.0
            cpu = {p: cpu_seconds(p) - c for p, c in cpu0.items()}
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=60)
        lag1 = histogram(lag_url, "gatewayd_loop_lag_seconds")
        w = wrk_figures(out)
        # The codes were all answered; wait for them to be submitted (a few ms).
        deadline = time.monotonic() + 60
        st: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            st = rig.statuses(ids)
            if all(s.get("submitted_at") for s in st):
                break
            time.sleep(0.2)
    finally:
        _stop(gw)
    lat = sorted(float(s["submitted_at"]) - float(s["enqueued_at"])
                 for s in st if s.get("submitted_at") and s.get("enqueued_at"))
    queued = _queued_ms(rig, ids)
    intake, core = [], []
    for i, s in zip(ids, st, strict=True):
        if i in queued and s.get("submitted_at") and s.get("enqueued_at"):
            intake.append(queued[i] / 1000 - float(s["enqueued_at"]))
            core.append(float(s["submitted_at"]) - queued[i] / 1000)
    intake.sort()
    core.sort()
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
        "otp_intake_p99_ms": 1000 * harness.percentile(intake, 99),
        "otp_core_p50_ms": 1000 * harness.percentile(core, 50),
        "otp_core_p99_ms": 1000 * harness.percentile(core, 99),
        "loop_lag_p50_ms": 1000 * bucket_quantile(lag0, lag1, 0.5),
        "loop_lag_p90_ms": 1000 * bucket_quantile(lag0, lag1, 0.9),
        "loop_lag_p99_ms": 1000 * bucket_quantile(lag0, lag1, 0.99),
        "gw_us": per * sum(cpu[p] for p in gws), "workers": len(gws),
        "redis_us": per * cpu.get(rig.redis_pid, 0.0), "sim_us": per * cpu[others["sim"]],
        "wrk_us": per * wrk_cpu, "client_us": per * cpu[others["client"]],
    }


KEYS = ["flood_msg_per_s", "otp_p50_ms", "otp_p99_ms", "otp_max_ms", "otp_request_p50_ms",
        "otp_intake_p99_ms", "otp_core_p50_ms", "otp_core_p99_ms",
        "loop_lag_p50_ms", "loop_lag_p90_ms", "loop_lag_p99_ms",
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
    ap.add_argument("--workers-only", action="store_true",
                    help="http.daemon_listens = false: only the workers take the API port")
    ap.add_argument("--nice", type=int, default=0, help="http.workers_nice")
    ap.add_argument("--codes-to-daemon", action="store_true",
                    help="POST the codes to the daemon's own port (worker_metrics_port)")
    ap.add_argument("--turn-requests", type=int, default=-1,
                    help="http.turn_requests (-1: the daemon's default)")
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
    extra = (("daemon_listens = false\n" if args.workers_only else "")
             + (f"workers_nice = {args.nice}\n" if args.nice else ""))
    if (extra or args.codes_to_daemon) and args.workers < 2:
        print("http_priority: --workers-only, --nice and --codes-to-daemon need "
              "--workers >= 2", file=sys.stderr)
        return 2
    runs: list[dict[str, Any]] = []
    with harness.Rig() as rig:
        print(f"http_priority: {args.n:,} marketing over HTTP ({args.connections} "
              f"connections, http.workers {args.workers}"
              f"{f', http.turn_requests {args.turn_requests}' if args.turn_requests >= 0 else ''}"
              f"{', ' + extra.strip().replace(chr(10), ', ') if extra else ''}) + OTP at "
              f"{args.otp_rate:.0f}/s "
              f"x {args.runs} runs; Redis {rig.redis_version()}", flush=True)
        for i in range(args.runs):
            r = one_run(rig, wrk, args.n, i, args.connections, args.otp_rate, args.workers,
                        extra, args.codes_to_daemon, args.turn_requests)
            runs.append(r)
            print(f"run {i + 1}: flood {r['flood_msg_per_s']:,.0f} msg/s; OTP queue->submit "
                  f"p50/p99/max {r['otp_p50_ms']:.1f}/{r['otp_p99_ms']:.1f}/"
                  f"{r['otp_max_ms']:.1f} ms ({r['otp_submitted']}/{r['otp_sent']} codes); "
                  f"parse->enqueue p99 {r['otp_intake_p99_ms']:.1f} ms, enqueue->submit "
                  f"p50/p99 {r['otp_core_p50_ms']:.1f}/{r['otp_core_p99_ms']:.1f} ms; "
                  f"loop lag p50/p90/p99 <= {r['loop_lag_p50_ms']:g}/{r['loop_lag_p90_ms']:g}/"
                  f"{r['loop_lag_p99_ms']:g} ms; "
                  f"CPU a message gatewayd {r['gw_us']:.0f} us, Redis {r['redis_us']:.0f}, "
                  f"sim {r['sim_us']:.0f}, wrk {r['wrk_us']:.0f}, codes' client "
                  f"{r['client_us']:.0f}", flush=True)

    result: dict[str, Any] = {"n": args.n, "otp_rate": args.otp_rate,
                              "connections": args.connections, "workers": args.workers,
                              "workers_only": args.workers_only, "nice": args.nice,
                              "codes_to_daemon": args.codes_to_daemon,
                              "turn_requests": args.turn_requests,
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
        ("OTP parse->enqueue p99 (intake; Redis's clock)", f("otp_intake_p99_ms", " ms")),
        ("OTP enqueue->submit p50 / p99 (the core)",
         f"{result['otp_core_p50_ms']['median']:.1f} / "
         f"{result['otp_core_p99_ms']['median']:.1f} ms"),
        ("OTP request p50 / p99", f"{result['otp_request_p50_ms']['median']:.1f} / "
                                  f"{result['otp_request_p99_ms']['median']:.1f} ms"),
        ("flood request p50 / p99 (wrk)", f"{result['flood_p50_ms']['median']:.1f} / "
                                          f"{result['flood_p99_ms']['median']:.1f} ms"),
        ("daemon loop lag p50 / p90 / p99 (bucket bounds)",
         f"<= {result['loop_lag_p50_ms']['median']:g} / {result['loop_lag_p90_ms']['median']:g}"
         f" / {result['loop_lag_p99_ms']['median']:g} ms"),
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
