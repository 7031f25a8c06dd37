"""What the SMPP and CMPP binds share: window and rate reservation (codes first), an
operator's restart and retune of one link.

Codes first: a batch of the highest class (``urgent``: the dispatcher's code batches) may
use the whole window; bulk, while codes go over the link (one in the last
``URGENT_RECENT_S``), all but the window's last tenth (``urgent_headroom``; none below a
window of 10), so a window kept full by bulk still has a slot for a code at once (a link
that carries only bulk keeps its whole window); and while a code waits for a slot or a
token, bulk takes neither (it waits for the code to go). The link's rate is unchanged:
codes take the same tokens, first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gatewayd.config import CarrierConfig

# Bulk keeps the headroom free this long after a link's last code.
URGENT_RECENT_S = 60.0


def urgent_headroom(window: int) -> int:
    """The window slots bulk leaves free for codes: a tenth, none below a window of 10
    (a window that small is the SMSC's whole throughput; codes then only go first)."""
    return window // 10


class OperatorOps:
    """Mixed into a protocol's bind (carrier.smpp.bind.Bind, carrier.cmpp.bind.CmppBind),
    which holds these attributes: its window and token bucket, its session and task."""

    cfg: CarrierConfig
    session: Any
    space: asyncio.Event
    window: int
    base_rate: float
    rate: float
    burst: float
    tokens: float
    limit: float
    reconnects: int
    reserved: int
    _t_tokens: float
    _urgent: int  # urgent reservations waiting right now
    _urgent_at: float  # loop time of the last urgent reservation
    _stopping: bool
    _stop_event: asyncio.Event
    _task: asyncio.Task[None] | None
    _m_reconnects: Any
    _m_tps: Any

    @property
    def in_flight(self) -> int:
        raise NotImplementedError

    @property
    def can_submit(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    async def reserve(self, want: int, urgent: bool = False) -> int:
        """Wait for window space and tokens; return how many PDUs may go now (0: link
        down). ``urgent`` (codes): the whole window, and before any bulk waiter."""
        if not urgent:
            return await self._reserve(want, False)
        self._urgent += 1
        self._urgent_at = asyncio.get_running_loop().time()
        try:
            return await self._reserve(want, True)
        finally:
            self._urgent -= 1
            if not self._urgent:
                self.space.set()  # bulk held back for the code goes on

    async def _reserve(self, want: int, urgent: bool) -> int:
        loop = asyncio.get_running_loop()
        while True:
            s = self.session
            if not self.can_submit or s is None:
                return 0
            now = loop.time()
            space = self.window - len(s.pending) - self.reserved
            if not urgent:
                if now - self._urgent_at < URGENT_RECENT_S:
                    space -= urgent_headroom(self.window)
                if self._urgent:
                    space = 0  # a code waits for a slot or a token: it goes first
            if space <= 0:
                self.space.clear()
                await self.space.wait()
                continue
            tokens = min(self.burst, self.tokens + (now - self._t_tokens) * self.rate)
            self.tokens = tokens
            self._t_tokens = now
            n = min(want, space, int(tokens))
            if n >= 1:
                self.tokens = tokens - n
                self.reserved += n
                return n
            need = min(want, space, max(1, int(self.burst / 4)))
            await asyncio.sleep((need - tokens) / self.rate)

    def release(self, n: int) -> None:
        """Give back reserved slots that will not be used."""
        self.reserved -= n
        self.space.set()

    async def shutdown(self) -> None:
        raise NotImplementedError

    async def restart(self) -> None:
        """Down and up again (an operator's restart): no new submits, the outstanding
        answers awaited (bounded by the response timeout), a polite close, then a new
        connection at once; a part still unanswered ends as on a connection loss."""
        self._stopping = True  # can_submit is False: the pool routes around this link
        self.space.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.response_timeout_s
        while self.in_flight and self.session is not None:
            left = deadline - loop.time()
            if left <= 0:
                break
            self.space.clear()  # set again by every chunk of answers and by a close
            try:
                await asyncio.wait_for(self.space.wait(), left)
            except TimeoutError:
                break
        await self.shutdown()
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._task = None
        self.reconnects += 1  # the new connection is an attempt after the first
        self._m_reconnects.inc()
        self.start()

    def retune(self, tps: float, window: int) -> None:
        """The carrier's tps (this link's share: tps / binds) and window, changed live."""
        self.window = window
        self.base_rate = tps / self.cfg.binds
        self.rate = self.base_rate
        self.burst = max(1.0, self.base_rate / 20)
        self.tokens = min(self.tokens, self.burst)
        self.limit = self.base_rate  # the pool's next show_limit adds the learned share
        self._m_tps.set(self.limit)
        self.space.set()  # a larger window frees room for waiting senders
