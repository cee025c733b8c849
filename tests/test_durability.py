"""Many files fsynced at once (dimse.durability): native AIO on Linux, threads
elsewhere. Each file's failure must be its own; a failure must never pass for
durable."""

from __future__ import annotations

import errno
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dimse.durability import AioSyncer, FileSystemSyncer, ThreadSyncer, file_syncer, syncfs_call

#: Linux, where AioSyncer knows the system call numbers.
AIO_HERE = sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64")


@pytest.fixture(params=["aio", "threads"])
def syncer(request: pytest.FixtureRequest) -> Iterator[AioSyncer | ThreadSyncer]:
    if request.param == "aio" and not AIO_HERE:
        pytest.skip("Linux native AIO, on x86_64 or aarch64")
    made = AioSyncer(depth=4) if request.param == "aio" else ThreadSyncer(threads=3)
    yield made
    made.close()


def written(folder: Path, count: int) -> list[int]:
    fds = []
    for n in range(count):
        fd = os.open(folder / f"{n}.part", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, bytes([n % 256]) * 40_000)
        fds.append(fd)
    return fds


def test_linux_uses_native_aio() -> None:
    """The archive's default: on Linux the kernel fsyncs a round concurrently."""
    made = file_syncer()
    try:
        assert isinstance(made, AioSyncer) == AIO_HERE
    finally:
        made.close()


def test_every_file_is_fsynced(syncer: AioSyncer | ThreadSyncer, tmp_path: Path) -> None:
    """More files than one AIO batch (depth 4) or one thread's share."""
    fds = written(tmp_path, 11)
    try:
        assert syncer.fsync_all(fds) == [None] * 11
        assert syncer.fsync_all([]) == []
        assert syncer.fsync_all(fds[:1]) == [None]  # a lone image's round
    finally:
        for fd in fds:
            os.close(fd)


def test_a_failure_is_that_files_alone(syncer: AioSyncer | ThreadSyncer, tmp_path: Path) -> None:
    """A closed descriptor (io_submit refuses it: EBADF) and a pipe (no fsync:
    EINVAL) among good files: those two fail, in their places, the others do not;
    the same syncer then serves the next round."""
    fds = written(tmp_path, 6)
    read_end, write_end = os.pipe()
    closed = os.open(tmp_path / "closed", os.O_RDWR | os.O_CREAT, 0o600)
    os.close(closed)  # last: no descriptor opened after it reuses its number
    try:
        errors = syncer.fsync_all([fds[0], closed, *fds[1:4], read_end, *fds[4:]])
        assert [e.errno if e else None for e in errors] == [
            None,
            errno.EBADF,
            None,
            None,
            None,
            errno.EINVAL,
            None,
            None,
        ]
        assert syncer.fsync_all(fds) == [None] * 6
    finally:
        for fd in (*fds, read_end, write_end):
            os.close(fd)


@pytest.mark.skipif(not AIO_HERE, reason="Linux native AIO, on x86_64 or aarch64")
def test_a_refused_aio_context_is_an_oserror() -> None:
    """More requests in flight than the system allows (fs.aio-max-nr): io_setup
    refuses with EAGAIN, as on a system whose AIO is used up, the OSError after
    which file_syncer() falls back to threads."""
    limit = int(Path("/proc/sys/fs/aio-max-nr").read_text())
    with pytest.raises(OSError) as raised:
        AioSyncer(depth=limit + 1)
    assert raised.value.errno == errno.EAGAIN


@pytest.mark.skipif(sys.platform != "linux", reason="syncfs(2)")
def test_one_syncfs_stands_for_every_file(tmp_path: Path) -> None:
    """--sync filesystem: each file is answered durable by the one syncfs; a failed
    syncfs (here the archive's folder descriptor closed under it: EBADF) raises,
    failing them all, never passing for durable."""
    syncer = FileSystemSyncer(syncfs_call(), tmp_path)
    fds = written(tmp_path, 3)
    try:
        assert syncer.fsync_all(fds) == [None] * 3
        assert syncer.fsync_all([]) == []
        syncer.close()
        with pytest.raises(OSError) as raised:
            syncer.fsync_all(fds)
        assert raised.value.errno == errno.EBADF
    finally:
        for fd in fds:
            os.close(fd)
