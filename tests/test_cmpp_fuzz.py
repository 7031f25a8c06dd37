"""Malformed CMPP never crashes either side: parsers raise only their own error, and bytes
thrown at a live connection over TCP cost at most that connection."""

from __future__ import annotations

import asyncio
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.carrier.api import SubmitRequest
from gatewayd.carrier.cmpp import pdu as P
from gatewayd.carrier.cmpp import text
from gatewayd.carrier.cmpp.delivery import split_part
from gatewayd.carrier.cmpp.receipts import to_receipt
from gatewayd.sim.cmpp import pdu as SP
from tests.cmpp_helpers import ACCESS, SECRET, SP_ID, client, ismg
from tests.interop.pysmsc import wait_until

FAST = settings(max_examples=300, deadline=None)


@FAST
@given(st.binary(max_size=400), st.booleans())
def test_client_parsers_raise_only_pdu_error(body: bytes, v3: bool) -> None:
    for parse in (P.parse_connect_resp, P.parse_submit_resp, P.parse_report):
        try:
            parse(body)
        except P.PduError:
            pass
    try:
        d = P.parse_deliver(body, v3)
    except P.PduError:
        return
    split_part(d)
    text.decode(d.content, d.msg_fmt)
    if d.registered_delivery == 1:
        try:
            to_receipt("c", P.parse_report(d.content), 0.0, 8.0)
        except P.PduError:
            pass


@FAST
@given(st.binary(max_size=400))
def test_simulator_parsers_raise_only_malformed(body: bytes) -> None:
    for parse in (SP.parse_connect, SP.parse_submit, SP.parse_deliver_resp):
        try:
            parse(body)
        except SP.Malformed:
            pass


@FAST
@given(st.binary(max_size=300), st.sampled_from([0, 4, 8, 15, 3, 246]))
def test_decode_never_raises(data: bytes, fmt: int) -> None:
    assert isinstance(text.decode(data, fmt), str)


@FAST
@given(st.text(max_size=800), st.integers(0, 255), st.sampled_from(["ucs2", "gbk"]))
def test_encode_parts_fit_and_join_back(t: str, ref: int, encoding: str) -> None:
    try:
        enc = text.encode(t, ref, encoding)
    except ValueError:
        return  # more than 255 parts
    codec = {0: "ascii", 8: "utf-16-be", 15: "gbk"}[enc.msg_fmt]
    limit = 159 if enc.msg_fmt == 0 and enc.udhi else (160 if enc.msg_fmt == 0 else 140)
    assert all(len(p) <= limit for p in enc.parts)
    payload = b"".join(p[6:] if enc.udhi else p for p in enc.parts)
    assert payload.decode(codec, "surrogatepass") == t


def _pdus() -> st.SearchStrategy[bytes]:
    """Framed PDUs of any command with junk bodies, and now and then a broken frame."""
    framed = st.builds(
        lambda cmd, seq, body: struct.pack(">III", 12 + len(body), cmd, seq) + body,
        st.sampled_from([0x5, 0x80000004, 0x8, 0x80000008, 0x80000001, 0x7, 0x12345678]),
        st.integers(0, 2**32 - 1), st.binary(max_size=120),
    )
    return st.one_of(framed, framed, framed, st.binary(min_size=1, max_size=40))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_pdus(), min_size=1, max_size=5))
def test_garbage_from_the_ismg_costs_at_most_the_connection(blobs: list[bytes]) -> None:
    async def run() -> None:
        async with ismg() as sim, client(sim) as (c, _):
            for blob in blobs:
                await sim.send_raw(blob)
            await asyncio.sleep(0.05)
            await wait_until(c.ready, 5.0)
            outs = await c.submit_batch([SubmitRequest(msg_id="a", destination="+8613800000001",
                                                       text="hi")])
            assert outs[0].ok or outs[0].kind == "retry"

    asyncio.run(run())


@settings(max_examples=25, deadline=None)
@given(st.lists(_pdus(), min_size=1, max_size=5))
def test_garbage_from_an_sp_costs_the_simulator_nothing(blobs: list[bytes]) -> None:
    async def run() -> None:
        async with ismg() as sim:
            reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
            stamp = "1207083015"
            connect, _ = P.connect_pdu(1, SP_ID, SECRET, P.V30, stamp)
            writer.write(connect)
            await reader.readexactly(33)
            for blob in blobs:
                writer.write(blob)
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.close()
            await writer.wait_closed()
            await wait_until(lambda: sim.connected_count() == 0, 5.0)
            async with client(sim) as (c, rec):
                await sim.inject_mo("13900000001", ACCESS, "TD", wait=True)
                await wait_until(lambda: len(rec.inbound) >= 1, 5.0)
                assert c.ready()

    asyncio.run(run())
