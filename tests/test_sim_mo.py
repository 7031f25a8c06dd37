"""Mobile-originated messages injected by the simulator, read by a raw ESME."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gatewayd.sim.smpp.rawclient import DELIVER, Deliver, R, RawClient
from gatewayd.sim.smpp.smsc import SimSettings, SmscSimulator

LONG_ZH = "退订TD。感谢您的支持，我们会尽快处理您的请求，祝您生活愉快！" * 3
LONG_GSM = "Please STOP sending me these marketing messages, I never signed up. " * 4


@pytest.fixture
async def sim() -> AsyncIterator[SmscSimulator]:
    s = SmscSimulator(SimSettings(seed=3))
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def esme(sim: SmscSimulator) -> AsyncIterator[RawClient]:
    c = await RawClient.connect("127.0.0.1", sim.port)
    assert (await c.bind("receiver")).status == 0
    yield c
    await c.close()


def decode(d: Deliver, body: bytes) -> str:
    if d.data_coding == 8:
        return body.decode("utf-16-be")
    assert d.data_coding == 0
    return body.decode("ascii")  # the texts below use GSM-7 letters that match ASCII


def split_udh(d: Deliver) -> tuple[int, int, int, bytes]:
    """(ref, total, seq, payload), parsed by hand from the UDH."""
    sm = d.short_message
    udhl = sm[0]
    iei, iel = sm[1], sm[2]
    if iei == 0x00:
        assert (udhl, iel) == (5, 3)
        return sm[3], sm[4], sm[5], sm[6:]
    assert (iei, udhl, iel) == (0x08, 6, 4)
    return (sm[3] << 8) | sm[4], sm[5], sm[6], sm[7:]


async def test_single_mo(sim: SmscSimulator, esme: RawClient) -> None:
    await sim.inject_mo("+8613800138000", "10690", "TD")
    (d,) = await esme.delivers(1)
    assert not d.is_receipt and d.esm_class == 0
    assert (d.source, d.destination, d.data_coding) == ("8613800138000", "10690", 0)
    assert d.short_message == b"TD"
    await asyncio.sleep(0.02)
    assert (sim.stats.mo_sent, sim.stats.mo_acked) == (1, 1)


async def test_chinese_mo_is_ucs2(sim: SmscSimulator, esme: RawClient) -> None:
    await sim.inject_mo("8613800138000", "10690", "退订")
    (d,) = await esme.delivers(1)
    assert d.data_coding == 8 and d.short_message.decode("utf-16-be") == "退订"


@pytest.mark.parametrize("udh_bits", [8, 16])
@pytest.mark.parametrize("shuffle", [False, True])
async def test_multipart_udh(
    sim: SmscSimulator, esme: RawClient, udh_bits: int, shuffle: bool
) -> None:
    await sim.inject_mo("8613800138000", "10690", LONG_ZH, parts=3, udh_bits=udh_bits,
                        shuffle=shuffle)
    parts = await esme.delivers(3)
    assert all(d.esm_class & 0x40 for d in parts)
    split = [split_udh(d) for d in parts]
    refs = {ref for ref, _, _, _ in split}
    assert len(refs) == 1 and all(total == 3 for _, total, _, _ in split)
    seqs = [seq for _, _, seq, _ in split]
    assert sorted(seqs) == [1, 2, 3]
    assert (seqs == [1, 2, 3]) is not shuffle
    text = "".join(decode(d, body) for d, (_, _, _, body) in
                   sorted(zip(parts, split, strict=True), key=lambda x: x[1][2]))
    assert text == LONG_ZH


async def test_multipart_sar_gsm(sim: SmscSimulator, esme: RawClient) -> None:
    await sim.inject_mo("8613800138000", "10690", LONG_GSM, parts=2, use_sar=True,
                        shuffle=True)
    parts = await esme.delivers(2)
    assert all(d.esm_class == 0 for d in parts)
    assert [d.tlvs[0x020F] for d in parts] == [b"\x02", b"\x01"]
    assert {d.tlvs[0x020E] for d in parts} == {b"\x02"}
    assert len({d.tlvs[0x020C] for d in parts}) == 1
    assert len(parts[0].tlvs[0x020C]) == 2
    ordered = sorted(parts, key=lambda d: d.tlvs[0x020F])
    assert "".join(decode(d, d.short_message) for d in ordered) == LONG_GSM


async def test_long_single_part_uses_message_payload(
    sim: SmscSimulator, esme: RawClient
) -> None:
    await sim.inject_mo("8613800138000", "10690", LONG_GSM)
    (d,) = await esme.delivers(1)
    assert d.short_message == b""
    assert d.tlvs[0x0424].decode("ascii") == LONG_GSM


async def test_wait_returns_after_deliver_sm_resp(sim: SmscSimulator, esme: RawClient) -> None:
    await sim.inject_mo("8613800138000", "10690", LONG_ZH, parts=3, wait=True)
    assert sim.stats.mo_acked == 3


async def test_mo_held_until_a_receiver_binds(sim: SmscSimulator) -> None:
    tx = await RawClient.connect("127.0.0.1", sim.port)
    assert (await tx.bind("transmitter")).status == 0
    await sim.inject_mo("8613800138000", "10690", "T")
    assert sim.stats.held == 1
    rx = await RawClient.connect("127.0.0.1", sim.port)
    try:
        resp = await rx.bind("transceiver")
        assert resp.status == 0
        d = await rx.next(DELIVER)
        assert d.body.endswith(b"\x01T")  # sm_length 1, "T"
        assert sim.stats.held == 0
    finally:
        await rx.close()
        await tx.close()


async def test_unanswered_mo_wait_times_out(sim: SmscSimulator) -> None:
    c = await RawClient.connect("127.0.0.1", sim.port, auto_ack=False)
    try:
        assert (await c.bind()).status == 0
        with pytest.raises(TimeoutError):
            await sim.inject_mo("8613800138000", "10690", "TD", wait=True, timeout_s=0.2)
        d = await c.next(DELIVER)
        await c.send(DELIVER | R, b"\0", seq=d.sequence)
    finally:
        await c.close()


async def test_bad_arguments(sim: SmscSimulator) -> None:
    with pytest.raises(ValueError, match="udh_bits"):
        await sim.inject_mo("1", "2", "abc", parts=2, udh_bits=12)
    with pytest.raises(ValueError, match="cut"):
        await sim.inject_mo("1", "2", "ab", parts=3)
    with pytest.raises(ValueError, match="more parts"):
        await sim.inject_mo("1", "2", "x" * 400, parts=2)  # 200 septets a part
    with pytest.raises(ValueError, match="more parts"):
        await sim.inject_mo("1", "2", "退" * 142, parts=2, use_sar=True)  # 71 > 70 units
