"""One ESME connection: frames PDUs, answers them, and writes each read's answers at once."""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections.abc import Callable
from typing import Final, Protocol, cast

from gatewayd.sim.smpp import pdu
from gatewayd.sim.smpp.messages import Submission, submission_from
from gatewayd.sim.smpp.receipts import IdFormat, IdGenerator
from gatewayd.sim.smpp.settings import SimSettings, SimStats
from gatewayd.sim.wheel import TimerWheel

log = logging.getLogger("gatewayd.sim")

_SEQ: Final = struct.Struct("!I")
_BIND_RESP_BODY: Final = b"gwsim\0" + pdu.tlv(pdu.TLV_SC_INTERFACE_VERSION, b"\x34")

# Timer-wheel item kinds (first element of the tuple).
RESP: Final = 0
RECEIPT: Final = 1
REDELIVER: Final = 2

KIND_RECEIPT: Final = 0
KIND_MO: Final = 1


class Outgoing:
    """A deliver_sm (receipt or MO) until the ESME answers it with deliver_sm_resp."""

    __slots__ = ("attempts", "future", "kind", "pdu", "prefer", "sent_at", "system_id")

    def __init__(
        self, data: bytes, kind: int, system_id: str, prefer: Session | None = None,
        future: asyncio.Future[None] | None = None,
    ) -> None:
        self.pdu = data  # sequence_number is patched in when it is written
        self.kind = kind
        self.system_id = system_id
        self.prefer = prefer
        self.future = future
        self.attempts = 0
        self.sent_at = 0.0


class SmscCore(Protocol):
    """What a connection needs of its simulator (smsc.SmscSimulator): defined here and
    passed in, so this module never imports the simulator that creates its sessions."""

    settings: SimSettings
    stats: SimStats
    rng: random.Random
    ids_format: IdFormat
    wall: Callable[[], float]
    wheel: TimerWheel
    _ids: IdGenerator

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def bound_count(self) -> int: ...

    def _connected(self, s: Session) -> None: ...

    def _disconnected(self, s: Session) -> None: ...

    def _bound(self, s: Session, out: list[bytes], now: float) -> None: ...

    def _admit(self, now: float) -> int: ...

    def _answered(self, s: Session, seq: int, status: int, now: float) -> None: ...

    def _count_response(self, status: int) -> None: ...

    def _record(self, sub: Submission) -> None: ...

    def _receipt_stat(self, registered_delivery: int) -> str: ...

    def _build_receipt(
        self, s: Session, sub: Submission, sm: pdu.ShortMessage, fmt: IdFormat, stat: str,
        wall: float,
    ) -> Outgoing: ...

    def _pick(self, system_id: str, prefer: Session | None) -> Session | None: ...

    def _deliver(self, items: list[Outgoing], now: float) -> None: ...


