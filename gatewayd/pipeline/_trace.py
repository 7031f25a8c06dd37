"""TEMPORARY: stage timings of express batches (GATEWAYD_OTP_TRACE=path). Not committed."""
from __future__ import annotations

import contextvars
import json
import os
import time

PATH = os.environ.get("GATEWAYD_OTP_TRACE", "")
CUR: contextvars.ContextVar[list[tuple[str, float]] | None] = contextvars.ContextVar(
    "otp_trace", default=None)


def mark(stage: str) -> None:
    t = CUR.get()
    if t is not None:
        t.append((stage, time.time()))


def dump(t: list[tuple[str, float]], enq_ms: list[int]) -> None:
    with open(PATH, "a") as f:
        f.write(json.dumps({"enq": enq_ms, "t": t}) + "\n")
