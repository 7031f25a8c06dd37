"""Webhooks (issue 18): what the sender delivers, and what it costs the message rate.

1. deliveries/s with 1, 10 and 100 endpoints: N synthetic state-change events are put
   in the events stream (the webhook group created first), then ``gatewayd webhooks
   run`` delivers them to a receiver process (aiohttp, one path an endpoint, events
   spread evenly over the endpoints' tenants). Figures: deliveries/s from the first
   request to the last event received, the sender's CPU per delivered event, the
   receiver's CPU.
2. e2e cost: bench.e2e's run (pre-queued messages, every policy on, the simulator with
   receipts) without webhooks, and with one endpoint that wants every state ("*"),
   with the sender as the daemon's child process (webhooks.sender = "process", the
   default), in the daemon's loop ("inline") and as a process started by hand
   (`gatewayd webhooks run`), the first two alternated in each round. Figures: final/s
   of each and its ratio to the run without in the same round (target: >= 0.85); the
   stricter "until all pushed": messages a second from the first submit until the
   receiver had every event (the receiver's own time of its last request: not when a
   poll after the daemon's shutdown saw it; a burst daemon that stops before its sender
   caught up leaves the tail to a `gatewayd webhooks run`); daemon (+ sender) CPU per
   message in the steady part; events a request.

3. the sender fed at e2e rates (--paced-rate, 20,000 events/s): --events state-change
   events appended at that rate while ``gatewayd webhooks run`` sends them to 1
   endpoint as they come (not from a backlog, as in 1.): its CPU an event.

   --warm: the same modes with the daemon (not --burst) and its sender started first and
   warm (binds up, the webhook lease held, a second more), the messages queued through
   gatewayd.client while it runs, the figures over the steady part (the finals between
   their 10th and 90th percentile): a cold start's backlog is neither inside nor outside
   the window by accident. "by CPU": the CPU a message of every process of the run
   (daemon, sender, Redis, simulator, receiver) without webhooks over with, in the same
   round: the rate ratio on cores these processes fill, which the machine's other work
   moves much less than the rates; "without the receiver": the same leaving out the
   receiver's CPU (the bench's app: on an app's own machine in a deployment, on the
   gateway's 2 cores here).

4. --instructions N (with --sender-only): the sender's instructions an event under
   valgrind's callgrind (load does not move them), N events from a backlog, 1 endpoint.

Median of --runs with min and max; writes bench/results/webhooks.json.

    python -m bench webhooks [--quick] [-n 20000] [--events 60000] [--runs 3]
                             [--batch 100] [--e2e-only] [--warm] [--against DIR]
    python -m bench webhooks --sender-only [--instructions 10000] [--against DIR]

--against DIR pairs each e2e mode with the same mode run by the gatewayd in DIR (a
before/after comparison: the rounds alternate which goes first); compare the CPU a
message, which moves less than the rates with the machine's other work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis

from bench import e2e, harness
from bench.common import ProcSampler, cpu_seconds, redis_cpu_s, summary, table, write_result
from gatewayd.store.embedded import free_port

PREFIX = harness.PREFIX


# The receiver: a process of its own, so its CPU is not the sender's ----------------------
def serve(port: int) -> None:
    from aiohttp import web

    counts: dict[str, int] = {}
    requests = [0]
    last = [0.0]  # when the last request came (the sender's end, not our poll's)

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        # Counting without decoding: each event is one '"event_id"' in the body.
        counts[request.path] = counts.get(request.path, 0) + body.count(b'"event_id"')
        requests[0] += 1
        last[0] = time.time()
        return web.Response(text="ok")

    async def count(_request: web.Request) -> web.Response:
        return web.json_response({"events": sum(counts.values()), "paths": len(counts),
                                  "requests": requests[0], "last_at": last[0]})

    app = web.Application()
    app.router.add_get("/count", count)
    app.router.add_post("/{tail:.*}", hook)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class ReceiverProc:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.webhooks", "--serve",
                                      str(self.port)], cwd=harness.ROOT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.count()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("receiver did not start")

    def count(self) -> int:
        return self.counts()[0]

    def counts(self) -> tuple[int, int]:
        """(events, requests) received so far."""
        got = self._get()
        return int(got["events"]), int(got["requests"])

    def last_at(self) -> float:
        """When the receiver had its last request (time.time())."""
        return float(self._get()["last_at"])

    def _get(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/count", timeout=5) as r:
            return dict(json.loads(r.read()))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# Events a request (webhooks.batch); --batch changes it (the endpoint's body limit
# allowing: 500 events are ~120 KB).
BATCH = [100]


def webhooks_section(recv: ReceiverProc, endpoints: int, *, enabled: bool,
                     events: str = '["*"]', per_tenant: bool = False,
                     sender: str = "process") -> str:
    out = [f"""
