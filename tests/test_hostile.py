"""A hostile peer against the archive server over real TCP on 127.0.0.1.

Each test starts `dimse.Server(StorageProvider(tmp), "127.0.0.1", 0, ...)` in-process with
short timeouts (ARTIM 1 s, idle 2 s), misbehaves at it with raw bytes (PDUs built with
dimse.pdu, command sets with dimse.dimse or pydicom) and checks that the server

* answers with an A-ABORT PDU (the bytes 07 00 ...) or closes the connection, within the
  configured timeout;
* stores nothing it should not (no file at a final path, `.incoming` empty);
* keeps serving: a well-behaved C-ECHO (dimse.connect(...).echo()) succeeds during and after;
* never meets peer input with an unhandled exception (no traceback in its log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

import dimse
from conftest import nested_sequences, stored_files
from dimse.client import RawDataSet
from dimse.dimse import CEchoRQ, CStoreRQ, CStoreRSP, Message, decode_command, encode_command
from dimse.negotiation import ProposedContext, build_request
from dimse.pdu import (
    MAX_CONTROL_PDU,
    MAX_PDATA_CEILING,
    PDU,
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRQ,
    AbortSource,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PDUReader,
    PresentationContextRQ,
    encode,
)
from dimse.server import DataSetSink, Outcome, StoreRequest
from dimse.status import Category, Status, category
from dimse.storage import TEMP_DIR, StorageProvider, rebuild_index
from dimse.transcode import encode_dataset
from dimse.transport import Link

HOST = "127.0.0.1"
AE = "HOSTILE"
VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
IVLE = "1.2.840.10008.1.2"
EVLE = "1.2.840.10008.1.2.1"
ECHO_CONTEXT, CT_CONTEXT = 1, 3
ACSE, IDLE = 1.0, 2.0
TIMEOUTS = dimse.Timeouts(connect=2.0, acse=ACSE, dimse=10.0, idle=IDLE)
MAX_PDU = 16384
SLACK = 1.5  # scheduling slack on top of a configured timeout
TEST_LIMIT = 60.0  # no test may run longer, whatever happens

REQUEST = build_request(
    "HOSTILE_SCU",
    AE,
    [ProposedContext(VERIFICATION, (IVLE,)), ProposedContext(CT, (EVLE,))],
    max_pdu=MAX_PDU,
    async_ops=(4, 1),
)

_T = TypeVar("_T")


# --- bytes on the wire -----------------------------------------------------------------------


def pdata(context_id: int, is_command: bool, is_last: bool, data: bytes) -> bytes:
    return encode(PDataTF((PDV(context_id, is_command, is_last, data),)))


def command(context_id: int, message: Message) -> bytes:
    return pdata(context_id, True, True, encode_command(message))


def raw_command_set(**elements: Any) -> bytes:
    """A command set written by pydicom (Implicit VR LE), elements by keyword, group length
    first: how a malformed one (a required element missing...) is made."""
    dataset = Dataset()
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, dataset)
    body = fp.getvalue()
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


def pdus_of(data: bytes) -> list[PDU]:
    reader = PDUReader(0)
    reader.feed(data)
    out: list[PDU] = []
    while (pdu := reader.next_pdu()) is not None:
        out.append(pdu)
    assert reader.buffered == 0, f"a partial PDU at the end of {data.hex()}"
    return out


def provider_abort(reason: int) -> bytes:
    """A-ABORT, source 2 (service provider), PS3.8 §9.3.8 Table 9-26."""
    return bytes((0x07, 0x00, 0, 0, 0, 4, 0, 0, 2, reason))


def ct_dataset(sop_instance_uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "HOSTILE"
    ds.Modality = "CT"
    return ds


def ct_bytes(ds: Dataset) -> bytes:
    return encode_dataset(ds, EVLE)


# --- the peer --------------------------------------------------------------------------------


class RawPeer:
    """A hand-driven TCP peer: bytes out, PDUs in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, *, receive_buffer: int | None = None) -> RawPeer:
        if receive_buffer is None:
            return cls(*await asyncio.open_connection(HOST, port))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
        return cls(*await asyncio.open_connection(sock=sock))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_pdu(self, timeout: float = 5.0) -> PDU | None:
        """The next PDU; None at end of stream."""
        try:
            header = await asyncio.wait_for(self.reader.readexactly(6), timeout)
            body = await asyncio.wait_for(
                self.reader.readexactly(int.from_bytes(header[2:6], "big")), timeout
            )
        except asyncio.IncompleteReadError as error:
            assert error.partial == b"", f"stream ended inside a PDU: {error.partial.hex()}"
            return None
        except ConnectionResetError:
            return None
        return pdus_of(header + body)[0]

    async def read_to_end(self, timeout: float) -> bytes:
        """Everything until the server closes; TimeoutError if it does not within `timeout`."""
        chunks: list[bytes] = []

        async def collect() -> None:
            with contextlib.suppress(ConnectionResetError):
                while data := await self.reader.read(65536):
                    chunks.append(data)

        await asyncio.wait_for(collect(), timeout)
        return b"".join(chunks)

    async def associate(self, rq: AAssociateRQ = REQUEST) -> AAssociateAC:
        await self.send(encode(rq))
        answer = await self.read_pdu()
        assert isinstance(answer, AAssociateAC), answer
        return answer

    async def response(self, timeout: float = 5.0) -> Message:
        pdu = await self.read_pdu(timeout)
        assert isinstance(pdu, PDataTF) and pdu.pdvs[0].is_command, pdu
        return decode_command(bytes(pdu.pdvs[0].data))[0]

    def close(self) -> None:
        self.writer.transport.abort()


async def expect_abort(peer: RawPeer, timeout: float, reason: int | None = None) -> AAbort:
    """The server's answer ends with an A-ABORT, then it closes the connection in time."""
    began = time.monotonic()
    data = await peer.read_to_end(timeout)
    assert data, "the server closed without an A-ABORT"
    abort = pdus_of(data)[-1]
    assert isinstance(abort, AAbort), pdus_of(data)
    assert data[-10:-8] == b"\x07\x00"  # A-ABORT PDU type, reserved
    if reason is not None:
        assert data[-10:] == provider_abort(reason), data[-10:].hex()
    assert time.monotonic() - began <= timeout
    return abort


