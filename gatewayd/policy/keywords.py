"""Check 2, keywords (pure): every list in ONE Aho-Corasick automaton.

The text is normalised once (gatewayd.policy.normalize.for_matching: NFKC, casefold,
traditional -> simplified, look-alike letters -> ASCII, letters and digits only) and
scanned in one pass, whatever the number of lists and terms; the terms were normalised
the same way when loaded (and, for lists with ``pinyin = true``, their pinyin spellings
added: gatewayd.policy.pinyin). A hit on a ``block`` list rejects with
``keyword:<list>:<term as written in the list>`` (the first block hit in text order);
hits on ``review`` lists add ``review:<list>:<term>`` flags and the message is still
sent. A list with ``categories`` applies to those categories only.

Exceptions (false positives such as ``套现`` inside ``购机配套现金券``): a list may name
allowed phrases for all its terms, and a term its own (``套现 ! 配套现金`` in the file).
They are words of the same automaton; a hit that lies wholly inside an occurrence of
one of its exceptions is released (ignored). A text is still scanned once: with
exceptions in the policy the scan collects every hit before deciding (an exception
covering a hit may end after it); without, the first block hit decides at once.
"""

from __future__ import annotations

from typing import Any

import ahocorasick

from gatewayd.policy import pinyin
from gatewayd.policy.normalize import for_matching
from gatewayd.policy.settings import KeywordList
from gatewayd.policy.verdict import Verdict, reject

# One term entry: (block?, list name, categories or empty for all, term as written,
# ids of the exceptions that release it).
_Entry = tuple[bool, str, frozenset[str], str, frozenset[int]]
# An automaton value: (term entries, exception id or -1, length of the key).
_Value = tuple[tuple[_Entry, ...], int, int]


class KeywordMatcher:
    __slots__ = ("_automaton", "_exceptions", "terms", "variants")

    def __init__(self, lists: tuple[KeywordList, ...]) -> None:
        table: dict[str, list[_Entry]] = {}
        exc_ids: dict[str, int] = {}

        def exc_id(normalised: str) -> int:
            return exc_ids.setdefault(normalised, len(exc_ids))

        self.variants = 0  # pinyin keys added
        for kl in lists:
            for i, term in enumerate(kl.terms):
                excs = kl.exceptions_of(i)
                released = frozenset(exc_id(for_matching(e)) for e in excs)
                keys = [for_matching(term)]
                if kl.pinyin:
                    spelled = pinyin.variants(term, kl.pinyin_min_letters)
                    self.variants += len(spelled)
                    keys += spelled
                    released |= {exc_id(v) for e in excs
                                 for v in pinyin.variants(e, kl.pinyin_min_letters)}
                entry = (kl.action == "block", kl.name, kl.categories, term, released)
                for key in keys:
                    entries = table.setdefault(key, [])
                    if not any(e[1] == kl.name for e in entries):
                        entries.append(entry)
        self.terms = len(table)
        self._exceptions = {v: k for k, v in exc_ids.items()}  # id -> normalised text
        self._automaton: Any = None
        if table or exc_ids:
            a = ahocorasick.Automaton()
            for key in table.keys() | exc_ids.keys():
                entries = table.get(key, [])
                # Block lists first, so the reason names a block list when one matches.
                entries.sort(key=lambda e: not e[0])
                a.add_word(key, (tuple(entries), exc_ids.get(key, -1), len(key)))
            a.make_automaton()
            self._automaton = a

    def check(self, normalised: str, category: str) -> tuple[Verdict | None, list[str]]:
        """(reject verdict or None, review flags) for text already normalised."""
        if self._automaton is None or not normalised:
            return None, []
        if not self._exceptions:
            return self._first(normalised, category)
        # One pass collects the hits and the exceptions' occurrences (an exception that
        # covers a hit may end after it); most texts have neither.
        hits, spans = self._scan(normalised)
        if not hits:
            return None, []
        flags: list[str] = []
        for end, length, entries in hits:
            for block, name, cats, term, released in entries:
                if cats and category not in cats:
                    continue
                if (released and spans
                        and _inside(end - length + 1, end, released, spans) is not None):
                    continue
                if block:
                    return reject("keywords", f"keyword:{name}:{term}"), flags
                flag = f"review:{name}:{term}"
                if flag not in flags:
                    flags.append(flag)
        return None, flags

    def _first(self, normalised: str, category: str) -> tuple[Verdict | None, list[str]]:
        flags: list[str] = []
        for _end, (entries, _eid, _len) in self._automaton.iter(normalised):
            for block, name, cats, term, _released in entries:
                if cats and category not in cats:
                    continue
                if block:
                    return reject("keywords", f"keyword:{name}:{term}"), flags
                flag = f"review:{name}:{term}"
                if flag not in flags:
                    flags.append(flag)
        return None, flags

    def _scan(self, normalised: str) -> tuple[list[tuple[int, int, tuple[_Entry, ...]]],
                                              list[tuple[int, int, int]]]:
        hits: list[tuple[int, int, tuple[_Entry, ...]]] = []
        spans: list[tuple[int, int, int]] = []  # (start, end, exception id), inclusive
        for end, (entries, eid, length) in self._automaton.iter(normalised):
            if eid >= 0:
                spans.append((end - length + 1, end, eid))
            if entries:
                hits.append((end, length, entries))
        return hits, spans

    def explain(self, normalised: str, category: str) -> list[dict[str, str]]:
        """Every hit in text order: list, term, what matched, and the exception that
        released it (``released_by``), for ``policy explain``."""
        if self._automaton is None or not normalised:
            return []
        hits, spans = self._scan(normalised)
        out: list[dict[str, str]] = []
        for end, length, entries in hits:
            start = end - length + 1
            for block, name, cats, term, released in entries:
                if cats and category not in cats:
                    continue
                row = {"list": name, "term": term, "matched": normalised[start : end + 1],
                       "action": "block" if block else "review"}
                eid = _inside(start, end, released, spans) if released else None
                if eid is not None:
                    row["released_by"] = self._exceptions[eid]
                out.append(row)
        return out


def _inside(start: int, end: int, released: frozenset[int],
            spans: list[tuple[int, int, int]]) -> int | None:
    """The id of an exception occurrence that covers [start, end], or None."""
    for s, e, eid in spans:
        if s <= start and end <= e and eid in released:
            return eid
    return None
