"""The `dimse` command: echo, store, serve. A thin shell over the library.

Options follow dcmtk's tools where they have a name there (-aet, -aec, -pdu, -od,
+r/-r ...), so a storescu/storescp user feels at home.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from dimse.client import (
    AssociationError,
    NoAcceptedContextError,
    connect,
    contexts_for,
    default_contexts,
)
from dimse.files import DicomFile, NotDicomError, open_dicom_file
from dimse.negotiation import DEFAULT_MAX_PDU, MAX_CONTEXTS
from dimse.server import Server, ServerOptions
from dimse.status import Category, category, describe
from dimse.storage import StorageProvider
from dimse.transport import Timeouts

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_ASSOCIATION = 0, 1, 2, 3

log = logging.getLogger("dimse")


class UsageError(Exception):
    """Bad command-line usage: one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _ae_title(value: str) -> str:
    if not 0 < len(value.strip()) <= 16 or not value.isascii() or "\\" in value:
        raise argparse.ArgumentTypeError(f"not an AE title (1-16 ASCII characters): {value!r}")
    return value


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value!r}")
    return int(value)


def _max_pdu(value: str) -> int:
    if not value.isdigit() or not (int(value) == 0 or 4096 <= int(value) <= 1 << 26):
        raise argparse.ArgumentTypeError(f"max PDU must be 0 or 4096..67108864: {value!r}")
    return int(value)


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {value!r}")
    return int(value)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {value!r}")
    return seconds


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host", help="the SCP's host name or IP address")
    parser.add_argument("port", type=_port, help="the SCP's TCP port")
    parser.add_argument(
        "-aet", "--calling-ae", type=_ae_title, default="DIMSE", help="our AE title (DIMSE)"
    )
    parser.add_argument(
        "-aec", "--called-ae", type=_ae_title, default="ANY-SCP", help="the SCP's AE title"
    )
    parser.add_argument(
        "-pdu",
        "--max-pdu",
        type=_max_pdu,
        default=DEFAULT_MAX_PDU,
        help=f"maximum PDU we receive, 0 = unlimited ({DEFAULT_MAX_PDU})",
    )
    parser.add_argument(
        "-to", "--timeout", type=_seconds, default=30.0, help="connect/ACSE timeout, s (30)"
    )
    parser.add_argument(
        "-td", "--dimse-timeout", type=_seconds, default=60.0, help="response timeout, s (60)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dimse", description="DICOM C-ECHO / C-STORE, client and archive")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    echo = commands.add_parser("echo", help="C-ECHO an SCP (verification)")
    _client_options(echo)
    echo.add_argument("-r", "--repeat", type=_positive, default=1, help="number of C-ECHOs")
    _common(echo)

    store = commands.add_parser(
        "store", help="C-STORE files and folders to an SCP", prefix_chars="-+"
    )
    _client_options(store)
    store.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    store.add_argument(
        "-r", "+r", "--recurse", action="store_true", help="descend into sub-folders"
    )
    store.add_argument(
        "--async-ops",
        type=_positive,
        default=8,
        help="C-STOREs in flight on the association (8; 1 = synchronous)",
    )
    _common(store)

    serve = commands.add_parser("serve", help="run the storage SCP (archive)")
    serve.add_argument("port", type=_port, nargs="?", default=11112, help="TCP port (11112)")
    serve.add_argument("-aet", "--ae-title", type=_ae_title, default="DIMSE", help="(DIMSE)")
    serve.add_argument(
        "-od", "--output-directory", type=Path, default=Path("DICOM"), help="(./DICOM)"
    )
    serve.add_argument("--bind", default="0.0.0.0", help="address to listen on (0.0.0.0)")
    serve.add_argument(
        "-pdu", "--max-pdu", type=_max_pdu, default=DEFAULT_MAX_PDU, help="max PDU we receive"
    )
    serve.add_argument(
        "--no-called-ae-check",
        action="store_true",
        help="accept any called AE title (default: must equal -aet)",
    )
    serve.add_argument(
        "--max-associations", type=_positive, default=50, help="simultaneous associations (50)"
    )
    serve.add_argument(
        "--idle-timeout", type=_seconds, default=300.0, help="abort silent associations, s"
    )
    _common(serve)
    return parser


def _timeouts(args: argparse.Namespace) -> Timeouts:
    return Timeouts(connect=args.timeout, acse=args.timeout, dimse=args.dimse_timeout)


# --- echo ------------------------------------------------------------------------


