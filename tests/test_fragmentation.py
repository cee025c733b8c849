"""A data set far larger than the max PDU streams through, in bounded memory."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from conftest import Processes, dimse_command, free_port, run, stored_files
from dimse.files import open_dicom_file

SIZE = 50 * 1024 * 1024
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Big^Image"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 5120, 5120, 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = os.urandom(SIZE)
    path = tmp_path_factory.mktemp("big") / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _digest(path: Path) -> str:
    file = open_dicom_file(path)
    digest = hashlib.sha256()
    with path.open("rb") as fp:
        fp.seek(file.dataset_offset)
        while block := fp.read(MIB):
            digest.update(block)
    return digest.hexdigest()


def _peak_rss(pid: int) -> int:
    """Peak resident set size of a running process, in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


#: Runs the CLI and prints its own peak RSS (bytes) last, for the client's bound.
_MEASURED_CLI = (
    "import resource, sys\n"
    "from dimse.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n"
    "sys.exit(code)\n"
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("max_pdu", [16 * 1024, MIB])
def test_50_mb_round_trip_in_bounded_memory(
    big_file: Path, max_pdu: int, processes: Processes, tmp_path: Path
) -> None:
    port, out = free_port(), tmp_path / "archive"
    server = processes.server(
        dimse_command("serve", port, "-od", out, "--bind", "127.0.0.1", "-pdu", max_pdu), port
    )
    measured = [sys.executable, "-c", _MEASURED_CLI]
    # The baseline: the same client, same imports, one association, no data set.
    echo = run([*measured, "echo", "-aec", "DIMSE", "127.0.0.1", port])
    assert echo.returncode == 0, echo.stderr
    server_before = _peak_rss(server.pid)

    client = subprocess.run(
        [
            *measured,
            "store",
            "-aec",
            "DIMSE",
            "-pdu",
            str(max_pdu),
            "127.0.0.1",
            str(port),
            str(big_file),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert client.returncode == 0, client.stdout + client.stderr
    assert "0000 Success" in client.stdout

    stored = stored_files(out)[open_dicom_file(big_file).sop_instance_uid]
    assert _digest(stored) == _digest(big_file)
    server_growth = _peak_rss(server.pid) - server_before
    assert server_growth < 24 * MIB, f"server grew {server_growth / MIB:.0f} MiB"
    client_growth = int(client.stdout.split()[-1]) - int(echo.stdout.split()[-1])
    assert client_growth < 24 * MIB, f"client grew {client_growth / MIB:.0f} MiB"
