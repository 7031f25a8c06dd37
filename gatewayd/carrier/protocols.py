"""What the protocol-neutral carrier layer asks of a protocol: a Link, an Engine, a status table.

The pool (routing, failover, the account's learned rate, windowing through ``reserve``,
straggler hand-over, partial resends, stragglers' outcomes) drives any protocol through
these three shapes; ``carrier/engines.py`` picks the engine by ``[[carrier]] protocol``.
A protocol lives in its own sub-package (``carrier/smpp``, ``carrier/cmpp``) with:

* ``Link``: one connection (SMPP bind, CMPP connection): its own connect/login,
  keep-alive (enquire_link / ACTIVE_TEST), reconnect back-off, a window of unanswered
  submits and a per-connection token bucket. The pool writes runs of already encoded
  submit bodies through ``reserve`` / ``send`` / ``release``; the link's session
  resolves each part into the batch's ``Waiter`` with the protocol's own result code
  (0 = accepted, negative = the shared pseudo codes below) and the carrier's message id.
  Flow control (ESME_RTHROTTLED, CMPP result 8) is counted into the account's ``meter``
  (carrier/throttle.py), which lowers the shared rate the pool's rate gate enforces.
* ``Engine``: one carrier entry in one protocol: its links, the encoder from a
  ``SubmitRequest`` to submit bodies (segmentation with UDH, addresses, validity,
  protocol fields), its status table, and its deliveries (receipts and MO, reassembled,
  handed to the DeliveryHandler as model.Receipt / model.InboundMessage and answered
  only after the handler returned).
* ``StatusTable``: a protocol's result code -> name ("ESME_RTHROTTLED",
  "CMPP_FLOW_CONTROL"), kind (ok / throttle / retry / permanent) and rank (which failing
  part names a long message's failure). The pseudo codes are shared by every protocol.

Adding SGIP (China Unicom) or SMGP (China Telecom): a sub-package with its codec, a
session that resolves SUBMIT_RESP into the Waiter, a Link (SGIP binds like SMPP; SMGP
logs in like CMPP), Deliveries calling the same DeliveryHandler, a status table, an
Engine, and one line in ``engines.engine_for`` plus the ``protocol`` literal in
config.py. Pool, dispatcher, inbound path and policies stay as they are.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, Literal, Protocol

from gatewayd.carrier.api import BindStatus, FailureKind, SubmitRequest

if TYPE_CHECKING:
    from gatewayd.config import CarrierConfig

Kind = Literal["ok", "retry", "permanent", "throttle"]

# Pseudo result codes, the same in every protocol (negative: no clash with real ones).
TIMEOUT: Final = -1  # no answer within response_timeout_s
BIND_LOST: Final = -2  # the connection dropped while the submit was outstanding
NOT_SENT: Final = -3  # the link went down (or stopped) before the part was written


class Waiter:
    """The parts of one submit batch: results by slot, one future for all of them, and
    an event set at every result (for the stragglers' task, which finishes each message
    on its own)."""

    __slots__ = ("changed", "future", "remaining", "results")

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        self.future: asyncio.Future[None] = loop.create_future()
        self.remaining = n
        self.results: list[tuple[int, str] | None] = [None] * n
        self.changed = asyncio.Event()
        if n == 0:
            self.future.set_result(None)

    def resolve(self, slot: int, status: int, message_id: str) -> None:
        if self.results[slot] is not None:
            return
        self.results[slot] = (status, message_id)
        self.remaining -= 1
        self.changed.set()
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(None)


class Unsendable(Exception):
    """A request that cannot go out as it is (its own failure, never its batch's)."""

    def __init__(self, kind: FailureKind, status_name: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.status_name = status_name
        self.reason = reason


class StatusTable(Protocol):
    def name(self, code: int) -> str: ...

    def kind(self, code: int) -> Kind: ...

    def rank(self, code: int) -> int:
        """Which failing part names a multipart message's failure (higher wins)."""


class Meter(Protocol):
    """The account's throttle meter (carrier.throttle.ThrottleMeter), fed by its links."""

    @property
    def open(self) -> bool: ...

    def count(self, accepted: int, throttled: int) -> None: ...


class Link(Protocol):
    """One connection of a carrier (see the module docstring)."""

    cfg: CarrierConfig
    carrier: str
    index: int
    transmits: bool
    latency: float  # moving average of submit -> answer, seconds (the stragglers' grace)
    meter: Meter | None

    @property
    def bound(self) -> bool: ...

    @property
    def can_submit(self) -> bool: ...

    @property
    def in_flight(self) -> int: ...

    def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    async def restart(self) -> None:
        """Stop taking submits, await the outstanding answers (bounded), close and
        connect again at once (an operator's restart of the carrier's binds)."""

    def retune(self, tps: float, window: int) -> None:
        """Apply the carrier's tps (the link takes its share, tps / binds) and window
        live (gatewayd/control: an operator's override, or back to the config)."""

    def status(self) -> BindStatus: ...

    def show_limit(self, share: float) -> None:
        """The link's share of its account's learned rate (gauge and status)."""

    async def reserve(self, want: int, urgent: bool = False) -> int:
        """Wait for window space and tokens; how many submits may go now (0: link down).
        ``urgent`` (codes): the whole window, before bulk (carrier/linkops.py)."""

    def release(self, n: int) -> None: ...

    def send(self, items: list[tuple[int, bytes]], waiter: Waiter) -> None:
        """Write reserved submit bodies in one go; each (slot, body) resolves ``waiter``."""


class Deliveries(Protocol):
    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        """Handler calls under way (the pool waits for them when stopping)."""

    async def flush_expired(self) -> int:
        """Hand over multipart MO whose missing parts never came; how many."""


class Engine(Protocol):
    """One carrier entry in one protocol."""

    protocol: str
    links: list[Link]

    @property
    def statuses(self) -> StatusTable: ...

    @property
    def deliveries(self) -> Deliveries: ...

    def encode(self, req: SubmitRequest, now: float) -> tuple[list[bytes], int, int]:
        """Submit bodies (one per part), billing segments and concatenation reference
        (-1: none); ``Unsendable`` when the request cannot go out as it is."""
