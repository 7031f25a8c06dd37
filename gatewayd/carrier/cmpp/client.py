"""One CMPP carrier on its own: a CarrierPool of that one entry, for tools, tests, benches.

``CmppClient(carrier, settings, secret, handler)`` is the pool (carrier/pool.py) over a
single ``protocol = "cmpp"`` entry: the same routing-free path the daemon uses for its
CMPP carriers (windowing, the learned account rate fed by flow control, stragglers,
partial resends of long messages, DELIVER handling), so what is tested through it is
what the daemon runs. ``submit_batch`` takes SubmitRequests and returns one
SubmitOutcome each, in order; reports and MO reach the DeliveryHandler as
model.Receipt / model.InboundMessage; ``snapshot`` gives BindStatus.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from gatewayd.carrier.api import BindStatus, DeliveryHandler, SubmitOutcome, SubmitRequest
from gatewayd.carrier.cmpp.settings import CmppSettings
from gatewayd.carrier.pool import CarrierPool
from gatewayd.carrier.protocols import Link
from gatewayd.config import CarrierConfig, Config


class CmppClient:
    def __init__(
        self, cfg: CarrierConfig, settings: CmppSettings, secret: str,
        handler: DeliveryHandler, *, clock: Callable[[], float] = time.time,
    ) -> None:
        carrier = msgspec.structs.replace(cfg, protocol="cmpp", cmpp=settings, password=secret,
                                          password_env="")
        self.cfg = carrier
        self.name = carrier.name
        self.settings = settings
        self.pool = CarrierPool(Config(carrier=[carrier]), handler, clock=clock)

    @property
    def binds(self) -> list[Link]:
        return self.pool.links(self.name)

    async def start(self) -> None:
        await self.pool.start()

    async def wait_bound(self, timeout_s: float) -> bool:
        return await self.pool.wait_bound(timeout_s)

    def ready(self) -> bool:
        return self.pool.ready()

    def snapshot(self) -> list[BindStatus]:
        return self.pool.snapshot()

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        await self.pool.stop(drain_timeout_s)

    async def submit_batch(self, reqs: list[SubmitRequest]) -> list[SubmitOutcome]:
        return await self.pool.submit_batch(reqs)
