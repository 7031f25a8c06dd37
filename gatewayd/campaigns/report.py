"""The campaign report: one self-contained HTML page (inline CSS and SVG, no script, no
external asset), served by the daemon at ``GET /v1/campaigns/{id}/report``.

It shows the funnel as a bar chart (queued -> sent -> delivered -> clicked -> converted,
each bar labelled with its count and its rate of the stage before), the losses
(undeliverable, rejected by reason, opted out), the rates with their denominators, and
the A/B comparison: click rate (unique clicks / delivered) per variant with a 95 %
Wilson interval drawn as an error bar, and a two-proportion z-test of each variant
against the first (p-value; significant when p < 0.05). Every figure carries a
``data-figure`` attribute so that tests (and scrapers) find it without parsing prose.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

from gatewayd.campaigns import funnel
from gatewayd.campaigns.model import Campaign

_FUNNEL = (("queued", "queued"), ("submitted", "sent"), ("delivered", "delivered"),
           ("clicked", "clicked"), ("converted", "converted"))
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans CJK SC",sans-serif;
margin:24px;color:#1d2330;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.meta{color:#5b6475}table{border-collapse:collapse;margin-top:6px}
td,th{padding:4px 12px 4px 0;text-align:left;vertical-align:top}
th{font-weight:600;color:#5b6475;border-bottom:1px solid #dde2ea}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.sig{color:#0a7b34;font-weight:600}.nsig{color:#8a5a00}
"""


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _num(n: int) -> str:
    return f"{n:,}"


def _funnel_svg(stages: dict[str, int]) -> str:
    width, bar_h, gap, label_w = 640, 30, 10, 90
    top = max(1, max(stages.get(k, 0) for k, _ in _FUNNEL))
    rows = []
    prev: int | None = None
    for i, (key, label) in enumerate(_FUNNEL):
        n = stages.get(key, 0)
        w = max(2.0, (width - label_w - 150) * n / top)
        y = i * (bar_h + gap)
        of_prev = f" ({_pct(n / prev if prev else None)} of {escape(_FUNNEL[i - 1][1])})" \
            if prev is not None else ""
        rows.append(
            f'<g data-stage="{key}"><text x="0" y="{y + 20}" font-size="13">{label}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" rx="3" '
            f'fill="#{["3b6fd8", "4a86e8", "2f9e6b", "e08a1e", "b3479b"][i]}"/>'
            f'<text x="{label_w + w + 8:.1f}" y="{y + 20}" font-size="13" '
            f'data-figure="{key}">{_num(n)}</text>'
            f'<text x="{label_w + w + 14 + 8 * len(_num(n)):.1f}" y="{y + 20}" font-size="12" '
            f'fill="#5b6475">{escape(of_prev)}</text></g>')
        prev = n
    h = len(_FUNNEL) * (bar_h + gap)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{h}" '
            f'viewBox="0 0 {width} {h}" aria-label="funnel">{"".join(rows)}</svg>')


def _ab_svg(rows: list[dict[str, Any]]) -> str:
    width, row_h, label_w, plot_w = 640, 34, 90, 360
    hi = max([r["ci95"][1] for r in rows] + [0.01])
    scale = plot_w / hi
    parts = []
    for i, r in enumerate(rows):
        y = i * row_h + 16
        rate = r["click_rate"] or 0.0
        lo, up = r["ci95"]
        parts.append(
            f'<g data-variant="{escape(r["variant"])}">'
            f'<text x="0" y="{y + 5}" font-size="13">{escape(r["variant"])}</text>'
            f'<line x1="{label_w + lo * scale:.1f}" x2="{label_w + up * scale:.1f}" y1="{y}" '
            f'y2="{y}" stroke="#5b6475" stroke-width="2"/>'
            f'<circle cx="{label_w + rate * scale:.1f}" cy="{y}" r="5" fill="#e08a1e"/>'
            f'<text x="{label_w + plot_w + 12}" y="{y + 5}" font-size="12">'
            f'{_pct(r["click_rate"])} [{_pct(lo)}, {_pct(up)}]</text></g>')
    h = len(rows) * row_h + 10
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{h}" '
            f'viewBox="0 0 {width} {h}" aria-label="click rate by variant">'
            f'{"".join(parts)}</svg>')


