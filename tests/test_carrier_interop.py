"""Interoperability: submit + receipt against an SMSC built on node-smpp (npm `smpp`).

The test installs the npm package into a cache directory when missing
(GATEWAYD_INTEROP_NODE_DIR, default ~/.cache/gatewayd-test/node) and skips only when
node or npm is not installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gatewayd.carrier import CarrierPool, SubmitRequest, id_candidates
from tests.interop.pysmsc import Recorder, carrier, config, wait_until

SCRIPT = Path(__file__).parent / "interop" / "node_smsc.js"


@pytest.fixture(scope="session")
def node_modules() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the node-smpp interoperability test")
    base = Path(os.environ.get("GATEWAYD_INTEROP_NODE_DIR",
                               Path.home() / ".cache" / "gatewayd-test" / "node"))
    modules = base / "node_modules"
    if not (modules / "smpp" / "package.json").exists():
        base.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([npm, "install", "--prefix", str(base), "--no-audit", "--no-fund",
                               "smpp"], capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            pytest.fail(f"npm install smpp into {base} failed:\n{done.stderr[-2000:]}")
    return modules


class NodeSmsc:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.port = 0
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            event = json.loads(line)
            if event["event"] == "listening":
                self.port = event["port"]
            self.events.append(event)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]


@pytest.fixture
async def node_smsc(node_modules: Path) -> AsyncIterator[NodeSmsc]:
    env = dict(os.environ, NODE_PATH=str(node_modules))
    proc = await asyncio.create_subprocess_exec(
        "node", str(SCRIPT), "gw", "secret", env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    smsc = NodeSmsc(proc)
    try:
        await wait_until(lambda: smsc.port != 0, 20.0)
        yield smsc
    finally:
        proc.kill()
        await proc.wait()
        smsc._reader.cancel()


def reassembled(submits: list[dict[str, Any]]) -> dict[str, str]:
    """destination -> text, joining UDH parts (IE 00 / 08) in sequence order."""
    parts: dict[tuple[str, int], list[tuple[int, str]]] = {}
    texts: dict[str, str] = {}
    for s in submits:
        if s["payload"] is not None:
            texts[s["destination"]] = s["payload"]
            continue
        concat = [ie for ie in s["udh"] if ie[0] in (0, 8)]
        if not concat:
            texts[s["destination"]] = s["message"]
            continue
        ie = concat[0]
        ref = ie[2] if ie[0] == 0 else ie[2] << 8 | ie[3]
        parts.setdefault((s["destination"], ref), []).append((ie[-1], s["message"]))
    for (dest, _), chunks in parts.items():
        texts[dest] = "".join(text for _, text in sorted(chunks))
    return texts


async def test_submit_and_receipt_against_node_smpp(node_smsc: NodeSmsc) -> None:
    handler = Recorder()
    cfg = config(
        carrier("udh", node_smsc.port, udh_ref_bits=16),
        carrier("payload", node_smsc.port, long_messages="payload"),
    )
    pool = CarrierPool(cfg, handler)
    await pool.start()
    try:
        assert await pool.wait_bound(10.0)
        texts = {
            "8613800000001": "Your code is 482913",
            "8613800000002": "Order #1234 shipped; track it at https://t.cn/abc (ref: XJ-99) " * 4,
            "8613800000003": "【京东】您的订单已发货，请注意查收。回TD退订" * 4,
        }
        # The payload carrier's destinations end in 9x so both paths can be checked.
        expected = {**texts, **{d[:-2] + "9" + d[-1]: t for d, t in texts.items()}}
        reqs = [
            SubmitRequest(msg_id=d, destination="+" + d, text=t,
                          carrier="payload" if d[-2] == "9" else "udh")
            for d, t in expected.items()
        ]
        out = await pool.submit_batch(reqs)
        assert all(o.ok for o in out), out
        n_ids = sum(len(o.smsc_ids) for o in out)
        await wait_until(lambda: len(handler.receipts) == n_ids, 10.0)
        await wait_until(lambda: len(node_smsc.of("deliver_resp")) == n_ids, 10.0)
        assert {e["status"] for e in node_smsc.of("deliver_resp")} == {0}
        submit_keys = {k for o in out for i in o.smsc_ids for k in id_candidates(i)}
        for r in handler.receipts:
            assert r.state == "delivered"
            assert set(id_candidates(r.smsc_id)) & submit_keys
        submits = node_smsc.of("submit")
        assert len(submits) == n_ids
        assert reassembled(submits) == expected
        for s in submits:
            long_text = len(expected[s["destination"]]) > 70
            via_payload = s["destination"][-2] == "9"
            assert (s["payload"] is not None) == (long_text and via_payload)
            assert bool(s["udh"]) == (long_text and not via_payload)
            assert s["data_coding"] == (8 if s["destination"].endswith("3") else 0)
    finally:
        await pool.stop(2.0)
    await wait_until(lambda: len(node_smsc.of("unbind")) == 2, 5.0)
