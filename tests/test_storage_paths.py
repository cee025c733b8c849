"""The archive's file layout: no attribute value can leave the archive root."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from pathlib import Path

import pytest

import dimse
from conftest import SAMPLE_FILES, stored_files
from dimse.client import contexts_for
from dimse.durability import syncfs_call
from dimse.files import open_dicom_file
from dimse.index import Instance
from dimse.policies import Layout, safe_name
from dimse.server import AllowRule
from dimse.storage import StorageProvider

HOSTILE = ["../../etc/passwd", "/abs/path", "..", ".", "", "a/b\\c", "x\0y", "  ", "~root", "C:\\x"]


@pytest.mark.parametrize("value", HOSTILE)
def test_safe_name_is_one_harmless_component(value: str) -> None:
    name = safe_name(value)
    assert name and "/" not in name and "\\" not in name and "\0" not in name
    assert name not in (".", "..") and not name.startswith(".")


@pytest.mark.parametrize("layout", list(Layout))
@pytest.mark.parametrize("value", HOSTILE)
def test_layout_paths_stay_under_the_root(layout: Layout, value: str, tmp_path: Path) -> None:
    item = Instance(
        sop_instance_uid=value,
        sop_class_uid="1.2.3",
        transfer_syntax="1.2.840.10008.1.2.1",
        path="",
        size=0,
        calling_ae="X",
        received=time.time(),
        patient_id=value,
        study_uid=value,
        study_date=value,
        series_uid=value,
    )
    relative = Path(layout.path(item))
    assert not relative.is_absolute()
    resolved = (tmp_path / relative).resolve()
    assert resolved.is_relative_to(tmp_path.resolve())
    assert resolved.suffix == ".dcm" and all(part not in ("..", ".") for part in relative.parts)


def test_stored_files_are_not_world_readable(tmp_path: Path) -> None:
    source = open_dicom_file(SAMPLE_FILES[0])

    async def store() -> int:
        provider = StorageProvider(tmp_path)
        try:
            async with (
                dimse.Server(provider, "127.0.0.1", 0) as server,
                dimse.connect(
                    "127.0.0.1", server.port, called_ae="DIMSE", contexts=contexts_for([source])
                ) as assoc,
            ):
                return (await assoc.store(source)).status
        finally:
            provider.close()

    assert asyncio.run(store()) == 0
    (stored,) = stored_files(tmp_path).values()
    assert stored.stat().st_mode & 0o777 == 0o640


def test_allow_rules_match_ipv4_on_a_dual_stack_socket() -> None:
    rule = AllowRule.parse("CT1@127.0.0.1")
    assert rule.admits("CT1", "127.0.0.1:40000")
    assert rule.admits("CT1 ", "::ffff:127.0.0.1:40000")
    assert not rule.admits("CT1", "10.0.0.1:40000")
    assert not rule.admits("CT2", "127.0.0.1:40000")
    assert AllowRule.parse("CT1").admits("CT1", "::1:5000")
    # Written as IPv4-mapped IPv6, the rule still matches what admits() compares.
    assert AllowRule.parse("CT1@::ffff:10.0.0.1").admits("CT1", "::ffff:10.0.0.1:40000")
    assert AllowRule.parse("CT1@2001:DB8::1").admits("CT1", "2001:db8::1:40000")


@pytest.mark.parametrize("text", ["CT1@ct-scanner.example", "CT1@10.0.0.300", "@10.0.0.1", ""])
def test_allow_rules_name_an_ae_title_and_an_ip_address(text: str) -> None:
    """A host name or a typo would never equal a peer's address: that AE title would
    be refused from everywhere, silently."""
    with pytest.raises(ValueError):
        AllowRule.parse(text)


def test_syncfs_reports_its_errors(tmp_path: Path) -> None:
    """--sync filesystem relies on syncfs(2) failing loudly: a failed call must raise,
    never pass for durable (here a closed descriptor, EBADF)."""
    syncfs = syncfs_call()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    syncfs(fd)  # the archive's folder: succeeds
    os.close(fd)
    with pytest.raises(OSError) as raised:
        syncfs(fd)
    assert raised.value.errno == errno.EBADF
