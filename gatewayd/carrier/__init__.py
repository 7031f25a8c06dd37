"""SMPP carrier layer: binds, routing, submission, receipts and MO (knows nothing of Redis)."""

from gatewayd.carrier.api import (
    BindStatus,
    DeliveryHandler,
    FailureKind,
    RateGate,
    SubmitOutcome,
    SubmitRequest,
)
from gatewayd.carrier.pool import CarrierPool
from gatewayd.carrier.receipts import id_candidates, normalise_id

__all__ = [
    "BindStatus",
    "CarrierPool",
    "DeliveryHandler",
    "FailureKind",
    "RateGate",
    "SubmitOutcome",
    "SubmitRequest",
    "id_candidates",
    "normalise_id",
]
