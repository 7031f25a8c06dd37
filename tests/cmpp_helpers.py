"""Shared set-up for the CMPP tests: a simulated ISMG and a CmppClient pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from gatewayd.carrier.cmpp.client import CmppClient
from gatewayd.carrier.cmpp.settings import CmppSettings
from gatewayd.config import CarrierConfig
from gatewayd.sim.cmpp.ismg import IsmgSettings, IsmgSimulator
from tests.e2e_helpers import NO_POLICY
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


def write_cmpp_config(
    tmp_path: Path, *, redis_url: str, port: int, version: str = "3.0",
    policy: Path | None = NO_POLICY, window: int = 16, tps: float = 100000.0,
    response_timeout_s: float = 5.0, extra_carrier: str = "", extra: str = "",
    name: str = "gw.toml", after: str = "",
) -> Path:
    """A daemon config whose one carrier speaks CMPP to the simulated ISMG."""
    text = f"""
[daemon]
state_dir = "{tmp_path / 'state'}"
log_level = "warning"
shutdown_timeout_s = 5.0
housekeeping_interval_s = 0.2

[redis]
url = "{redis_url}"

[http]
enabled = false
listen = "127.0.0.1:0"

[policy]
file = "{policy or ''}"

{extra}

[[carrier]]
name = "cmcc"
protocol = "cmpp"
host = "127.0.0.1"
port = {port}
system_id = "{SP_ID}"
password = "{SECRET}"
source_addr = "{ACCESS}"
window = {window}
tps = {tps}
enquire_link_s = 5.0
response_timeout_s = {response_timeout_s}
reconnect_min_s = 0.1
reconnect_max_s = 1.0
auth_retry_s = 1.0
mo_country_code = "86"
{extra_carrier}

[carrier.cmpp]
version = "{version}"
service_id = "MJS0019905"
{after}
"""
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    p.chmod(0o600)
    return p