async def _echo(args: argparse.Namespace) -> int:
    failures = 0
    async with connect(
        args.host,
        args.port,
        calling_ae=args.calling_ae,
        called_ae=args.called_ae,
        contexts=default_contexts(),
        max_pdu=args.max_pdu,
        timeouts=_timeouts(args),
    ) as assoc:
        for _ in range(args.repeat):
            started = time.perf_counter()
            status = await assoc.echo()
            elapsed = (time.perf_counter() - started) * 1000
            print(f"C-ECHO response: {describe(status)} ({elapsed:.2f} ms)")
            failures += category(status) is not Category.SUCCESS
    return EXIT_FAILED if failures else EXIT_OK


# --- store -----------------------------------------------------------------------


def _walk(paths: Sequence[str], recurse: bool) -> Iterator[Path]:
    for name in paths:
        path = Path(name)
        if path.is_dir():
            pattern = path.rglob("*") if recurse else path.glob("*")
            yield from sorted(p for p in pattern if p.is_file())
        elif path.is_file():
            yield path
        else:
            raise UsageError(f"dimse store: no such file or folder: {name}")


async def _store(args: argparse.Namespace) -> int:
    files: list[DicomFile] = []
    for path in _walk(args.paths, args.recurse):
        try:
            files.append(open_dicom_file(path))
        except NotDicomError as error:
            print(f"skipped: {error}", file=sys.stderr)
        except OSError as error:
            print(f"skipped: {path}: {error.strerror}", file=sys.stderr)
    if not files:
        raise UsageError("dimse store: no DICOM files to send")
    contexts = contexts_for(files)
    if len(contexts) > MAX_CONTEXTS:
        raise UsageError(
            f"dimse store: {len(contexts)} SOP class/transfer syntax pairs exceed the "
            f"{MAX_CONTEXTS} presentation contexts of one association"
        )
    failed = 0
    started = time.perf_counter()
    async with connect(
        args.host,
        args.port,
        calling_ae=args.calling_ae,
        called_ae=args.called_ae,
        contexts=contexts,
        max_pdu=args.max_pdu,
        async_ops=args.async_ops,
        timeouts=_timeouts(args),
    ) as assoc:

        async def send(file: DicomFile) -> None:
            nonlocal failed
            try:
                response = await assoc.store(file)
            except NoAcceptedContextError as error:
                failed += 1
                print(f"{file.path}: not sent: {error}")
                return
            kind = category(response.status)
            failed += kind is Category.FAILURE
            comment = f" ({response.error_comment})" if response.error_comment else ""
            print(f"{file.path}: {describe(response.status)}{comment}")

        await asyncio.gather(*(send(f) for f in files))
    elapsed = time.perf_counter() - started
    total = sum(f.size for f in files)
    print(
        f"sent {len(files)} file(s), {failed} failed, {total / 1e6:.1f} MB in {elapsed:.2f} s "
        f"({len(files) / elapsed:.0f} images/s, {total / 1e6 / elapsed:.1f} MB/s)"
    )
    return EXIT_FAILED if failed else EXIT_OK


# --- serve -----------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> int:
    provider = StorageProvider(args.output_directory)
    options = ServerOptions(
        ae_title=args.ae_title,
        check_called_ae=not args.no_called_ae_check,
        max_pdu=args.max_pdu,
        max_associations=args.max_associations,
        timeouts=Timeouts(idle=args.idle_timeout),
    )
    server = Server(provider, args.bind, args.port, options)
    try:
        await server.start()
    except OSError as error:
        raise UsageError(
            f"dimse serve: cannot listen on port {args.port}: {error.strerror}"
        ) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(
        f"dimse serve: {args.ae_title} listening on {args.bind}:{server.port}, "
        f"storing into {args.output_directory}",
        flush=True,
    )
    await stop.wait()
    log.info("shutting down")
    await server.close()
    return EXIT_OK


def _configure_logging(args: argparse.Namespace) -> None:
    """The server logs a line per association and instance; clients only problems."""
    base = logging.INFO if args.command == "serve" else logging.WARNING
    level = logging.ERROR if args.quiet else max(logging.DEBUG, base - 10 * args.verbose)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        _configure_logging(args)
        runner = {"echo": _echo, "store": _store, "serve": _serve}[args.command]
        return asyncio.run(runner(args))
    except UsageError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    except AssociationError as error:
        print(f"dimse: {error}", file=sys.stderr)
        return EXIT_NO_ASSOCIATION
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
