"""The application side of Kannel's receipts: a tiny HTTP server its dlr-url calls.

    python -m bench.dlr_sink EXPECTED MARKER

Prints ``listening PORT`` and answers every request ``200`` (HTTP/1.1 keep-alive, so
smsbox reuses its connections). A request ``/d?r=REF&t=TYPE`` is a receipt: TYPE 1
(delivered) or 2 (undeliverable) is final for REF. Once EXPECTED distinct REFs have
their final receipt, it writes MARKER (JSON: the wall-clock time of that receipt and the
counts). Exits when its stdin closes. Its own process, so that its CPU is counted apart
from Kannel's; raw asyncio (uvloop) rather than a framework, so that the sink costs the
shared cores as little as possible.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import cast
from urllib.parse import parse_qs, urlsplit

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Type: text/plain\r\n\r\n"


class Counts:
    def __init__(self, expected: int, marker: Path) -> None:
        self.expected = expected
        self.marker = marker
        self.callbacks = 0
        self.by_type: dict[str, int] = {}
        self.final: set[str] = set()
        self.done = False

    def hit(self, target: bytes) -> None:
        url = urlsplit(target.decode("latin-1"))
        if url.path != "/d":
            return
        q = parse_qs(url.query)
        self.callbacks += 1
        kind = q.get("t", ["?"])[0]
        self.by_type[kind] = self.by_type.get(kind, 0) + 1
        if kind in ("1", "2"):
            self.final.add(q.get("r", [""])[0])
        if not self.done and len(self.final) >= self.expected:
            self.done = True
            self.marker.write_text(json.dumps({
                "at": time.time(), "final": len(self.final), "callbacks": self.callbacks,
                "by_type": self.by_type}))


class Sink(asyncio.Protocol):
    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        # GET requests without a body: a request ends at its blank line.
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head, self.buf = self.buf[:end], self.buf[end + 4:]
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            if len(parts) >= 2:
                self.counts.hit(parts[1])
            assert self.transport is not None
            self.transport.write(_OK)


async def serve(expected: int, marker: Path) -> None:
    counts = Counts(expected, marker)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Sink(counts), "127.0.0.1", 0)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)

    def progress() -> None:  # for a stalled run: how far the receipts came
        Path(f"{marker}.progress").write_text(
            f"{time.time():.3f} callbacks {counts.callbacks} final {len(counts.final)}\n")
        loop.call_later(1.0, progress)
    progress()
    # stdin closing (the bench ending) stops the sink.
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


def main() -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency of gatewayd
        pass
    asyncio.run(serve(int(sys.argv[1]), Path(sys.argv[2])))


if __name__ == "__main__":
    main()
