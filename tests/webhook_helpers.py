"""A real HTTP receiver for webhook tests (aiohttp on a TCP port), with scripted faults."""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from aiohttp import web

from gatewayd.client import verify_webhook
from gatewayd.store.embedded import free_port
from gatewayd.webhooks.signing import HEADER

SECRET = "whsec-test"


class Receiver:
    """Records every event it accepts, per path, in arrival order.

    ``script[path]`` is a list of what to do with the next requests to that path, one
    entry a request: "500", "400", "slow" (answers after ``slow_s``), "close" (drops the
    connection), then "ok" for the rest. ``stop()`` / ``start()`` make it go away and
    come back on the same port."""

    def __init__(self, secret: str = SECRET, slow_s: float = 3.0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.secret = secret
        self.tls = tls  # serve https with this context
        self.slow_s = slow_s
        self.port = free_port()
        self.script: dict[str, list[str]] = collections.defaultdict(list)
        self.events: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        self.requests: collections.Counter[str] = collections.Counter()
        self.hosts: collections.Counter[str] = collections.Counter()  # Host headers
        self.bad_signatures = 0
        self.hang = False  # every request waits (a dead-but-listening endpoint)
        self.delay_s = 0.0  # every request takes this long (a slow app)
        self.open = 0  # requests received and not answered yet
        self.answered = 0
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.tls).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.open += 1
        try:
            return await self._answer(request)
        finally:
            self.open -= 1
            self.answered += 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.requests[path] += 1
        self.hosts[request.headers.get("Host", "")] += 1
        body = await request.read()
        signed = body if request.method == "POST" else request.raw_path.encode()
        if not verify_webhook(self.secret, signed, request.headers.get(HEADER, "")):
            self.bad_signatures += 1
            return web.Response(status=401)
        while self.hang:
            await asyncio.sleep(0.05)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        todo = self.script[path]
        action = todo.pop(0) if todo else "ok"
        if action == "500":
            return web.Response(status=500)
        if action == "400":
            return web.Response(status=400)
        if action == "slow":
            await asyncio.sleep(self.slow_s)
        if action == "close":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=200)
        if request.method == "POST":
            self.events[path].extend(msgspec.json.decode(body)["events"])
        else:
            self.events[path].append(dict(parse_qsl(request.url.query_string)))
        return web.Response(text="ok")

    def ids(self, path: str) -> set[str]:
        return {e["event_id"] for e in self.events[path]}

    def by_message(self, path: str) -> dict[str, list[str]]:
        """message id -> its event kinds as they first arrived (duplicates left out)."""
        seen: set[str] = set()
        out: dict[str, list[str]] = collections.defaultdict(list)
        for e in self.events[path]:
            if e["event_id"] in seen or "message_id" not in e:
                continue
            seen.add(e["event_id"])
            out[e["message_id"]].append(e["kind"])
        return out


async def wait_for(cond: Any, timeout_s: float = 60.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def webhooks_toml(receiver: Receiver, *, endpoints: str, extra: str = "",
                  sender: str = "inline") -> str:
    """``sender``: "inline" (the runner in the test's daemon object: its state can be
    looked at) unless a test is about the sender process (tests/test_webhooks_process.py)."""
    return f"""
[webhooks]
enabled = true
sender = "{sender}"
allow_private = true
backoff_min_s = 0.05
backoff_max_s = 0.3
{extra}
{endpoints}
"""


def endpoint_toml(receiver: Receiver, name: str, path: str, url: str = "",
                  **fields: Any) -> str:
    """One [[webhooks.endpoints]] table; ``url`` (a Kannel template) is appended to the
    receiver's URL of ``path``."""
    lines = [f'[[webhooks.endpoints]]\nname = "{name}"\nurl = "{receiver.url(path)}{url}"',
             f'secret = "{receiver.secret}"']
    for k, v in fields.items():
        if isinstance(v, str):
            lines.append(f'{k} = "{v}"')
        elif isinstance(v, list):
            lines.append(f"{k} = {msgspec.json.encode(v).decode()}")
        else:
            lines.append(f"{k} = {str(v).lower() if isinstance(v, bool) else v}")
    return "\n".join(lines) + "\n"
