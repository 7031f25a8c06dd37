"""The engine of a carrier entry by its ``protocol``: the one place that knows them all."""

from __future__ import annotations

from collections.abc import Callable

from gatewayd.carrier.api import DeliveryHandler
from gatewayd.carrier.cmpp.engine import CmppEngine
from gatewayd.carrier.protocols import Engine
from gatewayd.carrier.smpp.engine import SmppEngine
from gatewayd.config import CarrierConfig


def engine_for(c: CarrierConfig, secret: str, handler: DeliveryHandler,
               clock: Callable[[], float]) -> Engine:
    if c.protocol == "cmpp":
        return CmppEngine(c, secret, handler, clock)
    return SmppEngine(c, secret, handler, clock)
