"""The sender (dimse.sender.Client and `dimse store`) against real peers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_decoder
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

import dimse
from conftest import (
    SAMPLE_FILES,
    TEST_FILES,
    Processes,
    dataset_bytes,
    dimse_command,
    free_port,
    nested_sequences,
    require,
    run,
    stored_files,
)
from dimse.files import open_dicom_file
from dimse.sender import Client, Kind, StoreResult, find_files, plan_contexts
from dimse.sop_classes import storage_sop_classes
from dimse.storage import StorageProvider
from test_interop_pynetdicom import PynetdicomSCP

JPEG_LS = "1.2.840.10008.1.2.4.81"


def same_data_set(received: Path, source: Path) -> bool:
    sent = dataset_bytes(source)
    return dataset_bytes(received) == sent + bytes(len(sent) % 2)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The samples in a folder with a sub-folder, plus a file that is not DICOM and a
    DICOMDIR (as on a CD), which is DICOM but no instance to store."""
    root = tmp_path / "exam"
    (root / "more").mkdir(parents=True)
    for n, path in enumerate(SAMPLE_FILES):
        shutil.copy(path, (root / "more" if n % 2 else root) / path.name)
    (root / "notes.txt").write_text("not an image")
    shutil.copy(TEST_FILES / "dicomdirtests" / "DICOMDIR", root / "DICOMDIR")
    return root


def _send(port: int, called_ae: str, folder: Path, **options: object) -> list[StoreResult]:
    client = Client("127.0.0.1", port, called_ae=called_ae, **options)  # type: ignore[arg-type]
    client.add_request(folder)
    return client.send_sync()


def _check_all_arrived(results: list[StoreResult], received: dict[str, Path]) -> None:
    by_kind = {kind: [r for r in results if r.kind is kind] for kind in Kind}
    assert [Path(r.source).name for r in by_kind[Kind.SKIPPED]] == ["DICOMDIR", "notes.txt"]
    assert not by_kind[Kind.NOT_SENT] and not by_kind[Kind.FAILURE]
    assert len(by_kind[Kind.SUCCESS]) == len(SAMPLE_FILES)
    for source in SAMPLE_FILES:
        stored = received[open_dicom_file(source).sop_instance_uid]
        assert same_data_set(stored, source), source.name


