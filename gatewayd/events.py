"""Recording state changes: the per-message status record and the events stream.

Every transition is written into the caller's pipeline (batched with the rest of the
batch's work), so recording costs no round trip of its own.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.client import Pipeline

from gatewayd import metrics
from gatewayd.config import Config
from gatewayd.keys import Keys
from gatewayd.model import FINAL_STATES, OutboundMessage, mask_number

_state_counters: dict[tuple[str, str], Any] = {}


def reason_label(reason: str) -> str:
    """Bounded metric label from a free reason: "keyword:gambling:x" -> "keyword"."""
    head = reason.split(":", 1)[0]
    return head[:40]


def count_state(state: str, reason: str) -> None:
    key = (state, reason_label(reason))
    c = _state_counters.get(key)
    if c is None:
        c = _state_counters[key] = metrics.MESSAGES_STATE.labels(*key)
    c.inc()


class Ledger:
    def __init__(self, keys: Keys, cfg: Config) -> None:
        self.keys = keys
        self.status_ttl = int(cfg.queue.status_ttl_s)
        self.events_maxlen = cfg.queue.events_maxlen

    def record(
        self,
        pipe: Pipeline,
        msg: OutboundMessage,
        state: str,
        now: float,
        *,
        reason: str = "",
        carrier: str = "",
        carrier_id: str = "",
        segments: int = 0,
        until: float = 0.0,
        err: str = "",
        extra: dict[str, str | int | float] | None = None,
    ) -> None:
        key = self.keys.status(msg.id)
        masked = mask_number(msg.to)
        status: dict[Any, Any] = {
            "state": state,
            "updated_at": now,
            "category": msg.category,
            "to": masked,
            "attempts": msg.attempts,
        }
        event: dict[Any, Any] = {
            "id": msg.id,
            "state": state,
            "at": now,
            "category": msg.category,
            "to": masked,
        }
        for name, value in (
            ("reason", reason),
            ("carrier", carrier),
            ("carrier_id", carrier_id),
            ("segments", segments),
            ("until", until),
            ("err", err),
            ("ref", msg.ref),
            ("tenant", msg.tenant),
        ):
            if value:
                status[name] = value
                event[name] = value
        if state == "queued":
            status["enqueued_at"] = msg.enqueued_at or now
        elif state == "submitted":
            status["submitted_at"] = now
        elif state in FINAL_STATES:
            status["done_at"] = now
        if extra:
            status.update(extra)
        pipe.hset(key, mapping=status)
        pipe.expire(key, self.status_ttl)
        pipe.xadd(self.keys.events, event, maxlen=self.events_maxlen, approximate=True)
        count_state(state, reason)

    def event_only(self, pipe: Pipeline, event: dict[Any, Any]) -> None:
        pipe.xadd(self.keys.events, event, maxlen=self.events_maxlen, approximate=True)
