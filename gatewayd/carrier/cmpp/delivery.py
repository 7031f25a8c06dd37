"""CMPP_DELIVER handling for one carrier: status reports and MO, answered after the handler.

As carrier/smpp/delivery.py: per read chunk of one bind, parse every DELIVER, answer at
once those needing no handler (malformed: Result 1; MO parts held for reassembly:
Result 0), and run ONE task that hands the chunk's reports to ``handler.on_receipts``
and its complete MO to ``handler.on_inbound`` and then writes their DELIVER_RESP: Result
0 when the handler returned, Result 8 when it raised, so the ISMG delivers them again
(a report is acknowledged only once it is recorded). The session tracks the task: a
TERMINATE from the ISMG is answered only after it (bounded).

Concatenated MO (TP_udhi = 1, UDH 05 00 03 / 06 08 04) is put together by the same
Reassembler the SMPP binds use (parts held in memory, acknowledged when held; the part
that completes a message is acknowledged after the handler took it); the joined octets
are decoded by the first part's Msg_Fmt (text.decode), so a character split across
parts survives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from gatewayd import smstext
from gatewayd.carrier.api import DeliveryHandler
from gatewayd.carrier.cmpp import pdu as P
from gatewayd.carrier.cmpp import status as S
from gatewayd.carrier.cmpp.receipts import to_receipt
from gatewayd.carrier.cmpp.session import Session
from gatewayd.carrier.cmpp.text import decode
from gatewayd.carrier.reassembly import Assembled, GroupKey, Part, Reassembler
from gatewayd.model import InboundMessage, Receipt, mask_number
from gatewayd.ops import metrics as M

log = logging.getLogger("gatewayd.carrier")


def split_part(d: P.Deliver) -> Part:
    """The user data of an MO DELIVER and its concatenation info from the UDH."""
    data = d.content
    if d.tp_udhi & 0x01:
        parsed = smstext.parse_udh(data)
        if parsed is not None:
            ref, total, seq, payload = parsed
            return Part(ref, total, seq, payload)
        if data and data[0] + 1 <= len(data):
            return Part(0, 1, 1, data[data[0] + 1 :])  # a UDH without a concatenation IE
    return Part(0, 1, 1, data)


def assembled_text(a: Assembled) -> str:
    if all(c is not None for c in a.chunks):
        return decode(b"".join(c for c in a.chunks if c is not None), a.data_coding)
    return "".join("\ufffd" if c is None else decode(c, a.data_coding) for c in a.chunks)


@dataclass(slots=True)
class _Complete:
    message: InboundMessage
    seq: int
    msg_id: int
    key: GroupKey
    assembled: Assembled


class Deliveries:
    def __init__(
        self, carrier: str, handler: DeliveryHandler, clock: Callable[[], float],
        reassembler: Reassembler, utc_offset_h: float,
    ) -> None:
        self.carrier = carrier
        self.handler = handler
        self.clock = clock
        self.reassembler = reassembler
        self.utc_offset_h = utc_offset_h
        self.tasks: set[asyncio.Task[None]] = set()
        self._m_inbound = M.INBOUND.labels(carrier)
        self._m_body = M.PDU_ERRORS.labels(carrier, "body")

    def process(self, session: Session, items: list[tuple[int, bytes]]) -> None:
        now = self.clock()
        v3 = session.v3
        immediate: list[bytes] = []
        receipts: list[Receipt] = []
        receipt_acks: list[tuple[int, int]] = []  # (seq, DELIVER Msg_Id)
        completes: list[_Complete] = []
        for seq, body in items:
            try:
                # A report (nearly every DELIVER) needs only its Msg_Content parsed.
                mid, regdel, content = P.deliver_frame(body, v3)
                report = P.parse_report(content) if regdel == 1 else None
                d = None if report is not None else P.parse_deliver(body, v3)
            except P.PduError as e:
                self._m_body.inc()
                log.warning("%s: malformed DELIVER seq %d: %s", self.carrier, seq, e)
                mid = int.from_bytes(body[:8], "big") if len(body) >= 8 else 0
                immediate.append(P.deliver_resp_pdu(seq, mid, S.DELIVER_MALFORMED, v3))
                continue
            if d is None:
                assert report is not None
                receipts.append(to_receipt(self.carrier, report, now, self.utc_offset_h))
                receipt_acks.append((seq, mid))
                continue
            done = self.reassembler.add(d.source, d.dest_id, d.msg_fmt, split_part(d), now)
            if done is None:
                immediate.append(P.deliver_resp_pdu(seq, d.msg_id, S.DELIVER_OK, v3))
                continue
            key, assembled = done
            message = self._message(assembled, now)
            # The completing part's Msg_Id: what the ISMG repeats when it redelivers.
            message.smsc_id = str(d.msg_id)
            completes.append(_Complete(message, seq, d.msg_id, key, assembled))
        if immediate:
            session.write(b"".join(immediate))
        if receipts or completes:
            task = asyncio.create_task(self._deliver(session, receipts, receipt_acks, completes))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            session.track_answers(task)

    def _message(self, a: Assembled, now: float) -> InboundMessage:
        return InboundMessage(
            carrier=self.carrier, source=a.source, destination=a.destination,
            text=assembled_text(a), received_at=now, parts=a.received,
        )

    async def _deliver(
        self, session: Session, receipts: list[Receipt], receipt_acks: list[tuple[int, int]],
        completes: list[_Complete],
    ) -> None:
        v3 = session.v3
        out: list[bytes] = []
        if receipts:
            result = S.DELIVER_OK
            try:
                await self.handler.on_receipts(receipts)
            except Exception:
                log.exception("%s: receipt handler failed for %d reports; asking the ISMG "
                              "to deliver them again", self.carrier, len(receipts))
                result = S.DELIVER_RETRY
            out.extend(P.deliver_resp_pdu(seq, mid, result, v3) for seq, mid in receipt_acks)
        if completes:
            result = S.DELIVER_OK
            try:
                await self.handler.on_inbound([c.message for c in completes])
                self._m_inbound.inc(len(completes))
            except Exception:
                log.exception("%s: inbound handler failed for %d messages (first from %s); "
                              "asking the ISMG to deliver them again", self.carrier,
                              len(completes), mask_number(completes[0].message.source))
                result = S.DELIVER_RETRY
                for c in completes:
                    self.reassembler.restore(c.key, c.assembled)
            out.extend(P.deliver_resp_pdu(c.seq, c.msg_id, result, v3) for c in completes)
        session.write(b"".join(out))

    async def flush_expired(self) -> int:
        """Deliver multipart MO whose parts did not all arrive in time; returns how many."""
        expired = self.reassembler.expired(self.clock())
        if not expired:
            return 0
        now = self.clock()
        messages = [self._message(a, now) for _, a in expired]
        try:
            await self.handler.on_inbound(messages)
        except Exception:
            log.exception("%s: inbound handler failed for %d incomplete messages; will retry",
                          self.carrier, len(messages))
            for key, assembled in expired:
                self.reassembler.restore(key, assembled)
            return 0
        self._m_inbound.inc(len(messages))
        return len(messages)
