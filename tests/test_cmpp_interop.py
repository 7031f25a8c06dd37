"""Interoperability with CMPP implementations gatewayd did not write: PyPI `pycmpp`
(CMPP 2.0) and `cmppy` (CMPP 3.0).

What could be installed here (issue 22, item 5): PyPI has two small CMPP *clients*,
pycmpp 2.0.2 (CMPP 2.0) and cmppy 0.3 (CMPP 3.0: its CONNECT says 0x30, its SUBMIT has
3.0's 32-byte terminal ids and LinkID, it reads 3.0's 4-byte CONNECT_RESP Status); npm
has no CMPP package to install (`cmpp`, `node-cmpp` and `node-cmpp-3` are not in the
registry), Debian none, and Go's module proxy (gocmpp) is not reachable. Neither client
handles CMPP_DELIVER (no status reports, no MO), so reports and MO are not exercised here.

* pycmpp as the SP against our ISMG simulator: its authentication is accepted, its
  SUBMITs (short and concatenated) decode to its text, its parsers read our answers;
* pycmpp's own SUBMIT parser reads every SUBMIT our CmppClient writes (CMPP 2.0) and
  finds the fields we meant;
* cmppy as a CMPP 3.0 SP against our ISMG: its CONNECT is accepted, its 3.0 SUBMIT
  decodes to its text and fields, its parsers read our 3.0 CONNECT_RESP, SUBMIT_RESP
  (the Msg_Id we recorded) and TERMINATE_RESP.

The tests install the clients (pure Python) into a cache directory on first use
(GATEWAYD_INTEROP_PY_DIR, default ~/.cache/gatewayd-test/py) with this interpreter's pip;
they are test tools only (pycmpp GPL-3.0, cmppy Apache), never dependencies of gatewayd.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from gatewayd.carrier.api import SubmitRequest
from gatewayd.carrier.cmpp.client import CmppClient
from gatewayd.carrier.cmpp.settings import CmppSettings
from gatewayd.sim.cmpp import pdu as SP
from tests.cmpp_helpers import ACCESS, SECRET, SP_ID, cmpp_carrier, ismg
from tests.interop.pysmsc import Recorder, wait_until

PYCMPP = "pycmpp==2.0.2"
CMPPY = "cmppy==0.3"


def _installed(spec: str, probe: str) -> Path:
    """The directory holding ``spec`` (pip-installed there once); ``probe`` is a file of
    the package that shows it is."""
    base = Path(os.environ.get("GATEWAYD_INTEROP_PY_DIR",
                               Path.home() / ".cache" / "gatewayd-test" / "py"))
    if not (base / probe).exists():
        base.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(base),
             spec], capture_output=True, text=True, timeout=180,
        )
        if done.returncode != 0:
            pytest.fail(f"pip install {spec} into {base} failed:\n{done.stderr[-2000:]}")
    return base


@pytest.fixture(scope="session")
def pycmpp() -> Iterator[dict[str, ModuleType]]:
    base = _installed(PYCMPP, "pycmpp/request.py")
    sys.path.insert(0, str(base))
    try:
        yield {name: importlib.import_module(f"pycmpp.{name}")
               for name in ("cmpp", "request", "response", "utils")}
    finally:
        sys.path.remove(str(base))


@pytest.fixture(scope="session")
def cmppy() -> Iterator[ModuleType]:
    base = _installed(CMPPY, "cmppy/request/SubmitReq.py")
    sys.path.insert(0, str(base))
    try:
        yield importlib.import_module("cmppy")
    finally:
        sys.path.remove(str(base))


def _read_pdu(sock: socket.socket) -> bytes:
    head = b""
    while len(head) < 12:
        chunk = sock.recv(12 - len(head))
        if not chunk:
            raise ConnectionError("closed")
        head += chunk
    length = int.from_bytes(head[:4], "big")
    body = b""
    while len(body) < length - 12:
        chunk = sock.recv(length - 12 - len(body))
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    return head + body


def _pycmpp_session(mods: dict[str, ModuleType], port: int, long_text: str) -> dict[str, Any]:
    """Drive pycmpp's client by hand (its run() loops forever): CONNECT, two SUBMITs,
    ACTIVE_TEST, TERMINATE; return what its parsers made of our answers."""
    cmpp = mods["cmpp"].Cmpp("127.0.0.1", port, SP_ID, SECRET, ACCESS, delivery=1,
                             client_heartbeat=False)
    cmpp.so.settimeout(10)
    cmpp.connect()
    out: dict[str, Any] = {}
    try:
        cmpp.auth()
        conn = mods["response"].ConnectResponseInstance()
        conn.resolve(_read_pdu(cmpp.so))
        out["connect"] = (conn.status, conn.version)
        cmpp.submit("【京东】验证码482913", ["13800000001"])
        cmpp.submit(long_text, ["13800000002"])
        parts = len(mods["utils"].split_message(long_text))
        resps = []
        while len(resps) < 1 + parts:
            raw = _read_pdu(cmpp.so)
            if int.from_bytes(raw[4:8], "big") != 0x80000004:
                continue  # a status report: pycmpp has no DELIVER handling
            r = mods["response"].SubmitResponseInstance()
            r.resolve(raw)
            resps.append((r.status, r.msg_id))
        out["submits"] = resps
        cmpp.send(mods["request"].ActiveTestRequestInstance().create())
        while True:
            raw = _read_pdu(cmpp.so)
            if int.from_bytes(raw[4:8], "big") == 0x80000008:
                break
        out["active_test"] = True
        cmpp.terminate()
        while int.from_bytes(_read_pdu(cmpp.so)[4:8], "big") != 0x80000002:
            pass
        out["terminated"] = True
    finally:
        cmpp.close()
    return out


async def test_pycmpp_client_against_our_ismg(pycmpp: dict[str, ModuleType]) -> None:
    long_text = "【京东】双11狂欢价，全场满300减50，错过再等一年！回TD退订" * 4
    async with ismg(receipt_delay_s=0.01) as sim:
        got = await asyncio.to_thread(_pycmpp_session, pycmpp, sim.port, long_text)
        assert got["connect"][0] == 0
        assert got["active_test"] and got["terminated"]
        assert all(status == 0 for status, _ in got["submits"])
        assert [mid for _, mid in got["submits"]] == [s.msg_id for s in sim.submissions]
        assert sim.texts_to("13800000001") == ["【京东】验证码482913"]
        assert sim.texts_to("13800000002") == [long_text]
        assert sim.stats.terminates == 1 and sim.stats.active_tests == 1


async def test_pycmpp_parses_the_submits_our_client_writes(
    pycmpp: dict[str, ModuleType],
) -> None:
    """A bare ISMG (our simulator's packers) records raw SUBMITs; pycmpp reads them."""
    raw_submits: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mid = 1000
        try:
            while True:
                head = await reader.readexactly(12)
                length, cmd, seq = SP.HEADER.unpack(head)
                body = await reader.readexactly(length - 12)
                if cmd == SP.CONNECT:
                    c = SP.parse_connect(body)
                    writer.write(SP.connect_resp(seq, 0, c.authenticator, SECRET, 0x20, False))
                elif cmd == SP.SUBMIT:
                    raw_submits.append(head + body)
                    mid += 1
                    writer.write(SP.submit_resp(seq, mid, 0, v3=False))
                elif cmd == SP.TERMINATE:
                    writer.write(SP.pack(SP.TERMINATE | SP.RESP, seq))
                    await writer.drain()
                    break
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    long_text = "【京东】您的订单已发货，快递单号SF1234567890，请注意查收。" * 4
    c = CmppClient(cmpp_carrier(port), CmppSettings(version="2.0", service_id="MJS0019905"),
                   SECRET, Recorder())
    await c.start()
    try:
        assert await c.wait_bound(5.0)
        outs = await c.submit_batch([
            SubmitRequest(msg_id="a", destination="+8613800000001", text="【京东】验证码482913",
                          source="88"),
            SubmitRequest(msg_id="b", destination="+8613800000002", text=long_text),
        ])
        assert all(o.ok for o in outs)
    finally:
        await c.stop(1.0)
        server.close()
        await server.wait_closed()
    await wait_until(lambda: len(raw_submits) == 4, 5.0)
    parsed = []
    for raw in raw_submits:
        req = pycmpp["request"].SubmitRequestInstance()
        parsed.append(req.resolve(raw))
    def strip(v: str) -> str:
        return v.rstrip("\x00")  # pycmpp leaves the NUL padding on

    first = parsed[0]
    assert (strip(first["msg_src"]), strip(first["service_id"]), strip(first["src_id"]),
            strip(first["dest_terminal_id"]), first["msg_content"], first["register_delivery"],
            first["fee_usertype"], first["fee_type"], first["msg_fmt"]) == (
        SP_ID, "MJS0019905", ACCESS + "88", "13800000001", "【京东】验证码482913", 1, 2, "01", 8)
    rest = parsed[1:]
    assert [(p["pk_total"], p["pk_number"], p["tp_udhi"]) for p in rest] == [
        (3, 1, 1), (3, 2, 1), (3, 3, 1)]
    assert {p["msg_head"][:3] for p in rest} == {"\x05\x00\x03"}
    assert "".join(p["msg_content"] for p in rest) == long_text


def _cmppy_session(cmppy: ModuleType, port: int, texts: list[tuple[str, str]]) -> dict[str, Any]:
    """cmppy's own session steps (its public request() opens a connection for one
    request; several SUBMITs on one connection use the steps it is made of): CONNECT,
    a SUBMIT a (number, text), TERMINATE."""
    c = cmppy.Cmppy("127.0.0.1", port, SP_ID, SECRET)
    c._so.settimeout(10)
    out: dict[str, Any] = {"submits": []}
    assert c._commence(), "cmppy: CONNECT refused"  # CONNECT, CONNECT_RESP Status 0
    try:
        for number, text in texts:
            c._write(cmppy.SubmitReq(SP_ID, text, src_id=ACCESS + "7",
                                     dest_terminal_id=[number], service_id="MJS0019905",
                                     registered_delivery=0).message)
            r = cmppy.parse_response(c._read())
            out["submits"].append((type(r).__name__, r.result, r.msg_id))
        c._terminate()  # TERMINATE, its answer parsed, close
        out["terminated"] = True
    finally:
        c._close()
    return out


async def test_cmppy_cmpp30_client_against_our_ismg(cmppy: ModuleType) -> None:
    """A CMPP 3.0 SP we did not write: our ISMG accepts its CONNECT, decodes its SUBMITs
    (UCS2, 3.0 layout), and its parsers read our 3.0 answers."""
    texts = [("13800000003", "【京东】验证码482913，5分钟内有效"),
             ("13800000004", "【顺丰】您的快递已到驿站，取件码 8-2-1107")]
    async with ismg(version="3.0") as sim:
        got = await asyncio.to_thread(_cmppy_session, cmppy, sim.port, texts)
        # One request through its public API too (its own connection: CONNECT, SUBMIT,
        # TERMINATE), answered with our SUBMIT_RESP.
        one = await asyncio.to_thread(cmppy.Cmppy("127.0.0.1", sim.port, SP_ID, SECRET).request,
                                      cmppy.SubmitReq(SP_ID, "回TD退订", src_id=ACCESS,
                                                      dest_terminal_id=["13800000005"]))
        assert got["terminated"]
        assert [(kind, result) for kind, result, _ in got["submits"]] == [("SubmitRes", 0)] * 2
        assert type(one).__name__ == "SubmitRes" and one.result == 0
        assert [mid for _, _, mid in got["submits"]] + [one.msg_id] == [
            s.msg_id for s in sim.submissions]
        for number, text in texts:
            assert sim.texts_to(number) == [text]
        assert sim.texts_to("13800000005") == ["回TD退订"]
        first = sim.submissions[0]
        assert (first.src_id, first.service_id, first.sp_id, first.v3, first.msg_fmt) == (
            ACCESS + "7", "MJS0019905", SP_ID, True, 8)
        assert sim.stats.connects == 2 and sim.stats.terminates == 2
        assert sim.stats.malformed == 0
