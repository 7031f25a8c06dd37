"""Receipt correlation with one stored key per part: the submit side stores
normalise_id(smsc_id), the receipt side tries receipt_candidates(raw)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.carrier.ids import id_candidates, normalise_id, receipt_candidates, receipt_keys
from gatewayd.client import Client
from gatewayd.model import FINAL_STATES
from gatewayd.sim.smpp.smsc import SmscSimulator
from gatewayd.store.keys import Keys
from tests.e2e_helpers import Smsc, events_by_id, load, running_daemon, wait_final, write_config


def _form(value: int, base: str, zeros: int, upper: bool) -> str:
    digits = str(value) if base == "dec" else (f"{value:X}" if upper else f"{value:x}")
    return "0" * zeros + digits


# SMPP message ids are at most 64 characters; 2**128 covers UUID-sized values.
VALUES = st.integers(min_value=0, max_value=2**128 - 1)


@given(VALUES, st.sampled_from(["hex", "dec"]), st.integers(0, 4), st.integers(0, 4),
       st.booleans(), st.booleans())
def test_submit_in_one_base_meets_receipt_in_the_other(
    value: int, submit_base: str, submit_zeros: int, receipt_zeros: int,
    submit_upper: bool, receipt_upper: bool,
) -> None:
    receipt_base = "dec" if submit_base == "hex" else "hex"
    stored = normalise_id(_form(value, submit_base, submit_zeros, submit_upper))
    receipt = _form(value, receipt_base, receipt_zeros, receipt_upper)
    assert stored in receipt_candidates(receipt)


@given(VALUES, st.sampled_from(["hex", "dec"]), st.integers(0, 4), st.integers(0, 4),
       st.booleans(), st.booleans())
def test_same_base_meets(
    value: int, base: str, zeros_a: int, zeros_b: int, upper_a: bool, upper_b: bool
) -> None:
    stored = normalise_id(_form(value, base, zeros_a, upper_a))
    assert stored in receipt_candidates(_form(value, base, zeros_b, upper_b))


@given(st.text(max_size=30))
def test_receipt_candidates_extend_id_candidates(raw: str) -> None:
    # Keys written by an older gatewayd (every id_candidates form) are still found.
    cands = receipt_candidates(raw)
    assert cands[: len(id_candidates(raw))] == id_candidates(raw)
    assert len(cands) == len(set(cands))


def test_receipt_candidates_examples() -> None:
    assert receipt_candidates("2587") == ["2587", "9607", "a1b"]
    assert receipt_candidates("0A1B") == ["a1b", "2587"]
    assert receipt_candidates("0000") == ["0"]
    assert receipt_candidates("msg-7f") == ["msg-7f"]
    assert receipt_candidates("") == []


@pytest.mark.parametrize(("id_format", "receipt_id_format"),
                         [("hex", "decimal"), ("decimal", "hex")])
async def test_daemon_correlates_receipts_across_bases(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc,
    id_format: str, receipt_id_format: str,
) -> None:
    sim = await smsc(receipt_delay_s=0.02, id_format=id_format,
                     receipt_id_format=receipt_id_format)
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port))
    items = [{"to": f"+86138{n:08d}", "text": f"Your code is {1000 + n}", "category": "otp"}
             for n in range(20)]
    async with Client(redis_url, queue=cfg.queue) as client:
        ids = [i for i, _ in await client.send(items)]
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, ids, timeout_s=60)
    assert {r["state"] for r in records.values()} == {"delivered"}
    events = await events_by_id(redis, keys)
    for mid in ids:
        assert [e["state"] for e in events[mid]] == ["queued", "submitted", "delivered"]
    # One correlation key per part (not one per candidate form).
    stored = [k async for k in redis.scan_iter(match=keys.correlation("sim", "*"))]
    assert len(stored) == len(ids)


# receipt_ids: an explicit relation between the submit_sm_resp id and the receipt id
# looks up exactly one key (carrier.ids.receipt_keys).

def test_receipt_keys_per_mode() -> None:
    # auto: the guess across bases, as before.
    assert receipt_keys("2587", "auto") == receipt_candidates("2587")
    assert receipt_keys("300", "auto") == ["300", "768", "12c"]
    # same: the primary form only ("300" is never also read as 0x300 = 768).
    assert receipt_keys("0300", "same") == ["300"]
    assert receipt_keys("0A1B", "same") == ["a1b"]
    # hex-to-decimal: the response said "0A1B", the receipt says "2587".
    assert receipt_keys("2587", "hex-to-decimal") == ["a1b"]
    assert receipt_keys("768", "hex-to-decimal") == ["300"]
    # decimal-to-hex: the response said "2587", the receipt says "0A1B".
    assert receipt_keys("0A1B", "decimal-to-hex") == ["2587"]
    assert receipt_keys("300", "decimal-to-hex") == ["768"]
    # An id that cannot be read in the declared base keeps its primary form.
    assert receipt_keys("a1b", "hex-to-decimal") == ["a1b"]
    assert receipt_keys("msg-7f", "decimal-to-hex") == ["msg-7f"]
    for mode in ("auto", "same", "hex-to-decimal", "decimal-to-hex"):
        assert receipt_keys("", mode) == []  # type: ignore[arg-type]


@given(VALUES, st.integers(0, 4), st.integers(0, 4), st.booleans(), st.booleans())
def test_explicit_modes_meet_the_stored_key(
    value: int, submit_zeros: int, receipt_zeros: int, submit_upper: bool, receipt_upper: bool
) -> None:
    for mode, submit_base, receipt_base in (("same", "hex", "hex"), ("same", "dec", "dec"),
                                            ("hex-to-decimal", "hex", "dec"),
                                            ("decimal-to-hex", "dec", "hex")):
        stored = normalise_id(_form(value, submit_base, submit_zeros, submit_upper))
        receipt = _form(value, receipt_base, receipt_zeros, receipt_upper)
        assert receipt_keys(receipt, mode) == [stored]  # type: ignore[arg-type]


# Small sequential hex ids, as a node-smpp SMSC hands them out: from 0x10, forty
# messages are "10".."37", many of them all decimal digits.
FIRST_ID = 0x10
N = 40


async def _run(tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys,
               sim: SmscSimulator, receipt_ids: str, first_wave: int = N
               ) -> tuple[list[str], dict[str, dict[str, str]], dict[str, str]]:
    """N messages to distinct numbers, the first ``first_wave`` of them sent (and made
    final) before the rest; wait until the SMSC's receipts are all answered (each
    applied or parked) or every message is final. Returns the message ids, their
    records, and per message the id the SMSC gave its submit_sm."""
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                            extra_carrier=f'receipt_ids = "{receipt_ids}"'))
    numbers = [f"86138{n:08d}" for n in range(N)]
    items = [{"to": f"+{num}", "text": f"Your code is {1000 + n}", "category": "otp"}
             for n, num in enumerate(numbers)]
    ids: list[str] = []
    async with running_daemon(cfg):
        if first_wave < N:
            async with Client(redis_url, queue=cfg.queue) as client:
                ids = [i for i, _ in await client.send(items[:first_wave])]
            await wait_final(redis, keys, ids, timeout_s=30)
        async with Client(redis_url, queue=cfg.queue) as client:
            ids += [i for i, _ in await client.send(items[len(ids):])]
        # Until every message is final, or every receipt is answered and none is parked
        # (what stays submitted then has no receipt left that could reach it).
        for _ in range(600):
            records = await wait_final(redis, keys, ids, timeout_s=0)
            if all(r.get("state") in FINAL_STATES for r in records.values()):
                break
            if (sim.stats.receipts_acked >= N
                    and not await redis.zcard(keys.early_receipts)):
                break
            await asyncio.sleep(0.1)
    given_id = {s.destination.lstrip("+"): s.message_id for s in sim.submissions
                if s.status == 0}
    return ids, records, {mid: given_id[num] for mid, num in zip(ids, numbers, strict=True)}


def _own_receipts_only(ids: list[str], records: dict[str, dict[str, str]],
                       given: dict[str, str], events: dict[str, list[dict[str, str]]]
                       ) -> None:
    for mid in ids:
        r = records[mid]
        assert r["state"] == "delivered", (mid, given[mid], r)
        # Recorded against the submission the SMSC saw for this number.
        assert r["carrier_id"] == normalise_id(given[mid])
        assert [e["state"] for e in events[mid]] == ["queued", "submitted", "delivered"]


async def test_hex_to_decimal_small_sequential_ids_each_on_its_own_receipt(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc,
) -> None:
    # Every submit is recorded before the first receipt comes (receipt_delay_s), so the
    # live keys are "10".."37" when receipt "16" (of "10", 0x10 = 16) arrives.
    sim = await smsc(receipt_delay_s=1.0, id_format="hex", receipt_id_format="decimal",
                     first_id=FIRST_ID, seed=7)
    ids, records, given = await _run(tmp_path, redis_url, redis, keys, sim,
                                     "hex-to-decimal")
    _own_receipts_only(ids, records, given, await events_by_id(redis, keys))
    assert sim.stats.receipts_acked == N


async def test_auto_mismatches_small_sequential_hex_ids(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc,
) -> None:
    """The defect "auto" keeps (README "Receipt ids"): receipt "16" of the message the
    SMSC called "10" is looked up as "16" first, the key of the live message it called
    "16" (0x16 = 22), which is marked delivered on it; "10" then never matches."""
    sim = await smsc(receipt_delay_s=1.0, id_format="hex", receipt_id_format="decimal",
                     first_id=FIRST_ID, seed=7)
    ids, records, given = await _run(tmp_path, redis_url, redis, keys, sim, "auto")
    by_given = {given[mid]: records[mid] for mid in ids}
    assert by_given["10"]["state"] == "submitted"
    assert by_given["16"]["state"] == "delivered"  # on the receipt of "10"


async def test_auto_mismatches_early_receipts_of_small_sequential_hex_ids(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc,
) -> None:
    """The defect the node-smpp benchmark found, with the id the same on both sides:
    "10".."19" are sent and delivered first. Then "22"'s receipt beats its
    submit_sm_resp (early): its own key is not written yet, and "auto" goes on to "34"
    (0x22, not written yet either) and "16" (22 as hex): the key of the message the
    SMSC called "16", final already, so the receipt is spent on it ("late") and "22"
    stays submitted. "same" (test below) parks it and retries it under "22" alone."""
    sim = await smsc(receipt_delay_s=0.5, id_format="hex", receipt_id_format="same",
                     first_id=FIRST_ID, early_receipt_fraction=1.0, seed=11)
    ids, records, given = await _run(tmp_path, redis_url, redis, keys, sim, "auto",
                                     first_wave=10)
    by_given = {given[mid]: records[mid] for mid in ids}
    assert by_given["22"]["state"] == "submitted"


async def test_same_with_every_receipt_early_after_a_first_wave(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc,
) -> None:
    # As above, with receipt_ids = "same": every receipt is parked until its own key is
    # written, and each message ends delivered on its own.
    sim = await smsc(receipt_delay_s=0.5, id_format="hex", receipt_id_format="same",
                     first_id=FIRST_ID, early_receipt_fraction=1.0, seed=11)
    ids, records, given = await _run(tmp_path, redis_url, redis, keys, sim, "same",
                                     first_wave=10)
    _own_receipts_only(ids, records, given, await events_by_id(redis, keys))