def test_folder_to_storescp(folder: Path, processes: Processes, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "storescp"
    out.mkdir()
    processes.server([require("storescp"), "+B", "+xa", "-od", out, "-aet", "SCP", port], port)
    results = _send(port, "SCP", folder)
    received = stored_files(out)
    _check_all_arrived(results, received)
    assert len(received) == len(SAMPLE_FILES)


def _send_to_pynetdicom(folder: Path) -> tuple[list[StoreResult], PynetdicomSCP]:
    """Send `folder` to pynetdicom's SCP, which keeps the bytes it receives."""
    port = free_port()
    scp = PynetdicomSCP(port)
    try:
        return _send(port, "PYNETDICOM", folder, async_ops=4), scp
    finally:
        scp.server.shutdown()


def test_folder_to_pynetdicom(folder: Path) -> None:
    results, scp = _send_to_pynetdicom(folder)
    assert sum(r.kind is Kind.SUCCESS for r in results) == len(SAMPLE_FILES)
    for source in SAMPLE_FILES:
        syntax, data = scp.received[open_dicom_file(source).sop_instance_uid]
        sent = dataset_bytes(source)
        assert syntax == open_dicom_file(source).transfer_syntax
        assert data == sent + bytes(len(sent) % 2), source.name


def test_folder_to_our_archive(folder: Path, processes: Processes, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "archive"
    processes.server(dimse_command("serve", port, "-od", out, "--bind", "127.0.0.1"), port)
    results = _send(port, "DIMSE", folder, async_ops=8, associations=2)
    received = stored_files(out)
    _check_all_arrived(results, received)
    assert len(received) == len(SAMPLE_FILES)


def test_sending_files_as_they_are_never_imports_pydicom(
    processes: Processes, tmp_path: Path
) -> None:
    """pydicom (with numpy) is a third of a second of `dimse store`'s start-up;
    a file the peer accepts as it is goes without it (see dimse.transcode)."""
    port, out = free_port(), tmp_path / "archive"
    processes.server(dimse_command("serve", port, "-od", out, "--bind", "127.0.0.1"), port)
    folder = tmp_path / "in"
    files = _generated(folder, 3)
    importtime = [sys.executable, "-X", "importtime", "-m", "dimse"]
    store = run([*importtime, "store", "-aec", "DIMSE", "127.0.0.1", str(port), str(folder)])
    assert store.returncode == 0, store.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in store.stderr.splitlines()]
    assert "dimse.sender" in imported
    assert not [name for name in imported if name.startswith(("pydicom", "numpy"))]
    assert sorted(stored_files(out)) == sorted(open_dicom_file(f).sop_instance_uid for f in files)


def test_a_file_cut_short_is_not_sent(tmp_path: Path) -> None:
    """A file cut by a failed copy is refused before its command goes out, as
    storescu refuses it: a peer that does not walk data sets (pynetdicom's SCP
    here) would store it as whole. Whether read by its series' layout, walked,
    larger than a read block, or deflated."""
    folder = tmp_path / "exam"
    files = _generated(folder, 6)
    ds = _instance("1.2.840.10008.5.1.4.1.1.7", generate_uid())
    ds.PixelData = bytes(1536 * 1024)  # over the sender's 1 MiB read block
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1024, 768, 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    large = folder / "large.dcm"
    ds.save_as(large, enforce_file_format=True)
    for path, keep in ((files[4], 0.5), (files[5], 0.999), (large, 0.7)):
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep) & ~1])  # even: no padding byte
    shutil.copy(TEST_FILES / "MR_truncated.dcm", folder)  # pydicom's own, cut in its pixels
    deflated = (TEST_FILES / "image_dfl.dcm").read_bytes()
    (folder / "deflated.dcm").write_bytes(deflated[: len(deflated) * 2 // 3])
    results, scp = _send_to_pynetdicom(folder)
    outcome = {Path(r.source).name: (r.kind, r.description) for r in results}
    not_sent = "not sent: the file is cut short: its data set ends inside"
    assert outcome == {
        **{path.name: (Kind.SUCCESS, "0000 Success") for path in files[:4]},
        **dict.fromkeys(
            ("004.dcm", "005.dcm", "large.dcm", "MR_truncated.dcm"),
            (Kind.NOT_SENT, f"{not_sent} (7FE0,0010)"),
        ),
        "deflated.dcm": (Kind.NOT_SENT, f"{not_sent} its deflate stream"),
    }
    assert set(scp.received) == {open_dicom_file(path).sop_instance_uid for path in files[:4]}


def test_a_file_that_changes_after_it_was_located_is_not_sent(tmp_path: Path) -> None:
    """Files are located when added and sent later: one cut or emptied meanwhile is
    reported with both sizes, and the others are sent."""
    files = _generated(tmp_path / "exam", 4)
    sizes = [path.stat().st_size for path in files]

    async def send() -> list[StoreResult]:
        provider = StorageProvider(tmp_path / "archive")
        try:
            async with dimse.Server(provider, "127.0.0.1", 0) as server:
                client = Client("127.0.0.1", server.port, called_ae="DIMSE")
                client.add_request(tmp_path / "exam")
                os.truncate(files[0], sizes[0] // 2)
                os.truncate(files[1], 0)
                return await client.send()
        finally:
            provider.close()

    outcome = {Path(r.source).name: (r.kind, r.description) for r in asyncio.run(send())}
    changed = "not sent: the file changed since it was read"
    assert outcome == {
        files[0].name: (Kind.NOT_SENT, f"{changed} ({sizes[0] // 2} bytes, {sizes[0]} then)"),
        files[1].name: (Kind.NOT_SENT, f"{changed} (0 bytes, {sizes[1]} then)"),
        files[2].name: (Kind.SUCCESS, "0000 Success"),
        files[3].name: (Kind.SUCCESS, "0000 Success"),
    }
    assert len(stored_files(tmp_path / "archive")) == 2


def test_implicit_only_peer_gets_converted_files(processes: Processes, tmp_path: Path) -> None:
    """Explicit and big endian files are converted; JPEG-LS only where a decoder exists;
    not one cut short, which pydicom would read, its pixels short."""
    port, out = free_port(), tmp_path / "storescp"
    out.mkdir()
    processes.server([require("storescp"), "+xi", "-od", out, port], port)
    names = ["CT_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "JPEGLSNearLossless_16.dcm"]
    client = Client("127.0.0.1", port)
    for name in names:
        client.add_request(TEST_FILES / name)
    client.add_request(TEST_FILES / "MR_truncated.dcm")
    results = {Path(r.source).name: r for r in client.send_sync()}
    cut = results["MR_truncated.dcm"]
    assert (cut.kind, cut.description) == (
        Kind.NOT_SENT,
        "not sent: the file is cut short: its data set ends inside (7FE0,0010)",
    )
    received = stored_files(out)
    for name in names[:3]:
        assert results[name].kind is Kind.SUCCESS, results[name]
        original = pydicom.dcmread(TEST_FILES / name)
        stored = pydicom.dcmread(received[original.SOPInstanceUID])
        assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
        assert stored.pixel_array.tolist() == original.pixel_array.tolist()
    jpeg_ls = results["JPEGLSNearLossless_16.dcm"]
    if get_decoder(JPEG_LS).is_available:
        assert jpeg_ls.kind is Kind.SUCCESS
    else:
        assert jpeg_ls.kind is Kind.NOT_SENT
        assert "cannot be decompressed" in jpeg_ls.description
        assert open_dicom_file(TEST_FILES / names[3]).sop_instance_uid not in received


def test_a_file_pydicom_cannot_read_is_reported_when_it_must_be_converted(
    tmp_path: Path,
) -> None:
    """Sequences nested 5000 deep are whole (they are sent as they are where the
    peer accepts the file's syntax), but pydicom cannot read them to convert the
    file: that file is not sent, with the reason, and the others are."""
    folder = tmp_path / "exam"
    good, deep = _generated(folder, 2)
    data = deep.read_bytes()
    pixels = data.rindex(struct.pack("<HH", 0x7FE0, 0x0010))  # sequences before the pixels
    deep.write_bytes(data[:pixels] + nested_sequences(5000) + data[pixels:])
    implicit_only = {"1.2.840.10008.5.1.4.1.1.7": frozenset({ImplicitVRLittleEndian})}

    async def send() -> list[StoreResult]:
        provider = StorageProvider(tmp_path / "archive")
        try:
            options = dimse.ServerOptions(syntaxes=implicit_only)
            async with dimse.Server(provider, "127.0.0.1", 0, options) as server:
                client = Client("127.0.0.1", server.port, called_ae="DIMSE")
                client.add_request(folder)
                return await client.send()
        finally:
            provider.close()

    outcome = {Path(r.source).name: (r.kind, r.description) for r in asyncio.run(send())}
    assert outcome[good.name] == (Kind.SUCCESS, "0000 Success")
    kind, description = outcome[deep.name]
    assert kind is Kind.NOT_SENT
    assert description.startswith("not sent: cannot be converted for the peer: maximum recursion")


def _generated(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    paths = []
    for n in range(count):
        ds = _instance("1.2.840.10008.5.1.4.1.1.7", study)
        ds.InstanceNumber = n + 1
        ds.PixelData = bytes([n % 251]) * (64 * 64)
        ds.Rows = ds.Columns = 64
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.SamplesPerPixel = 8, 8, 7, 1
        ds.PixelRepresentation, ds.PhotometricInterpretation = 0, "MONOCHROME2"
        path = folder / f"{n:03}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _instance(sop_class: str, study: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "P1", "Test^Sender", "OT"
    return ds


async def _archive_run(root: Path, client_options: dict[str, object], files: list[Path]) -> None:
    provider = StorageProvider(root)
    try:
        async with dimse.Server(provider, "127.0.0.1", 0) as server:
            client = Client("127.0.0.1", server.port, called_ae="DIMSE", **client_options)  # type: ignore[arg-type]
            for path in files:
                client.add_request(path)
            results = await client.send()
        assert [r.kind for r in results] == [Kind.SUCCESS] * len(files)
    finally:
        provider.close()


def test_async_and_parallel_store_the_same_as_one_at_a_time(tmp_path: Path) -> None:
    files = _generated(tmp_path / "src", 60)
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    asyncio.run(_archive_run(serial, {"async_ops": 1, "associations": 1}, files))
    asyncio.run(_archive_run(parallel, {"async_ops": 8, "associations": 3}, files))

    def contents(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): dataset_bytes(p) for p in stored_files(root).values()}

    assert contents(serial) == contents(parallel)
    assert len(contents(serial)) == 60


def test_more_than_128_contexts_use_several_associations(tmp_path: Path) -> None:
    classes = storage_sop_classes()[:150]
    study = generate_uid()
    datasets = [_instance(sop_class, study) for sop_class in classes]

    async def scenario() -> list[StoreResult]:
        provider = StorageProvider(tmp_path / "archive")
        try:
            async with dimse.Server(provider, "127.0.0.1", 0) as server:
                client = Client("127.0.0.1", server.port, called_ae="DIMSE")
                for ds in datasets:
                    client.add_request(ds)
                groups = plan_contexts(client.requests)
                assert len(groups) >= 2 and all(len(c) <= 128 for c, _ in groups)
                return await client.send()
        finally:
            provider.close()

    results = asyncio.run(scenario())
    assert [r.kind for r in results] == [Kind.SUCCESS] * len(classes)
    assert len(stored_files(tmp_path / "archive")) == len(classes)


class DroppingProxy:
    """Forwards to a server; cuts its first connection after `cut` bytes from the client."""

    def __init__(self, target: int, cut: int) -> None:
        self.target, self.cut, self.connections = target, cut, 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        limit = self.cut if self.connections == 1 else None
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, budget: int | None
        ) -> None:
            sent = 0
            while data := await src.read(65536):
                if budget is not None and sent + len(data) > budget:
                    break  # drop the connection mid-send
                dst.write(data)
                await dst.drain()
                sent += len(data)
            for w in (writer, up_writer):
                w.close()

        await asyncio.gather(
            pipe(reader, up_writer, limit), pipe(up_reader, writer, None), return_exceptions=True
        )


def test_retries_after_a_dropped_connection(tmp_path: Path) -> None:
    files = _generated(tmp_path / "src", 40)  # ~4.4 KB each; the cut falls mid-way
    report: list[StoreResult] = []

    async def scenario() -> list[StoreResult]:
        provider = StorageProvider(tmp_path / "archive")
        try:
            async with dimse.Server(provider, "127.0.0.1", 0) as server:
                proxy = DroppingProxy(server.port, cut=80_000)
                relay = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
                port = relay.sockets[0].getsockname()[1]
                client = Client(
                    "127.0.0.1",
                    port,
                    called_ae="DIMSE",
                    async_ops=4,
                    retries=2,
                    retry_delay=0.05,
                    on_result=report.append,
                )
                for path in files:
                    client.add_request(path)
                results = await client.send()
                relay.close()
                assert proxy.connections == 2  # the first was cut, the retry went through
                assert provider.index.count() == len(files)
                return results
        finally:
            provider.close()

    results = asyncio.run(scenario())
    assert [r.kind for r in results] == [Kind.SUCCESS] * len(files)
    assert sorted(r.source for r in report) == sorted(str(p) for p in files)  # once each
    assert len(stored_files(tmp_path / "archive")) == len(files)


def test_a_file_whose_meta_holds_no_uid_is_skipped_and_the_others_sent(
    processes: Processes, tmp_path: Path
) -> None:
    """A byte gone wrong in a file's Transfer Syntax UID (0002,0010) made the
    association request of the whole batch impossible to encode: nothing was sent,
    and the sender waited for an answer until its timeout."""
    ct = (TEST_FILES / "CT_small.dcm").read_bytes()
    syntax = b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\x00"
    assert syntax in ct
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "damaged.dcm").write_bytes(ct.replace(syntax, syntax.replace(b"840", b"8\x910")))
    shutil.copy(TEST_FILES / "CT_small.dcm", folder / "good.dcm")
    port, out = free_port(), tmp_path / "archive"
    processes.server(dimse_command("serve", port, "-od", out, "--bind", "127.0.0.1"), port)

    sent = run(dimse_command("store", "-aec", "DIMSE", "127.0.0.1", port, folder))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "good.dcm: 0000 Success" in sent.stdout
    assert "damaged.dcm: skipped: its Transfer Syntax UID is not a UID" in sent.stdout
    assert "Traceback" not in sent.stderr
    assert len(stored_files(out)) == 1


def test_a_proposed_context_and_a_raw_data_set_must_name_uids() -> None:
    """ValueError where they are made, not a request that cannot be encoded later."""
    with pytest.raises(ValueError, match="not a UID"):
        dimse.ProposedContext("1.2.840.10008.5.1.4.1.1.2", ("1.2.840.10008.1.2.\x91",))
    with pytest.raises(ValueError, match="not a UID"):
        dimse.ProposedContext("CT Image Storage", (ExplicitVRLittleEndian,))
    ct = "1.2.840.10008.5.1.4.1.1.2"
    with pytest.raises(ValueError, match="its Transfer Syntax UID is not a UID"):
        dimse.RawDataSet(ct, "1.2.3", "1.2.840.10008.1.2.\x91", b"")
    with pytest.raises(ValueError, match="its SOP Instance UID is not a UID"):
        dimse.RawDataSet(ct, "1.2.\x91", ExplicitVRLittleEndian, b"")


def test_cli_report_and_exit_codes(folder: Path, processes: Processes, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "archive"
    processes.server(dimse_command("serve", port, "-od", out, "--bind", "127.0.0.1"), port)
    report = tmp_path / "report.jsonl"
    sent = run(
        dimse_command("store", "-aec", "DIMSE", "127.0.0.1", port, "-r", folder, "--report", report)
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr  # notes.txt: skipped, noted
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(lines) == len(SAMPLE_FILES) + 2
    assert {line["result"] for line in lines} == {"success", "skipped"}
    assert "notes.txt: skipped: not a DICOM file" in sent.stdout
    assert "DICOMDIR: skipped: a DICOMDIR, the directory of a file-set" in sent.stdout
    assert "2 skipped (not DICOM instances)" in sent.stdout.splitlines()[-1]
    assert "stored" in sent.stdout.splitlines()[-1]

    only_dicom = run(dimse_command("store", "-aec", "DIMSE", "127.0.0.1", port, SAMPLE_FILES[0]))
    assert only_dicom.returncode == 0 and "0000 Success" in only_dicom.stdout

    rejected = run(dimse_command("store", "-aec", "WRONG", "127.0.0.1", port, SAMPLE_FILES[0]))
    assert rejected.returncode == 3
    assert "called AE title not recognized" in rejected.stdout

    usage = run(dimse_command("store", "127.0.0.1", "99999", SAMPLE_FILES[0]))
    assert usage.returncode == 2
    assert len(usage.stderr.strip().splitlines()) == 1 and "Traceback" not in usage.stderr

    echo = run(dimse_command("echo", "-aec", "DIMSE", "127.0.0.1", port, "-r", "2"))
    assert echo.returncode == 0
    assert echo.stdout.count("0000 Success") == 2 and " ms)" in echo.stdout


def test_a_data_set_without_file_meta_is_sent_encoded(tmp_path: Path) -> None:
    ds = _instance("1.2.840.10008.5.1.4.1.1.7", generate_uid())
    del ds.file_meta

    async def scenario() -> list[StoreResult]:
        provider = StorageProvider(tmp_path / "archive")
        try:
            async with dimse.Server(provider, "127.0.0.1", 0) as server:
                client = Client("127.0.0.1", server.port, called_ae="DIMSE")
                (request,) = client.add_request(ds)
                assert request.transfer_syntax == ExplicitVRLittleEndian
                return await client.send()
        finally:
            provider.close()

    assert [r.kind for r in asyncio.run(scenario())] == [Kind.SUCCESS]
    (stored,) = stored_files(tmp_path / "archive").values()
    assert pydicom.dcmread(stored).SOPInstanceUID == ds.SOPInstanceUID


def test_files_of_a_folder_are_found_as_pathlib_finds_them(tmp_path: Path) -> None:
    """In Path order, links to files included, links to folders not followed."""
    for name in ("b/z.dcm", "b/a.dcm", "a.dcm", "b.dcm", "c/d/e.dcm", ".hidden", "B.dcm"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"x")
    (tmp_path / "in" / "link.dcm").symlink_to(tmp_path / "in" / "a.dcm")
    (tmp_path / "in" / "folder-link").symlink_to(tmp_path / "in" / "c")
    folder = tmp_path / "in"
    assert find_files([folder], recurse=True) == sorted(p for p in folder.rglob("*") if p.is_file())
    assert find_files([str(folder) + "/"], recurse=False) == sorted(
        p for p in folder.glob("*") if p.is_file()
    )
    assert folder / "folder-link" / "d" / "e.dcm" not in find_files([folder], recurse=True)
