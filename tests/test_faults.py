"""Faults of the archive's own resources: a locked or corrupted index."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import dimse
from conftest import SAMPLE_FILES, dimse_command, free_port, run, stored_files
from dimse.client import contexts_for
from dimse.files import open_dicom_file
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
