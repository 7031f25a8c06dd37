"""The fan-out: a campaign's recipients become ordinary queue entries, a slice at a time.

``FanOut.step`` renders one slice (``campaigns.fanout_batch`` recipients) and queues it
with lua/fanout.lua: entries, "queued" records and events, short links, funnel counts
and the campaign's cursor in one atomic call, which refuses a slice whose cursor moved
(so a slice is queued once, whichever daemon or retry sends it) or a campaign that is no
longer running (pause and cancel take effect at the next slice).

``CampaignRunner`` (one per daemon; with ``campaigns.fanout_process`` its fan-out half
runs in the daemon's child process, gatewayd.campaigns.worker) starts scheduled
campaigns when due and fans out the running ones, each in one daemon at a time (a
Redis lease per campaign, renewed every slice; another daemon takes over from the
cursor when its holder dies). Pace: a slice is
queued only while the campaign's class stream holds fewer than ``campaigns.max_backlog``
entries, so the dispatchers (codes first, on their own stream) set the speed and Redis
never holds more than that of a campaign; and at most ``rate`` recipients a second when
the campaign sets one. It also pauses a campaign whose opt-out rate crosses
``campaigns.pause_optout_rate`` (after ``pause_min_delivered`` deliveries) and keeps the
campaign metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import msgspec
from redis.client import NEVER_DECODE
from redis.exceptions import NoScriptError

from gatewayd.campaigns import funnel, model
from gatewayd.campaigns.links import LinkMaker
from gatewayd.campaigns.model import Campaign
from gatewayd.campaigns.registry import TemplateCache
from gatewayd.campaigns.templates import Compiled, render_checked_before
from gatewayd.config import Config
from gatewayd.errors import MessageError
from gatewayd.ops import metrics
from gatewayd.smstext import segments
from gatewayd.store import fastpipe
from gatewayd.store.connection import Redis, is_cluster, load_script
from gatewayd.store.keys import Keys
from gatewayd.store.seal import Prepared, Seal, load_seal

log = logging.getLogger("gatewayd.campaigns")

_LEASE_MS = 10_000
_VARYING = ("id", "to", "text", "ref")  # an entry's own fields (the rest: the slice's)


@dataclass(slots=True)
class _Slice:
    """One rendered slice: the script's arguments and what it moves."""

    args: list[Any]
    n: int
    invalid: int
    done_entry: str  # the recipients-stream entry this slice finishes ("" = none)
    cursor: str
    offset: int


