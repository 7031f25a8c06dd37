"""SMPP over TLS, and the simulator as a command (`python -m gatewayd.sim`)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gatewayd.sim import cli
from gatewayd.sim.smpp.rawclient import SUBMIT, R, RawClient
from gatewayd.sim.smpp.smsc import SimSettings, SmscSimulator


def _self_signed(d: Path) -> tuple[Path, Path]:
    cert, key = d / "cert.pem", d / "key.pem"
    if importlib.util.find_spec("cryptography") is not None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        pk = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.UTC)
        c = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(pk.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(pk, hashes.SHA256())
        )
        cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(pk.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
        return cert, key
    if shutil.which("openssl"):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
            check=True, capture_output=True,
        )
        return cert, key
    pytest.skip("neither the cryptography package nor the openssl CLI is available")


@pytest.fixture
async def tls_sim(tmp_path: Path) -> AsyncIterator[tuple[SmscSimulator, Path]]:
    cert, key = _self_signed(tmp_path)
    sim = SmscSimulator(SimSettings(tls_cert=str(cert), tls_key=str(key), receipt_delay_s=0.01))
    await sim.start()
    yield sim, cert
    await sim.stop()


async def test_smpp_over_tls(tls_sim: tuple[SmscSimulator, Path]) -> None:
    sim, cert = tls_sim
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False  # we connect to 127.0.0.1; the cert names localhost
    c = await RawClient.connect("127.0.0.1", sim.port, tls=ctx)
    try:
        assert (await c.bind()).status == 0
        await c.submit("8613800138000", "over TLS")
        assert (await c.next(SUBMIT | R)).status == 0
        (d,) = await c.delivers(1)
        assert b"stat:DELIVRD" in d.short_message
    finally:
        await c.close()
    assert sim.texts_to("8613800138000") == ["over TLS"]


async def test_plain_client_cannot_talk_to_tls_port(
    tls_sim: tuple[SmscSimulator, Path],
) -> None:
    sim, _ = tls_sim
    c = await RawClient.connect("127.0.0.1", sim.port)
    try:
        await c.send(0x09, b"demo\0demo\0\0\x34\0\0\0")
        await c.wait_closed()
    finally:
        await c.close()
    assert sim.stats.binds == 0


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        SimSettings(tls_cert="x.pem")
    with pytest.raises(ValueError, match="error_fraction"):
        SimSettings(error_fraction=-0.1)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--throttle", "0.3", "--id-format", "decimal",
                              "--error-status", "0x58", "--receipt-seconds"])
    s = cli.settings_from(args)
    assert (s.throttle_fraction, s.id_format, s.error_status) == (0.3, "decimal", 0x58)
    assert s.receipt_dates_with_seconds and s.port == 2775
    assert cli.run(parser.parse_args(["--throttle", "3"])) == 2


async def test_python_m_gatewayd_sim_serves_and_stops_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd.sim", "--port", "0", "--receipt-delay", "0.01",
        "--stats-interval", "0.2", "--id-format", "decimal",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().split()
        assert line[0] == "listening"
        port = int(line[1].rsplit(":", 1)[1])
        c = await RawClient.connect("127.0.0.1", port)
        try:
            assert (await c.bind()).status == 0
            await c.submit("8613800138000", "hello")
            assert (await c.next(SUBMIT | R)).cstring().isdigit()
            await c.delivers(1)
            stats_line = b""
            while b"submit_sm=1" not in stats_line:
                stats_line = await asyncio.wait_for(proc.stderr.readline(), 10)
        finally:
            await c.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
