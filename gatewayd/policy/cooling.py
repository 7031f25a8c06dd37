"""Check 8, ``cooling`` (Redis, read only): rest the numbers that ignore campaigns.

A number whose last ``after`` (K) marketing messages with links got no click gets no
more of them for ``days`` (D) days after the last one: deferred until then (or
rejected, ``action = "reject"``), reason ``cooling:<K> unclicked``. Off by default
(``[cooling] enabled = true`` in the policy file). Only messages of the ``categories``
that carry a short link (``links`` > 0, set when a template's ``{link:url}`` was
rendered) count and are held back; codes and notices never are.

The data is the recipient's marketing record (``Keys.marketing``: ``n`` link messages
sent since the last click, ``last`` when), written when such a message is submitted
while the check is on (gatewayd.campaigns.funnel.Sends; with it off nothing reads the
streak, so nothing writes it) and reset to 0 by a click (the redirector). So after
D days one more message goes out; if that one is ignored too, the number rests again.

The read is one pipelined HMGET per candidate, before the counting checks: a held-back
message consumes no duplicate marker, cap slot or tenant token, and is still checked
against opt-outs (an opted-out number is rejected, not deferred), as quiet hours are.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from gatewayd.model import OutboundMessage
from gatewayd.policy.normalize import number_key
from gatewayd.policy.settings import CoolingSettings
from gatewayd.policy.verdict import Verdict, defer, reject
from gatewayd.store.keys import Keys


class Cooling:
    def __init__(self, settings: CoolingSettings) -> None:
        self.s = settings
        self.categories = frozenset(settings.categories)
        self.window_s = settings.days * 86400

    def applies(self, msg: OutboundMessage) -> bool:
        return self.s.enabled and msg.links > 0 and msg.category in self.categories

    async def check(self, redis: aioredis.Redis, keys: Keys, msgs: list[OutboundMessage],
                    now: float) -> list[Verdict | None]:
        """A verdict (defer or reject) for each message that must rest, None for the
        others; one round trip."""
        if not msgs:
            return []
        r: Any = redis
        async with r.pipeline(transaction=False) as pipe:
            for m in msgs:
                pipe.hmget(keys.marketing(number_key(m.to)), "n", "last")
            replies = await pipe.execute()
        out: list[Verdict | None] = []
        k = self.s.after
        for n, last in replies:
            try:
                ignored, at = int(n or 0), float(last or 0)
            except ValueError:
                out.append(None)
                continue
            until = at + self.window_s
            if ignored >= k and now < until:
                reason = f"cooling:{ignored} unclicked"
                out.append(defer("cooling", reason, until) if self.s.action == "defer"
                           else reject("cooling", reason))
            else:
                out.append(None)
        return out
