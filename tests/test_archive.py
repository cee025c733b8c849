"""The archive (`dimse serve`) end to end: real sockets, real peers, real files on disk.

Each test starts `python -m dimse serve` as a subprocess on 127.0.0.1 and sends it
instances generated with pydicom: with dcmtk's storescu, pynetdicom, `dimse store`
(in a subprocess, or through its entry point in this process), `dimse.connect`, or
an association driven by hand to stop in the middle of a data set.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config

import dimse
from conftest import (
    TEST_FILES,
    Processes,
    dataset_bytes,
    dimse_command,
    free_port,
    python_output,
    require,
    run,
    stored_files,
    unavailable,
)
from dimse import cli, hooks, storage
from dimse import events as ev
from dimse.client import AssociationRejectedError
from dimse.connection import Connection
from dimse.dimse import CStoreRQ, CStoreRSP
from dimse.files import open_dicom_file
from dimse.index import Index
from dimse.negotiation import IMPLEMENTATION_CLASS_UID, ProposedContext, build_request
from dimse.pdu import LOCAL_LIMIT_EXCEEDED, RejectReason, RejectResult, RejectSource
from dimse.sender import Kind, StoreResult
from dimse.storage import INDEX_FILE, TEMP_DIR, check_index

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = str(ExplicitVRLittleEndian)
HOST = "127.0.0.1"


# --- instances ------------------------------------------------------------------------


def make_instance(
    path: Path,
    *,
    sop_class: str = CT,
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 1,
    number: int = 1,
    patient: str = "ARCHIVE^TEST",
    rows: int = 16,
    columns: int = 16,
    description: str = "generated",
    sop_instance_uid: str | None = None,
) -> Path:
    """A small, valid CT/MR image in Explicit VR Little Endian, with distinct UIDs."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = patient
    ds.PatientID = patient.split("^")[0]
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101010"
    ds.StudyDescription = "archive test"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = "REF^DOC"
    ds.Modality = "CT" if sop_class == CT else "MR"
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    # Pixel values vary with the instance, so equal bytes mean the right file.
    ds.PixelData = (number.to_bytes(4, "little") * (rows * columns // 2))[: rows * columns * 2]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_study(
    folder: Path, *, sop_class: str, series: int, per_series: int, patient: str
) -> list[Path]:
    study_uid = generate_uid()
    paths = []
    for s in range(series):
        series_uid = generate_uid()
        for n in range(per_series):
            number = s * per_series + n + 1
            paths.append(
                make_instance(
                    folder / f"{patient}-{number:04d}.dcm",
                    sop_class=sop_class,
                    study_uid=study_uid,
                    series_uid=series_uid,
                    series_number=s + 1,
                    number=number,
                    patient=patient,
                )
            )
    return paths


@dataclass(frozen=True)
class Header:
    study: str
    series: str
    sop: str


def header(path: Path) -> Header:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return Header(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


def study_path(root: Path, path: Path) -> Path:
    """Where the default layout files an instance: <Study>/<Series>/<SOP>.dcm."""
    h = header(path)
    return root / h.study / h.series / f"{h.sop}.dcm"


def archive_files(root: Path) -> list[Path]:
    """Every stored instance: *.dcm outside the hidden temporary area."""
    return sorted(
        p for p in root.rglob("*.dcm") if not p.relative_to(root).parts[0].startswith(".")
    )


def indexed(root: Path) -> dict[str, tuple[str, int]]:
    """The index's rows: SOP Instance UID -> (relative path, size)."""
    index = Index(root / INDEX_FILE)
    try:
        return {uid: (path, size) for uid, path, size in index.files()}
    finally:
        index.close()


# --- processes ------------------------------------------------------------------------


class Output:
    """A process's output, read line by line in a thread (a full pipe would block it)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._done = False
        assert process.stdout is not None
        threading.Thread(target=self._read, args=(process.stdout,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._done = True
            self._changed.notify_all()

    def wait_for(self, found: Callable[[list[str]], bool], timeout: float = 15.0) -> bool:
        with self._changed:
            return self._changed.wait_for(
                lambda: found(self.lines) or self._done, timeout
            ) and found(self.lines)

    def wait_closed(self, timeout: float = 15.0) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._done, timeout)

    @property
    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)


@dataclass
class Archive:
    """A `dimse serve` subprocess and its archive folder."""

    port: int
    root: Path
    process: subprocess.Popen[bytes]
    output: Output

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, as an operator would; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.output.wait_closed()
        return code


def serve(
    processes: Processes,
    root: Path,
    *options: str | Path,
    **popen: object,
) -> Archive:
    """Start `dimse serve` on 127.0.0.1 and wait until it says it listens.

    Waiting for its banner rather than probing the port keeps stray connections
    out of tests that count associations.
    """
    port = free_port()
    args = dimse_command("serve", str(port), "-od", root, "--bind", HOST, *options)
    process = processes.start(args, **popen)
    output = Output(process)
    if not output.wait_for(lambda lines: any("listening on" in line for line in lines)):
        raise AssertionError(f"dimse serve did not start:\n{output.text}")
    return Archive(port, root, process, output)


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def dimse_cli(*args: str | Path) -> Ran:
    """The `dimse` command run in this process through its entry point, as the console
    script runs it (an interpreter start-up, with pydicom's imports, costs ~1 s)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main([str(a) for a in args])
    return Ran(code, stdout.getvalue(), stderr.getvalue())


def store(
    port: int,
    *paths: str | Path,
    calling: str = "STORESCU",
    called: str = "DIMSE",
    options: tuple[str, ...] = (),
) -> Ran:
    """`dimse store`."""
    return dimse_cli("store", "-aet", calling, "-aec", called, *options, HOST, str(port), *paths)


_STATUS_LINE = re.compile(r"^(?P<path>.+): (?P<status>[0-9A-F]{4}) ")


def statuses(output: str) -> dict[str, str]:
    """`dimse store`'s per-file lines: path -> status as 4 hex digits."""
    found = {}
    for line in output.splitlines():
        match = _STATUS_LINE.match(line)
        if match:
            found[Path(match["path"]).name] = match["status"]
    return found


def store_each(
    port: int, sources: Sequence[Path | dimse.RawDataSet], contexts: list[dimse.ProposedContext]
) -> list[tuple[int, str | None]]:
    """C-STORE each source in turn on one association (`dimse.connect`): each
    response's status and error comment."""

    async def send() -> list[tuple[int, str | None]]:
        async with dimse.connect(HOST, port, called_ae="DIMSE", contexts=contexts) as assoc:
            responses = [await assoc.store(source) for source in sources]
        return [(response.status, response.error_comment) for response in responses]

    return asyncio.run(send())


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `condition` until it holds or `timeout` s have passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def index_check(root: Path) -> subprocess.CompletedProcess[str]:
    return run(dimse_command("index", "check", "-od", root), timeout=60)


# --- 1. storescu and pynetdicom fill the archive -----------------------------------------


@pytest.fixture(scope="module")
def two_studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    """A CT study and an MR study, 4 series x 50 instances each, in folders of their own."""
    base = tmp_path_factory.mktemp("studies")
    ct = make_study(base / "ct", sop_class=CT, series=4, per_series=50, patient="CTPAT^ONE")
    mr = make_study(base / "mr", sop_class=MR, series=4, per_series=50, patient="MRPAT^TWO")
    return ct, mr


@pytest.mark.interop
@pytest.mark.parametrize("sync", ["file", "filesystem"])
def test_storescu_and_pynetdicom_fill_the_archive(
    processes: Processes,
    tmp_path: Path,
    two_studies: tuple[list[Path], list[Path]],
    monkeypatch: pytest.MonkeyPatch,
    sync: str,
) -> None:
    ct, mr = two_studies
    archive = serve(processes, tmp_path / "archive", "-q", "--sync", sync)
    root = archive.root

    # dcmtk's storescu sends the CT study's folder (+sd scans it) on one association.
    result = run(
        [require("storescu"), "+sd", "-aet", "STORESCU", "-aec", "DIMSE", HOST,
         str(archive.port), ct[0].parent],
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Failed" not in result.stderr, result.stderr

    # pynetdicom sends the MR study as the files' own bytes.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(MR, EXPLICIT_LE)
    assoc = ae.associate(HOST, archive.port, ae_title="DIMSE")
    assert assoc.is_established
    # pynetdicom leaves Nagle on: each store would wait out a delayed ACK (~40 ms).
    assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        failed = [p.name for p in mr if assoc.send_c_store(p).Status != 0]
    finally:
        assoc.release()
    assert failed == []

    stored = archive_files(root)
    assert len(stored) == len(ct) + len(mr) == 400
    for sources, calling_ae in ((ct, "STORESCU"), (mr, "PYNETDICOM")):
        for source in sources:
            target = study_path(root, source)
            assert target.is_file(), source.name
            # storescu re-encodes what it read and pynetdicom sends the file's
            # bytes; with these plain Explicit VR LE files both arrive bit-identical.
            assert dataset_bytes(target) == dataset_bytes(source), source.name
            meta = pydicom.dcmread(target, stop_before_pixels=True).file_meta
            assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
            assert meta.SourceApplicationEntityTitle == calling_ae
            assert meta.MediaStorageSOPInstanceUID == header(source).sop
    assert set(stored) == {study_path(root, s) for s in ct + mr}  # nothing else, once each

    check = index_check(root)
    assert check.returncode == 0, check.stdout
    assert "400 indexed instance(s): consistent" in check.stdout
    listing = run(dimse_command("ls", "-od", root))
    assert listing.returncode == 0, listing.stderr
    assert "2 studies" in listing.stdout
    rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines()[1:-1]}
    assert set(rows) == {"CTPAT", "MRPAT"}
    assert rows["CTPAT"][3:6] == ["CT", "4", "200"]  # modality, series, images
    assert rows["MRPAT"][3:6] == ["MR", "4", "200"]
    assert archive.stop() == 0


# --- 2. SIGKILL in the middle of a transfer ------------------------------------------------


@pytest.fixture(scope="module")
def large_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """30 instances of 4 MiB in one series."""
    folder = tmp_path_factory.mktemp("large")
    study, series = generate_uid(), generate_uid()
    return [
        make_instance(
            folder / f"large-{n:02d}.dcm",
            study_uid=study,
            series_uid=series,
            number=n + 1,
            rows=1024,
            columns=2048,
        )
        for n in range(30)
    ]


def freeze(process: subprocess.Popen[bytes]) -> None:
    """SIGSTOP, and wait until every thread of the process has stopped."""
    process.send_signal(signal.SIGSTOP)
    tasks = Path(f"/proc/{process.pid}/task")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        states = []
        for task in tasks.iterdir():
            try:
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:  # a thread that just ended
                continue
        if all(state in "Tt" for state in states):
            return
        time.sleep(0.0005)
    raise AssertionError("the server did not stop")


@pytest.mark.slow
def test_sigkill_mid_transfer_leaves_no_partial_file(
    processes: Processes, tmp_path: Path, large_files: list[Path]
) -> None:
    root = tmp_path / "archive"
    incoming = root / TEMP_DIR
    archive = serve(processes, root, "-q")
    client = processes.start(
        [sys.executable, "-u", "-m", "dimse", "store", "-aet", "KILLTEST", "-aec", "DIMSE",
         "--async-ops", "4", HOST, str(archive.port), *large_files]
    )  # fmt: skip
    client_output = Output(client)

    def successes(lines: list[str]) -> list[str]:
        return [line for line in lines if line.endswith(": 0000 Success")]

    assert client_output.wait_for(lambda lines: len(successes(lines)) >= 5, 30), client_output.text
    # Catch the server with a data set half written: freeze it, look, and kill it
    # there, or let it run on a moment and look again.
    deadline = time.monotonic() + 10
    while True:
        freeze(archive.process)
        leftovers = sorted(p.name for p in incoming.iterdir())
        if leftovers:
            break
        archive.process.send_signal(signal.SIGCONT)
        assert time.monotonic() < deadline, "never caught the server writing a data set"
        time.sleep(0.001)
    archive.process.send_signal(signal.SIGKILL)
    archive.process.wait(10)
    assert client.wait(30) in (1, 3), client_output.text
    client_output.wait_closed()
    acknowledged = {Path(line.rsplit(": ", 1)[0]).name for line in successes(client_output.lines)}
    assert 5 <= len(acknowledged) < len(large_files)
    assert sorted(p.name for p in incoming.iterdir()) == leftovers  # the kill left them

    restarted = serve(processes, root, "-q")
    assert list(incoming.iterdir()) == []  # start-up removed the unfinished data sets

    sources = {header(p).sop: p for p in large_files}
    stored = {}
    for path in root.rglob("*.dcm"):  # every file, wherever it is, is a whole instance
        ds = pydicom.dcmread(path)
        source = sources[ds.SOPInstanceUID]
        assert path == study_path(root, source)
        assert dataset_bytes(path) == dataset_bytes(source), path.name
        stored[ds.SOPInstanceUID] = path
    rows = indexed(root)
    assert set(rows) <= set(stored)  # nothing indexed without its file
    for name in acknowledged:
        uid = header(large_files[0].parent / name).sop
        assert uid in rows, f"{name} was answered Success but is not indexed"
        assert root / rows[uid][0] == stored[uid]
    check = index_check(root)
    unindexed = set(stored) - set(rows)
    if unindexed:
        # The one legitimate gap: killed after the rename and before the index
        # commit, so the file is whole but was never answered Success.
        assert not unindexed & {header(large_files[0].parent / n).sop for n in acknowledged}
        assert check.returncode == 1
        assert check.stdout.count("not in the index") == len(unindexed), check.stdout
        assert "missing" not in check.stdout and "size differs" not in check.stdout
    else:
        assert check.returncode == 0, check.stdout
        assert f"{len(rows)} indexed instance(s): consistent" in check.stdout
    assert restarted.stop() == 0


# --- 3. duplicates -------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["keep", "overwrite", "reject"])
def test_duplicate_policy(processes: Processes, tmp_path: Path, policy: str) -> None:
    first = make_instance(tmp_path / "first.dcm", description="first copy")
    h = header(first)
    second = make_instance(
        tmp_path / "second.dcm",
        study_uid=h.study,
        series_uid=h.series,
        sop_instance_uid=h.sop,
        number=7,
        description="second, longer copy",
    )
    assert dataset_bytes(first) != dataset_bytes(second)
    options = () if policy == "keep" else ("--duplicates", policy)  # keep is the default
    archive = serve(processes, tmp_path / "archive", *options)
    root = archive.root
    target = study_path(root, first)

    result = store(archive.port, first)
    assert result.returncode == 0, result.stdout + result.stderr
    assert dataset_bytes(target) == dataset_bytes(first)
    again = store(archive.port, second)
    if policy == "keep":
        assert again.returncode == 0, again.stdout
        assert statuses(again.stdout) == {"second.dcm": "0000"}
        expected = first
    elif policy == "overwrite":
        assert again.returncode == 0, again.stdout
        assert statuses(again.stdout) == {"second.dcm": "0000"}
        expected = second
    else:
        assert again.returncode == 1, again.stdout
        assert statuses(again.stdout) == {"second.dcm": "0111"}
        expected = first
    assert archive_files(root) == [target]
    assert dataset_bytes(target) == dataset_bytes(expected)
    assert indexed(root) == {h.sop: (str(target.relative_to(root)), target.stat().st_size)}
    assert list((root / TEMP_DIR).iterdir()) == []
    assert check_index(root).consistent


def test_copies_in_one_round_overwrite_each_other_wherever_they_are_filed(
    processes: Processes, tmp_path: Path
) -> None:
    """--duplicates overwrite, each instance sent twice at once, in two studies (a
    corrected study UID): the copies share filing rounds, and the archive keeps one
    file per instance, the one its index names (the first copy was left behind)."""
    pairs = []
    for n in range(10):
        first = make_instance(tmp_path / f"{n}a.dcm", number=n)
        second = make_instance(tmp_path / f"{n}b.dcm", number=n, sop_instance_uid=header(first).sop)
        assert header(first).study != header(second).study
        pairs.append((first, second))
    archive = serve(processes, tmp_path / "archive", "--duplicates", "overwrite")
    contexts = [dimse.ProposedContext(CT, (ExplicitVRLittleEndian,))]

    async def send() -> list[int]:
        async with dimse.connect(
            HOST, archive.port, called_ae="DIMSE", contexts=contexts, async_ops=16
        ) as assoc:
            stores = [assoc.store(path) for pair in pairs for path in pair]
            return [response.status for response in await asyncio.gather(*stores)]

    assert asyncio.run(send()) == [0] * 20
    root = archive.root
    files = archive_files(root)
    assert len(files) == 10
    assert check_index(root).consistent
    copies = {dataset_bytes(path) for pair in pairs for path in pair}
    assert all(dataset_bytes(path) in copies for path in files)


# --- 4. data set that is not the instance the command names --------------------------------


def test_sop_mismatch_is_refused_and_the_association_continues(
    processes: Processes, tmp_path: Path
) -> None:
    """A data set that is not the instance its C-STORE names gets A900 (PS3.4 §B.2.3)."""
    instance = make_instance(tmp_path / "instance.dcm")
    data = dataset_bytes(instance)
    sop = header(instance).sop
    archive = serve(processes, tmp_path / "archive")

    contexts = [dimse.ProposedContext(c, (ExplicitVRLittleEndian,)) for c in (CT, MR)]
    sources = [
        dimse.RawDataSet(sop_class, sop_instance, ExplicitVRLittleEndian, data)
        for sop_class, sop_instance in ((MR, sop), (CT, generate_uid()), (CT, sop))
    ]
    # The class, then the instance disagree with the data set; then the right names,
    # on the same association, after the two failures.
    statuses = [status for status, _ in store_each(archive.port, sources, contexts)]
    assert statuses == [0xA900, 0xA900, 0]
    root = archive.root
    assert archive_files(root) == [study_path(root, instance)]
    assert set(indexed(root)) == {sop}
    assert list((root / TEMP_DIR).iterdir()) == []


def test_a_data_set_cut_short_is_refused_and_the_others_are_stored(
    processes: Processes, tmp_path: Path
) -> None:
    """A file cut by a failed copy still has the header the index reads: its data set
    ends inside an element, and PS3.4 §B.2.3's Cxxx answers it, whether it was held
    in memory (after its source's layout was learnt) or streamed to disk, or
    deflated. (`dimse store` does not send such a file: raw bytes are sent here.)"""
    series = generate_uid()

    def small(number: int) -> Path:
        return make_instance(
            tmp_path / f"{number}.dcm", series_uid=series, number=number, rows=64, columns=64
        )

    good = [small(n) for n in (1, 2, 3)]
    large = make_instance(tmp_path / "large.dcm", rows=400, columns=400)  # over HOLD_LIMIT
    assert large.stat().st_size > storage.HOLD_LIMIT
    cuts = [  # (a copy of a stored instance would be answered as one, unread)
        (small(4), 0.5),
        (small(5), 0.999),
        (make_instance(tmp_path / "6.dcm", rows=400, columns=400), 0.7),
    ]
    deflated = open_dicom_file(TEST_FILES / "image_dfl.dcm")
    archive = serve(processes, tmp_path / "archive")

    sources: list[Path | dimse.RawDataSet] = [*good]
    for path, keep in cuts:
        data = dataset_bytes(path)
        cut = data[: int(len(data) * keep) & ~1]  # even: no padding byte
        sources.append(dimse.RawDataSet(CT, header(path).sop, ExplicitVRLittleEndian, cut))
    sources.append(large)
    data = dataset_bytes(deflated.path)
    cut = data[: len(data) * 2 // 3]
    dfl = DeflatedExplicitVRLittleEndian
    sop_class, sop = deflated.sop_class_uid, deflated.sop_instance_uid
    sources.append(dimse.RawDataSet(sop_class, sop, dfl, cut))
    contexts = [
        dimse.ProposedContext(CT, (ExplicitVRLittleEndian,)),
        dimse.ProposedContext(sop_class, (dfl,)),
    ]
    inside = (0xC000, "data set ends inside (7FE0,0010)")
    answers = store_each(archive.port, sources, contexts)
    assert answers == [(0, None)] * 3 + [inside] * 3 + [(0, None)] + [
        (0xC000, "data set ends inside its deflate stream")
    ]
    root = archive.root
    assert archive_files(root) == sorted(study_path(root, path) for path in (*good, large))
    assert set(indexed(root)) == {header(path).sop for path in (*good, large)}
    assert list((root / TEMP_DIR).iterdir()) == []
    archive.stop()
    assert archive.output.text.count("the data set ends inside (7FE0,0010)") == 3
    assert "the data set ends inside its deflate stream" in archive.output.text


def test_an_odd_data_set_arrives_padded_and_is_whole(processes: Processes, tmp_path: Path) -> None:
    """An odd-length last value (against PS3.5 §7.1.1, but written by some devices)
    makes an odd data set, which its sender pads with a NUL (PDVs carry even
    lengths): that byte is no element cut short. Held in memory or streamed."""
    small = make_instance(tmp_path / "small.dcm")
    large = make_instance(tmp_path / "large.dcm", rows=400, columns=400)
    odd_padding = struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, 3) + b"abc"
    archive = serve(processes, tmp_path / "archive")

    sources = [
        dimse.RawDataSet(
            CT, header(path).sop, ExplicitVRLittleEndian, dataset_bytes(path) + odd_padding
        )
        for path in (small, large)
    ]
    contexts = [dimse.ProposedContext(CT, (ExplicitVRLittleEndian,))]
    assert store_each(archive.port, sources, contexts) == [(0, None), (0, None)]
    assert set(indexed(archive.root)) == {header(small).sop, header(large).sop}


def test_a_header_after_a_large_value_is_indexed_in_bounded_memory(
    processes: Processes, tmp_path: Path
) -> None:
    """A character set leaves the header to pydicom, which is given its elements
    alone: the 48 MB private value before the patient's name is streamed to disk
    and never read back (the archive stays under the 64 MB of #5)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = CT, generate_uid()
    ds.add_new(0x00090010, "LO", "DIMSE TEST")
    ds.add_new(0x00091010, "OB", b"\1" * (48 << 20))
    ds.PatientName, ds.PatientID = "Müller^Hans", "ID1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.InstanceNumber = 1
    data = io.BytesIO()
    ds.save_as(data, implicit_vr=False, little_endian=True, enforce_file_format=False)
    archive = serve(processes, tmp_path / "archive")

    source = dimse.RawDataSet(CT, ds.SOPInstanceUID, ExplicitVRLittleEndian, data.getvalue())
    contexts = [dimse.ProposedContext(CT, (ExplicitVRLittleEndian,))]
    assert store_each(archive.port, [source], contexts) == [(0, None)]
    status = Path(f"/proc/{archive.process.pid}/status").read_text()
    peak = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert peak and int(peak[1]) < 64 << 10, status
    index = Index(archive.root / INDEX_FILE)
    try:
        assert [row.patient_name for row in index.studies()] == ["Müller^Hans"]
    finally:
        index.close()


def test_a_value_pydicom_cannot_convert_fails_its_instance_alone(
    processes: Processes, tmp_path: Path
) -> None:
    """An unknown VR (here 'BM' for (0008,0030) Study Time, in a data set whose
    character set leaves it to pydicom) raises only when the value is converted:
    PS3.4 §B.2.3's Cxxx answers that instance, and the others filed in the same
    round (several C-STOREs in flight) are stored."""

    def data_set(study_time_vr: bytes) -> dimse.RawDataSet:
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = CT, generate_uid()
        ds.StudyDate, ds.StudyTime = "20240101", "101010"
        ds.PatientName, ds.PatientID = "Müller^Hans", "ID1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.InstanceNumber = 1
        data = io.BytesIO()
        ds.save_as(data, implicit_vr=False, little_endian=True, enforce_file_format=False)
        tag = struct.pack("<HH", 0x0008, 0x0030)
        encoded = data.getvalue().replace(tag + b"TM", tag + study_time_vr)
        return dimse.RawDataSet(CT, ds.SOPInstanceUID, ExplicitVRLittleEndian, encoded)

    archive = serve(processes, tmp_path / "archive")
    sources = [data_set(b"TM"), data_set(b"BM"), data_set(b"TM")]
    contexts = [dimse.ProposedContext(CT, (ExplicitVRLittleEndian,))]

    async def send() -> list[int]:
        async with dimse.connect(
            HOST, archive.port, called_ae="DIMSE", contexts=contexts, async_ops=8
        ) as assoc:
            responses = await asyncio.gather(*(assoc.store(source) for source in sources))
        return [response.status for response in responses]

    assert asyncio.run(send()) == [0, 0xC000, 0]
    assert set(indexed(archive.root)) == {sources[0].sop_instance_uid, sources[2].sop_instance_uid}
    assert list((archive.root / TEMP_DIR).iterdir()) == []
    archive.stop()
    assert "unreadable data set: NotImplementedError" in archive.output.text
    assert "Traceback" not in archive.output.text


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_the_command_runs_on_uvloop_or_on_asyncio_s_own_loop(
    processes: Processes, tmp_path: Path, loop: str
) -> None:
    """uvloop by default (less CPU per C-STORE); DIMSE_EVENT_LOOP=asyncio names
    asyncio's loop, for both the archive and the sender."""
    paths = [make_instance(tmp_path / f"{n}.dcm") for n in range(3)]
    env = {"DIMSE_EVENT_LOOP": loop}
    archive = serve(processes, tmp_path / "archive", "-v", env=env)
    sent = run(dimse_command("store", "-vv", "-aec", "DIMSE", HOST, archive.port, *paths), 60, env)
    assert sent.returncode == 0, sent.stderr
    assert f"event loop: {loop}" in sent.stderr
    assert archive.output.wait_for(lambda lines: any(f"event loop: {loop}" in ln for ln in lines))
    assert set(indexed(archive.root)) == {header(path).sop for path in paths}


def test_common_data_sets_are_archived_without_importing_pydicom(tmp_path: Path) -> None:
    """pydicom's import (~12 MB of the archive's resident set, 0.1 s) waits for an
    unusual data set: the UID registry and the index's tags are read without it."""
    names = ["CT_small.dcm", "MR_small_implicit.dcm", "SC_rgb_jpeg_dcmtk.dcm"]
    code = f"""
import asyncio, sys
import dimse

async def main():
    provider = dimse.StorageProvider({str(tmp_path / "archive")!r})
    try:
        async with dimse.Server(provider, "127.0.0.1", 0) as server:
            client = dimse.Client("127.0.0.1", server.port, called_ae="DIMSE")
            for name in {names!r}:
                client.add_request({str(TEST_FILES)!r} + "/" + name)
            results = await client.send()
    finally:
        provider.close()
    print(sorted(result.kind.name for result in results), "pydicom" in sys.modules)

asyncio.run(main())
"""
    output = python_output(code)
    assert output.split("]")[-1].split() == ["False"], output
    assert output.count("SUCCESS") == len(names)
    assert sorted(indexed(tmp_path / "archive")) == sorted(
        pydicom.dcmread(TEST_FILES / name).SOPInstanceUID for name in names
    )


def test_the_sender_names_the_data_set_instance_not_the_file_meta(
    processes: Processes, tmp_path: Path
) -> None:
    """pydicom's rtplan.dcm: its file meta and data set disagree on the SOP Instance
    UID; like storescu, `dimse store` sends the data set's, and it is stored."""
    rtplan = TEST_FILES / "rtplan.dcm"
    ds = pydicom.dcmread(rtplan)
    assert ds.file_meta.MediaStorageSOPInstanceUID != ds.SOPInstanceUID
    archive = serve(processes, tmp_path / "archive")
    result = store(archive.port, rtplan)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(indexed(archive.root)) == {ds.SOPInstanceUID}


# --- 5. who may associate ------------------------------------------------------------------


async def _associate(port: int, calling: str = "DIMSE", called: str = "DIMSE") -> None:
    async with dimse.connect(HOST, port, calling_ae=calling, called_ae=called) as assoc:
        assert await assoc.echo() == 0


def rejection(port: int, calling: str = "DIMSE", called: str = "DIMSE") -> tuple[int, int, int]:
    """(result, source, reason) of the A-ASSOCIATE-RJ the archive answers."""
    with pytest.raises(AssociationRejectedError) as info:
        asyncio.run(_associate(port, calling, called))
    reject = info.value.reject
    return reject.result, reject.source, reject.reason


def test_called_ae_must_match(processes: Processes, tmp_path: Path) -> None:
    good = make_instance(tmp_path / "good.dcm")
    strict = serve(processes, tmp_path / "strict")
    result = store(strict.port, good, called="NOT-DIMSE")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "rejected" in result.stdout + result.stderr, result.stdout
    assert rejection(strict.port, called="NOT-DIMSE") == (
        RejectResult.PERMANENT,
        RejectSource.SERVICE_USER,
        RejectReason.CALLED_AE_NOT_RECOGNIZED,
    )
    assert archive_files(strict.root) == []

    lenient = serve(processes, tmp_path / "lenient", "--no-called-ae-check")
    result = store(lenient.port, good, called="NOT-DIMSE")
    assert result.returncode == 0, result.stdout + result.stderr
    assert archive_files(lenient.root) == [study_path(lenient.root, good)]


def test_allow_list(processes: Processes, tmp_path: Path) -> None:
    good = make_instance(tmp_path / "good.dcm")
    archive = serve(
        processes,
        tmp_path / "archive",
        *("--allow", "ANYWHERE"),
        *("--allow", "LOCAL@127.0.0.1"),
        *("--allow", "REMOTE@10.9.9.9"),
    )
    calling_ae_not_recognised = (
        RejectResult.PERMANENT,
        RejectSource.SERVICE_USER,
        RejectReason.CALLING_AE_NOT_RECOGNIZED,
    )
    assert rejection(archive.port, calling="STRANGER") == calling_ae_not_recognised
    assert rejection(archive.port, calling="REMOTE") == calling_ae_not_recognised  # not from here
    asyncio.run(_associate(archive.port, calling="ANYWHERE"))
    asyncio.run(_associate(archive.port, calling="LOCAL"))

    refused = store(archive.port, good, calling="STRANGER")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "rejected" in refused.stdout + refused.stderr
    assert archive_files(archive.root) == []
    admitted = store(archive.port, good, calling="LOCAL")
    assert admitted.returncode == 0, admitted.stdout + admitted.stderr
    assert archive_files(archive.root) == [study_path(archive.root, good)]


# --- 6. association limit -------------------------------------------------------------------


def test_association_limit(processes: Processes, tmp_path: Path) -> None:
    archive = serve(processes, tmp_path / "archive", "--max-associations", "1")

    async def scenario() -> None:
        held = await dimse.connect(HOST, archive.port, called_ae="DIMSE")
        try:
            assert await held.echo() == 0
            with pytest.raises(AssociationRejectedError) as info:
                await dimse.connect(HOST, archive.port, called_ae="DIMSE")
            reject = info.value.reject
            assert (reject.result, reject.source, reject.reason) == (
                RejectResult.TRANSIENT,
                RejectSource.SERVICE_PROVIDER_PRESENTATION,
                LOCAL_LIMIT_EXCEEDED,
            )
            assert await held.echo() == 0  # the one in progress goes on
        finally:
            await held.release()
        await _associate(archive.port)  # and once it is gone, the next one gets in

    asyncio.run(scenario())
    assert archive.process.poll() is None


# --- 7. disk full ------------------------------------------------------------------------


def _file_size_limit() -> None:
    """In the server's process: no file may grow past 2 MB (writes fail with EFBIG;
    CPython ignores SIGXFSZ)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))


@pytest.mark.parametrize("max_pdu", [None, 4096], ids=["large-pdus", "small-pdus"])
def test_disk_full_fails_the_store_and_the_server_keeps_serving(
    processes: Processes, tmp_path: Path, max_pdu: int | None
) -> None:
    big = make_instance(tmp_path / "big.dcm", rows=768, columns=2048)  # 3 MiB
    small = make_instance(tmp_path / "small.dcm")
    options = () if max_pdu is None else ("-pdu", str(max_pdu))  # small PDUs: buffered writes
    archive = serve(processes, tmp_path / "archive", *options, preexec_fn=_file_size_limit)
    root = archive.root

    result = store(archive.port, big)
    assert result.returncode == 1, result.stdout + result.stderr
    assert statuses(result.stdout)["big.dcm"].startswith("A7"), result.stdout  # out of resources
    assert archive.process.poll() is None
    assert archive_files(root) == []
    assert list((root / TEMP_DIR).iterdir()) == []  # the partial data set was removed

    result = store(archive.port, small)  # a new association
    assert result.returncode == 0, result.stdout + result.stderr
    assert statuses(result.stdout) == {"small.dcm": "0000"}
    assert archive_files(root) == [study_path(root, small)]
    assert set(indexed(root)) == {header(small).sop}


FAILING_FS = Path(__file__).with_name("failing_fs.py")


def _require_fuse() -> None:
    """FUSE, for a file system whose fsync fails; missing, it skips, except in CI."""
    problem = None
    if not Path("/dev/fuse").exists():
        problem = "no /dev/fuse"
    else:
        try:
            import fuse  # noqa: F401  (fusepy, which loads libfuse2)
        except (ImportError, OSError) as error:
            problem = f"fusepy or libfuse2 missing ({error})"
    if problem is not None:
        unavailable(problem)


def test_a_failed_fsync_fails_that_instance_alone(processes: Processes, tmp_path: Path) -> None:
    """A real fsync failure (EIO from the archive's file system, a FUSE pass-through
    that fails fsync for one file) answers that C-STORE A7xx, in the same round as
    two that succeed; nothing of it is left, and the server keeps serving."""
    _require_fuse()
    backing, mount = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mount.mkdir()
    study, series = generate_uid(), generate_uid()
    names = {"good-1": "GOOD^ONE", "bad": "FSYNCFAILS^X", "good-2": "GOOD^TWO"}
    files = {
        name: make_instance(
            tmp_path / f"{name}.dcm", study_uid=study, series_uid=series, number=n, patient=patient
        )
        for n, (name, patient) in enumerate(names.items(), start=1)
    }
    fs = processes.start([sys.executable, FAILING_FS, backing, mount, "FSYNCFAILS"])
    try:
        assert eventually(lambda: os.path.ismount(mount) or fs.poll() is not None)
        assert fs.poll() is None, fs.communicate()[0].decode(errors="replace")
        archive = serve(processes, mount / "archive")
        root = archive.root

        result = store(archive.port, *files.values())  # one association: one round
        assert result.returncode == 1, result.stdout + result.stderr
        answered = statuses(result.stdout)
        assert answered["bad.dcm"].startswith("A7"), result.stdout  # out of resources
        assert answered["good-1.dcm"] == answered["good-2.dcm"] == "0000", result.stdout
        good = [files["good-1"], files["good-2"]]
        assert sorted(archive_files(root)) == sorted(study_path(root, f) for f in good)
        assert list((root / TEMP_DIR).iterdir()) == []
        assert set(indexed(root)) == {header(f).sop for f in good}

        again = make_instance(tmp_path / "again.dcm", study_uid=study, series_uid=series)
        result = store(archive.port, again)  # a new association
        assert statuses(result.stdout) == {"again.dcm": "0000"}, result.stdout
        assert archive.stop() == 0
        assert check_index(root).consistent
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True, check=False)
        fs.wait(10)


# --- 8. commands run on reception ------------------------------------------------------------

RECORDER = """\
import sys
with open(sys.argv[1], "a") as log:
    log.write("|".join(sys.argv[2:]) + "\\n")
"""


def test_exec_on_reception_and_on_study(processes: Processes, tmp_path: Path) -> None:
    recorder = tmp_path / "record.py"
    recorder.write_text(RECORDER)
    received, studies = tmp_path / "received log", tmp_path / "studies log"  # spaces: one argument

    def command(log: Path) -> str:
        words = [sys.executable, str(recorder), str(log)]
        return " ".join(shlex.quote(w) for w in words) + " #p #f #a #c #r #s"

    one = make_study(tmp_path / "one", sop_class=CT, series=2, per_series=2, patient="ONE")
    two = make_study(tmp_path / "two", sop_class=MR, series=1, per_series=3, patient="TWO")
    later = make_instance(  # the first study again, in a later association
        tmp_path / "later" / "later.dcm",
        study_uid=header(one[0]).study,
        series_uid=header(one[0]).series,
        number=99,
    )
    archive = serve(
        processes,
        tmp_path / "archive",
        *("--exec-on-reception", command(received)),
        *("--exec-on-study", command(studies)),
    )
    root = archive.root
    first = store(archive.port, *one, *two, calling="MODALITY1")
    assert first.returncode == 0, first.stdout + first.stderr
    second = store(archive.port, later, calling="MODALITY2")
    assert second.returncode == 0, second.stdout + second.stderr
    assert archive.stop() == 0  # waits for the commands still running

    expected = set()
    for source, calling in [*((p, "MODALITY1") for p in one + two), (later, "MODALITY2")]:
        path = study_path(root, source)
        h = header(source)
        expected.add(f"{path}|{path.name}|{calling}|DIMSE|127.0.0.1|{h.study}")
    lines = received.read_text().splitlines()
    assert len(lines) == len(expected) == 8  # one per stored instance
    assert set(lines) == expected

    study_one, study_two = header(one[0]).study, header(two[0]).study
    assert sorted(studies.read_text().splitlines()) == sorted(
        [  # once per study per association
            f"{root / study_one}|{study_one}|MODALITY1|DIMSE|127.0.0.1|{study_one}",
            f"{root / study_two}|{study_two}|MODALITY1|DIMSE|127.0.0.1|{study_two}",
            f"{root / study_one}|{study_one}|MODALITY2|DIMSE|127.0.0.1|{study_one}",
        ]
    )


def test_ls_shows_control_characters_of_a_data_set_instead_of_obeying_them(
    processes: Processes, tmp_path: Path
) -> None:
    """A patient's name with a terminal escape sequence and a bell (a broken or
    hostile device) is listed as text: the administrator's terminal obeys nothing."""
    source = tmp_path / "escape.dcm"
    make_instance(source, patient="Evil\x1b[2J^Bell\x07")
    archive = serve(processes, tmp_path / "archive")
    assert store(archive.port, source).returncode == 0
    archive.stop()
    listing = dimse_cli("ls", "-od", archive.root)
    assert listing.returncode == 0
    assert "Evil\\x1b[2J^Bell\\x07" in listing.stdout
    assert "\x1b" not in listing.stdout and "\x07" not in listing.stdout


def test_placeholders_are_not_read_in_the_values_they_are_given() -> None:
    """A calling AE title may be "#s" (PS3.5 §6.2 allows it): it is passed as it is."""
    values = {"#a": "#s", "#s": "1.2.3", "#p": "/archive/a b.dcm"}
    assert hooks.expand("notify '#p' #a-#s #x", values) == [
        "notify",
        "/archive/a b.dcm",
        "#s-1.2.3",
        "#x",
    ]


# --- 9. TOML configuration -------------------------------------------------------------------


def test_toml_config(processes: Processes, tmp_path: Path) -> None:
    root = tmp_path / "archive"
    config = tmp_path / "archive.toml"
    config.write_text(
        f'ae_title = "CONFIGAE"\nlayout = "flat"\nduplicates = "reject"\n'
        f"output_directory = {str(root)!r}\nbind = {HOST!r}\nquiet = true\n"
    )
    instance = make_instance(tmp_path / "one.dcm")
    port = free_port()
    process = processes.start(dimse_command("serve", str(port), "--config", config))
    output = Output(process)
    assert output.wait_for(lambda lines: any("listening on" in line for line in lines)), output.text
    archive = Archive(port, root, process, output)
    assert "CONFIGAE listening on 127.0.0.1" in output.text
    assert rejection(port, called="DIMSE")[2] == RejectReason.CALLED_AE_NOT_RECOGNIZED
    result = store(port, instance, called="CONFIGAE")
    assert result.returncode == 0, result.stdout + result.stderr
    assert archive_files(root) == [root / f"{header(instance).sop}.dcm"]  # flat
    again = store(port, instance, called="CONFIGAE")
    assert statuses(again.stdout) == {"one.dcm": "0111"}  # duplicates = reject
    assert again.returncode == 1
    assert archive.stop() == 0

    # Options on the command line override the file's.
    overridden = serve(processes, root, "--config", config, "-aet", "CLIAE", "--duplicates", "keep")
    assert rejection(overridden.port, called="CONFIGAE")[2] == RejectReason.CALLED_AE_NOT_RECOGNIZED
    again = store(overridden.port, instance, called="CLIAE")
    assert statuses(again.stdout) == {"one.dcm": "0000"}
    assert again.returncode == 0
    assert overridden.stop() == 0

    bad_configs = {
        "no_such_option = 1\n": "unknown option 'no_such_option'",
        'ae = "PREFIX"\n': "unknown option 'ae'",  # argparse alone would take --ae-title
        "[table]\nkey = 1\n": "table",
        'quiet = "yes"\n': "true or false",
        "ae_title = \n": "cannot read config",
    }
    started = []
    for n, text in enumerate(bad_configs):
        bad = tmp_path / f"bad{n}.toml"
        bad.write_text(text)
        args = dimse_command("serve", str(free_port()), "-od", root, "--config", bad)
        started.append((text, processes.start(args)))
    for text, process in started:  # all at once: each start-up costs a second
        said = process.communicate(timeout=30)[0].decode()  # stdout and stderr
        assert process.returncode == 2, (text, said)
        assert said.count("\n") == 1 and bad_configs[text] in said, (text, said)
        assert "Traceback" not in said


# --- 10. graceful shutdown -------------------------------------------------------------------


_Event = TypeVar("_Event")


class ManualAssociation:
    """A requestor driving the sans-I/O Connection over a blocking socket by hand,
    so that a data set can stop half sent."""

    def __init__(self, port: int, sop_class: str) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=15)
        request = build_request("MANUAL", "DIMSE", [ProposedContext(sop_class, (EXPLICIT_LE,))])
        self.connection = Connection(request)
        self.connection.connection_made()
        accepted = self.until(ev.AssociationAccepted)
        (self.context_id,) = accepted.association.contexts

    def flush(self) -> None:
        for data in self.connection.data_to_send():
            self.sock.sendall(data)

    def until(self, kind: type[_Event]) -> _Event:
        """Send what is queued, then read until an event of `kind` arrives."""
        self.flush()
        while True:
            data = self.sock.recv(1 << 16)
            for event in self.connection.receive_data(data):
                if isinstance(event, kind):
                    return event
                assert not isinstance(event, ev.Aborted | ev.AssociationRejected), event
            assert data, "connection closed"

    def close(self) -> None:
        self.sock.close()


def test_sigterm_right_after_the_listening_line_is_a_clean_shutdown(
    processes: Processes, tmp_path: Path
) -> None:
    """A service manager may stop the server as soon as it says it listens: the
    signal handlers are in place by then (before, half of such stops killed it)."""
    for attempt in range(5):
        port = free_port()
        args = dimse_command("serve", str(port), "-od", tmp_path / str(attempt), "--bind", HOST)
        process = processes.start(args)
        assert process.stdout is not None
        for line in process.stdout:
            if b"listening on" in line:
                process.send_signal(signal.SIGTERM)
                break
        process.stdout.read()
        assert process.wait(20) == 0, attempt


def test_sigterm_lets_the_association_finish(processes: Processes, tmp_path: Path) -> None:
    source = make_instance(tmp_path / "one.dcm", rows=512, columns=512)
    h = header(source)
    data = dataset_bytes(source)
    archive = serve(processes, tmp_path / "archive")
    root = archive.root
    manual = ManualAssociation(archive.port, CT)
    try:
        manual.connection.send_message(manual.context_id, CStoreRQ(1, CT, h.sop))
        manual.connection.send_data(manual.context_id, data[: len(data) // 2], False)
        manual.flush()
        assert eventually(lambda: any((root / TEMP_DIR).iterdir()))  # being received

        archive.process.send_signal(signal.SIGTERM)  # mid data set
        assert archive.output.wait_for(
            lambda lines: any("shutting down" in line for line in lines)
        ), archive.output.text
        time.sleep(0.2)
        assert archive.process.poll() is None  # still there for the association
        with pytest.raises(OSError):  # but no longer accepting new ones
            socket.create_connection((HOST, archive.port), timeout=2).close()

        manual.connection.send_data(manual.context_id, data[len(data) // 2 :], True)
        response = manual.until(ev.CommandReceived)
        assert isinstance(response.message, CStoreRSP)
        assert response.message.status == 0
        manual.connection.release()
        manual.until(ev.ReleaseConfirmed)
    finally:
        manual.close()
    assert archive.process.wait(15) == 0
    target = study_path(root, source)
    assert dataset_bytes(target) == data
    assert set(indexed(root)) == {h.sop}
    assert check_index(root).consistent


# --- 11. index maintenance -------------------------------------------------------------------


def test_index_rebuild_and_check(
    processes: Processes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sources = make_study(tmp_path / "in", sop_class=MR, series=2, per_series=3, patient="IDX")
    archive = serve(processes, tmp_path / "archive", "-q")
    root = archive.root
    assert store(archive.port, *sources).returncode == 0
    assert archive.stop() == 0
    before = indexed(root)
    assert len(before) == 6

    for path in root.glob(INDEX_FILE + "*"):
        path.unlink()
    rebuilt = run(dimse_command("index", "rebuild", "-od", root))
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "indexed 6 instance(s)" in rebuilt.stdout
    assert indexed(root) == before
    check = index_check(root)
    assert check.returncode == 0, check.stdout
    assert "6 indexed instance(s): consistent" in check.stdout
    listing = dimse_cli("ls", "-od", root)
    assert listing.returncode == 0
    assert "IDX" in listing.stdout and "1 study" in listing.stdout

    gone = study_path(root, sources[0])
    gone.unlink()  # behind the archive's back
    after = dimse_cli("index", "check", "-od", root)
    assert after.returncode == 1
    assert f"indexed but missing: {gone.relative_to(root)}" in after.stdout
    assert "INCONSISTENT" in after.stdout

    # A damaged index: one line and the way out, then a rebuild that sets it aside.
    (root / INDEX_FILE).write_bytes(b"not a database, whatever it was" * 100)
    for command in (("ls",), ("index", "check")):
        failed = dimse_cli(*command, "-od", root)
        assert failed.returncode == 2, failed.stdout + failed.stderr
        assert failed.stderr.strip().splitlines() == [
            f"dimse {' '.join(command)}: cannot read {root / INDEX_FILE}: file is not a "
            "database (dimse index rebuild recreates the index)"
        ]
    refused = run(dimse_command("serve", str(free_port()), "-od", root, "--bind", HOST), timeout=60)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"dimse serve: cannot open {root}: file is not a database "
        "(dimse index rebuild recreates the index)"
    ]
    repaired = dimse_cli("index", "rebuild", "-od", root)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "indexed 5 instance(s)" in repaired.stdout
    assert "could not be read (file is not a database)" in caplog.text
    assert (root / f"{INDEX_FILE}.damaged").read_bytes().startswith(b"not a database")
    assert dimse_cli("index", "check", "-od", root).returncode == 0
    assert "1 study" in dimse_cli("ls", "-od", root).stdout

    # A copy of a stored file put in by hand: the index keeps one file per instance,
    # and the rebuild names the one it left out.
    kept = study_path(root, sources[1])
    copy = root / "copies" / kept.name
    copy.parent.mkdir()
    shutil.copy(kept, copy)
    again = dimse_cli("index", "rebuild", "-od", root)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "indexed 5 instance(s)" in again.stdout
    assert again.stderr.strip().splitlines() == [
        f"another copy of the instance in {kept.relative_to(root)}: {copy.relative_to(root)}"
    ]


# --- 12. SIGKILL at random points, repeatedly -------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sync", ["file", "filesystem"])
def test_sigkill_at_random_points_never_loses_an_acknowledged_instance(
    processes: Processes, tmp_path: Path, large_files: list[Path], sync: str
) -> None:
    """Hardening: kill the archive at seeded random moments of a transfer, five times
    on the same folder; after each restart nothing partial is at a final path and
    every instance ever answered Success is there and indexed. In both sync modes."""
    root = tmp_path / "archive"
    rng = random.Random(20261125)
    sources = {header(p).sop: p for p in large_files}
    acknowledged: set[str] = set()
    for _ in range(5):
        archive = serve(processes, root, "-q", "--sync", sync)
        assert list((root / TEMP_DIR).iterdir()) == []  # start-up cleaned the last kill
        client = processes.start(
            [sys.executable, "-u", "-m", "dimse", "store", "-aec", "DIMSE", "--async-ops", "4",
             HOST, str(archive.port), *large_files]
        )  # fmt: skip
        output = Output(client)
        output.wait_for(lambda lines: any(": 0000 Success" in line for line in lines), 30)
        time.sleep(rng.uniform(0.0, 1.5))
        archive.process.send_signal(signal.SIGKILL)
        archive.process.wait(10)
        client.wait(60)
        output.wait_closed()
        for line in output.lines:
            if line.endswith(": 0000 Success"):
                acknowledged.add(header(Path(line.rsplit(": ", 1)[0])).sop)
        rows = indexed(root)
        for path in root.rglob("*.dcm"):
            if TEMP_DIR in path.parts:
                continue
            source = sources[pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID]
            assert dataset_bytes(path) == dataset_bytes(source), f"partial file {path}"
        missing = acknowledged - set(rows)
        assert not missing, f"answered Success but not indexed: {missing}"
    assert acknowledged, "no instance was ever acknowledged: the kills came too early"
    final = serve(processes, root, "-q")
    assert list((root / TEMP_DIR).iterdir()) == []
    assert final.stop() == 0


# --- memory ---------------------------------------------------------------------------


def test_data_sets_held_in_memory_stay_within_the_server_wide_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a full window of C-STOREs in flight on each of several associations, RSS
    would grow otherwise. Past HOLD_TOTAL, a small data set's first bytes wait until a
    round frees room (the rest wait in TCP's buffers): none is streamed into a file
    that the event loop creates, which cost 20 % of the images/s."""
    monkeypatch.setattr(storage, "HOLD_TOTAL", 64 * 1024)  # three of these images
    files = [
        make_instance(tmp_path / "in" / f"{n}.dcm", number=n + 1, rows=128, columns=80)
        for n in range(24)
    ]
    provider = storage.StorageProvider(tmp_path / "archive")
    peaks: list[int] = []
    created_by: list[str] = []
    write, create = storage.FileSink.write, storage.FileSink._create

    async def counted(sink: storage.FileSink, data: memoryview) -> None:
        await write(sink, data)
        peaks.append(provider.holding)

    def creating(sink: storage.FileSink) -> None:
        created_by.append(threading.current_thread().name)
        create(sink)

    monkeypatch.setattr(storage.FileSink, "write", counted)
    monkeypatch.setattr(storage.FileSink, "_create", creating)

    async def scenario() -> list[StoreResult]:
        async with dimse.Server(provider, "127.0.0.1", 0) as server:
            senders = [dimse.Client("127.0.0.1", server.port, called_ae="DIMSE") for _ in "ab"]
            for n, path in enumerate(files):
                senders[n % 2].add_request(path)
            batches = await asyncio.gather(*(sender.send() for sender in senders))
        return [result for batch in batches for result in batch]

    try:
        results = asyncio.run(scenario())
    finally:
        provider.close()
    assert [r.kind for r in results] == [Kind.SUCCESS] * len(files)
    assert 0 < max(peaks) <= 64 * 1024  # some were held, never more than the cap
    assert provider.holding == provider.held_filing == 0  # every hold was given back
    assert len(created_by) == len(files)
    assert [n for n in created_by if not n.startswith("dimse-archive")] == []
    stored = stored_files(tmp_path / "archive")
    for path in files:
        assert dataset_bytes(stored[open_dicom_file(path).sop_instance_uid]) == dataset_bytes(path)


def test_a_filing_round_holds_at_most_max_round_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many C-STOREs waiting at once are filed in several rounds: each round's files
    are open together, and the process may open only so many."""
    monkeypatch.setattr(storage, "MAX_ROUND", 4)
    provider = storage.StorageProvider(tmp_path / "archive")
    file_batch = provider._file_batch
    rounds: list[int] = []

    def counted(sinks: list[storage.FileSink]) -> list[storage.Filed]:
        rounds.append(len(sinks))
        time.sleep(0.05)  # a slow disk: the next ones pile up meanwhile
        return file_batch(sinks)

    monkeypatch.setattr(provider, "_file_batch", counted)
    files = [make_instance(tmp_path / "in" / f"{n}.dcm", number=n + 1) for n in range(24)]

    async def scenario() -> list[StoreResult]:
        async with dimse.Server(provider, "127.0.0.1", 0) as server:
            client = dimse.Client("127.0.0.1", server.port, called_ae="DIMSE")
            for path in files:
                client.add_request(path)
            return await client.send()

    try:
        results = asyncio.run(scenario())
    finally:
        provider.close()
    assert [r.kind for r in results] == [Kind.SUCCESS] * len(files)
    assert sum(rounds) == len(files) and max(rounds) == 4, rounds
    assert len(stored_files(tmp_path / "archive")) == len(files)


def test_serve_raises_its_open_files_limit_to_the_hard_limit(
    processes: Processes, tmp_path: Path
) -> None:
    """A login shell's soft limit (often 1024) is below what many associations' filing
    rounds and sockets can need; a server raises it as far as it may."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"no room to raise the open files limit (hard limit {hard})")

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    archive = serve(processes, tmp_path / "archive", preexec_fn=low_soft_limit)
    limits = Path(f"/proc/{archive.process.pid}/limits").read_text()
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert line.split()[3:5] == [str(hard), str(hard)], line
    assert archive.stop() == 0


def test_an_abort_with_stores_in_flight_gives_back_what_they_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The peer aborts while its C-STOREs wait for a (slow) filing round: their
    waits are cancelled, and what they held must not stay counted against the cap."""
    provider = storage.StorageProvider(tmp_path / "archive")
    file_batch = provider._file_batch
    entered = threading.Event()

    def slow_disk(sinks: list[storage.FileSink]) -> list[storage.Filed]:
        entered.set()
        time.sleep(0.5)
        return file_batch(sinks)

    monkeypatch.setattr(provider, "_file_batch", slow_disk)
    # Fewer than the window: the server keeps reading, so it sees the abort at once.
    files = [make_instance(tmp_path / "in" / f"{n}.dcm", number=n + 1) for n in range(4)]

    async def scenario() -> None:
        async with dimse.Server(provider, "127.0.0.1", 0) as server:
            contexts = [ProposedContext(CT, (EXPLICIT_LE,))]
            with pytest.raises(dimse.AssociationError, match="aborted by the local user"):
                async with dimse.connect(
                    "127.0.0.1", server.port, called_ae="DIMSE", contexts=contexts, async_ops=8
                ) as assoc:
                    stores = [asyncio.create_task(assoc.store(path)) for path in files]
                    await asyncio.to_thread(entered.wait, 5)
                    assert provider.holding > 0  # held while their round runs
                    assoc.abort()
                    await asyncio.gather(*stores, return_exceptions=True)
            for _ in range(100):  # the session's clean-up runs after the abort arrives
                if provider.holding == 0:
                    break
                await asyncio.sleep(0.02)

    try:
        asyncio.run(scenario())
    finally:
        provider.close()
    assert provider.holding == 0
