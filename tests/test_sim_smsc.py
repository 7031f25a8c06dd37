"""The SMSC simulator over real TCP, driven by a raw struct-packed ESME."""

from __future__ import annotations

import asyncio
import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gatewayd import smstext
from gatewayd.sim.smpp.rawclient import (
    BIND_TRX,
    DELIVER,
    ENQUIRE,
    NACK,
    SUBMIT,
    UNBIND,
    R,
    RawClient,
    parse_deliver,
    submit_body,
    tlv,
)
from gatewayd.sim.smpp.smsc import SimSettings, SmscSimulator

Factory = Callable[..., Awaitable[SmscSimulator]]
Connect = Callable[..., Awaitable[RawClient]]

RECEIPT_RE = re.compile(
    r"^id:(?P<id>\S+) sub:001 dlvrd:(?P<dlvrd>\d{3}) submit date:(?P<sd>\d+) "
    r"done date:(?P<dd>\d+) stat:(?P<stat>[A-Z]+) err:(?P<err>\d{3}) text:(?P<text>.*)$"
)


@pytest.fixture
async def make_sim() -> AsyncIterator[Factory]:
    sims: list[SmscSimulator] = []

    async def make(**kw: object) -> SmscSimulator:
        kw.setdefault("seed", 7)
        kw.setdefault("receipt_delay_s", 0.01)
        sim = SmscSimulator(SimSettings(**kw))  # type: ignore[arg-type]
        await sim.start()
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        await sim.stop()


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    clients: list[RawClient] = []

    async def conn(sim: SmscSimulator, *, bind: str | None = "transceiver",
                   auto_ack: bool = True) -> RawClient:
        c = await RawClient.connect("127.0.0.1", sim.port, auto_ack=auto_ack)
        clients.append(c)
        if bind:
            resp = await c.bind(bind)
            assert resp.status == 0
        return c

    yield conn
    for c in clients:
        await c.close()


async def submit_and_answer(c: RawClient, n: int, **kw: object) -> list[tuple[int, str]]:
    """Pipeline n submit_sm, then collect (status, message_id) in sequence order."""
    seqs = []
    for i in range(n):
        body = submit_body(f"8613800{i:06d}", b"hi", **kw)  # type: ignore[arg-type]
        seqs.append(c.send_nowait(SUBMIT, body))
    await c.writer.drain()
    by_seq = {}
    for _ in range(n):
        p = await c.next(SUBMIT | R)
        by_seq[p.sequence] = (p.status, p.cstring() if p.body else "")
    return [by_seq[s] for s in seqs]


# -- binds ---------------------------------------------------------------------------


async def test_bind_modes_answer_with_gwsim(make_sim: Factory, connect: Connect) -> None:
    sim = await make_sim()
    for mode, cmd in (("transmitter", 0x02), ("receiver", 0x01), ("transceiver", 0x09)):
        c = await connect(sim, bind=None)
        resp = await c.bind(mode)
        assert (resp.command_id, resp.status, resp.cstring()) == (cmd | R, 0, "gwsim")
        # sc_interface_version TLV 0x0210 = 0x34 follows the system_id
        assert resp.body.endswith(struct.pack(">HHB", 0x0210, 1, 0x34))
    assert sim.stats.binds == 3
    assert sim.bound_count() == 3


@pytest.mark.parametrize(
    ("system_id", "password", "status"),
    [("demo", "wrong", 0x0E), ("other", "demo", 0x0F)],
)
async def test_bind_refused(
    make_sim: Factory, connect: Connect,
    system_id: str, password: str, status: int,
) -> None:
    sim = await make_sim()
    c = await connect(sim, bind=None)
    resp = await c.bind("transceiver", system_id, password)
    assert resp.status == status
    assert sim.stats.bind_refused == 1
    # Still unbound: a submit is refused with ESME_RINVBNDSTS.
    await c.submit("8613800138000", "x")
    assert (await c.next(SUBMIT | R)).status == 0x04


async def test_second_bind_and_max_binds(
    make_sim: Factory, connect: Connect
) -> None:
    sim = await make_sim(max_binds=1)
    c = await connect(sim)
    assert (await c.bind()).status == 0x05  # ESME_RALYBND
    c2 = await connect(sim, bind=None)
    assert (await c2.bind()).status == 0x0D  # ESME_RBINDFAIL
    await c.send(UNBIND)
    assert (await c.next(UNBIND | R)).status == 0
    await c.wait_closed()
    c3 = await connect(sim, bind=None)
    assert (await c3.bind()).status == 0


