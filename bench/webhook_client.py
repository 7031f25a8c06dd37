"""The webhook sender's HTTP client against the library clients it could have been.

Each client POSTs a webhook-sized body (24 KB: a batch of 100 events) --requests times,
4 at once on keep-alive connections, to a trivial HTTP/1.1 server (an asyncio Protocol
with httptools, answering 200) in a process of its own; each client runs in a process of
its own on uvloop. Figures: the client's CPU a request (user + system, after 800 warm-up
requests) and, with --instructions, its instructions a request under valgrind's
callgrind (the difference between a run of 3N and one of N requests: start-up and
warm-up cancel out; load does not move them). Rounds interleave the clients.

  aiohttp    aiohttp.ClientSession as the sender used it (no cookie jar, no redirects)
  httpcore   httpcore's AsyncConnectionPool (h11; httpx's core), if installed
  transport  gatewayd.webhooks.transport (what the sender uses)

    python -m bench.webhook_client [--requests 8000] [--rounds 2] [--instructions 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BODY = b"x" * 24000
CONCURRENCY = 4
WARM = 800


def serve(port: int) -> None:
    import httptools
    import uvloop

    class Answer(asyncio.Protocol):
        def connection_made(self, t: asyncio.BaseTransport) -> None:
            self.t = t
            self.p = httptools.HttpRequestParser(self)

        def data_received(self, d: bytes) -> None:
            self.p.feed_data(d)

        def on_message_complete(self) -> None:
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"  # type: ignore[attr-defined]
                         b"Content-Type: text/plain\r\n\r\nok")

    async def main() -> None:
        await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.run(main())


def client(kind: str, port: int, n: int) -> None:
    import uvloop

    url = f"http://127.0.0.1:{port}/hook"
    headers = {"Content-Type": "application/json", "User-Agent": "gatewayd-webhooks",
               "X-Gatewayd-Signature": "t=1,v1=" + "a" * 64}

    async def run() -> None:
        if kind == "aiohttp":
            import aiohttp
            from yarl import URL
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                            cookie_jar=aiohttp.DummyCookieJar())
            u, timeout = URL(url, encoded=True), aiohttp.ClientTimeout(total=10)

            async def one() -> int:
                async with session.request("POST", u, data=BODY, headers=headers,
                                           allow_redirects=False, timeout=timeout) as r:
                    await r.read()
                    return r.status
        elif kind == "httpcore":
            import httpcore  # type: ignore[import-not-found,unused-ignore]  # optional
            hc = httpcore.AsyncConnectionPool(max_connections=CONCURRENCY)
            pairs = list(headers.items())

            async def one() -> int:
                r = await hc.request("POST", url, headers=pairs, content=BODY)
                return int(r.status)
        else:
            from gatewayd.webhooks import transport
            from gatewayd.webhooks.targets import GuardedResolver
            c = transport.Client(size=CONCURRENCY, resolver=GuardedResolver(allow_private=True))
            origin = transport.Origin(url)
            pool = c.pool(origin)
            head = c.head("POST", origin, "/hook", {"Content-Type": "application/json"})
            head_b = head.encode()

            async def one() -> int:
                async with asyncio.timeout(10):
                    extra = (f"X-Gatewayd-Signature: {headers['X-Gatewayd-Signature']}\r\n"
                             f"Content-Length: {len(BODY)}\r\n\r\n")
                    return await pool.request(b"".join((head_b, extra.encode(), BODY)))

        async def worker(k: int) -> None:
            for _ in range(k):
                assert await one() == 200

        await asyncio.gather(*(worker(WARM // CONCURRENCY) for _ in range(CONCURRENCY)))
        t0 = time.process_time()
        await asyncio.gather(*(worker(n // CONCURRENCY) for _ in range(CONCURRENCY)))
        print(f"{(time.process_time() - t0) / n * 1e6:.1f}")

    uvloop.run(run())


def _instructions(kind: str, port: int, n: int) -> float:
    counts = []
    with tempfile.TemporaryDirectory() as d:
        for k in (n, 3 * n):
            out = Path(d) / f"cg.{k}"
            subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                            sys.executable, "-m", "bench.webhook_client", "--client", kind,
                            "--port", str(port), "--requests", str(k)],
                           check=True, capture_output=True)
            counts.append(max(int(line.split()[1]) for line in out.read_text().splitlines()
                              if line.startswith(("summary:", "totals:"))))
    return (counts[1] - counts[0]) / (2 * n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.webhook_client")
    ap.add_argument("--requests", type=int, default=8000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--instructions", type=int, default=0, metavar="N")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--client", default="", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.port)
        return 0
    if args.client:
        client(args.client, args.port, args.requests)
        return 0
    from gatewayd.store.embedded import free_port

    kinds = ["aiohttp", "transport"]
    if importlib.util.find_spec("httpcore"):
        kinds.insert(1, "httpcore")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.webhook_client", "--serve",
                               "--port", str(port)])
    try:
        time.sleep(1.0)
        cpu: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(args.rounds):
            for k in kinds:
                out = subprocess.run([sys.executable, "-m", "bench.webhook_client",
                                      "--client", k, "--port", str(port),
                                      "--requests", str(args.requests)],
                                     check=True, capture_output=True, text=True).stdout
                cpu[k].append(float(out.split()[-1]))
        for k in kinds:
            line = f"{k:10} CPU a request {sorted(cpu[k])[len(cpu[k]) // 2]:8.1f} us " \
                   f"({', '.join(f'{v:.1f}' for v in cpu[k])})"
            if args.instructions:
                line += f", instructions a request {_instructions(k, port, args.instructions):,.0f}"
            print(line)
    finally:
        server.terminate()
        server.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
