"""Carrier choice by destination: forced carrier, longest prefix, default, file order."""

from __future__ import annotations

from gatewayd.config import Config


class Router:
    def __init__(self, cfg: Config) -> None:
        self._names = [c.name for c in cfg.carrier]
        self._known = frozenset(self._names)
        self._prefixes = {p: list(chain) for p, chain in cfg.routing.prefixes.items()}
        self._lengths = sorted({len(p) for p in self._prefixes}, reverse=True)
        self._default = list(cfg.routing.default) or list(self._names)

    def carriers_for(self, destination: str, forced: str = "") -> list[str]:
        """Carriers in failover order; a forced carrier is the only choice (unknown: [])."""
        if forced:
            return [forced] if forced in self._known else []
        digits = destination.lstrip("+")
        for n in self._lengths:
            if n <= len(digits):
                chain = self._prefixes.get(digits[:n])
                if chain is not None:
                    return chain
        return self._default
