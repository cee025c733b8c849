"""The `dimse` command: echo, store, serve. A thin shell over the library.

Options follow dcmtk's tools where they have a name there (-aet, -aec, -pdu, -od,
+r/-r ...), so a storescu/storescp user feels at home.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import signal
import ssl
import sys
import time
from collections.abc import Iterator, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dimse import __version__, tls
from dimse.client import AssociationError, connect, default_contexts
from dimse.negotiation import DEFAULT_MAX_PDU, MAX_ASYNC_OPS
from dimse.pdu import UserIdentityRQ, UserIdentityType
from dimse.policies import DuplicatePolicy, Layout, SyncMode
from dimse.sender import Client, Kind, Proposal, StoreResult, Summary
from dimse.sop_classes import VERIFICATION, all_transfer_syntaxes, registry
from dimse.status import Category, category, describe
from dimse.transport import DEFAULT_MAX_BUFFERED, Timeouts, event_loop_factory

# The archive's modules (server, storage, index, hooks, identity) are imported by
# the commands that use them: `dimse store` and `dimse echo` start ~20 ms sooner.
if TYPE_CHECKING:
    from dimse.identity import UsersFile
    from dimse.server import AllowRule

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


def _allow_rule(value: str) -> AllowRule:
    from dimse.server import AllowRule

    try:
        return AllowRule.parse(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value!r}")
    return int(value)


def _max_pdu(value: str) -> int:
    if not value.isdigit() or not (int(value) == 0 or 4096 <= int(value) <= 1 << 26):
        raise argparse.ArgumentTypeError(f"max PDU must be 0 or 4096..67108864: {value!r}")
    return int(value)


def _enum_option(
    parser: argparse.ArgumentParser, flag: str, default: Enum, description: str
) -> None:
    """An option whose values are those of `default`'s enum."""
    choices = [member.value for member in type(default)]
    parser.add_argument(flag, choices=choices, default=default.value, help=description)


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {value!r}")
    return int(value)


def _megabytes(value: str) -> int:
    """A positive whole number of MiB, as bytes."""
    if not value.isdigit() or not 1 <= int(value) <= 1 << 20:
        raise argparse.ArgumentTypeError(f"not a size in MiB (1..1048576): {value!r}")
    return int(value) << 20


def _count(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"not a count: {value!r}")
    return int(value)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {value!r}")
    return seconds


_UID_SYNTAX = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")


def _uid(value: str) -> str:
    """A UID, or the keyword pydicom's registry knows it by (CTImageStorage...)."""
    if len(value) <= 64 and _UID_SYNTAX.fullmatch(value):  # PS3.5 §9.1
        return value
    found = next((uid for uid, entry in registry().items() if entry[4] == value), None)
    if found is None:
        raise argparse.ArgumentTypeError(f"neither a UID nor a known UID keyword: {value!r}")
    return found


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
        help=f"maximum PDU we receive, 0 = the largest (64 MiB) ({DEFAULT_MAX_PDU})",
    )
    parser.add_argument(
        "-to", "--timeout", type=_seconds, default=30.0, help="connect/ACSE timeout, s (30)"
    )
    parser.add_argument(
        "-td", "--dimse-timeout", type=_seconds, default=60.0, help="response timeout, s (60)"
    )
    identity = parser.add_argument_group("user identity (PS3.7 D.3.3.7)")
    identity.add_argument("+usr", "--user", help="user name to identify with")
    identity.add_argument("+pwd", "--password", help="its password")
    tls = parser.add_argument_group("TLS (PS3.15 Annex B.1)")
    tls.add_argument("--tls", action="store_true", help="connect with TLS")
    tls.add_argument("--tls-ca", type=Path, help="CA certificates to verify the peer with")
    tls.add_argument("--tls-cert", type=Path, help="our certificate (PEM), for client auth")
    tls.add_argument("--tls-key", type=Path, help="our private key (PEM)")
    tls.add_argument(
        "--tls-no-verify", action="store_true", help="do not verify the peer's certificate"
    )


