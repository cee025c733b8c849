"""PS3.10 files: locating a data set without parsing it, and our hand-written file meta."""

from __future__ import annotations

import contextlib
import io
import random
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    generate_uid,
)

from conftest import SAMPLE_FILES, TEST_FILES
from dimse.files import (
    PREAMBLE,
    FileScanner,
    NotDicomError,
    WholeDataSets,
    file_meta_bytes,
    open_dicom_file,
)
from dimse.negotiation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dimse.sop_classes import MEDIA_STORAGE_DIRECTORY, storage_sop_classes

uids = st.lists(st.integers(0, 99999), min_size=2, max_size=12).map(
    lambda parts: ".".join(map(str, parts))
)
ae_titles = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=0, max_size=16)


def pydicom_file_meta(sop_class: str, sop_instance: str, syntax: str, ae: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if ae.strip():
        meta.SourceApplicationEntityTitle = ae.strip()
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return PREAMBLE + buffer.getvalue()


@given(uids, uids, st.sampled_from(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]), ae_titles)
def test_file_meta_is_byte_identical_to_pydicoms(
    sop_class: str, sop_instance: str, syntax: str, ae: str
) -> None:
    ours = file_meta_bytes(sop_class, sop_instance, syntax, ae)
    assert ours == pydicom_file_meta(sop_class, sop_instance, syntax, ae)


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_open_dicom_file_locates_the_data_set(path: Path) -> None:
    file = open_dicom_file(path)
    ds = dcmread(path)
    assert file.sop_instance_uid == ds.file_meta.MediaStorageSOPInstanceUID
    assert file.transfer_syntax == ds.file_meta.TransferSyntaxUID
    assert file.size == path.stat().st_size
    syntax = UID(file.transfer_syntax)
    with path.open("rb") as fp:
        fp.seek(file.dataset_offset)
        data = fp.read()
    assert len(data) == file.dataset_size
    if not syntax.is_deflated:  # the data set parses on its own from the offset
        alone = read_dataset(io.BytesIO(data), syntax.is_implicit_VR, syntax.is_little_endian)
        assert [e.tag for e in alone] == [e.tag for e in ds]


