"""The per-request key lookup from memory: each key's account is read from Redis at most
once per ``ttl_s`` per process, so a change (revoked key, new limits, suspension) reaches
every daemon within that time with no lookup per request.

A key's last-used time is written when it is (re)loaded: at most one write per key per
``ttl_s`` per process, true to within ``ttl_s``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from gatewayd.accounts.model import Account, ApiKey, allowed_categories
from gatewayd.accounts.store import AccountStore, digest_of

MAX_ENTRIES: Final = 10_000  # unknown keys are cached too; bounded against a key spray


class Principal:
    """A request's account, its key and its allowed categories (computed once per load)."""

    __slots__ = ("account", "categories", "key")

    def __init__(self, account: Account, key: ApiKey, classes: list[str]) -> None:
        self.account = account
        self.key = key
        self.categories = allowed_categories(account.limits, classes)

    @property
    def tenant(self) -> str:
        return self.account.tenant


class AccountCache:
    def __init__(self, store: AccountStore, ttl_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: dict[str, tuple[float, Principal | None]] = {}

    async def lookup(self, key: str) -> Principal | None:
        """The principal of a presented key, or None (unknown, revoked or expired)."""
        digest = digest_of(key)
        now = self.clock()
        hit = self._entries.get(digest)
        if hit is None or hit[0] <= now:
            principal = await self._load(digest)
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[digest] = hit = (now + self.ttl_s, principal)
        principal = hit[1]
        if principal is None:
            return None
        wall = time.time()
        if principal.key.expires_at and wall >= principal.key.expires_at:
            return None
        return principal

    async def _load(self, digest: str) -> Principal | None:
        found = await self.store.resolve(digest)
        if found is None:
            return None
        await self.store.touch(found[0].tenant, {found[1].id: time.time()})
        return Principal(found[0], found[1], self.store.classes)