async def test_receiver_cannot_submit_and_enquire_link(
    make_sim: Factory, connect: Connect
) -> None:
    sim = await make_sim()
    c = await connect(sim, bind="receiver")
    await c.submit("8613800138000", "x")
    assert (await c.next(SUBMIT | R)).status == 0x04
    seq = await c.send(ENQUIRE)
    resp = await c.next(ENQUIRE | R)
    assert (resp.sequence, resp.status) == (seq, 0)
    assert sim.stats.enquire_links == 1


async def test_unknown_command_gets_generic_nack(
    make_sim: Factory, connect: Connect
) -> None:
    sim = await make_sim()
    c = await connect(sim)
    seq = await c.send(0x00000103, b"\0" * 10)  # data_sm: not supported here
    nack = await c.next(NACK)
    assert (nack.sequence, nack.status) == (seq, 0x03)
    seq = await c.send(0x0000ABCD)
    assert (await c.next(NACK)).sequence == seq
    # The connection stays usable.
    await c.submit("8613800138000", "still here")
    assert (await c.next(SUBMIT | R)).status == 0


# -- submit_sm -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("id_format", "pattern"),
    [
        ("hex", r"^[0-9a-f]{10,}$"),
        ("decimal", r"^[0-9]{10,}$"),
        ("uuid", r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"),
    ],
)
async def test_message_ids_unique_in_format(
    make_sim: Factory, connect: Connect, id_format: str,
    pattern: str,
) -> None:
    sim = await make_sim(id_format=id_format, receipts=False)
    c = await connect(sim)
    answers = await submit_and_answer(c, 300)
    ids = [mid for status, mid in answers]
    assert all(status == 0 for status, _ in answers)
    assert len(set(ids)) == 300
    assert all(re.match(pattern, i) for i in ids)
    assert [s.message_id for s in sim.submissions] == ids
    assert sim.stats.submit_sm == 300
    assert sim.stats.responses == {"ESME_ROK": 300}


async def test_submission_records_fields(
    make_sim: Factory, connect: Connect
) -> None:
    sim = await make_sim(receipts=False)
    c = await connect(sim)
    await c.submit("8613800138000", smstext.encode("Hello {world} @ 5€", "gsm7"))
    await c.submit("8613800138001", "你好".encode("utf-16-be"), data_coding=8,
                   registered_delivery=0)
    for _ in range(2):
        await c.next(SUBMIT | R)
    a, b = sim.submissions
    assert (a.source, a.destination, a.data_coding, a.text) == (
        "10690", "8613800138000", 0, "Hello {world} @ 5€")
    assert a.udh is None and a.sar is None and not a.payload and a.registered_delivery == 1
    assert (b.text, b.data_coding, b.registered_delivery, b.system_id) == ("你好", 8, 0, "demo")
    assert b.received_at >= a.received_at > 0


async def test_multipart_udh_sar_payload_reassembled(
    make_sim: Factory, connect: Connect
) -> None:
    sim = await make_sim()
    c = await connect(sim)
    long_text = "【京东】您的订单已发货，" * 8
    enc = smstext.encode_parts(long_text, ref=0x1234, ref_bits=16)
    for part in reversed(enc.parts):  # out of order on purpose
        await c.submit("8613800138000", part, esm_class=0x40, data_coding=8)
    sar_text = "part one / part two"
    for seq, chunk in ((1, "part one"), (2, " / part two")):
        tl = tlv(0x020C, b"\x00\x07") + tlv(0x020E, b"\x02") + tlv(0x020F, bytes((seq,)))
        await c.submit("8613800138001", chunk, tlvs=tl)
    payload = "x" * 300
    await c.submit("8613800138002", b"", tlvs=tlv(0x0424, payload.encode()))
    n = len(enc.parts) + 3
    resps = [await c.next(SUBMIT | R) for _ in range(n)]
    assert all(r.status == 0 for r in resps)
    receipts = await c.delivers(n)  # one receipt per part
    assert all(d.is_receipt for d in receipts)

    texts = sim.texts()
    assert sorted(texts.values()) == sorted([long_text, sar_text, payload])
    by_dest = {m.destination: m for m in sim.messages()}
    udh_msg = by_dest["8613800138000"]
    assert udh_msg.parts == len(enc.parts) and udh_msg.ref == 0x1234
    assert texts[udh_msg.message_ids[0]] == long_text
    assert sim.submissions[0].udh == (0x1234, len(enc.parts), len(enc.parts))
    assert by_dest["8613800138001"].ref == 7
    assert sim.submissions[-1].payload
    assert sim.texts_to("8613800138001") == [sar_text]


