"""One CMPP carrier entry as the pool drives it: connections, SUBMIT encoding, result table.

``[[carrier]] protocol = "cmpp"``: ``binds`` connections (CmppBind, a
carrier.protocols.Link), SUBMIT bodies from submit.SubmitEncoder (Pk_total/Pk_number,
TP_udhi + UDH, Src_Id with the message's extension, Service_Id, fees, ValId_Time from
``expires_at``), Result codes from status.py, and reports/MO from delivery.Deliveries.
Receiver-only connections do not exist in CMPP (one connection carries both ways), so
``receiver_binds`` is refused by check-config for CMPP carriers.
"""

from __future__ import annotations

from collections.abc import Callable

from gatewayd.carrier.api import DeliveryHandler, SubmitRequest
from gatewayd.carrier.cmpp import status as S
from gatewayd.carrier.cmpp.bind import CmppBind
from gatewayd.carrier.cmpp.delivery import Deliveries
from gatewayd.carrier.cmpp.submit import SubmitEncoder
from gatewayd.carrier.cmpp.submit import Unsendable as CmppUnsendable
from gatewayd.carrier.protocols import Kind, Link, Unsendable
from gatewayd.carrier.reassembly import Reassembler
from gatewayd.config import CarrierConfig

MO_REASSEMBLY_TIMEOUT_S = 60.0


class CmppStatuses:
    """carrier/cmpp/status.py as a protocols.StatusTable."""

    def name(self, code: int) -> str:
        return S.result_name(code)

    def kind(self, code: int) -> Kind:
        return S.result_kind(code)

    def rank(self, code: int) -> int:
        # As SMPP's outcome_rank: permanent, then temporary or no answer, then lost with
        # the connection, then flow control or never written (back-pressure).
        kind = S.result_kind(code)
        if kind == "permanent":
            return 4
        if kind == "throttle" or code == S.NOT_SENT:
            return 1
        if code == S.BIND_LOST:
            return 2
        return 3


STATUSES = CmppStatuses()


class CmppEngine:
    protocol = "cmpp"

    def __init__(self, c: CarrierConfig, secret: str, handler: DeliveryHandler,
                 clock: Callable[[], float]) -> None:
        st = c.cmpp
        self.cfg = c
        self.statuses = STATUSES
        self.encoder = SubmitEncoder(c, st, clock)
        self.deliveries = Deliveries(c.name, handler, clock,
                                     Reassembler(MO_REASSEMBLY_TIMEOUT_S), st.utc_offset_h)
        binds = [CmppBind(c, st, i, secret, self.deliveries, clock=clock)
                 for i in range(c.binds)]
        self.links: list[Link] = list(binds)

    def encode(self, req: SubmitRequest, now: float) -> tuple[list[bytes], int, int]:
        try:
            bodies, parts, ref = self.encoder.encode(req)
        except CmppUnsendable as e:
            raise Unsendable("permanent", "CMPP_UNSENDABLE", str(e)) from e
        return bodies, parts, ref
