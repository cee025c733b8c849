"""The sender against an SCP that fails at each protocol step: a definite result per
file, retries for what was not acknowledged, and no wait beyond the timeouts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from conftest import SAMPLE_FILES, free_port
from dimse import events as ev
from dimse.connection import Connection
from dimse.dimse import CStoreRQ, CStoreRSP
from dimse.files import open_dicom_file
from dimse.negotiation import AcceptorPolicy, negotiate
from dimse.pdu import AAssociateRJ, RejectReason, RejectResult, RejectSource
from dimse.sender import Client, Kind, StoreResult
from dimse.transport import Timeouts

FILES = [SAMPLE_FILES[0], SAMPLE_FILES[2], SAMPLE_FILES[3]]
QUICK = Timeouts(connect=2, acse=1, dimse=1, idle=5)


class FaultySCP:
    """Misbehaves at one step on its first `faulty` connections, then serves normally."""

    def __init__(self, fault: str, faulty: int = 1) -> None:
        self.fault, self.faulty = fault, faulty
        self.connections = 0
        self.stored: list[str] = []
        syntaxes = {open_dicom_file(p).sop_class_uid for p in FILES}
        everything = frozenset(open_dicom_file(p).transfer_syntax for p in FILES) | {
            "1.2.840.10008.1.2",
            "1.2.840.10008.1.2.1",
        }
        self.policy = AcceptorPolicy("SCP", dict.fromkeys(syntaxes, everything))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        fault = self.fault if self.connections <= self.faulty else "none"
        try:
            await self._serve(reader, writer, fault)
        finally:
            writer.close()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, fault: str
    ) -> None:
        if fault == "close-at-once":
            return
        connection = Connection()
        connection.connection_made()
        stores = 0
        while True:
            data = await reader.read(65536)
            if fault == "stall-association":
                await asyncio.sleep(30)  # never answers; the client's ACSE timeout ends it
            for event in connection.receive_data(data):
                if isinstance(event, ev.AssociationRequested):
                    if fault == "reject":
                        reason = RejectReason.CALLED_AE_NOT_RECOGNIZED
                        connection.reject(
                            AAssociateRJ(RejectResult.PERMANENT, RejectSource.SERVICE_USER, reason)
                        )
                    else:
                        answer = negotiate(event.request, self.policy)
                        assert not isinstance(answer, AAssociateRJ)
                        connection.accept(*answer)
                elif isinstance(event, ev.CommandReceived):
                    if fault == "abort-on-command" and stores == 1:
                        connection.abort()
                        break  # what came with the command in this read is dropped too
                    command = event.message
                elif isinstance(event, ev.DataReceived):
                    if fault == "reset-mid-data" and stores == 1:
                        writer.transport.abort()
                        return
                    if event.last:
                        stores += 1
                        assert isinstance(command, CStoreRQ)
                        if fault == "no-response" and stores == 2:
                            continue  # the client's DIMSE timeout ends it
                        self.stored.append(command.affected_sop_instance_uid)
                        connection.send_message(
                            event.context_id,
                            CStoreRSP(
                                command.message_id,
                                0,
                                command.affected_sop_class_uid,
                                command.affected_sop_instance_uid,
                            ),
                        )
                elif isinstance(event, ev.ReleaseRequested):
                    if fault == "no-release-answer":
                        await asyncio.sleep(30)
                    connection.accept_release()
            writer.writelines(connection.data_to_send())
            await writer.drain()
            if connection.closing or not data:
                return


async def _send(scp: FaultySCP | None, retries: int) -> tuple[list[StoreResult], float]:
    port = free_port()
    server = None
    if scp is not None:
        server = await asyncio.start_server(scp.handle, "127.0.0.1", port)
    client = Client(
        "127.0.0.1",
        port,
        called_ae="SCP",
        async_ops=1,
        retries=retries,
        retry_delay=0.05,
        timeouts=QUICK,
    )
    for path in FILES:
        client.add_request(path)
    started = time.monotonic()
    try:
        results = await asyncio.wait_for(client.send(), 30)
    finally:
        if server is not None:
            server.close()
    return results, time.monotonic() - started


def test_connection_refused() -> None:
    results, elapsed = asyncio.run(_send(None, retries=0))
    assert all(r.kind is Kind.NOT_SENT and r.association_failed for r in results)
    assert "could not connect" in results[0].description
    assert elapsed < 5


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("close-at-once", "closed"),
        ("stall-association", "no answer to the association request"),
        ("reject", "called AE title not recognized"),
    ],
)
def test_association_set_up_faults_without_retries(fault: str, says: str) -> None:
    results, elapsed = asyncio.run(_send(FaultySCP(fault), retries=0))
    assert len(results) == len(FILES)
    for result in results:
        assert result.kind is Kind.NOT_SENT and result.association_failed
        assert says in result.description, result.description
    assert elapsed < 2 * QUICK.acse + 3  # bounded by the timeouts, not by the peer


@pytest.mark.parametrize(
    "fault",
    ["close-at-once", "stall-association", "abort-on-command", "reset-mid-data", "no-response"],
)
def test_retries_store_every_file_exactly_once(fault: str) -> None:
    scp = FaultySCP(fault)
    results, elapsed = asyncio.run(_send(scp, retries=2))
    assert [r.kind for r in results] == [Kind.SUCCESS] * len(FILES), results
    assert scp.connections == 2
    uids = [open_dicom_file(p).sop_instance_uid for p in FILES]
    assert sorted(scp.stored) == sorted(uids)  # each once: acknowledged ones not re-sent
    assert elapsed < 10


def test_mid_association_fault_without_retries_reports_the_rest() -> None:
    results, _ = asyncio.run(_send(FaultySCP("abort-on-command"), retries=0))
    assert results[0].kind is Kind.SUCCESS
    for result in results[1:]:
        assert result.kind is Kind.NOT_SENT and "aborted" in result.description


def test_a_release_never_answered_keeps_the_acknowledged_results() -> None:
    scp = FaultySCP("no-release-answer")
    results, elapsed = asyncio.run(_send(scp, retries=2))
    assert [r.kind for r in results] == [Kind.SUCCESS] * len(FILES)
    assert scp.connections == 1  # nothing was left to retry
    assert elapsed < QUICK.acse + 5


def test_sample_files_are_distinct() -> None:
    assert len({open_dicom_file(Path(p)).sop_instance_uid for p in FILES}) == len(FILES)