[webhooks]
enabled = {'true' if enabled else 'false'}
sender = "{sender}"
metrics_listen = "off"
allow_private = true
batch = {BATCH[0]}
"""]
    for i in range(endpoints):
        tenant = f"t{i}" if per_tenant else "*"
        out.append(f"""
[[webhooks.endpoints]]
name = "ep{i}"
url = "{recv.url(f'/ep{i}')}"
tenant = "{tenant}"
events = {events}
secret = "bench-secret-{i}"
concurrency = 4
""")
    return "".join(out)


def _config(rig: harness.Rig, opts: harness.GatewaydOptions, extra: str) -> Path:
    path = rig.config(opts)
    path.write_text(path.read_text(encoding="utf-8") + extra, encoding="utf-8")
    return path


async def _prepare_cursor(url: str) -> None:
    """The sender's cursor at the streams' ends now: what comes next is what it sends."""
    r = aioredis.from_url(url, decode_responses=True)
    for name, stream in (("events", f"{PREFIX}events"), ("mo", f"{PREFIX}mo")):
        last = await r.xrevrange(stream, count=1)
        await r.hset(f"{PREFIX}wh:cursor", name, last[0][0] if last else "0-0")
    await r.aclose()


async def _fill(url: str, n: int, endpoints: int) -> None:
    r = aioredis.from_url(url, decode_responses=True)
    now = time.time()
    for start in range(0, n, 5000):
        async with r.pipeline(transaction=False) as p:
            for k in range(start, min(n, start + 5000)):
                p.xadd(f"{PREFIX}events", {
                    "id": f"m{k // 2:09d}", "state": "submitted" if k % 2 == 0 else "delivered",
                    "at": repr(now), "category": "transactional", "to": "+86138****8000",
                    "carrier": "sim", "carrier_id": f"{k:x}", "segments": 1,
                    "tenant": f"t{(k // 2) % endpoints}", "ref": f"order-{k // 2}"})
            await p.execute()
    await r.aclose()


def _sender(cfg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "gatewayd", "webhooks", "run", "-c",
                             str(cfg)], cwd=harness.ROOT, stderr=subprocess.PIPE)


def _wait_count(recv: ReceiverProc, want: int, timeout_s: float) -> tuple[int, float]:
    """(events received, when the last of them came): the receiver's own time of its
    last request, not when this poll (50 ms apart, after the daemon's shutdown in an e2e
    run) saw it."""
    deadline = time.monotonic() + timeout_s
    got = recv.count()
    while got < want and time.monotonic() < deadline:
        time.sleep(0.05)
        got = recv.count()
    return got, recv.last_at()


def deliveries(rig: harness.Rig, recv: ReceiverProc, n: int, endpoints: int) -> dict[str, Any]:
    rig.flush()
    asyncio.run(_prepare_cursor(rig.redis_url))
    asyncio.run(_fill(rig.redis_url, n, endpoints))
    cfg = _config(rig, harness.GatewaydOptions(), webhooks_section(
        recv, endpoints, enabled=False, per_tenant=True))
    base = recv.count()
    proc = _sender(cfg)
    try:
        # From the first event received: the sender's start-up (imports, connections)
        # is not delivery work.
        _first, t0 = _wait_count(recv, base + 1, 60)
        cpu0, r_cpu0 = cpu_seconds(proc.pid), cpu_seconds(recv.proc.pid)
        first = recv.count()
        got, t1 = _wait_count(recv, base + n, max(60.0, n / 500))
        cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(10)
    done = got - first  # after the first request: the steady part
    return {"endpoints": endpoints, "events": n, "delivered": got - base,
            "per_s": done / (t1 - t0) if done > 0 and t1 > t0 else 0.0,
            "sender_cpu_us_per_event": 1e6 * cpu / max(1, done),
            "receiver_cpu_us_per_event": 1e6 * (cpu_seconds(recv.proc.pid) - r_cpu0)
            / max(1, done)}


async def _feed(url: str, n: int, rate: float) -> None:
    """n state-change events appended at ``rate`` a second (a pipeline every 5 ms)."""
    r = aioredis.from_url(url, decode_responses=True)
    step = 0.005
    t0 = time.monotonic()
    sent = 0
    while sent < n:
        k = min(n - sent, max(1, int(rate * step)))
        async with r.pipeline(transaction=False) as p:
            for j in range(sent, sent + k):
                p.xadd(f"{PREFIX}events", {
                    "id": f"p{j // 2:09d}", "state": "submitted" if j % 2 == 0 else "delivered",
                    "at": repr(time.time()), "category": "transactional",
                    "to": "+86138****8000", "carrier": "sim", "carrier_id": f"{j:x}",
                    "segments": 1, "tenant": "t0", "ref": f"order-{j // 2}"})
            await p.execute()
        sent += k
        await asyncio.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
    await r.aclose()


def paced(rig: harness.Rig, recv: ReceiverProc, n: int, rate: float) -> dict[str, Any]:
    """n events appended at ``rate`` a second while `gatewayd webhooks run` sends them to
    1 endpoint as they come, as in e2e (not from a backlog, as deliveries() does): the
    sender's CPU an event."""
    rig.flush()
    asyncio.run(_prepare_cursor(rig.redis_url))
    cfg = _config(rig, harness.GatewaydOptions(), webhooks_section(recv, 1, enabled=False))
    base = recv.count()
    proc = _sender(cfg)
    try:
        asyncio.run(_feed(rig.redis_url, 1, rate))  # started and reading: its first event
        _wait_count(recv, base + 1, 60)
        cpu0, r_cpu0 = cpu_seconds(proc.pid), asyncio.run(_redis_cpu(rig.redis_url))
        rig.reset_commandstats()
        asyncio.run(_feed(rig.redis_url, n, rate))
        got, _t1 = _wait_count(recv, base + 1 + n, max(60.0, n / 500))
        cpu = cpu_seconds(proc.pid) - cpu0
        r_cpu = asyncio.run(_redis_cpu(rig.redis_url)) - r_cpu0
        stats = rig.commandstats()
    finally:
        proc.terminate()
        proc.wait(10)
    # The sender's reads in Redis (its XREADs, or its read script and idle XREADs; the
    # script's XRANGEs are inside its EVALSHA's time), and all of Redis's CPU over the
    # window (the feeder's XADDs too: the same in a before/after pair).
    read_us = sum(stats.get(c, (0, 0))[1] for c in ("xread", "evalsha", "eval"))
    return {"rate": rate, "events": n, "delivered": got - base - 1,
            "sender_cpu_us_per_event": 1e6 * cpu / max(1, n),
            "redis_cpu_us_per_event": 1e6 * r_cpu / max(1, n),
            "redis_read_us_per_event": read_us / max(1, n)}


