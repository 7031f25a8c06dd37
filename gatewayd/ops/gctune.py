"""The collector settings of every long-running gatewayd process (the daemon, its intake
workers, the webhook sender).

Startup objects (config, policy tables, metrics, modules) live for ever: ``tune_gc``
freezes them out of every collection. The hot paths allocate short-lived containers by
the thousand a second, so gen0 is collected less often. Collections were ~6 % of the CPU
of a bench/e2e run (py-spy --native), and 8 % of an HTTP intake run that started before
the settings applied (bench/intake http-1: ~400 gen0, ~40 gen1 and 3 gen2 collections of
~30 ms each in 20,000 requests); almost nothing we allocate later forms cycles.
"""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Call once startup is done (listeners up); objects made later are collected as
    usual."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
