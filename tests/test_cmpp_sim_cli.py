"""The CMPP ISMG simulator as a command: `python -m gatewayd.sim --protocol cmpp`."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from gatewayd.carrier.api import SubmitRequest
from gatewayd.carrier.cmpp.client import CmppClient
from gatewayd.carrier.cmpp.settings import CmppSettings
from gatewayd.sim import cli
from tests.cmpp_helpers import SECRET, SP_ID, cmpp_carrier
from tests.interop.pysmsc import Recorder, wait_until


def test_cmpp_options_map_to_ismg_settings() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--protocol", "cmpp", "--sp-id", "123456", "--secret", "x",
                              "--cmpp-version", "3.0", "--throttle", "0.2", "--error", "0.1",
                              "--failure-stat", "MK:0001", "--enquire-link", "30"])
    s = cli.ismg_settings_from(args)
    assert (s.sp_id, s.secret, s.version, s.flow_control_fraction, s.error_fraction,
            s.error_result, s.failure_stat, s.active_test_s, s.port) == (
        "123456", "x", "3.0", 0.2, 0.1, 13, "MK:0001", 30.0, 7890)
    assert cli.settings_from(parser.parse_args([])).port == 2775
    assert cli.run(parser.parse_args(["--protocol", "cmpp", "--throttle", "3"])) == 2


async def test_python_m_gatewayd_sim_protocol_cmpp_serves_and_stops() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd.sim", "--protocol", "cmpp", "--port", "0",
        "--sp-id", SP_ID, "--secret", SECRET, "--receipt-delay", "0.01",
        "--stats-interval", "0.2", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().split()
        assert line[0] == "listening"
        port = int(line[1].rsplit(":", 1)[1])
        rec = Recorder()
        c = CmppClient(cmpp_carrier(port), CmppSettings(version="3.0"), SECRET, rec)
        await c.start()
        try:
            assert await c.wait_bound(10.0)
            [o] = await c.submit_batch([SubmitRequest(msg_id="a", destination="+8613800000001",
                                                      text="【京东】验证码 482913")])
            assert o.ok
            await wait_until(lambda: len(rec.receipts) == 1, 10.0)
            assert rec.receipts[0].smsc_id == o.smsc_ids[0]
            stats_line = b""
            while b"submits=1" not in stats_line:
                stats_line = await asyncio.wait_for(proc.stderr.readline(), 10)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0
        finally:
            await c.stop(1.0)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
