"""Protocol-neutral carrier layer: pool, routing, ids, api, protocols; smpp/ and cmpp/ below.

May import: ops, config, model, errors, smstext; never store, policy or pipeline.
"""

from gatewayd.carrier.api import (
    BindStatus,
    DeliveryHandler,
    FailureKind,
    RateGate,
    SubmitOutcome,
    SubmitRequest,
    Submitted,
)
from gatewayd.carrier.ids import id_candidates, normalise_id
from gatewayd.carrier.pool import CarrierPool

__all__ = [
    "BindStatus",
    "CarrierPool",
    "DeliveryHandler",
    "FailureKind",
    "RateGate",
    "SubmitOutcome",
    "SubmitRequest",
    "Submitted",
    "id_candidates",
    "normalise_id",
]
