"""The HTTP stack's own floor: CPU a request of a trivial POST handler, per server stack.

Issue 17 asks whether aiohttp's per-request cost is the floor of HTTP intake and what the
alternatives a well-kept library offers would cost. Each stack below serves the same
trivial ``POST /v1/messages`` (read the body, decode its JSON with msgspec, answer 202
with a small JSON body, keep-alive) in a process of its own on uvloop; Debian's ``wrk``
drives it from --connections keep-alive connections with the bench's one-message body
for --duration seconds. Figures: requests/s, the server's CPU a request (user + system,
from /proc, its worker processes included), wrk's CPU a request. Rounds interleave the
stacks (a shared machine's load moves in minutes); medians with min-max.

  aiohttp-app      aiohttp.web.Application with one route (gatewayd's stack, no middleware)
  aiohttp-app-mw3  the same with three pass-through middlewares (gatewayd has three)
  aiohttp-server   aiohttp's low-level server (aiohttp.web.Server: no router, no app)
  granian-asgi     granian (Rust HTTP, PyPI) calling an ASGI app, one worker, uvloop
  granian-rsgi     granian with its own RSGI interface (cheaper than ASGI), one worker
  httptools-proto  an asyncio.Protocol with httptools (llhttp) as the parser, each answer
                   one write: how the short-link redirector is served (gatewayd/http/links.py)
  asyncio-proto    floor: a bare asyncio.Protocol parsing the request by hand (not a
                   server anyone should run: no limits, no chunked bodies; shows what
                   Python + uvloop alone cost a request)

granian is optional (``pip install granian``); its stacks are skipped without it.

    python -m bench http_floor [--duration 5] [--rounds 3] [--connections 200]
                               [--stacks aiohttp-app,aiohttp-server,...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.common import ProcSampler, summary, table, write_result, wrk_figures
from bench.intake import _wait_http, gw_pids
from gatewayd.store.embedded import free_port

STACKS = ["aiohttp-app", "aiohttp-app-mw3", "aiohttp-server", "granian-asgi",
          "granian-rsgi", "httptools-proto", "asyncio-proto"]
_ANSWER = b'{"results":[{"index":0,"id":"18f3a2b4c5d-0123456789ab","duplicate":false}]}'

_WRK_LUA = """
local body = io.open("%s"):read("*l")
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-intake-key"
"""


# The servers (run with ``python -m bench.http_floor --serve STACK --port P``) ---------

def _decode(body: bytes) -> None:
    import msgspec
    msgspec.json.decode(body)


def _aiohttp_app(port: int, middlewares: int) -> None:
    import uvloop
    from aiohttp import web

    async def post(request: web.Request) -> web.Response:
        _decode(await request.read())
        return web.Response(status=202, body=_ANSWER, content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    @web.middleware
    async def passthrough(request: web.Request, handler: Any) -> web.StreamResponse:
        return await handler(request)  # type: ignore[no-any-return]

    app = web.Application(middlewares=[passthrough] * middlewares)
    app.router.add_post("/v1/messages", post)
    app.router.add_get("/healthz", healthz)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def _aiohttp_server(port: int) -> None:
    import asyncio

    import uvloop
    from aiohttp import web

    async def handler(request: web.BaseRequest) -> web.Response:
        if request.method == "POST":
            _decode(await request.read())
            return web.Response(status=202, body=_ANSWER, content_type="application/json")
        return web.Response(text="ok")

    async def main() -> None:
        server = web.Server(handler, access_log=None)
        await asyncio.get_running_loop().create_server(server, "127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.run(main())


def _asyncio_proto(port: int) -> None:
    import asyncio

    import uvloop

    head = (b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(_ANSWER)).encode() + b"\r\n\r\n" + _ANSWER)
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    class Proto(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t: Any = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            buf = self.buf + data
            out = []
            while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                hdr = buf[:end].lower()
                i = hdr.find(b"content-length:")
                eol = hdr.find(b"\r\n", i)
                n = int(hdr[i + 15:eol if eol >= 0 else len(hdr)]) if i >= 0 else 0
                if len(buf) < end + 4 + n:
                    break
                if n:
                    _decode(buf[end + 4:end + 4 + n])
                    out.append(head)
                else:
                    out.append(ok)
                buf = buf[end + 4 + n:]
            self.buf = buf
            if out:
                self.t.write(b"".join(out))

    async def main() -> None:
        await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.run(main())


def _httptools_proto(port: int) -> None:
    import asyncio

    import httptools
    import uvloop

    accepted = (b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(_ANSWER)).encode() + b"\r\n\r\n" + _ANSWER)
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    class Proto(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t: Any = transport
            self.parser = httptools.HttpRequestParser(self)
            self.body: list[bytes] = []

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_begin(self) -> None:
            self.body = []

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            if self.parser.get_method() == b"POST":
                _decode(b"".join(self.body))
                self.t.write(accepted)
            else:
                self.t.write(ok)

    async def main() -> None:
        await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.run(main())


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """granian-asgi's app."""
    if scope["type"] != "http":
        return
    if scope["method"] == "POST":
        body = b""
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        _decode(body)
        await send({"type": "http.response.start", "status": 202,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": _ANSWER})
    else:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def rsgi_app(scope: Any, proto: Any) -> None:
    """granian-rsgi's app."""
    if scope.method == "POST":
        _decode(await proto())
        proto.response_bytes(202, [("content-type", "application/json")], _ANSWER)
    else:
        proto.response_bytes(200, [], b"ok")


def serve(stack: str, port: int) -> None:
    if stack == "aiohttp-app":
        _aiohttp_app(port, 0)
    elif stack == "aiohttp-app-mw3":
        _aiohttp_app(port, 3)
    elif stack == "aiohttp-server":
        _aiohttp_server(port)
    elif stack == "asyncio-proto":
        _asyncio_proto(port)
    elif stack == "httptools-proto":
        _httptools_proto(port)
    else:
        raise SystemExit(f"unknown stack {stack}")


# The driver ----------------------------------------------------------------------------

def _start(stack: str, port: int) -> subprocess.Popen[bytes]:
    if stack.startswith("granian-"):
        iface = stack.split("-", 1)[1]
        granian = str(Path(sys.executable).parent / "granian")
        cmd = [granian, "--interface", iface, "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--runtime-threads", "1", "--loop", "uvloop", "--no-ws",
               "--log-level", "warning", "--http", "1", f"bench.http_floor:{iface}_app"]
    else:
        cmd = [sys.executable, "-m", "bench.http_floor", "--serve", stack, "--port", str(port)]
    return subprocess.Popen(cmd, cwd=harness.ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _all_pids(pid: int) -> list[int]:
    """The server and its children's children (granian: a worker process)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c in gw_pids(p) if c != p]
    return out


def one(stack: str, wrk: str, script: Path, duration: float, connections: int
        ) -> dict[str, float]:
    port = free_port()
    proc = _start(stack, port)
    try:
        _wait_http(port, 30)
        time.sleep(0.3)
        samplers = [ProcSampler(p) for p in _all_pids(proc.pid)]
        for s in samplers:
            s.__enter__()
        cmd = [wrk, "-t", "1", "-c", str(connections), "-d", f"{duration:g}s", "--latency",
               "-s", str(script), f"http://127.0.0.1:{port}/v1/messages"]
        w = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        with ProcSampler(w.pid) as load:
            out, _ = w.communicate(timeout=duration + 60)
        for s in samplers:
            s.__exit__()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    r = wrk_figures(out)
    if not r["requests"]:
        raise SystemExit(f"http_floor: {stack} answered no request: {out[-500:]}")
    n = r["requests"]
    return {"req_per_s": r["requests"] / r["wall_s"],
            "server_us": 1e6 * sum(s.cpu_s for s in samplers) / n,
            "wrk_us": 1e6 * load.cpu_s / n, "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
            "non_2xx": r["non_2xx"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench http_floor",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of load a stack")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--stacks", default=",".join(STACKS))
    ap.add_argument("--quick", action="store_true", help="--duration 2 --rounds 1")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    if args.quick:
        args.duration, args.rounds = 2.0, 1
    wrk = shutil.which("wrk")
    if not wrk:
        print("http_floor: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    stacks = [s for s in args.stacks.split(",") if s]
    if importlib.util.find_spec("granian") is None:
        skipped = [s for s in stacks if s.startswith("granian-")]
        if skipped:
            print(f"http_floor: granian not installed, skipping {skipped}", file=sys.stderr)
        stacks = [s for s in stacks if not s.startswith("granian-")]
    body = json.dumps(harness.make_messages(1, run=0)[0], ensure_ascii=False,
                      separators=(",", ":"))
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in stacks}
    with tempfile.TemporaryDirectory(prefix="http-floor-") as tmp:
        bodyfile = Path(tmp) / "body.json"
        bodyfile.write_text(body + "\n", encoding="utf-8")
        script = Path(tmp) / "post.lua"
        script.write_text(_WRK_LUA % bodyfile, encoding="utf-8")
        for rnd in range(args.rounds):
            for stack in stacks:
                r = one(stack, wrk, script, args.duration, args.connections)
                runs[stack].append(r)
                print(f"round {rnd + 1} {stack:16}: {r['req_per_s']:,.0f} req/s; CPU a "
                      f"request server {r['server_us']:.1f} us, wrk {r['wrk_us']:.1f} us; "
                      f"p50/p99 {r['p50_ms']:.1f}/{r['p99_ms']:.1f} ms"
                      + (f"; {r['non_2xx']:.0f} non-2xx" if r["non_2xx"] else ""),
                      flush=True)
    result: dict[str, Any] = {"duration_s": args.duration, "connections": args.connections,
                              "body_bytes": len(body.encode()), "runs": runs}
    rows = []
    for stack in stacks:
        result[stack] = {k: summary([r[k] for r in runs[stack]]) for k in runs[stack][0]}
        cpu, rate = result[stack]["server_us"], result[stack]["req_per_s"]
        rows.append((f"{stack}: server CPU a request; req/s",
                     f"{cpu['median']:.1f} us ({cpu['min']:.1f}-{cpu['max']:.1f}); "
                     f"{rate['median']:,.0f}"))
    path = write_result("http_floor", result)
    print(table(rows))
    print(f"-> {path}")
    return 1 if any(r["non_2xx"] for rs in runs.values() for r in rs) else 0


if __name__ == "__main__":
    sys.exit(main())