class Session(asyncio.Protocol):
    def __init__(self, sim: SmscCore) -> None:
        self.sim = sim
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.open = False
        self.closing = False
        self.mode = ""  # "" until bound, then receiver | transmitter | transceiver
        self.system_id = ""
        self.name = ""
        self.peer = ""
        self.can_send = False
        self.can_receive = False
        self.seq = 0
        self.pending: dict[int, Outgoing] = {}
        self.submits = 0
        self.outstanding = 0

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.open = True
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.sim._connected(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.closing = True
        self.sim._disconnected(self)

    def pause_writing(self) -> None:
        # The ESME is not reading: stop reading its submits rather than buffer answers.
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.buf:
            data = self.buf + data
        sim = self.sim
        now = sim.loop.time()
        wall = sim.wall()
        out: list[bytes] = []
        n = len(data)
        pos = 0
        unpack = pdu.HEADER.unpack_from
        while n - pos >= 16:
            length, cmd, status, seq = unpack(data, pos)
            if length < 16 or length > pdu.MAX_PDU_LEN:
                self._garbage(length, seq, out)
                return
            end = pos + length
            if end > n:
                break
            body = data[pos + 16 : end]
            pos = end
            try:
                if cmd == pdu.SUBMIT_SM:
                    if self._submit(seq, body, out, now, wall):
                        self._drop(out)
                        return
                elif cmd == pdu.DELIVER_SM_RESP:
                    sim._answered(self, seq, status, now)
                else:
                    self._command(cmd, status, seq, body, out, now)
                    if self._stopped():
                        break
            except Exception:
                # A bug must cost one PDU, not the connection (or every connection).
                log.exception("%s: failed on 0x%08x seq=%d", self.name or self.peer, cmd, seq)
                out.append(pdu.pack(pdu.GENERIC_NACK, pdu.ESME_RSYSERR, seq))
        self.buf = data[pos:] if pos < n else b""
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
        if self._stopped() and self.transport is not None:
            self.transport.close()

    # -- helpers ----------------------------------------------------------------------

    def _stopped(self) -> bool:
        # A method, not the attribute, so the type checker does not assume that a
        # command handled in between left it unchanged.
        return self.closing

    def write(self, out: list[bytes]) -> None:
        if self.open and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def emit(self, items: list[Outgoing], out: list[bytes], now: float) -> None:
        """Number and register deliver_sm for this connection; the PDUs go into out."""
        stats = self.sim.stats
        pending = self.pending
        pack_seq = _SEQ.pack
        seq = self.seq
        for o in items:
            seq = seq % 0x7FFFFFFF + 1
            pending[seq] = o
            if o.attempts:
                if o.kind == KIND_RECEIPT:
                    stats.receipts_resent += 1
            elif o.kind == KIND_RECEIPT:
                stats.receipts_sent += 1
            else:
                stats.mo_sent += 1
            o.attempts += 1
            o.sent_at = now
            p = o.pdu
            out.append(p[:12] + pack_seq(seq) + p[16:])
        self.seq = seq
        stats.unacked += len(items)

    def _submit(self, seq: int, body: bytes, out: list[bytes], now: float, wall: float) -> bool:
        """Answer one submit_sm; True when drop_after says the connection must go now."""
        sim = self.sim
        st = sim.settings
        stats = sim.stats
        stats.submit_sm += 1
        if not self.can_send:
            sim._count_response(pdu.ESME_RINVBNDSTS)
            out.append(pdu.pack(pdu.SUBMIT_SM_RESP, pdu.ESME_RINVBNDSTS, seq))
            return False
        try:
            sm = pdu.parse_sm(body)
        except pdu.MalformedPdu as e:
            log.warning("%s: malformed submit_sm seq=%d: %s", self.name, seq, e)
            stats.generic_nacks += 1
            out.append(pdu.pack(pdu.GENERIC_NACK, pdu.ESME_RINVCMDLEN, seq))
            return False
        status = sim._admit(now)
        if status == pdu.UNANSWERED:
            # Swallowed: no response, no receipt; the client's timer has to notice.
            stats.unanswered += 1
            sim._record(submission_from(
                sm, system_id=self.system_id, sequence=seq, message_id="", received_at=wall,
                status=status,
            ))
            self.submits += 1
            return bool(st.drop_after) and self.submits >= st.drop_after
        if status == 0:
            mid = sim._ids()
            resp = pdu.pack(pdu.SUBMIT_SM_RESP, 0, seq, mid.encode() + b"\0")
        else:
            mid = ""
            # SMPP 3.4 4.4.2: no body when command_status is not zero.
            resp = pdu.pack(pdu.SUBMIT_SM_RESP, status, seq)
        sim._count_response(status)
        sub = submission_from(
            sm, system_id=self.system_id, sequence=seq, message_id=mid, received_at=wall,
            status=status,
        )
        sim._record(sub)
        rd = sm.registered_delivery & 0x03
        # registered_delivery 1: a receipt on any final state; 2: only on failure.
        if status == 0 and st.receipts and rd and (stat := sim._receipt_stat(rd)):
            if st.early_receipt_fraction and sim.rng.random() < st.early_receipt_fraction:
                o = sim._build_receipt(self, sub, sm, sim.ids_format, stat, wall)
                target = sim._pick(o.system_id, o.prefer)
                if target is self:
                    self.emit([o], out, now)
                else:
                    sim._deliver([o], now)
            else:
                sim.wheel.add(
                    now + st.receipt_delay_s, (RECEIPT, self, sub, sm, sim.ids_format, stat)
                )
        if st.response_delay_s > 0:
            self.outstanding += 1
            mo = stats.max_outstanding
            if self.outstanding > mo.get(self.name, 0):
                mo[self.name] = self.outstanding
            sim.wheel.add(now + st.response_delay_s, (RESP, self, resp))
        else:
            out.append(resp)
        self.submits += 1
        return bool(st.drop_after) and self.submits >= st.drop_after

    def _command(
        self, cmd: int, status: int, seq: int, body: bytes, out: list[bytes], now: float
    ) -> None:
        sim = self.sim
        if cmd == pdu.ENQUIRE_LINK:
            sim.stats.enquire_links += 1
            out.append(pdu.pack(pdu.ENQUIRE_LINK_RESP, 0, seq))
        elif cmd in pdu.BIND_MODES:
            self._bind(cmd, seq, body, out, now)
        elif cmd == pdu.UNBIND:
            sim.stats.unbinds += 1
            out.append(pdu.pack(pdu.UNBIND_RESP, 0, seq))
            log.info("%s unbound", self.name or self.peer)
            self.closing = True
        elif cmd == pdu.UNBIND_RESP:
            self.closing = True
        elif cmd == pdu.ENQUIRE_LINK_RESP:
            sim.stats.enquire_link_resps += 1
        elif cmd == pdu.GENERIC_NACK:
            # A generic_nack for one of our deliver_sm is a refusal like a failed resp.
            sim._answered(self, seq, status or pdu.ESME_RSYSERR, now)
        elif cmd & pdu.RESP:
            log.debug("%s: ignoring unexpected 0x%08x seq=%d", self.name, cmd, seq)
        else:
            sim.stats.generic_nacks += 1
            log.info("%s: unsupported command 0x%08x, generic_nack", self.name or self.peer, cmd)
            out.append(pdu.pack(pdu.GENERIC_NACK, pdu.ESME_RINVCMDID, seq))

    def _bind(self, cmd: int, seq: int, body: bytes, out: list[bytes], now: float) -> None:
        sim = self.sim
        st = sim.settings
        resp_id = cmd | pdu.RESP
        try:
            bind = pdu.parse_bind(body)
        except pdu.MalformedPdu as e:
            log.warning("%s: malformed bind: %s", self.peer, e)
            sim.stats.generic_nacks += 1
            out.append(pdu.pack(pdu.GENERIC_NACK, pdu.ESME_RINVCMDLEN, seq))
            return
        if self.mode:
            status = pdu.ESME_RALYBND
        elif bind.system_id != st.system_id:
            status = pdu.ESME_RINVSYSID
        elif bind.password != st.password:
            status = pdu.ESME_RINVPASWD
        elif st.max_binds and sim.bound_count() >= st.max_binds:
            status = pdu.ESME_RBINDFAIL
        else:
            status = 0
        # The body goes back even on failure: SMPP 3.4 says to omit it, but many ESME
        # stacks (aiosmpplib included) cannot parse a bind_resp without system_id.
        out.append(pdu.pack(resp_id, status, seq, _BIND_RESP_BODY))
        if status:
            sim.stats.bind_refused += 1
            log.info(
                "%s: bind %r refused: %s", self.peer, bind.system_id, pdu.status_name(status)
            )
            return
        self.mode = pdu.BIND_MODES[cmd]
        self.system_id = bind.system_id
        self.can_send = cmd != pdu.BIND_RECEIVER
        self.can_receive = cmd != pdu.BIND_TRANSMITTER
        sim._bound(self, out, now)

    def _garbage(self, length: int, seq: int, out: list[bytes]) -> None:
        self.sim.stats.garbage_closes += 1
        log.warning(
            "%s: command_length %d is impossible; closing the connection",
            self.name or self.peer, length,
        )
        self.sim.stats.generic_nacks += 1
        out.append(pdu.pack(pdu.GENERIC_NACK, pdu.ESME_RINVCMDLEN, seq))
        self._drop(out, count=False)

    def _drop(self, out: list[bytes], *, count: bool = True) -> None:
        if count:
            self.sim.stats.drops += 1
            log.info("%s: dropping the connection after %d submit_sm", self.name, self.submits)
        self.closing = True
        self.buf = b""
        if self.transport is not None:
            if out:
                self.transport.write(b"".join(out))
            self.transport.close()