async def _redis_cpu(url: str) -> float:
    r = aioredis.from_url(url, decode_responses=True)
    try:
        return await redis_cpu_s(r)
    finally:
        await r.aclose()


def instructions(rig: harness.Rig, recv: ReceiverProc, n: int) -> dict[str, Any]:
    """The sender's instructions an event under valgrind's callgrind, which the machine's
    other work does not move (CPU time does, by 2x on the shared cores): n events queued
    as a backlog (full reads), `gatewayd webhooks run` sends them to 1 endpoint; counted
    from its first request (start-up left out: --instr-atstart=no, switched on then)."""
    rig.flush()
    asyncio.run(_prepare_cursor(rig.redis_url))
    asyncio.run(_fill(rig.redis_url, n, 1))
    cfg = _config(rig, harness.GatewaydOptions(), webhooks_section(recv, 1, enabled=False))
    out = rig.dir / "callgrind.out"
    base = recv.count()
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
         sys.executable, "-m", "gatewayd", "webhooks", "run", "-c", str(cfg)],
        cwd=harness.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_count(recv, base + 1, 600)
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        first = recv.count()
        got, _t = _wait_count(recv, base + n, 1200)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        proc.terminate()
        proc.wait(120)
    total = 0
    for line in out.read_text(encoding="utf-8").splitlines():
        if line.startswith(("summary:", "totals:")):
            total = max(total, int(line.split()[1]))
    done = got - first
    return {"events": n, "counted": done, "instructions_per_event": total / max(1, done)}