def test_not_dicom_files_are_reported(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(NotDicomError, match="not a DICOM file"):
        open_dicom_file(text)
    with pytest.raises(NotDicomError):
        open_dicom_file(TEST_FILES / "no_meta.dcm")


CT_SMALL = (TEST_FILES / "CT_small.dcm").read_bytes()


def _meta_element(group_element: int, vr: bytes, length: int) -> bytes:
    return struct.pack("<HH2sH", group_element >> 16, group_element & 0xFFFF, vr, length)


_GROUP_LENGTH = _meta_element(0x00020000, b"UL", 4)


@pytest.mark.filterwarnings("ignore:Expected explicit VR")
@pytest.mark.parametrize(
    ("damage", "error"),
    [
        # (0002,0002)'s VR made unknown: pydicom raises when it converts the value.
        (lambda data: data.replace(b"\x02\x00\x02\x00UI", b"\x02\x00\x02\x00U ", 1), "Unknown"),
        # The meta cut inside (0002,0001)'s 32-bit length.
        (lambda data: data[: data.index(b"\x02\x00\x01\x00OB") + 10], "unpack"),
        # (0002,0000) UL, 4 bytes, given a length of 2: pydicom's BytesLengthException.
        (lambda data: data.replace(_GROUP_LENGTH, _meta_element(0x00020000, b"UL", 2), 1), "bytes"),
    ],
)
def test_damaged_file_meta_is_no_dicom_file_to_send(
    tmp_path: Path, damage: Callable[[bytes], bytes], error: str
) -> None:
    """pydicom reads meta our scanner declines, and may raise anything: the sender
    then reports that file and sends the others (it stopped with a traceback)."""
    path = tmp_path / "damaged.dcm"
    damaged = damage(CT_SMALL)
    assert damaged != CT_SMALL
    path.write_bytes(damaged)
    with pytest.raises(NotDicomError, match=f"unreadable file meta .*{error}"):
        open_dicom_file(path)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's, on what the changes make
@settings(max_examples=300, deadline=None)
@given(
    changes=st.lists(st.tuples(st.integers(0, 599), st.integers(0, 255)), min_size=1, max_size=4)
)
def test_a_file_damaged_in_its_first_bytes_is_read_or_reported(
    tmp_path_factory: pytest.TempPathFactory, changes: list[tuple[int, int]]
) -> None:
    """Bytes changed in the preamble, the file meta or the first elements: the file
    is read or reported as no DICOM file to send, never anything else."""
    damaged = bytearray(CT_SMALL)
    for at, byte in changes:
        damaged[at] = byte
    path = tmp_path_factory.mktemp("damaged") / "file.dcm"
    path.write_bytes(damaged)
    with contextlib.suppress(NotDicomError):
        assert open_dicom_file(path).size == len(damaged)


def _pydicom_view(path: Path) -> tuple[str, str, str, int] | None:
    """What pydicom's own reader finds, as the reference for our fast scan."""
    try:
        with path.open("rb") as fp:
            read_preamble(fp, False)
            meta = _read_file_meta_info(fp)
            offset = fp.tell()
    except Exception:  # any failure: not a file we can send
        return None
    keys = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
    values = [str(meta.get(k, "")) for k in keys]
    if not all(values) or values[0] == MediaStorageDirectoryStorage:  # a DICOMDIR: not sent
        return None
    if values[2] not in ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"):
        # The data set's own UIDs win where they are readable (storescu's choice too).
        with contextlib.suppress(Exception):  # unreadable data set: the meta's stand
            ds = dcmread(
                path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"]
            )
            if ds.get("SOPClassUID") and ds.get("SOPInstanceUID"):
                values[:2] = [str(ds.SOPClassUID), str(ds.SOPInstanceUID)]
    return (values[0], values[1], values[2], offset)


@pytest.mark.filterwarnings("ignore:Expected explicit VR")  # a deliberately odd test file
def test_fast_meta_scan_agrees_with_pydicom_on_every_bundled_file() -> None:
    compared = 0
    for path in sorted(TEST_FILES.rglob("*")):
        if not path.is_file():
            continue
        try:
            file = open_dicom_file(path)
            ours = (file.sop_class_uid, file.sop_instance_uid, file.transfer_syntax)
            found: tuple[str, str, str, int] | None = (*ours, file.dataset_offset)
        except NotDicomError:
            found = None
        assert found == _pydicom_view(path), path.name
        compared += 1
    assert compared > 100


@pytest.mark.filterwarnings("ignore:Expected explicit VR")
def test_one_scanner_agrees_with_pydicom_on_every_bundled_file_in_turn() -> None:
    """Layouts learnt from one file are tried on the next, of another layout."""
    scanner = FileScanner()
    paths = [path for path in sorted(TEST_FILES.rglob("*")) if path.is_file()]
    for path in [path for path in paths for _ in range(3)]:
        try:
            file = scanner.open(path)
            found: tuple[str, str, str, int] | None = (
                file.sop_class_uid,
                file.sop_instance_uid,
                file.transfer_syntax,
                file.dataset_offset,
            )
        except NotDicomError:
            found = None
        assert found == _pydicom_view(path), path.name


def test_a_series_is_read_by_its_layout(tmp_path: Path) -> None:
    """UIDs of changing length, and a file whose meta names another instance than
    its data set (as rtplan.dcm does) after the layout is learnt."""
    ds = dcmread(TEST_FILES / "CT_small.dcm")
    scanner = FileScanner()
    for number in range(1, 41):
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{number**5}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if number == 30:
            ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{number**5 + 1}"
        path = tmp_path / f"IM{number}"
        ds.save_as(path, enforce_file_format=True)
        file = scanner.open(path)
        assert file == open_dicom_file(path)
        assert file.sop_instance_uid == ds.SOPInstanceUID
        assert file.dataset_offset == _pydicom_view(path)[3]
    assert scanner._meta.walked + scanner._sop.walked <= 10


def test_a_dicomdir_is_not_an_instance_to_store() -> None:
    """A file-set's DICOMDIR (PS3.10 §8) is skipped by the sender, and its SOP class,
    which the registry names "Media Storage Directory Storage", is offered by no
    storage SCP of ours (it is not in PS3.4 Annex B)."""
    with pytest.raises(NotDicomError, match="DICOMDIR"):
        open_dicom_file(TEST_FILES / "dicomdirtests" / "DICOMDIR")
    assert MediaStorageDirectoryStorage == MEDIA_STORAGE_DIRECTORY
    assert MEDIA_STORAGE_DIRECTORY not in storage_sop_classes()
    assert "1.2.840.10008.5.1.4.1.1.2" in storage_sop_classes()  # CT Image Storage


def test_the_data_set_names_the_instance_when_the_file_meta_disagrees() -> None:
    rtplan = TEST_FILES / "rtplan.dcm"  # its meta names another SOP Instance UID
    ds = dcmread(rtplan)
    file = open_dicom_file(rtplan)
    assert (file.sop_class_uid, file.sop_instance_uid) == (ds.SOPClassUID, ds.SOPInstanceUID)
    assert file.sop_instance_uid != ds.file_meta.MediaStorageSOPInstanceUID


def test_a_large_deflated_file_cut_short_is_found_through_its_mapping(tmp_path: Path) -> None:
    """Over the sender's first block (1 MiB), the rest of a file is read through an
    mmap; a deflated one is inflated from it a block at a time."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", generate_uid()
    ds.PixelData = random.Random(5).randbytes(2 << 20)  # incompressible: 2 MiB deflated
    ds["PixelData"].VR = "OB"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    whole, cut = tmp_path / "whole.dcm", tmp_path / "cut.dcm"
    ds.save_as(whole, enforce_file_format=True)
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    checker = WholeDataSets()
    for path in (whole, cut):
        file = open_dicom_file(path)
        with path.open("rb", buffering=0) as fp:
            fp.seek(file.dataset_offset)
            first = fp.read(1 << 20)
            assert len(first) < file.dataset_size
            if path is whole:
                checker.check(file, first, fp.fileno())
            else:
                with pytest.raises(NotDicomError, match="ends inside its deflate stream"):
                    checker.check(file, first, fp.fileno())
