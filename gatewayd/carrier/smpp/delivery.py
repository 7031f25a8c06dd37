"""deliver_sm handling for one carrier: receipts and MO, acknowledged after the handler.

Per read chunk of one bind: parse every deliver_sm, answer at once the ones needing no
handler (malformed, unparseable receipts, MO parts held for reassembly), and run ONE task
that calls ``handler.on_receipts`` / ``handler.on_inbound`` with the chunk's lists and then
writes the deliver_sm_resp of those PDUs: ESME_ROK when the handler returned, ESME_RX_T_APPN
when it raised (the SMSC delivers again). The session tracks that task: an unbind from the
SMSC is answered only after it (bounded).

Malformed deliver_sm: mandatory fields truncated -> generic_nack ESME_RINVCMDLEN; TLV stream
garbled -> deliver_sm_resp ESME_RINVOPTPARSTREAM. Both counted in gatewayd_pdu_errors_total;
the bind stays up. A receipt without any id cannot ever be matched: counted
(gatewayd_receipts_total{result="unparseable"}), logged, and acknowledged with ESME_ROK so
the SMSC does not redeliver it forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from gatewayd.carrier.api import DeliveryHandler
from gatewayd.carrier.smpp import pdu as P
from gatewayd.carrier.smpp.mo import Assembled, GroupKey, Reassembler, decode_text, split_part
from gatewayd.carrier.smpp.receipts import parse_receipt
from gatewayd.carrier.smpp.session import Session
from gatewayd.config import CarrierConfig
from gatewayd.model import InboundMessage, Receipt, mask_number
from gatewayd.ops import metrics as M

log = logging.getLogger("gatewayd.carrier")


def is_receipt(dsm: P.DeliverSm) -> bool:
    """SMSC delivery receipt (0x04) or intermediate notification (0x20), or a receipt TLV."""
    kind = dsm.esm_class & 0x3C
    return kind in (0x04, 0x20) or P.TAG_RECEIPTED_MESSAGE_ID in dsm.tlvs


def receipt_text(dsm: P.DeliverSm) -> str:
    data = dsm.short_message or dsm.tlvs.get(P.TAG_MESSAGE_PAYLOAD, b"")
    if dsm.data_coding == 8:
        return decode_text(data, 8)
    return data.decode("latin-1")


@dataclass(slots=True)
class _Complete:
    message: InboundMessage
    seq: int
    key: GroupKey
    assembled: Assembled


class Deliveries:
    def __init__(
        self, carrier: CarrierConfig, handler: DeliveryHandler, clock: Callable[[], float],
        reassembler: Reassembler,
    ) -> None:
        self.carrier = carrier.name
        self.default_alphabet = carrier.data_coding_default
        self.handler = handler
        self.clock = clock
        self.reassembler = reassembler
        self.tasks: set[asyncio.Task[None]] = set()
        self._m_unparseable = M.RECEIPTS.labels(carrier.name, "unparseable")
        self._m_inbound = M.INBOUND.labels(carrier.name)
        self._m_errors = {
            kind: M.PDU_ERRORS.labels(carrier.name, kind) for kind in ("body", "tlv")
        }

    def process(self, session: Session, items: list[tuple[int, bytes]]) -> None:
        now = self.clock()
        carrier = self.carrier
        immediate: list[bytes] = []
        receipts: list[Receipt] = []
        receipt_seqs: list[int] = []
        completes: list[_Complete] = []
        parse = P.parse_deliver_sm
        for seq, body in items:
            try:
                dsm = parse(seq, body)
            except P.PduError as e:
                self._m_errors[e.kind].inc()
                log.warning("%s: malformed deliver_sm seq %d: %s", self.carrier, seq, e)
                immediate.append(
                    P.generic_nack_pdu(seq, P.ESME_RINVCMDLEN) if e.kind == "body"
                    else P.deliver_sm_resp_pdu(seq, P.ESME_RINVOPTPARSTREAM)
                )
                continue
            if is_receipt(dsm):
                receipt = parse_receipt(carrier, receipt_text(dsm), dsm.tlvs, now)
                if receipt is None:
                    self._m_unparseable.inc()
                    log.warning("%s: receipt without a message id (seq %d) ignored",
                                self.carrier, seq)
                    immediate.append(P.deliver_sm_resp_pdu(seq))
                    continue
                receipts.append(receipt)
                receipt_seqs.append(seq)
                continue
            part = split_part(dsm)
            done = self.reassembler.add(dsm.source, dsm.destination, dsm.data_coding, part, now)
            if done is None:
                immediate.append(P.deliver_sm_resp_pdu(seq))
                continue
            key, assembled = done
            completes.append(_Complete(self._message(assembled, now), seq, key, assembled))
        if immediate:
            session.write(b"".join(immediate))
        if receipts or completes:
            task = asyncio.create_task(self._deliver(session, receipts, receipt_seqs, completes))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            session.track_answers(task)

    def _message(self, assembled: Assembled, now: float) -> InboundMessage:
        return InboundMessage(
            carrier=self.carrier, source=assembled.source, destination=assembled.destination,
            text=assembled.text(self.default_alphabet), received_at=now,
            parts=assembled.received,
        )

    async def _deliver(
        self, session: Session, receipts: list[Receipt], receipt_seqs: list[int],
        completes: list[_Complete],
    ) -> None:
        out: list[bytes] = []
        if receipts:
            status = 0
            try:
                await self.handler.on_receipts(receipts)
            except Exception:
                log.exception("%s: receipt handler failed for %d receipts; asking the SMSC "
                              "to deliver them again", self.carrier, len(receipts))
                status = P.ESME_RX_T_APPN
            out.extend(P.deliver_sm_resp_pdu(seq, status) for seq in receipt_seqs)
        if completes:
            status = 0
            try:
                await self.handler.on_inbound([c.message for c in completes])
                self._m_inbound.inc(len(completes))
            except Exception:
                log.exception("%s: inbound handler failed for %d messages (first from %s); "
                              "asking the SMSC to deliver them again", self.carrier,
                              len(completes), mask_number(completes[0].message.source))
                status = P.ESME_RX_T_APPN
                for c in completes:
                    self.reassembler.restore(c.key, c.assembled)
            out.extend(P.deliver_sm_resp_pdu(c.seq, status) for c in completes)
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
        for m in messages:
            log.info("%s: multipart MO from %s delivered incomplete (%d parts arrived)",
                     self.carrier, mask_number(m.source), m.parts)
        return len(messages)
