"""The asyncio SCU: open an association, C-ECHO, C-STORE (pipelined), release.

    async with dimse.connect("pacs", 104, called_ae="PACS", contexts=...) as assoc:
        await assoc.echo()
        responses = await asyncio.gather(*(assoc.store(p) for p in paths))

With an asynchronous operations window of N (PS3.7 D.3.3.3), up to N stores are
in flight; each response is matched to its request by Message ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import ssl
import sys
from collections.abc import Callable, Coroutine, Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeGuard

from dimse import events as ev
from dimse.connection import Connection
from dimse.dimse import CEchoRQ, CEchoRSP, CStoreRQ, CStoreRSP, Message, Priority
from dimse.files import DicomFile, NotDicomError, WholeDataSets, open_dicom_file
from dimse.negotiation import (
    DEFAULT_MAX_PDU,
    AcceptedContext,
    Association,
    ProposedContext,
    build_request,
)
from dimse.pdu import (
    AAssociateRJ,
    AAssociateRQ,
    AbortSource,
    RoleSelection,
    UserIdentityRQ,
)
from dimse.sop_classes import NATIVE_TRANSFER_SYNTAXES, syntax_name, uids_problem
from dimse.transport import DEFAULT_TIMEOUTS, Link, Stream, Timeouts
from dimse.upper_layer import State

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger("dimse.client")

_NATIVE = frozenset(NATIVE_TRANSFER_SYNTAXES)
_FILE_BLOCK = 1 << 20


class AssociationError(Exception):
    """The association could not be used: rejected, aborted or closed."""


class AssociationRejectedError(AssociationError):
    def __init__(self, reject: AAssociateRJ) -> None:
        super().__init__(f"association rejected ({reject})")
        self.reject = reject


class NoAcceptedContextError(Exception):
    """The peer accepted no presentation context this data set can be sent on."""


@dataclass(frozen=True, slots=True)
class RawDataSet:
    """An encoded data set and what a C-STORE needs to know about it."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    data: bytes

    def __post_init__(self) -> None:
        problem = uids_problem(self.sop_class_uid, self.sop_instance_uid, self.transfer_syntax)
        if problem is not None:
            raise ValueError(problem)


StoreSource: TypeAlias = "str | Path | DicomFile | Dataset | RawDataSet"


def is_dataset(source: object) -> TypeGuard[Dataset]:
    """A pydicom Dataset. None exists unless pydicom was imported, which sending
    files does not do (see dimse.transcode)."""
    module = sys.modules.get("pydicom.dataset")
    return module is not None and isinstance(source, module.Dataset)


