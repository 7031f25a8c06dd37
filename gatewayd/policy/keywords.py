"""Check 2, keywords (pure): every list in ONE Aho-Corasick automaton.

The text is normalised once (gatewayd.policy.normalize.for_matching: NFKC, casefold,
letters and digits only) and scanned in one pass, whatever the number of lists and
terms; the terms were normalised the same way when loaded. A hit on a ``block`` list
rejects with ``keyword:<list>:<term as written in the list>`` (the first block hit in
text order); hits on ``review`` lists add ``review:<list>:<term>`` flags and the
message is still sent. A list with ``categories`` applies to those categories only.
"""

from __future__ import annotations

from typing import Any

import ahocorasick

from gatewayd.policy.normalize import for_matching
from gatewayd.policy.settings import KeywordList
from gatewayd.policy.verdict import Verdict, reject

# One automaton value: the lists a normalised term belongs to, as
# (block?, list name, categories or empty for all, term as written).
_Entry = tuple[bool, str, frozenset[str], str]


class KeywordMatcher:
    __slots__ = ("_automaton", "terms")

    def __init__(self, lists: tuple[KeywordList, ...]) -> None:
        table: dict[str, list[_Entry]] = {}
        for kl in lists:
            for term in kl.terms:
                entries = table.setdefault(for_matching(term), [])
                entry = (kl.action == "block", kl.name, kl.categories, term)
                if not any(e[1] == kl.name for e in entries):
                    entries.append(entry)
        self.terms = len(table)
        self._automaton: Any = None
        if table:
            a = ahocorasick.Automaton()
            for key, entries in table.items():
                # Block lists first, so the reason names a block list when one matches.
                entries.sort(key=lambda e: not e[0])
                a.add_word(key, tuple(entries))
            a.make_automaton()
            self._automaton = a

    def check(self, normalised: str, category: str) -> tuple[Verdict | None, list[str]]:
        """(reject verdict or None, review flags) for text already normalised."""
        if self._automaton is None or not normalised:
            return None, []
        flags: list[str] = []
        for _end, entries in self._automaton.iter(normalised):
            for block, name, cats, term in entries:
                if cats and category not in cats:
                    continue
                if block:
                    return reject("keywords", f"keyword:{name}:{term}"), flags
                flag = f"review:{name}:{term}"
                if flag not in flags:
                    flags.append(flag)
        return None, flags
