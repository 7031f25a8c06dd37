"""An application queueing messages through gatewayd.client, in its own process.

    python -m bench.client_producer REDIS_URL N RUN send|send_many

Builds bench/harness's N messages of round RUN and connects, prints ``ready``, waits for
a line on stdin, then queues them all (Client.send in chunks of 2,000, or
Client.send_many) and prints JSON ``{"t0": ..., "t1": ..., "ids": N}`` (wall clock
around the call). Its own process, so that bench/kannel.py counts the producer's CPU
apart from gatewayd's and its own.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from bench import harness
from gatewayd.client import Client


async def produce(url: str, n: int, run: int, api: str) -> dict[str, float]:
    items = harness.make_messages(n, run=run)
    async with Client(url, prefix=harness.PREFIX) as c:
        await c.redis.ping()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        t0 = time.time()
        if api == "send_many":
            res = await c.send_many(items, source="bench")
        else:
            res = await c.send(items, source="bench", chunk=2000)
        t1 = time.time()
    return {"t0": t0, "t1": t1, "ids": len(res)}


def main() -> None:
    url, n, run, api = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency of gatewayd
        pass
    print(json.dumps(asyncio.run(produce(url, n, run, api))), flush=True)


if __name__ == "__main__":
    main()
