"""What a supervised child process (intake workers, the fan-out child) runs before exec."""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def child_setup(nice: int) -> None:  # pragma: no cover - runs in the child before exec
    """Die with the daemon, and run at ``nice`` (the kernel then gives the dispatching
    daemon the CPU first when the cores are contended)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the child's own watch of its parent stops it
    if nice:
        os.nice(nice)
