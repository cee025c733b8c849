"""pynetdicom as the peer: its SCU against our server, our client against its SCP."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt

import dimse
from conftest import (
    SAMPLE_FILES,
    Processes,
    dataset_bytes,
    dimse_command,
    free_port,
    stored_files,
)
from dimse.client import contexts_for
from dimse.files import open_dicom_file

pytestmark = pytest.mark.interop


def test_pynetdicom_scu_to_dimse_serve(
    processes: Processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, out = free_port(), tmp_path / "archive"
    processes.server(dimse_command("serve", port, "-od", out, "--bind", "127.0.0.1"), port)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the file's bytes
    ae = AE(ae_title="PYNETDICOM")
    files = [open_dicom_file(p) for p in SAMPLE_FILES]
    for file in files:
        ae.add_requested_context(file.sop_class_uid, file.transfer_syntax)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="DIMSE")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        for file in files:
            status = assoc.send_c_store(file.path)
            assert status.Status == 0, file.path.name
    finally:
        assoc.release()
    received = stored_files(out)
    for file in files:
        assert dataset_bytes(received[file.sop_instance_uid]) == dataset_bytes(file.path)


class PynetdicomSCP:
    """pynetdicom's storage SCP in a thread, keeping each data set's encoded bytes."""

    def __init__(self, port: int) -> None:
        self.received: dict[str, tuple[str, bytes]] = {}
        self.lock = threading.Lock()
        ae = AE(ae_title="PYNETDICOM")
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context("1.2.840.10008.1.1")
        self.server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.on_store)]
        )

    def on_store(self, event: evt.Event) -> int:
        request = event.request
        with self.lock:
            self.received[request.AffectedSOPInstanceUID] = (
                event.context.transfer_syntax,
                request.DataSet.getvalue(),
            )
        return 0x0000


@pytest.fixture
def pynetdicom_scp() -> Iterator[tuple[int, PynetdicomSCP]]:
    port = free_port()
    scp = PynetdicomSCP(port)
    yield port, scp
    scp.server.shutdown()


def test_dimse_client_to_pynetdicom_scp(pynetdicom_scp: tuple[int, PynetdicomSCP]) -> None:
    port, scp = pynetdicom_scp
    files = [open_dicom_file(p) for p in SAMPLE_FILES]

    async def send() -> list[int]:
        async with dimse.connect(
            "127.0.0.1",
            port,
            called_ae="PYNETDICOM",
            contexts=contexts_for(files),
            async_ops=4,
        ) as assoc:
            responses = await asyncio.gather(*(assoc.store(f) for f in files))
        return [r.status for r in responses]

    assert asyncio.run(send()) == [0] * len(files)
    for file in files:
        syntax, data = scp.received[file.sop_instance_uid]
        assert syntax == file.transfer_syntax, file.path.name
        sent = dataset_bytes(file.path)
        assert data == sent + bytes(len(sent) % 2), file.path.name


def test_dimse_echo_to_pynetdicom_scp(pynetdicom_scp: tuple[int, PynetdicomSCP]) -> None:
    port, _ = pynetdicom_scp

    async def echo() -> int:
        async with dimse.connect("127.0.0.1", port, called_ae="PYNETDICOM") as assoc:
            return await assoc.echo()

    assert asyncio.run(echo()) == 0
