"""``parse_plain`` (the short way for plain items: the client's send_many and the HTTP
batch route) against ``parse_message``, the reference: for any item, it either hands
the item back (None; parse_message then decides, with its exact error) or returns the
very message parse_message returns (the id aside, when made here). Items drawn to sit
on the rules' edges: numbers, ids, lengths, callback URLs, classes, lone surrogates and
characters outside the BMP, texts around one part and past the segment limit, values
that are not strings, fields that are not plain. And the ids both make: unique, also
across threads and in a forked child."""

from __future__ import annotations

import os
import threading
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import harness
from gatewayd.errors import MessageError
from gatewayd.pipeline.intake import new_id, parse_message, parse_plain

CLASSES = ["otp", "transactional", "marketing"]
CHECKS = settings(max_examples=1500, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow])
_CHARS = st.sampled_from(["a", "Z", "0", " ", "{", "€", "`", "é", "中", "\ud800", "\udc00",
                          "😀", "\x00", "-", ".", "_", ":", "/", "\n"])


def _text(max_size: int) -> st.SearchStrategy[str]:
    return st.one_of(st.text(_CHARS, max_size=max_size),
                     st.builds(lambda c, n: c * n, _CHARS, st.integers(0, 700)),
                     st.text(max_size=12))


_BAD = st.one_of(_text(30), st.integers(), st.none(), st.floats(allow_nan=False))
# Per field: values near and on the rules' edges (most valid), then anything.
_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "to": st.from_regex(r"\+?[0-9]{4,17}", fullmatch=True),
    "text": _text(200),
    "category": st.sampled_from([*CLASSES, "bulk", ""]),
    "id": st.from_regex(r"[A-Za-z0-9._:\-]{0,66}", fullmatch=True),
    "from": st.text(max_size=22),
    "tenant": st.text(max_size=66),
    "ref": st.builds(lambda n: "r" * n, st.integers(0, 130)),
    "idempotency_key": st.builds(lambda n: "k" * n, st.integers(0, 130)),
    "callback_url": st.sampled_from(["https://a.example/x", "http://h/p?q=1", "ftp://x",
                                     "https://a b", "https://" + "u" * 510, ""]),
    "carrier": st.text(max_size=8),
    # not plain: parse_plain hands these back
    "not_before": st.one_of(st.floats(), st.text(max_size=5)),
    "params": st.just({}),
    "attempts": st.integers(0, 3),
    "json": st.just("{}"),
}
_PLAIN = sorted(set(_FIELDS) - {"not_before", "params", "attempts", "json"})


@st.composite
def items(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 30)) == 0:
        return draw(st.one_of(st.none(), st.lists(st.integers(), max_size=2), st.text()))
    pool = sorted(_FIELDS) if draw(st.integers(0, 3)) == 0 else _PLAIN
    names = draw(st.lists(st.sampled_from(pool), unique=True, max_size=7))
    item: dict[str, Any] = {}
    if draw(st.integers(0, 5)):
        item["to"] = draw(st.from_regex(r"\+86138[0-9]{8}", fullmatch=True))
        item["text"] = draw(st.one_of(st.just("hello"), _text(100)))
    for name in names:
        item[name] = draw(_BAD if draw(st.integers(0, 9)) == 0 else _FIELDS[name])
    return item


def _same(item: Any, max_segments: int, now: float) -> bool:
    """Whether parse_plain took the item (and if so, that it agrees)."""
    classes = frozenset(CLASSES)
    got = parse_plain(item, classes, max_segments, now)
    try:
        want = parse_message(item, classes=CLASSES, max_segments=max_segments, now=now,
                             horizon_s=86400.0)
    except MessageError:
        assert got is None, (item, got)
        return False
    if got is None:
        return False
    if not (type(item) is dict and item.get("id")):
        assert got.id != want.id  # both made one
        got.id = want.id
    assert got == want, (item, got, want)
    return True


@CHECKS
@given(items(), st.sampled_from([1, 2, 3, 10, 0]), st.floats(min_value=1e9, max_value=2e9))
def test_parse_plain_accepts_only_what_parse_message_accepts_alike(
    item: Any, max_segments: int, now: float
) -> None:
    _same(item, max_segments, now)


def test_plain_items_take_the_short_way() -> None:
    """bench/e2e's mix (OTP codes, notices, Chinese marketing, 5 % long), with and
    without the optional fields: every one on the short way, and alike."""
    mix = harness.make_messages(600)
    for n, item in enumerate(mix):
        if n % 3 == 0:
            item.update({"from": "ACME", "idempotency_key": f"k{n}", "id": f"m-{n}",
                         "callback_url": "https://app.example/cb", "carrier": "c1"})
        elif n % 3 == 1:
            del item["tenant"], item["ref"]
        assert _same(item, 10, 1.7e9), item


def test_ids_are_unique_across_threads_and_a_fork() -> None:
    seen: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        out.extend(new_id() for _ in range(20_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in seen]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for out in seen for i in out]
    assert len(set(ids)) == len(ids) == 80_000
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(r)
        os.write(w, " ".join(new_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        child = f.read().split()
    os.waitpid(pid, 0)
    mine = [new_id() for _ in range(100)]
    assert len(child) == 100 and not {i.split("-")[1] for i in child} & {
        i.split("-")[1] for i in mine}