async def test_throttle_and_error_fractions(
    make_sim: Factory, connect: Connect
) -> None:
    sim = await make_sim(throttle_fraction=0.3, error_fraction=0.2, error_status=0x64)
    c = await connect(sim)
    answers = await submit_and_answer(c, 1000)
    statuses = [s for s, _ in answers]
    throttled, failed, ok = statuses.count(0x58), statuses.count(0x64), statuses.count(0)
    assert throttled + failed + ok == 1000
    assert 200 < throttled < 400 and 80 < failed < 240
    assert all(mid == "" for s, mid in answers if s)  # no body on failure
    assert sim.stats.responses["ESME_RTHROTTLED"] == throttled
    assert sim.stats.responses["ESME_RX_T_APPN"] == failed
    # Receipts only for accepted messages.
    assert len(await c.delivers(ok)) == ok
    await asyncio.sleep(0.05)
    assert sim.stats.receipts_sent == ok

    sim.set(throttle_fraction=0.0, error_fraction=0.0)
    assert all(s == 0 for s, _ in await submit_and_answer(c, 50, registered_delivery=0))


async def test_max_tps_throttles_bursts(
    make_sim: Factory, connect: Connect
) -> None:
    sim = await make_sim(max_tps=20, receipts=False)
    c = await connect(sim)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    answers = await submit_and_answer(c, 200)
    elapsed = loop.time() - t0
    ok = sum(1 for s, _ in answers if s == 0)
    throttled = sum(1 for s, _ in answers if s == 0x58)
    assert ok + throttled == 200
    # One second of burst plus what the rate allowed while the burst was answered.
    assert 20 <= ok <= 20 + 20 * elapsed + 1
    sim.set(max_tps=0)
    assert all(s == 0 for s, _ in await submit_and_answer(c, 100))


async def test_drop_after_closes_with_the_rest_unanswered(
    make_sim: Factory, connect: Connect
) -> None:
    sim = await make_sim(drop_after=5, receipts=False)
    c = await connect(sim)
    for i in range(20):
        c.send_nowait(SUBMIT, submit_body(f"86138{i:08d}", b"x"))
    await c.writer.drain()
    await c.wait_closed()
    answered = [await c.next(SUBMIT | R) for _ in range(5)]
    assert all(p.status == 0 for p in answered)
    with pytest.raises(ConnectionError):
        await c.next(SUBMIT | R)
    assert sim.stats.drops == 1 and len(sim.submissions) == 5
    # A new connection gets its own budget.
    c2 = await connect(sim)
    assert all(s == 0 for s, _ in await submit_and_answer(c2, 5))


async def test_response_delay_tracks_outstanding(
    make_sim: Factory, connect: Connect
) -> None:
    sim = await make_sim(response_delay_s=0.1, receipts=False)
    c = await connect(sim)
    answers = await submit_and_answer(c, 50)
    assert all(s == 0 for s, _ in answers)
    assert sim.stats.max_outstanding == {"demo#1": 50}


# -- receipts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("id_format", "receipt_id_format", "with_seconds"),
    [("hex", "same", False), ("hex", "decimal", True), ("decimal", "hex", False),
     ("uuid", "decimal", True)],
)
async def test_receipt_text_and_tlvs(
    make_sim: Factory, connect: Connect, id_format: str,
    receipt_id_format: str, with_seconds: bool,
) -> None:
    sim = await make_sim(
        id_format=id_format, receipt_id_format=receipt_id_format,
        receipt_dates_with_seconds=with_seconds,
    )
    c = await connect(sim)
    await c.submit("8613800138000", "Your code is 123456, valid 5 min", source="10690")
    mid = (await c.next(SUBMIT | R)).cstring()
    (d,) = await c.delivers(1)
    assert d.is_receipt and d.esm_class == 0x04
    assert (d.source, d.destination) == ("8613800138000", "10690")
    m = RECEIPT_RE.match(d.short_message.decode("ascii"))
    assert m is not None, d.short_message
    value = int(mid.replace("-", ""), 16 if id_format in ("hex", "uuid") else 10)
    expected = {
        "same": mid, "decimal": str(value), "hex": f"{value:x}",
    }[receipt_id_format]
    assert m["id"] == expected
    assert (m["stat"], m["dlvrd"], m["err"]) == ("DELIVRD", "001", "000")
    assert m["text"] == "Your code is 123456,"  # first 20 characters
    assert len(m["sd"]) == len(m["dd"]) == (12 if with_seconds else 10)
    assert d.tlvs[0x001E] == expected.encode() + b"\0"
    assert d.tlvs[0x0427] == b"\x02"


