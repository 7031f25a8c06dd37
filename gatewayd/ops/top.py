"""`gatewayd top`: a live terminal view of a running daemon, read from its /metrics.

Plain ANSI (clear + home), no curses: it works over ssh, in tmux and in a CI log.
Rates are counter deltas between two scrapes divided by the time between them; a
counter that went down (daemon restarted) counts from zero. ``--once`` takes two scrapes
``--interval`` apart and prints one frame, so rates are real there too.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]

_OK_STATUS: Final = frozenset({"ESME_ROK", "CMPP_OK", "ROK", "OK", "ok", "0", "0x00000000"})
_CLEAR: Final = "\x1b[H\x1b[2J"
_RED, _GREEN, _BOLD, _RESET = "\x1b[31m", "\x1b[32m", "\x1b[1m", "\x1b[0m"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--url", default="", help="metrics URL (default http://127.0.0.1:8780/metrics)")
    src.add_argument("-c", "--config", metavar="FILE", help="take the URL from http.listen")
    parser.add_argument("--interval", type=float, default=1.0, metavar="S",
                        help="seconds between refreshes (default 1)")
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument("--no-color", action="store_true", help="no ANSI colours")


def url_from_listen(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


def scrape(url: str, timeout_s: float = 2.0) -> Samples:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        text = resp.read().decode("utf-8")
    return parse(text)


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def _select(samples: Samples, name: str) -> Iterable[tuple[dict[str, str], float]]:
    for (n, labels), value in samples.items():
        if n == name:
            yield dict(labels), value


def present(samples: Samples, name: str, old: str) -> str:
    """``name``, or the name an older daemon exports it under when only that is there
    (gatewayd_submits_total was gatewayd_submit_sm_total before it had a protocol)."""
    if any(n == name for n, _ in samples) or not any(n == old for n, _ in samples):
        return name
    return old


SUBMITS, OLD_SUBMITS = "gatewayd_submits_total", "gatewayd_submit_sm_total"
STATUS, OLD_STATUS = "gatewayd_command_status_total", "gatewayd_smpp_command_status_total"


def total(samples: Samples, name: str, **match: str) -> float:
    return sum(v for labels, v in _select(samples, name)
               if all(labels.get(k) == want for k, want in match.items()))


def by(samples: Samples, name: str, *label_names: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for labels, v in _select(samples, name):
        key = tuple(labels.get(n, "") for n in label_names)
        out[key] = out.get(key, 0.0) + v
    return out


@dataclass
class View:
    """Keeps the previous scrape and a short log of recent error increments."""

    url: str
    color: bool = False
    prev: Samples | None = None
    prev_t: float = 0.0
    cur: Samples = field(default_factory=dict)
    cur_t: float = 0.0
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=8))

    def update(self, samples: Samples, now: float) -> None:
        if self.cur:
            self.prev, self.prev_t = self.cur, self.cur_t
        self.cur, self.cur_t = samples, now
        if self.prev is not None:
            self._note_errors(time.strftime("%H:%M:%S", time.localtime(now)))

    def delta(self, name: str, **match: str) -> float | None:
        if self.prev is None:
            return None
        d = total(self.cur, name, **match) - total(self.prev, name, **match)
        return d if d >= 0 else total(self.cur, name, **match)  # restarted: from zero

    def rate(self, name: str, **match: str) -> float | None:
        d = self.delta(name, **match)
        dt = self.cur_t - self.prev_t
        return None if d is None or dt <= 0 else d / dt

    def _note_errors(self, stamp: str) -> None:
        assert self.prev is not None
        status = present(self.cur, STATUS, OLD_STATUS)
        checks: list[tuple[str, str, tuple[str, ...]]] = [
            # The protocol's name (smpp, cmpp) leads the line; "smpp" from an older daemon.
            (status, "" if status == STATUS else "smpp",
             ("protocol", "carrier", "command", "status") if status == STATUS
             else ("carrier", "command", "status")),
            ("gatewayd_pdu_errors_total", "pdu error", ("carrier", "kind")),
            ("gatewayd_redis_errors_total", "redis error", ("op",)),
            ("gatewayd_dead_letters_total", "dead letter", ("reason",)),
            ("gatewayd_bind_reconnects_total", "reconnect", ("carrier", "bind")),
            ("gatewayd_policy_reloads_total", "policy reload", ("result",)),
            ("gatewayd_http_requests_total", "http", ("route", "status")),
        ]
        for name, what, labels in checks:
            now_v, old_v = by(self.cur, name, *labels), by(self.prev, name, *labels)
            for key, v in sorted(now_v.items()):
                d = v - old_v.get(key, 0.0)
                if d <= 0 or _benign(name, key):
                    continue
                self.errors.append(" ".join(x for x in (stamp, what, *key, f"+{d:g}") if x))


def _benign(name: str, key: tuple[str, ...]) -> bool:
    if name in (STATUS, OLD_STATUS):
        return key[-1] in _OK_STATUS
    if name == "gatewayd_policy_reloads_total":
        return key[0] != "error"
    if name == "gatewayd_http_requests_total":
        return not key[1].startswith("5")
    return False


def _fmt_rate(r: float | None) -> str:
    return "-" if r is None else f"{r:,.1f}"


def render(view: View) -> str:
    """One frame as text (no clear-screen codes)."""
    s = view.cur
    c = view.color

    def paint(text: str, code: str) -> str:
        return f"{code}{text}{_RESET}" if c else text

    lines: list[str] = []
    version = next((lab.get("version", "") for lab, _ in _select(s, "gatewayd_build_info")), "")
    redis_up = total(s, "gatewayd_redis_up")
    reload_failed = total(s, "gatewayd_policy_reload_failed")
    binds = by(s, "gatewayd_bind_up", "carrier", "bind")
    up = sum(1 for v in binds.values() if v >= 1)
    suspended = {carrier for (carrier,), v in by(s, "gatewayd_carrier_suspended",
                                                 "carrier").items() if v >= 1}
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(view.cur_t or time.time()))
    lines.append(paint(f"gatewayd {version}  {view.url}  {stamp}", _BOLD))
    lines.append(
        f"redis {paint('up', _GREEN) if redis_up >= 1 else paint('DOWN', _RED)}   "
        f"binds up {up}/{len(binds)}   "
        + (paint(f"suspended {','.join(sorted(suspended))}", _RED) + "   " if suspended else "")
        + f"policy {paint('RELOAD FAILED', _RED) if reload_failed >= 1 else 'ok'}"
    )

    lines += ["", f"{'BINDS':<12}{'bind':>5}  {'protocol':<10}{'state':<6}{'window':>8}"
              f"{'tps limit':>11}{'submit/s':>10}"]
    protocol = {(c, i): f"{p}-{v}" for (c, i, p, v) in
                by(s, "gatewayd_bind_info", "carrier", "bind", "protocol", "version")}
    submits = present(s, SUBMITS, OLD_SUBMITS)
    window = by(s, "gatewayd_bind_window_in_use", "carrier", "bind")
    tps = by(s, "gatewayd_bind_tps_limit", "carrier", "bind")
    shown: set[str] = set()
    for (carrier, idx), v in sorted(binds.items()):
        state = paint("up  ", _GREEN) if v >= 1 else paint("DOWN", _RED)
        if carrier in suspended:  # bound for receipts and MO, no submits (gatewayd carrier)
            state = paint("SUSP", _RED)
        # Submits are counted per carrier: show their rate on the carrier's first bind row.
        rate = "" if carrier in shown else _fmt_rate(view.rate(submits, carrier=carrier))
        shown.add(carrier)
        proto = protocol.get((carrier, idx), "-")
        lines.append(f"{carrier:<12}{idx:>5}  {proto:<10}{state}  "
                     f"{window.get((carrier, idx), 0):>8g}"
                     f"{tps.get((carrier, idx), 0):>11g}{rate:>10}")
    if not binds:
        lines.append("  (no binds reported yet)")

    lines += ["", f"{'QUEUES':<16}{'ready':>10}{'pending':>10}{'in/s':>10}"]
    depth = by(s, "gatewayd_queue_depth", "klass")
    pending = by(s, "gatewayd_queue_pending", "klass")
    classes = sorted(set(depth) | set(pending) | set(by(s, "gatewayd_messages_enqueued_total",
                                                        "klass")))
    for (klass,) in classes:
        lines.append(f"{klass:<16}{depth.get((klass,), 0):>10g}{pending.get((klass,), 0):>10g}"
                     f"{_fmt_rate(view.rate('gatewayd_messages_enqueued_total', klass=klass)):>10}")
    lines.append(f"{'delayed':<16}{total(s, 'gatewayd_delayed'):>10g}")

    lines += ["", f"{'MESSAGES':<16}{'total':>12}{'per s':>10}"]
    rows: list[tuple[str, str, dict[str, str]]] = [
        ("enqueued", "gatewayd_messages_enqueued_total", {}),
        ("submits", present(s, SUBMITS, OLD_SUBMITS), {}),
    ]
    rows += [(st, "gatewayd_messages_state_total", {"state": st})
             for st in ("submitted", "delivered", "undeliverable", "expired", "rejected",
                        "failed", "deferred")]
    rows.append(("dead letters", "gatewayd_dead_letters_total", {}))
    rows.append(("redeliveries", "gatewayd_redeliveries_total", {}))
    for label, name, match in rows:
        lines.append(f"{label:<16}{total(s, name, **match):>12,.0f}"
                     f"{_fmt_rate(view.rate(name, **match)):>10}")
    delivered = total(s, "gatewayd_messages_state_total", state="delivered")
    finals = sum(total(s, "gatewayd_messages_state_total", state=st)
                 for st in ("delivered", "undeliverable", "expired"))
    if finals:
        lines.append(f"{'delivery rate':<16}{100 * delivered / finals:>11.2f}%")

    lines += ["", "RECEIPTS"]
    results = by(s, "gatewayd_receipts_total", "result")
    unmatched = results.get(("unmatched",), 0.0)
    matched = sum(v for (r,), v in results.items() if r != "unmatched")
    detail = "  ".join(f"{r}={v:g}" for (r,), v in sorted(results.items()))
    lines.append(f"  matched {matched:,.0f}   unmatched {unmatched:,.0f}   ({detail or 'none'})")

    lines += ["", "RECENT ERRORS"]
    lines += [f"  {e}" for e in view.errors] or ["  none"]
    return "\n".join(lines) + "\n"


def _resolve_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url)
    if args.config:
        from gatewayd.config import load_config

        return url_from_listen(load_config(args.config, need_secrets=False).http.listen)
    return "http://127.0.0.1:8780/metrics"


def run(args: argparse.Namespace) -> int:
    url = _resolve_url(args)
    interval = max(0.05, float(args.interval))
    color = not args.no_color and sys.stdout.isatty()
    view = View(url=url, color=color)
    if args.once:
        try:
            view.update(scrape(url), time.time())
            time.sleep(interval)
            view.update(scrape(url), time.time())
        except (OSError, urllib.error.URLError, ValueError) as e:
            print(f"gatewayd top: cannot read {url}: {e}", file=sys.stderr)
            return 1
        sys.stdout.write(render(view))
        return 0
    out = sys.stdout
    out.write("\x1b[?25l")  # hide the cursor while we redraw
    try:
        while True:
            try:
                view.update(scrape(url), time.time())
                frame = render(view)
            except (OSError, urllib.error.URLError, ValueError) as e:
                frame = f"gatewayd top: cannot read {url}: {e}\n(retrying every {interval:g}s)\n"
            out.write(_CLEAR + frame)
            out.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
    finally:
        out.write("\x1b[?25h")
        out.flush()
