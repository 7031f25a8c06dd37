"""python -m gatewayd.sim: the SMSC simulator on its own."""

from __future__ import annotations

import sys

from gatewayd.sim.cli import main

sys.exit(main())