def render(c: Campaign, counts: dict[str, int], now: float | None = None) -> str:
    now = time.time() if now is None else now
    total = funnel.summarise(counts)
    st, rates = total["stages"], total["rates"]
    variants = [v.name for v in c.variants]
    ab = funnel.ab(counts, variants)
    rate_rows = "".join(
        f'<tr><td>{name}</td><td class="n" data-figure="rate-{key}">{_pct(r["value"])}</td>'
        f'<td class="n">{_num(r["num"])} / {_num(r["den"])}</td><td>{why}</td></tr>'
        for key, name, why in (
            ("delivery", "delivery rate", "delivered / (delivered + undeliverable + expired)"),
            ("click", "click rate", "unique clicks / delivered"),
            ("conversion", "conversion rate", "converted / delivered"),
            ("optout", "opt-out rate", "opted out within the window / delivered"),
            ("reject", "rejected", "rejected / queued"))
        for r in [rates[key]])
    losses = [("undeliverable", st["undeliverable"]), ("expired", st["expired"]),
              ("failed", st["failed"]), ("rejected", st["rejected"]),
              ("opted out", st["opted_out"]), ("deferred (transitions)", st["deferred"]),
              ("link previews", st["previews"]), ("clicks (all)", st["clicks"])]
    loss_rows = "".join(
        f'<tr><td>{escape(k)}</td><td class="n" data-figure="{escape(k.split(" ")[0])}">'
        f'{_num(v)}</td></tr>' for k, v in losses)
    by_reason = "".join(
        f'<tr><td>rejected: {escape(k)}</td><td class="n" data-figure="rejected-{escape(k)}">'
        f'{_num(v)}</td></tr>' for k, v in sorted(total["rejected_by"].items()))
    var_rows = []
    tests = {t["variant"]: t for t in ab["tests"]}
    for r in ab["variants"]:
        t = tests.get(r["variant"])
        if t is None:
            verdict = "baseline"
        elif t["p_value"] is None:
            verdict = "not enough data"
        else:
            cls = "sig" if t["significant"] else "nsig"
            word = "significant" if t["significant"] else "not significant"
            verdict = (f'<span class="{cls}" data-figure="significant-{escape(r["variant"])}">'
                       f'{word}</span> (p = <span data-figure="p-{escape(r["variant"])}">'
                       f'{t["p_value"]:.4f}</span>, z = {t["z"]:.2f}, vs {escape(t["against"])})')
        v = next(x for x in c.variants if x.name == r["variant"])
        var_rows.append(
            f'<tr data-variant="{escape(r["variant"])}"><td>{escape(r["variant"])}</td>'
            f'<td>{escape(v.template)}</td>'
            f'<td class="n" data-figure="sent-{escape(r["variant"])}">'
            f'{_num(counts.get("submitted|" + r["variant"], 0))}</td>'
            f'<td class="n" data-figure="delivered-{escape(r["variant"])}">'
            f'{_num(r["delivered"])}</td>'
            f'<td class="n" data-figure="clicked-{escape(r["variant"])}">'
            f'{_num(r["clicked"])}</td>'
            f'<td class="n" data-figure="click-rate-{escape(r["variant"])}">'
            f'{_pct(r["click_rate"])}</td>'
            f'<td class="n" data-figure="ci-{escape(r["variant"])}">[{_pct(r["ci95"][0])}, '
            f'{_pct(r["ci95"][1])}]</td><td>{verdict}</td></tr>')
    ab_block = ""
    if len(variants) > 1:
        ab_block = (
            "<h2>A/B: click rate by variant</h2>"
            f"{_ab_svg(ab['variants'])}"
            "<table><tr><th>variant</th><th>template</th><th>sent</th><th>delivered</th>"
            "<th>clicked</th><th>click rate</th><th>95 % interval</th><th>vs first</th></tr>"
            f"{''.join(var_rows)}</table>"
            '<p class="meta">Click rate = unique clicks / delivered; interval: Wilson score; '
            "test: two-sided two-proportion z-test, significant when p &lt; 0.05.</p>")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Campaign {escape(c.id)}: funnel</title><style>{_CSS}</style></head><body>"
        f'<h1>Campaign <span data-figure="campaign">{escape(c.id)}</span>'
        f'{(" – " + escape(c.name)) if c.name else ""}</h1>'
        f'<p class="meta">status <b data-figure="status">{escape(c.status)}</b>'
        f'{(" (" + escape(c.reason) + ")") if c.reason else ""}; tenant {escape(c.tenant or "–")}; '
        f'{_num(c.rows)} recipients uploaded, {_num(c.invalid)} refused, '
        f'{_num(c.produced)} queued by the fan-out; report at {when}</p>'
        f"<h2>Funnel</h2>{_funnel_svg(st)}"
        "<h2>Rates</h2><table><tr><th>rate</th><th>value</th><th>of</th><th>definition</th></tr>"
        f"{rate_rows}</table>"
        f"<h2>Losses and other counts</h2><table>{loss_rows}{by_reason}</table>"
        f"{ab_block}</body></html>")
