"""A bounded soak test of `dimse serve`: mixed traffic from several SCU processes.

    python bench/soak.py --minutes 5 --senders 4

Starts an archive on 127.0.0.1 in a temporary folder, then `--senders` processes
that, until the time is up, open associations and send C-ECHOs and C-STOREs of
small and large generated images (a new SOP Instance UID each time). Reports the
stored count, failures, p50/p99 C-STORE latency and the server's RSS over time,
and checks that the archive holds exactly what was acknowledged. Loopback only;
everything stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

import dimse
from dimse.client import RawDataSet
from dimse.index import Index
from dimse.negotiation import ProposedContext
from dimse.sop_classes import VERIFICATION
from dimse.transcode import encode_dataset


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _data_set(size: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "SOAK", "Soak^Test", "OT"
    side = max(2, int((size / 2) ** 0.5))
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.SamplesPerPixel = 16, 16, 15, 1
    ds.PixelRepresentation, ds.PhotometricInterpretation = 0, "MONOCHROME2"
    ds.PixelData = os.urandom(side * side * 2)
    return ds


async def _sender(port: int, seconds: float, seed: int) -> dict[str, object]:
    """One SCU: associations of random length until the deadline."""
    rng = random.Random(seed)
    template = {
        size: encode_dataset(_data_set(size), ExplicitVRLittleEndian)
        for size in (40_000, 4_000_000)
    }
    contexts = [
        ProposedContext(SecondaryCaptureImageStorage, (ExplicitVRLittleEndian,)),
        ProposedContext(VERIFICATION, (ExplicitVRLittleEndian,)),
    ]
    latencies: list[float] = []
    acknowledged: list[str] = []
    failures = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            async with dimse.connect(
                "127.0.0.1", port, called_ae="DIMSE", contexts=contexts, async_ops=4
            ) as assoc:
                await assoc.echo()
                for _ in range(rng.randint(1, 50)):
                    if time.monotonic() >= deadline:
                        break
                    size = 4_000_000 if rng.random() < 0.05 else 40_000
                    uid = generate_uid()
                    data = _with_uid(template[size], uid)
                    started = time.perf_counter()
                    response = await assoc.store(
                        RawDataSet(SecondaryCaptureImageStorage, uid, ExplicitVRLittleEndian, data)
                    )
                    latencies.append(time.perf_counter() - started)
                    if response.status == 0:
                        acknowledged.append(uid)
                    else:
                        failures += 1
        except dimse.AssociationError as error:
            failures += 1
            print(f"sender {seed}: {error}", file=sys.stderr)
    return {"latencies": latencies, "acknowledged": acknowledged, "failures": failures}


def _with_uid(encoded: bytes, uid: str) -> bytes:
    """The template data set with a new SOP Instance UID (re-encoded, small header)."""
    from io import BytesIO

    from pydicom.filereader import read_dataset

    ds = read_dataset(BytesIO(encoded), False, True)
    ds.SOPInstanceUID = uid
    return encode_dataset(ds, ExplicitVRLittleEndian)


def _run_sender(args: tuple[int, float, int]) -> dict[str, object]:
    return asyncio.run(_sender(*args))


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--senders", type=int, default=4)
    args = parser.parse_args()
    seconds = args.minutes * 60
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="dimse-soak-") as folder:
        root = Path(folder) / "archive"
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dimse",
                "serve",
                str(port),
                "-od",
                str(root),
                "--bind",
                "127.0.0.1",
                "-q",
            ],
        )
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            rss: list[tuple[float, int]] = []
            started = time.monotonic()
            with multiprocessing.Pool(args.senders) as pool:
                pending = pool.map_async(
                    _run_sender, [(port, seconds, n) for n in range(args.senders)]
                )
                while not pending.ready():
                    rss.append((time.monotonic() - started, _rss(server.pid)))
                    pending.wait(5)
                results = pending.get()
        finally:
            server.terminate()
            server.wait(60)
        index = Index(root / "index.sqlite")
        stored = {uid for uid, _, _ in index.files()}
        index.close()
    latencies = sorted(t for r in results for t in r["latencies"])  # type: ignore[attr-defined]
    acknowledged = {u for r in results for u in r["acknowledged"]}  # type: ignore[attr-defined]
    failures = sum(int(r["failures"]) for r in results)  # type: ignore[call-overload]
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    report = {
        "minutes": args.minutes,
        "senders": args.senders,
        "acknowledged": len(acknowledged),
        "stored": len(stored),
        "failures": failures,
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
        "peak_rss_mb": round(max((r for _, r in rss), default=0) / 2**20, 1),
        "rss_mb_over_time": [(round(t), round(r / 2**20, 1)) for t, r in rss],
        "consistent": acknowledged <= stored,
    }
    print(json.dumps(report, indent=2))
    return 0 if report["consistent"] else 1


if __name__ == "__main__":
    sys.exit(main())
