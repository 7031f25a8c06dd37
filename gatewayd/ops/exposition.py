"""Another process's series in this process's /metrics: the daemon's exposition with its
webhook sender's ``gatewayd_webhook_*`` families (gatewayd.webhooks.process).

Both sides are prometheus_client's text format, where every family (and every
``_created`` companion) is a block that starts with its ``# HELP`` line. The merge works
on those blocks: the other process's blocks that ``take`` selects replace this
process's blocks of the same name, so no name gets two HELP/TYPE lines (Prometheus
rejects the whole scrape for that) and no family mixes two processes' samples.
"""

from __future__ import annotations

from collections.abc import Callable

_HELP = b"# HELP "


def blocks(text: bytes) -> list[tuple[bytes, bytes]]:
    """``(name, block)`` for each family of an exposition, in order; text before the
    first HELP line (none from prometheus_client) is kept under the name b""."""
    out: list[tuple[bytes, bytes]] = []
    start = 0
    while start < len(text):
        nxt = text.find(b"\n" + _HELP, start)
        end = len(text) if nxt < 0 else nxt + 1
        chunk = text[start:end]
        name = chunk[len(_HELP):].split(b" ", 1)[0].rstrip(b"\n") \
            if chunk.startswith(_HELP) else b""
        out.append((name, chunk))
        start = end
    return out


def merge(own: bytes, other: bytes, take: Callable[[bytes], bool]) -> bytes:
    """``own`` without the families ``other`` provides, then those of ``other`` that
    ``take(name)`` selects."""
    taken = [(n, b) for n, b in blocks(other) if n and take(n)]
    names = {n for n, _ in taken}
    kept = b"".join(b for n, b in blocks(own) if n not in names)
    if kept and not kept.endswith(b"\n"):
        kept += b"\n"
    return kept + b"".join(b if b.endswith(b"\n") else b + b"\n" for _, b in taken)