def e2e_run(rig: harness.Rig, recv: ReceiverProc, n: int, run: int, mode: str
            ) -> dict[str, Any]:
    """One bench.e2e run; mode "off", "daemon" (sender inside: webhooks.sender =
    "inline"), "child" (the daemon's sender process: "process", the default) or "apart"
    (`gatewayd webhooks run` started by hand)."""
    rig.flush()
    extra = "" if mode == "off" else webhooks_section(
        recv, 1, enabled=mode in ("daemon", "child"),
        sender="inline" if mode == "daemon" else "process")
    if mode != "off":
        asyncio.run(_prepare_cursor(rig.redis_url))
    items = harness.make_messages(n, run=run)
    ids = rig.enqueue(items)
    cfg = _config(rig, harness.GatewaydOptions(), extra)
    base, base_requests = recv.counts()
    sender = _sender(cfg) if mode == "apart" else None
    child = _ChildSampler(cfg) if mode == "child" else None
    try:
        with ProcSampler(sender.pid if sender else os.getpid()) as sp, \
                ProcSampler(recv.proc.pid) as rcv:
            out = harness.run_gatewayd(rig, cfg, timeout_s=max(120.0, n / 500))
            if out.code != 0:
                raise SystemExit(f"gatewayd exited {out.code}: {out.stderr}")
            want = asyncio.run(_xlen(rig.redis_url)) if mode != "off" else 0
            got, t_pushed = 0, 0.0
            if mode == "apart":
                got, t_pushed = _wait_count(recv, base + want, 120)
                got -= base
            elif mode in ("daemon", "child"):
                got = recv.count() - base
                if got < want:  # the burst daemon stopped first: a sender finishes the tail
                    tail = _sender(cfg)
                    try:
                        _got, t_pushed = _wait_count(recv, base + want, 120)
                    finally:
                        tail.terminate()
                        tail.wait(10)
                else:  # all there before the daemon stopped: when the last came
                    t_pushed = recv.last_at()
    finally:
        if sender is not None:
            sender.terminate()
            sender.wait(10)
    requests = recv.counts()[1] - base_requests
    res = e2e.analyse(rig.statuses(ids))
    # CPU in the steady part (first submit .. last final), as bench.e2e's "steady".
    t0, t1 = res["first_submit_at"], res["last_final_at"]
    steady = max(1, res["final"])
    sender_cpu = (sp.cpu_between(t0, t1) if sender is not None else
                  child.cpu_between(t0, t1) if child is not None else 0.0)
    pushed_per_s = (res["final"] / (t_pushed - t0) if t_pushed > t0 else 0.0)
    machine = out.gw.cpu_between(t0, t1) + sender_cpu + out.sim.cpu_between(t0, t1) + \
        rcv.cpu_between(t0, t1) + (out.redis.cpu_between(t0, t1) if out.redis else 0.0)
    return {"mode": mode, "final_per_s": res["final_per_s"], "states": res["states"],
            # Every process of the run (daemon, sender, Redis, simulator, receiver): on
            # a machine whose cores they fill, the rate goes as its inverse.
            "machine_cpu_us_per_msg": 1e6 * machine / steady,
            # Messages a second until every event of every message was pushed.
            "pushed_per_s": pushed_per_s if mode != "off" else res["final_per_s"],
            "gw_cpu_us_per_msg": 1e6 * out.gw.cpu_between(t0, t1) / steady,
            "sender_cpu_us_per_msg": 1e6 * sender_cpu / steady,
            "events": want, "pushed": got,
            # Fewer, fuller requests cost the sender less an event.
            "events_per_request": want / requests if requests else 0.0}


