"""Exception hierarchy: every error the gateway raises on purpose is a GatewayError."""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Base of every error gatewayd raises deliberately."""


class ConfigError(GatewayError, ValueError):
    """A configuration (or policy) file is wrong; the message names file, key and fix."""


class ApplyError(GatewayError):
    """A reloaded configuration passed its checks but could not be applied (a carrier's
    engine could not be built, ...); nothing of it was applied."""


class QueueFull(GatewayError):
    """Intake refused messages because their class's queue holds ``depth`` messages,
    at or past its ``queue.max_queued`` (``limit``): back-pressure, not a fault of the
    messages. Retryable: send them again later (the others of the call were queued;
    ``ids`` names the refused ones)."""

    retryable = True

    def __init__(self, klass: str, depth: int, limit: int, ids: list[str]) -> None:
        super().__init__(f"queue {klass!r} holds {depth} messages (queue.max_queued "
                         f"{limit}); {len(ids)} refused, retry later")
        self.klass = klass
        self.depth = depth
        self.limit = limit
        self.ids = ids


class MessageError(GatewayError, ValueError):
    """A queued message is malformed; ``field`` names the offending field, ``code`` the
    kind of problem as dead letters name it (``invalid:<code>: ...``; the field's name
    unless said otherwise, e.g. ``internal_field``)."""

    def __init__(self, field: str, reason: str, code: str = "") -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.code = code or field

    @property
    def dead_reason(self) -> str:
        """The reason a dead letter (and a raw entry's rejected status) carries."""
        if self.code == self.field:
            return f"invalid:{self.field}: {self.reason}"
        return f"invalid:{self.code}: {self.field}: {self.reason}"


class StoreError(GatewayError):
    """Redis could not be reached or answered with an error."""


class SmppError(GatewayError):
    """An SMPP session failed (bind refused, connection lost, protocol violation)."""


class BindRefused(SmppError):
    """The carrier refused our bind (wrong credentials, too many binds)."""

    def __init__(self, status: int, status_name: str) -> None:
        super().__init__(f"bind refused: {status_name} (0x{status:08x})")
        self.status = status
        self.status_name = status_name


class IntakeError(StoreError):
    """Some messages of an intake batch could not be queued (Redis unreachable past the
    retries). ``results[i]`` is message i's (id, duplicate) (from enqueue_each: (id,
    outcome)) when it was queued, None when not; ``reasons[i]`` says why not."""

    def __init__(self, results: list[tuple[str, Any] | None], reasons: dict[int, str]) -> None:
        n = sum(1 for r in results if r is None)
        first = next(iter(reasons.values()), "")
        super().__init__(f"{n} of {len(results)} messages not queued: {first}")
        self.results = results
        self.reasons = reasons