async def test_undeliverable_and_configured_stat(
    make_sim: Factory, connect: Connect
) -> None:
    sim = await make_sim(undeliverable_fraction=1.0)
    c = await connect(sim)
    await c.submit("8613800138000", "x")
    (d,) = await c.delivers(1)
    assert b"stat:UNDELIV" in d.short_message and d.tlvs[0x0427] == b"\x05"
    sim.set(undeliverable_fraction=0.0, receipt_stat="EXPIRED")
    await c.submit("8613800138000", "y")
    (d,) = await c.delivers(1)
    assert b"stat:EXPIRED" in d.short_message and d.tlvs[0x0427] == b"\x03"
    with pytest.raises(ValueError, match="receipt_stat"):
        sim.set(receipt_stat="NOPE")
    with pytest.raises(ValueError, match="throttle_fraction"):
        sim.set(throttle_fraction=2.0)


async def test_early_receipts_precede_the_response(
    make_sim: Factory, connect: Connect
) -> None:
    sim = await make_sim(early_receipt_fraction=1.0, receipt_delay_s=5.0)
    c = await connect(sim)
    seq = await c.submit("8613800138000", "early")
    first = await c.next(DELIVER, SUBMIT | R)
    second = await c.next(DELIVER, SUBMIT | R)
    assert (first.command_id, second.command_id) == (DELIVER, SUBMIT | R)
    assert second.sequence == seq
    assert parse_deliver(first).tlvs[0x001E] == second.body


async def test_receipts_go_to_a_receiver_when_submitting_on_a_transmitter(
    make_sim: Factory, connect: Connect
) -> None:
    sim = await make_sim()
    tx = await connect(sim, bind="transmitter")
    rx = await connect(sim, bind="receiver")
    answers = await submit_and_answer(tx, 10)
    receipts = await rx.delivers(10)
    assert sorted(d.tlvs[0x001E].rstrip(b"\0").decode() for d in receipts) == sorted(
        mid for _, mid in answers)


async def test_unanswered_submits_and_receipts_to_any_receiver_of_the_account(
    make_sim: Factory, connect: Connect
) -> None:
    """unanswered_fraction swallows submit_sm (no response, no receipt, recorded as
    UNANSWERED); receipts_to="any" spreads receipts over the account's receivers even
    when the submitting bind can receive; validity_period is recorded as sent."""
    from gatewayd.sim.smpp import pdu

    sim = await make_sim(unanswered_fraction=0.5, receipts_to="any")
    a = await connect(sim)
    b = await connect(sim, bind="receiver")
    seqs = [a.send_nowait(SUBMIT, submit_body(f"8613800{i:06d}", b"hi")) for i in range(40)]
    await a.writer.drain()
    await asyncio.sleep(0.3)
    swallowed = [s for s in sim.submissions if s.status == pdu.UNANSWERED]
    answered = [s for s in sim.submissions if s.status == 0]
    assert len(swallowed) + len(answered) == 40 == len(seqs)
    assert sim.stats.unanswered == len(swallowed) > 5 and len(answered) > 5
    assert sim.stats.receipts_sent == len(answered)  # none for the swallowed
    got_a = [await a.next(SUBMIT | R) for _ in answered]
    assert {p.status for p in got_a} == {0}
    on_b = await b.delivers(1)  # the receiver got some of the submitter's receipts
    assert on_b and sim.stats.receipts_acked >= 1
    # validity_period as sent (here a relative one): schedule "", validity, then flags
    body = submit_body("8613800000099", b"v").replace(
        b"\x00\x00\x01", b"\x00" + b"000000000500000R" + b"\x00\x01", 1)
    a.send_nowait(SUBMIT, body)
    await a.writer.drain()
    await asyncio.sleep(0.1)
    last = [s for s in sim.submissions if s.destination == "8613800000099"]
    assert last and last[0].validity_period == "000000000500000R"


