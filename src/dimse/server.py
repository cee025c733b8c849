"""The asyncio SCP: accepts associations and hands C-ECHO / C-STORE to a provider.

A :class:`ServiceProvider` is the user's plug-in, in the shape of fo-dicom's
IDicomServiceProvider + IDicomCStoreProvider: decide on association requests,
answer C-ECHO, receive C-STORE data sets as a stream of fragments, hear of
release and abort. Each association runs as its own task; a failure in one is
logged and never reaches another.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from dimse import events as ev
from dimse.connection import Connection
from dimse.dimse import (
    CEchoRQ,
    CEchoRSP,
    CStoreRQ,
    CStoreRSP,
    Message,
    UnknownCommand,
)
from dimse.identity import IdentityVerifier
from dimse.negotiation import (
    DEFAULT_MAX_PDU,
    MAX_ASYNC_OPS,
    AcceptorPolicy,
    Association,
    negotiate,
)
from dimse.pdu import (
    LOCAL_LIMIT_EXCEEDED,
    AAssociateRJ,
    AAssociateRQ,
    RejectReason,
    RejectResult,
    RejectSource,
    UserIdentityRQ,
)
from dimse.sop_classes import (
    NATIVE_TRANSFER_SYNTAXES,
    VERIFICATION,
    all_transfer_syntaxes,
    storage_sop_classes,
)
from dimse.status import Status
from dimse.transport import DEFAULT_MAX_BUFFERED, Link, ReadBudget, Stream, Timeouts
from dimse.upper_layer import State

log = logging.getLogger("dimse.server")

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end of an association."""

    address: str
    calling_ae: str
    called_ae: str


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """A C-STORE-RQ as the provider sees it, before its data set arrives."""

    message: CStoreRQ
    transfer_syntax: str
    peer: Peer
    association: Association


@dataclass(frozen=True, slots=True)
class Outcome:
    """A response status and, for failures, a comment for the peer (PS3.7 C.4)."""

    status: int
    comment: str | None = None


class DataSetSink(Protocol):
    """Receives one data set, fragment by fragment, in order."""

    async def write(self, data: memoryview) -> None: ...

    async def complete(self) -> int | Outcome:
        """The last fragment arrived: store durably, then return the status."""
        ...

    async def discard(self) -> None:
        """The data set will not be completed (abort, connection lost)."""
        ...


class ServiceProvider:
    """Override what you need; the defaults accept, echo, and refuse storage."""

    async def on_association(self, request: AAssociateRQ, address: str) -> AAssociateRJ | None:
        """Return a rejection to refuse a request the policy let through."""
        return None

    async def on_echo(self, peer: Peer) -> int | Outcome:
        return Status.SUCCESS

    async def on_store(self, request: StoreRequest) -> DataSetSink | int | Outcome:
        """A sink to stream the data set into, or a failure status to refuse it."""
        return Status.REFUSED_SOP_CLASS_NOT_SUPPORTED

    async def on_release(self, peer: Peer) -> None:
        return None

    async def on_abort(self, peer: Peer, reason: str) -> None:
        return None


def default_syntaxes() -> dict[str, frozenset[str]]:
    """Verification and every storage SOP class, in every transfer syntax."""
    everything: frozenset[str] = frozenset(all_transfer_syntaxes())
    syntaxes: dict[str, frozenset[str]] = dict.fromkeys(storage_sop_classes(), everything)
    syntaxes[VERIFICATION] = frozenset(NATIVE_TRANSFER_SYNTAXES[:2])
    return syntaxes


@dataclass(frozen=True, slots=True)
class AllowRule:
    """A calling AE title allowed in, optionally from one address only (an audit line
    names each association refused for not matching any rule)."""

    ae_title: str
    address: str | None = None

    @classmethod
    def parse(cls, text: str) -> AllowRule:
        """'AET' or 'AET@address', the address an IP address: it is compared with the
        peer's, so a host name or a typo would refuse that AE title from everywhere."""
        ae_title, at, address = text.partition("@")
        if not 0 < len(ae_title.strip()) <= 16:
            raise ValueError(f"not an AE title (1-16 characters): {ae_title!r}")
        if not at:
            return cls(ae_title.strip())
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            raise ValueError(f"not an IP address: {address!r}") from None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # admits() compares IPv4 peers on a dual stack so
        return cls(ae_title.strip(), str(ip))

    def admits(self, ae_title: str, address: str) -> bool:
        host = address.rsplit(":", 1)[0].removeprefix("::ffff:")  # IPv4 on a dual stack
        return ae_title.strip() == self.ae_title and self.address in (None, host)


