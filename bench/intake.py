"""HTTP intake: what a message costs through POST /v1/messages, against the client.

The rig of bench/e2e (private Redis, the SMSC simulator in its own process, gatewayd in
its own process with every policy on), and Debian's ``wrk`` as the load generator (a C
client: its own CPU is printed, so that a saturated generator is seen, not mistaken for
the server's limit). Each run, in one process of this script:

  client     N messages queued through gatewayd.client (Client.send, chunks of 2,000):
             the baseline, Redis's CPU a message through the library
  http-1     the same N over HTTP, one message a request, from --connections keep-alive
             connections (200), with the daemon's carrier unreachable, so that gatewayd
             does intake only (a daemon with no bound carrier leaves the queue alone)
  http-100   the same N over HTTP, 100 messages a request, 8 connections
  e2e-http   the same N over HTTP one message a request into a daemon bound to the
             simulator, with receipts: the end-to-end rate (first submit .. last final)

With --accounts, http-1 and http-100 run a second time right after, with an account's
key (gatewayd.accounts: the key's cache lookup, the per-item limit checks and the one
rate/quota Lua call a request) instead of the admin key: "http-1-acct", "http-100-acct",
and their ratio to the admin-key phases of the same run.

Figures per phase: messages/s, gatewayd, Redis and wrk CPU a message, request latency
p50/p99 (wrk's), and for e2e-http the final states per second. Median of --runs with min
and max; writes bench/results/intake.json. Targets (issue 17): gatewayd <= 60 us a
message one a request, <= 10 us in batches of 100, Redis no more via HTTP than via the
client; e2e over HTTP >= 6,700/s.

With --against-aiohttp, http-1 and http-100 run a second time right after, in the same
run, with ``http.fast_intake = false`` (every request through aiohttp, as before the fast
lane): "http-1-aiohttp", "http-100-aiohttp", and the fast lane's ratio to them, a
baseline measured in the same run on the same machine.

With --workers N the daemon runs with ``http.workers = N`` (N-1 intake-only processes
sharing the port); "gatewayd" CPU is then the daemon's and its workers' together.

    python -m bench intake [--quick] [-n 40000] [--runs 3] [--connections 200] [--accounts]
                           [--workers N] [--phases client,http-1,http-100,e2e-http]
                           [--no-codes] [--against-aiohttp]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis

from bench import harness
from bench.common import ProcSampler, summary, table, write_result, wrk_figures
from bench.e2e import analyse
from gatewayd.accounts.model import Limits
from gatewayd.config import QueueConfig
from gatewayd.store.embedded import free_port

API_KEY = "bench-intake-key"

# Bodies are read into a table at start; each request takes the next one (or the next
# batch), round the table again if wrk asks for more (it calls request() more often than
# it sends: on connect and on reconnects). Once as many requests as there are bodies have
# been accepted (202), the script drops a marker file with the answers it got, and the
# bench stops wrk with SIGINT (wrk then reports the time it really ran; its own
# thread:stop() would still wait out -d). A few requests in flight then are accepted
# too: the figures are per accepted message, counted in Redis.
_WRK_LUA = """
local bodies = {}
for line in io.lines("%s") do bodies[#bodies + 1] = line end
local next_body = 0
local accepted = 0
local codes = {}
local post_headers = {["Content-Type"] = "application/json",
                      ["Authorization"] = "Bearer %s"}
request = function()
  next_body = next_body %% #bodies + 1
  return wrk.format("POST", "/v1/messages", post_headers, bodies[next_body])
end
response = function(status, headers, body)
  codes[status] = (codes[status] or 0) + 1
  if status == 202 then
    accepted = accepted + 1
    if accepted == #bodies then
      local f = io.open("%s", "w")
      for code, count in pairs(codes) do f:write(code, " ", count, "\\n") end
      f:close()
    end
  end
end
"""


# The messages' mix: shares of otp / transactional / marketing (harness.make_messages);
# --no-codes: no otp, so that no request takes the codes' own call (DaemonBackend.express)
MIX = (0.3, 0.4, 0.3)


def _bodies(n: int, run: int, batch: int, account: bool = False) -> list[str]:
    """JSON bodies: the e2e mix (codes, notices, Chinese marketing), one message each
    or arrays of ``batch``; recipients unique per run so no cap or window defers. For an
    account's key, no tenant (the key's is theirs)."""
    msgs = harness.make_messages(n, run=run, mix=MIX)
    for m in msgs:
        m.pop("id", None)
        if account:
            m.pop("tenant", None)
    enc = [json.dumps(m, ensure_ascii=False, separators=(",", ":")) for m in msgs]
    if batch == 1:
        return enc
    return ["[" + ",".join(enc[i:i + batch]) + "]" for i in range(0, n, batch)]


def _config(rig: harness.Rig, http_port: int, carrier_port: int, name: str) -> Path:
    cfg = rig.config(harness.GatewaydOptions(name=name))
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    text = cfg.read_text(encoding="utf-8")
    text = text.replace("[http]\nenabled = false", f"""[http]
