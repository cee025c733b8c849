"""Faults of the archive's own resources: a locked or corrupted index, a read-only disk."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
from pathlib import Path

import pytest

import dimse
from conftest import SAMPLE_FILES, dimse_command, free_port, run, stored_files, unavailable
from dimse.client import contexts_for
from dimse.files import open_dicom_file
from dimse.negotiation import ProposedContext
from dimse.sop_classes import VERIFICATION
from dimse.storage import INDEX_FILE, TEMP_DIR, StorageProvider


def test_locked_index_fails_the_store_and_stores_nothing(tmp_path: Path) -> None:
    source = open_dicom_file(SAMPLE_FILES[0])

    async def scenario() -> tuple[int, int]:
        provider = StorageProvider(tmp_path)
        blocker = sqlite3.connect(tmp_path / INDEX_FILE, isolation_level=None)
        try:
            async with (
                dimse.Server(provider, "127.0.0.1", 0) as server,
                dimse.connect(
                    "127.0.0.1", server.port, called_ae="DIMSE", contexts=contexts_for([source])
                ) as assoc,
            ):
                blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the index
                locked = (await assoc.store(source)).status
                blocker.execute("ROLLBACK")
                freed = (await assoc.store(source)).status
            return locked, freed
        finally:
            blocker.close()
            provider.close()

    locked, freed = asyncio.run(scenario())
    assert locked == 0x0110  # processing failure: never Success for an unindexed file
    assert freed == 0x0000
    assert len(stored_files(tmp_path)) == 1
    assert list((tmp_path / TEMP_DIR).iterdir()) == []


def test_corrupted_index_is_a_clear_start_up_error(tmp_path: Path) -> None:
    tmp_path.joinpath(INDEX_FILE).write_bytes(b"this is not a database" * 100)
    result = run(dimse_command("serve", free_port(), "-od", tmp_path, "--bind", "127.0.0.1"))
    assert result.returncode == 2
    assert "cannot open" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _chattr(flag: str, *paths: Path) -> None:
    """Root ignores permission bits; the immutable attribute stops even root's writes."""
    result = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, text=True)
    if result.returncode != 0:
        unavailable(f"cannot chattr here ({result.stderr.strip()})")  # CI: root on ext4


def test_read_only_archive_fails_the_store_and_the_server_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The archive's folders stop taking writes under a running server (made
    immutable: not even root may create files there): a C-STORE fails with A7xx
    and a log line, nothing is acknowledged that is not stored, C-ECHO still works,
    and storing works again once the folders are writable."""
    first, second = (open_dicom_file(path) for path in SAMPLE_FILES[2:4])
    locked = [tmp_path, tmp_path / TEMP_DIR]

    async def scenario() -> list[int]:
        provider = StorageProvider(tmp_path)
        try:
            async with (
                dimse.Server(provider, "127.0.0.1", 0) as server,
                dimse.connect(
                    "127.0.0.1",
                    server.port,
                    called_ae="DIMSE",
                    contexts=[
                        ProposedContext(VERIFICATION, ("1.2.840.10008.1.2",)),
                        *contexts_for([first, second]),
                    ],
                ) as assoc,
            ):
                statuses = [(await assoc.store(first)).status]
                _chattr("+i", *locked)
                try:
                    statuses.append((await assoc.store(second)).status)
                    statuses.append(await assoc.echo())
                finally:
                    _chattr("-i", *locked)
                statuses.append((await assoc.store(second)).status)
            return statuses
        finally:
            provider.close()

    with caplog.at_level(logging.ERROR, logger="dimse"):
        stored, refused, echoed, again = asyncio.run(scenario())
    assert (stored, echoed, again) == (0x0000, 0x0000, 0x0000)
    assert refused >> 8 == 0xA7, f"{refused:04X}"  # out of resources (PS3.4 §B.2.3)
    assert "cannot store" in caplog.text and "Operation not permitted" in caplog.text
    assert len(stored_files(tmp_path)) == 2
    assert list((tmp_path / TEMP_DIR).iterdir()) == []