# --- the server ------------------------------------------------------------------------------


class Tracebacks(logging.Handler):
    """Log records carrying an exception: peer input must never produce one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


@dataclass
class Archive:
    server: dimse.Server
    storage: StorageProvider
    root: Path

    @property
    def port(self) -> int:
        return self.server.port

    async def echo(self, calling_ae: str = "GOOD_SCU") -> None:
        """A well-behaved C-ECHO must succeed."""
        async with dimse.connect(
            HOST,
            self.port,
            calling_ae=calling_ae,
            called_ae=AE,
            contexts=[ProposedContext(VERIFICATION, (IVLE,))],
            timeouts=dimse.Timeouts(connect=5, acse=5, dimse=5, idle=10),
        ) as association:
            assert await association.echo() == Status.SUCCESS

    async def settled(self, timeout: float = ACSE + IDLE + SLACK) -> None:
        """Every association of the hostile peer is over within `timeout`."""
        deadline = time.monotonic() + timeout
        while self.server.active_associations and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert self.server.active_associations == 0, "a session outlived its timeouts"

    def assert_nothing_stored(self) -> None:
        assert stored_files(self.root) == {}
        assert list((self.root / TEMP_DIR).iterdir()) == []
        assert self.storage.index.count() == 0


@contextlib.asynccontextmanager
async def serving(
    root: Path,
    storage: StorageProvider | None = None,
    *,
    provider_may_fail: bool = False,
    **options: Any,
) -> AsyncIterator[Archive]:
    """The server on an ephemeral port; on exit, no traceback may have been logged (but
    the provider's own failures, when `provider_may_fail`)."""
    storage = storage or StorageProvider(root)
    settings = {"ae_title": AE, "timeouts": TIMEOUTS, "max_pdu": MAX_PDU, **options}
    server = dimse.Server(storage, HOST, 0, dimse.ServerOptions(**settings))
    handler = Tracebacks()
    logging.getLogger("dimse").addHandler(handler)
    await server.start()
    try:
        yield Archive(server, storage, root)
    finally:
        await server.close(grace=5)
        storage.close()
        logging.getLogger("dimse").removeHandler(handler)
    allowed = ("service provider failed",) if provider_may_fail else ()
    tracebacks = [r.getMessage() for r in handler.records]
    assert not [t for t in tracebacks if not t.endswith(allowed)], tracebacks


def open_descriptors() -> int:
    """This process's open file descriptors (0 where /proc is not there to count them)."""
    folder = Path("/proc/self/fd")
    return len(os.listdir(folder)) if folder.exists() else 0


def run(scenario: Callable[[], Awaitable[_T]]) -> _T:
    async def bounded() -> _T:
        return await asyncio.wait_for(scenario(), TEST_LIMIT)

    return asyncio.run(bounded())


@pytest.fixture
def recorded_links(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Link]]:
    """Every Link the server makes, to look at its transport."""
    links: list[Link] = []

    class RecordedLink(Link):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            links.append(self)

    monkeypatch.setattr("dimse.server.Link", RecordedLink)
    yield links


# --- the upper layer: garbage, wrong states, lengths ----------------------------------------

GARBAGE = {
    "http": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "tls-client-hello": bytes.fromhex("160301020001000200fe0303") + bytes(500),
    "zeros": bytes(64),
    "ff": b"\xff" * 64,
    "pdu-type-8": bytes.fromhex("08 00 00000004 00000000"),
}


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_gets_an_abort(tmp_path: Path, garbage: bytes) -> None:
    """An unknown PDU type: A-ABORT, reason 1 unrecognized PDU (PS3.8 Table 9-26; Sta2 +
    Evt19 -> AA-1, Table 9-10)."""

    async def scenario() -> None:
        async with serving(tmp_path) as archive:
            peer = await RawPeer.open(archive.port)
            await peer.send(garbage)
            await expect_abort(peer, ACSE + SLACK, reason=1)
            peer.close()
            await archive.echo()
            await archive.settled()
            archive.assert_nothing_stored()

    run(scenario)


@pytest.mark.parametrize("together", [True, False], ids=["one-write", "two-writes"])
def test_valid_request_then_garbage(tmp_path: Path, together: bool) -> None:
    """Sent in one write, the A-ASSOCIATE indication and the abort for the garbage reach
    the server together: answering the request must not raise (it did, LocalProtocolError
    in Sta13, logged as an internal failure)."""

    async def scenario() -> None:
        async with serving(tmp_path) as archive:
            peer = await RawPeer.open(archive.port)
            if together:
                await peer.send(encode(REQUEST) + b"\xee garbage after the request")
            else:
                await peer.associate()
                await peer.send(b"\xee garbage after the request")
            abort = await expect_abort(peer, ACSE + SLACK, reason=1)
            assert abort.source is AbortSource.SERVICE_PROVIDER
            peer.close()
            await archive.echo()
            await archive.settled()

    run(scenario)


WRONG_STATE = {
    # PS3.8 Table 9-10, Sta2 (awaiting A-ASSOCIATE-RQ): AA-1
    "p-data-before-association": (False, command(ECHO_CONTEXT, CEchoRQ(1))),
    "release-rq-before-association": (False, encode(AReleaseRQ())),
    "release-rp-before-association": (False, encode(AReleaseRP())),
    # Sta6 (established): AA-8, reason 2 unexpected PDU
    "release-rp-unsolicited": (True, encode(AReleaseRP())),
    "second-associate-rq": (True, encode(REQUEST)),
}


@pytest.mark.parametrize(("associated", "data"), WRONG_STATE.values(), ids=WRONG_STATE.keys())
def test_pdu_in_the_wrong_state(tmp_path: Path, associated: bool, data: bytes) -> None:
    """A valid PDU the state does not allow: A-ABORT, reason 2 unexpected PDU (PS3.8
    Table 9-10 AA-1 in Sta2, AA-8 in Sta6; Table 9-26), then the connection is closed
    within ARTIM even though the peer keeps it open."""

    async def scenario() -> None:
        async with serving(tmp_path) as archive:
            peer = await RawPeer.open(archive.port)
            if associated:
                await peer.associate()
            await peer.send(data)
            await expect_abort(peer, ACSE + SLACK, reason=2)
            await archive.settled(ACSE + SLACK)
            await archive.echo()
            archive.assert_nothing_stored()

    run(scenario)


