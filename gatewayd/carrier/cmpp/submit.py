"""A SubmitRequest as CMPP_SUBMIT bodies: one per part, Pk_total/Pk_number, UDH, Src_Id.

The per-carrier fields (Service_Id, fees, Msg_src, Registered_Delivery...) are packed once
in a pdu.SubmitTemplate; per message only the destination, Src_Id, ValId_Time (the
message's expires_at, e.g. an OTP's life) and the parts vary. Every part of one message
carries the same UDH reference, taken per destination (as the SMPP pool does) so two long
messages to one handset in a row do not merge.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Final

from gatewayd.carrier.api import SubmitRequest
from gatewayd.carrier.cmpp import pdu as P
from gatewayd.carrier.cmpp import text, times
from gatewayd.carrier.cmpp.settings import CmppSettings
from gatewayd.config import CarrierConfig

_MAX_REF_DESTINATIONS: Final = 20_000


class Unsendable(ValueError):
    """The request cannot go over CMPP as it is (its own failure, never the bind's)."""


class SubmitEncoder:
    def __init__(
        self, cfg: CarrierConfig, settings: CmppSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.access_number = cfg.source_addr
        self._clock = clock
        self._template = P.SubmitTemplate(
            version=P.VERSIONS[settings.version],
            registered_delivery=1 if cfg.registered_delivery else 0,
            msg_level=settings.msg_level, service_id=settings.service_id,
            fee_user_type=settings.fee_user_type, fee_terminal_id=settings.fee_terminal_id,
            tp_pid=settings.tp_pid, msg_src=settings.msg_src or cfg.system_id,
            fee_type=settings.fee_type, fee_code=settings.fee_code, link_id=settings.link_id,
        )
        self._refs: dict[str, int] = {}

    def _next_ref(self, destination: str) -> int:
        refs = self._refs
        ref = refs.get(destination)
        if ref is None:
            ref = random.randrange(256)  # a restarted gateway should not reuse references
            if len(refs) >= _MAX_REF_DESTINATIONS:
                for key in list(refs)[: _MAX_REF_DESTINATIONS // 4]:
                    del refs[key]
        refs[destination] = (ref + 1) & 0xFF
        return ref

    def encode(self, req: SubmitRequest) -> tuple[list[bytes], int, int]:
        """SUBMIT bodies for the request, its part count and UDH reference (-1: one
        part); Unsendable if it cannot go. A resumed long message (``req.ref`` >= 0)
        keeps its reference, so the parts sent now join those the ISMG took before."""
        st = self.settings
        dest = text.destination(req.destination, st.national_destinations)
        if not dest.isdigit() or len(dest) > self._template.dest_width:
            raise Unsendable(f"destination {req.destination!r} is not a number CMPP can carry")
        try:
            src = text.src_id(self.access_number, req.source)
            enc = text.encode(req.text, req.ref & 0xFF if req.ref >= 0
                              else lambda: self._next_ref(dest), st.encoding)
        except ValueError as e:
            raise Unsendable(str(e)) from e
        now = self._clock()
        life = round(req.expires_at - now) if req.expires_at else 0.0
        valid = times.validity(life, now, st.validity, st.utc_offset_h)
        total = len(enc.parts)
        body = self._template.body
        bodies = [
            body(pk_total=total, pk_number=i, udhi=enc.udhi, msg_fmt=enc.msg_fmt, valid=valid,
                 src_id=src, destination=dest, content=part)
            for i, part in enumerate(enc.parts, 1)
        ]
        ref = enc.parts[0][3] if enc.udhi else -1  # UDH 05 00 03 <ref> <total> <n>
        return bodies, total, ref
