"""policy_batch.lua's hand-rolled parsing and precomputed arguments (see bench/policy_script.py).

The script walks the blob with plain string.find and passes redis.call texts instead of
numbers: these pin what that must not change (the record format it accepts, the values
it stores).
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gatewayd.policy.redischecks import SCRIPT, SENT, RedisBatch
from gatewayd.store.keys import Keys

NOW = 1718000000.123456789  # many decimals: the ZSET score must be this double exactly


def add(b: RedisBatch, digits: str, member: str, *, optout_only: bool = False) -> None:
    b.add(digits=digits, optout_only=optout_only, optout_fields="*", duplicate_ms=30_000,
          text_body="【京东】订单已发货", member=member, caps_key="cap:otp",
          caps="1:60 5:3600 10:86400", tenant="acme", tenant_spec="10:20")


async def test_stored_values(redis: aioredis.Redis, keys: Keys) -> None:
    b = RedisBatch(keys, NOW)
    add(b, "8613800000001", "m-1")
    add(b, "8613800000002", "m-2", optout_only=True)
    add(b, "8613800000001", "m-3")  # same text, same number: a duplicate
    res = await b.run(redis)
    assert res[0] == [SENT] and res[1] == [SENT]
    assert res[2][0].check == "duplicate"
    f = b.records[0].split("\x1f")
    assert await redis.get(f[3]) == f"{NOW:.3f} m-1"
    assert 29_000 < await redis.pttl(f[3]) <= 30_000
    assert await redis.zrange(f[6], 0, -1, withscores=True) == [("m-1", NOW)]
    assert 86_399_000 < await redis.pttl(f[6]) <= 86_400_000
    assert await redis.hmget(f[8], "t", "ts") == [f"{19.0:.17g}", f"{NOW:.17g}"]
    assert await redis.exists(b.records[1].split("\x1f")[3]) == 0  # optout only: no writes


EMPTY = "f\x1f\x1f\x1f\x1f0\x1fm\x1f\x1f\x1f\x1f"  # a record that checks nothing


@pytest.mark.parametrize("blob", [
    "",
    "f\x1f" * 8 + "f",  # 9 fields
    "f\x1f" * 10 + "f",  # 11 fields
    EMPTY + "\x1e",  # a trailing empty record
    EMPTY + "\x1e" + "\x1f".join(["f"] * 9),  # a good record, then 9 fields
    "f\x1f" * 8 + "f\x1e" + "f\x1f" * 10,  # 9 fields, then 11: 20 separators in all
])
async def test_malformed_records_are_refused(redis: aioredis.Redis, blob: str) -> None:
    with pytest.raises(ResponseError, match="malformed record"):
        await SCRIPT(redis, [], [repr(NOW), "0", blob])


async def test_empty_fields_check_nothing(redis: aioredis.Redis) -> None:
    blob = "\x1e".join([EMPTY] * 3)
    assert await SCRIPT(redis, [], [repr(NOW), "0", blob]) == "s\x1es\x1es"
    assert await SCRIPT(redis, [], [repr(NOW), "1", blob]) == "\x1e".join(["s"] * 12)
    assert await redis.dbsize() == 0
