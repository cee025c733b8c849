"""dcmtk's echoscu/storescu against our server; our client against dcmtk's storescp."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from conftest import (
    SAMPLE_FILES,
    TEST_FILES,
    Processes,
    dataset_bytes,
    dimse_command,
    free_port,
    require,
    run,
    stored_files,
)
from dimse.files import open_dicom_file

pytestmark = pytest.mark.interop


@pytest.fixture
def dimse_server(processes: Processes, tmp_path: Path) -> tuple[int, Path]:
    port, out = free_port(), tmp_path / "archive"
    processes.server(dimse_command("serve", port, "-od", out, "--bind", "127.0.0.1"), port)
    return port, out


def test_echoscu(dimse_server: tuple[int, Path]) -> None:
    port, _ = dimse_server
    result = run([require("echoscu"), "-aec", "DIMSE", "127.0.0.1", port])
    assert result.returncode == 0, result.stderr


def test_echoscu_wrong_called_ae_is_rejected(dimse_server: tuple[int, Path]) -> None:
    port, _ = dimse_server
    result = run([require("echoscu"), "-aec", "NOT-US", "127.0.0.1", port])
    assert result.returncode != 0
    assert "called ae title not recogni" in result.stderr.lower()


#: storescu's option that proposes each transfer syntax (it proposes only
#: uncompressed ones by default, and cannot send what it cannot propose).
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def same_data_set(received: Path, source: Path) -> bool:
    """Byte-identical, allowing the one pad byte an odd-length data set needs on the wire."""
    sent, got = dataset_bytes(source), dataset_bytes(received)
    return got == sent or (len(sent) % 2 == 1 and got == sent + b"\0")


def same_content(received: Path, source: Path) -> bool:
    """Equal element values: storescu decodes and re-encodes, so bytes may differ.

    Group lengths and trailing padding (PS3.10 §7.2) are the sender's choice, and
    dcmtk corrects a wrong VR (OW for encapsulated pixel data), so VRs are ignored.
    """

    def values(path: Path) -> list[tuple[int, object]]:
        return [
            (element.tag, element.value)
            for element in pydicom.dcmread(path).iterall()
            if element.tag.element != 0 and element.tag != 0xFFFCFFFC and element.VR != "SQ"
        ]

    return values(received) == values(source)


def test_storescu_files_arrive(dimse_server: tuple[int, Path]) -> None:
    """Every sample storescu sends in its own transfer syntax arrives intact, unconverted."""
    port, out = dimse_server
    storescu = require("storescu")
    for syntax, option in STORESCU_PROPOSE.items():
        files = [p for p in SAMPLE_FILES if open_dicom_file(p).transfer_syntax == syntax]
        if not files:
            continue
        result = run([storescu, option, "-aec", "DIMSE", "127.0.0.1", port, *files])
        assert result.returncode == 0, result.stderr
        assert "Failed" not in result.stderr, result.stderr
    received = stored_files(out)
    for source in SAMPLE_FILES:
        stored = received[open_dicom_file(source).sop_instance_uid]
        assert open_dicom_file(stored).transfer_syntax == open_dicom_file(source).transfer_syntax
        assert same_content(stored, source), source.name


def test_dimse_store_to_storescp(processes: Processes, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "storescp"
    out.mkdir()
    storescp = require("storescp")
    processes.server([storescp, "+B", "+xa", "-od", out, "-aet", "STORESCP", port], port)
    result = run(dimse_command("store", "-aec", "STORESCP", "127.0.0.1", port, *SAMPLE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    received = stored_files(out)
    for source in SAMPLE_FILES:
        uid = open_dicom_file(source).sop_instance_uid
        assert uid in received, source.name
        assert (
            open_dicom_file(received[uid]).transfer_syntax
            == open_dicom_file(source).transfer_syntax
        )
        assert same_data_set(received[uid], source), source.name


def test_dimse_store_to_storescp_converts_when_needed(processes: Processes, tmp_path: Path) -> None:
    """storescp +xi takes Implicit VR Little Endian only: big endian is converted."""
    port, out = free_port(), tmp_path / "storescp"
    out.mkdir()
    processes.server([require("storescp"), "+xi", "-od", out, port], port)
    source = TEST_FILES / "MR_small_bigendian.dcm"
    result = run(dimse_command("store", "-aec", "ANY-SCP", "127.0.0.1", port, source))
    assert result.returncode == 0, result.stdout + result.stderr
    stored = stored_files(out)[open_dicom_file(source).sop_instance_uid]
    original, received = pydicom.dcmread(source), pydicom.dcmread(stored)
    assert received.file_meta.TransferSyntaxUID != original.file_meta.TransferSyntaxUID
    assert received.PixelData and received.pixel_array.tolist() == original.pixel_array.tolist()