def _user_identity(args: argparse.Namespace) -> UserIdentityRQ | None:
    if args.user is None:
        if args.password is not None:
            raise UsageError(f"dimse {args.command}: --password needs --user")
        return None
    if args.password is None:
        return UserIdentityRQ(UserIdentityType.USERNAME, False, args.user.encode())
    return UserIdentityRQ(
        UserIdentityType.USERNAME_AND_PASSCODE, False, args.user.encode(), args.password.encode()
    )


def _client_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not (args.tls or args.tls_ca or args.tls_cert):
        return None
    try:
        return tls.client_context(
            args.tls_ca, args.tls_cert, args.tls_key, verify=not args.tls_no_verify
        )
    except (OSError, ssl.SSLError) as error:
        raise UsageError(f"dimse {args.command}: TLS set-up failed: {error}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dimse", description="DICOM C-ECHO / C-STORE, client and archive")
    parser.add_argument("--version", action="version", version=f"dimse {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    echo = commands.add_parser("echo", help="C-ECHO an SCP (verification)", prefix_chars="-+")
    _client_options(echo)
    echo.add_argument("-r", "--repeat", type=_positive, default=1, help="number of C-ECHOs")
    _common(echo)

    store = commands.add_parser(
        "store", help="C-STORE files and folders to an SCP", prefix_chars="-+"
    )
    _client_options(store)
    store.add_argument("paths", nargs="+", metavar="PATH", help="files, folders, globs")
    store.add_argument(
        "-r", "+r", "--recurse", action="store_true", help="descend into sub-folders"
    )
    store.add_argument(
        "--async-ops",
        type=_positive,
        default=MAX_ASYNC_OPS,
        help=f"C-STOREs in flight on each association ({MAX_ASYNC_OPS}; 1 = synchronous)",
    )
    store.add_argument(
        "--associations", type=_positive, default=1, help="parallel associations (1)"
    )
    _enum_option(
        store,
        "--propose",
        Proposal.FILE,
        "transfer syntaxes to propose: file = each file's own plus explicit and "
        "implicit little endian (default), little = explicit and implicit little endian "
        "only, implicit = implicit little endian only; others are converted",
    )
    store.add_argument(
        "--retries",
        type=_count,
        default=0,
        help="reopen a failed association this many times for unacknowledged files (0)",
    )
    store.add_argument(
        "--retry-delay", type=_seconds, default=1.0, help="first retry delay, doubling, s (1)"
    )
    store.add_argument("--report", type=Path, help="write one JSON line per file to this file")
    store.add_argument(
        "--progress",
        choices=["auto", "bar", "lines"],
        default="auto",
        help="a progress bar on a terminal, one line per file otherwise (auto)",
    )
    _common(store)

    serve = commands.add_parser(
        "serve",
        help="run the storage SCP (archive)",
        description="A storage SCP that files every received instance durably and indexes "
        "it. Options may also come from a TOML file (--config) whose keys are the long "
        "option names; options given here override it.",
    )
    serve.add_argument("port", type=_port, nargs="?", help="TCP port (11112)")
    serve.add_argument("--port", dest="port_option", type=_port, help=argparse.SUPPRESS)
    serve.add_argument("--config", type=Path, help="TOML file of options")
    serve.add_argument("-aet", "--ae-title", type=_ae_title, default="DIMSE", help="(DIMSE)")
    serve.add_argument(
        "-od", "--output-directory", type=Path, default=Path("DICOM"), help="archive root (./DICOM)"
    )
    serve.add_argument("--bind", default="0.0.0.0", help="address to listen on (0.0.0.0)")
    _enum_option(
        serve,
        "--layout",
        Layout.STUDY,
        "folders: study = Study/Series/SOP.dcm (default), patient = PatientID/Study/"
        "Series/SOP.dcm, date = StudyDate/Study/Series/SOP.dcm, flat = SOP.dcm",
    )
    _enum_option(
        serve,
        "--duplicates",
        DuplicatePolicy.KEEP,
        "a SOP instance stored again: keep the first and answer Success (default), "
        "overwrite it, or reject it with 0111",
    )
    _enum_option(
        serve,
        "--sync",
        SyncMode.FILE,
        "before answering Success: fsync each file (default), or sync the archive's "
        "whole file system once per group of files (faster; Linux 5.8+; best on a volume "
        "of its own, as it also flushes other programs' writes)",
    )
    serve.add_argument(
        "--no-called-ae-check",
        action="store_true",
        help="accept any called AE title (default: must equal -aet)",
    )
    serve.add_argument(
        "--allow",
        action="append",
        type=_allow_rule,
        metavar="AET[@ADDRESS]",
        help="accept only these calling AE titles, optionally from one address (repeatable)",
    )
    serve.add_argument(
        "--accept-sop-class",
        action="append",
        type=_uid,
        metavar="UID|KEYWORD",
        help="accept only these SOP classes (repeatable; default: every storage SOP class)",
    )
    serve.add_argument(
        "--accept-transfer-syntax",
        action="append",
        type=_uid,
        metavar="UID|KEYWORD",
        help="accept only these transfer syntaxes (repeatable; default: all)",
    )
    serve.add_argument(
        "-pdu", "--max-pdu", type=_max_pdu, default=DEFAULT_MAX_PDU, help="max PDU we receive"
    )
    serve.add_argument(
        "--max-associations", type=_positive, default=50, help="simultaneous associations (50)"
    )
    serve.add_argument(
        "--idle-timeout", type=_seconds, default=300.0, help="abort silent associations, s (300)"
    )
    serve.add_argument(
        "--shutdown-grace",
        type=_seconds,
        default=30.0,
        help="on SIGTERM/SIGINT, let associations finish this long, s (30)",
    )
    serve.add_argument(
        "--exec-on-reception",
        metavar="COMMAND",
        help="run for each stored instance; #p path, #f file name, #a calling AE, "
        "#c called AE, #r peer address, #s study UID",
    )
    serve.add_argument(
        "--exec-on-study",
        metavar="COMMAND",
        help="run for each study an association brought, when it ends; #p study folder",
    )
    serve.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="processes serving the port together (SO_REUSEPORT), to use several cores (1)",
    )
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument(
        "--max-associations-per-ae",
        type=_count,
        default=0,
        help="simultaneous associations from one calling AE title (0 = no own limit)",
    )
    serve.add_argument(
        "--max-dataset-size",
        type=_positive,
        default=1 << 32,
        help="largest data set accepted, bytes; beyond it A700 (4294967296)",
    )
    serve.add_argument(
        "--max-buffered",
        type=_megabytes,
        default=DEFAULT_MAX_BUFFERED,
        metavar="MB",
        help="MiB all associations together may hold in partially received PDUs; "
        f"beyond it they stop reading until there is room ({DEFAULT_MAX_BUFFERED >> 20})",
    )
    security = serve.add_argument_group("security (PS3.15 TLS, PS3.7 user identity)")
    security.add_argument("--tls-cert", type=Path, help="our certificate (PEM): serve TLS")
    security.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    security.add_argument("--tls-ca", type=Path, help="CA certificates to verify clients with")
    security.add_argument(
        "--require-client-cert", action="store_true", help="refuse clients without a certificate"
    )
    security.add_argument(
        "--users", type=Path, help="users file (dimse users add) to verify user identities"
    )
    security.add_argument(
        "--require-identity",
        action="store_true",
        help="reject associations without a valid user identity (needs --users)",
    )
    _common(serve)

    users = commands.add_parser("users", help="add a user to a users file (for --users)")
    users.add_argument("action", choices=["add"])
    users.add_argument("file", type=Path, help="the users file (created if missing)")
    users.add_argument("name", help="user name")
    users.add_argument(
        "--no-password", action="store_true", help="identify by name alone (identity type 1)"
    )
    _common(users)

    index = commands.add_parser("index", help="check or rebuild the archive's index")
    index.add_argument("action", choices=["check", "rebuild"])
    index.add_argument("-od", "--output-directory", type=Path, default=Path("DICOM"))
    _common(index)

    ls = commands.add_parser("ls", help="list the studies the archive holds")
    ls.add_argument("-od", "--output-directory", type=Path, default=Path("DICOM"))
    _common(ls)
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
        user_identity=_user_identity(args),
        ssl_context=_client_tls(args),
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


