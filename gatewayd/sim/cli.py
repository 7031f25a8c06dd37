"""`gatewayd smsc-sim` / `python -m gatewayd.sim`: run a simulator until SIGINT/SIGTERM.

``--protocol smpp`` (the default) runs the SMPP 3.4 SMSC, ``--protocol cmpp`` the CMPP
2.0/3.0 ISMG (default port 7890); the fault options apply to both where CMPP has the
same fault (--throttle is Result 8 "flow control", --error-status the Result).
Prints ``listening <host>:<port>`` on stdout once the port is open (scripts that start it
with --port 0 read the port from there) and a one-line stats summary to stderr every
--stats-interval seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Protocol

from gatewayd.sim.cmpp.ismg import IsmgSettings, IsmgSimulator
from gatewayd.sim.smpp.settings import SimSettings
from gatewayd.sim.smpp.smsc import SmscSimulator

log = logging.getLogger("gatewayd.sim")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SimSettings()
    a = parser.add_argument
    a("--protocol", choices=("smpp", "cmpp"), default="smpp",
      help="simulate an SMPP SMSC or a CMPP ISMG (default %(default)s)")
    a("--host", default=d.host, help="listen address (default %(default)s)")
    a("--port", type=int, default=None,
      help="listen port, 0 = any free (default 2775; CMPP 7890)")
    a("--system-id", default=d.system_id, help="accepted system_id (default %(default)s)")
    a("--password", default=d.password, help="accepted password (default %(default)s)")
    a("--no-receipts", action="store_true", help="never send delivery receipts")
    a("--receipt-delay", type=float, default=d.receipt_delay_s, metavar="S",
      help="seconds from submit_sm to its receipt (default %(default)s)")
    a("--receipt-stat", default=d.receipt_stat, help="stat of receipts (default %(default)s)")
    a("--undeliverable", type=float, default=0.0, metavar="FRACTION",
      help="fraction of receipts with stat UNDELIV")
    a("--id-format", choices=("hex", "decimal", "uuid"), default=d.id_format,
      help="message_id format in submit_sm_resp (default %(default)s)")
    a("--receipt-id-format", choices=("same", "decimal", "hex"), default=d.receipt_id_format,
      help="id form in receipts (default %(default)s)")
    a("--first-id", type=int, default=0, metavar="N",
      help="hex/decimal ids count up from N, hex unpadded (node-smpp-like small "
           "sequential ids); 0: from a random base")
    a("--receipt-seconds", action="store_true", help="receipt dates as YYMMDDhhmmss")
    a("--early-receipts", type=float, default=0.0, metavar="FRACTION",
      help="fraction of receipts sent before their submit_sm_resp")
    a("--throttle", type=float, default=0.0, metavar="FRACTION",
      help="fraction of submit_sm answered ESME_RTHROTTLED")
    a("--error", type=float, default=0.0, metavar="FRACTION",
      help="fraction of submit_sm answered with --error-status")
    a("--error-status", type=lambda v: int(v, 0), default=None,
      help="status for --error (default 0x45 ESME_RSUBMITFAIL; CMPP: Result 13)")
    a("--unanswered", type=float, default=0.0, metavar="FRACTION",
      help="fraction of submit_sm / CMPP SUBMITs never answered (the client times out)")
    a("--receipts-to", choices=("submitter", "any"), default=d.receipts_to,
      help="receipts to the submitting bind when it can receive, or to any receiver "
           "of the account in turn (default %(default)s)")
    a("--max-tps", type=float, default=0.0, help="throttle above this rate (0 = unlimited)")
    a("--response-delay", type=float, default=0.0, metavar="S",
      help="delay every submit_sm_resp (a slow SMSC)")
    a("--drop-after", type=int, default=0, metavar="N",
      help="close a connection after N submit_sm (0 = never)")
    a("--max-binds", type=int, default=0, help="refuse binds beyond this many (0 = unlimited)")
    a("--receipt-resend", type=float, default=d.receipt_resend_s, metavar="S",
      help="re-send a deliver_sm unanswered for this long (default %(default)s)")
    a("--receipt-attempts", type=int, default=d.receipt_max_attempts, metavar="N",
      help="give up on a deliver_sm after N unanswered or refused sends (the SMSC's "
           "patience; default %(default)s)")
    a("--enquire-link", type=float, default=0.0, metavar="S",
      help="send enquire_link to bound ESMEs this often (0 = never)")
    a("--tls-cert", default="", help="serve SMPP over TLS with this certificate (PEM)")
    a("--tls-key", default="", help="private key for --tls-cert (PEM)")
    a("--seed", type=int, default=None, help="seed the fault dice (reproducible runs)")
    a("--keep-submissions", type=int, default=0, metavar="N",
      help="submissions kept in memory (default 0: the CLI has no use for them)")
    c = IsmgSettings()
    a("--sp-id", default=c.sp_id, help="CMPP: the accepted SP_Id (default %(default)s)")
    a("--secret", default=c.secret, help="CMPP: the shared secret (default %(default)s)")
    a("--cmpp-version", choices=("any", "2.0", "3.0"), default=c.version,
      help="CMPP: versions accepted (default %(default)s)")
    a("--failure-stat", default=c.failure_stat,
      help="CMPP: Stat of failed reports, e.g. MK:0001 (default %(default)s)")
    a("--stats-interval", type=float, default=5.0, metavar="S",
      help="seconds between stats lines on stderr (0 = none)")
    a("--no-uvloop", action="store_true", help="use the stdlib event loop")
    a("--log-level", default="INFO", help="log level (default %(default)s)")


def settings_from(args: argparse.Namespace) -> SimSettings:
    d = SimSettings()
    return SimSettings(
        host=args.host, port=2775 if args.port is None else args.port,
        system_id=args.system_id, password=args.password,
        receipts=not args.no_receipts, receipt_delay_s=args.receipt_delay,
        receipt_stat=args.receipt_stat, undeliverable_fraction=args.undeliverable,
        id_format=args.id_format, receipt_id_format=args.receipt_id_format,
        first_id=args.first_id,
        receipt_dates_with_seconds=args.receipt_seconds,
        early_receipt_fraction=args.early_receipts, throttle_fraction=args.throttle,
        error_fraction=args.error, max_tps=args.max_tps,
        error_status=d.error_status if args.error_status is None else args.error_status,
        unanswered_fraction=args.unanswered, receipts_to=args.receipts_to,
        response_delay_s=args.response_delay, drop_after=args.drop_after,
        max_binds=args.max_binds, tls_cert=args.tls_cert, tls_key=args.tls_key,
        seed=args.seed, receipt_resend_s=args.receipt_resend,
        receipt_max_attempts=args.receipt_attempts,
        enquire_link_s=args.enquire_link,
        keep_submissions=args.keep_submissions,
    )


def ismg_settings_from(args: argparse.Namespace) -> IsmgSettings:
    if args.tls_cert:
        raise ValueError("--tls-cert: the CMPP simulator speaks plain TCP")
    return IsmgSettings(
        host=args.host, port=7890 if args.port is None else args.port, sp_id=args.sp_id,
        secret=args.secret, version=args.cmpp_version, receipts=not args.no_receipts,
        receipt_delay_s=args.receipt_delay, receipt_stat=args.receipt_stat,
        undeliverable_fraction=args.undeliverable, failure_stat=args.failure_stat,
        flow_control_fraction=args.throttle, error_fraction=args.error,
        error_result=13 if args.error_status is None else args.error_status,
        unanswered_fraction=args.unanswered, max_tps=args.max_tps,
        response_delay_s=args.response_delay, drop_after=args.drop_after,
        max_binds=args.max_binds, receipt_resend_s=args.receipt_resend,
        active_test_s=args.enquire_link, keep_submissions=args.keep_submissions,
        seed=args.seed,
    )


class _Stats(Protocol):
    def summary(self) -> str: ...


class _Simulator(Protocol):
    """What both simulators offer the command."""

    @property
    def stats(self) -> _Stats: ...

    async def start(self) -> int: ...

    async def stop(self, timeout_s: float = 1.0) -> None: ...


def run(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM; 0 on a clean stop, 2 for bad options, 3 if it cannot start."""
    try:
        sim: _Simulator = (IsmgSimulator(ismg_settings_from(args)) if args.protocol == "cmpp"
                           else SmscSimulator(settings_from(args)))
    except ValueError as e:
        print(f"smsc-sim: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr,
    )
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(_serve(sim, args.host, args.stats_interval))
    return asyncio.run(_serve(sim, args.host, args.stats_interval))


async def _serve(sim: _Simulator, host: str, stats_interval_s: float) -> int:
    try:
        port = await sim.start()
    except (OSError, ValueError) as e:
        print(f"smsc-sim: cannot start: {e}", file=sys.stderr)
        return 3
    print(f"listening {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), stats_interval_s or None)
            except TimeoutError:
                print(f"smsc-sim: {sim.stats.summary()}", file=sys.stderr, flush=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await sim.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gatewayd.sim", description="SMPP 3.4 SMSC / CMPP 2.0-3.0 ISMG simulator"
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