async def test_unanswered_receipt_is_resent_then_held_for_the_next_bind(
    make_sim: Factory, connect: Connect
) -> None:
    sim = await make_sim(receipt_resend_s=0.2, receipt_max_attempts=5)
    c = await connect(sim, auto_ack=False)
    await c.submit("8613800138000", "x")
    mid = (await c.next(SUBMIT | R)).cstring()
    first = parse_deliver(await c.next(DELIVER))
    again = parse_deliver(await c.next(DELIVER))  # nobody answered: sent again
    assert again.sequence != first.sequence
    assert again.short_message == first.short_message
    assert sim.stats.receipts_resent >= 1 and sim.stats.unacked == 1
    # Lose the connection with the receipt unanswered: it waits for the next receiver.
    await c.close()
    await asyncio.sleep(0.05)
    assert sim.stats.held == 1 and sim.stats.unacked == 0
    rx = await connect(sim, bind="receiver")
    (d,) = await rx.delivers(1)
    assert d.tlvs[0x001E] == mid.encode() + b"\0"
    await asyncio.sleep(0.05)
    assert sim.stats.receipts_acked == 1 and sim.stats.unacked == 0 and sim.stats.held == 0


async def test_error_deliver_sm_resp_is_retried(
    make_sim: Factory, connect: Connect
) -> None:
    sim = await make_sim(receipt_resend_s=0.05)
    c = await connect(sim, auto_ack=False)
    await c.submit("8613800138000", "x")
    d = await c.next(DELIVER)
    await c.send(DELIVER | R, b"\0", seq=d.sequence, status=0x64)  # ESME_RX_T_APPN
    d2 = await c.next(DELIVER)
    assert d2.body == d.body
    await c.send(DELIVER | R, b"\0", seq=d2.sequence)
    await asyncio.sleep(0.05)
    assert (sim.stats.receipts_nacked, sim.stats.receipts_acked) == (1, 1)


# -- garbage -------------------------------------------------------------------------


async def test_impossible_command_length_closes_only_that_connection(
    make_sim: Factory, connect: Connect
) -> None:
    sim = await make_sim()
    bad = await connect(sim)
    good = await connect(sim)
    await bad.write_raw(struct.pack(">IIII", 5, SUBMIT, 0, 99) + b"garbage")
    nack = await bad.next(NACK)
    assert nack.status == 0x02
    await bad.wait_closed()
    huge = await connect(sim)
    await huge.write_raw(struct.pack(">IIII", 10_000_000, SUBMIT, 0, 1))
    await huge.wait_closed()
    assert sim.stats.garbage_closes == 2
    assert all(s == 0 for s, _ in await submit_and_answer(good, 3))


async def test_malformed_body_gets_generic_nack_and_session_survives(
    make_sim: Factory, connect: Connect
) -> None:
    sim = await make_sim()
    c = await connect(sim)
    seq = await c.send(SUBMIT, b"\x00\x01\x01no-terminator")
    nack = await c.next(NACK)
    assert (nack.sequence, nack.status) == (seq, 0x02)
    # sm_length pointing past the end of the PDU
    body = submit_body("8613800138000", b"abc")
    seq = await c.send(SUBMIT, body[:-3] + b"a")
    assert (await c.next(NACK)).sequence == seq
    seq = await c.send(BIND_TRX, b"no nul")
    assert (await c.next(NACK)).sequence == seq
    assert all(s == 0 for s, _ in await submit_and_answer(c, 2))


async def test_partial_pdus_across_reads(
    make_sim: Factory, connect: Connect
) -> None:
    sim = await make_sim(receipts=False)
    c = await connect(sim)
    stream = b"".join(
        struct.pack(">IIII", 16 + len(b), SUBMIT, 0, 100 + i) + b
        for i, b in enumerate(submit_body(f"86138{i:08d}", b"split") for i in range(3))
    )
    for i in range(0, len(stream), 7):  # dribble 7 octets at a time
        await c.write_raw(stream[i : i + 7])
        await asyncio.sleep(0)
    seqs = sorted([(await c.next(SUBMIT | R)).sequence for _ in range(3)])
    assert seqs == [100, 101, 102]
    assert [s.text for s in sim.submissions] == ["split"] * 3


async def test_send_raw_reaches_every_bound_session(
    make_sim: Factory, connect: Connect
) -> None:
    sim = await make_sim()
    a = await connect(sim)
    b = await connect(sim, bind="receiver")
    await sim.send_raw(struct.pack(">IIII", 16, ENQUIRE, 0, 4242))
    for c in (a, b):
        p = await c.next(ENQUIRE)
        assert p.sequence == 4242


