"""The archive: a storage SCP provider that files every instance durably and indexes it.

Bit-preserving: a stored file is our file meta (PS3.10 §7.1) followed by the
peer's data set bytes exactly as received. Durable: the bytes stream into a
temporary file in the archive's own `.incoming` folder, which is fsynced (or the
whole file system synced, SyncMode.FILESYSTEM), renamed into place, its folder
fsynced, and the instance indexed, all before Success is answered (PS3.4 §B.2.3:
Success means the SCP has stored it). A crash leaves no partial file at a final
path; leftovers in `.incoming` are removed at start-up.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cached_property
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from dimse.durability import FileSystemSyncer, file_syncer, fsync_dir, syncfs_call
from dimse.elements import (
    DATA_SET_END,
    CutOff,
    Unscannable,
    encoding,
    header_elements,
    inflate_head,
    scan_text,
)
from dimse.files import cut_short, file_meta_bytes, mapped
from dimse.index import HEADER_TAGS, Index, Instance, is_damage
from dimse.policies import DuplicatePolicy, Layout, SyncMode
from dimse.server import Outcome, Peer, ServiceProvider, StoreRequest
from dimse.shapes import HeaderShapes
from dimse.status import Status, describe

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger("dimse.storage")

TEMP_DIR = ".incoming"
FILE_MODE = 0o640
HEAD_SIZE = 64 * 1024  # bytes read back from a streamed data set for its header
WRITEBACK_STEP = 8 << 20  # large data sets: start writeback every this many bytes
#: Data sets up to this size (file meta included) are held in memory until complete,
#: while all those held together stay under HOLD_TOTAL: beyond it, the next one waits
#: for a filing round to give back room (FileSink._room_for), or streams into its file
#: as large ones do. Without that cap, 20 associations with 32 C-STOREs in flight
#: each took the server's RSS from 42 to 95 MB. It holds one association's full
#: window (negotiation.MAX_ASYNC_OPS) of the benchmark's 40 KB images.
HOLD_LIMIT = 256 * 1024
HOLD_TOTAL = 12 << 20
INDEX_FILE = "index.sqlite"
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """What a reception hook is told: the instance, where it is, who sent it."""

    instance: Instance
    path: Path
    peer: Peer


Filed = tuple[Outcome, Instance | None]  # a filing round's answer for one sink
#: Files in one filing round at most: each is open from its creation to the end of
#: the round, and many associations' windows (256 each) could otherwise open more
#: files at once than the process may.
MAX_ROUND = 256
StoredHook = Callable[[StoredInstance], Awaitable[None]]
StudyHook = Callable[[str, Path, Peer], Awaitable[None]]


def _write_all(fd: int, buffers: Sequence[bytes | memoryview]) -> None:
    """One system call for the usual case; a short write (a signal) is resumed."""
    written = os.writev(fd, buffers)
    total = sum(len(buffer) for buffer in buffers)
    if written < total:
        rest = memoryview(b"".join(buffers))[written:]
        while rest:
            rest = rest[os.write(fd, rest) :]


def failure_for(error: OSError) -> Outcome:
    """PS3.4 §B.2.3: A7xx out of resources for a full or unwritable disk."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return Outcome(Status.OUT_OF_RESOURCES, "out of disk space")
    return Outcome(Status.OUT_OF_RESOURCES, f"cannot write: {error.strerror}"[:64])


#: The index and the checks read nothing past (0020,0013) Instance Number, the last
#: of index.HEADER_TAGS; the header is parsed up to there only (what follows is
#: walked, not parsed, for its end: FileSink._cut_short).
LAST_HEADER_TAG = 0x00200013
#: What pydicom is given of a header it reads: the index's elements, and (0008,0005)
#: Specific Character Set, which says how to decode them (PS3.5 §6.1.2.3).
_PARSED_TAGS = frozenset(HEADER_TAGS) | {0x00080005}
#: How far into a deflated data set (PS3.5 §A.5) its header must end: a few
#: kilobytes of deflate stream may inflate to gigabytes, read into memory.
INFLATED_HEADER_LIMIT = 4 << 20


