"""A storage SCP provider that writes each instance durably as a PS3.10 file.

Bit-preserving: the stored file is our file meta followed by the peer's data set
bytes exactly as received. Durable: the bytes go to a temporary file in the
storage folder, which is fsynced, renamed into place and its folder fsynced
before Success is answered (PS3.4 B.2.3: Success means the SCP has stored it).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import BinaryIO

from dimse.files import file_meta_bytes
from dimse.server import Outcome, ServiceProvider, StoreRequest
from dimse.status import Status

log = logging.getLogger("dimse.storage")

TEMP_DIR = ".incoming"
_UNSAFE = re.compile(r"[^0-9A-Za-z.\-]")


def safe_name(value: str) -> str:
    """A path component from an attribute value: no separators, no '..', never empty."""
    name = _UNSAFE.sub("_", value.strip())[:128].strip(".")
    return name or "_"


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (POSIX needs the directory fsynced too)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def failure_for(error: OSError) -> Outcome:
    """PS3.4 B.2.3: A7xx out of resources for a full or unwritable disk."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return Outcome(Status.OUT_OF_RESOURCES, "disk full")
    return Outcome(Status.OUT_OF_RESOURCES, f"cannot write: {error.strerror}"[:64])


class FileSink:
    """Streams one data set into a temporary file; complete() makes it durable."""

    def __init__(self, request: StoreRequest, root: Path, final_path: Path) -> None:
        self.request = request
        self.root = root
        self.final_path = final_path
        self.temp_path = root / TEMP_DIR / f"{uuid.uuid4().hex}.part"
        self.size = 0
        self._started = time.monotonic()
        message = request.message
        self._file: BinaryIO = self.temp_path.open("wb")
        self._file.write(
            file_meta_bytes(
                message.affected_sop_class_uid,
                message.affected_sop_instance_uid,
                request.transfer_syntax,
                request.peer.calling_ae,
            )
        )

    async def write(self, data: memoryview) -> None:
        self._file.write(data)
        self.size += len(data)

    async def complete(self) -> int | Outcome:
        try:
            await asyncio.to_thread(self._commit)
        except OSError as error:
            log.error("cannot store %s: %s", self.final_path.name, error)
            await self.discard()
            return failure_for(error)
        log.info(
            "stored %s from %s (%d bytes, %.1f ms)",
            self.final_path.relative_to(self.root),
            self.request.peer.calling_ae,
            self.size,
            (time.monotonic() - self._started) * 1000,
        )
        return Status.SUCCESS

    def _commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.final_path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.temp_path, self.final_path)
        fsync_dir(self.final_path.parent)

    async def discard(self) -> None:
        self._file.close()
        self.temp_path.unlink(missing_ok=True)


class StorageProvider(ServiceProvider):
    """Accepts every C-STORE and writes `<root>/<SOPInstanceUID>.dcm`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        (self.root / TEMP_DIR).mkdir(parents=True, exist_ok=True)

    async def on_store(self, request: StoreRequest) -> FileSink | Outcome:
        name = safe_name(request.message.affected_sop_instance_uid) + ".dcm"
        try:
            return FileSink(request, self.root, self.root / name)
        except OSError as error:
            log.error("cannot store %s: %s", name, error)
            return failure_for(error)
