"""End to end against Kannel: gatewayd and Kannel 1.4.5 on the same SMSC, the same run.

Issue 17 item 2. One independent SMSC for the whole bench, tests/interop/node_smsc.js
(npm ``smpp``, receipts 20 ms after each submit_sm; bench/kannel_rig.py), one private
Redis, and each round, interleaved (even rounds gatewayd first, odd rounds Kannel
first), N messages of bench/harness's mix (30 % Chinese, 5 % long) a phase:

  gw-prequeued   N entries queued (gatewayd.client) before ``gatewayd run`` starts:
                 from the first submit to the last final state (as bench/e2e)
  gw-send        a running, bound daemon; another process (bench/client_producer.py)
                 queues N through Client.send (chunks of 2,000): from the call's start to
                 the last final state
  gw-send_many   the same through Client.send_many
  gw-http        a running, bound daemon; wrk POSTs /v1/messages, one message a request,
                 --connections keep-alive connections (200): from wrk's first message
                 (each connection's first request is a warm-up GET: see _WRK_LUA) to the
                 last final state
  kannel-dlr     bearerbox + smsbox (one SMPP transceiver, max-pending-submits 1000,
                 internal DLR storage): wrk GETs /cgi-bin/sendsms, one message a request,
                 the same connections, dlr-mask 3 with a dlr-url to bench/dlr_sink.py:
                 from wrk's first message to the last message's final receipt counted by
                 the sink
  kannel-nodlr   the same without DLR: to bearerbox's "sent" count reaching N (every
                 submit_sm answered)

gatewayd: every policy on (bench/harness's policy), receipts on (registered_delivery),
one bind with window 1,000, a final state is its receipt recorded in Redis. Kannel: its
receipts reach the application as HTTP calls (its only way); gatewayd's as status
records and events in Redis. Figures: msg/s, and CPU a message of every process over
the phase's window (from /proc: gatewayd, Redis, the producer, wrk, bearerbox, smsbox,
the sink, the SMSC); per-round ratios to kannel-dlr of the same round; medians of --runs
(min-max). Writes bench/results/kannel.json. Targets (issue 17 item 2): gw-http >= 1.5x
kannel-dlr; gw-send (and send_many) >= gw-prequeued and >= 2x kannel-dlr.

Needs Kannel (``apt-get install -y kannel``: bearerbox and smsbox; the package's service
need not run), wrk (``apt-get install -y wrk``), node and npm (npm ``smpp`` is installed
into the tests' cache when missing).

    python -m bench kannel [--quick] [-n 20000] [--runs 3] [--connections 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from bench import harness, intake
from bench.common import ProcSampler, summary, table, write_result
from bench.e2e import analyse
from bench.kannel_rig import (
    INSTALL_HINT,
    KANNEL_PASS,
    KANNEL_USER,
    DlrSink,
    Kannel,
    NodeSmsc,
    kannel_binaries,
    kannel_version,
)
from gatewayd.store.embedded import EmbeddedRedis, free_port

GW_PHASES = ["gw-prequeued", "gw-send", "gw-send_many", "gw-http"]
K_PHASES = ["kannel-dlr", "kannel-nodlr"]
PHASES = GW_PHASES + K_PHASES
PROCS = ["gatewayd", "redis", "producer", "wrk", "bearerbox", "smsbox", "sink", "smsc"]
TIMEOUT_S = 300.0
# The SMSC's first message id: every id then has a hex letter ("00A0000001"). From its
# default (0x2A1, all digits) gatewayd, which matches a receipt whichever base the SMSC
# writes it in (gatewayd/carrier/ids.py), pairs some receipts with the wrong message
# once ~1,000 are in flight ("0000000900" is 2,304 read as hex, 900 as decimal); Kannel
# is told the bases instead (msg-id-type). --smsc-id-base 0x2A0 shows it.
ID_BASE = 0xA0000000

# Each line of the file is one request: a JSON body to POST, or a path to GET. Until the
# bench drops the GO file, every request is a filler (its status FILLER, not counted;
# one a connection every 50 ms): the bench drops it once the server has accepted every
# connection (or after a minute). Kannel listens with a backlog
# of 10: of 200 connections opened at once some wait seconds (or a minute) for the kernel
# to retry their handshake, and a line sent on one of those stalled the run (or was
# lost with the connection). wrk also calls request() once before it starts (to check
# the script): a filler too. The first line sent drops the STARTED file (the bench's
# clock starts). Every line is sent once; once all are sent,
# delay() parks each connection that comes free (10 minutes), and a request asked for
# anyway gets a filler. Once every line is answered, the marker file gets the answers'
# status counts (the bench then stops wrk with SIGINT).
_WRK_LUA = """
local lines = {}
for line in io.lines("%(file)s") do lines[#lines + 1] = line end
local calls = 0
local sent = 0
local answered = 0
local codes = {}
local headers = {%(headers)s}
local go = false
local function gone()
  if not go then
    local f = io.open("%(go)s", "r")
    if f then f:close(); go = true end
  end
  return go
end
request = function()
  calls = calls + 1
  if calls == 1 or not gone() or sent >= #lines then
    return wrk.format("GET", "%(filler)s")
  end
  sent = sent + 1
  if sent == 1 then io.open("%(started)s", "w"):close() end
  %(make)s
end
delay = function()
  if sent >= #lines then return 600000 end
  if not go then return 50 end
  return 0
end
response = function(status, hdrs, body)
  if status == %(filler_status)d then return end
  codes[status] = (codes[status] or 0) + 1
  answered = answered + 1
  if answered == #lines then
    local f = io.open("%(marker)s", "w")
    for code, count in pairs(codes) do f:write(code, " ", count, "\\n") end
    f:close()
  end
end
"""


class NodeRig(harness.Rig):
    """bench/harness's rig (private Redis, policy, configs) with the node-smpp SMSC in
    place of gatewayd's own simulator."""

    smsc: NodeSmsc
    id_base = ID_BASE

    def __enter__(self) -> NodeRig:
        if not self.redis_url:
            self._redis = EmbeddedRedis(self.dir / "redis", port=free_port(),
                                        binary=harness.bench_redis_server())
            self.redis_url = self._redis.start()
        self.smsc = NodeSmsc(self.id_base)
        self.sim_port = self.smsc.port
        return self

    def __exit__(self, *exc: object) -> None:
        self.smsc.close()
        super().__exit__(*exc)


class Watch:
    """CPU of named processes over a phase (ProcSampler each; a name may be several)."""

    def __init__(self) -> None:
        self.samplers: dict[str, list[ProcSampler]] = {}

    def add(self, name: str, pid: int) -> None:
        s = ProcSampler(pid, interval_s=0.1)
        s.__enter__()
        self.samplers.setdefault(name, []).append(s)

    def stop(self) -> None:
        for ss in self.samplers.values():
            for s in ss:
                s.__exit__()

    def us_per_msg(self, t0: float, t1: float, n: int) -> dict[str, float]:
        return {name: 1e6 * sum(s.cpu_between(t0, t1) for s in ss) / max(1, n)
                for name, ss in self.samplers.items()}


def _wrk(rig: NodeRig, wrk: str, tag: str, lines: list[str], base_url: str, *,
         post: bool, connections: int) -> tuple[subprocess.Popen[str], Path, Path]:
    f = rig.dir / f"lines-{tag}.txt"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    marker = rig.dir / f"answered-{tag}"
    marker.unlink(missing_ok=True)
    started = rig.dir / f"started-{tag}"
    started.unlink(missing_ok=True)
    go = rig.dir / f"go-{tag}"
    go.unlink(missing_ok=True)
    conns = min(connections, len(lines))
    if post:
        headers = ('["Content-Type"] = "application/json", '
                   f'["Authorization"] = "Bearer {intake.API_KEY}"')
        make = 'return wrk.format("POST", "/v1/messages", headers, lines[sent])'
        filler, filler_status = "/healthz", 200
    else:
        headers = ""
        make = 'return wrk.format("GET", lines[sent], headers)'
        filler, filler_status = "/no-such-page", 404
    script = rig.dir / f"wrk-{tag}.lua"
    script.write_text(_WRK_LUA % {"file": f, "headers": headers, "filler": filler,
                                  "make": make, "filler_status": filler_status,
                                  "marker": marker, "started": started, "go": go},
                      encoding="utf-8")
    cmd = [wrk, "-t", "1", "-c", str(conns), "-d", f"{TIMEOUT_S:.0f}s", "-s", str(script),
           base_url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Go once every connection is accepted, or after a minute: by then a connection
    # still in its handshake has given up (the kernel retries the handshake for ~1 min),
    # and its first request was a filler anyway. (Going earlier, once the count stood
    # still for a second, still put lines on connections that later failed: a run
    # stalled.)
    port = int(base_url.rsplit(":", 1)[1])
    wait = time.monotonic() + 60
    while _accepted(port) < conns and time.monotonic() < wait and proc.poll() is None:
        time.sleep(0.05)
    go.touch()
    return proc, marker, started


def _accepted(port: int) -> int:
    """Established connections on the server's side of ``port`` (a connection whose
    handshake the server has not completed is not counted)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    return len(out.splitlines())


def _wait_started(proc: subprocess.Popen[str], started: Path, deadline: float) -> float:
    """The time wrk sent its first line (polled: within ~2 ms)."""
    while not started.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("kannel: wrk did not start sending")
        time.sleep(0.002)
    return time.time()


def _wait_answered(proc: subprocess.Popen[str], marker: Path, deadline: float
                   ) -> dict[str, int]:
    """Until every line is answered; wrk stopped; the answers' status counts."""
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    if not marker.exists():
        raise SystemExit(f"kannel: wrk did not get every answer:\n{out[-2000:]}")
    return {k: int(v) for k, v in (ln.split() for ln in marker.read_text().splitlines())}


def _kannel_paths(items: list[dict[str, str]], dlr_port: int) -> list[str]:
    """sendsms GETs: UTF-8 text, UCS-2 (coding 2) when it is not plain ASCII, and with
    ``dlr_port`` a dlr-url naming the message (%d: Kannel puts the receipt's type)."""
    out = []
    for m in items:
        q = {"username": KANNEL_USER, "password": KANNEL_PASS, "from": "10690",
             "to": m["to"], "text": m["text"], "charset": "UTF-8"}
        if not m["text"].isascii():
            q["coding"] = "2"
        if dlr_port:
            q["dlr-mask"] = "3"
            q["dlr-url"] = f"http://127.0.0.1:{dlr_port}/d?r={m['ref']}&t=%d"
        out.append("/cgi-bin/sendsms?" + urllib.parse.urlencode(q, quote_via=urllib.parse.quote))
    return out


def _gw_finish(rig: NodeRig, gw: subprocess.Popen[bytes], n: int, t0: float,
               deadline: float) -> dict[str, Any]:
    """Until all n messages are final (or the deadline); the daemon stopped; the final
    states' account. The backlog (queues + awaiting receipts) reaching 0 is not enough:
    a batch whose entries are acknowledged and whose submits are not yet recorded is in
    neither (``gatewayd run --burst`` stops then, so it is not used here)."""
    while True:
        while rig.backlog() and time.monotonic() < deadline:
            time.sleep(0.1)
        a = analyse(intake._all_statuses(rig))
        if a["final"] >= n or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    intake._stop(gw)
    a["t0"] = t0 if t0 else a["first_submit_at"]
    return a


def gw_phase(rig: NodeRig, wrk: str, phase: str, n: int, run: int, connections: int
             ) -> dict[str, Any]:
    rig.flush()
    items = harness.make_messages(n, run=run)
    deadline = time.monotonic() + TIMEOUT_S
    w = Watch()
    w.add("redis", rig.redis_pid)
    w.add("smsc", rig.smsc.pid)
    extra: dict[str, Any] = {}
    try:
        if phase == "gw-prequeued":
            rig.enqueue(items)
            gw = rig.gatewayd(rig.config(harness.GatewaydOptions()), timeout_s=0,
                              burst=False)
            w.add("gatewayd", gw.pid)
            a = _gw_finish(rig, gw, n, 0.0, deadline)
        else:
            port = free_port()
            cfg = intake._config(rig, port, rig.sim_port, "kannel-bench")
            binds = rig.smsc.binds
            gw = rig.gatewayd(cfg, timeout_s=0, burst=False)
            w.add("gatewayd", gw.pid)
            try:
                intake._wait_http(port)
                rig.smsc.wait_bind(binds)
                if phase == "gw-http":
                    proc, marker, started = _wrk(rig, wrk, f"{phase}-{run}",
                                                 intake._bodies(n, run, 1),
                                                 f"http://127.0.0.1:{port}", post=True,
                                                 connections=connections)
                    w.add("wrk", proc.pid)
                    t0 = _wait_started(proc, started, deadline)
                    extra["answers"] = _wait_answered(proc, marker, deadline)
                else:
                    api = phase.removeprefix("gw-")
                    prod = subprocess.Popen(
                        [sys.executable, "-m", "bench.client_producer", rig.redis_url, str(n),
                         str(run), api], cwd=harness.ROOT, stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, text=True)
                    assert prod.stdin is not None and prod.stdout is not None
                    if prod.stdout.readline().strip() != "ready":
                        raise SystemExit(f"kannel: the producer did not start ({phase})")
                    w.add("producer", prod.pid)
                    prod.stdin.write("go\n")
                    prod.stdin.flush()
                    done = json.loads(prod.stdout.readline())
                    prod.wait(30)
                    t0 = float(done["t0"])
                    extra["producer_s"] = float(done["t1"]) - t0
            except BaseException:
                intake._stop(gw)
                raise
            a = _gw_finish(rig, gw, n, t0, deadline)
    finally:
        w.stop()
    t0, t1 = a["t0"], a["last_final_at"]
    out = {"msg_per_s": a["final"] / (t1 - t0) if t1 > t0 else 0.0, "final": a["final"],
           "states": a["states"], "seconds": t1 - t0,
           "cpu_us": w.us_per_msg(t0, t1, a["final"]), **extra}
    if a["final"] != n:
        out["warning"] = f"{a['final']} of {n} messages reached a final state"
    return out


def kannel_round(rig: NodeRig, wrk: str, binaries: tuple[str, str], n: int, run: int,
                 connections: int, phases: list[str]) -> dict[str, dict[str, Any]]:
    items = harness.make_messages(n, run=run)
    k = Kannel(rig.dir / f"kannel-{run}", rig.smsc, binaries)
    out: dict[str, dict[str, Any]] = {}
    try:
        for phase in phases:
            deadline = time.monotonic() + TIMEOUT_S
            w = Watch()
            for name, pid in (("bearerbox", k.bearerbox.pid), ("smsbox", k.smsbox.pid),
                              ("smsc", rig.smsc.pid)):
                w.add(name, pid)
            sink = DlrSink(rig.dir, n, f"{phase}-{run}") if phase == "kannel-dlr" else None
            try:
                if sink:
                    w.add("sink", sink.pid)
                sent0 = k.sent()
                proc, marker, started = _wrk(rig, wrk, f"{phase}-{run}",
                                             _kannel_paths(items, sink.port if sink else 0),
                                             k.sendsms_url(), post=False,
                                             connections=connections)
                w.add("wrk", proc.pid)
                t0 = _wait_started(proc, started, deadline)
                answers = _wait_answered(proc, marker, deadline)
                t1, got, extra = 0.0, 0, {}
                while time.monotonic() < deadline:
                    if sink:
                        res = sink.result()
                        if res:
                            t1, got, extra = float(res["at"]), int(res["final"]), res
                            break
                    elif k.sent() - sent0 >= n:
                        t1, got = time.time(), k.sent() - sent0
                        break
                    time.sleep(0.02)
                if not t1:  # timed out: what was done by then
                    t1 = time.time()
                    got = int((sink.result() or {}).get("final", 0)) if sink else \
                        k.sent() - sent0
            finally:
                w.stop()
                if sink:
                    sink.close()
            out[phase] = {"msg_per_s": got / (t1 - t0), "final": got, "seconds": t1 - t0,
                          "answers": answers, "cpu_us": w.us_per_msg(t0, t1, got),
                          **({"receipts": extra} if extra else {})}
            if got != n:
                out[phase]["warning"] = f"{got} of {n} messages completed"
    finally:
        k.close()
    return out


def _fmt(xs: list[float], digits: int = 0) -> str:
    s = summary(xs)
    f = f"{{:,.{digits}f}}"
    return f"{f.format(s['median'])} ({f.format(s['min'])}-{f.format(s['max'])})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench kannel",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20_000, help="messages a phase")
    ap.add_argument("--runs", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--phases", default=",".join(PHASES),
                    help=f"comma-separated subset of {','.join(PHASES)}")
    ap.add_argument("--smsc-id-base", type=lambda v: int(v, 0), default=ID_BASE,
                    help="the SMSC's first message id (default 0xA0000000; the node "
                         "SMSC's own default is 0x2A0)")
    ap.add_argument("--quick", action="store_true", help="-n 2000 --runs 1 unless given")
    args = ap.parse_args(argv)
    if args.quick:
        args.n = 2000 if args.n == 20_000 else args.n
        args.runs = 1 if args.runs == 3 else args.runs
    phases = [p for p in args.phases.split(",") if p]
    if bad := [p for p in phases if p not in PHASES]:
        ap.error(f"unknown phases {bad}")
    binaries = kannel_binaries()
    if binaries is None and any(p in K_PHASES for p in phases):
        print(f"kannel: {INSTALL_HINT}", file=sys.stderr)
        return 2
    wrk = shutil.which("wrk")
    if wrk is None:
        print("kannel: wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    gw_phases = [p for p in GW_PHASES if p in phases]
    k_phases = [p for p in K_PHASES if p in phases]
    runs: list[dict[str, dict[str, Any]]] = []
    NodeRig.id_base = args.smsc_id_base
    with NodeRig() as rig:
        kv = kannel_version(binaries[0]) if binaries else "-"
        print(f"kannel: {args.n:,} messages a phase, {args.runs} rounds, {args.connections} "
              f"connections; Redis {rig.redis_version()}, Kannel {kv}, node-smpp SMSC on "
              f"port {rig.sim_port}; load {os.getloadavg()[0]:.2f}", flush=True)
        for run in range(args.runs):
            got: dict[str, dict[str, Any]] = {}
            order = ["gw", "k"] if run % 2 == 0 else ["k", "gw"]
            for side in order:
                if side == "k" and k_phases:
                    assert binaries is not None
                    got.update(kannel_round(rig, wrk, binaries, args.n, run,
                                            args.connections, k_phases))
                elif side == "gw":
                    for p in gw_phases:
                        got[p] = gw_phase(rig, wrk, p, args.n, run, args.connections)
            got["_load"] = {"load_1m": os.getloadavg()[0]}
            runs.append(got)
            for p in phases:
                r = got[p]
                cpu = ", ".join(f"{k} {v:.0f}" for k, v in r["cpu_us"].items())
                print(f"round {run + 1} {p:13}: {r['msg_per_s']:>8,.0f} msg/s "
                      f"({r['final']:,} in {r['seconds']:.2f} s); CPU us a message: {cpu}"
                      + (f"; WARNING {r['warning']}" if "warning" in r else ""), flush=True)
            print(f"round {run + 1}: load {got['_load']['load_1m']:.2f}", flush=True)

    result: dict[str, Any] = {"n": args.n, "connections": args.connections,
                              "kannel_version": kv, "runs": runs}
    rows: list[tuple[str, str]] = []
    for p in phases:
        rates = [r[p]["msg_per_s"] for r in runs]
        cpus = {name: [r[p]["cpu_us"].get(name, 0.0) for r in runs] for name in PROCS
                if name in runs[0][p]["cpu_us"]}
        result[p] = {"msg_per_s": summary(rates),
                     "cpu_us": {k: summary(v) for k, v in cpus.items()}}
        rows.append((f"{p} msg/s", _fmt(rates)))
        rows.append((f"{p} CPU us a message", ", ".join(
            f"{k} {summary(v)['median']:.0f}" for k, v in cpus.items())))
    ratios: dict[str, dict[str, float]] = {}
    if "kannel-dlr" in phases:
        for p in gw_phases + (["kannel-nodlr"] if "kannel-nodlr" in phases else []):
            ratios[f"{p} / kannel-dlr"] = summary(
                [r[p]["msg_per_s"] / max(1e-9, r["kannel-dlr"]["msg_per_s"]) for r in runs])
    if "gw-prequeued" in phases:
        for p in ("gw-send", "gw-send_many", "gw-http"):
            if p in phases:
                ratios[f"{p} / gw-prequeued"] = summary(
                    [r[p]["msg_per_s"] / max(1e-9, r["gw-prequeued"]["msg_per_s"])
                     for r in runs])
    result["ratios"] = ratios
    for name, s in ratios.items():
        rows.append((name, f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"))
    targets = [("gw-http / kannel-dlr", 1.5), ("gw-send / kannel-dlr", 2.0),
               ("gw-send_many / kannel-dlr", 2.0), ("gw-send / gw-prequeued", 1.0),
               ("gw-send_many / gw-prequeued", 1.0)]
    result["targets"] = {}
    for name, want in targets:
        if name in ratios:
            ok = ratios[name]["median"] >= want
            result["targets"][name] = {"want": want, "median": ratios[name]["median"],
                                       "reached": ok}
            rows.append((f"target {name} >= {want}",
                         f"{'reached' if ok else 'NOT reached'} "
                         f"(median {ratios[name]['median']:.2f})"))
    path = write_result("kannel", result)
    print(table(rows))
    print(f"-> {path}")
    lost = [p for r in runs for p in phases if "warning" in r[p]]
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