def e2e_warm(rig: harness.Rig, recv: ReceiverProc, n: int, run: int, mode: str
             ) -> dict[str, Any]:
    """One e2e run with everything started and warm first (as a daemon that has been up):
    the daemon (not --burst), its sender (the child, inline, or `gatewayd webhooks run`
    started before it), each holding what it needs (the carrier's binds; the sender's
    lease) plus a second; then the N messages are queued through gatewayd.client while it
    runs, and the figures are taken over the steady part: the finals between the 10th
    and the 90th percentile of their times (no ramp-up, no tail; the `queued` events
    of every mode inside the same stretch). The sender's backlog from a cold start is
    neither inside nor outside the window by accident."""
    rig.flush()
    extra = "" if mode == "off" else webhooks_section(
        recv, 1, enabled=mode in ("daemon", "child"),
        sender="inline" if mode == "daemon" else "process")
    if mode != "off":
        asyncio.run(_prepare_cursor(rig.redis_url))
    items = harness.make_messages(n, run=run)
    cfg = _config(rig, harness.GatewaydOptions(), extra)
    base, base_requests = recv.counts()
    sender = _sender(cfg) if mode == "apart" else None
    child = _ChildSampler(cfg) if mode == "child" else None
    timeout_s = max(120.0, n / 500)
    proc = rig.gatewayd(cfg, timeout_s=timeout_s, burst=False)
    got, want, t_pushed = 0, 0, 0.0
    try:
        assert rig.sim is not None
        with ProcSampler(proc.pid) as gw, \
                ProcSampler(sender.pid if sender else os.getpid()) as sp, \
                ProcSampler(rig.sim.pid) as sim, ProcSampler(recv.proc.pid) as rcv, \
                ProcSampler(rig.redis_pid or proc.pid) as red:
            asyncio.run(_warm(rig.redis_url, proc, lease=mode != "off"))
            ids = rig.enqueue(items)
            deadline = time.monotonic() + timeout_s
            while rig.backlog() and time.monotonic() < deadline:
                time.sleep(0.1)
            if mode != "off":
                want = asyncio.run(_xlen(rig.redis_url))
                got, t_pushed = _wait_count(recv, base + want, 120)
                got -= base
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
        if sender is not None:
            sender.terminate()
            sender.wait(10)
    if proc.returncode not in (0, -15):
        raise SystemExit(f"gatewayd exited {proc.returncode}: {err.decode()[-2000:]}")
    requests = recv.counts()[1] - base_requests
    statuses = rig.statuses(ids)
    res = e2e.analyse(statuses)
    done = sorted(float(s["done_at"]) for s in statuses if s.get("done_at"))
    lo, hi = done[len(done) // 10], done[(9 * len(done)) // 10]
    steady = max(1, (9 * len(done)) // 10 - len(done) // 10)
    sender_cpu = (sp.cpu_between(lo, hi) if sender is not None else
                  child.cpu_between(lo, hi) if child is not None else 0.0)
    pushed_per_s = (res["final"] / (t_pushed - res["first_submit_at"])
                    if t_pushed > res["first_submit_at"] else 0.0)
    gw_cpu = gw.cpu_between(lo, hi)
    others = sum(p.cpu_between(lo, hi) for p in (sim, rcv, red) if p.pid != proc.pid)
    redis_cpu = red.cpu_between(lo, hi) if red.pid != proc.pid else 0.0
    receiver_cpu = rcv.cpu_between(lo, hi) if mode != "off" else 0.0
    return {"mode": mode, "final_per_s": steady / (hi - lo) if hi > lo else 0.0,
            "redis_cpu_us_per_msg": 1e6 * redis_cpu / steady,
            "receiver_cpu_us_per_msg": 1e6 * receiver_cpu / steady,
            "all_final_per_s": res["final_per_s"], "states": res["states"],
            "pushed_per_s": pushed_per_s if mode != "off" else res["final_per_s"],
            "gw_cpu_us_per_msg": 1e6 * gw_cpu / steady,
            "sender_cpu_us_per_msg": 1e6 * sender_cpu / steady,
            "machine_cpu_us_per_msg": 1e6 * (gw_cpu + sender_cpu + others) / steady,
            "events": want, "pushed": got,
            "events_per_request": want / requests if requests else 0.0}


async def _warm(url: str, proc: subprocess.Popen[bytes], *, lease: bool) -> None:
    """Until the daemon has its carrier binds up and (``lease``) a sender holds the
    webhook lease, then a second more (the sender's first reads, imports done)."""
    r = aioredis.from_url(url, decode_responses=True)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"gatewayd exited {proc.returncode} while starting")
            binds = cast(list[str], await r.hvals(f"{PREFIX}carrier:binds"))
            up = any(_binds_up(v) for v in binds)
            if up and (not lease or await r.exists(f"{PREFIX}lease:webhooks")):
                break
            await asyncio.sleep(0.1)
        else:
            raise SystemExit("gatewayd not up (binds, webhook lease) within 60 s")
        await asyncio.sleep(1.0)
    finally:
        await r.aclose()


def _binds_up(doc: str) -> bool:
    """A daemon's published binds (Keys.carrier_binds): has it any bind up?"""
    try:
        binds = json.loads(doc).get("binds")
    except ValueError:
        return False
    return bool(binds)


class _ChildSampler:
    """CPU of the daemon's sender process (``webhooks run -c CFG --child``), found in
    /proc once the daemon starts it, sampled until it exits."""

    def __init__(self, cfg: Path) -> None:
        self.cfg = str(cfg).encode()
        self.sampler: ProcSampler | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _find(self) -> int:
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/cmdline", "rb") as f:
                        argv = f.read().split(b"\0")
                except OSError:
                    continue
                if b"--child" in argv and self.cfg in argv:
                    return int(d)
        return 0

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pid = self._find()
            if pid:
                self.sampler = ProcSampler(pid).__enter__()
                return
            time.sleep(0.02)

    def cpu_between(self, t0: float, t1: float) -> float:
        self._thread.join(1.0)
        if self.sampler is None:
            return 0.0
        self.sampler.__exit__()
        return self.sampler.cpu_between(t0, t1)


async def _xlen(url: str) -> int:
    r = aioredis.from_url(url, decode_responses=True)
    n = int(await r.xlen(f"{PREFIX}events"))
    await r.aclose()
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench webhooks",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20_000, help="messages per e2e run")
    ap.add_argument("--events", type=int, default=60_000, help="events per delivery run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=100, help="events a request (webhooks.batch)")
    ap.add_argument("--e2e-only", action="store_true", help="skip the deliveries/s runs")
    ap.add_argument("--instructions", type=int, default=0, metavar="N",
                    help="with --sender-only: also the sender's instructions an event "
                         "under valgrind (callgrind), N events from a backlog, each run")
    ap.add_argument("--sender-only", action="store_true",
                    help="only the sender fed at --paced-rate (its CPU an event; paired "
                         "with --against's in each run): no deliveries/s, no e2e")
    ap.add_argument("--paced-rate", type=float, default=20_000.0,
                    help="events a second for the paced run (as they come in e2e)")
    ap.add_argument("--against", default="", metavar="DIR",
                    help="also run the e2e modes with the gatewayd in DIR (e.g. `git archive "
                         "main | tar -x -C DIR`), paired with this tree's in each round")
    ap.add_argument("--warm", action="store_true",
                    help="e2e with the daemon and its sender started and warm first, the "
                         "messages queued while it runs, figures over the steady part "
                         "(finals' 10th-90th percentile); default: pre-queued, --burst")
    ap.add_argument("--modes", default="child,daemon,apart",
                    help="the e2e modes with webhooks to run (each round also runs 'off')")
    ap.add_argument("--quick", action="store_true", help="-n 2000 --events 5000 --runs 1")
    ap.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    if args.quick:
        args.n, args.events, args.runs = min(args.n, 2000), min(args.events, 5000), 1
    BATCH[0] = args.batch
    chosen = [m for m in args.modes.split(",") if m in ("child", "daemon", "apart")]
    modes = [] if args.sender_only else ["off", *chosen]
    if args.against and modes:
        modes += [f"{m}@against" for m in ("daemon", "apart") if m in chosen]
    result: dict[str, Any] = {"n": args.n, "events": args.events, "batch": args.batch,
                              "warm": args.warm}
    rows: list[tuple[str, str]] = []
    with harness.Rig(0.2) as rig:
        recv = ReceiverProc()
        try:
            for eps in () if args.e2e_only or args.sender_only else (1, 10, 100):
                runs = [deliveries(rig, recv, args.events, eps) for _ in range(args.runs)]
                key = f"endpoints_{eps}"
                result[key] = {"per_s": summary([r["per_s"] for r in runs]),
                               "sender_cpu_us_per_event": summary(
                                   [r["sender_cpu_us_per_event"] for r in runs]),
                               "receiver_cpu_us_per_event": summary(
                                   [r["receiver_cpu_us_per_event"] for r in runs]),
                               "runs": runs}
                s = result[key]
                print(f"{eps} endpoint(s): {s['per_s']['median']:,.0f} deliveries/s, sender "
                      f"{s['sender_cpu_us_per_event']['median']:.1f} us/event", flush=True)
                rows.append((f"deliveries/s, {eps} endpoint(s)",
                             f"{s['per_s']['median']:,.0f} (min {s['per_s']['min']:,.0f}, "
                             f"max {s['per_s']['max']:,.0f}); sender "
                             f"{s['sender_cpu_us_per_event']['median']:.1f} us/event"))
            # The sender fed at e2e rates, paired with --against's in each run.
            tags = ["", "@against"] if args.against else [""]
            paced_runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tags}
            own = harness.ROOT
            for i in range(args.runs):
                for tag in tags if i % 2 == 0 else tags[::-1]:
                    harness.ROOT = Path(args.against) if tag else own
                    try:
                        pr = paced(rig, recv, args.events, args.paced_rate)
                    finally:
                        harness.ROOT = own
                    paced_runs[tag].append(pr)
                    print(f"paced{tag} {args.paced_rate:,.0f} events/s: sender "
                          f"{pr['sender_cpu_us_per_event']:.1f} us/event, Redis "
                          f"{pr['redis_cpu_us_per_event']:.1f} (its reads "
                          f"{pr['redis_read_us_per_event']:.2f})", flush=True)
            if args.instructions:
                ins: dict[str, list[float]] = {t: [] for t in tags}
                for i in range(args.runs):
                    for tag in tags if i % 2 == 0 else tags[::-1]:
                        harness.ROOT = Path(args.against) if tag else own
                        try:
                            ir = instructions(rig, recv, args.instructions)
                        finally:
                            harness.ROOT = own
                        ins[tag].append(ir["instructions_per_event"])
                        print(f"instructions{tag}: {ir['instructions_per_event']:,.0f} an "
                              f"event ({ir['counted']:,} events)", flush=True)
                for tag, xs in ins.items():
                    result[f"instructions{tag}"] = summary(xs)
                    rows.append((f"sender instructions an event{tag}",
                                 f"{summary(xs)['median']:,.0f} (min {min(xs):,.0f}, "
                                 f"max {max(xs):,.0f})"))
            for tag, prs in paced_runs.items():
                cpu = summary([r["sender_cpu_us_per_event"] for r in prs])
                rcpu = summary([r["redis_cpu_us_per_event"] for r in prs])
                rread = summary([r["redis_read_us_per_event"] for r in prs])
                result[f"paced{tag}"] = {"rate": args.paced_rate, "sender_cpu_us_per_event": cpu,
                                         "redis_cpu_us_per_event": rcpu,
                                         "redis_read_us_per_event": rread, "runs": prs}
                rows.append((f"sender fed {args.paced_rate:,.0f} events/s{tag}",
                             f"{cpu['median']:.1f} us/event (min {cpu['min']:.1f}, "
                             f"max {cpu['max']:.1f}); Redis {rcpu['median']:.1f} us/event "
                             f"(its reads {rread['median']:.2f})"))
            e2e_runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
            for i in range(0 if args.sender_only else args.runs):
                # With --against: each mode with both trees in the same minute, in turn
                # first (the machine's other work moves the rates more than a change).
                turns = ["off"]
                # The default deployment and the inline sender next to each other, in
                # turn first.
                turns += ["child", "daemon"] if i % 2 == 0 else ["daemon", "child"]
                for m in ("daemon", "apart"):
                    pair = [m, f"{m}@against"] if args.against else [m]
                    turns += pair[1:] if m == "daemon" else \
                        (pair if i % 2 == 0 else pair[::-1])
                for mode in turns:
                    if mode not in e2e_runs:
                        continue
                    harness.ROOT = Path(args.against) if mode.endswith("@against") else own
                    try:
                        r = (e2e_warm if args.warm else e2e_run)(
                            rig, recv, args.n, i, mode.split("@")[0])
                    finally:
                        harness.ROOT = own
                    e2e_runs[mode].append(r)
                    print(f"e2e round {i + 1} {mode}: {r['final_per_s']:,.0f} final/s, "
                          f"gatewayd {r['gw_cpu_us_per_msg']:.0f} us/msg, sender "
                          f"{r['sender_cpu_us_per_msg']:.0f} us/msg, Redis "
                          f"{r.get('redis_cpu_us_per_msg', 0.0):.1f} us/msg, receiver "
                          f"{r.get('receiver_cpu_us_per_msg', 0.0):.1f} us/msg, all processes "
                          f"{r['machine_cpu_us_per_msg']:.0f} us/msg, events pushed "
                          f"{r['pushed']:,}/{r['events']:,} by the end of dispatch, all "
                          f"pushed at {r['pushed_per_s']:,.0f} msg/s, "
                          f"{r['events_per_request']:.0f} events a request", flush=True)
        finally:
            recv.stop()
    for mode in modes:
        rs = e2e_runs[mode]
        result[f"e2e_{mode}"] = {
            "final_per_s": summary([r["final_per_s"] for r in rs]),
            "gw_cpu_us_per_msg": summary([r["gw_cpu_us_per_msg"] for r in rs]),
            "sender_cpu_us_per_msg": summary([r["sender_cpu_us_per_msg"] for r in rs]),
            "redis_cpu_us_per_msg": summary([r.get("redis_cpu_us_per_msg", 0.0) for r in rs]),
            "receiver_cpu_us_per_msg": summary(
                [r.get("receiver_cpu_us_per_msg", 0.0) for r in rs]),
            "machine_cpu_us_per_msg": summary([r["machine_cpu_us_per_msg"] for r in rs]),
            "events_per_request": summary([r.get("events_per_request", 0.0) for r in rs]),
            "runs": rs}
        if mode != "off":
            ratios = [r["final_per_s"] / o["final_per_s"]
                      for r, o in zip(rs, e2e_runs["off"], strict=True)]
            result[f"ratio_{mode}"] = summary(ratios)
            # What the rate would be on cores these processes fill: the CPU a message of
            # every process without webhooks over with (the same round), a figure the
            # machine's other work moves much less than the rates.
            result[f"cpu_ratio_{mode}"] = summary(
                [o["machine_cpu_us_per_msg"] / r["machine_cpu_us_per_msg"]
                 for r, o in zip(rs, e2e_runs["off"], strict=True)
                 if r["machine_cpu_us_per_msg"]])
            # The same without the receiver's CPU (the bench's app, on the gateway's cores
            # here; an app's own machine in a deployment).
            result[f"cpu_ratio_gateway_{mode}"] = summary(
                [o["machine_cpu_us_per_msg"] / (r["machine_cpu_us_per_msg"]
                                                - r.get("receiver_cpu_us_per_msg", 0.0))
                 for r, o in zip(rs, e2e_runs["off"], strict=True)
                 if r["machine_cpu_us_per_msg"]])
            # Stricter: until every event was pushed, against the rate without webhooks
            # over the same stretch (first submit -> last final, ramp and tail in both:
            # the steady window's rate would be no like-for-like denominator).
            result[f"ratio_pushed_{mode}"] = summary(
                [r["pushed_per_s"] / o["pushed_per_s"]
                 for r, o in zip(rs, e2e_runs["off"], strict=True)])
    labels = {"off": "no webhooks", "child": "sender process (default)",
              "daemon": "sender inline", "apart": "sender apart (by hand)"}
    for mode in modes:
        label = labels[mode.split("@")[0]] + (" (--against)" if "@" in mode else "")
        e = result[f"e2e_{mode}"]
        line = (f"{e['final_per_s']['median']:,.0f} final/s; gatewayd "
                f"{e['gw_cpu_us_per_msg']['median']:.0f} us/msg")
        if mode.startswith(("apart", "child")):
            line += f" + sender {e['sender_cpu_us_per_msg']['median']:.0f} us/msg"
        if mode != "off":
            line += f"; receiver {e['receiver_cpu_us_per_msg']['median']:.1f} us/msg"
        line += (f"; Redis {e['redis_cpu_us_per_msg']['median']:.1f} us/msg; all processes "
                 f"{e['machine_cpu_us_per_msg']['median']:.0f} us/msg")
        if mode != "off":
            r = result[f"ratio_{mode}"]
            p = result[f"ratio_pushed_{mode}"]
            c = result[f"cpu_ratio_{mode}"]
            g = result[f"cpu_ratio_gateway_{mode}"]
            line += (f"; ratio {r['median']:.2f} (min {r['min']:.2f}, max {r['max']:.2f}); "
                     f"until all pushed {p['median']:.2f}; by CPU {c['median']:.2f} "
                     f"(min {c['min']:.2f}, max {c['max']:.2f}); by CPU without the "
                     f"receiver {g['median']:.2f}")
        rows.append((f"e2e, {label}", line))
    path = write_result("webhooks", result)
    print(table(rows))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
