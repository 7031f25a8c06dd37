"""`gatewayd demo --campaign` (what `make demo` runs) on free ports: the sample messages,
then an A/B campaign from upload to funnel, exit 0; and again on the same (persisted)
state, as a second `make demo` runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gatewayd.store.embedded import free_port
from tests.e2e_helpers import ROOT


def test_demo_with_a_campaign(tmp_path: Path) -> None:
    sim, ismg, http, links = free_port(), free_port(), free_port(), free_port()
    text = (ROOT / "config" / "demo.toml").read_text(encoding="utf-8")
    text = (text.replace('"../.gatewayd"', f'"{tmp_path / "state"}"')
            .replace('"../policies/', f'"{ROOT / "policies"}/')
            .replace("27750", str(sim)).replace("27760", str(ismg))
            .replace("127.0.0.1:8780", f"127.0.0.1:{http}")
            .replace("8781", str(links)))
    cfg = tmp_path / "demo.toml"
    cfg.write_text(text, encoding="utf-8")
    for _run in range(2):
        proc = subprocess.run([sys.executable, "-m", "gatewayd", "demo", "-c", str(cfg),
                               "--campaign"], cwd=ROOT, capture_output=True, text=True,
                              timeout=110)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        out = proc.stdout
        assert "5/5 delivered" in out
        # China Mobile numbers over CMPP (the ISMG simulator), the others over SMPP.
        rows = [line.split() for line in out.splitlines() if line.startswith("1")]
        assert {(r[1][:6], r[5]) for r in rows[:5]} == {
            ("+86138", "cmcc"), ("+86139", "cmcc"), ("+4477*", "sim"), ("+86186", "sim"),
            ("+86137", "sim")}
        assert "300 recipients uploaded, 0 refused, 300 queued" in out
        # The second run too: the first run's opt-out does not reject its recipient.
        assert "delivery rate     100.0%  (300 / 300)" in out
        assert "converted         15" in out and "opted out 1" in out
        assert "variant B: click rate" in out and f"127.0.0.1:{http}/v1/campaigns/demo-" in out
