"""One CMPP carrier as the rest of gatewayd sees a carrier: SubmitRequest -> SubmitOutcome.

``CmppClient`` owns the carrier's binds (``carrier.binds`` connections), its encoder
and its DELIVER handling, and speaks only carrier/api.py types: ``submit_batch`` takes
SubmitRequests and returns one SubmitOutcome each, in order; reports and MO reach the
DeliveryHandler as model.Receipt / model.InboundMessage; ``snapshot`` gives BindStatus.
It is the CMPP half of what carrier/pool.py does for SMPP carriers (phase B of issue 22
folds it into the protocol-neutral pool, which then routes across both protocols).

Outcomes follow the pool's rules: ok with one canonical Msg_Id per part (pdu order); or
a failure whose kind is the worst part's (permanent > retry > flow control, reported as
retry), carrying the Msg_Ids of accepted parts so their reports still correlate. A long
message with some parts accepted and some flow-controlled gets only the flow-controlled
parts sent again (same bodies, same UDH reference) for up to response_timeout_s, so the
handset does not get accepted parts twice. A part whose SUBMIT was written when the
connection dropped ends BIND_LOST (retry): the ISMG may have taken it, at-least-once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gatewayd.carrier.api import BindStatus, DeliveryHandler, SubmitOutcome, SubmitRequest
from gatewayd.carrier.cmpp import status as S
from gatewayd.carrier.cmpp.bind import CmppBind
from gatewayd.carrier.cmpp.delivery import Deliveries
from gatewayd.carrier.cmpp.settings import CmppSettings
from gatewayd.carrier.cmpp.submit import SubmitEncoder, Unsendable
from gatewayd.carrier.smpp.mo import Reassembler
from gatewayd.carrier.smpp.session import Waiter
from gatewayd.config import CarrierConfig

log = logging.getLogger("gatewayd.carrier")

MO_REASSEMBLY_TIMEOUT_S = 60.0


@dataclass(slots=True)
class _Planned:
    index: int
    first_slot: int
    parts: int
    bind: CmppBind


class CmppClient:
    def __init__(
        self, cfg: CarrierConfig, settings: CmppSettings, secret: str,
        handler: DeliveryHandler, *, clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.settings = settings
        self.encoder = SubmitEncoder(cfg, settings, clock)
        self.deliveries = Deliveries(cfg.name, handler, clock,
                                     Reassembler(MO_REASSEMBLY_TIMEOUT_S), settings.utc_offset_h)
        self.binds = [CmppBind(cfg, settings, i, secret, self.deliveries, clock=clock)
                      for i in range(cfg.binds)]
        self._accepting = False
        self._housekeeper: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        for b in self.binds:
            b.start()
        self._accepting = True
        if self._housekeeper is None:
            self._housekeeper = asyncio.create_task(self._housekeeping(),
                                                    name=f"cmpp-{self.name}")

    async def wait_bound(self, timeout_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not any(b.bound for b in self.binds):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def ready(self) -> bool:
        return self._accepting and any(b.can_submit for b in self.binds)

    def snapshot(self) -> list[BindStatus]:
        return [b.status() for b in self.binds]

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Refuse new submits, wait (bounded) for answers and handlers, TERMINATE, close."""
        self._accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout_s
        while True:
            if not any(b.in_flight for b in self.binds) or loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        tasks = list(self.deliveries.tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.1, deadline - loop.time()))
        await asyncio.gather(*(b.shutdown() for b in self.binds))
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
            try:
                await self.deliveries.flush_expired()
            except Exception:
                log.exception("%s: flushing incomplete MO failed", self.name)

    # -- submitting ------------------------------------------------------------------------------
    def _choose(self, load: dict[CmppBind, int]) -> CmppBind | None:
        best: CmppBind | None = None
        best_load = 0
        for b in self.binds:
            if b.can_submit:
                n = b.in_flight + load.get(b, 0)
                if best is None or n < best_load:
                    best, best_load = b, n
        return best

    async def submit_batch(self, reqs: list[SubmitRequest]) -> list[SubmitOutcome]:
        loop = asyncio.get_running_loop()
        outcomes: list[SubmitOutcome | None] = [None] * len(reqs)
        planned: list[_Planned] = []
        groups: dict[CmppBind, list[tuple[int, bytes]]] = {}
        load: dict[CmppBind, int] = {}
        slot = 0
        for i, req in enumerate(reqs):
            bind = self._choose(load) if self._accepting else None
            if bind is None:
                why = "stopping" if not self._accepting else "no connected CMPP bind"
                outcomes[i] = self._failed(req, "retry", "NO_BOUND_CARRIER", why)
                continue
            try:
                bodies, _ = self.encoder.encode(req)
            except Unsendable as e:
                outcomes[i] = self._failed(req, "permanent", "CMPP_UNSENDABLE", str(e))
                continue
            group = groups.setdefault(bind, [])
            for body in bodies:
                group.append((slot, body))
                slot += 1
            load[bind] = load.get(bind, 0) + len(bodies)
            planned.append(_Planned(i, slot - len(bodies), len(bodies), bind))
        waiter = Waiter(loop, slot)
        if groups:
            await asyncio.gather(*(self._send_group(b, items, waiter)
                                   for b, items in groups.items()))
        await waiter.future
        results = waiter.results
        if any(p.parts > 1 for p in planned):
            await self._resend_flow_controlled(planned, groups, results)
        for p in planned:
            outcomes[p.index] = self._outcome(reqs[p.index], p, results)
        return [o for o in outcomes if o is not None]

    def _failed(self, req: SubmitRequest, kind: str, name: str, reason: str) -> SubmitOutcome:
        return SubmitOutcome(msg_id=req.msg_id, carrier="", ok=False, status_name=name,
                             kind="permanent" if kind == "permanent" else "retry",
                             reason=reason)

    async def _send_group(self, bind: CmppBind, items: list[tuple[int, bytes]],
                          waiter: Waiter) -> None:
        i = 0
        total = len(items)
        try:
            while i < total:
                n = await bind.reserve(total - i)
                if n == 0:
                    break
                bind.send(items[i : i + n], waiter)
                i += n
        except Exception:
            log.exception("%s[%d]: sending failed; %d parts not sent", bind.carrier, bind.index,
                          total - i)
        finally:
            for s, _ in items[i:]:
                waiter.resolve(s, S.NOT_SENT, "")

    async def _resend_flow_controlled(
        self, planned: list[_Planned], groups: dict[CmppBind, list[tuple[int, bytes]]],
        results: list[tuple[int, str] | None],
    ) -> None:
        bodies = {s: body for items in groups.values() for s, body in items}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.response_timeout_s
        attempt = 0
        while loop.time() < deadline:
            attempt += 1
            again: dict[CmppBind, list[tuple[int, bytes]]] = {}
            originals: list[int] = []
            for p in planned:
                rs = results[p.first_slot : p.first_slot + p.parts]
                if p.parts < 2 or not any(r is not None and r[0] == 0 for r in rs):
                    continue
                for k, r in enumerate(rs):
                    if r is not None and S.result_kind(r[0]) == "throttle":
                        bind = p.bind if p.bind.can_submit else self._choose({})
                        if bind is None:
                            continue
                        again.setdefault(bind, []).append(
                            (len(originals), bodies[p.first_slot + k]))
                        originals.append(p.first_slot + k)
            if not again:
                return
            await asyncio.sleep(min(1.0, 0.1 * attempt))  # the bind has slowed down too
            waiter = Waiter(loop, len(originals))
            await asyncio.gather(*(self._send_group(b, items, waiter)
                                   for b, items in again.items()))
            await waiter.future
            for local, s in enumerate(originals):
                results[s] = waiter.results[local]

    def _outcome(self, req: SubmitRequest, p: _Planned,
                 results: list[tuple[int, str] | None]) -> SubmitOutcome:
        ids: list[str] = []
        worst: int | None = None
        for r in results[p.first_slot : p.first_slot + p.parts]:
            result, mid = r if r is not None else (S.NOT_SENT, "")
            if result == 0:
                ids.append(mid)
            elif worst is None or S.severity(result) > S.severity(worst):
                worst = result
        if worst is None:
            return SubmitOutcome(msg_id=req.msg_id, carrier=self.name, ok=True, smsc_ids=ids,
                                 segments=p.parts)
        name = S.result_name(worst)
        failed = p.parts - len(ids)
        return SubmitOutcome(
            msg_id=req.msg_id, carrier=self.name, ok=False, smsc_ids=ids, segments=p.parts,
            status=max(worst, 0), status_name=name,
            kind="permanent" if S.result_kind(worst) == "permanent" else "retry",
            reason=f"{name} ({failed} of {p.parts} parts failed)" if p.parts > 1 else name,
        )
