"""Carrier pool against a real TCP SMSC: windowing, throttling, faults, long messages."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gatewayd import smstext
from gatewayd.carrier import CarrierPool, SubmitRequest, id_candidates
from tests.interop.pysmsc import (
    PySmsc,
    Recorder,
    Submitted,
    carrier,
    config,
    deliver_sm_body,
    reassemble,
    text_of,
    wait_until,
)

RTHROTTLED = 0x58


@pytest.fixture
async def smsc() -> AsyncIterator[PySmsc]:
    s = PySmsc()
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def started(pool: CarrierPool) -> CarrierPool:
    await pool.start()
    assert await pool.wait_bound(5.0)
    return pool


def reqs(n: int, text: str = "hello", dest: str = "+8613800138000") -> list[SubmitRequest]:
    return [SubmitRequest(msg_id=f"m{i}", destination=dest, text=text) for i in range(n)]


async def test_submit_and_receipts_with_hex_and_decimal_ids(smsc: PySmsc) -> None:
    # Hex ids in submit_sm_resp, the same ids in decimal in the receipts (leading zeros).
    smsc.id_format = lambda n: f"00{n:06X}"

    def receipt(sub: Submitted) -> bytes:
        text = (f"id:{int(sub.message_id, 16):010d} sub:001 dlvrd:001 submit date:2401021504 "
                "done date:240102150433 stat:DELIVRD err:000 text:hello")
        return deliver_sm_body(source=sub.destination, destination=sub.source, esm_class=0x04,
                               short_message=text.encode())

    smsc.auto_receipt = receipt
    handler = Recorder()
    pool = await started(CarrierPool(config(carrier("a", smsc.port, binds=2)), handler))
    try:
        out = await pool.submit_batch(reqs(40))
        assert [o.msg_id for o in out] == [f"m{i}" for i in range(40)]
        assert all(o.ok and o.carrier == "a" and len(o.smsc_ids) == 1 for o in out)
        await wait_until(lambda: len(handler.receipts) == 40)
        submit_keys = {k for o in out for k in id_candidates(o.smsc_ids[0])}
        for r in handler.receipts:
            assert r.state == "delivered" and r.stat == "DELIVRD"
            assert set(id_candidates(r.smsc_id)) & submit_keys
        await wait_until(lambda: len(smsc.deliver_resps) == 40)
        assert {st for _, st in smsc.deliver_resps} == {0}
        # Both binds carried traffic (least in-flight spreading).
        assert all(s.submitted > 0 for s in pool.snapshot())
    finally:
        await pool.stop(2.0)
    assert smsc.unbinds == 2


async def test_window_is_respected_and_pipelined(smsc: PySmsc) -> None:
    smsc.resp_delay_s = 0.02
    pool = await started(CarrierPool(config(carrier("a", smsc.port, window=7)), Recorder()))
    try:
        out = await pool.submit_batch(reqs(120))
        assert all(o.ok for o in out)
        assert smsc.max_outstanding == 7  # never more than the window, and not stop-and-wait
    finally:
        await pool.stop(2.0)


async def test_throttling_slows_the_bind_and_loses_nothing(smsc: PySmsc) -> None:
    throttled = {"left": 25}

    def status(_: Submitted) -> int:
        if throttled["left"] > 0:
            throttled["left"] -= 1
            return RTHROTTLED
        return 0

    smsc.status_for = status
    pool = await started(CarrierPool(config(carrier("a", smsc.port, tps=2000.0)), Recorder()))
    try:
        todo = reqs(60)
        done: dict[str, list[str]] = {}
        saw_retry = False
        for _ in range(20):
            out = await pool.submit_batch(todo)
            for o in out:
                if o.ok:
                    done[o.msg_id] = o.smsc_ids
                else:
                    assert o.kind == "retry" and o.status_name == "ESME_RTHROTTLED"
                    saw_retry = True
            todo = [r for r in todo if r.msg_id not in done]
            if not todo:
                break
        assert saw_retry and not todo and len(done) == 60
        # The account's learned rate is cut once the throttle window closes (0.5 s),
        # shown on the bind within a housekeeping second ...
        await wait_until(lambda: pool.snapshot()[0].tps_limit < 2000.0, 3.0)
        lowered = pool.snapshot()[0].tps_limit
        # ... and probed upwards again after the hold (3 s).
        await wait_until(lambda: pool.snapshot()[0].tps_limit > lowered, 6.0)
    finally:
        await pool.stop(2.0)


async def test_disconnect_mid_window_gives_every_request_an_outcome(smsc: PySmsc) -> None:
    smsc.resp_delay_s = 0.3
    smsc.drop_after = 10
    pool = await started(CarrierPool(config(carrier("a", smsc.port, window=30)), Recorder()))
    try:
        out = await pool.submit_batch(reqs(30))
        assert len(out) == 30
        assert all(not o.ok and o.kind == "retry" for o in out)
        assert {o.status_name for o in out} <= {"BIND_LOST", "NOT_SENT"}
        smsc.drop_after = None
        smsc.resp_delay_s = 0.0
        assert await pool.wait_bound(5.0)  # reconnected
        assert smsc.binds_ok >= 2
        again = await pool.submit_batch(reqs(30))
        assert all(o.ok for o in again)
        assert pool.snapshot()[0].reconnects >= 1
    finally:
        await pool.stop(2.0)


async def test_refused_bind_is_reported_and_retried_slowly(smsc: PySmsc) -> None:
    cfg = config(carrier("a", smsc.port, password="wrong", auth_retry_s=0.5))
    pool = CarrierPool(cfg, Recorder())
    await pool.start()
    try:
        assert not await pool.wait_bound(1.2)
        st = pool.snapshot()[0]
        assert st.state == "refused" and "ESME_RINVPASWD" in st.last_error
        assert 2 <= smsc.bind_attempts <= 4  # every auth_retry_s, not hammered
        assert not pool.ready()
        out = await pool.submit_batch(reqs(1))
        assert out[0].kind == "retry" and out[0].status_name == "NO_BOUND_CARRIER"
    finally:
        await pool.stop(1.0)


@pytest.mark.parametrize("ref_bits", [8, 16])
async def test_long_messages_split_with_udh_and_reassemble(smsc: PySmsc, ref_bits: int) -> None:
    gsm = "Price {EUR} 5€ [ok] ~ | ^ \\ " * 12  # extension characters, several parts
    chinese = "【京东】您的订单已发货，请注意查收。回TD退订" * 5
    cfg = config(carrier("a", smsc.port, udh_ref_bits=ref_bits))
    pool = await started(CarrierPool(cfg, Recorder()))
    try:
        batch = [
            SubmitRequest(msg_id="g1", destination="+8613800000001", text=gsm),
            SubmitRequest(msg_id="g2", destination="+8613800000001", text=gsm),
            SubmitRequest(msg_id="c1", destination="+8613800000002", text=chinese),
        ]
        out = await pool.submit_batch(batch)
        assert all(o.ok for o in out)
        for o, r in zip(out, batch, strict=True):
            assert o.segments == smstext.segments(r.text, ref_bits).parts == len(o.smsc_ids) > 1
        groups = reassemble(smsc.submitted)
        assert len(groups) == 3  # a new reference per message to the same destination
        texts = sorted(text_of(parts) for parts in groups.values())
        assert texts == sorted([gsm, gsm, chinese])
        for parts in groups.values():
            assert parts[0].data_coding in (0, 8) and all(p.esm_class & 0x40 for p in parts)
            iei = parts[0].short_message[1]
            assert iei == (0x08 if ref_bits == 16 else 0x00)
    finally:
        await pool.stop(2.0)


async def test_long_messages_as_message_payload(smsc: PySmsc) -> None:
    chinese = "【京东】您的订单已发货，请注意查收。" * 8
    gsm = "Your code {1234} expires in 5 minutes. " * 6
    pool = await started(CarrierPool(config(carrier("a", smsc.port, long_messages="payload")),
                                     Recorder()))
    try:
        out = await pool.submit_batch([
            SubmitRequest(msg_id="c", destination="8613800000002", text=chinese),
            SubmitRequest(msg_id="g", destination="8613800000003", text=gsm),
        ])
        assert all(o.ok and len(o.smsc_ids) == 1 and o.segments > 1 for o in out)
        by_dest = {s.destination: s for s in smsc.submitted}
        c, g = by_dest["8613800000002"], by_dest["8613800000003"]
        assert c.short_message == b"" and c.data_coding == 8
        assert c.tlvs[0x0424].decode("utf-16-be") == chinese
        assert text_of([g]) == gsm and g.data_coding == 0 and not g.esm_class & 0x40
    finally:
        await pool.stop(2.0)


async def test_status_classes_and_partial_multipart_failure(smsc: PySmsc) -> None:
    def status(sub: Submitted) -> int:
        if sub.destination.endswith("0001"):
            return 0x0B  # ESME_RINVDSTADR
        if sub.destination.endswith("0002"):
            return 0x401  # vendor code
        if sub.destination.endswith("0003"):
            return 0x08  # ESME_RSYSERR
        if sub.destination.endswith("0004") and sub.short_message[-1:] == b"x":
            return 0x65  # ESME_RX_P_APPN on the last part only
        return 0

    smsc.status_for = status
    pool = await started(CarrierPool(config(carrier("a", smsc.port)), Recorder()))
    try:
        long_text = "a" * 300 + "x"
        out = await pool.submit_batch([
            SubmitRequest(msg_id="1", destination="+8613800000001", text="hi"),
            SubmitRequest(msg_id="2", destination="+8613800000002", text="hi"),
            SubmitRequest(msg_id="3", destination="+8613800000003", text="hi"),
            SubmitRequest(msg_id="4", destination="+8613800000004", text=long_text),
            SubmitRequest(msg_id="5", destination="+8613800000005", text="hi"),
        ])
        assert (out[0].kind, out[0].status_name) == ("permanent", "ESME_RINVDSTADR")
        assert out[0].status == 0x0B
        assert (out[1].kind, out[1].status_name) == ("retry", "0x00000401")
        assert (out[2].kind, out[2].status_name) == ("retry", "ESME_RSYSERR")
        assert out[3].kind == "permanent" and out[3].status_name == "ESME_RX_P_APPN"
        # The accepted part's id in its place, "" for the refused one.
        assert out[3].segments == 2 and out[3].smsc_ids[0] and out[3].smsc_ids[1] == ""
        assert out[3].partial
        assert out[4].ok
        assert pool.snapshot()[0].state == "bound"  # no status ever drops the bind
    finally:
        await pool.stop(2.0)


async def test_response_timeout_is_retryable(smsc: PySmsc) -> None:
    smsc.resp_delay_s = 1.5
    pool = await started(CarrierPool(config(carrier("a", smsc.port, response_timeout_s=0.3)),
                                     Recorder()))
    try:
        out = await pool.submit_batch(reqs(3))
        assert all(o.kind == "retry" and o.status_name == "RESPONSE_TIMEOUT" for o in out)
        assert pool.snapshot()[0].in_flight == 0
    finally:
        await pool.stop(0.5)


async def test_routing_prefixes_and_failover(smsc: PySmsc) -> None:
    other = PySmsc()
    await other.start()
    dead_port = other.port
    await other.stop()  # nothing listens there any more: carrier "down" never binds
    cfg = config(
        carrier("down", dead_port), carrier("a", smsc.port), carrier("b", smsc.port),
        prefixes={"86": ["down", "a"], "861380": ["b"], "1": ["down"]},
        default=["b", "a"],
    )
    pool = CarrierPool(cfg, Recorder())
    assert pool.carriers_for("+8613800138000") == ["b"]
    assert pool.carriers_for("8613900000000") == ["down", "a"]
    assert pool.carriers_for("+4420000000") == ["b", "a"]
    assert pool.carriers_for("+8613800138000", forced="a") == ["a"]
    await pool.start()
    try:
        await wait_until(lambda: sum(s.state == "bound" for s in pool.snapshot()) == 2)
        out = await pool.submit_batch([
            SubmitRequest(msg_id="1", destination="+8613900000000", text="x"),
            SubmitRequest(msg_id="2", destination="+8613800000000", text="x"),
            SubmitRequest(msg_id="3", destination="+15550000000", text="x"),
            SubmitRequest(msg_id="4", destination="+8613900000000", text="x", carrier="nope"),
        ])
        assert [(o.ok, o.carrier) for o in out[:2]] == [(True, "a"), (True, "b")]
        assert out[2].kind == "retry" and out[2].status_name == "NO_BOUND_CARRIER"
        assert out[3].kind == "permanent"
        assert pool.ready()
    finally:
        await pool.stop(1.0)


def test_runs_on_uvloop() -> None:
    """The daemon runs on uvloop, whose transports differ from asyncio's."""
    import uvloop

    async def scenario() -> None:
        smsc = PySmsc()
        await smsc.start()
        pool = CarrierPool(config(carrier("a", smsc.port, window=5)), Recorder())
        try:
            await pool.start()
            assert await pool.wait_bound(5.0)
            out = await pool.submit_batch(reqs(50, text="x" * 200))
            assert all(o.ok and o.segments == 2 for o in out)
            assert smsc.max_outstanding <= 5
        finally:
            await pool.stop(1.0)
            await smsc.stop()

    uvloop.run(scenario())


