"""What the HTTP API needs from the daemon: the Backend protocol and its result types.

The HTTP layer knows nothing of Redis or SMPP; the daemon implements this protocol
(gatewayd.http.service.DaemonBackend) and tests implement small ones of their own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

import msgspec

from gatewayd.accounts.cache import Principal


class FieldError(msgspec.Struct):
    """One validation problem: which field (``$`` for the item itself) and why."""

    field: str
    reason: str


# The reason an item's ``id`` error starts with when the id is another message's (the
# server answers 409 when every refused item is one).
DUPLICATE_ID = "duplicate_id"
# ... and when its class's queue is full (queue.max_queued: 429 when every refused item
# is one; ``EnqueueResult.depth`` says how full).
QUEUE_FULL = "queue_full"


class EnqueueResult(msgspec.Struct, omit_defaults=True):
    """Outcome of one submitted item, in request order (``index`` into the request)."""

    index: int
    id: str = ""
    duplicate: bool = False
    errors: list[FieldError] = []
    depth: int = 0  # QUEUE_FULL: the messages its class's queue holds


OptoutAction = Literal["add", "remove", "check"]


class Backend(Protocol):
    async def enqueue(self, items: list[Any], *, source: str,
                      account: Principal | None = None) -> list[EnqueueResult]:
        """Validate each item exactly like the stream path and queue the valid ones.
        With an ``account``: the tenant is the account's (an item naming another is
        refused), its limits are checked per item, and its rate and quotas for the
        request as a whole (gatewayd.accounts.quota.QuotaExceeded: nothing queued)."""
        ...

    async def status(self, msg_id: str) -> dict[str, Any] | None:
        """The message's status record, or None when unknown or expired."""
        ...

    async def optout(self, action: OptoutAction, number: str, scope: str,
                     category: str = "") -> dict[str, Any]:
        """Add, remove or check an opt-out (of one ``category`` when given); answers the
        number's opt-out record. ValueError (its text starting with the field's name)
        for a value the policy refuses."""
        ...

    def consent(self, number: str, since: float, until: float) -> AsyncIterator[dict[str, str]]:
        """The consent records (oldest first), of one number when given, in a time range
        (0 = open); rows as gatewayd.consent.records.EXPORT_FIELDS."""
        ...

    async def reload(self) -> tuple[bool, str, dict[str, Any]]:
        """Reload the config and policy files: (ok, message, what changed: carriers,
        routing, http keys, keys that need a restart). A file that fails its checks
        changes nothing (ok False, the message says why)."""
        ...

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, why): this process can accept intake (Redis reachable); ``why``
        also says which carriers are bound (gatewayd.http.server's /readyz/carriers)."""
        ...

    def liveness(self) -> dict[str, Any]:
        """Cheap, no I/O: the process and its loop answer."""
        ...