def scan_header(
    head: bytes,
    size: int,
    transfer_syntax: str,
    shapes: HeaderShapes | None = None,
    source: Hashable = None,
) -> dict[str, str] | None:
    """read_header()'s fast path alone: None when pydicom is needed. With `shapes`
    (the archive's, on the event loop only), by the layout learnt from `source`'s
    earlier data sets, and None too for one cut short."""
    deflated, implicit, little_endian = encoding(transfer_syntax)
    if deflated or not little_endian:
        return None
    complete = len(head) >= size
    if shapes is not None:
        scanned = shapes.scan(source, head, implicit, complete)
        return None if scanned is None else scanned[0]
    return scan_text(head, 0, implicit, HEADER_TAGS, LAST_HEADER_TAG, complete)


def read_header(
    head: bytes, size: int, transfer_syntax: str, path: str
) -> Dataset | dict[str, str]:
    """The attributes the index needs, from the data set's first bytes.

    Scanned in place for Little Endian data sets with plain ASCII values (the
    common case; see dimse.elements); otherwise pydicom parses the header's
    elements alone, copied out of `head` or, when they end past it, of the file at
    `path`, whose last `size` bytes are the data set. Memory stays bounded whatever
    comes before them: pydicom would read every value on its way.
    """
    values = scan_header(head, size, transfer_syntax)
    if values is not None:
        return values
    deflated, implicit, little_endian = encoding(transfer_syntax)
    from pydicom.filereader import read_dataset

    if not little_endian:  # Explicit VR Big Endian (retired, PS3.5 §A.3): not walked
        with open(path, "rb") as file:
            file.seek(-size, os.SEEK_END)
            return read_dataset(
                file,
                False,
                False,
                stop_when=lambda tag, vr, length: tag > LAST_HEADER_TAG,
                defer_size=HEAD_SIZE,
                specific_tags=list(_PARSED_TAGS),
            )
    complete = len(head) >= size
    if deflated:
        head, inflated_whole = inflate_head((head,), HEAD_SIZE)
        complete &= inflated_whole
    if len(head) >= 6:  # a first element that disagrees with the syntax decides (pydicom)
        implicit = not (head[4:6].isalpha() and head[4:6].isupper())
    try:
        elements = header_elements(head, implicit, _PARSED_TAGS, LAST_HEADER_TAG, complete)
    except CutOff:
        elements = _header_elements_in_file(path, size, deflated, implicit)
    return read_dataset(BytesIO(elements), implicit, True)


def _header_elements_in_file(path: str, size: int, deflated: bool, implicit: bool) -> bytes:
    with open(path, "rb") as file:
        offset = os.fstat(file.fileno()).st_size - size
        if deflated:  # inflated into memory: the header must end early enough
            file.seek(offset)
            blocks = iter(lambda: file.read(HEAD_SIZE), b"")
            inflated, complete = inflate_head(blocks, INFLATED_HEADER_LIMIT)
            try:
                return header_elements(inflated, implicit, _PARSED_TAGS, LAST_HEADER_TAG, complete)
            except CutOff:
                limit = INFLATED_HEADER_LIMIT >> 20
                raise Unscannable(f"no header in its first {limit} MiB inflated") from None
        with mapped(file.fileno(), offset, size) as data_set:
            return header_elements(data_set, implicit, _PARSED_TAGS, LAST_HEADER_TAG, True)


def layout_source(peer: Peer, sop_class: str, syntax: str) -> tuple[str, str, str, str]:
    """Whose headers share a layout (dimse.shapes): one device's images of one kind.
    The host, not the port (each association has its own), and the calling AE,
    which two devices may share (many keep their vendor's default)."""
    return (peer.address.rpartition(":")[0], peer.calling_ae, sop_class, syntax)