async def test_stop_unbinds_clients(make_sim: Factory, connect: Connect) -> None:
    sim = await make_sim()
    c = await connect(sim)
    stopping = asyncio.create_task(sim.stop())
    unbind = await c.next(UNBIND)
    await c.send(UNBIND | R, seq=unbind.sequence)
    await stopping
    await c.wait_closed()


async def test_registered_delivery_failure_only(make_sim: Factory, connect: Connect) -> None:
    sim = await make_sim()
    c = await connect(sim)
    await c.submit("8613800138000", "delivered, no receipt wanted", registered_delivery=2)
    await c.next(SUBMIT | R)
    sim.set(undeliverable_fraction=1.0)
    await c.submit("8613800138001", "failed, receipt wanted", registered_delivery=2)
    await c.next(SUBMIT | R)
    (d,) = await c.delivers(1)
    assert d.source == "8613800138001" and b"stat:UNDELIV" in d.short_message
    assert sim.stats.receipts_sent == 1


async def test_stats_read_as_attributes_or_keys(make_sim: Factory, connect: Connect) -> None:
    sim = await make_sim(throttle_fraction=0.5, receipts=False)
    c = await connect(sim)
    answers = await submit_and_answer(c, 100)
    throttled = sum(1 for s, _ in answers if s == 0x58)
    assert sim.stats.throttled == sim.stats["throttled"] == throttled > 0
    assert sim.stats["ok"] == 100 - throttled and sim.stats["failed"] == 0
    assert sim.stats.as_dict()["submit_sm"] == 100
    assert f"throttled={throttled}" in sim.stats.summary()


async def test_random_pdus_never_break_the_simulator(
    make_sim: Factory, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    """Well-framed PDUs with random ids and bodies: answered or ignored, never a crash."""
    import random

    sim = await make_sim()
    rng = random.Random(11)
    # Every kind but unbind (0x06), which rightly ends the session.
    commands = [0x01, 0x02, 0x03, 0x04, 0x05, 0x09, 0x15, 0x21, 0x103,
                0x80000000, 0x80000004, 0x80000005, 0x80000015, 0x7FFFFFFF]
    c = await connect(sim)  # bound, so the submit_sm bodies get parsed
    stream = bytearray()
    for i in range(400):
        body = rng.randbytes(rng.randrange(0, 80))
        if rng.random() < 0.3:  # a submit_sm that is nearly right
            good = submit_body("8613800138000", b"fuzz")
            cut = rng.randrange(len(good))
            body = good[:cut] + rng.randbytes(rng.randrange(0, 4)) + good[cut:]
        cmd = 0x04 if i % 3 == 0 else rng.choice(commands)
        stream += struct.pack(">IIII", 16 + len(body), cmd, 0, i + 1) + body
    await c.write_raw(bytes(stream))
    seq = await c.send(ENQUIRE)
    while (p := await c.next()).command_id != ENQUIRE | R or p.sequence != seq:
        pass
    assert not c.closed
    assert sim.stats.submit_sm >= 133 and sim.stats.generic_nacks > 0
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    # The simulator still serves fresh connections.
    fresh = await connect(sim)
    assert all(s == 0 for s, _ in await submit_and_answer(fresh, 3))


async def test_keep_submissions_bounds_memory_and_set_rejects_unknown_knobs(
    make_sim: Factory, connect: Connect
) -> None:
    sim = await make_sim(keep_submissions=50, receipts=False)
    c = await connect(sim)
    answers = await submit_and_answer(c, 200)
    assert 40 <= len(sim.submissions) <= 50
    assert sim.submissions[-1].message_id == answers[-1][1]  # the newest are kept
    assert sim.stats.submit_sm == 200
    with pytest.raises(TypeError):
        sim.set(no_such_knob=1)
    with pytest.raises(ValueError, match="max_tps"):
        sim.set(max_tps=-1)
    assert sim.settings.max_tps == 0  # a refused change leaves the settings alone


async def test_simulator_probes_with_enquire_link(make_sim: Factory, connect: Connect) -> None:
    sim = await make_sim(enquire_link_s=0.05)
    c = await connect(sim)
    probe = await c.next(ENQUIRE)
    await c.send(ENQUIRE | R, seq=probe.sequence)
    await c.next(ENQUIRE)  # and again
    assert sim.stats.enquire_links_sent >= 2 and sim.stats.enquire_link_resps >= 1