enabled = true
listen = "127.0.0.1:{http_port}"
api_keys = ["{digest}"]""")
    text = re.sub(r"(\[\[carrier\]\][^\[]*?port = )\d+", rf"\g<1>{carrier_port}", text)
    cfg.write_text(text, encoding="utf-8")
    return cfg


def with_workers(cfg: Path, workers: int, extra: str = "") -> Path:
    """The config with ``http.workers = workers`` (more intake processes; 1: none) and
    their own ports (worker_metrics_port: the daemon's, then one a worker) free now;
    ``extra``: more [http] lines (e.g. ``daemon_listens = false``)."""
    if workers > 1:
        while True:
            base = free_port()
            try:
                for p in range(base, base + workers):
                    with socket.socket() as s:
                        s.bind(("127.0.0.1", p))
            except OSError:
                continue
            break
        text = cfg.read_text(encoding="utf-8")
        cfg.write_text(text.replace("[http]\nenabled = true\n",
                                    f"[http]\nenabled = true\nworkers = {workers}\n"
                                    f"worker_metrics_port = {base}\n{extra}"),
                     encoding="utf-8")
    return cfg


def gw_pids(gw_pid: int) -> list[int]:
    """The daemon and its intake workers (http.workers: its children)."""
    try:
        with open(f"/proc/{gw_pid}/task/{gw_pid}/children") as f:
            return [gw_pid, *(int(p) for p in f.read().split())]
    except OSError:
        return [gw_pid]


def wait_workers(cfg: Path, workers: int, timeout_s: float = 60.0) -> None:
    """Until each of the daemon's intake workers answers on its own port (the daemon's
    listener is up before them)."""
    m = re.search(r"worker_metrics_port = (\d+)", cfg.read_text(encoding="utf-8"))
    for i in range(1, workers):
        assert m is not None
        _wait_http(int(m.group(1)) + i, timeout_s)


def _wait_http(port: int, timeout_s: float = 30.0) -> None:
    import urllib.request
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("gatewayd's HTTP listener did not come up")


def _account_key(rig: harness.Rig) -> str:
    """An account with limits that never refuse the bench (checked all the same)."""
    from gatewayd.accounts.store import AccountStore
    from gatewayd.store.keys import Keys

    async def go() -> str:
        r = aioredis.from_url(rig.redis_url, decode_responses=True)
        store = AccountStore(r, Keys(harness.PREFIX), list(QueueConfig().classes))
        await store.create("bench", msgspec.convert(
            {"rate_per_s": 1e9, "daily": {"*": 10**12}, "monthly": {"*": 10**12},
             "prefixes": ["+86"]}, Limits))
        _entry, key = await store.add_key("bench")
        await r.aclose()
        return key
    return asyncio.run(go())


def _drive(rig: harness.Rig, wrk: str, port: int, bodies: list[str], connections: int,
           gw_pid: int, tag: str, key: str = API_KEY) -> dict[str, Any]:
    """wrk until every body is answered; CPU of gatewayd, Redis and wrk meanwhile."""
    f = rig.dir / f"bodies-{tag}.txt"
    f.write_text("\n".join(bodies) + "\n", encoding="utf-8")
    script = rig.dir / f"wrk-{tag}.lua"
    marker = rig.dir / f"done-{tag}"
    script.write_text(_WRK_LUA % (f, key, marker), encoding="utf-8")
    conns = min(connections, len(bodies))
    # --timeout: a request answered late counts in the latency, not as a socket error
    cmd = [wrk, "-t", "1", "-c", str(conns), "-d", "600s", "--timeout", "60s", "--latency",
           "-s", str(script), f"http://127.0.0.1:{port}"]
    gws = [ProcSampler(p) for p in gw_pids(gw_pid)]  # the daemon and its workers
    with ProcSampler(rig.redis_pid or gw_pid) as red:
        for g in gws:
            g.__enter__()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        with ProcSampler(proc.pid) as load:
            deadline = time.monotonic() + 600
            while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=60)
        for g in gws:
            g.__exit__()
    r: dict[str, Any] = dict(wrk_figures(out))
    if marker.exists():  # status -> count, e.g. {"202": 39990, "503": 10}
        r["statuses"] = dict(line.split() for line in marker.read_text().splitlines())
    r.update(gw_cpu_s=sum(g.cpu_s for g in gws), redis_cpu_s=red.cpu_s if rig.redis_pid else 0.0,
             wrk_cpu_s=load.cpu_s)
    return r


def _queued(rig: harness.Rig) -> int:
    async def go() -> int:
        r = aioredis.from_url(rig.redis_url, decode_responses=True)
        n = 0
        for k in QueueConfig().classes:
            n += int(await r.xlen(f"{harness.PREFIX}q:{{{k}}}"))
            n += int(await r.zcard(f"{harness.PREFIX}delayed:{{{k}}}"))
        await r.aclose()
        return n
    return asyncio.run(go())


def _all_statuses(rig: harness.Rig) -> list[dict[str, str]]:
    async def go() -> list[dict[str, str]]:
        r = aioredis.from_url(rig.redis_url, decode_responses=True)
        keys = [k async for k in r.scan_iter(f"{harness.PREFIX}msg:*", count=5000)]
        out: list[dict[str, str]] = []
        for start in range(0, len(keys), 5000):
            async with r.pipeline(transaction=False) as p:
                for k in keys[start:start + 5000]:
                    p.hgetall(k)
                out += await p.execute()
        await r.aclose()
        return out
    return asyncio.run(go())


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _per_msg(r: dict[str, Any], n: int) -> dict[str, Any]:
    n = max(1, n)
    return {"msg_per_s": n / r["wall_s"] if r["wall_s"] else 0.0,
            "gw_us": 1e6 * r["gw_cpu_s"] / n, "redis_us": 1e6 * r["redis_cpu_s"] / n,
            "wrk_us": 1e6 * r["wrk_cpu_s"] / n, "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
            "non_2xx": r["non_2xx"], "statuses": r.get("statuses", {})}


def one_run(rig: harness.Rig, wrk: str, n: int, run: int, connections: int,
            accounts: bool = False, workers: int = 1,
            only: frozenset[str] = frozenset(),
            against_aiohttp: bool = False) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}

    def wanted(tag: str) -> bool:
        return not only or tag in only

    # client: the library's path, this process as the producer.
    if wanted("client"):
        _client_phase(rig, n, run, out)

    # http-1 and http-100: intake only (the carrier's port has no listener).
    phases = [("http-1", 1, connections, False), ("http-100", 100, 8, False)]
    if accounts:
        phases = [phases[0], ("http-1-acct", 1, connections, True),
                  phases[1], ("http-100-acct", 100, 8, True)]
    if against_aiohttp:  # each right after its fast-lane twin, the same bodies
        phases = [p for ph in phases
                  for p in ([ph, (f"{ph[0]}-aiohttp", *ph[1:])] if not ph[3] else [ph])]
    for tag, batch, conns, acct in phases:
        if not wanted(tag.removesuffix("-aiohttp")):
            continue
        rig.flush()
        key = _account_key(rig) if acct else API_KEY
        port = free_port()
        cfg = with_workers(_config(rig, port, free_port(), "intake"), workers)
        if tag.endswith("-aiohttp"):
            cfg.write_text(cfg.read_text(encoding="utf-8").replace(
                "[http]\nenabled = true\n", "[http]\nenabled = true\nfast_intake = false\n"),
                encoding="utf-8")
        gw = rig.gatewayd(cfg, timeout_s=0, burst=False)
        try:
            _wait_http(port)
            wait_workers(cfg, workers)
            r = _drive(rig, wrk, port,
                       _bodies(n, run * 4 + (1 if batch == 1 else 2), batch, acct),
                       conns, gw.pid, f"{tag}-{run}", key)
        finally:
            _stop(gw)
        queued = _queued(rig)  # accepted: the bodies, and a few in flight at the end
        out[tag] = _per_msg(r, queued) | {"queued": queued}

    if wanted("e2e-http"):
        _e2e_phase(rig, wrk, n, run, connections, workers, out)
    return out


def _client_phase(rig: harness.Rig, n: int, run: int, out: dict[str, dict[str, Any]]) -> None:
    rig.flush()
    items = harness.make_messages(n, run=run * 4)
    with ProcSampler(os.getpid()) as me, ProcSampler(rig.redis_pid or os.getpid()) as red:
        t0 = time.perf_counter()
        rig.enqueue(items)
        wall = time.perf_counter() - t0
    out["client"] = {"msg_per_s": n / wall, "gw_us": 1e6 * me.cpu_s / n,
                     "redis_us": 1e6 * red.cpu_s / n if rig.redis_pid else 0.0}


def _e2e_phase(rig: harness.Rig, wrk: str, n: int, run: int, connections: int, workers: int,
               out: dict[str, dict[str, Any]]) -> None:
    # e2e-http: one message a request into a bound daemon, with receipts.
    rig.flush()
    port = free_port()
    cfg = with_workers(_config(rig, port, rig.sim_port, "e2e-http"), workers)
    gw = rig.gatewayd(cfg, timeout_s=0, burst=False)
    try:
        _wait_http(port)
        wait_workers(cfg, workers)
        r = _drive(rig, wrk, port, _bodies(n, run * 4 + 3, 1), connections, gw.pid,
                   f"e2e-{run}")
        deadline = time.monotonic() + 120
        while rig.backlog() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        _stop(gw)
    statuses = _all_statuses(rig)
    a = analyse(statuses)
    out["e2e-http"] = _per_msg(r, len(statuses)) | {"final_per_s": a["final_per_s"],
                                                    "final": a["final"],
                                                    "queued": len(statuses)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench intake",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=40_000, help="messages per phase")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="-n 4000 --runs 1 unless given")
    ap.add_argument("--accounts", action="store_true",
                    help="also http-1 and http-100 with an account's key")
    ap.add_argument("--workers", type=int, default=1,
                    help="http.workers: the daemon + workers-1 intake-only processes (their "
                         "CPU is gatewayd's)")
    ap.add_argument("--no-codes", action="store_true",
                    help="no otp messages in the HTTP phases (each request of codes makes "
                         "its own Redis call; the others share one a loop turn)")
    ap.add_argument("--against-aiohttp", action="store_true",
                    help="also http-1 and http-100 with http.fast_intake = false, each "
                         "right after its fast-lane twin, and the ratios")
    ap.add_argument("--phases", default="",
                    help="comma-separated subset, e.g. http-1,http-100 (default: all)")
    args = ap.parse_args(argv)
    only = frozenset(p for p in args.phases.split(",") if p)
    global MIX
    if args.no_codes:
        MIX = (0.0, 0.6, 0.4)
    if args.quick:
        args.n = 4000 if args.n == 40_000 else args.n
        args.runs = 1
    wrk = shutil.which("wrk")
    if not wrk:
        print("intake: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    runs: list[dict[str, dict[str, Any]]] = []
    with harness.Rig() as rig:
        print(f"intake: {args.n:,} messages a phase, {args.runs} runs, http.workers "
              f"{args.workers}; "
              f"Redis {rig.redis_version()}", flush=True)
        for i in range(args.runs):
            r = one_run(rig, wrk, args.n, i, args.connections, args.accounts, args.workers,
                        only, args.against_aiohttp)
            runs.append(r)
            for tag, f in r.items():
                extra = (f", {f['final_per_s']:,.0f} final/s ({f['final']:,.0f} final)"
                         if "final_per_s" in f else "")
                lat = (f", p50/p99 {f['p50_ms']:.1f}/{f['p99_ms']:.1f} ms, wrk "
                       f"{f['wrk_us']:.0f} us, answers {f['statuses']}" if "p50_ms" in f
                       else "")
                print(f"run {i + 1} {tag:9}: {f['msg_per_s']:,.0f} msg/s; CPU a message "
                      f"gatewayd {f['gw_us']:.1f} us, Redis {f['redis_us']:.1f} us{lat}{extra}",
                      flush=True)

    def s(tag: str, key: str) -> dict[str, float]:
        return summary([r[tag][key] for r in runs])

    result: dict[str, Any] = {"n": args.n, "connections": args.connections,
                              "workers": args.workers, "runs": runs}
    rows: list[tuple[str, str]] = []
    tags = ["client", "http-1", "http-100", "e2e-http"]
    if args.accounts:
        tags[2:2] = ["http-1-acct"]
        tags[4:4] = ["http-100-acct"]
    if args.against_aiohttp:
        tags = [p for t in tags for p in (t, f"{t}-aiohttp")]
    tags = [t for t in tags if t in runs[0]]
    for tag in tags:
        result[tag] = {k: s(tag, k) for k in runs[0][tag] if k != "statuses"}
        who = "client (this process)" if tag == "client" else "gatewayd"
        rows.append((f"{tag}: msg/s", f"{result[tag]['msg_per_s']['median']:,.0f} (min "
                     f"{result[tag]['msg_per_s']['min']:,.0f}, max "
                     f"{result[tag]['msg_per_s']['max']:,.0f})"))
        rows.append((f"{tag}: CPU a message {who} / Redis",
                     f"{result[tag]['gw_us']['median']:.1f} / "
                     f"{result[tag]['redis_us']['median']:.1f} us"))
    if "e2e-http" in result:
        rows.append(("e2e-http: final/s",
                     f"{result['e2e-http']['final_per_s']['median']:,.0f}"))
    if "http-1" in result and "client" in result:
        redis_ratio = (result["http-1"]["redis_us"]["median"]
                       / max(1e-9, result["client"]["redis_us"]["median"]))
        rows.append(("Redis a message, http-1 / client", f"{redis_ratio:.2f}"))
    if args.accounts:
        for base in ("http-1", "http-100"):
            if base not in result or f"{base}-acct" not in result:
                continue
            acct = result[f"{base}-acct"]

            def ratio(k: str, base: str = base, acct: dict[str, Any] = acct) -> str:
                return f"{acct[k]['median'] / max(1e-9, result[base][k]['median']):.2f}"

            rows.append((f"{base}-acct / {base}: gatewayd, Redis CPU a message; msg/s",
                         f"{ratio('gw_us')}, {ratio('redis_us')}; {ratio('msg_per_s')}"))
    for base in ("http-1", "http-100"):
        twin = f"{base}-aiohttp"
        if base in result and twin in result:
            fast, aio = result[base], result[twin]

            def rel(k: str, fast: dict[str, Any] = fast, aio: dict[str, Any] = aio) -> str:
                return f"{fast[k]['median'] / max(1e-9, aio[k]['median']):.2f}"

            rows.append((f"{base} fast lane / aiohttp: gatewayd, Redis CPU a message; msg/s",
                         f"{rel('gw_us')}, {rel('redis_us')}; {rel('msg_per_s')}"))
    path = write_result("intake", result)
    print(table(rows))
    print(f"-> {path}")
    bad = any(r[t]["non_2xx"] for r in runs for t in tags if t != "client")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
