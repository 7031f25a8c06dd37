"""Alert rules and the Grafana dashboard only use metrics (and labels) gatewayd exports.

PyYAML is a dev dependency of these tests (pip install pyyaml); without it the rule
structure test skips, the metric-name checks (plain text) still run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from gatewayd.ops import metrics

CONFIG = Path(__file__).resolve().parent.parent / "config"
RULES = CONFIG / "prometheus-rules.yml"
DASHBOARD = CONFIG / "grafana-dashboard.json"

# Labels Prometheus itself attaches, and the histogram bucket label.
_TARGET_LABELS = {"instance", "job", "le"}
_METRIC_RE = re.compile(r"\b(gatewayd_[a-z0-9_]+)")
_SELECTOR_RE = re.compile(r"\b(gatewayd_[a-z0-9_]+)\{([^}]*)\}")
_BY_RE = re.compile(r"\b(?:by|on|without)\s*\(([^)]*)\)")


_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum"),
             "info": ("_info",), "summary": ("", "_count", "_sum")}


def exported() -> dict[str, set[str]]:
    """Every sample name Prometheus will see (``x_total``, ``x_bucket``...) -> label names."""
    out: dict[str, set[str]] = {}
    for collector in metrics.REGISTRY._collector_to_names:
        labels = set(getattr(collector, "_labelnames", ()))
        # ProcessCollector (process_*) only collects: its families are its samples'.
        describe = getattr(collector, "describe", collector.collect)
        for family in describe():
            for suffix in _SUFFIXES[family.type]:
                out[family.name + suffix] = labels
    # Written into the daemon's /metrics at each scrape, not a collector of the registry.
    out[metrics.WEBHOOK_SENDER_UP[0]] = set()
    out[metrics.FANOUT_UP[0]] = set()
    return out


def check_expr(expr: str, known: dict[str, set[str]], recorded: set[str]) -> list[str]:
    problems: list[str] = []
    used = set(_METRIC_RE.findall(expr))
    for name in used - set(known):
        problems.append(f"unknown metric {name}")
    for name, matchers in _SELECTOR_RE.findall(expr):
        for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
            if name in known and label not in known[name] | _TARGET_LABELS:
                problems.append(f"{name} has no label {label!r}")
    for rule in re.findall(r"\b(gatewayd:[a-z0-9_:]+)", expr):
        if rule not in recorded:
            problems.append(f"recording rule {rule} is not defined")
    available = set().union(*(known.get(n, set()) for n in used)) | _TARGET_LABELS
    for group in _BY_RE.findall(expr):
        for label in (x.strip() for x in group.split(",") if x.strip()):
            if label not in available:
                problems.append(f"grouping by {label!r}, which no metric here has")
    return problems


def deprecated() -> set[str]:
    """Old names exported for one release beside their successors (metrics.DeprecatedAlias):
    nothing of ours may use them any more."""
    return {c.name + "_total" for c in metrics.REGISTRY._collector_to_names
            if isinstance(c, metrics.DeprecatedAlias)}


def test_deprecated_names_are_kept_and_unused() -> None:
    assert deprecated() == {"gatewayd_submit_sm_total", "gatewayd_smpp_command_status_total"}
    known = exported()
    assert known["gatewayd_submit_sm_total"] == {"carrier"}
    assert known["gatewayd_smpp_command_status_total"] == {"carrier", "command", "status"}
    assert known["gatewayd_submits_total"] == {"carrier", "protocol"}
    assert known["gatewayd_command_status_total"] == {"carrier", "protocol", "command",
                                                      "status"}
    used = set(_METRIC_RE.findall(RULES.read_text() + DASHBOARD.read_text()))
    assert not used & deprecated()


def test_deprecated_alias_sums_the_successor_over_protocol() -> None:
    """The alias is computed from the new counter at scrape time: the same totals."""
    c = "aliastest"  # its own carrier: the registry is shared by the whole run
    metrics.SUBMITS.labels(c, "smpp").inc(3)
    metrics.SUBMITS.labels(c, "cmpp").inc(4)  # a carrier moved to CMPP in a reload
    metrics.COMMAND_STATUS.labels(c, "cmpp", "cmpp_submit", "CMPP_FLOW_CONTROL").inc(2)
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'gatewayd_submit_sm_total{carrier="aliastest"} 7.0' in text.splitlines()
    assert ('gatewayd_smpp_command_status_total{carrier="aliastest",command="cmpp_submit",'
            'status="CMPP_FLOW_CONTROL"} 2.0') in text.splitlines()
    assert "# HELP gatewayd_submit_sm_total DEPRECATED" in text


def test_registry_view_is_sane() -> None:
    known = exported()
    assert known["gatewayd_bind_up"] == {"carrier", "bind"}
    assert "gatewayd_submit_latency_seconds_bucket" in known
    assert "gatewayd_messages_enqueued_total" in known
    assert {"process_resident_memory_bytes", "process_open_fds"} <= set(known)


def test_rules_reference_only_exported_metrics() -> None:
    text = RULES.read_text()
    known = exported()
    recorded = set(re.findall(r"record:\s*(\S+)", text))
    # Whole file as text: works without a YAML parser; exprs are checked one by one below.
    assert not set(_METRIC_RE.findall(text)) - set(known)
    yaml = pytest.importorskip("yaml", reason="pip install pyyaml")
    doc = yaml.safe_load(text)
    for group in doc["groups"]:
        for rule in group["rules"]:
            assert not check_expr(rule["expr"], known, recorded), (rule, check_expr(
                rule["expr"], known, recorded))


def test_rules_structure() -> None:
    yaml = pytest.importorskip("yaml", reason="pip install pyyaml")
    doc = yaml.safe_load(RULES.read_text())
    alerts: dict[str, dict[str, Any]] = {}
    for group in doc["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule), rule
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations",
                                 "keep_firing_for"}, rule
            if "for" in rule:
                assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule["for"]
            if "alert" in rule:
                assert rule["alert"] not in alerts, f"duplicate alert {rule['alert']}"
                alerts[rule["alert"]] = rule
                assert rule["labels"]["severity"] in {"critical", "warning"}
                assert rule["annotations"]["summary"]
            else:
                assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9]+", rule["record"])
    # The alerts the operations issue asks for, by what they watch.
    wanted = {
        "GatewaydBindDown": "gatewayd_bind_up",
        "GatewaydQueueBacklogGrowing": "gatewayd_queue_depth",
        "GatewaydDeliveryRateLow": "gatewayd:delivery_ratio:1h < 0.98",
        "GatewaydOptoutRateHigh": "gatewayd_optouts_total",
        "GatewaydDeadLetters": "gatewayd_dead_letters_total",
        "GatewaydPolicyReloadFailed": "gatewayd_policy_reload_failed",
        "GatewaydRedisDown": "gatewayd_redis_up == 0",
        "GatewaydSubmitLatencyHigh": "gatewayd_submit_latency_seconds_bucket",
    }
    for name, needle in wanted.items():
        assert needle in alerts[name]["expr"], name


# CI installs promtool (.ci/run: Debian's prometheus); elsewhere it may be missing.
@pytest.mark.skipif(shutil.which("promtool") is None and not os.environ.get("CI"),
                    reason="promtool not installed (apt-get install prometheus)")
def test_promtool_check_rules() -> None:
    """promtool checks the rules, then runs their unit tests: among them, the first dead
    letter alerting because its series starts at 0 (issue 14)."""
    r = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    # Alert behaviour on synthetic series (bind down, delivery rate, Redis, reload).
    r = subprocess.run(["promtool", "test", "rules", str(CONFIG / "prometheus-rules.test.yml")],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_dashboard_is_valid_and_uses_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    known = exported()
    ids: set[int] = set()
    exprs = 0
    cells: set[tuple[int, int]] = set()
    for p in _panels(dash):
        assert p["id"] not in ids, f"duplicate panel id {p['id']}"
        ids.add(p["id"])
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0
        for x in range(g["x"], g["x"] + g["w"]):  # panels must not overlap
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another"
                cells.add((x, y))
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}"
        assert p["targets"], p["title"]
        for t in p["targets"]:
            exprs += 1
            assert 'instance=~"$instance"' in t["expr"], (p["title"], t["expr"])
            assert not check_expr(t["expr"], known, set()), (p["title"], t["expr"])
    # Every exported family appears somewhere on the dashboard (or is build info).
    shown = set(re.findall(r"\b((?:gatewayd|process)_[a-z0-9_]+)", DASHBOARD.read_text()))
    families = {n for n in known if not n.endswith(("_count", "_sum", "_info"))} - deprecated()
    missing = families - shown
    assert not missing, f"metrics without a panel: {sorted(missing)}"
    assert exprs >= 20
