"""Importing an existing opt-out list: a million numbers in seconds, each with its record.

Input: one number a line, or CSV/TSV whose first column is the number; blank lines,
``#`` comments and a header line (a first line without a digit) are skipped. A number
with ``+`` or ``00`` is international; digits without either are taken as E.164 digits,
or, with ``country_code``, as a national number of that country (its trunk ``0``
dropped). A line that is not a number 6-15 digits long is reported (line number and
text) and skipped: the rest are imported.

Each number gets the opt-out field (``*`` or ``<scope>|<category>``; HSETNX, so an
earlier opt-out keeps its own, older time) and a consent record (source ``import``, the
note, e.g. the file name), ``chunk`` numbers to one atomic script call
(lua/consent_import.lua) on a single Redis; on a cluster, whose keys span every slot,
the same commands go as pipelines (slower, still batched).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, cast

from gatewayd.consent import records
from gatewayd.store import fastpipe
from gatewayd.store.connection import is_cluster, load_script, pipe_script
from gatewayd.store.keys import Keys

CHUNK: Final = 10_000
_SPLIT: Final = re.compile(r"[,;\t]")
_JUNK: Final = re.compile(r"[\s\-().]")
_DIGITS: Final = re.compile(r"[0-9]{6,15}")
_MAX_REPORTED: Final = 20
_PLAIN: Final = re.compile(r"[ \t]*(\+?)([1-9][0-9]{5,14})[ \t]*\r?\n?")


@dataclass(slots=True)
class ImportResult:
    read: int = 0  # numbers found (valid)
    new: int = 0  # of which were not opted out of this field before
    invalid: int = 0
    invalid_lines: list[tuple[int, str]] = field(default_factory=list)  # the first few
    seconds: float = 0.0


def parse_line(line: str, country_code: str = "") -> str | None:
    """The E.164 digits of one line's number, "" for a line to skip, None if invalid."""
    m = _PLAIN.fullmatch(line)
    if m is not None:  # the usual line, one number alone: one regex call
        plus, digits = m.groups()
        if plus == "+" or not country_code:
            return digits
    s = line.strip()
    if not s or s.startswith("#"):
        return ""
    s = _JUNK.sub("", _SPLIT.split(s, 1)[0].strip().strip('"'))
    if s.startswith("+"):
        s = s[1:]
    elif s.startswith("00"):
        s = s[2:]
    elif country_code:
        s = country_code + s.lstrip("0")
    return s if _DIGITS.fullmatch(s) else None


def numbers(lines: Iterable[str], result: ImportResult,
            country_code: str = "") -> Iterator[str]:
    """The valid numbers of ``lines``, counting and reporting the invalid ones."""
    first = True
    for lineno, line in enumerate(lines, 1):
        digits = parse_line(line, country_code)
        if digits is None and first and not any(c.isdigit() for c in line):
            first = False
            continue  # a header line ("number,name")
        if digits == "":
            continue
        first = False
        if digits is None:
            result.invalid += 1
            if len(result.invalid_lines) < _MAX_REPORTED:
                result.invalid_lines.append((lineno, line.rstrip("\r\n")[:80]))
            continue
        result.read += 1
        yield digits


async def import_optouts(redis: Any, keys: Keys, lines: Iterable[str], *, scope: str = "*",
                         category: str = "", note: str = "", at: float | None = None,
                         country_code: str = "", chunk: int = CHUNK,
                         retention_s: float = records.DEFAULT_RETENTION_S) -> ImportResult:
    """Import every valid number of ``lines`` as an opt-out (see the module docstring)."""
    started = time.perf_counter()
    when = repr(time.time() if at is None else at)
    name = f"{scope}|{category}" if category else scope
    result = ImportResult()
    r = cast(Any, redis)
    cluster = is_cluster(r)
    script = None if cluster else load_script(r, "consent_import")
    batch: list[str] = []
    # One chunk in flight while the next is read and packed: Redis and this process
    # work at the same time (chunks still apply in order: each waits for the last).
    flight: asyncio.Task[int] | None = None

    async def send(numbers_: list[str], before: asyncio.Task[int] | None) -> int:
        if before is not None:
            done = await before  # not "result.new += await": that reads result.new first
            result.new += done
        return await _write(r, keys, script, numbers_, name, when, scope, category, note,
                            retention_s)

    try:
        for digits in numbers(lines, result, country_code):
            batch.append(digits)
            if len(batch) >= chunk:
                flight = asyncio.ensure_future(send(batch, flight))
                batch = []
                await asyncio.sleep(0)  # let it start writing
        if batch:
            flight = asyncio.ensure_future(send(batch, flight))
        if flight is not None:
            done = await flight
            result.new += done
    except BaseException:
        if flight is not None:
            flight.cancel()
        raise
    result.seconds = time.perf_counter() - started
    return result


async def _write(r: Any, keys: Keys, script: Any, batch: list[str], name: str, when: str,
                 scope: str, category: str, note: str, retention_s: float) -> int:
    if script is not None:
        args: list[str] = [name, when, scope, category, "import", note,
                           records.min_id(retention_s), str(int(retention_s) + 1),
                           str(records.INDEX_MAX)]
        for digits in batch:
            f = keys.number_fields(digits)
            args += (keys.optout(digits),
                     keys.consent_index(records.bucket_of(f["number"])), f["number"],
                     f.get("number_enc", ""))
        pipe = r.pipeline(transaction=False)
        pipe_script(pipe, script, [keys.optout_audit], args)
        [new] = await fastpipe.execute(pipe)
        return int(new)
    # Cluster: the numbers' keys span every slot; plain commands, pipelined.
    got: list[Any] = []

    def hsetnx(pipe: Any) -> None:
        for digits in batch:
            pipe.hsetnx(keys.optout(digits), name, when)

    changes = [records.Change(action="out", digits=d, scope=scope, category=category,
                              source="import", at=float(when), note=note) for d in batch]
    await records.write(r, keys, changes, retention_s, before=hsetnx, replies=got)
    return sum(int(x) for x in got[: len(batch)])