class FanOut:
    """Queues campaign slices (see the module docstring)."""

    def __init__(self, redis: Redis, keys: Keys, cfg: Config,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.keys = keys
        self.cfg = cfg
        self.clock = clock
        self.script = load_script(redis, "fanout")
        self.seal: Seal | None = None
        self.templates = TemplateCache(redis, keys)
        lk = cfg.links
        self.links = (LinkMaker(redis, keys, base_url=lk.base_url,
                                random_chars=lk.random_chars, block=10_000)
                      if lk.enabled and lk.base_url else None)
        self.status_affix = keys.status("\x00").split("\x00")
        self.link_affix = keys.link("\x00").split("\x00")
        self.batch = cfg.campaigns.fanout_batch
        self._chunk: tuple[tuple[str, str], str, list[Any]] = (("", ""), "", [])
        if is_cluster(redis):
            raise RuntimeError("campaign fan-out needs a single Redis (its slices are one "
                               "atomic script call); not available on Redis Cluster yet")

    async def _compiled(self, c: Campaign) -> list[Compiled]:
        await self.templates.load([v.template for v in c.variants])
        out = []
        for v in c.variants:
            t = self.templates.get(v.template)
            if t is None or t.template.status != "approved":
                why = "deleted" if t is None else t.template.status
                raise LookupError(f"template {v.template} is {why}")
            out.append(t)
        return out

    async def _slice(self, c: Campaign, size: int
                     ) -> tuple[list[list[Any]], str, int, int, bool, str]:
        """(rows, new cursor, new offset, invalid rows, end reached, entry done)."""
        if c.source == "upload":
            # A chunk (1,000 rows) serves several slices: read and decoded once. The
            # entries are immutable, so the one after a cursor stays the one after it.
            after, entry_id, rows = self._chunk
            if after != (c.id, c.cursor):
                key = self.keys.campaign_recipients(c.id)
                got = cast(list[Any], await self.redis.xrange(key, min=f"({c.cursor}",
                                                              count=1))
                if not got:
                    return [], c.cursor, 0, 0, True, ""
                entry_id, fields = got[0]
                rows = msgspec.json.decode(fields["rows"])
                self._chunk = ((c.id, c.cursor), entry_id, rows)
            part = rows[c.offset:c.offset + size]
            if c.offset + size >= len(rows):
                return part, entry_id, 0, 0, False, entry_id
            return part, c.cursor, c.offset + size, 0, False, ""
        # An app's stream: one recipient an entry, until an entry with "end".
        key = c.source.split(":", 1)[1]
        # Raw bytes, decoded entry by entry: one entry that is not UTF-8 is an invalid
        # row, not a read that fails for ever (issue 14).
        got = cast(list[Any], await self.redis.execute_command(  # type: ignore[no-untyped-call]
            "XRANGE", key, f"({c.cursor}", "+", "COUNT", size, **{NEVER_DECODE: True}))
        rows, invalid, cursor, end = [], 0, c.cursor, False
        weights = [v.weight for v in c.variants]
        for raw_id, raw_fields in got or ():
            entry_id = raw_id.decode()
            try:
                fields = {k.decode(): v.decode() for k, v in (raw_fields or {}).items()}
            except UnicodeDecodeError:
                cursor = entry_id
                invalid += 1
                continue
            if "end" in fields:
                end = True  # the cursor stays before it: the next slice sees it first
                break
            cursor = entry_id
            try:
                to = fields.get("to", "")
                params = msgspec.json.decode(fields.get("params", "{}"))
                if not isinstance(to, str) or not model.NUMBER_RE.fullmatch(to):
                    raise MessageError("to", "not an E.164 number")
                vi = model.variant_of(c.id, to.lstrip("+"), weights)
            except Exception:  # any problem with one row (e.g. params nested too deeply:
                invalid += 1  # RecursionError) is that row's, never the slice's
                continue
            rows.append([entry_id, to if to.startswith("+") else "+" + to, vi, params,
                         fields.get("ref", "")])
        return rows, cursor, 0, invalid, end and not rows and not invalid, ""

    async def _call(self, keys: list[str], args: list[Any]) -> Any:
        """The script by EVALSHA through fastpipe (hiredis packs the slice's thousands of
        arguments; redis-py's own packer was a third of the fan-out's CPU); loaded on
        NOSCRIPT (a fresh or restarted Redis: the failed call changed nothing)."""
        for attempt in (1, 2):
            pipe = self.redis.pipeline(transaction=False)
            pipe.execute_command("EVALSHA", self.script.sha, len(keys), *keys, *args)
            try:
                [reply] = await fastpipe.execute(pipe)
                return reply
            except NoScriptError:
                if attempt == 2:
                    raise
                await self.redis.script_load(self.script.script)
        raise AssertionError("unreachable")

    async def _prepare(self, c: Campaign, compiled: list[Compiled]) -> _Slice | str:
        """The next slice after ``c``'s cursor, rendered; or "done" / "empty"."""
        rows, cursor, offset, invalid, end, done_entry = await self._slice(c, self.batch)
        if end:
            return "done"
        if not rows and cursor == c.cursor and not invalid:
            return "empty"
        now = self.clock()
        if self.seal is None:
            self.seal = await load_seal(self.redis, self.keys)
        seal = self.seal
        max_segments = self.cfg.queue.max_segments
        trusted = c.source == "upload"
        private = self.keys.privacy is not None
        recips: list[Any] = []
        n = 0
        links: list[str] = []
        lk: Callable[[str], str] | None = None
        if self.links is not None:
            await self.links.reserve(len(rows) * max(t.url_vars for t in compiled))
            take, base = self.links.take, self.links.base_url

            def link(url: str) -> str:
                code = take()
                links.extend((code, url))
                return base + code  # LinkMaker.url

            lk = link
        # The entry's client fields exactly as lua/fanout.lua writes them, and its
        # internal fields sealed over them (gatewayd.store.seal): the fields a slice
        # shares and each (variant, link count)'s internal JSON sealed once a slice.
        fixed = {"category": c.category}
        if c.tenant:
            fixed["tenant"] = c.tenant
        if c.sender:
            fixed["from"] = c.sender
        # A kind = (variant, link count): its sealer, and its index into the kinds the
        # slice sends once (variant, k, internal JSON); a recipient sends its kind and
        # its entry's MAC, fanout.lua puts the entry's _gw together (MAC + JSON).
        kinds: dict[tuple[int, int], tuple[int, Prepared]] = {}
        for seq, number, vi, params, ref in rows:
            t = compiled[vi]
            links.clear()
            if trusted:  # validated row by row at upload
                text = render_checked_before(t, params, lk)
            else:
                try:
                    text, _ = t.render(params, lk)
                    if segments(text).parts > max_segments:
                        raise MessageError("params", "too many SMS parts")
                except Exception:  # one row's problem, never the slice's
                    invalid += 1
                    continue
            msg_id, k = f"{c.id}.{seq}", len(links) // 2
            kind = kinds.get((vi, k))
            if kind is None:
                variant = c.variants[vi]
                internal: dict[str, Any] = {"campaign": c.id, "variant": variant.name,
                                            "enqueued_at": now}
                if k:
                    internal["links"] = k
                kind = kinds[vi, k] = (len(kinds) + 1, seal.prepared(
                    internal, {**fixed, "template": variant.template}, _VARYING))
            recips += (msg_id, number, text, kind[0], ref or "",
                       kind[1].mac((msg_id, number, text, ref or None)))
            if links:
                if private:  # the links hold the number's token, not the number
                    recips.append(self.keys.recipient(number.lstrip("+")))
                recips += links
            n += 1
        args: list[Any] = [c.cursor, str(c.offset), cursor, str(offset), repr(now),
                           int(self.cfg.queue.status_ttl_s), self.cfg.queue.events_maxlen,
                           int(self.cfg.links.ttl_s), *self.status_affix, *self.link_affix,
                           c.category, c.tenant, c.id, c.sender, str(invalid), n,
                           len(c.variants), "1" if self.cfg.campaigns.queued_records else "0",
                           "1" if private else "0", len(kinds)]
        for v in c.variants:
            args += (v.name, v.template)
        for (vi, k), (_, sealer) in kinds.items():  # in index order (dicts keep it)
            args += (vi + 1, k, sealer.payload)
        args += recips
        return _Slice(args, n, invalid, done_entry, cursor, offset)

    async def _send(self, c: Campaign, slices: list[_Slice]) -> list[Any]:
        """Slices in ONE pipeline (Redis runs them in order: each expects the cursor the
        one before it leaves), by EVALSHA; loaded on NOSCRIPT (a fresh or restarted
        Redis: the refused calls changed nothing)."""
        keys = [self.keys.campaign(c.id), self.keys.queue(c.category), self.keys.events,
                self.keys.funnel(c.id)]
        for attempt in (1, 2):
            pipe = self.redis.pipeline(transaction=False)
            for sl in slices:
                pipe.execute_command("EVALSHA", self.script.sha, len(keys), *keys, *sl.args)
            try:
                return await fastpipe.execute(pipe)
            except NoScriptError:
                if attempt == 2:
                    raise
                await self.redis.script_load(self.script.script)
        raise AssertionError("unreachable")

    async def run(self, c: Campaign, max_recipients: int, group: int = 4
                  ) -> tuple[str, int]:
        """Queue up to ``max_recipients`` (rounded up to a slice) of a running campaign:
        ("queued", n), ("done", n) (every recipient queued), ("empty", n) (a stream
        source with nothing new yet), ("stopped", n) (not running any more, or another
        daemon moved its cursor). Groups of ``group`` slices go in one round trip, and
        the next group is rendered while Redis runs the last (one in flight)."""
        compiled = await self._compiled(c)
        total = 0
        state = c
        flight: tuple[asyncio.Task[list[Any]], list[_Slice]] | None = None
        outcome = "queued"
        while True:
            slices: list[_Slice] = []
            while len(slices) < group and total + sum(x.n for x in slices) < max_recipients:
                prep = await self._prepare(state, compiled)
                if isinstance(prep, str):
                    outcome = prep
                    break
                slices.append(prep)
                state = msgspec.structs.replace(state, cursor=prep.cursor, offset=prep.offset)
                # One slice's rendering (~1-2 ms) a loop turn, not a group's: a code's
                # dispatch waits out at most that (slices from a decoded chunk do not
                # suspend on their own).
                await asyncio.sleep(0)
            if flight is not None:
                ok, n = await self._settle(c, *flight)
                total += n
                flight = None
                if not ok:
                    return "stopped", total
            if not slices:
                return outcome, total
            flight = (asyncio.create_task(self._send(c, slices)), slices)
            if outcome != "queued" or total + sum(x.n for x in slices) >= max_recipients:
                ok, n = await self._settle(c, *flight)
                return (outcome if ok else "stopped"), total + n

    async def _settle(self, c: Campaign, task: asyncio.Task[list[Any]],
                      slices: list[_Slice]) -> tuple[bool, int]:
        """A sent group's replies: (every slice queued, recipients queued)."""
        replies = await task
        n, done_entries, ok = 0, [], True
        for sl, reply in zip(slices, replies, strict=True):
            if int(reply[0]) != 1:
                ok = False
                break
            taken = int(reply[2])  # ids a client had taken: skipped, not written over
            queued = sl.n - taken
            n += queued
            metrics.FANOUT.labels("queued").inc(queued)
            if c.category:
                metrics.MESSAGES_ENQUEUED.labels(c.category, "campaign").inc(queued)
            if sl.invalid or taken:
                metrics.FANOUT.labels("invalid").inc(sl.invalid + taken)
            if taken:
                log.warning("campaign %s: %d recipients skipped: their message ids were "
                            "already taken by other messages", c.id, taken)
            if sl.done_entry:
                done_entries.append(sl.done_entry)
        if done_entries:  # those chunks are queued: their rows are not needed any more
            await self.redis.xdel(self.keys.campaign_recipients(c.id), *done_entries)
        return ok, n

    async def step(self, c: Campaign) -> tuple[str, int]:
        """One slice: ("queued", n), ("done", 0), ("empty", 0), ("stopped", 0) (not
        running, or the cursor moved: another call queued it first)."""
        result, n = await self.run(c, 1, group=1)
        return result, n


class CampaignRunner:
    """One per daemon: starts, fans out, brakes and measures campaigns."""

    def __init__(self, redis: Redis, keys: Keys, cfg: Config,
                 clock: Callable[[], float] = time.time, *, fan: bool = True,
                 manage: bool = True, token: str = "") -> None:
        """``fan``: fan campaigns out here (else another process does: the fan-out
        child, gatewayd.campaigns.worker); ``manage``: start scheduled campaigns, brake
        and keep the metrics (the daemon's part). ``token``: this fan-out's lease
        holder name; a stable one (the fan-out child's) lets a restarted holder take
        its campaigns back at once instead of after the dead one's lease ran out."""
        self.redis = redis
        self.keys = keys
        self.cfg = cfg
        self.clock = clock
        self.fan = fan
        self.manage = manage
        self.fanout = FanOut(redis, keys, cfg, clock)
        self.token = token or uuid.uuid4().hex
        self._lease = load_script(redis, "lease")
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.stop = asyncio.Event()

    async def run(self, stop: asyncio.Event, interval_s: float = 0.5) -> None:
        self.stop = stop
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # Redis away: the next tick tries again
                    log.warning("campaigns: %s: %s", type(e).__name__, e)
                try:
                    await asyncio.wait_for(stop.wait(), interval_s)
                except TimeoutError:
                    pass
        finally:
            for t in self.tasks.values():
                t.cancel()
            for t in list(self.tasks.values()):
                try:
                    await t
                except (asyncio.CancelledError, Exception):
                    pass

    async def tick(self) -> None:
        now = self.clock()
        ids = sorted(cast(set[str], await self.redis.smembers(self.keys.campaigns_active)))
        for cid in ids:
            c = await model.get(self.redis, self.keys, cid)
            if c is None:
                await self.redis.srem(self.keys.campaigns_active, cid)
                continue
            if self.manage and c.status == "scheduled" and c.start_at <= now:
                try:
                    c = await model.change(self.redis, self.keys, cid, "run", now=now)
                    log.info("campaign started", extra={"campaign": cid})
                except ValueError:
                    continue
            if self.manage and c.status == "running":
                await self._brake(c)
            if self.fan and c.status == "running" and cid not in self.tasks:
                if await self._hold(cid):
                    self.tasks[cid] = asyncio.create_task(self._fan(cid), name=f"fanout-{cid}")
        for cid, t in list(self.tasks.items()):
            if t.done():
                del self.tasks[cid]
                if not t.cancelled() and t.exception() is not None:
                    log.error("campaign fan-out failed: %s", t.exception(),
                              extra={"campaign": cid})
        if self.manage:
            await self._metrics()

    async def _hold(self, cid: str) -> bool:
        return bool(await self._lease(keys=[self.keys.lease(f"camp:{cid}")],
                                      args=[self.token, _LEASE_MS]))

    async def _backlog(self, category: str) -> int:
        return int(await self.redis.xlen(self.keys.queue(category)))

    async def _fan(self, cid: str) -> None:
        started, queued = time.monotonic(), 0
        cap = self.cfg.campaigns.max_backlog
        while not self.stop.is_set():
            if not await self._hold(cid):
                return  # another daemon took it over (we stalled past the lease)
            c = await model.get(self.redis, self.keys, cid)
            if c is None or c.status != "running":
                return
            room = cap - await self._backlog(c.category)
            if room < self.fanout.batch:
                await asyncio.sleep(0.05)
                continue
            # At most ~0.25 s of work between the lease, status and backlog checks.
            budget = min(room, 16 * self.fanout.batch)
            if c.rate > 0:
                ahead = queued / c.rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(min(ahead, 1.0))
                    continue
                budget = max(1, min(budget, int(c.rate / 4)))
            try:
                result, n = await self.fanout.run(c, budget)
            except LookupError as e:
                await model.change(self.redis, self.keys, cid, "pause", reason=str(e))
                log.warning("campaign paused: %s", e, extra={"campaign": cid})
                return
            queued += n
            if result == "done":
                await model.change(self.redis, self.keys, cid, "finish")
                log.info("campaign fully queued", extra={"campaign": cid})
                return
            if result == "stopped":
                return
            if result == "empty":
                await asyncio.sleep(0.2)
            await asyncio.sleep(0)  # the dispatchers run between groups

    async def _brake(self, c: Campaign) -> None:
        """Pause a campaign whose opt-out rate crossed the configured threshold."""
        cc = self.cfg.campaigns
        if not cc.pause_optout_rate:
            return
        counts = await funnel.read(self.redis, self.keys, c.id)
        delivered, out = counts.get("delivered", 0), counts.get("opted_out", 0)
        if delivered >= cc.pause_min_delivered and out / max(delivered, 1) > cc.pause_optout_rate:
            why = (f"optout_rate {out}/{delivered} = {out / delivered:.2%} > "
                   f"{cc.pause_optout_rate:.2%}")
            try:
                await model.change(self.redis, self.keys, c.id, "pause", reason=why)
            except ValueError:
                return
            c.status = "paused"
            log.warning("campaign paused: %s", why, extra={"campaign": c.id})

    async def _metrics(self) -> None:
        """The most recent campaigns' funnels as gauges (bounded: campaigns.metrics_max;
        every daemon exports the same values, read from Redis: aggregate with max)."""
        limit = self.cfg.campaigns.metrics_max
        if limit <= 0:
            return
        recent = await model.list_all(self.redis, self.keys, count=limit)
        by_status: dict[str, int] = {}
        seen: set[tuple[str, str]] = set()
        by_sig: dict[tuple[str, str], int] = {}
        templates = self.fanout.templates
        await templates.load({v.template for c in recent for v in c.variants})
        for c in recent:
            by_status[c.status] = by_status.get(c.status, 0) + 1
            counts = await funnel.read(self.redis, self.keys, c.id)
            for stage in funnel.STAGES:
                metrics.CAMPAIGN_MESSAGES.labels(c.id, stage).set(counts.get(stage, 0))
                seen.add((c.id, stage))
            for v in c.variants:
                t = templates.get(v.template)
                if t is None:
                    continue
                for stage in funnel.STAGES:
                    k = (t.template.signature, stage)
                    by_sig[k] = by_sig.get(k, 0) + counts.get(f"{stage}|{v.name}", 0)
        for status in (*model.ACTIVE, "draft", "done", "cancelled"):
            metrics.CAMPAIGNS.labels(status).set(by_status.get(status, 0))
        for (sig, stage), n in by_sig.items():
            metrics.SIGNATURE_MESSAGES.labels(sig, stage).set(n)
        # Campaigns that fell out of the window: their series go away (bounded labels).
        for labels in list(metrics.CAMPAIGN_MESSAGES._metrics):
            if labels not in seen:
                metrics.CAMPAIGN_MESSAGES.remove(*labels)