async def _store(args: argparse.Namespace) -> int:
    report = None
    if args.report:
        import json  # only for --report: ~3 ms of every other start-up

        try:
            report = args.report.open("w")
        except OSError as error:
            raise UsageError(f"dimse store: cannot write {args.report}: {error.strerror}") from None
    try:
        with _progress_display(args) as show:

            def on_result(result: StoreResult) -> None:
                show(result)
                if report is not None:
                    report.write(json.dumps(result.as_json()) + "\n")

            client = Client(
                args.host,
                args.port,
                calling_ae=args.calling_ae,
                called_ae=args.called_ae,
                max_pdu=args.max_pdu,
                async_ops=args.async_ops,
                associations=args.associations,
                proposal=Proposal(args.propose),
                retries=args.retries,
                retry_delay=args.retry_delay,
                user_identity=_user_identity(args),
                ssl_context=_client_tls(args),
                timeouts=_timeouts(args),
                on_result=on_result,
            )
            try:
                for path in args.paths:
                    client.add_request(path, recurse=args.recurse)
            except FileNotFoundError as error:
                raise UsageError(f"dimse store: {error}") from None
            if not client.requests:
                raise UsageError("dimse store: no DICOM files to send")
            show.total(sum(r.size for r in client.requests), len(client.requests))
            started = time.perf_counter()
            results = await client.send()
            summary = Summary(results, time.perf_counter() - started)
    finally:
        if report is not None:
            report.close()
    print(summary)
    if any(r.association_failed for r in results):
        return EXIT_NO_ASSOCIATION
    if summary.count(Kind.FAILURE) or summary.count(Kind.NOT_SENT):
        return EXIT_FAILED
    return EXIT_OK


