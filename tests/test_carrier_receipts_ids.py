"""Receipt correlation with one stored key per part: the submit side stores
normalise_id(smsc_id), the receipt side tries receipt_candidates(raw)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.carrier.ids import id_candidates, normalise_id, receipt_candidates
from gatewayd.client import Client
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
