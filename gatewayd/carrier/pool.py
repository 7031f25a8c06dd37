"""The carrier pool: every bind of every carrier, any protocol, routing, batched submission.

Each ``[[carrier]]`` entry is an Engine of its protocol (carrier/engines.py: SMPP or
CMPP; carrier/protocols.py says what an engine and its links offer). ``submit`` routes
each request (forced carrier, longest prefix, routing.default, every carrier in file
order), takes the first carrier of the chain with a bound transmitting link, puts the
whole message on that carrier's least-loaded link, has the carrier's engine encode it
(segments with UDH, addresses, validity from the request's ``expires_at``, protocol
fields), writes the bodies in runs as window and rate allow (the link's own bucket,
then the account's learned rate: carrier/throttle.py, fed by ESME_RTHROTTLED and CMPP
flow control alike), and collects the answers (carrier/batch.py says what they make of
each message, by the protocol's status table).

Stragglers. ``submit(..., detach=True)`` does not wait for the slowest answer of the
batch: once every PDU is written it waits a grace of a few typical answer times (the
binds' latency average, at least 10 ms), returns the outcomes known by then, and hands
the rest over as a task that finishes them (answers, a response timeout, resends of
refused parts). One unanswered submit then costs its own message the response timeout,
not its batch (the dispatcher records the others and reads on). ``submit_batch`` waits
for everything (tests, benchmarks, tools).

Outcomes, in request order: ok with one normalised smsc_id per PDU; or a failure whose
kind is that of the worst part (carrier/batch.py). A multipart message whose accepted
parts are joined by parts refused for a reason that may pass gets those parts sent
again, the same bytes, for up to the carrier's response timeout; still failing, its
outcome carries the accepted parts' ids (``partial``) and its reference, and the
retry resends only the rest. With message_payload a long message is one submit_sm:
``segments`` is the billing count from smstext.segments and ``smsc_ids`` has one id (one
receipt expected). A bind lost after a submit_sm was written gives BIND_LOST although
the SMSC may have accepted it: at-least-once, duplicates counted upstream. "Bind" below
means a link of any protocol (an SMPP bind, a CMPP connection).

Live control (gatewayd/control applies an operator's Redis-kept settings through these):
``suspend`` takes a carrier out of routing (``_choose`` skips it; a chain of nothing but
suspended carriers is CARRIER_SUSPENDED, back-pressure) while its binds stay up for
receipts and MO; ``set_tuning`` overrides its tps and window on its links and its
account's cap on the rate gate; ``restart_binds`` takes its links down and up. The
overrides are kept by carrier name, so ``_adopt`` (the one place an entry's engine and
links are wired in, at construction and when a reload replaces an entry) applies them to
new links too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from gatewayd.carrier import batch as B
from gatewayd.carrier.api import (
    BindStatus,
    DeliveryHandler,
    RateGate,
    SubmitOutcome,
    SubmitRequest,
    Submitted,
)
from gatewayd.carrier.batch import Planned, Waiter
from gatewayd.carrier.engines import engine_for
from gatewayd.carrier.protocols import NOT_SENT, Engine, Link, Unsendable
from gatewayd.carrier.routing import Router
from gatewayd.carrier.throttle import LocalRateGate, ThrottleMeter
from gatewayd.config import CarrierConfig, Config, account_names
from gatewayd.errors import ApplyError
from gatewayd.ops import metrics as M

log = logging.getLogger("gatewayd.carrier")

# Resend rounds for the refused parts of a partly accepted message, within the carrier's
# response timeout; what still fails goes back to the dispatcher with its accepted parts.
_MAX_RESEND_ROUNDS = 4
# A batch waits this many typical answer times after its last write before leaving the
# unanswered to a task; never less than the floor (loop jitter), never over half the
# response timeout.
_GRACE_LATENCIES = 4.0
_GRACE_FLOOR_S = 0.01
# A reload's retired links keep taking receipts and MO this long after their last submit
# was answered: SMSCs send most receipts within a second or two of the answer; later ones
# wait at the SMSC for the account's next bind.
_RECEIPT_LINGER_S = 2.0


class CarrierPool:
    def __init__(
        self, cfg: Config, handler: DeliveryHandler, *, rate_gate: RateGate | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self._router = Router(cfg)
        self._gate: RateGate = rate_gate if rate_gate is not None else LocalRateGate(cfg)
        self._clock = clock
        self._carriers: dict[str, CarrierConfig] = {c.name: c for c in cfg.carrier}
        self._accounts = account_names(cfg)
        self._engines: dict[str, Engine] = {}
        self._binds: dict[str, list[Link]] = {}
        self._all: list[Link] = []
        self._tx: dict[str, list[Link]] = {}
        # One throttle meter per SMSC account: every bind of every entry on it feeds it.
        self._meters: dict[str, ThrottleMeter] = {}
        self._learned: dict[str, Any] = {}
        self._m_stragglers = M.STRAGGLERS
        self._m_resends: dict[str, Any] = {}
        self._m_suspended: dict[str, Any] = {}
        self._m_tps: dict[str, Any] = {}
        self._m_window: dict[str, Any] = {}
        # Live control (gatewayd/control): kept by carrier NAME, not on engines or links,
        # so an engine replaced by a reload keeps its carrier's suspension and tuning.
        self._suspended: set[str] = set()
        self._tuning: dict[str, tuple[float | None, int | None]] = {}
        self._housekeeper: asyncio.Task[None] | None = None
        self._handler = handler
        # Links a reload took out of service, draining (stop() shuts them down too).
        self._draining: set[Link] = set()
        for c in cfg.carrier:
            self._adopt(c.name, engine_for(c, cfg.carrier_password(c), handler, clock))
        self._accepting = False
        self._later: set[asyncio.Task[None]] = set()

    def _adopt(self, name: str, engine: Engine) -> None:
        """Wire a carrier entry's engine and its links into the pool: the one place this
        happens (construction, and a reload replacing an entry). The entry's config must be
        in ``self._carriers``. The carrier's suspension and tuning overrides apply to the
        new links; in a started pool they are started (the old engine's links, if any, are
        the caller's to drain and shut down)."""
        self._engines[name] = engine
        binds = list(engine.links)
        account = self._accounts[name]
        meter = self._meters.get(account)
        if meter is None:
            meter = self._meters[account] = ThrottleMeter(self._reporter(name))
        for b in binds:
            b.meter = meter
        self._binds[name] = binds
        self._tx[name] = [b for b in binds if b.transmits]
        self._all = [b for bs in self._binds.values() for b in bs]
        self._learned[name] = M.CARRIER_RATE.labels(name)
        self._m_resends[name] = M.PART_RESENDS.labels(name)
        self._m_suspended[name] = M.CARRIER_SUSPENDED.labels(name)
        self._m_tps[name] = M.CARRIER_TPS.labels(name)
        self._m_window[name] = M.CARRIER_WINDOW.labels(name)
        self._apply(name)
        if self._housekeeper is not None:
            for b in binds:
                b.start()

    # -- live control (gatewayd/control applies Redis state through these) ---------------
    def effective(self, name: str) -> tuple[float, int]:
        """The carrier's tps and window now: its override, else its config."""
        c = self._carriers[name]
        tps, window = self._tuning.get(name, (None, None))
        return (c.tps if tps is None else tps), (c.window if window is None else window)

    def carriers(self) -> list[str]:
        """The carrier entries' names, in file order."""
        return list(self._engines)

    def suspended(self, name: str) -> bool:
        return name in self._suspended

    def tuning(self, name: str) -> tuple[float | None, int | None]:
        """The carrier's overrides (None: the config's value)."""
        return self._tuning.get(name, (None, None))

    def suspend(self, name: str, on: bool) -> None:
        """A suspended carrier gets no new submits (routing takes the next carrier of the
        chain); its binds stay up, so receipts and MO keep coming."""
        self._known(name)
        if on:
            self._suspended.add(name)
        else:
            self._suspended.discard(name)
        self._m_suspended[name].set(1 if on else 0)

    def set_tuning(self, name: str, tps: float | None, window: int | None) -> None:
        """Override the carrier's tps and window (None: back to the config value), on its
        links and on the account's shared rate cap."""
        self._known(name)
        if tps is not None and not tps > 0:
            raise ValueError(f"{name}: tps must be greater than 0, got {tps}")
        if window is not None and window < 1:
            raise ValueError(f"{name}: window must be at least 1, got {window}")
        if tps is None and window is None:
            self._tuning.pop(name, None)
        else:
            self._tuning[name] = (tps, window)
        self._apply(name)

    async def restart_binds(self, name: str) -> None:
        """Bring the carrier's binds down and up again: each stops taking submits, waits
        (bounded by the response timeout) for its outstanding answers, unbinds and
        reconnects at once; what is still unanswered ends as on a bind loss (retried)."""
        self._known(name)
        await asyncio.gather(*(b.restart() for b in self._binds[name]))

    # -- config reload (gatewayd.control.reload says what changed) -----------------------
    async def apply_carriers(self, cfg: Config, *, changed: Iterable[str] = (),
                             retuned: Iterable[str] = (), bind_wait_s: float = 10.0) -> None:
        """A reloaded config's carriers and routes, without losing a message in flight.

        Added and ``changed`` entries get new engines, whose links start at once; the old
        links of a changed entry keep taking submits meanwhile. Once the new links are
        bound (or ``bind_wait_s`` has passed: then a warning, and the switch anyway), the
        new routes apply and the replaced links, and those of removed entries, stop
        taking submits and drain: their outstanding submits are answered (bounded by the
        response timeout; what stays unanswered ends as on a bind loss, retried),
        receipts and MO are still taken for a while (_RECEIPT_LINGER_S), then they
        unbind. Returns when they have. ``retuned`` entries (tps, window) change in
        place. Operator overrides (suspension, tps, window) are kept by carrier name,
        so they survive.

        The new engines are built before anything changes: one that cannot be built
        raises ApplyError naming its carrier, and the pool runs on as it was."""
        new = {c.name: c for c in cfg.carrier}
        added = [n for n in new if n not in self._engines]
        removed = [n for n in self._engines if n not in new]
        replaced = [n for n in changed if n in self._engines and n in new]
        built: dict[str, Engine] = {}
        for name in [*added, *replaced]:
            c = new[name]
            try:
                built[name] = engine_for(c, cfg.carrier_password(c), self._handler,
                                         self._clock)
            except Exception as e:
                raise ApplyError(f"carrier {name}: cannot set up its binds: "
                                 f"{type(e).__name__}: {e}") from e
        self.cfg = cfg
        self._carriers.update(new)  # removed entries' too: their stragglers need them
        self._accounts.update(account_names(cfg))
        self._gate.learn_carriers(cfg)
        for name in retuned:
            if name in self._engines:
                self._apply(name)
        old: dict[str, tuple[Engine, list[Link]]] = {}
        fresh: list[Link] = []
        for name, engine in built.items():
            previous = (self._engines[name], self._binds[name]) if name in replaced else None
            self._adopt(name, engine)
            fresh += engine.links
            if previous is not None:
                old[name] = previous
                self._binds[name] = [*self._binds[name], *previous[1]]
                # The carrier's submits are encoded by its (new) engine: the old links
                # may carry them only in the same protocol.
                if previous[0].protocol == engine.protocol:
                    self._tx[name] = [*self._tx[name],
                                      *(b for b in previous[1] if b.transmits)]
        self._rewire()
        if fresh and self._housekeeper is not None and not await self._bound(fresh,
                                                                            bind_wait_s):
            log.warning("reload: not every new bind came up within %.0f s; switching to "
                        "the new carrier config anyway (messages wait for them queued)",
                        bind_wait_s)
        self._router = Router(cfg)
        retiring: list[tuple[Engine, list[Link]]] = []
        for name, (engine, links) in old.items():
            self._binds[name] = list(self._engines[name].links)
            self._tx[name] = [b for b in self._binds[name] if b.transmits]
            retiring.append((engine, links))
        for name in removed:
            engine = self._engines.pop(name)
            retiring.append((engine, self._binds.pop(name)))
            self._tx.pop(name, None)
        self._rewire()
        if retiring:
            log.info("reload: draining the binds of %s",
                     ", ".join(sorted({*old, *removed})))
            await asyncio.gather(*(self._retire(e, links) for e, links in retiring))
        for name in removed:
            if name not in self._engines:
                self._carriers.pop(name, None)
                M.forget_bind_info(name)
        for name in old:  # the old links' last state set the shared gauges
            M.forget_bind_info(name, keep={str(b.index) for b in self._binds[name]})
            for b in self._binds[name]:
                M.BIND_UP.labels(name, str(b.index)).set(1 if b.bound else 0)

    def _rewire(self) -> None:
        self._all = [b for bs in self._binds.values() for b in bs]

    async def _bound(self, links: list[Link], timeout_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not all(b.bound for b in links):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def _retire(self, engine: Engine, links: list[Link]) -> None:
        """Drain links out of service (no submit is routed to them any more). Until they
        are shut down they are in ``_draining``: a stop meanwhile shuts them down too."""
        self._draining.update(links)
        loop = asyncio.get_running_loop()
        wait = max((b.cfg.response_timeout_s for b in links), default=0.0)
        deadline = loop.time() + wait
        while True:
            if not any(b.in_flight for b in links) or loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(_RECEIPT_LINGER_S)
        tasks = engine.deliveries.tasks
        if tasks:
            await asyncio.wait(set(tasks), timeout=wait or 1.0)
        await asyncio.gather(*(b.shutdown() for b in links))
        self._draining.difference_update(links)

    def _known(self, name: str) -> None:
        if name not in self._engines:
            raise KeyError(f"no carrier named {name!r}")

    def _apply(self, name: str) -> None:
        """The carrier's overrides onto its links, gauges and the account's rate cap."""
        tps, window = self.effective(name)
        for b in self._binds[name]:
            b.retune(tps, window)
        self._m_suspended[name].set(1 if name in self._suspended else 0)
        self._m_tps[name].set(tps)
        self._m_window[name].set(window)
        account = self._accounts[name]
        cap = min(self.effective(n)[0] for n, a in self._accounts.items()
                  if a == account and n in self._engines)
        self._gate.set_cap(name, cap)

    def _reporter(self, carrier: str) -> Callable[[int, int], Awaitable[None]]:
        gate = self._gate

        async def report(accepted: int, throttled: int) -> None:
            await gate.throttled(carrier, accepted, throttled)
        return report

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        for b in self._all:
            b.start()
        self._accepting = True
        if self._housekeeper is None:
            self._housekeeper = asyncio.create_task(self._housekeeping(), name="carrier-pool")

    async def wait_bound(self, timeout_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self._all_bound():
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)

    def _all_bound(self) -> bool:
        for name, binds in self._binds.items():
            tx = self._tx[name]
            # A receiver-only carrier cannot transmit: any bound bind is what it can offer.
            if not any(b.bound for b in (tx or binds)):
                return False
        return True

    def ready(self) -> bool:
        """Submits can go somewhere: at least one carrier that is not suspended has a
        bound transmitting bind (else the dispatcher leaves messages queued)."""
        if not self._accepting:
            return False
        suspended = self._suspended
        return any(b.can_submit for name, tx in self._tx.items() if name not in suspended
                   for b in tx)

    def links(self, carrier: str) -> list[Link]:
        """The carrier's binds (connections), transmitting and receiving."""
        return list(self._binds.get(carrier, ()))

    def snapshot(self) -> list[BindStatus]:
        return [b.status() for b in self._all]

    def carriers_for(self, destination: str, forced: str = "") -> list[str]:
        return self._router.carriers_for(destination, forced)

    async def stop(self, drain_timeout_s: float) -> None:
        """Refuse new submits, wait (bounded) for outstanding responses, unbind, close."""
        self._accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout_s
        while True:
            if not any(b.in_flight for b in self._all) or loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        tasks = [t for e in self._engines.values() for t in e.deliveries.tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.1, deadline - loop.time()))
        await asyncio.gather(*(b.shutdown() for b in [*self._all, *self._draining]))
        for m in self._meters.values():
            m.close()
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            try:
                await self._housekeeper
            except asyncio.CancelledError:
                pass
            self._housekeeper = None

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._show_rates()
            for name, e in self._engines.items():
                try:
                    await e.deliveries.flush_expired()
                except Exception:  # never let housekeeping die
                    log.exception("%s: flushing incomplete MO failed", name)

    def _show_rates(self) -> None:
        """The learned account rates on the gauges (and each bind's share of it)."""
        for name in self._binds:
            try:
                rate = self._gate.rate(name)
            except Exception:  # a gate that cannot tell: leave the gauges be
                continue
            self._learned[name].set(rate)
            tx = self._tx[name]
            for b in tx:
                b.show_limit(rate / len(tx))

    # -- submitting ------------------------------------------------------------------------------
    async def submit_batch(self, reqs: list[SubmitRequest]) -> list[SubmitOutcome]:
        """Submit and wait for every outcome (stragglers and resends included)."""
        sub = await self.submit(reqs)
        return [o for o in sub.outcomes if o is not None]

    async def submit(self, reqs: list[SubmitRequest], *, detach: bool = False,
                     urgent: bool = False) -> Submitted:
        """Submit a batch. With ``detach``, outcomes not known a grace after the last
        write (no answer yet, or refused parts to resend) come later from ``later``.
        ``urgent`` (a batch of codes): its parts take window slots and tokens before
        bulk's, and the window's last tenth is theirs (carrier/linkops.py)."""
        loop = asyncio.get_running_loop()
        outcomes: list[SubmitOutcome | None] = [None] * len(reqs)
        planned: list[Planned] = []
        groups: dict[Link, list[tuple[int, bytes]]] = {}
        load: dict[Link, int] = {}
        slot = 0
        now = self._clock()
        for i, req in enumerate(reqs):
            try:
                carrier, bind = self._choose(req, load)
                engine = self._engines[carrier]
                bodies, segments, ref = engine.encode(req, now)
            except Unsendable as e:
                outcomes[i] = SubmitOutcome(
                    msg_id=req.msg_id, carrier="", ok=False, status_name=e.status_name,
                    kind=e.kind, reason=e.reason,
                    backpressure=e.status_name in ("STOPPING", "NO_BOUND_CARRIER",
                                                   "CARRIER_SUSPENDED"),
                )
                continue
            group = groups.get(bind)
            if group is None:
                group = groups[bind] = []
            done = req.done_parts
            if done is None and len(bodies) == 1:  # the common case, written out
                group.append((slot, bodies[0]))
                slots = [slot]
                slot += 1
            else:
                slots = []
                for k, body in enumerate(bodies):
                    if done is not None and k in done:
                        slots.append(-1)
                        continue
                    group.append((slot, body))
                    slots.append(slot)
                    slot += 1
            load[bind] = load.get(bind, 0) + len(bodies)
            planned.append(Planned(i, carrier, bind, slots, bodies, segments, ref,
                                   engine.statuses))
        waiter = Waiter(loop, slot)
        if len(groups) == 1:
            ((bind, items),) = groups.items()
            await self._send_group(bind, items, waiter, urgent)
        elif groups:
            await asyncio.gather(
                *(self._send_group(b, items, waiter, urgent) for b, items in groups.items())
            )
        if not detach:
            await waiter.future
        elif not waiter.future.done():
            await asyncio.wait((waiter.future,), timeout=self._grace(groups))
        results = waiter.results
        later: list[Planned] = []
        for p in planned:
            if not B.resolved(p, results) or B.needs_resend(p, results):
                later.append(p)
            else:
                outcomes[p.index] = B.outcome(reqs[p.index], p, results)
        if not later:
            return Submitted(outcomes)
        if not detach:
            collected: list[tuple[int, SubmitOutcome]] = []
            await self._finish(later, waiter, reqs, collected.extend)
            for index, out in collected:
                outcomes[index] = out
            return Submitted(outcomes)
        self._m_stragglers.inc(len(later))
        queue: asyncio.Queue[list[tuple[int, SubmitOutcome]] | None] = asyncio.Queue()
        task = asyncio.create_task(self._finish_into(later, waiter, reqs, queue),
                                   name="carrier-stragglers")
        self._later.add(task)
        task.add_done_callback(self._later.discard)
        return Submitted(outcomes, queue)

    def _grace(self, groups: dict[Link, list[tuple[int, bytes]]]) -> float:
        latency = max((b.latency for b in groups), default=0.0)
        timeout = min(b.cfg.response_timeout_s for b in groups) if groups else 1.0
        return min(timeout / 2, max(_GRACE_FLOOR_S, _GRACE_LATENCIES * latency))

    async def _finish_into(self, later: list[Planned], waiter: Waiter,
                           reqs: list[SubmitRequest],
                           queue: asyncio.Queue[list[tuple[int, SubmitOutcome]] | None]
                           ) -> None:
        try:
            await self._finish(later, waiter, reqs, queue.put_nowait)
        finally:
            queue.put_nowait(None)  # the end, even when cancelled or failed

    async def _finish(self, later: list[Planned], waiter: Waiter, reqs: list[SubmitRequest],
                      emit: Callable[[list[tuple[int, SubmitOutcome]]], None]) -> None:
        """Each message's outcome as soon as its own parts are answered (a straggler
        holds up nobody else); partly accepted ones get their refused parts resent first."""
        results = waiter.results
        pending = later
        resending: set[asyncio.Task[None]] = set()
        while pending:
            waiter.changed.clear()
            ready: list[Planned] = []
            still: list[Planned] = []
            for p in pending:
                (ready if B.resolved(p, results) else still).append(p)
            pending = still
            done = [p for p in ready if not B.needs_resend(p, results)]
            if done:
                emit([(p.index, B.outcome(reqs[p.index], p, results)) for p in done])
            again = [p for p in ready if B.needs_resend(p, results)]
            if again:
                resending.add(asyncio.create_task(self._resend_rounds(again, results, reqs,
                                                                      emit)))
            if pending:
                await waiter.changed.wait()
        if resending:
            await asyncio.gather(*resending)

    async def _resend_rounds(self, again: list[Planned], results: list[tuple[int, str] | None],
                             reqs: list[SubmitRequest],
                             emit: Callable[[list[tuple[int, SubmitOutcome]]], None]) -> None:
        """Resend the refused parts (same bytes), with back-off, for up to the carrier's
        response timeout; then the messages' outcomes, whatever they are."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(self._carriers[p.carrier].response_timeout_s
                                     for p in again)
        rounds = 0
        try:
            while rounds < _MAX_RESEND_ROUNDS and loop.time() < deadline:
                todo = [p for p in again if B.needs_resend(p, results)]
                if not todo:
                    break
                rounds += 1
                await asyncio.sleep(min(1.0, 0.1 * rounds))
                await self._resend(todo, results)
        finally:
            emit([(p.index, B.outcome(reqs[p.index], p, results)) for p in again])

    async def _resend(self, again: list[Planned], results: list[tuple[int, str] | None]
                      ) -> None:
        """Send the refused parts again on the message's bind, or another bind of its
        carrier when that one is down; their new answers replace the old in ``results``."""
        loop = asyncio.get_running_loop()
        groups: dict[Link, list[tuple[int, bytes]]] = {}
        originals: list[int] = []
        load: dict[Link, int] = {}
        for p in again:
            bind = p.bind
            if not bind.can_submit:
                alt = self._least_loaded(p.carrier, load)
                bind = alt if alt is not None else bind
            parts = B.failed_slots(p, results)
            group = groups.setdefault(bind, [])
            for k in parts:
                group.append((len(originals), p.bodies[k]))
                originals.append(p.slots[k])
            load[bind] = load.get(bind, 0) + len(parts)
            self._m_resends[p.carrier].inc(len(parts))
        waiter = Waiter(loop, len(originals))
        await asyncio.gather(*(self._send_group(b, items, waiter) for b, items in groups.items()))
        await waiter.future
        for local, slot in enumerate(originals):
            results[slot] = waiter.results[local]

    def _least_loaded(self, name: str, load: dict[Link, int]) -> Link | None:
        best: Link | None = None
        best_load = 0
        for b in self._tx.get(name, ()):
            if b.can_submit:
                n = b.in_flight + load.get(b, 0)
                if best is None or n < best_load:
                    best, best_load = b, n
        return best

    def _choose(self, req: SubmitRequest, load: dict[Link, int]) -> tuple[str, Link]:
        if not self._accepting:
            raise Unsendable("retry", "STOPPING", "the carrier pool is stopping")
        chain = self._router.carriers_for(req.destination, req.carrier)
        if not chain:
            raise Unsendable("permanent", "UNKNOWN_CARRIER", f"no carrier named {req.carrier!r}")
        suspended = self._suspended
        for name in chain:
            if name in suspended:
                continue
            best = self._least_loaded(name, load)
            if best is not None:
                return name, best
        if suspended and all(name in suspended for name in chain):
            raise Unsendable("retry", "CARRIER_SUSPENDED",
                             f"carrier suspended: {', '.join(chain)}")
        raise Unsendable("retry", "NO_BOUND_CARRIER",
                       f"no bound transmitting bind on {', '.join(chain)}")

    async def _send_group(self, bind: Link, items: list[tuple[int, bytes]], waiter: Waiter,
                          urgent: bool = False) -> None:
        gate = self._gate
        i = 0
        total = len(items)
        try:
            while i < total:
                n = await bind.reserve(total - i, urgent)
                if n == 0:
                    break
                try:
                    await gate.acquire(bind.carrier, n, urgent)
                except BaseException:
                    bind.release(n)
                    raise
                bind.send(items[i : i + n], waiter)
                i += n
        except Exception:
            log.exception("%s[%d]: sending failed; %d parts not sent", bind.carrier, bind.index,
                          total - i)
        finally:
            for slot, _ in items[i:]:
                waiter.resolve(slot, NOT_SENT, "")