#: C0 and C1 control characters, DEL included.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    """Text from a peer or a data set as a terminal shows it: a control character
    (an escape sequence in a patient's name, a newline in an error comment) is
    written as \\xNN, not obeyed."""
    return _CONTROL.sub(lambda found: f"\\x{ord(found[0]):02x}", text)


class _PrintableFormatter(logging.Formatter):
    """Log lines quote peers (AE titles, UIDs, comments): _printable() each message."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return _printable(super().formatMessage(record))


def _result_line(result: StoreResult) -> str:
    comment = f" ({result.error_comment})" if result.error_comment else ""
    return _printable(f"{result.source}: {result.description}{comment}")


class _Lines:
    """One line per file: for logs, pipes and scripts."""

    def __call__(self, result: StoreResult) -> None:
        print(_result_line(result), flush=True)

    def total(self, size: int, count: int) -> None:
        return None


class _Bar(_Lines):
    """A rich progress bar (files, bytes, rate, ETA); problems still get a line."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.task = progress.add_task("sending", total=None)

    def __call__(self, result: StoreResult) -> None:
        if result.kind not in (Kind.SUCCESS,):  # a path may hold "[/]": no markup
            self.progress.console.print(_result_line(result), markup=False, highlight=False)
        self.progress.update(self.task, advance=max(result.size, 1))

    def total(self, size: int, count: int) -> None:
        self.progress.update(self.task, total=max(size, count), description=f"{count} files")


@contextlib.contextmanager
def _progress_display(args: argparse.Namespace) -> Iterator[_Lines]:
    wanted = args.progress == "bar" or (args.progress == "auto" and sys.stdout.isatty())
    if not wanted or args.quiet:
        yield _Lines()
        return
    try:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
    except ImportError:
        yield _Lines()  # rich is the optional `progress` extra
        return
    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress("{task.description}", *columns, transient=True) as progress:
        yield _Bar(progress)


# --- serve -----------------------------------------------------------------------


def _syntaxes(args: argparse.Namespace) -> dict[str, frozenset[str]]:
    from dimse.server import default_syntaxes

    syntaxes = dict(default_syntaxes())
    if args.accept_sop_class:
        syntaxes = {uid: ts for uid, ts in syntaxes.items() if uid == VERIFICATION}
        everything = frozenset(all_transfer_syntaxes())
        syntaxes |= {uid: everything for uid in args.accept_sop_class if uid != VERIFICATION}
    if args.accept_transfer_syntax:
        chosen = frozenset(args.accept_transfer_syntax)
        syntaxes = {uid: ts if uid == VERIFICATION else chosen for uid, ts in syntaxes.items()}
    return syntaxes


def _raise_open_files_limit() -> None:
    """The soft limit on open files up to the hard one, as servers do: a filing round
    holds its files open (up to MAX_ROUND), each association a socket, and a login
    shell's soft limit is often 1024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:  # up to the hard limit: always allowed
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.debug("open files limit raised from %d to %d", soft, hard)


async def _serve(args: argparse.Namespace) -> int:
    import sqlite3

    from dimse.hooks import CommandRunner, on_reception, on_study
    from dimse.server import Server, ServerOptions
    from dimse.storage import StorageProvider

    port = args.port or args.port_option or 11112
    # Every option checked before the archive is opened: a usage error creates nothing.
    options = ServerOptions(
        ae_title=args.ae_title,
        syntaxes=_syntaxes(args),
        check_called_ae=not args.no_called_ae_check,
        allow=None if args.allow is None else tuple(args.allow),
        max_pdu=args.max_pdu,
        max_associations=args.max_associations,
        max_associations_per_ae=args.max_associations_per_ae,
        max_dataset_size=args.max_dataset_size,
        max_buffered_bytes=args.max_buffered,
        timeouts=Timeouts(idle=args.idle_timeout),
        ssl_context=_server_tls(args),
        identity=_users_file(args),
        require_identity=args.require_identity,
        reuse_port=args.workers > 1 or args.worker,
    )
    _raise_open_files_limit()
    runner = CommandRunner()
    try:
        provider = StorageProvider(
            args.output_directory,
            layout=Layout(args.layout),
            duplicates=DuplicatePolicy(args.duplicates),
            on_stored=[on_reception(args.exec_on_reception, runner)]
            if args.exec_on_reception
            else [],
            on_study=[on_study(args.exec_on_study, runner)] if args.exec_on_study else [],
            clean_temp=not args.worker,
            sync=SyncMode(args.sync),
        )
    except ValueError as error:
        raise UsageError(f"dimse serve: --sync {args.sync}: {error}") from None
    except (OSError, sqlite3.Error) as error:
        raise UsageError(
            f"dimse serve: cannot open {args.output_directory}: {error}{_rebuild_hint(error)}"
        ) from None
    server = Server(provider, args.bind, port, options)
    # Before listening: a SIGTERM just after the "listening" line is a shutdown too.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
    except OSError as error:
        provider.close()
        message = f"dimse serve: cannot listen on port {port}: {error.strerror}"
        raise UsageError(message) from None
    workers = [] if args.worker else await _start_workers(args)
    print(
        f"dimse serve: {args.ae_title} listening on {args.bind}:{server.port}, "
        f"archive {args.output_directory} ({provider.index.count()} instances"
        f"{f', {args.workers} processes' if workers else ''})",
        flush=True,
    )
    await stop.wait()
    log.info("shutting down: no new associations, %.0f s for running ones", args.shutdown_grace)
    for worker in workers:
        if worker.returncode is None:
            worker.terminate()  # each finishes its own associations, as this one does
    await server.close(args.shutdown_grace)
    for worker in workers:
        await worker.wait()
    await runner.wait()
    provider.close()
    return EXIT_OK


async def _start_workers(args: argparse.Namespace) -> list[asyncio.subprocess.Process]:
    """`--workers N`: N - 1 more processes on the same port and archive.

    The kernel spreads new connections over the processes (SO_REUSEPORT), so the
    archive uses several cores; limits such as --max-associations are per process.
    """
    if args.workers == 1:
        return []
    argv = [*args.argv, "--worker", "-q"]
    return [
        await asyncio.create_subprocess_exec(sys.executable, "-m", "dimse", *argv)
        for _ in range(args.workers - 1)
    ]


def _server_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.tls_cert is None:
        if args.tls_key or args.tls_ca or args.require_client_cert:
            raise UsageError("dimse serve: TLS options need --tls-cert")
        return None
    try:
        return tls.server_context(
            args.tls_cert, args.tls_key, args.tls_ca, require_client_cert=args.require_client_cert
        )
    except (OSError, ssl.SSLError, ValueError) as error:
        raise UsageError(f"dimse serve: TLS set-up failed: {error}") from None


def _users_file(args: argparse.Namespace) -> UsersFile | None:
    from dimse.identity import UsersFile

    if args.users is None:
        if args.require_identity:
            raise UsageError("dimse serve: --require-identity needs --users FILE")
        return None
    try:
        return UsersFile(args.users)
    except (OSError, ValueError) as error:
        raise UsageError(f"dimse serve: cannot read users file: {error}") from None


async def _users(args: argparse.Namespace) -> int:
    import getpass

    from dimse.identity import add_user

    password = None
    if not args.no_password:
        if sys.stdin.isatty():
            password = getpass.getpass(f"password for {args.name}: ")
        else:  # scripted: the first line of standard input
            password = sys.stdin.readline().rstrip("\n")
        if not password:
            raise UsageError("dimse users: empty password (use --no-password for none)")
    try:
        add_user(args.file, args.name, password)
    except (OSError, ValueError) as error:
        raise UsageError(f"dimse users: {error}") from None
    print(f"{args.name} added to {args.file}")
    return EXIT_OK


# --- index, ls -------------------------------------------------------------------


def _archive_root(args: argparse.Namespace, *, with_index: bool = True) -> Path:
    """The archive folder; `with_index=False` for a rebuild, which recreates a lost index."""
    from dimse.storage import INDEX_FILE

    root: Path = args.output_directory
    if not root.is_dir() or (with_index and not (root / INDEX_FILE).exists()):
        raise UsageError(f"dimse {args.command}: no archive in {root} (no {INDEX_FILE})")
    return root


@contextlib.contextmanager
def _reading_index(args: argparse.Namespace, root: Path) -> Iterator[None]:
    """A damaged or unreadable index: one line, and what repairs it."""
    import sqlite3

    from dimse.storage import INDEX_FILE

    try:
        yield
    except sqlite3.Error as error:
        command = f"dimse {args.command}" + (f" {args.action}" if args.command == "index" else "")
        hint = "" if "rebuild" in command else _rebuild_hint(error)
        raise UsageError(f"{command}: cannot read {root / INDEX_FILE}: {error}{hint}") from None


def _rebuild_hint(error: Exception) -> str:
    from dimse.index import is_damage

    return " (dimse index rebuild recreates the index)" if is_damage(error) else ""


async def _index(args: argparse.Namespace) -> int:
    from dimse.storage import check_index, rebuild_index

    root = _archive_root(args, with_index=args.action == "check")
    if args.action == "rebuild":
        with _reading_index(args, root):
            count, left_out = await asyncio.to_thread(rebuild_index, root)
        for line in left_out:  # a parse error may quote the file's bytes
            print(_printable(line), file=sys.stderr)
        print(f"indexed {count} instance(s) from {root}")
        return EXIT_FAILED if left_out else EXIT_OK
    with _reading_index(args, root):
        report = await asyncio.to_thread(check_index, root)
    for label, paths in (
        ("indexed but missing", report.missing_files),
        ("size differs from index", report.wrong_size),
        ("not in the index", report.unindexed),
    ):
        for path in paths:
            print(_printable(f"{label}: {path}"))
    verdict = "consistent" if report.consistent else "INCONSISTENT"
    print(f"{report.indexed} indexed instance(s): {verdict}")
    return EXIT_OK if report.consistent else EXIT_FAILED


async def _ls(args: argparse.Namespace) -> int:
    from dimse.index import Index
    from dimse.storage import INDEX_FILE

    root = _archive_root(args)
    with _reading_index(args, root):
        index = Index(root / INDEX_FILE)
        try:
            studies = index.studies()
        finally:
            index.close()
    header = ("PATIENT ID", "PATIENT NAME", "DATE", "MODALITY", "SERIES", "IMAGES", "MB")
    rows = [
        (
            _printable(s.patient_id),
            _printable(s.patient_name),
            _printable(s.study_date),
            _printable(s.modalities),
            str(s.series),
            str(s.instances),
            f"{s.size / 1e6:.1f}",
        )
        for s in studies
    ]
    for line in _table([header, *rows]):
        print(line)
    print(f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'}")
    return EXIT_OK


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns aligned on a terminal, where CJK characters take two cells (patient
    names in Japanese, Korean or Chinese character sets) and combining marks none."""
    import unicodedata

    def cells(text: str) -> int:
        return sum(
            0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
            for c in text
        )

    def padded(cell: str, width: int) -> str:
        return cell + " " * (width - cells(cell))

    widths = [max(cells(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(map(padded, row, widths)) for row in rows]


def _configure_logging(args: argparse.Namespace) -> None:
    """The server logs a line per association and instance; clients only problems."""
    base = logging.INFO if args.command == "serve" else logging.WARNING
    level = logging.ERROR if args.quiet else max(logging.DEBUG, base - 10 * args.verbose)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def _serve_options() -> dict[str, argparse.Action]:
    """`serve`'s long options by name, those a config file may set."""
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: action
        for action in commands.choices["serve"]._actions
        for name in action.option_strings
        if name.startswith("--") and name not in ("--help", "--config")
    }


def _with_config(argv: list[str]) -> list[str]:
    """`serve --config FILE`: the file's options first, so the command line overrides them."""
    if not argv or argv[0] != "serve" or "--config" not in argv:
        return argv
    at = argv.index("--config")
    if at + 1 >= len(argv):
        raise UsageError("dimse serve: --config needs a file name")
    path = Path(argv[at + 1])
    import tomllib

    try:
        settings = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"dimse serve: cannot read config {path}: {error}") from None
    known = _serve_options()
    options: list[str] = []
    for key, value in settings.items():
        option = "--" + key.replace("_", "-")
        action = known.get(option)
        if action is None:  # checked here: argparse would take a prefix of an option
            raise UsageError(f"dimse serve: config {path}: unknown option {key!r}")
        if action.nargs == 0:  # a flag (true/false) or a count (verbose = 2)
            if not isinstance(value, int):
                raise UsageError(f"dimse serve: config {path}: {key} must be true or false")
            options += [option] * int(value)
        elif isinstance(value, list):
            for item in value:
                options += [option, str(item)]
        elif isinstance(value, dict):
            raise UsageError(f"dimse serve: config {path}: {key} is a table, not an option")
        else:
            options += [option, str(value)]
    return ["serve", *options, *argv[1:]]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        arguments = list(sys.argv[1:] if argv is None else argv)
        args = build_parser().parse_args(_with_config(arguments))
        args.argv = arguments
        _configure_logging(args)
        commands = {
            "echo": _echo,
            "store": _store,
            "serve": _serve,
            "index": _index,
            "ls": _ls,
            "users": _users,
        }
        try:
            loop_factory = event_loop_factory()
        except ValueError as error:
            raise UsageError(f"dimse: {error}") from None
        with asyncio.Runner(loop_factory=loop_factory) as loop:
            log.debug("event loop: %s", type(loop.get_loop()).__module__)
            return loop.run(commands[args.command](args))
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