class ClientAssociation:
    """An established association, used as SCU."""

    def __init__(self, link: Link, association: Association) -> None:
        self._link = link
        self.association = association
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._message_ids = itertools.cycle(range(1, 0x10000))
        window = association.max_invoked or 1 << 16
        self._window = asyncio.Semaphore(window)
        self._send_lock = asyncio.Lock()
        self._released: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._failure: AssociationError | None = None
        self._whole = WholeDataSets()
        self._reader = asyncio.create_task(self._read_loop())

    @property
    def calling_ae(self) -> str:
        return self.association.calling_ae

    @property
    def called_ae(self) -> str:
        return self.association.called_ae

    # --- services -----------------------------------------------------------------

    async def echo(self) -> int:
        """C-ECHO (PS3.7 §9.1.5); returns the response status."""
        context = self.association.context_for(CEchoRQ(0).affected_sop_class_uid)
        if context is None:
            raise NoAcceptedContextError("the peer did not accept the Verification SOP class")
        response = await self._request(context.id, lambda mid: CEchoRQ(mid), None)
        assert isinstance(response, CEchoRSP)
        return response.status

    async def store(
        self,
        source: StoreSource,
        *,
        priority: Priority = Priority.MEDIUM,
        callback: Callable[[CStoreRSP], None] | None = None,
    ) -> CStoreRSP:
        """C-STORE one instance (PS3.7 §9.1.1) and return the peer's response.

        A file is sent from its own bytes when the peer accepted its transfer
        syntax; otherwise it is decoded and re-encoded (uncompressed syntaxes only).
        A file cut short raises NotDicomError before anything is sent.
        """
        sop_class, sop_instance, context, payload = await self._prepare(source)

        def request(message_id: int) -> CStoreRQ:
            return CStoreRQ(message_id, sop_class, sop_instance, priority)

        response = await self._request(context.id, request, payload)
        assert isinstance(response, CStoreRSP)
        if callback is not None:
            callback(response)
        return response

    async def release(self) -> None:
        """A-RELEASE (PS3.8 §7.2) once every outstanding response has arrived."""
        if self._pending:
            await asyncio.gather(*self._pending.values(), return_exceptions=True)
        if self._link.connection.established:
            self._link.connection.release()
            await self._link.drain()
        try:
            await asyncio.wait_for(asyncio.shield(self._released), self._link.timeouts.acse)
        except TimeoutError:
            self.abort()
        finally:
            await self._finish()

    def abort(self) -> None:
        """A-ABORT (PS3.8 §7.3): drop the association at once."""
        self._link.connection.abort()
        self._link.flush()
        self._link.stream.close()
        self._fail(AssociationError("association aborted by the local user"))

    async def __aenter__(self) -> ClientAssociation:
        return self

    async def __aexit__(self, kind: object, *_: object) -> None:
        if kind is None:
            await self.release()
        else:
            self.abort()
            await self._finish()

    # --- internals ------------------------------------------------------------------

    async def _prepare(
        self, source: StoreSource
    ) -> tuple[str, str, AcceptedContext, DicomFile | bytes]:
        """SOP class/instance, the context to send on, and the data set to send."""
        if isinstance(source, str | Path):
            source = open_dicom_file(source)
        if isinstance(source, DicomFile):
            sop_class, sop_instance, syntax = (
                source.sop_class_uid,
                source.sop_instance_uid,
                source.transfer_syntax,
            )
        elif is_dataset(source):
            sop_class, sop_instance = str(source.SOPClassUID), str(source.SOPInstanceUID)
            meta = getattr(source, "file_meta", None)
            syntax = str(meta.TransferSyntaxUID) if meta and "TransferSyntaxUID" in meta else ""
        else:
            sop_class, sop_instance = source.sop_class_uid, source.sop_instance_uid
            syntax = source.transfer_syntax
        exact = self.association.context_for(sop_class, syntax) if syntax else None
        if exact is not None:
            if isinstance(source, RawDataSet):
                return sop_class, sop_instance, exact, source.data
            if isinstance(source, DicomFile):
                return sop_class, sop_instance, exact, source
            from dimse.transcode import encode_dataset

            return sop_class, sop_instance, exact, encode_dataset(source, syntax)
        context = next(
            (
                c
                for c in self.association.contexts.values()
                if c.abstract_syntax == sop_class and c.transfer_syntax in _NATIVE
            ),
            None,
        )
        if context is None:
            wanted = f" in {syntax_name(syntax)}" if syntax else ""
            raise NoAcceptedContextError(f"the peer accepted no context for {sop_class}{wanted}")
        from dimse.transcode import convert

        try:
            payload = await asyncio.to_thread(convert, source, syntax, context.transfer_syntax)
        except (NoAcceptedContextError, NotDicomError):
            raise
        except Exception as error:  # pydicom's parse errors have no common base class
            raise NotDicomError(f"cannot be converted for the peer: {error}") from error
        return sop_class, sop_instance, context, payload

    async def _request(
        self,
        context_id: int,
        build: Callable[[int], Message],
        payload: DicomFile | bytes | None,
    ) -> Message:
        self._raise_if_failed()
        async with self._window:
            self._raise_if_failed()
            message_id = next(self._message_ids)
            while message_id in self._pending:
                message_id = next(self._message_ids)
            future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
            self._pending[message_id] = future
            try:
                async with self._send_lock:
                    self._raise_if_failed()
                    if isinstance(payload, DicomFile):
                        await self._send_file(context_id, build(message_id), payload)
                    else:
                        self._link.connection.send_message(context_id, build(message_id))
                        if payload is not None:  # PDVs carry even lengths (PS3.8 §9.3.5.1)
                            padded = payload + bytes(len(payload) % 2)
                            self._link.connection.send_data(context_id, padded, True)
                        await self._link.drain()
                # asyncio.timeout, not wait_for(shield()): no extra future and callbacks
                # per request. A late response finds no pending future and is dropped.
                async with asyncio.timeout(self._link.timeouts.dimse):
                    return await future
            except TimeoutError:
                self.abort()
                raise AssociationError("no response within the DIMSE timeout") from None
            finally:
                self._pending.pop(message_id, None)

    async def _send_file(self, context_id: int, command: Message, file: DicomFile) -> None:
        """The command, then the file's data set from disk, its first block read (and
        the file checked whole) before the command goes out."""
        connection = self._link.connection
        peer_max = self.association.peer_max_pdu
        pdv = peer_max - 6 if peer_max else _FILE_BLOCK
        block = pdv * max(1, _FILE_BLOCK // pdv)  # whole PDVs per read
        # os.pread on a descriptor: three system calls a file, not a file object's five
        # (~8 ms less per 1000 small files here).
        fd = os.open(file.path, os.O_RDONLY)
        try:
            offset, remaining = file.dataset_offset, file.dataset_size
            data = os.pread(fd, min(block, remaining), offset)
            self._whole.check(file, data, fd)
            connection.send_message(context_id, command)
            while True:
                offset += len(data)
                remaining -= len(data)
                last = remaining <= 0 or not data
                if last and file.dataset_size % 2:
                    # PDVs carry even lengths (PS3.8 §9.3.5.1 via PS3.5 §7.1): an odd
                    # data set, e.g. a deflated stream (PS3.5 §A.5), gets a NUL pad.
                    data += b"\0"
                connection.send_data(context_id, data, last)
                await self._link.drain()
                if last:
                    break
                data = os.pread(fd, min(block, remaining), offset)
        finally:
            os.close(fd)
        if remaining > 0:
            raise AssociationError(f"{file.path} shrank while it was being sent")

    async def _read_loop(self) -> None:
        connection = self._link.connection
        while connection.state is not State.STA1:
            try:
                events = await self._link.receive()
            except TimeoutError:
                if connection.artim_running:
                    connection.artim_expired()
                    self._link.flush()
                    continue
                events = connection.transport_closed()  # idle for too long: the peer is gone
            for event in events:
                self._dispatch(event)
            self._link.flush()
        self._fail(AssociationError("association closed"))

    def _dispatch(self, event: ev.Event) -> None:
        if isinstance(event, ev.CommandReceived):
            message = event.message
            if isinstance(message, CEchoRSP | CStoreRSP):
                future = self._pending.get(message.message_id_being_responded_to)
                if future is not None and not future.done():
                    future.set_result(message)
                else:
                    log.warning("response to unknown message ID %s", message)
            else:
                log.error("%s: unexpected request %s; aborting", self._link.peer, message)
                self._link.connection.abort()
        elif isinstance(event, ev.ReleaseRequested):
            self._link.connection.accept_release()
        elif isinstance(event, ev.ReleaseConfirmed):
            if not self._released.done():
                self._released.set_result(None)
        elif isinstance(event, ev.Aborted):
            who = "peer" if event.source is AbortSource.SERVICE_USER else "provider"
            detail = event.local_error or f"reason {event.reason}"
            self._fail(AssociationError(f"association aborted by the {who}: {detail}"))

    def _fail(self, error: AssociationError) -> None:
        if self._failure is None:
            self._failure = error
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        if not self._released.done():
            self._released.set_exception(error)
            self._released.exception()  # retrieved: release() reports it differently

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _finish(self) -> None:
        await self._link.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def default_contexts(*sop_classes: str) -> list[ProposedContext]:
    """Verification plus each SOP class in the uncompressed syntaxes."""
    classes = dict.fromkeys(("1.2.840.10008.1.1", *sop_classes))
    return [ProposedContext(uid, tuple(NATIVE_TRANSFER_SYNTAXES)) for uid in classes]


class Encoded(Protocol):
    """Anything that knows its SOP class and transfer syntax (a DicomFile...)."""

    @property
    def sop_class_uid(self) -> str: ...

    @property
    def transfer_syntax(self) -> str: ...


def contexts_for(
    files: Iterable[Encoded], fallback: Sequence[str] = NATIVE_TRANSFER_SYNTAXES[:2]
) -> list[ProposedContext]:
    """Contexts to send `files` as they are, with a fallback to convert to.

    Each (SOP class, transfer syntax) of the files gets a context of its own, so
    an SCP that prefers another syntax cannot force a conversion; a class also
    gets one context with the `fallback` syntaxes it lacks (by default the
    little-endian uncompressed ones: PS3.5 §10.1 makes Implicit VR Little Endian
    universal), so a file whose own syntax is refused can still be sent converted.
    """
    by_class: dict[str, dict[str, None]] = {}
    for file in files:
        by_class.setdefault(file.sop_class_uid, {})[file.transfer_syntax] = None
    contexts = []
    for sop_class, syntaxes in by_class.items():
        contexts += [ProposedContext(sop_class, (syntax,)) for syntax in syntaxes]
        missing = tuple(ts for ts in fallback if ts not in syntaxes)
        if missing:
            contexts.append(ProposedContext(sop_class, missing))
    return contexts


def connect(
    host: str,
    port: int,
    *,
    calling_ae: str = "DIMSE",
    called_ae: str = "ANY-SCP",
    contexts: Sequence[ProposedContext] | None = None,
    max_pdu: int = DEFAULT_MAX_PDU,
    async_ops: int = 1,
    roles: Sequence[RoleSelection] = (),
    user_identity: UserIdentityRQ | None = None,
    ssl_context: ssl.SSLContext | None = None,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
) -> Opening:
    """Connect and negotiate an association to an SCP.

    Await it (`assoc = await connect(...)`) or use it as `async with connect(...) as
    assoc`, which releases on exit and aborts on an exception. Raises
    AssociationRejectedError or AssociationError.
    """
    request = build_request(
        calling_ae,
        called_ae,
        contexts if contexts is not None else default_contexts(),
        max_pdu=max_pdu,
        async_ops=(async_ops, 1) if async_ops != 1 else None,
        roles=roles,
        user_identity=user_identity,
    )
    return Opening(_open(host, port, request, ssl_context, timeouts))


async def _open(
    host: str,
    port: int,
    request: AAssociateRQ,
    ssl_context: ssl.SSLContext | None,
    timeouts: Timeouts,
) -> ClientAssociation:
    connection = Connection(request)
    try:
        _, stream = await asyncio.wait_for(
            asyncio.get_running_loop().create_connection(
                lambda: Stream(connection), host, port, ssl=ssl_context
            ),
            timeouts.connect,
        )
    except TimeoutError:
        raise AssociationError(f"could not connect to {host}:{port}: timed out") from None
    except OSError as error:
        raise AssociationError(f"could not connect to {host}:{port}: {error}") from None
    link = Link(stream, timeouts)
    await link.drain()
    try:
        while True:
            for event in await asyncio.wait_for(link.receive(), timeouts.acse):
                if isinstance(event, ev.AssociationAccepted):
                    link.flush()
                    return ClientAssociation(link, event.association)
                if isinstance(event, ev.AssociationRejected):
                    raise AssociationRejectedError(event.reject)
                if isinstance(event, ev.Aborted):
                    raise AssociationError(
                        event.local_error or f"association aborted (reason {event.reason})"
                    )
                if isinstance(event, ev.ConnectionClosed):
                    raise AssociationError("connection closed during association set-up")
            link.flush()
    except TimeoutError:
        connection.abort()
        raise AssociationError("no answer to the association request in time") from None
    finally:
        if connection.state is not State.STA6:
            link.flush()
            await link.close()


class Opening:
    """An association being opened: awaitable, or an async context manager."""

    def __init__(self, opening: Coroutine[None, None, ClientAssociation]) -> None:
        self._opening = opening
        self._association: ClientAssociation | None = None

    def __await__(self) -> Generator[Any, None, ClientAssociation]:
        return self._opening.__await__()

    async def __aenter__(self) -> ClientAssociation:
        self._association = await self._opening
        return self._association

    async def __aexit__(self, kind: object, *rest: object) -> None:
        assert self._association is not None
        await self._association.__aexit__(kind, *rest)