class FileSink:
    """Receives one data set into a temporary file; complete() files it durably.

    A data set of up to HOLD_LIMIT bytes is held in memory until complete (within
    the HOLD_TOTAL that the archive's sinks hold together), then its filing round
    creates and writes its file: the event loop, the server's busiest thread, makes
    no file system call for it. Any other streams into its file as it arrives.
    """

    def __init__(self, archive: StorageProvider, request: StoreRequest) -> None:
        self.archive = archive
        self.request = request
        self.temp_path = archive.temp_name()
        self.size = 0
        self._started = time.monotonic()
        self.filed = False  # renamed into place: nothing left to discard
        message = request.message
        meta = file_meta_bytes(
            message.affected_sop_class_uid,
            message.affected_sop_instance_uid,
            request.transfer_syntax,
            request.peer.calling_ae,
        )
        self.file_size = len(meta)
        self._held: list[bytes] | None = [meta]  # not written yet: no file so far
        self._holding = 0  # bytes of the data set counted in archive.holding
        self._in_round = False  # complete, in (or waiting for) its filing round
        self._fd = -1
        self._advised = 0  # bytes handed to writeback early
        self._checked: Instance | Outcome | None = None  # by complete(), on the event loop

    async def write(self, data: memoryview) -> None:
        self.size += len(data)
        self.file_size += len(data)
        if self._held is not None:
            if self.file_size <= HOLD_LIMIT and await self._room_for(len(data)):
                self._held.append(bytes(data))  # a copy: the PDU's buffer is not kept alive
                self._holding += len(data)
                self.archive.holding += len(data)
                return
            self._create()
            self._release()
        _write_all(self._fd, [data])
        if self.file_size - self._advised >= WRITEBACK_STEP and self._fd >= 0:
            # Start writing the pages out now (and let them leave the page cache):
            # the fsync at the end then waits for the last few MB, not the whole image.
            os.posix_fadvise(self._fd, self._advised, 0, os.POSIX_FADV_DONTNEED)
            self._advised = self.file_size

    def _create(self) -> None:
        """Create the temporary file and write what was held."""
        assert self._held is not None
        # Owner read-write, group read: medical images are not for every local user.
        self._fd = os.open(self.temp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
        held, self._held = self._held, None
        _write_all(self._fd, held)

    def _held_data_set(self) -> bytes:
        """The data set held in memory, whole, the file meta left out."""
        assert self._held is not None
        return b"".join(self._held[1:])

    async def _room_for(self, size: int) -> bool:
        """Whether `size` more bytes may be held (HOLD_TOTAL).

        A data set's first bytes wait while complete data sets fill the cap, since
        their rounds will free it; the peer's next bytes wait in TCP's buffers
        meanwhile. Streamed through files the event loop creates instead, small data
        sets cost 20 % of the images/s with 4 associations of 128 C-STOREs in flight
        (medians of 8). The rest of a data set under way never waits: what is held
        may be data sets under way, which only reading completes.
        """
        archive = self.archive
        settled = False
        while archive.holding + size > HOLD_TOTAL and not self._holding:
            if archive.held_filing:
                await archive.released()
                settled = False
            elif not settled:  # data sets that just ended may have complete() to start
                settled = True
                await asyncio.sleep(0)
            else:
                break
        return archive.holding + size <= HOLD_TOTAL

    def _release(self) -> None:
        """Uncount what was held (on the event loop, which alone counts)."""
        if self._holding:
            self.archive.holding -= self._holding
            if self._in_round:
                self.archive.held_filing -= self._holding
            self._holding = 0
            self.archive.freed()

    async def complete(self) -> int | Outcome:
        if self._held is not None:
            # Checked here, where its bytes are: the filing thread then only writes it.
            # Scanned on that thread, it waited on the GIL for the event loop and the
            # fsync threads of the time (+15% images/s with --sync file, medians of 6).
            request = self.request
            header = scan_header(
                self._held_data_set(),
                self.size,
                request.transfer_syntax,
                self.archive.shapes,
                layout_source(
                    request.peer, request.message.affected_sop_class_uid, request.transfer_syntax
                ),
            )
            if header is not None:
                self._checked = self._instance(header)
        self._in_round = True
        self.archive.held_filing += self._holding
        try:
            outcome = await self.archive.file(self)
        finally:  # also when an abort cancels the wait: the round still files it
            self._release()
        if not self.filed:
            await self.discard()
        # Successes at debug level (-v), as storescp does: at ~1000 images/s a line
        # each was a tenth of the event loop's time; the index records every one.
        log.log(
            logging.DEBUG if outcome.status == Status.SUCCESS else logging.WARNING,
            "%s %s: C-STORE %s: %s%s, %d bytes, %.1f ms",
            self.request.peer.address,
            self.request.peer.calling_ae.strip(),
            self.request.message.affected_sop_instance_uid,
            describe(outcome.status),
            f" ({outcome.comment})" if outcome.comment else "",
            self.size,
            (time.monotonic() - self._started) * 1000,
        )
        return outcome

    def prepare(self) -> Instance | Outcome:
        """Write what was held and read what the index needs (unless complete()
        did); the file stays open for sync() or close().

        Runs on the filing thread. Returns the failure to answer instead when the
        data set cannot be read (Cxxx) or is not the instance its command names.
        """
        if self._checked is not None:
            if not isinstance(self._checked, Outcome):
                self._create()
            return self._checked
        if self._held is not None:
            head = self._held_data_set()
            self._create()
        else:  # streamed: read back (from the page cache) rather than kept in memory
            head = os.pread(self._fd, HEAD_SIZE, self.file_size - self.size)
        try:
            header = read_header(head, self.size, self.request.transfer_syntax, self.temp_path)
        except Exception as error:  # pydicom's parse errors have no common base class
            return self._unreadable(error)
        cut = self._cut_short(head)
        if cut is not None:
            return cut
        try:  # pydicom converts a value when it is asked for (an unknown VR raises then)
            return self._instance(header)
        except Exception as error:
            return self._unreadable(error)

    def _unreadable(self, error: Exception) -> Outcome:
        """PS3.4 §B.2.3: Cxxx, the SCP cannot understand the data set; this one
        instance is answered so, never its round's others."""
        log.warning("%s: unreadable data set: %r", self.request.peer.address, error)
        return Outcome(Status.CANNOT_UNDERSTAND, f"cannot parse data set: {error}"[:64])

    def _cut_short(self, head: bytes) -> Outcome | None:
        """PS3.4 §B.2.3 Cxxx for a data set that ends inside an element: what a file
        cut short by a failed copy sends. (A held one read by its shape was checked.)"""
        syntax = self.request.transfer_syntax
        inside = cut_short(head, self._fd, self.file_size - self.size, self.size, syntax)
        if inside is None:
            return None
        log.warning(
            "%s: %s: the data set ends inside %s (%d bytes)",
            self.request.peer.address,
            self.request.message.affected_sop_instance_uid,
            inside,
            self.size,
        )
        return Outcome(Status.CANNOT_UNDERSTAND, f"data set ends inside {inside}")

    def _instance(self, header: Dataset | dict[str, str]) -> Instance | Outcome:
        return self._validate(header) or Instance.from_header(
            header,
            transfer_syntax=self.request.transfer_syntax,
            path="",
            size=self.file_size,
            calling_ae=self.request.peer.calling_ae.strip(),
        )

    def _validate(self, header: Dataset | dict[str, str]) -> Outcome | None:
        """PS3.4 §B.2.3 A900: the data set must be the instance the command names."""
        message = self.request.message
        if header.get("SOPClassUID") != message.affected_sop_class_uid:
            return Outcome(Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "SOP Class UID mismatch")
        if header.get("SOPInstanceUID") != message.affected_sop_instance_uid:
            return Outcome(Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "SOP Instance UID mismatch")
        return None

    def fileno(self) -> int:
        """The open temporary file, for the round's fsyncs (-1 once closed)."""
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    async def discard(self) -> None:
        self._release()
        self._held = None
        self.close()
        Path(self.temp_path).unlink(missing_ok=True)  # none if it was held in memory


def _prepare(sink: FileSink) -> Instance | Outcome:
    """sink.prepare(), a failure to write answered with A7xx."""
    try:
        return sink.prepare()
    except OSError as error:
        log.error("cannot store %s: %s", os.path.basename(sink.temp_path), error)
        return failure_for(error)


class StorageProvider(ServiceProvider):
    """The archive's service provider: accept, validate, file, index, answer.

    `on_stored` hooks run after each instance is filed and before it is answered;
    `on_study` hooks run for each study an association brought, once it ends.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        layout: Layout = Layout.STUDY,
        duplicates: DuplicatePolicy = DuplicatePolicy.KEEP,
        on_stored: Iterable[StoredHook] = (),
        on_study: Iterable[StudyHook] = (),
        durable_index: bool = True,
        clean_temp: bool = True,
        sync: SyncMode = SyncMode.FILE,
    ) -> None:
        self.root = Path(root)
        self.layout = layout
        self.duplicates = duplicates
        # Checked first: where syncfs is missing, ValueError before anything is made.
        syncfs = syncfs_call() if sync is SyncMode.FILESYSTEM else None
        self.on_stored = list(on_stored)
        self.on_study = list(on_study)
        (self.root / TEMP_DIR).mkdir(parents=True, exist_ok=True)
        if clean_temp:  # not in a second process serving the same archive
            self._clean_temp()
        self.index = Index(self.root / INDEX_FILE, durable=durable_index)
        # One thread files and indexes, so duplicate checks and renames never race.
        self._filer = ThreadPoolExecutor(1, thread_name_prefix="dimse-archive")
        # How a round's files are made durable together (dimse.durability).
        self._syncer = file_syncer() if syncfs is None else FileSystemSyncer(syncfs, self.root)
        self._studies: dict[str, dict[str, Path]] = {}
        self.holding = 0  # bytes of data sets held in memory by all sinks (HOLD_TOTAL)
        self.held_filing = 0  # of which, by complete data sets: their rounds free them
        self._room_waiters: list[asyncio.Future[None]] = []  # FileSink._room_for()
        self._waiting: list[tuple[FileSink, asyncio.Future[Filed]]] = []
        self._filing: asyncio.Task[None] | None = None
        # Unique among processes sharing the archive (--workers) and earlier runs.
        self._temp_prefix = os.path.join(self.root, TEMP_DIR, f"{uuid.uuid4().hex[:16]}-")
        self._temp_count = itertools.count()

    def freed(self) -> None:
        waiters, self._room_waiters = self._room_waiters, []
        for waiter in waiters:
            if not waiter.done():  # a cancelled wait is done
                waiter.set_result(None)

    async def released(self) -> None:
        """Until a sink gives back what it held."""
        waiter = asyncio.get_running_loop().create_future()
        self._room_waiters.append(waiter)
        await waiter

    def temp_name(self) -> str:
        return f"{self._temp_prefix}{next(self._temp_count)}.part"

    @cached_property
    def shapes(self) -> HeaderShapes:
        """The layouts of each source's data sets (layout_source()), read whole: one
        that ends inside an element then fits no layout and no walk."""
        return HeaderShapes(HEADER_TAGS, DATA_SET_END)

    def _clean_temp(self) -> None:
        for leftover in (self.root / TEMP_DIR).iterdir():
            log.warning("removing unfinished %s from an earlier run", leftover.name)
            leftover.unlink()

    def close(self) -> None:
        self._filer.shutdown(wait=True)  # the last round, before what it uses goes
        self._syncer.close()
        self.index.close()

    async def on_store(self, request: StoreRequest) -> FileSink | Outcome:
        # Whether it is stored already is asked in its filing round, with the others
        # (a look-up per command on the event loop was a fifth of that thread's time).
        try:
            return FileSink(self, request)
        except OSError as error:
            log.error("cannot store: %s", error)
            return failure_for(error)

    def _duplicate(self, uid: str, stored: bool) -> Outcome | None:
        """The answer to a copy of a stored instance, or None to store it (overwrite)."""
        if not stored or self.duplicates is DuplicatePolicy.OVERWRITE:
            return None
        if self.duplicates is DuplicatePolicy.REJECT:
            return Outcome(Status.DUPLICATE_SOP_INSTANCE, "already stored")
        log.info("%s: already stored, kept the first copy", uid)
        return Outcome(Status.SUCCESS)

    async def file(self, sink: FileSink) -> Outcome:
        """File a complete data set in the next filing round, then run the hooks."""
        peer = sink.request.peer
        waiter: asyncio.Future[Filed] = asyncio.get_running_loop().create_future()
        self._waiting.append((sink, waiter))
        if self._filing is None or self._filing.done():
            self._filing = asyncio.create_task(self._file_waiting())
        outcome, filed = await waiter
        sink.filed = filed is not None
        if filed is not None:
            if self.on_study:
                folder = self.root / self.layout.study_folder(filed)
                self._studies.setdefault(peer.address, {})[filed.study_uid] = folder
            if self.on_stored:
                stored = StoredInstance(filed, self.root / filed.path, peer)
                for hook in self.on_stored:
                    await hook(stored)
        return outcome

    async def _file_waiting(self) -> None:
        """Group commit: file everything that waits in one round, repeat while more come.

        One round fsyncs its files all at once (dimse.durability), renames them,
        fsyncs each folder once and indexes them in one transaction (one WAL
        fsync), so the cost of durability is shared by the instances that arrived
        together; each is answered after its round. The event loop hands over
        one round, not each file: a hand-off between threads costs more here than
        the Python work of an instance.
        """
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_ROUND], self._waiting[MAX_ROUND:]
            try:
                results = await self._run(self._file_batch, [sink for sink, _ in batch])
            except Exception as error:  # every waiter is answered, whatever went wrong
                log.exception("filing %d instance(s) failed", len(batch))
                failure = (
                    failure_for(error)
                    if isinstance(error, OSError)
                    else Outcome(Status.PROCESSING_FAILURE, f"filing failed: {error}"[:64])
                )
                results = [(failure, None)] * len(batch)
            for (_, waiter), result in zip(batch, results, strict=True):
                if not waiter.done():
                    waiter.set_result(result)

    def _file_batch(self, sinks: list[FileSink]) -> list[Filed]:
        """Answer copies, write and check, make durable, rename into place, fsync
        folders, index: one round."""
        results: list[Filed] = []
        filed: list[Instance] = []
        replaced: list[str] = []
        folders: set[str] = set()
        taken: dict[str, str] = {}  # SOP Instance UID -> where this round filed it
        uids = [sink.request.message.affected_sop_instance_uid for sink in sinks]
        stored = self.index.get_many(uids)
        # A copy of a stored instance is answered without being written (a small
        # data set never was; a large one's temporary file is dropped).
        copies = {uid: self._duplicate(uid, True) for uid in stored}
        fresh = [sink for sink, uid in zip(sinks, uids, strict=True) if copies.get(uid) is None]
        # The Python work of the round, on this one thread: spread over the sync
        # threads too, it cost more in hand-offs of the GIL than it gained.
        synced = {sink: _prepare(sink) for sink in fresh}
        ready = [sink for sink in fresh if not isinstance(synced[sink], Outcome)]
        for sink, error in self._make_durable(ready):
            log.error("cannot store %s: %s", os.path.basename(sink.temp_path), error)
            synced[sink] = failure_for(error)
        for sink, uid in zip(sinks, uids, strict=True):
            copy = copies.get(uid)
            if copy is not None:
                results.append((copy, None))
                continue
            item = synced[sink]
            if isinstance(item, Outcome):
                results.append((item, None))
                continue
            temp = sink.temp_path
            # A second copy in the same round replaces the first (which replaced the
            # indexed one), wherever each one's header files it.
            existing = taken.get(uid) or stored.get(uid)
            duplicate = self._duplicate(uid, existing is not None)
            if duplicate is not None:
                results.append((duplicate, None))
                continue
            relative = self.layout.path(item)
            final = os.path.join(self.root, relative)
            try:
                try:
                    os.replace(temp, final)
                except FileNotFoundError:  # the first of its series: no folder yet
                    self._make_dirs(Path(final).parent)
                    os.replace(temp, final)
            except OSError as error:
                log.error("cannot file %s: %s", uid, error)
                results.append((failure_for(error), None))
                continue
            folders.add(os.path.dirname(final))
            if existing is not None and existing != relative:
                replaced.append(existing)
            taken[uid] = relative
            filed.append(replace(item, path=relative))
            results.append((Outcome(Status.SUCCESS), filed[-1]))
        for folder in folders:
            fsync_dir(folder)
        try:
            self.index.add_many(filed)
        except sqlite3.Error:
            # Not indexed, so not acknowledged: take back what this round put in place.
            for item in filed:
                (self.root / item.path).unlink(missing_ok=True)
            raise
        kept = set(taken.values())  # an earlier copy's place may be a later one's
        for old in replaced:
            if old not in kept:
                Path(self.root, old).unlink(missing_ok=True)
        return results

    def _make_durable(self, sinks: list[FileSink]) -> list[tuple[FileSink, OSError]]:
        """Their data on disk before any is renamed (never a partial file at a final
        path), and their files closed; returns the files that failed. A failed syncfs
        fails the round."""
        try:
            errors = self._syncer.fsync_all([sink.fileno() for sink in sinks])
            return [(sink, error) for sink, error in zip(sinks, errors, strict=True) if error]
        finally:
            for sink in sinks:
                sink.close()

    def _make_dirs(self, folder: Path) -> None:
        """Create `folder` and fsync each parent whose entries changed."""
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for created in reversed(missing):
            created.mkdir(exist_ok=True)
            fsync_dir(created.parent)

    async def _run(self, function: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._filer, function, *args)

    async def on_release(self, peer: Peer) -> None:
        await self._end_association(peer)

    async def on_abort(self, peer: Peer, reason: str) -> None:
        await self._end_association(peer)

    async def _end_association(self, peer: Peer) -> None:
        for study_uid, folder in self._studies.pop(peer.address, {}).items():
            for hook in self.on_study:
                await hook(study_uid, folder, peer)


# --- index maintenance ---------------------------------------------------------------


def archived_files(root: Path) -> Iterable[Path]:
    """Every stored file under `root`: not the index, not the temporary area."""
    for path in sorted(root.rglob("*.dcm")):
        if not any(part.startswith(".") for part in path.relative_to(root).parts):
            yield path


def read_instance(root: Path, path: Path) -> Instance:
    """Index entry of a stored file, from its header (never its pixel data), read as
    it was when it arrived (read_header(): pydicom parses only what the scanner
    leaves to it, and could not parse sequences nested as deep as a peer may send)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    with path.open("rb") as fp:  # one open, one read of the file meta
        read_preamble(fp, force=False)
        meta = _read_file_meta_info(fp)
        offset = fp.tell()
        head = fp.read(HEAD_SIZE)
        stat = os.fstat(fp.fileno())
    syntax = str(meta.TransferSyntaxUID)
    header = read_header(head, stat.st_size - offset, syntax, str(path))
    return Instance.from_header(
        header,
        transfer_syntax=syntax,
        path=str(path.relative_to(root)),
        size=stat.st_size,
        calling_ae=str(meta.get("SourceApplicationEntityTitle", "")).strip(),
        received=stat.st_mtime,
    )


@dataclass(frozen=True, slots=True)
class IndexReport:
    """How the index and the files disagree; empty lists mean they agree."""

    indexed: int
    missing_files: list[str]  # indexed, but no such file
    wrong_size: list[str]  # indexed with another size than the file has
    unindexed: list[str]  # files the index does not list

    @property
    def consistent(self) -> bool:
        return not (self.missing_files or self.wrong_size or self.unindexed)


def check_index(root: Path) -> IndexReport:
    index = Index(root / INDEX_FILE)
    try:
        listed = {path: size for _, path, size in index.files()}
    finally:
        index.close()
    on_disk = {str(p.relative_to(root)): p.stat().st_size for p in archived_files(root)}
    return IndexReport(
        indexed=len(listed),
        missing_files=sorted(set(listed) - set(on_disk)),
        wrong_size=sorted(p for p in set(listed) & set(on_disk) if listed[p] != on_disk[p]),
        unindexed=sorted(set(on_disk) - set(listed)),
    )


def rebuild_index(root: Path) -> tuple[int, list[str]]:
    """Recreate the index from the files; returns the count of instances indexed and
    the files left out, each with why: unreadable, or another copy of an instance
    (the index holds one file per instance: the first by path). An index too damaged
    to read is set aside (kept for a look), not repaired."""
    found: dict[str, Instance] = {}
    left_out = []
    for path in archived_files(root):
        try:
            instance = read_instance(root, path)
        except Exception as error:  # pydicom's parse errors have no common base class
            left_out.append(f"unreadable: {path.relative_to(root)}: {error}")
            continue
        first = found.setdefault(instance.sop_instance_uid, instance)
        if first is not instance:
            left_out.append(f"another copy of the instance in {first.path}: {instance.path}")
    path = root / INDEX_FILE
    try:
        index = _emptied(path)
    except sqlite3.DatabaseError as error:
        if not is_damage(error):
            raise
        _move_aside(path, error)
        index = Index(path)
    try:
        index.add_many(list(found.values()))
    finally:
        index.close()
    return len(found), left_out


def _emptied(path: Path) -> Index:
    index = Index(path)
    try:
        index.clear()
    except BaseException:
        index.close()
        raise
    return index


def _move_aside(path: Path, error: sqlite3.DatabaseError) -> None:
    """Keep a damaged index (and its WAL) for a look, out of the new one's way."""
    for suffix in ("", "-wal", "-shm"):
        damaged = path.with_name(path.name + suffix)
        if damaged.exists():
            os.replace(damaged, path.with_name(f"{path.name}.damaged{suffix}"))
    log.warning("the index %s could not be read (%s): moved to %s.damaged", path, error, path.name)