@dataclass(frozen=True, slots=True)
class ServerOptions:
    ae_title: str = "DIMSE"
    syntaxes: Mapping[str, frozenset[str]] = field(default_factory=default_syntaxes)
    check_called_ae: bool = True
    allow: tuple[AllowRule, ...] | None = None  # None: any calling AE, from anywhere
    max_pdu: int = DEFAULT_MAX_PDU
    max_async_ops: int = MAX_ASYNC_OPS
    max_associations: int = 50
    max_associations_per_ae: int = 0  # 0: only the global cap
    max_dataset_size: int = 1 << 32  # bytes; beyond it a C-STORE fails with A700
    #: Bytes all associations together may hold in partial PDUs; an association whose
    #: next PDU does not fit stops reading until another releases (see ReadBudget).
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED
    timeouts: Timeouts = field(default_factory=Timeouts)
    ssl_context: ssl.SSLContext | None = None
    reuse_port: bool = False  # SO_REUSEPORT: several processes share the port
    identity: IdentityVerifier | None = None  # checks user identities (PS3.7 D.3.3.7)
    require_identity: bool = False  # reject requestors that send none

    def policy(self) -> AcceptorPolicy:
        return AcceptorPolicy(
            ae_title=self.ae_title,
            syntaxes=self.syntaxes,
            check_called_ae=self.check_called_ae,
            max_pdu=self.max_pdu,
            max_async_ops=self.max_async_ops,
        )


class Server:
    """A listening SCP. `async with Server(...)`, or start() and close()."""

    def __init__(
        self,
        provider: ServiceProvider,
        host: str = "0.0.0.0",
        port: int = 11112,
        options: ServerOptions | None = None,
    ) -> None:
        self.provider = provider
        self.host = host
        self.port = port
        self.options = options or ServerOptions()
        self._policy = self.options.policy()
        #: Server-wide: every association reserves the PDU it buffers here.
        self.budget = ReadBudget(self.options.max_buffered_bytes)
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._per_ae: Counter[str] = Counter()

    @property
    def active_associations(self) -> int:
        return len(self._sessions)

    @property
    def established(self) -> int:
        return sum(self._per_ae.values())

    def associations_of(self, calling_ae: str) -> int:
        """Established associations from one calling AE title."""
        return self._per_ae[calling_ae]

    def _admit(self, session: _Session) -> None:
        self._per_ae[session.peer.calling_ae.strip()] += 1
        session.counted = True

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            lambda: Stream(Connection(), self._connected),
            self.host,
            self.port,
            reuse_address=True,
            reuse_port=self.options.reuse_port or None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("listening on %s:%d as %s", self.host, self.port, self.options.ae_title)

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self, grace: float = 30.0) -> None:
        """Stop accepting, let running associations finish for `grace` s, then abort."""
        if self._server is not None:
            self._server.close()
        if self._sessions:
            log.info("waiting up to %.0f s for %d association(s)", grace, len(self._sessions))
            _, running = await asyncio.wait(set(self._sessions), timeout=grace)
            for task in running:
                task.cancel()
            if running:
                await asyncio.wait(running)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def _connected(self, stream: Stream) -> None:
        context = self.options.ssl_context
        loop = asyncio.get_running_loop()
        if context is None:
            task = loop.create_task(self._accept(stream))
        else:
            assert stream.transport is not None
            host, port, *_ = stream.transport.get_extra_info("peername") or ("?", 0)
            sock = _take_socket(stream)
            task = loop.create_task(self._accept_tls(sock, f"{host}:{port}", context))
        self._sessions.add(task)

    async def _accept_tls(self, sock: socket.socket, peer: str, context: ssl.SSLContext) -> None:
        """TLS on an accepted connection (PS3.15 B.1), in a transport made for it.

        Not by create_server(ssl=), which drops a failed handshake (a client without
        TLS, an untrusted certificate) without a word unless asyncio's debug mode is
        on; nor by start_tls() on the accepted transport, which may have read the
        ClientHello before it (uvloop reads as soon as connection_made() returns).
        """
        stream = Stream(Connection())  # not the call's answer: uvloop's is its TLS layer
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: stream,
                sock,
                ssl=context,
                ssl_handshake_timeout=self.options.timeouts.acse,
            )
        except OSError as error:  # ssl.SSLError, a timeout; the transport closed the socket
            why = str(error) or type(error).__name__  # an EOF or a reset says nothing
            log.warning("%s: TLS handshake failed: %s", peer, why)
            self._sessions.discard(asyncio.current_task())
            return
        await self._accept(stream)

    async def _accept(self, stream: Stream) -> None:
        link = Link(stream, self.options.timeouts, self.budget)
        session = _Session(self, link)
        task = asyncio.current_task()
        assert task is not None
        try:
            await session.run()
        except asyncio.CancelledError:
            session.abort("server shutting down")
            raise
        except Exception:
            log.exception("%s: association failed", link.peer)
            session.abort("internal error")
        finally:
            self._sessions.discard(task)
            if session.counted:
                self._per_ae[session.peer.calling_ae.strip()] -= 1
            await session.cleanup()


