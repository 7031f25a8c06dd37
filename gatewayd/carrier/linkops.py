"""An operator's restart and retune of one link, shared by the SMPP and CMPP binds."""

from __future__ import annotations

import asyncio
from typing import Any

from gatewayd.config import CarrierConfig


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
    _stopping: bool
    _stop_event: asyncio.Event
    _task: asyncio.Task[None] | None
    _m_reconnects: Any
    _m_tps: Any

    @property
    def in_flight(self) -> int:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

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
