"""Shared set-up for the CMPP tests: a simulated ISMG and a CmppClient pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gatewayd.carrier.cmpp.client import CmppClient
from gatewayd.carrier.cmpp.settings import CmppSettings
from gatewayd.config import CarrierConfig
from gatewayd.sim.cmpp.ismg import IsmgSettings, IsmgSimulator
from tests.interop.pysmsc import Recorder

SP_ID = "901234"
SECRET = "s3cret"
ACCESS = "106900001234"


def cmpp_carrier(port: int, **kw: object) -> CarrierConfig:
    base: dict[str, object] = {
        "name": "cmcc", "host": "127.0.0.1", "port": port, "system_id": SP_ID,
        "password": SECRET, "source_addr": ACCESS, "tps": 100_000.0, "window": 16,
        "enquire_link_s": 5.0, "response_timeout_s": 2.0, "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2, "auth_retry_s": 0.3,
    }
    base.update(kw)
    return CarrierConfig(**base)  # type: ignore[arg-type]


@asynccontextmanager
async def ismg(**kw: object) -> AsyncIterator[IsmgSimulator]:
    sim = IsmgSimulator(IsmgSettings(sp_id=SP_ID, secret=SECRET, **kw))  # type: ignore[arg-type]
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@asynccontextmanager
async def client(
    sim: IsmgSimulator, *, version: str = "3.0", secret: str = SECRET,
    handler: Recorder | None = None, wait: bool = True, settings: CmppSettings | None = None,
    **kw: object,
) -> AsyncIterator[tuple[CmppClient, Recorder]]:
    rec = handler if handler is not None else Recorder()
    st = settings if settings is not None else CmppSettings(
        version=version, service_id="MJS0019905")  # type: ignore[arg-type]
    c = CmppClient(cmpp_carrier(sim.port, **kw), st, secret, rec)
    await c.start()
    try:
        if wait:
            assert await c.wait_bound(5.0), c.snapshot()
        yield c, rec
    finally:
        await c.stop(2.0)