def test_associate_ac_sent_to_the_acceptor(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as archive:
            peer = await RawPeer.open(archive.port)
            ac = await peer.associate()
            await peer.send(encode(ac))  # an A-ASSOCIATE-AC to the acceptor: Sta6 + Evt3
            await expect_abort(peer, ACSE + SLACK, reason=2)
            await archive.echo()
            await archive.settled()

    run(scenario)


LENGTHS = {
    # PS3.8 D.1: a P-DATA-TF longer than the Maximum Length we announced is a protocol error
    "p-data-over-max-pdu": (True, encode(PDataTF((PDV(1, False, False, bytes(MAX_PDU)),)))),
    "p-data-4-gib": (True, bytes.fromhex("04 00 ffffffff 00000002 01 00")),
    "associate-rq-over-1-mib": (False, bytes((1, 0)) + (MAX_CONTROL_PDU + 1).to_bytes(4, "big")),
    "associate-rq-4-gib": (False, bytes.fromhex("01 00 ffffffff 0001 0000")),
}


@pytest.mark.parametrize(("associated", "data"), LENGTHS.values(), ids=LENGTHS.keys())
def test_pdu_length_beyond_our_maximum(tmp_path: Path, associated: bool, data: bytes) -> None:
    """Aborted from the header alone (reason 6, invalid PDU parameter value): the server
    never waits for, nor buffers, the body it announced."""

    async def scenario() -> None:
        async with serving(tmp_path) as archive:
            peer = await RawPeer.open(archive.port)
            if associated:
                await peer.associate()
            await peer.send(data[:64])
            await expect_abort(peer, ACSE + SLACK, reason=6)
            await archive.echo()
            await archive.settled()

    run(scenario)


NO_LIMIT = {
    # the requestor announces Maximum Length 0: what we accept is still our own maximum
    "peer-announces-0": (0, MAX_PDU, MAX_PDU + 1),
    # we announce 0 ourselves: still not more than the ceiling, let alone 4 GiB
    "we-announce-0": (MAX_PDU, 0, MAX_PDATA_CEILING + 1),
    "we-announce-0-4-gib": (MAX_PDU, 0, 0xFFFFFFFF),
}


@pytest.mark.parametrize(("theirs", "ours", "length"), NO_LIMIT.values(), ids=NO_LIMIT.keys())
def test_no_limit_is_not_4_gib(tmp_path: Path, theirs: int, ours: int, length: int) -> None:
    """PS3.8 D.1: Maximum Length 0 means no limit for the one who announced it. A peer's 0
    only lets us send what we like; what we accept is bounded by our own announcement, and
    our own 0 by a ceiling: aborted from the header, reason 6 (Table 9-26)."""

    async def scenario() -> None:
        async with serving(tmp_path, max_pdu=ours) as archive:
            peer = await RawPeer.open(archive.port)
            rq = build_request(
                "HOSTILE_SCU", AE, [ProposedContext(VERIFICATION, (IVLE,))], max_pdu=theirs
            )
            await peer.associate(rq)
            await peer.send(b"\x04\x00" + length.to_bytes(4, "big") + bytes.fromhex("0000ff"))
            await expect_abort(peer, ACSE + SLACK, reason=6)
            await archive.echo()
            await archive.settled()

    run(scenario)


def test_even_presentation_context_id_is_aborted(tmp_path: Path) -> None:
    """PS3.8 §9.3.2.2: presentation context IDs are odd, 1-255, unique in the request. An
    even one is an invalid PDU parameter value: A-ABORT, source 2, reason 6 (Table 9-26),
    no association."""

    async def scenario() -> None:
        async with serving(tmp_path) as archive:
            peer = await RawPeer.open(archive.port)
            contexts = (
                PresentationContextRQ(1, VERIFICATION, (IVLE,)),
                PresentationContextRQ(2, CT, (EVLE,)),
            )
            await peer.send(encode(AAssociateRQ(AE, "HOSTILE_SCU", contexts)))
            await expect_abort(peer, ACSE + SLACK, reason=6)
            assert archive.server.established == 0
            await archive.echo()
            await archive.settled()

    run(scenario)


def test_half_a_request_then_silence_is_closed_by_artim(tmp_path: Path) -> None:
    """PS3.8 §9.1.5: no whole A-ASSOCIATE-RQ before ARTIM expires: the connection is
    closed (Sta2 + Evt18 -> AA-2), nothing sent."""

    async def scenario() -> None:
        async with serving(tmp_path) as archive:
            peer = await RawPeer.open(archive.port)
            data = encode(REQUEST)
            began = time.monotonic()
            await peer.send(data[: len(data) // 2])
            assert await peer.read_to_end(ACSE + SLACK) == b""
            assert ACSE - 0.2 <= time.monotonic() - began <= ACSE + SLACK
            await archive.echo()
            await archive.settled()

    run(scenario)


def test_a_request_dripped_byte_by_byte_is_closed_by_artim(tmp_path: Path) -> None:
    """A peer that sends one byte of its A-ASSOCIATE-RQ every 0.3 s never lets a read time
    out; ARTIM still runs from the connection (PS3.8 §9.1.5), so it is closed after ~1 s,
    not after the 80 s the whole request would take."""

    async def scenario() -> None:
        async with serving(tmp_path) as archive:
            peer = await RawPeer.open(archive.port)
            data = encode(REQUEST)
            began = time.monotonic()
            closed = False
            for offset in range(len(data) - 1):  # never the whole request
                if time.monotonic() - began > ACSE + 3 * SLACK:
                    break
                if offset == 1:
                    await archive.echo()  # served meanwhile
                try:
                    await peer.send(data[offset : offset + 1])
                    closed = await asyncio.wait_for(peer.reader.read(100), 0.3) == b""
                except TimeoutError:
                    continue
                except ConnectionError:
                    closed = True
                if closed:
                    break
            assert closed, "still open after ARTIM"
            assert time.monotonic() - began <= ACSE + SLACK
            await archive.echo()
            await archive.settled()

    run(scenario)


def test_a_peer_that_keeps_talking_after_our_abort_is_closed_by_artim(tmp_path: Path) -> None:
    """After its A-ABORT the server waits for the peer to close (Sta13) at most ARTIM, from
    the abort: a peer that keeps sending bytes every 0.3 s does not hold it open."""

    async def scenario() -> None:
        async with serving(tmp_path) as archive:
            peer = await RawPeer.open(archive.port)
            await peer.associate()
            await peer.send(encode(AReleaseRP()))  # unexpected: A-ABORT, ARTIM starts
            began = time.monotonic()
            received, closed = b"", False
            while not closed and time.monotonic() - began < ACSE + 3 * SLACK:
                try:
                    await peer.send(command(ECHO_CONTEXT, CEchoRQ(1)))
                    data = await asyncio.wait_for(peer.reader.read(100), 0.3)
                except TimeoutError:
                    continue
                except ConnectionError:
                    closed = True
                    continue
                received += data
                closed = data == b""
            assert closed, "still open after ARTIM"
            assert time.monotonic() - began <= ACSE + SLACK
            assert received == provider_abort(2)
            await archive.echo()
            await archive.settled()

    run(scenario)


def test_half_a_pdu_on_an_association_then_silence(tmp_path: Path) -> None:
    """The idle timeout aborts an association on which half a P-DATA-TF came and then
    nothing: A-ABORT, then the connection is closed."""

    async def scenario() -> None:
        async with serving(tmp_path) as archive:
            peer = await RawPeer.open(archive.port)
            await peer.associate()
            data = command(ECHO_CONTEXT, CEchoRQ(1))
            began = time.monotonic()
            await peer.send(data[: len(data) // 2])
            await archive.echo()  # served while the hostile peer is stalled
            await expect_abort(peer, IDLE + SLACK)
            assert time.monotonic() - began >= IDLE - 0.2
            await archive.echo()
            await archive.settled()

    run(scenario)


def test_a_pdu_dripped_byte_by_byte_on_an_association_is_aborted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer that sends one byte of a P-DATA-TF every 0.3 s never lets a read time out;
    the PDU must still be whole within the idle timeout from its first byte, so it is
    aborted after ~1.5 s, not after the 30 s the PDU would take, with a log line saying
    why. Other associations are served meanwhile."""
    idle = 1.5

    async def scenario() -> None:
        timeouts = dimse.Timeouts(connect=2.0, acse=ACSE, dimse=10.0, idle=idle)
        async with serving(tmp_path, timeouts=timeouts) as archive:
            peer = await RawPeer.open(archive.port)
            await peer.associate()
            data = command(ECHO_CONTEXT, CEchoRQ(1))
            began, received = time.monotonic(), b""
            for offset in range(len(data) - 1):  # never the whole PDU
                if time.monotonic() - began > idle + 3 * SLACK:
                    break
                if offset == 2:
                    await archive.echo()  # served meanwhile
                await peer.send(data[offset : offset + 1])
                try:
                    received = await asyncio.wait_for(peer.reader.read(100), 0.3)
                except TimeoutError:
                    continue
                break
            aborted = time.monotonic() - began
            received += await peer.read_to_end(ACSE + SLACK)
            assert received == bytes.fromhex("07 00 00000004 00 00 00 00"), received.hex()
            assert idle - 0.2 <= aborted <= idle + 1.0, aborted
            assert "PDU not complete after 1.5 s" in caplog.text
            await archive.echo()
            await archive.settled()

    with caplog.at_level(logging.WARNING, logger="dimse"):
        run(scenario)


def test_a_peer_that_never_reads(tmp_path: Path, recorded_links: list[Link]) -> None:
    """A peer floods C-ECHO-RQs and reads none of the responses. The server stops reading
    while its responses cannot be written (the transport's buffer stays bounded) and
    drops the connection once nothing has moved for the idle timeout."""

    async def scenario() -> None:
        async with serving(tmp_path) as archive:
            peer = await RawPeer.open(archive.port, receive_buffer=4096)
            await peer.associate()
            echoes = command(ECHO_CONTEXT, CEchoRQ(1)) * 2000  # ~180 KB
            began, sent = time.monotonic(), 0
            # Write until the server has stopped reading (our own buffer backs up), bounded.
            while sent < 64 << 20 and time.monotonic() - began < 10:
                peer.writer.write(echoes)
                sent += len(echoes)
                await asyncio.sleep(0.01)
                if peer.writer.transport.get_write_buffer_size() > 2 << 20:
                    break
            assert peer.writer.transport.get_write_buffer_size() > 2 << 20, "never backed up"
            stalled = time.monotonic()
            await archive.echo()  # served while the flood is stuck
            server_link = recorded_links[0]
            largest = 0
            while archive.server.active_associations and time.monotonic() - stalled < 10:
                transport = server_link.stream.transport
                assert transport is not None
                if not transport.is_closing():
                    largest = max(largest, transport.get_write_buffer_size())
                await asyncio.sleep(0.05)
            assert archive.server.active_associations == 0, "the session outlived the idle timeout"
            assert time.monotonic() - stalled <= IDLE + ACSE + SLACK
            assert largest < 8 << 20, f"{largest} bytes waiting in the server's transport"
            peer.close()
            await archive.echo()

    run(scenario)


def test_thousand_connections_opened_and_dropped(tmp_path: Path) -> None:
    """1200 connections that close at once, send half a request and reset, or reset after a
    whole request: all are cleaned up (no session, no file descriptor left), and C-ECHO
    works throughout."""

    async def scenario() -> None:
        async with serving(tmp_path, max_associations=100) as archive:
            await archive.echo()
            descriptors = open_descriptors()
            request = encode(REQUEST)
            limit = asyncio.Semaphore(20)

            async def one(number: int) -> None:
                async with limit:
                    try:
                        _, writer = await asyncio.open_connection(HOST, archive.port)
                    except OSError as error:
                        pytest.fail(f"connection {number} refused: {error}")
                    if number % 3 == 1:
                        writer.write(request[:100])
                    elif number % 3 == 2:
                        writer.write(request)
                    if number % 2:
                        writer.transport.abort()  # a reset, not a close
                    else:
                        writer.close()
                    with contextlib.suppress(ConnectionError):
                        await writer.wait_closed()

            async def echoes() -> int:
                count = 0
                while count < 200:
                    await archive.echo()
                    count += 1
                    await asyncio.sleep(0.02)
                return count

            echoing = asyncio.create_task(echoes())
            await asyncio.gather(*(one(n) for n in range(1200)))
            echoing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                assert await echoing > 0
            await archive.settled()
            await archive.echo()
            await archive.settled()
            assert open_descriptors() <= descriptors + 2, "file descriptors leaked"
            archive.assert_nothing_stored()

    run(scenario)


# --- the server-wide budget of buffered PDUs -------------------------------------------------

BUDGET = 64 << 10


def padded_ct(size: int) -> tuple[Dataset, bytes]:
    """A CT data set of about `size` bytes, and one P-DATA-TF carrying it whole."""
    ds = ct_dataset()
    ds.PixelData = bytes(size)
    ds["PixelData"].VR = "OB"
    return ds, pdata(CT_CONTEXT, False, True, ct_bytes(ds))


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def two_associated(port: int) -> tuple[RawPeer, RawPeer]:
    """Two raw peers, both connected before either associates."""
    first, second = await RawPeer.open(port), await RawPeer.open(port)
    await first.associate()
    await second.associate()
    return first, second


async def store_in_two_halves(peer: RawPeer, message_id: int, size: int) -> tuple[Dataset, bytes]:
    """Send a C-STORE-RQ and the first half of its data set PDU; return the rest."""
    ds, pdu = padded_ct(size)
    await peer.send(command(CT_CONTEXT, CStoreRQ(message_id, CT, ds.SOPInstanceUID)))
    await peer.send(pdu[: len(pdu) // 2])
    return ds, pdu


def test_two_associations_take_turns_in_a_small_budget(tmp_path: Path) -> None:
    """Two associations each in the middle of a PDU larger than half the budget: the second
    stops reading until the first PDU is whole and acted on, then goes on; both C-STOREs
    succeed and the reservation never exceeds the budget."""

    async def scenario() -> None:
        async with serving(tmp_path, max_pdu=BUDGET, max_buffered_bytes=BUDGET) as archive:
            budget = archive.server.budget
            first, second = await two_associated(archive.port)
            _, pdu_1 = await store_in_two_halves(first, 1, 40 << 10)
            await until(lambda: budget.ledger.reserved == len(pdu_1))
            _, pdu_2 = await store_in_two_halves(second, 1, 40 << 10)
            await until(lambda: budget.waiting == 1)  # the second waits: 80 KiB > 64 KiB
            await archive.echo()  # a small PDU arrives whole in one read: not held up
            await first.send(pdu_1[len(pdu_1) // 2 :])
            assert (await first.response()).status == Status.SUCCESS  # type: ignore[union-attr]
            await until(lambda: budget.waiting == 0 and budget.ledger.reserved == len(pdu_2))
            await second.send(pdu_2[len(pdu_2) // 2 :])
            assert (await second.response()).status == Status.SUCCESS  # type: ignore[union-attr]
            for peer in (first, second):
                await peer.send(encode(AReleaseRQ()))
                assert await peer.read_pdu() == AReleaseRP()
                peer.close()
            await archive.settled()
            assert budget.ledger.peak <= BUDGET
            assert budget.ledger.reserved == 0
            assert len(stored_files(tmp_path)) == 2

    run(scenario)


def test_connections_not_yet_associated_reserve_nothing(tmp_path: Path) -> None:
    """A-ASSOCIATE-RQ headers declaring 1 MiB each, bodies never sent: these peers were
    admitted by nobody, so they take nothing from the budget (ARTIM closes them); an
    association's large PDUs still go through."""

    async def scenario() -> None:
        async with serving(tmp_path, max_pdu=BUDGET, max_buffered_bytes=BUDGET) as archive:
            header = b"\x01\x00" + (MAX_CONTROL_PDU - 6).to_bytes(4, "big") + bytes(10)
            idle = [await RawPeer.open(archive.port) for _ in range(4)]
            for peer in idle:
                await peer.send(header)
            peer = await RawPeer.open(archive.port)
            await peer.associate()
            _, pdu = await store_in_two_halves(peer, 1, 40 << 10)
            await until(lambda: archive.server.budget.ledger.reserved == len(pdu))
            await peer.send(pdu[len(pdu) // 2 :])
            assert (await peer.response()).status == Status.SUCCESS  # type: ignore[union-attr]
            for each in [*idle, peer]:
                each.close()
            await archive.settled()
            assert archive.server.budget.ledger.peak == len(pdu)

    run(scenario)


def test_a_pdu_larger_than_the_budget_goes_through_alone(tmp_path: Path) -> None:
    """With nothing else reserved a PDU larger than the whole budget is let through (no
    association can be stuck for good); meanwhile another association's PDU waits."""

    async def scenario() -> None:
        options = {"max_pdu": 2 * BUDGET, "max_buffered_bytes": BUDGET}
        async with serving(tmp_path, **options) as archive:
            budget = archive.server.budget
            large, small = await two_associated(archive.port)
            _, pdu_1 = await store_in_two_halves(large, 1, 100 << 10)
            await until(lambda: budget.ledger.reserved == len(pdu_1) > BUDGET)
            _, pdu_2 = await store_in_two_halves(small, 1, 8 << 10)
            await until(lambda: budget.waiting == 1)
            await large.send(pdu_1[len(pdu_1) // 2 :])
            assert (await large.response()).status == Status.SUCCESS  # type: ignore[union-attr]
            await small.send(pdu_2[len(pdu_2) // 2 :])
            assert (await small.response()).status == Status.SUCCESS  # type: ignore[union-attr]
            assert budget.ledger.peak == len(pdu_1)  # the one PDU, alone
            for peer in (large, small):
                peer.close()
            await archive.settled()
            assert budget.ledger.reserved == 0

    run(scenario)


def test_a_stalled_pdu_gives_its_budget_back(tmp_path: Path) -> None:
    """The association holding the budget stalls in the middle of its PDU: it is aborted
    after the idle timeout from that PDU's first byte, its reservation is released, and the
    association waiting for it stores its instance."""

    async def scenario() -> None:
        async with serving(tmp_path, max_pdu=BUDGET, max_buffered_bytes=BUDGET) as archive:
            budget = archive.server.budget
            stalled, waiting = await two_associated(archive.port)
            began = time.monotonic()
            await store_in_two_halves(stalled, 1, 40 << 10)
            await until(lambda: budget.ledger.reserved > 0)
            # Well after the stalled one: its PDU's deadline, from its first byte, must
            # not run out in the moment between the stalled one's abort and release.
            await asyncio.sleep(IDLE / 3)
            ds, pdu = await store_in_two_halves(waiting, 1, 40 << 10)
            await until(lambda: budget.waiting == 1)
            await waiting.send(pdu[len(pdu) // 2 :])  # in the kernel until there is room
            await expect_abort(stalled, IDLE + ACSE + SLACK)
            assert time.monotonic() - began >= IDLE - 0.2
            assert (await waiting.response()).status == Status.SUCCESS  # type: ignore[union-attr]
            assert set(stored_files(tmp_path)) == {ds.SOPInstanceUID}
            stalled.close()
            waiting.close()
            await archive.settled()
            assert budget.ledger.reserved == 0 and budget.ledger.peak <= BUDGET

    run(scenario)


def test_clients_storing_at_once_through_a_small_budget(tmp_path: Path) -> None:
    """Real clients, PDUs of 48 KiB (three quarters of the budget) on four associations at
    once: everything is stored, none is stuck, the reservation stays within the budget."""

    async def one(port: int, count: int) -> list[int]:
        async with dimse.connect(
            HOST,
            port,
            called_ae=AE,
            contexts=[ProposedContext(CT, (EVLE,))],
            timeouts=dimse.Timeouts(connect=5, acse=5, dimse=10, idle=10),
        ) as association:
            statuses = []
            for _ in range(count):
                ds, _ = padded_ct(300 << 10)
                raw = RawDataSet(CT, ds.SOPInstanceUID, EVLE, ct_bytes(ds))
                statuses.append((await association.store(raw)).status)
            return statuses

    async def scenario() -> None:
        async with serving(tmp_path, max_pdu=48 << 10, max_buffered_bytes=BUDGET) as archive:
            results = await asyncio.gather(*(one(archive.port, 3) for _ in range(4)))
            assert results == [[Status.SUCCESS] * 3] * 4
            await archive.settled()
            ledger = archive.server.budget.ledger
            assert ledger.peak <= BUDGET and ledger.reserved == 0
            assert len(stored_files(tmp_path)) == 12

    run(scenario)


# --- DIMSE: broken command sets, data sets, message IDs --------------------------------------

BROKEN_COMMANDS = {
    # PS3.7 §9.3.5.1 Table 9.3-12: Message ID (0000,0110) is required (M) in a C-ECHO-RQ
    "echo-without-message-id": raw_command_set(
        AffectedSOPClassUID=VERIFICATION, CommandField=0x0030, CommandDataSetType=0x0101
    ),
    # PS3.7 §9.3.1.1 Table 9.3-1: Affected SOP Instance UID is required in a C-STORE-RQ
    "store-without-sop-instance-uid": raw_command_set(
        AffectedSOPClassUID=CT, CommandField=0x0001, MessageID=1, Priority=0,
        CommandDataSetType=0x0000,
    ),
    # PS3.7 §E.1: every command set has a Command Field
    "without-command-field": raw_command_set(MessageID=1, CommandDataSetType=0x0101),
    # PS3.7 §6.3.1: only group 0000 in a command set
    "data-element-in-command-set": raw_command_set(
        CommandField=0x0030, MessageID=1, CommandDataSetType=0x0101
    ) + struct.pack("<HHL", 0x0010, 0x0010, 4) + b"A^B ",
    # an element whose length overruns the command set
    "element-overrun": bytes.fromhex("00000001 20000000 3000"),
    # US element of 3 bytes
    "message-id-3-bytes": raw_command_set(CommandField=0x0030, CommandDataSetType=0x0101)
    + struct.pack("<HHL", 0, 0x0110, 3) + b"\x01\x00\x00",
}  # fmt: skip


@pytest.mark.parametrize("command_set", BROKEN_COMMANDS.values(), ids=BROKEN_COMMANDS.keys())
def test_broken_command_set_is_aborted(tmp_path: Path, command_set: bytes) -> None:
    """A command set that cannot be decoded, or lacks an element its message requires,
    cannot be answered (its Message ID may be unknown): the provider aborts, A-ABORT
    source 2 reason 6 invalid PDU parameter value (PS3.8 Table 9-26)."""

    async def scenario() -> None:
        async with serving(tmp_path) as archive:
            peer = await RawPeer.open(archive.port)
            await peer.associate()
            await peer.send(pdata(CT_CONTEXT, True, True, command_set))
            await peer.send(pdata(CT_CONTEXT, False, True, ct_bytes(ct_dataset())))
            await expect_abort(peer, ACSE + SLACK, reason=6)
            await archive.settled()
            archive.assert_nothing_stored()
            await archive.echo()

    run(scenario)


def test_store_request_without_a_data_set_gets_a_failure(tmp_path: Path) -> None:
    """PS3.7 §9.3.1.1 Table 9.3-1: a C-STORE-RQ's Command Data Set Type says a data set
    follows. One saying 0101H (none) is answered at once with Cxxx, cannot understand
    (PS3.4 §B.2.3); it was left unanswered, its temporary file open until the end."""

    async def scenario() -> None:
        async with serving(tmp_path) as archive:
            peer = await RawPeer.open(archive.port)
            await peer.associate()
            store = raw_command_set(
                AffectedSOPClassUID=CT,
                CommandField=0x0001,
                MessageID=9,
                Priority=0,
                CommandDataSetType=0x0101,
                AffectedSOPInstanceUID="1.2.3.4",
            )
            await peer.send(pdata(CT_CONTEXT, True, True, store))
            response = await peer.response()
            assert isinstance(response, CStoreRSP)
            assert response.message_id_being_responded_to == 9
            assert category(response.status) is Category.FAILURE
            assert list((tmp_path / TEMP_DIR).iterdir()) == []
            await peer.send(command(ECHO_CONTEXT, CEchoRQ(10)))  # still serving
            echo = await peer.response()
            assert echo.status == Status.SUCCESS  # type: ignore[union-attr]
            await peer.send(encode(AReleaseRQ()))
            assert await peer.read_pdu() == AReleaseRP()
            peer.close()  # the requestor closes after A-RELEASE-RP (PS3.8 §7.2)
            await archive.settled()
            archive.assert_nothing_stored()

    run(scenario)


def test_echo_request_with_a_data_set(tmp_path: Path) -> None:
    """A C-ECHO-RQ whose Command Data Set Type says a data set follows (PS3.7 Table 9.3-12
    wants 0101H): answered, and the data set that follows is dropped, never stored."""

    async def scenario() -> None:
        async with serving(tmp_path) as archive:
            peer = await RawPeer.open(archive.port)
            await peer.associate()
            echo = raw_command_set(
                AffectedSOPClassUID=VERIFICATION,
                CommandField=0x0030,
                MessageID=3,
                CommandDataSetType=0x0000,
            )
            await peer.send(pdata(ECHO_CONTEXT, True, True, echo))
            await peer.send(pdata(ECHO_CONTEXT, False, True, ct_bytes(ct_dataset())))
            response = await peer.response()
            assert response.message_id_being_responded_to == 3  # type: ignore[union-attr]
            await peer.send(command(ECHO_CONTEXT, CEchoRQ(4)))
            assert (await peer.response()).status == Status.SUCCESS  # type: ignore[union-attr]
            await peer.send(encode(AReleaseRQ()))
            assert await peer.read_pdu() == AReleaseRP()
            peer.close()  # the requestor closes after A-RELEASE-RP (PS3.8 §7.2)
            await archive.settled()
            archive.assert_nothing_stored()

    run(scenario)


def test_echo_request_announcing_a_data_set_that_never_comes(tmp_path: Path) -> None:
    """The next command arrives while the announced data set is still owed: messages must
    not interleave (PS3.8 Annex E.1), A-ABORT reason 2 unexpected PDU."""

    async def scenario() -> None:
        async with serving(tmp_path) as archive:
            peer = await RawPeer.open(archive.port)
            await peer.associate()
            echo = raw_command_set(
                AffectedSOPClassUID=VERIFICATION,
                CommandField=0x0030,
                MessageID=3,
                CommandDataSetType=0x0000,
            )
            await peer.send(pdata(ECHO_CONTEXT, True, True, echo))
            await peer.send(command(ECHO_CONTEXT, CEchoRQ(4)))
            data = await peer.read_to_end(ACSE + SLACK)
            assert data[-10:] == provider_abort(2)
            await archive.echo()
            await archive.settled()

    run(scenario)


def test_data_set_without_a_command(tmp_path: Path) -> None:
    """A data set PDV with no command before it: a message is a command set followed by
    its data set (PS3.7 §6.3), so the provider aborts, reason 2 unexpected PDU."""

    async def scenario() -> None:
        async with serving(tmp_path) as archive:
            peer = await RawPeer.open(archive.port)
            await peer.associate()
            await peer.send(pdata(CT_CONTEXT, False, True, ct_bytes(ct_dataset())))
            await expect_abort(peer, ACSE + SLACK, reason=2)
            await archive.settled()
            archive.assert_nothing_stored()
            await archive.echo()

    run(scenario)


def test_data_set_on_another_context_than_its_command(tmp_path: Path) -> None:
    """PS3.8 Annex E.1: every fragment of a message uses the same presentation context. A
    C-STORE data set on the Verification context: A-ABORT reason 5 unexpected PDU
    parameter; the half-received instance is discarded."""

    async def scenario() -> None:
        async with serving(tmp_path) as archive:
            peer = await RawPeer.open(archive.port)
            await peer.associate()
            ds = ct_dataset()
            data = ct_bytes(ds)
            await peer.send(command(CT_CONTEXT, CStoreRQ(1, CT, ds.SOPInstanceUID)))
            await peer.send(pdata(CT_CONTEXT, False, False, data[:20]))
            await peer.send(pdata(ECHO_CONTEXT, False, True, data[20:]))
            await expect_abort(peer, ACSE + SLACK, reason=5)
            await archive.settled()
            archive.assert_nothing_stored()
            await archive.echo()

    run(scenario)


UNPARSEABLE = [
    pytest.param(bytes(range(256)) * 4, id="random"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\x08\x00\x16\x00OB\x00\x00\xff\xff", id="cut-off-ob-header"),
    pytest.param(bytes.fromhex("08001600 5351 0000 ffffffff feff00e0 ffff"), id="open-sequence"),
    pytest.param(b"\x08\x00\x16\x00UI\xff\xff" * 8, id="undefined-lengths"),
]


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's, about the garbage
@pytest.mark.parametrize("data", UNPARSEABLE)
def test_store_of_an_unparseable_data_set(tmp_path: Path, data: bytes) -> None:
    """PS3.4 §B.2.3: a data set the SCP cannot understand gets a failure status (Cxxx); it
    is not filed, its temporary file is gone, and the association goes on."""

    async def scenario() -> None:
        async with serving(tmp_path) as archive:
            peer = await RawPeer.open(archive.port)
            await peer.associate()
            await peer.send(command(CT_CONTEXT, CStoreRQ(1, CT, "1.2.3.4")))
            await peer.send(pdata(CT_CONTEXT, False, True, data))
            response = await peer.response()
            assert isinstance(response, CStoreRSP)
            assert category(response.status) is Category.FAILURE, hex(response.status)
            assert list((tmp_path / TEMP_DIR).iterdir()) == []
            await peer.send(command(ECHO_CONTEXT, CEchoRQ(2)))
            assert (await peer.response()).status == Status.SUCCESS  # type: ignore[union-attr]
            await peer.send(encode(AReleaseRQ()))
            assert await peer.read_pdu() == AReleaseRP()
            peer.close()  # the requestor closes after A-RELEASE-RP (PS3.8 §7.2)
            await archive.settled()
            archive.assert_nothing_stored()
            await archive.echo()

    run(scenario)


@pytest.mark.parametrize("closed", [True, False], ids=["whole", "cut-short"])
def test_a_data_set_nested_thousands_deep(tmp_path: Path, closed: bool) -> None:
    """Sequences nested 5000 deep (~100 KB: the peer chooses) are walked without
    recursion: the whole data set is stored, the one cut short gets C000. (With a
    recursive walk they got 0110, a RecursionError's traceback in the log.) An
    index rebuilt from the files reads the stored one too (pydicom could not)."""
    uid = generate_uid()

    async def scenario() -> None:
        async with serving(tmp_path) as archive:
            data = ct_bytes(ct_dataset(uid)) + nested_sequences(5000, closed)
            async with dimse.connect(
                HOST, archive.port, called_ae=AE, contexts=[ProposedContext(CT, (EVLE,))]
            ) as association:
                response = await association.store(RawDataSet(CT, uid, EVLE, data))
            assert response.status == (Status.SUCCESS if closed else Status.CANNOT_UNDERSTAND)
            await archive.settled()
            assert (uid in stored_files(tmp_path)) is closed

    run(scenario)
    assert rebuild_index(tmp_path) == (int(closed), [])


def test_store_whose_data_set_is_another_instance(tmp_path: Path) -> None:
    """PS3.4 §B.2.3 A900: the data set's SOP Instance UID is not the command's."""

    async def scenario() -> None:
        async with serving(tmp_path) as archive:
            peer = await RawPeer.open(archive.port)
            await peer.associate()
            await peer.send(command(CT_CONTEXT, CStoreRQ(1, CT, "1.2.3.4")))
            await peer.send(pdata(CT_CONTEXT, False, True, ct_bytes(ct_dataset("1.2.3.5"))))
            response = await peer.response()
            assert response.status == Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS  # type: ignore[union-attr]
            await peer.send(encode(AReleaseRQ()))
            assert await peer.read_pdu() == AReleaseRP()
            peer.close()  # the requestor closes after A-RELEASE-RP (PS3.8 §7.2)
            await archive.settled()
            archive.assert_nothing_stored()

    run(scenario)


class GatedSink:
    """A FileSink whose completion waits for the test to open the gate."""

    def __init__(self, sink: DataSetSink, gate: asyncio.Event) -> None:
        self.sink, self.gate = sink, gate

    async def write(self, data: memoryview) -> None:
        await self.sink.write(data)

    async def complete(self) -> int | Outcome:
        await self.gate.wait()
        return await self.sink.complete()

    async def discard(self) -> None:
        await self.sink.discard()


class GatedStorage(StorageProvider):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = asyncio.Event()

    async def on_store(self, request: StoreRequest) -> Any:
        sink = await super().on_store(request)
        return sink if isinstance(sink, Outcome) else GatedSink(sink, self.gate)


def test_message_id_reused_while_outstanding(tmp_path: Path) -> None:
    """PS3.7 §9.1.1.1.1: no two outstanding operations share a Message ID. A second C-STORE
    with the ID of one still being stored is answered 0210H duplicate invocation (PS3.7
    Annex C) and not stored; the first completes normally. Once answered, the ID may be
    used again."""

    async def scenario() -> None:
        storage = GatedStorage(tmp_path)
        async with serving(tmp_path, storage) as archive:
            peer = await RawPeer.open(archive.port)
            await peer.associate()  # an asynchronous operations window of 4
            first, second, third = ct_dataset(), ct_dataset(), ct_dataset()
            await peer.send(
                command(CT_CONTEXT, CStoreRQ(5, CT, first.SOPInstanceUID))
                + pdata(CT_CONTEXT, False, True, ct_bytes(first))
                + command(CT_CONTEXT, CStoreRQ(5, CT, second.SOPInstanceUID))
                + pdata(CT_CONTEXT, False, True, ct_bytes(second))
            )
            duplicate = await peer.response()
            assert isinstance(duplicate, CStoreRSP)
            assert (duplicate.message_id_being_responded_to, duplicate.status) == (5, 0x0210)
            assert duplicate.affected_sop_instance_uid == second.SOPInstanceUID
            storage.gate.set()
            original = await peer.response()
            assert isinstance(original, CStoreRSP)
            assert (original.message_id_being_responded_to, original.status) == (5, 0)
            assert original.affected_sop_instance_uid == first.SOPInstanceUID
            # answered: the ID is free again
            await peer.send(
                command(CT_CONTEXT, CStoreRQ(5, CT, third.SOPInstanceUID))
                + pdata(CT_CONTEXT, False, True, ct_bytes(third))
            )
            assert (await peer.response()).status == Status.SUCCESS  # type: ignore[union-attr]
            await peer.send(encode(AReleaseRQ()))
            assert await peer.read_pdu() == AReleaseRP()
            peer.close()  # the requestor closes after A-RELEASE-RP (PS3.8 §7.2)
            await archive.settled()
            stored = stored_files(tmp_path)
            assert set(stored) == {first.SOPInstanceUID, third.SOPInstanceUID}
            assert list((tmp_path / TEMP_DIR).iterdir()) == []

    run(scenario)


class FailingSink(GatedSink):
    async def complete(self) -> int | Outcome:
        raise RuntimeError("a bug of the provider")


class FailingStorage(StorageProvider):
    async def on_store(self, request: StoreRequest) -> Any:
        sink = await super().on_store(request)
        return sink if isinstance(sink, Outcome) else FailingSink(sink, asyncio.Event())


def test_a_sink_that_fails_to_complete_leaves_nothing_behind(tmp_path: Path) -> None:
    """The session answers 0110 processing failure (PS3.7 Annex C) when the provider's
    sink raises in complete(), and discards the sink: its temporary file was left in
    `.incoming` until the next start."""

    async def scenario() -> None:
        async with serving(tmp_path, FailingStorage(tmp_path), provider_may_fail=True) as archive:
            peer = await RawPeer.open(archive.port)
            await peer.associate()
            ds = ct_dataset()
            await peer.send(command(CT_CONTEXT, CStoreRQ(1, CT, ds.SOPInstanceUID)))
            await peer.send(pdata(CT_CONTEXT, False, True, ct_bytes(ds)))
            response = await peer.response()
            assert response.status == Status.PROCESSING_FAILURE  # type: ignore[union-attr]
            assert list((tmp_path / TEMP_DIR).iterdir()) == []
            await peer.send(encode(AReleaseRQ()))
            assert await peer.read_pdu() == AReleaseRP()
            peer.close()
            await archive.settled()
            archive.assert_nothing_stored()
            await archive.echo()

    run(scenario)
