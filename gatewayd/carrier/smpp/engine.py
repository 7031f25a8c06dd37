"""One SMPP carrier entry as the pool drives it: binds, submit_sm encoding, status table.

Encoding: gatewayd.smstext segments the text (UDH parts with a reference per
destination, or one submit_sm with message_payload where the carrier wants that); the
validity period comes from the request's ``expires_at`` in the carrier's format; GSM-7
octets are transcoded where the SMSC reads data_coding 0 as latin-1 or ASCII.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from gatewayd import smstext
from gatewayd.carrier.api import DeliveryHandler, SubmitRequest
from gatewayd.carrier.protocols import Kind, Link, Unsendable
from gatewayd.carrier.smpp import pdu as P
from gatewayd.carrier.smpp import status as S
from gatewayd.carrier.smpp.bind import Bind
from gatewayd.carrier.smpp.delivery import Deliveries
from gatewayd.carrier.smpp.mo import Reassembler
from gatewayd.config import CarrierConfig

MO_REASSEMBLY_TIMEOUT_S = 60.0
# Destinations whose last concatenation reference we remember. A forgotten one restarts
# at a random reference, which only matters for two long messages to one number within
# moments; 20,000 bounds memory (bench/soak: 200,000 let RSS grow 11 % over 1M messages).
_MAX_REF_DESTINATIONS = 20_000


class SmppStatuses:
    """carrier/smpp/status.py as a protocols.StatusTable."""

    def name(self, code: int) -> str:
        return S.status_name(code)

    def kind(self, code: int) -> Kind:
        return S.status_kind(code)

    def rank(self, code: int) -> int:
        return S.outcome_rank(code)


STATUSES = SmppStatuses()


class SmppEngine:
    protocol = "smpp"

    def __init__(self, c: CarrierConfig, password: str, handler: DeliveryHandler,
                 clock: Callable[[], float]) -> None:
        self.cfg = c
        self.statuses = STATUSES
        self.deliveries = Deliveries(c, handler, clock, Reassembler(MO_REASSEMBLY_TIMEOUT_S))
        binds = [Bind(c, i, password, self.deliveries) for i in range(c.binds)]
        binds += [Bind(c, c.binds + i, password, self.deliveries, mode="receiver")
                  for i in range(c.receiver_binds)]
        self.links: list[Link] = list(binds)
        self._refs: dict[str, int] = {}

    def _next_ref(self, destination: str, bits: int) -> int:
        refs = self._refs
        ref = refs.get(destination)
        if ref is None:
            # A random start: a restarted gateway should not reuse the last references.
            ref = random.randrange(0x10000)
            if len(refs) >= _MAX_REF_DESTINATIONS:
                for key in list(refs)[: _MAX_REF_DESTINATIONS // 4]:
                    del refs[key]
        refs[destination] = (ref + 1) & 0xFFFF
        return ref & (0xFFFF if bits == 16 else 0xFF)

    def _head(self, req: SubmitRequest) -> bytes:
        c = self.cfg
        source = req.source or c.source_addr
        source_ton, source_npi = c.source_ton, c.source_npi
        if req.source.startswith("+") and req.source[1:].isdigit():
            source, source_ton, source_npi = req.source[1:], 1, 1
        return P.submit_sm_head(
            service_type="", source=source, source_ton=source_ton, source_npi=source_npi,
            destination=req.destination.lstrip("+"), dest_ton=c.dest_ton, dest_npi=c.dest_npi,
        )

    def _validity(self, expires_at: float, now: float) -> bytes:
        """validity_period as the carrier wants it (b"\0": none, the SMSC's default)."""
        c = self.cfg
        if not expires_at or c.validity == "none":
            return b"\x00"
        if c.validity == "absolute":
            return P.c_str(P.absolute_validity(expires_at))
        # Whole seconds, rounded up: a code valid 299.4 s more must not be cut to 299.
        return P.c_str(P.relative_validity(max(1.0, expires_at - now + 0.999)))

    def encode(self, req: SubmitRequest, now: float) -> tuple[list[bytes], int, int]:
        """submit_sm bodies for the request, its billing segment count and reference."""
        c = self.cfg
        head = self._head(req)
        validity = self._validity(req.expires_at, now)
        regdel = 1 if c.registered_delivery else 0
        seg = smstext.segments(req.text, c.udh_ref_bits)
        if seg.parts > smstext.MAX_PARTS:
            raise Unsendable("permanent", "ESME_RINVMSGLEN",
                             f"text needs {seg.parts} parts; at most {smstext.MAX_PARTS}")
        if seg.parts > 1 and c.long_messages == "payload":
            data = smstext.encode(req.text, seg.encoding)
            if len(data) > 0xFFFF:
                raise Unsendable("permanent", "ESME_RINVMSGLEN", "text exceeds message_payload")
            body = P.submit_sm_body(
                head, esm_class=0, validity=validity, registered_delivery=regdel,
                data_coding=8 if seg.encoding == "ucs2" else 0, short_message=b"",
                tlvs=P.tlv(P.TAG_MESSAGE_PAYLOAD, self._transcode(data, seg.encoding)),
            )
            return [body], seg.parts, -1
        ref = -1
        if seg.parts == 1:
            # The common case; encode_parts would count the segments a second time.
            enc = smstext.Encoded(seg.encoding, 8 if seg.encoding == "ucs2" else 0,
                                  [smstext.encode(req.text, seg.encoding)], False)
        else:
            ref = req.ref if req.ref >= 0 else self._next_ref(req.destination, c.udh_ref_bits)
            enc = smstext.encode_parts(req.text, ref=ref, ref_bits=c.udh_ref_bits)
        esm = 0x40 if enc.udhi else 0
        bodies = []
        for part in enc.parts:
            if enc.encoding == "gsm7" and c.data_coding_default != "gsm7":
                part = self._transcode_part(part, enc.udhi)
            bodies.append(P.submit_sm_body(
                head, esm_class=esm, validity=validity, registered_delivery=regdel,
                data_coding=enc.data_coding, short_message=part,
            ))
        return bodies, len(bodies), ref

    def _transcode(self, data: bytes, encoding: str) -> bytes:
        """GSM-7 octets -> the carrier's default alphabet when data_coding 0 means latin-1."""
        default = self.cfg.data_coding_default
        if encoding != "gsm7" or default == "gsm7":
            return data
        charset = "latin-1" if default == "latin1" else "ascii"
        return smstext.decode(data, "gsm7").encode(charset, "replace")

    def _transcode_part(self, part: bytes, udhi: bool) -> bytes:
        if not udhi:
            return self._transcode(part, "gsm7")
        n = part[0] + 1
        return part[:n] + self._transcode(part[n:], "gsm7")
