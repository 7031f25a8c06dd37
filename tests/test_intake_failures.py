"""Intake when Redis fails (issue 15): every message is reported, per item, as queued
or not; the CLI says plainly that nothing was queued, without a traceback. (Per-line
reports of a partly queued file: tests/test_cluster_e2e.py's failover test.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gatewayd.cli import main as cli_main
from gatewayd.client import Client
from gatewayd.errors import IntakeError
from gatewayd.store.embedded import EmbeddedRedis, free_port
from tests.e2e_helpers import write_config


async def test_cli_and_client_report_each_message_when_redis_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = EmbeddedRedis(tmp_path / "r", port=free_port())
    url = server.start()
    try:
        async with Client(url) as client:
            # Queued while Redis answers; then it goes away between two chunks' calls.
            first = await client.send([{"to": "+8613800000001", "text": "a", "id": "q-1"}])
            assert first == [("q-1", False)]
            server.kill()
            with pytest.raises(IntakeError) as info:
                await client.send([{"to": f"+86138000000{n:02d}", "text": "b"}
                                   for n in range(5)], chunk=2)
        assert info.value.results == [None] * 5
        assert set(info.value.reasons) == set(range(5))
        path = write_config(tmp_path, redis_url=url, sim_port=1)
        jsonl = tmp_path / "batch.jsonl"
        jsonl.write_text("".join(json.dumps({"to": f"+86138000001{n:02d}", "text": "c",
                                             "id": f"l-{n}"}) + "\n" for n in range(3)),
                         encoding="utf-8")
        rc = await asyncio.to_thread(cli_main, ["enqueue", "-c", str(path), "--file",
                                                str(jsonl)])
        captured = capsys.readouterr()
        assert rc == 1
        assert captured.out == ""
        assert captured.err.startswith("gatewayd: Redis: ConnectionError")
        assert captured.err.rstrip().endswith("(nothing queued)")
    finally:
        server.stop()
