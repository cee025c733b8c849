"""Memory under load: many simultaneous associations sending large data sets."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import dimse
from conftest import Processes, dimse_command, free_port, stored_files
from dimse.client import RawDataSet
from dimse.negotiation import ProposedContext
from dimse.transcode import encode_dataset
from test_sender import _instance

ASSOCIATIONS = 50
SIZE = 4 * 1024 * 1024
MIB = 1024 * 1024
#: The documented ceiling (README): idle RSS plus 4 MiB per simultaneous association.
PER_ASSOCIATION = 4 * MIB


def _rss(pid: int, field: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


async def _one(port: int, n: int, pixels: bytes, barrier: asyncio.Barrier) -> int:
    ds = _instance("1.2.840.10008.5.1.4.1.1.7", f"1.2.3.{n}")
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1024, 2048, 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation, ds.PixelData = "MONOCHROME2", pixels
    data = encode_dataset(ds, "1.2.840.10008.1.2.1")
    raw = RawDataSet(str(ds.SOPClassUID), str(ds.SOPInstanceUID), "1.2.840.10008.1.2.1", data)
    contexts = [ProposedContext("1.2.840.10008.5.1.4.1.1.7", ("1.2.840.10008.1.2.1",))]
    async with dimse.connect(
        "127.0.0.1", port, calling_ae=f"LOAD{n}", called_ae="DIMSE", contexts=contexts
    ) as assoc:
        await asyncio.wait_for(barrier.wait(), 60)  # all associations open before any sends
        return (await assoc.store(raw)).status


async def _load(port: int) -> list[int]:
    pixels = os.urandom(SIZE)
    barrier = asyncio.Barrier(ASSOCIATIONS)
    return await asyncio.gather(*(_one(port, n, pixels, barrier) for n in range(ASSOCIATIONS)))


def test_fifty_associations_keep_server_memory_bounded(
    processes: Processes, tmp_path: Path
) -> None:
    port, out = free_port(), tmp_path / "archive"
    server = processes.server(
        dimse_command(
            "serve", port, "-od", out, "--bind", "127.0.0.1", "--max-associations", 60, "-q"
        ),
        port,
    )
    idle = _rss(server.pid, "VmRSS")
    statuses = asyncio.run(_load(port))
    assert statuses == [0] * ASSOCIATIONS
    assert len(stored_files(out)) == ASSOCIATIONS
    growth = _rss(server.pid) - idle
    assert growth < ASSOCIATIONS * PER_ASSOCIATION, f"server grew {growth / MIB:.0f} MiB"