@pytest.fixture
def tls_cert(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


async def test_tls_bind_verifies_the_smsc_certificate(tls_cert: tuple[Path, Path]) -> None:
    cert, key = tls_cert
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    smsc = PySmsc()
    await smsc.start(ssl=server_ctx)
    cfg = config(
        carrier("trusted", smsc.port, tls=True, tls_ca=str(cert)),
        carrier("untrusted", smsc.port, tls=True),  # system CAs: must refuse the self-signed
    )
    pool = CarrierPool(cfg, Recorder())
    await pool.start()
    try:
        await wait_until(lambda: pool.snapshot()[0].state == "bound")
        await wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in pool.snapshot()[1].last_error)
        out = await pool.submit_batch([SubmitRequest(msg_id="t", destination="1", text="hi")])
        assert out[0].ok and out[0].carrier == "trusted"
        assert smsc.binds_ok == 1
    finally:
        await pool.stop(1.0)
        await smsc.stop()


async def test_rate_gate_is_asked_for_every_part(smsc: PySmsc) -> None:
    class Gate:
        def __init__(self) -> None:
            self.parts: dict[str, int] = {}
            self.caps: dict[str, float] = {}

        async def acquire(self, carrier: str, n: int, urgent: bool = False) -> None:
            self.parts[carrier] = self.parts.get(carrier, 0) + n

        async def throttled(self, carrier: str, accepted: int, throttled: int) -> None:
            raise AssertionError("nothing was throttled")

        def rate(self, carrier: str) -> float:
            return 100.0

        def set_cap(self, carrier: str, tps: float) -> None:
            self.caps[carrier] = tps

    gate = Gate()
    pool = await started(CarrierPool(config(carrier("a", smsc.port)), Recorder(), rate_gate=gate))
    try:
        out = await pool.submit_batch(reqs(10) + reqs(5, text="y" * 200))
        assert all(o.ok for o in out)
        assert gate.parts == {"a": 20} == {"a": len(smsc.submitted)}
    finally:
        await pool.stop(1.0)