class _Session:
    """One association on the server side."""

    def __init__(self, server: Server, link: Link) -> None:
        self.server = server
        self.provider = server.provider
        self.link = link
        self.connection = link.connection
        self.peer = Peer(link.peer, "", "")
        self.association: Association | None = None
        self._receiving: tuple[int, CStoreRQ, DataSetSink | Outcome] | None = None
        self._working: set[asyncio.Task[None]] = set()
        # C-STOREs not yet answered, by Message ID (PS3.7 §9.1.1.1.1: unique among them).
        self._outstanding: dict[int, CStoreRQ] = {}
        self._started = time.monotonic()
        self._stored = 0
        self._received = 0  # bytes of the data set being received
        self.counted = False  # in the server's per-AE count

    async def run(self) -> None:
        while not self.connection.closing:
            try:
                events = await self.link.receive()
            except TimeoutError:
                self._expired()
                continue
            for event in events:
                await self._dispatch(event)
            self.link.consumed()  # a PDU handed over whole frees its budget now
            await self.link.drain()
            await self._throttle()

    def _expired(self) -> None:
        """A read timed out: ARTIM (PS3.8 §9.1.5), a PDU not whole in time, or idle."""
        idle = self.link.timeouts.idle
        if self.connection.artim_running:
            log.warning("%s: ARTIM expired; closing", self.peer.address)
            self.connection.artim_expired()
        elif self.link.expired == "pdu":
            # A PDU must be whole within the idle timeout from its first byte: a peer
            # dripping bytes would otherwise hold the association (and its buffer).
            self.abort(f"PDU not complete after {idle:g} s")
        elif self.link.expired == "budget":
            self.abort(f"no buffer room for a PDU in {idle:g} s (server busy)")
        else:
            self.abort("idle timeout")
        self.link.flush()

    async def _throttle(self) -> None:
        """Stop reading while as many operations run as the peer may have outstanding."""
        limit = self.association.max_invoked if self.association else 1
        while limit and len(self._working) >= limit:
            await asyncio.wait(set(self._working), return_when=asyncio.FIRST_COMPLETED)

    async def _dispatch(self, event: ev.Event) -> None:
        if isinstance(event, ev.DataReceived):
            await self._data(event)
        elif isinstance(event, ev.CommandReceived):
            await self._command(event)
        elif isinstance(event, ev.AssociationRequested):
            await self._associate(event.request)
        elif isinstance(event, ev.ReleaseRequested):
            if self._working:
                await asyncio.wait(set(self._working))
            self.connection.accept_release()
            log.info(
                "%s: %s released after %d stored in %.2f s",
                self.peer.address,
                self.peer.calling_ae,
                self._stored,
                time.monotonic() - self._started,
            )
            await self.provider.on_release(self.peer)
        elif isinstance(event, ev.Aborted):
            reason = event.local_error or f"A-ABORT from {event.source.name}, reason {event.reason}"
            who = self.peer.calling_ae or "before association,"
            log.warning("%s: %s aborted: %s", self.peer.address, who, reason)
            await self._drop_receiving()
            await self.provider.on_abort(self.peer, reason)

    async def _associate(self, request: AAssociateRQ) -> None:
        self.peer = Peer(self.link.peer, request.calling_ae, request.called_ae)
        answer = negotiate(request, self.server._policy)
        if not isinstance(answer, AAssociateRJ):
            answer = (
                self._admission(request)
                or await self.provider.on_association(request, self.link.peer)
                or answer
            )
        if isinstance(answer, AAssociateRJ):
            log.warning(
                "audit: rejected association from %s, calling AE %r, called AE %r: %s",
                self.peer.address,
                request.calling_ae.strip(),
                request.called_ae.strip(),
                answer,
            )
            self.connection.reject(answer)
            return
        ac, self.association = answer
        self.server._admit(self)
        self.connection.accept(ac, self.association)
        log.info(
            "%s: association %s -> %s accepted (%d contexts, max PDU %d, window %d)",
            self.peer.address,
            request.calling_ae,
            request.called_ae,
            len(self.association.contexts),
            self.association.peer_max_pdu,
            self.association.max_invoked,
        )

    def _admission(self, request: AAssociateRQ) -> AAssociateRJ | None:
        """Who may associate (allow rules), the server's own limits and the user
        identity check, after negotiation."""
        options = self.server.options
        calling = request.calling_ae.strip()
        if options.allow is not None and not any(
            rule.admits(calling, self.peer.address) for rule in options.allow
        ):
            log.warning("%s: calling AE %s is not allowed", self.peer.address, calling)
            return AAssociateRJ(
                RejectResult.PERMANENT,
                RejectSource.SERVICE_USER,
                RejectReason.CALLING_AE_NOT_RECOGNIZED,
            )
        per_ae = options.max_associations_per_ae
        # Established associations count, not connections still negotiating.
        if self.server.established >= options.max_associations or (
            per_ae and self.server.associations_of(calling) >= per_ae
        ):
            return AAssociateRJ(
                RejectResult.TRANSIENT,
                RejectSource.SERVICE_PROVIDER_PRESENTATION,
                LOCAL_LIMIT_EXCEEDED,
            )
        identity = request.user_item(UserIdentityRQ)
        if options.identity is None or (identity is None and not options.require_identity):
            return None
        # PS3.7 D.3.3.7.3: an identity that is required but absent, or not accepted,
        # is refused with A-ASSOCIATE-RJ permanent, service user, no reason given.
        if identity is None or not options.identity.verify(identity):
            who = (
                "none given"
                if identity is None
                else repr(identity.primary.decode(errors="replace"))
            )
            log.warning("%s: user identity refused (%s)", self.peer.address, who)
            return AAssociateRJ(
                RejectResult.PERMANENT, RejectSource.SERVICE_USER, RejectReason.NO_REASON_GIVEN
            )
        return None

    async def _command(self, event: ev.CommandReceived) -> None:
        message = event.message
        if isinstance(message, CStoreRQ) and not event.has_dataset:
            # A C-STORE-RQ carries a data set (PS3.7 §9.3.1.1, Command Data Set Type):
            # without one there is nothing to store, and nothing more will come.
            self._respond(
                event.context_id,
                CStoreRSP(
                    message.message_id,
                    Status.CANNOT_UNDERSTAND,
                    message.affected_sop_class_uid,
                    message.affected_sop_instance_uid,
                    error_comment="C-STORE-RQ without a data set",
                ),
            )
        elif isinstance(message, CStoreRQ) and message.message_id in self._outstanding:
            # PS3.7 Annex C: 0210H, the Message ID is allocated to another operation.
            duplicate = Outcome(Status.DUPLICATE_INVOCATION, "Message ID of an outstanding C-STORE")
            self._receiving = (event.context_id, message, duplicate)
        elif isinstance(message, CStoreRQ):
            assert self.association is not None
            self._outstanding[message.message_id] = message
            request = StoreRequest(
                message,
                self.association.contexts[event.context_id].transfer_syntax,
                self.peer,
                self.association,
            )
            target = await self._guard(self.provider.on_store(request))
            sink = target if not isinstance(target, int) else Outcome(target)
            self._receiving = (event.context_id, message, sink)
        elif isinstance(message, CEchoRQ):
            outcome = _outcome(await self._guard(self.provider.on_echo(self.peer)))
            self._respond(
                event.context_id,
                CEchoRSP(message.message_id, outcome.status, message.affected_sop_class_uid),
            )
        elif isinstance(message, UnknownCommand) and message.message_id is not None:
            # PS3.7 §C.5.7 (0211): a service we do not provide.
            log.warning("%s: unsupported command 0x%04X", self.peer.address, message.command_field)
            self._respond(event.context_id, message.unrecognized())
        else:
            self.abort(f"unexpected {type(message).__name__}")

    async def _data(self, event: ev.DataReceived) -> None:
        if self._receiving is None:
            return  # data of a command we did not keep (an unknown one): dropped
        context_id, message, sink = self._receiving
        self._received += len(event.data)
        if not isinstance(sink, Outcome) and self._received > self.server.options.max_dataset_size:
            log.warning(
                "%s: %s exceeds the %d-byte data set limit; receiving the rest unstored",
                self.peer.address,
                message.affected_sop_instance_uid,
                self.server.options.max_dataset_size,
            )
            await sink.discard()
            sink = Outcome(Status.OUT_OF_RESOURCES, "data set too large")
            self._receiving = (context_id, message, sink)
        if not isinstance(sink, Outcome):
            try:
                await sink.write(event.data)
            except Exception as error:
                log.exception(
                    "%s: storing %s failed", self.peer.address, message.affected_sop_instance_uid
                )
                await sink.discard()
                sink = Outcome(Status.OUT_OF_RESOURCES, f"cannot store: {error}"[:64])
                self._receiving = (context_id, message, sink)
        if not event.last:
            return
        self._receiving = None
        self._received = 0
        task = asyncio.create_task(self._complete(context_id, message, sink))
        self._working.add(task)
        task.add_done_callback(self._working.discard)

    async def _complete(
        self, context_id: int, message: CStoreRQ, sink: DataSetSink | Outcome
    ) -> None:
        if isinstance(sink, Outcome):
            outcome = sink
        else:
            try:
                outcome = _outcome(await sink.complete())
            except Exception as error:
                log.exception("%s: service provider failed", self.peer.address)
                outcome = Outcome(Status.PROCESSING_FAILURE, str(error)[:64])
                await self._guard(sink.discard())  # not stored: nothing may be left behind
        if outcome.status == Status.SUCCESS:
            self._stored += 1
        self._respond(
            context_id,
            CStoreRSP(
                message.message_id,
                outcome.status,
                message.affected_sop_class_uid,
                message.affected_sop_instance_uid,
                error_comment=outcome.comment,
            ),
            self.link.flush_soon,
        )
        if self._outstanding.get(message.message_id) is message:
            del self._outstanding[message.message_id]  # answered: the ID is free again
        await self.link.writable()

    async def _guard(self, call: Awaitable[_T]) -> _T | Outcome:
        try:
            return await call
        except Exception as error:
            log.exception("%s: service provider failed", self.peer.address)
            return Outcome(Status.PROCESSING_FAILURE, str(error)[:64])

    def _respond(
        self, context_id: int, message: Message, flush: Callable[[], None] | None = None
    ) -> None:
        if self.connection.state in (State.STA6, State.STA8):  # may send P-DATA
            self.connection.send_message(context_id, message)
            (flush or self.link.flush)()

    async def _drop_receiving(self) -> None:
        if self._receiving is not None:
            _, _, sink = self._receiving
            self._receiving = None
            if not isinstance(sink, Outcome):
                await sink.discard()

    def abort(self, reason: str) -> None:
        """A-ABORT (PS3.8 §7.3.1, service user), with the reason in the log."""
        log.warning("%s: %s: aborting (%s)", self.peer.address, self.peer.calling_ae, reason)
        self.connection.abort()
        self.link.flush()
        self.link.stream.close()

    async def cleanup(self) -> None:
        await self._drop_receiving()
        # C-STOREs received whole are completed although nobody will hear the answer:
        # the provider may be filing them already (the archive's round does), and each
        # sink must end with complete() or discard(). At shutdown, or past the DIMSE
        # timeout, they are cancelled.
        current = asyncio.current_task()
        try:
            if self._working and not (current and current.cancelling()):
                await asyncio.wait(set(self._working), timeout=self.link.timeouts.dimse)
        finally:
            for task in self._working:
                task.cancel()
        await self.link.close()


def _take_socket(stream: Stream) -> socket.socket:
    """The accepted connection's socket, from a transport closed before it reads
    anything (uvloop starts reading once connection_made() returns, asyncio later)."""
    assert stream.transport is not None
    accepted = stream.transport.get_extra_info("socket")
    sock = socket.socket(fileno=os.dup(accepted.fileno()))
    stream.transport.abort()  # closes its descriptor only: the connection stays open
    return sock


def _outcome(value: int | Outcome) -> Outcome:
    return value if isinstance(value, Outcome) else Outcome(int(value))
